//! Body of the `runtime_session` fuzz target: [`SessionState`] driven directly, with the
//! harness's [`InlineRings`], a [`FuzzDevice`] and real guest memory ([`Guest`]).

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use arbitrary::Unstructured;
use vhost_proto::backend::Event;
use vhost_proto::session::Transmit;
use vhost_proto::wire::{
    ConfigFlags, DecodeError, DeviceStatus, FrontendReply, FrontendReplyDecoder, FrontendRequest,
    HEADER_SIZE, HeaderFlags, InflightDesc, Input, IotlbMsg, IotlbPerm, IotlbType, LogDescription,
    ProtocolFeatures, RegionFd, VirtioFeatures, VringAddr, VringAddrFlags, VringBase, VringEndian,
};
use vring::RingFeatures;

use super::device::{FuzzDevice, PROTOCOL_CHOICES, WRONG_QUEUE_HANGS, lock, policy};
use super::guest::{self, BUFFERS, Driver, Guest, REGION_SIZE, USER_BASE};
use super::rings::InlineRings;
use crate::Device;
use crate::os::memfd;
use crate::state::SessionState;

/// Opcodes of the `runtime_session` input (`op % OPS`); see the module docs.
pub mod op {
    /// A QEMU-like start: features, protocol features, owner, memory table.
    pub const HANDSHAKE: u8 = 0;
    /// Set up and start a ring at the harness's layout (and its driver).
    pub const SETUP_RING: u8 = 1;
    /// One well-formed request of any code, with real fds.
    pub const REQUEST: u8 = 2;
    /// Raw bytes with fds.
    pub const RAW: u8 = 3;
    /// Write bytes into guest memory.
    pub const POKE: u8 = 4;
    /// Offer a well-formed chain through the ring's driver.
    pub const POST: u8 = 5;
    /// Kick a ring (drain it).
    pub const KICK: u8 = 6;
    /// The ring's handler completes held chains in the order given.
    pub const COMPLETE: u8 = 7;
    /// Set the handler policy byte.
    pub const POLICY: u8 = 8;
    /// The ring's driver collects used buffers.
    pub const REAP: u8 = 9;
    /// The front-end hangs up (the session closes once its rings quiesce).
    pub const DISCONNECT: u8 = 10;
    /// A new connection to the same device (the previous one closed first).
    pub const RECONNECT: u8 = 11;
    /// Number of opcodes.
    pub const OPS: u8 = 12;
}

/// Request codes of [`op::REQUEST`] (`code % REQUESTS`).
pub const REQUESTS: u8 = 34;

/// Most steps (events handled, transmits checked) one settling may take: more is a
/// livelock.
const MAX_STEPS: usize = 100_000;

/// What one [`runtime_session`] run reached (for seed tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Replies the back-end sent (each decoded).
    pub replies: usize,
    /// Rings the session handed to the harness to run.
    pub runs: usize,
    /// Chains the device completed.
    pub completed: u64,
    /// Used buffers the drivers collected.
    pub reaped: usize,
    /// Whether an operation was seen waiting for rings to quiesce.
    pub waited: bool,
    /// Handler calls that broke their ring.
    pub broken: usize,
    /// Connections the run made.
    pub sessions: usize,
    /// Connections that failed fatally (hostile input).
    pub failed: usize,
    /// Whether the device completed a chain on the wrong queue (see
    /// [`WRONG_QUEUE_HANGS`]).
    pub misrouted: bool,
}

/// One connection: the session, its rings, and what the front-end has not delivered yet.
struct Conn {
    state: SessionState<FuzzDevice>,
    rings: InlineRings,
    /// Messages written to the socket the connection has not read yet (its input buffer
    /// was full).
    outbox: VecDeque<(Vec<u8>, Vec<OwnedFd>)>,
    /// The front-end hung up or the connection failed: stopping its rings.
    closing: bool,
}

impl Conn {
    fn new(dev: &Arc<FuzzDevice>) -> Self {
        let state = SessionState::new(Arc::clone(dev));
        let n = state.connection().rings().len();
        Conn {
            state,
            rings: InlineRings::new(n),
            outbox: VecDeque::new(),
            closing: false,
        }
    }
}

struct Harness {
    guest: Guest,
    dev: Arc<FuzzDevice>,
    conn: Conn,
    drivers: Vec<Option<Driver>>,
    /// The last inflight buffer the back-end handed out (GET_INFLIGHT_FD), sent back with
    /// SET_INFLIGHT_FD (also to the next connection).
    inflight: Option<(InflightDesc, OwnedFd)>,
    /// Check stops finish even after a misrouted completion ([`WRONG_QUEUE_HANGS`]).
    strict: bool,
    stats: Stats,
}

/// Fuzz body: a back-end session of the runtime (the [`SessionState`] every runner uses),
/// fed well-formed and raw protocol messages with real fds, over real guest memory that
/// the input scribbles on, with a device completing chains now or later in any order,
/// and hang-ups and reconnections. It must never panic or livelock; every transmit must
/// decode as a reply; once the device completes what it holds, nothing may stay pending
/// and the session must close.
///
/// The process ignores SIGPIPE from the first run on, as a Rust program does from `main`
/// (libFuzzer's `main` does not): a front-end's call fd may be a pipe whose read end it
/// closed, and signalling it must fail with `EPIPE`, not end the process.
///
/// Every 1024 runs the open fds are counted: more than 64 above the count after the first
/// run is a leak (a run leaks none; the seed replay test checks each run exactly).
pub fn runtime_session(data: &[u8]) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    static BASELINE: AtomicUsize = AtomicUsize::new(0);
    let _ = runtime_session_stats(data);
    let runs = RUNS.fetch_add(1, Ordering::Relaxed);
    if runs.is_multiple_of(1024)
        && let Some(n) = open_fds()
    {
        if runs == 0 {
            BASELINE.store(n, Ordering::Relaxed);
        }
        let base = BASELINE.load(Ordering::Relaxed);
        assert!(
            n <= base + 64,
            "fd leak: {n} fds open after {runs} runs, {base} after the first"
        );
    }
}

/// How many fds the process has open.
fn open_fds() -> Option<usize> {
    std::fs::read_dir("/proc/self/fd").ok().map(Iterator::count)
}

fn ignore_sigpipe() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: installs the SIG_IGN disposition (no handler code runs); what Rust's
        // runtime does before `main`.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
    });
}

/// [`runtime_session`], returning what the run reached.
pub fn runtime_session_stats(data: &[u8]) -> Stats {
    run(data, false)
}

/// [`runtime_session_stats`] that also checks stops finish in runs that hit the known bug
/// [`WRONG_QUEUE_HANGS`] (it panics on them until the bug is fixed).
pub fn runtime_session_strict_stats(data: &[u8]) -> Stats {
    run(data, true)
}

fn run(data: &[u8], strict: bool) -> Stats {
    ignore_sigpipe();
    let mut u = Unstructured::new(data);
    let protocol = byte(&mut u);
    let device = byte(&mut u);
    let pol = byte(&mut u);
    let unsealed = device & 0x80 != 0;
    let Ok(guest) = Guest::new(unsealed) else {
        // Out of fds or memory: nothing to fuzz (not the input's doing).
        return Stats::default();
    };
    let dev = Arc::new(FuzzDevice::new(protocol, device, pol));
    let queues = usize::from(dev.description().queues);
    let mut h = Harness {
        conn: Conn::new(&dev),
        guest,
        dev,
        drivers: (0..queues).map(|_| None).collect(),
        inflight: None,
        strict,
        stats: Stats {
            sessions: 1,
            ..Stats::default()
        },
    };
    while !u.is_empty() {
        h.step(&mut u);
        h.settle();
    }
    h.finish();
    h.stats
}

fn byte(u: &mut Unstructured<'_>) -> u8 {
    u.arbitrary::<u8>().unwrap_or(0)
}

fn word(u: &mut Unstructured<'_>) -> u16 {
    u.arbitrary::<u16>().unwrap_or(0)
}

/// An fd of kind `k % 8`: 0 eventfd, 1 pipe read end, 2 pipe write end, 3 sealed memfd
/// (4 KiB), 4 a guest region's memfd, 5 a socket, 6 the last inflight buffer, 7 an empty
/// unsealed memfd.
fn make_fd(h: &Harness, k: u8, region: usize) -> Option<OwnedFd> {
    match k % 8 {
        0 => eventfd(),
        1 | 2 => {
            let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).ok()?;
            Some(if k % 8 == 1 { r } else { w })
        }
        3 => memfd::create_sealed("fuzz-fd", 4096).ok(),
        4 => h.guest.fd(region).ok(),
        5 => std::os::unix::net::UnixStream::pair()
            .ok()
            .map(|(a, _)| OwnedFd::from(a)),
        6 => match &h.inflight {
            Some((_, fd)) => rustix::io::fcntl_dupfd_cloexec(fd, 0).ok(),
            None => memfd::create("fuzz-fd", 0).ok(),
        },
        _ => memfd::create("fuzz-fd", 0).ok(),
    }
}

fn eventfd() -> Option<OwnedFd> {
    use rustix::event::EventfdFlags;
    rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).ok()
}

impl Harness {
    fn negotiated(&self) -> vhost_proto::session::Negotiated {
        *self.conn.state.connection().negotiated()
    }

    fn queues(&self) -> u16 {
        self.dev.description().queues
    }

    /// Writes a request to the socket.
    fn send(&mut self, req: FrontendRequest<OwnedFd>, need_reply: bool) {
        if self.conn.closing {
            return;
        }
        let ctx = self.negotiated().decode_context(false);
        if let Ok(e) = req.encode(need_reply, &ctx) {
            self.conn.outbox.push_back((e.bytes, e.fds));
        }
        self.flush();
    }

    /// One op of the input.
    fn step(&mut self, u: &mut Unstructured<'_>) {
        match byte(u) % op::OPS {
            op::HANDSHAKE => self.handshake(byte(u), byte(u)),
            op::SETUP_RING => {
                let (ring, size, base, flags) = (byte(u), byte(u), byte(u), byte(u));
                self.setup_ring(ring, size, base, flags);
            }
            op::REQUEST => {
                let params = [byte(u), byte(u), byte(u), byte(u), byte(u)];
                self.request(params);
            }
            op::RAW => {
                let len = usize::from(word(u) % 2048);
                let nfds = byte(u) % 5;
                let kinds: Vec<u8> = (0..nfds).map(|_| byte(u)).collect();
                let bytes = u.bytes(len.min(u.len())).unwrap_or_default().to_vec();
                let fds = kinds
                    .iter()
                    .filter_map(|&k| make_fd(self, k, usize::from(k >> 4)))
                    .collect();
                if !self.conn.closing {
                    self.conn.outbox.push_back((bytes, fds));
                    self.flush();
                }
            }
            op::POKE => {
                let gpa = u64::from(word(u)) * 2;
                let len = usize::from(byte(u));
                let bytes = u.bytes(len.min(u.len())).unwrap_or_default();
                self.guest.write(gpa, bytes);
            }
            op::POST => {
                let ring = byte(u);
                let shape = byte(u);
                self.post(u, ring, shape);
            }
            op::KICK => {
                let ring = byte(u);
                self.conn.rings.kick(usize::from(ring % 4));
            }
            op::COMPLETE => {
                let ring = byte(u);
                let n = byte(u) % 8;
                let order: Vec<u8> = (0..n).map(|_| byte(u)).collect();
                lock(self.dev.control()).order = order;
                self.conn.rings.ready(usize::from(ring % 4));
                lock(self.dev.control()).order.clear();
            }
            op::POLICY => {
                let p = byte(u);
                lock(self.dev.control()).policy = p;
            }
            op::REAP => {
                let ring = usize::from(byte(u) % 4);
                if let Some(Some(d)) = self.drivers.get_mut(ring) {
                    self.stats.reaped += d.reap();
                }
            }
            op::DISCONNECT => self.begin_close(),
            _ => self.reconnect(),
        }
    }

    /// A QEMU-like start. `drop` bits remove features from what is acked (0: all offered);
    /// `flags`: bit 0 NEED_REPLY, 1 skip the memory table, 2 skip the queries, 3 no
    /// SET_OWNER, 4 open the back-end channel.
    fn handshake(&mut self, drop: u8, flags: u8) {
        let need = flags & 1 != 0;
        let offered = self.dev.description();
        let mut protocol = offered.protocol_features;
        for (i, f) in PROTOCOL_CHOICES.iter().enumerate() {
            if drop & (1 << i) != 0 {
                protocol.remove(*f);
            }
        }
        let mut features = offered.features;
        for (bit, f) in [
            (0, VirtioFeatures::EVENT_IDX),
            (1, VirtioFeatures::RING_PACKED),
            (2, VirtioFeatures::INDIRECT_DESC),
            (3, VirtioFeatures::IN_ORDER),
        ] {
            if flags & (1 << (bit + 4)) != 0 {
                features.remove(f);
            }
        }
        type Q = FrontendRequest<OwnedFd>;
        if flags & 4 == 0 {
            self.send(Q::GetFeatures, need);
            self.send(Q::GetProtocolFeatures, need);
        }
        if features.contains(VirtioFeatures::PROTOCOL_FEATURES) {
            self.send(Q::SetProtocolFeatures { features: protocol }, need);
        }
        if flags & 4 == 0 {
            self.send(Q::GetQueueNum, need);
            self.send(Q::GetMaxMemSlots, need);
        }
        if flags & 8 == 0 {
            self.send(Q::SetOwner, need);
        }
        if flags & 0x10 != 0
            && let Some(fd) = make_fd(self, 5, 0)
        {
            self.send(Q::SetBackendReqFd { fd }, need);
        }
        self.send(Q::SetFeatures { features }, need);
        if flags & 2 == 0 {
            let regions: Vec<RegionFd<OwnedFd>> = (0..guest::REGIONS)
                .filter_map(|k| {
                    Some(RegionFd {
                        region: guest::region(k, REGION_SIZE, 0),
                        fd: self.guest.fd(k).ok()?,
                    })
                })
                .collect();
            self.send(Q::SetMemTable { regions }, need);
        }
    }

    /// Sets ring `ring` up at the harness's layout and starts it. `size`: bit 7 (packed
    /// only) an odd size `(s & 0x7f) * 2 + 1`, else `1 << (s % 9)`. `flags`: bit 0
    /// NEED_REPLY, 1 no kick fd, 2 a pipe as kick fd, 3 leave it disabled, 4 an err fd,
    /// 5 the packed wrap counter.
    fn setup_ring(&mut self, ring: u8, size: u8, base: u8, flags: u8) {
        type Q = FrontendRequest<OwnedFd>;
        let index = ring % (self.queues() as u8 + 1);
        let packed = self.negotiated().packed();
        let size: u16 = if packed && size & 0x80 != 0 {
            (u16::from(size & 0x7f) * 2 + 1).min(255)
        } else {
            1 << (size % 9)
        };
        let need = flags & 1 != 0;
        let next_avail = if packed {
            (u16::from(base) % size) | if flags & 0x20 != 0 { 0x8000 } else { 0 }
        } else {
            u16::from(base)
        };
        let base_word = if packed {
            u32::from(next_avail) | u32::from(next_avail) << 16
        } else {
            u32::from(next_avail)
        };
        let (desc, driver, device) = guest::ring_areas(u16::from(index));
        let i = u32::from(index);
        self.send(
            Q::SetVringNum {
                index: i,
                num: size.into(),
            },
            need,
        );
        self.send(
            Q::SetVringBase {
                index: i,
                base: VringBase(base_word),
            },
            need,
        );
        self.send(
            Q::SetVringAddr {
                addr: VringAddr {
                    index: i,
                    flags: VringAddrFlags::empty(),
                    desc: USER_BASE + desc,
                    avail: USER_BASE + driver,
                    used: USER_BASE + device,
                    log: 0,
                },
            },
            need,
        );
        if let Some(fd) = eventfd() {
            self.send(
                Q::SetVringCall {
                    index,
                    fd: Some(fd),
                },
                need,
            );
        }
        if flags & 0x10 != 0
            && let Some(fd) = eventfd()
        {
            self.send(
                Q::SetVringErr {
                    index,
                    fd: Some(fd),
                },
                need,
            );
        }
        // The driver initialises the ring before the device sees it start.
        let n = self.negotiated();
        let features = RingFeatures {
            event_idx: n.features.contains(VirtioFeatures::EVENT_IDX),
            indirect: n.features.contains(VirtioFeatures::INDIRECT_DESC),
            in_order: n.features.contains(VirtioFeatures::IN_ORDER),
        };
        let config = guest::queue_config(u16::from(index), size, features);
        let drv = Driver::new(self.guest.memory(), &config, packed, next_avail);
        if let Some(slot) = self.drivers.get_mut(usize::from(index)) {
            *slot = drv;
        }
        let kick = if flags & 2 != 0 {
            None
        } else if flags & 4 != 0 {
            make_fd(self, 1, 0)
        } else {
            eventfd()
        };
        self.send(Q::SetVringKick { index, fd: kick }, need);
        if flags & 8 == 0 && n.features.contains(VirtioFeatures::PROTOCOL_FEATURES) {
            self.send(
                Q::SetVringEnable {
                    index: i,
                    enable: true,
                },
                need,
            );
        }
    }

    /// A well-formed request: `[code, a, b, c, flags]`; flags bit 0 NEED_REPLY, bits 1–3
    /// the kind of fd it carries ([`make_fd`]).
    fn request(&mut self, [code, a, b, c, flags]: [u8; 5]) {
        use FrontendRequest as Q;
        let need = flags & 1 != 0;
        let kind = flags >> 1;
        let n = self.negotiated();
        let index = u32::from(a % 5);
        let fd = |h: &Harness| make_fd(h, kind, usize::from(b));
        let req = match code % REQUESTS {
            0 => Q::GetFeatures,
            1 => {
                let mut f = n.offered_features;
                for (bit, x) in [
                    VirtioFeatures::EVENT_IDX,
                    VirtioFeatures::RING_PACKED,
                    VirtioFeatures::INDIRECT_DESC,
                    VirtioFeatures::IN_ORDER,
                    VirtioFeatures::PROTOCOL_FEATURES,
                ]
                .into_iter()
                .enumerate()
                {
                    if a & (1 << bit) != 0 {
                        f.remove(x);
                    }
                }
                if a & 0x80 != 0 {
                    f |= VirtioFeatures::from_bits_retain(1 << (b % 64));
                }
                Q::SetFeatures { features: f }
            }
            2 => Q::SetOwner,
            3 => Q::ResetOwner,
            4 | 27 => {
                // Region variants: a bit 0/1 which regions, 2 a size past the file's end,
                // 3 an unaligned offset, 4 half size, 5 overlapping addresses, 6 the other
                // region's fd, 7 a shifted user address.
                let mut regions = Vec::new();
                for k in 0..guest::REGIONS {
                    if a & (1 << k) == 0 {
                        continue;
                    }
                    let size = match (a & 4 != 0, a & 0x10 != 0) {
                        (true, _) => 2 * REGION_SIZE,
                        (_, true) => REGION_SIZE / 2,
                        _ => REGION_SIZE,
                    };
                    let offset = if a & 8 != 0 { 0x800 } else { 0 };
                    let mut r = guest::region(k, size, offset);
                    if a & 0x20 != 0 && k == 1 {
                        r.guest_phys_addr = REGION_SIZE / 2;
                    }
                    if a & 0x80 != 0 {
                        r.user_addr += u64::from(b) * 0x1000;
                    }
                    let which = if a & 0x40 != 0 { k + 1 } else { k };
                    let fd = if kind % 8 == 4 {
                        self.guest.fd(which).ok()
                    } else {
                        fd(self)
                    };
                    if let Some(fd) = fd {
                        regions.push(RegionFd { region: r, fd });
                    }
                }
                if code % REQUESTS == 4 {
                    Q::SetMemTable { regions }
                } else {
                    match regions.pop() {
                        Some(region) => Q::AddMemReg { region },
                        None => return,
                    }
                }
            }
            5 => Q::SetVringNum {
                index,
                num: if b & 0x80 != 0 {
                    u32::from(c) * 3
                } else {
                    1 << (b % 10)
                },
            },
            6 => {
                let (desc, driver, device) = guest::ring_areas(u16::from(b % 4));
                let shift = u64::from(c) * 0x100;
                let pick = |bit: u8, x: u64| if a & bit != 0 { x + shift } else { x };
                Q::SetVringAddr {
                    addr: VringAddr {
                        index,
                        flags: if a & 0x80 != 0 {
                            VringAddrFlags::LOG
                        } else {
                            VringAddrFlags::empty()
                        },
                        desc: USER_BASE + pick(0x08, desc),
                        avail: USER_BASE + pick(0x10, driver),
                        used: USER_BASE + pick(0x20, device),
                        log: 0,
                    },
                }
            }
            7 => Q::SetVringBase {
                index,
                base: VringBase(u32::from(b) | u32::from(c) << 8 | u32::from(a) << 16),
            },
            8 => Q::GetVringBase { index },
            9 => Q::SetVringKick {
                index: a % 5,
                fd: if b & 1 != 0 { None } else { fd(self) },
            },
            10 => Q::SetVringCall {
                index: a % 5,
                fd: if b & 1 != 0 { None } else { fd(self) },
            },
            11 => Q::SetVringErr {
                index: a % 5,
                fd: if b & 1 != 0 { None } else { fd(self) },
            },
            12 => Q::GetProtocolFeatures,
            13 => {
                let mut p = n.offered_protocol;
                for (i, f) in PROTOCOL_CHOICES.iter().enumerate() {
                    if b & (1 << i) != 0 {
                        p.remove(*f);
                    }
                }
                if a & 0x80 != 0 {
                    p |= ProtocolFeatures::from_bits_retain(1 << (c % 24));
                }
                Q::SetProtocolFeatures { features: p }
            }
            14 => Q::GetQueueNum,
            15 => Q::SetVringEnable {
                index,
                enable: b & 1 != 0,
            },
            16 => Q::SendRarp {
                mac: [2, 0, 0, a, b, c],
            },
            17 => Q::NetSetMtu { mtu: u64::from(c) },
            18 => match make_fd(self, 5, 0) {
                Some(fd) => Q::SetBackendReqFd { fd },
                None => return,
            },
            19 => Q::SetVringEndian {
                index,
                endian: if b & 1 != 0 {
                    VringEndian::Big
                } else {
                    VringEndian::Little
                },
            },
            20 => Q::GetConfig {
                offset: u32::from(a % 12),
                size: u32::from(b % 12),
                flags: ConfigFlags::Frontend,
            },
            21 => Q::SetConfig {
                offset: u32::from(a % 12),
                flags: if c & 1 != 0 {
                    ConfigFlags::Migration
                } else {
                    ConfigFlags::Frontend
                },
                data: vec![b; usize::from(c % 12)],
            },
            22 => Q::GetInflightFd {
                desc: InflightDesc {
                    num_queues: u16::from(a % 5),
                    queue_size: if b & 0x80 != 0 {
                        u16::from(b)
                    } else {
                        1 << (b % 9)
                    },
                    ..Default::default()
                },
            },
            23 => {
                let (desc, fd) = match (&self.inflight, a & 1 == 0) {
                    (Some((d, f)), true) => {
                        let Ok(f) = rustix::io::fcntl_dupfd_cloexec(f, 0) else {
                            return;
                        };
                        (*d, f)
                    }
                    _ => {
                        let Some(f) = fd(self) else { return };
                        (
                            InflightDesc {
                                mmap_size: u64::from(c) * 0x100,
                                mmap_offset: u64::from(b & 0xf) * 0x1000,
                                num_queues: u16::from(a >> 1) % 5,
                                queue_size: 1 << ((b >> 4) % 9),
                            },
                            f,
                        )
                    }
                };
                Q::SetInflightFd { desc, fd }
            }
            24 => Q::ResetDevice,
            25 => Q::VringKick { index },
            26 => Q::GetMaxMemSlots,
            28 => Q::RemMemReg {
                region: guest::region(
                    usize::from(a % 2),
                    if b & 1 != 0 {
                        REGION_SIZE / 2
                    } else {
                        REGION_SIZE
                    },
                    0,
                ),
            },
            29 => Q::SetStatus {
                status: DeviceStatus::from_bits_retain(a),
            },
            30 => Q::GetStatus,
            31 => Q::SetLogBase {
                log: LogDescription {
                    mmap_size: 4096,
                    mmap_offset: 0,
                },
                fd: if n.has(ProtocolFeatures::LOG_SHMFD) {
                    fd(self)
                } else {
                    None
                },
            },
            32 => match fd(self) {
                Some(fd) => Q::SetLogFd { fd },
                None => return,
            },
            _ => Q::IotlbMsg {
                msg: IotlbMsg {
                    iova: u64::from(c) << 12,
                    size: 4096,
                    uaddr: USER_BASE,
                    perm: IotlbPerm::READ,
                    kind: IotlbType::Update,
                },
            },
        };
        self.send(req, need);
    }

    /// Offers a chain on ring `ring % 4` through its driver. `shape`: bits 0–1 readable
    /// elements, 2–3 writable ones (at least one element), 4 indirect, 5 kick after,
    /// 6 hostile addresses and lengths. One byte per element follows.
    fn post(&mut self, u: &mut Unstructured<'_>, ring: u8, shape: u8) {
        let i = usize::from(ring % 4);
        let nr = usize::from(shape & 3);
        let nw = usize::from((shape >> 2) & 3);
        let nr = if nr + nw == 0 { 1 } else { nr };
        let hostile = shape & 0x40 != 0;
        let element = |p: u8| -> (u64, u32) {
            if hostile {
                (u64::from(p) * 0x1000, u32::from(p & 0xf) * 0x1000)
            } else {
                (
                    BUFFERS + u64::from(p & 0xf0) * 0x100,
                    (u32::from(p & 0x0f) + 1) * 64,
                )
            }
        };
        let readable: Vec<(u64, u32)> = (0..nr).map(|_| element(byte(u))).collect();
        let writable: Vec<(u64, u32)> = (0..nw).map(|_| element(byte(u))).collect();
        let table = (shape & 0x10 != 0).then_some(BUFFERS + 0xf000 + i as u64 * 0x100);
        if let Some(Some(d)) = self.drivers.get_mut(i) {
            d.post(&readable, &writable, table);
        }
        if shape & 0x20 != 0 {
            self.conn.rings.kick(i);
        }
    }

    /// Lets the connection read what the socket holds, as much as it has room for.
    fn flush(&mut self) {
        for _ in 0..MAX_STEPS {
            self.pump();
            if self.conn.closing {
                self.conn.outbox.clear();
                return;
            }
            let room = self.conn.state.connection().input_room();
            if room == 0 {
                return;
            }
            let Some((bytes, fds)) = self.conn.outbox.pop_front() else {
                return;
            };
            let n = room.min(bytes.len());
            let (now, later) = bytes.split_at(n);
            let r = self.conn.state.connection_mut().handle_input(now, fds);
            if !later.is_empty() {
                self.conn.outbox.push_front((later.to_vec(), Vec::new()));
            }
            if r.is_err() {
                assert!(
                    self.conn.state.connection().is_closed(),
                    "a fatal input error leaves the connection open"
                );
                self.stats.failed += 1;
                self.begin_close();
            }
        }
        panic!("feeding the connection does not end");
    }

    /// Handles every event and checks every transmit.
    fn pump(&mut self) {
        for _ in 0..MAX_STEPS {
            if let Some(t) = self.conn.state.connection_mut().poll_transmit() {
                if !self.conn.closing {
                    self.check_reply(t);
                }
                continue;
            }
            match self.conn.state.connection_mut().poll_event() {
                Some(Event::ConnectionLost { .. }) => {
                    // Closing drops a pending operation's answer token: not a failure.
                    if !self.conn.closing {
                        self.stats.failed += 1;
                    }
                    self.begin_close();
                }
                Some(event) => {
                    let c = &mut self.conn;
                    if c.closing {
                        // A closing runner reads no more (mio drops the connection's
                        // events with it).
                        drop(event);
                        continue;
                    }
                    c.state.handle(event, &mut c.rings);
                    self.stats.waited |= c.state.is_pending();
                }
                None => return,
            }
        }
        panic!("the connection keeps producing events");
    }

    /// Checks that a transmit of the back-end decodes as one reply.
    fn check_reply(&mut self, t: Transmit<OwnedFd>) {
        let Transmit { bytes, fds } = t;
        assert!(fds.len() <= 1, "a reply carries {} fds", fds.len());
        let ctx = self.negotiated().decode_context(false);
        let mut decoder = FrontendReplyDecoder::<OwnedFd>::new(ctx);
        let mut input = Input::new(&bytes, fds);
        match decoder.decode(&mut input) {
            Ok(Some(reply)) => {
                if let FrontendReply::InflightFd { desc, fd: Some(fd) } = reply.message {
                    self.inflight = Some((desc, fd));
                }
            }
            // A request of a code we do not know that asked for a reply gets its NACK
            // under that code: a u64 reply frame our codec cannot name.
            Err(DecodeError::UnknownReply { .. }) => {
                let word = |i: usize| {
                    bytes
                        .get(i..i + 4)
                        .and_then(|b| b.try_into().ok())
                        .map(u32::from_ne_bytes)
                };
                assert_eq!(word(4), Some(HeaderFlags::reply().bits()), "reply flags");
                assert_eq!(word(8), Some(8), "a NACK is one u64");
                assert_eq!(bytes.len(), HEADER_SIZE + 8, "reply size");
                self.stats.replies += 1;
                return;
            }
            other => panic!("the back-end sent {bytes:02x?}, which decodes as {other:?}"),
        }
        assert!(input.is_empty(), "a transmit holds more than one reply");
        self.stats.replies += 1;
    }

    /// After an op: collects quiesced rings, answers, reads on.
    fn settle(&mut self) {
        let c = &mut self.conn;
        if c.state.is_pending() {
            c.state.poll_pending(&mut c.rings);
        }
        self.flush();
        assert!(
            !self.conn.state.memory_faulted(),
            "guest memory faulted although nothing shrank it"
        );
    }

    fn begin_close(&mut self) {
        let c = &mut self.conn;
        if c.closing {
            return;
        }
        c.closing = true;
        c.outbox.clear();
        c.state.close(&mut c.rings);
    }

    /// The device completes everything it holds, as it eventually must.
    fn release(&mut self) {
        {
            let mut ctl = lock(self.dev.control());
            ctl.release = true;
            ctl.policy &= !policy::MODE;
        }
        for _ in 0..8 {
            self.conn.rings.ready_all();
            self.settle();
            if !self.conn.state.is_pending() && self.conn.outbox.is_empty() {
                break;
            }
        }
        let mut ctl = lock(self.dev.control());
        ctl.release = false;
    }

    /// Ends the connection: the device completes what it holds, and the session must
    /// close with every ring collected.
    fn close(&mut self) {
        self.begin_close();
        self.release();
        let c = &mut self.conn;
        c.state.poll_pending(&mut c.rings);
        if self.known_hang() {
            return;
        }
        let c = &self.conn;
        assert!(
            c.state.is_closed(),
            "the session does not close once every chain is completed"
        );
        assert_eq!(c.rings.count(), 0, "a ring is still running after close");
    }

    /// Whether the run hit [`WRONG_QUEUE_HANGS`]: stops may never finish.
    fn known_hang(&mut self) -> bool {
        let misrouted = lock(self.dev.control()).misrouted;
        self.stats.misrouted |= misrouted;
        WRONG_QUEUE_HANGS && misrouted && !self.strict
    }

    fn collect(&mut self) {
        self.stats.runs += self.conn.rings.runs;
        self.stats.broken += self.conn.rings.broken;
    }

    fn reconnect(&mut self) {
        self.close();
        self.collect();
        self.conn = Conn::new(&self.dev);
        self.drivers.iter_mut().for_each(|d| *d = None);
        self.stats.sessions += 1;
    }

    /// The end of a run: everything released, nothing may be left waiting; then the
    /// session closes.
    fn finish(&mut self) {
        self.release();
        let known_hang = self.known_hang();
        let c = &self.conn;
        if !c.closing && !c.state.connection().is_closed() && !known_hang {
            assert!(
                !c.state.is_pending(),
                "an operation stays pending although the device completed everything"
            );
            assert!(
                c.outbox.is_empty(),
                "the session reads no more although nothing is pending"
            );
            assert!(
                !c.state.connection().is_waiting(),
                "a request stays unanswered"
            );
        }
        self.close();
        self.collect();
        self.stats.completed = self.dev.completed();
    }
}
