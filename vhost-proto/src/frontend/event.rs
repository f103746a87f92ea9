//! What the front-end connection reports to the VMM.

use crate::session::FatalError;
use crate::wire::{FrontendReply, FrontendReq};

/// Identifies a request sent with [`Connection::send`](super::Connection::send) so its
/// completion can be matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// The completion of a request, or the end of the connection.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<H> {
    /// A request with its own reply body got it (GET_FEATURES, GET_VRING_BASE, GET_CONFIG,
    /// ...). Failure forms (an empty GET_CONFIG reply, a GET_INFLIGHT_FD without fd, ...) are
    /// replies too; the typed reply says which.
    Reply {
        /// The request.
        id: RequestId,
        /// Its code.
        request: FrontendReq,
        /// The validated reply.
        reply: FrontendReply<H>,
    },
    /// A request sent with NEED_REPLY was acked with 0.
    Acked {
        /// The request.
        id: RequestId,
        /// Its code.
        request: FrontendReq,
    },
    /// A request sent with NEED_REPLY was NACKed (QEMU stops using the connection then;
    /// the decision is the VMM's).
    Nacked {
        /// The request.
        id: RequestId,
        /// Its code.
        request: FrontendReq,
        /// The non-zero ack value.
        value: u64,
    },
    /// The connection failed fatally; close it. No more events follow.
    ConnectionLost {
        /// Why.
        error: FatalError,
    },
}
