//! Reconnecting to a restarted back-end from the inflight buffer (spec §7.12), with the
//! front-end toolkit's `Frontend::reconnect`: a back-end with INFLIGHT_SHMFD runs in a
//! child process and holds some requests; it is SIGKILLed mid-I/O; the front-end
//! reconnects to a new server, hands it the same buffer and the ring resumes, and the new
//! back-end completes exactly the unfinished requests. (The recovery itself, against both
//! runners, is `tests::conformance::inflight_recovery`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use vhost_backend::QueueError;
use vhost_backend::{Device, Queue};
use vhost_io_std::backend::Server;
use vhost_io_std::frontend::{DriverRing, Frontend, GuestRam};
use vhost_proto::backend::DeviceDescription;
use vhost_proto::wire::{ProtocolFeatures, VirtioFeatures};

/// Set in the child: the socket path the back-end listens on.
const CHILD_ENV: &str = "VHOST_STD_INFLIGHT_CHILD";
const QUEUE_SIZE: u16 = 64;
const REQUESTS: u8 = 8;

fn description() -> DeviceDescription {
    DeviceDescription::new(
        VirtioFeatures::VERSION_1 | VirtioFeatures::RING_PACKED,
        ProtocolFeatures::MQ | ProtocolFeatures::REPLY_ACK | ProtocolFeatures::INFLIGHT_SHMFD,
        1,
    )
}

/// Reads a request's one-byte tag.
fn tag(q: &Queue, c: &vhost_backend::Chain) -> Result<u8, QueueError> {
    let mut t = [0u8];
    q.reader(c).read_exact(&mut t)?;
    Ok(t[0])
}

/// The first back-end: completes even tags, holds odd ones in flight
/// (never completes them).
#[derive(Default)]
struct Holder {
    held: Mutex<Vec<vhost_backend::Chain>>,
}

impl Device for Holder {
    fn description(&self) -> DeviceDescription {
        description()
    }

    fn start_queue(
        self: Arc<Self>,
        _: &vhost_backend::Queue,
    ) -> Result<Box<dyn vhost_backend::QueueHandler>, vhost_proto::backend::Refused> {
        Ok(Box::new(vhost_backend::handler_fn(
            move |q: &mut vhost_backend::Queue| self.process_queue(q),
        )))
    }
}

impl Holder {
    fn process_queue(&self, q: &mut Queue) -> Result<(), QueueError> {
        while let Some(c) = q.pop()? {
            let t = tag(q, &c)?;
            if t % 2 == 0 {
                q.writer(&c).write_all(&[t])?;
                q.complete(c, 1)?;
            } else {
                self.held.lock().unwrap().push(c);
            }
        }
        Ok(())
    }
}

/// The child side: when started by `recover` with the socket path in the
/// environment, serve a `Holder` there until killed. Without it: nothing.
#[test]
fn child_backend() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    Server::bind(PathBuf::from(path), Holder::default())
        .unwrap()
        .serve()
        .unwrap();
}

/// Kills the child if the test fails half-way.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_child(path: &Path) -> Killed {
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "child_backend",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, path)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    Killed(child)
}

fn connect(path: &Path) -> Frontend {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match Frontend::connect(path) {
            Ok(f) => return f,
            Err(e) => {
                assert!(Instant::now() < deadline, "the child never listened: {e}");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// Request `k`'s buffers: a readable tag byte and a writable answer byte.
fn bufs(k: u8) -> (u64, u64) {
    let out = BUFS + u64::from(k) * 0x100;
    (out, out + 0x80)
}

fn negotiate_with(front: &mut Frontend, packed: bool, reply_ack: bool) -> VirtioFeatures {
    front.get_features().unwrap();
    front.get_protocol_features().unwrap();
    let mut p = ProtocolFeatures::MQ | ProtocolFeatures::INFLIGHT_SHMFD;
    if reply_ack {
        p |= ProtocolFeatures::REPLY_ACK;
    }
    front.set_protocol_features(p).unwrap();
    front.set_owner().unwrap();
    let mut f = VirtioFeatures::VERSION_1 | VirtioFeatures::PROTOCOL_FEATURES;
    if packed {
        f |= VirtioFeatures::RING_PACKED;
    }
    front.set_features(f).unwrap();
    f
}

/// The toolkit's reconnect: the `Holder` child dies with the odd requests
/// in flight; `Frontend::reconnect` connects to an `Echo` server started on
/// the same path, hands it the kept inflight buffer and restarts the ring at
/// its last position; Echo resubmits and answers exactly the odd requests.
/// With and without REPLY_ACK (`start_ring` then synchronises with a
/// GET_FEATURES round trip).
fn resume_on_echo(packed: bool, reply_ack: bool) {
    use vhost_backend::echo::Echo;

    let dir = TestDir::new(&format!(
        "vhost-std-resume-{}-{packed}-{reply_ack}",
        std::process::id()
    ));
    let path = dir.join("backend.sock");
    let mut child = spawn_child(&path);
    let ram = GuestRam::new(0, RAM).unwrap();
    let mut front = connect(&path);
    let features = negotiate_with(&mut front, packed, reply_ack);
    let inflight = front
        .setup_inflight(1, QUEUE_SIZE)
        .unwrap()
        .expect("an inflight buffer");
    front.set_mem_table(&ram.mem_table()).unwrap();
    let (mut ring, _) = DriverRing::at(&ram, 0, 0, QUEUE_SIZE, features).unwrap();
    assert_eq!(ring.is_packed(), packed);
    front.start_ring(&ring, &ram).unwrap();

    let mut ids = Vec::new();
    for k in 0..REQUESTS {
        let (out, inn) = bufs(k);
        ram.write(out, &[k]).unwrap();
        ram.write(inn, &[0xff]).unwrap();
        ids.push(ring.add(&[(out, 1)], &[(inn, 1)]).unwrap());
    }
    ring.kick().unwrap();
    let even: Vec<u16> = ids.iter().copied().step_by(2).collect();
    let odd: Vec<u16> = ids.iter().copied().skip(1).step_by(2).collect();
    let mut got: Vec<u16> = ring
        .collect(even.len(), TIMEOUT)
        .unwrap()
        .iter()
        .map(|d| d.0)
        .collect();
    got.sort_unstable();
    assert_eq!(got, even);
    std::thread::sleep(Duration::from_millis(20));
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    drop(front);

    let server = Server::bind(&path, Echo::new(1)).unwrap();
    let echo = Arc::clone(server.device());
    let server = server.spawn().unwrap();
    let mut rings = [ring];
    let front = Frontend::reconnect(
        &path,
        TIMEOUT,
        |f| {
            negotiate_with(f, packed, reply_ack);
            Ok(())
        },
        &inflight,
        &ram,
        &mut rings,
    )
    .unwrap();
    let [mut ring] = rings;
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
    assert_eq!(echo.requests(), odd.len() as u64, "nothing else was served");
    for k in 0..REQUESTS {
        let mut b = [0u8];
        ram.read(bufs(k).1, &mut b).unwrap();
        assert_eq!(b[0], k, "request {k} answered");
    }
    drop(front);
    server.stop().unwrap();
}

#[test]
fn reconnect_resumes_a_split_ring_from_the_inflight_region() {
    resume_on_echo(false, true);
}

#[test]
fn reconnect_resumes_a_packed_ring_without_reply_ack() {
    resume_on_echo(true, false);
}

#[test]
fn reconnect_resumes_a_split_ring_without_reply_ack() {
    resume_on_echo(false, false);
}
