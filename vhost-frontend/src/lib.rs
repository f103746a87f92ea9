//! The front-end side without a guest: what a VMM, a probe, a test or a benchmark needs to
//! drive a vhost-user back-end it did not write.
//!
//! - [`Frontend`]: a blocking client with one method per front-end request (1–44), reply
//!   deadlines from the protocol core, client or server role, and [`Frontend::start_ring`]
//!   that configures, enables and synchronises a ring in QEMU's order;
//! - [`GuestRam`]: memfd-backed guest memory (several regions, a buffer allocator,
//!   checked reads and writes) shared with the back-end;
//! - [`DriverRing`]: the driver side of a split or packed ring in that memory, with its
//!   kick/call/err eventfds and ring features derived from the negotiated features;
//!   [`DriverRing::collect`] never loses a completion;
//! - [`FrontendChannel`]: the front-end's end of the back-end channel, answering the ten
//!   back-end requests with real actions ([`ChannelHandler`] hooks);
//! - [`Inflight`] and reconnect helpers: resume a restarted back-end from the inflight
//!   buffer.
//!
//! `vhost-io-std` re-exports this crate as `vhost_io_std::frontend`; the mio front-end
//! (`vhost_io_mio::frontend`) drives the same protocol core from an event loop.
#![deny(missing_docs)]

mod channel;
mod client;
mod driver;
mod error;
mod handler;
mod memory;
mod resume;

pub use channel::{BackendMessage, FrontendChannel};
pub use client::{DEFAULT_REPLY_TIMEOUT, Frontend};
pub use driver::{DriverRing, ring_features};
pub use error::ClientError;
pub use handler::{ChannelHandler, ChannelNotice, RefuseAll};
pub use memory::{GuestRam, packed_ring, split_ring};
pub use resume::Inflight;

/// The guest memory driver rings work in.
pub type Memory = std::sync::Arc<vm_memory::GuestMemoryMmap>;
