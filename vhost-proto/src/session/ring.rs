//! Ring configuration as handed to a device when a ring starts.
//!
//! These mirror the `vring` crate's `QueueConfig`, `RingFeatures` and `RingPosition` field by
//! field (vhost-proto does not depend on vring), so a binding converts them 1:1.

use crate::wire::{VirtioFeatures, VringBase, VringEndian};

/// The address space of the ring addresses in a [`RingConfig`] (spec §3.5, §7.10).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddressSpace {
    /// Guest-physical addresses: translated from front-end user addresses through the memory
    /// table, or sent as such with GPA_ADDRESSES.
    GuestPhysical,
    /// I/O virtual addresses (VIRTIO_F_IOMMU_PLATFORM negotiated): the device translates them
    /// through the IOTLB it builds from IOTLB_MSG events.
    Iova,
}

/// The negotiated virtio features a ring engine needs (virtqueue.md §6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RingFeatures {
    /// VIRTIO_F_EVENT_IDX.
    pub event_idx: bool,
    /// VIRTIO_F_INDIRECT_DESC.
    pub indirect: bool,
    /// VIRTIO_F_IN_ORDER.
    pub in_order: bool,
}

impl RingFeatures {
    /// Picks the ring-relevant bits out of a negotiated feature set.
    pub fn from_features(f: VirtioFeatures) -> Self {
        RingFeatures {
            event_idx: f.contains(VirtioFeatures::EVENT_IDX),
            indirect: f.contains(VirtioFeatures::INDIRECT_DESC),
            in_order: f.contains(VirtioFeatures::IN_ORDER),
        }
    }
}

/// The device's position in a ring, as SET_VRING_BASE / GET_VRING_BASE carry it (spec §3.3,
/// §3.4). Split rings use `next_avail` only (the wrap counters stay `true`, `next_used` 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RingPosition {
    /// Split: next available-ring index (free-running). Packed: next descriptor slot.
    pub next_avail: u16,
    /// Packed: driver ring wrap counter.
    pub avail_wrap: bool,
    /// Packed: next slot for a used descriptor.
    pub next_used: u16,
    /// Packed: device ring wrap counter.
    pub used_wrap: bool,
}

impl Default for RingPosition {
    /// The position of a fresh ring: index 0, wrap counters set (virtqueue.md).
    fn default() -> Self {
        RingPosition {
            next_avail: 0,
            avail_wrap: true,
            next_used: 0,
            used_wrap: true,
        }
    }
}

impl RingPosition {
    /// Interprets a wire base for a split (`packed == false`) or packed ring.
    pub fn from_base(base: VringBase, packed: bool) -> Self {
        if packed {
            let (next_avail, avail_wrap) = (base.packed_avail_idx(), base.packed_avail_wrap());
            // DPDK's virtio-user sends only the avail half (bits 16–31 zero, e.g. 0x8000 on a
            // fresh start), and DPDK's own vhost library ignores the used half, taking
            // used = avail. The spec (§3.4) defines the used half, and QEMU fills it. A zero
            // used half with a non-zero avail half would mean the device stopped with every
            // descriptor since the used position still in flight, which GET_VRING_BASE's
            // "complete in-flight requests first" rule (§7.2) excludes; read it as "not sent"
            // and resume used at the avail position, as DPDK does. Observed with DPDK 22.11
            // testpmd `net_virtio_user,packed_vq=1` (tests/data/transcripts).
            if base.0 >> 16 == 0 && (next_avail != 0 || avail_wrap) {
                return RingPosition {
                    next_avail,
                    avail_wrap,
                    next_used: next_avail,
                    used_wrap: avail_wrap,
                };
            }
            RingPosition {
                next_avail,
                avail_wrap,
                next_used: base.packed_used_idx(),
                used_wrap: base.packed_used_wrap(),
            }
        } else {
            RingPosition {
                next_avail: base.split_next_avail(),
                ..RingPosition::default()
            }
        }
    }

    /// The wire base for a split or packed ring.
    pub fn to_base(self, packed: bool) -> VringBase {
        if packed {
            VringBase::packed(
                self.next_avail,
                self.avail_wrap,
                self.next_used,
                self.used_wrap,
            )
        } else {
            VringBase::split(self.next_avail)
        }
    }
}

/// Everything a device needs to run one ring, handed out when the ring starts (and again
/// when its addresses change while it runs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RingConfig {
    /// Vring index.
    pub index: u16,
    /// Queue size (SET_VRING_NUM).
    pub size: u16,
    /// Packed layout (VIRTIO_F_RING_PACKED negotiated) rather than split.
    pub packed: bool,
    /// Descriptor table (split) / descriptor ring (packed).
    pub desc_table: u64,
    /// Available ring (split) / driver event suppression (packed).
    pub driver_area: u64,
    /// Used ring (split) / device event suppression (packed).
    pub device_area: u64,
    /// What kind of addresses the three above are.
    pub address_space: AddressSpace,
    /// Guest-physical address for dirty-logging the used ring, when SET_VRING_ADDR set
    /// `VHOST_VRING_F_LOG` (spec §7.7).
    pub used_log: Option<u64>,
    /// Negotiated ring features.
    pub features: RingFeatures,
    /// Where to resume (SET_VRING_BASE, or the position given when the ring last stopped).
    pub position: RingPosition,
    /// Byte order set by SET_VRING_ENDIAN for a legacy ring, if any (spec §5 id 23).
    pub endian: Option<VringEndian>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_round_trips() {
        let p = RingPosition {
            next_avail: 0x1234,
            avail_wrap: false,
            next_used: 7,
            used_wrap: true,
        };
        assert_eq!(RingPosition::from_base(p.to_base(true), true), p);
        let s = RingPosition {
            next_avail: 0xfffe,
            ..RingPosition::default()
        };
        assert_eq!(RingPosition::from_base(s.to_base(false), false), s);
    }

    #[test]
    fn packed_base_without_used_half_resumes_used_at_avail() {
        // DPDK virtio-user's SET_VRING_BASE on a fresh packed ring: 0x8000.
        let p = RingPosition::from_base(VringBase(0x8000), true);
        assert_eq!(p, RingPosition::default());
        let p = RingPosition::from_base(VringBase(0x0000_0005), true);
        assert_eq!(
            (p.next_avail, p.avail_wrap, p.next_used, p.used_wrap),
            (5, false, 5, false)
        );
        // QEMU's full form is taken as sent.
        let p = RingPosition::from_base(VringBase(0x8003_0005), true);
        assert_eq!(
            (p.next_avail, p.avail_wrap, p.next_used, p.used_wrap),
            (5, false, 3, true)
        );
    }
}
