//! Many sessions in one thread: heap held per idle session, and handshake throughput with
//! 1,000 concurrent sessions served by one thread (the mio binding), next to the std
//! binding serving the same 1,000 sessions (a thread per connection plus one per started
//! queue), measured in the same run with the same front-ends.
//!
//! Run: `cargo bench -p vhost-io-mio --bench sessions`
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../vhost-io-std/tests/common/mod.rs"]
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{TIMEOUT, handshake, ring_features};
use vhost_backend::echo::Echo;
use vhost_io_mio::Server;
use vhost_io_std::frontend::{DriverRing, Frontend, GuestRam};
use vring::memory::GuestSlice;

const SESSIONS: usize = 1000;
const THREADS: usize = 4;
/// Runs of each binding (medians reported).
const ROUNDS: usize = 5;
const RAM: u64 = 64 << 10;
const BUF: u64 = 32 << 10;

/// Counts the heap bytes held by the threads that opt in (the server thread).
struct Counting;

static COUNTED: AtomicIsize = AtomicIsize::new(0);

thread_local! {
    static COUNT_ME: Cell<bool> = const { Cell::new(false) };
}

fn counted(delta: isize) {
    if COUNT_ME.try_with(Cell::get).unwrap_or(false) {
        COUNTED.fetch_add(delta, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counter is a
// side effect that allocates nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        counted(layout.size() as isize);
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        counted(-(layout.size() as isize));
        // SAFETY: `ptr` came from `System` with this layout (every allocation goes there).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        counted(new_size as isize - layout.size() as isize);
        // SAFETY: as for `dealloc`; `new_size` is the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

struct Front {
    _front: Frontend,
    ram: GuestRam,
    ring: DriverRing,
}

/// A front-end's whole start-up on `stream`: features, protocol features, owner, memory
/// table, one ring configured and enabled.
fn open(stream: UnixStream, packed: bool) -> Front {
    let mut front = Frontend::from_stream(stream).unwrap();
    let ram = GuestRam::new(0, RAM).unwrap();
    handshake(&mut front, &ram, packed, true);
    let (ring, _) = if packed {
        DriverRing::packed(&ram, 0, 0, 16, ring_features(true)).unwrap()
    } else {
        DriverRing::split(&ram, 0, 0, 16, ring_features(true)).unwrap()
    };
    front.start_ring(&ring, &ram).unwrap();
    Front {
        _front: front,
        ram,
        ring,
    }
}

fn round_trip(f: &mut Front) {
    GuestSlice::new(f.ram.memory(), BUF, 64)
        .unwrap()
        .write_at(0, &[7; 64])
        .unwrap();
    f.ring.add(&[(BUF, 64)], &[(BUF + 64, 64)]).unwrap();
    f.ring.kick().unwrap();
    assert_eq!(f.ring.collect(1, TIMEOUT).unwrap().len(), 1);
}

struct Figures {
    handshakes: Duration,
    round_trips: Duration,
}

/// Front-end threads: open SESSIONS sessions (all kept open), report, wait, echo once
/// through each. `connect` hands the back-end its end of each socketpair.
fn drive(connect: Arc<dyn Fn(UnixStream) + Send + Sync>, idle: impl FnOnce()) -> Figures {
    let ready = Arc::new(Barrier::new(THREADS + 1));
    let go = Arc::new(Barrier::new(THREADS + 1));
    let start = Instant::now();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (ready, go, connect) = (Arc::clone(&ready), Arc::clone(&go), Arc::clone(&connect));
            std::thread::spawn(move || {
                let mut fronts: Vec<Front> = (0..SESSIONS / THREADS)
                    .map(|k| {
                        let (a, b) = UnixStream::pair().unwrap();
                        connect(b);
                        open(a, (t + k) % 2 == 1)
                    })
                    .collect();
                ready.wait();
                go.wait();
                fronts.iter_mut().for_each(round_trip);
                ready.wait();
                drop(fronts);
            })
        })
        .collect();
    ready.wait();
    let handshakes = start.elapsed();
    idle();
    let t = Instant::now();
    go.wait();
    ready.wait();
    let round_trips = t.elapsed();
    for th in threads {
        th.join().unwrap();
    }
    Figures {
        handshakes,
        round_trips,
    }
}

fn raise_nofile() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    lim.current = lim.maximum;
    setrlimit(Resource::Nofile, lim).unwrap();
}

fn mio_binding() -> (Figures, isize) {
    let echo = Echo::new(1);
    let mut server = Server::new(echo).unwrap();
    let handle = server.handle();
    let stop = Arc::new(AtomicBool::new(false));
    let mut idle_bytes = 0;
    let measured = Arc::new(AtomicUsize::new(0));
    // The server runs in this thread, counted; the front-ends run in their own threads.
    COUNT_ME.with(|c| c.set(true));
    let base = COUNTED.load(Ordering::Relaxed);
    let h = handle.clone();
    let connect: Arc<dyn Fn(UnixStream) + Send + Sync> = Arc::new(move |s| h.add(s).unwrap());
    let (stop2, measured2) = (Arc::clone(&stop), Arc::clone(&measured));
    let driver = std::thread::spawn(move || {
        let figures = drive(connect, || {
            // Ask the server thread to record its heap now that every session is idle.
            measured2.store(1, Ordering::Release);
            while measured2.load(Ordering::Acquire) != 2 {
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        stop2.store(true, Ordering::Release);
        figures
    });
    while !stop.load(Ordering::Acquire) {
        server.run_once(Some(Duration::from_millis(5))).unwrap();
        if measured.load(Ordering::Acquire) == 1 {
            assert_eq!(server.sessions(), SESSIONS);
            idle_bytes = COUNTED.load(Ordering::Relaxed) - base;
            measured.store(2, Ordering::Release);
        }
    }
    let figures = driver.join().unwrap();
    drop(server);
    COUNT_ME.with(|c| c.set(false));
    (figures, idle_bytes / SESSIONS as isize)
}

fn std_binding() -> Figures {
    let servers = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = Arc::clone(&servers);
    let echo = Arc::new(Echo::new(1));
    let connect: Arc<dyn Fn(UnixStream) + Send + Sync> = Arc::new(move |s| {
        let srv = vhost_io_std::backend::Server::from_stream(s, SharedEcho(Arc::clone(&echo)))
            .unwrap()
            .spawn()
            .unwrap();
        s2.lock().unwrap().push(srv);
    });
    let figures = drive(connect, || {});
    for s in servers.lock().unwrap().drain(..) {
        s.join().unwrap();
    }
    figures
}

/// One echo device shared by every std server (each takes its device by value).
struct SharedEcho(Arc<Echo>);

impl vhost_backend::Device for SharedEcho {
    fn description(&self) -> vhost_proto::backend::DeviceDescription {
        self.0.description()
    }
    fn start_queue(
        self: Arc<Self>,
        q: &vhost_backend::Queue,
    ) -> Result<Box<dyn vhost_backend::QueueHandler>, vhost_proto::backend::Refused> {
        Arc::clone(&self.0).start_queue(q)
    }
}

fn main() {
    // `cargo test --benches` runs this too: keep it short there.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    raise_nofile();
    // Alternate the two bindings and keep the medians: the machine is shared.
    let (mut mio_h, mut mio_r, mut std_h, mut std_r) = (vec![], vec![], vec![], vec![]);
    let mut per_session = 0;
    for _ in 0..ROUNDS {
        let (m, p) = mio_binding();
        per_session = p;
        mio_h.push(m.handshakes);
        mio_r.push(m.round_trips);
        let s = std_binding();
        std_h.push(s.handshakes);
        std_r.push(s.round_trips);
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let mio = Figures {
        handshakes: median(&mut mio_h),
        round_trips: median(&mut mio_r),
    };
    let std = Figures {
        handshakes: median(&mut std_h),
        round_trips: median(&mut std_r),
    };
    let rate = |d: Duration| SESSIONS as f64 / d.as_secs_f64();
    println!(
        "sessions: {SESSIONS}, front-end threads: {THREADS}, medians of {ROUNDS} runs, size_of Session<Echo>: {} B",
        std::mem::size_of::<vhost_io_mio::Session<Echo>>()
    );
    println!(
        "mio (1 thread):   handshakes {:>8.0}/s ({:?}), round trips {:>8.0}/s, heap per idle session {} B",
        rate(mio.handshakes),
        mio.handshakes,
        rate(mio.round_trips),
        per_session
    );
    println!(
        "std (threads):    handshakes {:>8.0}/s ({:?}), round trips {:>8.0}/s",
        rate(std.handshakes),
        std.handshakes,
        rate(std.round_trips)
    );
    println!(
        "ratio mio/std:    handshakes {:.2}, round trips {:.2}",
        rate(mio.handshakes) / rate(std.handshakes),
        rate(mio.round_trips) / rate(std.round_trips)
    );
}
