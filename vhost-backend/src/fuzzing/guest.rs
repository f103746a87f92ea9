//! The guest of the `runtime_session` target: two memfd regions, the harness's own view of
//! them (mapped through [`crate::os::mmap`]), the layout of the rings in them, and the
//! driver side of each ring (the vring engine's drivers) for posting well-formed chains.

use std::io;
use std::os::fd::OwnedFd;

use vm_memory::{Bytes, GuestAddress};
use vring::{QueueConfig, RingFeatures};

use crate::os::memfd;
use crate::os::mmap::{MappedRegion, MemoryMap, RegionLayout};
use crate::queue::Memory;

/// Bytes per region.
pub const REGION_SIZE: u64 = 0x10000;
/// Regions of guest memory: region `k` is at guest address `k * REGION_SIZE`.
pub const REGIONS: usize = 2;
/// The front-end's address of guest address 0 (vring addresses are user addresses).
pub const USER_BASE: u64 = 0x7000_0000;
/// Ring `i`'s areas start at `i * RING_STRIDE` in region 0.
pub const RING_STRIDE: u64 = 0x3000;
/// Buffers live in region 1.
pub const BUFFERS: u64 = REGION_SIZE;

/// Guest addresses of ring `index`'s descriptor table, driver area and device area (room
/// for 256 entries of either layout).
pub fn ring_areas(index: u16) -> (u64, u64, u64) {
    let base = u64::from(index) * RING_STRIDE;
    (base, base + 0x1000, base + 0x1400)
}

/// Guest memory: the memfds and the harness's mapping of them.
#[derive(Debug)]
pub struct Guest {
    fds: Vec<OwnedFd>,
    map: MemoryMap,
}

/// The wire description of region `k` (with size and offset as given).
pub fn region(k: usize, memory_size: u64, mmap_offset: u64) -> vhost_proto::wire::MemoryRegion {
    let gpa = k as u64 * REGION_SIZE;
    vhost_proto::wire::MemoryRegion {
        guest_phys_addr: gpa,
        memory_size,
        user_addr: USER_BASE + gpa,
        mmap_offset,
        xen: None,
    }
}

impl Guest {
    /// Zero-filled regions; region 1 is left unsealed (its mappings are guarded against
    /// SIGBUS) when `unsealed`.
    pub fn new(unsealed: bool) -> io::Result<Self> {
        let mut fds = Vec::with_capacity(REGIONS);
        let mut mapped = Vec::with_capacity(REGIONS);
        for k in 0..REGIONS {
            let fd = if unsealed && k == 1 {
                memfd::create("fuzz-guest", REGION_SIZE)?
            } else {
                memfd::create_sealed("fuzz-guest", REGION_SIZE)?
            };
            let r = region(k, REGION_SIZE, 0);
            let layout = RegionLayout {
                guest_phys_addr: r.guest_phys_addr,
                memory_size: r.memory_size,
                user_addr: r.user_addr,
                mmap_offset: 0,
            };
            let dup = rustix::io::fcntl_dupfd_cloexec(&fd, 0)?;
            mapped.push(MappedRegion::map(layout, dup).map_err(io::Error::other)?);
            fds.push(fd);
        }
        let map = MemoryMap::new(mapped).map_err(io::Error::other)?;
        Ok(Guest { fds, map })
    }

    /// A duplicate of region `k`'s fd (to send), or of an fd that is not a region's.
    pub fn fd(&self, k: usize) -> io::Result<OwnedFd> {
        match self.fds.get(k % REGIONS) {
            Some(fd) => Ok(rustix::io::fcntl_dupfd_cloexec(fd, 0)?),
            None => Err(io::Error::other("no region")),
        }
    }

    /// The harness's view of guest memory.
    pub fn memory(&self) -> &Memory {
        self.map.memory()
    }

    /// Writes `bytes` at guest address `gpa` (cut at the end of memory).
    pub fn write(&self, gpa: u64, bytes: &[u8]) {
        let end = (REGIONS as u64 * REGION_SIZE).saturating_sub(gpa);
        let n = bytes.len().min(usize::try_from(end).unwrap_or(0));
        if let Some(b) = bytes.get(..n) {
            let _ = self.memory().write_slice(b, GuestAddress(gpa));
        }
    }
}

/// The queue configuration of ring `index` at the harness's layout.
pub fn queue_config(index: u16, size: u16, features: RingFeatures) -> QueueConfig {
    let (desc, driver, device) = ring_areas(index);
    QueueConfig {
        size,
        desc_table: desc,
        driver_area: driver,
        device_area: device,
        features,
    }
}

/// The driver side of one ring, as the harness set it up.
#[derive(Debug)]
pub enum Driver {
    /// A split ring.
    Split(vring::split::DriverQueue<Memory>),
    /// A packed ring.
    Packed(vring::packed::DriverQueue<Memory>),
}

impl Driver {
    /// A driver for ring `config` starting at `next_avail` (and the packed wrap counter),
    /// initialising the ring areas; `None` if they are not in memory or malformed.
    pub fn new(mem: &Memory, config: &QueueConfig, packed: bool, next_avail: u16) -> Option<Self> {
        if packed {
            let slot = next_avail & 0x7fff;
            let wrap = next_avail & 0x8000 != 0;
            vring::packed::DriverQueue::new_at(mem.clone(), config, slot, wrap)
                .ok()
                .map(Driver::Packed)
        } else {
            vring::split::DriverQueue::new_at(mem.clone(), config, next_avail)
                .ok()
                .map(Driver::Split)
        }
    }

    /// Offers a buffer (through an indirect table at `table` if given) and publishes it;
    /// whether it was offered.
    pub fn post(
        &mut self,
        readable: &[(u64, u32)],
        writable: &[(u64, u32)],
        table: Option<u64>,
    ) -> bool {
        let r = match (self, table) {
            (Driver::Split(d), None) => d.add(readable, writable).map(|_| d.publish()),
            (Driver::Split(d), Some(t)) => {
                d.add_indirect(t, readable, writable).map(|_| d.publish())
            }
            (Driver::Packed(d), None) => d.add(readable, writable).map(|_| d.publish()),
            (Driver::Packed(d), Some(t)) => {
                d.add_indirect(t, readable, writable).map(|_| d.publish())
            }
        };
        r.is_ok()
    }

    /// Collects the used buffers; how many (a used ring the device broke, or the input
    /// scribbled on, ends the collection).
    pub fn reap(&mut self) -> usize {
        let mut n = 0;
        loop {
            let r = match self {
                Driver::Split(d) => d.pop_used(),
                Driver::Packed(d) => d.pop_used(),
            };
            match r {
                Ok(Some(_)) if n < 1024 => n += 1,
                _ => return n,
            }
        }
    }
}
