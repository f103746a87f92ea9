//! Mapping memory that a peer shares through an fd.
//!
//! - Guest memory regions (SET_MEM_TABLE, ADD_MEM_REG; spec §3.6, §7.10) are
//!   mapped through vm-memory's mmap backend: a [`MappedRegion`] per region,
//!   gathered in a [`MemoryMap`] whose [`memory`](MemoryMap::memory) is a
//!   `GuestMemoryMmap` the ring engine uses as its
//!   [`vring::memory::GuestMemory`].
//! - Other shared ranges (the inflight buffer of spec §7.12, the dirty log of
//!   §3.9/§7.7) are a [`SharedMapping`], which becomes a
//!   [`vring::memory::SharedRegion`].
//!
//! Every range is checked before it is mapped: size 0, overflow, and, for
//! regular files (memfds, hugetlbfs, tmpfs), a range that extends past the end
//! of the file, which would raise SIGBUS when touched.
//!
//! A peer that shrinks the file *after* the mapping is made would still cause
//! SIGBUS. Two defences:
//!
//! - the memfd seals are read when mapping: a file with `F_SEAL_SHRINK`
//!   cannot shrink ([`MappedRegion::shrink_sealed`],
//!   [`SharedMapping::shrink_sealed`]; sealed memfds of our own come from
//!   [`crate::os::memfd::create_sealed`]);
//! - every mapping that is not shrink-sealed is registered with the SIGBUS
//!   guard ([`crate::os::sigbus`]): a fault in it is contained (the access
//!   completes on a zero page) and recorded, and [`MappedRegion::faulted`],
//!   [`MemoryMap::faulted`] and [`SharedMapping::faulted`] report it. The
//!   runner checks after each processing pass and ends that session with an
//!   error: the memory is no longer the peer's from the faulting page on
//!   (see the guarantees and limits in [`crate::os::sigbus`]).

use std::ffi::c_void;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;

use rustix::fs::{FileType, SealFlags};
use rustix::io::Errno;
use rustix::mm::{MapFlags, ProtFlags};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};
use vring::memory::SharedRegion;

use crate::OsError;
use crate::os::sigbus::{self, FaultProbe, SigbusGuard};

/// The system page size (the alignment `mmap` needs for file offsets).
pub fn page_size() -> u64 {
    rustix::param::page_size() as u64
}

/// What mapping code needs to know of the file behind a mapping.
#[derive(Clone, Copy, Debug)]
struct FileFacts {
    /// `F_SEAL_SHRINK` is set: the file can never become smaller.
    shrink_sealed: bool,
    /// `st_blksize`: the huge page size on hugetlbfs (the SIGBUS guard's
    /// retry granule).
    block_size: usize,
}

/// Checks that `[offset, offset + size)` is a non-empty range of `fd` that
/// lies inside the file when the file is a regular one, and reads its seals.
fn check_file_range(
    fd: impl AsFd,
    what: &'static str,
    offset: u64,
    size: u64,
) -> Result<FileFacts, OsError> {
    if size == 0 {
        return Err(OsError::ZeroSize { what });
    }
    let end = offset
        .checked_add(size)
        .ok_or(OsError::SizeOverflow { what, offset, size })?;
    if usize::try_from(size).is_err() {
        return Err(OsError::SizeOverflow { what, offset, size });
    }
    let fd = fd.as_fd();
    let st = rustix::fs::fstat(fd).map_err(|e| OsError::io("fstat", e))?;
    // Character devices and the like have no meaningful size.
    if FileType::from_raw_mode(st.st_mode).is_file() {
        let file_size = u64::try_from(st.st_size).unwrap_or(0);
        if end > file_size {
            return Err(OsError::PastEndOfFile {
                what,
                offset,
                size,
                file_size,
            });
        }
    }
    // Files that do not support sealing (anything but memfds) answer EINVAL.
    let seals = match rustix::fs::fcntl_get_seals(fd) {
        Ok(seals) => seals,
        Err(Errno::INVAL) => SealFlags::empty(),
        Err(e) => return Err(OsError::io("fcntl(F_GET_SEALS)", e)),
    };
    Ok(FileFacts {
        shrink_sealed: seals.contains(SealFlags::SHRINK),
        block_size: usize::try_from(st.st_blksize).unwrap_or(0),
    })
}

/// Registers `[ptr, ptr + len)` with the SIGBUS guard unless the file is
/// shrink-sealed.
///
/// # Safety
///
/// As [`sigbus::guard_range`]: a mapping of the caller's, mapped until the
/// guard is dropped, reached through raw pointers only.
unsafe fn guard_unless_sealed(
    ptr: *mut u8,
    len: usize,
    facts: FileFacts,
) -> Result<Option<SigbusGuard>, OsError> {
    if facts.shrink_sealed {
        return Ok(None);
    }
    // SAFETY: the caller's contract is `guard_range`'s.
    unsafe { sigbus::guard_range(ptr, len, facts.block_size) }
        .map(Some)
        .map_err(|e| OsError::io("registering the mapping with the SIGBUS guard", io_other(e)))
}

fn io_other(e: sigbus::GuardError) -> std::io::Error {
    match e {
        sigbus::GuardError::Install(e) => e,
        e => std::io::Error::other(e),
    }
}

/// Where a guest memory region lives, as the memory region payload describes
/// it (spec §3.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RegionLayout {
    /// The region's guest-physical address.
    pub guest_phys_addr: u64,
    /// The region's size in bytes.
    pub memory_size: u64,
    /// The front-end's virtual address of the region's start ("user
    /// address"), through which vring addresses are translated.
    pub user_addr: u64,
    /// The offset in the fd at which the region starts.
    pub mmap_offset: u64,
}

impl RegionLayout {
    fn check_overflow(&self) -> Result<(), OsError> {
        let size = self.memory_size;
        for (what, offset) in [
            ("guest region", self.guest_phys_addr),
            ("user address range", self.user_addr),
        ] {
            if offset.checked_add(size).is_none() {
                return Err(OsError::SizeOverflow { what, offset, size });
            }
        }
        Ok(())
    }
}

fn overflow_err(layout: &RegionLayout) -> OsError {
    OsError::SizeOverflow {
        what: "guest region",
        offset: layout.guest_phys_addr,
        size: layout.memory_size,
    }
}

/// One guest memory region mapped into this process (shared, read/write)
/// through vm-memory's mmap backend.
///
/// The mapping lives as long as the region or any [`MemoryMap`] (or
/// `GuestMemoryMmap`) that holds it. It is guarded against SIGBUS (unless
/// its file is shrink-sealed) as long as a `MappedRegion` (or a
/// [`MemoryMap`] holding it) lives: a bare `Arc<GuestMemoryMmap>` or
/// `Arc<GuestRegionMmap>` keeps the mapping but not the guard, so keep the
/// [`MemoryMap`] next to the memory you use.
#[derive(Debug, Clone)]
pub struct MappedRegion {
    layout: RegionLayout,
    shared: Arc<RegionShared>,
}

/// What the clones of a [`MappedRegion`] share.
#[derive(Debug)]
struct RegionShared {
    /// Declared before `region`: dropped (unregistered) first, while the
    /// mapping that `region` holds is still in place.
    guard: Option<SigbusGuard>,
    shrink_sealed: bool,
    region: Arc<GuestRegionMmap>,
}

impl MappedRegion {
    /// Maps `memory_size` bytes of `fd` from `mmap_offset`, placed at
    /// `guest_phys_addr`. Takes ownership of the fd (the mapping keeps the
    /// file open).
    ///
    /// `mmap_offset` must be a multiple of the page size: mapping from the
    /// page below it would expose file bytes that are not part of the region
    /// to guest-address translation, so an unaligned offset is refused
    /// ([`OsError::UnalignedOffset`]); QEMU always sends aligned offsets.
    /// Size 0, overflowing ranges and ranges past the end of the file are
    /// refused too.
    ///
    /// The file's seals are read: unless it has `F_SEAL_SHRINK`
    /// ([`shrink_sealed`](Self::shrink_sealed)), the mapping is registered
    /// with the SIGBUS guard ([`crate::os::sigbus`]; an
    /// [`OsError::Io`] if all its slots are taken), and a peer shrinking
    /// the file shows as [`faulted`](Self::faulted) instead of killing the
    /// process.
    pub fn map(layout: RegionLayout, fd: OwnedFd) -> Result<Self, OsError> {
        const WHAT: &str = "guest region";
        layout.check_overflow()?;
        let facts = check_file_range(&fd, WHAT, layout.mmap_offset, layout.memory_size)?;
        let page = page_size();
        if !layout.mmap_offset.is_multiple_of(page) {
            return Err(OsError::UnalignedOffset {
                what: WHAT,
                offset: layout.mmap_offset,
                align: page,
            });
        }
        // Fits: `check_file_range` checked the size against usize.
        let size = usize::try_from(layout.memory_size).map_err(|_| overflow_err(&layout))?;
        let file_offset = FileOffset::new(File::from(fd), layout.mmap_offset);
        let mapping = MmapRegion::from_file(file_offset, size).map_err(|source| {
            OsError::RegionMapFailed {
                guest_phys_addr: layout.guest_phys_addr,
                memory_size: layout.memory_size,
                mmap_offset: layout.mmap_offset,
                source,
            }
        })?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(layout.guest_phys_addr))
            .ok_or_else(|| overflow_err(&layout))?;
        let region = Arc::new(region);
        // SAFETY: the range is the mapping vm-memory just made and owns;
        // `RegionShared` holds `region` (so the mapping) until after the
        // guard is dropped; vm-memory and the ring engine access guest
        // memory through raw pointers and volatile copies only.
        let guard = unsafe { guard_unless_sealed(region.as_ptr(), size, facts) }?;
        Ok(MappedRegion {
            layout,
            shared: Arc::new(RegionShared {
                guard,
                shrink_sealed: facts.shrink_sealed,
                region,
            }),
        })
    }

    /// Whether the file has `F_SEAL_SHRINK` (read when mapping): it can never
    /// become smaller, so the mapping cannot raise SIGBUS by truncation and
    /// is not registered with the SIGBUS guard.
    pub fn shrink_sealed(&self) -> bool {
        self.shared.shrink_sealed
    }

    /// Whether the mapping is registered with the SIGBUS guard (every
    /// mapping that is not [`shrink_sealed`](Self::shrink_sealed)).
    pub fn guarded(&self) -> bool {
        self.shared.guard.is_some()
    }

    /// Whether an access to the region raised SIGBUS (the peer shrank the
    /// file) and was contained: from the faulting page on, the region is
    /// zero pages of our own, no longer the guest's memory. The session
    /// must end. One atomic load.
    pub fn faulted(&self) -> bool {
        self.shared.guard.as_ref().is_some_and(SigbusGuard::faulted)
    }

    /// The layout the region was mapped with.
    pub fn layout(&self) -> &RegionLayout {
        &self.layout
    }

    /// The host (this process's) address of the region's first byte, e.g.
    /// for the postcopy memory-table reply (spec §7.7).
    pub fn host_addr(&self) -> u64 {
        self.shared.region.as_ptr() as u64
    }

    /// The vm-memory region.
    pub fn guest_region(&self) -> &Arc<GuestRegionMmap> {
        &self.shared.region
    }

    /// Translates a front-end user address inside this region to its
    /// guest-physical address.
    pub fn user_to_guest(&self, user_addr: u64) -> Option<u64> {
        let offset = user_addr.checked_sub(self.layout.user_addr)?;
        (offset < self.layout.memory_size).then(|| self.layout.guest_phys_addr + offset)
    }
}

/// The guest memory of one session: its mapped regions, sorted by
/// guest-physical address and non-overlapping (in guest-physical and in
/// user address space), and the `GuestMemoryMmap` made of them.
///
/// Updates (ADD_MEM_REG, REM_MEM_REG) build a new map that shares the
/// unchanged mappings; rings still using the old `Arc<GuestMemoryMmap>` keep
/// it alive until they switch.
#[derive(Debug, Clone, Default)]
pub struct MemoryMap {
    regions: Vec<MappedRegion>,
    memory: Arc<GuestMemoryMmap>,
}

impl MemoryMap {
    /// A map of the given regions (in any order); overlapping regions are
    /// refused ([`OsError::RegionOverlap`]). No region at all is a valid,
    /// empty map.
    pub fn new(mut regions: Vec<MappedRegion>) -> Result<Self, OsError> {
        regions.sort_by_key(|r| r.layout.guest_phys_addr);
        check_disjoint(&regions, "guest-physical", |l| l.guest_phys_addr)?;
        let mut by_user: Vec<&RegionLayout> = regions.iter().map(|r| &r.layout).collect();
        by_user.sort_by_key(|l| l.user_addr);
        check_disjoint_layouts(&by_user, "user address", |l| l.user_addr)?;
        let memory = if regions.is_empty() {
            GuestMemoryMmap::new()
        } else {
            GuestMemoryMmap::from_arc_regions(
                regions
                    .iter()
                    .map(|r| Arc::clone(&r.shared.region))
                    .collect(),
            )
            .map_err(|e| {
                OsError::io(
                    "GuestMemoryMmap::from_arc_regions",
                    std::io::Error::other(e),
                )
            })?
        };
        Ok(MemoryMap {
            regions,
            memory: Arc::new(memory),
        })
    }

    /// This map plus `region` (ADD_MEM_REG).
    pub fn with_region(&self, region: MappedRegion) -> Result<Self, OsError> {
        let mut regions = self.regions.clone();
        regions.push(region);
        MemoryMap::new(regions)
    }

    /// This map without the region at `guest_phys_addr` of `memory_size`
    /// bytes (REM_MEM_REG), and the removed region.
    pub fn without_region(
        &self,
        guest_phys_addr: u64,
        memory_size: u64,
    ) -> Result<(Self, MappedRegion), OsError> {
        let mut regions = self.regions.clone();
        let i = regions
            .iter()
            .position(|r| {
                r.layout.guest_phys_addr == guest_phys_addr && r.layout.memory_size == memory_size
            })
            .ok_or(OsError::NoSuchRegion {
                guest_phys_addr,
                memory_size,
            })?;
        let removed = regions.remove(i);
        Ok((MemoryMap::new(regions)?, removed))
    }

    /// The guest memory for the ring engine (implements
    /// [`vring::memory::GuestMemory`]) and for vm-memory users.
    pub fn memory(&self) -> &Arc<GuestMemoryMmap> {
        &self.memory
    }

    /// The regions, sorted by guest-physical address.
    pub fn regions(&self) -> &[MappedRegion] {
        &self.regions
    }

    /// Whether an access to any region raised SIGBUS and was contained
    /// ([`MappedRegion::faulted`]): the session must end. One atomic load
    /// per region; [`sigbus::total_faults`] is a single load for all the
    /// process, to call first when there are many maps.
    pub fn faulted(&self) -> bool {
        self.regions.iter().any(MappedRegion::faulted)
    }

    /// Whether every region's file is shrink-sealed
    /// ([`MappedRegion::shrink_sealed`]; `true` for an empty map).
    pub fn shrink_sealed(&self) -> bool {
        self.regions.iter().all(MappedRegion::shrink_sealed)
    }

    /// Translates a front-end user address (vring addresses of
    /// SET_VRING_ADDR) to a guest-physical address, through the region that
    /// contains it (spec §7.10).
    pub fn user_to_guest(&self, user_addr: u64) -> Option<u64> {
        self.regions.iter().find_map(|r| r.user_to_guest(user_addr))
    }
}

fn check_disjoint(
    regions: &[MappedRegion],
    space: &'static str,
    start: impl Fn(&RegionLayout) -> u64,
) -> Result<(), OsError> {
    let layouts: Vec<&RegionLayout> = regions.iter().map(|r| &r.layout).collect();
    check_disjoint_layouts(&layouts, space, start)
}

/// `layouts` must be sorted by `start`; sizes are non-zero and
/// `start + size` does not overflow (checked when mapping).
fn check_disjoint_layouts(
    layouts: &[&RegionLayout],
    space: &'static str,
    start: impl Fn(&RegionLayout) -> u64,
) -> Result<(), OsError> {
    for pair in layouts.windows(2) {
        if let [a, b] = pair
            && start(a).saturating_add(a.memory_size) > start(b)
        {
            return Err(OsError::RegionOverlap {
                space,
                first_start: start(a),
                first_size: a.memory_size,
                second_start: start(b),
                second_size: b.memory_size,
            });
        }
    }
    Ok(())
}

/// A shared read/write mapping of a range of an fd (the inflight buffer, the
/// dirty log), unmapped when dropped.
///
/// Turn it into a [`SharedRegion`] for the ring engine with
/// [`into_shared_region`](Self::into_shared_region); the region then keeps the
/// mapping alive.
///
/// ```
/// use vhost_backend::os::{memfd, mmap::SharedMapping};
///
/// let fd = memfd::create_sealed("inflight", 8192)?;
/// rustix::io::pwrite(&fd, &[0xab], 4096 + 5)?;
/// let region = SharedMapping::new(&fd, 4096, 4096)?.into_shared_region();
/// let mut b = [0u8; 1];
/// region.as_slice().read_at(5, &mut b).unwrap();
/// assert_eq!(b, [0xab]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct SharedMapping {
    /// What `mmap` returned (page aligned) and the length mapped.
    base: NonNull<c_void>,
    map_len: usize,
    /// The requested range inside it.
    ptr: NonNull<u8>,
    len: usize,
    shrink_sealed: bool,
    /// Dropped (unregistered) in `drop`, before the `munmap`.
    guard: Option<SigbusGuard>,
}

// SAFETY: the mapping is process memory shared with other processes; it is
// valid from any thread until dropped, and this type hands out only raw
// pointers (no references), so moving it or sharing it between threads adds no
// aliasing.
unsafe impl Send for SharedMapping {}
// SAFETY: as above; `&SharedMapping` only exposes the length and raw pointer.
unsafe impl Sync for SharedMapping {}

impl SharedMapping {
    /// Maps `len` bytes of `fd` from `offset`, shared and read/write.
    ///
    /// `offset` need not be page aligned (the mapping starts at the page
    /// below it) but must be a multiple of 8, so that the range is aligned for
    /// the ring engine's atomic accesses. Size 0, overflow and (for regular
    /// files) a range past the end of the file are refused. The fd is only
    /// borrowed: the mapping stays valid after it is closed.
    ///
    /// As for [`MappedRegion::map`], the seals are read and a mapping that is
    /// not [`shrink_sealed`](Self::shrink_sealed) is registered with the
    /// SIGBUS guard ([`faulted`](Self::faulted), [`fault_probe`](Self::fault_probe)).
    pub fn new(fd: impl AsFd, offset: u64, len: u64) -> Result<Self, OsError> {
        const WHAT: &str = "shared mapping";
        let fd = fd.as_fd();
        let facts = check_file_range(fd, WHAT, offset, len)?;
        if !offset.is_multiple_of(8) {
            return Err(OsError::UnalignedOffset {
                what: WHAT,
                offset,
                align: 8,
            });
        }
        let overflow = OsError::SizeOverflow {
            what: WHAT,
            offset,
            size: len,
        };
        let page = page_size();
        let delta = offset % page;
        let aligned = offset - delta;
        let map_len = len
            .checked_add(delta)
            .and_then(|l| usize::try_from(l).ok())
            .ok_or(overflow)?;
        // `len <= map_len` and `delta < page`, both fit usize.
        let (len, delta) = (map_len - delta as usize, delta as usize);
        // SAFETY: a null address hint without MAP_FIXED lets the kernel pick
        // fresh address space, so no existing mapping (and no Rust object) is
        // replaced; the new mapping is only reached through raw pointers.
        let base = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                map_len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                aligned,
            )
        }
        .map_err(|e| OsError::MapFailed {
            offset,
            size: len as u64,
            source: e.into(),
        })?;
        let base = NonNull::new(base).ok_or_else(|| OsError::MapFailed {
            offset,
            size: len as u64,
            source: std::io::Error::other("mmap returned address 0"),
        })?;
        // SAFETY: `delta < map_len` (as `len > 0`), so the pointer stays
        // inside the mapping just made.
        let ptr = unsafe { base.cast::<u8>().add(delta) };
        let mut mapping = SharedMapping {
            base,
            map_len,
            ptr,
            len,
            shrink_sealed: facts.shrink_sealed,
            guard: None,
        };
        // SAFETY: `[base, base + map_len)` is the mapping just made, owned by
        // `mapping`, which drops the guard before unmapping; it is only
        // reached through raw pointers. On error `mapping` unmaps it.
        mapping.guard = unsafe { guard_unless_sealed(base.as_ptr().cast(), map_len, facts) }?;
        Ok(mapping)
    }

    /// Whether the file has `F_SEAL_SHRINK` (read when mapping), so that the
    /// mapping cannot raise SIGBUS by truncation (and is not guarded).
    pub fn shrink_sealed(&self) -> bool {
        self.shrink_sealed
    }

    /// Whether an access raised SIGBUS (the peer shrank the file) and was
    /// contained: the content is no longer the file's; the session must end.
    pub fn faulted(&self) -> bool {
        self.guard.as_ref().is_some_and(SigbusGuard::faulted)
    }

    /// A copyable handle to check [`faulted`](Self::faulted) after the
    /// mapping became a [`SharedRegion`] (which hides it); `None` if it is
    /// not guarded (shrink-sealed).
    pub fn fault_probe(&self) -> Option<FaultProbe> {
        self.guard.as_ref().map(SigbusGuard::probe)
    }

    /// The length of the requested range in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the range is empty (never: size 0 is refused).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The host address of the range's first byte. Accessing it is the
    /// caller's `unsafe`, and only while `self` is alive.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// A [`SharedRegion`] over the range that keeps this mapping alive.
    pub fn into_shared_region(self) -> SharedRegion {
        let (ptr, len) = (self.ptr, self.len);
        // SAFETY: `[ptr, ptr + len)` is a live shared read/write mapping (valid
        // from any thread) until `self` is dropped, and the region holds `self`
        // as its owner; `ptr` is 8-byte aligned (page-aligned base plus an
        // offset that is a multiple of 8).
        unsafe { SharedRegion::from_raw_parts(ptr, len, Arc::new(self)) }
    }
}

impl From<SharedMapping> for SharedRegion {
    fn from(mapping: SharedMapping) -> Self {
        mapping.into_shared_region()
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        // Unregistered while still mapped: no stale registration can cover
        // address space the kernel hands out again.
        drop(self.guard.take());
        // SAFETY: `base`/`map_len` are exactly what mmap returned and are
        // unmapped only here, once; every user of the range holds this object
        // (directly or as a SharedRegion's owner), so none remains.
        if let Err(e) = unsafe { rustix::mm::munmap(self.base.as_ptr(), self.map_len) } {
            log::error!("munmap of {} bytes failed: {e}", self.map_len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::memfd;
    use vring::memory::{GuestMemory, GuestSlice};

    const PAGE: u64 = 4096;

    fn layout(gpa: u64, size: u64, uaddr: u64, off: u64) -> RegionLayout {
        RegionLayout {
            guest_phys_addr: gpa,
            memory_size: size,
            user_addr: uaddr,
            mmap_offset: off,
        }
    }

    #[test]
    fn two_regions_with_offsets_map_into_guest_memory() {
        let fd = memfd::create("guest", 4 * PAGE).unwrap();
        // Region A: file [1 page, 2 pages) at gpa 0x10000; region B: file
        // [2 pages, 4 pages) at gpa 0x40000 (both from the same file).
        rustix::io::pwrite(&fd, b"in A", PAGE + 0x10).unwrap();
        rustix::io::pwrite(&fd, b"in B", 3 * PAGE + 8).unwrap();
        let dup = || rustix::io::fcntl_dupfd_cloexec(&fd, 0).unwrap();
        let a = MappedRegion::map(layout(0x10000, PAGE, 0x7f00_0000, PAGE), dup()).unwrap();
        let b = MappedRegion::map(layout(0x40000, 2 * PAGE, 0x7f10_0000, 2 * PAGE), dup()).unwrap();
        let map = MemoryMap::new(vec![b, a]).unwrap();
        assert_eq!(map.regions()[0].layout().guest_phys_addr, 0x10000);
        let mem = map.memory();

        let mut buf = [0u8; 4];
        GuestSlice::new(mem, 0x10010, 4)
            .unwrap()
            .read_at(0, &mut buf)
            .unwrap();
        assert_eq!(&buf, b"in A");
        GuestSlice::new(mem, 0x40000 + PAGE + 8, 4)
            .unwrap()
            .read_at(0, &mut buf)
            .unwrap();
        assert_eq!(&buf, b"in B");

        // And back: a write through the mapping shows in the file.
        GuestSlice::new(mem, 0x40004, 3)
            .unwrap()
            .write_at(0, b"xyz")
            .unwrap();
        let mut back = [0u8; 3];
        rustix::io::pread(&fd, &mut back, 2 * PAGE + 4).unwrap();
        assert_eq!(&back, b"xyz");

        // Outside the regions is unmapped; a range crossing a region's end is
        // only translated up to it.
        assert!(mem.translate(0x0, 1).is_none());
        assert!(mem.translate(0x10000 + PAGE, 1).is_none());
        assert_eq!(mem.translate(0x10000 + PAGE - 1, 8).map(|t| t.1), Some(1));

        assert_eq!(map.user_to_guest(0x7f00_0010), Some(0x10010));
        assert_eq!(
            map.user_to_guest(0x7f10_0000 + 2 * PAGE - 1),
            Some(0x40000 + 2 * PAGE - 1)
        );
        assert_eq!(map.user_to_guest(0x7f10_0000 + 2 * PAGE), None);
        assert_ne!(map.regions()[0].host_addr(), 0);
    }

    #[test]
    fn add_and_remove_regions() {
        let fd = memfd::create("guest", 2 * PAGE).unwrap();
        let dup = || rustix::io::fcntl_dupfd_cloexec(&fd, 0).unwrap();
        let map = MemoryMap::default();
        assert!(map.memory().translate(0, 1).is_none());
        let map = map
            .with_region(MappedRegion::map(layout(0, PAGE, 0x1000_0000, 0), dup()).unwrap())
            .unwrap();
        let map = map
            .with_region(MappedRegion::map(layout(PAGE, PAGE, 0x2000_0000, PAGE), dup()).unwrap())
            .unwrap();
        assert_eq!(map.regions().len(), 2);
        let (smaller, removed) = map.without_region(0, PAGE).unwrap();
        assert_eq!(removed.layout().guest_phys_addr, 0);
        assert!(smaller.memory().translate(0, 1).is_none());
        assert!(smaller.memory().translate(PAGE, 1).is_some());
        // The old map still works: its mappings are shared, not moved.
        assert!(map.memory().translate(0, 1).is_some());
        assert!(matches!(
            smaller.without_region(0, PAGE),
            Err(OsError::NoSuchRegion { .. })
        ));
    }

    #[test]
    fn bad_regions_are_refused_with_clear_errors() {
        let fd = memfd::create("guest", 4 * PAGE).unwrap();
        let dup = || rustix::io::fcntl_dupfd_cloexec(&fd, 0).unwrap();
        let err = |l| MappedRegion::map(l, dup()).unwrap_err();
        assert!(matches!(err(layout(0, 0, 0, 0)), OsError::ZeroSize { .. }));
        assert!(matches!(
            err(layout(0, PAGE, 0, 1)),
            OsError::UnalignedOffset { offset: 1, .. }
        ));
        assert!(matches!(
            err(layout(0, 4 * PAGE, 0, PAGE)),
            OsError::PastEndOfFile { file_size, .. } if file_size == 4 * PAGE
        ));
        assert!(matches!(
            err(layout(u64::MAX - 10, PAGE, 0, 0)),
            OsError::SizeOverflow { .. }
        ));
        assert!(matches!(
            err(layout(0, PAGE, u64::MAX, 0)),
            OsError::SizeOverflow { .. }
        ));
        assert!(matches!(
            err(layout(0, PAGE, 0, u64::MAX - 1)),
            OsError::SizeOverflow { .. }
        ));

        let a = MappedRegion::map(layout(0, 2 * PAGE, 0x10_0000, 0), dup()).unwrap();
        let b = MappedRegion::map(layout(PAGE, PAGE, 0x20_0000, 0), dup()).unwrap();
        assert!(matches!(
            MemoryMap::new(vec![a.clone(), b]),
            Err(OsError::RegionOverlap {
                space: "guest-physical",
                ..
            })
        ));
        let c = MappedRegion::map(layout(2 * PAGE, PAGE, 0x10_1000, 0), dup()).unwrap();
        assert!(matches!(
            MemoryMap::new(vec![a, c]),
            Err(OsError::RegionOverlap {
                space: "user address",
                ..
            })
        ));
    }

    #[test]
    fn shared_mapping_round_trips_through_a_shared_region() {
        let fd = memfd::create_sealed("inflight", 3 * PAGE).unwrap();
        // Unaligned (but 8-aligned) offset: mapped from the page below.
        let m = SharedMapping::new(&fd, PAGE + 0x18, PAGE).unwrap();
        assert_eq!(m.len(), PAGE as usize);
        assert_eq!(m.as_ptr() as usize % 8, 0);
        let region = SharedRegion::from(m);
        region.as_slice().write_at(0, b"head").unwrap();
        region
            .as_slice()
            .write_at(PAGE as usize - 4, b"tail")
            .unwrap();
        let mut b = [0u8; 4];
        rustix::io::pread(&fd, &mut b, PAGE + 0x18).unwrap();
        assert_eq!(&b, b"head");
        rustix::io::pread(&fd, &mut b, 2 * PAGE + 0x18 - 4).unwrap();
        assert_eq!(&b, b"tail");
        rustix::io::pwrite(&fd, b"file", PAGE + 0x20).unwrap();
        region.as_slice().read_at(8, &mut b).unwrap();
        assert_eq!(&b, b"file");
        assert!(
            region
                .as_slice()
                .read_at(PAGE as usize - 3, &mut b)
                .is_err()
        );
        // Clones share the mapping; it lives until the last one goes.
        let clone = region.clone();
        drop(region);
        clone.as_slice().read_at(0, &mut b).unwrap();
        assert_eq!(&b, b"head");
    }

    #[test]
    fn seals_are_read_and_only_unsealed_mappings_are_guarded() {
        let sealed = memfd::create_sealed("sealed", 2 * PAGE).unwrap();
        let open = memfd::create("open", 2 * PAGE).unwrap();
        let dup = |fd: &OwnedFd| rustix::io::fcntl_dupfd_cloexec(fd, 0).unwrap();
        let a = MappedRegion::map(layout(0, PAGE, 0x1000_0000, 0), dup(&sealed)).unwrap();
        let b = MappedRegion::map(layout(PAGE, PAGE, 0x2000_0000, 0), dup(&open)).unwrap();
        assert!(a.shrink_sealed() && !a.guarded());
        assert!(!b.shrink_sealed() && b.guarded());
        assert!(!a.faulted() && !b.faulted());
        let map = MemoryMap::new(vec![a.clone()]).unwrap();
        assert!(map.shrink_sealed() && !map.faulted());
        let map = map.with_region(b).unwrap();
        assert!(!map.shrink_sealed() && !map.faulted());

        let s = SharedMapping::new(&sealed, 0, PAGE).unwrap();
        assert!(s.shrink_sealed() && s.fault_probe().is_none() && !s.faulted());
        let o = SharedMapping::new(&open, 0, PAGE).unwrap();
        assert!(!o.shrink_sealed() && !o.faulted());
        let probe = o.fault_probe().unwrap();
        assert!(!probe.faulted());
        // A memfd sealed for growing only is not shrink-sealed.
        let grow_only = rustix::fs::memfd_create(
            "grow-only",
            rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
        )
        .unwrap();
        rustix::fs::ftruncate(&grow_only, PAGE).unwrap();
        rustix::fs::fcntl_add_seals(&grow_only, SealFlags::GROW).unwrap();
        assert!(
            !SharedMapping::new(&grow_only, 0, PAGE)
                .unwrap()
                .shrink_sealed()
        );
    }

    #[test]
    fn bad_shared_mappings_are_refused() {
        let fd = memfd::create("log", PAGE).unwrap();
        let err = |off, len| SharedMapping::new(&fd, off, len).unwrap_err();
        assert!(matches!(err(0, 0), OsError::ZeroSize { .. }));
        assert!(matches!(
            err(4, 8),
            OsError::UnalignedOffset { align: 8, .. }
        ));
        assert!(matches!(err(8, PAGE), OsError::PastEndOfFile { .. }));
        assert!(matches!(
            err(u64::MAX - 7, 16),
            OsError::SizeOverflow { .. }
        ));
        // A non-regular fd that cannot be mapped: a pipe.
        let (r, _w) = rustix::pipe::pipe().unwrap();
        assert!(matches!(
            SharedMapping::new(&r, 0, PAGE),
            Err(OsError::MapFailed { .. })
        ));
    }
}
