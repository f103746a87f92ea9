//! The crate's error type.

/// Which ring structure an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingArea {
    /// The descriptor table (split) or descriptor ring (packed).
    Descriptors,
    /// The available ring (split) or driver event-suppression area (packed).
    Driver,
    /// The used ring (split) or device event-suppression area (packed).
    Device,
}

/// Everything that can go wrong in the ring engine.
///
/// Errors about ring setup and about malformed chains carry the offending
/// values so that a log line explains itself. A malformed chain is a fatal
/// error of its queue (virtqueue spec §2.11): the device should stop
/// processing the queue and signal its error fd; it must not complete the
/// chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- guest memory ----
    /// A guest range is not entirely inside one mapped memory region.
    #[error("guest range {addr:#x}+{len:#x} is not mapped")]
    Untranslatable {
        /// Guest address.
        addr: u64,
        /// Length in bytes.
        len: u64,
    },
    /// `addr + len` overflows the 64-bit address space.
    #[error("guest range {addr:#x}+{len:#x} overflows")]
    AddressOverflow {
        /// Guest address.
        addr: u64,
        /// Length in bytes.
        len: u64,
    },
    /// An access outside a translated slice.
    #[error("access of {access} bytes at offset {offset} outside slice {addr:#x}+{len:#x}")]
    OutOfBounds {
        /// Guest address of the slice.
        addr: u64,
        /// Length of the slice.
        len: u64,
        /// Offset of the access.
        offset: u64,
        /// Length of the access.
        access: u64,
    },

    // ---- ring setup ----
    /// The queue size is zero, above 32768, or (split) not a power of two.
    #[error("invalid queue size {size}")]
    InvalidQueueSize {
        /// The size asked for.
        size: u32,
    },
    /// A ring area's guest or host address is not aligned as the spec requires.
    #[error("{area:?} area at {addr:#x} is not {align}-byte aligned")]
    Misaligned {
        /// Which area.
        area: RingArea,
        /// Its guest address.
        addr: u64,
        /// The alignment required.
        align: usize,
    },
    /// A ring area is not inside mapped guest memory.
    #[error("{area:?} area {addr:#x}+{len:#x} is not mapped")]
    RingUnmapped {
        /// Which area.
        area: RingArea,
        /// Its guest address.
        addr: u64,
        /// Its length.
        len: u64,
    },
    /// A saved ring position does not fit the queue (index ≥ size, reserved
    /// bits set).
    #[error("invalid ring position: {reason}")]
    InvalidPosition {
        /// What is wrong with it.
        reason: &'static str,
    },

    // ---- available ring / malformed chains (virtqueue spec §2.11) ----
    /// The driver's available index moved by more than the queue size.
    #[error("avail idx {avail_idx} is {} entries ahead of {last_avail}, queue size {size}", avail_idx.wrapping_sub(*last_avail))]
    AvailIndexJump {
        /// The avail idx read from the ring.
        avail_idx: u16,
        /// The device's last seen avail idx.
        last_avail: u16,
        /// The queue size.
        size: u16,
    },
    /// A chain head taken from the available ring is not a descriptor index.
    #[error("chain head {head} out of range for queue size {size}")]
    HeadOutOfRange {
        /// The head index.
        head: u16,
        /// The queue size.
        size: u16,
    },
    /// A descriptor's `next` is outside its table.
    #[error("descriptor next {next} out of range for table of {size}")]
    NextOutOfRange {
        /// The next index.
        next: u16,
        /// Number of entries of the table.
        size: u32,
    },
    /// A chain has more descriptors than its table (a loop, or too long).
    #[error("chain longer than {max} descriptors (loop?)")]
    ChainTooLong {
        /// The limit.
        max: u32,
    },
    /// INDIRECT used although the feature was not negotiated.
    #[error("indirect descriptor without VIRTIO_F_INDIRECT_DESC")]
    IndirectNotNegotiated,
    /// An INDIRECT descriptor inside an indirect table.
    #[error("nested indirect descriptor")]
    NestedIndirect,
    /// INDIRECT and NEXT set on the same descriptor, or (packed) an indirect
    /// descriptor inside a NEXT-linked list.
    #[error("indirect descriptor combined with NEXT")]
    IndirectWithNext,
    /// An indirect table whose length is zero or not a multiple of 16.
    #[error("indirect table length {len} is zero or not a multiple of 16")]
    IndirectLength {
        /// The length.
        len: u32,
    },
    /// A device-readable descriptor after a device-writable one.
    #[error("readable descriptor after a writable one")]
    ReadableAfterWritable,
    /// The total length of a chain exceeds 2^32 bytes.
    #[error("chain length overflows 2^32 bytes")]
    ChainLengthOverflow,
    /// A packed buffer id (or a used id seen by a driver) is out of range.
    #[error("buffer id {id} out of range for queue size {size}")]
    BufferIdOutOfRange {
        /// The id.
        id: u16,
        /// The queue size.
        size: u16,
    },
    /// (Packed) A descriptor inside a NEXT-linked list is not available
    /// although the list's head is: the driver publishes the head last, so
    /// the list is malformed (virtqueue spec §3.4).
    #[error("descriptor in slot {slot} of a packed list is not available")]
    DescriptorNotAvailable {
        /// The ring slot.
        slot: u16,
    },
    /// (Packed) The device reused a buffer's ring slots for used descriptors
    /// (it completed later buffers first) before the buffer was walked.
    #[error("buffer {id} was overwritten in the ring before it was walked")]
    ChainOverwritten {
        /// The buffer id.
        id: u16,
    },
    /// A used element names a buffer the driver did not make available.
    #[error("used id {id} is not outstanding")]
    UnknownUsedId {
        /// The id.
        id: u16,
    },
    /// A device-readable descriptor was offered for writing or the reverse.
    #[error("no room: the chain's {what} part has {available} bytes, {needed} needed")]
    NoRoom {
        /// "readable" or "writable".
        what: &'static str,
        /// Bytes left in that part.
        available: u64,
        /// Bytes asked for.
        needed: u64,
    },
    /// A chain from a split queue given to a packed one, or the reverse
    /// (`vring::queue`).
    #[error("chain of the other ring layout")]
    LayoutMismatch,
    /// A driver asked to add a buffer with no elements.
    #[error("a buffer needs at least one element")]
    EmptyBuffer,
    /// The driver has no free descriptors for the buffer it wants to add.
    #[error("ring full: {needed} descriptors needed, {free} free")]
    RingFull {
        /// Descriptors needed.
        needed: u16,
        /// Descriptors free.
        free: u16,
    },
    /// The inflight region is too small, or its header is inconsistent.
    #[error("invalid inflight region: {reason}")]
    InvalidInflight {
        /// What is wrong.
        reason: &'static str,
    },
}
