//! The front-end's view of the main socket: queues requests, gates them on what was
//! negotiated, matches replies, tracks negotiation.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::session::requests::{Requests, match_reply, reply_decode_fatal, unexpected_input};
use crate::session::{
    ApiError, FatalError, MAX_BUFFERED_INPUT, Negotiated, Rule, Transmit, has_reply_body,
};
use crate::wire::{
    DecodeError, FrontendReply, FrontendReplyDecoder, FrontendReq, FrontendRequest, Input,
    ProtocolFeatures, VirtioFeatures,
};

use super::event::{Event, RequestId};
use super::reply_check::{self, Detail};

/// Most requests queued behind one that waits for its reply.
pub const MAX_QUEUED_REQUESTS: usize = 64;

/// What a sent request waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Expect {
    Nothing,
    Ack,
    Body,
}

/// A sent request until it completes.
#[derive(Clone, Copy, Debug)]
pub(super) struct Outstanding {
    pub(super) id: RequestId,
    pub(super) code: FrontendReq,
    pub(super) expect: Expect,
    detail: Detail,
    /// When its reply is due (requests that wait for one and were sent with a time).
    pub(super) deadline: Option<Instant>,
}

/// How long a request waits for its reply unless told otherwise
/// ([`Connection::set_reply_timeout`]).
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// The front-end's side of the main socket.
///
/// [`send`](Self::send) checks a request against what was negotiated (a request whose
/// feature is missing is an [`ApiError::NotNegotiated`] and nothing is sent), sets
/// NEED_REPLY when REPLY_ACK is negotiated (always on POSTCOPY_LISTEN, as QEMU does), and
/// queues it. One request that waits for a reply is on the wire at a time; later ones wait.
/// Replies are validated strictly: any deviation is a [`FatalError`].
///
/// ```
/// use vhost_proto::frontend::{Connection, Event};
/// use vhost_proto::wire::{FrontendReply, FrontendReq, FrontendRequest, DecodeContext};
///
/// let mut vmm = Connection::<i32>::new();
/// let id = vmm.send(FrontendRequest::GetFeatures).unwrap();
/// let out = vmm.poll_transmit().unwrap();
/// assert_eq!(out.bytes.len(), 12);
/// // The back-end answers with its features.
/// let reply = FrontendReply::<i32>::U64 { value: 1 << 32 }
///     .encode(FrontendReq::GetFeatures, &DecodeContext::default()).unwrap();
/// vmm.handle_input(&reply.bytes, reply.fds).unwrap();
/// assert!(matches!(vmm.poll_event(), Some(Event::Reply { id: got, .. }) if got == id));
/// assert_eq!(vmm.negotiated().offered_features.bits(), 1 << 32);
/// ```
#[derive(Debug)]
pub struct Connection<H> {
    neg: Negotiated,
    features_known: bool,
    protocol_known: bool,
    queue_num: Option<u64>,
    max_mem_slots: Option<u64>,
    postcopy: bool,
    postcopy_advised: bool,
    memory_ack_due: bool,
    decoder: FrontendReplyDecoder<H>,
    pub(super) requests: Requests<Outstanding, H>,
    pub(super) events: VecDeque<Event<H>>,
    closed: bool,
    pub(super) reply_timeout: Option<Duration>,
}

impl<H> Default for Connection<H> {
    fn default() -> Self {
        Self::new()
    }
}

impl<H> Connection<H> {
    /// A connection at the start of a session.
    pub fn new() -> Self {
        Connection {
            neg: Negotiated::default(),
            features_known: false,
            protocol_known: false,
            queue_num: None,
            max_mem_slots: None,
            postcopy: false,
            postcopy_advised: false,
            memory_ack_due: false,
            decoder: FrontendReplyDecoder::new(Default::default()),
            requests: Requests::default(),
            events: VecDeque::new(),
            closed: false,
            reply_timeout: Some(DEFAULT_REPLY_TIMEOUT),
        }
    }

    /// What was offered and negotiated so far.
    pub fn negotiated(&self) -> &Negotiated {
        &self.neg
    }

    /// The GET_QUEUE_NUM answer, once received.
    pub fn queue_num(&self) -> Option<u64> {
        self.queue_num
    }

    /// The GET_MAX_MEM_SLOTS answer, once received.
    pub fn max_mem_slots(&self) -> Option<u64> {
        self.max_mem_slots
    }

    /// Whether postcopy listens (POSTCOPY_LISTEN acked, no POSTCOPY_END yet).
    pub fn postcopy(&self) -> bool {
        self.postcopy
    }

    /// Whether nothing is queued or waiting for a reply.
    pub fn is_idle(&self) -> bool {
        self.requests.is_idle()
    }

    /// Whether the connection failed fatally.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// How many input bytes may be fed now.
    pub fn input_room(&self) -> usize {
        if self.closed { 0 } else { MAX_BUFFERED_INPUT }
    }

    /// Checks, encodes and queues a request; returns its id for matching the completion.
    /// Requests without a reply (and without NEED_REPLY) complete when transmitted.
    ///
    /// A request sent without a time has no reply deadline; use [`send_at`](Self::send_at)
    /// or the typed helpers for one.
    pub fn send(&mut self, req: FrontendRequest<H>) -> Result<RequestId, ApiError> {
        self.send_with_deadline(req, None)
    }

    /// Like [`send`](Self::send), at time `now`: a request that waits for a reply (a reply
    /// body, or an ack under REPLY_ACK) must get it by `now` + the
    /// [reply timeout](Self::set_reply_timeout), queue time included (see
    /// [`poll_timeout`](Self::poll_timeout)).
    pub fn send_at(
        &mut self,
        now: Instant,
        req: FrontendRequest<H>,
    ) -> Result<RequestId, ApiError> {
        self.send_with_deadline(req, Some(now))
    }

    fn send_with_deadline(
        &mut self,
        req: FrontendRequest<H>,
        now: Option<Instant>,
    ) -> Result<RequestId, ApiError> {
        if self.closed {
            return Err(ApiError::Closed);
        }
        if self.requests.queued_len() >= MAX_QUEUED_REQUESTS {
            return Err(ApiError::QueueFull);
        }
        let code = req.code();
        let not = |rule: Rule| ApiError::NotNegotiated {
            request: code.into(),
            rule,
        };
        self.neg.check_frontend(code).map_err(not)?;
        // Memory requests are framed by the postcopy state; do not queue one behind a
        // request that switches it (spec §7.7), or the two ends would frame it differently.
        let memory = matches!(code, FrontendReq::SetMemTable | FrontendReq::AddMemReg);
        let switching =
            |c: FrontendReq| matches!(c, FrontendReq::PostcopyListen | FrontendReq::PostcopyEnd);
        if memory
            && (self
                .requests
                .outstanding()
                .is_some_and(|o| switching(o.code))
                || self.requests.queued().any(|q| switching(q.code)))
        {
            return Err(not(Rule::PostcopyOrder {
                state: "a postcopy switch is in flight",
            }));
        }
        let postcopy_ack = matches!(
            req,
            FrontendRequest::SetMemTablePostcopyAck { .. }
                | FrontendRequest::AddMemRegPostcopyAck { .. }
        );
        let detail = match &req {
            // Spec §7.1: features are set from what GET_FEATURES / GET_PROTOCOL_FEATURES
            // offered, so both sides agree on the layouts that depend on them.
            FrontendRequest::SetFeatures { features } => {
                if !self.features_known {
                    return Err(not(Rule::OfferUnknown));
                }
                self.neg.check_features(*features).map_err(not)?;
                Detail::None
            }
            FrontendRequest::SetProtocolFeatures { features } => {
                if !self.protocol_known {
                    return Err(not(Rule::OfferUnknown));
                }
                self.neg.check_protocol_features(*features).map_err(not)?;
                Detail::None
            }
            FrontendRequest::SetMemTablePostcopyAck { .. }
            | FrontendRequest::AddMemRegPostcopyAck { .. }
                if !self.postcopy || !self.memory_ack_due =>
            {
                return Err(not(Rule::PostcopyOrder {
                    state: "no postcopy memory reply to acknowledge",
                }));
            }
            // A back-end refuses a second POSTCOPY_ADVISE with the only failure form the
            // spec has (no fd), which is not a decodable reply: do not send one.
            FrontendRequest::PostcopyAdvise if self.postcopy_advised => {
                return Err(not(Rule::PostcopyOrder {
                    state: "already advised",
                }));
            }
            FrontendRequest::GetVringBase { index } => Detail::VringIndex(*index),
            FrontendRequest::GetConfig { offset, size, .. } => Detail::Config {
                offset: *offset,
                size: *size,
            },
            _ => Detail::None,
        };
        let ctx = self.neg.decode_context(self.postcopy);
        let body = !postcopy_ack && has_reply_body(code, ctx.log_shmfd, ctx.postcopy);
        let need_reply =
            !body && !postcopy_ack && (self.neg.reply_ack() || code == FrontendReq::PostcopyListen);
        let expect = if body {
            Expect::Body
        } else if need_reply {
            Expect::Ack
        } else {
            Expect::Nothing
        };
        // Negotiation as the VMM states it (the back-end's NACK, if any, is reported).
        match &req {
            FrontendRequest::SetMemTablePostcopyAck { .. }
            | FrontendRequest::AddMemRegPostcopyAck { .. } => self.memory_ack_due = false,
            FrontendRequest::PostcopyAdvise => self.postcopy_advised = true,
            FrontendRequest::SetFeatures { features } => self.neg.features = *features,
            FrontendRequest::SetProtocolFeatures { features } => self.neg.protocol = *features,
            _ => {}
        }
        let transmit = req
            .encode(need_reply, &ctx)
            .map_err(ApiError::Encode)?
            .into();
        let id = RequestId(self.requests.next_id());
        let deadline = match (expect, now, self.reply_timeout) {
            (Expect::Nothing, _, _) | (_, None, _) | (_, _, None) => None,
            // A deadline past the end of time is no deadline.
            (_, Some(now), Some(t)) => now.checked_add(t),
        };
        let sent = Outstanding {
            id,
            code,
            expect,
            detail,
            deadline,
        };
        if self
            .requests
            .push(sent, expect != Expect::Nothing, transmit)
        {
            self.reply_awaited();
        }
        Ok(id)
    }

    /// Moves queued requests to the transmit queue while no reply is awaited.
    fn pump(&mut self) {
        if self.requests.pump() {
            self.reply_awaited();
        }
    }

    /// A request now awaits its reply: decode replies in the negotiation as it stands.
    fn reply_awaited(&mut self) {
        let ctx = self.neg.decode_context(self.postcopy);
        self.decoder.set_context(ctx);
    }

    /// The next message to write (one `sendmsg` each, in order).
    pub fn poll_transmit(&mut self) -> Option<Transmit<H>> {
        self.requests.poll_transmit()
    }

    /// The next completion.
    pub fn poll_event(&mut self) -> Option<Event<H>> {
        self.events.pop_front()
    }

    pub(super) fn fail(&mut self, e: FatalError) -> FatalError {
        if !self.closed {
            self.closed = true;
            self.requests.clear();
            self.events
                .push_back(Event::ConnectionLost { error: e.clone() });
        }
        e
    }

    /// Feeds the bytes of one read and the handles that came with them. Every error is
    /// fatal: a back-end that sends a malformed, unexpected or mismatched reply is cut off.
    pub fn handle_input(&mut self, bytes: &[u8], fds: Vec<H>) -> Result<(), FatalError> {
        if self.closed {
            return Err(FatalError::Closed);
        }
        let mut input = Input::new(bytes, fds);
        loop {
            if self.requests.outstanding().is_none() && !input.is_empty() {
                return Err(self.fail(unexpected_input(&input)));
            }
            match self.decoder.decode(&mut input) {
                Ok(Some(msg)) => self.on_reply(msg.code, msg.message)?,
                Ok(None) => return Ok(()),
                // Spec §7.7 gives postcopy SET_MEM_TABLE no failure form; a back-end that
                // fails it sends a u64, which reads as a malformed table. The decoder is
                // not poisoned by that (rejected class): report it as a NACK.
                Err(DecodeError::InvalidPayload { request, .. })
                    if self.postcopy
                        && request == FrontendReq::SetMemTable.into()
                        && self
                            .requests
                            .outstanding()
                            .is_some_and(|o| o.code == FrontendReq::SetMemTable) =>
                {
                    if let Some(o) = self.requests.complete() {
                        self.events.push_back(Event::Nacked {
                            id: o.id,
                            request: o.code,
                            value: 1,
                        });
                    }
                    self.pump();
                }
                Err(e) => return Err(self.fail(reply_decode_fatal(e))),
            }
        }
    }

    fn on_reply(&mut self, code: FrontendReq, reply: FrontendReply<H>) -> Result<(), FatalError> {
        let o = match match_reply(self.requests.outstanding(), |o| o.code, code) {
            Ok(o) => o,
            Err(e) => return Err(self.fail(e)),
        };
        let event = match (o.expect, reply) {
            (Expect::Ack, FrontendReply::U64 { value: 0 }) => {
                if code == FrontendReq::PostcopyListen {
                    self.postcopy = true;
                }
                Event::Acked {
                    id: o.id,
                    request: code,
                }
            }
            (Expect::Ack, FrontendReply::U64 { value }) => Event::Nacked {
                id: o.id,
                request: code,
                value,
            },
            (Expect::Ack, _) => {
                return Err(self.fail(FatalError::BadReply {
                    request: code.into(),
                    reason: "an ack must be a u64",
                }));
            }
            (_, reply) => {
                if let Err(e) = reply_check::check(code, o.detail, &reply) {
                    return Err(self.fail(e));
                }
                self.learn(code, &reply);
                Event::Reply {
                    id: o.id,
                    request: code,
                    reply,
                }
            }
        };
        self.events.push_back(event);
        self.requests.complete();
        self.pump();
        Ok(())
    }

    /// Tracks negotiation from replies.
    fn learn(&mut self, code: FrontendReq, reply: &FrontendReply<H>) {
        if matches!(
            reply,
            FrontendReply::MemTable { .. } | FrontendReply::AddMemReg { .. }
        ) {
            // Spec §7.7: the VMM acknowledges with SET_MEM_TABLE / ADD_MEM_REG u64 0.
            self.memory_ack_due = true;
        }
        let FrontendReply::U64 { value } = *reply else {
            return;
        };
        match code {
            FrontendReq::GetFeatures => {
                self.neg.offered_features = VirtioFeatures::from_bits_retain(value);
                self.features_known = true;
            }
            FrontendReq::GetProtocolFeatures => {
                self.neg.offered_protocol = ProtocolFeatures::from_bits_retain(value);
                self.protocol_known = true;
            }
            FrontendReq::GetQueueNum => self.queue_num = Some(value),
            FrontendReq::GetMaxMemSlots => self.max_mem_slots = Some(value),
            FrontendReq::PostcopyEnd if value == 0 => {
                self.postcopy = false;
                self.postcopy_advised = false;
            }
            _ => {}
        }
    }
}
