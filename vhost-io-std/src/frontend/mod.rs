//! The front-end side: a blocking [`Frontend`] client (one method per
//! request, reply timeouts, client or server role), and [`GuestRam`]:
//! memfd-backed guest memory shared with the back-end, with ring layout
//! helpers for a front-end that drives queues itself (tests, probes,
//! benches).

mod channel;
mod client;
mod driver;
mod handler;
mod memory;
mod resume;

pub use channel::{BackendMessage, FrontendChannel};
pub use client::{DEFAULT_REPLY_TIMEOUT, Frontend};
pub use driver::{DriverRing, ring_features};
pub use handler::{ChannelHandler, ChannelNotice, RefuseAll};
pub use memory::{GuestRam, packed_ring, split_ring};
pub use resume::Inflight;

/// The guest memory driver rings work in.
pub type Memory = std::sync::Arc<vm_memory::GuestMemoryMmap>;
