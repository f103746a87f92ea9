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

use super::CrashPoint;
use crate::Error;
use crate::memory::SharedRegion;

const VERSION: usize = 8;
const DESC_NUM: usize = 10;
const LAST_BATCH_HEAD: usize = 12;
const USED_IDX: usize = 14;
const DESC: usize = 16;
const DESC_SIZE: usize = 16;
const E_INFLIGHT: usize = 0;
const E_NEXT: usize = 6;
const E_COUNTER: usize = 8;

/// The region format version this code reads and writes.
pub const INFLIGHT_VERSION: u16 = 1;

fn bad(reason: &'static str) -> Error {
    Error::InvalidInflight { reason }
}

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
        let a = region.area();
        let version = a
            .load_u16(VERSION, Acquire)
            .ok_or(bad("region shorter than its header"))?;
        let fits = |n: u16| DESC + DESC_SIZE * usize::from(n) <= region.len();
        let desc_num = if version == 0 {
            if !fits(queue_size) {
                return Err(bad("region too small for the queue"));
            }
            let ok = a.store_u64(0, 0, Relaxed).is_some()
                && a.store_u16(DESC_NUM, queue_size, Relaxed).is_some()
                && a.store_u16(LAST_BATCH_HEAD, 0, Relaxed).is_some()
                && a.store_u16(USED_IDX, used_idx, Relaxed).is_some()
                && a.store_u16(VERSION, INFLIGHT_VERSION, Release).is_some();
            if !ok {
                return Err(bad("region misaligned"));
            }
            queue_size
        } else {
            if version != INFLIGHT_VERSION {
                return Err(bad("unknown region version"));
            }
            let n = a.load_u16(DESC_NUM, Relaxed).unwrap_or(0);
            if n < queue_size {
                return Err(bad("desc_num smaller than the queue size"));
            }
            if !fits(n) {
                return Err(bad("region shorter than desc_num entries"));
            }
            n
        };
        let mut this = SplitInflight {
            region,
            desc_num,
            counter: 0,
            crash: CrashPoint::default(),
        };
        this.counter = this
            .entries()
            .filter(|&i| this.is_inflight(i))
            .map(|i| this.counter_of(i).saturating_add(1))
            .max()
            .unwrap_or(0);
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
