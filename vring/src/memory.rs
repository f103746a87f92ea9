//! Access to guest memory and other shared mappings.
//!
//! This is the only module of the crate that contains `unsafe` code. Everything
//! else reaches memory through the types defined here:
//!
//! - [`GuestMemory`]: the small trait the engine needs from a guest memory
//!   (checked translation of a guest range to a contiguous host range). It is
//!   implemented for `vm_memory::GuestMemoryMmap` and for [`BufferMemory`], a
//!   heap buffer for tests and benches.
//! - [`GuestSlice`]: a checked view of a translated range, with copy-in and
//!   copy-out that stay inside the range.
//! - [`SharedRegion`]: a host mapping that is not guest memory (the inflight
//!   tracking buffer, the dirty log), kept alive by whoever mapped it.
//! - `RawArea` (crate-private): a translated ring area without a lifetime, held
//!   only next to the memory object that keeps it valid.
//!
//! Guest memory is shared with a guest that may write it concurrently and is
//! hostile. Ring indexes and flags are accessed with atomic operations; buffer
//! contents are copied with plain byte copies (the guest racing with a copy can
//! only corrupt its own data; this is the common practice of VMMs).

use std::any::Any;
use std::fmt;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU16, AtomicU32, AtomicU64, Ordering};

use crate::Error;

/// A guest memory the ring engine can read and write.
///
/// The engine asks for host addresses of guest ranges; it translates each ring
/// once when the ring is set up, and each buffer when a device reads or writes
/// it.
///
/// # Safety
///
/// An implementation promises that when [`translate`](Self::translate) returns
/// `Some((ptr, n))` for `(addr, len)`, then `1 <= n <= len` and the host range
/// `[ptr, ptr + n)` is one contiguous mapping of guest `[addr, addr + n)` that
/// is valid for reads and writes (from any thread, with concurrent accesses by
/// others) for as long as `self` is alive — including after `self` is moved —
/// and is never deallocated or remapped before `self` is dropped.
pub unsafe trait GuestMemory {
    /// Translates the longest prefix of the guest range `[addr, addr + len)`
    /// that is contiguous in host memory: the host address of `addr` and the
    /// prefix length (at least 1, at most `len`). `None` if `addr` is not
    /// mapped or `len` is 0.
    fn translate(&self, addr: u64, len: usize) -> Option<(NonNull<u8>, usize)>;
}

// SAFETY: a reference keeps the referent alive for as long as it exists, and
// the referent's contract covers the ranges it returns.
unsafe impl<T: GuestMemory + ?Sized> GuestMemory for &T {
    fn translate(&self, addr: u64, len: usize) -> Option<(NonNull<u8>, usize)> {
        (**self).translate(addr, len)
    }
}

// SAFETY: the Arc keeps the shared memory object alive and in place.
unsafe impl<T: GuestMemory + ?Sized> GuestMemory for Arc<T> {
    fn translate(&self, addr: u64, len: usize) -> Option<(NonNull<u8>, usize)> {
        (**self).translate(addr, len)
    }
}

// SAFETY: the Box keeps the memory object alive at a fixed heap address.
unsafe impl<T: GuestMemory + ?Sized> GuestMemory for Box<T> {
    fn translate(&self, addr: u64, len: usize) -> Option<(NonNull<u8>, usize)> {
        (**self).translate(addr, len)
    }
}

// SAFETY: `GuestMemoryMmap` owns its mmap'd regions; they stay mapped at the
// same host address until the collection is dropped (moving the collection does
// not move the mappings), and the collection is immutable. The range is checked
// to lie entirely inside the region that contains `addr`.
unsafe impl<B: vm_memory::bitmap::Bitmap> GuestMemory for vm_memory::GuestMemoryMmap<B> {
    fn translate(&self, addr: u64, len: usize) -> Option<(NonNull<u8>, usize)> {
        use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
        if len == 0 {
            return None;
        }
        let region = self.find_region(GuestAddress(addr))?;
        let offset = addr.checked_sub(region.start_addr().0)?;
        let left = region.len().checked_sub(offset)?;
        let n = usize::try_from(left).map_or(len, |left| left.min(len));
        if n == 0 {
            return None;
        }
        let ptr = region
            .get_host_address(vm_memory::MemoryRegionAddress(offset))
            .ok()?;
        Some((NonNull::new(ptr)?, n))
    }
}

/// A checked view of a range of guest memory that has been translated.
///
/// All accesses stay inside the range; out-of-range offsets are errors, never
/// panics. The lifetime ties the view to the memory object that translated it.
#[derive(Clone, Copy)]
pub struct GuestSlice<'m> {
    ptr: NonNull<u8>,
    len: usize,
    addr: u64,
    _memory: PhantomData<&'m ()>,
}

// SAFETY: a GuestSlice is a pointer into memory that the GuestMemory contract
// declares valid from any thread; it owns nothing.
unsafe impl Send for GuestSlice<'_> {}
// SAFETY: as above; shared use only performs copies and atomic accesses.
unsafe impl Sync for GuestSlice<'_> {}

impl fmt::Debug for GuestSlice<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestSlice")
            .field("addr", &format_args!("{:#x}", self.addr))
            .field("len", &self.len)
            .finish()
    }
}

impl<'m> GuestSlice<'m> {
    /// Translates `[addr, addr + len)` of `mem` into a slice.
    pub fn new<M: GuestMemory + ?Sized>(mem: &'m M, addr: u64, len: usize) -> Result<Self, Error> {
        let bad = Error::Untranslatable {
            addr,
            len: len as u64,
        };
        let len_u64 = u64::try_from(len).map_err(|_| bad.clone())?;
        if addr.checked_add(len_u64).is_none() {
            return Err(Error::AddressOverflow { addr, len: len_u64 });
        }
        if len == 0 {
            return Ok(GuestSlice {
                ptr: NonNull::dangling(),
                len: 0,
                addr,
                _memory: PhantomData,
            });
        }
        match mem.translate(addr, len) {
            Some((ptr, n)) if n == len => Ok(GuestSlice {
                ptr,
                len,
                addr,
                _memory: PhantomData,
            }),
            _ => Err(bad),
        }
    }

    /// Translates the longest host-contiguous prefix of `[addr, addr + len)`
    /// (at least one byte); used to walk buffers that cross region borders.
    pub fn new_prefix<M: GuestMemory + ?Sized>(
        mem: &'m M,
        addr: u64,
        len: usize,
    ) -> Result<Self, Error> {
        let len_u64 = len as u64;
        if addr.checked_add(len_u64).is_none() {
            return Err(Error::AddressOverflow { addr, len: len_u64 });
        }
        let (ptr, n) = mem
            .translate(addr, len)
            .ok_or(Error::Untranslatable { addr, len: len_u64 })?;
        Ok(GuestSlice {
            ptr,
            len: n.min(len),
            addr,
            _memory: PhantomData,
        })
    }

    /// The guest address of the first byte.
    pub fn guest_addr(&self) -> u64 {
        self.addr
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the slice has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The host address of the first byte, for zero-copy I/O (e.g. `preadv`
    /// straight into guest memory). Dereferencing it is the caller's `unsafe`.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The sub-range `[offset, offset + len)` of this slice.
    pub fn subslice(&self, offset: usize, len: usize) -> Result<GuestSlice<'m>, Error> {
        self.check(offset, len)?;
        Ok(GuestSlice {
            // SAFETY: `check` proved offset + len <= self.len, so the result
            // stays inside (or one past the end of) this slice's allocation.
            ptr: unsafe { NonNull::new_unchecked(self.ptr.as_ptr().add(offset)) },
            len,
            addr: self.addr.wrapping_add(offset as u64),
            _memory: PhantomData,
        })
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), Error> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(Error::OutOfBounds {
                addr: self.addr,
                len: self.len as u64,
                offset: offset as u64,
                access: len as u64,
            }),
        }
    }

    /// Copies `dst.len()` bytes starting at `offset` out of guest memory.
    pub fn read_at(&self, offset: usize, dst: &mut [u8]) -> Result<(), Error> {
        self.check(offset, dst.len())?;
        // SAFETY: the range was checked to lie inside this slice, which the
        // GuestMemory contract makes valid for reads; `dst` is a distinct
        // host buffer, so the ranges do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(offset),
                dst.as_mut_ptr(),
                dst.len(),
            );
        }
        Ok(())
    }

    /// Copies `src` into guest memory starting at `offset`.
    pub fn write_at(&self, offset: usize, src: &[u8]) -> Result<(), Error> {
        self.check(offset, src.len())?;
        // SAFETY: the range was checked to lie inside this slice, which the
        // GuestMemory contract makes valid for writes; `src` is a distinct host
        // buffer, so the ranges do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.as_ptr().add(offset), src.len());
        }
        Ok(())
    }

    /// Sets `len` bytes starting at `offset` to `byte`.
    pub fn fill(&self, offset: usize, len: usize, byte: u8) -> Result<(), Error> {
        self.check(offset, len)?;
        // SAFETY: the range was checked to lie inside this slice, which is
        // valid for writes.
        unsafe { std::ptr::write_bytes(self.ptr.as_ptr().add(offset), byte, len) };
        Ok(())
    }

    /// Copies `len` bytes from `src` (at `src_offset`) to this slice (at
    /// `offset`). The ranges may overlap.
    pub fn copy_from(
        &self,
        offset: usize,
        src: &GuestSlice<'_>,
        src_offset: usize,
        len: usize,
    ) -> Result<(), Error> {
        self.check(offset, len)?;
        src.check(src_offset, len)?;
        // SAFETY: both ranges were checked to lie inside their slices, which
        // are valid for reads and writes; `copy` allows overlap.
        unsafe {
            std::ptr::copy(
                src.ptr.as_ptr().add(src_offset),
                self.ptr.as_ptr().add(offset),
                len,
            );
        }
        Ok(())
    }

    /// The lifetime-free area used inside ring structures.
    #[allow(dead_code)]
    pub(crate) fn raw(&self) -> RawArea {
        RawArea {
            ptr: self.ptr,
            len: self.len,
        }
    }
}

/// A translated area (a ring structure, a log, an inflight region) with its
/// lifetime erased.
///
/// Crate invariant: a `RawArea` is only stored next to the object that keeps
/// its memory alive (the queue's memory `M`, or a [`SharedRegion`]'s owner),
/// and is dropped or replaced no later than that object. Every access is
/// bounds-checked; atomic accesses also check alignment.
#[derive(Clone, Copy)]
pub(crate) struct RawArea {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the memory behind a RawArea is valid from any thread (GuestMemory
// and SharedRegion contracts); the area owns nothing.
unsafe impl Send for RawArea {}
// SAFETY: as above; shared use only performs atomic and volatile accesses.
unsafe impl Sync for RawArea {}

impl fmt::Debug for RawArea {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawArea")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .finish()
    }
}

macro_rules! atomic_access {
    ($load:ident, $store:ident, $t:ty, $atomic:ty) => {
        /// Atomically loads a little-endian value at `offset`, or `None` if the
        /// access is out of bounds or misaligned.
        #[inline]
        pub(crate) fn $load(&self, offset: usize, order: Ordering) -> Option<$t> {
            let p = self.ptr_for(offset, size_of::<$t>())?;
            // SAFETY: `ptr_for` checked bounds and alignment; the memory is
            // valid for the area's lifetime (crate invariant) and is only
            // accessed atomically at this offset by this crate.
            let v = unsafe { <$atomic>::from_ptr(p.cast::<$t>()) }.load(order);
            Some(<$t>::from_le(v))
        }

        /// Atomically stores a value in little-endian order at `offset`;
        /// `None` if the access is out of bounds or misaligned.
        #[inline]
        pub(crate) fn $store(&self, offset: usize, value: $t, order: Ordering) -> Option<()> {
            let p = self.ptr_for(offset, size_of::<$t>())?;
            // SAFETY: as for the load.
            unsafe { <$atomic>::from_ptr(p.cast::<$t>()) }.store(value.to_le(), order);
            Some(())
        }
    };
}

// Accessors for the ring modules; the allow goes once split/packed use them all.
#[allow(dead_code)]
impl RawArea {
    /// The length of the area in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Host address of the first byte.
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Whether the host address of the area is a multiple of `align`.
    pub(crate) fn is_aligned(&self, align: usize) -> bool {
        (self.ptr.as_ptr() as usize).is_multiple_of(align)
    }

    #[inline]
    fn ptr_for(&self, offset: usize, size: usize) -> Option<*mut u8> {
        let end = offset.checked_add(size)?;
        if end > self.len {
            return None;
        }
        // SAFETY: offset + size <= len, so the pointer stays inside the area.
        let p = unsafe { self.ptr.as_ptr().add(offset) };
        if !(p as usize).is_multiple_of(size) {
            return None;
        }
        Some(p)
    }

    atomic_access!(load_u16, store_u16, u16, AtomicU16);
    atomic_access!(load_u32, store_u32, u32, AtomicU32);
    atomic_access!(load_u8, store_u8, u8, AtomicU8);
    atomic_access!(load_u64, store_u64, u64, AtomicU64);

    /// Atomically ORs `bits` into the byte at `offset` (dirty log bitmaps).
    pub(crate) fn fetch_or_u8(&self, offset: usize, bits: u8, order: Ordering) -> Option<()> {
        let p = self.ptr_for(offset, 1)?;
        // SAFETY: bounds checked; a byte is always aligned; the memory is valid
        // for the area's lifetime (crate invariant).
        unsafe { AtomicU8::from_ptr(p) }.fetch_or(bits, order);
        Some(())
    }

    /// Reads `N` bytes at `offset` with a volatile copy (no alignment needed),
    /// or `None` if out of bounds.
    #[inline]
    pub(crate) fn read_bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let end = offset.checked_add(N)?;
        if end > self.len {
            return None;
        }
        // SAFETY: offset + N <= len; `[u8; N]` has alignment 1, so an unaligned
        // read is fine; the memory is valid for reads (crate invariant).
        Some(unsafe { std::ptr::read_volatile(self.ptr.as_ptr().add(offset).cast::<[u8; N]>()) })
    }

    /// Writes `N` bytes at `offset` with a volatile copy, or `None` if out of
    /// bounds.
    #[inline]
    pub(crate) fn write_bytes<const N: usize>(&self, offset: usize, bytes: [u8; N]) -> Option<()> {
        let end = offset.checked_add(N)?;
        if end > self.len {
            return None;
        }
        // SAFETY: offset + N <= len; alignment 1; the memory is valid for
        // writes (crate invariant).
        unsafe { std::ptr::write_volatile(self.ptr.as_ptr().add(offset).cast::<[u8; N]>(), bytes) };
        Some(())
    }

    /// A [`GuestSlice`] view of this area, borrowed from its keeper.
    pub(crate) fn slice<'a, K: ?Sized>(&self, _keeper: &'a K, addr: u64) -> GuestSlice<'a> {
        GuestSlice {
            ptr: self.ptr,
            len: self.len,
            addr,
            _memory: PhantomData,
        }
    }
}

/// An array of `count` fixed-size blocks of `LEN` bytes (packed ring
/// descriptor slots: `LEN` = 16; an event-suppression area: `LEN` = 4, one
/// block), checked once when it is made: the blocks lie inside the area and
/// the first is aligned to the largest access a [`Block`] allows. Same crate
/// invariant as [`RawArea`] (held only next to the memory's keeper).
///
/// Indexing checks `i < count` (one compare); the accesses of a [`Block`]
/// then need no check at all, their offsets being validated at compile time.
#[derive(Clone, Copy)]
pub(crate) struct BlockArray<const LEN: usize> {
    ptr: NonNull<u8>,
    count: usize,
}

// SAFETY: as for RawArea: a pointer into memory valid from any thread.
unsafe impl<const LEN: usize> Send for BlockArray<LEN> {}
// SAFETY: as above; shared use only performs atomic accesses.
unsafe impl<const LEN: usize> Sync for BlockArray<LEN> {}

impl<const LEN: usize> fmt::Debug for BlockArray<LEN> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockArray")
            .field("ptr", &self.ptr)
            .field("block", &LEN)
            .field("count", &self.count)
            .finish()
    }
}

impl<const LEN: usize> BlockArray<LEN> {
    /// The alignment of the first block (and so of every block): the
    /// largest access a block allows.
    const ALIGN: usize = {
        assert!(LEN.is_power_of_two() && LEN >= 2);
        if LEN < 8 { LEN } else { 8 }
    };

    /// The first `count` blocks of `area`, or `None` if they do not fit in
    /// it, `count` is 0, or the area's host address is not aligned to
    /// `min(LEN, 8)`.
    pub(crate) fn new(area: &RawArea, count: usize) -> Option<Self> {
        let bytes = count.checked_mul(LEN)?;
        if count == 0 || bytes > area.len || !area.is_aligned(Self::ALIGN) {
            return None;
        }
        Some(BlockArray {
            ptr: area.ptr,
            count,
        })
    }

    /// Block `i`, or `None` if `i >= count`.
    #[inline]
    pub(crate) fn get(&self, i: u16) -> Option<Block<'_, LEN>> {
        let i = usize::from(i);
        if i >= self.count {
            return None;
        }
        // SAFETY: i < count and count * LEN <= the area's length (checked in
        // `new`), so the block lies inside the area.
        let ptr = unsafe { NonNull::new_unchecked(self.ptr.as_ptr().add(i * LEN)) };
        Some(Block {
            ptr,
            _array: PhantomData,
        })
    }

    /// The first block (there is at least one, checked in `new`).
    #[inline]
    pub(crate) fn first(&self) -> Block<'_, LEN> {
        Block {
            ptr: self.ptr,
            _array: PhantomData,
        }
    }
}

/// One block of a [`BlockArray`]: in bounds and aligned by construction.
/// Accesses name their offset as a constant, checked at compile time to lie
/// inside the block at a multiple of the access size.
#[derive(Clone, Copy)]
pub(crate) struct Block<'a, const LEN: usize> {
    ptr: NonNull<u8>,
    _array: PhantomData<&'a BlockArray<LEN>>,
}

macro_rules! block_access {
    ($load:ident, $store:ident, $t:ty, $atomic:ty) => {
        /// Atomically loads the little-endian value at offset `OFF`.
        #[inline]
        pub(crate) fn $load<const OFF: usize>(&self, order: Ordering) -> $t {
            const {
                assert!(OFF + size_of::<$t>() <= LEN && OFF % size_of::<$t>() == 0);
                assert!(size_of::<$t>() <= BlockArray::<LEN>::ALIGN);
            }
            // SAFETY: the block lies inside its area and is aligned to
            // `BlockArray::ALIGN` (checked in `BlockArray::new`); the const
            // assertions keep the access inside the block and aligned. The
            // memory is valid for the area's lifetime (crate invariant) and is
            // only accessed atomically at this offset by this crate.
            let atomic = unsafe { <$atomic>::from_ptr(self.ptr.as_ptr().add(OFF).cast::<$t>()) };
            <$t>::from_le(atomic.load(order))
        }

        /// Atomically stores `value` in little-endian order at offset `OFF`.
        #[inline]
        pub(crate) fn $store<const OFF: usize>(&self, value: $t, order: Ordering) {
            const {
                assert!(OFF + size_of::<$t>() <= LEN && OFF % size_of::<$t>() == 0);
                assert!(size_of::<$t>() <= BlockArray::<LEN>::ALIGN);
            }
            // SAFETY: as for the load.
            let atomic = unsafe { <$atomic>::from_ptr(self.ptr.as_ptr().add(OFF).cast::<$t>()) };
            atomic.store(value.to_le(), order);
        }
    };
}

#[allow(dead_code)]
impl<const LEN: usize> Block<'_, LEN> {
    block_access!(load_u16, store_u16, u16, AtomicU16);
    block_access!(load_u32, store_u32, u32, AtomicU32);
    block_access!(load_u64, store_u64, u64, AtomicU64);
}

/// A host mapping that is not guest memory: the inflight tracking buffer, the
/// dirty-log bitmap.
///
/// The mapping is kept alive by an owner object (an mmap guard of the IO
/// crates, or a heap buffer) that the region holds until it is dropped.
#[derive(Clone)]
pub struct SharedRegion {
    area: RawArea,
    _owner: Arc<dyn Any + Send + Sync>,
}

impl fmt::Debug for SharedRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedRegion")
            .field("len", &self.area.len)
            .finish()
    }
}

impl SharedRegion {
    /// A zero-filled region on the heap (tests, or an inflight buffer that is
    /// never shared).
    pub fn zeroed(len: usize) -> Self {
        let words = len.div_ceil(8).max(1);
        let buf: Arc<HeapBuffer> = Arc::new(HeapBuffer::zeroed(words));
        let area = RawArea { ptr: buf.ptr, len };
        SharedRegion { area, _owner: buf }
    }

    /// Wraps a host mapping of `len` bytes at `ptr`, kept alive by `owner`.
    ///
    /// # Safety
    ///
    /// `[ptr, ptr + len)` must be valid for reads and writes from any thread for
    /// as long as `owner` is alive, and `ptr` must be 8-byte aligned (mmap
    /// results are page aligned).
    pub unsafe fn from_raw_parts(
        ptr: NonNull<u8>,
        len: usize,
        owner: Arc<dyn Any + Send + Sync>,
    ) -> Self {
        SharedRegion {
            area: RawArea { ptr, len },
            _owner: owner,
        }
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.area.len
    }

    /// Whether the region has no bytes.
    pub fn is_empty(&self) -> bool {
        self.area.len == 0
    }

    /// A checked view of the whole region (its "guest address" is 0).
    pub fn as_slice(&self) -> GuestSlice<'_> {
        self.area.slice(self, 0)
    }

    pub(crate) fn area(&self) -> &RawArea {
        &self.area
    }

    /// The part `[offset, offset + len)` of this region, sharing its owner
    /// (e.g. one queue's part of the inflight buffer). `offset` must be a
    /// multiple of 8 so that the part keeps the region's alignment.
    pub fn subregion(&self, offset: usize, len: usize) -> Result<SharedRegion, Error> {
        let bad = Error::OutOfBounds {
            addr: 0,
            len: self.area.len as u64,
            offset: offset as u64,
            access: len as u64,
        };
        match offset.checked_add(len) {
            Some(end) if end <= self.area.len && offset.is_multiple_of(8) => {}
            _ => return Err(bad),
        }
        // SAFETY: offset + len <= the area's length (checked above), so the
        // pointer stays inside (or one past the end of) the mapping.
        let ptr = unsafe { NonNull::new_unchecked(self.area.ptr.as_ptr().add(offset)) };
        Ok(SharedRegion {
            area: RawArea { ptr, len },
            _owner: Arc::clone(&self._owner),
        })
    }
}

/// A zeroed heap allocation of 8-byte words that is only accessed through raw
/// pointers (so the guest-facing code never holds `&mut` to it).
struct HeapBuffer {
    ptr: NonNull<u8>,
    words: usize,
}

// SAFETY: the buffer is a plain heap allocation accessed only through raw
// pointers with atomic or copy semantics; it may move between threads.
unsafe impl Send for HeapBuffer {}
// SAFETY: as above.
unsafe impl Sync for HeapBuffer {}

impl HeapBuffer {
    fn zeroed(words: usize) -> Self {
        let boxed: Box<[u64]> = vec![0u64; words.max(1)].into_boxed_slice();
        let words = boxed.len();
        let raw = Box::into_raw(boxed);
        // SAFETY: Box::into_raw never returns null.
        let ptr = unsafe { NonNull::new_unchecked(raw.cast::<u8>()) };
        HeapBuffer { ptr, words }
    }

    fn len(&self) -> usize {
        self.words * 8
    }
}

impl Drop for HeapBuffer {
    fn drop(&mut self) {
        let slice = std::ptr::slice_from_raw_parts_mut(self.ptr.as_ptr().cast::<u64>(), self.words);
        // SAFETY: the pointer and length come from Box::into_raw of a
        // `Box<[u64]>` of exactly `words` elements, dropped once here.
        drop(unsafe { Box::from_raw(slice) });
    }
}

/// Guest memory made of heap buffers, for tests, benches and fuzzing.
///
/// Each region is 8-byte aligned on the host, zero-filled, and placed at the
/// guest address given; addresses between regions are unmapped.
///
/// ```
/// use vring::memory::{BufferMemory, GuestSlice};
/// let mem = BufferMemory::new(0x1000, 0x1000);
/// mem.write(0x1800, b"hello").unwrap();
/// let mut buf = [0u8; 5];
/// GuestSlice::new(&mem, 0x1800, 5).unwrap().read_at(0, &mut buf).unwrap();
/// assert_eq!(&buf, b"hello");
/// ```
pub struct BufferMemory {
    regions: Vec<(u64, HeapBuffer, usize)>,
}

impl fmt::Debug for BufferMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut l = f.debug_list();
        for (base, _, len) in &self.regions {
            l.entry(&format_args!("{base:#x}+{len:#x}"));
        }
        l.finish()
    }
}

impl BufferMemory {
    /// One region of `len` bytes at guest address `base`.
    pub fn new(base: u64, len: usize) -> Self {
        Self::with_regions(&[(base, len)])
    }

    /// Several regions `(guest base, length)`; overlapping regions are not
    /// checked for (the first one that contains an address wins).
    pub fn with_regions(regions: &[(u64, usize)]) -> Self {
        BufferMemory {
            regions: regions
                .iter()
                .map(|&(base, len)| (base, HeapBuffer::zeroed(len.div_ceil(8)), len))
                .collect(),
        }
    }

    /// Copies `data` into guest memory at `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<(), Error> {
        GuestSlice::new(self, addr, data.len())?.write_at(0, data)
    }

    /// Copies guest memory at `addr` into `buf`.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Error> {
        GuestSlice::new(self, addr, buf.len())?.read_at(0, buf)
    }
}

// SAFETY: each region is a heap allocation owned by `self` that never moves or
// shrinks while `self` is alive; the returned range is checked to lie inside
// one region (and inside the allocation, whose length is at least `len`).
unsafe impl GuestMemory for BufferMemory {
    fn translate(&self, addr: u64, len: usize) -> Option<(NonNull<u8>, usize)> {
        if len == 0 {
            return None;
        }
        for (base, buf, rlen) in &self.regions {
            let Some(offset) = addr.checked_sub(*base) else {
                continue;
            };
            let Ok(offset) = usize::try_from(offset) else {
                continue;
            };
            let region_len = (*rlen).min(buf.len());
            if offset >= region_len {
                continue;
            }
            let n = (region_len - offset).min(len);
            // SAFETY: offset < region_len <= allocation length.
            let ptr = unsafe { NonNull::new_unchecked(buf.ptr.as_ptr().add(offset)) };
            return Some((ptr, n));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_memory_translates_inside_regions_only() {
        let mem = BufferMemory::with_regions(&[(0x1000, 0x100), (0x4000, 0x100)]);
        let n = |addr, len| mem.translate(addr, len).map(|(_, n)| n);
        assert_eq!(n(0x1000, 0x100), Some(0x100));
        assert_eq!(n(0x10ff, 1), Some(1));
        assert_eq!(n(0x10ff, 2), Some(1));
        assert_eq!(n(0x0fff, 1), None);
        assert_eq!(n(0x2000, 1), None);
        assert_eq!(n(0x4080, 0x80), Some(0x80));
        assert_eq!(n(u64::MAX, 1), None);
        assert_eq!(n(0x1000, 0), None);
        assert!(GuestSlice::new(&mem, 0x10ff, 2).is_err());
        assert_eq!(GuestSlice::new_prefix(&mem, 0x10ff, 2).unwrap().len(), 1);
    }

    #[test]
    fn guest_slice_checks_bounds() {
        let mem = BufferMemory::new(0, 64);
        let s = GuestSlice::new(&mem, 16, 16).unwrap();
        assert!(s.write_at(0, &[1; 16]).is_ok());
        assert!(matches!(
            s.write_at(1, &[1; 16]),
            Err(Error::OutOfBounds { .. })
        ));
        assert!(matches!(
            s.subslice(usize::MAX, 2),
            Err(Error::OutOfBounds { .. })
        ));
        assert!(matches!(
            GuestSlice::new(&mem, u64::MAX, 2),
            Err(Error::AddressOverflow { .. })
        ));
        assert!(matches!(
            GuestSlice::new(&mem, 60, 8),
            Err(Error::Untranslatable { .. })
        ));
        let mut b = [0u8; 4];
        s.subslice(12, 4).unwrap().read_at(0, &mut b).unwrap();
        assert_eq!(b, [1; 4]);
    }

    #[test]
    fn raw_area_atomics_check_alignment_and_bounds() {
        let r = SharedRegion::zeroed(16);
        let a = r.area();
        assert_eq!(a.store_u16(2, 0xbeef, Ordering::Release), Some(()));
        assert_eq!(a.load_u16(2, Ordering::Acquire), Some(0xbeef));
        assert_eq!(a.load_u16(1, Ordering::Acquire), None);
        assert_eq!(a.load_u16(16, Ordering::Acquire), None);
        assert_eq!(a.load_u32(12, Ordering::Acquire), Some(0));
        assert_eq!(a.load_u32(14, Ordering::Acquire), None);
        assert_eq!(a.read_bytes::<4>(1), Some([0, 0xef, 0xbe, 0]));
        assert_eq!(a.read_bytes::<4>(13), None);
        assert_eq!(a.fetch_or_u8(15, 0x80, Ordering::Relaxed), Some(()));
        assert_eq!(a.read_bytes::<1>(15), Some([0x80]));
    }

    #[test]
    fn block_arrays_check_bounds_and_alignment_once() {
        let r = SharedRegion::zeroed(64);
        let a = r.area();
        assert!(BlockArray::<16>::new(a, 5).is_none());
        assert!(BlockArray::<16>::new(a, 0).is_none());
        let arr = BlockArray::<16>::new(a, 4).unwrap();
        assert!(arr.get(4).is_none());
        let b = arr.get(3).unwrap();
        b.store_u16::<14>(0xbeef, Ordering::Release);
        b.store_u32::<8>(7, Ordering::Relaxed);
        assert_eq!(a.load_u16(62, Ordering::Acquire), Some(0xbeef));
        assert_eq!(b.load_u64::<8>(Ordering::Relaxed), 0xbeef_0000_0000_0007);
        // Host alignment: 8 for 16-byte blocks, 4 for 4-byte blocks.
        let at = |off: usize| RawArea {
            ptr: NonNull::new(a.as_ptr().wrapping_add(off)).unwrap(),
            len: 32,
        };
        assert!(BlockArray::<16>::new(&at(4), 1).is_none());
        assert!(BlockArray::<4>::new(&at(4), 8).is_some());
        assert!(BlockArray::<4>::new(&at(2), 1).is_none());
        let ev = BlockArray::<4>::new(a, 1).unwrap();
        let e = ev.first();
        e.store_u16::<2>(3, Ordering::Relaxed);
        assert_eq!(a.load_u16(2, Ordering::Relaxed), Some(3));
    }

    #[test]
    fn vm_memory_adapter_checks_region_bounds() {
        use vm_memory::{GuestAddress, GuestMemoryMmap};
        let mem: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0x1000), 0x2000)]).unwrap();
        assert_eq!(mem.translate(0x1000, 0x2000).map(|t| t.1), Some(0x2000));
        assert_eq!(mem.translate(0x2fff, 2).map(|t| t.1), Some(1));
        assert!(mem.translate(0x0, 1).is_none());
        assert!(GuestSlice::new(&mem, 0x2fff, 2).is_err());
        let s = GuestSlice::new(&mem, 0x1800, 8).unwrap();
        s.write_at(0, &7u64.to_le_bytes()).unwrap();
        let mut b = [0u8; 8];
        s.read_at(0, &mut b).unwrap();
        assert_eq!(u64::from_le_bytes(b), 7);
    }
}
