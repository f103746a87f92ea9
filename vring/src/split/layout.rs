//! Byte offsets of the split ring structures (virtqueue spec §2.1–2.5) and the
//! one-time translation of a queue's three areas.

use crate::memory::{GuestMemory, RawArea};
use crate::{Error, QueueConfig, RingArea, translate_area};

/// Largest split queue size (virtqueue spec §2.1).
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// `VIRTQ_AVAIL_F_NO_INTERRUPT`: bit 0 of the avail ring's flags.
pub const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// `VIRTQ_USED_F_NO_NOTIFY`: bit 0 of the used ring's flags.
pub const USED_F_NO_NOTIFY: u16 = 1;

/// Offset of `flags` in the avail and used rings.
pub(crate) const FLAGS: usize = 0;
/// Offset of `idx` in the avail and used rings.
pub(crate) const IDX: usize = 2;
/// Offset of `ring[0]` in the avail and used rings.
pub(crate) const RING: usize = 4;
/// Size of a used element (`virtq_used_elem`).
pub(crate) const USED_ELEM_SIZE: usize = 8;

/// Size in bytes of the descriptor table of a queue of `size` entries.
pub const fn desc_table_size(size: u16) -> usize {
    16 * size as usize
}

/// Size in bytes of the available ring, `used_event` included.
pub const fn avail_ring_size(size: u16) -> usize {
    6 + 2 * size as usize
}

/// Size in bytes of the used ring, `avail_event` included.
pub const fn used_ring_size(size: u16) -> usize {
    6 + 8 * size as usize
}

/// Offset of avail `ring[slot]`.
#[inline]
pub(crate) const fn avail_entry(slot: u16) -> usize {
    RING + 2 * slot as usize
}

/// Offset of `used_event` (`avail->ring[Q]`, virtqueue spec §2.7).
#[inline]
pub(crate) const fn used_event(size: u16) -> usize {
    RING + 2 * size as usize
}

/// Offset of used `ring[slot]`.
#[inline]
pub(crate) const fn used_entry(slot: u16) -> usize {
    RING + USED_ELEM_SIZE * slot as usize
}

/// Offset of `avail_event` (right after `used->ring[Q-1]`, virtqueue spec §2.7).
#[inline]
pub(crate) const fn avail_event(size: u16) -> usize {
    RING + USED_ELEM_SIZE * size as usize
}

/// Checks a split queue size: a power of two in 1..=32768 (virtqueue spec §2.1).
pub(crate) fn check_size(size: u16) -> Result<(), Error> {
    if size == 0 || size > MAX_QUEUE_SIZE || !size.is_power_of_two() {
        return Err(Error::InvalidQueueSize { size: size.into() });
    }
    Ok(())
}

/// A guest-supplied descriptor, as stored in a split table (virtqueue spec §2.2).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawDesc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

impl RawDesc {
    #[inline]
    pub(crate) fn from_bytes(b: [u8; 16]) -> Self {
        let [
            a0,
            a1,
            a2,
            a3,
            a4,
            a5,
            a6,
            a7,
            l0,
            l1,
            l2,
            l3,
            f0,
            f1,
            n0,
            n1,
        ] = b;
        RawDesc {
            addr: u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
            len: u32::from_le_bytes([l0, l1, l2, l3]),
            flags: u16::from_le_bytes([f0, f1]),
            next: u16::from_le_bytes([n0, n1]),
        }
    }

    #[inline]
    pub(crate) fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        let (addr, rest) = b.split_at_mut(8);
        addr.copy_from_slice(&self.addr.to_le_bytes());
        let (len, rest) = rest.split_at_mut(4);
        len.copy_from_slice(&self.len.to_le_bytes());
        let (flags, next) = rest.split_at_mut(2);
        flags.copy_from_slice(&self.flags.to_le_bytes());
        next.copy_from_slice(&self.next.to_le_bytes());
        b
    }
}

/// The three areas of a split queue, translated once.
///
/// Crate invariant (memory.rs): stored only next to the memory object they
/// were translated from, and replaced together with it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rings {
    pub desc: RawArea,
    pub avail: RawArea,
    pub used: RawArea,
}

impl Rings {
    /// Validates `config` for a split ring and translates its areas in `mem`.
    pub(crate) fn translate<M: GuestMemory + ?Sized>(
        mem: &M,
        config: &QueueConfig,
    ) -> Result<Rings, Error> {
        check_size(config.size)?;
        let q = config.size;
        Ok(Rings {
            desc: translate_area(
                mem,
                RingArea::Descriptors,
                config.desc_table,
                desc_table_size(q),
                16,
                16,
            )?,
            avail: translate_area(
                mem,
                RingArea::Driver,
                config.driver_area,
                avail_ring_size(q),
                2,
                2,
            )?,
            used: translate_area(
                mem,
                RingArea::Device,
                config.device_area,
                used_ring_size(q),
                4,
                4,
            )?,
        })
    }
}
