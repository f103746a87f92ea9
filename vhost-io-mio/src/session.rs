//! One back-end connection as a [`mio::event::Source`]: the socket, the protocol core, the
//! write queue and the started queues of one front-end, all driven from the caller's thread.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use mio::net::UnixStream;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use vhost_io_std::backend::{
    Device, Framer, Queue, map_regions, mapping_failed, new_inflight, to_proto_position,
};
use vhost_io_std::os::eventfd::EventFd;
use vhost_io_std::os::mmap::{MemoryMap, SharedMapping};
use vhost_io_std::os::socket::{recv_with_fds, send_with_fds};
use vhost_proto::backend::{Connection, Event, MemoryToken, Refused, Transmit};
use vhost_proto::session::{AddressSpace, ApiError, RingConfig, RingPosition};
use vhost_proto::wire::InflightDesc;
use vring::inflight::RingLayout;

use crate::Error;

/// Bytes read per `recvmsg`, on the stack of the call (no per-session buffer): the largest
/// request fits, and several small pipelined ones.
const READ_BUF: usize = 8192;

/// `recvmsg` calls per [`Session::ready`] before the session yields to the others: a peer
/// that never stops sending must not starve them. The socket is re-armed (`EPOLL_CTL_MOD`
/// reports it again while it is readable), so nothing is lost.
const READ_BUDGET: usize = 32;

/// Rounds of `process_queue` per ring and wakeup before the ring yields to the other
/// sessions (it kicks itself to come back: no lost wakeup, no starvation).
const MAX_ROUNDS: usize = 8;

/// Whether a session goes on after [`Session::ready`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Still serving; wait for its next event.
    Open,
    /// The front-end closed the connection; the session is closed (queues stopped, fds
    /// deregistered): drop it.
    Closed,
}

/// A started ring: its queue and the notifier duplicates this session registered.
#[derive(Debug, Default)]
struct Ring {
    queue: Option<Queue>,
    /// Stopped because its ring is not in the current memory; keeps its position.
    parked: bool,
    /// A malformed chain or a dead notifier: no more processing until restarted.
    broken: bool,
    /// No kick fd (spec §3.1 "poll the ring") or one epoll refused: processed on every
    /// event of the session.
    polled: bool,
    /// Our duplicate of the kick fd, registered under the session's token.
    kick: Option<EventFd>,
    /// The device's wakeup fd ([`Device::queue_wakeup`]), registered the same way.
    wake: Option<EventFd>,
    call: Option<EventFd>,
    err: Option<EventFd>,
    enabled: Option<Arc<AtomicBool>>,
}

impl Ring {
    fn running(&self) -> bool {
        self.queue.is_some() && !self.parked
    }
}

/// A message being written: the fds go with the first byte that leaves.
#[derive(Debug)]
struct Outgoing {
    transmit: Transmit<OwnedFd>,
    sent: usize,
}

/// The inflight buffer handed over with SET_INFLIGHT_FD (spec §7.12).
#[derive(Debug)]
struct Inflight {
    region: vring::memory::SharedRegion,
    desc: InflightDesc,
}

/// One front-end connection served in the caller's event loop.
///
/// Register it in your `mio::Poll` with a token of yours ([`mio::Registry::register`]); call
/// [`ready`](Self::ready) whenever an event carries that token. The session registers the
/// kick fds of its started rings (and the device's [`Device::queue_wakeup`] fds) itself,
/// **under the same token**, so one token per session is all the caller manages. Everything
/// is edge-triggered and non-blocking: `ready` reads until `WouldBlock`, writes until the
/// socket is full (the rest waits for the writable edge, with fds on the first byte),
/// consumes every signalled kick and lets the device process those rings, in this thread.
///
/// Interests passed to `register` are ignored: the session needs readable and writable
/// edges of its socket and readable edges of its kick fds.
///
/// Before dropping a session that is still registered, call [`close`](Self::close) (or
/// deregister it): kick fds are shared with the front-end, so epoll would otherwise keep
/// reporting them under the old token until the front-end closes them.
///
/// `D` may be `dyn Device` to serve different device types in one loop.
pub struct Session<D: Device + ?Sized> {
    stream: UnixStream,
    conn: Connection<OwnedFd>,
    device: Arc<D>,
    framer: Framer,
    out: Option<Outgoing>,
    memory: MemoryMap,
    rings: Box<[Ring]>,
    inflight: Option<Inflight>,
    token: Option<Token>,
    closed: bool,
}

impl<D: Device + ?Sized> std::fmt::Debug for Session<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("stream", &self.stream)
            .field("token", &self.token)
            .field("closed", &self.closed)
            .field("rings", &self.rings)
            .finish_non_exhaustive()
    }
}

impl<D: Device + ?Sized> Session<D> {
    /// A session on a connected, non-blocking socket (from [`mio::net::UnixStream`] or
    /// [`Listener::accept`](crate::Listener::accept)).
    pub fn new(stream: UnixStream, device: Arc<D>) -> Self {
        let conn = Connection::new(device.description());
        let rings = (0..conn.rings().len()).map(|_| Ring::default()).collect();
        Session {
            stream,
            conn,
            device,
            framer: Framer::default(),
            out: None,
            memory: MemoryMap::default(),
            rings,
            inflight: None,
            token: None,
            closed: false,
        }
    }

    /// A session on a connected std socket (e.g. the `--fd` convention or one end of a
    /// socketpair); it is switched to non-blocking mode.
    pub fn from_std(stream: std::os::unix::net::UnixStream, device: Arc<D>) -> Result<Self, Error> {
        stream
            .set_nonblocking(true)
            .map_err(|e| Error::io("fcntl(O_NONBLOCK)", e))?;
        Ok(Self::new(UnixStream::from_std(stream), device))
    }

    /// The protocol state (features, rings, memory table, status).
    pub fn connection(&self) -> &Connection<OwnedFd> {
        &self.conn
    }

    /// The device.
    pub fn device(&self) -> &Arc<D> {
        &self.device
    }

    /// The token the session is registered under, if it is.
    pub fn token(&self) -> Option<Token> {
        self.token
    }

    /// Whether the session has ended ([`ready`](Self::ready) returned `Closed` or an error,
    /// or [`close`](Self::close) was called).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Serves whatever the session's event announced: reads and processes requests until
    /// the socket would block, writes replies, handles the device's side of each request,
    /// and processes every kicked ring. Call it for each event with the session's token
    /// (extra calls are harmless: a few `EAGAIN`s).
    ///
    /// `Ok(Status::Closed)` when the front-end hung up; an error when the connection failed
    /// (the front-end broke the protocol, or a system call failed). Either way the session
    /// is closed and deregistered from `registry`: drop it. The one exception is
    /// [`Error::NotRegistered`]: register the session, then call again.
    pub fn ready(&mut self, registry: &Registry) -> Result<Status, Error> {
        if self.closed {
            return Ok(Status::Closed);
        }
        if self.token.is_none() {
            return Err(Error::NotRegistered);
        }
        let r = match self.drive(registry) {
            // The front-end hung up while we still had replies for it: a disconnect.
            Err(Error::Io { source, .. })
                if matches!(
                    source.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                Ok(Status::Closed)
            }
            r => r,
        };
        if !matches!(r, Ok(Status::Open)) {
            self.shutdown(Some(registry));
        }
        r
    }

    /// Ends the session: stops its queues (the device hears `queue_stopped` and
    /// `disconnected`), deregisters every fd from `registry` and closes the connection.
    pub fn close(mut self, registry: &Registry) {
        self.shutdown(Some(registry));
    }

    fn drive(&mut self, registry: &Registry) -> Result<Status, Error> {
        let mut budget = READ_BUDGET;
        loop {
            let wrote = self.pump(registry)?;
            let read = match self.read(registry, &mut budget)? {
                Read::Eof => return Ok(Status::Closed),
                Read::Some => true,
                Read::Nothing => false,
                Read::Yield => {
                    self.rearm(registry)?;
                    break;
                }
            };
            if self.conn.is_closed() {
                return Err(Error::Protocol(vhost_proto::session::FatalError::Closed));
            }
            if !wrote && !read {
                break;
            }
        }
        self.service_rings(registry);
        Ok(Status::Open)
    }

    /// Reads until the socket would block (or the connection's input buffer is full: the
    /// writable edge resumes it), feeding each read to the connection.
    fn read(&mut self, registry: &Registry, budget: &mut usize) -> Result<Read, Error> {
        let mut buf = [0u8; READ_BUF];
        let mut got = false;
        loop {
            if *budget == 0 {
                return Ok(Read::Yield);
            }
            *budget -= 1;
            let room = self.conn.input_room().min(READ_BUF);
            if room == 0 {
                break;
            }
            let mut fds = Vec::new();
            let read = buf.get_mut(..room).unwrap_or_default();
            let n = match recv_with_fds(&self.stream, read, &mut fds) {
                Ok(0) => return Ok(Read::Eof),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(Read::Eof),
                Err(e) => return Err(Error::io("recvmsg", e)),
            };
            got = true;
            let bytes = buf.get(..n).unwrap_or_default();
            // The fds belong to the last message whose header starts in this read.
            let split = self
                .framer
                .last_header_start(bytes)
                .filter(|&s| s > 0 && !fds.is_empty());
            match split.and_then(|s| Some((bytes.get(..s)?, bytes.get(s..)?))) {
                Some((before, last)) => {
                    self.conn.handle_input(before, Vec::new())?;
                    self.pump(registry)?;
                    self.conn.handle_input(last, fds)?;
                }
                None => self.conn.handle_input(bytes, fds)?,
            }
            self.pump(registry)?;
        }
        Ok(if got { Read::Some } else { Read::Nothing })
    }

    /// Handles every pending event and writes every pending transmit the socket takes;
    /// `true` if anything was written.
    fn pump(&mut self, registry: &Registry) -> Result<bool, Error> {
        let mut wrote = false;
        loop {
            let (sent, blocked) = self.flush()?;
            wrote |= sent;
            match self.conn.poll_event() {
                Some(Event::ConnectionLost { error }) => return Err(error.into()),
                Some(event) => self.handle(event, registry),
                None if blocked || self.out.is_none() => return Ok(wrote),
                None => {}
            }
        }
    }

    /// Writes transmits until none is left or the socket is full: (wrote something, full).
    fn flush(&mut self) -> Result<(bool, bool), Error> {
        let mut wrote = false;
        loop {
            if self.out.is_none() {
                match self.conn.poll_transmit() {
                    Some(transmit) => self.out = Some(Outgoing { transmit, sent: 0 }),
                    None => return Ok((wrote, false)),
                }
            }
            let Some(out) = self.out.as_mut() else {
                return Ok((wrote, false));
            };
            let rest = out.transmit.bytes.get(out.sent..).unwrap_or_default();
            let fds: Vec<BorrowedFd<'_>> = if out.sent == 0 {
                out.transmit.fds.iter().map(AsFd::as_fd).collect()
            } else {
                Vec::new()
            };
            match send_with_fds(&self.stream, rest, &fds) {
                Ok(0) if !rest.is_empty() => {
                    return Err(Error::io("sendmsg", io::ErrorKind::WriteZero));
                }
                Ok(n) => {
                    wrote = true;
                    out.sent += n;
                    if out.sent >= out.transmit.bytes.len() {
                        // Sent: our copies of its fds close here.
                        self.out = None;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((wrote, true)),
                Err(e) => return Err(Error::io("sendmsg", e)),
            }
        }
    }

    /// Asks epoll to report the socket again if it is still ready (edge-triggered
    /// registrations re-check the state on `EPOLL_CTL_MOD`).
    fn rearm(&mut self, registry: &Registry) -> Result<(), Error> {
        let Some(token) = self.token else {
            return Err(Error::NotRegistered);
        };
        registry
            .reregister(
                &mut self.stream,
                token,
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| Error::io("epoll_ctl", e))
    }

    /// Whether a started ring has no kick fd to watch (the front-end's no-fd flag, spec
    /// §3.1, or a kick fd epoll refuses) and must be looked at periodically: call
    /// [`ready`](Self::ready) every millisecond or so while this holds ([`Server`](crate::Server)
    /// does).
    pub fn wants_polling(&self) -> bool {
        !self.closed
            && self
                .rings
                .iter()
                .any(|r| r.running() && r.polled && !r.broken)
    }

    /// Consumes every signalled kick and wakeup fd and processes those rings.
    fn service_rings(&mut self, registry: &Registry) {
        for i in 0..self.rings.len() {
            let Some(ring) = self.rings.get_mut(i) else {
                continue;
            };
            if !ring.running() || ring.broken {
                continue;
            }
            let mut work = ring.polled;
            for fd in [&ring.kick, &ring.wake].into_iter().flatten() {
                match fd.try_consume() {
                    Ok(c) => work |= c,
                    Err(e) => {
                        log::warn!("vhost-io-mio: queue {i}: its notifier failed: {e}");
                        ring.broken = true;
                    }
                }
            }
            if ring.broken {
                self.deregister_ring(i, registry);
                continue;
            }
            if work {
                self.process(i);
            }
        }
    }

    /// Lets the device drain ring `i`, kicks suppressed meanwhile (virtqueue spec §2.9:
    /// re-check after re-enabling), then signals the call fd if the driver asked for it.
    fn process(&mut self, i: usize) {
        let device = &self.device;
        let Some(ring) = self.rings.get_mut(i) else {
            return;
        };
        if ring.broken || ring.parked {
            return;
        }
        let Some(q) = ring.queue.as_mut() else {
            return;
        };
        let call = ring.call.as_ref();
        let mut result = Ok(());
        let mut again = false;
        for round in 0..MAX_ROUNDS {
            q.disable_notifications();
            let before = q.pops();
            if let Err(e) = pass(device.as_ref(), q, i, call) {
                result = Err(e);
                break;
            }
            match q.enable_notifications() {
                Ok(false) => break,
                Ok(true) => {}
                Err(e) => {
                    result = Err(Broken::Ring(e));
                    break;
                }
            }
            if q.pops() == before {
                // Chains are there but this pass took none. They may have arrived after the
                // device's last pop, published by a driver that saw kicks suppressed and
                // did not kick: look once more, with kicks enabled now (a publish meanwhile
                // kicks, so no wakeup is lost). A device that leaves chains on purpose (an
                // RX queue without packets) is called once more, not spun.
                if let Err(e) = pass(device.as_ref(), q, i, call) {
                    result = Err(e);
                    break;
                }
                if q.pops() == before {
                    break;
                }
            }
            again = round + 1 == MAX_ROUNDS;
        }
        if let Err(e) = result {
            log::error!("vhost-io-mio: queue {i} stopped processing: {e}");
            ring.broken = true;
            if let Some(err) = &ring.err
                && let Err(e) = err.signal()
            {
                log::warn!("vhost-io-mio: queue {i}: cannot signal the err fd: {e}");
            }
        } else if again {
            // Still busy: come back through the loop, after the other sessions.
            match &ring.kick {
                Some(k) => {
                    if let Err(e) = k.signal() {
                        log::warn!("vhost-io-mio: queue {i}: cannot re-kick itself: {e}");
                    }
                }
                None => log::debug!("vhost-io-mio: queue {i}: busy polled ring yields"),
            }
        }
    }

    fn handle(&mut self, event: Event<OwnedFd>, registry: &Registry) {
        let r = match event {
            Event::FeaturesSet { features } => {
                // Without PROTOCOL_FEATURES every ring is enabled (spec §7.2).
                self.sync_enabled();
                self.device.features_acked(features);
                Ok(())
            }
            Event::ProtocolFeaturesSet { features } => {
                self.device.protocol_features_acked(features);
                Ok(())
            }
            Event::MemoryTable { regions, answer } => {
                let result =
                    map_regions(regions).and_then(|r| MemoryMap::new(r).map_err(mapping_failed));
                self.memory_answer(answer, result, registry)
            }
            Event::MemoryRegionAdded { region, answer } => {
                let result = map_regions(vec![region])
                    .and_then(|mut r| r.pop().ok_or(Refused::because("no region")))
                    .and_then(|r| self.memory.with_region(r).map_err(mapping_failed));
                self.memory_answer(answer, result, registry)
            }
            Event::MemoryRegionRemoved { region, answer } => {
                let result = self
                    .memory
                    .without_region(region.guest_phys_addr, region.memory_size)
                    .map_err(mapping_failed)
                    .map(|(map, _removed)| self.set_memory(map, registry));
                self.conn.ack(answer, result)
            }
            Event::RingStarted { config } => {
                self.start_ring(&config, registry);
                Ok(())
            }
            Event::RingStopped { index, answer } => {
                let position = match self.stop_ring(index, registry) {
                    Some(q) => to_proto_position(q.position()),
                    None => {
                        let packed = self.conn.negotiated().packed();
                        self.conn
                            .ring(index)
                            .map(|r| RingPosition::from_base(r.base(), packed))
                            .unwrap_or_default()
                    }
                };
                self.conn.answer_ring_stopped(answer, position)
            }
            Event::RingConfigChanged { config } => {
                // Restart at the current position with the new addresses.
                let position = self
                    .stop_ring(config.index, registry)
                    .map(|q| to_proto_position(q.position()));
                let config = RingConfig {
                    position: position.unwrap_or(config.position),
                    ..config
                };
                self.start_ring(&config, registry);
                Ok(())
            }
            Event::RingEnabled { index, enabled } => {
                if let Some(e) = self.ring_mut(index).and_then(|r| r.enabled.as_ref()) {
                    e.store(enabled, Ordering::Release);
                }
                self.device.queue_enabled(index, enabled);
                if enabled {
                    self.process(usize::from(index));
                }
                Ok(())
            }
            Event::KickChanged { index } => {
                // Swap the registered duplicate; the ring keeps running.
                let i = usize::from(index);
                if self.rings.get(i).is_some_and(Ring::running) {
                    self.deregister_ring(i, registry);
                    self.register_ring(i, registry);
                    self.process(i);
                }
                Ok(())
            }
            Event::CallChanged { index } => {
                let call = self.dup(index, |r| r.call());
                if let Some(r) = self.ring_mut(index) {
                    r.call = call;
                }
                Ok(())
            }
            Event::ErrChanged { index } => {
                let err = self.dup(index, |r| r.err());
                if let Some(r) = self.ring_mut(index) {
                    r.err = err;
                }
                Ok(())
            }
            Event::RingKicked { index } => {
                self.process(usize::from(index));
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
                self.stop_all(Some(registry));
                self.inflight = None;
                self.sync_enabled();
                self.device.reset();
                self.conn.ack(answer, Ok(()))
            }
            Event::SendRarp { mac, answer } => {
                let r = self.device.send_rarp(mac);
                self.conn.ack(answer, r)
            }
            Event::SetMtu { mtu, answer } => {
                let r = self.device.set_mtu(mtu);
                self.conn.ack(answer, r)
            }
            Event::BackendChannel { fd } => {
                self.device
                    .backend_channel(std::os::unix::net::UnixStream::from(fd));
                Ok(())
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
                log::info!("vhost-io-mio: request refused: {rejection}");
                Ok(())
            }
            other => self.conn.refuse(other),
        };
        if let Err(e) = r {
            // Our answers follow the tokens the connection handed out; a failure here is a
            // bug in this binding, not the peer's doing.
            log::error!("vhost-io-mio: answering the session failed: {e}");
        }
    }

    fn ring_mut(&mut self, index: u16) -> Option<&mut Ring> {
        self.rings.get_mut(usize::from(index))
    }

    /// A duplicate of one of ring `index`'s notifiers, owned by this session.
    fn dup(
        &self,
        index: u16,
        which: impl Fn(&vhost_proto::backend::RingState<OwnedFd>) -> Option<&OwnedFd>,
    ) -> Option<EventFd> {
        let fd = self.conn.ring(index).and_then(which)?;
        match rustix::io::fcntl_dupfd_cloexec(fd, 0) {
            Ok(d) => Some(EventFd::from_fd(d)),
            Err(e) => {
                log::error!("vhost-io-mio: queue {index}: cannot duplicate a notifier: {e}");
                None
            }
        }
    }

    fn memory_answer(
        &mut self,
        answer: MemoryToken,
        result: Result<MemoryMap, Refused>,
        registry: &Registry,
    ) -> Result<(), ApiError> {
        if answer.postcopy() {
            return self.conn.answer_memory_postcopy(
                answer,
                Err(Refused::because("postcopy is not supported")),
            );
        }
        let result = result.map(|map| self.set_memory(map, registry));
        self.conn.answer_memory(answer, result)
    }

    /// Installs new guest memory. Queues are not running between two calls of
    /// `process_queue` (one thread), so they switch in place; a queue whose ring is not in
    /// the new memory is parked (and retried on the next change).
    fn set_memory(&mut self, map: MemoryMap, registry: &Registry) {
        self.memory = map;
        for i in 0..self.rings.len() {
            let Some(ring) = self.rings.get_mut(i) else {
                continue;
            };
            let Some(q) = ring.queue.as_mut() else {
                continue;
            };
            match q.set_memory(Arc::clone(self.memory.memory())) {
                Ok(()) if ring.parked => {
                    ring.parked = false;
                    self.register_ring(i, registry);
                    self.process(i);
                }
                Ok(()) => {}
                Err(e) => {
                    log::warn!(
                        "vhost-io-mio: queue {i} parked: its ring is not in the new memory: {e}"
                    );
                    if !ring.parked {
                        ring.parked = true;
                        self.deregister_ring(i, registry);
                    }
                }
            }
        }
    }

    fn sync_enabled(&mut self) {
        for (i, ring) in self.rings.iter().enumerate() {
            let on = u16::try_from(i)
                .ok()
                .and_then(|i| self.conn.ring(i))
                .is_some_and(|r| r.enabled());
            if let Some(e) = &ring.enabled {
                e.store(on, Ordering::Release);
            }
        }
    }

    fn start_ring(&mut self, config: &RingConfig, registry: &Registry) {
        let index = config.index;
        let i = usize::from(index);
        drop(self.stop_ring(index, registry));
        if config.address_space == AddressSpace::Iova {
            log::error!(
                "vhost-io-mio: queue {index}: IOVA ring addresses (IOMMU_PLATFORM) are not supported"
            );
            return;
        }
        if config
            .endian
            .is_some_and(|e| e != vhost_proto::wire::VringEndian::Little)
        {
            log::warn!("vhost-io-mio: queue {index}: big-endian legacy rings are not supported");
            return;
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
        let on = self.conn.ring(index).is_some_and(|r| r.enabled());
        let call = self.dup(index, |r| r.call());
        let err = self.dup(index, |r| r.err());
        let Some(ring) = self.rings.get_mut(i) else {
            return;
        };
        let enabled = Arc::clone(
            ring.enabled
                .get_or_insert_with(|| Arc::new(AtomicBool::new(false))),
        );
        enabled.store(on, Ordering::Release);
        ring.call = call;
        ring.err = err;
        let mut queue = match Queue::new(
            index,
            config.packed,
            Arc::clone(self.memory.memory()),
            &qc,
            position,
            enabled,
        ) {
            Ok(q) => q,
            Err(e) => {
                log::error!("vhost-io-mio: queue {index} cannot start: {e}");
                return;
            }
        };
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
                Ok(n) => log::info!("vhost-io-mio: queue {index}: resubmitting {n} requests"),
                Err(e) => log::warn!("vhost-io-mio: queue {index}: inflight tracking off: {e}"),
            }
        }
        ring.queue = Some(queue);
        ring.parked = false;
        ring.broken = false;
        self.register_ring(i, registry);
        self.device.queue_started(index);
        // Look at the ring once when it starts (spec §7.2: tolerate a start without a kick).
        self.process(i);
    }

    /// Duplicates ring `i`'s kick fd, asks the device for its wakeup fd, and registers both
    /// under the session's token.
    fn register_ring(&mut self, i: usize, registry: &Registry) {
        let Ok(index) = u16::try_from(i) else {
            return;
        };
        let kick = self.dup(index, |r| r.kick());
        let wake = self.device.queue_wakeup(index);
        let token = self.token;
        let Some(ring) = self.rings.get_mut(i) else {
            return;
        };
        ring.polled = kick.is_none();
        ring.kick = kick;
        ring.wake = wake;
        let Some(token) = token else {
            ring.polled = true;
            return;
        };
        for slot in [&mut ring.kick, &mut ring.wake] {
            let Some(fd) = slot.as_ref() else {
                continue;
            };
            let raw = fd.read_fd().as_raw_fd();
            if let Err(e) = registry.register(&mut SourceFd(&raw), token, Interest::READABLE) {
                // E.g. a regular file as kick fd: epoll refuses it (and reading it would
                // consume file data). Drop it and poll the ring instead.
                log::warn!("vhost-io-mio: queue {i}: cannot watch a notifier ({e}); polling");
                *slot = None;
                ring.polled = true;
            }
        }
    }

    /// Deregisters and closes ring `i`'s kick and wakeup duplicates.
    fn deregister_ring(&mut self, i: usize, registry: &Registry) {
        let Some(ring) = self.rings.get_mut(i) else {
            return;
        };
        for fd in [ring.kick.take(), ring.wake.take()].into_iter().flatten() {
            if self.token.is_some() {
                let raw = fd.read_fd().as_raw_fd();
                // Not registered (epoll refused it) is fine.
                let _ = registry.deregister(&mut SourceFd(&raw));
            }
        }
    }

    /// Stops ring `index` and returns its queue.
    fn stop_ring(&mut self, index: u16, registry: &Registry) -> Option<Queue> {
        let i = usize::from(index);
        self.deregister_ring(i, registry);
        let ring = self.rings.get_mut(i)?;
        let was_running = ring.running();
        ring.parked = false;
        let q = ring.queue.take();
        if was_running {
            self.device.queue_stopped(index);
        }
        q
    }

    fn stop_all(&mut self, registry: Option<&Registry>) {
        for i in 0..self.rings.len() {
            let Ok(index) = u16::try_from(i) else {
                continue;
            };
            match registry {
                Some(r) => drop(self.stop_ring(index, r)),
                None => {
                    // Dropping without a registry: the duplicates just close.
                    if let Some(ring) = self.rings.get_mut(i) {
                        let was_running = ring.running();
                        *ring = Ring::default();
                        if was_running {
                            self.device.queue_stopped(index);
                        }
                    }
                }
            }
        }
    }

    fn set_inflight(&mut self, desc: InflightDesc, fd: &OwnedFd) -> Result<(), Refused> {
        if desc.mmap_size == 0 {
            self.inflight = None;
            return Ok(());
        }
        match SharedMapping::new(fd, desc.mmap_offset, desc.mmap_size) {
            Ok(m) => {
                self.inflight = Some(Inflight {
                    region: m.into_shared_region(),
                    desc,
                });
                Ok(())
            }
            Err(e) => {
                log::warn!("vhost-io-mio: SET_INFLIGHT_FD refused: {e}");
                Err(Refused::because("cannot map the inflight buffer"))
            }
        }
    }

    fn shutdown(&mut self, registry: Option<&Registry>) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.stop_all(registry);
        if let (Some(r), Some(_)) = (registry, self.token.take()) {
            let _ = r.deregister(&mut self.stream);
        }
        self.out = None;
        self.device.disconnected();
    }

    fn each_notifier(&self) -> impl Iterator<Item = i32> + '_ {
        self.rings
            .iter()
            .filter(|r| r.running())
            .flat_map(|r| [&r.kick, &r.wake])
            .flatten()
            .map(|fd| fd.read_fd().as_raw_fd())
    }
}

/// One call of `process_queue`, then the used entries published and the call fd signalled
/// if the driver asked for it.
fn pass<D: Device + ?Sized>(
    device: &D,
    q: &mut Queue,
    i: usize,
    call: Option<&EventFd>,
) -> Result<(), Broken> {
    // A panicking device breaks this ring only, as a panicking worker thread does in the
    // std binding; the other sessions of the thread go on.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| device.process_queue(q))) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(Broken::Ring(e)),
        Err(_) => return Err(Broken::Panicked),
    }
    if q.take_notify()
        && let Some(call) = call
        && let Err(e) = call.signal()
    {
        log::warn!("vhost-io-mio: queue {i}: cannot signal the call fd: {e}");
    }
    Ok(())
}

/// Why a ring stopped being processed.
#[derive(Debug, thiserror::Error)]
enum Broken {
    #[error("{0}")]
    Ring(vring::Error),
    #[error("the device panicked in process_queue")]
    Panicked,
}

/// What one round of reading found.
enum Read {
    Eof,
    Some,
    Nothing,
    /// The read budget is spent; input may be left.
    Yield,
}

impl<D: Device + ?Sized> Drop for Session<D> {
    fn drop(&mut self) {
        if self.token.is_some() && !self.closed {
            log::debug!("vhost-io-mio: session dropped while registered (use Session::close)");
        }
        self.shutdown(None);
    }
}

impl<D: Device + ?Sized> mio::event::Source for Session<D> {
    fn register(&mut self, registry: &Registry, token: Token, _: Interest) -> io::Result<()> {
        registry.register(
            &mut self.stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.token = Some(token);
        for raw in self.each_notifier().collect::<Vec<_>>() {
            registry.register(&mut SourceFd(&raw), token, Interest::READABLE)?;
        }
        Ok(())
    }

    fn reregister(&mut self, registry: &Registry, token: Token, _: Interest) -> io::Result<()> {
        registry.reregister(
            &mut self.stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.token = Some(token);
        for raw in self.each_notifier().collect::<Vec<_>>() {
            registry.reregister(&mut SourceFd(&raw), token, Interest::READABLE)?;
        }
        Ok(())
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        for raw in self.each_notifier().collect::<Vec<_>>() {
            registry.deregister(&mut SourceFd(&raw))?;
        }
        self.token = None;
        registry.deregister(&mut self.stream)
    }
}
