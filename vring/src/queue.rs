//! Either ring layout behind one type, chosen at run time by
//! VIRTIO_F_RING_PACKED: [`DeviceQueue`] and [`DriverQueue`] dispatch the
//! common API to [`split`] or [`packed`].
//!
//! ```
//! use vring::memory::BufferMemory;
//! use vring::queue::{DeviceQueue, DriverQueue};
//! use vring::{QueueConfig, RingFeatures, RingPosition};
//!
//! let mem = BufferMemory::new(0, 0x10000);
//! let config = QueueConfig {
//!     size: 8,
//!     desc_table: 0x0,
//!     driver_area: 0x1000,
//!     device_area: 0x2000,
//!     features: RingFeatures::default(),
//! };
//! for packed in [false, true] {
//!     let mut driver = DriverQueue::new(&mem, &config, packed).unwrap();
//!     let id = driver.add(&[(0x8000, 4)], &[(0x9000, 4)]).unwrap();
//!     driver.publish();
//!     let mut device = DeviceQueue::new(&mem, &config, RingPosition::default(), packed).unwrap();
//!     let chain = device.pop().unwrap().unwrap();
//!     let len = {
//!         let mut w = device.writer(&chain);
//!         w.write_all(b"done").unwrap();
//!         w.bytes_written()
//!     };
//!     device.push(&chain, len).unwrap();
//!     assert_eq!(driver.pop_used().unwrap(), Some((id, 4)));
//! }
//! ```

use crate::chain::{Reader, Writer};
use crate::log::DirtyLog;
use crate::memory::{GuestMemory, SharedRegion};
use crate::{Descriptor, Error, QueueConfig, RingFeatures, RingPosition, packed, split};

/// A chain popped from a [`DeviceQueue`] of either layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AvailChain {
    /// From a split ring.
    Split(split::AvailChain),
    /// From a packed ring.
    Packed(packed::AvailChain),
}

impl AvailChain {
    /// The id the used element carries (split: head index; packed: buffer
    /// id).
    pub fn id(&self) -> u16 {
        match self {
            AvailChain::Split(c) => c.id(),
            AvailChain::Packed(c) => c.id(),
        }
    }
}

/// The elements of a chain of either layout (see the layouts' own
/// `Descriptors`).
#[derive(Debug)]
pub enum Descriptors<'a, M: ?Sized> {
    /// A split chain.
    Split(split::Descriptors<'a, M>),
    /// A packed chain.
    Packed(packed::Descriptors<'a, M>),
    /// The chain came from a queue of the other layout: one error, then
    /// nothing.
    Mismatch(bool),
}

impl<M: GuestMemory + ?Sized> Iterator for Descriptors<'_, M> {
    type Item = Result<Descriptor, Error>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Descriptors::Split(d) => d.next(),
            Descriptors::Packed(d) => d.next(),
            Descriptors::Mismatch(done) => {
                let first = !*done;
                *done = true;
                first.then_some(Err(Error::LayoutMismatch))
            }
        }
    }
}

impl<M: GuestMemory + ?Sized> std::iter::FusedIterator for Descriptors<'_, M> {}

/// The ring a [`DeviceQueue`] holds.
#[derive(Debug)]
enum Ring<M: GuestMemory> {
    Split(split::DeviceQueue<M>),
    Packed(packed::DeviceQueue<M>),
}

/// The device side of a virtqueue of either layout.
#[derive(Debug)]
pub struct DeviceQueue<M: GuestMemory> {
    ring: Ring<M>,
    /// A copy of the log the ring holds, for writers built here.
    log: Option<DirtyLog>,
}

/// Calls the same method on whichever layout `$q` holds.
macro_rules! both {
    ($q:expr, $d:ident => $e:expr) => {
        match $q {
            Ring::Split($d) => $e,
            Ring::Packed($d) => $e,
        }
    };
}

/// The same for a [`DriverQueue`].
macro_rules! both_driver {
    ($q:expr, $d:ident => $e:expr) => {
        match $q {
            DriverQueue::Split($d) => $e,
            DriverQueue::Packed($d) => $e,
        }
    };
}

impl<M: GuestMemory> DeviceQueue<M> {
    /// A device queue of the packed layout if `packed` (VIRTIO_F_RING_PACKED
    /// negotiated), else split; see the layouts' `new`.
    pub fn new(
        mem: M,
        config: &QueueConfig,
        position: RingPosition,
        packed: bool,
    ) -> Result<Self, Error> {
        let ring = if packed {
            Ring::Packed(packed::DeviceQueue::new(mem, config, position)?)
        } else {
            Ring::Split(split::DeviceQueue::new(mem, config, position)?)
        };
        Ok(DeviceQueue { ring, log: None })
    }

    /// The split queue inside, if it is one.
    pub fn as_split(&mut self) -> Option<&mut split::DeviceQueue<M>> {
        match &mut self.ring {
            Ring::Split(q) => Some(q),
            Ring::Packed(_) => None,
        }
    }

    /// The packed queue inside, if it is one.
    pub fn as_packed(&mut self) -> Option<&mut packed::DeviceQueue<M>> {
        match &mut self.ring {
            Ring::Packed(q) => Some(q),
            Ring::Split(_) => None,
        }
    }

    /// Whether this is a packed ring.
    pub fn is_packed(&self) -> bool {
        matches!(self.ring, Ring::Packed(_))
    }

    /// Replaces the guest memory and translates the ring areas again.
    pub fn set_memory(&mut self, mem: M) -> Result<(), Error> {
        both!(&mut self.ring, q => q.set_memory(mem))
    }

    /// The guest memory.
    pub fn memory(&self) -> &M {
        both!(&self.ring, q => q.memory())
    }

    /// The queue size.
    pub fn size(&self) -> u16 {
        both!(&self.ring, q => q.size())
    }

    /// The negotiated ring features.
    pub fn features(&self) -> RingFeatures {
        both!(&self.ring, q => q.features())
    }

    /// The position to resume from (GET_VRING_BASE).
    pub fn position(&self) -> RingPosition {
        both!(&self.ring, q => q.position())
    }

    /// Takes the next available chain.
    #[inline]
    pub fn pop(&mut self) -> Result<Option<AvailChain>, Error> {
        Ok(match &mut self.ring {
            Ring::Split(q) => q.pop()?.map(AvailChain::Split),
            Ring::Packed(q) => q.pop()?.map(AvailChain::Packed),
        })
    }

    /// The elements of `chain`.
    #[inline]
    pub fn descriptors(&self, chain: &AvailChain) -> Descriptors<'_, M> {
        match (&self.ring, chain) {
            (Ring::Split(q), AvailChain::Split(c)) => Descriptors::Split(q.descriptors(c)),
            (Ring::Packed(q), AvailChain::Packed(c)) => Descriptors::Packed(q.descriptors(c)),
            _ => Descriptors::Mismatch(false),
        }
    }

    /// A reader over `chain`'s device-readable part.
    #[inline]
    pub fn reader(&self, chain: &AvailChain) -> Reader<'_, M, Descriptors<'_, M>> {
        Reader::new(self.memory(), self.descriptors(chain))
    }

    /// A writer over `chain`'s device-writable part (logged if a dirty log
    /// is set).
    #[inline]
    pub fn writer(&self, chain: &AvailChain) -> Writer<'_, M, Descriptors<'_, M>> {
        Writer::new(self.memory(), self.descriptors(chain), self.log.as_ref())
    }

    /// The dirty log writers log into, if one is set (for writers built over other
    /// descriptor iterators).
    #[inline]
    pub fn dirty_log(&self) -> Option<&DirtyLog> {
        self.log.as_ref()
    }

    /// Writes the used element(s) for `chain` without publishing.
    #[inline]
    pub fn add_used(&mut self, chain: &AvailChain, len: u32) -> Result<(), Error> {
        match (&mut self.ring, chain) {
            (Ring::Split(q), AvailChain::Split(c)) => q.add_used(c, len),
            (Ring::Packed(q), AvailChain::Packed(c)) => q.add_used(c, len),
            _ => Err(Error::LayoutMismatch),
        }
    }

    /// Publishes everything added; whether to notify the driver.
    #[inline]
    pub fn publish_used(&mut self) -> bool {
        both!(&mut self.ring, q => q.publish_used())
    }

    /// `add_used` then `publish_used`.
    #[inline]
    pub fn push(&mut self, chain: &AvailChain, len: u32) -> Result<bool, Error> {
        self.add_used(chain, len)?;
        Ok(self.publish_used())
    }

    /// Re-enables kicks; `true` if chains arrived meanwhile.
    pub fn enable_notifications(&mut self) -> Result<bool, Error> {
        both!(&mut self.ring, q => q.enable_notifications())
    }

    /// Suppresses kicks.
    pub fn disable_notifications(&mut self) {
        both!(&mut self.ring, q => q.disable_notifications())
    }

    /// Dirty logging of buffer and used-ring writes.
    pub fn set_dirty_log(&mut self, log: Option<DirtyLog>, used_log_addr: Option<u64>) {
        self.log.clone_from(&log);
        both!(&mut self.ring, q => q.set_dirty_log(log, used_log_addr))
    }

    /// Attaches (or detaches) this queue's part of the inflight buffer.
    pub fn set_inflight(&mut self, region: Option<SharedRegion>) -> Result<(), Error> {
        both!(&mut self.ring, q => q.set_inflight(region))
    }

    /// The chains in flight when a previous back-end died, in submission
    /// order.
    pub fn recover_inflight(&mut self) -> Result<Vec<AvailChain>, Error> {
        Ok(match &mut self.ring {
            Ring::Split(q) => q
                .recover_inflight()?
                .into_iter()
                .map(AvailChain::Split)
                .collect(),
            Ring::Packed(q) => q
                .recover_inflight()?
                .into_iter()
                .map(AvailChain::Packed)
                .collect(),
        })
    }
}

/// The driver side of a virtqueue of either layout.
#[derive(Debug)]
pub enum DriverQueue<M: GuestMemory> {
    /// A split ring.
    Split(split::DriverQueue<M>),
    /// A packed ring.
    Packed(packed::DriverQueue<M>),
}

impl<M: GuestMemory> DriverQueue<M> {
    /// A driver for a new ring of the packed layout if `packed`, else split.
    pub fn new(mem: M, config: &QueueConfig, packed: bool) -> Result<Self, Error> {
        Ok(if packed {
            DriverQueue::Packed(packed::DriverQueue::new(mem, config)?)
        } else {
            DriverQueue::Split(split::DriverQueue::new(mem, config)?)
        })
    }

    /// The guest memory.
    pub fn memory(&self) -> &M {
        both_driver!(self, q => q.memory())
    }

    /// The queue size.
    pub fn size(&self) -> u16 {
        both_driver!(self, q => q.size())
    }

    /// Descriptors not held by outstanding buffers.
    pub fn free_descriptors(&self) -> u16 {
        both_driver!(self, q => q.free_descriptors())
    }

    /// Adds a buffer of direct descriptors; returns its id.
    pub fn add(&mut self, readable: &[(u64, u32)], writable: &[(u64, u32)]) -> Result<u16, Error> {
        both_driver!(self, q => q.add(readable, writable))
    }

    /// Adds a buffer as one indirect descriptor, writing the table at
    /// `table_addr`.
    pub fn add_indirect(
        &mut self,
        table_addr: u64,
        readable: &[(u64, u32)],
        writable: &[(u64, u32)],
    ) -> Result<u16, Error> {
        both_driver!(self, q => q.add_indirect(table_addr, readable, writable))
    }

    /// Makes added buffers visible; whether to kick.
    pub fn publish(&mut self) -> bool {
        both_driver!(self, q => q.publish())
    }

    /// The next used buffer: `(id, len)`.
    pub fn pop_used(&mut self) -> Result<Option<(u16, u32)>, Error> {
        both_driver!(self, q => q.pop_used())
    }

    /// Re-enables used-buffer notifications; `true` if some arrived
    /// meanwhile.
    pub fn enable_interrupts(&mut self) -> bool {
        both_driver!(self, q => q.enable_interrupts())
    }

    /// Suppresses used-buffer notifications.
    pub fn disable_interrupts(&mut self) {
        both_driver!(self, q => q.disable_interrupts())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::BufferMemory;

    fn config() -> QueueConfig {
        QueueConfig {
            size: 4,
            desc_table: 0,
            driver_area: 0x1000,
            device_area: 0x2000,
            features: RingFeatures::default(),
        }
    }

    #[test]
    fn chains_of_the_other_layout_are_refused() {
        let (ms, mp) = (BufferMemory::new(0, 0x10000), BufferMemory::new(0, 0x10000));
        let mut queues = vec![];
        let mut chains = vec![];
        for (mem, packed) in [(&ms, false), (&mp, true)] {
            let mut drv = DriverQueue::new(mem, &config(), packed).unwrap();
            drv.add(&[(0x8000, 4)], &[]).unwrap();
            drv.publish();
            let mut dev =
                DeviceQueue::new(mem, &config(), RingPosition::default(), packed).unwrap();
            assert_eq!(dev.is_packed(), packed);
            chains.push(dev.pop().unwrap().unwrap());
            queues.push(dev);
        }
        let (split_chain, packed_chain) = (chains[0], chains[1]);
        assert_eq!(
            queues[0].add_used(&packed_chain, 0),
            Err(Error::LayoutMismatch)
        );
        assert_eq!(
            queues[1].descriptors(&split_chain).collect::<Vec<_>>(),
            [Err(Error::LayoutMismatch)]
        );
        assert!(queues[0].push(&split_chain, 0).unwrap());
        assert!(queues[1].push(&packed_chain, 0).unwrap());
        assert!(queues[0].as_split().is_some() && queues[1].as_packed().is_some());
    }

    #[test]
    fn writers_log_through_the_wrapper() {
        let mem = BufferMemory::new(0, 0x10000);
        let log = DirtyLog::new(SharedRegion::zeroed(8));
        for packed in [false, true] {
            let mut drv = DriverQueue::new(&mem, &config(), packed).unwrap();
            drv.add(&[], &[(0x9000, 4)]).unwrap();
            drv.publish();
            let mut dev =
                DeviceQueue::new(&mem, &config(), RingPosition::default(), packed).unwrap();
            dev.set_dirty_log(Some(log.clone()), None);
            let c = dev.pop().unwrap().unwrap();
            dev.writer(&c).write_all(b"abcd").unwrap();
            assert!(log.is_dirty(0x9000));
        }
    }
}
