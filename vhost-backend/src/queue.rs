//! One running virtqueue as a device sees it: split or packed behind one type
//! ([`vring::queue::DeviceQueue`] does the layout dispatch), and the chains it hands out
//! as tokens that are completed once, on their own queue, now or later.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use vm_memory::GuestMemoryMmap;
use vring::queue::{AvailChain, Descriptors, DeviceQueue};
use vring::{Descriptor, Error as RingError, RingPosition};

use crate::error::QueueError;

/// The guest memory a queue works in: the session's current memory map.
pub type Memory = Arc<GuestMemoryMmap>;

/// Reads the device-readable part of a chain (either ring layout): `read`, `read_exact`,
/// `skip`, `next_slice`, `bytes_read`, and typed headers through [`ReadObj`](crate::ReadObj).
pub type ChainReader<'q> = vring::Reader<'q, Memory, ChainDescriptors<'q>>;

/// Writes the device-writable part of a chain (either ring layout), counting the bytes
/// written (`bytes_written`: the used length to give [`Queue::complete`]): `write`,
/// `write_all`, `skip`, `next_slice`, and typed headers through
/// [`WriteObj`](crate::WriteObj).
pub type ChainWriter<'q> = vring::Writer<'q, Memory, ChainDescriptors<'q>>;

/// The elements of a chain: walked in the ring, or from the copy the queue took before a
/// packed ring's used descriptors overwrote them.
#[derive(Debug)]
pub enum ChainDescriptors<'q> {
    /// Read from the ring (or its indirect table) as they are walked.
    Ring(Descriptors<'q, Memory>),
    /// Copied out of the ring earlier (see [`Queue::complete`]).
    Copied(std::slice::Iter<'q, Descriptor>),
}

impl Iterator for ChainDescriptors<'_> {
    type Item = Result<Descriptor, RingError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            ChainDescriptors::Ring(d) => d.next(),
            ChainDescriptors::Copied(d) => d.next().copied().map(Ok),
        }
    }
}

/// Ring incarnations: every started ring gets a fresh epoch, so a chain of an earlier
/// incarnation (the ring was stopped and started again) is told apart.
static NEXT_EPOCH: AtomicU64 = AtomicU64::new(1);

/// What the chains of one ring incarnation share with it, for one guest memory: a
/// chain's identity and its memory guard in one reference count (one atomic increment
/// per chain).
#[derive(Debug)]
struct Anchor {
    index: u16,
    epoch: u64,
    mem: Memory,
    /// Chains dropped without being completed (a device bug: their buffers never return
    /// to the driver), shared by the anchors of every memory of the ring.
    dropped: Arc<AtomicU32>,
}

/// An available chain popped from a [`Queue`]: a token that is completed exactly once, on
/// the queue that handed it out, with [`Queue::complete`] (now, or later in any order).
///
/// The chain holds the guest memory its buffers are in: the memory stays mapped until the
/// chain is completed or dropped, even if the front-end replaces the memory table
/// meanwhile. Dropping a chain without completing it is a device bug: its buffers never
/// return to the driver (the ring keeps counting it in flight) and an error is logged.
///
/// **Addresses handed to the kernel.** A device may take the host addresses of a chain's
/// buffers (the slices of [`Queue::reader`]/[`Queue::writer`]'s `next_slice`, e.g. as
/// iovecs for io_uring) and use them until it completes the chain: they stay valid because
/// (1) the chain keeps its memory mapped, and (2) the runtime never moves a queue onto new
/// memory while any of its chains is in flight (memory changes quiesce the ring first), so
/// the queue's [`memory`](Queue::memory) is the chain's for as long as the chain lives.
#[derive(Debug)]
#[must_use = "a chain must be completed with Queue::complete"]
pub struct Chain {
    inner: AvailChain,
    anchor: Arc<Anchor>,
    done: bool,
}

impl Chain {
    /// The id the used element carries (split: head index; packed: buffer id).
    pub fn id(&self) -> u16 {
        self.inner.id()
    }

    /// The vring index of the queue that handed the chain out.
    pub fn queue_index(&self) -> u16 {
        self.anchor.index
    }

    /// The guest memory the chain's buffers are in (kept mapped while the chain lives).
    pub fn memory(&self) -> &Memory {
        &self.anchor.mem
    }

    fn consume(mut self) -> AvailChain {
        self.done = true;
        self.inner
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        if !self.done {
            self.anchor.dropped.fetch_add(1, Ordering::Relaxed);
            log::error!(
                "vhost-backend: queue {}: chain {} dropped without being completed",
                self.anchor.index,
                self.inner.id()
            );
        }
    }
}

/// The readable and writable byte counts of a chain ([`Queue::lengths`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChainLengths {
    /// Bytes the device may read (the driver's request).
    pub readable: u64,
    /// Bytes the device may write (room for its response; virtio-blk's status byte is
    /// the last of them).
    pub writable: u64,
}

/// The device side of one virtqueue, split or packed (whichever the session negotiated),
/// handed to the [`QueueHandler`](crate::QueueHandler) of its ring.
///
/// The handler pops chains, reads requests with [`reader`](Self::reader), writes
/// responses with [`writer`](Self::writer) and completes each chain with
/// [`complete`](Self::complete), at once or later (from its own completion source). The
/// runner publishes the used entries after each handler call and signals the call fd
/// when the driver asked for it.
#[derive(Debug)]
pub struct Queue {
    ring: DeviceQueue<Memory>,
    anchor: Arc<Anchor>,
    enabled: Arc<AtomicBool>,
    notify: bool,
    /// Chains popped so far (the drain loop's progress check).
    pops: u64,
    /// One bit per chain id handed out and not completed: a driver that offers a chain
    /// still in flight is caught (guest memory is hostile), and so is a completion the
    /// queue did not hand out.
    outstanding: Vec<u64>,
    in_flight: u32,
    /// Chains recovered from the inflight region, served by `pop` first.
    recovered: VecDeque<AvailChain>,
    /// The runner is stopping the ring: `pop` hands out nothing more.
    stopping: bool,
    /// An inflight region is attached: popped chains are recorded there.
    tracked: bool,
    /// Packed rings only: see [`Copies`].
    copies: Option<Copies>,
}

/// A packed ring writes used descriptors over the ring slots from its used position on
/// (virtqueue spec §3.5), which may hold the later descriptors of lists still in flight
/// when chains complete out of order. Before a completion writes over such a list, its
/// elements are copied here, and the chain is walked from the copy from then on. A device
/// that completes in order never needs a copy.
#[derive(Debug)]
struct Copies {
    /// Multi-slot lists handed out, in pop order, with the sequence number of their first
    /// slot.
    lists: VecDeque<(u64, AvailChain)>,
    /// Ring slots popped (a sequence number: the next list starts there).
    popped: u64,
    /// Ring slots the used position has moved over.
    used: u64,
    /// Per chain id: its elements, once copied (the vectors are reused).
    copied: Vec<Vec<Descriptor>>,
    /// One bit per chain id whose elements are in `copied`.
    valid: Vec<u64>,
}

impl Queue {
    /// Builds the queue from a started ring's configuration in `mem`.
    pub(crate) fn new(
        index: u16,
        packed: bool,
        mem: Memory,
        config: &vring::QueueConfig,
        position: RingPosition,
        enabled: Arc<AtomicBool>,
    ) -> Result<Self, RingError> {
        let anchor = Arc::new(Anchor {
            index,
            epoch: NEXT_EPOCH.fetch_add(1, Ordering::Relaxed),
            mem: Arc::clone(&mem),
            dropped: Arc::new(AtomicU32::new(0)),
        });
        let ring = DeviceQueue::new(mem, config, position, packed)?;
        let words = usize::from(ring.size()).div_ceil(64);
        let copies = packed.then(|| {
            let size = u64::from(ring.size());
            let (avail, used) = (
                u64::from(position.next_avail),
                u64::from(position.next_used),
            );
            // Slots between the used and the avail position belong to lists popped by an
            // earlier owner of the ring.
            let behind = if position.avail_wrap == position.used_wrap {
                avail.saturating_sub(used)
            } else {
                size.saturating_sub(used) + avail
            };
            Copies {
                lists: VecDeque::new(),
                popped: behind,
                used: 0,
                copied: vec![Vec::new(); usize::from(ring.size())],
                valid: vec![0; words],
            }
        });
        Ok(Queue {
            ring,
            anchor,
            enabled,
            notify: false,
            pops: 0,
            outstanding: vec![0; words],
            in_flight: 0,
            recovered: VecDeque::new(),
            stopping: false,
            tracked: false,
            copies,
        })
    }

    /// The vring index.
    pub fn index(&self) -> u16 {
        self.anchor.index
    }

    /// Whether this is a packed ring.
    pub fn is_packed(&self) -> bool {
        self.ring.is_packed()
    }

    /// The queue size.
    pub fn size(&self) -> u16 {
        self.ring.size()
    }

    /// Whether the ring is enabled (SET_VRING_ENABLE). A started but disabled ring is
    /// processed without side effects (spec §7.2): e.g. a net device drops TX packets and
    /// delivers no RX packets.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// The guest memory.
    pub fn memory(&self) -> &Memory {
        self.ring.memory()
    }

    /// Whether the runner is stopping the ring (GET_VRING_BASE, a memory change, reset or
    /// disconnect): [`pop`](Self::pop) hands out nothing more; complete what is in flight.
    pub fn is_stopping(&self) -> bool {
        self.stopping
    }

    /// Chains handed out and not completed yet.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// Whether an inflight region is attached (INFLIGHT_SHMFD): chains in flight when the
    /// back-end dies are resubmitted by the next one.
    pub fn is_tracked(&self) -> bool {
        self.tracked
    }

    /// Takes the next available chain (chains recovered from the inflight region first),
    /// or `None` when the driver offered nothing new or the ring is stopping. An error
    /// means the ring is broken: return it from the handler (the runner stops the ring
    /// and signals the err fd).
    pub fn pop(&mut self) -> Result<Option<Chain>, QueueError> {
        if self.stopping {
            return Ok(None);
        }
        let chain = match self.recovered.pop_front() {
            // Recovered lists are read from the inflight region's copies.
            Some(c) => c,
            None => match self.ring.pop()? {
                Some(c) => {
                    if let (Some(copies), AvailChain::Packed(p)) = (self.copies.as_mut(), &c) {
                        if p.slots() > 1 {
                            copies.lists.push_back((copies.popped, c));
                        }
                        copies.popped += u64::from(p.slots());
                    }
                    c
                }
                None => return Ok(None),
            },
        };
        let id = chain.id();
        if !self.mark(id) {
            return Err(QueueError::ChainInFlight {
                queue: self.index(),
                id,
            });
        }
        self.pops += 1;
        self.in_flight += 1;
        Ok(Some(Chain {
            inner: chain,
            anchor: Arc::clone(&self.anchor),
            done: false,
        }))
    }

    /// A reader over the readable part of `chain`.
    pub fn reader<'q>(&'q self, chain: &Chain) -> ChainReader<'q> {
        vring::Reader::new(self.ring.memory(), self.descriptors(&chain.inner))
    }

    /// A writer over the writable part of `chain` (logged in the dirty log when one is
    /// set).
    pub fn writer<'q>(&'q self, chain: &Chain) -> ChainWriter<'q> {
        vring::Writer::new(
            self.ring.memory(),
            self.descriptors(&chain.inner),
            self.ring.dirty_log(),
        )
    }

    fn descriptors<'q>(&'q self, chain: &AvailChain) -> ChainDescriptors<'q> {
        if let Some(copies) = &self.copies
            && let Some(d) = copies.get(chain.id())
        {
            return ChainDescriptors::Copied(d.iter());
        }
        ChainDescriptors::Ring(self.ring.descriptors(chain))
    }

    /// Walks `chain` once and counts its readable and writable bytes (a malformed chain is
    /// an error: guest memory is hostile).
    pub fn lengths(&self, chain: &Chain) -> Result<ChainLengths, QueueError> {
        let mut l = ChainLengths::default();
        for d in self.descriptors(&chain.inner) {
            let d = d?;
            let n = u64::from(d.len);
            if d.writable {
                l.writable = l.writable.saturating_add(n);
            } else {
                l.readable = l.readable.saturating_add(n);
            }
        }
        Ok(l)
    }

    /// Completes `chain` with `len` bytes written into it (made visible by the next
    /// publish, which the runner does after each handler call). A chain of another queue,
    /// or of an earlier start of this ring, is refused and counts as dropped on the queue
    /// it came from (which can then still stop).
    pub fn complete(&mut self, chain: Chain, len: u32) -> Result<(), QueueError> {
        let (index, epoch) = (chain.anchor.index, chain.anchor.epoch);
        if index != self.index() {
            // Dropped, not consumed: its own queue counts it as dropped, so that queue
            // can still quiesce (it will never see this chain completed).
            drop(chain);
            return Err(QueueError::WrongQueue {
                chain: index,
                queue: self.index(),
            });
        }
        if epoch != self.anchor.epoch {
            drop(chain);
            return Err(QueueError::StaleChain { queue: index });
        }
        let inner = chain.consume();
        if !self.unmark(inner.id()) {
            return Err(QueueError::NotInFlight {
                queue: index,
                id: inner.id(),
            });
        }
        self.in_flight -= 1;
        if self.copies.is_some() {
            self.copy_overwritten(&inner)?;
        }
        self.ring.add_used(&inner, len)?;
        Ok(())
    }

    /// Makes the completed chains visible to the driver now (the runner also does it after
    /// each handler call); the runner signals the driver afterwards if this says so.
    pub fn publish(&mut self) {
        self.notify |= self.ring.publish_used();
    }

    /// The position to resume from (GET_VRING_BASE).
    pub fn position(&self) -> RingPosition {
        self.ring.position()
    }

    /// The dirty log while the front-end logs writes for migration (LOG_ALL): writes
    /// through [`writer`](Self::writer) are logged already; a device that writes guest
    /// memory by other means (an io_uring read into a chain's slices) logs them with
    /// [`mark_dirty`](Self::mark_dirty).
    pub fn dirty_log(&self) -> Option<&vring::log::DirtyLog> {
        self.ring.dirty_log()
    }

    /// Marks `len` bytes of guest memory from `gpa` dirty, if logging is on.
    pub fn mark_dirty(&self, gpa: u64, len: u64) {
        if let Some(log) = self.ring.dirty_log() {
            log.mark(gpa, len);
        }
    }

    /// Chains dropped without being completed (device bugs); they stay in flight.
    pub fn dropped(&self) -> u32 {
        self.anchor.dropped.load(Ordering::Relaxed)
    }

    // ---- for the runners ----

    /// Chains popped so far.
    pub(crate) fn pops(&self) -> u64 {
        self.pops
    }

    /// Publishes and reports (and clears) whether the driver must be notified.
    pub(crate) fn take_notify(&mut self) -> bool {
        self.publish();
        std::mem::take(&mut self.notify)
    }

    /// Asks for kicks again; `true` if chains arrived meanwhile (pop again before
    /// sleeping).
    pub(crate) fn enable_notifications(&mut self) -> Result<bool, RingError> {
        self.ring.enable_notifications()
    }

    /// Asks the driver not to kick while the handler is busy.
    pub(crate) fn disable_notifications(&mut self) {
        self.ring.disable_notifications()
    }

    /// The runner begins stopping the ring.
    pub(crate) fn set_stopping(&mut self, stopping: bool) {
        self.stopping = stopping;
    }

    /// Whether the ring may stop now: nothing in flight except chains the device dropped.
    pub(crate) fn quiesced(&self) -> bool {
        self.in_flight <= self.dropped()
    }

    /// Switches to new guest memory (the memory table changed); the ring areas are
    /// translated again. On error the queue keeps its old memory.
    pub(crate) fn set_memory(&mut self, mem: Memory) -> Result<(), RingError> {
        self.ring.set_memory(Arc::clone(&mem))?;
        // Chains popped from now on hold the new memory; those still out keep theirs.
        self.anchor = Arc::new(Anchor {
            index: self.anchor.index,
            epoch: self.anchor.epoch,
            mem,
            dropped: Arc::clone(&self.anchor.dropped),
        });
        Ok(())
    }

    /// Logs writes (and the used ring's, at `used_log`) in `log`, or stops logging.
    pub(crate) fn set_dirty_log(
        &mut self,
        log: Option<vring::log::DirtyLog>,
        used_log: Option<u64>,
    ) {
        self.ring.set_dirty_log(log, used_log);
    }

    /// Attaches this queue's part of the inflight buffer and queues the chains it records
    /// as in flight, to be served by `pop` first.
    pub(crate) fn attach_inflight(
        &mut self,
        region: vring::memory::SharedRegion,
    ) -> Result<usize, RingError> {
        self.ring.set_inflight(Some(region))?;
        self.tracked = true;
        let chains = self.ring.recover_inflight()?;
        let n = chains.len();
        self.recovered.extend(chains);
        Ok(n)
    }

    /// Before `chain`'s used descriptor goes over the ring slots from the used position on,
    /// copies the elements of the lists still in flight that live there.
    fn copy_overwritten(&mut self, chain: &AvailChain) -> Result<(), QueueError> {
        let Queue {
            ring,
            copies,
            outstanding,
            ..
        } = self;
        let (Some(copies), AvailChain::Packed(done)) = (copies.as_mut(), chain) else {
            return Ok(());
        };
        let start = copies.used;
        let end = start + u64::from(done.slots());
        copies.used = end;
        // Lists wholly behind the used position were completed or copied.
        while copies
            .lists
            .front()
            .is_some_and(|(seq, c)| seq + u64::from(list_slots(c)) <= start)
        {
            copies.lists.pop_front();
        }
        for k in 0..copies.lists.len() {
            let Some(&(seq, list)) = copies.lists.get(k) else {
                break;
            };
            if seq >= end {
                break;
            }
            let id = list.id();
            if id == done.id() || !test_bit(outstanding, id) || test_bit(&copies.valid, id) {
                continue;
            }
            let Some(slot) = copies.copied.get_mut(usize::from(id)) else {
                continue;
            };
            let mut elements = std::mem::take(slot);
            elements.clear();
            for d in ring.descriptors(&list) {
                elements.push(d?);
            }
            if let Some(slot) = copies.copied.get_mut(usize::from(id)) {
                *slot = elements;
            }
            set_bit(&mut copies.valid, id, true);
        }
        set_bit(&mut copies.valid, done.id(), false);
        Ok(())
    }

    /// Marks `id` outstanding; `false` if it already was (or is out of range).
    fn mark(&mut self, id: u16) -> bool {
        let fresh =
            usize::from(id) / 64 < self.outstanding.len() && !test_bit(&self.outstanding, id);
        if fresh {
            set_bit(&mut self.outstanding, id, true);
        }
        fresh
    }

    /// Clears `id`; `false` if it was not outstanding.
    fn unmark(&mut self, id: u16) -> bool {
        let was = test_bit(&self.outstanding, id);
        set_bit(&mut self.outstanding, id, false);
        was
    }
}

impl Copies {
    /// The copied elements of chain `id`, if they were copied.
    fn get(&self, id: u16) -> Option<&[Descriptor]> {
        if !test_bit(&self.valid, id) {
            return None;
        }
        self.copied.get(usize::from(id)).map(Vec::as_slice)
    }
}

/// The slots a packed list takes (1 for anything else).
fn list_slots(c: &AvailChain) -> u16 {
    match c {
        AvailChain::Packed(p) => p.slots(),
        AvailChain::Split(_) => 1,
    }
}

fn test_bit(words: &[u64], id: u16) -> bool {
    words
        .get(usize::from(id) / 64)
        .is_some_and(|w| w & (1u64 << (id % 64)) != 0)
}

fn set_bit(words: &mut [u64], id: u16, on: bool) {
    if let Some(w) = words.get_mut(usize::from(id) / 64) {
        if on {
            *w |= 1u64 << (id % 64);
        } else {
            *w &= !(1u64 << (id % 64));
        }
    }
}
