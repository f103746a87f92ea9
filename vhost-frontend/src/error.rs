//! The front-end toolkit's error type.

use std::io;

use vhost_backend::OsError;

/// Why a [`Frontend`](crate::Frontend) request failed.
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
    /// ([`DriverRing::collect`](crate::DriverRing::collect)). The
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
