//! One running virtqueue as a device sees it: split or packed behind one
//! type ([`vring::queue::DeviceQueue`] does the layout dispatch).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use vm_memory::GuestMemoryMmap;
use vring::queue::{AvailChain, Descriptors, DeviceQueue};
use vring::{Error as RingError, RingPosition};

/// The guest memory a queue works in: the session's current memory map.
pub type Memory = Arc<GuestMemoryMmap>;

/// An available chain popped from a [`Queue`]: a small `Copy` handle that
/// does not borrow the queue (split or packed, [`vring::queue::AvailChain`]).
pub type Chain = AvailChain;

/// Reads the device-readable part of a chain (either ring layout): `read`,
/// `read_exact`, `skip`, `next_slice`, `bytes_read`.
pub type ChainReader<'q> = vring::Reader<'q, Memory, Descriptors<'q, Memory>>;

/// Writes the device-writable part of a chain (either ring layout), counting
/// the bytes written (`bytes_written`: the used length to give
/// [`Queue::add_used`]): `write`, `write_all`, `next_slice`.
pub type ChainWriter<'q> = vring::Writer<'q, Memory, Descriptors<'q, Memory>>;

/// The device side of one virtqueue, split or packed (whichever the session
/// negotiated), handed to [`Device::process_queue`](super::Device::process_queue)
/// by the queue's worker.
///
/// The device pops chains, reads requests with [`reader`](Self::reader),
/// writes responses with [`writer`](Self::writer) and completes each chain
/// with [`add_used`](Self::add_used). The worker publishes the used entries
/// after `process_queue` returns and signals the call eventfd when the driver
/// asked for it; a device that wants to publish earlier (a long batch) calls
/// [`publish_used`](Self::publish_used), and the notification is still sent.
#[derive(Debug)]
pub struct Queue {
    index: u16,
    ring: DeviceQueue<Memory>,
    enabled: Arc<AtomicBool>,
    notify: bool,
    /// Chains popped so far (the worker's progress check).
    pops: u64,
    /// Chains recovered from the inflight region, served by `pop` first.
    recovered: VecDeque<Chain>,
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
        Ok(Queue {
            index,
            ring: DeviceQueue::new(mem, config, position, packed)?,
            enabled,
            notify: false,
            pops: 0,
            recovered: VecDeque::new(),
        })
    }

    /// The vring index.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// Whether this is a packed ring.
    pub fn is_packed(&self) -> bool {
        self.ring.is_packed()
    }

    /// The queue size.
    pub fn size(&self) -> u16 {
        self.ring.size()
    }

    /// Whether the ring is enabled (SET_VRING_ENABLE). A started but disabled
    /// ring is processed without side effects (spec §7.2): e.g. a net device
    /// drops TX packets and delivers no RX packets.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// The guest memory.
    pub fn memory(&self) -> &Memory {
        self.ring.memory()
    }

    /// Takes the next available chain (chains recovered from the inflight
    /// region first), or `None` when the driver offered nothing new. An error
    /// means the ring is broken; the worker stops processing it.
    pub fn pop(&mut self) -> Result<Option<Chain>, RingError> {
        let chain = match self.recovered.pop_front() {
            Some(c) => Some(c),
            None => self.ring.pop()?,
        };
        if chain.is_some() {
            self.pops += 1;
        }
        Ok(chain)
    }

    /// Chains popped so far.
    pub(crate) fn pops(&self) -> u64 {
        self.pops
    }

    /// A reader over the readable part of `chain` (a chain of the other
    /// layout reads as [`RingError::LayoutMismatch`]).
    pub fn reader(&self, chain: &Chain) -> Result<ChainReader<'_>, RingError> {
        Ok(self.ring.reader(chain))
    }

    /// A writer over the writable part of `chain` (logged in the dirty log
    /// when one is set).
    pub fn writer(&self, chain: &Chain) -> Result<ChainWriter<'_>, RingError> {
        Ok(self.ring.writer(chain))
    }

    /// Completes `chain` with `len` bytes written into it (made visible by
    /// the next publish).
    pub fn add_used(&mut self, chain: &Chain, len: u32) -> Result<(), RingError> {
        self.ring.add_used(chain, len)
    }

    /// Makes the added used entries visible now; the worker signals the
    /// driver afterwards if this (or its own publish) says so.
    pub fn publish_used(&mut self) {
        self.notify |= self.ring.publish_used();
    }

    /// Publishes and reports (and clears) whether the driver must be
    /// notified.
    pub(crate) fn take_notify(&mut self) -> bool {
        self.publish_used();
        std::mem::take(&mut self.notify)
    }

    /// Asks for kicks again; `true` if chains arrived meanwhile (pop again
    /// before sleeping).
    pub(crate) fn enable_notifications(&mut self) -> Result<bool, RingError> {
        self.ring.enable_notifications()
    }

    /// Asks the driver not to kick while the worker is busy.
    pub(crate) fn disable_notifications(&mut self) {
        self.ring.disable_notifications()
    }

    /// The position to resume from (GET_VRING_BASE).
    pub fn position(&self) -> RingPosition {
        self.ring.position()
    }

    /// Switches to new guest memory (the memory table changed); the ring
    /// areas are translated again. On error the queue keeps its old memory.
    pub(crate) fn set_memory(&mut self, mem: Memory) -> Result<(), RingError> {
        self.ring.set_memory(mem)
    }

    /// Attaches this queue's part of the inflight buffer and queues the
    /// chains it records as in flight, to be served by `pop` first.
    pub(crate) fn attach_inflight(
        &mut self,
        region: vring::memory::SharedRegion,
    ) -> Result<usize, RingError> {
        self.ring.set_inflight(Some(region))?;
        let chains = self.ring.recover_inflight()?;
        let n = chains.len();
        self.recovered.extend(chains);
        Ok(n)
    }
}
