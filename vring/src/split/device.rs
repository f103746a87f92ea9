//! The device side of a split ring: pop available chains, publish used ones,
//! decide notifications (virtqueue spec §2.4–2.9).

use std::sync::atomic::{Ordering, fence};

use super::descriptors::{AvailChain, Descriptors};
use super::layout::{self, FLAGS, IDX, Rings, USED_F_NO_NOTIFY};
use crate::chain::{Reader, Writer};
use crate::inflight::split::SplitInflight;
use crate::log::DirtyLog;
use crate::memory::{GuestMemory, SharedRegion};
use crate::{Error, QueueConfig, RingArea, RingFeatures, RingPosition, need_event};

/// The device side of a split virtqueue.
///
/// The three ring areas are translated once, when the queue is built (and
/// again by [`set_memory`](Self::set_memory)); popping and pushing then only
/// touch them through bounds-checked atomic accessors. The available index is
/// read once per batch (with acquire) and chains are served from that value
/// until it is used up; the used index lives in a private shadow and is
/// stored once per [`publish_used`](Self::publish_used).
///
/// ```
/// use vring::memory::BufferMemory;
/// use vring::split::{DeviceQueue, DriverQueue};
/// use vring::{QueueConfig, RingFeatures, RingPosition};
///
/// let mem = BufferMemory::new(0, 0x10000);
/// let config = QueueConfig {
///     size: 16,
///     desc_table: 0x0,
///     driver_area: 0x1000,
///     device_area: 0x2000,
///     features: RingFeatures::default(),
/// };
/// // A driver offers a request: 5 readable bytes, 8 writable ones.
/// let mut driver = DriverQueue::new(&mem, &config).unwrap();
/// mem.write(0x8000, b"hello").unwrap();
/// let id = driver.add(&[(0x8000, 5)], &[(0x9000, 8)]).unwrap();
/// assert!(driver.publish()); // kick
///
/// let mut device = DeviceQueue::new(&mem, &config, RingPosition::default()).unwrap();
/// let chain = device.pop().unwrap().unwrap();
/// let mut request = [0u8; 5];
/// device.reader(&chain).read_exact(&mut request).unwrap();
/// let mut writer = device.writer(&chain);
/// writer.write_all(b"HELLO").unwrap();
/// let len = writer.bytes_written();
/// assert!(device.push(&chain, len).unwrap()); // notify the driver
/// assert!(device.pop().unwrap().is_none());
///
/// assert_eq!(driver.pop_used().unwrap(), Some((id, 5)));
/// ```
#[derive(Debug)]
pub struct DeviceQueue<M> {
    // Declared before `mem`: the translated areas go first (memory.rs
    // invariant).
    rings: Rings,
    mem: M,
    config: QueueConfig,
    mask: u16,
    /// The next avail-ring index to process (`last_avail_idx`).
    next_avail: u16,
    /// The last `avail->idx` read: chains up to it need no new read.
    avail_idx: u16,
    /// Shadow of `used->idx` including added, unpublished elements.
    next_used: u16,
    /// The `used->idx` value last stored.
    published_used: u16,
    log: Option<DirtyLog>,
    used_log_addr: Option<u64>,
    inflight: Option<SplitInflight>,
}

impl<M: GuestMemory> DeviceQueue<M> {
    /// A device queue for the ring `config` describes in `mem`, resuming at
    /// `position.next_avail` (SET_VRING_BASE); the used index is read back
    /// from `used->idx` (vhost-user spec §3.3, virtqueue spec §2.6).
    ///
    /// Checks: size a power of two in 1..=32768, desc/avail/used guest and
    /// host alignment 16/2/4, each area inside one mapped region.
    pub fn new(mem: M, config: &QueueConfig, position: RingPosition) -> Result<Self, Error> {
        let rings = Rings::translate(&mem, config)?;
        let used = rings
            .used
            .load_u16(IDX, Ordering::Acquire)
            .ok_or(Error::Misaligned {
                area: RingArea::Device,
                addr: config.device_area,
                align: 4,
            })?;
        Ok(DeviceQueue {
            rings,
            mem,
            config: *config,
            mask: config.size - 1,
            next_avail: position.next_avail,
            avail_idx: position.next_avail,
            next_used: used,
            published_used: used,
            log: None,
            used_log_addr: None,
            inflight: None,
        })
    }

    /// Replaces the guest memory (the memory table changed) and translates
    /// the ring areas again. On error the queue keeps its old memory.
    pub fn set_memory(&mut self, mem: M) -> Result<(), Error> {
        let rings = Rings::translate(&mem, &self.config)?;
        self.rings = rings;
        self.mem = mem;
        Ok(())
    }

    /// The guest memory the queue works in.
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

    /// The position to resume from (what GET_VRING_BASE returns):
    /// `next_avail` is the free-running `last_avail_idx`.
    pub fn position(&self) -> RingPosition {
        RingPosition {
            next_avail: self.next_avail,
            ..RingPosition::default()
        }
    }

    /// Reads `avail->idx` (acquire: the ring entries and descriptors it
    /// covers are read after it, virtqueue spec §2.9); `true` if it offers
    /// chains beyond `next_avail`.
    #[inline]
    fn refresh_avail(&mut self) -> Result<bool, Error> {
        let idx = self
            .rings
            .avail
            .load_u16(IDX, Ordering::Acquire)
            .ok_or_else(|| self.avail_fault())?;
        let n = idx.wrapping_sub(self.next_avail);
        // virtqueue spec §2.6: more than Q new entries is a driver bug.
        if n > self.config.size {
            return Err(Error::AvailIndexJump {
                avail_idx: idx,
                last_avail: self.next_avail,
                size: self.config.size,
            });
        }
        self.avail_idx = idx;
        Ok(n != 0)
    }

    #[cold]
    fn avail_fault(&self) -> Error {
        Error::RingUnmapped {
            area: RingArea::Driver,
            addr: self.config.driver_area,
            len: layout::avail_ring_size(self.config.size) as u64,
        }
    }

    /// Takes the next available chain, or `None` if the driver has offered
    /// nothing new. An error (avail index jump, head out of range) is fatal
    /// for the queue and repeats on every later call.
    #[inline]
    pub fn pop(&mut self) -> Result<Option<AvailChain>, Error> {
        if self.next_avail == self.avail_idx && !self.refresh_avail()? {
            return Ok(None);
        }
        let slot = self.next_avail & self.mask;
        let head = self
            .rings
            .avail
            .load_u16(layout::avail_entry(slot), Ordering::Relaxed)
            .ok_or_else(|| self.avail_fault())?;
        if head >= self.config.size {
            return Err(Error::HeadOutOfRange {
                head,
                size: self.config.size,
            });
        }
        self.next_avail = self.next_avail.wrapping_add(1);
        if let Some(t) = &mut self.inflight {
            t.on_pop(head);
        }
        Ok(Some(AvailChain { head }))
    }

    /// The elements of `chain`, following an indirect table, validated as
    /// they are walked.
    #[inline]
    pub fn descriptors(&self, chain: &AvailChain) -> Descriptors<'_, M> {
        Descriptors::new(
            &self.mem,
            self.rings.desc,
            self.config.size,
            self.config.features.indirect,
            chain.head,
        )
    }

    /// A reader over `chain`'s device-readable part.
    #[inline]
    pub fn reader(&self, chain: &AvailChain) -> Reader<'_, M, Descriptors<'_, M>> {
        Reader::new(&self.mem, self.descriptors(chain))
    }

    /// A writer over `chain`'s device-writable part; its writes are marked in
    /// the dirty log if one is set.
    #[inline]
    pub fn writer(&self, chain: &AvailChain) -> Writer<'_, M, Descriptors<'_, M>> {
        Writer::new(&self.mem, self.descriptors(chain), self.log.as_ref())
    }

    #[inline]
    fn alive(&self) -> bool {
        self.inflight.as_ref().is_none_or(|t| t.crash.alive())
    }

    #[inline]
    fn log_used(&self, offset: usize, len: u64) {
        if let Some(log) = &self.log
            && let Some(base) = self.used_log_addr
        {
            log.mark(base.wrapping_add(offset as u64), len);
        }
    }

    #[cold]
    fn used_fault(&self) -> Error {
        Error::RingUnmapped {
            area: RingArea::Device,
            addr: self.config.device_area,
            len: layout::used_ring_size(self.config.size) as u64,
        }
    }

    /// Writes the used element for `chain` (`len` = bytes written into it)
    /// without making it visible; [`publish_used`](Self::publish_used) does.
    /// At most the queue size elements may be added between two publishes.
    #[inline]
    pub fn add_used(&mut self, chain: &AvailChain, len: u32) -> Result<(), Error> {
        if chain.head >= self.config.size {
            return Err(Error::HeadOutOfRange {
                head: chain.head,
                size: self.config.size,
            });
        }
        let offset = layout::used_entry(self.next_used & self.mask);
        if self.alive() {
            let used = &self.rings.used;
            used.store_u32(offset, chain.head.into(), Ordering::Relaxed)
                .and_then(|()| used.store_u32(offset + 4, len, Ordering::Relaxed))
                .ok_or_else(|| self.used_fault())?;
        }
        self.log_used(offset, layout::USED_ELEM_SIZE as u64);
        self.next_used = self.next_used.wrapping_add(1);
        if let Some(t) = &mut self.inflight {
            t.on_add_used(chain.head);
        }
        Ok(())
    }

    /// Makes every added used element visible (release store of `used->idx`,
    /// virtqueue spec §2.9) and returns whether the driver must be notified:
    /// after a full fence, `used_event` is checked with EVENT_IDX, avail
    /// `NO_INTERRUPT` without (virtqueue spec §2.7). `false` if nothing was
    /// added.
    #[inline]
    pub fn publish_used(&mut self) -> bool {
        let old = self.published_used;
        let new = self.next_used;
        if old == new {
            return false;
        }
        if self.alive() {
            // Stores into a checked, aligned area cannot fail.
            let _ = self.rings.used.store_u16(IDX, new, Ordering::Release);
        }
        self.log_used(IDX, 2);
        self.published_used = new;
        // virtqueue spec §2.9: full barrier between the used->idx store and
        // reading flags / used_event. It also keeps the inflight flags below
        // from being cleared before the index is visible.
        fence(Ordering::SeqCst);
        if let Some(t) = &mut self.inflight {
            t.on_published(new.wrapping_sub(old), new);
        }
        let avail = &self.rings.avail;
        if self.config.features.event_idx {
            let event = avail
                .load_u16(layout::used_event(self.config.size), Ordering::Relaxed)
                .unwrap_or(new);
            need_event(event, new, old)
        } else {
            let flags = avail.load_u16(FLAGS, Ordering::Relaxed).unwrap_or(0);
            flags & layout::AVAIL_F_NO_INTERRUPT == 0
        }
    }

    /// [`add_used`](Self::add_used) then [`publish_used`](Self::publish_used).
    #[inline]
    pub fn push(&mut self, chain: &AvailChain, len: u32) -> Result<bool, Error> {
        self.add_used(chain, len)?;
        Ok(self.publish_used())
    }

    /// Asks the driver for kicks again (clears `NO_NOTIFY`, or with EVENT_IDX
    /// sets `avail_event` to the next index to process), then after a full
    /// fence looks at `avail->idx` again: `true` if chains are waiting, in
    /// which case the caller must pop again before sleeping (virtqueue spec
    /// §2.9).
    pub fn enable_notifications(&mut self) -> Result<bool, Error> {
        let used = &self.rings.used;
        let stored = if self.config.features.event_idx {
            let off = layout::avail_event(self.config.size);
            self.log_used(off, 2);
            used.store_u16(off, self.next_avail, Ordering::Relaxed)
        } else {
            self.log_used(FLAGS, 2);
            used.store_u16(FLAGS, 0, Ordering::Relaxed)
        };
        stored.ok_or_else(|| self.used_fault())?;
        fence(Ordering::SeqCst);
        self.refresh_avail()
    }

    /// Asks the driver not to kick (sets `NO_NOTIFY`). With EVENT_IDX this
    /// does nothing: `avail_event` is left behind, which suppresses kicks
    /// once the driver passes it (the device keeps `flags` at 0, virtqueue
    /// spec §2.7).
    pub fn disable_notifications(&mut self) {
        if !self.config.features.event_idx {
            let _ = self
                .rings
                .used
                .store_u16(FLAGS, USED_F_NO_NOTIFY, Ordering::Relaxed);
            self.log_used(FLAGS, 2);
        }
    }

    /// Logs every write the device makes to guest memory in `log` from now
    /// on: buffer writes through [`writer`](Self::writer), and — if
    /// `used_log_addr` is given (SET_VRING_ADDR's `log_guest_addr` with the
    /// LOG flag) — used-ring writes at that address plus their offset in the
    /// ring (vhost-user spec §7.7). `None` turns logging off.
    pub fn set_dirty_log(&mut self, log: Option<DirtyLog>, used_log_addr: Option<u64>) {
        self.log = log;
        self.used_log_addr = used_log_addr;
    }

    /// Attaches this queue's part of the inflight buffer (see
    /// [`inflight::queue_region`](crate::inflight::queue_region)), or detaches
    /// it with `None`. A new (zero-filled) region is initialised; an existing
    /// one is kept for [`recover_inflight`](Self::recover_inflight), which
    /// should be called next, before popping. From then on popped chains are
    /// recorded and completed ones cleared, crash-consistently (vhost-user
    /// spec §7.12).
    pub fn set_inflight(&mut self, region: Option<SharedRegion>) -> Result<(), Error> {
        self.inflight = match region {
            None => None,
            Some(r) => Some(SplitInflight::open(
                r,
                self.config.size,
                self.published_used,
            )?),
        };
        Ok(())
    }

    /// Simulates the process dying after `stores` more stores to the used
    /// ring or the inflight region (crash-consistency tests).
    #[cfg(test)]
    pub(crate) fn crash_after(&mut self, stores: u64) {
        if let Some(t) = &mut self.inflight {
            t.crash = crate::inflight::CrashPoint::after(stores);
        }
    }

    /// The attached inflight region, if any.
    pub fn inflight(&self) -> Option<&SplitInflight> {
        self.inflight.as_ref()
    }

    /// Recovers after a back-end crash (vhost-user spec §7.12): finishes the
    /// bookkeeping of a batch whose used index had reached the guest, and
    /// returns the chains still in flight in submission order, to be walked
    /// and completed again like popped ones.
    ///
    /// The queue resumes at the ring's current `used->idx`, and its next
    /// avail index becomes `used->idx` + the number of chains returned: every
    /// chain a previous process popped is either used or returned here. (This
    /// is what libvhost-user does; QEMU sends `used->idx` as the base after a
    /// back-end died.)
    pub fn recover_inflight(&mut self) -> Result<Vec<AvailChain>, Error> {
        let used = self
            .rings
            .used
            .load_u16(IDX, Ordering::Acquire)
            .ok_or_else(|| self.used_fault())?;
        let size = self.config.size;
        let t = self.inflight.as_mut().ok_or(Error::InvalidInflight {
            reason: "no inflight region attached",
        })?;
        let heads = t.recover(size, used)?;
        self.next_used = used;
        self.published_used = used;
        // heads are distinct and < size, so the count fits a u16.
        self.next_avail = used.wrapping_add(heads.len() as u16);
        self.avail_idx = self.next_avail;
        Ok(heads.into_iter().map(|head| AvailChain { head }).collect())
    }
}
