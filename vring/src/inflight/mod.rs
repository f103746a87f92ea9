//! Inflight I/O tracking (vhost-user spec §7.12).
//!
//! The back-end allocates one shared buffer (GET_INFLIGHT_FD) that holds a
//! region per queue, `queue0 | queue1 | … | queue(N-1)`, all of the same
//! stride; the front-end keeps it and hands it back (SET_INFLIGHT_FD) when the
//! device starts again, e.g. after the back-end crashed. A queue with a region
//! attached records which chains it has popped and not yet completed, so a new
//! back-end process can resubmit exactly those.
//!
//! This module sizes the buffer and cuts it into per-queue parts; the
//! per-layout algorithms live in [`split`] (and the packed module).
//!
//! ```
//! use vring::inflight::{queue_region, region_size, RingLayout};
//! use vring::memory::SharedRegion;
//! // Two split queues of 256 descriptors: 64-byte aligned strides.
//! let len = region_size(RingLayout::Split, 2, 256);
//! assert_eq!(len, 2 * 4160);
//! let buffer = SharedRegion::zeroed(len);
//! let q1 = queue_region(&buffer, RingLayout::Split, 256, 1).unwrap();
//! assert_eq!(q1.len(), 4160);
//! ```

pub mod packed;
pub mod split;

use std::ops::Range;
use std::sync::atomic::Ordering::{Acquire, Relaxed};

use crate::Error;
use crate::memory::{RawArea, SharedRegion};

/// Offset of the header's `version` (u16), split and packed alike.
const VERSION: usize = 8;
/// Offset of the header's `desc_num` (u16), split and packed alike.
const DESC_NUM: usize = 10;
/// The region format version this code reads and writes (both layouts'
/// `INFLIGHT_VERSION`).
const REGION_VERSION: u16 = 1;

/// Alignment of each queue's region (`INFLIGHT_ALIGNMENT` of libvhost-user
/// and DPDK).
pub const INFLIGHT_ALIGNMENT: usize = 64;

/// Which ring layout a buffer's regions are formatted for (QEMU sends
/// SET_FEATURES before GET_INFLIGHT_FD, so the back-end knows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingLayout {
    /// Split rings: `QueueRegionSplit`, 16-byte header + 16 bytes per
    /// descriptor.
    Split,
    /// Packed rings: `QueueRegionPacked`, 32-byte header + 32 bytes per
    /// descriptor.
    Packed,
}

/// Bytes one queue of `queue_size` descriptors takes in the inflight buffer:
/// the stride between queue regions.
///
/// Split: libvhost-user's `ALIGN_UP(16 * Q + 2, 64)`; packed: DPDK's
/// `ALIGN_UP(32 * Q + 29, 64)` (vhost-user spec §7.12). Both cover the whole
/// header and descriptor array for every Q.
pub const fn queue_region_size(layout: RingLayout, queue_size: u16) -> usize {
    let q = queue_size as usize;
    let raw = match layout {
        RingLayout::Split => 16 * q + 2,
        RingLayout::Packed => 32 * q + 29,
    };
    raw.div_ceil(INFLIGHT_ALIGNMENT) * INFLIGHT_ALIGNMENT
}

/// Size of the whole inflight buffer (`mmap_size` of GET_INFLIGHT_FD's reply)
/// for `num_queues` queues of `queue_size` descriptors.
pub const fn region_size(layout: RingLayout, num_queues: u16, queue_size: u16) -> usize {
    queue_region_size(layout, queue_size) * num_queues as usize
}

/// Queue `index`'s part of an inflight buffer formatted for `num_queues` ×
/// `queue_size` (the values of GET/SET_INFLIGHT_FD); an error if the buffer is
/// too small for that queue.
pub fn queue_region(
    buffer: &SharedRegion,
    layout: RingLayout,
    queue_size: u16,
    index: u16,
) -> Result<SharedRegion, Error> {
    let stride = queue_region_size(layout, queue_size);
    buffer
        .subregion(stride * usize::from(index), stride)
        .map_err(|_| Error::InvalidInflight {
            reason: "buffer too small for this queue",
        })
}

fn bad(reason: &'static str) -> Error {
    Error::InvalidInflight { reason }
}

/// Opens one queue's region, split and packed alike, and returns its
/// `desc_num`. `entries_end(n)` is the offset just past `n` entries.
///
/// A zero-filled region (version 0, a new buffer) must hold `queue_size`
/// entries and is initialised by `init`, which stores the version last and
/// says whether every store was possible (`false`: the region is
/// misaligned). An existing one is checked (version, `desc_num` ≥ the queue
/// size, length) and left as it is for recovery.
fn open_region(
    region: &SharedRegion,
    queue_size: u16,
    entries_end: impl Fn(u16) -> usize,
    init: impl FnOnce(&RawArea) -> bool,
) -> Result<u16, Error> {
    let a = region.area();
    let version = a
        .load_u16(VERSION, Acquire)
        .ok_or(bad("region shorter than its header"))?;
    let fits = |n: u16| entries_end(n) <= region.len();
    if version == 0 {
        if !fits(queue_size) {
            return Err(bad("region too small for the queue"));
        }
        if !init(a) {
            return Err(bad("region misaligned"));
        }
        return Ok(queue_size);
    }
    if version != REGION_VERSION {
        return Err(bad("unknown region version"));
    }
    let n = a.load_u16(DESC_NUM, Relaxed).unwrap_or(0);
    if n < queue_size {
        return Err(bad("desc_num smaller than the queue size"));
    }
    if !fits(n) {
        return Err(bad("region shorter than desc_num entries"));
    }
    Ok(n)
}

/// The counter the next pop records, for a region opened for recovery: one past the
/// highest counter of an entry in flight (`counter_in_flight`: `None` for an entry not in
/// flight), 0 when none is.
fn next_counter(entries: Range<u16>, counter_in_flight: impl Fn(u16) -> Option<u64>) -> u64 {
    entries
        .filter_map(counter_in_flight)
        .map(|c| c.saturating_add(1))
        .max()
        .unwrap_or(0)
}

/// Simulated process death for crash-consistency tests: every store of a
/// completion sequence first asks [`alive`](CrashPoint::alive); once the fuel
/// is spent, no further store happens (as if the process had been killed
/// there). Outside tests it is always alive and compiles to nothing.
#[derive(Debug, Clone, Default)]
pub(crate) struct CrashPoint {
    #[cfg(test)]
    fuel: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
}

impl CrashPoint {
    /// Whether the next store may happen (spending one unit of fuel).
    #[inline(always)]
    pub(crate) fn alive(&self) -> bool {
        #[cfg(test)]
        if let Some(fuel) = &self.fuel {
            use std::sync::atomic::Ordering::Relaxed;
            return fuel
                .fetch_update(Relaxed, Relaxed, |f| f.checked_sub(1))
                .is_ok();
        }
        true
    }

    /// Dies after `stores` more stores.
    #[cfg(test)]
    pub(crate) fn after(stores: u64) -> Self {
        CrashPoint {
            fuel: Some(std::sync::Arc::new(std::sync::atomic::AtomicU64::new(
                stores,
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides_match_libvhost_user_and_dpdk() {
        assert_eq!(queue_region_size(RingLayout::Split, 1), 64);
        assert_eq!(queue_region_size(RingLayout::Split, 3), 64);
        assert_eq!(queue_region_size(RingLayout::Split, 128), 2112);
        assert_eq!(queue_region_size(RingLayout::Packed, 1), 64);
        assert_eq!(queue_region_size(RingLayout::Packed, 256), 8256);
        assert_eq!(queue_region_size(RingLayout::Packed, 255), 8192);
        for q in 1..=1024u16 {
            let q_us = usize::from(q);
            assert!(queue_region_size(RingLayout::Split, q) >= 16 + 16 * q_us);
            assert!(queue_region_size(RingLayout::Packed, q) >= 32 + 32 * q_us);
        }
    }

    #[test]
    fn queue_regions_are_disjoint_strides() {
        let buf = SharedRegion::zeroed(region_size(RingLayout::Split, 3, 8));
        let a = queue_region(&buf, RingLayout::Split, 8, 0).unwrap();
        let c = queue_region(&buf, RingLayout::Split, 8, 2).unwrap();
        c.as_slice().write_at(0, &[7]).unwrap();
        let mut b = [0u8; 1];
        buf.as_slice().read_at(2 * 192, &mut b).unwrap();
        assert_eq!(b, [7]);
        assert_eq!(a.len(), 192);
        assert!(matches!(
            queue_region(&buf, RingLayout::Split, 8, 3),
            Err(Error::InvalidInflight { .. })
        ));
    }

    #[test]
    fn crash_point_spends_fuel() {
        let c = CrashPoint::after(2);
        assert!(c.alive() && c.alive());
        assert!(!c.alive() && !c.alive());
        assert!(CrashPoint::default().alive());
    }
}
