//! The virtio-blk config space (virtqueue.md §9.1) and the device's feature bits.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The virtio-blk feature bits (virtqueue.md §9.1), as raw bits of the 64-bit feature
/// word.
pub mod feature {
    /// VIRTIO_BLK_F_SIZE_MAX: `size_max` is valid.
    pub const SIZE_MAX: u64 = 1 << 1;
    /// VIRTIO_BLK_F_SEG_MAX: `seg_max` is valid.
    pub const SEG_MAX: u64 = 1 << 2;
    /// VIRTIO_BLK_F_GEOMETRY.
    pub const GEOMETRY: u64 = 1 << 4;
    /// VIRTIO_BLK_F_RO: the disk is read-only.
    pub const RO: u64 = 1 << 5;
    /// VIRTIO_BLK_F_BLK_SIZE: `blk_size` is valid.
    pub const BLK_SIZE: u64 = 1 << 6;
    /// VIRTIO_BLK_F_FLUSH: FLUSH requests.
    pub const FLUSH: u64 = 1 << 9;
    /// VIRTIO_BLK_F_TOPOLOGY: the topology fields are valid.
    pub const TOPOLOGY: u64 = 1 << 10;
    /// VIRTIO_BLK_F_CONFIG_WCE: `writeback` is writable.
    pub const CONFIG_WCE: u64 = 1 << 11;
    /// VIRTIO_BLK_F_MQ: `num_queues` is valid.
    pub const MQ: u64 = 1 << 12;
    /// VIRTIO_BLK_F_DISCARD: DISCARD requests, with the discard limits.
    pub const DISCARD: u64 = 1 << 13;
    /// VIRTIO_BLK_F_WRITE_ZEROES: WRITE_ZEROES requests, with their limits.
    pub const WRITE_ZEROES: u64 = 1 << 14;
    /// VIRTIO_BLK_F_LIFETIME.
    pub const LIFETIME: u64 = 1 << 15;
    /// VIRTIO_BLK_F_SECURE_ERASE.
    pub const SECURE_ERASE: u64 = 1 << 16;
    /// VIRTIO_BLK_F_ZONED.
    pub const ZONED: u64 = 1 << 17;

    /// Names of the device-specific bits (0–23), for the probe and logs.
    pub const NAMES: &[(u64, &str)] = &[
        (1 << 0, "BARRIER"),
        (SIZE_MAX, "SIZE_MAX"),
        (SEG_MAX, "SEG_MAX"),
        (GEOMETRY, "GEOMETRY"),
        (RO, "RO"),
        (BLK_SIZE, "BLK_SIZE"),
        (1 << 7, "SCSI"),
        (FLUSH, "FLUSH"),
        (TOPOLOGY, "TOPOLOGY"),
        (CONFIG_WCE, "CONFIG_WCE"),
        (MQ, "MQ"),
        (DISCARD, "DISCARD"),
        (WRITE_ZEROES, "WRITE_ZEROES"),
        (LIFETIME, "LIFETIME"),
        (SECURE_ERASE, "SECURE_ERASE"),
        (ZONED, "ZONED"),
    ];
}

/// Offset of the `writeback` byte, the one field a driver writes (CONFIG_WCE).
pub const WRITEBACK_OFFSET: u32 = 32;

/// The config space size the device serves: the whole 1.3 layout (96 bytes, the zoned
/// part zero), so that a front-end asking for any of the sizes QEMU versions use (60, 72
/// or 96) is answered.
pub const CONFIG_SIZE: u32 = 96;

/// The virtio-blk config space, little-endian, 96 bytes (virtqueue.md §9.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct BlkConfig {
    /// Disk size in 512-byte sectors.
    pub capacity: U64,
    /// Largest segment (descriptor) size in bytes (SIZE_MAX).
    pub size_max: U32,
    /// Most data segments in one request (SEG_MAX).
    pub seg_max: U32,
    /// Geometry: cylinders (GEOMETRY, not offered).
    pub cylinders: U16,
    /// Geometry: heads.
    pub heads: u8,
    /// Geometry: sectors per track.
    pub sectors: u8,
    /// Logical block size in bytes (BLK_SIZE).
    pub blk_size: U32,
    /// Physical block = logical block << this (TOPOLOGY).
    pub physical_block_exp: u8,
    /// Offset of the first aligned logical block.
    pub alignment_offset: u8,
    /// Suggested minimum I/O size in logical blocks.
    pub min_io_size: U16,
    /// Optimal I/O size in logical blocks.
    pub opt_io_size: U32,
    /// 1: write-back cache (FLUSH makes writes durable); 0: write-through.
    pub writeback: u8,
    /// Unused.
    pub unused0: u8,
    /// Number of request queues (MQ).
    pub num_queues: U16,
    /// Most sectors in one discard segment (DISCARD).
    pub max_discard_sectors: U32,
    /// Most segments in one DISCARD.
    pub max_discard_seg: U32,
    /// Discard alignment in sectors.
    pub discard_sector_alignment: U32,
    /// Most sectors in one write-zeroes segment (WRITE_ZEROES).
    pub max_write_zeroes_sectors: U32,
    /// Most segments in one WRITE_ZEROES.
    pub max_write_zeroes_seg: U32,
    /// 1: write-zeroes with UNMAP may deallocate.
    pub write_zeroes_may_unmap: u8,
    /// Unused.
    pub unused1: [u8; 3],
    /// Secure erase limits (SECURE_ERASE, not offered).
    pub max_secure_erase_sectors: U32,
    /// Secure erase segments.
    pub max_secure_erase_seg: U32,
    /// Secure erase alignment.
    pub secure_erase_sector_alignment: U32,
    /// Zoned characteristics (ZONED, not offered).
    pub zoned: [u8; 24],
}

impl BlkConfig {
    /// Decodes the first bytes of a config space (at least 60: the fields up to
    /// `write_zeroes_may_unmap`); the rest reads as zero. `None` if shorter.
    pub fn decode(bytes: &[u8]) -> Option<BlkConfig> {
        if bytes.len() < 60 {
            return None;
        }
        let mut full = [0u8; CONFIG_SIZE as usize];
        let n = bytes.len().min(full.len());
        full.get_mut(..n)?.copy_from_slice(bytes.get(..n)?);
        BlkConfig::read_from_bytes(&full).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::FromZeros;

    #[test]
    fn layout_matches_the_spec_offsets() {
        assert_eq!(size_of::<BlkConfig>(), CONFIG_SIZE as usize);
        let mut c = BlkConfig::new_zeroed();
        c.writeback = 0xaa;
        c.num_queues = 0x1234.into();
        c.write_zeroes_may_unmap = 0x55;
        c.blk_size = 0x0102_0304.into();
        let b = c.as_bytes();
        assert_eq!(b[WRITEBACK_OFFSET as usize], 0xaa);
        assert_eq!(&b[34..36], &[0x34, 0x12]);
        assert_eq!(b[56], 0x55);
        assert_eq!(&b[20..24], &[4, 3, 2, 1]);
        assert_eq!(
            BlkConfig::decode(&b[..60]).unwrap().num_queues.get(),
            0x1234
        );
        assert!(BlkConfig::decode(&b[..59]).is_none());
    }
}
