//! The packed ring's memory layout: descriptor slots, the AVAIL/USED bits
//! with their wrap counters, and the event-suppression structures
//! (virtqueue spec §3.1–§3.3, §3.7). Shared by the device and the driver.

use std::sync::atomic::Ordering;

use crate::desc::{DESC_F_AVAIL, DESC_F_USED, DESC_SIZE};
use crate::memory::{Block, BlockArray, RawArea};
use crate::{Error, RingArea, need_event, translate_area};

/// Event suppression flags value: always notify (`RING_EVENT_FLAGS_ENABLE`).
pub const EVENT_FLAGS_ENABLE: u16 = 0x0;
/// Event suppression flags value: never notify (`RING_EVENT_FLAGS_DISABLE`).
pub const EVENT_FLAGS_DISABLE: u16 = 0x1;
/// Event suppression flags value: notify when the slot in `off_wrap` is
/// reached (`RING_EVENT_FLAGS_DESC`; only with VIRTIO_F_EVENT_IDX).
pub const EVENT_FLAGS_DESC: u16 = 0x2;

/// Size of an event-suppression structure in bytes (virtqueue spec §3.7).
pub const EVENT_SUPPRESS_SIZE: usize = 4;

/// Offset of `off_wrap` (`desc`) in an event-suppression structure.
pub(crate) const EVENT_OFF_WRAP: usize = 0;
/// Offset of `flags` in an event-suppression structure.
pub(crate) const EVENT_FLAGS: usize = 2;

/// Offsets inside a 16-byte packed descriptor (virtqueue spec §3.2).
pub(crate) const DESC_LEN: usize = 8;
pub(crate) const DESC_ID: usize = 12;
pub(crate) const DESC_FLAGS: usize = 14;

/// Largest packed queue size (virtqueue spec §3.1).
pub const MAX_QUEUE_SIZE: u16 = 32768;

// The descriptor size the offsets above assume.
const _: () = assert!(DESC_SIZE == 16);

/// A position in the ring: a slot index and the wrap counter that goes with
/// it (virtqueue spec §3.3). Both sides start at slot 0 with wrap 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pos {
    pub(crate) slot: u16,
    pub(crate) wrap: bool,
}

impl Pos {
    /// The position `n` slots further (`n <= size`), toggling the wrap
    /// counter when it passes the end of the ring.
    #[inline]
    /// How many ring slots `self` is ahead of `behind` (0..=size), for two
    /// positions at most one lap apart (the avail and used positions).
    pub(crate) fn slots_ahead_of(self, behind: Pos, size: u16) -> u32 {
        if self.wrap == behind.wrap {
            u32::from(self.slot.saturating_sub(behind.slot))
        } else {
            u32::from(size) - u32::from(behind.slot.min(size)) + u32::from(self.slot)
        }
    }

    pub(crate) fn advance(self, n: u16, size: u16) -> Pos {
        let next = u32::from(self.slot) + u32::from(n);
        if next >= u32::from(size) {
            Pos {
                slot: (next - u32::from(size)) as u16,
                wrap: !self.wrap,
            }
        } else {
            Pos {
                slot: next as u16,
                wrap: self.wrap,
            }
        }
    }

    /// The `off_wrap` encoding of this position (virtqueue spec §3.7).
    #[inline]
    pub(crate) fn off_wrap(self) -> u16 {
        self.slot | (u16::from(self.wrap) << 15)
    }
}

/// Byte offset of slot `slot` in the descriptor ring.
#[inline]
pub(crate) fn slot_offset(slot: u16) -> usize {
    usize::from(slot) * 16
}

/// Reads a whole descriptor slot: two aligned 8-byte loads (a 16-byte
/// volatile copy would be split into byte loads). Call after the acquire
/// load of its flags, or of the flags of the list's head.
#[inline]
pub(crate) fn read_block(b: &Block<'_, 16>) -> RawDesc {
    RawDesc::from_words(
        b.load_u64::<0>(Ordering::Relaxed),
        b.load_u64::<DESC_LEN>(Ordering::Relaxed),
    )
}

/// The AVAIL/USED bits of a descriptor made available with wrap counter
/// `wrap`: AVAIL = wrap, USED = !wrap (virtqueue spec §3.3).
#[inline]
pub(crate) fn avail_bits(wrap: bool) -> u16 {
    if wrap { DESC_F_AVAIL } else { DESC_F_USED }
}

/// The AVAIL/USED bits of a used descriptor written with wrap counter `wrap`:
/// AVAIL = USED = wrap.
#[inline]
pub(crate) fn used_bits(wrap: bool) -> u16 {
    if wrap { DESC_F_AVAIL | DESC_F_USED } else { 0 }
}

/// Whether `flags` mark a descriptor available for the device whose view of
/// the driver wrap counter is `wrap`.
#[inline]
pub(crate) fn is_avail(flags: u16, wrap: bool) -> bool {
    flags & (DESC_F_AVAIL | DESC_F_USED) == avail_bits(wrap)
}

/// Whether `flags` mark a descriptor used with the device wrap counter `wrap`.
#[inline]
pub(crate) fn is_used(flags: u16, wrap: bool) -> bool {
    flags & (DESC_F_AVAIL | DESC_F_USED) == used_bits(wrap)
}

/// A raw 16-byte packed descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RawDesc {
    pub(crate) addr: u64,
    pub(crate) len: u32,
    pub(crate) id: u16,
    pub(crate) flags: u16,
}

impl RawDesc {
    /// From the descriptor's two little-endian 8-byte words.
    #[inline]
    pub(crate) fn from_words(lo: u64, hi: u64) -> RawDesc {
        RawDesc {
            addr: lo,
            len: hi as u32,
            id: (hi >> 32) as u16,
            flags: (hi >> 48) as u16,
        }
    }

    #[inline]
    pub(crate) fn from_bytes(b: [u8; 16]) -> RawDesc {
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
            i0,
            i1,
            f0,
            f1,
        ] = b;
        RawDesc {
            addr: u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
            len: u32::from_le_bytes([l0, l1, l2, l3]),
            id: u16::from_le_bytes([i0, i1]),
            flags: u16::from_le_bytes([f0, f1]),
        }
    }

    #[inline]
    pub(crate) fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        let (addr, rest) = b.split_at_mut(8);
        addr.copy_from_slice(&self.addr.to_le_bytes());
        let (len, rest) = rest.split_at_mut(4);
        len.copy_from_slice(&self.len.to_le_bytes());
        let (id, flags) = rest.split_at_mut(2);
        id.copy_from_slice(&self.id.to_le_bytes());
        flags.copy_from_slice(&self.flags.to_le_bytes());
        b
    }
}

/// The translated areas of a packed ring (descriptor ring and both
/// event-suppression structures), checked once at setup.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Areas {
    pub(crate) ring: RawArea,
    /// The ring as `size` descriptor slots: a slot index is the only check
    /// left on the hot path.
    pub(crate) slots: BlockArray<16>,
    pub(crate) driver_event: BlockArray<4>,
    pub(crate) device_event: BlockArray<4>,
}

impl Areas {
    /// Validates `size` and the guest and host alignment of the three areas
    /// (virtqueue spec §3.1) and translates them.
    pub(crate) fn new<M: crate::memory::GuestMemory>(
        mem: &M,
        config: &crate::QueueConfig,
    ) -> Result<Areas, Error> {
        let size = config.size;
        if size == 0 || size > MAX_QUEUE_SIZE {
            return Err(Error::InvalidQueueSize {
                size: u32::from(size),
            });
        }
        let ring_len = slot_offset(size);
        // Host alignment 8 for the descriptors' aligned atomic accesses (u64
        // addr, u32 len, u16 flags); the event areas are u16 pairs.
        let ring = translate_area(
            mem,
            RingArea::Descriptors,
            config.desc_table,
            ring_len,
            16,
            8,
        )?;
        let driver_event = translate_area(
            mem,
            RingArea::Driver,
            config.driver_area,
            EVENT_SUPPRESS_SIZE,
            4,
            4,
        )?;
        let device_event = translate_area(
            mem,
            RingArea::Device,
            config.device_area,
            EVENT_SUPPRESS_SIZE,
            4,
            4,
        )?;
        // The checks above (length, host alignment 8 and 4) are what the
        // block arrays need; `ok_or` only keeps this panic-free.
        let unmapped = |area, addr, len: usize| Error::RingUnmapped {
            area,
            addr,
            len: len as u64,
        };
        let slots = BlockArray::new(&ring, usize::from(size)).ok_or(unmapped(
            RingArea::Descriptors,
            config.desc_table,
            ring_len,
        ))?;
        let driver_event = BlockArray::new(&driver_event, 1).ok_or(unmapped(
            RingArea::Driver,
            config.driver_area,
            EVENT_SUPPRESS_SIZE,
        ))?;
        let device_event = BlockArray::new(&device_event, 1).ok_or(unmapped(
            RingArea::Device,
            config.device_area,
            EVENT_SUPPRESS_SIZE,
        ))?;
        Ok(Areas {
            ring,
            slots,
            driver_event,
            device_event,
        })
    }

    /// Acquire-loads the flags of slot `slot` (the load that publishes a
    /// descriptor, virtqueue spec §3.4/§3.5).
    #[inline]
    pub(crate) fn load_flags(&self, slot: u16) -> Option<u16> {
        // `None` only for a slot beyond the ring (positions are kept below
        // the size, so callers treat it as an error or "nothing there").
        self.slots
            .get(slot)
            .map(|b| b.load_u16::<DESC_FLAGS>(Ordering::Acquire))
    }

    /// Reads the whole descriptor at `slot` (call after the acquire load of
    /// its flags, or of the flags of the list's head). Aligned loads: the
    /// ring's host address is 8-byte aligned (checked at setup).
    #[inline]
    pub(crate) fn read_desc(&self, slot: u16) -> Option<RawDesc> {
        self.slots.get(slot).map(|b| read_block(&b))
    }

    /// Writes addr, len and id of the descriptor at `slot`, not its flags.
    #[inline]
    pub(crate) fn write_desc_body(&self, slot: u16, d: &RawDesc) {
        if let Some(b) = self.slots.get(slot) {
            b.store_u64::<0>(d.addr, Ordering::Relaxed);
            b.store_u32::<DESC_LEN>(d.len, Ordering::Relaxed);
            b.store_u16::<DESC_ID>(d.id, Ordering::Relaxed);
        }
    }

    /// Reads an event-suppression structure: `(flags, off_wrap)`. Flags first,
    /// then `off_wrap` (virtqueue spec §3.7: the reader reads flags, then a
    /// read barrier, then off_wrap); the caller has issued the full fence.
    #[inline]
    pub(crate) fn read_event(area: &BlockArray<4>) -> (u16, u16) {
        let e = area.first();
        let flags = e.load_u16::<EVENT_FLAGS>(Ordering::Acquire);
        let off_wrap = e.load_u16::<EVENT_OFF_WRAP>(Ordering::Relaxed);
        (flags, off_wrap)
    }

    /// Writes an event-suppression structure: `off_wrap` first, then `flags`
    /// with release (virtqueue spec §3.7).
    #[inline]
    pub(crate) fn write_event(area: &BlockArray<4>, flags: u16, off_wrap: Option<u16>) {
        let e = area.first();
        if let Some(off_wrap) = off_wrap {
            e.store_u16::<EVENT_OFF_WRAP>(off_wrap, Ordering::Relaxed);
        }
        e.store_u16::<EVENT_FLAGS>(flags, Ordering::Release);
    }
}

/// Whether a side that published the ring positions `[new - count, new)`
/// must notify the other side, given the other side's event-suppression
/// structure `(flags, off_wrap)` (virtqueue spec §3.7). `wrap` is the
/// publishing side's wrap counter after publishing; `count <= size`.
///
/// Never suppresses a needed notification: reserved modes and DESC without
/// EVENT_IDX notify.
#[inline]
pub(crate) fn should_notify(
    event: (u16, u16),
    event_idx: bool,
    size: u16,
    new: Pos,
    count: u32,
) -> bool {
    let (flags, off_wrap) = event;
    match flags & 0x3 {
        EVENT_FLAGS_DISABLE => false,
        EVENT_FLAGS_DESC if event_idx => {
            if count >= u32::from(size) {
                // A whole lap (or more) was published: every slot was passed.
                return true;
            }
            let mut off = off_wrap & 0x7fff;
            if (off_wrap >> 15 != 0) != new.wrap {
                // The event is on the previous lap: map it below 0.
                off = off.wrapping_sub(size);
            }
            let old = new.slot.wrapping_sub(count as u16);
            need_event(off, new.slot, old)
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_wrap_and_toggle() {
        let p = Pos {
            slot: 2,
            wrap: true,
        };
        assert_eq!(
            p.advance(1, 3),
            Pos {
                slot: 0,
                wrap: false
            }
        );
        assert_eq!(p.advance(0, 3), p);
        assert_eq!(
            p.advance(3, 3),
            Pos {
                slot: 2,
                wrap: false
            }
        );
        assert_eq!(p.off_wrap(), 0x8002);
    }

    #[test]
    fn avail_and_used_bits() {
        for w in [false, true] {
            assert!(is_avail(avail_bits(w), w));
            assert!(!is_avail(avail_bits(w), !w));
            assert!(!is_avail(used_bits(w), w));
            assert!(is_used(used_bits(w), w));
            assert!(!is_used(used_bits(w), !w));
            assert!(!is_used(avail_bits(w), w));
        }
        // A zeroed ring shows nothing available on the first lap.
        assert!(!is_avail(0, true));
    }

    #[test]
    fn raw_desc_round_trips() {
        let d = RawDesc {
            addr: 0x1122_3344_5566_7788,
            len: 0x99aa_bbcc,
            id: 0xddee,
            flags: 0x8081,
        };
        assert_eq!(RawDesc::from_bytes(d.to_bytes()), d);
        assert_eq!(d.to_bytes()[14..], [0x81, 0x80]);
    }

    fn desc_mode(slot: u16, wrap: bool) -> (u16, u16) {
        (EVENT_FLAGS_DESC, Pos { slot, wrap }.off_wrap())
    }

    #[test]
    fn event_desc_mode_matches_the_window() {
        // Q = 3: publishing 2 slots from slot 2 (wrap 1) ends at slot 1, wrap 0.
        let new = Pos {
            slot: 1,
            wrap: false,
        };
        assert!(should_notify(desc_mode(2, true), true, 3, new, 2));
        assert!(should_notify(desc_mode(0, false), true, 3, new, 2));
        assert!(!should_notify(desc_mode(1, false), true, 3, new, 2));
        assert!(!should_notify(desc_mode(1, true), true, 3, new, 2));
        assert!(!should_notify(desc_mode(2, false), true, 3, new, 2));
        // Modes.
        assert!(should_notify((EVENT_FLAGS_ENABLE, 0), true, 3, new, 2));
        assert!(!should_notify((EVENT_FLAGS_DISABLE, 0), true, 3, new, 2));
        assert!(should_notify((3, 0), true, 3, new, 2));
        // DESC without EVENT_IDX is invalid: notify.
        assert!(should_notify(desc_mode(1, true), false, 3, new, 2));
        // A whole lap passes every slot.
        assert!(should_notify(desc_mode(1, false), true, 3, new, 3));
    }

    #[test]
    fn event_desc_mode_exhaustive_small_rings() {
        // Compare with a model on absolute positions (lap * size + slot).
        for size in 1u16..=5 {
            for start_abs in 0u32..(3 * u32::from(size)) {
                for count in 0..=u32::from(size) {
                    let end_abs = start_abs + count;
                    let new = Pos {
                        slot: (end_abs % u32::from(size)) as u16,
                        wrap: (end_abs / u32::from(size)) % 2 == 0,
                    };
                    // Events the driver can set: within one lap behind `new`.
                    for ev_abs in end_abs.saturating_sub(u32::from(size))..end_abs + 1 {
                        let ev = Pos {
                            slot: (ev_abs % u32::from(size)) as u16,
                            wrap: (ev_abs / u32::from(size)) % 2 == 0,
                        };
                        let want =
                            count == u32::from(size) || (ev_abs >= start_abs && ev_abs < end_abs);
                        let got =
                            should_notify(desc_mode(ev.slot, ev.wrap), true, size, new, count);
                        assert_eq!(
                            got, want,
                            "size {size} start {start_abs} count {count} ev {ev_abs}"
                        );
                    }
                }
            }
        }
    }
}
