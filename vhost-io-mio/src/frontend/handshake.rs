//! The front-end's side of a full handshake as a state machine the user's loop drives:
//! features, protocol features, owner, memory table and ring starts, in QEMU's order.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::time::Instant;

use vhost_backend::os::eventfd::EventFd;
use vhost_proto::frontend::{Reply, RequestId};
use vhost_proto::session::{ApiError, Negotiated};
use vhost_proto::wire::{
    DeviceStatus, FrontendRequest, ProtocolFeatures, RegionFd, VirtioFeatures, VringAddr, VringBase,
};

use super::{FrontendError, FrontendEvent, FrontendSession, MAX_RINGS};

/// Requests queued at once before the handshake waits for the back-end to catch up (the
/// core queues at most 64).
const BATCH: usize = 32;

/// One ring to start: where it lives and the notifiers it uses (see
/// [`FrontendSession::set_vring_call`] for how the session watches `call` and `err`).
#[derive(Debug)]
pub struct RingStart {
    /// The vring index (≤ 255, below the back-end's queue count).
    pub index: u16,
    /// The queue size.
    pub size: u16,
    /// Where the ring starts (SET_VRING_BASE).
    pub base: VringBase,
    /// The ring's areas in the front-end's address space (SET_VRING_ADDR; `index` is set
    /// from [`index`](Self::index)).
    pub addr: VringAddr,
    /// The eventfd the front-end signals (SET_VRING_KICK).
    pub kick: OwnedFd,
    /// The eventfd the back-end signals on used buffers, watched by the session.
    pub call: EventFd,
    /// The eventfd the back-end signals on errors, if any, watched by the session.
    pub err: Option<EventFd>,
}

/// What one step of the handshake came to.
#[derive(Debug)]
#[non_exhaustive]
pub enum Progress {
    /// Not done yet: go on feeding events.
    Pending,
    /// Done: every request was processed by the back-end (acked under REPLY_ACK, or
    /// followed by a GET_FEATURES round trip without it), so buffers kicked now are seen.
    Done,
    /// The event is not the handshake's: handle it yourself.
    NotMine(FrontendEvent),
}

/// A request the handshake still has to send.
#[derive(Debug)]
enum Op {
    Request(FrontendRequest<OwnedFd>),
    Call(u16, EventFd),
    Err(u16, EventFd),
    Channel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    NotStarted,
    Features(RequestId),
    Protocol(RequestId),
    QueueNum(RequestId),
    /// The rest, sent in batches; the id whose completion ends the batch.
    Batch(Option<RequestId>),
    Done,
    Failed,
}

/// A full front-end handshake, in the order QEMU sends it (`hw/virtio/vhost-user.c`
/// `vhost_user_backend_init`, `hw/virtio/vhost.c` `vhost_dev_start` and
/// `vhost_virtqueue_start`): GET_FEATURES, GET_PROTOCOL_FEATURES,
/// SET_PROTOCOL_FEATURES, GET_QUEUE_NUM (with MQ), SET_OWNER, SET_BACKEND_REQ_FD (when
/// asked for and BACKEND_REQ is negotiated), SET_FEATURES, SET_MEM_TABLE, and for each
/// ring SET_VRING_NUM, SET_VRING_BASE, SET_VRING_ADDR, SET_VRING_ERR, SET_VRING_CALL
/// (QEMU sends it at device init, before any ring starts), SET_VRING_KICK,
/// SET_VRING_ENABLE (when PROTOCOL_FEATURES is acked), SET_STATUS with DRIVER_OK (when
/// STATUS is negotiated); then a
/// GET_FEATURES round trip when REPLY_ACK is off, so that when the handshake is done the
/// back-end has processed every request (a back-end that reads a kick before it
/// processed SET_VRING_ENABLE would drop it).
///
/// The user's loop drives it: [`start`](Self::start) once the session is registered, then
/// every event from [`FrontendSession::poll_event`] goes through
/// [`on_event`](Self::on_event) until it says [`Progress::Done`]; events that are not the
/// handshake's come back as [`Progress::NotMine`]. A failure (a NACK, a missing feature,
/// a ring the back-end does not have) is an error and closes the session.
///
/// `features` must all be offered ([`FrontendError::Unsupported`] otherwise): the rings
/// were laid out for them (RING_PACKED, EVENT_IDX, ...). PROTOCOL_FEATURES is acked when
/// offered. `protocol` is what the front-end would like; the handshake negotiates what of
/// it the back-end offers.
#[derive(Debug)]
pub struct Handshake {
    features: VirtioFeatures,
    protocol: ProtocolFeatures,
    memory: Vec<RegionFd<OwnedFd>>,
    rings: Vec<RingStart>,
    channel: bool,
    ops: VecDeque<Op>,
    phase: Phase,
}

impl Handshake {
    /// A handshake that acks `features` (all required), negotiates what the back-end
    /// offers of `protocol`, sends `memory` as the memory table and starts `rings`.
    pub fn new(
        features: VirtioFeatures,
        protocol: ProtocolFeatures,
        memory: Vec<RegionFd<OwnedFd>>,
        rings: Vec<RingStart>,
    ) -> Self {
        Handshake {
            features,
            protocol,
            memory,
            rings,
            channel: false,
            ops: VecDeque::new(),
            phase: Phase::NotStarted,
        }
    }

    /// Also opens the back-end channel ([`FrontendSession::open_backend_channel`]) when
    /// BACKEND_REQ is negotiated (add it to `protocol`).
    pub fn with_backend_channel(mut self) -> Self {
        self.channel = true;
        self
    }

    /// Whether the handshake is done.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Sends the first request (GET_FEATURES).
    pub fn start(
        &mut self,
        session: &mut FrontendSession,
        now: Instant,
    ) -> Result<(), FrontendError> {
        if self.phase != Phase::NotStarted {
            return Err(FrontendError::NotSent(ApiError::InvalidArgument {
                request: vhost_proto::wire::FrontendReq::GetFeatures.into(),
                reason: "the handshake was started already",
            }));
        }
        for r in &self.rings {
            if usize::from(r.index) >= MAX_RINGS {
                return Err(self.fail(
                    session,
                    FrontendError::NoSuchRing {
                        index: r.index,
                        queues: u64::MAX,
                    },
                ));
            }
        }
        let id = self.req(session, now, |c, now| c.get_features(now))?;
        self.phase = Phase::Features(id);
        Ok(())
    }

    /// Feeds one event of the session; see [`Progress`].
    pub fn on_event(
        &mut self,
        session: &mut FrontendSession,
        now: Instant,
        event: FrontendEvent,
    ) -> Result<Progress, FrontendError> {
        let (id, request, reply) = match event {
            FrontendEvent::Reply { id, request, reply } if self.waits_for(id) => {
                (id, request, reply)
            }
            FrontendEvent::Nacked { id, request, value } if self.waits_for(id) => {
                return Err(self.fail(session, FrontendError::Refused { id, request, value }));
            }
            other => return Ok(Progress::NotMine(other)),
        };
        match (self.phase, reply) {
            (Phase::Features(_), Reply::Features(offer)) => {
                let missing = self.features.difference(offer);
                if !missing.is_empty() {
                    return Err(self.fail(session, FrontendError::Unsupported { missing }));
                }
                if offer.contains(VirtioFeatures::PROTOCOL_FEATURES) {
                    let id = self.req(session, now, |c, now| c.get_protocol_features(now))?;
                    self.phase = Phase::Protocol(id);
                } else {
                    self.plan(session.negotiated());
                    self.send_batch(session, now)?;
                }
            }
            (Phase::Protocol(_), Reply::ProtocolFeatures(offer)) => {
                let mut want = self.protocol & offer;
                if !self.channel {
                    want.remove(ProtocolFeatures::BACKEND_REQ);
                }
                self.req(session, now, |c, now| c.set_protocol_features(now, want))?;
                if want.contains(ProtocolFeatures::MQ) {
                    let id = self.req(session, now, |c, now| c.get_queue_num(now))?;
                    self.phase = Phase::QueueNum(id);
                } else {
                    self.plan(session.negotiated());
                    self.send_batch(session, now)?;
                }
            }
            (Phase::QueueNum(_), Reply::QueueNum(queues)) => {
                if let Some(r) = self.rings.iter().find(|r| u64::from(r.index) >= queues) {
                    let index = r.index;
                    return Err(self.fail(session, FrontendError::NoSuchRing { index, queues }));
                }
                self.plan(session.negotiated());
                self.send_batch(session, now)?;
            }
            (Phase::Batch(Some(last)), _) if last == id => {
                if self.ops.is_empty() {
                    self.phase = Phase::Done;
                    return Ok(Progress::Done);
                }
                self.send_batch(session, now)?;
            }
            // The ack of a request inside a batch.
            (Phase::Batch(_), Reply::Ack) => {}
            (_, _) => {
                return Err(self.fail(session, FrontendError::UnexpectedReply { request }));
            }
        }
        Ok(Progress::Pending)
    }

    /// Whether `id` is one of the handshake's requests still waiting.
    fn waits_for(&self, id: RequestId) -> bool {
        match self.phase {
            Phase::Features(w) | Phase::Protocol(w) | Phase::QueueNum(w) => w == id,
            // Every request of a batch precedes its last one.
            Phase::Batch(Some(last)) => id <= last,
            _ => false,
        }
    }

    fn fail(&mut self, session: &mut FrontendSession, e: FrontendError) -> FrontendError {
        self.phase = Phase::Failed;
        session.fail(e)
    }

    fn req(
        &mut self,
        session: &mut FrontendSession,
        now: Instant,
        f: impl FnOnce(
            &mut vhost_proto::frontend::Connection<OwnedFd>,
            Instant,
        ) -> Result<RequestId, ApiError>,
    ) -> Result<RequestId, FrontendError> {
        session.request(now, f).map_err(|e| self.failed(session, e))
    }

    /// A request could not be sent: the handshake cannot go on.
    fn failed(&mut self, session: &mut FrontendSession, e: FrontendError) -> FrontendError {
        self.phase = Phase::Failed;
        if session.is_closed() {
            e
        } else {
            session.fail(e)
        }
    }

    /// Everything after the negotiation, in order.
    fn plan(&mut self, neg: &Negotiated) {
        let mut features = self.features;
        if neg
            .offered_features
            .contains(VirtioFeatures::PROTOCOL_FEATURES)
        {
            features |= VirtioFeatures::PROTOCOL_FEATURES;
        }
        let ops = &mut self.ops;
        ops.push_back(Op::Request(FrontendRequest::SetOwner));
        if self.channel && neg.has(ProtocolFeatures::BACKEND_REQ) {
            ops.push_back(Op::Channel);
        }
        ops.push_back(Op::Request(FrontendRequest::SetFeatures { features }));
        let regions = std::mem::take(&mut self.memory);
        if !regions.is_empty() {
            ops.push_back(Op::Request(FrontendRequest::SetMemTable { regions }));
        }
        for r in std::mem::take(&mut self.rings) {
            let index = u32::from(r.index);
            // Checked at start: ≤ 255.
            let index8 = u8::try_from(r.index).unwrap_or(u8::MAX);
            ops.push_back(Op::Request(FrontendRequest::SetVringNum {
                index,
                num: r.size.into(),
            }));
            ops.push_back(Op::Request(FrontendRequest::SetVringBase {
                index,
                base: r.base,
            }));
            ops.push_back(Op::Request(FrontendRequest::SetVringAddr {
                addr: VringAddr { index, ..r.addr },
            }));
            // QEMU sends no SET_VRING_ERR at a start; it goes before the kick here, while
            // the ring is not started yet. SET_VRING_CALL goes before the kick as well:
            // QEMU sends it for every ring at device init, before any start (and again
            // after the kick, unmasking), and a back-end that takes the call fd it has
            // when the ring starts (vhost-io-std's queue workers do) then signals the
            // first completion to it.
            if let Some(err) = r.err {
                ops.push_back(Op::Err(r.index, err));
            }
            ops.push_back(Op::Call(r.index, r.call));
            ops.push_back(Op::Request(FrontendRequest::SetVringKick {
                index: index8,
                fd: Some(r.kick),
            }));
            if features.contains(VirtioFeatures::PROTOCOL_FEATURES) {
                ops.push_back(Op::Request(FrontendRequest::SetVringEnable {
                    index,
                    enable: true,
                }));
            }
        }
        // QEMU's vhost_user_dev_start: the driver is ready.
        if neg.has(ProtocolFeatures::STATUS) {
            let status = DeviceStatus::ACKNOWLEDGE
                | DeviceStatus::DRIVER
                | DeviceStatus::FEATURES_OK
                | DeviceStatus::DRIVER_OK;
            ops.push_back(Op::Request(FrontendRequest::SetStatus { status }));
        }
    }

    /// Sends up to [`BATCH`] planned requests, and the round trip that ends the batch.
    fn send_batch(
        &mut self,
        session: &mut FrontendSession,
        now: Instant,
    ) -> Result<(), FrontendError> {
        let mut last = None;
        for _ in 0..BATCH {
            let Some(op) = self.ops.pop_front() else {
                break;
            };
            let r = match op {
                Op::Request(req) => session.send(now, req),
                Op::Call(i, fd) => session.set_vring_call(now, i, fd),
                Op::Err(i, fd) => session.set_vring_err(now, i, fd),
                Op::Channel => session.open_backend_channel(now),
            };
            last = Some(r.map_err(|e| self.failed(session, e))?);
        }
        // Under REPLY_ACK every request is acked, in order: the last ack ends the batch.
        // Without it, a GET_FEATURES round trip does.
        if !session.negotiated().reply_ack() || last.is_none() {
            last = Some(self.req(session, now, |c, now| c.get_features(now))?);
        }
        self.phase = Phase::Batch(last);
        Ok(())
    }
}
