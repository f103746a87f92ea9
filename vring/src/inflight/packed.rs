//! Inflight tracking for packed rings (vhost-user spec §7.12, packed layout
//! and algorithm, as DPDK implements it).
//!
//! Region layout (`QueueRegionPacked`, native endian): a header `features u64
//! @0, version u16 @8, desc_num u16 @10, free_head u16 @12, old_free_head u16
//! @14, used_idx u16 @16, old_used_idx u16 @18, used_wrap_counter u8 @20,
//! old_used_wrap_counter u8 @21`, then at offset **32** `desc_num` entries of
//! 32 bytes (`DescStatePacked`: `inflight u8 @0, next u16 @2, last u16 @4,
//! num u16 @6, counter u64 @8, id u16 @16, flags u16 @18, len u32 @20, addr
//! u64 @24`). The entries not in flight form a free list linked by `next`.
//!
//! The queue drives it (see
//! [`DeviceQueue::set_inflight`](crate::packed::DeviceQueue::set_inflight)):
//! - pop: the buffer's head entry is `old_free_head`: `num = 0`, `counter`,
//!   `inflight = 1`; each ring descriptor is copied into the entry at
//!   `free_head`, which then moves along the free list; the head's `last` and
//!   `num` follow; at the end `old_free_head = free_head`;
//! - `add_used`: the buffer's entries go back to the front of the free list
//!   (`desc[last].next = free_head`, `free_head = head`) and `used_idx` /
//!   `used_wrap_counter` move to the used position after the buffer;
//! - publish: after the used descriptors' flags are written (the first one
//!   last), `inflight` is cleared on the batch's entries and the `old_*`
//!   fields take the current values: that commits the batch.
//!
//! Recovery ([`DeviceQueue::recover_inflight`](crate::packed::DeviceQueue::recover_inflight)):
//! if the used position moved past the committed one, the ring slot at
//! `old_used_idx` (the batch's first used descriptor, flagged last) says
//! whether the guest saw the batch: if it no longer shows the available
//! pattern of `old_used_wrap_counter`, the batch is committed; otherwise it is
//! rolled back, and the used flags already written for its later descriptors
//! are withdrawn so the guest never sees them. Then `free_head`, `used_idx`
//! and the wrap counter are set from `old_*`, `inflight` is cleared on every
//! entry of the free list (a half-popped buffer, a committed batch), and the
//! entries still in flight are resubmitted in ascending counter order.

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use super::{CrashPoint, DESC_NUM, VERSION, bad, next_counter, open_region};
use crate::Error;
use crate::memory::SharedRegion;
use crate::packed::layout::{Areas, DESC_FLAGS, Pos, RawDesc, avail_bits, is_avail, slot_offset};

const FREE_HEAD: usize = 12;
const OLD_FREE_HEAD: usize = 14;
const USED_IDX: usize = 16;
const OLD_USED_IDX: usize = 18;
const USED_WRAP: usize = 20;
const OLD_USED_WRAP: usize = 21;
const DESC: usize = 32;
const DESC_SIZE: usize = 32;
const E_INFLIGHT: usize = 0;
const E_NEXT: usize = 2;
const E_LAST: usize = 4;
const E_NUM: usize = 6;
const E_COUNTER: usize = 8;
const E_ID: usize = 16;
const E_FLAGS: usize = 18;
const E_LEN: usize = 20;
const E_ADDR: usize = 24;

/// The region format version this code reads and writes.
pub const INFLIGHT_VERSION: u16 = super::REGION_VERSION;

#[inline]
fn entry(i: u16) -> usize {
    DESC + DESC_SIZE * usize::from(i)
}

/// A buffer found in flight by recovery, in submission order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Recovered {
    /// Its head entry.
    pub(crate) head: u16,
    /// The saved copy of its first ring descriptor.
    pub(crate) first: RawDesc,
    /// Its Buffer ID (from the last descriptor).
    pub(crate) id: u16,
    /// The ring slots it took.
    pub(crate) num: u16,
}

/// One packed queue's inflight region, attached to a
/// [`packed::DeviceQueue`](crate::packed::DeviceQueue).
#[derive(Debug, Clone)]
pub struct PackedInflight {
    region: SharedRegion,
    desc_num: u16,
    counter: u64,
    pub(crate) crash: CrashPoint,
}

impl PackedInflight {
    /// Opens `region` (one queue's part of the buffer, see
    /// [`queue_region`](super::queue_region)) for a queue of `queue_size`
    /// descriptors whose device writes its next used descriptor at
    /// `next_used` with wrap counter `used_wrap`.
    ///
    /// A zero-filled region (version 0, a new buffer) is initialised (free
    /// list `next = j + 1`, used position as given); an existing one is
    /// checked (version, `desc_num` ≥ the queue size, length) and left as it
    /// is for recovery.
    pub fn open(
        region: SharedRegion,
        queue_size: u16,
        next_used: u16,
        used_wrap: bool,
    ) -> Result<Self, Error> {
        let desc_num = open_region(&region, queue_size, entry, |a| {
            let mut ok = a.store_u64(0, 0, Relaxed).is_some()
                && a.store_u16(DESC_NUM, queue_size, Relaxed).is_some()
                && a.store_u16(FREE_HEAD, 0, Relaxed).is_some()
                && a.store_u16(OLD_FREE_HEAD, 0, Relaxed).is_some()
                && a.store_u16(USED_IDX, next_used, Relaxed).is_some()
                && a.store_u16(OLD_USED_IDX, next_used, Relaxed).is_some()
                && a.store_u8(USED_WRAP, u8::from(used_wrap), Relaxed)
                    .is_some()
                && a.store_u8(OLD_USED_WRAP, u8::from(used_wrap), Relaxed)
                    .is_some();
            for j in 0..queue_size {
                let e = entry(j);
                ok &= a.store_u8(e + E_INFLIGHT, 0, Relaxed).is_some()
                    && a.store_u16(e + E_NEXT, j + 1, Relaxed).is_some();
            }
            ok &= a.store_u16(VERSION, INFLIGHT_VERSION, Release).is_some();
            ok
        })?;
        let mut this = PackedInflight {
            region,
            desc_num,
            counter: 0,
            crash: CrashPoint::default(),
        };
        this.counter = next_counter(0..desc_num, |i| {
            this.is_inflight(i).then(|| this.counter_of(i))
        });
        Ok(this)
    }

    /// The region (e.g. to hand it to a successor).
    pub fn region(&self) -> &SharedRegion {
        &self.region
    }

    /// Number of buffers recorded as in flight.
    pub fn inflight_count(&self) -> usize {
        (0..self.desc_num).filter(|&i| self.is_inflight(i)).count()
    }

    fn is_inflight(&self, i: u16) -> bool {
        self.region.area().load_u8(entry(i) + E_INFLIGHT, Acquire) == Some(1)
    }

    fn counter_of(&self, i: u16) -> u64 {
        self.region
            .area()
            .load_u64(entry(i) + E_COUNTER, Relaxed)
            .unwrap_or(0)
    }

    fn load(&self, offset: usize) -> u16 {
        self.region.area().load_u16(offset, Relaxed).unwrap_or(0)
    }

    fn store(&self, offset: usize, v: u16) {
        if self.crash.alive() {
            let _ = self.region.area().store_u16(offset, v, Release);
        }
    }

    fn store_u8(&self, offset: usize, v: u8) {
        if self.crash.alive() {
            let _ = self.region.area().store_u8(offset, v, Release);
        }
    }

    /// The `next` link of entry `i` (for walking a recovered buffer).
    pub(crate) fn entry_next(&self, i: u16) -> Result<u16, Error> {
        let next = self.load(entry(i) + E_NEXT);
        if next >= self.desc_num {
            return Err(bad("buffer entry link leaves the region"));
        }
        Ok(next)
    }

    /// The saved ring descriptor of entry `i`.
    pub(crate) fn entry_desc(&self, i: u16) -> Result<RawDesc, Error> {
        let a = self.region.area();
        let e = entry(i);
        let get = || {
            Some(RawDesc {
                addr: a.load_u64(e + E_ADDR, Relaxed)?,
                len: a.load_u32(e + E_LEN, Relaxed)?,
                id: a.load_u16(e + E_ID, Relaxed)?,
                flags: a.load_u16(e + E_FLAGS, Relaxed)?,
            })
        };
        get().ok_or(bad("buffer entry outside the region"))
    }

    /// Starts recording a buffer being popped; returns its head entry.
    #[inline]
    pub(crate) fn begin(&mut self) -> Result<u16, Error> {
        let head = self.load(OLD_FREE_HEAD);
        if head >= self.desc_num {
            return Err(bad(
                "no free entry: more descriptors in flight than the queue holds",
            ));
        }
        let a = self.region.area();
        let e = entry(head);
        if self.crash.alive() {
            a.store_u16(e + E_NUM, 0, Relaxed);
        }
        if self.crash.alive() {
            a.store_u64(e + E_COUNTER, self.counter, Relaxed);
        }
        self.counter = self.counter.wrapping_add(1);
        self.store_u8(e + E_INFLIGHT, 1);
        Ok(head)
    }

    /// Records the next ring descriptor `d` of the buffer whose head entry is
    /// `head`; `last` ends the buffer.
    #[inline]
    pub(crate) fn record(&mut self, head: u16, d: &RawDesc, last: bool) -> Result<(), Error> {
        let free = self.load(FREE_HEAD);
        if free >= self.desc_num {
            return Err(bad("free list exhausted"));
        }
        let a = self.region.area();
        let h = entry(head);
        let num = self.load(h + E_NUM);
        self.store(h + E_NUM, num.wrapping_add(1));
        let e = entry(free);
        if self.crash.alive() {
            a.store_u64(e + E_ADDR, d.addr, Relaxed);
            a.store_u32(e + E_LEN, d.len, Relaxed);
            a.store_u16(e + E_FLAGS, d.flags, Relaxed);
            a.store_u16(e + E_ID, d.id, Relaxed);
        }
        self.store(h + E_LAST, free);
        let next = self.load(e + E_NEXT);
        self.store(FREE_HEAD, next);
        if last {
            self.store(OLD_FREE_HEAD, next);
        }
        Ok(())
    }

    /// Returns the buffer at `head` to the front of the free list (step one
    /// of a completion; the whole batch is released before any used flag is
    /// written).
    #[inline]
    pub(crate) fn release(&mut self, head: u16) {
        if head >= self.desc_num {
            return;
        }
        let last = self.load(entry(head) + E_LAST);
        if last < self.desc_num {
            let free = self.load(FREE_HEAD);
            self.store(entry(last) + E_NEXT, free);
            self.store(FREE_HEAD, head);
        }
    }

    /// Records the used position after the batch (step two).
    #[inline]
    pub(crate) fn set_used(&mut self, used: Pos) {
        self.store(USED_IDX, used.slot);
        self.store_u8(USED_WRAP, u8::from(used.wrap));
    }

    /// The batch's used descriptors are all flagged: clear `inflight` on the
    /// batch's entries (the front of the free list up to the committed free
    /// head), then commit the `old_*` fields.
    #[inline]
    pub(crate) fn on_published(&mut self) {
        let stop = self.load(OLD_FREE_HEAD);
        let mut i = self.load(FREE_HEAD);
        let a = self.region.area();
        for _ in 0..self.desc_num {
            if i == stop || i >= self.desc_num {
                break;
            }
            if a.load_u8(entry(i) + E_INFLIGHT, Relaxed) != Some(0) {
                self.store_u8(entry(i) + E_INFLIGHT, 0);
            }
            i = self.load(entry(i) + E_NEXT);
        }
        self.store(OLD_FREE_HEAD, self.load(FREE_HEAD));
        self.store(OLD_USED_IDX, self.load(USED_IDX));
        self.store_u8(
            OLD_USED_WRAP,
            a.load_u8(USED_WRAP, Relaxed).unwrap_or(1).min(1),
        );
    }

    /// The recovery of vhost-user spec §7.12 (see the module docs): returns
    /// the buffers still in flight in ascending counter order and the used
    /// position to resume at. `areas` is the queue's ring.
    pub(crate) fn recover(
        &mut self,
        areas: &Areas,
        queue_size: u16,
    ) -> Result<(Vec<Recovered>, Pos), Error> {
        let a = *self.region.area();
        let wrap_at = |off: usize| a.load_u8(off, Relaxed).unwrap_or(1) != 0;
        let used = Pos {
            slot: self.load(USED_IDX),
            wrap: wrap_at(USED_WRAP),
        };
        let old = Pos {
            slot: self.load(OLD_USED_IDX),
            wrap: wrap_at(OLD_USED_WRAP),
        };
        if old.slot >= queue_size || used.slot >= queue_size {
            return Err(bad("used index outside the queue"));
        }
        if used != old {
            let flags = areas.load_flags(old.slot).unwrap_or(0);
            if !is_avail(flags, old.wrap) {
                // The batch's first used descriptor reached the guest.
                a.store_u16(OLD_FREE_HEAD, self.load(FREE_HEAD), Relaxed);
                a.store_u16(OLD_USED_IDX, used.slot, Relaxed);
                a.store_u8(OLD_USED_WRAP, u8::from(used.wrap), Release);
            } else {
                // Rolled back: withdraw the later used descriptors the batch
                // already flagged, so the guest never sees them (it only
                // looks past `old` after the first one is flagged).
                let mut p = old.advance(1, queue_size);
                while p != used {
                    let off = slot_offset(p.slot) + DESC_FLAGS;
                    let f = areas.ring.load_u16(off, Relaxed).unwrap_or(0);
                    if crate::packed::layout::is_used(f, p.wrap) {
                        let f = (f & !crate::packed::layout::used_bits(true)) | avail_bits(p.wrap);
                        areas.ring.store_u16(off, f, Release);
                    }
                    p = p.advance(1, queue_size);
                }
            }
        }
        // Roll back whatever the committed state does not cover.
        let free_head = self.load(OLD_FREE_HEAD);
        a.store_u16(FREE_HEAD, free_head, Relaxed);
        let resume = Pos {
            slot: self.load(OLD_USED_IDX),
            wrap: wrap_at(OLD_USED_WRAP),
        };
        a.store_u16(USED_IDX, resume.slot, Relaxed);
        a.store_u8(USED_WRAP, u8::from(resume.wrap), Release);
        // Free entries are not in flight (a half-popped buffer, a committed
        // batch whose flags were not cleared yet).
        let mut i = free_head;
        for _ in 0..self.desc_num {
            if i >= self.desc_num {
                break;
            }
            a.store_u8(entry(i) + E_INFLIGHT, 0, Relaxed);
            i = self.load(entry(i) + E_NEXT);
        }
        let mut heads: Vec<u16> = (0..self.desc_num)
            .filter(|&i| self.is_inflight(i))
            .collect();
        heads.sort_by_key(|&h| self.counter_of(h));
        let mut out = Vec::with_capacity(heads.len());
        for head in heads {
            let num = self.load(entry(head) + E_NUM);
            let last = self.load(entry(head) + E_LAST);
            if num == 0 || num > queue_size || last >= self.desc_num {
                return Err(bad("in-flight entry with a bad length or last link"));
            }
            let id = self.entry_desc(last)?.id;
            if id >= queue_size {
                return Err(Error::BufferIdOutOfRange {
                    id,
                    size: queue_size,
                });
            }
            out.push(Recovered {
                head,
                first: self.entry_desc(head)?,
                id,
                num,
            });
        }
        self.counter = out
            .last()
            .map_or(0, |r| self.counter_of(r.head).saturating_add(1));
        Ok((out, resume))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use crate::inflight::{RingLayout, queue_region_size};
    use crate::memory::{BufferMemory, SharedRegion};
    use crate::packed::{AvailChain, DeviceQueue, DriverQueue};
    use crate::{Descriptor, QueueConfig, RingFeatures, RingPosition};

    const Q: u16 = 8;

    type Elems = &'static [(u64, u32)];

    fn config() -> QueueConfig {
        QueueConfig {
            size: Q,
            desc_table: 0x1000,
            driver_area: 0x800,
            device_area: 0x804,
            features: RingFeatures {
                indirect: true,
                ..Default::default()
            },
        }
    }

    struct World {
        region: SharedRegion,
        driver: DriverQueue<&'static BufferMemory>,
        /// Buffer id → its elements, as the driver made it available.
        expected: Vec<(u16, Vec<Descriptor>)>,
    }

    fn elems(r: &[(u64, u32)], w: &[(u64, u32)]) -> Vec<Descriptor> {
        let d = |&(addr, len), writable| Descriptor {
            addr,
            len,
            writable,
        };
        r.iter()
            .map(|e| d(e, false))
            .chain(w.iter().map(|e| d(e, true)))
            .collect()
    }

    /// A driver with buffers A (2 slots), B (1), C (3), D (indirect), and E
    /// (1) made available; E is popped only after the first restart.
    fn world() -> World {
        let mem: &'static BufferMemory = Box::leak(Box::new(BufferMemory::new(0, 0x10000)));
        let mut driver = DriverQueue::new(mem, &config()).unwrap();
        let mut expected = Vec::new();
        let bufs: [(Elems, Elems, bool); 5] = [
            (&[(0x4000, 16)], &[(0x4100, 32)], false),
            (&[(0x4200, 8)], &[], false),
            (&[(0x4300, 8), (0x4310, 8)], &[(0x4400, 64)], false),
            (&[(0x4500, 8)], &[(0x4600, 8), (0x4700, 8)], true),
            (&[], &[(0x4800, 4)], false),
        ];
        for (r, w, indirect) in bufs {
            let id = if indirect {
                driver.add_indirect(0x6000, r, w).unwrap()
            } else {
                driver.add(r, w).unwrap()
            };
            expected.push((id, elems(r, w)));
        }
        driver.publish();
        World {
            region: SharedRegion::zeroed(queue_region_size(RingLayout::Packed, Q)),
            driver,
            expected,
        }
    }

    impl World {
        fn device(&self) -> DeviceQueue<&'static BufferMemory> {
            let mem = *self.driver.memory();
            let mut q = DeviceQueue::new(mem, &config(), RingPosition::default()).unwrap();
            q.set_inflight(Some(self.region.clone())).unwrap();
            q
        }

        fn walk(q: &DeviceQueue<&'static BufferMemory>, c: &AvailChain) -> Vec<Descriptor> {
            q.descriptors(c).map(Result::unwrap).collect()
        }

        fn elements_of(&self, id: u16) -> Vec<Descriptor> {
            self.expected.iter().find(|e| e.0 == id).unwrap().1.clone()
        }
    }

    /// Restarts the device on the same memory and region, recovers, checks
    /// the returned buffers (ids in submission order, elements intact), then
    /// completes them and everything still available; returns the ids the
    /// driver sees used after the restart.
    fn restart_and_drain(w: &mut World, want_recovered: &[u16]) -> Vec<u16> {
        let mut q = w.device();
        let chains = q.recover_inflight().unwrap();
        let ids: Vec<u16> = chains.iter().map(AvailChain::id).collect();
        assert_eq!(ids, want_recovered, "recovered in counter order");
        for c in &chains {
            assert!(c.is_recovered());
            assert_eq!(World::walk(&q, c), w.elements_of(c.id()));
        }
        // Walk what is still available before anything is completed (the
        // used descriptors reuse the slots).
        let mut rest = Vec::new();
        while let Some(c) = q.pop().unwrap() {
            assert_eq!(World::walk(&q, &c), w.elements_of(c.id()));
            rest.push(c);
        }
        for c in chains.iter().chain(&rest) {
            q.add_used(c, 1).unwrap();
        }
        q.publish_used();
        assert_eq!(q.inflight().unwrap().inflight_count(), 0);
        let mut seen = Vec::new();
        while let Some((id, _)) = w.driver.pop_used().unwrap() {
            seen.push(id);
        }
        seen
    }

    fn ids(w: &World, idx: &[usize]) -> Vec<u16> {
        idx.iter().map(|&i| w.expected[i].0).collect()
    }

    #[test]
    fn a_fresh_region_is_initialised_and_a_clean_run_leaves_nothing_in_flight() {
        let mut w = world();
        let mut q = w.device();
        let mut n = 0;
        while let Some(c) = q.pop().unwrap() {
            q.push(&c, 0).unwrap();
            n += 1;
        }
        assert_eq!(n, 5);
        assert_eq!(q.inflight().unwrap().inflight_count(), 0);
        assert_eq!(restart_and_drain(&mut w, &[]).len(), 5);
    }

    #[test]
    fn crash_at_every_step_of_a_batch_completion() {
        // Pop A B C D, walk them, complete the batch C, B; die after k stores.
        for k in 0.. {
            let mut w = world();
            let mut q = w.device();
            let chains: Vec<_> = (0..4).map(|_| q.pop().unwrap().unwrap()).collect();
            for c in &chains {
                assert_eq!(World::walk(&q, c), w.elements_of(c.id()));
            }
            q.crash_after(k);
            q.add_used(&chains[2], 1).unwrap();
            q.add_used(&chains[1], 1).unwrap();
            q.publish_used();
            let finished = q.inflight().unwrap().crash.alive();
            drop(q);
            // What the guest saw before the restart: all of the batch or
            // nothing (its first used descriptor is flagged last).
            let mut before = Vec::new();
            while let Some((id, _)) = w.driver.pop_used().unwrap() {
                before.push(id);
            }
            let batch = ids(&w, &[2, 1]);
            let want = if before.is_empty() {
                ids(&w, &[0, 1, 2, 3])
            } else {
                assert_eq!(before, batch, "crash after {k} stores");
                ids(&w, &[0, 3])
            };
            let after = restart_and_drain(&mut w, &want);
            // Every buffer comes back exactly once.
            let all: Vec<u16> = before.iter().chain(&after).copied().collect();
            let set: BTreeSet<u16> = all.iter().copied().collect();
            assert_eq!(all.len(), 5, "crash after {k}: {all:?}");
            assert_eq!(set.len(), 5);
            if finished {
                assert!(!before.is_empty());
                break;
            }
        }
    }

    #[test]
    fn crash_at_every_step_of_popping() {
        for k in 0.. {
            let mut w = world();
            let mut q = w.device();
            q.crash_after(k);
            for _ in 0..4 {
                q.pop().unwrap().unwrap();
            }
            let finished = q.inflight().unwrap().crash.alive();
            drop(q);
            // The buffers whose recording completed come back; the one being
            // recorded is popped again from the ring.
            let mut q = w.device();
            let chains = q.recover_inflight().unwrap();
            let got: Vec<u16> = chains.iter().map(AvailChain::id).collect();
            assert_eq!(got, ids(&w, &[0, 1, 2, 3])[..got.len()], "crash after {k}");
            drop(q);
            let after = restart_and_drain(&mut w, &got);
            assert_eq!(after.len(), 5, "crash after {k}: {after:?}");
            if finished {
                assert_eq!(got.len(), 4);
                break;
            }
        }
    }

    #[test]
    fn two_crashes_in_a_row_keep_the_order() {
        let mut w = world();
        let mut q = w.device();
        let a = q.pop().unwrap().unwrap();
        let b = q.pop().unwrap().unwrap();
        q.push(&a, 1).unwrap();
        drop(q);
        // First restart: B is in flight; pop C, complete nothing, die.
        let mut q = w.device();
        let rec = q.recover_inflight().unwrap();
        assert_eq!(rec.iter().map(AvailChain::id).collect::<Vec<_>>(), [b.id()]);
        let c = q.pop().unwrap().unwrap();
        assert_eq!(c.id(), w.expected[2].0);
        drop(q);
        let want = ids(&w, &[1, 2]);
        let seen = restart_and_drain(&mut w, &want);
        let mut all = seen;
        all.sort_unstable();
        assert_eq!(all, (0..5).collect::<Vec<u16>>());
    }

    #[test]
    fn lists_popped_after_completing_recovered_buffers_walk_cleanly() {
        // Regression: the pop sequence must continue after the recovered
        // buffers' slots, or completing them makes a later list look
        // overwritten (found by vhost-io-std's inflight recovery test).
        let w = world();
        let mut q = w.device();
        let a = q.pop().unwrap().unwrap();
        let b = q.pop().unwrap().unwrap();
        drop(q);
        let mut q = w.device();
        let rec = q.recover_inflight().unwrap();
        let rec_ids: Vec<u16> = rec.iter().map(AvailChain::id).collect();
        assert_eq!(rec_ids, [a.id(), b.id()]);
        for r in &rec {
            q.add_used(r, 1).unwrap();
        }
        q.publish_used();
        let c = q.pop().unwrap().unwrap();
        assert_eq!(c.slots(), 3);
        assert_eq!(World::walk(&q, &c), w.elements_of(c.id()));
    }

    #[test]
    fn open_checks_the_region() {
        let small = SharedRegion::zeroed(32 + 32 * 4);
        assert!(super::PackedInflight::open(small, Q, 0, true).is_err());
        let r = SharedRegion::zeroed(queue_region_size(RingLayout::Packed, Q));
        super::PackedInflight::open(r.clone(), Q, 3, false).unwrap();
        // desc[] at offset 32, free list j + 1, used position as given.
        let mut b = [0u8; 64];
        r.as_slice().read_at(0, &mut b).unwrap();
        assert_eq!(&b[8..12], &[1, 0, Q as u8, 0]);
        assert_eq!(&b[16..22], &[3, 0, 3, 0, 0, 0]);
        assert_eq!(&b[34..36], &[1, 0]);
        // An existing region for a larger queue is refused.
        assert!(super::PackedInflight::open(r.clone(), Q + 1, 0, true).is_err());
        r.as_slice().write_at(8, &[2, 0]).unwrap();
        assert!(super::PackedInflight::open(r, Q, 0, true).is_err());
    }
}
