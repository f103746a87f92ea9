//! Serving one front-end connection: the blocking loop around
//! `backend::Connection<OwnedFd>` and the dispatch of its events to the
//! device and the queue workers.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rustix::event::{PollFd, PollFlags, poll};
use rustix::io::Errno;
use vhost_proto::backend::{Connection, Event, MemoryToken, Refused};
use vhost_proto::session::{AddressSpace, RingConfig};
use vhost_proto::wire::{InflightDesc, RegionFd};
use vring::inflight::RingLayout;

use crate::ServeError;
use crate::os::eventfd::EventFd;
use crate::os::mmap::{MappedRegion, MemoryMap, RegionLayout, SharedMapping};
use crate::os::socket::{recv_with_fds, send_all_with_fds};

use super::channel::{BackendChannel, ChannelGate};
use super::device::Device;
use super::framing::Framer;
use super::queue::Queue;
use super::worker::{SharedCall, Worker, WorkerSetup};

/// Bytes read per `recvmsg`: the largest request (a 2 KiB SHMEM config, a
/// 4 KiB config write) fits; several small pipelined requests too.
const READ_BUF: usize = 8192;

/// How a connection ended without an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The front-end closed the socket.
    Disconnected,
    /// [`ServerHandle::stop`](super::ServerHandle::stop) was called.
    Stopped,
}

/// One ring's worker slot.
#[derive(Debug, Default)]
enum Slot {
    /// Not started, or started but its queue could not be built.
    #[default]
    Idle,
    Running(Worker),
    /// Stopped by the session (broken memory): keeps its position.
    Parked(Box<Queue>),
}

/// The inflight buffer handed over with SET_INFLIGHT_FD (spec §7.12).
#[derive(Debug)]
struct Inflight {
    region: vring::memory::SharedRegion,
    desc: InflightDesc,
}

/// One connection's state besides the protocol core.
pub(crate) struct Session<D: Device> {
    conn: Connection<OwnedFd>,
    device: Arc<D>,
    memory: MemoryMap,
    slots: Vec<Slot>,
    calls: Vec<SharedCall>,
    enabled: Vec<Arc<AtomicBool>>,
    inflight: Option<Inflight>,
    /// Shared with the back-end channels handed to the device.
    gate: Arc<ChannelGate>,
}

impl<D: Device> Session<D> {
    pub(crate) fn new(device: Arc<D>) -> Self {
        let conn = Connection::new(device.description());
        let n = conn.rings().len();
        Session {
            conn,
            device,
            memory: MemoryMap::default(),
            slots: (0..n).map(|_| Slot::Idle).collect(),
            calls: (0..n).map(|_| Arc::new(Mutex::new(None))).collect(),
            enabled: (0..n).map(|_| Arc::new(AtomicBool::new(false))).collect(),
            inflight: None,
            gate: Arc::new(ChannelGate::new()),
        }
    }

    /// Serves `stream` until the front-end disconnects, `stop` is signalled,
    /// or the connection fails. Workers are stopped before returning.
    pub(crate) fn run(
        mut self,
        stream: &UnixStream,
        stop: &StopSignal,
    ) -> Result<Ended, ServeError> {
        let r = self.serve(stream, stop);
        self.shutdown();
        r
    }

    fn serve(&mut self, stream: &UnixStream, stop: &StopSignal) -> Result<Ended, ServeError> {
        let mut buf = vec![0u8; READ_BUF];
        let mut framer = Framer::default();
        // A blocking recvmsg per message, no poll: `stop` shuts the socket
        // down to wake it.
        let _registered = stop.register(stream)?;
        if stop.fired() {
            return Ok(Ended::Stopped);
        }
        loop {
            let room = self.conn.input_room().clamp(1, buf.len());
            let mut fds = Vec::new();
            let read = buf.get_mut(..room).unwrap_or_default();
            let n = match recv_with_fds(stream, read, &mut fds) {
                Ok(0) if stop.fired() => return Ok(Ended::Stopped),
                Ok(0) => return Ok(Ended::Disconnected),
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return Ok(Ended::Disconnected);
                }
                Err(e) => return Err(ServeError::io("recvmsg", e)),
            };
            let bytes = buf.get(..n).unwrap_or_default();
            let split = framer
                .last_header_start(bytes)
                .filter(|&s| s > 0 && !fds.is_empty());
            match split.and_then(|s| Some((bytes.get(..s)?, bytes.get(s..)?))) {
                Some((before, last)) => {
                    self.conn.handle_input(before, Vec::new())?;
                    self.drain(stream)?;
                    self.conn.handle_input(last, fds)?;
                }
                None => self.conn.handle_input(bytes, fds)?,
            }
            self.drain(stream)?;
        }
    }

    /// Handles every pending event, then writes every pending transmit,
    /// until the connection has nothing more to say. Events first: an ack
    /// the connection queued for a request (SET_VRING_KICK, SET_FEATURES,
    /// ...) goes out once the binding has acted on it (the worker started,
    /// the channel gate updated), so a REPLY_ACK means "done".
    fn drain(&mut self, stream: &UnixStream) -> Result<(), ServeError> {
        loop {
            let mut lost = None;
            while let Some(event) = self.conn.poll_event() {
                match event {
                    Event::ConnectionLost { error } => {
                        // What was queued before the failure still goes out.
                        lost = Some(error);
                        break;
                    }
                    event => self.handle(event),
                }
            }
            let sent = self.flush(stream)?;
            if let Some(error) = lost {
                return Err(error.into());
            }
            if !sent {
                return Ok(());
            }
        }
    }

    /// Writes every pending transmit; whether there was one.
    fn flush(&mut self, stream: &UnixStream) -> Result<bool, ServeError> {
        let mut sent = false;
        while let Some(t) = self.conn.poll_transmit() {
            let fds: Vec<_> = t.fds.iter().map(AsFd::as_fd).collect();
            send_all_with_fds(stream, &t.bytes, &fds).map_err(|e| ServeError::io("sendmsg", e))?;
            sent = true;
        }
        Ok(sent)
    }

    fn handle(&mut self, event: Event<OwnedFd>) {
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
                self.memory_answer(answer, result)
            }
            Event::MemoryRegionAdded { region, answer } => {
                let result = map_regions(vec![region])
                    .and_then(|mut r| r.pop().ok_or(Refused::because("no region")))
                    .and_then(|r| self.memory.with_region(r).map_err(mapping_failed));
                self.memory_answer(answer, result)
            }
            Event::MemoryRegionRemoved { region, answer } => {
                let result = self
                    .memory
                    .without_region(region.guest_phys_addr, region.memory_size)
                    .map_err(mapping_failed);
                let result = match result {
                    Ok((map, _removed)) => {
                        self.set_memory(map);
                        Ok(())
                    }
                    Err(r) => Err(r),
                };
                self.conn.ack(answer, result)
            }
            Event::RingStarted { config } => {
                self.start_ring(&config);
                Ok(())
            }
            Event::RingStopped { index, answer } => {
                let queue = self.stop_ring(index);
                let position = match &queue {
                    Some(q) => to_proto_position(q.position()),
                    None => {
                        let packed = self.conn.negotiated().packed();
                        self.conn
                            .ring(index)
                            .map(|r| {
                                vhost_proto::session::RingPosition::from_base(r.base(), packed)
                            })
                            .unwrap_or_default()
                    }
                };
                // The ring is stopped: a new SET_VRING_CALL comes before it
                // restarts (libvhost-user drops the old notifiers here too).
                self.conn.answer_ring_stopped(answer, position)
            }
            Event::RingConfigChanged { config } => {
                // Restart at the current position with the new addresses.
                let position = self
                    .stop_ring(config.index)
                    .map(|q| to_proto_position(q.position()));
                let config = RingConfig {
                    position: position.unwrap_or(config.position),
                    ..config
                };
                self.start_ring(&config);
                Ok(())
            }
            Event::RingEnabled { index, enabled } => {
                if let Some(e) = self.enabled.get(usize::from(index)) {
                    e.store(enabled, Ordering::Release);
                }
                self.device.queue_enabled(index, enabled);
                Ok(())
            }
            Event::KickChanged { index } => {
                // The worker waits on the old kick fd: restart it on the new one.
                if let Some(q) = self.stop_ring(index) {
                    self.spawn(q);
                }
                Ok(())
            }
            Event::CallChanged { index } => {
                self.update_call(index);
                Ok(())
            }
            Event::ErrChanged { index } => {
                if matches!(self.slots.get(usize::from(index)), Some(Slot::Running(_)))
                    && let Some(q) = self.stop_ring(index)
                {
                    self.spawn(q);
                }
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
                self.stop_all();
                self.slots.iter_mut().for_each(|s| *s = Slot::Idle);
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
                self.gate.set_negotiated(*self.conn.negotiated());
                let channel =
                    BackendChannel::with_gate(UnixStream::from(fd), Arc::clone(&self.gate));
                self.device.backend_channel_opened(channel);
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
                log::info!("vhost-io-std: request refused: {rejection}");
                Ok(())
            }
            other => self.conn.refuse(other),
        };
        // Channels the device holds follow the session: its negotiation,
        // and the suspended rule (spec §7.3: no back-end request while every
        // ring is stopped; the protocol session leaves that rule to us).
        self.gate.set_negotiated(*self.conn.negotiated());
        self.gate
            .set_suspended(self.slots.iter().all(|s| matches!(s, Slot::Idle)));
        if let Err(e) = r {
            // Our answers follow the tokens the connection handed out; a
            // failure here is a bug in this binding, not the peer's doing.
            log::error!("vhost-io-std: answering the session failed: {e}");
        }
    }

    fn memory_answer(
        &mut self,
        answer: MemoryToken,
        result: Result<MemoryMap, Refused>,
    ) -> Result<(), vhost_proto::session::ApiError> {
        if answer.postcopy() {
            return self.conn.answer_memory_postcopy(
                answer,
                Err(Refused::because("postcopy is not supported")),
            );
        }
        let result = result.map(|map| self.set_memory(map));
        self.conn.answer_memory(answer, result)
    }

    /// Installs new guest memory: running workers are stopped at a quiescent
    /// point, switched and restarted; parked queues are retried.
    fn set_memory(&mut self, map: MemoryMap) {
        self.memory = map;
        for i in 0..self.slots.len() {
            let slot = self
                .slots
                .get_mut(i)
                .map(std::mem::take)
                .unwrap_or_default();
            let queue = match slot {
                Slot::Running(w) => w.stop(),
                Slot::Parked(q) => Some(*q),
                Slot::Idle => None,
            };
            let Some(mut q) = queue else { continue };
            match q.set_memory(Arc::clone(self.memory.memory())) {
                Ok(()) => self.spawn(q),
                Err(e) => {
                    log::warn!(
                        "vhost-io-std: queue {i} parked: its ring is not in the new memory: {e}"
                    );
                    self.park(q);
                }
            }
        }
    }

    fn park(&mut self, q: Queue) {
        if let Some(s) = self.slots.get_mut(usize::from(q.index())) {
            *s = Slot::Parked(Box::new(q));
        }
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

    fn update_call(&mut self, index: u16) {
        let fd = self
            .conn
            .ring(index)
            .and_then(|r| r.call())
            .map(dup_notifier);
        let fd = match fd {
            Some(Ok(e)) => Some(e),
            Some(Err(e)) => {
                log::error!("vhost-io-std: queue {index}: cannot duplicate the call fd: {e}");
                None
            }
            None => None,
        };
        if let Some(c) = self.calls.get(usize::from(index)) {
            *c.lock().unwrap_or_else(PoisonError::into_inner) = fd;
        }
    }

    fn start_ring(&mut self, config: &RingConfig) {
        let index = config.index;
        if config.address_space == AddressSpace::Iova {
            log::error!(
                "vhost-io-std: queue {index}: IOVA ring addresses (IOMMU_PLATFORM) are not supported"
            );
            return;
        }
        if config
            .endian
            .is_some_and(|e| e != vhost_proto::wire::VringEndian::Little)
        {
            log::warn!("vhost-io-std: queue {index}: big-endian legacy rings are not supported");
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
        let Some(enabled) = self.enabled.get(usize::from(index)).cloned() else {
            return;
        };
        self.update_call(index);
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
                log::error!("vhost-io-std: queue {index} cannot start: {e}");
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
                Ok(n) => {
                    log::info!("vhost-io-std: queue {index}: resubmitting {n} inflight requests")
                }
                Err(e) => log::warn!("vhost-io-std: queue {index}: inflight tracking off: {e}"),
            }
        }
        self.spawn(queue);
    }

    fn spawn(&mut self, queue: Queue) {
        let index = queue.index();
        let ring = self.conn.ring(index);
        let kick = ring.and_then(|r| r.kick()).map(dup_notifier).transpose();
        let err = ring.and_then(|r| r.err()).map(dup_notifier).transpose();
        let (kick, err) = match (kick, err) {
            (Ok(k), Ok(e)) => (k, e),
            (Err(e), _) | (_, Err(e)) => {
                log::error!("vhost-io-std: queue {index}: cannot duplicate its notifiers: {e}");
                self.park(queue);
                return;
            }
        };
        let Some(call) = self.calls.get(usize::from(index)).cloned() else {
            return;
        };
        let setup = WorkerSetup {
            device: Arc::clone(&self.device),
            kick,
            call,
            err,
        };
        let slot = match Worker::spawn(queue, setup) {
            Ok(w) => Slot::Running(w),
            Err(e) => {
                log::error!("vhost-io-std: queue {index}: cannot start its worker: {e}");
                Slot::Idle
            }
        };
        if let Some(s) = self.slots.get_mut(usize::from(index)) {
            *s = slot;
        }
    }

    /// Stops ring `index`'s worker and returns its queue.
    fn stop_ring(&mut self, index: u16) -> Option<Queue> {
        let slot = self.slots.get_mut(usize::from(index)).map(std::mem::take)?;
        match slot {
            Slot::Running(w) => w.stop(),
            Slot::Parked(q) => Some(*q),
            Slot::Idle => None,
        }
    }

    fn stop_all(&mut self) {
        for i in 0..self.slots.len() {
            if let Ok(i) = u16::try_from(i) {
                drop(self.stop_ring(i));
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
                log::warn!("vhost-io-std: SET_INFLIGHT_FD refused: {e}");
                Err(Refused::because("cannot map the inflight buffer"))
            }
        }
    }

    fn shutdown(&mut self) {
        self.stop_all();
        self.gate.set_suspended(true);
        self.device.disconnected();
    }
}

#[doc(hidden)]
pub fn to_proto_position(p: vring::RingPosition) -> vhost_proto::session::RingPosition {
    vhost_proto::session::RingPosition {
        next_avail: p.next_avail,
        avail_wrap: p.avail_wrap,
        next_used: p.next_used,
        used_wrap: p.used_wrap,
    }
}

fn dup_notifier(fd: &OwnedFd) -> std::io::Result<EventFd> {
    Ok(EventFd::from_fd(rustix::io::fcntl_dupfd_cloexec(fd, 0)?))
}

#[doc(hidden)]
pub fn mapping_failed(e: crate::OsError) -> Refused {
    log::warn!("vhost-io-std: memory update refused: {e}");
    Refused::because("mapping guest memory failed")
}

#[doc(hidden)]
pub fn map_regions(regions: Vec<RegionFd<OwnedFd>>) -> Result<Vec<MappedRegion>, Refused> {
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
#[doc(hidden)]
pub fn new_inflight(
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
            log::warn!("vhost-io-std: cannot allocate the inflight buffer: {e}");
            Err(Refused::because("cannot allocate the inflight buffer"))
        }
    }
}

/// The stop request shared by a server, its connection loop and its
/// stoppers: an eventfd (never consumed, so every waiter sees it) that wakes
/// the accept loop, and the connection being served, shut down to wake its
/// blocking `recvmsg`.
#[derive(Debug)]
pub(crate) struct StopSignal {
    event: EventFd,
    current: Mutex<Option<UnixStream>>,
}

/// Unregisters the connection when serving it ends.
pub(crate) struct Registered<'a>(&'a StopSignal);

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        *self
            .0
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }
}

impl StopSignal {
    pub(crate) fn new() -> Result<Self, ServeError> {
        Ok(StopSignal {
            event: EventFd::new(true).map_err(|e| ServeError::io("eventfd", e))?,
            current: Mutex::new(None),
        })
    }

    /// The eventfd the accept loop polls.
    pub(crate) fn event(&self) -> &EventFd {
        &self.event
    }

    /// Whether stop was requested (a zero-timeout poll, nothing consumed).
    pub(crate) fn fired(&self) -> bool {
        let mut fds = [PollFd::from_borrowed_fd(
            self.event.read_fd(),
            PollFlags::IN,
        )];
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        matches!(poll(&mut fds, Some(&zero)), Ok(n) if n > 0)
    }

    /// Makes `stream` the connection a stop request shuts down.
    pub(crate) fn register(&self, stream: &UnixStream) -> Result<Registered<'_>, ServeError> {
        let dup = stream.try_clone().map_err(|e| ServeError::io("dup", e))?;
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(dup);
        Ok(Registered(self))
    }

    /// Requests the stop: wakes the accept loop and the connection.
    pub(crate) fn fire(&self) -> Result<(), ServeError> {
        self.event
            .signal()
            .map_err(|e| ServeError::io("eventfd write", e))?;
        if let Some(s) = self
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            // ENOTCONN if the peer is already gone: nothing to wake then.
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        Ok(())
    }
}

/// Waits until `stream` is readable (or closed); `true` if `stop` fired
/// instead.
pub(crate) fn wait_readable(stream: impl AsFd, stop: &EventFd) -> Result<bool, ServeError> {
    let mut fds = [
        PollFd::new(&stream, PollFlags::IN),
        PollFd::from_borrowed_fd(stop.read_fd(), PollFlags::IN),
    ];
    loop {
        match poll(&mut fds, None) {
            Ok(_) => break,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(ServeError::io("poll", e)),
        }
    }
    let [_, s] = &fds;
    Ok(!s.revents().is_empty())
}
