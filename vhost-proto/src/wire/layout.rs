//! Payload layouts of spec §3 as `zerocopy` structs: the wire table.
//!
//! Every struct is `#[repr(C)]`, native byte order (no conversion, spec §1), with explicit
//! padding fields so that it has no implicit padding and its size equals the spec's size
//! (each size is asserted at compile time). Read them from untrusted bytes with
//! [`FromBytes::read_from_bytes`] (copying, so no alignment requirement), write them with
//! [`IntoBytes::as_bytes`].
//!
//! | Struct | Spec | Size |
//! |---|---|---:|
//! | [`U64Payload`] | §3.1 | 8 |
//! | [`VringStateRaw`] | §3.2, §3.3, §3.4 | 8 |
//! | [`VringAddrRaw`] | §3.5 | 40 |
//! | [`MemoryRegionRaw`] / [`XenMemoryRegionRaw`] | §3.6 | 32 / 40 |
//! | [`MemoryTableHeaderRaw`] | §3.7 | 8 |
//! | [`SingleRegionHeaderRaw`] | §3.8 (padding before the region) | 8 |
//! | [`LogDescriptionRaw`] | §3.9 | 16 |
//! | [`IotlbMsgRaw`] | §3.10 | 32 |
//! | [`ConfigHeaderRaw`] | §3.11 (then `size` data bytes) | 12 |
//! | [`VringAreaRaw`] | §3.12 | 24 |
//! | [`InflightDescRaw`] | §3.13 | 24 |
//! | [`SharedObjectRaw`] | §3.14 | 16 |
//! | [`DeviceStateParamsRaw`] | §3.15 | 8 |
//! | [`ShmemMmapRaw`] | §3.16 | 40 |
//! | [`ShmemConfigRaw`] | §3.17 | 2056 |
//! | [`CryptoSessionRaw`] | §3.18 | 1072 |

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// A single u64 payload: features, acks, status, MTU, ... (spec §3.1).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct U64Payload {
    /// The value.
    pub value: u64,
}
const _: () = assert!(size_of::<U64Payload>() == 8);

/// `struct vhost_vring_state`: a ring index and a number (spec §3.2); also the split (§3.3)
/// and packed (§3.4) vring base, where `num` holds the index bits.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct VringStateRaw {
    /// Vring index.
    pub index: u32,
    /// Size, enable flag, endianness or ring position, depending on the request.
    pub num: u32,
}
const _: () = assert!(size_of::<VringStateRaw>() == 8);

/// `struct vhost_vring_addr` (spec §3.5). Field order on the wire: index, flags, desc,
/// **used**, **avail**, log.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct VringAddrRaw {
    /// Vring index.
    pub index: u32,
    /// Bit 0: `VHOST_VRING_F_LOG`.
    pub flags: u32,
    /// Descriptor table (split) / descriptor ring (packed) address.
    pub desc_user_addr: u64,
    /// Used ring (split) / device event-suppression area (packed) address.
    pub used_user_addr: u64,
    /// Available ring (split) / driver event-suppression area (packed) address.
    pub avail_user_addr: u64,
    /// Guest-physical address used for dirty-logging the used ring.
    pub log_guest_addr: u64,
}
const _: () = assert!(size_of::<VringAddrRaw>() == 40);

/// One memory region without Xen fields (spec §3.6, 32 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct MemoryRegionRaw {
    /// Guest-physical start address.
    pub guest_phys_addr: u64,
    /// Size in bytes.
    pub memory_size: u64,
    /// Front-end user (virtual) address of the start.
    pub userspace_addr: u64,
    /// Offset into the fd where the region starts.
    pub mmap_offset: u64,
}
const _: () = assert!(size_of::<MemoryRegionRaw>() == 32);

/// One memory region with the Xen fields, used once `XEN_MMAP` is negotiated (spec §3.6, 40 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct XenMemoryRegionRaw {
    /// The common 32 bytes.
    pub region: MemoryRegionRaw,
    /// Xen mapping flags (see [`XenMmapFlags`](super::XenMmapFlags)).
    pub xen_mmap_flags: u32,
    /// Xen domain id.
    pub domid: u32,
}
const _: () = assert!(size_of::<XenMemoryRegionRaw>() == 40);

/// Header of the SET_MEM_TABLE payload: the region count, then `num_regions` regions (spec §3.7).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct MemoryTableHeaderRaw {
    /// Number of regions that follow (at most 8).
    pub num_regions: u32,
    /// Padding (0).
    pub padding: u32,
}
const _: () = assert!(size_of::<MemoryTableHeaderRaw>() == 8);

/// The 8 padding bytes before the region of ADD_MEM_REG / REM_MEM_REG (spec §3.8).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct SingleRegionHeaderRaw {
    /// Padding (0).
    pub padding: u64,
}
const _: () = assert!(size_of::<SingleRegionHeaderRaw>() == 8);

/// Log description of SET_LOG_BASE (spec §3.9).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct LogDescriptionRaw {
    /// Size of the log area.
    pub mmap_size: u64,
    /// Offset of the log in the fd.
    pub mmap_offset: u64,
}
const _: () = assert!(size_of::<LogDescriptionRaw>() == 16);

/// `struct vhost_iotlb_msg` as QEMU sends it, with its 6 trailing padding bytes (spec §3.10).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct IotlbMsgRaw {
    /// I/O virtual address.
    pub iova: u64,
    /// Size of the range.
    pub size: u64,
    /// User address.
    pub uaddr: u64,
    /// Access permissions (see [`IotlbPerm`](super::IotlbPerm)).
    pub perm: u8,
    /// Message type (see [`IotlbType`](super::IotlbType)).
    pub kind: u8,
    /// C struct trailing padding.
    pub padding: [u8; 6],
}
const _: () = assert!(size_of::<IotlbMsgRaw>() == 32);

/// Header of a config-space payload; `size` data bytes follow (spec §3.11).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct ConfigHeaderRaw {
    /// Offset into the device config space.
    pub offset: u32,
    /// Number of config bytes that follow.
    pub size: u32,
    /// A value, not bits: 0 front-end write, 1 migration (see [`ConfigFlags`](super::ConfigFlags)).
    pub flags: u32,
}
const _: () = assert!(size_of::<ConfigHeaderRaw>() == 12);

/// Host-notifier area of BACKEND_VRING_HOST_NOTIFIER_MSG (spec §3.12).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct VringAreaRaw {
    /// Bits 0–7 vring index, bit 8 no-fd flag.
    pub u64: u64,
    /// Size of the area to map.
    pub size: u64,
    /// Offset of the area in the fd.
    pub offset: u64,
}
const _: () = assert!(size_of::<VringAreaRaw>() == 24);

/// Inflight buffer description with its 4 trailing padding bytes (spec §3.13).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct InflightDescRaw {
    /// Size of the buffer.
    pub mmap_size: u64,
    /// Offset in the fd.
    pub mmap_offset: u64,
    /// Number of queues.
    pub num_queues: u16,
    /// Queue size.
    pub queue_size: u16,
    /// C struct trailing padding.
    pub padding: [u8; 4],
}
const _: () = assert!(size_of::<InflightDescRaw>() == 24);

/// `VhostUserShared`: a 16-byte UUID in RFC 4122 byte order (spec §3.14).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct SharedObjectRaw {
    /// The UUID bytes as on the wire.
    pub uuid: [u8; 16],
}
const _: () = assert!(size_of::<SharedObjectRaw>() == 16);

/// Device state transfer parameters of SET_DEVICE_STATE_FD (spec §3.15).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct DeviceStateParamsRaw {
    /// 0 SAVE, 1 LOAD.
    pub direction: u32,
    /// 0 STOPPED.
    pub phase: u32,
}
const _: () = assert!(size_of::<DeviceStateParamsRaw>() == 8);

/// `VhostUserMMap` of BACKEND_SHMEM_MAP/UNMAP (spec §3.16).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct ShmemMmapRaw {
    /// VIRTIO Shared Memory Region id.
    pub shmid: u8,
    /// Padding.
    pub padding: [u8; 7],
    /// Offset within the fd.
    pub fd_offset: u64,
    /// Offset within the shared memory region.
    pub shm_offset: u64,
    /// Number of bytes.
    pub len: u64,
    /// Bit 0: map read-write (see [`ShmemMapFlags`](super::ShmemMapFlags)).
    pub flags: u64,
}
const _: () = assert!(size_of::<ShmemMmapRaw>() == 40);

/// Number of shared memory region ids in [`ShmemConfigRaw`] (spec §3.17).
pub const SHMEM_MAX_REGIONS: usize = 256;

/// `VhostUserShMemConfig`: sizes of the VIRTIO Shared Memory Regions (spec §3.17).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct ShmemConfigRaw {
    /// Number of regions in use.
    pub nregions: u32,
    /// Padding.
    pub padding: u32,
    /// Size of each region, indexed by shmid; 0 = unused.
    pub memory_sizes: [u64; SHMEM_MAX_REGIONS],
}
const _: () = assert!(size_of::<ShmemConfigRaw>() == 2056);

/// Size of QEMU's `VhostUserCryptoSession` on a 64-bit host (spec §3.18).
pub const CRYPTO_SESSION_SIZE: usize = 1072;

/// QEMU's crypto session, carried as opaque bytes because its layout is host-ABI specific (spec §3.18).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct CryptoSessionRaw {
    /// The raw bytes.
    pub bytes: [u8; CRYPTO_SESSION_SIZE],
}
const _: () = assert!(size_of::<CryptoSessionRaw>() == CRYPTO_SESSION_SIZE);

/// Mask of the vring index in the u64 payload of SET_VRING_KICK/CALL/ERR (spec §3.1, `VHOST_USER_VRING_IDX_MASK`).
pub const VRING_IDX_MASK: u64 = 0xff;

/// The no-fd bit in the u64 payload of SET_VRING_KICK/CALL/ERR and the vring area (spec §3.1, `VHOST_USER_VRING_NOFD_MASK`).
pub const VRING_NOFD_MASK: u64 = 0x100;

/// Maximum number of regions in SET_MEM_TABLE and of fds per message (spec §3.7, §10,
/// `VHOST_MEMORY_BASELINE_NREGIONS`).
pub const MAX_MEM_REGIONS: usize = 8;

/// QEMU's `VHOST_USER_MAX_CONFIG_SIZE` (spec §3.11, §10); we accept up to [`MAX_CONFIG_SIZE`].
pub const QEMU_MAX_CONFIG_SIZE: usize = 256;

/// Largest config data size we accept: the 4096-byte cap of spec §2 (as rust-vmm).
pub const MAX_CONFIG_SIZE: usize = 4096;

/// Largest payload of any message: a config header plus [`MAX_CONFIG_SIZE`] data bytes
/// (spec §2: accept at least 4096 bytes, reject anything larger).
pub const MAX_PAYLOAD_SIZE: usize = size_of::<ConfigHeaderRaw>() + MAX_CONFIG_SIZE;
const _: () = assert!(MAX_PAYLOAD_SIZE >= size_of::<ShmemConfigRaw>());
const _: () = assert!(MAX_PAYLOAD_SIZE >= CRYPTO_SESSION_SIZE);

/// Dirty-log page size (spec §7.7, §10, `VHOST_LOG_PAGE`).
pub const LOG_PAGE_SIZE: u64 = 0x1000;
