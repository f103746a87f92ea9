//! The device side of a packed ring: pop available buffers, walk them,
//! publish used descriptors, decide notifications.

use std::sync::atomic::{Ordering, fence};

use crate::desc::{DESC_F_AVAIL, DESC_F_NEXT, DESC_F_USED, DESC_F_WRITE};
use crate::inflight::packed::PackedInflight;
use crate::log::DirtyLog;
use crate::memory::{GuestMemory, SharedRegion};
use crate::{Error, QueueConfig, Reader, RingFeatures, RingPosition, Writer};

use super::descriptors::{AvailChain, Descriptors, NO_INFLIGHT};
use super::layout::{
    Areas, DESC_FLAGS, DESC_ID, DESC_LEN, EVENT_FLAGS_DESC, EVENT_FLAGS_DISABLE,
    EVENT_FLAGS_ENABLE, EVENT_SUPPRESS_SIZE, Pos, RawDesc, avail_bits, is_avail, should_notify,
    slot_offset, used_bits,
};

/// No used descriptor waits for its flags (slots are below 2^15).
const NO_BATCH: u32 = u32::MAX;

/// A used descriptor written (id, len) but not yet flagged, on the inflight
/// path (all flags of a batch wait for the publish).
#[derive(Debug, Clone, Copy)]
struct PendingUsed {
    slot: u16,
    flags: u16,
    inflight: u16,
}

/// The device side of a packed virtqueue (virtqueue spec §3).
///
/// Built from a [`QueueConfig`] and the [`RingPosition`] to resume at (both
/// wrap counters start at `true` for a new ring). The three ring areas are
/// translated once; popping and completing never look a ring area up again.
///
/// ```
/// use vring::memory::BufferMemory;
/// use vring::packed::{DeviceQueue, DriverQueue};
/// use vring::{QueueConfig, RingFeatures, RingPosition};
///
/// let mem = BufferMemory::new(0, 0x10000);
/// let config = QueueConfig {
///     size: 16,
///     desc_table: 0x1000,
///     driver_area: 0x2000,
///     device_area: 0x2010,
///     features: RingFeatures::default(),
/// };
/// // A driver (here in the same memory) offers a request and a reply buffer.
/// let mut driver = DriverQueue::new(&mem, &config).unwrap();
/// mem.write(0x4000, b"ping").unwrap();
/// let id = driver.add(&[(0x4000, 4)], &[(0x5000, 16)]).unwrap();
/// assert!(driver.publish());
///
/// let mut device = DeviceQueue::new(&mem, &config, RingPosition::default()).unwrap();
/// let chain = device.pop().unwrap().unwrap();
/// assert_eq!(chain.id(), id);
/// let mut request = [0u8; 4];
/// device.reader(&chain).read_exact(&mut request).unwrap();
/// let mut w = device.writer(&chain);
/// w.write_all(b"pong").unwrap();
/// let len = w.bytes_written();
/// assert!(device.push(&chain, len).unwrap()); // notify the driver
///
/// assert_eq!(driver.pop_used().unwrap(), Some((id, 4)));
/// let mut reply = [0u8; 4];
/// mem.read(0x5000, &mut reply).unwrap();
/// assert_eq!(&reply, b"pong");
/// ```
#[derive(Debug)]
pub struct DeviceQueue<M: GuestMemory> {
    areas: Areas,
    config: QueueConfig,
    /// Next slot to look at, with the device's view of the driver wrap.
    avail: Pos,
    /// Next slot for a used descriptor, with the device wrap counter.
    used: Pos,
    /// Ring slots popped so far (sequence number of the next buffer).
    popped: u64,
    /// The AVAIL/USED bits an available descriptor has at `avail`.
    avail_bits: u16,
    /// Head flags that send a pop to [`pop_list`](Self::pop_list): NEXT, or
    /// every bit while an inflight region is attached (an available head
    /// always has one set).
    pop_slow_bits: u16,
    /// The AVAIL/USED bits of a used descriptor written at `used`.
    used_bits: u16,
    /// Ring slots the used position has moved over so far.
    used_seq: u64,
    /// `used_seq` at the last publish.
    published_seq: u64,
    /// The batch's first used descriptor, flagged at publish (§3.5).
    /// (`slot | flags << 16`, or [`NO_BATCH`]: one store to set, one to
    /// clear.)
    batch_first: u32,
    /// Inflight path: the batch's used descriptors, flagged at publish.
    pending: Vec<PendingUsed>,
    /// What the device event area's flags were last set to.
    event_flags: Option<u16>,
    log: Option<DirtyLog>,
    used_log_addr: Option<u64>,
    inflight: Option<PackedInflight>,
    // Last, so the areas above never outlive it (crate invariant of RawArea).
    mem: M,
}

impl<M: GuestMemory> DeviceQueue<M> {
    /// Sets up the device side of the ring described by `config` in `mem`,
    /// resuming at `position` (vhost-user SET_VRING_BASE).
    ///
    /// Checks the queue size (1..=32768, any value), the areas' guest
    /// alignment (ring 16, event areas 4) and that they are mapped, and that
    /// the position's slots are inside the ring.
    pub fn new(mem: M, config: &QueueConfig, position: RingPosition) -> Result<Self, Error> {
        let areas = Areas::new(&mem, config)?;
        if position.next_avail >= config.size || position.next_used >= config.size {
            return Err(Error::InvalidPosition {
                reason: "packed ring slot beyond the queue size",
            });
        }
        let avail = Pos {
            slot: position.next_avail,
            wrap: position.avail_wrap,
        };
        let used = Pos {
            slot: position.next_used,
            wrap: position.used_wrap,
        };
        Ok(DeviceQueue {
            areas,
            config: *config,
            avail,
            used,
            // Slots between the used and the avail position were popped by an
            // earlier owner of the ring; count them as popped so that the
            // overwritten-list check lines up with used completions.
            popped: u64::from(avail.slots_ahead_of(used, config.size)),
            avail_bits: avail_bits(position.avail_wrap),
            pop_slow_bits: DESC_F_NEXT,
            used_bits: used_bits(position.used_wrap),
            used_seq: 0,
            published_seq: 0,
            batch_first: NO_BATCH,
            pending: Vec::new(),
            event_flags: None,
            log: None,
            used_log_addr: None,
            inflight: None,
            mem,
        })
    }

    /// Replaces the guest memory (the memory table changed) and translates
    /// the ring areas again. On error the queue keeps the old memory.
    pub fn set_memory(&mut self, mem: M) -> Result<(), Error> {
        self.areas = Areas::new(&mem, &self.config)?;
        self.mem = mem;
        Ok(())
    }

    /// The guest memory.
    #[inline]
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// The queue size.
    #[inline]
    pub fn size(&self) -> u16 {
        self.config.size
    }

    /// The negotiated ring features.
    #[inline]
    pub fn features(&self) -> RingFeatures {
        self.config.features
    }

    /// The device's position (what vhost-user GET_VRING_BASE returns): next
    /// slot to pop with the driver wrap counter, next used slot with the
    /// device wrap counter (vhost-user spec §3.4).
    #[inline]
    pub fn position(&self) -> RingPosition {
        RingPosition {
            next_avail: self.avail.slot,
            avail_wrap: self.avail.wrap,
            next_used: self.used.slot,
            used_wrap: self.used.wrap,
        }
    }

    /// Pops the next available buffer, or `None` if the driver has not made
    /// one available.
    ///
    /// Reads the head's flags with acquire, then walks the list's slots (NEXT
    /// in consecutive slots, wrapping at the end of the ring and toggling the
    /// wrap counter) to find its last descriptor and Buffer ID (virtqueue spec
    /// §3.4, §3.6). Errors are fatal for the queue: a list longer than the
    /// queue ([`Error::ChainTooLong`]), a list slot that is not available
    /// ([`Error::DescriptorNotAvailable`]), a Buffer ID ≥ Q
    /// ([`Error::BufferIdOutOfRange`]).
    #[inline]
    pub fn pop(&mut self) -> Result<Option<AvailChain>, Error> {
        let size = self.config.size;
        let head_slot = self.avail.slot;
        // The position is kept below the size, so this is never `None`.
        let Some(block) = self.areas.slots.get(head_slot) else {
            return Err(Error::HeadOutOfRange {
                head: head_slot,
                size,
            });
        };
        let flags = block.load_u16::<DESC_FLAGS>(Ordering::Acquire);
        if flags & (DESC_F_AVAIL | DESC_F_USED) != self.avail_bits {
            return Ok(None);
        }
        let addr = block.load_u64::<0>(Ordering::Relaxed);
        let hi = block.load_u64::<DESC_LEN>(Ordering::Relaxed);
        if flags & self.pop_slow_bits != 0 {
            let mut head = RawDesc::from_words(addr, hi);
            head.flags = flags;
            return self.pop_list(head).map(Some);
        }
        // One slot: the head is also the last descriptor and holds the
        // Buffer ID (§3.4).
        let id = (hi >> 32) as u16;
        if id >= size {
            return Err(Error::BufferIdOutOfRange { id, size });
        }
        let chain = AvailChain::one_slot(addr, hi, flags, self.popped, head_slot);
        if head_slot + 1 < size {
            self.avail.slot = head_slot + 1;
        } else {
            self.set_avail(self.avail.advance(1, size));
        }
        self.popped += 1;
        Ok(Some(chain))
    }

    /// Moves the avail position (and the AVAIL/USED bits expected there).
    #[cold]
    fn set_avail(&mut self, pos: Pos) {
        self.avail = pos;
        self.avail_bits = avail_bits(pos.wrap);
    }

    /// Moves the used position (and the AVAIL/USED bits written there).
    #[cold]
    fn set_used(&mut self, pos: Pos) {
        self.used = pos;
        self.used_bits = used_bits(pos.wrap);
    }

    /// [`pop`](Self::pop) for a NEXT list or with an inflight region: `head`
    /// (available, read after its flags' acquire) is at the avail position.
    fn pop_list(&mut self, head: RawDesc) -> Result<AvailChain, Error> {
        let size = self.config.size;
        let head_slot = self.avail.slot;
        let inflight = match self.inflight.as_mut() {
            Some(region) => {
                let h = region.begin()?;
                region.record(h, &head, head.flags & DESC_F_NEXT == 0)?;
                h
            }
            None => NO_INFLIGHT,
        };
        let mut pos = self.avail.advance(1, size);
        let mut last = head;
        let mut slots: u16 = 1;
        while last.flags & DESC_F_NEXT != 0 {
            if slots >= size {
                return Err(Error::ChainTooLong {
                    max: u32::from(size),
                });
            }
            // The driver flags a list's head last (virtqueue spec §3.4), so
            // after the head's acquire the rest of the list is visible; a
            // slot that is not available is a malformed list.
            let f = self.areas.load_flags(pos.slot).unwrap_or(0);
            if !is_avail(f, pos.wrap) {
                return Err(Error::DescriptorNotAvailable { slot: pos.slot });
            }
            last = self
                .areas
                .read_desc(pos.slot)
                .ok_or(Error::DescriptorNotAvailable { slot: pos.slot })?;
            last.flags = f;
            if let Some(region) = self.inflight.as_mut() {
                region.record(inflight, &last, f & DESC_F_NEXT == 0)?;
            }
            slots += 1;
            pos = pos.advance(1, size);
        }
        // The Buffer ID is in the list's last descriptor (§3.4).
        let id = last.id;
        if id >= size {
            return Err(Error::BufferIdOutOfRange { id, size });
        }
        let chain = AvailChain::new(&head, self.popped, id, head_slot, slots, inflight, false);
        self.set_avail(pos);
        self.popped += u64::from(slots);
        Ok(chain)
    }

    /// The elements of `chain`, validated as they are walked (see
    /// [`Descriptors`]).
    #[inline]
    pub fn descriptors(&self, chain: &AvailChain) -> Descriptors<'_, M> {
        Descriptors::new(
            &self.mem,
            &self.areas,
            &self.inflight,
            &self.config,
            chain,
            self.used_seq,
        )
    }

    /// A [`Reader`] over the readable part of `chain`.
    #[inline]
    pub fn reader(&self, chain: &AvailChain) -> Reader<'_, M, Descriptors<'_, M>> {
        Reader::new(&self.mem, self.descriptors(chain))
    }

    /// A [`Writer`] over the writable part of `chain`, logging its writes in
    /// the dirty log if one is set.
    #[inline]
    pub fn writer(&self, chain: &AvailChain) -> Writer<'_, M, Descriptors<'_, M>> {
        Writer::new(&self.mem, self.descriptors(chain), self.log.as_ref())
    }

    /// Writes the used descriptor of `chain` (`len` bytes written) at the
    /// next used slot and skips the used position by the slots the buffer
    /// took (virtqueue spec §3.5). Not visible to the driver until
    /// [`publish_used`](Self::publish_used).
    ///
    /// Buffers may be completed in any order, but a multi-descriptor buffer
    /// must be walked before a buffer popped after it is completed (see
    /// [`AvailChain`]). The device writes one used descriptor per buffer, also
    /// with IN_ORDER (always valid; the driver side understands batches).
    #[inline]
    pub fn add_used(&mut self, chain: &AvailChain, len: u32) -> Result<(), Error> {
        let size = self.config.size;
        let slots = chain.slots();
        if slots == 0 || slots > size {
            return Err(Error::InvalidPosition {
                reason: "chain does not belong to this queue",
            });
        }
        let slot = self.used.slot;
        let flags = self.used_bits | if len > 0 { DESC_F_WRITE } else { 0 };
        // The position is kept below the size, so this is never `None`.
        let Some(block) = self.areas.slots.get(slot) else {
            return Err(Error::InvalidPosition {
                reason: "used slot beyond the queue size",
            });
        };
        // id and len first; the flags store (release) publishes them.
        block.store_u32::<DESC_LEN>(len, Ordering::Relaxed);
        block.store_u16::<DESC_ID>(chain.id(), Ordering::Relaxed);
        if let (Some(log), Some(base)) = (&self.log, self.used_log_addr) {
            log.mark(base.wrapping_add(slot_offset(slot) as u64), 16);
        }
        if self.inflight.is_some() {
            self.pending.push(PendingUsed {
                slot,
                flags,
                inflight: chain.inflight(),
            });
        } else if self.batch_first == NO_BATCH {
            self.batch_first = u32::from(slot) | u32::from(flags) << 16;
        } else {
            block.store_u16::<DESC_FLAGS>(flags, Ordering::Release);
        }
        let next = u32::from(slot) + u32::from(slots);
        if next < u32::from(size) {
            self.used.slot = next as u16;
        } else {
            self.set_used(self.used.advance(slots, size));
        }
        self.used_seq += u64::from(slots);
        Ok(())
    }

    /// Makes every used descriptor added since the last publish visible (the
    /// batch's first descriptor is flagged last, virtqueue spec §3.5), then
    /// issues a full fence and reads the driver's event suppression structure
    /// (§3.7): returns whether the driver must be notified.
    #[inline]
    pub fn publish_used(&mut self) -> bool {
        // Every add_used moves the used position by at least one slot.
        if self.used_seq == self.published_seq {
            return false;
        }
        let first = std::mem::replace(&mut self.batch_first, NO_BATCH);
        if first != NO_BATCH
            && let Some(block) = self.areas.slots.get(first as u16)
        {
            block.store_u16::<DESC_FLAGS>((first >> 16) as u16, Ordering::Release);
        }
        if let Some(region) = self.inflight.as_mut() {
            publish_inflight(&self.areas, region, &self.pending, self.used);
            self.pending.clear();
        }
        // Full barrier between the flags store and reading the driver's
        // suppression structure, or a notification can be lost (§3.7).
        fence(Ordering::SeqCst);
        let event = Areas::read_event(&self.areas.driver_event);
        // More than a lap counts as a lap (should_notify: every slot passed).
        let count = u32::try_from(self.used_seq - self.published_seq).unwrap_or(u32::MAX);
        self.published_seq = self.used_seq;
        should_notify(
            event,
            self.config.features.event_idx,
            self.config.size,
            self.used,
            count,
        )
    }

    /// [`add_used`](Self::add_used) then [`publish_used`](Self::publish_used).
    #[inline]
    pub fn push(&mut self, chain: &AvailChain, len: u32) -> Result<bool, Error> {
        self.add_used(chain, len)?;
        Ok(self.publish_used())
    }

    fn write_device_event(&mut self, flags: u16, off_wrap: Option<u16>) {
        Areas::write_event(&self.areas.device_event, flags, off_wrap);
        self.event_flags = Some(flags);
        if let (Some(log), Some(_)) = (&self.log, self.used_log_addr) {
            log.mark(self.config.device_area, EVENT_SUPPRESS_SIZE as u64);
        }
    }

    /// Asks the driver for kicks again: DESC mode at the next slot to pop
    /// with EVENT_IDX, ENABLE otherwise (virtqueue spec §3.7). Then a full
    /// fence and a look at the ring: `true` if a buffer became available
    /// meanwhile, so the caller pops again before sleeping.
    #[inline]
    pub fn enable_notifications(&mut self) -> Result<bool, Error> {
        if self.config.features.event_idx {
            self.write_device_event(EVENT_FLAGS_DESC, Some(self.avail.off_wrap()));
        } else if self.event_flags != Some(EVENT_FLAGS_ENABLE) {
            self.write_device_event(EVENT_FLAGS_ENABLE, None);
        }
        fence(Ordering::SeqCst);
        Ok(self
            .areas
            .load_flags(self.avail.slot)
            .is_some_and(|f| is_avail(f, self.avail.wrap)))
    }

    /// Asks the driver not to kick (DISABLE).
    #[inline]
    pub fn disable_notifications(&mut self) {
        if self.event_flags != Some(EVENT_FLAGS_DISABLE) {
            self.write_device_event(EVENT_FLAGS_DISABLE, None);
        }
    }

    /// Sets (or clears) the dirty log. With `used_log_addr` (vhost-user
    /// SET_VRING_ADDR's `log_guest_addr` with the LOG flag), the device's ring
    /// writes are logged too: a used descriptor in slot `i` is logged at
    /// `used_log_addr + 16 * i` — for a packed ring the used descriptors live
    /// in the descriptor ring, so this is the descriptor ring's log address
    /// (vhost-user spec §7.7) — and writes to the device event area at its
    /// guest address. Buffer writes through [`writer`](Self::writer) are
    /// logged whenever a log is set.
    pub fn set_dirty_log(&mut self, log: Option<DirtyLog>, used_log_addr: Option<u64>) {
        self.log = log;
        self.used_log_addr = used_log_addr;
    }

    /// Attaches this queue's part of the inflight buffer (see
    /// [`inflight::queue_region`](crate::inflight::queue_region)), or detaches
    /// it with `None`. A new (zero-filled) region is initialised at the
    /// queue's used position; an existing one is kept for
    /// [`recover_inflight`](Self::recover_inflight), which should be called
    /// next, before popping. From then on popped buffers are recorded and
    /// completed ones released, crash-consistently (vhost-user spec §7.12).
    pub fn set_inflight(&mut self, region: Option<SharedRegion>) -> Result<(), Error> {
        self.inflight = match region {
            None => None,
            Some(r) => Some(PackedInflight::open(
                r,
                self.config.size,
                self.used.slot,
                self.used.wrap,
            )?),
        };
        self.pending = match self.inflight {
            Some(_) => Vec::with_capacity(usize::from(self.config.size)),
            None => Vec::new(),
        };
        self.pop_slow_bits = match self.inflight {
            Some(_) => u16::MAX,
            None => DESC_F_NEXT,
        };
        Ok(())
    }

    /// Simulates the process dying after `stores` more stores to the ring's
    /// used flags or the inflight region (crash-consistency tests).
    #[cfg(test)]
    pub(crate) fn crash_after(&mut self, stores: u64) {
        if let Some(t) = &mut self.inflight {
            t.crash = crate::inflight::CrashPoint::after(stores);
        }
    }

    /// The attached inflight region.
    pub fn inflight(&self) -> Option<&PackedInflight> {
        self.inflight.as_ref()
    }

    /// Recovers after a back-end crash (vhost-user spec §7.12): settles a
    /// batch that was being completed (committed if its first used
    /// descriptor reached the guest, rolled back otherwise), and returns the
    /// buffers still in flight in submission order. They are walked from the
    /// region's saved copies (the ring slots may have been reused) and
    /// completed like popped ones.
    ///
    /// The queue resumes its used position at the region's committed one, and
    /// its avail position that many slots further as the returned buffers
    /// take: every buffer a previous process popped is either used or
    /// returned here.
    pub fn recover_inflight(&mut self) -> Result<Vec<AvailChain>, Error> {
        let size = self.config.size;
        let Some(region) = self.inflight.as_mut() else {
            return Err(Error::InvalidInflight {
                reason: "no inflight region attached",
            });
        };
        let (found, used) = region.recover(&self.areas, size)?;
        let slots: u32 = found.iter().map(|r| u32::from(r.num)).sum();
        let slots =
            u16::try_from(slots)
                .ok()
                .filter(|&s| s <= size)
                .ok_or(Error::InvalidInflight {
                    reason: "more descriptors in flight than the queue holds",
                })?;
        self.set_used(used);
        self.set_avail(used.advance(slots, size));
        // The recovered buffers occupy the slots from the used position on:
        // new pops come after them.
        self.popped = self.used_seq + u64::from(slots);
        self.batch_first = NO_BATCH;
        self.published_seq = self.used_seq;
        self.pending.clear();
        Ok(found
            .into_iter()
            .map(|r| AvailChain::new(&r.first, 0, r.id, 0, r.num, r.head, true))
            .collect())
    }
}

/// The inflight completion sequence for a batch (vhost-user spec §7.12):
/// release every buffer's entries, record the used position, flag the used
/// descriptors (the first one last), then clear and commit.
fn publish_inflight(
    areas: &Areas,
    region: &mut PackedInflight,
    pending: &[PendingUsed],
    used: Pos,
) {
    for p in pending {
        if p.inflight != NO_INFLIGHT {
            region.release(p.inflight);
        }
    }
    region.set_used(used);
    let store = |p: &PendingUsed| {
        if region.crash.alive() {
            areas
                .ring
                .store_u16(slot_offset(p.slot) + DESC_FLAGS, p.flags, Ordering::Release);
        }
    };
    if let Some((first, rest)) = pending.split_first() {
        rest.iter().for_each(store);
        store(first);
    }
    region.on_published();
}
