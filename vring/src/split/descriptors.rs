//! Walking one split chain: direct descriptors, then at most one indirect table
//! (virtqueue spec §2.2, §2.3), with every malformation a typed error
//! (virtqueue spec §2.11).

use std::sync::atomic::Ordering;

use crate::Error;
use crate::desc::{DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, Descriptor};
use crate::memory::{GuestMemory, GuestSlice, RawArea};
use crate::split::layout::RawDesc;

/// Entries of an indirect table that `next` (a u16) can reach; a longer
/// table's tail is unreachable, so only this much of it is translated.
const MAX_INDIRECT_ENTRIES: u32 = 1 << 16;

/// The device's handle on an available chain: a small `Copy` value that does
/// not borrow the queue. Iterate it with
/// [`DeviceQueue::descriptors`](super::DeviceQueue::descriptors) (or its
/// reader/writer) and complete it with
/// [`DeviceQueue::add_used`](super::DeviceQueue::add_used).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AvailChain {
    pub(crate) head: u16,
}

impl AvailChain {
    /// The chain's id: its head descriptor index (what the used element
    /// carries, virtqueue spec §2.5).
    #[inline]
    pub fn id(&self) -> u16 {
        self.head
    }
}

/// The elements of one split chain, following an indirect table if the chain
/// ends in one. Yields each element, or a typed error and then `None`.
///
/// Validation done while walking (virtqueue spec §2.11): `next` in range, at
/// most Q descriptors in the ring table and at most the table's entries in an
/// indirect table (loops), INDIRECT only when negotiated, never together with
/// NEXT and never nested, indirect table length a non-zero multiple of 16 and
/// mapped, no `addr + len` overflow, no readable element after a writable
/// one, total length at most 2^32 bytes. Elements themselves are translated
/// by whoever reads them (the [`Reader`](crate::Reader) and
/// [`Writer`](crate::Writer) report unmapped elements).
#[derive(Debug)]
pub struct Descriptors<'a, M: ?Sized> {
    mem: &'a M,
    /// The ring's descriptor table (valid while `mem` is borrowed).
    table: RawArea,
    /// The indirect table once the chain has entered it.
    indirect: Option<GuestSlice<'a>>,
    indirect_allowed: bool,
    /// Index of the next descriptor to read in the current table.
    next: u16,
    /// Entries of the current table (bound for `next`).
    entries: u32,
    /// Descriptors that may still be read from the current table.
    left: u32,
    total: u64,
    seen_writable: bool,
    /// The chain ended (normally or with an error).
    done: bool,
}

impl<'a, M: GuestMemory + ?Sized> Descriptors<'a, M> {
    #[inline]
    pub(crate) fn new(
        mem: &'a M,
        table: RawArea,
        queue_size: u16,
        indirect_allowed: bool,
        head: u16,
    ) -> Self {
        Descriptors {
            mem,
            table,
            indirect: None,
            indirect_allowed,
            next: head,
            entries: queue_size.into(),
            left: queue_size.into(),
            total: 0,
            seen_writable: false,
            done: false,
        }
    }

    #[inline]
    fn read(&self, index: u16) -> Result<RawDesc, Error> {
        let offset = usize::from(index) * 16;
        match &self.indirect {
            None => {
                // The ring's table is 16-byte aligned (checked at setup): two
                // 8-byte loads, where a 16-byte volatile copy would be split
                // into byte loads.
                let t = &self.table;
                let lo = t.load_u64(offset, Ordering::Relaxed);
                let hi = t.load_u64(offset + 8, Ordering::Relaxed);
                match (lo, hi) {
                    (Some(addr), Some(hi)) => Ok(RawDesc {
                        addr,
                        len: hi as u32,
                        flags: (hi >> 32) as u16,
                        next: (hi >> 48) as u16,
                    }),
                    _ => Err(Error::OutOfBounds {
                        addr: 0,
                        len: t.len() as u64,
                        offset: offset as u64,
                        access: 16,
                    }),
                }
            }
            Some(t) => {
                let mut b = [0u8; 16];
                // virtqueue spec §2.3: the table may be unaligned; this is a
                // byte copy.
                t.read_at(offset, &mut b)?;
                Ok(RawDesc::from_bytes(b))
            }
        }
    }

    /// Switches to the indirect table `d` points at.
    #[cold]
    fn enter_indirect(&mut self, d: &RawDesc) -> Result<(), Error> {
        // virtqueue spec §2.3: no nesting, only when negotiated, never with
        // NEXT, len a non-zero multiple of 16; the WRITE flag of the table
        // descriptor itself is ignored.
        if self.indirect.is_some() {
            return Err(Error::NestedIndirect);
        }
        if !self.indirect_allowed {
            return Err(Error::IndirectNotNegotiated);
        }
        if d.flags & DESC_F_NEXT != 0 {
            return Err(Error::IndirectWithNext);
        }
        if d.len == 0 || !d.len.is_multiple_of(16) {
            return Err(Error::IndirectLength { len: d.len });
        }
        let entries = d.len / 16;
        let reachable = entries.min(MAX_INDIRECT_ENTRIES);
        let table =
            GuestSlice::new(self.mem, d.addr, reachable as usize * 16).map_err(|e| match e {
                Error::AddressOverflow { .. } => e,
                _ => Error::Untranslatable {
                    addr: d.addr,
                    len: d.len.into(),
                },
            })?;
        self.indirect = Some(table);
        self.next = 0;
        self.entries = entries;
        self.left = reachable;
        Ok(())
    }

    #[inline]
    fn step(&mut self) -> Result<Option<Descriptor>, Error> {
        loop {
            if self.left == 0 {
                // More steps than entries: a loop (or a chain longer than Q).
                return Err(Error::ChainTooLong { max: self.entries });
            }
            self.left -= 1;
            let d = self.read(self.next)?;
            if d.flags & DESC_F_INDIRECT != 0 {
                self.enter_indirect(&d)?;
                continue;
            }
            if d.addr.checked_add(d.len.into()).is_none() {
                return Err(Error::AddressOverflow {
                    addr: d.addr,
                    len: d.len.into(),
                });
            }
            let writable = d.flags & DESC_F_WRITE != 0;
            if writable {
                self.seen_writable = true;
            } else if self.seen_writable {
                return Err(Error::ReadableAfterWritable);
            }
            self.total += u64::from(d.len);
            if self.total > 1 << 32 {
                return Err(Error::ChainLengthOverflow);
            }
            if d.flags & DESC_F_NEXT != 0 {
                if u32::from(d.next) >= self.entries {
                    return Err(Error::NextOutOfRange {
                        next: d.next,
                        size: self.entries,
                    });
                }
                self.next = d.next;
            } else {
                self.done = true;
            }
            return Ok(Some(Descriptor {
                addr: d.addr,
                len: d.len,
                writable,
            }));
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
            Ok(d) => d.map(Ok),
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl<M: GuestMemory + ?Sized> std::iter::FusedIterator for Descriptors<'_, M> {}
