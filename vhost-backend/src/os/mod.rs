//! Operating-system helpers shared by the IO crates.
//!
//! Everything here goes through `rustix`'s safe wrappers where it has them;
//! the only `unsafe` code is in [`mmap`] (creating and unmapping a shared
//! mapping) and [`sigbus`] (the signal handler, through `libc`, as rustix has
//! no `sigaction`), each block with its `SAFETY` argument.
//!
//! - [`socket`]: `sendmsg`/`recvmsg` with SCM_RIGHTS, for blocking and
//!   non-blocking sockets.
//! - [`eventfd`]: the kick/call/err notifier (an eventfd, or a pipe).
//! - [`notifier`]: checking the notifier fds a front-end sends
//!   ([`EventFd::from_peer`](eventfd::EventFd::from_peer)).
//! - [`memfd`]: anonymous shared files (guest memory in tests, the inflight
//!   buffer).
//! - [`mmap`]: mapping memory regions (through vm-memory) and other shared
//!   ranges (inflight buffer, dirty log).
//! - [`sigbus`]: containing SIGBUS from a shared file a peer shrinks under
//!   our mapping.

pub mod eventfd;
pub mod memfd;
pub mod mmap;
pub mod notifier;
pub mod sigbus;
pub mod sigpipe;
pub mod socket;

#[cfg(test)]
pub(crate) mod test_util;
