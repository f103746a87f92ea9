//! The device runtime's conformance suite: scenarios written once against a [`Runner`]
//! and run against both runners (`tests/tests/runtime_conformance.rs` instantiates
//! [`conformance_tests!`](crate::conformance_tests) for [`Std`] and [`Mio`]).
//!
//! They cover what the runtime promises beyond moving data: asynchronous completion in any
//! order ([`Delayed`]), answers that wait for the handler (GET_VRING_BASE while requests
//! are in flight), acks that follow actions (a ring start the device refuses, or whose ring
//! lies outside guest memory, is NACKed), and hostile front-ends (notifiers that are not
//! eventfds, a call fd that is full, a kick fd at EOF, guest memory shrunk under the
//! mapping, oversized inflight requests, a stalled connection).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use vhost_backend::echo::echo_chain;
use vhost_backend::os::eventfd::EventFd;
use vhost_backend::vhost_proto::backend::{DeviceDescription, Refused};
use vhost_backend::vhost_proto::wire::{ProtocolFeatures, VirtioFeatures, VringAddr};
use vhost_backend::{Chain, Device, Queue, QueueError, QueueHandler, Source};
use vhost_io_std::ClientError;
use vhost_io_std::frontend::{DriverRing, Frontend, GuestRam};
use vring::memory::GuestSlice;

/// How long a scenario waits for anything.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Guest RAM of the scenarios.
pub const RAM: u64 = 4 << 20;
/// Where request buffers start.
pub const BUFS: u64 = 1 << 20;

/// One way of serving a device to one front-end.
pub trait Runner: Sized {
    /// A back-end serving `device`, and our front-end connected to it.
    fn serve<D: Device>(device: D) -> (Frontend, Self);
    /// A back-end serving `device` to the front-ends that connect to `path`.
    fn listen<D: Device>(device: D, path: &std::path::Path) -> Self;
    /// Once the front-end is gone: ends the back-end.
    fn finish(self);
}

/// `"std"` or `"mio"`: the name [`child_backend`] knows `R` by.
pub fn runner_name<R: Runner>() -> &'static str {
    if std::any::type_name::<R>().ends_with("Std") {
        "std"
    } else {
        "mio"
    }
}

/// The std runner: `vhost_io_std::backend::Server` on a socketpair.
#[derive(Debug)]
pub struct Std(vhost_io_std::backend::ServerHandle);

impl Runner for Std {
    fn serve<D: Device>(device: D) -> (Frontend, Self) {
        let (a, b) = UnixStream::pair().unwrap();
        let server = vhost_io_std::backend::Server::from_stream(b, device)
            .unwrap()
            .spawn()
            .unwrap();
        (Frontend::from_stream(a).unwrap(), Std(server))
    }

    fn listen<D: Device>(device: D, path: &std::path::Path) -> Self {
        Std(vhost_io_std::backend::Server::bind(path, device)
            .unwrap()
            .spawn()
            .unwrap())
    }

    fn finish(self) {
        let _ = self.0.stop();
    }
}

/// The mio runner: a `vhost_io_mio::Server` thread with the socket handed over.
#[derive(Debug)]
pub struct Mio(vhost_io_mio::ServerHandle);

impl Runner for Mio {
    fn serve<D: Device>(device: D) -> (Frontend, Self) {
        let server = vhost_io_mio::Server::new(device).unwrap().spawn().unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        server.handle().add(b).unwrap();
        (Frontend::from_stream(a).unwrap(), Mio(server))
    }

    fn listen<D: Device>(device: D, path: &std::path::Path) -> Self {
        Mio(vhost_io_mio::Server::new(device)
            .unwrap()
            .bind(path)
            .unwrap()
            .spawn()
            .unwrap())
    }

    fn finish(self) {
        let _ = self.0.stop();
    }
}

/// A device whose queues hold every chain they pop until the test signals `release`;
/// then the held chains are echoed and completed in reverse order (asynchronous
/// completion, out of order). Queue `refuse` (if any) refuses to start.
#[derive(Debug)]
pub struct Delayed {
    held: Arc<AtomicUsize>,
    release: EventFd,
    refuse: Option<u16>,
}

/// The test's side of a [`Delayed`] device.
#[derive(Debug)]
pub struct DelayedControl {
    /// Chains held right now (all queues).
    pub held: Arc<AtomicUsize>,
    /// Signal to release every held chain.
    pub release: EventFd,
}

impl DelayedControl {
    /// Waits until `n` chains are held.
    pub fn wait_held(&self, n: usize) {
        let deadline = Instant::now() + TIMEOUT;
        while self.held.load(Ordering::Acquire) != n {
            assert!(
                Instant::now() < deadline,
                "the device never held {n} chains"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Delayed {
    pub fn new(refuse: Option<u16>) -> (Self, DelayedControl) {
        let release = EventFd::new(true).unwrap();
        let held = Arc::new(AtomicUsize::new(0));
        let control = DelayedControl {
            held: Arc::clone(&held),
            release: release.try_clone().unwrap(),
        };
        (
            Delayed {
                held,
                release,
                refuse,
            },
            control,
        )
    }
}

impl Device for Delayed {
    fn description(&self) -> DeviceDescription {
        DeviceDescription::new(
            VirtioFeatures::VERSION_1 | VirtioFeatures::EVENT_IDX | VirtioFeatures::RING_PACKED,
            ProtocolFeatures::MQ
                | ProtocolFeatures::REPLY_ACK
                | ProtocolFeatures::CONFIGURE_MEM_SLOTS
                | ProtocolFeatures::INFLIGHT_SHMFD,
            2,
        )
    }

    fn start_queue(self: Arc<Self>, queue: &Queue) -> Result<Box<dyn QueueHandler>, Refused> {
        if self.refuse == Some(queue.index()) {
            return Err(Refused::because("this queue does not start (test device)"));
        }
        Ok(Box::new(DelayedQueue {
            chains: Vec::new(),
            release: self
                .release
                .try_clone()
                .map_err(|_| Refused::because("dup"))?,
            held: Arc::clone(&self.held),
        }))
    }
}

struct DelayedQueue {
    chains: Vec<Chain>,
    release: EventFd,
    held: Arc<AtomicUsize>,
}

impl QueueHandler for DelayedQueue {
    fn process(&mut self, q: &mut Queue) -> Result<(), QueueError> {
        while let Some(c) = q.pop()? {
            self.chains.push(c);
            self.held.fetch_add(1, Ordering::AcqRel);
        }
        Ok(())
    }

    fn sources(&self) -> Vec<Source> {
        vec![Source {
            fd: self.release.read_fd().as_raw_fd(),
            id: 7,
        }]
    }

    fn ready(&mut self, q: &mut Queue, id: u32) -> Result<(), QueueError> {
        assert_eq!(id, 7);
        if !self
            .release
            .try_consume()
            .map_err(|source| QueueError::Io {
                queue: q.index(),
                what: "release eventfd",
                source,
            })?
        {
            return Ok(());
        }
        let n = self.chains.len();
        while let Some(c) = self.chains.pop() {
            let len = echo_chain(q, &c)?;
            q.complete(c, len)?;
        }
        self.held.fetch_sub(n, Ordering::AcqRel);
        Ok(())
    }
}

/// Features, protocol features (REPLY_ACK, MQ, ...), owner, memory table; returns the
/// acked features.
pub fn handshake(front: &mut Frontend, ram: &GuestRam, packed: bool) -> VirtioFeatures {
    let offered = front.get_features().unwrap();
    let protocol = front.get_protocol_features().unwrap();
    front
        .set_protocol_features(
            protocol
                & (ProtocolFeatures::MQ
                    | ProtocolFeatures::REPLY_ACK
                    | ProtocolFeatures::CONFIGURE_MEM_SLOTS
                    | ProtocolFeatures::INFLIGHT_SHMFD),
        )
        .unwrap();
    front.set_owner().unwrap();
    let mut want =
        VirtioFeatures::VERSION_1 | VirtioFeatures::PROTOCOL_FEATURES | VirtioFeatures::EVENT_IDX;
    if packed {
        want |= VirtioFeatures::RING_PACKED;
    }
    let features = want & offered;
    front.set_features(features).unwrap();
    front.set_mem_table(&ram.mem_table()).unwrap();
    features
}

/// A ring for vring `index` at guest address `index * 0x1_0000`.
pub fn ring(ram: &GuestRam, index: u16, features: VirtioFeatures) -> DriverRing {
    DriverRing::at(ram, index, u64::from(index) * 0x1_0000, 64, features)
        .unwrap()
        .0
}

/// Adds request `k` (64 readable bytes, 64 writable) to `ring`; returns its id.
pub fn add_request(ring: &mut DriverRing, ram: &GuestRam, k: u64) -> u16 {
    let out = BUFS + u64::from(ring.index()) * 0x4_0000 + k * 128;
    let pattern: Vec<u8> = (0..64u8).map(|i| i ^ k as u8).collect();
    GuestSlice::new(ram.memory(), out, 64)
        .unwrap()
        .write_at(0, &pattern)
        .unwrap();
    ring.add(&[(out, 64)], &[(out + 64, 64)]).unwrap()
}

/// Checks the echo of request `k`.
pub fn check_request(ring: &DriverRing, ram: &GuestRam, k: u64) {
    let out = BUFS + u64::from(ring.index()) * 0x4_0000 + k * 128;
    let mut back = [0u8; 64];
    GuestSlice::new(ram.memory(), out + 64, 64)
        .unwrap()
        .read_at(0, &mut back)
        .unwrap();
    let pattern: Vec<u8> = (0..64u8).map(|i| i ^ k as u8).collect();
    assert_eq!(&back[..], &pattern[..], "request {k} echoed wrong");
}

/// Whether `fd` becomes readable within `timeout`.
pub fn readable_within(fd: BorrowedFd<'_>, timeout: Duration) -> bool {
    let mut p = [rustix::event::PollFd::from_borrowed_fd(
        fd,
        rustix::event::PollFlags::IN,
    )];
    let ts = rustix::event::Timespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    matches!(rustix::event::poll(&mut p, Some(&ts)), Ok(n) if n > 0)
}

/// Open fds of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

// ---- the scenarios ----

/// A handler keeps popped chains and completes them later, in reverse order: the driver
/// gets every completion, with the right data, in that order.
pub fn out_of_order_completion<R: Runner>(packed: bool) {
    let ram = GuestRam::new(0, RAM).unwrap();
    let (device, control) = Delayed::new(None);
    let (mut front, server) = R::serve(device);
    let features = handshake(&mut front, &ram, packed);
    let mut ring = ring(&ram, 0, features);
    front.start_ring(&ring, &ram).unwrap();
    let ids: Vec<u16> = (0..8).map(|k| add_request(&mut ring, &ram, k)).collect();
    ring.kick().unwrap();
    control.wait_held(8);
    assert!(
        ring.collect(1, Duration::from_millis(50)).is_err(),
        "nothing completes before the release"
    );
    control.release.signal().unwrap();
    let used = ring.collect(8, TIMEOUT).unwrap();
    let order: Vec<u16> = used.iter().map(|&(id, _)| id).collect();
    let mut reversed = ids.clone();
    reversed.reverse();
    assert_eq!(order, reversed, "completed in reverse order");
    assert!(used.iter().all(|&(_, len)| len == 64));
    for k in 0..8 {
        check_request(&ring, &ram, k);
    }
    drop(front);
    server.finish();
}

/// GET_VRING_BASE while requests are in flight answers only once they are completed, and
/// its position covers them.
pub fn get_vring_base_waits_for_in_flight<R: Runner>(packed: bool) {
    let ram = GuestRam::new(0, RAM).unwrap();
    let (device, control) = Delayed::new(None);
    let (mut front, server) = R::serve(device);
    let features = handshake(&mut front, &ram, packed);
    let mut ring = ring(&ram, 0, features);
    front.start_ring(&ring, &ram).unwrap();
    for k in 0..4 {
        add_request(&mut ring, &ram, k);
    }
    ring.kick().unwrap();
    control.wait_held(4);
    let release = control.release.try_clone().unwrap();
    let delay = Duration::from_millis(300);
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(delay);
        release.signal().unwrap();
    });
    let asked = Instant::now();
    let base = front.get_vring_base(0).unwrap();
    let waited = asked.elapsed();
    releaser.join().unwrap();
    assert!(
        waited >= delay - Duration::from_millis(50),
        "GET_VRING_BASE answered after {waited:?}, before the requests completed"
    );
    if packed {
        // Packed positions count descriptor slots: two per request.
        assert_eq!(base.packed_avail_idx(), 8);
        assert_eq!(base.packed_used_idx(), 8);
    } else {
        assert_eq!(base.split_next_avail(), 4);
    }
    assert_eq!(ring.collect(4, TIMEOUT).unwrap().len(), 4);
    drop(front);
    server.finish();
}

/// A ring start the device refuses is NACKed (the ring stays stopped, the session goes
/// on), and so is a ring whose areas straddle the end of guest memory (refused when
/// SET_VRING_ADDR arrives).
pub fn failing_ring_start_is_nacked<R: Runner>() {
    let ram = GuestRam::new(0, RAM).unwrap();
    let (device, control) = Delayed::new(Some(1));
    let (mut front, server) = R::serve(device);
    let features = handshake(&mut front, &ram, false);
    let ring1 = ring(&ram, 1, features);
    match front.start_ring(&ring1, &ram) {
        Err(ClientError::Refused { .. }) => {}
        other => panic!("a refused start must be NACKed, got {other:?}"),
    }
    // The ring was not started: GET_VRING_BASE answers at once with its base.
    assert_eq!(front.get_vring_base(1).unwrap().split_next_avail(), 0);
    // Areas past the end of the memory table.
    front.set_vring_num(0, 64).unwrap();
    let addr = VringAddr {
        index: 0,
        flags: Default::default(),
        desc: RAM - 512,
        used: RAM - 64,
        avail: RAM - 256,
        log: 0,
    };
    assert!(
        matches!(front.set_vring_addr(addr), Err(ClientError::Refused { .. })),
        "a ring outside guest memory must be NACKed"
    );
    // The session still serves a good ring.
    let mut ring0 = ring(&ram, 0, features);
    front.start_ring(&ring0, &ram).unwrap();
    add_request(&mut ring0, &ram, 0);
    ring0.kick().unwrap();
    control.wait_held(1);
    control.release.signal().unwrap();
    assert_eq!(ring0.collect(1, TIMEOUT).unwrap().len(), 1);
    drop(front);
    server.finish();
}

/// Notifiers that are not eventfds are refused when they arrive; a call fd that is full
/// never blocks the runner; a kick fd at EOF stops the ring and signals its err fd.
pub fn hostile_notifiers<R: Runner>() {
    let ram = GuestRam::new(0, RAM).unwrap();
    let (mut front, server) = R::serve(vhost_backend::echo::Echo::new(2));
    let features = handshake(&mut front, &ram, false);
    let plain = vhost_backend::os::memfd::create("not-a-notifier", 4096).unwrap();
    let zero = std::fs::File::open("/dev/zero").unwrap();
    assert!(matches!(
        front.set_vring_call(0, Some(plain.as_fd())),
        Err(ClientError::Refused { .. })
    ));
    assert!(matches!(
        front.set_vring_err(0, Some(zero.as_fd())),
        Err(ClientError::Refused { .. })
    ));
    // A call eventfd preloaded to its maximum: signalling it must not block.
    let mut ring0 = ring(&ram, 0, features);
    front.start_ring(&ring0, &ram).unwrap();
    // (A runner may have signalled it once already: consume that first.)
    let _ = rustix::io::read(ring0.call_fd(), &mut [0u8; 8]);
    let full = rustix::io::write(ring0.call_fd(), &0xffff_ffff_ffff_fffeu64.to_ne_bytes());
    assert!(full.is_ok(), "{full:?}");
    for k in 0..4 {
        add_request(&mut ring0, &ram, k);
        ring0.kick().unwrap();
        assert_eq!(ring0.collect(1, TIMEOUT).unwrap().len(), 1, "request {k}");
        check_request(&ring0, &ram, k);
    }
    // A kick pipe whose writer closes: the ring stops and says so on its err fd.
    let ring1 = ring(&ram, 1, features);
    front.start_ring(&ring1, &ram).unwrap();
    let (r, w) = rustix::pipe::pipe().unwrap();
    front.set_vring_kick(1, Some(r.as_fd())).unwrap();
    drop((r, w));
    assert!(
        readable_within(ring1.err_fd(), TIMEOUT),
        "a kick fd at EOF must signal the ring's err fd"
    );
    // The session is fine.
    assert!(front.get_features().is_ok());
    drop(front);
    server.finish();
}

/// A region file shrunk under the mapping ends that session with an error; the process
/// (and the next session) is fine.
pub fn shrunk_guest_memory_ends_the_session<R: Runner>() {
    let ram = GuestRam::new(0, RAM).unwrap();
    let (mut front, server) = R::serve(vhost_backend::echo::Echo::new(1));
    let features = handshake(&mut front, &ram, false);
    let mut ring0 = ring(&ram, 0, features);
    front.start_ring(&ring0, &ram).unwrap();
    // A second region in a file the front-end can shrink (GuestRam's memfds are sealed),
    // holding the request; the rings stay in the first.
    const GPA: u64 = 8 << 20;
    const LEN: u64 = 1 << 20;
    let file = vhost_backend::os::memfd::create("shrinkable", LEN).unwrap();
    rustix::io::pwrite(&file, &[7u8; 64], 0).unwrap();
    let region = vhost_backend::vhost_proto::wire::MemoryRegion {
        guest_phys_addr: GPA,
        memory_size: LEN,
        user_addr: 0x7f00_0000_0000,
        mmap_offset: 0,
        xen: None,
    };
    front.add_mem_reg(region, file.as_fd()).unwrap();
    rustix::fs::ftruncate(&file, 0).unwrap();
    ring0.add(&[(GPA, 64)], &[(GPA + 64, 64)]).unwrap();
    ring0.kick().unwrap();
    // The back-end touched the truncated region: the fault is contained and the session
    // ends (our next request sees the hang-up).
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if front.get_features().is_err() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the session survived a guest-memory fault"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(front);
    server.finish();
    // A fresh session in the same process works.
    let ram = GuestRam::new(0, RAM).unwrap();
    let (mut front, server) = R::serve(vhost_backend::echo::Echo::new(1));
    let features = handshake(&mut front, &ram, false);
    let mut ring0 = ring(&ram, 0, features);
    front.start_ring(&ring0, &ram).unwrap();
    add_request(&mut ring0, &ram, 1);
    ring0.kick().unwrap();
    assert_eq!(ring0.collect(1, TIMEOUT).unwrap().len(), 1);
    check_request(&ring0, &ram, 1);
    drop(front);
    server.finish();
}

/// An echo device whose sessions may map at most `max_memory` bytes of guest memory.
#[derive(Debug)]
pub struct Limited {
    echo: Arc<vhost_backend::echo::Echo>,
    max_memory: u64,
}

impl Device for Limited {
    fn description(&self) -> DeviceDescription {
        self.echo.description().with_max_memory(self.max_memory)
    }

    fn start_queue(self: Arc<Self>, queue: &Queue) -> Result<Box<dyn QueueHandler>, Refused> {
        Arc::clone(&self.echo).start_queue(queue)
    }
}

/// A memory table (or an added region) beyond the session's mapped-memory limit is
/// refused (NACK) and maps nothing; the session goes on with what it had.
pub fn memory_limit_is_refused<R: Runner>() {
    let (mut front, server) = R::serve(Limited {
        echo: Arc::new(vhost_backend::echo::Echo::new(1)),
        max_memory: RAM,
    });
    let big = GuestRam::new(0, 2 * RAM).unwrap();
    let offered = front.get_features().unwrap();
    let protocol = front.get_protocol_features().unwrap();
    front
        .set_protocol_features(
            protocol
                & (ProtocolFeatures::MQ
                    | ProtocolFeatures::REPLY_ACK
                    | ProtocolFeatures::CONFIGURE_MEM_SLOTS),
        )
        .unwrap();
    front.set_owner().unwrap();
    let features = offered & (VirtioFeatures::VERSION_1 | VirtioFeatures::PROTOCOL_FEATURES);
    front.set_features(features).unwrap();
    assert!(
        matches!(
            front.set_mem_table(&big.mem_table()),
            Err(ClientError::Refused { .. })
        ),
        "a table over the limit must be refused"
    );
    let ram = GuestRam::new(0, RAM).unwrap();
    front.set_mem_table(&ram.mem_table()).unwrap();
    // One more region would go over the limit too.
    let extra = vhost_backend::os::memfd::create("extra", 1 << 20).unwrap();
    let region = vhost_backend::vhost_proto::wire::MemoryRegion {
        guest_phys_addr: 16 << 20,
        memory_size: 1 << 20,
        user_addr: 0x7f10_0000_0000,
        mmap_offset: 0,
        xen: None,
    };
    assert!(matches!(
        front.add_mem_reg(region, extra.as_fd()),
        Err(ClientError::Refused { .. })
    ));
    let mut ring0 = ring(&ram, 0, features);
    front.start_ring(&ring0, &ram).unwrap();
    add_request(&mut ring0, &ram, 3);
    ring0.kick().unwrap();
    assert_eq!(ring0.collect(1, TIMEOUT).unwrap().len(), 1);
    check_request(&ring0, &ram, 3);
    drop(front);
    server.finish();
}

/// An echo device that offers dirty logging (LOG_SHMFD, LOG_ALL).
#[derive(Debug)]
pub struct Logged(Arc<vhost_backend::echo::Echo>);

impl Device for Logged {
    fn description(&self) -> DeviceDescription {
        let mut d = self.0.description();
        d.features |= VirtioFeatures::LOG_ALL;
        d.protocol_features |= ProtocolFeatures::LOG_SHMFD;
        d
    }

    fn start_queue(self: Arc<Self>, queue: &Queue) -> Result<Box<dyn QueueHandler>, Refused> {
        Arc::clone(&self.0).start_queue(queue)
    }
}

/// Dirty logging for migration (spec §7.7) on a running ring: SET_LOG_BASE maps the log,
/// SET_FEATURES with LOG_ALL turns logging on at a quiet point, the pages a request's
/// response was written to and (with VHOST_VRING_F_LOG) the used ring's page are marked;
/// LOG_ALL off stops it.
pub fn dirty_logging<R: Runner>(packed: bool) {
    use vhost_backend::vhost_proto::wire::{LogDescription, VringAddrFlags};
    let ram = GuestRam::new(0, RAM).unwrap();
    let (mut front, server) = R::serve(Logged(Arc::new(vhost_backend::echo::Echo::new(1))));
    front.get_features().unwrap();
    let protocol = front.get_protocol_features().unwrap();
    front
        .set_protocol_features(
            protocol
                & (ProtocolFeatures::MQ
                    | ProtocolFeatures::REPLY_ACK
                    | ProtocolFeatures::LOG_SHMFD),
        )
        .unwrap();
    front.set_owner().unwrap();
    let mut features = VirtioFeatures::VERSION_1 | VirtioFeatures::PROTOCOL_FEATURES;
    if packed {
        features |= VirtioFeatures::RING_PACKED;
    }
    front.set_features(features).unwrap();
    front.set_mem_table(&ram.mem_table()).unwrap();
    let mut ring0 = ring(&ram, 0, features);
    front.start_ring(&ring0, &ram).unwrap();
    // One bit per 4 KiB page of guest memory.
    let log_len = RAM / 4096 / 8;
    let log = vhost_backend::os::memfd::create("dirty-log", 4096).unwrap();
    let dirty = |page: u64| {
        let mut b = [0u8];
        rustix::io::pread(&log, &mut b, page / 8).unwrap();
        b[0] & (1 << (page % 8)) != 0
    };
    let clear = || rustix::io::pwrite(&log, &vec![0u8; log_len as usize], 0).unwrap();
    front
        .set_log_base(
            LogDescription {
                mmap_size: log_len,
                mmap_offset: 0,
            },
            log.as_fd(),
        )
        .unwrap();
    // Not logging yet: nothing is marked.
    add_request(&mut ring0, &ram, 0);
    ring0.kick().unwrap();
    assert_eq!(ring0.collect(1, TIMEOUT).unwrap().len(), 1);
    assert!((0..RAM / 4096).all(|p| !dirty(p)), "logged before LOG_ALL");
    // Logging on, the used ring logged too.
    front
        .set_features(features | VirtioFeatures::LOG_ALL)
        .unwrap();
    let config = *ring0.config();
    let mut addr = ram.vring_addr(0, &config).unwrap();
    addr.flags = VringAddrFlags::LOG;
    addr.log = config.device_area;
    front.set_vring_addr(addr).unwrap();
    for k in 1..4u64 {
        add_request(&mut ring0, &ram, k);
    }
    ring0.kick().unwrap();
    assert_eq!(ring0.collect(3, TIMEOUT).unwrap().len(), 3);
    for k in 1..4u64 {
        check_request(&ring0, &ram, k);
    }
    let response_page = (BUFS + 64) / 4096;
    assert!(dirty(response_page), "the response pages are logged");
    assert!(dirty(config.device_area / 4096), "the used ring is logged");
    assert!(!dirty(RAM / 4096 - 1), "nothing else");
    // Logging off.
    front.set_features(features).unwrap();
    clear();
    add_request(&mut ring0, &ram, 5);
    ring0.kick().unwrap();
    assert_eq!(ring0.collect(1, TIMEOUT).unwrap().len(), 1);
    assert!(
        (0..RAM / 4096).all(|p| !dirty(p)),
        "logged after LOG_ALL was cleared"
    );
    drop(front);
    server.finish();
}

/// An inflight buffer for more queues (or entries) than the device has is refused, not
/// allocated.
pub fn oversized_inflight_is_refused<R: Runner>() {
    let ram = GuestRam::new(0, RAM).unwrap();
    let (mut front, server) = R::serve(vhost_backend::echo::Echo::new(2));
    handshake(&mut front, &ram, false);
    // Refused: the failure reply (no buffer) or a NACK.
    assert!(!matches!(front.get_inflight_fd(65535, 65535), Ok(Some(_))));
    assert!(!matches!(front.get_inflight_fd(2, 0), Ok(Some(_))));
    assert!(matches!(front.get_inflight_fd(2, 64), Ok(Some(_))));
    drop(front);
    server.finish();
}

/// The environment variable that makes the conformance test binary serve a [`Holder`]
/// (`std:PATH` or `mio:PATH`) instead of running tests: see [`child_backend`].
pub const CHILD_ENV: &str = "VHOST_CONFORMANCE_CHILD";

/// Entry point of the child back-end of [`inflight_recovery`]: when [`CHILD_ENV`] is set,
/// serves a [`Holder`] on its path with its runner until killed. Call it from a `#[test]`
/// of the binary that runs the scenarios.
pub fn child_backend() {
    let Some(spec) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let spec = spec.to_string_lossy().into_owned();
    let (runner, path) = spec.split_once(':').unwrap();
    let path = std::path::PathBuf::from(path);
    match runner {
        "std" => vhost_io_std::backend::Server::bind(&path, Holder)
            .unwrap()
            .serve()
            .unwrap(),
        _ => vhost_io_mio::Server::new(Holder)
            .unwrap()
            .bind(&path)
            .unwrap()
            .run()
            .unwrap(),
    }
}

fn tracked_description() -> DeviceDescription {
    DeviceDescription::new(
        VirtioFeatures::VERSION_1 | VirtioFeatures::RING_PACKED,
        ProtocolFeatures::MQ | ProtocolFeatures::REPLY_ACK | ProtocolFeatures::INFLIGHT_SHMFD,
        1,
    )
}

/// Reads a request's one-byte tag.
fn tag(q: &Queue, c: &Chain) -> Result<u8, QueueError> {
    let mut t = [0u8];
    q.reader(c).read_exact(&mut t)?;
    Ok(t[0])
}

/// The first back-end of [`inflight_recovery`]: completes even tags, holds odd ones in
/// flight for ever.
#[derive(Debug, Default)]
pub struct Holder;

impl Device for Holder {
    fn description(&self) -> DeviceDescription {
        tracked_description()
    }

    fn start_queue(self: Arc<Self>, _: &Queue) -> Result<Box<dyn QueueHandler>, Refused> {
        let mut held = Vec::new();
        Ok(Box::new(vhost_backend::handler_fn(move |q: &mut Queue| {
            while let Some(c) = q.pop()? {
                let t = tag(q, &c)?;
                if t % 2 == 0 {
                    q.writer(&c).write_all(&[t])?;
                    q.complete(c, 1)?;
                } else {
                    held.push(c);
                }
            }
            Ok(())
        })))
    }
}

/// The second back-end: completes everything with `tag | 0x80` and records the tags in
/// the order it served them.
#[derive(Debug, Default)]
pub struct Recorder {
    served: Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Device for Recorder {
    fn description(&self) -> DeviceDescription {
        tracked_description()
    }

    fn start_queue(self: Arc<Self>, _: &Queue) -> Result<Box<dyn QueueHandler>, Refused> {
        let served = Arc::clone(&self.served);
        Ok(Box::new(vhost_backend::handler_fn(move |q: &mut Queue| {
            while let Some(c) = q.pop()? {
                let t = tag(q, &c)?;
                served.lock().unwrap().push(t);
                q.writer(&c).write_all(&[t | 0x80])?;
                q.complete(c, 1)?;
            }
            Ok(())
        })))
    }
}

/// A back-end killed with requests in flight (SIGKILL of a child process that holds them),
/// and a new one given the same inflight buffer (SET_INFLIGHT_FD): the new one completes
/// exactly the unfinished requests, in submission order, none twice.
pub fn inflight_recovery<R: Runner>(runner: &str, packed: bool) {
    const REQUESTS: u8 = 8;
    let dir = crate::TempDir::new(&format!("inflight-{runner}-{packed}")).unwrap();
    let path = dir.join("holder.sock");
    let mut child = crate::Peer::spawn("conformance-child", {
        let mut c = std::process::Command::new(std::env::current_exe().unwrap());
        c.args([
            "child_backend",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, format!("{runner}:{}", path.display()));
        c
    })
    .unwrap();
    child.wait_for_socket(&path, TIMEOUT).unwrap();
    let ram = GuestRam::new(0, RAM).unwrap();
    let negotiate = |front: &mut Frontend| {
        front.get_features().unwrap();
        front.get_protocol_features().unwrap();
        front
            .set_protocol_features(
                ProtocolFeatures::MQ
                    | ProtocolFeatures::REPLY_ACK
                    | ProtocolFeatures::INFLIGHT_SHMFD,
            )
            .unwrap();
        front.set_owner().unwrap();
        let mut f = VirtioFeatures::VERSION_1 | VirtioFeatures::PROTOCOL_FEATURES;
        if packed {
            f |= VirtioFeatures::RING_PACKED;
        }
        front.set_features(f).unwrap();
        f
    };
    let bufs = |k: u8| {
        (
            BUFS + u64::from(k) * 0x100,
            BUFS + u64::from(k) * 0x100 + 0x80,
        )
    };
    let answer = |k: u8| {
        let mut b = [0u8];
        GuestSlice::new(ram.memory(), bufs(k).1, 1)
            .unwrap()
            .read_at(0, &mut b)
            .unwrap();
        b[0]
    };

    // Session 1, with the child: inflight buffer, memory, one ring.
    let mut front = Frontend::connect(&path).unwrap();
    let features = negotiate(&mut front);
    let (desc, inflight) = front.get_inflight_fd(1, 64).unwrap().expect("a buffer");
    front.set_inflight_fd(desc, inflight.as_fd()).unwrap();
    front.set_mem_table(&ram.mem_table()).unwrap();
    let mut ring = ring(&ram, 0, features);
    front.start_ring(&ring, &ram).unwrap();
    let mut ids = Vec::new();
    for k in 0..REQUESTS {
        let (out, inn) = bufs(k);
        GuestSlice::new(ram.memory(), out, 1)
            .unwrap()
            .write_at(0, &[k])
            .unwrap();
        ids.push(ring.add(&[(out, 1)], &[(inn, 1)]).unwrap());
    }
    ring.kick().unwrap();
    let even: Vec<u16> = ids.iter().step_by(2).copied().collect();
    let odd: Vec<u16> = ids.iter().skip(1).step_by(2).copied().collect();
    let mut got: Vec<u16> = ring
        .collect(even.len(), TIMEOUT)
        .unwrap()
        .iter()
        .map(|d| d.0)
        .collect();
    got.sort_unstable();
    assert_eq!(got, even, "the first back-end completes the even requests");

    // The back-end dies mid-I/O.
    let pid = child.pid();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    drop(child);
    drop(front);

    // Session 2, with a new back-end: the same buffer and memory, the ring restarted at
    // its used position (the buffer says the rest).
    let recorder = Recorder::default();
    let served = Arc::clone(&recorder.served);
    let (mut front, server) = R::serve(recorder);
    negotiate(&mut front);
    front.set_inflight_fd(desc, inflight.as_fd()).unwrap();
    front.set_mem_table(&ram.mem_table()).unwrap();
    let used = even.len() as u16;
    let base = if packed {
        // Two descriptors per request.
        vhost_backend::vhost_proto::wire::VringBase::packed(2 * used, true, 2 * used, true)
    } else {
        vhost_backend::vhost_proto::wire::VringBase::split(used)
    };
    front.start_ring_at(&ring, &ram, base).unwrap();
    let resubmitted: Vec<u16> = ring
        .collect(odd.len(), TIMEOUT)
        .unwrap()
        .iter()
        .map(|d| d.0)
        .collect();
    assert_eq!(
        resubmitted, odd,
        "exactly the unfinished requests, in order"
    );
    assert_eq!(
        *served.lock().unwrap(),
        (1..REQUESTS).step_by(2).collect::<Vec<u8>>(),
        "the new back-end served the held requests, nothing else"
    );
    for k in 0..REQUESTS {
        let want = if k % 2 == 0 { k } else { k | 0x80 };
        assert_eq!(answer(k), want, "request {k} answered once");
    }
    std::thread::sleep(Duration::from_millis(20));
    assert!(
        ring.pop_used().unwrap().is_none(),
        "nothing completed twice"
    );
    // The ring goes on from there.
    let (out, inn) = bufs(REQUESTS);
    GuestSlice::new(ram.memory(), out, 1)
        .unwrap()
        .write_at(0, &[REQUESTS])
        .unwrap();
    let id = ring.add(&[(out, 1)], &[(inn, 1)]).unwrap();
    ring.kick().unwrap();
    assert_eq!(ring.collect(1, TIMEOUT).unwrap(), [(id, 1)]);
    assert_eq!(served.lock().unwrap().last(), Some(&REQUESTS));
    drop(front);
    server.finish();
    // A back-end killed with SIGKILL cannot remove its socket.
    let _ = std::fs::remove_file(&path);
    crate::assert_clean(&[pid], dir.path());
}

/// A device that keeps the back-end channel it is given, for the test to send on.
#[derive(Debug, Default)]
pub struct Chatty {
    channel: Arc<std::sync::Mutex<Option<vhost_backend::BackendChannel>>>,
}

impl Device for Chatty {
    fn description(&self) -> DeviceDescription {
        DeviceDescription::new(
            VirtioFeatures::VERSION_1,
            ProtocolFeatures::MQ
                | ProtocolFeatures::REPLY_ACK
                | ProtocolFeatures::BACKEND_REQ
                | ProtocolFeatures::CONFIG,
            1,
        )
    }

    fn start_queue(self: Arc<Self>, _: &Queue) -> Result<Box<dyn QueueHandler>, Refused> {
        Ok(Box::new(vhost_backend::handler_fn(|q: &mut Queue| {
            while let Some(c) = q.pop()? {
                q.complete(c, 0)?;
            }
            Ok(())
        })))
    }

    fn backend_channel_opened(&self, channel: vhost_backend::BackendChannel) {
        *self.channel.lock().unwrap() = Some(channel);
    }
}

/// The device's back-end channel follows the session on every runner: refused while the
/// device is suspended (every ring stopped, spec §7.3), delivered typed and acked once a
/// ring runs, and gated by the negotiation (it knows SET_FEATURES came after it).
pub fn backend_channel<R: Runner>() {
    use vhost_backend::ChannelError;
    use vhost_backend::vhost_proto::wire::BackendRequest;
    use vhost_io_std::frontend::BackendMessage;
    let device = Chatty::default();
    let slot = Arc::clone(&device.channel);
    let (mut front, server) = R::serve(device);
    front.get_features().unwrap();
    front.get_protocol_features().unwrap();
    front
        .set_protocol_features(
            ProtocolFeatures::MQ
                | ProtocolFeatures::REPLY_ACK
                | ProtocolFeatures::BACKEND_REQ
                | ProtocolFeatures::CONFIG,
        )
        .unwrap();
    front.set_owner().unwrap();
    // QEMU's order: the channel before SET_FEATURES.
    let mut fch = front.open_backend_channel().unwrap();
    let features = VirtioFeatures::VERSION_1 | VirtioFeatures::PROTOCOL_FEATURES;
    front.set_features(features).unwrap();
    let ram = GuestRam::new(0, RAM).unwrap();
    front.set_mem_table(&ram.mem_table()).unwrap();
    let mut bch = slot
        .lock()
        .unwrap()
        .take()
        .expect("the device got its channel");
    assert!(
        matches!(bch.config_change(), Err(ChannelError::Suspended { .. })),
        "a suspended device must not send"
    );
    let ring0 = ring(&ram, 0, features);
    front.start_ring(&ring0, &ram).unwrap();
    let device = std::thread::spawn(move || {
        bch.config_change().unwrap();
        bch
    });
    match fch.recv(Some(TIMEOUT)).unwrap().expect("a request") {
        BackendMessage::Request {
            request: BackendRequest::ConfigChange,
            answer,
        } => fch.ack(answer, Ok(())).unwrap(),
        other => panic!("expected CONFIG_CHANGE_MSG, got {other:?}"),
    }
    let mut bch = device.join().unwrap();
    // Stopped again: suspended again.
    front.get_vring_base(0).unwrap();
    assert!(matches!(
        bch.config_change(),
        Err(ChannelError::Suspended { .. })
    ));
    drop((front, fch, bch));
    server.finish();
}

/// A front-end that stalls (11 bytes of a header, then nothing; or nothing at all) while
/// connected cannot keep the next front-end waiting: its handshake completes within 2 s.
pub fn stalled_connection_does_not_block_the_next<R: Runner>(label: &str) {
    use std::io::Write;
    let dir = crate::TempDir::new(label).unwrap();
    let path = dir.join("stall.sock");
    let server = R::listen(vhost_backend::echo::Echo::new(1), &path);
    for stall in [&[0u8; 11][..], &[][..]] {
        let mut bad = UnixStream::connect(&path).unwrap();
        bad.write_all(stall).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let start = Instant::now();
        let mut good = Frontend::connect(&path).unwrap();
        let ram = GuestRam::new(0, RAM).unwrap();
        handshake(&mut good, &ram, false);
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "a stalled front-end held the next one for {:?}",
            start.elapsed()
        );
        drop((good, bad));
    }
    server.finish();
}

/// The [`Runner`] scenarios as `#[test]`s, under the same names for every runner.
#[macro_export]
macro_rules! conformance_tests {
    ($runner:ty) => {
        use $crate::conformance as c;

        #[test]
        fn out_of_order_completion_split() {
            c::out_of_order_completion::<$runner>(false);
        }

        #[test]
        fn out_of_order_completion_packed() {
            c::out_of_order_completion::<$runner>(true);
        }

        #[test]
        fn get_vring_base_waits_for_in_flight_split() {
            c::get_vring_base_waits_for_in_flight::<$runner>(false);
        }

        #[test]
        fn get_vring_base_waits_for_in_flight_packed() {
            c::get_vring_base_waits_for_in_flight::<$runner>(true);
        }

        #[test]
        fn failing_ring_start_is_nacked() {
            c::failing_ring_start_is_nacked::<$runner>();
        }

        #[test]
        fn hostile_notifiers() {
            c::hostile_notifiers::<$runner>();
        }

        #[test]
        fn shrunk_guest_memory_ends_the_session() {
            c::shrunk_guest_memory_ends_the_session::<$runner>();
        }

        #[test]
        fn oversized_inflight_is_refused() {
            c::oversized_inflight_is_refused::<$runner>();
        }

        #[test]
        fn dirty_logging_split() {
            c::dirty_logging::<$runner>(false);
        }

        #[test]
        fn dirty_logging_packed() {
            c::dirty_logging::<$runner>(true);
        }

        #[test]
        fn memory_limit_is_refused() {
            c::memory_limit_is_refused::<$runner>();
        }

        #[test]
        fn backend_channel() {
            c::backend_channel::<$runner>();
        }

        #[test]
        fn inflight_recovery_split() {
            c::inflight_recovery::<$runner>(c::runner_name::<$runner>(), false);
        }

        #[test]
        fn inflight_recovery_packed() {
            c::inflight_recovery::<$runner>(c::runner_name::<$runner>(), true);
        }

        #[test]
        fn stalled_connection_does_not_block_the_next() {
            c::stalled_connection_does_not_block_the_next::<$runner>(module_path!());
        }
    };
}
