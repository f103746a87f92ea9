//! The binding-independent half of a back-end session, for IO bindings (this crate's
//! blocking server, `vhost-io-mio`'s event-loop sessions).
//!
//! A binding reads its socket into the [`Connection`] and writes what the connection
//! wants to send; everything the connection's [`Event`]s ask for is done here, once for
//! every binding, by [`SessionState::handle`]: device callbacks and answers (config
//! space, status, reset, MTU, RARP, ...), guest memory mapped from the memory table's
//! fds, started rings built into [`Queue`]s (addresses, position, features, enabled flag,
//! inflight buffer), GET_VRING_BASE positions, GET/SET_INFLIGHT_FD.
//!
//! What differs between bindings is where a queue runs: the std server hands it to a
//! worker thread, the mio session keeps it and processes it inline. That part is the
//! binding's [`Rings`]: `handle` gives it every queue it builds and takes queues back
//! when rings stop, and tells it when memory or a ring's notifiers change.
//! [`drain`] is the processing loop both run a queue with.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use vhost_proto::backend::{Connection, Event, MemoryToken, Refused, RingState};
use vhost_proto::session::{AddressSpace, ApiError, RingConfig, RingPosition};
use vhost_proto::wire::{InflightDesc, RegionFd, VringEndian};
use vring::inflight::RingLayout;

use crate::os::eventfd::EventFd;
use crate::os::mmap::{MappedRegion, MemoryMap, RegionLayout, SharedMapping};

use super::channel::{BackendChannel, ChannelGate};
use super::device::Device;
use super::queue::{Memory, Queue};

/// Where a binding runs the queues of one session: the part of event handling that
/// differs between bindings. Every method gets the session's state (connection, device,
/// memory) to read from.
pub trait Rings<D: Device + ?Sized> {
    /// Runs `queue`, just built for a started ring (its notifiers are in
    /// `state.connection()`). The binding tells the device ([`Device::queue_started`])
    /// when the queue runs, and looks at the ring once (a start needs no kick, spec §7.2).
    fn start(&mut self, state: &SessionState<D>, queue: Queue);

    /// Stops ring `index` at a quiescent point (between two `process_queue` calls) and
    /// returns its queue, parked or running; `None` if it has none (never started, or
    /// lost to a panicking device). The binding tells the device
    /// ([`Device::queue_stopped`]) if the queue was running.
    fn stop(&mut self, state: &SessionState<D>, index: u16) -> Option<Queue>;

    /// The guest memory changed ([`SessionState::memory`]): moves every queue onto it
    /// ([`SessionState::move_queue`]); a queue whose ring is not in the new memory is
    /// parked (it keeps its position and is retried on the next change).
    fn memory_changed(&mut self, state: &SessionState<D>);

    /// Ring `index` was enabled or disabled (the queue's flag is updated and the device
    /// told already).
    fn ring_enabled(&mut self, state: &SessionState<D>, index: u16, enabled: bool) {
        let _ = (state, index, enabled);
    }

    /// Ring `index` has a new kick fd.
    fn kick_changed(&mut self, state: &SessionState<D>, index: u16);

    /// Ring `index` has a new call fd.
    fn call_changed(&mut self, state: &SessionState<D>, index: u16);

    /// Ring `index` has a new err fd.
    fn err_changed(&mut self, state: &SessionState<D>, index: u16);

    /// An in-band kick of ring `index` (VRING_KICK, IN_BAND_NOTIFICATIONS). Ignored
    /// unless the binding serves it.
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
}

/// One session's state besides its socket and its running queues: the protocol core,
/// the device, the guest memory, the rings' enabled flags and the inflight buffer.
pub struct SessionState<D: Device + ?Sized> {
    conn: Connection<OwnedFd>,
    device: Arc<D>,
    memory: MemoryMap,
    /// Shared with each ring's queue ([`Queue::is_enabled`]).
    enabled: Box<[Arc<AtomicBool>]>,
    inflight: Option<Inflight>,
    /// Shared with the back-end channels handed to the device.
    gate: Arc<ChannelGate>,
}

impl<D: Device + ?Sized> std::fmt::Debug for SessionState<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionState")
            .field("memory", &self.memory)
            .field("inflight", &self.inflight)
            .finish_non_exhaustive()
    }
}

impl<D: Device + ?Sized> SessionState<D> {
    /// A new session for `device` (its description sets up the protocol core).
    pub fn new(device: Arc<D>) -> Self {
        let conn = Connection::new(device.description());
        let n = conn.rings().len();
        SessionState {
            conn,
            device,
            memory: MemoryMap::default(),
            enabled: (0..n).map(|_| Arc::new(AtomicBool::new(false))).collect(),
            inflight: None,
            gate: Arc::new(ChannelGate::new()),
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

    /// Moves `queue` onto the current guest memory; `false` (logged) if its ring is not
    /// in it: the queue keeps its old memory and must be parked.
    pub fn move_queue(&self, queue: &mut Queue) -> bool {
        match queue.set_memory(Arc::clone(self.memory())) {
            Ok(()) => true,
            Err(e) => {
                log::warn!(
                    "vhost-io: queue {} parked: its ring is not in the new memory: {e}",
                    queue.index()
                );
                false
            }
        }
    }

    /// A duplicate (close-on-exec) of ring `index`'s `which` notifier, owned by the
    /// caller; `Ok(None)` if the ring has none.
    pub fn notifier(&self, index: u16, which: Notifier) -> io::Result<Option<EventFd>> {
        let fd = self
            .conn
            .ring(index)
            .and_then(|r: &RingState<OwnedFd>| match which {
                Notifier::Kick => r.kick(),
                Notifier::Call => r.call(),
                Notifier::Err => r.err(),
            });
        fd.map(|fd| Ok(EventFd::from_fd(rustix::io::fcntl_dupfd_cloexec(fd, 0)?)))
            .transpose()
    }

    /// Acts on one event of the connection: calls the device, maps memory, builds or
    /// stops queues through `rings`, and queues the answer. `ConnectionLost` is the
    /// binding's to handle before (it is dropped here).
    pub fn handle<R: Rings<D> + ?Sized>(&mut self, event: Event<OwnedFd>, rings: &mut R) {
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
                self.memory_answer(answer, result, rings)
            }
            Event::MemoryRegionAdded { region, answer } => {
                let result = map_regions(vec![region])
                    .and_then(|mut r| r.pop().ok_or(Refused::because("no region")))
                    .and_then(|r| self.memory.with_region(r).map_err(mapping_failed));
                self.memory_answer(answer, result, rings)
            }
            Event::MemoryRegionRemoved { region, answer } => {
                let result = self
                    .memory
                    .without_region(region.guest_phys_addr, region.memory_size)
                    .map_err(mapping_failed)
                    .map(|(map, _removed)| self.set_memory(map, rings));
                self.conn.ack(answer, result)
            }
            Event::RingStarted { config } => {
                self.start_ring(&config, rings);
                Ok(())
            }
            Event::RingStopped { index, answer } => {
                let position = match rings.stop(self, index) {
                    Some(q) => to_proto_position(q.position()),
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
            Event::RingConfigChanged { config } => {
                // Restart at the current position with the new addresses.
                let position = rings
                    .stop(self, config.index)
                    .map(|q| to_proto_position(q.position()));
                let config = RingConfig {
                    position: position.unwrap_or(config.position),
                    ..config
                };
                self.start_ring(&config, rings);
                Ok(())
            }
            Event::RingEnabled { index, enabled } => {
                if let Some(e) = self.enabled.get(usize::from(index)) {
                    e.store(enabled, Ordering::Release);
                }
                self.device.queue_enabled(index, enabled);
                rings.ring_enabled(self, index, enabled);
                Ok(())
            }
            Event::KickChanged { index } => {
                rings.kick_changed(self, index);
                Ok(())
            }
            Event::CallChanged { index } => {
                rings.call_changed(self, index);
                Ok(())
            }
            Event::ErrChanged { index } => {
                rings.err_changed(self, index);
                Ok(())
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
                self.stop_all(rings);
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
                self.sync_gate();
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
                log::info!("vhost-io: request refused: {rejection}");
                Ok(())
            }
            other => self.conn.refuse(other),
        };
        self.sync_gate();
        if let Err(e) = r {
            // Our answers follow the tokens the connection handed out; a failure here is
            // a bug in the binding, not the peer's doing.
            log::error!("vhost-io: answering the session failed: {e}");
        }
    }

    /// Channels the device holds follow the session: its negotiation, and the suspended
    /// rule (spec §7.3: no back-end request while every ring is stopped; the protocol
    /// session leaves that rule to the runtime).
    fn sync_gate(&self) {
        self.gate.set_negotiated(*self.conn.negotiated());
        self.gate.set_suspended(self.conn.is_suspended());
    }

    /// Ends the session: every ring stopped, the device's channels suspended, the device
    /// told that the front-end is gone.
    pub fn shutdown<R: Rings<D> + ?Sized>(&mut self, rings: &mut R) {
        self.stop_all(rings);
        self.gate.set_suspended(true);
        self.device.disconnected();
    }

    /// Stops every ring (their queues are dropped).
    pub fn stop_all<R: Rings<D> + ?Sized>(&mut self, rings: &mut R) {
        for i in 0..self.enabled.len() {
            if let Ok(index) = u16::try_from(i) {
                drop(rings.stop(self, index));
            }
        }
    }

    fn memory_answer<R: Rings<D> + ?Sized>(
        &mut self,
        answer: MemoryToken,
        result: Result<MemoryMap, Refused>,
        rings: &mut R,
    ) -> Result<(), ApiError> {
        if answer.postcopy() {
            return self.conn.answer_memory_postcopy(
                answer,
                Err(Refused::because("postcopy is not supported")),
            );
        }
        let result = result.map(|map| self.set_memory(map, rings));
        self.conn.answer_memory(answer, result)
    }

    fn set_memory<R: Rings<D> + ?Sized>(&mut self, map: MemoryMap, rings: &mut R) {
        self.memory = map;
        rings.memory_changed(self);
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

    /// Builds ring `config.index`'s queue (stopping the one it had) and hands it to
    /// `rings`; a ring that cannot run here is logged and left stopped.
    fn start_ring<R: Rings<D> + ?Sized>(&mut self, config: &RingConfig, rings: &mut R) {
        let index = config.index;
        drop(rings.stop(self, index));
        match self.build_queue(config) {
            Ok(queue) => rings.start(self, queue),
            Err(why) => log::error!("vhost-io: queue {index} cannot start: {why}"),
        }
    }

    fn build_queue(&self, config: &RingConfig) -> Result<Queue, String> {
        let index = config.index;
        if config.address_space == AddressSpace::Iova {
            return Err("IOVA ring addresses (IOMMU_PLATFORM) are not supported".into());
        }
        if config.endian.is_some_and(|e| e != VringEndian::Little) {
            return Err("big-endian legacy rings are not supported".into());
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
            .ok_or_else(|| format!("no ring {index}"))?;
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
        .map_err(|e| e.to_string())?;
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
                Ok(n) => log::info!("vhost-io: queue {index}: resubmitting {n} inflight requests"),
                Err(e) => log::warn!("vhost-io: queue {index}: inflight tracking off: {e}"),
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
                self.inflight = Some(Inflight {
                    region: m.into_shared_region(),
                    desc,
                });
                Ok(())
            }
            Err(e) => {
                log::warn!("vhost-io: SET_INFLIGHT_FD refused: {e}");
                Err(Refused::because("cannot map the inflight buffer"))
            }
        }
    }
}

/// How [`drain`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drained {
    /// No work left: the ring waits for its next kick (kicks are enabled).
    Idle,
    /// The round limit was reached with work left: come back to it (kicks are enabled,
    /// but the driver may not kick again for chains it already published).
    Busy,
}

/// Lets the device drain `queue` with kicks suppressed meanwhile, then re-enables them and
/// re-checks (virtqueue spec §2.9), the way every binding runs a queue after a wakeup.
///
/// `process` is one call of the device's `process_queue`; after each, `notify` is called
/// if the used entries published call for a notification. A round is a pass with kicks
/// suppressed; it is repeated while the device makes progress, at most `max_rounds`
/// times. A pass that takes nothing while chains are there is followed by one more with
/// kicks enabled: the chains may have come after the device's last pop from a driver that
/// saw kicks suppressed and did not kick (no lost wakeup), and a device that leaves
/// chains on purpose (an RX queue without packets) is called once more, not spun.
pub fn drain<E: From<vring::Error>>(
    queue: &mut Queue,
    max_rounds: usize,
    mut process: impl FnMut(&mut Queue) -> Result<(), E>,
    mut notify: impl FnMut(),
) -> Result<Drained, E> {
    let mut pass = |queue: &mut Queue| -> Result<(), E> {
        process(queue)?;
        if queue.take_notify() {
            notify();
        }
        Ok(())
    };
    for _ in 0..max_rounds {
        queue.disable_notifications();
        let before = queue.pops();
        pass(queue)?;
        if !queue.enable_notifications()? {
            return Ok(Drained::Idle);
        }
        if queue.pops() == before {
            // Chains are there but this pass took none: look once more, kicks
            // enabled (see above).
            pass(queue)?;
            if queue.pops() == before {
                return Ok(Drained::Idle);
            }
        }
    }
    Ok(Drained::Busy)
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
    log::warn!("vhost-io: memory update refused: {e}");
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
            log::warn!("vhost-io: cannot allocate the inflight buffer: {e}");
            Err(Refused::because("cannot allocate the inflight buffer"))
        }
    }
}
