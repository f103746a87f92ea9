//! The driver side of a split ring: offer buffers, decide kicks, collect used
//! buffers (virtqueue spec §2.4–2.10). For front-ends that drive a back-end
//! without a guest, and for tests and benches.

use std::sync::atomic::{Ordering, fence};

use super::layout::{self, FLAGS, IDX, RawDesc, Rings};
use crate::desc::{DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};
use crate::memory::{GuestMemory, GuestSlice};
use crate::{Error, QueueConfig, RingArea, RingFeatures, need_event};

/// Per-head bookkeeping of an outstanding buffer.
#[derive(Debug, Clone, Copy, Default)]
struct Outstanding {
    /// Ring descriptors the buffer holds; 0 when the head is not outstanding.
    descs: u16,
    /// The last descriptor of the buffer's ring chain.
    tail: u16,
    /// Total device-writable bytes (the used length of a buffer skipped by an
    /// in-order batch, virtqueue spec §2.8).
    capacity: u32,
}

/// The driver side of a split virtqueue.
///
/// Free descriptors form a FIFO list (so with IN_ORDER they are used in table
/// order, virtqueue spec §2.2); all bookkeeping is allocated once, in
/// [`new`](Self::new). The device is not trusted: a used id out of range or
/// not outstanding is a typed error.
///
/// ```
/// use vring::memory::BufferMemory;
/// use vring::split::{DeviceQueue, DriverQueue};
/// use vring::{QueueConfig, RingFeatures, RingPosition};
///
/// let mem = BufferMemory::new(0, 0x10000);
/// let config = QueueConfig {
///     size: 4,
///     desc_table: 0x0,
///     driver_area: 0x100,
///     device_area: 0x200,
///     features: RingFeatures { indirect: true, ..RingFeatures::default() },
/// };
/// let mut driver = DriverQueue::new(&mem, &config).unwrap();
/// // Three elements in one ring descriptor: an indirect table at 0x400.
/// let id = driver
///     .add_indirect(0x400, &[(0x1000, 16), (0x2000, 512)], &[(0x3000, 1)])
///     .unwrap();
/// assert_eq!(driver.free_descriptors(), 3);
/// assert!(driver.publish());
///
/// let mut device = DeviceQueue::new(&mem, &config, RingPosition::default()).unwrap();
/// let chain = device.pop().unwrap().unwrap();
/// assert_eq!(device.descriptors(&chain).count(), 3);
/// device.push(&chain, 1).unwrap();
///
/// assert_eq!(driver.pop_used().unwrap(), Some((id, 1)));
/// assert_eq!(driver.pop_used().unwrap(), None);
/// assert_eq!(driver.free_descriptors(), 4);
/// ```
#[derive(Debug)]
pub struct DriverQueue<M> {
    // Declared before `mem` (memory.rs invariant).
    rings: Rings,
    mem: M,
    size: u16,
    mask: u16,
    features: RingFeatures,
    /// Private copy of each descriptor's `next`: the free list and the
    /// chains (never read back from guest memory).
    next: Box<[u16]>,
    free_head: u16,
    free_tail: u16,
    num_free: u16,
    outstanding: Box<[Outstanding]>,
    /// Heads in the order they were made available, by avail slot (to
    /// expand in-order batches).
    order: Box<[u16]>,
    /// Shadow of `avail->idx` including added, unpublished buffers.
    avail_idx: u16,
    published_avail: u16,
    /// Buffers taken back so far (free-running, like `used->idx`).
    last_used: u16,
    /// The last `used->idx` read.
    used_idx: u16,
    /// An in-order batch entry being expanded: its id and length.
    batch: Option<(u16, u32)>,
}

impl<M: GuestMemory> DriverQueue<M> {
    /// A driver for a new ring at the addresses of `config`: zeroes the
    /// avail and used headers and event fields (virtqueue spec §2.5: the
    /// driver initialises used `flags` to 0).
    pub fn new(mem: M, config: &QueueConfig) -> Result<Self, Error> {
        Self::new_at(mem, config, 0)
    }

    /// Like [`new`](Self::new) with both indexes starting at `index` rather
    /// than 0 (a ring resumed elsewhere; tests of the u16 wrap).
    pub fn new_at(mem: M, config: &QueueConfig, index: u16) -> Result<Self, Error> {
        let rings = Rings::translate(&mem, config)?;
        let q = config.size;
        let stored = rings.avail.store_u16(FLAGS, 0, Ordering::Relaxed).is_some()
            && rings
                .avail
                .store_u16(IDX, index, Ordering::Relaxed)
                .is_some()
            && rings
                .avail
                .store_u16(layout::used_event(q), index, Ordering::Relaxed)
                .is_some()
            && rings.used.store_u16(FLAGS, 0, Ordering::Relaxed).is_some()
            && rings
                .used
                .store_u16(IDX, index, Ordering::Relaxed)
                .is_some()
            && rings
                .used
                .store_u16(layout::avail_event(q), index, Ordering::Relaxed)
                .is_some();
        if !stored {
            return Err(Error::RingUnmapped {
                area: RingArea::Device,
                addr: config.device_area,
                len: layout::used_ring_size(q) as u64,
            });
        }
        fence(Ordering::SeqCst);
        let next: Box<[u16]> = (1..=q).map(|i| if i == q { 0 } else { i }).collect();
        Ok(DriverQueue {
            rings,
            mem,
            size: q,
            mask: q - 1,
            features: config.features,
            next,
            free_head: 0,
            free_tail: q - 1,
            num_free: q,
            outstanding: vec![Outstanding::default(); q.into()].into_boxed_slice(),
            order: vec![0; q.into()].into_boxed_slice(),
            avail_idx: index,
            published_avail: index,
            last_used: index,
            used_idx: index,
            batch: None,
        })
    }

    /// The guest memory.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// The queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Descriptors not held by outstanding buffers.
    pub fn free_descriptors(&self) -> u16 {
        self.num_free
    }

    /// The avail index the next added buffer will get (free-running).
    pub fn avail_index(&self) -> u16 {
        self.avail_idx
    }

    /// Buffers taken back with [`pop_used`](Self::pop_used) so far
    /// (free-running).
    pub fn used_index(&self) -> u16 {
        self.last_used
    }

    #[inline]
    fn link(&self, d: u16) -> u16 {
        self.next.get(usize::from(d)).copied().unwrap_or(0)
    }

    #[inline]
    fn write_desc(&self, index: u16, d: RawDesc) -> Result<(), Error> {
        let offset = usize::from(index) * 16;
        self.rings
            .desc
            .write_bytes(offset, d.to_bytes())
            .ok_or(Error::OutOfBounds {
                addr: 0,
                len: self.rings.desc.len() as u64,
                offset: offset as u64,
                access: 16,
            })
    }

    fn elements<'e>(
        readable: &'e [(u64, u32)],
        writable: &'e [(u64, u32)],
    ) -> impl Iterator<Item = (u64, u32, bool)> + 'e {
        let r = readable.iter().map(|&(a, l)| (a, l, false));
        let w = writable.iter().map(|&(a, l)| (a, l, true));
        r.chain(w)
    }

    fn capacity(writable: &[(u64, u32)]) -> u32 {
        let total: u64 = writable.iter().map(|&(_, l)| u64::from(l)).sum();
        u32::try_from(total).unwrap_or(u32::MAX)
    }

    fn take(&self, needed: usize) -> Result<u16, Error> {
        if needed == 0 {
            return Err(Error::EmptyBuffer);
        }
        match u16::try_from(needed) {
            Ok(n) if n <= self.num_free => Ok(n),
            _ => Err(Error::RingFull {
                needed: u16::try_from(needed).unwrap_or(u16::MAX),
                free: self.num_free,
            }),
        }
    }

    /// Puts head `head` (a chain of `n` descriptors ending at `tail`) in the
    /// next avail slot, unpublished.
    fn offer(&mut self, head: u16, tail: u16, n: u16, capacity: u32) {
        self.free_head = self.link(tail);
        self.num_free -= n;
        if let Some(o) = self.outstanding.get_mut(usize::from(head)) {
            *o = Outstanding {
                descs: n,
                tail,
                capacity,
            };
        }
        let slot = self.avail_idx & self.mask;
        if let Some(s) = self.order.get_mut(usize::from(slot)) {
            *s = head;
        }
        let _ = self
            .rings
            .avail
            .store_u16(layout::avail_entry(slot), head, Ordering::Relaxed);
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    /// Adds a buffer of direct descriptors: `readable` then `writable`
    /// elements `(guest address, length)`. Returns its id (the head index the
    /// used element will carry). Not visible to the device before
    /// [`publish`](Self::publish).
    pub fn add(&mut self, readable: &[(u64, u32)], writable: &[(u64, u32)]) -> Result<u16, Error> {
        let n = self.take(readable.len() + writable.len())?;
        let head = self.free_head;
        let mut d = head;
        let mut left = n;
        for (addr, len, w) in Self::elements(readable, writable) {
            left -= 1;
            let next = self.link(d);
            let mut flags = if w { DESC_F_WRITE } else { 0 };
            if left > 0 {
                flags |= DESC_F_NEXT;
            }
            self.write_desc(
                d,
                RawDesc {
                    addr,
                    len,
                    flags,
                    next,
                },
            )?;
            if left > 0 {
                d = next;
            }
        }
        self.offer(head, d, n, Self::capacity(writable));
        Ok(head)
    }

    /// Adds a buffer as one ring descriptor pointing at an indirect table it
    /// writes at `table_addr` (virtqueue spec §2.3). Needs INDIRECT_DESC.
    pub fn add_indirect(
        &mut self,
        table_addr: u64,
        readable: &[(u64, u32)],
        writable: &[(u64, u32)],
    ) -> Result<u16, Error> {
        if !self.features.indirect {
            return Err(Error::IndirectNotNegotiated);
        }
        let entries = readable.len() + writable.len();
        if entries == 0 {
            return Err(Error::EmptyBuffer);
        }
        let table_len = u32::try_from(entries * 16)
            .ok()
            .filter(|_| entries <= 1 << 16)
            .ok_or(Error::IndirectLength { len: u32::MAX })?;
        self.take(1)?;
        let table = GuestSlice::new(&self.mem, table_addr, table_len as usize)?;
        for (i, (addr, len, w)) in Self::elements(readable, writable).enumerate() {
            let last = i + 1 == entries;
            let mut flags = if w { DESC_F_WRITE } else { 0 };
            if !last {
                flags |= DESC_F_NEXT;
            }
            let d = RawDesc {
                addr,
                len,
                flags,
                next: if last { 0 } else { (i + 1) as u16 },
            };
            table.write_at(i * 16, &d.to_bytes())?;
        }
        let head = self.free_head;
        self.write_desc(
            head,
            RawDesc {
                addr: table_addr,
                len: table_len,
                flags: DESC_F_INDIRECT,
                next: self.link(head),
            },
        )?;
        self.offer(head, head, 1, Self::capacity(writable));
        Ok(head)
    }

    /// Makes the added buffers visible (write barrier, then `avail->idx`,
    /// virtqueue spec §2.9) and returns whether to kick the device: after a
    /// full fence, `avail_event` with EVENT_IDX, used `NO_NOTIFY` without.
    /// `false` if nothing was added.
    pub fn publish(&mut self) -> bool {
        let old = self.published_avail;
        let new = self.avail_idx;
        if old == new {
            return false;
        }
        let _ = self.rings.avail.store_u16(IDX, new, Ordering::Release);
        self.published_avail = new;
        fence(Ordering::SeqCst);
        let used = &self.rings.used;
        if self.features.event_idx {
            let event = used
                .load_u16(layout::avail_event(self.size), Ordering::Relaxed)
                .unwrap_or(new);
            need_event(event, new, old)
        } else {
            used.load_u16(FLAGS, Ordering::Relaxed).unwrap_or(0) & layout::USED_F_NO_NOTIFY == 0
        }
    }

    /// Returns a completed buffer to the free list.
    fn release(&mut self, id: u16) {
        let Some(o) = self.outstanding.get_mut(usize::from(id)) else {
            return;
        };
        let done = std::mem::take(o);
        if self.num_free == 0 {
            self.free_head = id;
        } else if let Some(n) = self.next.get_mut(usize::from(self.free_tail)) {
            *n = id;
        }
        self.free_tail = done.tail;
        self.num_free += done.descs;
        self.last_used = self.last_used.wrapping_add(1);
    }

    fn is_outstanding(&self, id: u16) -> bool {
        self.outstanding
            .get(usize::from(id))
            .is_some_and(|o| o.descs != 0)
    }

    /// The next buffer the device has used: `(id, len)`, `len` being the
    /// device's count of bytes written. With IN_ORDER, a used entry standing
    /// for a batch (virtqueue spec §2.8) comes out as one result per buffer,
    /// the skipped ones with their full writable length.
    pub fn pop_used(&mut self) -> Result<Option<(u16, u32)>, Error> {
        if let Some((id, len)) = self.batch {
            let head = self.expected();
            if head == id {
                self.batch = None;
            }
            let len = if head == id {
                len
            } else {
                self.capacity_of(head)
            };
            self.release(head);
            return Ok(Some((head, len)));
        }
        if self.last_used == self.used_idx {
            self.used_idx = self
                .rings
                .used
                .load_u16(IDX, Ordering::Acquire)
                .unwrap_or(0);
            if self.last_used == self.used_idx {
                return Ok(None);
            }
        }
        let offset = layout::used_entry(self.last_used & self.mask);
        let used = &self.rings.used;
        let id = used.load_u32(offset, Ordering::Relaxed).unwrap_or(u32::MAX);
        let len = used.load_u32(offset + 4, Ordering::Relaxed).unwrap_or(0);
        let id = match u16::try_from(id) {
            Ok(id) if id < self.size => id,
            _ => {
                return Err(Error::BufferIdOutOfRange {
                    id: u16::try_from(id).unwrap_or(u16::MAX),
                    size: self.size,
                });
            }
        };
        if !self.is_outstanding(id) {
            return Err(Error::UnknownUsedId { id });
        }
        if self.features.in_order && id != self.expected() {
            self.batch = Some((id, len));
            return self.pop_used();
        }
        self.release(id);
        Ok(Some((id, len)))
    }

    /// The head made available at the next used position.
    fn expected(&self) -> u16 {
        self.order
            .get(usize::from(self.last_used & self.mask))
            .copied()
            .unwrap_or(0)
    }

    fn capacity_of(&self, id: u16) -> u32 {
        self.outstanding
            .get(usize::from(id))
            .map_or(0, |o| o.capacity)
    }

    /// Asks the device for used-buffer notifications again (clears
    /// `NO_INTERRUPT`, or with EVENT_IDX sets `used_event` to the next used
    /// index), then after a full fence looks again: `true` if used buffers
    /// are waiting, to be popped before sleeping.
    pub fn enable_interrupts(&mut self) -> bool {
        let avail = &self.rings.avail;
        if self.features.event_idx {
            let _ = avail.store_u16(
                layout::used_event(self.size),
                self.last_used,
                Ordering::Relaxed,
            );
        } else {
            let _ = avail.store_u16(FLAGS, 0, Ordering::Relaxed);
        }
        fence(Ordering::SeqCst);
        self.batch.is_some()
            || self.rings.used.load_u16(IDX, Ordering::Acquire) != Some(self.last_used)
    }

    /// Asks the device not to notify: sets `NO_INTERRUPT`, or with EVENT_IDX
    /// moves `used_event` just behind the used index, so that it is not
    /// reached for another 65535 buffers.
    pub fn disable_interrupts(&mut self) {
        let avail = &self.rings.avail;
        if self.features.event_idx {
            let _ = avail.store_u16(
                layout::used_event(self.size),
                self.last_used.wrapping_sub(1),
                Ordering::Relaxed,
            );
        } else {
            let _ = avail.store_u16(FLAGS, layout::AVAIL_F_NO_INTERRUPT, Ordering::Relaxed);
        }
    }
}
