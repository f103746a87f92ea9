//! Guest memory a front-end shares with its back-end: several memfd regions, checked
//! reads and writes, a buffer allocator, and ring layouts in it.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, PoisonError};

use vhost_proto::wire::{MemoryRegion, VringAddr, VringAddrFlags};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::ClientError;
use vhost_backend::OsError;
use vhost_backend::os::memfd;
use vhost_backend::os::mmap::{MappedRegion, MemoryMap, RegionLayout};

#[derive(Debug)]
struct RamRegion {
    fd: OwnedFd,
    region: MappedRegion,
}

/// "Guest" memory in sealed memfds, one per region, mapped here and shareable with a
/// back-end through SET_MEM_TABLE ([`mem_table`](Self::mem_table)) or ADD_MEM_REG.
///
/// As QEMU does, a region's user address is this process's address of its mapping: ring
/// addresses sent with SET_VRING_ADDR are user addresses ([`vring_addr`](Self::vring_addr)
/// translates), descriptor addresses are guest-physical.
///
/// [`alloc`](Self::alloc) hands out guest addresses for rings and buffers (first fit over
/// every region, [`free`](Self::free) gives them back); [`reserve`](Self::reserve) takes a
/// range laid out by hand out of its reach.
///
/// ```
/// use vhost_frontend::GuestRam;
///
/// let ram = GuestRam::with_regions(&[(0, 1 << 16), (1 << 20, 1 << 16)])?;
/// assert_eq!(ram.mem_table().len(), 2);
/// let a = ram.alloc(0x1_0000, 8)?;          // fills the first region
/// let b = ram.alloc(16, 16)?;               // so this comes from the second
/// assert_eq!((a, b), (0, 1 << 20));
/// ram.write(b, b"hello")?;
/// let mut back = [0u8; 5];
/// ram.read(b, &mut back)?;
/// assert_eq!(&back, b"hello");
/// assert!(ram.read(0x2_0000, &mut back).is_err()); // between the regions
/// ram.free(a, 0x1_0000)?;
/// assert_eq!(ram.alloc(8, 8)?, 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct GuestRam {
    first: RamRegion,
    more: Vec<RamRegion>,
    map: MemoryMap,
    /// Free ranges: start → length.
    free: Mutex<BTreeMap<u64, u64>>,
}

impl GuestRam {
    /// One region of `size` bytes (a multiple of the page size) of zeroed memory at guest
    /// address `guest_phys_addr`.
    pub fn new(guest_phys_addr: u64, size: u64) -> Result<Self, OsError> {
        Self::with_regions(&[(guest_phys_addr, size)])
    }

    /// One region per `(guest_phys_addr, size)` (at least one; sizes multiples of the page
    /// size; the regions must not overlap).
    pub fn with_regions(regions: &[(u64, u64)]) -> Result<Self, OsError> {
        let mut ram = Vec::with_capacity(regions.len());
        for &(guest_phys_addr, size) in regions {
            let fd = memfd::create_sealed("vhost-guest-ram", size)
                .map_err(|e| OsError::io("memfd_create", e))?;
            let dup = rustix::io::fcntl_dupfd_cloexec(&fd, 0).map_err(|e| OsError::io("dup", e))?;
            let layout = RegionLayout {
                guest_phys_addr,
                memory_size: size,
                user_addr: guest_phys_addr,
                mmap_offset: 0,
            };
            let region = MappedRegion::map(layout, dup)?;
            ram.push(RamRegion { fd, region });
        }
        let map = MemoryMap::new(ram.iter().map(|r| r.region.clone()).collect())?;
        let free = regions.iter().copied().filter(|r| r.1 > 0).collect();
        let mut ram = ram.into_iter();
        let first = ram.next().ok_or(OsError::ZeroSize {
            what: "guest memory without regions",
        })?;
        Ok(GuestRam {
            first,
            more: ram.collect(),
            map,
            free: Mutex::new(free),
        })
    }

    fn describe(r: &RamRegion) -> MemoryRegion {
        let l = r.region.layout();
        MemoryRegion {
            guest_phys_addr: l.guest_phys_addr,
            memory_size: l.memory_size,
            user_addr: r.region.host_addr(),
            mmap_offset: 0,
            xen: None,
        }
    }

    fn all(&self) -> impl Iterator<Item = &RamRegion> {
        std::iter::once(&self.first).chain(self.more.iter())
    }

    /// The first region as SET_MEM_TABLE / ADD_MEM_REG describe it (user address = this
    /// process's mapping).
    pub fn region(&self) -> MemoryRegion {
        Self::describe(&self.first)
    }

    /// Every region as SET_MEM_TABLE describes it, in creation order.
    pub fn regions(&self) -> Vec<MemoryRegion> {
        self.all().map(Self::describe).collect()
    }

    /// The SET_MEM_TABLE argument: every region with its memfd.
    pub fn mem_table(&self) -> Vec<(MemoryRegion, BorrowedFd<'_>)> {
        self.all()
            .map(|r| (Self::describe(r), r.fd.as_fd()))
            .collect()
    }

    /// The memfd of the first region (see [`mem_table`](Self::mem_table) for all).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.first.fd.as_fd()
    }

    /// The lowest guest address of any region.
    pub fn start(&self) -> u64 {
        self.all()
            .map(|r| r.region.layout().guest_phys_addr)
            .min()
            .unwrap_or(0)
    }

    /// One past the highest guest address of any region.
    pub fn end(&self) -> u64 {
        self.all()
            .map(|r| {
                let l = r.region.layout();
                l.guest_phys_addr.saturating_add(l.memory_size)
            })
            .max()
            .unwrap_or(0)
    }

    /// The memory for a driver-side `vring` queue.
    pub fn memory(&self) -> &Arc<GuestMemoryMmap> {
        self.map.memory()
    }

    /// Translates a guest address inside a region to its user address.
    pub fn user_addr(&self, gpa: u64) -> Option<u64> {
        self.all().find_map(|r| {
            let l = r.region.layout();
            let off = gpa.checked_sub(l.guest_phys_addr)?;
            (off < l.memory_size).then(|| r.region.host_addr().checked_add(off))?
        })
    }

    /// SET_VRING_ADDR for ring `index` laid out as `config` says (guest addresses inside
    /// the regions); `None` if an area is outside them.
    pub fn vring_addr(&self, index: u16, config: &vring::QueueConfig) -> Option<VringAddr> {
        Some(VringAddr {
            index: index.into(),
            flags: VringAddrFlags::empty(),
            desc: self.user_addr(config.desc_table)?,
            used: self.user_addr(config.device_area)?,
            avail: self.user_addr(config.driver_area)?,
            log: 0,
        })
    }

    /// Reads `buf.len()` bytes at guest address `gpa`; a range not wholly inside guest
    /// memory is [`ClientError::GuestMemory`] (nothing is read then).
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), ClientError> {
        self.check(gpa, buf.len())?;
        self.memory()
            .read_slice(buf, GuestAddress(gpa))
            .map_err(|_| ClientError::GuestMemory {
                gpa,
                len: buf.len(),
            })
    }

    /// Writes `buf` at guest address `gpa` (checked like [`read`](Self::read)).
    pub fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), ClientError> {
        self.check(gpa, buf.len())?;
        self.memory()
            .write_slice(buf, GuestAddress(gpa))
            .map_err(|_| ClientError::GuestMemory {
                gpa,
                len: buf.len(),
            })
    }

    /// Whether `[gpa, gpa + len)` is inside one region.
    fn check(&self, gpa: u64, len: usize) -> Result<(), ClientError> {
        let end = gpa
            .checked_add(len as u64)
            .ok_or(ClientError::GuestMemory { gpa, len })?;
        let inside = self.all().any(|r| {
            let l = r.region.layout();
            gpa >= l.guest_phys_addr && end <= l.guest_phys_addr.saturating_add(l.memory_size)
        });
        if inside {
            Ok(())
        } else {
            Err(ClientError::GuestMemory { gpa, len })
        }
    }

    fn free_list(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, u64>> {
        self.free.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A free range of `len` bytes aligned to `align` (a power of two; 0 is taken as 1),
    /// first fit over the regions; [`ClientError::OutOfGuestMemory`] when none is left.
    pub fn alloc(&self, len: u64, align: u64) -> Result<u64, ClientError> {
        let align = align.max(1);
        if !align.is_power_of_two() || len == 0 {
            return Err(ClientError::OutOfGuestMemory { len, align });
        }
        let mut free = self.free_list();
        let fit = free.iter().find_map(|(&start, &flen)| {
            let at = start.checked_add(align - 1)? & !(align - 1);
            let stop = at.checked_add(len)?;
            (stop <= start.saturating_add(flen)).then_some((start, flen, at, stop))
        });
        let Some((start, flen, at, stop)) = fit else {
            return Err(ClientError::OutOfGuestMemory { len, align });
        };
        free.remove(&start);
        if at > start {
            free.insert(start, at - start);
        }
        let free_end = start.saturating_add(flen);
        if free_end > stop {
            free.insert(stop, free_end - stop);
        }
        Ok(at)
    }

    /// Takes `[gpa, gpa + len)` out of the allocator's reach (a range laid out by hand). It
    /// must be free: [`ClientError::GuestMemory`] otherwise.
    pub fn reserve(&self, gpa: u64, len: u64) -> Result<(), ClientError> {
        let err = || ClientError::GuestMemory {
            gpa,
            len: usize::try_from(len).unwrap_or(usize::MAX),
        };
        let stop = gpa.checked_add(len).ok_or_else(err)?;
        let mut free = self.free_list();
        let (&start, &flen) = free.range(..=gpa).next_back().ok_or_else(err)?;
        let free_end = start.saturating_add(flen);
        if stop > free_end {
            return Err(err());
        }
        free.remove(&start);
        if gpa > start {
            free.insert(start, gpa - start);
        }
        if free_end > stop {
            free.insert(stop, free_end - stop);
        }
        Ok(())
    }

    /// Gives `[gpa, gpa + len)` back to the allocator. A range that is not inside guest
    /// memory, or overlaps a free one (a double free), is [`ClientError::GuestMemory`].
    pub fn free(&self, gpa: u64, len: u64) -> Result<(), ClientError> {
        let size = usize::try_from(len).unwrap_or(usize::MAX);
        self.check(gpa, size)?;
        let err = || ClientError::GuestMemory { gpa, len: size };
        let stop = gpa.checked_add(len).ok_or_else(err)?;
        let mut free = self.free_list();
        let prev = free.range(..gpa).next_back().map(|(&s, &l)| (s, l));
        let next = free.range(gpa..).next().map(|(&s, &l)| (s, l));
        if prev.is_some_and(|(s, l)| s.saturating_add(l) > gpa)
            || next.is_some_and(|(s, _)| s < stop)
        {
            return Err(err());
        }
        let (mut start, mut end) = (gpa, stop);
        // Merge with neighbours in the same region (regions never touch in the free list
        // unless they are contiguous in guest memory, which vm-memory treats as one).
        if let Some((s, l)) = prev
            && s.saturating_add(l) == gpa
        {
            free.remove(&s);
            start = s;
        }
        if let Some((s, l)) = next
            && s == stop
        {
            free.remove(&s);
            end = s.saturating_add(l);
        }
        free.insert(start, end - start);
        Ok(())
    }
}

fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

/// Bytes a split ring of `size` entries takes from an address aligned to 16
/// (see [`split_ring`]).
pub(crate) fn split_ring_len(size: u16) -> u64 {
    let (_, end) = split_ring(0, size, vring::RingFeatures::default());
    end
}

/// Bytes a packed ring of `size` descriptors takes (see [`packed_ring`]).
pub(crate) fn packed_ring_len(size: u16) -> u64 {
    let (_, end) = packed_ring(0, size, vring::RingFeatures::default());
    end
}

/// A split ring of `size` entries laid out from guest address `base`
/// (descriptor table, available ring, used ring, each aligned as virtqueue
/// spec §2 asks); returns its configuration and the first free address after
/// it.
pub fn split_ring(
    base: u64,
    size: u16,
    features: vring::RingFeatures,
) -> (vring::QueueConfig, u64) {
    use vring::split::layout;
    let desc = align_up(base, 16);
    let avail = align_up(desc + layout::desc_table_size(size) as u64, 2);
    let used = align_up(avail + layout::avail_ring_size(size) as u64, 4);
    let end = used + layout::used_ring_size(size) as u64;
    let config = vring::QueueConfig {
        size,
        desc_table: desc,
        driver_area: avail,
        device_area: used,
        features,
    };
    (config, end)
}

/// A packed ring of `size` descriptors laid out from guest address `base`
/// (descriptor ring, driver and device event suppression areas); returns its
/// configuration and the first free address after it.
pub fn packed_ring(
    base: u64,
    size: u16,
    features: vring::RingFeatures,
) -> (vring::QueueConfig, u64) {
    let desc = align_up(base, 16);
    let driver = align_up(desc + 16 * u64::from(size), 4);
    let device = driver + vring::packed::EVENT_SUPPRESS_SIZE as u64;
    let end = device + vring::packed::EVENT_SUPPRESS_SIZE as u64;
    let config = vring::QueueConfig {
        size,
        desc_table: desc,
        driver_area: driver,
        device_area: device,
        features,
    };
    (config, end)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn allocator_reserve_free_and_double_free() {
        let ram = GuestRam::new(0, 1 << 16).unwrap();
        ram.reserve(0, 0x1000).unwrap();
        assert!(ram.reserve(0x800, 0x10).is_err(), "already reserved");
        let a = ram.alloc(0x100, 0x1000).unwrap();
        assert_eq!(a, 0x1000);
        let b = ram.alloc(0x10, 1).unwrap();
        assert_eq!(b, 0x1100);
        assert!(ram.free(b, 0x10).is_ok());
        assert!(ram.free(b, 0x10).is_err(), "double free");
        assert!(ram.free(0x10_0000, 1).is_err(), "outside guest memory");
        assert!(ram.alloc(1 << 16, 1).is_err());
        assert!(ram.alloc(8, 3).is_err(), "alignment not a power of two");
        ram.free(a, 0x100).unwrap();
        assert_eq!(ram.alloc(0xf000, 1).unwrap(), 0x1000, "merged back");
        assert!(ram.write(u64::MAX - 1, &[1, 2, 3]).is_err());
    }
}
