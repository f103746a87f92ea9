//! Typed payload values: what the decoder hands out and the encoder takes, converted from
//! and to the raw layouts of [`layout`](super::layout) with the spec's rules checked.

use super::error::PayloadError;
use super::flags::{IotlbPerm, IotlbType, ShmemMapFlags, VringAddrFlags, XenMmapFlags};
use super::layout::{
    CryptoSessionRaw, InflightDescRaw, IotlbMsgRaw, LogDescriptionRaw, MemoryRegionRaw,
    SHMEM_MAX_REGIONS, ShmemConfigRaw, ShmemMmapRaw, VringAddrRaw, XenMemoryRegionRaw,
};

/// The ring position of SET_VRING_BASE / GET_VRING_BASE, kept as the raw u32 because the
/// codec cannot know whether split or packed rings were negotiated (spec §3.3, §3.4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VringBase(pub u32);

impl VringBase {
    /// A split-ring base: the next available-ring index, free-running (spec §3.3).
    pub const fn split(next_avail: u16) -> Self {
        VringBase(next_avail as u32)
    }

    /// A packed-ring base from its four parts (spec §3.4). Indices are masked to 15 bits.
    pub const fn packed(avail_idx: u16, avail_wrap: bool, used_idx: u16, used_wrap: bool) -> Self {
        VringBase(
            (avail_idx as u32 & 0x7fff)
                | (avail_wrap as u32) << 15
                | (used_idx as u32 & 0x7fff) << 16
                | (used_wrap as u32) << 31,
        )
    }

    /// The raw u32.
    pub const fn raw(self) -> u32 {
        self.0
    }

    /// Split ring: the next available-ring index, bits 0–15 (spec §3.3).
    pub const fn split_next_avail(self) -> u16 {
        self.0 as u16
    }

    /// Split ring: whether reserved bits 16–31 are set (they must be 0, spec §3.3).
    pub const fn split_has_reserved_bits(self) -> bool {
        self.0 >> 16 != 0
    }

    /// Packed ring: next descriptor-ring index to process, bits 0–14 (spec §3.4).
    pub const fn packed_avail_idx(self) -> u16 {
        (self.0 & 0x7fff) as u16
    }

    /// Packed ring: driver (avail) ring wrap counter, bit 15 (spec §3.4).
    pub const fn packed_avail_wrap(self) -> bool {
        self.0 & (1 << 15) != 0
    }

    /// Packed ring: next index at which the back-end writes a used descriptor, bits 16–30 (spec §3.4).
    pub const fn packed_used_idx(self) -> u16 {
        ((self.0 >> 16) & 0x7fff) as u16
    }

    /// Packed ring: device (used) ring wrap counter, bit 31 (spec §3.4).
    pub const fn packed_used_wrap(self) -> bool {
        self.0 & (1 << 31) != 0
    }
}

/// Ring addresses of SET_VRING_ADDR (spec §3.5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VringAddr {
    /// Vring index.
    pub index: u32,
    /// Flags (LOG); unknown bits kept.
    pub flags: VringAddrFlags,
    /// Descriptor table / ring.
    pub desc: u64,
    /// Used ring / device event area.
    pub used: u64,
    /// Available ring / driver event area.
    pub avail: u64,
    /// Guest-physical address for used-ring dirty logging.
    pub log: u64,
}

impl From<VringAddrRaw> for VringAddr {
    fn from(r: VringAddrRaw) -> Self {
        VringAddr {
            index: r.index,
            flags: VringAddrFlags::from_bits_retain(r.flags),
            desc: r.desc_user_addr,
            used: r.used_user_addr,
            avail: r.avail_user_addr,
            log: r.log_guest_addr,
        }
    }
}

impl From<VringAddr> for VringAddrRaw {
    fn from(a: VringAddr) -> Self {
        VringAddrRaw {
            index: a.index,
            flags: a.flags.bits(),
            desc_user_addr: a.desc,
            used_user_addr: a.used,
            avail_user_addr: a.avail,
            log_guest_addr: a.log,
        }
    }
}

/// Xen fields of a memory region, present iff XEN_MMAP was negotiated (spec §3.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct XenRegion {
    /// Mapping flags; unknown bits kept.
    pub flags: XenMmapFlags,
    /// Xen domain id.
    pub domid: u32,
}

/// A validated memory region: non-zero size, no start + size overflow (spec §3.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MemoryRegion {
    /// Guest-physical start.
    pub guest_phys_addr: u64,
    /// Size in bytes (non-zero).
    pub memory_size: u64,
    /// Front-end user address (or GPA with GPA_ADDRESSES; back-end address in postcopy replies).
    pub user_addr: u64,
    /// Offset into the region's fd.
    pub mmap_offset: u64,
    /// The Xen fields, `Some` exactly when XEN_MMAP is negotiated.
    pub xen: Option<XenRegion>,
}

impl MemoryRegion {
    /// Checks the region rules of spec §3.6 (`entry` names it in the error).
    pub fn validate(&self, entry: usize) -> Result<(), PayloadError> {
        if self.memory_size == 0 {
            return Err(PayloadError::ZeroSizeRegion { region: entry });
        }
        for (field, start) in [
            ("guest_phys_addr", self.guest_phys_addr),
            ("user_addr", self.user_addr),
            ("mmap_offset", self.mmap_offset),
        ] {
            check_range(entry, field, start, self.memory_size)?;
        }
        Ok(())
    }

    pub(crate) fn from_raw(r: MemoryRegionRaw, xen: Option<XenRegion>) -> Self {
        MemoryRegion {
            guest_phys_addr: r.guest_phys_addr,
            memory_size: r.memory_size,
            user_addr: r.userspace_addr,
            mmap_offset: r.mmap_offset,
            xen,
        }
    }

    pub(crate) fn from_xen_raw(r: XenMemoryRegionRaw) -> Self {
        Self::from_raw(
            r.region,
            Some(XenRegion {
                flags: XenMmapFlags::from_bits_retain(r.xen_mmap_flags),
                domid: r.domid,
            }),
        )
    }

    pub(crate) fn to_raw(self) -> MemoryRegionRaw {
        MemoryRegionRaw {
            guest_phys_addr: self.guest_phys_addr,
            memory_size: self.memory_size,
            userspace_addr: self.user_addr,
            mmap_offset: self.mmap_offset,
        }
    }
}

/// Checks that `start + size` does not overflow u64.
pub(crate) fn check_range(
    entry: usize,
    field: &'static str,
    start: u64,
    size: u64,
) -> Result<(), PayloadError> {
    match start.checked_add(size) {
        Some(_) => Ok(()),
        None => Err(PayloadError::RangeOverflow {
            entry,
            field,
            start,
            size,
        }),
    }
}

/// A memory region with the fd that backs it (SET_MEM_TABLE, ADD_MEM_REG).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionFd<H> {
    /// The region.
    pub region: MemoryRegion,
    /// Its fd (to mmap at `mmap_offset`).
    pub fd: H,
}

/// The dirty-log area of SET_LOG_BASE (spec §3.9).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LogDescription {
    /// Size of the log area.
    pub mmap_size: u64,
    /// Offset of the log in the fd.
    pub mmap_offset: u64,
}

impl From<LogDescriptionRaw> for LogDescription {
    fn from(r: LogDescriptionRaw) -> Self {
        LogDescription {
            mmap_size: r.mmap_size,
            mmap_offset: r.mmap_offset,
        }
    }
}

impl From<LogDescription> for LogDescriptionRaw {
    fn from(l: LogDescription) -> Self {
        LogDescriptionRaw {
            mmap_size: l.mmap_size,
            mmap_offset: l.mmap_offset,
        }
    }
}

/// An IOTLB message (spec §3.10), both directions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IotlbMsg {
    /// I/O virtual address.
    pub iova: u64,
    /// Size of the range.
    pub size: u64,
    /// User address (UPDATE).
    pub uaddr: u64,
    /// Access permissions; unknown bits kept.
    pub perm: IotlbPerm,
    /// MISS, UPDATE, INVALIDATE or ACCESS_FAIL.
    pub kind: IotlbType,
}

impl TryFrom<IotlbMsgRaw> for IotlbMsg {
    type Error = PayloadError;

    fn try_from(r: IotlbMsgRaw) -> Result<Self, PayloadError> {
        let kind = IotlbType::try_from(r.kind).map_err(|v| PayloadError::InvalidValue {
            field: "iotlb type",
            value: v.into(),
        })?;
        Ok(IotlbMsg {
            iova: r.iova,
            size: r.size,
            uaddr: r.uaddr,
            perm: IotlbPerm::from_bits_retain(r.perm),
            kind,
        })
    }
}

impl From<IotlbMsg> for IotlbMsgRaw {
    fn from(m: IotlbMsg) -> Self {
        IotlbMsgRaw {
            iova: m.iova,
            size: m.size,
            uaddr: m.uaddr,
            perm: m.perm.bits(),
            kind: m.kind.into(),
            padding: [0; 6],
        }
    }
}

/// Inflight buffer description of GET/SET_INFLIGHT_FD (spec §3.13).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct InflightDesc {
    /// Size of the buffer (0 in a GET_INFLIGHT_FD request; 0 in a reply means "no buffer").
    pub mmap_size: u64,
    /// Offset in the fd.
    pub mmap_offset: u64,
    /// Number of queues.
    pub num_queues: u16,
    /// Queue size.
    pub queue_size: u16,
}

impl From<InflightDescRaw> for InflightDesc {
    fn from(r: InflightDescRaw) -> Self {
        InflightDesc {
            mmap_size: r.mmap_size,
            mmap_offset: r.mmap_offset,
            num_queues: r.num_queues,
            queue_size: r.queue_size,
        }
    }
}

impl From<InflightDesc> for InflightDescRaw {
    fn from(d: InflightDesc) -> Self {
        InflightDescRaw {
            mmap_size: d.mmap_size,
            mmap_offset: d.mmap_offset,
            num_queues: d.num_queues,
            queue_size: d.queue_size,
            padding: [0; 4],
        }
    }
}

/// A shared-object UUID, bytes in wire (RFC 4122) order (spec §3.14).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Uuid(pub [u8; 16]);

/// A BACKEND_SHMEM_MAP / UNMAP request body (spec §3.16).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ShmemMap {
    /// Shared memory region id.
    pub shmid: u8,
    /// Offset within the fd.
    pub fd_offset: u64,
    /// Offset within the shared memory region.
    pub shm_offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// Flags (WRITABLE); unknown bits kept.
    pub flags: ShmemMapFlags,
}

impl ShmemMap {
    /// Checks `fd_offset + len` and `shm_offset + len` for overflow (spec §3.16).
    pub fn validate(&self) -> Result<(), PayloadError> {
        check_range(0, "fd_offset", self.fd_offset, self.len)?;
        check_range(0, "shm_offset", self.shm_offset, self.len)
    }
}

impl From<ShmemMmapRaw> for ShmemMap {
    fn from(r: ShmemMmapRaw) -> Self {
        ShmemMap {
            shmid: r.shmid,
            fd_offset: r.fd_offset,
            shm_offset: r.shm_offset,
            len: r.len,
            flags: ShmemMapFlags::from_bits_retain(r.flags),
        }
    }
}

impl From<ShmemMap> for ShmemMmapRaw {
    fn from(m: ShmemMap) -> Self {
        ShmemMmapRaw {
            shmid: m.shmid,
            padding: [0; 7],
            fd_offset: m.fd_offset,
            shm_offset: m.shm_offset,
            len: m.len,
            flags: m.flags.bits(),
        }
    }
}

/// Sizes of the VIRTIO Shared Memory Regions, the GET_SHMEM_CONFIG reply (spec §3.17).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ShmemConfig {
    /// Number of regions in use (at most 256).
    pub nregions: u32,
    /// Size of each region by shmid; 0 = unused.
    pub memory_sizes: [u64; SHMEM_MAX_REGIONS],
}

impl TryFrom<ShmemConfigRaw> for ShmemConfig {
    type Error = PayloadError;

    fn try_from(r: ShmemConfigRaw) -> Result<Self, PayloadError> {
        if r.nregions as usize > SHMEM_MAX_REGIONS {
            return Err(PayloadError::InvalidValue {
                field: "shmem nregions",
                value: r.nregions.into(),
            });
        }
        Ok(ShmemConfig {
            nregions: r.nregions,
            memory_sizes: r.memory_sizes,
        })
    }
}

impl From<ShmemConfig> for ShmemConfigRaw {
    fn from(c: ShmemConfig) -> Self {
        ShmemConfigRaw {
            nregions: c.nregions,
            padding: 0,
            memory_sizes: c.memory_sizes,
        }
    }
}

/// QEMU's crypto session struct as opaque bytes (spec §3.18).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CryptoSession(pub [u8; super::layout::CRYPTO_SESSION_SIZE]);

impl CryptoSession {
    /// `op_code` (u64 at offset 0).
    pub fn op_code(&self) -> u64 {
        let mut b = [0u8; 8];
        if let Some(src) = self.0.get(..8) {
            b.copy_from_slice(src);
        }
        u64::from_ne_bytes(b)
    }

    /// `session_id` (i64 at offset 1064 on a 64-bit host; ≥ 0 success, < 0 failure).
    pub fn session_id(&self) -> i64 {
        let mut b = [0u8; 8];
        if let Some(src) = self.0.get(1064..) {
            b.copy_from_slice(src);
        }
        i64::from_ne_bytes(b)
    }
}

impl From<CryptoSessionRaw> for CryptoSession {
    fn from(r: CryptoSessionRaw) -> Self {
        CryptoSession(r.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vring_base_accessors() {
        let b = VringBase::packed(0x1234, true, 0x7fff, true);
        assert_eq!(b.packed_avail_idx(), 0x1234);
        assert!(b.packed_avail_wrap());
        assert_eq!(b.packed_used_idx(), 0x7fff);
        assert!(b.packed_used_wrap());
        assert_eq!(b.raw(), 0x1234 | 0x8000 | 0x7fff << 16 | 1 << 31);
        let s = VringBase::split(0xffff);
        assert_eq!(s.split_next_avail(), 0xffff);
        assert!(!s.split_has_reserved_bits());
        assert!(VringBase(0x1_0000).split_has_reserved_bits());
    }

    #[test]
    fn region_rules() {
        let r = MemoryRegion {
            guest_phys_addr: 0,
            memory_size: 0,
            user_addr: 0,
            mmap_offset: 0,
            xen: None,
        };
        assert_eq!(
            r.validate(3),
            Err(PayloadError::ZeroSizeRegion { region: 3 })
        );
        let r = MemoryRegion {
            memory_size: 2,
            user_addr: u64::MAX - 1,
            ..r
        };
        assert!(matches!(
            r.validate(0),
            Err(PayloadError::RangeOverflow {
                field: "user_addr",
                ..
            })
        ));
        let r = MemoryRegion {
            user_addr: u64::MAX - 2,
            ..r
        };
        assert_eq!(r.validate(0), Ok(()));
    }
}
