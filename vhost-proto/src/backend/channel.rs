//! The back-end's side of the back-end channel (spec §6, §7.6): sends back-end requests,
//! gated on the negotiated protocol features, and matches the front-end's replies.

use std::collections::VecDeque;

use crate::session::requests::{Requests, match_reply, reply_decode_fatal, unexpected_input};
use crate::session::{ApiError, FatalError, Negotiated, Rule, Transmit};
use crate::wire::{BackendReply, BackendReplyDecoder, BackendReq, BackendRequest, Input};

/// Identifies a request sent with [`Channel::send`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// Most requests queued behind one that waits for its reply.
const MAX_QUEUED: usize = 64;

/// The completion of a back-end request.
#[derive(Debug)]
#[non_exhaustive]
pub enum ChannelEvent<H> {
    /// The front-end acked with 0.
    Acked {
        /// The request.
        id: RequestId,
        /// Its code.
        request: BackendReq,
    },
    /// The front-end answered non-zero (QEMU sends 1 on failure).
    Nacked {
        /// The request.
        id: RequestId,
        /// Its code.
        request: BackendReq,
        /// The value.
        value: u64,
    },
    /// BACKEND_SHARED_OBJECT_LOOKUP answered: the dma-buf fd on success.
    SharedObject {
        /// The request.
        id: RequestId,
        /// 0 = success.
        value: u64,
        /// The fd (never with a failure).
        fd: Option<H>,
    },
    /// The channel failed fatally; close it.
    ChannelLost {
        /// Why.
        error: FatalError,
    },
}

/// The back-end's side of the channel installed by SET_BACKEND_REQ_FD.
///
/// Build it from the main connection's negotiation
/// ([`Connection::negotiated`](super::Connection::negotiated)) when
/// [`Event::BackendChannel`](super::Event::BackendChannel) hands over the socket, and
/// refresh it with [`set_negotiated`](Self::set_negotiated) if features change. A suspended
/// device (all rings stopped, spec §7.3) must not send.
#[derive(Debug)]
pub struct Channel<H> {
    neg: Negotiated,
    decoder: BackendReplyDecoder<H>,
    requests: Requests<(RequestId, BackendReq), H>,
    events: VecDeque<ChannelEvent<H>>,
    closed: bool,
}

impl<H> Channel<H> {
    /// A channel for a session with this negotiation.
    pub fn new(neg: Negotiated) -> Self {
        Channel {
            neg,
            decoder: BackendReplyDecoder::new(neg.decode_context(false)),
            requests: Requests::default(),
            events: VecDeque::new(),
            closed: false,
        }
    }

    /// Updates the negotiation the gates check.
    pub fn set_negotiated(&mut self, neg: Negotiated) {
        self.neg = neg;
    }

    /// Whether the channel failed fatally.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Whether nothing is queued or waiting for a reply.
    pub fn is_idle(&self) -> bool {
        self.requests.is_idle()
    }

    /// Checks and queues a back-end request: its feature gate, BACKEND_REQ, and
    /// BACKEND_SEND_FD when it carries an fd (spec §6, §7.6). NEED_REPLY is set when
    /// REPLY_ACK is negotiated; SHARED_OBJECT_LOOKUP always gets a reply.
    pub fn send(&mut self, req: BackendRequest<H>) -> Result<RequestId, ApiError> {
        if self.closed {
            return Err(ApiError::Closed);
        }
        if self.requests.queued_len() >= MAX_QUEUED {
            return Err(ApiError::QueueFull);
        }
        let code = req.code();
        let fds = match &req {
            BackendRequest::VringHostNotifier { fd, .. } => usize::from(fd.is_some()),
            BackendRequest::ShmemMap { .. } => 1,
            _ => 0,
        };
        self.neg
            .check_backend(code, fds)
            .map_err(|rule: Rule| ApiError::NotNegotiated {
                request: code.into(),
                rule,
            })?;
        let lookup = code == BackendReq::SharedObjectLookup;
        let need_reply = !lookup && self.neg.reply_ack();
        let transmit = req
            .encode(need_reply, &self.neg.decode_context(false))
            .map_err(ApiError::Encode)?
            .into();
        let id = RequestId(self.requests.next_id());
        self.requests
            .push((id, code), lookup || need_reply, transmit);
        Ok(id)
    }

    /// The next message to write.
    pub fn poll_transmit(&mut self) -> Option<Transmit<H>> {
        self.requests.poll_transmit()
    }

    /// The next completion.
    pub fn poll_event(&mut self) -> Option<ChannelEvent<H>> {
        self.events.pop_front()
    }

    fn fail(&mut self, e: FatalError) -> FatalError {
        if !self.closed {
            self.closed = true;
            self.requests.clear();
            self.events
                .push_back(ChannelEvent::ChannelLost { error: e.clone() });
        }
        e
    }

    /// Feeds the front-end's replies. Every error is fatal.
    pub fn handle_input(&mut self, bytes: &[u8], fds: Vec<H>) -> Result<(), FatalError> {
        if self.closed {
            return Err(FatalError::Closed);
        }
        let mut input = Input::new(bytes, fds);
        loop {
            let awaited = self.requests.outstanding();
            if awaited.is_none() && !input.is_empty() {
                return Err(self.fail(unexpected_input(&input)));
            }
            match self.decoder.decode(&mut input) {
                Ok(Some(msg)) => {
                    let (id, expected) = match match_reply(awaited, |(_, c)| c, msg.code) {
                        Ok(w) => w,
                        Err(e) => return Err(self.fail(e)),
                    };
                    let ev = match msg.message {
                        BackendReply::SharedObjectLookup { value, fd } => {
                            ChannelEvent::SharedObject { id, value, fd }
                        }
                        BackendReply::U64 { value: 0 } => ChannelEvent::Acked {
                            id,
                            request: expected,
                        },
                        BackendReply::U64 { value } => ChannelEvent::Nacked {
                            id,
                            request: expected,
                            value,
                        },
                    };
                    self.events.push_back(ev);
                    self.requests.complete();
                    self.requests.pump();
                }
                Ok(None) => return Ok(()),
                Err(e) => return Err(self.fail(reply_decode_fatal(e))),
            }
        }
    }
}
