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
///
/// 32 bytes: the head's address, length and flags (its Buffer ID field is
/// the buffer's `id` for a one-slot buffer and unused otherwise), the pop
/// sequence number and five small fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AvailChain {
    pub(crate) head_addr: u64,
    /// How many ring slots the device had popped before this buffer.
    pub(crate) seq: u64,
    pub(crate) head_len: u32,
    pub(crate) head_flags: u16,
    pub(crate) id: u16,
    pub(crate) head_slot: u16,
    pub(crate) slots: u16,
    /// This buffer's head entry in the inflight region, or [`NO_INFLIGHT`].
    pub(crate) inflight: u16,
    /// Recovered from the inflight region: walk the saved copies.
    pub(crate) recovered: bool,
}

// The handle is copied into and out of callers' queues per buffer.
const _: () = assert!(size_of::<AvailChain>() == 32);

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

    /// The head descriptor (its `id` field is not kept).
    #[inline]
    fn head(&self) -> RawDesc {
        RawDesc {
            addr: self.head_addr,
            len: self.head_len,
            id: self.id,
            flags: self.head_flags,
        }
    }
}

/// Where the iterator is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The head is next (always the first element).
    Head,
    /// Ring slots after `at`.
    Ring,
    /// Inflight entries after `at`, linked by `next`.
    Inflight,
    /// The indirect table's entries from `table_next`.
    Table,
    /// Finished (normally or after an error): yields `None`.
    Done,
    /// Report [`Error::ChainOverwritten`] first.
    Overwritten,
    /// Report a recovered buffer without an inflight region first.
    NoRegion,
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
    areas: &'a Areas,
    inflight: Option<&'a PackedInflight>,
    head: RawDesc,
    state: State,
    /// Where the direct descriptors after the head come from.
    rest: State,
    /// The last ring slot or inflight entry read.
    at: u16,
    /// Direct descriptors left after the head.
    left: u16,
    id: u16,
    size: u16,
    indirect_ok: bool,
    seen_writable: bool,
    table: Option<GuestSlice<'a>>,
    table_next: u32,
    table_len: u32,
    total: u64,
}

impl<'a, M: GuestMemory + ?Sized> Descriptors<'a, M> {
    /// The iterator over `chain`, whose list is in `areas` (or in `inflight`
    /// for a recovered buffer). `stale` says the device has reused the list's
    /// slots since it was popped.
    #[inline]
    pub(crate) fn new(
        mem: &'a M,
        areas: &'a Areas,
        inflight: Option<&'a PackedInflight>,
        chain: &AvailChain,
        size: u16,
        indirect_ok: bool,
        stale: bool,
    ) -> Self {
        let (state, rest, at) = if chain.recovered {
            let state = if inflight.is_some() {
                State::Head
            } else {
                State::NoRegion
            };
            (state, State::Inflight, chain.inflight)
        } else if stale {
            (State::Overwritten, State::Ring, chain.head_slot)
        } else {
            (State::Head, State::Ring, chain.head_slot)
        };
        Descriptors {
            mem,
            areas,
            inflight,
            head: chain.head(),
            state,
            rest,
            at,
            left: chain.slots.saturating_sub(1),
            id: chain.id,
            size,
            indirect_ok,
            seen_writable: false,
            table: None,
            table_next: 0,
            table_len: 0,
            total: 0,
        }
    }

    /// Where the iterator goes after the head.
    #[inline]
    fn after_head(&self) -> State {
        if self.left == 0 {
            State::Done
        } else {
            self.rest
        }
    }

    /// The next direct descriptor after the head, from the ring or the
    /// inflight copies (`left > 0`).
    fn next_direct(&mut self) -> Result<RawDesc, Error> {
        self.left -= 1;
        if self.left == 0 {
            self.state = State::Done;
        }
        if self.rest == State::Inflight {
            let region = self.inflight.ok_or(Error::InvalidInflight {
                reason: "recovered chain without an inflight region",
            })?;
            let next = region.entry_next(self.at)?;
            self.at = next;
            return region.entry_desc(next);
        }
        self.at = if self.at + 1 >= self.size {
            0
        } else {
            self.at + 1
        };
        // The head's acquire load (at pop) ordered these reads: the driver
        // writes the head's flags last (virtqueue spec §3.4).
        self.areas.read_desc(self.at).ok_or(Error::NextOutOfRange {
            next: self.at,
            size: u32::from(self.size),
        })
    }

    /// Turns a raw element after the first into a [`Descriptor`], checking
    /// the framing rules.
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

    /// The head as the first element of the buffer: nothing came before it,
    /// so only the address can be wrong (one u32 length cannot exceed 2^32).
    #[inline]
    fn first_element(&mut self) -> Result<Descriptor, Error> {
        let RawDesc {
            addr, len, flags, ..
        } = self.head;
        if addr.checked_add(u64::from(len)).is_none() {
            return Err(Error::AddressOverflow {
                addr,
                len: u64::from(len),
            });
        }
        let writable = flags & DESC_F_WRITE != 0;
        self.seen_writable = writable;
        self.total = u64::from(len);
        Ok(Descriptor {
            addr,
            len,
            writable,
        })
    }

    /// Everything but a direct head: list slots, indirect tables, errors
    /// known when the iterator was made.
    fn step(&mut self) -> Result<Option<Descriptor>, Error> {
        let d = match self.state {
            State::Done => return Ok(None),
            State::Overwritten => return Err(Error::ChainOverwritten { id: self.id }),
            State::NoRegion => {
                return Err(Error::InvalidInflight {
                    reason: "recovered chain without an inflight region",
                });
            }
            State::Table => {
                let Some(table) = self.table else {
                    return Ok(None);
                };
                if self.table_next >= self.table_len {
                    return Ok(None);
                }
                let mut b = [0u8; 16];
                table.read_at(self.table_next as usize * 16, &mut b)?;
                self.table_next += 1;
                if self.table_next >= self.table_len {
                    self.state = State::Done;
                }
                let d = RawDesc::from_bytes(b);
                // Inside a table only WRITE is valid; the rest is reserved
                // and ignored, except a nested INDIRECT (virtqueue spec §3.6).
                if d.flags & DESC_F_INDIRECT != 0 {
                    return Err(Error::NestedIndirect);
                }
                return self.element(d.addr, d.len, d.flags).map(Some);
            }
            State::Head => {
                self.state = self.after_head();
                let d = self.head;
                if d.flags & DESC_F_INDIRECT == 0 {
                    return self.first_element().map(Some);
                }
                d
            }
            State::Ring | State::Inflight => {
                if self.left == 0 {
                    return Ok(None);
                }
                let d = self.next_direct()?;
                if d.flags & DESC_F_INDIRECT == 0 {
                    return self.element(d.addr, d.len, d.flags).map(Some);
                }
                // An indirect buffer is one ring descriptor, never part of a
                // NEXT list (virtqueue spec §3.6).
                return Err(Error::IndirectWithNext);
            }
        };
        // The head is INDIRECT. An indirect buffer is one ring descriptor,
        // never part of a NEXT list; its WRITE flag is reserved (§3.6).
        if self.left > 0 {
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
        self.state = State::Table;
        self.step()
    }
}

impl<M: GuestMemory + ?Sized> Iterator for Descriptors<'_, M> {
    type Item = Result<Descriptor, Error>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let r = if self.state == State::Head && self.head.flags & DESC_F_INDIRECT == 0 {
            // The common first step: a direct head.
            self.state = self.after_head();
            self.first_element().map(Some)
        } else if self.state == State::Done {
            return None;
        } else {
            self.step()
        };
        match r {
            Ok(Some(d)) => Some(Ok(d)),
            Ok(None) => {
                self.state = State::Done;
                None
            }
            Err(e) => {
                self.state = State::Done;
                Some(Err(e))
            }
        }
    }
}

impl<M: GuestMemory + ?Sized> std::iter::FusedIterator for Descriptors<'_, M> {}
