//! The binding-independent half of a back-end session, for the runners (`vhost-io-std`'s
//! threads, `vhost-io-mio`'s event-loop sessions).
//!
//! A runner reads its socket into the [`Connection`] and writes what the connection wants
//! to send; everything the connection's [`Event`]s ask for is done here, once for every
//! runner, by [`SessionState::handle`]: device callbacks and answers (config space,
//! status, reset, MTU, RARP, ...), guest memory mapped from the memory table's fds,
//! started rings built into [`Queue`]s with their [`QueueHandler`](crate::QueueHandler)s,
//! GET_VRING_BASE positions, GET/SET_INFLIGHT_FD, the back-end channel.
//!
//! What differs between runners is where a queue runs: the std runner hands it to a worker
//! thread, the mio session keeps it and serves it inline. That part is the runner's
//! [`Rings`]. Operations that must wait until rings are quiesced (GET_VRING_BASE, a memory
//! change, RESET_DEVICE, disconnect) never block: `handle` asks the rings to stop and keeps
//! the answer token as a pending operation; the runner calls
//! [`SessionState::poll_pending`] whenever a ring may have quiesced, and the late answer
//! goes out then. While an answer is pending the connection processes no further request
//! (it buffers them), so replies keep the order of requests.

use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use vhost_proto::backend::{
    AckToken, Connection, Event, MemoryToken, Refused, RingState, RingStopToken,
};
// RingStartToken is answered through `answer_ring_started`.
use vhost_proto::session::{AddressSpace, ApiError, RingConfig, RingPosition};
use vhost_proto::wire::{InflightDesc, RegionFd, VirtioFeatures, VringEndian};
use vring::inflight::RingLayout;

use crate::channel::{BackendChannel, ChannelGate};
use crate::device::Device;
use crate::os::eventfd::EventFd;
use crate::os::mmap::{MappedRegion, MemoryMap, RegionLayout, SharedMapping};
use crate::os::notifier::NotifierRole;
use crate::os::sigbus::FaultProbe;
use crate::queue::{Memory, Queue};
use crate::served::ServedQueue;

/// Where a runner runs the started rings of one session: the part of event handling that
/// differs between runners. Nothing here may block: a stop is asked for with
/// [`begin_stop`](Self::begin_stop) and collected with [`poll_stop`](Self::poll_stop) once
/// the ring's handler has completed what it holds.
pub trait Rings<D: Device + ?Sized> {
    /// Runs `ring`, just built for a started ring (its notifiers are in
    /// `state.connection()`), and looks at it once (a start needs no kick, spec §7.2).
    fn run(&mut self, state: &SessionState<D>, ring: ServedQueue);

    /// Asks ring `index` to stop once its requests are completed
    /// ([`ServedQueue::begin_stop`]); nothing if it does not run.
    fn begin_stop(&mut self, index: u16);

    /// Ring `index` after [`begin_stop`](Self::begin_stop): `Pending` while requests are in
    /// flight; `Ready(Some)` with the stopped ring once quiesced (the runner no longer
    /// holds it); `Ready(None)` if it did not run or was lost.
    fn poll_stop(&mut self, index: u16) -> Poll<Option<ServedQueue>>;

    /// Ring `index` got a new `which` notifier (read it with [`SessionState::notifier`]).
    fn notifier_changed(&mut self, state: &SessionState<D>, index: u16, which: Notifier);

    /// Ring `index` was enabled or disabled (the queue's flag is updated and the device
    /// told already).
    fn ring_enabled(&mut self, state: &SessionState<D>, index: u16, enabled: bool) {
        let _ = (state, index, enabled);
    }

    /// An in-band kick of ring `index` (VRING_KICK, IN_BAND_NOTIFICATIONS).
    fn ring_kicked(&mut self, state: &SessionState<D>, index: u16) {
        let _ = (state, index);
    }
}

/// One of a ring's notifiers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notifier {
    /// The kick fd (driver to device).
    Kick,
    /// The call fd (device to driver).
    Call,
    /// The err fd (device to front-end: the ring broke).
    Err,
}

/// The inflight buffer handed over with SET_INFLIGHT_FD (spec §7.12).
#[derive(Debug)]
struct Inflight {
    region: vring::memory::SharedRegion,
    desc: InflightDesc,
    /// Tells whether the buffer's file was shrunk under the mapping.
    probe: Option<FaultProbe>,
}

impl Inflight {
    fn faulted(&self) -> bool {
        self.probe.as_ref().is_some_and(FaultProbe::faulted)
    }
}

/// An operation waiting for rings to quiesce.
#[derive(Debug)]
enum Pending {
    /// GET_VRING_BASE.
    Stop { index: u16, answer: RingStopToken },
    /// SET_VRING_ADDR on a started ring: restart it with the new addresses.
    Restart {
        config: RingConfig,
        answer: AckToken,
    },
    /// A new memory map, installed once every ring is quiet.
    Memory {
        map: MemoryMap,
        answer: MemoryAnswer,
    },
    /// Dirty logging turned on or off, or a new log: applied to every ring once it is
    /// quiet (SET_LOG_BASE answers then; SET_FEATURES with LOG_ALL has no answer to wait
    /// for: its events after it wait instead).
    Relog { answer: Option<AckToken> },
    /// RESET_DEVICE.
    Reset { answer: AckToken },
    /// The session ends.
    Close,
}

#[derive(Debug)]
enum MemoryAnswer {
    Table(MemoryToken),
    Removed(AckToken),
}

/// A pending operation and the rings it waits for.
#[derive(Debug)]
struct Waiting {
    op: Pending,
    /// Rings asked to stop and not collected yet.
    stopping: Vec<u16>,
    /// Rings collected so far.
    stopped: Vec<ServedQueue>,
}

/// One session's state besides its socket and its running rings: the protocol core, the
/// device, the guest memory, the rings' enabled flags, the inflight buffer, the back-end
/// channel's gate, the stopped rings waiting for their memory, and the operation waiting
/// for rings to quiesce.
pub struct SessionState<D: Device + ?Sized> {
    conn: Connection<OwnedFd>,
    device: Arc<D>,
    memory: MemoryMap,
    /// Shared with each ring's queue ([`Queue::is_enabled`]).
    enabled: Box<[Arc<AtomicBool>]>,
    /// Which rings the runner holds.
    running: Box<[bool]>,
    /// Started rings whose areas are not in the current memory: kept with their positions
    /// and retried on the next memory change.
    parked: Box<[Option<ServedQueue>]>,
    inflight: Option<Inflight>,
    /// The dirty log (SET_LOG_BASE) and whether logging is on (LOG_ALL acked).
    log: Option<vring::log::DirtyLog>,
    logging: bool,
    /// Shared with the back-end channels handed to the device.
    gate: Arc<ChannelGate>,
    waiting: Option<Waiting>,
    /// Events that arrived while an operation was pending (handled after it).
    deferred: VecDeque<Event<OwnedFd>>,
    closed: bool,
}

impl<D: Device + ?Sized> std::fmt::Debug for SessionState<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionState")
            .field("memory", &self.memory)
            .field("running", &self.running)
            .field("inflight", &self.inflight)
            .field("waiting", &self.waiting)
            .finish_non_exhaustive()
    }
}

impl<D: Device + ?Sized> SessionState<D> {
    /// A new session for `device` (its description sets up the protocol core).
    pub fn new(device: Arc<D>) -> Self {
        // A peer's pipe notifier with its read end closed must not kill us.
        if let Err(e) = crate::os::sigpipe::ignore() {
            log::warn!("vhost-backend: cannot ignore SIGPIPE: {e}");
        }
        let conn = Connection::new(device.description());
        let n = conn.rings().len();
        SessionState {
            conn,
            device,
            memory: MemoryMap::default(),
            enabled: (0..n).map(|_| Arc::new(AtomicBool::new(false))).collect(),
            running: vec![false; n].into_boxed_slice(),
            parked: (0..n).map(|_| None).collect(),
            inflight: None,
            log: None,
            logging: false,
            gate: Arc::new(ChannelGate::new()),
            waiting: None,
            deferred: VecDeque::new(),
            closed: false,
        }
    }

    /// The protocol state (features, rings, memory table, status).
    pub fn connection(&self) -> &Connection<OwnedFd> {
        &self.conn
    }

    /// The protocol core, to feed input to and take events and transmits from.
    pub fn connection_mut(&mut self) -> &mut Connection<OwnedFd> {
        &mut self.conn
    }

    /// The device.
    pub fn device(&self) -> &Arc<D> {
        &self.device
    }

    /// The current guest memory.
    pub fn memory(&self) -> &Memory {
        self.memory.memory()
    }

    /// Whether an operation waits for rings to quiesce: call
    /// [`poll_pending`](Self::poll_pending) when one of them may have.
    pub fn is_pending(&self) -> bool {
        self.waiting.is_some()
    }

    /// Whether [`close`](Self::close) has finished: every ring stopped, the device told.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// A duplicate of ring `index`'s `which` notifier, owned by the caller, checked to be
    /// an eventfd or the right end of a pipe and set non-blocking
    /// ([`EventFd::from_peer`]); `Ok(None)` if the ring has none.
    pub fn notifier(&self, index: u16, which: Notifier) -> io::Result<Option<EventFd>> {
        let fd = self
            .conn
            .ring(index)
            .and_then(|r: &RingState<OwnedFd>| match which {
                Notifier::Kick => r.kick(),
                Notifier::Call => r.call(),
                Notifier::Err => r.err(),
            });
        let role = match which {
            Notifier::Kick => NotifierRole::Kick,
            Notifier::Call => NotifierRole::Call,
            Notifier::Err => NotifierRole::Err,
        };
        fd.map(|fd| {
            let dup = rustix::io::fcntl_dupfd_cloexec(fd, 0)?;
            // Never block on a peer's notifier (a full call fd, a kick fd with nothing to
            // read), never spin on one that is always readable (a regular file).
            EventFd::from_peer(dup, role).map_err(io::Error::from)
        })
        .transpose()
    }

    /// Checks ring `index`'s `which` notifier (see [`notifier`](Self::notifier)).
    fn check_notifier(&self, index: u16, which: Notifier) -> Result<(), Refused> {
        match self.notifier(index, which) {
            Ok(_) => Ok(()),
            Err(e) => {
                log::warn!("vhost-backend: queue {index}: {which:?} fd refused: {e}");
                Err(Refused::because("the notifier is not an eventfd or pipe"))
            }
        }
    }

    /// Whether guest memory (or the inflight buffer) faulted under its mapping: the
    /// front-end shrank a file it shared ([`crate::os::sigbus`]). The session must end.
    pub fn memory_faulted(&self) -> bool {
        self.memory.faulted() || self.inflight.as_ref().is_some_and(|i| i.faulted())
    }

    /// Acts on one event of the connection: calls the device, maps memory, builds or stops
    /// rings through `rings`, and queues the answer (now, or when the rings it waits for
    /// have quiesced). `ConnectionLost` is the runner's to handle before (it is dropped
    /// here).
    pub fn handle<R: Rings<D> + ?Sized>(&mut self, event: Event<OwnedFd>, rings: &mut R) {
        if self.waiting.is_some() {
            self.deferred.push_back(event);
            return;
        }
        let r = self.dispatch(event, rings);
        self.sync_gate();
        if let Err(e) = r {
            // Our answers follow the tokens the connection handed out; a failure here is
            // a bug in the runtime, not the peer's doing.
            log::error!("vhost-backend: answering the session failed: {e}");
        }
        // A stop of rings that were not running completes at once.
        self.poll_pending(rings);
    }

    fn dispatch<R: Rings<D> + ?Sized>(
        &mut self,
        event: Event<OwnedFd>,
        rings: &mut R,
    ) -> Result<(), ApiError> {
        match event {
            Event::FeaturesSet { features } => {
                // Without PROTOCOL_FEATURES every ring is enabled (spec §7.2).
                self.sync_enabled();
                self.device.features_acked(features);
                // LOG_ALL turns dirty logging on or off (spec §7.7) at a quiet point.
                let logging = features.contains(VirtioFeatures::LOG_ALL);
                if logging != self.logging {
                    self.logging = logging;
                    self.begin(Pending::Relog { answer: None }, rings);
                }
                Ok(())
            }
            Event::LogBase { log, fd, answer } => {
                match SharedMapping::new(&fd, log.mmap_offset, log.mmap_size) {
                    Ok(m) => {
                        self.log = Some(vring::log::DirtyLog::new(m.into_shared_region()));
                        if self.logging {
                            self.begin(
                                Pending::Relog {
                                    answer: Some(answer),
                                },
                                rings,
                            );
                            Ok(())
                        } else {
                            self.conn.ack(answer, Ok(()))
                        }
                    }
                    Err(e) => {
                        log::warn!("vhost-backend: SET_LOG_BASE refused: {e}");
                        self.conn
                            .ack(answer, Err(Refused::because("cannot map the dirty log")))
                    }
                }
            }
            Event::LogFdChanged => Ok(()),
            Event::ProtocolFeaturesSet { features } => {
                self.device.protocol_features_acked(features);
                Ok(())
            }
            Event::MemoryTable { regions, answer } => {
                let map = |_: &MemoryMap| {
                    map_regions(regions).and_then(|r| MemoryMap::new(r).map_err(mapping_failed))
                };
                self.memory_update(answer, map, rings)
            }
            Event::MemoryRegionAdded { region, answer } => {
                let map = |current: &MemoryMap| {
                    map_regions(vec![region])
                        .and_then(|mut r| r.pop().ok_or(Refused::because("no region")))
                        .and_then(|r| current.with_region(r).map_err(mapping_failed))
                };
                self.memory_update(answer, map, rings)
            }
            Event::MemoryRegionRemoved { region, answer } => {
                match self
                    .memory
                    .without_region(region.guest_phys_addr, region.memory_size)
                {
                    Ok((map, _removed)) => {
                        self.begin(
                            Pending::Memory {
                                map,
                                answer: MemoryAnswer::Removed(answer),
                            },
                            rings,
                        );
                        Ok(())
                    }
                    Err(e) => self.conn.ack(answer, Err(mapping_failed(e))),
                }
            }
            Event::RingStarted { config, answer } => {
                let r = self.start_ring(&config, rings);
                self.conn.answer_ring_started(answer, r)
            }
            Event::RingStopped { index, answer } => {
                self.begin(Pending::Stop { index, answer }, rings);
                Ok(())
            }
            Event::RingConfigChanged { config, answer } => {
                self.begin(Pending::Restart { config, answer }, rings);
                Ok(())
            }
            Event::RingEnabled {
                index,
                enabled,
                answer,
            } => {
                if let Some(e) = self.enabled.get(usize::from(index)) {
                    e.store(enabled, Ordering::Release);
                }
                self.device.queue_enabled(index, enabled);
                rings.ring_enabled(self, index, enabled);
                self.conn.ack(answer, Ok(()))
            }
            Event::KickChanged { index, answer } => {
                // A notifier we cannot use is refused; the ring keeps the old one.
                let r = self.check_notifier(index, Notifier::Kick);
                if r.is_ok() {
                    rings.notifier_changed(self, index, Notifier::Kick);
                }
                self.conn.ack(answer, r)
            }
            Event::CallChanged { index, answer } => {
                // A notifier we cannot use is refused; the ring keeps the old one.
                let r = self.check_notifier(index, Notifier::Call);
                if r.is_ok() {
                    rings.notifier_changed(self, index, Notifier::Call);
                }
                self.conn.ack(answer, r)
            }
            Event::ErrChanged { index, answer } => {
                // A notifier we cannot use is refused; the ring keeps the old one.
                let r = self.check_notifier(index, Notifier::Err);
                if r.is_ok() {
                    rings.notifier_changed(self, index, Notifier::Err);
                }
                self.conn.ack(answer, r)
            }
            Event::RingKicked { index } => {
                rings.ring_kicked(self, index);
                Ok(())
            }
            Event::ConfigRead {
                offset,
                size,
                answer,
                ..
            } => {
                let mut data = vec![0u8; size as usize];
                match self.device.read_config(offset, &mut data) {
                    Ok(()) => self.conn.answer_config(answer, Ok(&data)),
                    Err(r) => self.conn.answer_config(answer, Err(r)),
                }
            }
            Event::ConfigWrite {
                offset,
                flags,
                data,
                answer,
            } => {
                let r = self.device.write_config(offset, &data, flags);
                self.conn.ack(answer, r)
            }
            Event::Status { status, answer } => {
                let r = self.device.set_status(status);
                self.conn.ack(answer, r)
            }
            Event::Reset { answer } => {
                self.begin(Pending::Reset { answer }, rings);
                Ok(())
            }
            Event::SendRarp { mac, answer } => {
                let r = self.device.send_rarp(mac);
                self.conn.ack(answer, r)
            }
            Event::SetMtu { mtu, answer } => {
                let r = self.device.set_mtu(mtu);
                self.conn.ack(answer, r)
            }
            Event::BackendChannel { fd, answer } => {
                self.sync_gate();
                let channel =
                    BackendChannel::with_gate(UnixStream::from(fd), Arc::clone(&self.gate));
                self.device.backend_channel_opened(channel);
                self.conn.ack(answer, Ok(()))
            }
            Event::InflightGet {
                num_queues,
                queue_size,
                packed,
                answer,
            } => {
                let r = new_inflight(num_queues, queue_size, packed);
                self.conn.answer_inflight(answer, r)
            }
            Event::InflightSet { desc, fd, answer } => {
                let r = self.set_inflight(desc, &fd);
                self.conn.ack(answer, r)
            }
            Event::Rejected { rejection } => {
                log::info!("vhost-backend: request refused: {rejection}");
                Ok(())
            }
            other => self.conn.refuse(other),
        }
    }

    /// SET_MEM_TABLE / ADD_MEM_REG: maps the new memory (`map` builds it from the current
    /// one), then installs it once every ring is quiet; a mapping failure is refused at once.
    fn memory_update<R: Rings<D> + ?Sized>(
        &mut self,
        answer: MemoryToken,
        map: impl FnOnce(&MemoryMap) -> Result<MemoryMap, Refused>,
        rings: &mut R,
    ) -> Result<(), ApiError> {
        if answer.postcopy() {
            return self.conn.answer_memory_postcopy(
                answer,
                Err(Refused::because("postcopy is not supported")),
            );
        }
        match map(&self.memory) {
            Ok(map) => {
                let answer = MemoryAnswer::Table(answer);
                self.begin(Pending::Memory { map, answer }, rings);
                Ok(())
            }
            Err(r) => self.conn.answer_memory(answer, Err(r)),
        }
    }

    /// Ends the session: every ring is asked to stop; once they have quiesced (see
    /// [`poll_pending`](Self::poll_pending) and [`is_closed`](Self::is_closed)) the
    /// device's channels are suspended and the device is told the front-end is gone. An
    /// operation still pending is dropped (its answer can no longer be sent).
    pub fn close<R: Rings<D> + ?Sized>(&mut self, rings: &mut R) {
        if self.closed
            || matches!(
                self.waiting,
                Some(Waiting {
                    op: Pending::Close,
                    ..
                })
            )
        {
            return;
        }
        let collected = self.waiting.take().map(|w| w.stopped).unwrap_or_default();
        self.deferred.clear();
        self.begin(Pending::Close, rings);
        if let Some(w) = self.waiting.as_mut() {
            w.stopped.extend(collected);
        }
        self.poll_pending(rings);
    }

    /// Starts `op`: asks every ring it needs stopped to stop.
    fn begin<R: Rings<D> + ?Sized>(&mut self, op: Pending, rings: &mut R) {
        let stopping: Vec<u16> = match &op {
            Pending::Stop { index, .. } => vec![*index],
            Pending::Restart { config, .. } => vec![config.index],
            Pending::Memory { .. }
            | Pending::Relog { .. }
            | Pending::Reset { .. }
            | Pending::Close => (0..self.running.len())
                .filter_map(|i| u16::try_from(i).ok())
                .collect(),
        };
        let stopping: Vec<u16> = stopping
            .into_iter()
            .filter(|&i| self.running.get(usize::from(i)).copied().unwrap_or(false))
            .collect();
        for &i in &stopping {
            rings.begin_stop(i);
        }
        self.waiting = Some(Waiting {
            op,
            stopping,
            stopped: Vec::new(),
        });
    }

    /// Collects the rings the pending operation waits for; once all have quiesced,
    /// finishes it (sends the late answer) and handles the events deferred meanwhile.
    /// Returns whether nothing is pending any more. Call it whenever a ring may have
    /// quiesced (a handler completed chains, a worker reported its stop).
    pub fn poll_pending<R: Rings<D> + ?Sized>(&mut self, rings: &mut R) -> bool {
        loop {
            let Some(w) = self.waiting.as_mut() else {
                return true;
            };
            let mut i = 0;
            while let Some(&index) = w.stopping.get(i) {
                match rings.poll_stop(index) {
                    Poll::Pending => i += 1,
                    Poll::Ready(q) => {
                        w.stopping.swap_remove(i);
                        if let Some(flag) = self.running.get_mut(usize::from(index)) {
                            *flag = false;
                        }
                        w.stopped.extend(q);
                    }
                }
            }
            if !w.stopping.is_empty() {
                return false;
            }
            let Some(w) = self.waiting.take() else {
                return true;
            };
            if let Err(e) = self.finish(w.op, w.stopped, rings) {
                log::error!("vhost-backend: answering the session failed: {e}");
            }
            self.sync_gate();
            // Events that came meanwhile (never requests: the connection waits for the
            // answer; only what it queued before) are handled now.
            while self.waiting.is_none() {
                let Some(event) = self.deferred.pop_front() else {
                    break;
                };
                let r = self.dispatch(event, rings);
                if let Err(e) = r {
                    log::error!("vhost-backend: answering the session failed: {e}");
                }
                self.sync_gate();
            }
            if self.waiting.is_none() {
                return true;
            }
        }
    }

    fn finish<R: Rings<D> + ?Sized>(
        &mut self,
        op: Pending,
        stopped: Vec<ServedQueue>,
        rings: &mut R,
    ) -> Result<(), ApiError> {
        match op {
            Pending::Stop { index, answer } => {
                let q = stopped.into_iter().next().or_else(|| {
                    self.parked
                        .get_mut(usize::from(index))
                        .and_then(Option::take)
                });
                let position = match q {
                    Some(q) => to_proto_position(q.queue().position()),
                    None => {
                        let packed = self.conn.negotiated().packed();
                        self.conn
                            .ring(index)
                            .map(|r| RingPosition::from_base(r.base(), packed))
                            .unwrap_or_default()
                    }
                };
                // The ring is stopped: a new SET_VRING_CALL comes before it restarts
                // (libvhost-user drops the old notifiers here too).
                self.conn.answer_ring_stopped(answer, position)
            }
            Pending::Restart { config, answer } => {
                let index = config.index;
                let old = stopped.into_iter().next().or_else(|| {
                    self.parked
                        .get_mut(usize::from(index))
                        .and_then(Option::take)
                });
                // Restart at the current position with the new addresses.
                let config = RingConfig {
                    position: old
                        .map(|q| to_proto_position(q.queue().position()))
                        .unwrap_or(config.position),
                    ..config
                };
                let r = self.start_ring(&config, rings);
                self.conn.ack(answer, r)
            }
            Pending::Memory { map, answer } => {
                self.memory = map;
                let parked: Vec<ServedQueue> =
                    self.parked.iter_mut().filter_map(Option::take).collect();
                for mut q in stopped.into_iter().chain(parked) {
                    if self.move_queue(&mut q) {
                        q.resume();
                        q.memory_changed();
                        self.run(q, rings);
                    } else {
                        self.park(q);
                    }
                }
                match answer {
                    MemoryAnswer::Table(t) => self.conn.answer_memory(t, Ok(())),
                    MemoryAnswer::Removed(t) => self.conn.ack(t, Ok(())),
                }
            }
            Pending::Relog { answer } => {
                for mut q in stopped {
                    self.apply_log(&mut q);
                    q.resume();
                    self.run(q, rings);
                }
                match answer {
                    Some(a) => self.conn.ack(a, Ok(())),
                    None => Ok(()),
                }
            }
            Pending::Reset { answer } => {
                drop(stopped);
                self.parked.iter_mut().for_each(|p| *p = None);
                self.inflight = None;
                self.log = None;
                self.logging = false;
                self.sync_enabled();
                self.device.reset();
                self.conn.ack(answer, Ok(()))
            }
            Pending::Close => {
                drop(stopped);
                self.parked.iter_mut().for_each(|p| *p = None);
                self.gate.set_suspended(true);
                self.closed = true;
                self.device.disconnected();
                Ok(())
            }
        }
    }

    /// Logs `q`'s writes in the dirty log while logging is on; stops logging otherwise.
    fn apply_log(&self, q: &mut ServedQueue) {
        let index = q.index();
        let used_log = self
            .conn
            .ring(index)
            .and_then(|r| r.addresses())
            .filter(|a| a.flags.contains(vhost_proto::wire::VringAddrFlags::LOG))
            .map(|a| a.log);
        let log = self.log.clone().filter(|_| self.logging);
        q.queue_mut().set_dirty_log(log, used_log);
    }

    fn run<R: Rings<D> + ?Sized>(&mut self, q: ServedQueue, rings: &mut R) {
        if let Some(flag) = self.running.get_mut(usize::from(q.index())) {
            *flag = true;
        }
        rings.run(self, q);
    }

    fn park(&mut self, q: ServedQueue) {
        let index = usize::from(q.index());
        log::warn!("vhost-backend: queue {index} parked: its ring is not in the new memory");
        if let Some(slot) = self.parked.get_mut(index) {
            *slot = Some(q);
        }
    }

    /// Moves a stopped ring onto the current guest memory; `false` if its ring is not in
    /// it (the queue keeps its old memory and must be parked).
    fn move_queue(&self, q: &mut ServedQueue) -> bool {
        q.queue_mut().set_memory(Arc::clone(self.memory())).is_ok()
    }

    /// Channels the device holds follow the session: its negotiation, and the suspended
    /// rule (spec §7.3: no back-end request while every ring is stopped; the protocol
    /// session leaves that rule to the runtime).
    fn sync_gate(&self) {
        self.gate.set_negotiated(*self.conn.negotiated());
        self.gate
            .set_suspended(self.closed || self.conn.is_suspended());
    }

    fn sync_enabled(&mut self) {
        for (i, e) in self.enabled.iter().enumerate() {
            let on = u16::try_from(i)
                .ok()
                .and_then(|i| self.conn.ring(i))
                .is_some_and(|r| r.enabled());
            e.store(on, Ordering::Release);
        }
    }

    /// Builds ring `config.index`'s queue and handler and hands them to `rings`; a ring
    /// that cannot run here is refused (the start is NACKed and the ring left stopped).
    fn start_ring<R: Rings<D> + ?Sized>(
        &mut self,
        config: &RingConfig,
        rings: &mut R,
    ) -> Result<(), Refused> {
        let index = config.index;
        if let Some(p) = self.parked.get_mut(usize::from(index)) {
            *p = None;
        }
        match self.build(config) {
            Ok(q) => {
                self.run(q, rings);
                Ok(())
            }
            Err(why) => {
                log::warn!("vhost-backend: queue {index} cannot start: {why:?}");
                Err(why)
            }
        }
    }

    fn build(&self, config: &RingConfig) -> Result<ServedQueue, Refused> {
        for which in [Notifier::Kick, Notifier::Call, Notifier::Err] {
            self.check_notifier(config.index, which)?;
        }
        let mut queue = self.build_queue(config)?;
        if self.logging {
            queue.set_dirty_log(self.log.clone(), config.used_log);
        }
        let handler = self.device.clone().start_queue(&queue)?;
        Ok(ServedQueue::new(queue, handler))
    }

    fn build_queue(&self, config: &RingConfig) -> Result<Queue, Refused> {
        let index = config.index;
        if config.address_space == AddressSpace::Iova {
            return Err(Refused::because(
                "IOVA ring addresses (IOMMU_PLATFORM) are not supported",
            ));
        }
        if config.endian.is_some_and(|e| e != VringEndian::Little) {
            return Err(Refused::because(
                "big-endian legacy rings are not supported",
            ));
        }
        let qc = vring::QueueConfig {
            size: config.size,
            desc_table: config.desc_table,
            driver_area: config.driver_area,
            device_area: config.device_area,
            features: vring::RingFeatures {
                event_idx: config.features.event_idx,
                indirect: config.features.indirect,
                in_order: config.features.in_order,
            },
        };
        let p = config.position;
        let position = vring::RingPosition {
            next_avail: p.next_avail,
            avail_wrap: p.avail_wrap,
            next_used: p.next_used,
            used_wrap: p.used_wrap,
        };
        let enabled = self
            .enabled
            .get(usize::from(index))
            .ok_or(Refused::because("no such ring"))?;
        let on = self.conn.ring(index).is_some_and(|r| r.enabled());
        enabled.store(on, Ordering::Release);
        let mut queue = Queue::new(
            index,
            config.packed,
            Arc::clone(self.memory()),
            &qc,
            position,
            Arc::clone(enabled),
        )
        .map_err(|e| {
            log::warn!("vhost-backend: queue {index}: the ring cannot be set up: {e}");
            Refused::because("the ring is not in guest memory or is malformed")
        })?;
        if let Some(inflight) = &self.inflight {
            let layout = if config.packed {
                RingLayout::Packed
            } else {
                RingLayout::Split
            };
            let attached = vring::inflight::queue_region(
                &inflight.region,
                layout,
                inflight.desc.queue_size,
                index,
            )
            .and_then(|r| queue.attach_inflight(r));
            match attached {
                Ok(0) => {}
                Ok(n) => {
                    log::info!("vhost-backend: queue {index}: resubmitting {n} inflight requests")
                }
                Err(e) => log::warn!("vhost-backend: queue {index}: inflight tracking off: {e}"),
            }
        }
        Ok(queue)
    }

    fn set_inflight(&mut self, desc: InflightDesc, fd: &OwnedFd) -> Result<(), Refused> {
        if desc.mmap_size == 0 {
            self.inflight = None;
            return Ok(());
        }
        match SharedMapping::new(fd, desc.mmap_offset, desc.mmap_size) {
            Ok(m) => {
                let probe = m.fault_probe();
                self.inflight = Some(Inflight {
                    region: m.into_shared_region(),
                    desc,
                    probe,
                });
                Ok(())
            }
            Err(e) => {
                log::warn!("vhost-backend: SET_INFLIGHT_FD refused: {e}");
                Err(Refused::because("cannot map the inflight buffer"))
            }
        }
    }
}

fn to_proto_position(p: vring::RingPosition) -> RingPosition {
    RingPosition {
        next_avail: p.next_avail,
        avail_wrap: p.avail_wrap,
        next_used: p.next_used,
        used_wrap: p.used_wrap,
    }
}

fn mapping_failed(e: crate::OsError) -> Refused {
    log::warn!("vhost-backend: memory update refused: {e}");
    Refused::because("mapping guest memory failed")
}

fn map_regions(regions: Vec<RegionFd<OwnedFd>>) -> Result<Vec<MappedRegion>, Refused> {
    regions
        .into_iter()
        .map(|r| {
            let layout = RegionLayout {
                guest_phys_addr: r.region.guest_phys_addr,
                memory_size: r.region.memory_size,
                user_addr: r.region.user_addr,
                mmap_offset: r.region.mmap_offset,
            };
            MappedRegion::map(layout, r.fd).map_err(mapping_failed)
        })
        .collect()
}

/// GET_INFLIGHT_FD: a zero-filled sealed memfd sized for the queues.
fn new_inflight(
    num_queues: u16,
    queue_size: u16,
    packed: bool,
) -> Result<(u64, u64, OwnedFd), Refused> {
    let layout = if packed {
        RingLayout::Packed
    } else {
        RingLayout::Split
    };
    let size = vring::inflight::region_size(layout, num_queues, queue_size) as u64;
    if size == 0 {
        return Err(Refused::because("no queues to track"));
    }
    match crate::os::memfd::create_sealed("vhost-inflight", size) {
        Ok(fd) => Ok((size, 0, fd)),
        Err(e) => {
            log::warn!("vhost-backend: cannot allocate the inflight buffer: {e}");
            Err(Refused::because("cannot allocate the inflight buffer"))
        }
    }
}
