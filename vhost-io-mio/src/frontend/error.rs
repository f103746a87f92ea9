//! Why a front-end session, or its handshake, failed.

use std::io;

use vhost_proto::frontend::RequestId;
use vhost_proto::session::{ApiError, FatalError};
use vhost_proto::wire::{FrontendReq, VirtioFeatures};

/// The one error type of the mio front-end.
///
/// [`NotSent`](Self::NotSent) and [`NotRegistered`](Self::NotRegistered) leave the session
/// as it was; every other variant means the session is closed (its fds deregistered, the
/// socket shut down): replies that arrived before the failure can still be taken with
/// [`FrontendSession::poll_event`](super::FrontendSession::poll_event), then drop it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrontendError {
    /// A system call failed.
    #[error("{op} failed: {source}")]
    Io {
        /// The operation (`"recvmsg"`, `"sendmsg"`, `"epoll_ctl"`, `"eventfd"`, ...).
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The back-end closed the connection (end of file, reset, broken pipe).
    #[error("the back-end closed the connection")]
    Disconnected,
    /// No reply to `request` came before its deadline
    /// ([`FrontendSession::handle_timeout`](super::FrontendSession::handle_timeout)).
    #[error("no reply to {request} before its deadline")]
    ReplyTimeout {
        /// The oldest request that timed out.
        id: RequestId,
        /// Its code.
        request: FrontendReq,
    },
    /// The back-end broke the protocol (malformed, unexpected or mismatched reply, wrong fd
    /// count, ...): the protocol core cut it off.
    #[error("protocol error, connection closed: {0}")]
    Protocol(FatalError),
    /// A reply passed the core's checks but does not fit its request's typed reply.
    #[error("unexpected reply to {request}")]
    UnexpectedReply {
        /// The request.
        request: FrontendReq,
    },
    /// The request was not sent (not negotiated, invalid argument, queue full, ...); the
    /// session is unchanged.
    #[error("request not sent: {0}")]
    NotSent(#[source] ApiError),
    /// The session is not registered with a mio `Registry` (register it first).
    #[error("the session is not registered with a mio registry")]
    NotRegistered,
    /// The session was closed by an earlier error or by [`close`](super::FrontendSession::close).
    #[error("the session is closed")]
    Closed,
    /// Handshake: the back-end NACKed a request (or failed it with a non-zero status).
    #[error("the back-end refused {request} (value {value})")]
    Refused {
        /// The request.
        id: RequestId,
        /// Its code.
        request: FrontendReq,
        /// The NACK value.
        value: u64,
    },
    /// Handshake: the back-end does not offer features the rings were laid out for.
    #[error("the back-end does not offer the required features {missing:?}")]
    Unsupported {
        /// What is missing from the offer.
        missing: VirtioFeatures,
    },
    /// Handshake: a ring index is not below the back-end's queue count (GET_QUEUE_NUM), or
    /// above 255 (the wire field of SET_VRING_KICK/CALL/ERR).
    #[error("ring {index} does not exist on the back-end ({queues} queues)")]
    NoSuchRing {
        /// The ring.
        index: u16,
        /// The back-end's queue count (`u64::MAX` when the index is above 255).
        queues: u64,
    },
}

impl FrontendError {
    pub(crate) fn io(op: &'static str, source: impl Into<io::Error>) -> Self {
        FrontendError::Io {
            op,
            source: source.into(),
        }
    }

    /// Whether the session is still usable after this error ([`NotSent`](Self::NotSent),
    /// [`NotRegistered`](Self::NotRegistered)).
    pub fn is_recoverable(&self) -> bool {
        matches!(
            self,
            FrontendError::NotSent(_) | FrontendError::NotRegistered
        )
    }
}
