//! The vhost-user device runtime, independent of any event loop.
//!
//! A device is written against this crate alone and is served unchanged by
//! either runner: `vhost-io-std` (threads, blocking sockets) or
//! `vhost-io-mio` (sessions in the user's mio loop). The runners move bytes
//! and fds; everything else lives here:
//!
//! - [`Device`]: what a back-end device offers and how it serves its queues;
//! - [`Queue`], [`Chain`], [`ChainReader`], [`ChainWriter`]: one running
//!   virtqueue as a device sees it;
//! - [`state`]: the session logic that turns the protocol core's events into
//!   actions (memory maps, queue builds, inflight buffers, device calls), and
//!   the drain loop every runner processes a queue with;
//! - [`BackendChannel`]: the device's end of the back-end channel, gated by
//!   the negotiation and the suspended rule;
//! - [`os`]: the operating-system helpers both runners need (`sendmsg`/`recvmsg`
//!   with fds, eventfds, memfds, memory mappings);
//! - [`echo`]: a loopback device for tests, demos and benches.
#![deny(missing_docs)]

mod channel;
mod device;
pub mod echo;
mod error;
mod framing;
pub mod os;
mod queue;
pub mod state;

pub use channel::{BackendChannel, DEFAULT_CHANNEL_TIMEOUT};
pub use device::Device;
pub use error::{BindError, ChannelError, OsError};
#[doc(hidden)]
pub use framing::Framer;
pub use queue::{Chain, ChainReader, ChainWriter, Memory, Queue};

// The crates a device needs, so that it imports this one alone.
pub use vhost_proto;
pub use vring;
