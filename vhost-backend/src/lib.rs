//! The vhost-user device runtime, independent of any event loop.
//!
//! A device is written against this crate alone and is served unchanged by
//! either runner: `vhost-io-std` (threads, blocking sockets) or
//! `vhost-io-mio` (sessions in the user's mio loop). The runners move bytes
//! and fds; everything else lives here:
//!
//! - [`Device`]: what a back-end device offers; [`QueueHandler`]: how each of its
//!   started queues is served, completing requests at once or later (asynchronous
//!   completion, its own fds to wait on: [`Source`]);
//! - [`Queue`], [`Chain`], [`ChainReader`], [`ChainWriter`], [`ReadObj`], [`WriteObj`]:
//!   one running virtqueue as a device sees it, and its chains as tokens completed once;
//! - [`state`]: the session logic that turns the protocol core's events into
//!   actions (memory maps, queue builds, inflight buffers, device calls), and
//!   the drain loop every runner processes a queue with;
//! - [`BackendChannel`]: the device's end of the back-end channel, gated by
//!   the negotiation and the suspended rule;
//! - [`os`]: the operating-system helpers both runners need (`sendmsg`/`recvmsg`
//!   with fds, eventfds, memfds, memory mappings);
//! - [`echo`]: a loopback device for tests, demos and benches.
#![doc = include_str!("../docs/runtime.md")]
#![deny(missing_docs)]

mod channel;
mod device;
pub mod echo;
mod error;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
mod obj;
pub mod os;
mod queue;
mod served;
pub mod state;

pub use channel::{BackendChannel, DEFAULT_CHANNEL_TIMEOUT};
pub use device::{Device, FnHandler, QueueHandler, Source, handler_fn};
pub use error::{BindError, ChannelError, OsError, QueueError};
pub use obj::{ReadObj, WriteObj};
pub use queue::{Chain, ChainLengths, ChainReader, ChainWriter, Memory, Queue};
pub use served::{Drained, ServedQueue};

// The crates a device needs, so that it imports this one alone.
pub use vhost_proto;
pub use vring;
