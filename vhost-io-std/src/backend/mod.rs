//! The back-end side: a blocking [`Server`] that serves a [`Device`] over a
//! Unix socket, one worker thread per started queue.
//!
//! The server drives `vhost_proto::backend::Connection<OwnedFd>`: it reads
//! the socket (`recvmsg` with SCM_RIGHTS), feeds the connection, writes what
//! it wants to send, and acts on its events: maps guest memory
//! ([`crate::os::mmap::MemoryMap`]), builds a `vring` split or packed device
//! queue when a ring starts and hands it to a worker thread, stops the worker
//! and reports its position when the ring stops, restarts workers on a new
//! memory map, and asks the [`Device`] for the rest (config space, status,
//! reset, ...). Inflight tracking (GET/SET_INFLIGHT_FD) is handled here for
//! any device that offers INFLIGHT_SHMFD: recovered requests come first out
//! of [`Queue::pop`]. SET_BACKEND_REQ_FD hands the device a
//! [`BackendChannel`] (through [`Device::backend_channel_opened`]) that sends
//! the back-end requests, gated by the negotiation and refused while every
//! ring is stopped (the device is suspended, spec §7.3).
//!
//! The event handling itself is binding-independent and lives in [`state`]:
//! `vhost-io-mio` runs the same [`state::SessionState`] with its queues
//! processed inline instead of on worker threads.

mod channel;
mod device;
mod framing;
mod queue;
mod server;
mod session;
pub mod state;
mod worker;

pub use channel::{BackendChannel, DEFAULT_CHANNEL_TIMEOUT};
pub use device::Device;
pub use queue::{Chain, ChainReader, ChainWriter, Memory, Queue};
pub use server::{Server, ServerHandle, Stopper};
pub use session::Ended;
// Shared with vhost-io-mio (one implementation for both bindings).
#[doc(hidden)]
pub use framing::Framer;
#[doc(hidden)]
pub use server::remove_stale_socket;
