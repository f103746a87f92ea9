//! A popped packed buffer ([`AvailChain`]) and the iterator over its
//! elements ([`Descriptors`]), which follows direct lists and indirect
//! tables and reports every malformed layout as a typed error.

use crate::desc::{DESC_F_INDIRECT, DESC_F_WRITE, Descriptor};
use crate::inflight::packed::PackedInflight;
use crate::memory::{GuestMemory, GuestSlice};
use crate::{Error, QueueConfig};

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
/// 32 bytes in four words, so that handing it around (a `Vec` of popped
/// buffers) is four moves: the head's address; the head's second word as in
/// the ring (length, then a recovered mark where the ring has the Buffer ID,
/// then flags); the pop sequence number; and the head slot, slot count,
/// inflight entry and Buffer ID.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AvailChain {
    head_addr: u64,
    /// len (bits 0..32) | recovered (bit 32) | flags (bits 48..64).
    head_hi: u64,
    /// How many ring slots the device had popped before this buffer.
    pub(crate) seq: u64,
    /// head_slot (bits 0..16) | slots (16..32) | inflight entry (32..48) |
    /// Buffer ID (48..64).
    meta: u64,
}

// The handle is copied into and out of callers' queues per buffer.
const _: () = assert!(size_of::<AvailChain>() == 32);

const RECOVERED: u64 = 1 << 32;

impl AvailChain {
    /// A handle. `inflight` is the head entry in the inflight region, or
    /// [`NO_INFLIGHT`].
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub(crate) fn new(
        head: &RawDesc,
        seq: u64,
        id: u16,
        head_slot: u16,
        slots: u16,
        inflight: u16,
        recovered: bool,
    ) -> Self {
        AvailChain {
            head_addr: head.addr,
            head_hi: u64::from(head.len)
                | if recovered { RECOVERED } else { 0 }
                | u64::from(head.flags) << 48,
            seq,
            meta: u64::from(head_slot)
                | u64::from(slots) << 16
                | u64::from(inflight) << 32
                | u64::from(id) << 48,
        }
    }

    /// A one-slot buffer popped from the ring: `hi` is the second word of
    /// its descriptor as read (len, Buffer ID = `id`, flags), `flags` the
    /// acquire-loaded flags.
    #[inline]
    pub(crate) fn one_slot(addr: u64, hi: u64, flags: u16, seq: u64, head_slot: u16) -> Self {
        AvailChain {
            head_addr: addr,
            head_hi: (hi & 0xffff_ffff) | u64::from(flags) << 48,
            seq,
            meta: u64::from(head_slot)
                | 1 << 16
                | u64::from(NO_INFLIGHT) << 32
                | (hi >> 32 & 0xffff) << 48,
        }
    }

    /// The Buffer ID the driver gave the buffer (from its last descriptor,
    /// virtqueue spec §3.4); the used descriptor carries it back.
    #[inline]
    pub fn id(&self) -> u16 {
        (self.meta >> 48) as u16
    }

    /// The ring slot of the buffer's first descriptor.
    #[inline]
    pub fn head_slot(&self) -> u16 {
        self.meta as u16
    }

    /// The number of ring slots the buffer takes (1 for an indirect buffer):
    /// how far the used position skips when it is completed.
    #[inline]
    pub fn slots(&self) -> u16 {
        (self.meta >> 16) as u16
    }

    /// Whether the buffer came back from the inflight region after a restart
    /// (its elements are read from the saved copies).
    #[inline]
    pub fn is_recovered(&self) -> bool {
        self.head_hi & RECOVERED != 0
    }

    /// This buffer's head entry in the inflight region, or [`NO_INFLIGHT`].
    #[inline]
    pub(crate) fn inflight(&self) -> u16 {
        (self.meta >> 32) as u16
    }

    /// One ring slot holding a direct descriptor, popped (not recovered):
    /// the buffer is its head alone.
    #[inline]
    fn is_one_direct_slot(&self) -> bool {
        const INDIRECT: u64 = (DESC_F_INDIRECT as u64) << 48;
        self.head_hi & (INDIRECT | RECOVERED) == 0 && self.slots() == 1
    }

    #[inline]
    fn head_len(&self) -> u32 {
        self.head_hi as u32
    }

    #[inline]
    fn head_flags(&self) -> u16 {
        (self.head_hi >> 48) as u16
    }
}

impl std::fmt::Debug for AvailChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AvailChain")
            .field("id", &self.id())
            .field("head_slot", &self.head_slot())
            .field("slots", &self.slots())
            .field("head_addr", &format_args!("{:#x}", self.head_addr))
            .field("head_len", &self.head_len())
            .field("head_flags", &format_args!("{:#x}", self.head_flags()))
            .field("seq", &self.seq)
            .field("inflight", &self.inflight())
            .field("recovered", &self.is_recovered())
            .finish()
    }
}

/// Where the iterator is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The head is next (always the first element).
    Head,
    /// The list's descriptors after the head, or the indirect table's
    /// entries (`Walk::at`, `Walk::left`, `Walk::table`).
    Rest,
    /// Finished (normally or after an error): yields `None`.
    Done,
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
///
/// The walk state is plain scalars and the rare first steps (an indirect
/// head, a list's head, errors known up front) run out of line over a copy,
/// so the iterator never has its address taken and lives in registers: a
/// one-slot direct buffer costs a few instructions.
#[derive(Debug)]
pub struct Descriptors<'a, M: ?Sized> {
    mem: &'a M,
    areas: &'a Areas,
    inflight: &'a Option<PackedInflight>,
    config: &'a QueueConfig,
    chain: AvailChain,
    /// Ring slots the used position had moved over when the iterator was
    /// made (for the overwritten-list check).
    used_seq: u64,
    walk: Walk<'a>,
}

/// What changes while walking.
#[derive(Debug, Clone, Copy)]
struct Walk<'a> {
    phase: Phase,
    /// A list: the last ring slot (or inflight entry, for a recovered
    /// buffer) read; a table: the next entry.
    at: u32,
    /// Elements left.
    left: u32,
    /// The indirect table, once the head pointed at one.
    table: Option<GuestSlice<'a>>,
    seen_writable: bool,
    total: u64,
}

/// What the out-of-line part of the walk reads.
#[derive(Clone, Copy)]
struct Ctx<'a, M: ?Sized> {
    mem: &'a M,
    areas: &'a Areas,
    inflight: &'a Option<PackedInflight>,
    config: &'a QueueConfig,
    used_seq: u64,
}

impl<'a, M: GuestMemory + ?Sized> Descriptors<'a, M> {
    /// The iterator over `chain`, whose list is in `areas` (or in `inflight`
    /// for a recovered buffer). `used_seq` is the number of ring slots the
    /// used position has moved over so far: a list whose slots it passed
    /// since the pop was overwritten.
    #[inline]
    pub(crate) fn new(
        mem: &'a M,
        areas: &'a Areas,
        inflight: &'a Option<PackedInflight>,
        config: &'a QueueConfig,
        chain: &AvailChain,
        used_seq: u64,
    ) -> Self {
        Descriptors {
            mem,
            areas,
            inflight,
            config,
            chain: *chain,
            used_seq,
            walk: Walk {
                phase: Phase::Head,
                at: 0,
                left: 0,
                table: None,
                seen_writable: false,
                total: 0,
            },
        }
    }
}

/// The only element of a one-slot direct buffer: only its address can be
/// wrong.
#[inline]
fn single_element(chain: &AvailChain) -> Result<Descriptor, Error> {
    let (addr, len) = (chain.head_addr, chain.head_len());
    if addr.checked_add(u64::from(len)).is_none() {
        return Err(Error::AddressOverflow {
            addr,
            len: u64::from(len),
        });
    }
    Ok(Descriptor {
        addr,
        len,
        writable: chain.head_flags() & DESC_F_WRITE != 0,
    })
}

/// A buffer's head as its first element (direct): nothing came before it,
/// so only its address can be wrong (one u32 length cannot exceed 2^32).
#[inline]
fn head_element(chain: &AvailChain, walk: &mut Walk<'_>) -> Result<Descriptor, Error> {
    let (addr, len, flags) = (chain.head_addr, chain.head_len(), chain.head_flags());
    let slots = chain.slots();
    if slots > 1 {
        walk.phase = Phase::Rest;
        walk.at = u32::from(if chain.is_recovered() {
            chain.inflight()
        } else {
            chain.head_slot()
        });
        walk.left = u32::from(slots - 1);
    } else {
        walk.phase = Phase::Done;
    }
    if addr.checked_add(u64::from(len)).is_none() {
        return Err(Error::AddressOverflow {
            addr,
            len: u64::from(len),
        });
    }
    let writable = flags & DESC_F_WRITE != 0;
    walk.seen_writable = writable;
    walk.total = u64::from(len);
    Ok(Descriptor {
        addr,
        len,
        writable,
    })
}

/// The first step of every buffer but a one-slot direct one (its head, or
/// the error known before it), and the step into a list's tail: returns the
/// new walk state with the step's result. Out of line and over copies, so
/// the iterator never has its address taken.
///
/// The handle comes as its words, in registers: a by-value struct is copied
/// with 16-byte loads, hoisted onto the fast path, and those cannot be
/// forwarded from the 8-byte stores that just wrote the handle (a pop right
/// before the walk): a stall on every buffer.
#[inline(never)]
fn slow_step<'a, M: GuestMemory + ?Sized>(
    ctx: Ctx<'a, M>,
    head_addr: u64,
    head_hi: u64,
    seq: u64,
    meta: u64,
    mut walk: Walk<'a>,
) -> (Walk<'a>, Result<Option<Descriptor>, Error>) {
    let chain = AvailChain {
        head_addr,
        head_hi,
        seq,
        meta,
    };
    let r = slow_step_in(ctx, &chain, &mut walk);
    (walk, r)
}

fn slow_step_in<'a, M: GuestMemory + ?Sized>(
    ctx: Ctx<'a, M>,
    chain: &AvailChain,
    walk: &mut Walk<'a>,
) -> Result<Option<Descriptor>, Error> {
    let size = ctx.config.size;
    match walk.phase {
        Phase::Head => {
            if chain.is_recovered() {
                if ctx.inflight.is_none() {
                    return Err(Error::InvalidInflight {
                        reason: "recovered chain without an inflight region",
                    });
                }
            } else if chain.slots() > 1 && ctx.used_seq > chain.seq + 1 {
                // The list's slots after the head are intact until the used
                // position reaches them (the device's used writes and the
                // driver's reuse both happen behind it).
                return Err(Error::ChainOverwritten { id: chain.id() });
            }
            if chain.head_flags() & DESC_F_INDIRECT == 0 {
                return head_element(chain, walk).map(Some);
            }
            // An indirect buffer is one ring descriptor, never part of a NEXT
            // list; its WRITE flag is reserved (virtqueue spec §3.6).
            if chain.slots() > 1 {
                return Err(Error::IndirectWithNext);
            }
            let (table, len) = open_table(
                ctx.mem,
                chain.head_addr,
                chain.head_len(),
                ctx.config.features.indirect,
                size,
            )?;
            walk.phase = Phase::Rest;
            walk.table = Some(table);
            walk.at = 0;
            walk.left = len;
            rest_step(ctx.areas, ctx.inflight, chain.is_recovered(), size, walk)
        }
        Phase::Rest => rest_step(ctx.areas, ctx.inflight, chain.is_recovered(), size, walk),
        Phase::Done => Ok(None),
    }
}

/// The next element after the head: the list's next direct descriptor, or
/// the indirect table's next entry.
#[inline]
fn rest_step(
    areas: &Areas,
    inflight: &Option<PackedInflight>,
    recovered: bool,
    size: u16,
    walk: &mut Walk<'_>,
) -> Result<Option<Descriptor>, Error> {
    if walk.left == 0 {
        return Ok(None);
    }
    walk.left -= 1;
    if walk.left == 0 {
        walk.phase = Phase::Done;
    }
    let d = if let Some(table) = walk.table {
        let d = table_entry(table, walk.at)?;
        walk.at += 1;
        // Inside a table only WRITE is valid; the rest is reserved and
        // ignored, except a nested INDIRECT (virtqueue spec §3.6).
        if d.flags & DESC_F_INDIRECT != 0 {
            return Err(Error::NestedIndirect);
        }
        d
    } else {
        let at = walk.at as u16;
        let (at, d) = if recovered {
            inflight_next(inflight.as_ref(), at)?
        } else {
            let slot = if at + 1 >= size { 0 } else { at + 1 };
            // The head's acquire load (at pop) ordered these reads: the
            // driver writes the head's flags last (virtqueue spec §3.4).
            let d = areas.read_desc(slot).ok_or(Error::NextOutOfRange {
                next: slot,
                size: u32::from(size),
            })?;
            (slot, d)
        };
        walk.at = u32::from(at);
        // An indirect buffer is never part of a NEXT list (§3.6).
        if d.flags & DESC_F_INDIRECT != 0 {
            return Err(Error::IndirectWithNext);
        }
        d
    };
    element(walk, d).map(Some)
}

/// An element after the first, with the framing checks.
#[inline]
fn element(walk: &mut Walk<'_>, d: RawDesc) -> Result<Descriptor, Error> {
    let (addr, len) = (d.addr, d.len);
    if addr.checked_add(u64::from(len)).is_none() {
        return Err(Error::AddressOverflow {
            addr,
            len: u64::from(len),
        });
    }
    let writable = d.flags & DESC_F_WRITE != 0;
    if writable {
        walk.seen_writable = true;
    } else if walk.seen_writable {
        return Err(Error::ReadableAfterWritable);
    }
    walk.total += u64::from(len);
    if walk.total > 1 << 32 {
        return Err(Error::ChainLengthOverflow);
    }
    Ok(Descriptor {
        addr,
        len,
        writable,
    })
}

/// The inflight entry after `at` of a recovered buffer and its saved copy.
#[inline(never)]
fn inflight_next(inflight: Option<&PackedInflight>, at: u16) -> Result<(u16, RawDesc), Error> {
    let region = inflight.ok_or(Error::InvalidInflight {
        reason: "recovered chain without an inflight region",
    })?;
    let next = region.entry_next(at)?;
    Ok((next, region.entry_desc(next)?))
}

/// Checks an indirect head (`addr`, `len`) and translates its table: the
/// table and its entry count.
#[inline]
fn open_table<M: GuestMemory + ?Sized>(
    mem: &M,
    addr: u64,
    len: u32,
    indirect_ok: bool,
    size: u16,
) -> Result<(GuestSlice<'_>, u32), Error> {
    if !indirect_ok {
        return Err(Error::IndirectNotNegotiated);
    }
    if len == 0 || !len.is_multiple_of(16) {
        return Err(Error::IndirectLength { len });
    }
    let entries = len / 16;
    if entries > u32::from(size) {
        return Err(Error::ChainTooLong {
            max: u32::from(size),
        });
    }
    if addr.checked_add(u64::from(len)).is_none() {
        return Err(Error::AddressOverflow {
            addr,
            len: u64::from(len),
        });
    }
    Ok((GuestSlice::new(mem, addr, len as usize)?, entries))
}

/// Entry `i` of an indirect table (a byte copy: the table may be unaligned).
#[inline]
fn table_entry(table: GuestSlice<'_>, i: u32) -> Result<RawDesc, Error> {
    let mut b = [0u8; 16];
    table.read_at(i as usize * 16, &mut b)?;
    Ok(RawDesc::from_bytes(b))
}

impl<M: GuestMemory + ?Sized> Iterator for Descriptors<'_, M> {
    type Item = Result<Descriptor, Error>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let r = match self.walk.phase {
            Phase::Done => return None,
            Phase::Head if self.chain.is_one_direct_slot() => {
                self.walk.phase = Phase::Done;
                single_element(&self.chain).map(Some)
            }
            Phase::Rest => rest_step(
                self.areas,
                self.inflight,
                self.chain.is_recovered(),
                self.config.size,
                &mut self.walk,
            ),
            Phase::Head => {
                let ctx = Ctx {
                    mem: self.mem,
                    areas: self.areas,
                    inflight: self.inflight,
                    config: self.config,
                    used_seq: self.used_seq,
                };
                let c = &self.chain;
                let (walk, r) = slow_step(ctx, c.head_addr, c.head_hi, c.seq, c.meta, self.walk);
                self.walk = walk;
                r
            }
        };
        match r {
            Ok(Some(d)) => Some(Ok(d)),
            Ok(None) => {
                self.walk.phase = Phase::Done;
                None
            }
            Err(e) => {
                self.walk.phase = Phase::Done;
                Some(Err(e))
            }
        }
    }
}

impl<M: GuestMemory + ?Sized> std::iter::FusedIterator for Descriptors<'_, M> {}
