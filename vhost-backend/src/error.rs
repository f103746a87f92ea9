//! Errors of the OS layer ([`crate::os`]) and of the back-end channel.
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

    /// An OS call `op` failed.
    pub fn io(op: &'static str, source: impl Into<io::Error>) -> Self {
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

/// Why a back-end channel operation failed (either end: the device's
/// [`BackendChannel`](crate::BackendChannel) or the front-end's
/// `FrontendChannel` of `vhost-io-std`).
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
    /// A socket operation `op` failed (a closed peer is [`ChannelError::Disconnected`]).
    pub fn io(op: &'static str, source: io::Error) -> Self {
        match source.kind() {
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => {
                ChannelError::Disconnected
            }
            _ => ChannelError::Io { op, source },
        }
    }
}

/// Why a socket path could not be taken for listening.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
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
    /// A file-system or socket call failed.
    #[error("{path}: {op} failed: {source}")]
    Io {
        /// The path.
        path: std::path::PathBuf,
        /// The operation (`"stat"`, `"connect"`, `"unlink"`).
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Why a queue operation failed, or why a queue handler stopped its ring.
///
/// A handler that returns one of these from
/// [`QueueHandler::process`](crate::QueueHandler::process) (or any other handler method)
/// breaks its ring: the runner signals the ring's err fd and processes nothing more on it
/// until the front-end starts it again.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The ring's contents are malformed (guest memory is hostile), or the device asked
    /// for something the chain cannot give.
    #[error(transparent)]
    Ring(#[from] vring::Error),
    /// The driver offered a chain whose id is still in flight (a hostile or broken driver).
    #[error("queue {queue}: the driver offered chain {id} while it is still in flight")]
    ChainInFlight {
        /// The queue.
        queue: u16,
        /// The chain id.
        id: u16,
    },
    /// A chain was completed on a queue other than the one that handed it out.
    #[error("chain of queue {chain} completed on queue {queue}")]
    WrongQueue {
        /// The queue the chain came from.
        chain: u16,
        /// The queue it was completed on.
        queue: u16,
    },
    /// A chain of an earlier start of this ring was completed after the ring restarted.
    #[error("queue {queue}: chain from an earlier start of the ring")]
    StaleChain {
        /// The queue.
        queue: u16,
    },
    /// A chain id that is not in flight was completed.
    #[error("queue {queue}: chain {id} is not in flight")]
    NotInFlight {
        /// The queue.
        queue: u16,
        /// The chain id.
        id: u16,
    },
    /// The device's own I/O failed in a way that breaks the ring.
    #[error("queue {queue}: {what}: {source}")]
    Io {
        /// The queue.
        queue: u16,
        /// What was being done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The device broke the ring for a reason of its own.
    #[error("queue {queue}: {reason}")]
    Device {
        /// The queue.
        queue: u16,
        /// Why.
        reason: String,
    },
}
