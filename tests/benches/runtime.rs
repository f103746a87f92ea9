//! Data path of the device runtime: our std and mio runners against rust-vmm's
//! `vhost-user-backend`, each serving the same echo device in a child process
//! of its own, driven by the same front-end (our `Frontend` + `DriverRing`,
//! guest memory in a memfd) over a real Unix socket and eventfds.
//!
//! Each request is one 64-byte readable descriptor and one 64-byte writable
//! descriptor; the device copies the readable bytes into the writable ones and
//! completes the chain with that length. One queue of 256 entries, EVENT_IDX
//! and REPLY_ACK negotiated; split ring for all three back-ends, packed ring
//! for ours only (virtio-queue has none). Depth 1 (one request in flight) and
//! depth 32 (32 kept in flight: refilled as completions arrive, one kick per
//! refill batch when the ring asks for it, a wait on the call eventfd when
//! nothing is complete).
//!
//! The back-end's CPU time is read from `/proc/<pid>/task/*/schedstat` (ns,
//! every thread of the child) before and after each timed window.
//!
//! ```text
//! cargo bench -p tests --bench runtime
//! ```
//!
//! Environment:
//! - `RUNTIME_BENCH_SECS` (default 3): timed window per case, seconds.
//! - `RUNTIME_BENCH_WARMUP_SECS` (default 0.5): warm-up per case; every echo
//!   is checked byte for byte during the warm-up.
//! - `RUNTIME_BENCH_ROUNDS` (default 1): rounds per case, the median (by
//!   requests per back-end CPU-second) is reported.
//! - `RUNTIME_BENCH_ONLY`: comma-separated back-ends (`std,mio,rustvmm`).
//! - `RUNTIME_BENCH_DEPTHS` (default `1,32`): requests in flight.
//! - `RUNTIME_BENCH_PIN=same|split|none` (default `same`): `same` pins the
//!   front-end and the back-end process to one CPU (the last one), `split`
//!   the front-end to CPU 0 and the back-end to CPU 1, `none` pins nothing.
//!   Pinning is the default because it makes the figures reproducible on a
//!   small VM: unpinned, the scheduler sometimes puts both ends on one CPU
//!   and sometimes not, and a wakeup across vCPUs (an IPI and a halted vCPU
//!   woken by the hypervisor) costs ~20 µs here against ~1.5 µs on one CPU,
//!   so depth-1 figures jump by 20× between runs. `split` is stable but
//!   measures mostly the hypervisor's wakeup cost.
//! - `RUNTIME_BENCH_SYSCALLS=perf` (or `strace`): after each timed window, a
//!   further 1-second window with `perf stat -e syscalls:sys_enter_* -p
//!   <child>` (or `strace -c -f -p <child>`) attached; prints the back-end's
//!   syscalls and context switches per 1000 requests (those windows are not
//!   in the table). perf counts in the kernel and barely slows the back-end;
//!   strace stops it on every syscall, which changes how often it sleeps.
//!
//! The back-end runs in this same binary, re-executed as
//! `runtime --serve std|mio|rustvmm --socket PATH --parent PID [--cpu N]`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    missing_debug_implementations
)]

use std::error::Error;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

type BoxResult<T> = Result<T, Box<dyn Error>>;

/// `(syscall or event, count)` rows of a traced window.
type Counts = Vec<(String, u64)>;

/// Queue size of the one queue.
const QUEUE_SIZE: u16 = 256;
/// Bytes of each request and of each response descriptor.
const MSG: u32 = 64;
/// Where the request/response buffers start in guest memory (the ring is at 0).
const BUFS: u64 = 0x1_0000;
/// Guest memory size.
const RAM: u64 = 1 << 20;
/// Longest wait for a call, a reply or a socket before the bench fails.
const TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// OUR BACKEND API. Everything that touches `vhost_io_std::backend` /
// `vhost_io_mio` server-side lives in this module: port these two functions
// when the device API changes. Each serves the echo device on `socket` until
// the process is killed.
// ---------------------------------------------------------------------------
mod ours {
    use std::error::Error;
    use std::path::Path;

    use vhost_backend::echo::Echo;

    /// Our std runner: `vhost_io_std::backend::Server` (a session thread, a
    /// worker thread per started queue) with the echo device, one queue.
    pub fn serve_ours_std(socket: &Path) -> Result<(), Box<dyn Error>> {
        vhost_io_std::backend::Server::bind(socket, Echo::new(1))?.serve()?;
        Ok(())
    }

    /// Our mio runner: `vhost_io_mio::Server` (one thread, rings processed
    /// inline in the event loop) with the echo device, one queue.
    pub fn serve_ours_mio(socket: &Path) -> Result<(), Box<dyn Error>> {
        vhost_io_mio::Server::new(Echo::new(1))?
            .bind(socket)?
            .run()?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// rust-vmm: the same echo device on `vhost-user-backend`, written the way its
// own tests and the vhost-device daemons write a device.
// ---------------------------------------------------------------------------
mod rustvmm {
    use std::error::Error;
    use std::io;
    use std::path::Path;
    use std::sync::{Arc, RwLock};

    use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
    use vhost_proto::wire::VirtioFeatures;
    use vhost_user_backend::{VhostUserBackendMut, VhostUserDaemon, VringRwLock, VringT};
    use virtio_queue::{DescriptorChain, QueueOwnedT};
    use vm_memory::{
        Bytes, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryLoadGuard, GuestMemoryMmap,
    };
    use vmm_sys_util::epoll::EventSet;

    type Chain = DescriptorChain<GuestMemoryLoadGuard<GuestMemoryMmap>>;

    fn err(what: &str) -> io::Error {
        io::Error::other(what.to_owned())
    }

    /// The echo device.
    #[derive(Default)]
    pub struct VmmEcho {
        event_idx: bool,
        mem: Option<GuestMemoryAtomic<GuestMemoryMmap>>,
    }

    impl VmmEcho {
        /// Copies the chain's readable bytes into its writable bytes (as many
        /// as fit, at most 4 KiB); returns the bytes written.
        fn echo(mem: &GuestMemoryMmap, chain: Chain) -> io::Result<u32> {
            let mut buf = [0u8; 4096];
            let (mut have, mut written) = (0usize, 0usize);
            for desc in chain {
                let len = desc.len() as usize;
                if desc.is_write_only() {
                    let n = len.min(have - written);
                    mem.write_slice(&buf[written..written + n], desc.addr())
                        .map_err(io::Error::other)?;
                    written += n;
                } else {
                    let n = len.min(buf.len() - have);
                    mem.read_slice(&mut buf[have..have + n], desc.addr())
                        .map_err(io::Error::other)?;
                    have += n;
                }
            }
            u32::try_from(written).map_err(|_| err("response too long"))
        }

        /// Pops every available chain, echoes it, puts it in the used ring,
        /// and signals the driver if it asked to be (EVENT_IDX).
        fn process_queue(&mut self, vring: &VringRwLock) -> io::Result<()> {
            let atomic = self.mem.as_ref().ok_or_else(|| err("no memory table"))?;
            let mem = atomic.memory();
            let chains: Vec<Chain> = vring
                .get_mut()
                .get_queue_mut()
                .iter(mem.clone())
                .map_err(io::Error::other)?
                .collect();
            if chains.is_empty() {
                return Ok(());
            }
            for chain in chains {
                let head = chain.head_index();
                let len = Self::echo(&mem, chain)?;
                vring.add_used(head, len).map_err(io::Error::other)?;
            }
            if vring.needs_notification().map_err(io::Error::other)? {
                vring.signal_used_queue()?;
            }
            Ok(())
        }
    }

    impl VhostUserBackendMut for VmmEcho {
        type Bitmap = ();
        type Vring = VringRwLock;

        fn num_queues(&self) -> usize {
            1
        }

        fn max_queue_size(&self) -> usize {
            32768
        }

        fn features(&self) -> u64 {
            (VirtioFeatures::VERSION_1 | VirtioFeatures::EVENT_IDX | VirtioFeatures::INDIRECT_DESC)
                .bits()
                | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
        }

        fn protocol_features(&self) -> VhostUserProtocolFeatures {
            VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK
        }

        fn set_event_idx(&mut self, enabled: bool) {
            self.event_idx = enabled;
        }

        fn update_memory(&mut self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
            self.mem = Some(mem);
            Ok(())
        }

        fn handle_event(
            &mut self,
            device_event: u16,
            evset: EventSet,
            vrings: &[VringRwLock],
            _thread_id: usize,
        ) -> io::Result<()> {
            if evset != EventSet::IN {
                return Err(err("not an EPOLLIN event"));
            }
            let vring = vrings
                .get(usize::from(device_event))
                .ok_or_else(|| err("unknown device event"))?;
            if self.event_idx {
                // virtio-queue reads the avail index once per iterator: with
                // EVENT_IDX, keep processing until enable_notification finds
                // no new buffer (the vhost-device daemons' loop).
                loop {
                    vring.disable_notification().map_err(io::Error::other)?;
                    self.process_queue(vring)?;
                    if !vring.enable_notification().map_err(io::Error::other)? {
                        break;
                    }
                }
            } else {
                self.process_queue(vring)?;
            }
            Ok(())
        }
    }

    /// Serves the echo device on `socket` with a `VhostUserDaemon` (one
    /// connection: the bench starts a fresh back-end per case).
    pub fn serve_rustvmm(socket: &Path) -> Result<(), Box<dyn Error>> {
        let backend = Arc::new(RwLock::new(VmmEcho::default()));
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let mut daemon = VhostUserDaemon::new("vmm-echo".to_owned(), backend, mem)
            .map_err(|e| format!("VhostUserDaemon::new: {e}"))?;
        daemon
            .serve(socket)
            .map_err(|e| format!("VhostUserDaemon::serve: {e}"))?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The back-end child process.
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Std,
    Mio,
    RustVmm,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Std, Kind::Mio, Kind::RustVmm];

    fn arg(self) -> &'static str {
        match self {
            Kind::Std => "std",
            Kind::Mio => "mio",
            Kind::RustVmm => "rustvmm",
        }
    }

    fn from_arg(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.arg() == s)
    }

    fn label(self) -> &'static str {
        match self {
            Kind::Std => "ours: vhost-io-std Server",
            Kind::Mio => "ours: vhost-io-mio Server",
            Kind::RustVmm => "rust-vmm vhost-user-backend 0.24",
        }
    }
}

/// Runs in the child (`--serve KIND --socket PATH --parent PID [--cpu N]`).
fn child_main(args: &[String]) -> ! {
    let get = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let result = (|| -> BoxResult<()> {
        // Dies with the bench, however the bench ends.
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
        let parent: i32 = get("--parent").ok_or("no --parent")?.parse()?;
        if rustix::process::getppid().map(|p| p.as_raw_nonzero().get()) != Some(parent) {
            return Err("the bench is gone".into());
        }
        if let Some(cpu) = get("--cpu") {
            pin_to(cpu.parse()?)?;
        }
        let kind = get("--serve")
            .as_deref()
            .and_then(Kind::from_arg)
            .ok_or("--serve std|mio|rustvmm")?;
        let socket = PathBuf::from(get("--socket").ok_or("no --socket")?);
        match kind {
            Kind::Std => ours::serve_ours_std(&socket),
            Kind::Mio => ours::serve_ours_mio(&socket),
            Kind::RustVmm => rustvmm::serve_rustvmm(&socket),
        }
    })();
    match result {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("runtime bench back-end: {e}");
            std::process::exit(1)
        }
    }
}

fn pin_to(cpu: usize) -> io::Result<()> {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set)?;
    Ok(())
}

/// A back-end child; killed and reaped on drop (also when the bench panics).
struct BackendProcess {
    child: Child,
}

impl BackendProcess {
    fn spawn(kind: Kind, socket: &Path, cpu: Option<usize>) -> BoxResult<Self> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("--serve")
            .arg(kind.arg())
            .arg("--socket")
            .arg(socket)
            .arg("--parent")
            .arg(std::process::id().to_string());
        if let Some(cpu) = cpu {
            cmd.arg("--cpu").arg(cpu.to_string());
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        let mut p = BackendProcess {
            child: cmd.spawn()?,
        };
        // Wait for the listening socket (never probe it with a connect: the
        // std and rust-vmm servers would take that as their front-end).
        let deadline = Instant::now() + TIMEOUT;
        while !socket.exists() {
            if let Some(status) = p.child.try_wait()? {
                return Err(format!("{} back-end exited early: {status}", kind.arg()).into());
            }
            if Instant::now() > deadline {
                return Err(format!("{} back-end did not create its socket", kind.arg()).into());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(p)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the back-end died.
    fn check_alive(&mut self) -> BoxResult<()> {
        match self.child.try_wait()? {
            Some(status) => Err(format!("the back-end exited: {status}").into()),
            None => Ok(()),
        }
    }
}

impl Drop for BackendProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time of every thread of process `pid` (`/proc/<pid>/task/*/schedstat`,
/// first field, ns).
fn process_cpu_ns(pid: &str) -> io::Result<u64> {
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path().join("schedstat");
        match std::fs::read_to_string(&path) {
            Ok(s) => {
                total += s
                    .split_whitespace()
                    .next()
                    .and_then(|f| f.parse::<u64>().ok())
                    .ok_or_else(|| io::Error::other(format!("bad {}", path.display())))?;
            }
            // A thread that ended between the listing and the read.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

/// Context switches (voluntary: the thread slept; involuntary: it was
/// preempted) of every thread of process `pid`, from
/// `/proc/<pid>/task/*/status`.
fn process_switches(pid: &str) -> io::Result<u64> {
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path().join("status");
        match std::fs::read_to_string(&path) {
            Ok(s) => {
                total += s
                    .lines()
                    .filter(|l| l.contains("ctxt_switches:"))
                    .filter_map(|l| l.split(':').nth(1)?.trim().parse::<u64>().ok())
                    .sum::<u64>();
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

/// A fresh directory for the socket, removed on drop.
struct SocketDir(PathBuf);

impl SocketDir {
    fn new() -> io::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "vhost-runtime-bench-{}-{nanos:x}",
            std::process::id()
        ));
        std::fs::create_dir(&path)?;
        Ok(SocketDir(path))
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How the back-end's syscalls are counted in the extra window.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TraceMode {
    /// `perf stat -e syscalls:sys_enter_* -p PID`: in-kernel counters, the
    /// back-end runs at nearly full speed.
    Perf,
    /// `strace -c -f -p PID`: ptrace stops every syscall, which slows the
    /// back-end by an order of magnitude and changes how often it sleeps.
    Strace,
}

/// The syscalls `perf stat` counts (every syscall the runners make on the
/// data path, and the total).
const PERF_EVENTS: &[&str] = &[
    "raw_syscalls:sys_enter",
    "context-switches",
    "syscalls:sys_enter_read",
    "syscalls:sys_enter_write",
    "syscalls:sys_enter_readv",
    "syscalls:sys_enter_writev",
    "syscalls:sys_enter_poll",
    "syscalls:sys_enter_ppoll",
    "syscalls:sys_enter_epoll_wait",
    "syscalls:sys_enter_epoll_pwait",
    "syscalls:sys_enter_epoll_pwait2",
    "syscalls:sys_enter_recvmsg",
    "syscalls:sys_enter_sendmsg",
    "syscalls:sys_enter_futex",
    "syscalls:sys_enter_sched_yield",
];

/// `perf stat` or `strace -c -f` attached to the back-end; detached with
/// SIGINT (both then write their summary) and reaped on drop.
struct Tracer {
    mode: TraceMode,
    child: Child,
    out: PathBuf,
}

impl Tracer {
    fn attach(mode: TraceMode, pid: u32, out: PathBuf) -> BoxResult<Self> {
        let mut cmd = match mode {
            TraceMode::Perf => {
                let mut c = Command::new("perf");
                c.args(["stat", "-x", ",", "-e", &PERF_EVENTS.join(","), "-o"]);
                c
            }
            TraceMode::Strace => {
                let mut c = Command::new("strace");
                c.args(["-c", "-f", "-q", "-o"]);
                c
            }
        };
        let program = format!("{:?}", cmd.get_program());
        let child = cmd
            .arg(&out)
            .arg("-p")
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("{program}: {e}"))?;
        // Let it attach to every thread.
        std::thread::sleep(Duration::from_millis(500));
        Ok(Tracer { mode, child, out })
    }

    /// Detaches and returns `(what, count)`, the total first, then the most
    /// frequent first.
    fn finish(mut self) -> BoxResult<Counts> {
        self.stop();
        let text = std::fs::read_to_string(&self.out)?;
        let mut rows = Vec::new();
        let mut total = None;
        for line in text.lines() {
            match self.mode {
                TraceMode::Perf => {
                    // count,unit,event,...
                    let f: Vec<&str> = line.split(',').collect();
                    let (Some(count), Some(event)) = (
                        f.first().and_then(|c| c.trim().parse::<u64>().ok()),
                        f.get(2),
                    ) else {
                        continue;
                    };
                    match *event {
                        "raw_syscalls:sys_enter" => total = Some(count),
                        "context-switches" => rows.push(("(context switches)".to_owned(), count)),
                        e => {
                            let name = e.trim_start_matches("syscalls:sys_enter_");
                            rows.push((name.to_owned(), count));
                        }
                    }
                }
                TraceMode::Strace => {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    if f.len() < 5 || f.first().is_none_or(|c| c.parse::<f64>().is_err()) {
                        continue;
                    }
                    let Some(&name) = f.last() else { continue };
                    if name == "total" {
                        continue;
                    }
                    if let Some(calls) = f.get(3).and_then(|c| c.parse::<u64>().ok()) {
                        rows.push((name.to_owned(), calls));
                    }
                }
            }
        }
        let total = total.unwrap_or_else(|| {
            rows.iter()
                .filter(|(n, _)| !n.starts_with('('))
                .map(|(_, c)| c)
                .sum()
        });
        rows.sort_by_key(|r| std::cmp::Reverse(r.1));
        rows.insert(0, ("total".to_owned(), total));
        Ok(rows)
    }

    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
            }
            let deadline = Instant::now() + TIMEOUT;
            while let Ok(None) = self.child.try_wait() {
                if Instant::now() > deadline {
                    let _ = self.child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.wait();
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------
// The front-end driver (the same for all back-ends).
// ---------------------------------------------------------------------------
mod driver {
    use std::error::Error;
    use std::path::Path;
    use std::time::{Duration, Instant};

    use vhost_io_std::frontend::{DriverRing, Frontend, GuestRam};
    use vhost_proto::wire::{ProtocolFeatures, VirtioFeatures};
    use vring::memory::GuestSlice;

    use super::{BUFS, MSG, QUEUE_SIZE, RAM, TIMEOUT};

    type BoxResult<T> = Result<T, Box<dyn Error>>;

    /// Fills a response buffer before it is handed out (a response that was
    /// not written shows).
    const POISON: u8 = 0xa5;

    /// A connected front-end with one started ring and `depth` requests in
    /// flight.
    pub struct Driver {
        // Field order: the ring and the session go before the memory.
        ring: DriverRing,
        _front: Frontend,
        ram: GuestRam,
        /// Slot of each buffer id in flight.
        slot_of_id: Vec<Option<usize>>,
        /// Sequence number written into each slot's request.
        seq: Vec<u64>,
        next_seq: u64,
        verify: bool,
        verified: u64,
    }

    fn req_addr(slot: usize) -> u64 {
        BUFS + slot as u64 * 2 * u64::from(MSG)
    }

    fn pattern(seq: u64) -> [u8; MSG as usize] {
        let mut p = [0u8; MSG as usize];
        for (i, b) in p.iter_mut().enumerate() {
            *b = (seq.rotate_left(i as u32 % 64) as u8) ^ (i as u8);
        }
        p
    }

    impl Driver {
        /// Connects, negotiates VERSION_1 | EVENT_IDX (| RING_PACKED) and
        /// REPLY_ACK, sets up guest memory and ring 0, and makes `depth`
        /// requests available.
        pub fn connect(socket: &Path, packed: bool, depth: usize) -> BoxResult<Self> {
            let ram = GuestRam::new(0, RAM)?;
            // The socket file exists from bind(); until listen() a connect
            // is refused: retry that (a refused connect reaches no server).
            let deadline = Instant::now() + TIMEOUT;
            let mut front = loop {
                match Frontend::connect(socket) {
                    Ok(f) => break f,
                    Err(e)
                        if e.kind() == std::io::ErrorKind::ConnectionRefused
                            && Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(e) => return Err(format!("connect: {e}").into()),
                }
            };
            let offered = front.get_features()?;
            let mut features = VirtioFeatures::VERSION_1
                | VirtioFeatures::PROTOCOL_FEATURES
                | VirtioFeatures::EVENT_IDX;
            if packed {
                features |= VirtioFeatures::RING_PACKED;
            }
            if !offered.contains(features) {
                return Err(format!("the back-end offers {offered:?}, needed {features:?}").into());
            }
            let protocol = front.get_protocol_features()?;
            if !protocol.contains(ProtocolFeatures::REPLY_ACK) {
                return Err("the back-end does not offer REPLY_ACK".into());
            }
            front.set_protocol_features(ProtocolFeatures::REPLY_ACK)?;
            front.set_owner()?;
            front.set_features(features)?;
            if !front.reply_ack() {
                return Err("REPLY_ACK not negotiated".into());
            }
            front.set_mem_table(&[(ram.region(), ram.fd())])?;
            let rf = vring::RingFeatures {
                event_idx: true,
                indirect: false,
                in_order: false,
            };
            let (ring, end) = if packed {
                DriverRing::packed(&ram, 0, 0, QUEUE_SIZE, rf)?
            } else {
                DriverRing::split(&ram, 0, 0, QUEUE_SIZE, rf)?
            };
            if end > BUFS || req_addr(depth) > RAM {
                return Err("guest memory layout does not fit".into());
            }
            front.start_ring(&ring, &ram)?;
            let mut d = Driver {
                ring,
                _front: front,
                ram,
                slot_of_id: vec![None; usize::from(QUEUE_SIZE)],
                seq: vec![0; depth],
                next_seq: 1,
                verify: true,
                verified: 0,
            };
            for slot in 0..depth {
                d.submit(slot)?;
            }
            d.ring.kick()?;
            Ok(d)
        }

        /// Checks every echo (writes a fresh request and poisons the
        /// response before each submission) or not.
        pub fn set_verify(&mut self, on: bool) {
            self.verify = on;
        }

        /// Echoes checked byte for byte so far.
        pub fn verified(&self) -> u64 {
            self.verified
        }

        fn submit(&mut self, slot: usize) -> BoxResult<()> {
            let req = req_addr(slot);
            let resp = req + u64::from(MSG);
            if self.verify {
                let seq = self.next_seq;
                self.next_seq += 1;
                *self.seq.get_mut(slot).ok_or("slot out of range")? = seq;
                let mem = self.ram.memory();
                GuestSlice::new(&**mem, req, MSG as usize)?.write_at(0, &pattern(seq))?;
                GuestSlice::new(&**mem, resp, MSG as usize)?.fill(0, MSG as usize, POISON)?;
            }
            let id = self.ring.add(&[(req, MSG)], &[(resp, MSG)])?;
            let entry = self
                .slot_of_id
                .get_mut(usize::from(id))
                .ok_or("buffer id out of range")?;
            if entry.replace(slot).is_some() {
                return Err(format!("buffer id {id} handed out twice").into());
            }
            Ok(())
        }

        fn check(&mut self, slot: usize) -> BoxResult<()> {
            let seq = *self.seq.get(slot).ok_or("slot out of range")?;
            let mut got = [0u8; MSG as usize];
            let resp = req_addr(slot) + u64::from(MSG);
            GuestSlice::new(&**self.ram.memory(), resp, MSG as usize)?.read_at(0, &mut got)?;
            if got != pattern(seq) {
                return Err(format!("echo mismatch in slot {slot} (request {seq})").into());
            }
            self.verified += 1;
            Ok(())
        }

        /// Keeps the requests in flight for `window`: pops what is complete,
        /// resubmits it, kicks once per batch (if the ring asks for kicks),
        /// waits on the call eventfd when nothing is complete. Returns the
        /// requests completed.
        pub fn run(&mut self, window: Duration) -> BoxResult<u64> {
            let end = Instant::now() + window;
            let mut done = 0u64;
            loop {
                let mut got = 0u64;
                while let Some((id, len)) = self.ring.pop_used()? {
                    let slot = self
                        .slot_of_id
                        .get_mut(usize::from(id))
                        .and_then(Option::take)
                        .ok_or_else(|| format!("used id {id} was not in flight"))?;
                    if len != MSG {
                        return Err(format!("completed with {len} bytes, expected {MSG}").into());
                    }
                    if self.verify {
                        self.check(slot)?;
                    }
                    self.submit(slot)?;
                    got += 1;
                }
                if got > 0 {
                    done += got;
                    self.ring.kick()?;
                    if Instant::now() >= end {
                        return Ok(done);
                    }
                    continue;
                }
                if self.ring.enable_interrupts() {
                    continue;
                }
                if !self.ring.wait_call(TIMEOUT)? {
                    return Err(format!(
                        "no completion within {TIMEOUT:?} ({done} completed in this window)"
                    )
                    .into());
                }
            }
        }

        /// Lets the requests in flight complete (so that the back-end goes
        /// idle), without resubmitting them.
        pub fn drain(&mut self) -> BoxResult<()> {
            let outstanding = self.slot_of_id.iter().filter(|s| s.is_some()).count();
            let used = self.ring.collect(outstanding, TIMEOUT)?;
            for (id, _) in used {
                if let Some(s) = self.slot_of_id.get_mut(usize::from(id)) {
                    *s = None;
                }
            }
            Ok(())
        }

        /// Makes `depth` requests available again after [`drain`](Self::drain).
        pub fn refill(&mut self, depth: usize) -> BoxResult<()> {
            for slot in 0..depth {
                self.submit(slot)?;
            }
            self.ring.kick()?;
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------
// The cases and the report.
// ---------------------------------------------------------------------------

struct Config {
    window: Duration,
    warmup: Duration,
    rounds: usize,
    kinds: Vec<Kind>,
    depths: Vec<usize>,
    /// CPUs of the front-end and of the back-end.
    pin: Option<(usize, usize)>,
    trace: Option<TraceMode>,
}

fn env_f64(name: &str, default: f64) -> BoxResult<f64> {
    match std::env::var(name) {
        Ok(v) => Ok(v.parse().map_err(|e| format!("{name}={v}: {e}"))?),
        Err(_) => Ok(default),
    }
}

impl Config {
    fn from_env() -> BoxResult<Self> {
        let kinds = match std::env::var("RUNTIME_BENCH_ONLY") {
            Ok(v) => v
                .split(',')
                .map(|s| Kind::from_arg(s.trim()).ok_or(format!("RUNTIME_BENCH_ONLY: {s}?")))
                .collect::<Result<Vec<_>, _>>()?,
            Err(_) => Kind::ALL.to_vec(),
        };
        let depths = match std::env::var("RUNTIME_BENCH_DEPTHS") {
            Ok(v) => v
                .split(',')
                .map(|s| s.trim().parse::<usize>())
                .collect::<Result<Vec<_>, _>>()?,
            Err(_) => vec![1, 32],
        };
        if depths
            .iter()
            .any(|&d| d == 0 || d > usize::from(QUEUE_SIZE) / 2)
        {
            return Err("RUNTIME_BENCH_DEPTHS: 1..=128".into());
        }
        Ok(Config {
            window: Duration::from_secs_f64(env_f64("RUNTIME_BENCH_SECS", 3.0)?),
            warmup: Duration::from_secs_f64(env_f64("RUNTIME_BENCH_WARMUP_SECS", 0.5)?),
            rounds: env_f64("RUNTIME_BENCH_ROUNDS", 1.0)?.max(1.0) as usize,
            kinds,
            depths,
            pin: match std::env::var("RUNTIME_BENCH_PIN").as_deref() {
                Ok("same") | Err(_) => {
                    let last = std::thread::available_parallelism().map_or(1, |n| n.get()) - 1;
                    Some((last, last))
                }
                Ok("split") => Some((0, 1)),
                Ok("none") => None,
                Ok(v) => return Err(format!("RUNTIME_BENCH_PIN={v}: same, split or none").into()),
            },
            trace: match std::env::var("RUNTIME_BENCH_SYSCALLS").as_deref() {
                Ok("perf") => Some(TraceMode::Perf),
                Ok("strace") => Some(TraceMode::Strace),
                Ok(v) => return Err(format!("RUNTIME_BENCH_SYSCALLS={v}: perf or strace").into()),
                Err(_) => None,
            },
        })
    }
}

/// One timed window.
#[derive(Clone, Copy, Default)]
struct Measure {
    requests: u64,
    wall_ns: u64,
    backend_ns: u64,
    frontend_ns: u64,
    backend_switches: u64,
}

impl Measure {
    fn rps(&self) -> f64 {
        self.requests as f64 * 1e9 / self.wall_ns.max(1) as f64
    }
    fn backend_ns_per_req(&self) -> f64 {
        self.backend_ns as f64 / self.requests.max(1) as f64
    }
    fn frontend_ns_per_req(&self) -> f64 {
        self.frontend_ns as f64 / self.requests.max(1) as f64
    }
    fn per_cpu_second(&self) -> f64 {
        self.requests as f64 * 1e9 / self.backend_ns.max(1) as f64
    }
    fn backend_switches_per_req(&self) -> f64 {
        self.backend_switches as f64 / self.requests.max(1) as f64
    }
    fn backend_load(&self) -> f64 {
        self.backend_ns as f64 / self.wall_ns.max(1) as f64
    }
}

/// One case against one back-end: a fresh child, warm-up with every echo
/// checked, then the timed window (and the strace window if asked).
fn run_case(
    cfg: &Config,
    kind: Kind,
    packed: bool,
    depth: usize,
) -> BoxResult<(Measure, Option<Counts>)> {
    let dir = SocketDir::new()?;
    let socket = dir.0.join("echo.sock");
    let mut backend = BackendProcess::spawn(kind, &socket, cfg.pin.map(|(_, b)| b))?;
    let pid = backend.pid().to_string();
    let mut d = driver::Driver::connect(&socket, packed, depth)?;

    d.set_verify(true);
    d.run(cfg.warmup)?;
    if d.verified() == 0 {
        return Err("no echo was verified during the warm-up".into());
    }
    d.set_verify(false);

    let (s0, b0, f0, t0) = (
        process_switches(&pid)?,
        process_cpu_ns(&pid)?,
        process_cpu_ns("self")?,
        Instant::now(),
    );
    let requests = d.run(cfg.window)?;
    let (t1, f1, b1, s1) = (
        Instant::now(),
        process_cpu_ns("self")?,
        process_cpu_ns(&pid)?,
        process_switches(&pid)?,
    );
    backend.check_alive()?;
    let m = Measure {
        requests,
        wall_ns: (t1 - t0).as_nanos() as u64,
        backend_ns: b1.saturating_sub(b0),
        frontend_ns: f1.saturating_sub(f0),
        backend_switches: s1.saturating_sub(s0),
    };

    let syscalls = if let Some(mode) = cfg.trace {
        d.drain()?;
        let trace = Tracer::attach(mode, backend.pid(), dir.0.join("trace.txt"))?;
        d.refill(depth)?;
        let n = d.run(Duration::from_secs(1))?;
        d.drain()?;
        let rows = trace.finish()?;
        Some(
            rows.into_iter()
                .map(|(name, calls)| (name, calls * 1000 / n.max(1)))
                .collect(),
        )
    } else {
        None
    };
    drop(d);
    drop(backend);
    Ok((m, syscalls))
}

fn median_by_cpu(mut ms: Vec<Measure>) -> Measure {
    ms.sort_by(|a, b| a.per_cpu_second().total_cmp(&b.per_cpu_second()));
    ms.get(ms.len() / 2).copied().unwrap_or_default()
}

fn thousands(x: f64) -> String {
    let n = x.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn bench() -> BoxResult<()> {
    let cfg = Config::from_env()?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    if let Some((front, _)) = cfg.pin {
        pin_to(front)?;
    }
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    eprintln!(
        "runtime bench: {cores} CPUs ({cpu}); {:.1} s warm-up + {:.1} s timed per case, {} round(s){}{}",
        cfg.warmup.as_secs_f64(),
        cfg.window.as_secs_f64(),
        cfg.rounds,
        match cfg.pin {
            Some((f, b)) if f == b => format!(", front-end and back-end pinned to CPU {f}"),
            Some((f, b)) => format!(", front-end pinned to CPU {f}, back-end to CPU {b}"),
            None => ", not pinned".to_owned(),
        },
        match cfg.trace {
            Some(TraceMode::Perf) => ", syscall windows (perf stat) on",
            Some(TraceMode::Strace) => ", syscall windows (strace) on",
            None => "",
        },
    );

    struct Row {
        layout: &'static str,
        depth: usize,
        kind: Kind,
        m: Option<Measure>,
        syscalls: Option<Counts>,
    }
    let mut rows: Vec<Row> = Vec::new();
    for packed in [false, true] {
        let layout = if packed { "packed" } else { "split" };
        for &depth in &cfg.depths {
            let mut per_kind: Vec<(Kind, Vec<Measure>, Option<Counts>)> =
                cfg.kinds.iter().map(|&k| (k, Vec::new(), None)).collect();
            // Rounds interleave the back-ends, so that drift on a shared
            // machine hits them alike.
            for _ in 0..cfg.rounds {
                for (kind, ms, sys) in per_kind.iter_mut() {
                    if packed && *kind == Kind::RustVmm {
                        continue;
                    }
                    let (m, s) = run_case(&cfg, *kind, packed, depth)
                        .map_err(|e| format!("{layout} depth {depth} {}: {e}", kind.arg()))?;
                    eprintln!(
                        "  {layout:6} depth {depth:3} {:34} {:>10} req/s  back-end {:6.0} ns/req ({:3.0}% of a CPU, {:.2} context switches/req)  front-end {:6.0} ns/req",
                        kind.label(),
                        thousands(m.rps()),
                        m.backend_ns_per_req(),
                        m.backend_load() * 100.0,
                        m.backend_switches_per_req(),
                        m.frontend_ns_per_req(),
                    );
                    ms.push(m);
                    if s.is_some() {
                        *sys = s;
                    }
                }
            }
            for (kind, ms, syscalls) in per_kind {
                rows.push(Row {
                    layout,
                    depth,
                    kind,
                    m: (!ms.is_empty()).then(|| median_by_cpu(ms)),
                    syscalls,
                });
            }
        }
    }

    let peer = |layout: &str, depth: usize| {
        rows.iter()
            .find(|r| r.layout == layout && r.depth == depth && r.kind == Kind::RustVmm)
            .and_then(|r| r.m)
    };
    println!();
    println!(
        "Echo device, 64-byte request + 64-byte response, queue size 256, EVENT_IDX, REPLY_ACK; \
         {:.0} s per case{}",
        cfg.window.as_secs_f64(),
        if cfg.rounds > 1 {
            format!(", median of {} rounds", cfg.rounds)
        } else {
            String::new()
        }
    );
    println!();
    println!(
        "| ring | depth | back-end | requests/s | back-end CPU | back-end context switches/request | back-end CPU ns/request | requests per back-end CPU-second | vs rust-vmm (per CPU-second) |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|---:|");
    let mut goals = Vec::new();
    for r in &rows {
        let Some(m) = r.m else {
            println!(
                "| {} | {} | {} | not supported (virtio-queue has no packed ring) | | | | | |",
                r.layout,
                r.depth,
                r.kind.label()
            );
            continue;
        };
        let ratio = match (r.kind, peer(r.layout, r.depth)) {
            (Kind::RustVmm, Some(_)) => "1.00×".to_owned(),
            (_, Some(p)) => {
                let x = m.per_cpu_second() / p.per_cpu_second();
                goals.push((r.layout, r.depth, r.kind, x));
                format!("{x:.2}×")
            }
            (_, None) => "—".to_owned(),
        };
        println!(
            "| {} | {} | {} | {} | {:.0} % | {:.2} | {:.0} | {} | {} |",
            r.layout,
            r.depth,
            r.kind.label(),
            thousands(m.rps()),
            m.backend_load() * 100.0,
            m.backend_switches_per_req(),
            m.backend_ns_per_req(),
            thousands(m.per_cpu_second()),
            ratio
        );
    }
    if cfg.kinds.contains(&Kind::RustVmm) {
        println!();
        println!(
            "packed ring: rust-vmm vhost-user-backend not supported (virtio-queue 0.18 has no \
             packed ring), ours only."
        );
    }
    if !goals.is_empty() {
        println!();
        println!("Goal: ours / rust-vmm >= 2x requests per back-end CPU-second at every depth:");
        for (layout, depth, kind, x) in &goals {
            println!(
                "  {layout} depth {depth:3} {:28} {x:5.2}x  {}",
                kind.label(),
                if *x >= 2.0 { "met" } else { "NOT met" }
            );
        }
    }
    if let Some(mode) = cfg.trace {
        println!();
        println!(
            "Back-end syscalls per 1000 requests ({}, a separate 1 s window after the timed one):",
            match mode {
                TraceMode::Perf => "perf stat -e syscalls:sys_enter_* -p <back-end>",
                TraceMode::Strace =>
                    "strace -c -f -p <back-end>; ptrace slows the back-end, so it sleeps less often than untraced",
            }
        );
        for r in &rows {
            let Some(sys) = &r.syscalls else { continue };
            let list: Vec<String> = sys
                .iter()
                .filter(|(_, c)| *c > 0)
                .map(|(n, c)| format!("{n} {c}"))
                .collect();
            println!(
                "  {:6} depth {:3} {:34} {}",
                r.layout,
                r.depth,
                r.kind.label(),
                list.join(", ")
            );
        }
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--serve") {
        child_main(&args);
    }
    if let Err(e) = bench() {
        eprintln!("runtime bench: {e}");
        std::process::exit(1);
    }
}
