//! Split and packed virtqueues, device side and driver side.
//!
//! The engine is usable on its own, without the vhost-user crates: give it a
//! guest memory (anything implementing [`memory::GuestMemory`]: a
//! `vm_memory::GuestMemoryMmap`, or a [`memory::BufferMemory`] in tests) and a
//! [`QueueConfig`], and it translates the ring areas once, then pops chains,
//! walks their descriptors with typed errors for every malformed layout, and
//! publishes used buffers with exactly the barriers the virtio spec asks for.
//!
//! | module | what |
//! |---|---|
//! | [`memory`] | the guest-memory trait and adapters; all of the crate's `unsafe` |
//! | [`desc`] | descriptors and flags common to both layouts |
//! | [`chain`] | [`Reader`]/[`Writer`]: copy across a chain without allocating |
//! | [`split`] | split rings: `split::DeviceQueue`, `split::DriverQueue` |
//! | [`packed`] | packed rings: `packed::DeviceQueue`, `packed::DriverQueue` |
//! | [`queue`] | either layout behind one type, chosen at run time |
//! | [`inflight`] | inflight I/O tracking regions (vhost-user §7.12) |
//! | [`log`] | dirty-page logging for migration |
//!
//! Citations like "virtqueue spec §2.7" refer to the project's protocol
//! reference (`spec/virtqueue.md`), which follows virtio 1.2–1.4.
#![deny(missing_docs)]
#![deny(clippy::indexing_slicing)]

pub mod chain;
pub mod desc;
mod error;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod inflight;
pub mod log;
pub mod memory;
mod notify;
pub mod packed;
pub mod queue;
pub mod split;

pub use chain::{Reader, Writer};
pub use desc::{Descriptor, DescriptorIter};
pub use error::{Error, RingArea};
pub use notify::need_event;

/// Virtio feature bits that change how a ring behaves (virtqueue spec §6).
pub mod feature {
    /// VIRTIO_F_INDIRECT_DESC.
    pub const INDIRECT_DESC: u64 = 1 << 28;
    /// VIRTIO_F_EVENT_IDX.
    pub const EVENT_IDX: u64 = 1 << 29;
    /// VIRTIO_F_VERSION_1.
    pub const VERSION_1: u64 = 1 << 32;
    /// VIRTIO_F_RING_PACKED.
    pub const RING_PACKED: u64 = 1 << 34;
    /// VIRTIO_F_IN_ORDER.
    pub const IN_ORDER: u64 = 1 << 35;
}

/// The negotiated features a ring engine needs to know.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingFeatures {
    /// VIRTIO_F_EVENT_IDX: `used_event`/`avail_event` (split), DESC event
    /// suppression mode (packed).
    pub event_idx: bool,
    /// VIRTIO_F_INDIRECT_DESC: indirect tables are allowed.
    pub indirect: bool,
    /// VIRTIO_F_IN_ORDER: buffers are used in the order they were made
    /// available.
    pub in_order: bool,
}

impl RingFeatures {
    /// Picks the ring-relevant bits out of a negotiated virtio feature set.
    pub fn from_virtio_features(features: u64) -> Self {
        RingFeatures {
            event_idx: features & feature::EVENT_IDX != 0,
            indirect: features & feature::INDIRECT_DESC != 0,
            in_order: features & feature::IN_ORDER != 0,
        }
    }
}

/// Where a queue lives in guest memory and how it behaves.
///
/// The names follow the virtio spec's areas: for a split ring the driver area
/// is the available ring and the device area the used ring; for a packed ring
/// they are the driver and device event-suppression structures. (In vhost-user
/// SET_VRING_ADDR these are `avail` and `used`.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    /// Number of descriptors (split: a power of two; both: 1..=32768).
    pub size: u16,
    /// Guest address of the descriptor table (split) or ring (packed).
    pub desc_table: u64,
    /// Guest address of the available ring / driver event suppression.
    pub driver_area: u64,
    /// Guest address of the used ring / device event suppression.
    pub device_area: u64,
    /// Negotiated ring features.
    pub features: RingFeatures,
}

/// Translates one ring area at setup, split and packed alike: `addr` must be
/// a multiple of `align` (the guest alignment the virtqueue spec requires)
/// and the host mapping of `[addr, addr + len)` a multiple of `host_align` (the
/// atomic accessors need it; a guest region mapped at an odd host address
/// would otherwise fail every access later).
pub(crate) fn translate_area<M: memory::GuestMemory + ?Sized>(
    mem: &M,
    area: RingArea,
    addr: u64,
    len: usize,
    align: usize,
    host_align: usize,
) -> Result<memory::RawArea, Error> {
    if !addr.is_multiple_of(align as u64) {
        return Err(Error::Misaligned { area, addr, align });
    }
    let raw = memory::GuestSlice::new(mem, addr, len)
        .map_err(|_| Error::RingUnmapped {
            area,
            addr,
            len: len as u64,
        })?
        .raw();
    if !raw.is_aligned(host_align) {
        return Err(Error::Misaligned {
            area,
            addr,
            align: host_align,
        });
    }
    Ok(raw)
}

/// The device's position in a ring: what vhost-user's SET_VRING_BASE and
/// GET_VRING_BASE carry (vhost-user spec §3.3, §3.4).
///
/// For a split ring only `next_avail` is meaningful (the used index lives in
/// guest memory); the wrap counters are `true` and `next_used` is ignored. For
/// a packed ring all four fields are the device's state; both wrap counters
/// start at `true` (virtqueue spec §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingPosition {
    /// Split: the next available-ring index to process (free-running).
    /// Packed: the next descriptor-ring slot to look at.
    pub next_avail: u16,
    /// Packed: the device's view of the driver wrap counter.
    pub avail_wrap: bool,
    /// Packed: the next slot at which the device writes a used descriptor.
    pub next_used: u16,
    /// Packed: the device wrap counter.
    pub used_wrap: bool,
}

impl Default for RingPosition {
    /// The position of a freshly set-up ring.
    fn default() -> Self {
        RingPosition {
            next_avail: 0,
            avail_wrap: true,
            next_used: 0,
            used_wrap: true,
        }
    }
}
