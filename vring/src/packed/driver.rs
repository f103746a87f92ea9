//! The driver side of a packed ring: make buffers available, decide kicks,
//! collect used buffers (for frontends without a guest, tests and benches).

use std::sync::atomic::{Ordering, fence};

use crate::desc::{DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};
use crate::memory::{GuestMemory, GuestSlice};
use crate::{Error, QueueConfig, RingFeatures};

use super::layout::{
    Areas, DESC_FLAGS, EVENT_FLAGS_DESC, EVENT_FLAGS_DISABLE, EVENT_FLAGS_ENABLE, Pos, RawDesc,
    avail_bits, is_used, should_notify, slot_offset, used_bits,
};

/// What the driver remembers about an outstanding buffer.
#[derive(Debug, Clone, Copy, Default)]
struct Outstanding {
    /// Ring slots the buffer takes (0: not outstanding).
    slots: u16,
    /// Total writable length (reported for buffers an IN_ORDER batch skips).
    writable: u32,
}

/// The driver side of a packed virtqueue (virtqueue spec §3.3–§3.8).
///
/// Buffer IDs come from a free stack and descriptors from the ring in order;
/// nothing is allocated per buffer. Used descriptors are checked as coming
/// from a hostile device: an ID out of range or not outstanding is an error.
///
/// ```
/// use vring::memory::BufferMemory;
/// use vring::packed::DriverQueue;
/// use vring::{QueueConfig, RingFeatures};
///
/// let mem = BufferMemory::new(0, 0x10000);
/// let config = QueueConfig {
///     size: 4,
///     desc_table: 0x1000,
///     driver_area: 0x2000,
///     device_area: 0x2004,
///     features: RingFeatures { indirect: true, ..Default::default() },
/// };
/// let mut driver = DriverQueue::new(&mem, &config).unwrap();
/// driver.add(&[(0x4000, 16)], &[(0x5000, 64)]).unwrap(); // two slots
/// driver.add_indirect(0x6000, &[(0x4000, 16)], &[(0x5000, 64)]).unwrap(); // one slot
/// assert_eq!(driver.free_descriptors(), 1);
/// assert!(driver.publish()); // the device has not disabled kicks
/// assert_eq!(driver.pop_used().unwrap(), None);
/// ```
#[derive(Debug)]
pub struct DriverQueue<M: GuestMemory> {
    areas: Areas,
    config: QueueConfig,
    /// Where the next descriptor goes, with the driver wrap counter.
    avail: Pos,
    /// Where the next used descriptor is expected, with the used wrap.
    used: Pos,
    free_slots: u16,
    free_ids: Vec<u16>,
    outstanding: Vec<Outstanding>,
    /// Outstanding ids in submission order (IN_ORDER batches).
    order: Vec<u16>,
    order_head: usize,
    order_len: usize,
    /// The first head added since the last publish, flagged at publish.
    batch_first: Option<(u16, u16)>,
    batch_slots: u32,
    /// An IN_ORDER used descriptor being taken apart: its (id, len).
    in_order_batch: Option<(u16, u32)>,
    // Last, so the areas above never outlive it (crate invariant of RawArea).
    mem: M,
}

impl<M: GuestMemory> DriverQueue<M> {
    /// Sets up the driver side of the ring described by `config` in `mem`:
    /// zeroes the descriptor ring, enables used-buffer notifications in the
    /// driver event area and sets the device event area to ENABLE.
    pub fn new(mem: M, config: &QueueConfig) -> Result<Self, Error> {
        Self::new_at(mem, config, 0, true)
    }

    /// Like [`new`](Self::new) with both sides starting at ring slot `slot`
    /// with wrap counter `wrap` (a ring resumed elsewhere; tests of the
    /// wrap). The ring is filled so that no slot looks available or used at
    /// that position: slots before `slot` as used on this lap, the others as
    /// used on the previous lap.
    pub fn new_at(mem: M, config: &QueueConfig, slot: u16, wrap: bool) -> Result<Self, Error> {
        let areas = Areas::new(&mem, config)?;
        let size = config.size;
        if slot >= size {
            return Err(Error::InvalidPosition {
                reason: "packed ring slot beyond the queue size",
            });
        }
        for s in 0..size {
            let lap = if s < slot { wrap } else { !wrap };
            let mut d = [0u8; 16];
            if let Some(f) = d.get_mut(14..) {
                f.copy_from_slice(&used_bits(lap).to_le_bytes());
            }
            areas.ring.write_bytes(slot_offset(s), d);
        }
        Areas::write_event(&areas.device_event, EVENT_FLAGS_ENABLE, Some(0));
        Areas::write_event(&areas.driver_event, EVENT_FLAGS_ENABLE, Some(0));
        fence(Ordering::SeqCst);
        let start = Pos { slot, wrap };
        Ok(DriverQueue {
            areas,
            config: *config,
            avail: start,
            used: start,
            free_slots: size,
            free_ids: (0..size).rev().collect(),
            outstanding: vec![Outstanding::default(); usize::from(size)],
            order: vec![0; usize::from(size)],
            order_head: 0,
            order_len: 0,
            batch_first: None,
            batch_slots: 0,
            in_order_batch: None,
            mem,
        })
    }

    /// The guest memory.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// The queue size.
    pub fn size(&self) -> u16 {
        self.config.size
    }

    /// The negotiated ring features.
    pub fn features(&self) -> RingFeatures {
        self.config.features
    }

    /// Ring slots free for new descriptors.
    pub fn free_descriptors(&self) -> u16 {
        self.free_slots
    }

    /// Buffers made available and not yet used.
    pub fn outstanding(&self) -> usize {
        self.order_len
    }

    /// The driver's positions: `(next slot to fill, driver wrap)` and `(next
    /// used slot expected, used wrap)`.
    pub fn position(&self) -> ((u16, bool), (u16, bool)) {
        (
            (self.avail.slot, self.avail.wrap),
            (self.used.slot, self.used.wrap),
        )
    }

    fn take_id(&mut self, slots: u16, writable: u32) -> Result<u16, Error> {
        if slots > self.free_slots {
            return Err(Error::RingFull {
                needed: slots,
                free: self.free_slots,
            });
        }
        let Some(id) = self.free_ids.pop() else {
            return Err(Error::RingFull {
                needed: slots,
                free: 0,
            });
        };
        if let Some(o) = self.outstanding.get_mut(usize::from(id)) {
            *o = Outstanding { slots, writable };
        }
        if self.config.features.in_order {
            let size = usize::from(self.config.size);
            if let Some(o) = self
                .order
                .get_mut((self.order_head + self.order_len) % size)
            {
                *o = id;
            }
        }
        self.order_len += 1;
        self.free_slots -= slots;
        Ok(id)
    }

    /// Writes one descriptor at the next slot; the first of the batch keeps
    /// its flags back until [`publish`](Self::publish), every other one is
    /// flagged now (the device stops at the unflagged first). Flags are only
    /// ever written atomically, after the rest of the descriptor.
    #[inline]
    fn put(&mut self, d: RawDesc) {
        let flags = d.flags | avail_bits(self.avail.wrap);
        let off = slot_offset(self.avail.slot);
        self.areas.write_desc_body(self.avail.slot, &d);
        if self.batch_first.is_none() {
            self.batch_first = Some((self.avail.slot, flags));
        } else {
            self.areas
                .ring
                .store_u16(off + DESC_FLAGS, flags, Ordering::Release);
        }
        self.avail = self.avail.advance(1, self.config.size);
        self.batch_slots += 1;
    }

    /// Adds a buffer of `readable` then `writable` elements `(guest address,
    /// length)` as a list of direct descriptors in consecutive slots; returns
    /// its Buffer ID. [`Error::RingFull`] when there are not enough free
    /// slots or IDs, [`Error::EmptyBuffer`] for no elements.
    pub fn add(&mut self, readable: &[(u64, u32)], writable: &[(u64, u32)]) -> Result<u16, Error> {
        let n = readable.len() + writable.len();
        if n == 0 {
            return Err(Error::EmptyBuffer);
        }
        let slots = u16::try_from(n).map_err(|_| Error::RingFull {
            needed: u16::MAX,
            free: self.free_slots,
        })?;
        let total: u64 = writable.iter().map(|&(_, l)| u64::from(l)).sum();
        let id = self.take_id(slots, u32::try_from(total).unwrap_or(u32::MAX))?;
        let elems = readable
            .iter()
            .map(|&e| (e, 0))
            .chain(writable.iter().map(|&e| (e, DESC_F_WRITE)));
        for (i, ((addr, len), write)) in elems.enumerate() {
            let next = if i + 1 < n { DESC_F_NEXT } else { 0 };
            self.put(RawDesc {
                addr,
                len,
                id,
                flags: write | next,
            });
        }
        Ok(id)
    }

    /// Adds a buffer as one INDIRECT ring descriptor: writes the table of
    /// `readable` then `writable` elements at `table_addr` in guest memory
    /// (virtqueue spec §3.6); returns its Buffer ID. More elements than the
    /// queue size is [`Error::ChainTooLong`]. More elements than the
    /// queue size is [`Error::ChainTooLong`].
    pub fn add_indirect(
        &mut self,
        table_addr: u64,
        readable: &[(u64, u32)],
        writable: &[(u64, u32)],
    ) -> Result<u16, Error> {
        let n = readable.len() + writable.len();
        if n == 0 {
            return Err(Error::EmptyBuffer);
        }
        // A buffer is never longer than the queue, indirect or not (the
        // device refuses longer tables, virtqueue spec §2.3).
        if n > usize::from(self.config.size) {
            return Err(Error::ChainTooLong {
                max: u32::from(self.config.size),
            });
        }
        let table_len =
            u32::try_from(n * 16).map_err(|_| Error::IndirectLength { len: u32::MAX })?;
        let table = GuestSlice::new(&self.mem, table_addr, n * 16)?;
        let elems = readable
            .iter()
            .map(|&e| (e, 0))
            .chain(writable.iter().map(|&e| (e, DESC_F_WRITE)));
        for (i, ((addr, len), flags)) in elems.enumerate() {
            let d = RawDesc {
                addr,
                len,
                id: 0,
                flags,
            };
            table.write_at(i * 16, &d.to_bytes())?;
        }
        let total: u64 = writable.iter().map(|&(_, l)| u64::from(l)).sum();
        let id = self.take_id(1, u32::try_from(total).unwrap_or(u32::MAX))?;
        self.put(RawDesc {
            addr: table_addr,
            len: table_len,
            id,
            flags: DESC_F_INDIRECT,
        });
        Ok(id)
    }

    /// Makes the added buffers visible (the batch's first head is flagged
    /// last, virtqueue spec §3.4), then a full fence and the device's event
    /// suppression structure decide whether to kick (§3.7).
    pub fn publish(&mut self) -> bool {
        let Some((slot, flags)) = self.batch_first.take() else {
            return false;
        };
        self.areas
            .ring
            .store_u16(slot_offset(slot) + DESC_FLAGS, flags, Ordering::Release);
        fence(Ordering::SeqCst);
        let event = Areas::read_event(&self.areas.device_event);
        let count = std::mem::take(&mut self.batch_slots);
        should_notify(
            event,
            self.config.features.event_idx,
            self.config.size,
            self.avail,
            count,
        )
    }

    /// The next used buffer `(id, len)`, or `None`. With IN_ORDER a used
    /// descriptor may stand for a batch (virtqueue spec §3.8): the buffers
    /// before its id are returned first, one per call, with their full
    /// writable length.
    pub fn pop_used(&mut self) -> Result<Option<(u16, u32)>, Error> {
        if let Some((last, len)) = self.in_order_batch {
            return Ok(Some(self.next_of_batch(last, len)));
        }
        let size = self.config.size;
        let off = slot_offset(self.used.slot);
        let Some(flags) = self.areas.load_flags(self.used.slot) else {
            return Ok(None);
        };
        if !is_used(flags, self.used.wrap) {
            return Ok(None);
        }
        let d = self
            .areas
            .read_desc(self.used.slot)
            .ok_or(Error::OutOfBounds {
                addr: self.config.desc_table,
                len: u64::from(size) * 16,
                offset: off as u64,
                access: 16,
            })?;
        let id = d.id;
        if id >= size {
            return Err(Error::BufferIdOutOfRange { id, size });
        }
        let known = self
            .outstanding
            .get(usize::from(id))
            .is_some_and(|o| o.slots > 0);
        if !known {
            return Err(Error::UnknownUsedId { id });
        }
        if self.config.features.in_order {
            let front = self.order.get(self.order_head).copied().unwrap_or(id);
            if front != id {
                // One used descriptor for a batch ending with `id` (§3.8).
                self.in_order_batch = Some((id, d.len));
                return Ok(Some(self.next_of_batch(id, d.len)));
            }
            self.order_head = (self.order_head + 1) % usize::from(size);
        }
        self.order_len -= 1;
        let slots = self.release_id(id);
        self.skip_used(slots);
        Ok(Some((id, d.len)))
    }

    /// Takes the next buffer of an IN_ORDER batch that ends with `last`
    /// (used length `len`); the buffers before it count as fully used.
    fn next_of_batch(&mut self, last: u16, len: u32) -> (u16, u32) {
        let front = self.order.get(self.order_head).copied().unwrap_or(last);
        let o = self
            .outstanding
            .get(usize::from(front))
            .copied()
            .unwrap_or_default();
        self.retire(front, o.slots);
        if front == last || self.order_len == 0 {
            self.in_order_batch = None;
            (front, len)
        } else {
            (front, o.writable)
        }
    }

    /// Retires the front buffer of `order` (IN_ORDER), which took `slots`
    /// slots.
    fn retire(&mut self, id: u16, slots: u16) {
        let size = usize::from(self.config.size);
        self.order_head = (self.order_head + 1) % size;
        self.order_len -= 1;
        self.release_id(id);
        self.skip_used(slots);
    }

    fn release_id(&mut self, id: u16) -> u16 {
        let slots = self
            .outstanding
            .get_mut(usize::from(id))
            .map_or(0, |o| std::mem::take(o).slots);
        self.free_ids.push(id);
        self.free_slots += slots;
        slots
    }

    fn skip_used(&mut self, slots: u16) {
        self.used = self.used.advance(slots.max(1), self.config.size);
    }

    /// Asks the device for used-buffer notifications again: DESC mode at the
    /// next used slot with EVENT_IDX, ENABLE otherwise; then a full fence and
    /// a look at the ring: `true` if a used buffer arrived meanwhile.
    pub fn enable_interrupts(&mut self) -> bool {
        if self.config.features.event_idx {
            Areas::write_event(
                &self.areas.driver_event,
                EVENT_FLAGS_DESC,
                Some(self.used.off_wrap()),
            );
        } else {
            Areas::write_event(&self.areas.driver_event, EVENT_FLAGS_ENABLE, None);
        }
        fence(Ordering::SeqCst);
        self.areas
            .load_flags(self.used.slot)
            .is_some_and(|f| is_used(f, self.used.wrap))
    }

    /// Asks the device not to notify (DISABLE).
    pub fn disable_interrupts(&mut self) {
        Areas::write_event(&self.areas.driver_event, EVENT_FLAGS_DISABLE, None);
    }
}
