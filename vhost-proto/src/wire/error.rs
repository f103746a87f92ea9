//! Errors of the wire codec and how to tell their classes apart.
//!
//! A [`DecodeError`] is either **fatal** (the byte stream can no longer be trusted: the
//! decoder is poisoned and the connection must close) or **rejected** (the frame was
//! well-formed and fully consumed but its content is invalid or unknown: the session NACKs
//! it if NEED_REPLY was set and keeps decoding). [`DecodeError::class`] tells which.

use thiserror::Error;

use super::codes::ReqCode;

/// A request code outside the known code space (spec §5, §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("unknown {space} request code {code}")]
pub struct UnknownCode {
    /// Which code space (`"front-end"` or `"back-end"`).
    pub space: &'static str,
    /// The raw code.
    pub code: u32,
}

/// What the session must do after a [`DecodeError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Framing is broken: the decoder is poisoned, close the connection (spec §1, §9).
    Fatal,
    /// One well-framed message was refused; NACK it when `need_reply` and continue (spec §9).
    Rejected {
        /// Raw request code of the refused message.
        code: u32,
        /// Whether the sender set NEED_REPLY (answer with a non-zero u64).
        need_reply: bool,
    },
}

/// An error while decoding the byte stream.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fatal: the version bits of `flags` are not 1 (spec §2).
    #[error("header of request {code}: version {version} in flags {flags:#x}, expected 1")]
    BadVersion {
        /// Raw request code.
        code: u32,
        /// The flags word.
        flags: u32,
        /// Its version bits.
        version: u32,
    },
    /// Fatal: reserved flag bits 4–31 are set (spec §2).
    #[error("header of request {code}: reserved flag bits {flags:#x} set")]
    ReservedFlags {
        /// Raw request code.
        code: u32,
        /// The flags word.
        flags: u32,
    },
    /// Fatal: a request carries the REPLY flag (spec §2).
    #[error("request {code}: REPLY flag set on a request (flags {flags:#x})")]
    ReplyFlagOnRequest {
        /// Raw request code.
        code: u32,
        /// The flags word.
        flags: u32,
    },
    /// Fatal: a reply's flags are not `0x5` (spec §2) once an echoed NEED_REPLY is masked
    /// (libvhost-user echoes it; see `tests/data/transcripts/README.md`).
    #[error("reply to {code}: flags {flags:#x}, a reply must carry exactly 0x5")]
    BadReplyFlags {
        /// Raw request code.
        code: u32,
        /// The flags word.
        flags: u32,
    },
    /// Fatal: `size` exceeds the largest payload any message may have (spec §2).
    #[error("request {code}: payload size {size} exceeds the cap of {max} bytes")]
    PayloadTooLarge {
        /// Raw request code.
        code: u32,
        /// The header's size.
        size: u32,
        /// The cap.
        max: u32,
    },
    /// Fatal: `size` is outside the range this request allows (spec §11).
    #[error("{request}: payload size {size} outside {min}..={max} (spec §11)")]
    PayloadSize {
        /// The request.
        request: ReqCode,
        /// Whether this was a reply.
        reply: bool,
        /// The header's size.
        size: u32,
        /// Smallest allowed size.
        min: u32,
        /// Largest allowed size.
        max: u32,
    },
    /// Fatal: the message came with a number of fds its request does not allow (spec §5, §6, §9).
    #[error("{request}: {got} fds attached, expected {min}..={max}")]
    FdCount {
        /// The request.
        request: ReqCode,
        /// Whether this was a reply.
        reply: bool,
        /// Fds received.
        got: usize,
        /// Fewest allowed.
        min: usize,
        /// Most allowed.
        max: usize,
    },
    /// Fatal: fds arrived with a chunk in which no header begins (spec §1). They were dropped.
    #[error("{count} fds arrived with bytes in which no message header begins")]
    FdsWithoutHeader {
        /// Number of fds dropped.
        count: usize,
    },
    /// Fatal: a reply carries a code that is not a known request.
    #[error("reply with unknown request code {code}")]
    UnknownReply {
        /// Raw code.
        code: u32,
    },
    /// Fatal: the decoder already failed fatally; the connection must close.
    #[error("decoder poisoned by an earlier fatal error")]
    Poisoned,
    /// Rejected: a well-framed request with an unknown code; its payload was skipped and its
    /// fds dropped (spec §9: NACK it when NEED_REPLY is set).
    #[error(
        "unknown request code {code} (need_reply={need_reply}); payload of {size} bytes skipped"
    )]
    UnknownRequest {
        /// Raw code.
        code: u32,
        /// Whether NEED_REPLY was set.
        need_reply: bool,
        /// The skipped payload size.
        size: u32,
    },
    /// Rejected: a well-framed message whose payload breaks a rule; its fds were dropped.
    #[error("{request} (need_reply={need_reply}): {reason}")]
    InvalidPayload {
        /// The request.
        request: ReqCode,
        /// Whether NEED_REPLY was set.
        need_reply: bool,
        /// The rule broken.
        reason: PayloadError,
    },
}

impl DecodeError {
    /// What the session must do: close the connection, or NACK and continue.
    pub fn class(&self) -> ErrorClass {
        match *self {
            DecodeError::UnknownRequest {
                code, need_reply, ..
            } => ErrorClass::Rejected { code, need_reply },
            DecodeError::InvalidPayload {
                request,
                need_reply,
                ..
            } => ErrorClass::Rejected {
                code: request.raw(),
                need_reply,
            },
            _ => ErrorClass::Fatal,
        }
    }

    /// Whether the connection must close (the decoder is poisoned).
    pub fn is_fatal(&self) -> bool {
        self.class() == ErrorClass::Fatal
    }
}

/// A payload rule broken by a well-framed message (the reason of
/// [`DecodeError::InvalidPayload`]).
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PayloadError {
    /// A memory region of size 0 (spec §3.6).
    #[error("memory region {region} has size 0")]
    ZeroSizeRegion {
        /// Index of the region in the message.
        region: usize,
    },
    /// `start + size` overflows u64 (memory regions §3.6, SHMEM map §3.16, vring area §3.12, log §3.9).
    #[error("{field} {start:#x} + size {size:#x} overflows (entry {entry})")]
    RangeOverflow {
        /// Index of the entry in the message (0 when there is one).
        entry: usize,
        /// Which start field.
        field: &'static str,
        /// Its value.
        start: u64,
        /// The size.
        size: u64,
    },
    /// More memory regions than SET_MEM_TABLE allows (spec §3.7).
    #[error("{count} memory regions, at most {max}")]
    TooManyRegions {
        /// The count.
        count: u32,
        /// The limit.
        max: u32,
    },
    /// `size` does not match the declared number of memory regions (spec §3.7).
    #[error("{num_regions} regions need a payload of {expected} bytes, got {size}")]
    RegionCountMismatch {
        /// Declared count.
        num_regions: u32,
        /// Payload size expected for it.
        expected: u32,
        /// Payload size received.
        size: u32,
    },
    /// The config header's `size` does not match the payload length (spec §3.11).
    #[error("config size field {declared} but {actual} data bytes")]
    ConfigSizeMismatch {
        /// The `size` field.
        declared: u32,
        /// Data bytes in the payload.
        actual: u32,
    },
    /// `offset + size` of a config access is beyond the 4096-byte config space (spec §3.11).
    #[error("config range offset {offset} size {size} beyond 4096")]
    ConfigRange {
        /// The offset.
        offset: u32,
        /// The size.
        size: u32,
    },
    /// Bits other than the index (0–7) and the no-fd bit (8) are set (spec §3.1, §3.12).
    #[error("vring index word {value:#x} has reserved bits set")]
    VringIndexReserved {
        /// The u64.
        value: u64,
    },
    /// A field holds a value the spec does not define.
    #[error("{field} = {value:#x} is not a defined value")]
    InvalidValue {
        /// Which field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// A SET_DEVICE_STATE_FD reply both reports an error and returns an fd (spec §7.8).
    #[error("device state reply reports error {status} and returns an fd")]
    ErrorWithFd {
        /// The error status.
        status: u64,
    },
}

/// An error while encoding a message: the value cannot be put on the wire as asked.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// This reply type does not answer this request (spec §5, §6).
    #[error("{reply} is not a reply to {request}")]
    ReplyMismatch {
        /// The request answered.
        request: ReqCode,
        /// The reply variant.
        reply: &'static str,
    },
    /// More regions than one SET_MEM_TABLE can carry (spec §3.7).
    #[error("{count} memory regions, at most 8")]
    TooManyRegions {
        /// The count.
        count: usize,
    },
    /// Config data longer than the 4096-byte cap (spec §3.11).
    #[error("config data of {len} bytes, at most 4096")]
    ConfigTooLarge {
        /// The length.
        len: usize,
    },
    /// A region's Xen fields do not agree with the context's XEN_MMAP setting (spec §3.6).
    #[error("region Xen fields present={present} but XEN_MMAP negotiated={xen_mmap}")]
    XenMismatch {
        /// Whether the region has Xen fields.
        present: bool,
        /// The context's setting.
        xen_mmap: bool,
    },
}
