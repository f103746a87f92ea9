//! One running virtqueue as a device sees it: split or packed behind one type.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use vm_memory::GuestMemoryMmap;
use vring::memory::GuestSlice;
use vring::{Error as RingError, RingPosition};

/// The guest memory a queue works in: the session's current memory map.
pub type Memory = Arc<GuestMemoryMmap>;

type SplitQueue = vring::split::DeviceQueue<Memory>;
type PackedQueue = vring::packed::DeviceQueue<Memory>;

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
    ring: Ring,
    enabled: Arc<AtomicBool>,
    notify: bool,
    /// Chains popped so far (the worker's progress check).
    pops: u64,
    /// Chains recovered from the inflight region, served by `pop` first.
    recovered: VecDeque<Chain>,
}

#[derive(Debug)]
enum Ring {
    Split(SplitQueue),
    Packed(PackedQueue),
}

/// An available chain popped from a [`Queue`]: a small `Copy` handle that
/// does not borrow the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chain(ChainInner);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChainInner {
    Split(vring::split::AvailChain),
    Packed(vring::packed::AvailChain),
}

impl Chain {
    /// The chain's id (its head descriptor index, or its packed Buffer ID).
    pub fn id(&self) -> u16 {
        match &self.0 {
            ChainInner::Split(c) => c.id(),
            ChainInner::Packed(c) => c.id(),
        }
    }
}

/// Reads the device-readable part of a chain (either ring layout).
#[derive(Debug)]
pub struct ChainReader<'q>(ReaderInner<'q>);

#[derive(Debug)]
enum ReaderInner<'q> {
    Split(vring::Reader<'q, Memory, vring::split::Descriptors<'q, Memory>>),
    Packed(vring::Reader<'q, Memory, vring::packed::Descriptors<'q, Memory>>),
}

/// Writes the device-writable part of a chain (either ring layout), counting
/// the bytes written: the used length to give [`Queue::add_used`].
#[derive(Debug)]
pub struct ChainWriter<'q>(WriterInner<'q>);

#[derive(Debug)]
enum WriterInner<'q> {
    Split(vring::Writer<'q, Memory, vring::split::Descriptors<'q, Memory>>),
    Packed(vring::Writer<'q, Memory, vring::packed::Descriptors<'q, Memory>>),
}

macro_rules! both {
    ($e:expr, $inner:ident, $x:ident => $body:expr) => {
        match $e {
            $inner::Split($x) => $body,
            $inner::Packed($x) => $body,
        }
    };
}

impl<'q> ChainReader<'q> {
    /// Copies up to `buf.len()` bytes; returns how many (0 at the end of the
    /// readable part).
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, RingError> {
        both!(&mut self.0, ReaderInner, r => r.read(buf))
    }

    /// Fills `buf` exactly, or fails (a chain too short is an error).
    pub fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), RingError> {
        both!(&mut self.0, ReaderInner, r => r.read_exact(buf))
    }

    /// Skips up to `n` bytes; returns how many were skipped.
    pub fn skip(&mut self, n: usize) -> Result<usize, RingError> {
        both!(&mut self.0, ReaderInner, r => r.skip(n))
    }

    /// The next contiguous piece of at most `max` bytes (zero-copy I/O).
    pub fn next_slice(&mut self, max: usize) -> Result<Option<GuestSlice<'q>>, RingError> {
        both!(&mut self.0, ReaderInner, r => r.next_slice(max))
    }

    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        both!(&self.0, ReaderInner, r => r.bytes_read())
    }
}

impl<'q> ChainWriter<'q> {
    /// Copies as much of `buf` as fits; returns how many bytes were written.
    pub fn write(&mut self, buf: &[u8]) -> Result<usize, RingError> {
        both!(&mut self.0, WriterInner, w => w.write(buf))
    }

    /// Writes all of `buf`, or fails (not enough writable space is an error).
    pub fn write_all(&mut self, buf: &[u8]) -> Result<(), RingError> {
        both!(&mut self.0, WriterInner, w => w.write_all(buf))
    }

    /// The next contiguous writable piece of at most `max` bytes; it counts
    /// as written in full (zero-copy I/O).
    pub fn next_slice(&mut self, max: usize) -> Result<Option<GuestSlice<'q>>, RingError> {
        both!(&mut self.0, WriterInner, w => w.next_slice(max))
    }

    /// Bytes written so far: the used length.
    pub fn bytes_written(&self) -> u32 {
        both!(&self.0, WriterInner, w => w.bytes_written())
    }
}

impl Queue {
    /// Builds the queue from a started ring's configuration in `mem`.
    #[doc(hidden)]
    pub fn new(
        index: u16,
        packed: bool,
        mem: Memory,
        config: &vring::QueueConfig,
        position: RingPosition,
        enabled: Arc<AtomicBool>,
    ) -> Result<Self, RingError> {
        let ring = if packed {
            Ring::Packed(PackedQueue::new(mem, config, position)?)
        } else {
            Ring::Split(SplitQueue::new(mem, config, position)?)
        };
        Ok(Queue {
            index,
            ring,
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
        matches!(self.ring, Ring::Packed(_))
    }

    /// The queue size.
    pub fn size(&self) -> u16 {
        both!(&self.ring, Ring, q => q.size())
    }

    /// Whether the ring is enabled (SET_VRING_ENABLE). A started but disabled
    /// ring is processed without side effects (spec §7.2): e.g. a net device
    /// drops TX packets and delivers no RX packets.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// The guest memory.
    pub fn memory(&self) -> &Memory {
        both!(&self.ring, Ring, q => q.memory())
    }

    /// Takes the next available chain (chains recovered from the inflight
    /// region first), or `None` when the driver offered nothing new. An error
    /// means the ring is broken; the worker stops processing it.
    pub fn pop(&mut self) -> Result<Option<Chain>, RingError> {
        let chain = match self.recovered.pop_front() {
            Some(c) => Some(c),
            None => match &mut self.ring {
                Ring::Split(q) => q.pop()?.map(|c| Chain(ChainInner::Split(c))),
                Ring::Packed(q) => q.pop()?.map(|c| Chain(ChainInner::Packed(c))),
            },
        };
        if chain.is_some() {
            self.pops += 1;
        }
        Ok(chain)
    }

    /// Chains popped so far.
    #[doc(hidden)]
    pub fn pops(&self) -> u64 {
        self.pops
    }

    /// A reader over the readable part of `chain`.
    pub fn reader(&self, chain: &Chain) -> Result<ChainReader<'_>, RingError> {
        match (&self.ring, &chain.0) {
            (Ring::Split(q), ChainInner::Split(c)) => {
                Ok(ChainReader(ReaderInner::Split(q.reader(c))))
            }
            (Ring::Packed(q), ChainInner::Packed(c)) => {
                Ok(ChainReader(ReaderInner::Packed(q.reader(c))))
            }
            _ => Err(foreign_chain()),
        }
    }

    /// A writer over the writable part of `chain` (logged in the dirty log
    /// when one is set).
    pub fn writer(&self, chain: &Chain) -> Result<ChainWriter<'_>, RingError> {
        match (&self.ring, &chain.0) {
            (Ring::Split(q), ChainInner::Split(c)) => {
                Ok(ChainWriter(WriterInner::Split(q.writer(c))))
            }
            (Ring::Packed(q), ChainInner::Packed(c)) => {
                Ok(ChainWriter(WriterInner::Packed(q.writer(c))))
            }
            _ => Err(foreign_chain()),
        }
    }

    /// Completes `chain` with `len` bytes written into it (made visible by
    /// the next publish).
    pub fn add_used(&mut self, chain: &Chain, len: u32) -> Result<(), RingError> {
        match (&mut self.ring, &chain.0) {
            (Ring::Split(q), ChainInner::Split(c)) => q.add_used(c, len),
            (Ring::Packed(q), ChainInner::Packed(c)) => q.add_used(c, len),
            _ => Err(foreign_chain()),
        }
    }

    /// Makes the added used entries visible now; the worker signals the
    /// driver afterwards if this (or its own publish) says so.
    pub fn publish_used(&mut self) {
        let n = both!(&mut self.ring, Ring, q => q.publish_used());
        self.notify |= n;
    }

    /// Publishes and reports (and clears) whether the driver must be
    /// notified.
    #[doc(hidden)]
    pub fn take_notify(&mut self) -> bool {
        self.publish_used();
        std::mem::take(&mut self.notify)
    }

    /// Asks for kicks again; `true` if chains arrived meanwhile (pop again
    /// before sleeping).
    #[doc(hidden)]
    pub fn enable_notifications(&mut self) -> Result<bool, RingError> {
        both!(&mut self.ring, Ring, q => q.enable_notifications())
    }

    /// Asks the driver not to kick while the worker is busy.
    #[doc(hidden)]
    pub fn disable_notifications(&mut self) {
        both!(&mut self.ring, Ring, q => q.disable_notifications())
    }

    /// The position to resume from (GET_VRING_BASE).
    pub fn position(&self) -> RingPosition {
        both!(&self.ring, Ring, q => q.position())
    }

    /// Switches to new guest memory (the memory table changed); the ring
    /// areas are translated again. On error the queue keeps its old memory.
    #[doc(hidden)]
    pub fn set_memory(&mut self, mem: Memory) -> Result<(), RingError> {
        both!(&mut self.ring, Ring, q => q.set_memory(mem))
    }

    /// Attaches this queue's part of the inflight buffer and queues the
    /// chains it records as in flight, to be served by `pop` first.
    #[doc(hidden)]
    pub fn attach_inflight(
        &mut self,
        region: vring::memory::SharedRegion,
    ) -> Result<usize, RingError> {
        let chains: Vec<Chain> = match &mut self.ring {
            Ring::Split(q) => {
                q.set_inflight(Some(region))?;
                q.recover_inflight()?
                    .into_iter()
                    .map(|c| Chain(ChainInner::Split(c)))
                    .collect()
            }
            Ring::Packed(q) => {
                q.set_inflight(Some(region))?;
                q.recover_inflight()?
                    .into_iter()
                    .map(|c| Chain(ChainInner::Packed(c)))
                    .collect()
            }
        };
        let n = chains.len();
        self.recovered.extend(chains);
        Ok(n)
    }
}

fn foreign_chain() -> RingError {
    RingError::InvalidPosition {
        reason: "chain popped from a queue of the other layout",
    }
}
