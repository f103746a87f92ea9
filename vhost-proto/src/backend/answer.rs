//! The device's answers: each consumes its token, sends the reply or ack the request needs,
//! commits the state change, and resumes processing buffered requests.

use crate::session::{ApiError, Rejection, RingPosition, Rule};
use crate::wire::{CryptoSession, FrontendReply, FrontendReq, InflightDesc, MemoryRegion, Uuid};

use super::connection::{AfterAck, Connection, PostcopyState, WaitKind, Waiting};
use super::event::{
    AckToken, ConfigToken, CryptoToken, DeviceStateToken, Event, InflightToken, MemoryToken,
    PostcopyAdviseToken, Refused, RingStartToken, RingStopToken, SharedObjectToken,
};

const NOT_SUPPORTED: Refused = Refused {
    reason: Some("not supported by this device"),
};

impl<H> Connection<H> {
    /// Ends an answer: ack or NACK when the request wants one, log a refusal, resume.
    fn finish(&mut self, w: &Waiting, always: bool, result: Result<(), Refused>) {
        let replied = always || w.need_reply;
        if replied {
            self.push_raw_u64(w.code.raw(), u64::from(result.is_err()));
        }
        if let Err(r) = result {
            self.log_refusal(w.code, r, replied);
        }
    }

    /// Logs the device's refusal of request `code`; `replied`: the front-end was told (a
    /// NACK or the request's failure reply).
    fn log_refusal(&mut self, code: FrontendReq, r: Refused, replied: bool) {
        self.push_rejection(Rejection::frontend(
            code,
            Rule::Refused { reason: r.reason },
            replied,
        ));
    }

    fn wrong_token(&mut self, w: Waiting) -> ApiError {
        // Unreachable through the typed tokens; keep waiting rather than lose the request.
        self.waiting = Some(w);
        ApiError::StaleToken
    }

    fn after_answer(&mut self) {
        let _ = self.resume();
    }

    /// Sends the waiting request's reply and resumes.
    fn reply_and_resume(
        &mut self,
        code: FrontendReq,
        reply: FrontendReply<H>,
    ) -> Result<(), ApiError> {
        let _ = self.reply(code, reply);
        self.after_answer();
        Ok(())
    }

    /// Answers an [`AckToken`]: `Ok(())` when the device did what the event asked.
    pub fn ack(&mut self, token: AckToken, result: Result<(), Refused>) -> Result<(), ApiError> {
        let w = self.take_waiting(&token.ticket)?;
        let WaitKind::Ack { always, then } = &w.kind else {
            return Err(self.wrong_token(w));
        };
        let always = *always;
        if result.is_ok() {
            match then {
                AfterAck::Nothing => {}
                AfterAck::Status(s) => self.status = *s,
                AfterAck::LogBase(l) => self.log = Some(*l),
                AfterAck::Inflight => self.inflight = true,
                AfterAck::PostcopyListen => self.postcopy = PostcopyState::Listening,
                AfterAck::PostcopyEnd => {
                    self.postcopy = PostcopyState::Off;
                    self.postcopy_ack_pending = false;
                }
                AfterAck::RemoveRegion(r) => {
                    if let Ok(i) = self.memory.find(r) {
                        self.memory.remove(i);
                    }
                }
                AfterAck::CheckState => self.transfer = None,
                AfterAck::BackendChannel => self.backend_channel = true,
                AfterAck::RingRebuilt { .. } => {}
                AfterAck::NotifierChanged { .. } => {}
            }
        }
        if let AfterAck::NotifierChanged { index } = then
            && let Some(r) = self.rings.get_mut(usize::from(*index))
        {
            r.settle_notifier(result.is_ok());
        } else if result.is_err()
            && let AfterAck::RingRebuilt { index } = then
            && let Some(r) = self.rings.get_mut(usize::from(*index))
        {
            // The runner could not rebuild the ring on the new addresses and the old ones
            // are gone: it does not run.
            r.started = false;
        }
        self.finish(&w, always, result);
        self.after_answer();
        Ok(())
    }

    /// Answers a [`MemoryToken`] outside postcopy: `Ok(())` once every region is mapped.
    /// A refusal leaves the old table in place.
    pub fn answer_memory(
        &mut self,
        token: MemoryToken,
        result: Result<(), Refused>,
    ) -> Result<(), ApiError> {
        if token.postcopy() {
            return Err(ApiError::BadAnswer(
                "postcopy is listening: use answer_memory_postcopy",
            ));
        }
        let w = self.take_waiting(&token.ticket)?;
        match (&w.kind, result.is_ok()) {
            (WaitKind::MemoryTable { regions, .. }, true) => self.memory.replace(regions.clone()),
            (WaitKind::MemoryAdd { region, .. }, true) => self.memory.add(*region),
            (WaitKind::MemoryTable { .. } | WaitKind::MemoryAdd { .. }, false) => {}
            _ => return Err(self.wrong_token(w)),
        }
        self.finish(&w, false, result);
        self.after_answer();
        Ok(())
    }

    /// Answers a [`MemoryToken`] while postcopy listens: the back-end's mapping address of
    /// each region, in order (spec §7.7). The front-end acknowledges with
    /// [`Event::PostcopyMemoryReady`].
    pub fn answer_memory_postcopy(
        &mut self,
        token: MemoryToken,
        result: Result<Vec<u64>, Refused>,
    ) -> Result<(), ApiError> {
        if !token.postcopy() {
            return Err(ApiError::BadAnswer(
                "postcopy is not listening: use answer_memory",
            ));
        }
        let w = self.take_waiting(&token.ticket)?;
        let count = match &w.kind {
            WaitKind::MemoryTable { regions, .. } => regions.len(),
            WaitKind::MemoryAdd { .. } => 1,
            _ => return Err(self.wrong_token(w)),
        };
        let mapped = match result {
            Ok(m) if m.len() == count => m,
            Ok(_) => {
                self.waiting = Some(w);
                return Err(ApiError::BadAnswer("one mapping address per region"));
            }
            Err(r) => {
                self.push_raw_u64(w.code.raw(), 1);
                self.log_refusal(w.code, r, true);
                self.after_answer();
                return Ok(());
            }
        };
        let with = |r: &MemoryRegion, user_addr: u64| MemoryRegion { user_addr, ..*r };
        let reply = match &w.kind {
            WaitKind::MemoryTable { regions, .. } => {
                let out = regions
                    .iter()
                    .zip(&mapped)
                    .map(|(r, a)| with(r, *a))
                    .collect();
                self.memory.replace(regions.clone());
                FrontendReply::MemTable { regions: out }
            }
            WaitKind::MemoryAdd { region, .. } => {
                self.memory.add(*region);
                FrontendReply::AddMemReg {
                    region: with(region, mapped.first().copied().unwrap_or_default()),
                }
            }
            _ => return Ok(()),
        };
        self.postcopy_ack_pending = true;
        self.reply_and_resume(w.code, reply)
    }

    /// Answers a [`RingStartToken`]: `Ok(())` once the ring's worker runs; the kick
    /// (SET_VRING_KICK or VRING_KICK) is then acked if it asked for a reply. A refusal
    /// marks the ring stopped again, NACKs the kick when it asked for a reply, and reports
    /// an [`Event::Rejected`].
    ///
    /// ```
    /// use vhost_proto::backend::{Connection, DeviceDescription, Event, Refused};
    /// use vhost_proto::wire::*;
    ///
    /// let desc = DeviceDescription::new(VirtioFeatures::VERSION_1, ProtocolFeatures::REPLY_ACK, 1);
    /// let mut conn = Connection::<i32>::new(desc);
    /// let ctx = DecodeContext::default();
    /// let send = |conn: &mut Connection<i32>, r: FrontendRequest<i32>, need_reply| {
    ///     let e = r.encode(need_reply, &ctx).unwrap();
    ///     conn.handle_input(&e.bytes, e.fds).unwrap();
    /// };
    /// let region = MemoryRegion {
    ///     guest_phys_addr: 0, memory_size: 0x10000, user_addr: 0x7000_0000, mmap_offset: 0, xen: None,
    /// };
    /// send(&mut conn, FrontendRequest::SetMemTable { regions: vec![RegionFd { region, fd: 3 }] }, false);
    /// let Some(Event::MemoryTable { answer, .. }) = conn.poll_event() else { panic!() };
    /// conn.answer_memory(answer, Ok(())).unwrap();
    /// send(&mut conn, FrontendRequest::SetVringNum { index: 0, num: 256 }, false);
    /// let addr = VringAddr {
    ///     index: 0, flags: VringAddrFlags::empty(), log: 0,
    ///     desc: 0x7000_0000, avail: 0x7000_1000, used: 0x7000_2000,
    /// };
    /// send(&mut conn, FrontendRequest::SetVringAddr { addr }, false);
    /// send(&mut conn, FrontendRequest::SetVringKick { index: 0, fd: Some(4) }, true);
    ///
    /// // The ring starts: no ack yet, the connection waits for the runner.
    /// let Some(Event::RingStarted { config, answer }) = conn.poll_event() else { panic!() };
    /// assert_eq!(config.size, 256);
    /// assert!(conn.poll_transmit().is_none() && conn.is_waiting());
    /// // The worker could not be set up: the kick is NACKed and the ring stays stopped.
    /// conn.answer_ring_started(answer, Err(Refused::because("no worker"))).unwrap();
    /// let nack = conn.poll_transmit().unwrap();
    /// assert_eq!(&nack.bytes[12..], &1u64.to_ne_bytes());
    /// assert!(!conn.ring(0).unwrap().started());
    /// assert!(matches!(conn.poll_event(), Some(Event::Rejected { .. })));
    /// ```
    pub fn answer_ring_started(
        &mut self,
        token: RingStartToken,
        result: Result<(), Refused>,
    ) -> Result<(), ApiError> {
        let w = self.take_waiting(&token.ticket)?;
        let WaitKind::RingStart { index } = w.kind else {
            return Err(self.wrong_token(w));
        };
        if result.is_err()
            && let Some(r) = self.rings.get_mut(usize::from(index))
        {
            r.started = false;
        }
        self.finish(&w, false, result);
        self.after_answer();
        Ok(())
    }

    /// Answers a [`RingStopToken`] with the position the ring stopped at (the next
    /// SET_VRING_KICK resumes there unless SET_VRING_BASE says otherwise).
    pub fn answer_ring_stopped(
        &mut self,
        token: RingStopToken,
        position: RingPosition,
    ) -> Result<(), ApiError> {
        let w = self.take_waiting(&token.ticket)?;
        let WaitKind::RingStop { index } = w.kind else {
            return Err(self.wrong_token(w));
        };
        let base = position.to_base(self.neg.packed());
        if let Some(r) = self.rings.get_mut(usize::from(index)) {
            r.base = base;
        }
        self.reply_and_resume(
            FrontendReq::GetVringBase,
            FrontendReply::VringBase {
                index: index.into(),
                base,
            },
        )
    }

    /// Answers a [`ConfigToken`] with exactly the requested bytes, or refuses (the reply is
    /// then an empty config, the spec's failure form).
    pub fn answer_config(
        &mut self,
        token: ConfigToken,
        result: Result<&[u8], Refused>,
    ) -> Result<(), ApiError> {
        let w = self.take_waiting(&token.ticket)?;
        let WaitKind::Config {
            offset,
            size,
            flags,
        } = w.kind
        else {
            return Err(self.wrong_token(w));
        };
        match result {
            Ok(data) if data.len() == size as usize => {
                let _ = self.reply(
                    w.code,
                    FrontendReply::Config {
                        offset,
                        flags,
                        data: data.to_vec(),
                    },
                );
            }
            Ok(_) => {
                self.waiting = Some(w);
                return Err(ApiError::BadAnswer(
                    "config data must have the requested size",
                ));
            }
            Err(r) => {
                let _ = self.reply(w.code, FrontendReply::Empty);
                self.log_refusal(w.code, r, true);
            }
        }
        self.after_answer();
        Ok(())
    }

    /// Answers a [`CryptoToken`] with the new session id (a refusal replies id -1).
    pub fn answer_crypto_session(
        &mut self,
        token: CryptoToken,
        result: Result<i64, Refused>,
    ) -> Result<(), ApiError> {
        let w = self.take_waiting(&token.ticket)?;
        let WaitKind::Crypto { session } = &w.kind else {
            return Err(self.wrong_token(w));
        };
        let id = match result {
            Ok(id) if id >= 0 => id,
            Ok(_) => {
                self.waiting = Some(w);
                return Err(ApiError::BadAnswer("a session id is non-negative"));
            }
            Err(r) => {
                self.log_refusal(w.code, r, true);
                -1
            }
        };
        let mut bytes = session.0;
        if let Some(dst) = bytes.get_mut(1064..1072) {
            dst.copy_from_slice(&id.to_ne_bytes());
        }
        self.reply_and_resume(
            w.code,
            FrontendReply::CryptoSession {
                session: Box::new(CryptoSession(bytes)),
            },
        )
    }

    /// Answers a [`PostcopyAdviseToken`] with the userfaultfd.
    pub fn answer_postcopy_advise(
        &mut self,
        token: PostcopyAdviseToken,
        result: Result<H, Refused>,
    ) -> Result<(), ApiError> {
        let w = self.take_waiting(&token.ticket)?;
        let WaitKind::PostcopyAdvise = w.kind else {
            return Err(self.wrong_token(w));
        };
        match result {
            Ok(fd) => {
                self.postcopy = PostcopyState::Advised;
                let _ = self.reply(w.code, FrontendReply::PostcopyAdvise { fd });
            }
            Err(r) => {
                let _ = self.failure_reply(w.code);
                self.log_refusal(w.code, r, true);
            }
        }
        self.after_answer();
        Ok(())
    }

    /// Answers an [`InflightToken`] with the buffer's size, offset and fd; a refusal replies
    /// "no buffer" (mmap_size 0, no fd), which QEMU accepts.
    pub fn answer_inflight(
        &mut self,
        token: InflightToken,
        result: Result<(u64, u64, H), Refused>,
    ) -> Result<(), ApiError> {
        let w = self.take_waiting(&token.ticket)?;
        let WaitKind::Inflight {
            num_queues,
            queue_size,
        } = w.kind
        else {
            return Err(self.wrong_token(w));
        };
        let reply = match result {
            Ok((mmap_size, mmap_offset, fd)) => FrontendReply::InflightFd {
                desc: InflightDesc {
                    mmap_size,
                    mmap_offset,
                    num_queues,
                    queue_size,
                },
                fd: Some(fd),
            },
            Err(r) => {
                self.log_refusal(w.code, r, true);
                FrontendReply::InflightFd {
                    desc: InflightDesc {
                        num_queues,
                        queue_size,
                        ..Default::default()
                    },
                    fd: None,
                }
            }
        };
        self.reply_and_resume(w.code, reply)
    }

    /// Answers a [`SharedObjectToken`] with the object's dma-buf fd.
    pub fn answer_shared_object(
        &mut self,
        token: SharedObjectToken,
        result: Result<H, Refused>,
    ) -> Result<(), ApiError> {
        let w = self.take_waiting(&token.ticket)?;
        let WaitKind::SharedObject = w.kind else {
            return Err(self.wrong_token(w));
        };
        let fd = match result {
            Ok(fd) => Some(fd),
            Err(r) => {
                self.log_refusal(w.code, r, true);
                None
            }
        };
        self.reply_and_resume(
            w.code,
            FrontendReply::SharedObject {
                uuid: None::<Uuid>,
                fd,
            },
        )
    }

    /// Answers a [`DeviceStateToken`]: `Ok(Some(fd))` to offer the device's own channel
    /// end (the front-end then drops its own), `Ok(None)` to use the front-end's.
    pub fn answer_device_state(
        &mut self,
        token: DeviceStateToken,
        result: Result<Option<H>, Refused>,
    ) -> Result<(), ApiError> {
        let w = self.take_waiting(&token.ticket)?;
        let WaitKind::DeviceState { direction } = w.kind else {
            return Err(self.wrong_token(w));
        };
        let reply = match result {
            Ok(fd) => {
                self.transfer = Some(direction);
                FrontendReply::DeviceStateFd { status: 0, fd }
            }
            Err(r) => {
                self.log_refusal(w.code, r, true);
                FrontendReply::DeviceStateFd {
                    status: 1,
                    fd: None,
                }
            }
        };
        self.reply_and_resume(w.code, reply)
    }

    /// Refuses whatever `event` asks, for events a device does not handle: every token is
    /// answered with its failure form (a stopped ring reports the last known base; a ring
    /// start is refused, so the ring stays stopped), handles are dropped. Events without a
    /// token are simply dropped.
    pub fn refuse(&mut self, event: Event<H>) -> Result<(), ApiError> {
        match event {
            Event::MemoryTable { answer, .. } | Event::MemoryRegionAdded { answer, .. } => {
                if answer.postcopy() {
                    self.answer_memory_postcopy(answer, Err(NOT_SUPPORTED))
                } else {
                    self.answer_memory(answer, Err(NOT_SUPPORTED))
                }
            }
            Event::MemoryRegionRemoved { answer, .. }
            | Event::LogBase { answer, .. }
            | Event::ConfigWrite { answer, .. }
            | Event::Status { answer, .. }
            | Event::Reset { answer }
            | Event::GpuSocket { answer, .. }
            | Event::SendRarp { answer, .. }
            | Event::SetMtu { answer, .. }
            | Event::Iotlb { answer, .. }
            | Event::CryptoSessionClose { answer, .. }
            | Event::PostcopyListen { answer }
            | Event::PostcopyEnd { answer }
            | Event::InflightSet { answer, .. }
            | Event::DeviceStateCheck { answer }
            | Event::RingConfigChanged { answer, .. }
            | Event::RingEnabled { answer, .. }
            | Event::KickChanged { answer, .. }
            | Event::CallChanged { answer, .. }
            | Event::ErrChanged { answer, .. }
            | Event::BackendChannel { answer, .. } => self.ack(answer, Err(NOT_SUPPORTED)),
            Event::RingStarted { answer, .. } => {
                self.answer_ring_started(answer, Err(NOT_SUPPORTED))
            }
            Event::RingStopped { index, answer } => {
                let packed = self.neg.packed();
                let pos = self
                    .ring(index)
                    .map(|r| RingPosition::from_base(r.base, packed))
                    .unwrap_or_default();
                self.answer_ring_stopped(answer, pos)
            }
            Event::ConfigRead { answer, .. } => self.answer_config(answer, Err(NOT_SUPPORTED)),
            Event::CryptoSessionCreate { answer, .. } => {
                self.answer_crypto_session(answer, Err(NOT_SUPPORTED))
            }
            Event::PostcopyAdvise { answer } => {
                self.answer_postcopy_advise(answer, Err(NOT_SUPPORTED))
            }
            Event::InflightGet { answer, .. } => self.answer_inflight(answer, Err(NOT_SUPPORTED)),
            Event::SharedObjectGet { answer, .. } => {
                self.answer_shared_object(answer, Err(NOT_SUPPORTED))
            }
            Event::DeviceStateTransfer { answer, .. } => {
                self.answer_device_state(answer, Err(NOT_SUPPORTED))
            }
            _ => Ok(()),
        }
    }
}
