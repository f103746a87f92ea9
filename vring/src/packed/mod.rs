//! Packed virtqueues (virtqueue spec §3).
//!
//! One descriptor ring shared by both sides: the driver makes a buffer
//! available by writing its descriptors in consecutive slots with AVAIL =
//! its wrap counter and USED = the inverse, the device marks a buffer used by
//! writing one descriptor with AVAIL = USED = its wrap counter at its next
//! used slot; both wrap counters start at 1 and toggle at the end of the ring
//! (§3.3). Each side tells the other when to notify through an event
//! suppression structure (§3.7).
//!
//! - [`DeviceQueue`]: pop, walk ([`Descriptors`], [`Reader`](crate::Reader),
//!   [`Writer`](crate::Writer)), add/publish used, notifications, ring
//!   position, dirty logging, inflight tracking
//!   ([`PackedInflight`](crate::inflight::packed::PackedInflight)).
//! - [`DriverQueue`]: add direct and indirect buffers, publish and kick
//!   decisions, collect used buffers (IN_ORDER batches included).

mod descriptors;
mod device;
mod driver;
pub(crate) mod layout;

pub use descriptors::{AvailChain, Descriptors};
pub use device::DeviceQueue;
pub use driver::DriverQueue;
pub use layout::{
    EVENT_FLAGS_DESC, EVENT_FLAGS_DISABLE, EVENT_FLAGS_ENABLE, EVENT_SUPPRESS_SIZE, MAX_QUEUE_SIZE,
};
