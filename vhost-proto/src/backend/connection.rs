//! The back-end's view of the main socket: entry points, input buffering, accessors.

use std::collections::VecDeque;

use crate::session::inbox::Inbox;
use crate::session::ticket::{DropFlag, Ticket, new_session_id};
use crate::session::{
    ApiError, FatalError, MAX_PENDING_EVENTS, MAX_PENDING_TRANSMITS, Negotiated, Rejection, Rule,
    Transmit, has_reply_body,
};
use crate::wire::{
    ConfigFlags, CryptoSession, DecodeContext, DecodeError, DeviceStatus, Encoded, FrontendReply,
    FrontendReq, FrontendRequestDecoder, HeaderFlags, Input, LogDescription, MemoryRegion,
    TransferDirection,
};

use super::description::DeviceDescription;
use super::event::Event;
use super::memory::MemoryTable;
use super::ring::{Notifier, RingState};

/// Where postcopy migration stands (spec §7.7).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PostcopyState {
    /// Not advised.
    #[default]
    Off,
    /// POSTCOPY_ADVISE answered with a userfaultfd.
    Advised,
    /// POSTCOPY_LISTEN accepted: memory-table requests get a reply with mapped addresses.
    Listening,
}

/// What to do when an [`AckToken`](super::AckToken) is answered with success.
#[derive(Debug)]
pub(crate) enum AfterAck {
    Nothing,
    Status(DeviceStatus),
    LogBase(LogDescription),
    Inflight,
    PostcopyListen,
    PostcopyEnd,
    RemoveRegion(MemoryRegion),
    CheckState,
    /// SET_BACKEND_REQ_FD: recorded only once the runner took the socket.
    BackendChannel,
    /// SET_VRING_ADDR on a started ring: a refusal means the ring could not be rebuilt on
    /// the new addresses, so it is marked stopped.
    RingRebuilt {
        index: u16,
    },
    /// SET_VRING_KICK/CALL/ERR: a refusal puts the old notifier back.
    NotifierChanged {
        index: u16,
    },
}

/// The answer the connection waits for.
#[derive(Debug)]
pub(crate) enum WaitKind {
    Ack {
        always: bool,
        then: AfterAck,
    },
    MemoryTable {
        regions: Vec<MemoryRegion>,
        postcopy: bool,
    },
    MemoryAdd {
        region: MemoryRegion,
        postcopy: bool,
    },
    RingStop {
        index: u16,
    },
    RingStart {
        index: u16,
    },
    Config {
        offset: u32,
        size: u32,
        flags: ConfigFlags,
    },
    Crypto {
        session: Box<CryptoSession>,
    },
    PostcopyAdvise,
    Inflight {
        num_queues: u16,
        queue_size: u16,
    },
    SharedObject,
    DeviceState {
        direction: TransferDirection,
    },
}

/// The outstanding request.
#[derive(Debug)]
pub(crate) struct Waiting {
    pub seq: u64,
    pub code: FrontendReq,
    pub need_reply: bool,
    pub kind: WaitKind,
    /// Raised when the token was dropped unanswered.
    pub dropped: DropFlag,
}

/// The back-end's side of the main vhost-user socket: a sans-IO state machine that owns all
/// protocol state (features, rings, memory table, status, ...).
///
/// Feed it what the socket delivers with [`handle_input`](Self::handle_input), then drain
/// [`poll_transmit`](Self::poll_transmit) (write each with one `sendmsg`) and
/// [`poll_event`](Self::poll_event) (act on it; answer tokens it carries). Requests the
/// connection can answer from the [`DeviceDescription`] never reach the device.
///
/// ```
/// use vhost_proto::backend::{Connection, DeviceDescription, Event};
/// use vhost_proto::wire::{DecodeContext, FrontendRequest, ProtocolFeatures, VirtioFeatures};
///
/// let desc = DeviceDescription::new(VirtioFeatures::VERSION_1, ProtocolFeatures::MQ, 2);
/// let mut conn = Connection::<i32>::new(desc);
/// // The front-end asks for the features: bytes in ...
/// let req = FrontendRequest::<i32>::GetFeatures.encode(false, &DecodeContext::default()).unwrap();
/// conn.handle_input(&req.bytes, req.fds).unwrap();
/// // ... a reply out, answered without the device.
/// let reply = conn.poll_transmit().unwrap();
/// assert_eq!(reply.bytes.len(), 12 + 8);
/// assert!(conn.poll_event().is_none());
/// ```
#[derive(Debug)]
pub struct Connection<H> {
    pub(crate) id: u64,
    pub(crate) next_seq: u64,
    pub(crate) desc: DeviceDescription,
    pub(crate) neg: Negotiated,
    pub(crate) owner: bool,
    pub(crate) status: DeviceStatus,
    pub(crate) rings: Vec<RingState<H>>,
    pub(crate) memory: MemoryTable,
    pub(crate) log: Option<LogDescription>,
    pub(crate) log_fd: Option<H>,
    pub(crate) inflight: bool,
    pub(crate) backend_channel: bool,
    pub(crate) postcopy: PostcopyState,
    pub(crate) postcopy_ack_pending: bool,
    pub(crate) transfer: Option<TransferDirection>,
    decoder: FrontendRequestDecoder<H>,
    inbox: Inbox<H>,
    pub(crate) events: VecDeque<Event<H>>,
    pub(crate) transmits: VecDeque<Transmit<H>>,
    pub(crate) waiting: Option<Waiting>,
    closed: bool,
}

impl<H> Connection<H> {
    /// A connection at the start of a session for a device described by `desc`.
    pub fn new(desc: DeviceDescription) -> Self {
        let desc = desc.normalized();
        let neg = Negotiated {
            offered_features: desc.features,
            offered_protocol: desc.protocol_features,
            ..Negotiated::default()
        };
        let rings = (0..desc.queues).map(RingState::new).collect();
        Connection {
            id: new_session_id(),
            next_seq: 0,
            desc,
            neg,
            owner: false,
            status: DeviceStatus::empty(),
            rings,
            memory: MemoryTable::default(),
            log: None,
            log_fd: None,
            inflight: false,
            backend_channel: false,
            postcopy: PostcopyState::Off,
            postcopy_ack_pending: false,
            transfer: None,
            decoder: FrontendRequestDecoder::new(DecodeContext::default()),
            inbox: Inbox::default(),
            events: VecDeque::new(),
            transmits: VecDeque::new(),
            waiting: None,
            closed: false,
        }
    }

    /// Feeds the bytes of exactly one read and the fd handles that came with them: they
    /// belong to the last message whose header starts in these bytes (see
    /// [`Input`](crate::wire::Input)); the reads may split the stream anywhere. No framing
    /// is needed in the binding.
    ///
    /// Complete requests are processed at once unless an answer is outstanding or the event
    /// or transmit queue is full; then the input is buffered (at most
    /// [`input_room`](Self::input_room) more bytes). An error is fatal: close the connection.
    /// It is [`FatalError::AnswerDropped`] when a token was dropped unanswered since the last
    /// call (the request's failure reply is queued in the transmits).
    pub fn handle_input(&mut self, bytes: &[u8], fds: Vec<H>) -> Result<(), FatalError> {
        if self.closed {
            return Err(FatalError::Closed);
        }
        self.check_dropped()?;
        if !self.inbox.is_empty() || !self.can_decode() {
            if let Err(e) = self.inbox.push(bytes, fds) {
                return Err(self.fail(e));
            }
            return self.resume();
        }
        let mut input = Input::new(bytes, fds);
        let r = self.decode_from(&mut input);
        let (rest, fds) = input.into_parts();
        r?;
        if let Err(e) = self.inbox.push(rest, fds) {
            return Err(self.fail(e));
        }
        Ok(())
    }

    /// The next message to write, with its handles (one `sendmsg` each, in order). Still
    /// yields what was queued after a fatal error (e.g. the failure reply of a request whose
    /// token was dropped).
    pub fn poll_transmit(&mut self) -> Option<Transmit<H>> {
        let _ = self.check_dropped();
        let t = self.transmits.pop_front();
        let _ = self.resume();
        t
    }

    /// The next event for the device. After a fatal error (also a token dropped unanswered,
    /// noticed here) the last one is [`Event::ConnectionLost`].
    pub fn poll_event(&mut self) -> Option<Event<H>> {
        let _ = self.check_dropped();
        let e = self.events.pop_front();
        let _ = self.resume();
        e
    }

    /// How many more input bytes may be fed now without a [`FatalError::InputOverflow`]
    /// (0 also when the buffered fds near their bound: stop reading until it grows).
    pub fn input_room(&self) -> usize {
        if self.closed { 0 } else { self.inbox.room() }
    }

    /// Whether the input so far ends inside a message (a partial header or body is
    /// buffered): a peer that stays here for long has stalled.
    pub fn is_mid_message(&self) -> bool {
        !self.decoder.is_idle()
    }

    /// Whether an answer token is outstanding (no request is processed until it is answered).
    pub fn is_waiting(&self) -> bool {
        self.waiting.is_some()
    }

    /// Whether the connection failed fatally.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The device description.
    pub fn description(&self) -> &DeviceDescription {
        &self.desc
    }

    /// Offered and negotiated features.
    pub fn negotiated(&self) -> &Negotiated {
        &self.neg
    }

    /// Whether SET_OWNER was received.
    pub fn has_owner(&self) -> bool {
        self.owner
    }

    /// The device status (SET_STATUS, spec §5 id 39).
    pub fn status(&self) -> DeviceStatus {
        self.status
    }

    /// Ring `index`, if the device has it.
    pub fn ring(&self, index: u16) -> Option<&RingState<H>> {
        self.rings.get(usize::from(index))
    }

    /// All rings.
    pub fn rings(&self) -> &[RingState<H>] {
        &self.rings
    }

    /// The memory table.
    pub fn memory(&self) -> &MemoryTable {
        &self.memory
    }

    /// The dirty log as set with SET_LOG_BASE, once the device accepted it.
    pub fn log_base(&self) -> Option<&LogDescription> {
        self.log.as_ref()
    }

    /// The log eventfd from SET_LOG_FD.
    pub fn log_fd(&self) -> Option<&H> {
        self.log_fd.as_ref()
    }

    /// Whether the device accepted an inflight buffer (SET_INFLIGHT_FD).
    pub fn has_inflight(&self) -> bool {
        self.inflight
    }

    /// Whether a back-end channel was installed: SET_BACKEND_REQ_FD whose
    /// [`Event::BackendChannel`] the device accepted.
    pub fn has_backend_channel(&self) -> bool {
        self.backend_channel
    }

    /// Postcopy state.
    pub fn postcopy(&self) -> PostcopyState {
        self.postcopy
    }

    /// The direction of the device state transfer in progress, if any (spec §7.8).
    pub fn device_state_transfer(&self) -> Option<TransferDirection> {
        self.transfer
    }

    /// Whether the device is suspended: all rings stopped (spec §7.3). A suspended device
    /// must not write guest memory, notify, or use the back-end channel.
    pub fn is_suspended(&self) -> bool {
        self.rings.iter().all(|r| !r.started)
    }

    // ---- internals shared by dispatch and answers ----

    pub(crate) fn ctx(&self) -> DecodeContext {
        self.neg
            .decode_context(self.postcopy == PostcopyState::Listening)
    }

    fn can_decode(&self) -> bool {
        !self.closed
            && self.waiting.is_none()
            && self.events.len() < MAX_PENDING_EVENTS
            && self.transmits.len() < MAX_PENDING_TRANSMITS
    }

    /// Marks the connection closed, drops buffered input and reports the error as the last
    /// event.
    pub(crate) fn fail(&mut self, e: FatalError) -> FatalError {
        if !self.closed {
            self.closed = true;
            self.inbox.clear();
            self.waiting = None;
            self.events
                .push_back(Event::ConnectionLost { error: e.clone() });
        }
        e
    }

    fn decode_from(&mut self, input: &mut Input<'_, H>) -> Result<(), FatalError> {
        while self.can_decode() {
            match self.decoder.decode(input) {
                Ok(Some(msg)) => {
                    self.dispatch(msg)?;
                    let ctx = self.ctx();
                    self.decoder.set_context(ctx);
                }
                Ok(None) => return Ok(()),
                Err(e) if e.is_fatal() => return Err(self.fail(FatalError::Decode(e))),
                Err(e) => self.reject_decode(e)?,
            }
        }
        Ok(())
    }

    /// Processes buffered input as far as possible.
    pub(crate) fn resume(&mut self) -> Result<(), FatalError> {
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

    /// A rejected (well-framed but invalid or unknown) message from the decoder.
    fn reject_decode(&mut self, e: DecodeError) -> Result<(), FatalError> {
        match e {
            DecodeError::UnknownRequest {
                code, need_reply, ..
            } => {
                if need_reply {
                    self.push_raw_u64(code, 1);
                }
                self.push_rejection(Rejection {
                    request: None,
                    code,
                    rule: Rule::UnknownRequest,
                    replied: need_reply,
                });
                Ok(())
            }
            DecodeError::InvalidPayload {
                request,
                need_reply,
                reason,
            } => {
                let crate::wire::ReqCode::Frontend(code) = request else {
                    return Err(self.fail(FatalError::Decode(DecodeError::InvalidPayload {
                        request,
                        need_reply,
                        reason,
                    })));
                };
                self.reject(code, need_reply, Rule::InvalidPayload(reason))
            }
            other => Err(self.fail(FatalError::Decode(other))),
        }
    }

    // ---- replies ----

    pub(crate) fn issue(&mut self, code: FrontendReq, need_reply: bool, kind: WaitKind) -> Ticket {
        self.next_seq += 1;
        let postcopy = matches!(
            kind,
            WaitKind::MemoryTable { postcopy: true, .. }
                | WaitKind::MemoryAdd { postcopy: true, .. }
        );
        let (ticket, dropped) = Ticket::issue(self.id, self.next_seq, postcopy);
        self.waiting = Some(Waiting {
            seq: self.next_seq,
            code,
            need_reply,
            kind,
            dropped,
        });
        ticket
    }

    /// Notices a token dropped without an answer: sends the request's failure reply or
    /// NACK (so the front-end is not left waiting), then fails with
    /// [`FatalError::AnswerDropped`]. Called first by every entry point.
    pub(crate) fn check_dropped(&mut self) -> Result<(), FatalError> {
        if self.closed || !self.waiting.as_ref().is_some_and(|w| w.dropped.is_raised()) {
            return Ok(());
        }
        let Some(w) = self.waiting.take() else {
            return Ok(());
        };
        log::warn!(
            "vhost-user back-end: the answer to {} was dropped; closing",
            w.code
        );
        // An encoding failure here is already fatal on its own; report the drop either way.
        let _ = self.dropped_reply(&w);
        Err(self.fail(FatalError::AnswerDropped {
            request: w.code.into(),
        }))
    }

    /// The reply a refusal of `w` would have sent.
    fn dropped_reply(&mut self, w: &Waiting) -> Result<(), FatalError> {
        match &w.kind {
            WaitKind::Ack { always, .. } => {
                if *always || w.need_reply {
                    self.push_raw_u64(w.code.raw(), 1);
                }
            }
            WaitKind::MemoryTable { postcopy, .. } | WaitKind::MemoryAdd { postcopy, .. } => {
                // Postcopy memory replies have no failure form: a non-zero u64 (spec §7.7).
                if *postcopy || w.need_reply {
                    self.push_raw_u64(w.code.raw(), 1);
                }
            }
            WaitKind::RingStart { .. } => {
                if w.need_reply {
                    self.push_raw_u64(w.code.raw(), 1);
                }
            }
            WaitKind::RingStop { index } => {
                // GET_VRING_BASE has no failure form: the last known base (spec §5 id 11).
                let base = self
                    .rings
                    .get(usize::from(*index))
                    .map(|r| r.base)
                    .unwrap_or_default();
                let index = u32::from(*index);
                self.reply(w.code, FrontendReply::VringBase { index, base })?;
            }
            WaitKind::Crypto { session } => {
                let mut bytes = session.0;
                if let Some(dst) = bytes.get_mut(1064..1072) {
                    dst.copy_from_slice(&(-1i64).to_ne_bytes());
                }
                self.reply(
                    w.code,
                    FrontendReply::CryptoSession {
                        session: Box::new(CryptoSession(bytes)),
                    },
                )?;
            }
            WaitKind::Config { .. }
            | WaitKind::PostcopyAdvise
            | WaitKind::Inflight { .. }
            | WaitKind::SharedObject
            | WaitKind::DeviceState { .. } => self.failure_reply(w.code)?,
        }
        Ok(())
    }

    /// Takes the outstanding answer that `ticket` names.
    pub(crate) fn take_waiting(&mut self, ticket: &Ticket) -> Result<Waiting, ApiError> {
        if self.closed {
            return Err(ApiError::Closed);
        }
        match &self.waiting {
            Some(w) if ticket.session == self.id && w.seq == ticket.seq => {
                self.waiting.take().ok_or(ApiError::StaleToken)
            }
            _ => Err(ApiError::StaleToken),
        }
    }

    pub(crate) fn push_raw_u64(&mut self, code: u32, value: u64) {
        self.transmits.push_back(
            Encoded::frame(code, HeaderFlags::reply(), &value.to_ne_bytes(), Vec::new()).into(),
        );
    }

    /// Sends a typed reply.
    pub(crate) fn reply(
        &mut self,
        code: FrontendReq,
        reply: FrontendReply<H>,
    ) -> Result<(), FatalError> {
        let ctx = self.ctx();
        match reply.encode(code, &ctx) {
            Ok(e) => {
                self.transmits.push_back(e.into());
                Ok(())
            }
            Err(error) => Err(self.fail(FatalError::Encode {
                request: code.into(),
                error,
            })),
        }
    }

    pub(crate) fn push_rejection(&mut self, rejection: Rejection) {
        log::debug!("vhost-user back-end: {rejection}");
        self.events.push_back(Event::Rejected { rejection });
    }

    /// Finishes a request without a reply body: ack if asked.
    pub(crate) fn done(&mut self, code: FrontendReq, need_reply: bool) {
        if need_reply {
            self.push_raw_u64(code.raw(), 0);
        }
    }

    /// Refuses a request: its failure reply if it has a reply body, a NACK if it asked for
    /// an ack, and a [`Event::Rejected`] either way.
    pub(crate) fn reject(
        &mut self,
        code: FrontendReq,
        need_reply: bool,
        rule: Rule,
    ) -> Result<(), FatalError> {
        let ctx = self.ctx();
        let body = has_reply_body(code, ctx.log_shmfd, ctx.postcopy);
        if body {
            self.failure_reply(code)?;
        } else if need_reply {
            self.push_raw_u64(code.raw(), 1);
        }
        self.push_rejection(Rejection::frontend(code, rule, body || need_reply));
        Ok(())
    }

    /// The spec's failure form of a request's own reply (spec §5).
    pub(crate) fn failure_reply(&mut self, code: FrontendReq) -> Result<(), FatalError> {
        use FrontendReq as C;
        let reply = match code {
            C::GetFeatures
            | C::GetProtocolFeatures
            | C::GetQueueNum
            | C::GetMaxMemSlots
            | C::GetStatus => FrontendReply::U64 { value: 0 },
            C::GetConfig => FrontendReply::Empty,
            C::GetInflightFd => FrontendReply::InflightFd {
                desc: Default::default(),
                fd: None,
            },
            C::GetSharedObject => FrontendReply::SharedObject {
                uuid: None,
                fd: None,
            },
            C::SetDeviceStateFd => FrontendReply::DeviceStateFd {
                status: 1,
                fd: None,
            },
            C::GetShmemConfig => FrontendReply::ShmemConfig {
                config: Box::new(zero_shmem()),
            },
            C::GetVringBase => FrontendReply::VringBase {
                index: 0,
                base: Default::default(),
            },
            C::PostcopyAdvise => {
                // Size 0 and no fd: QEMU reads "no userfaultfd" as failure (spec §5 id 28).
                self.transmits.push_back(
                    Encoded::frame(code.raw(), HeaderFlags::reply(), &[], Vec::new()).into(),
                );
                return Ok(());
            }
            // u64 replies where non-zero means failure, and bodies with no failure form
            // (crypto session, postcopy memory replies): a non-zero u64.
            _ => {
                self.push_raw_u64(code.raw(), 1);
                return Ok(());
            }
        };
        self.reply(code, reply)
    }

    /// Replaces a ring's notifier (dropping the old handle closes it).
    pub(crate) fn set_notifier(slot: &mut Notifier<H>, fd: Option<H>) {
        *slot = Self::notifier(fd);
    }

    /// The notifier a SET_VRING_KICK/CALL/ERR payload sets.
    pub(crate) fn notifier(fd: Option<H>) -> Notifier<H> {
        match fd {
            Some(h) => Notifier::Fd(h),
            None => Notifier::NoFd,
        }
    }
}

/// A GET_SHMEM_CONFIG answer with no regions.
pub(crate) fn zero_shmem() -> crate::wire::ShmemConfig {
    crate::wire::ShmemConfig {
        nregions: 0,
        memory_sizes: [0; crate::wire::layout::SHMEM_MAX_REGIONS],
    }
}
