//! A popped packed buffer ([`AvailChain`]) and the iterator over its
//! elements ([`Descriptors`]), which follows direct lists and indirect
//! tables and reports every malformed layout as a typed error.

use crate::Error;
use crate::desc::{DESC_F_INDIRECT, DESC_F_WRITE, Descriptor};
use crate::inflight::packed::PackedInflight;
use crate::memory::{GuestMemory, GuestSlice};

use super::layout::{Areas, RawDesc};

/// Marks "no inflight entry" in [`AvailChain`].
pub(crate) const NO_INFLIGHT: u16 = u16::MAX;

/// A buffer the device popped from a packed ring: a small `Copy` handle
/// (no borrow of the queue) to iterate it and to complete it.
///
/// The head descriptor is kept by value, so a one-slot buffer (a single
/// direct descriptor, or an indirect one) never reads the ring again. The
/// other slots of a multi-descriptor list are read from the ring when the
/// buffer is walked: walk a buffer (make its [`Reader`](crate::Reader) or
/// [`Writer`](crate::Writer), or collect its elements) before completing a
/// buffer that was popped after it, because the device's own used
/// descriptors reuse those slots (virtqueue spec §3.5). Walking a list whose
/// slots were reused reports [`Error::ChainOverwritten`], never stale data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AvailChain {
    pub(crate) id: u16,
    pub(crate) head_slot: u16,
    pub(crate) slots: u16,
    pub(crate) head_wrap: bool,
    pub(crate) head: RawDesc,
    /// How many ring slots the device had popped before this buffer.
    pub(crate) seq: u64,
    /// This buffer's head entry in the inflight region, or [`NO_INFLIGHT`].
    pub(crate) inflight: u16,
    /// Recovered from the inflight region: walk the saved copies.
    pub(crate) recovered: bool,
}

impl AvailChain {
    /// The Buffer ID the driver gave the buffer (from its last descriptor,
    /// virtqueue spec §3.4); the used descriptor carries it back.
    #[inline]
    pub fn id(&self) -> u16 {
        self.id
    }

    /// The ring slot of the buffer's first descriptor.
    #[inline]
    pub fn head_slot(&self) -> u16 {
        self.head_slot
    }

    /// The number of ring slots the buffer takes (1 for an indirect buffer):
    /// how far the used position skips when it is completed.
    #[inline]
    pub fn slots(&self) -> u16 {
        self.slots
    }

    /// Whether the buffer came back from the inflight region after a restart
    /// (its elements are read from the saved copies).
    #[inline]
    pub fn is_recovered(&self) -> bool {
        self.recovered
    }
}

/// Where the list's descriptors after the head come from.
#[derive(Debug, Clone, Copy)]
enum Source<'a> {
    /// Ring slots, starting after the head.
    Ring { areas: &'a Areas, slot: u16 },
    /// Inflight entries, linked by `next`, starting after the head.
    Inflight {
        region: &'a PackedInflight,
        entry: u16,
    },
}

/// The elements of one packed buffer, in order: an iterator of
/// `Result<Descriptor, Error>` (a [`DescriptorIter`](crate::DescriptorIter)).
///
/// Validates as it goes (virtqueue spec §3.6 and the malformed-chain rules of
/// §2.11): INDIRECT inside a NEXT-linked list, INDIRECT without the feature,
/// nested INDIRECT, indirect tables whose length is 0, not a multiple of 16,
/// longer than the queue or not mapped, address overflow, a readable element
/// after a writable one, and a total length above 2^32 bytes. After the first
/// error it yields `None` (it is fused). Element addresses are not
/// translated here; the [`Reader`](crate::Reader)/[`Writer`](crate::Writer)
/// translate each element when they reach it.
#[derive(Debug)]
pub struct Descriptors<'a, M: ?Sized> {
    mem: &'a M,
    source: Source<'a>,
    /// The head, until it is taken.
    head: Option<RawDesc>,
    /// Direct descriptors left after the head.
    left: u16,
    /// Whether the buffer has more than one ring slot (INDIRECT is invalid).
    list: bool,
    size: u16,
    indirect_ok: bool,
    table: Option<GuestSlice<'a>>,
    table_next: u32,
    table_len: u32,
    total: u64,
    seen_writable: bool,
    /// An error to report first (kept small: the iterator is built per
    /// buffer on the hot path).
    pending: Pending,
    done: bool,
}

/// An error known when the iterator is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    None,
    Overwritten(u16),
    NoRegion,
}

impl<'a, M: GuestMemory + ?Sized> Descriptors<'a, M> {
    /// The iterator over `chain`, whose list is in `areas` (or in `inflight`
    /// for a recovered buffer). `stale` says the device has reused the list's
    /// slots since it was popped.
    pub(crate) fn new(
        mem: &'a M,
        areas: &'a Areas,
        inflight: Option<&'a PackedInflight>,
        chain: &AvailChain,
        size: u16,
        indirect_ok: bool,
        stale: bool,
    ) -> Self {
        let mut pending = Pending::None;
        let source = match (chain.recovered, inflight) {
            (true, Some(region)) => Source::Inflight {
                region,
                entry: chain.inflight,
            },
            (true, None) => {
                pending = Pending::NoRegion;
                Source::Ring {
                    areas,
                    slot: chain.head_slot,
                }
            }
            (false, _) => {
                if stale {
                    pending = Pending::Overwritten(chain.id);
                }
                Source::Ring {
                    areas,
                    slot: chain.head_slot,
                }
            }
        };
        Descriptors {
            mem,
            source,
            head: Some(chain.head),
            left: chain.slots.saturating_sub(1),
            list: chain.slots > 1,
            size,
            indirect_ok,
            table: None,
            table_next: 0,
            table_len: 0,
            total: 0,
            seen_writable: false,
            pending,
            done: false,
        }
    }

    /// The next direct descriptor of the list, from the ring or the inflight
    /// copies.
    #[inline]
    fn next_direct(&mut self) -> Result<Option<RawDesc>, Error> {
        if let Some(head) = self.head.take() {
            return Ok(Some(head));
        }
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        match &mut self.source {
            Source::Ring { areas, slot } => {
                *slot = if *slot + 1 >= self.size { 0 } else { *slot + 1 };
                // The head's acquire load (at pop) ordered these reads: the
                // driver writes the head's flags last (virtqueue spec §3.4).
                areas
                    .read_desc(*slot)
                    .map(Some)
                    .ok_or(Error::NextOutOfRange {
                        next: *slot,
                        size: u32::from(self.size),
                    })
            }
            Source::Inflight { region, entry } => {
                let next = region.entry_next(*entry)?;
                *entry = next;
                region.entry_desc(next).map(Some)
            }
        }
    }

    /// Turns a raw element into a [`Descriptor`], checking the framing rules.
    #[inline]
    fn element(&mut self, addr: u64, len: u32, flags: u16) -> Result<Descriptor, Error> {
        if addr.checked_add(u64::from(len)).is_none() {
            return Err(Error::AddressOverflow {
                addr,
                len: u64::from(len),
            });
        }
        let writable = flags & DESC_F_WRITE != 0;
        if writable {
            self.seen_writable = true;
        } else if self.seen_writable {
            return Err(Error::ReadableAfterWritable);
        }
        self.total += u64::from(len);
        if self.total > 1 << 32 {
            return Err(Error::ChainLengthOverflow);
        }
        Ok(Descriptor {
            addr,
            len,
            writable,
        })
    }

    #[inline]
    fn step(&mut self) -> Result<Option<Descriptor>, Error> {
        match std::mem::replace(&mut self.pending, Pending::None) {
            Pending::None => {}
            Pending::Overwritten(id) => return Err(Error::ChainOverwritten { id }),
            Pending::NoRegion => {
                return Err(Error::InvalidInflight {
                    reason: "recovered chain without an inflight region",
                });
            }
        }
        loop {
            if let Some(table) = self.table {
                if self.table_next >= self.table_len {
                    return Ok(None);
                }
                let mut b = [0u8; 16];
                table.read_at(self.table_next as usize * 16, &mut b)?;
                self.table_next += 1;
                let d = RawDesc::from_bytes(b);
                // Inside a table only WRITE is valid; the rest is reserved
                // and ignored, except a nested INDIRECT (virtqueue spec §3.6).
                if d.flags & DESC_F_INDIRECT != 0 {
                    return Err(Error::NestedIndirect);
                }
                return self.element(d.addr, d.len, d.flags).map(Some);
            }
            let Some(d) = self.next_direct()? else {
                return Ok(None);
            };
            if d.flags & DESC_F_INDIRECT == 0 {
                return self.element(d.addr, d.len, d.flags).map(Some);
            }
            // An indirect buffer is one ring descriptor, never part of a NEXT
            // list; its WRITE flag is reserved (virtqueue spec §3.6).
            if self.list {
                return Err(Error::IndirectWithNext);
            }
            if !self.indirect_ok {
                return Err(Error::IndirectNotNegotiated);
            }
            if d.len == 0 || !d.len.is_multiple_of(16) {
                return Err(Error::IndirectLength { len: d.len });
            }
            let entries = d.len / 16;
            if entries > u32::from(self.size) {
                return Err(Error::ChainTooLong {
                    max: u32::from(self.size),
                });
            }
            if d.addr.checked_add(u64::from(d.len)).is_none() {
                return Err(Error::AddressOverflow {
                    addr: d.addr,
                    len: u64::from(d.len),
                });
            }
            self.table = Some(GuestSlice::new(self.mem, d.addr, d.len as usize)?);
            self.table_len = entries;
        }
    }
}

impl<M: GuestMemory + ?Sized> Iterator for Descriptors<'_, M> {
    type Item = Result<Descriptor, Error>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.step() {
            Ok(Some(d)) => Some(Ok(d)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl<M: GuestMemory + ?Sized> std::iter::FusedIterator for Descriptors<'_, M> {}
