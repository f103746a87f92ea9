//! Descriptors as the device sees them, independent of the ring layout.

/// Descriptor flag: the buffer continues (split: at `next`; packed: in the
/// next ring slot). Virtqueue spec §2.2, §3.2.
pub const DESC_F_NEXT: u16 = 0x1;
/// Descriptor flag: the buffer is device-writable.
pub const DESC_F_WRITE: u16 = 0x2;
/// Descriptor flag: the buffer holds a table of descriptors.
pub const DESC_F_INDIRECT: u16 = 0x4;
/// Packed descriptor flag: the AVAIL bit (bit 7). Virtqueue spec §3.2.
pub const DESC_F_AVAIL: u16 = 1 << 7;
/// Packed descriptor flag: the USED bit (bit 15).
pub const DESC_F_USED: u16 = 1 << 15;

/// Size of one descriptor in bytes, split and packed alike.
pub const DESC_SIZE: usize = 16;

/// One element of a buffer (one descriptor after indirect tables have been
/// followed): where it is in guest memory and whether the device may write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// Guest (or IOVA) address of the element.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Whether the element is device-writable (otherwise device-readable).
    pub writable: bool,
}

/// An iterator over the elements of one buffer, yielding a typed error (and
/// then nothing more) when the chain is malformed.
pub trait DescriptorIter: Iterator<Item = Result<Descriptor, crate::Error>> {}

impl<T: Iterator<Item = Result<Descriptor, crate::Error>>> DescriptorIter for T {}
