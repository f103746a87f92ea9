//! virtio-blk request format (virtqueue spec §9): what a front-end test needs to drive a
//! real vhost-user-blk back-end through its own driver rings.

/// Bytes per sector: `capacity` and request `sector` fields count 512-byte sectors.
pub const SECTOR: u64 = 512;
/// Request header size: `{type le32, reserved le32, sector le64}`.
pub const HEADER_LEN: u32 = 16;

/// VIRTIO_BLK_T_IN: read sectors.
pub const T_IN: u32 = 0;
/// VIRTIO_BLK_T_OUT: write sectors.
pub const T_OUT: u32 = 1;
/// VIRTIO_BLK_T_FLUSH: flush the write cache.
pub const T_FLUSH: u32 = 4;

/// VIRTIO_BLK_S_OK.
pub const S_OK: u8 = 0;

/// VIRTIO_BLK_F_SEG_MAX (bit 2).
pub const F_SEG_MAX: u64 = 1 << 2;
/// VIRTIO_BLK_F_BLK_SIZE (bit 6).
pub const F_BLK_SIZE: u64 = 1 << 6;
/// VIRTIO_BLK_F_FLUSH (bit 9): needed for [`T_FLUSH`].
pub const F_FLUSH: u64 = 1 << 9;
/// VIRTIO_BLK_F_MQ (bit 12): `num_queues` in config space.
pub const F_MQ: u64 = 1 << 12;

/// The 16-byte request header.
pub fn header(kind: u32, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    h
}

/// `capacity` (le64 at offset 0 of the config space), in sectors.
pub fn capacity(config: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = config.get(0..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// `num_queues` (le16 at offset 34 of the config space, with VIRTIO_BLK_F_MQ).
pub fn num_queues(config: &[u8]) -> Option<u16> {
    let bytes: [u8; 2] = config.get(34..36)?.try_into().ok()?;
    Some(u16::from_le_bytes(bytes))
}

/// The content a test writes to `sector` (each sector distinct, and distinct per `seed`):
/// `len` bytes starting at that sector.
pub fn pattern(seed: u8, sector: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            let s = sector + (i as u64) / SECTOR;
            let x = (s as u32)
                .wrapping_mul(2_654_435_761)
                .wrapping_add((i as u32 % 512).wrapping_mul(31))
                .wrapping_add(u32::from(seed).wrapping_mul(0x9e37));
            (x >> 13) as u8 ^ seed
        })
        .collect()
}
