//! The std binding's end-to-end data path against the mio back-end: the std front-end
//! (`Frontend` + `DriverRing`) in the test thread, a mio `Server` in its own thread;
//! split and packed rings, EVENT_IDX on and off, several queues, stop/resume across the
//! wrap, memory changes while running, config/status, disconnects mid-I/O.
#![allow(clippy::unwrap_used, clippy::expect_used)]

// The std binding's own test helpers (handshake, ring start, echo checks) and the
// scenarios its data-path suite runs against the std back-end, run here against mio's.
#[path = "../../vhost-io-std/tests/common/mod.rs"]
mod common;
#[path = "../../vhost-io-std/tests/common/scenarios.rs"]
mod scenarios;

use std::os::unix::net::UnixStream;

use common::*;
use scenarios::EchoBackend;
use vhost_backend::QueueError;
use vhost_backend::echo::Echo;
use vhost_frontend::{Frontend, GuestRam};
use vhost_io_mio::{Server, ServerHandle};

impl EchoBackend for ServerHandle {
    fn start(queues: u16) -> (Frontend, Self) {
        let server = Server::new(Echo::new(queues)).unwrap().spawn().unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        server.handle().add(b).unwrap();
        (Frontend::from_stream(a).unwrap(), server)
    }

    fn finish(self) {
        self.stop().unwrap();
    }
}

scenarios::echo_scenarios!(ServerHandle);

fn stop_and_resume(packed: bool) {
    scenarios::stop_and_resume::<ServerHandle>(packed, |front, ring, ram, base| {
        // Stopped: a buffer added now is served only after the restart.
        let (_, used) = scenarios::add_while_stopped_then_restart(front, ring, base);
        assert_eq!(used.len(), 1);
        echo_through(ring, ram, 3, 16, 9);
    });
}

#[test]
fn split_ring_stops_and_resumes_in_position_across_the_wrap() {
    stop_and_resume(false);
}

#[test]
fn packed_ring_stops_and_resumes_in_position_across_the_wrap() {
    stop_and_resume(true);
}

#[test]
fn memory_regions_added_and_removed_while_running() {
    scenarios::memory_regions_added_and_removed_while_running::<ServerHandle>(|_, _, _| {});
}

#[test]
fn frontends_that_vanish_mid_io_leave_the_others_served() {
    let dir = TestDir::new(&format!("vhost-mio-reconnect-{}", std::process::id()));
    let path = dir.join("echo.sock");
    let server = Server::new(Echo::new(2))
        .unwrap()
        .bind(&path)
        .unwrap()
        .spawn()
        .unwrap();
    // One long-lived front-end next to ones that come and go.
    let ram = GuestRam::new(0, RAM).unwrap();
    let mut steady = Frontend::connect(&path).unwrap();
    handshake(&mut steady, &ram, false, true);
    let mut steady_ring = start_ring(&mut steady, &ram, 0, 0, 64, false, true);
    for round in 0..3u8 {
        scenarios::session_that_vanishes_mid_io(&path, round);
        echo_through(&mut steady_ring, &ram, 20, 64, round);
    }
    drop(steady);
    server.stop().unwrap();
    assert!(!path.exists());
    std::fs::remove_dir(dir.path()).unwrap();
}

/// A receive-only device: packets come from elsewhere and wake the queue through its
/// `queue_wakeup` eventfd, not through a kick.
struct Rx {
    pending: std::sync::Mutex<std::collections::VecDeque<Vec<u8>>>,
    wake: vhost_backend::os::eventfd::EventFd,
}

impl vhost_backend::Device for Rx {
    fn description(&self) -> vhost_proto::backend::DeviceDescription {
        vhost_proto::backend::DeviceDescription::new(
            vhost_proto::wire::VirtioFeatures::VERSION_1,
            vhost_proto::wire::ProtocolFeatures::REPLY_ACK,
            1,
        )
    }

    fn start_queue(
        self: std::sync::Arc<Self>,
        queue: &vhost_backend::Queue,
    ) -> Result<Box<dyn vhost_backend::QueueHandler>, vhost_proto::backend::Refused> {
        let wake = self.wakeup(queue.index());
        let h =
            vhost_backend::handler_fn(move |q: &mut vhost_backend::Queue| self.process_queue(q));
        Ok(match wake {
            Some(w) => Box::new(h.with_wakeup(w)),
            None => Box::new(h),
        })
    }
}

impl Rx {
    fn wakeup(&self, index: u16) -> Option<vhost_backend::os::eventfd::EventFd> {
        (index == 0).then(|| self.wake.try_clone().ok()).flatten()
    }

    fn process_queue(&self, q: &mut vhost_backend::Queue) -> Result<(), QueueError> {
        let mut pending = self.pending.lock().unwrap();
        while !pending.is_empty() {
            let Some(chain) = q.pop()? else { break };
            let pkt = pending.pop_front().unwrap();
            let mut w = q.writer(&chain);
            w.write_all(&pkt)?;
            let len = w.bytes_written();
            q.complete(chain, len)?;
        }
        Ok(())
    }
}

#[test]
fn a_device_wakeup_fd_runs_its_queue_without_a_kick() {
    use std::sync::Arc;
    use vring::memory::GuestSlice;
    let rx = Arc::new(Rx {
        pending: Default::default(),
        wake: vhost_backend::os::eventfd::EventFd::new(true).unwrap(),
    });
    let device = Arc::clone(&rx);
    let server = Server::with_factory(move || Arc::clone(&device))
        .unwrap()
        .spawn()
        .unwrap();
    let (a, b) = UnixStream::pair().unwrap();
    server.handle().add(b).unwrap();
    let mut front = Frontend::from_stream(a).unwrap();
    let ram = GuestRam::new(0, RAM).unwrap();
    handshake(&mut front, &ram, false, false);
    let mut ring = start_ring(&mut front, &ram, 0, 0, 64, false, false);
    let ids: Vec<u16> = (0..4u64)
        .map(|k| ring.add(&[], &[(BUFS + k * 64, 64)]).unwrap())
        .collect();
    ring.kick().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(ring.pop_used().unwrap(), None, "nothing to receive yet");
    for (k, id) in ids.iter().enumerate() {
        let pkt = format!("packet {k}").into_bytes();
        rx.pending.lock().unwrap().push_back(pkt.clone());
        rx.wake.signal().unwrap();
        let used = ring.collect(1, TIMEOUT).unwrap();
        assert_eq!(used, vec![(*id, pkt.len() as u32)]);
        let mut back = vec![0u8; pkt.len()];
        GuestSlice::new(ram.memory(), BUFS + k as u64 * 64, pkt.len())
            .unwrap()
            .read_at(0, &mut back)
            .unwrap();
        assert_eq!(back, pkt);
    }
    drop(front);
    server.stop().unwrap();
}

/// A device that panics on the first chain it sees.
struct Panicky;

impl vhost_backend::Device for Panicky {
    fn description(&self) -> vhost_proto::backend::DeviceDescription {
        Echo::new(1).description()
    }

    fn start_queue(
        self: std::sync::Arc<Self>,
        _: &vhost_backend::Queue,
    ) -> Result<Box<dyn vhost_backend::QueueHandler>, vhost_proto::backend::Refused> {
        Ok(Box::new(vhost_backend::handler_fn(
            move |q: &mut vhost_backend::Queue| self.process_queue(q),
        )))
    }
}

impl Panicky {
    fn process_queue(&self, q: &mut vhost_backend::Queue) -> Result<(), QueueError> {
        if q.pop()?.is_some() {
            panic!("device bug");
        }
        Ok(())
    }
}

#[test]
fn different_devices_in_one_loop_and_a_panicking_one_breaks_only_its_ring() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use vhost_backend::Device;
    let n = AtomicUsize::new(0);
    let server = Server::<dyn Device>::with_factory(move || {
        if n.fetch_add(1, Ordering::Relaxed) == 0 {
            Arc::new(Panicky)
        } else {
            Arc::new(Echo::new(1))
        }
    })
    .unwrap()
    .spawn()
    .unwrap();
    let connect = || {
        let (a, b) = UnixStream::pair().unwrap();
        server.handle().add(b).unwrap();
        Frontend::from_stream(a).unwrap()
    };
    let ram1 = GuestRam::new(0, RAM).unwrap();
    let mut bad = connect();
    handshake(&mut bad, &ram1, false, true);
    let mut bad_ring = start_ring(&mut bad, &ram1, 0, 0, 64, false, true);
    let ram2 = GuestRam::new(0, RAM).unwrap();
    let mut good = connect();
    handshake(&mut good, &ram2, true, true);
    let mut good_ring = start_ring(&mut good, &ram2, 0, 0, 64, true, true);

    bad_ring.add(&[(BUFS, 8)], &[(BUFS + 64, 8)]).unwrap();
    bad_ring.kick().unwrap();
    echo_through(&mut good_ring, &ram2, 50, 64, 0);
    // The panicking device's session still answers; its ring is stopped.
    assert!(bad.get_features().is_ok());
    assert_eq!(bad_ring.pop_used().unwrap(), None);
    echo_through(&mut good_ring, &ram2, 50, 64, 1);
    drop((bad, good));
    server.stop().unwrap();
}

#[test]
fn inflight_buffer_handed_out_and_attached() {
    use vhost_proto::wire::{ProtocolFeatures, VirtioFeatures};
    let ram = GuestRam::new(0, RAM).unwrap();
    let (mut front, server) = ServerHandle::start(1);
    let offered = front.get_features().unwrap();
    let protocol = front.get_protocol_features().unwrap();
    assert!(protocol.contains(ProtocolFeatures::INFLIGHT_SHMFD));
    front
        .set_protocol_features(
            ProtocolFeatures::INFLIGHT_SHMFD | ProtocolFeatures::REPLY_ACK | ProtocolFeatures::MQ,
        )
        .unwrap();
    front.set_owner().unwrap();
    front
        .set_features(
            offered
                & (VirtioFeatures::VERSION_1
                    | VirtioFeatures::PROTOCOL_FEATURES
                    | VirtioFeatures::EVENT_IDX),
        )
        .unwrap();
    front.set_mem_table(&[(ram.region(), ram.fd())]).unwrap();
    let (desc, fd) = front.get_inflight_fd(1, 64).unwrap().unwrap();
    assert!(desc.mmap_size > 0);
    front
        .set_inflight_fd(desc, std::os::fd::AsFd::as_fd(&fd))
        .unwrap();
    let mut ring = start_ring(&mut front, &ram, 0, 0, 64, false, true);
    echo_through(&mut ring, &ram, 100, 64, 5);
    drop(front);
    server.stop().unwrap();
}
