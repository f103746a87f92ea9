//! Guest memory a front-end shares with its back-end, and ring layouts in it.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use vhost_proto::wire::{MemoryRegion, VringAddr, VringAddrFlags};
use vm_memory::GuestMemoryMmap;

use crate::OsError;
use crate::os::memfd;
use crate::os::mmap::{MappedRegion, MemoryMap, RegionLayout};

/// A region of "guest" memory in a sealed memfd, mapped here and shareable
/// with a back-end through SET_MEM_TABLE / ADD_MEM_REG.
///
/// As QEMU does, the region's user address is this process's address of the
/// mapping: ring addresses sent with SET_VRING_ADDR are user addresses
/// ([`vring_addr`](Self::vring_addr) translates), descriptor addresses are
/// guest-physical.
///
/// ```
/// use vhost_io_std::frontend::{GuestRam, split_ring};
///
/// let ram = GuestRam::new(0x10_0000, 1 << 20)?;
/// let (config, end) = split_ring(0x10_0000, 256, vring::RingFeatures::default());
/// assert!(end <= ram.end());
/// let addr = ram.vring_addr(0, &config).unwrap();
/// assert_eq!(addr.desc, ram.region().user_addr);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct GuestRam {
    fd: OwnedFd,
    region: MappedRegion,
    map: MemoryMap,
}

impl GuestRam {
    /// `size` bytes (a multiple of the page size) of zeroed memory at guest
    /// address `guest_phys_addr`.
    pub fn new(guest_phys_addr: u64, size: u64) -> Result<Self, OsError> {
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
        let map = MemoryMap::new(vec![region.clone()])?;
        Ok(GuestRam { fd, region, map })
    }

    /// The region as SET_MEM_TABLE / ADD_MEM_REG describe it (user address =
    /// this process's mapping).
    pub fn region(&self) -> MemoryRegion {
        let l = self.region.layout();
        MemoryRegion {
            guest_phys_addr: l.guest_phys_addr,
            memory_size: l.memory_size,
            user_addr: self.region.host_addr(),
            mmap_offset: 0,
            xen: None,
        }
    }

    /// The memfd to send with the region.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// First guest address.
    pub fn start(&self) -> u64 {
        self.region.layout().guest_phys_addr
    }

    /// One past the last guest address.
    pub fn end(&self) -> u64 {
        let l = self.region.layout();
        l.guest_phys_addr + l.memory_size
    }

    /// The memory for a driver-side `vring` queue.
    pub fn memory(&self) -> &Arc<GuestMemoryMmap> {
        self.map.memory()
    }

    /// Translates a guest address inside the region to its user address.
    pub fn user_addr(&self, gpa: u64) -> Option<u64> {
        let off = gpa.checked_sub(self.start())?;
        (gpa < self.end()).then(|| self.region.host_addr() + off)
    }

    /// SET_VRING_ADDR for ring `index` laid out as `config` says (guest
    /// addresses inside this region); `None` if an area is outside it.
    pub fn vring_addr(&self, index: u32, config: &vring::QueueConfig) -> Option<VringAddr> {
        Some(VringAddr {
            index,
            flags: VringAddrFlags::empty(),
            desc: self.user_addr(config.desc_table)?,
            used: self.user_addr(config.device_area)?,
            avail: self.user_addr(config.driver_area)?,
            log: 0,
        })
    }
}

fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
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
