//! Feature sets and flag words (spec §3, §4) as `bitflags` types, plus the value-typed
//! fields that look like flags but are enumerations (config flags, IOTLB type, ...).
//!
//! Every bitflags type keeps unknown bits: build them with `from_bits_retain`, never
//! `from_bits_truncate`, so nothing a peer sent is silently lost.

use bitflags::bitflags;

bitflags! {
    /// Virtio feature bits of GET/SET_FEATURES that matter to the protocol (spec §4.1 and
    /// virtqueue.md §6). Device-specific bits pass through as unknown bits.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct VirtioFeatures: u64 {
        /// Legacy: notify when the queue runs empty (virtqueue.md §6, bit 24).
        const NOTIFY_ON_EMPTY = 1 << 24;
        /// Vhost: log all writes for migration (spec §4.1, bit 26, `VHOST_F_LOG_ALL`).
        const LOG_ALL = 1 << 26;
        /// Legacy: any descriptor layout (virtqueue.md §6, bit 27).
        const ANY_LAYOUT = 1 << 27;
        /// Indirect descriptors (virtqueue.md §6, bit 28).
        const INDIRECT_DESC = 1 << 28;
        /// used_event / avail_event (virtqueue.md §6, bit 29).
        const EVENT_IDX = 1 << 29;
        /// The back-end supports GET/SET_PROTOCOL_FEATURES (spec §4.1, bit 30).
        const PROTOCOL_FEATURES = 1 << 30;
        /// Modern device (virtqueue.md §6, bit 32).
        const VERSION_1 = 1 << 32;
        /// Addresses are IOVAs (spec §4.1, virtqueue.md §6, bit 33; old name IOMMU_PLATFORM).
        const ACCESS_PLATFORM = 1 << 33;
        /// Packed ring layout (virtqueue.md §6, bit 34).
        const RING_PACKED = 1 << 34;
        /// Buffers used in order (virtqueue.md §6, bit 35).
        const IN_ORDER = 1 << 35;
        /// Hardware-grade barriers (virtqueue.md §6, bit 36).
        const ORDER_PLATFORM = 1 << 36;
        /// PCI SR-IOV (virtqueue.md §6, bit 37).
        const SR_IOV = 1 << 37;
        /// Kicks carry notification data (virtqueue.md §6, bit 38).
        const NOTIFICATION_DATA = 1 << 38;
        /// Kicks carry device-supplied queue data (virtqueue.md §6, bit 39).
        const NOTIF_CONFIG_DATA = 1 << 39;
        /// Per-queue reset (virtqueue.md §6, bit 40).
        const RING_RESET = 1 << 40;
        /// Administration virtqueues (virtqueue.md §6, bit 41).
        const ADMIN_VQ = 1 << 41;
        /// Device suspend through a status bit (virtqueue.md §6, bit 43).
        const SUSPEND = 1 << 43;
    }
}

impl VirtioFeatures {
    /// Alias of [`ACCESS_PLATFORM`](Self::ACCESS_PLATFORM) under its vhost name (spec §4.1).
    pub const IOMMU_PLATFORM: Self = Self::ACCESS_PLATFORM;
}

bitflags! {
    /// Protocol feature bits of GET/SET_PROTOCOL_FEATURES (spec §4.2, bits 0–22).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct ProtocolFeatures: u64 {
        /// GET_QUEUE_NUM (bit 0).
        const MQ = 1 << 0;
        /// SET_LOG_BASE carries an fd and a log description and gets a reply (bit 1).
        const LOG_SHMFD = 1 << 1;
        /// SEND_RARP (bit 2).
        const RARP = 1 << 2;
        /// NEED_REPLY is honoured (bit 3).
        const REPLY_ACK = 1 << 3;
        /// NET_SET_MTU (bit 4).
        const MTU = 1 << 4;
        /// Back-end channel (bit 5; ex SLAVE_REQ).
        const BACKEND_REQ = 1 << 5;
        /// SET_VRING_ENDIAN (bit 6).
        const CROSS_ENDIAN = 1 << 6;
        /// Crypto sessions (bit 7).
        const CRYPTO_SESSION = 1 << 7;
        /// Postcopy (bit 8).
        const PAGEFAULT = 1 << 8;
        /// GET/SET_CONFIG (bit 9).
        const CONFIG = 1 << 9;
        /// Fds on back-end channel messages (bit 10; ex SLAVE_SEND_FD).
        const BACKEND_SEND_FD = 1 << 10;
        /// Host notifiers (bit 11).
        const HOST_NOTIFIER = 1 << 11;
        /// GET/SET_INFLIGHT_FD (bit 12).
        const INFLIGHT_SHMFD = 1 << 12;
        /// RESET_DEVICE (bit 13).
        const RESET_DEVICE = 1 << 13;
        /// In-band notifications (bit 14).
        const INBAND_NOTIFICATIONS = 1 << 14;
        /// ADD/REM_MEM_REG and GET_MAX_MEM_SLOTS (bit 15).
        const CONFIGURE_MEM_SLOTS = 1 << 15;
        /// SET/GET_STATUS (bit 16).
        const STATUS = 1 << 16;
        /// 40-byte memory regions with Xen fields (bit 17).
        const XEN_MMAP = 1 << 17;
        /// Shared objects (bit 18).
        const SHARED_OBJECT = 1 << 18;
        /// Device state transfer (bit 19).
        const DEVICE_STATE = 1 << 19;
        /// GET_VRING_BASE may suspend in-flight requests (bit 20).
        const GET_VRING_BASE_INFLIGHT = 1 << 20;
        /// Guest-physical addresses in place of user addresses (bit 21).
        const GPA_ADDRESSES = 1 << 21;
        /// VIRTIO Shared Memory Regions (bit 22).
        const SHMEM = 1 << 22;
    }
}

bitflags! {
    /// Flags of SET_VRING_ADDR (spec §3.5).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct VringAddrFlags: u32 {
        /// `VHOST_VRING_F_LOG`: log writes to the used ring (bit 0).
        const LOG = 1 << 0;
    }
}

bitflags! {
    /// Access permissions of an IOTLB message (spec §3.10).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct IotlbPerm: u8 {
        /// `VHOST_ACCESS_RO`.
        const READ = 0x1;
        /// `VHOST_ACCESS_WO`.
        const WRITE = 0x2;
        /// `VHOST_ACCESS_RW`.
        const READ_WRITE = 0x3;
    }
}

bitflags! {
    /// Flags of a SHMEM MMap request (spec §3.16).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct ShmemMapFlags: u64 {
        /// Map read-write (clear: read-only).
        const WRITABLE = 1 << 0;
    }
}

bitflags! {
    /// Xen mapping flags of a memory region with XEN_MMAP (spec §3.6).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct XenMmapFlags: u32 {
        /// Xen foreign mapping.
        const FOREIGN = 1 << 0;
        /// Xen grant mapping.
        const GRANT = 1 << 1;
        /// Map only the pieces needed.
        const NO_PREMAP = 1 << 8;
    }
}

bitflags! {
    /// The flag bits of the u64 payload of SET_VRING_KICK/CALL/ERR and of the vring area
    /// (spec §3.1, §3.12); bits 0–7 hold the index and are not flags.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct VringFdFlags: u64 {
        /// `VHOST_USER_VRING_NOFD_MASK`: the message carries no fd.
        const NOFD = 0x100;
    }
}

bitflags! {
    /// Virtio device status bits of SET_STATUS/GET_STATUS (virtqueue.md §7).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct DeviceStatus: u8 {
        /// The guest saw the device.
        const ACKNOWLEDGE = 1;
        /// The guest has a driver.
        const DRIVER = 2;
        /// The driver is ready.
        const DRIVER_OK = 4;
        /// Feature negotiation done.
        const FEATURES_OK = 8;
        /// The device needs a reset.
        const DEVICE_NEEDS_RESET = 64;
        /// The driver gave up.
        const FAILED = 128;
    }
}

/// The `flags` field of a config message: a **value**, not bits (spec §3.11; follow QEMU,
/// not rust-vmm's bit interpretation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConfigFlags {
    /// 0: a normal front-end write of writable fields (`VHOST_SET_CONFIG_TYPE_FRONTEND`).
    Frontend,
    /// 1: a write during live migration (`VHOST_SET_CONFIG_TYPE_MIGRATION`).
    Migration,
    /// Any other value, kept as received; the device decides whether to refuse it.
    Other(u32),
}

impl From<u32> for ConfigFlags {
    fn from(v: u32) -> Self {
        match v {
            0 => ConfigFlags::Frontend,
            1 => ConfigFlags::Migration,
            v => ConfigFlags::Other(v),
        }
    }
}

impl From<ConfigFlags> for u32 {
    fn from(f: ConfigFlags) -> u32 {
        match f {
            ConfigFlags::Frontend => 0,
            ConfigFlags::Migration => 1,
            ConfigFlags::Other(v) => v,
        }
    }
}

macro_rules! value_enum {
    ($(#[$m:meta])* $name:ident : $ty:ty { $( $(#[$vm:meta])* $v:ident = $n:literal, )+ }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vm])* $v = $n, )+
        }

        impl TryFrom<$ty> for $name {
            /// The unknown value.
            type Error = $ty;
            fn try_from(v: $ty) -> Result<Self, $ty> {
                match v {
                    $( $n => Ok($name::$v), )+
                    other => Err(other),
                }
            }
        }

        impl From<$name> for $ty {
            fn from(v: $name) -> $ty {
                v as $ty
            }
        }
    };
}

value_enum! {
    /// Type of an IOTLB message (spec §3.10).
    IotlbType: u8 {
        /// The back-end misses a translation (back-end → front-end).
        Miss = 1,
        /// Add a translation (front-end → back-end).
        Update = 2,
        /// Drop translations (front-end → back-end).
        Invalidate = 3,
        /// An access failed (back-end → front-end).
        AccessFail = 4,
    }
}

value_enum! {
    /// Direction of a device state transfer (spec §3.15).
    TransferDirection: u32 {
        /// Back-end → front-end (migration source).
        Save = 0,
        /// Front-end → back-end (migration destination).
        Load = 1,
    }
}

value_enum! {
    /// Migration phase of a device state transfer (spec §3.15).
    MigrationPhase: u32 {
        /// VM stopped, device suspended; the only defined phase.
        Stopped = 0,
    }
}

value_enum! {
    /// Byte order of a legacy ring, SET_VRING_ENDIAN's `num` (spec §5 id 23).
    VringEndian: u32 {
        /// Little-endian.
        Little = 0,
        /// Big-endian.
        Big = 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_match_spec() {
        assert_eq!(ProtocolFeatures::SHMEM.bits(), 0x40_0000);
        assert_eq!(ProtocolFeatures::GPA_ADDRESSES.bits(), 0x20_0000);
        assert_eq!(ProtocolFeatures::XEN_MMAP.bits(), 0x2_0000);
        assert_eq!(VirtioFeatures::PROTOCOL_FEATURES.bits(), 0x4000_0000);
        assert_eq!(VirtioFeatures::LOG_ALL.bits(), 0x400_0000);
        assert_eq!(VirtioFeatures::IOMMU_PLATFORM.bits(), 1 << 33);
        assert_eq!(VringFdFlags::NOFD.bits(), crate::wire::VRING_NOFD_MASK);
    }

    #[test]
    fn unknown_bits_are_kept() {
        let f = ProtocolFeatures::from_bits_retain(u64::MAX);
        assert_eq!(f.bits(), u64::MAX);
        let v = VirtioFeatures::from_bits_retain(1 << 63 | 1);
        assert_eq!(v.bits(), 1 << 63 | 1);
    }

    #[test]
    fn value_enums() {
        assert_eq!(ConfigFlags::from(0), ConfigFlags::Frontend);
        assert_eq!(ConfigFlags::from(1), ConfigFlags::Migration);
        assert_eq!(u32::from(ConfigFlags::from(7)), 7);
        assert_eq!(IotlbType::try_from(4), Ok(IotlbType::AccessFail));
        assert_eq!(IotlbType::try_from(0), Err(0));
        assert_eq!(TransferDirection::try_from(2), Err(2));
    }
}
