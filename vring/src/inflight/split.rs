//! Inflight tracking for split rings (vhost-user spec §7.12, split layout and
//! algorithm).
//!
//! Region layout (`QueueRegionSplit`, native endian): a 16-byte header
//! `features u64 @0, version u16 @8, desc_num u16 @10, last_batch_head u16
//! @12, used_idx u16 @14`, then `desc_num` entries of 16 bytes
//! (`DescStateSplit`: `inflight u8 @0, next u16 @6, counter u64 @8`).
//!
//! The queue drives it (see [`DeviceQueue::set_inflight`]):
//! - pop of head `i`: `desc[i].counter = counter++`, then `desc[i].inflight = 1`;
//! - `add_used` of head `i`: `desc[i].next = last_batch_head`, then
//!   `last_batch_head = i` (the batch is a list);
//! - publish of a batch of `n`: `used->idx` is stored, then `inflight` is
//!   cleared on the `n` entries of the list, then `used_idx = used->idx`.
//!
//! A crash anywhere in that sequence leaves a region from which
//! [`DeviceQueue::recover_inflight`] finds exactly the chains that the guest
//! has not seen completed: if `used_idx != used->idx` the batch list is walked
//! and cleared first, then the remaining entries are resubmitted in ascending
//! counter order.
//!
//! [`DeviceQueue::set_inflight`]: crate::split::DeviceQueue::set_inflight
//! [`DeviceQueue::recover_inflight`]: crate::split::DeviceQueue::recover_inflight

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use super::{CrashPoint, DESC_NUM, VERSION, bad, next_counter, open_region};
use crate::Error;
use crate::memory::SharedRegion;

const LAST_BATCH_HEAD: usize = 12;
const USED_IDX: usize = 14;
const DESC: usize = 16;
const DESC_SIZE: usize = 16;
const E_INFLIGHT: usize = 0;
const E_NEXT: usize = 6;
const E_COUNTER: usize = 8;

/// The region format version this code reads and writes.
pub const INFLIGHT_VERSION: u16 = super::REGION_VERSION;

/// One split queue's inflight region, attached to a
/// [`split::DeviceQueue`](crate::split::DeviceQueue).
#[derive(Debug, Clone)]
pub struct SplitInflight {
    region: SharedRegion,
    desc_num: u16,
    counter: u64,
    pub(crate) crash: CrashPoint,
}

impl SplitInflight {
    /// Opens `region` (one queue's part of the buffer, see
    /// [`queue_region`](super::queue_region)) for a queue of `queue_size`
    /// descriptors whose `used->idx` is `used_idx`.
    ///
    /// A zero-filled region (version 0, a new buffer) is initialised; an
    /// existing one is checked (version, `desc_num` ≥ the queue size, length)
    /// and left as it is for recovery.
    pub fn open(region: SharedRegion, queue_size: u16, used_idx: u16) -> Result<Self, Error> {
        let desc_num = open_region(&region, queue_size, entry, |a| {
            a.store_u64(0, 0, Relaxed).is_some()
                && a.store_u16(DESC_NUM, queue_size, Relaxed).is_some()
                && a.store_u16(LAST_BATCH_HEAD, 0, Relaxed).is_some()
                && a.store_u16(USED_IDX, used_idx, Relaxed).is_some()
                && a.store_u16(VERSION, INFLIGHT_VERSION, Release).is_some()
        })?;
        let mut this = SplitInflight {
            region,
            desc_num,
            counter: 0,
            crash: CrashPoint::default(),
        };
        this.counter = next_counter(this.entries(), |i| {
            this.is_inflight(i).then(|| this.counter_of(i))
        });
        Ok(this)
    }

    /// The region (e.g. to hand it to a successor).
    pub fn region(&self) -> &SharedRegion {
        &self.region
    }

    /// Whether head `head` is recorded as in flight.
    pub fn is_inflight(&self, head: u16) -> bool {
        self.region
            .area()
            .load_u8(entry(head) + E_INFLIGHT, Acquire)
            == Some(1)
    }

    /// Number of chains recorded as in flight.
    pub fn inflight_count(&self) -> usize {
        self.entries().filter(|&i| self.is_inflight(i)).count()
    }

    fn entries(&self) -> std::ops::Range<u16> {
        0..self.desc_num
    }

    fn counter_of(&self, head: u16) -> u64 {
        self.region
            .area()
            .load_u64(entry(head) + E_COUNTER, Relaxed)
            .unwrap_or(0)
    }

    /// A chain was fetched: counter first, then the inflight flag.
    #[inline]
    pub(crate) fn on_pop(&mut self, head: u16) {
        let a = self.region.area();
        let e = entry(head);
        if self.crash.alive() {
            a.store_u64(e + E_COUNTER, self.counter, Relaxed);
        }
        self.counter = self.counter.wrapping_add(1);
        if self.crash.alive() {
            a.store_u8(e + E_INFLIGHT, 1, Release);
        }
    }

    /// A used element was written for `head`: link it into the batch list.
    #[inline]
    pub(crate) fn on_add_used(&mut self, head: u16) {
        let a = self.region.area();
        let last = a.load_u16(LAST_BATCH_HEAD, Relaxed).unwrap_or(0);
        if self.crash.alive() {
            a.store_u16(entry(head) + E_NEXT, last, Relaxed);
        }
        if self.crash.alive() {
            a.store_u16(LAST_BATCH_HEAD, head, Release);
        }
    }

    /// The batch of the last `count` linked heads was published with
    /// `used->idx = used_idx` (the caller has fenced after that store): clear
    /// their flags, then record the index.
    #[inline]
    pub(crate) fn on_published(&mut self, count: u16, used_idx: u16) {
        let a = self.region.area();
        let mut head = a.load_u16(LAST_BATCH_HEAD, Relaxed).unwrap_or(0);
        for _ in 0..count {
            if !self.crash.alive() {
                return;
            }
            a.store_u8(entry(head) + E_INFLIGHT, 0, Relaxed);
            head = a.load_u16(entry(head) + E_NEXT, Relaxed).unwrap_or(0);
        }
        if self.crash.alive() {
            a.store_u16(USED_IDX, used_idx, Release);
        }
    }

    /// The recovery of vhost-user spec §7.12: completes a batch whose used
    /// index reached the guest, then returns the heads still in flight in
    /// ascending counter order (submission order). `queue_size` bounds the
    /// heads; `used_idx` is the ring's current `used->idx`.
    pub(crate) fn recover(&mut self, queue_size: u16, used_idx: u16) -> Result<Vec<u16>, Error> {
        let a = *self.region.area();
        let recorded = a.load_u16(USED_IDX, Acquire).unwrap_or(0);
        if recorded != used_idx {
            // The guest saw a batch whose flags were not all cleared.
            let n = used_idx.wrapping_sub(recorded);
            if n > self.desc_num {
                return Err(bad("used index ahead of the recorded batch"));
            }
            let mut head = a.load_u16(LAST_BATCH_HEAD, Relaxed).unwrap_or(0);
            for _ in 0..n {
                if head >= self.desc_num {
                    return Err(bad("batch list leaves the region"));
                }
                a.store_u8(entry(head) + E_INFLIGHT, 0, Relaxed);
                head = a.load_u16(entry(head) + E_NEXT, Relaxed).unwrap_or(0);
            }
            a.store_u16(USED_IDX, used_idx, Release);
        }
        let mut heads: Vec<u16> = self.entries().filter(|&i| self.is_inflight(i)).collect();
        if heads.iter().any(|&h| h >= queue_size) {
            return Err(bad("in-flight head outside the queue"));
        }
        heads.sort_by_key(|&h| self.counter_of(h));
        self.counter = heads
            .last()
            .map_or(0, |&h| self.counter_of(h).saturating_add(1));
        Ok(heads)
    }
}

#[inline]
fn entry(head: u16) -> usize {
    DESC + DESC_SIZE * usize::from(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inflight::{RingLayout, queue_region, queue_region_size};
    use crate::memory::BufferMemory;
    use crate::split::{AvailChain, DeviceQueue, DriverQueue};
    use crate::{QueueConfig, RingFeatures, RingPosition};

    const Q: u16 = 8;

    fn config() -> QueueConfig {
        QueueConfig {
            size: Q,
            desc_table: 0,
            driver_area: 0x1000,
            device_area: 0x2000,
            features: RingFeatures::default(),
        }
    }

    fn used_idx(mem: &BufferMemory) -> u16 {
        let mut b = [0u8; 2];
        mem.read(0x2002, &mut b).unwrap();
        u16::from_le_bytes(b)
    }

    /// A new back-end process: builds a queue on the same memory (QEMU
    /// passes used->idx as the base after a crash), attaches the region,
    /// recovers.
    fn restart<'m>(
        mem: &'m BufferMemory,
        region: &SharedRegion,
    ) -> (DeviceQueue<&'m BufferMemory>, Vec<u16>) {
        let pos = RingPosition {
            next_avail: used_idx(mem),
            ..RingPosition::default()
        };
        let mut q = DeviceQueue::new(mem, &config(), pos).unwrap();
        q.set_inflight(Some(region.clone())).unwrap();
        let chains = q.recover_inflight().unwrap();
        (q, chains.iter().map(AvailChain::id).collect())
    }

    /// Four one-descriptor buffers offered (heads 0..4), and an empty region.
    fn setup() -> (SharedRegion, DriverQueue<&'static BufferMemory>) {
        let mem: &'static BufferMemory = Box::leak(Box::new(BufferMemory::new(0, 0x10000)));
        let region = SharedRegion::zeroed(queue_region_size(RingLayout::Split, Q));
        let mut drv = DriverQueue::new(mem, &config()).unwrap();
        for i in 0..4u64 {
            drv.add(&[(0x8000 + i * 0x100, 16)], &[]).unwrap();
        }
        drv.publish();
        (region, drv)
    }

    #[test]
    fn a_crash_at_every_store_of_a_batch_completion_loses_nothing() {
        // Completion of {2, 0} as one batch: 2 × (used element, next,
        // last_batch_head) + used idx + 2 flag clears + used_idx = 10 stores.
        for k in 0..=11u64 {
            let (region, drv) = setup();
            let mem = *drv.memory();
            let mut q = DeviceQueue::new(mem, &config(), RingPosition::default()).unwrap();
            q.set_inflight(Some(region.clone())).unwrap();
            assert!(q.recover_inflight().unwrap().is_empty());
            let c: Vec<_> = (0..4).map(|_| q.pop().unwrap().unwrap()).collect();
            assert_eq!(q.inflight().unwrap().inflight_count(), 4);
            q.crash_after(k);
            q.add_used(&c[2], 0).unwrap();
            q.add_used(&c[0], 0).unwrap();
            q.publish_used();
            drop(q);
            let published = used_idx(mem) == 2;
            assert_eq!(published, k >= 7, "k = {k}");
            let (mut q2, heads) = restart(mem, &region);
            let expected: &[u16] = if published { &[1, 3] } else { &[0, 1, 2, 3] };
            assert_eq!(heads, expected, "crash after {k} stores");
            // The new process resumes after everything that was popped.
            assert_eq!(q2.position().next_avail, 4);
            assert!(q2.pop().unwrap().is_none());
            // Completing the resubmitted chains empties the region.
            for &h in &heads {
                q2.push(&AvailChain { head: h }, 0).unwrap();
            }
            assert_eq!(q2.inflight().unwrap().inflight_count(), 0);
            let (_, again) = restart(mem, &region);
            assert!(again.is_empty(), "k = {k}");
        }
    }

    #[test]
    fn a_crash_inside_pop_makes_the_chain_pop_again() {
        for k in 0..=2u64 {
            let (region, drv) = setup();
            let mem = *drv.memory();
            let mut q = DeviceQueue::new(mem, &config(), RingPosition::default()).unwrap();
            q.set_inflight(Some(region.clone())).unwrap();
            q.pop().unwrap().unwrap();
            q.crash_after(k);
            q.pop().unwrap().unwrap();
            drop(q);
            let (mut q2, heads) = restart(mem, &region);
            if k < 2 {
                // The flag never reached the region: head 1 is popped again.
                assert_eq!(heads, [0]);
                assert_eq!(q2.pop().unwrap().map(|c| c.id()), Some(1));
            } else {
                assert_eq!(heads, [0, 1]);
                assert_eq!(q2.pop().unwrap().map(|c| c.id()), Some(2));
            }
        }
    }

    #[test]
    fn resubmission_follows_submission_order_not_head_order() {
        let (region, mut drv) = setup();
        let mem = *drv.memory();
        let mut q = DeviceQueue::new(mem, &config(), RingPosition::default()).unwrap();
        q.set_inflight(Some(region.clone())).unwrap();
        let c: Vec<_> = (0..4).map(|_| q.pop().unwrap().unwrap()).collect();
        q.push(&c[0], 0).unwrap();
        q.push(&c[1], 0).unwrap();
        assert_eq!(drv.pop_used().unwrap().map(|u| u.0), Some(0));
        assert_eq!(drv.pop_used().unwrap().map(|u| u.0), Some(1));
        // Heads 0 and 1 come back (FIFO free list: 4 first, then 0).
        for _ in 0..6 {
            drv.add(&[(0x9000, 1)], &[]).unwrap();
        }
        drv.publish();
        let later: Vec<_> = (0..6).map(|_| q.pop().unwrap().unwrap().id()).collect();
        assert_eq!(later, [4, 5, 6, 7, 0, 1]);
        drop(q);
        let (q2, heads) = restart(mem, &region);
        assert_eq!(heads, [2, 3, 4, 5, 6, 7, 0, 1]);
        assert_eq!(q2.position().next_avail, 2 + 8);
    }

    #[test]
    fn regions_are_validated() {
        let mem = BufferMemory::new(0, 0x10000);
        let mut q = DeviceQueue::new(&mem, &config(), RingPosition::default()).unwrap();
        assert!(matches!(
            q.recover_inflight(),
            Err(Error::InvalidInflight { .. })
        ));
        let small = SharedRegion::zeroed(16 + 16 * 7);
        assert!(matches!(
            q.set_inflight(Some(small)),
            Err(Error::InvalidInflight { .. })
        ));
        let r = SharedRegion::zeroed(queue_region_size(RingLayout::Split, 4));
        SplitInflight::open(r.clone(), 4, 0).unwrap();
        assert!(matches!(
            q.set_inflight(Some(r)),
            Err(Error::InvalidInflight {
                reason: "desc_num smaller than the queue size"
            })
        ));
        let r = SharedRegion::zeroed(64);
        r.as_slice().write_at(8, &2u16.to_ne_bytes()).unwrap();
        assert!(matches!(
            q.set_inflight(Some(r)),
            Err(Error::InvalidInflight {
                reason: "unknown region version"
            })
        ));
        // A region formatted for a larger queue is fine (GET_INFLIGHT_FD
        // sizes for the maximum queue size).
        let buf = SharedRegion::zeroed(2 * queue_region_size(RingLayout::Split, 16));
        let part = queue_region(&buf, RingLayout::Split, 16, 1).unwrap();
        SplitInflight::open(part.clone(), 16, 0).unwrap();
        q.set_inflight(Some(part)).unwrap();
        assert!(q.recover_inflight().unwrap().is_empty());
    }

    #[test]
    fn garbage_regions_are_errors_not_panics() {
        let mem = BufferMemory::new(0, 0x10000);
        let mut q = DeviceQueue::new(&mem, &config(), RingPosition::default()).unwrap();
        let r = SharedRegion::zeroed(queue_region_size(RingLayout::Split, Q));
        let s = r.as_slice();
        s.write_at(8, &1u16.to_ne_bytes()).unwrap(); // version
        s.write_at(10, &Q.to_ne_bytes()).unwrap(); // desc_num
        s.write_at(12, &500u16.to_ne_bytes()).unwrap(); // last_batch_head
        s.write_at(14, &65535u16.to_ne_bytes()).unwrap(); // used_idx = used->idx - 1
        q.set_inflight(Some(r.clone())).unwrap();
        assert!(matches!(
            q.recover_inflight(),
            Err(Error::InvalidInflight {
                reason: "batch list leaves the region"
            })
        ));
        s.write_at(14, &100u16.to_ne_bytes()).unwrap();
        assert!(matches!(
            q.recover_inflight(),
            Err(Error::InvalidInflight { .. })
        ));
    }
}
