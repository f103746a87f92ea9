//! The front-end's side of the back-end channel (spec §6, §7.6): receives back-end
//! requests, gates them on the negotiated features, hands them to the VMM, and answers.

use std::collections::VecDeque;

use crate::backend::Refused;
use crate::session::inbox::Inbox;
use crate::session::ticket::{DropFlag, Ticket, new_session_id};
use crate::session::{
    ApiError, FatalError, MAX_PENDING_EVENTS, MAX_PENDING_TRANSMITS, Negotiated, Rejection, Rule,
    Transmit,
};
use crate::wire::{
    BackendReply, BackendReq, BackendRequest, BackendRequestDecoder, DecodeError, Encoded,
    HeaderFlags, Input, ReqCode, Uuid,
};

/// Answer with [`Channel::ack`]: the VMM did (or refused) what the request asked. An ack is
/// sent only if the back-end set NEED_REPLY.
///
/// Dropping it unanswered is detected at the channel's next entry point: the request is
/// NACKed (when it asked for a reply) and the channel fails with
/// [`FatalError::AnswerDropped`].
#[derive(Debug, PartialEq, Eq)]
#[must_use = "the channel waits for this answer"]
pub struct ChannelToken {
    ticket: Ticket,
}

/// Answer with [`Channel::answer_lookup`]: the dma-buf fd of the object, or a refusal.
///
/// Dropping it unanswered is detected at the channel's next entry point: the lookup gets its
/// failure reply (u64 1, no fd) and the channel fails with [`FatalError::AnswerDropped`].
#[derive(Debug, PartialEq, Eq)]
#[must_use = "the channel waits for this answer"]
pub struct LookupToken {
    ticket: Ticket,
}

/// What the back-end asks of the VMM.
#[derive(Debug)]
#[non_exhaustive]
pub enum ChannelEvent<H> {
    /// A back-end request (all but SHARED_OBJECT_LOOKUP) that passed its gates.
    Request {
        /// The request with its handles.
        request: BackendRequest<H>,
        /// The answer.
        answer: ChannelToken,
    },
    /// BACKEND_SHARED_OBJECT_LOOKUP.
    SharedObjectLookup {
        /// The UUID.
        uuid: Uuid,
        /// The answer.
        answer: LookupToken,
    },
    /// A request was refused (gate or payload rule); it was NACKed if it asked for a reply.
    Rejected {
        /// What and why.
        rejection: Rejection,
    },
    /// The channel failed fatally; close it.
    ChannelLost {
        /// Why.
        error: FatalError,
    },
}

#[derive(Debug)]
struct Waiting {
    seq: u64,
    code: BackendReq,
    need_reply: bool,
    dropped: DropFlag,
}

/// The front-end's side of the back-end channel.
#[derive(Debug)]
pub struct Channel<H> {
    id: u64,
    next_seq: u64,
    neg: Negotiated,
    decoder: BackendRequestDecoder<H>,
    inbox: Inbox<H>,
    events: VecDeque<ChannelEvent<H>>,
    transmits: VecDeque<Transmit<H>>,
    waiting: Option<Waiting>,
    closed: bool,
}

impl<H> Channel<H> {
    /// A channel for a session with this negotiation (the front-end connection's
    /// [`negotiated`](super::Connection::negotiated)).
    pub fn new(neg: Negotiated) -> Self {
        Channel {
            id: new_session_id(),
            next_seq: 0,
            neg,
            decoder: BackendRequestDecoder::new(neg.decode_context(false)),
            inbox: Inbox::default(),
            events: VecDeque::new(),
            transmits: VecDeque::new(),
            waiting: None,
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

    /// How many more input bytes may be fed now.
    pub fn input_room(&self) -> usize {
        if self.closed { 0 } else { self.inbox.room() }
    }

    /// The next message to write.
    pub fn poll_transmit(&mut self) -> Option<Transmit<H>> {
        let _ = self.check_dropped();
        let t = self.transmits.pop_front();
        let _ = self.resume();
        t
    }

    /// The next request for the VMM.
    pub fn poll_event(&mut self) -> Option<ChannelEvent<H>> {
        let _ = self.check_dropped();
        let e = self.events.pop_front();
        let _ = self.resume();
        e
    }

    fn can_decode(&self) -> bool {
        !self.closed
            && self.waiting.is_none()
            && self.events.len() < MAX_PENDING_EVENTS
            && self.transmits.len() < MAX_PENDING_TRANSMITS
    }

    fn fail(&mut self, e: FatalError) -> FatalError {
        if !self.closed {
            self.closed = true;
            self.inbox.clear();
            self.waiting = None;
            self.events
                .push_back(ChannelEvent::ChannelLost { error: e.clone() });
        }
        e
    }

    /// Feeds the bytes of one read and their handles; an error is fatal.
    pub fn handle_input(&mut self, bytes: &[u8], fds: Vec<H>) -> Result<(), FatalError> {
        if self.closed {
            return Err(FatalError::Closed);
        }
        self.check_dropped()?;
        if let Err(e) = self.inbox.push(bytes, fds) {
            return Err(self.fail(e));
        }
        self.resume()
    }

    /// Notices a token dropped unanswered: the request's failure reply or NACK, then
    /// [`FatalError::AnswerDropped`].
    fn check_dropped(&mut self) -> Result<(), FatalError> {
        if self.closed || !self.waiting.as_ref().is_some_and(|w| w.dropped.is_raised()) {
            return Ok(());
        }
        let Some(w) = self.waiting.take() else {
            return Ok(());
        };
        if w.need_reply || w.code == BackendReq::SharedObjectLookup {
            self.push_u64(w.code.raw(), 1);
        }
        Err(self.fail(FatalError::AnswerDropped {
            request: w.code.into(),
        }))
    }

    fn resume(&mut self) -> Result<(), FatalError> {
        while self.can_decode() {
            let Some((bytes, fds)) = self.inbox.pop() else {
                break;
            };
            let mut input = Input::new(&bytes, fds);
            let r = self.decode_from(&mut input);
            let (rest, fds) = input.into_parts();
            r?;
            self.inbox.unpop(rest, fds);
        }
        Ok(())
    }

    fn decode_from(&mut self, input: &mut Input<'_, H>) -> Result<(), FatalError> {
        while self.can_decode() {
            match self.decoder.decode(input) {
                Ok(Some(msg)) => {
                    let need = msg.need_reply();
                    let code = msg.code;
                    let fds = match &msg.message {
                        BackendRequest::VringHostNotifier { fd, .. } => usize::from(fd.is_some()),
                        BackendRequest::ShmemMap { .. } => 1,
                        _ => 0,
                    };
                    if let Err(rule) = self.neg.check_backend(code, fds) {
                        self.reject(code.raw(), Some(code), need, rule);
                        continue;
                    }
                    self.next_seq += 1;
                    let (ticket, dropped) = Ticket::issue(self.id, self.next_seq, false);
                    self.waiting = Some(Waiting {
                        seq: self.next_seq,
                        code,
                        need_reply: need,
                        dropped,
                    });
                    self.events.push_back(match msg.message {
                        BackendRequest::SharedObjectLookup { uuid } => {
                            ChannelEvent::SharedObjectLookup {
                                uuid,
                                answer: LookupToken { ticket },
                            }
                        }
                        request => ChannelEvent::Request {
                            request,
                            answer: ChannelToken { ticket },
                        },
                    });
                }
                Ok(None) => return Ok(()),
                Err(DecodeError::UnknownRequest {
                    code, need_reply, ..
                }) => self.reject(code, None, need_reply, Rule::UnknownRequest),
                Err(DecodeError::InvalidPayload {
                    request: ReqCode::Backend(code),
                    need_reply,
                    reason,
                }) => self.reject(
                    code.raw(),
                    Some(code),
                    need_reply,
                    Rule::InvalidPayload(reason),
                ),
                Err(e) => return Err(self.fail(FatalError::Decode(e))),
            }
        }
        Ok(())
    }

    fn push_u64(&mut self, code: u32, value: u64) {
        self.transmits.push_back(
            Encoded::frame(code, HeaderFlags::reply(), &value.to_ne_bytes(), Vec::new()).into(),
        );
    }

    fn reject(&mut self, raw: u32, code: Option<BackendReq>, need: bool, rule: Rule) {
        let lookup = code == Some(BackendReq::SharedObjectLookup);
        if lookup || need {
            self.push_u64(raw, 1);
        }
        let rejection = Rejection {
            request: code.map(Into::into),
            code: raw,
            rule,
            replied: lookup || need,
        };
        log::debug!("vhost-user front-end channel: {rejection}");
        self.events.push_back(ChannelEvent::Rejected { rejection });
    }

    fn take(&mut self, ticket: &Ticket) -> Result<Waiting, ApiError> {
        if self.closed {
            return Err(ApiError::Closed);
        }
        match &self.waiting {
            Some(w) if w.seq == ticket.seq && ticket.session == self.id => {
                self.waiting.take().ok_or(ApiError::StaleToken)
            }
            _ => Err(ApiError::StaleToken),
        }
    }

    /// Answers a request: `Ok(())` when done. Sends the ack if NEED_REPLY was set.
    pub fn ack(
        &mut self,
        token: ChannelToken,
        result: Result<(), Refused>,
    ) -> Result<(), ApiError> {
        let w = self.take(&token.ticket)?;
        if w.need_reply {
            self.push_u64(w.code.raw(), u64::from(result.is_err()));
        }
        if let Err(r) = result {
            self.events.push_back(ChannelEvent::Rejected {
                rejection: Rejection::backend(
                    w.code,
                    Rule::Refused { reason: r.reason },
                    w.need_reply,
                ),
            });
        }
        let _ = self.resume();
        Ok(())
    }

    /// Answers SHARED_OBJECT_LOOKUP with the object's fd (u64 0 + fd) or a refusal (u64 1,
    /// no fd).
    pub fn answer_lookup(
        &mut self,
        token: LookupToken,
        result: Result<H, Refused>,
    ) -> Result<(), ApiError> {
        let w = self.take(&token.ticket)?;
        let reply = match result {
            Ok(fd) => BackendReply::SharedObjectLookup {
                value: 0,
                fd: Some(fd),
            },
            Err(r) => {
                self.events.push_back(ChannelEvent::Rejected {
                    rejection: Rejection::backend(w.code, Rule::Refused { reason: r.reason }, true),
                });
                BackendReply::SharedObjectLookup { value: 1, fd: None }
            }
        };
        match reply.encode(w.code, &self.neg.decode_context(false)) {
            Ok(e) => self.transmits.push_back(e.into()),
            Err(e) => return Err(ApiError::Encode(e)),
        }
        let _ = self.resume();
        Ok(())
    }
}
