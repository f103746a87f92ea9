//! Bodies of the cargo-fuzz targets that reach the runtime, shared with stable tests that
//! replay the seed corpus in `fuzz/seeds/<target>/`.
//!
//! # `runtime_session`
//!
//! [`runtime_session`] drives a [`SessionState`](crate::state::SessionState) directly: the
//! harness's [`Rings`](crate::state::Rings) run every started ring inline
//! ([`rings::InlineRings`]), a [`device::FuzzDevice`] serves them (completing chains now
//! or later, in an order the input picks), and guest memory is real: two memfd regions of
//! [`guest::REGION_SIZE`] bytes, at guest addresses 0 and `REGION_SIZE`, user addresses
//! from [`guest::USER_BASE`], mapped by the harness through [`crate::os::mmap`] too. Ring
//! `i` lives at `i * RING_STRIDE` in region 0 ([`guest::ring_areas`]), buffers in region 1.
//!
//! The input is read with [`arbitrary::Unstructured`] (every value reads as zero once it
//! runs short, so any byte string is an input):
//!
//! | bytes | meaning |
//! |---|---|
//! | 1 | offered protocol features, one bit per [`device::PROTOCOL_CHOICES`] entry |
//! | 1 | bits 0–1 queue count − 1; 2 EVENT_IDX, 3 INDIRECT_DESC, 4 RING_PACKED, 5 IN_ORDER, 6 BACKEND_REQ; 7 region 1 is an unsealed memfd |
//! | 1 | the handler policy ([`device::policy`]) |
//! | then ops | `op % OPS` ([`session::op`]), each with its parameter bytes: |
//!
//! | op | bytes | action |
//! |---|---|---|
//! | 0 HANDSHAKE | 2 | features to drop, flags: a QEMU-like start through SET_MEM_TABLE with the harness's memfds |
//! | 1 SETUP_RING | 4 | ring, size, base, flags: SET_VRING_NUM/BASE/ADDR/CALL(/ERR)/KICK(/ENABLE) at the harness layout; the harness's driver of that ring is (re)initialised |
//! | 2 REQUEST | 5 | one well-formed request of any code ([`session::REQUESTS`]) with real fds of any kind |
//! | 3 RAW | 2 + 1 + n + len | raw bytes with up to 4 fds |
//! | 4 POKE | 2 + 1 + len | bytes written at guest address `2 * u16`: hostile ring contents |
//! | 5 POST | 2 + elements | a well-formed chain offered by the ring's driver (direct or indirect) |
//! | 6 KICK | 1 | the ring is drained |
//! | 7 COMPLETE | 1 + 1 + n | the ring's handler completes held chains in the order given |
//! | 8 POLICY | 1 | a new handler policy |
//! | 9 REAP | 1 | the ring's driver collects used buffers |
//! | 10 DISCONNECT | 0 | the front-end hangs up |
//! | 11 RECONNECT | 0 | the device completes what it holds, the session closes, a new one starts |
//!
//! Checked: no panic or livelock; every transmit decodes as exactly one reply; guest
//! memory never faults; at the end the device completes everything it holds, after which
//! nothing may be pending or unanswered, and the session must close with every ring
//! collected. The seed replay test also counts `/proc/self/fd` around each run (no fd
//! may leak).

pub mod device;
pub mod guest;
pub mod rings;
pub mod session;

pub use session::{Stats, runtime_session, runtime_session_stats, runtime_session_strict_stats};

#[cfg(test)]
mod seeds;
