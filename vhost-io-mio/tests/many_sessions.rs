//! One thread serves 1,000 back-end sessions at once: front-ends driven from a few other
//! threads each negotiate, start a ring (split or packed) and complete one echo round trip,
//! while all 1,000 connections are open.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../vhost-io-std/tests/common/mod.rs"]
mod common;

use std::os::unix::net::UnixStream;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{TIMEOUT, handshake, open_fds, ring_features};
use vhost_backend::echo::Echo;
use vhost_frontend::{DriverRing, Frontend, GuestRam};
use vhost_io_mio::Server;
use vring::memory::GuestSlice;

const SESSIONS: usize = 1000;
const THREADS: usize = 4;
/// Small guest memory per session: ring at 0, buffers from BUF.
const RAM: u64 = 64 << 10;
const BUF: u64 = 32 << 10;

/// Each session costs about ten fds in this process (both ends): raise the soft limit.
fn raise_nofile() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    let want = 12 * SESSIONS as u64 + 256;
    if lim.current.is_some_and(|c| c < want) {
        lim.current = Some(lim.maximum.map_or(want, |m| m.min(want)));
        setrlimit(Resource::Nofile, lim).unwrap();
    }
}

struct Front {
    /// Kept open until the end of the test.
    _front: Frontend,
    ram: GuestRam,
    ring: DriverRing,
}

fn open(handle: &vhost_io_mio::Handle, packed: bool) -> Front {
    let (a, b) = UnixStream::pair().unwrap();
    handle.add(b).unwrap();
    let mut front = Frontend::from_stream(a).unwrap();
    let ram = GuestRam::new(0, RAM).unwrap();
    handshake(&mut front, &ram, packed, true);
    let f = ring_features(true);
    let (ring, _) = if packed {
        DriverRing::packed(&ram, 0, 0, 16, f).unwrap()
    } else {
        DriverRing::split(&ram, 0, 0, 16, f).unwrap()
    };
    front.start_ring(&ring, &ram).unwrap();
    Front {
        _front: front,
        ram,
        ring,
    }
}

fn round_trip(f: &mut Front, seed: u8) {
    let mem = f.ram.memory();
    let msg: Vec<u8> = (0..64u8).map(|i| i ^ seed).collect();
    GuestSlice::new(mem, BUF, 64)
        .unwrap()
        .write_at(0, &msg)
        .unwrap();
    let id = f.ring.add(&[(BUF, 64)], &[(BUF + 64, 64)]).unwrap();
    f.ring.kick().unwrap();
    assert_eq!(f.ring.collect(1, TIMEOUT).unwrap(), vec![(id, 64)]);
    let mut back = [0u8; 64];
    GuestSlice::new(mem, BUF + 64, 64)
        .unwrap()
        .read_at(0, &mut back)
        .unwrap();
    assert_eq!(&back[..], &msg[..]);
}

#[test]
fn a_thousand_sessions_served_by_one_thread() {
    raise_nofile();
    let fds_before = open_fds();
    let echo = Arc::new(Echo::new(1));
    let device = Arc::clone(&echo);
    let server = Server::with_factory(move || Arc::clone(&device))
        .unwrap()
        .spawn()
        .unwrap();
    let barrier = Arc::new(Barrier::new(THREADS + 1));
    let start = Instant::now();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let handle = server.handle().clone();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let mut fronts: Vec<Front> = (0..SESSIONS / THREADS)
                    .map(|k| open(&handle, (t + k) % 2 == 1))
                    .collect();
                barrier.wait(); // every session negotiated and open
                barrier.wait(); // counted by the main thread
                for (k, f) in fronts.iter_mut().enumerate() {
                    round_trip(f, k as u8);
                }
                drop(fronts);
            })
        })
        .collect();
    barrier.wait();
    let negotiated = start.elapsed();
    assert_eq!(server.handle().sessions(), SESSIONS);
    barrier.wait();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(echo.requests(), SESSIONS as u64);
    // The server notices every hang-up.
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.handle().sessions() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(server.handle().sessions(), 0);
    eprintln!(
        "{SESSIONS} sessions: negotiated in {negotiated:?}, all done in {:?}",
        start.elapsed()
    );
    server.stop().unwrap();
    // No fd of any session outlives it (this test is alone in its process).
    assert_eq!(open_fds(), fds_before);
}
