//! Errors of the OS layer ([`crate::os`]).
//!
//! The socket and eventfd helpers return [`std::io::Result`] so they compose
//! with std and mio; the failures that `io::Error` cannot name (too many fds,
//! truncated control data) travel inside the `io::Error` as an [`OsError`] and
//! are recovered with [`OsError::from_io`]. The mapping helpers return
//! [`OsError`] directly.

use std::io;

/// An error of the OS layer that a plain [`io::Error`] does not describe well.
///
/// Each variant carries the offending values, so a log line explains itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OsError {
    /// More fds were given to one `sendmsg` than the protocol allows
    /// (vhost-user spec §1: at most 8 per message).
    #[error("{count} fds in one message, at most {max} are allowed")]
    TooManyFds {
        /// The number of fds given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// Fds were given with an empty byte buffer; SCM_RIGHTS needs at least
    /// one byte of data to travel with.
    #[error("{count} fds to send without any data byte to carry them")]
    FdsWithoutData {
        /// The number of fds given.
        count: usize,
    },
    /// `recvmsg` reported `MSG_CTRUNC`: the peer sent more ancillary data than
    /// fits the receive buffer. The fds that did arrive have been closed and
    /// the bytes of that read are lost; the connection must be closed.
    #[error("control data truncated (MSG_CTRUNC) after {bytes} bytes: the peer sent too many fds")]
    ControlTruncated {
        /// The number of data bytes that came with the truncated read.
        bytes: usize,
    },
    /// A mapping of size 0 was asked for.
    #[error("{what}: a mapping of size 0")]
    ZeroSize {
        /// What was being mapped.
        what: &'static str,
    },
    /// `offset + size` (or `address + size`) does not fit in 64 bits or in
    /// the address space.
    #[error("{what}: offset or address {offset:#x} + size {size:#x} overflows")]
    SizeOverflow {
        /// What was being mapped.
        what: &'static str,
        /// The start (file offset or guest address).
        offset: u64,
        /// The size.
        size: u64,
    },
    /// The range to map extends past the end of the file (touching it would
    /// raise SIGBUS).
    #[error(
        "{what}: range {offset:#x}+{size:#x} extends past the end of the file ({file_size:#x} bytes)"
    )]
    PastEndOfFile {
        /// What was being mapped.
        what: &'static str,
        /// The file offset.
        offset: u64,
        /// The size.
        size: u64,
        /// The size of the file given by `fstat`.
        file_size: u64,
    },
    /// A file offset is not suitably aligned for `mmap`.
    #[error("{what}: offset {offset:#x} is not a multiple of {align:#x}")]
    UnalignedOffset {
        /// What was being mapped.
        what: &'static str,
        /// The offset.
        offset: u64,
        /// The required alignment.
        align: u64,
    },
    /// `mmap` of a shared range failed.
    #[error("mmap of {size:#x} bytes at file offset {offset:#x} failed: {source}")]
    MapFailed {
        /// The file offset.
        offset: u64,
        /// The size.
        size: u64,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// vm-memory could not map a guest memory region.
    #[error(
        "mapping guest region {guest_phys_addr:#x}+{memory_size:#x} (file offset {mmap_offset:#x}) failed: {source}"
    )]
    RegionMapFailed {
        /// The region's guest-physical address.
        guest_phys_addr: u64,
        /// The region's size.
        memory_size: u64,
        /// The region's offset in its fd.
        mmap_offset: u64,
        /// vm-memory's error.
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    /// Two memory regions overlap (in guest-physical or in front-end user
    /// address space).
    #[error(
        "{space} ranges overlap: {first_start:#x}+{first_size:#x} and {second_start:#x}+{second_size:#x}"
    )]
    RegionOverlap {
        /// `"guest-physical"` or `"user address"`.
        space: &'static str,
        /// Start of the first region.
        first_start: u64,
        /// Size of the first region.
        first_size: u64,
        /// Start of the second region.
        second_start: u64,
        /// Size of the second region.
        second_size: u64,
    },
    /// No mapped region matches the one to remove.
    #[error("no region at guest address {guest_phys_addr:#x} with size {memory_size:#x}")]
    NoSuchRegion {
        /// The requested guest-physical address.
        guest_phys_addr: u64,
        /// The requested size.
        memory_size: u64,
    },
    /// A system call failed.
    #[error("{op} failed: {source}")]
    Io {
        /// The operation (`"fstat"`, `"memfd_create"`, ...).
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl OsError {
    /// The [`OsError`] inside an [`io::Error`] returned by the socket or
    /// eventfd helpers, if there is one.
    pub fn from_io(err: &io::Error) -> Option<&OsError> {
        err.get_ref()?.downcast_ref::<OsError>()
    }

    pub(crate) fn io(op: &'static str, source: impl Into<io::Error>) -> Self {
        OsError::Io {
            op,
            source: source.into(),
        }
    }

    fn kind(&self) -> io::ErrorKind {
        match self {
            OsError::TooManyFds { .. }
            | OsError::FdsWithoutData { .. }
            | OsError::ZeroSize { .. }
            | OsError::SizeOverflow { .. }
            | OsError::PastEndOfFile { .. }
            | OsError::UnalignedOffset { .. }
            | OsError::RegionOverlap { .. }
            | OsError::NoSuchRegion { .. } => io::ErrorKind::InvalidInput,
            OsError::ControlTruncated { .. } => io::ErrorKind::InvalidData,
            OsError::MapFailed { source, .. } | OsError::Io { source, .. } => source.kind(),
            OsError::RegionMapFailed { .. } => io::ErrorKind::Other,
        }
    }
}

impl From<OsError> for io::Error {
    /// Wraps the error, with a kind that matches it (`InvalidInput` for bad
    /// arguments, `InvalidData` for a truncated control message).
    fn from(err: OsError) -> Self {
        io::Error::new(err.kind(), err)
    }
}

/// Why a back-end [`Server`](crate::backend::Server) or one of its
/// connections stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// A socket operation failed.
    #[error("{op} failed: {source}")]
    Io {
        /// The operation (`"accept"`, `"recvmsg"`, `"sendmsg"`, ...).
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The front-end broke the protocol in a way that ends the connection
    /// (bad framing, oversize message, wrong fd count, ...). Only that
    /// connection is closed; a server keeps accepting new ones.
    #[error("protocol error, connection closed: {0}")]
    Protocol(#[from] vhost_proto::session::FatalError),
    /// The socket path is in use by a listening server.
    #[error("{path}: a server is listening on this socket")]
    AddrInUse {
        /// The path.
        path: std::path::PathBuf,
    },
    /// The socket path exists and is not a socket: it is left alone.
    #[error("{path}: exists and is not a socket")]
    NotASocket {
        /// The path.
        path: std::path::PathBuf,
    },
}

impl ServeError {
    pub(crate) fn io(op: &'static str, source: impl Into<io::Error>) -> Self {
        ServeError::Io {
            op,
            source: source.into(),
        }
    }
}

/// Why a [`Frontend`](crate::frontend::Frontend) request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A socket operation failed.
    #[error("{request}: {op} failed: {source}")]
    Io {
        /// The request being sent or answered.
        request: vhost_proto::wire::FrontendReq,
        /// The operation.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The back-end did not answer within the reply timeout. The connection
    /// is out of step (a late reply may still come): close it.
    #[error("{request}: no reply within the timeout")]
    Timeout {
        /// The request.
        request: vhost_proto::wire::FrontendReq,
    },
    /// The back-end closed the connection.
    #[error("{request}: the back-end closed the connection")]
    Disconnected {
        /// The request.
        request: vhost_proto::wire::FrontendReq,
    },
    /// The back-end refused the request (a non-zero REPLY_ACK, or the
    /// request's own failure reply).
    #[error("{request}: refused by the back-end (value {value})")]
    Refused {
        /// The request.
        request: vhost_proto::wire::FrontendReq,
        /// The non-zero ack value (0 for a failure reply without one).
        value: u64,
    },
    /// The reply could not be decoded, or answers another request.
    #[error("{request}: bad reply: {reason}")]
    BadReply {
        /// The request.
        request: vhost_proto::wire::FrontendReq,
        /// What was wrong.
        reason: String,
    },
    /// The session refused to send the request: a feature it needs was not
    /// negotiated, the features are not a subset of the offer, or an earlier
    /// fatal error closed the session. Nothing was sent.
    #[error("{request}: not sent: {source}")]
    NotSent {
        /// The request.
        request: vhost_proto::wire::FrontendReq,
        /// Why.
        #[source]
        source: vhost_proto::session::ApiError,
    },
    /// The back-end broke the protocol (a malformed, unexpected or
    /// mismatched reply): the session is closed.
    #[error("{request}: protocol error, connection closed: {error}")]
    Protocol {
        /// The request whose reply was awaited.
        request: vhost_proto::wire::FrontendReq,
        /// What was wrong.
        #[source]
        error: vhost_proto::session::FatalError,
    },
    /// The request could not be encoded (a value out of its wire range).
    #[error("encoding failed: {0}")]
    Encode(#[from] vhost_proto::wire::EncodeError),
    /// Mapping shared memory or an eventfd operation failed.
    #[error(transparent)]
    Os(#[from] OsError),
    /// The driver side of a ring failed.
    #[error("driver ring: {0}")]
    Ring(#[from] vring::Error),
    /// The back-end did not complete the buffers waited for in time
    /// ([`DriverRing::collect`](crate::frontend::DriverRing::collect)). The
    /// `ready` completions that did come are kept in the ring: the next
    /// `collect` or `pop_used` returns them first.
    #[error("vring {index}: {ready} of {wanted} buffers completed before the timeout")]
    CallTimeout {
        /// The ring.
        index: u16,
        /// Completions that came (kept in the ring).
        ready: usize,
        /// Completions waited for.
        wanted: usize,
    },
    /// A guest memory access outside the guest's regions, or a free of a
    /// range that is not allocated.
    #[error("guest memory: {len} bytes at {gpa:#x} are outside guest memory or not allocated")]
    GuestMemory {
        /// The guest address.
        gpa: u64,
        /// The length.
        len: usize,
    },
    /// The guest memory allocator has no free range of this size and
    /// alignment.
    #[error("guest memory: no free {len:#x} bytes aligned to {align:#x}")]
    OutOfGuestMemory {
        /// The size asked for.
        len: u64,
        /// The alignment asked for.
        align: u64,
    },
    /// A ring does not fit the negotiation (its layout or ring features
    /// differ from what SET_FEATURES acked): the back-end would read it
    /// differently, so it is not started.
    #[error("vring {index}: {reason}")]
    RingMismatch {
        /// The ring.
        index: u16,
        /// What differs.
        reason: &'static str,
    },
}

/// Why a back-end channel operation failed (either end: the device's
/// [`BackendChannel`](crate::backend::BackendChannel) or the front-end's
/// [`FrontendChannel`](crate::frontend::FrontendChannel)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// A socket operation failed.
    #[error("back-end channel: {op} failed: {source}")]
    Io {
        /// The operation (`"sendmsg"`, `"recvmsg"`, ...).
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The peer closed the channel.
    #[error("back-end channel closed by the peer")]
    Disconnected,
    /// No answer within the reply timeout. The channel is out of step (a
    /// late answer may still come): drop it.
    #[error("{request}: no answer on the back-end channel within the timeout")]
    Timeout {
        /// The request.
        request: vhost_proto::wire::BackendReq,
    },
    /// The device is suspended (every ring stopped, spec §7.3): it must not
    /// send back-end requests. Nothing was sent.
    #[error("{request}: not sent, the device is suspended (all rings stopped)")]
    Suspended {
        /// The request.
        request: vhost_proto::wire::BackendReq,
    },
    /// The front-end answered non-zero.
    #[error("{request}: refused by the front-end (value {value})")]
    Refused {
        /// The request.
        request: vhost_proto::wire::BackendReq,
        /// The non-zero value.
        value: u64,
    },
    /// The session refused the call: a gate that was not negotiated, a stale
    /// answer token, or a channel closed by an earlier fatal error. Nothing
    /// was sent.
    #[error("back-end channel: {0}")]
    Api(#[from] vhost_proto::session::ApiError),
    /// The peer broke the protocol: the channel is closed.
    #[error("back-end channel: protocol error, channel closed: {0}")]
    Protocol(#[from] vhost_proto::session::FatalError),
}

impl ChannelError {
    pub(crate) fn io(op: &'static str, source: io::Error) -> Self {
        match source.kind() {
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => {
                ChannelError::Disconnected
            }
            _ => ChannelError::Io { op, source },
        }
    }
}
