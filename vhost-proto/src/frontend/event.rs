//! What the front-end connection reports to the VMM.

use crate::session::FatalError;
use crate::wire::{FrontendReply, FrontendReq};

use super::Reply;

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
    /// No reply came before the request's deadline
    /// ([`Connection::handle_timeout`](super::Connection::handle_timeout)). The connection
    /// is closed: [`ConnectionLost`](Self::ConnectionLost) follows.
    ReplyTimeout {
        /// The request.
        id: RequestId,
        /// Its code.
        request: FrontendReq,
    },
    /// The connection failed fatally; close it. No more events follow.
    ConnectionLost {
        /// Why.
        error: FatalError,
    },
}

impl<H> Event<H> {
    /// The typed reply of a completion: [`Reply`](Self::Reply) events as the request's
    /// [`Reply`] value, [`Acked`](Self::Acked) as [`Reply::Ack`]. Every other event (a
    /// NACK, a timeout, the end of the connection) is given back as `Err`.
    ///
    /// ```
    /// use vhost_proto::frontend::{Connection, Reply};
    /// use vhost_proto::wire::{DecodeContext, FrontendReply, FrontendReq, VirtioFeatures};
    /// use std::time::Instant;
    ///
    /// let mut vmm = Connection::<i32>::new();
    /// let id = vmm.get_features(Instant::now()).unwrap();
    /// let _ = vmm.poll_transmit();
    /// let r = FrontendReply::<i32>::U64 { value: 1 << 32 }
    ///     .encode(FrontendReq::GetFeatures, &DecodeContext::default()).unwrap();
    /// vmm.handle_input(&r.bytes, r.fds).unwrap();
    /// let (got, reply) = vmm.poll_event().unwrap().into_reply().unwrap();
    /// assert_eq!(got, id);
    /// assert_eq!(reply, Reply::Features(VirtioFeatures::VERSION_1));
    /// ```
    pub fn into_reply(self) -> Result<(RequestId, Reply<H>), Self> {
        match self {
            Event::Acked { id, .. } => Ok((id, Reply::Ack)),
            Event::Reply { id, request, reply } => match Reply::from_reply(request, reply) {
                Ok(r) => Ok((id, r)),
                Err(reply) => Err(Event::Reply { id, request, reply }),
            },
            other => Err(other),
        }
    }

    /// The request this event completes, if it completes one.
    pub fn id(&self) -> Option<RequestId> {
        match self {
            Event::Reply { id, .. }
            | Event::Acked { id, .. }
            | Event::Nacked { id, .. }
            | Event::ReplyTimeout { id, .. } => Some(*id),
            Event::ConnectionLost { .. } => None,
        }
    }
}
