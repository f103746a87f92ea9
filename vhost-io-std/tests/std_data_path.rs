//! Our front-end and our back-end in separate threads over a socketpair:
//! handshake, data through split and packed rings (EVENT_IDX on and off,
//! several queues), memory changes while running, stop/resume positions.
//! The scenarios are shared with the mio binding (`common/scenarios.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/scenarios.rs"]
mod scenarios;

use common::*;
use scenarios::EchoBackend;
use vhost_io_std::backend::ServerHandle;
use vhost_io_std::frontend::{DriverRing, Frontend, GuestRam};
use vhost_proto::wire::VringBase;

fn echo_pair(queues: u16) -> (Frontend, ServerHandle) {
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let server =
        vhost_io_std::backend::Server::from_stream(b, vhost_backend::echo::Echo::new(queues))
            .unwrap()
            .spawn()
            .unwrap();
    (Frontend::from_stream(a).unwrap(), server)
}

impl EchoBackend for ServerHandle {
    fn start(queues: u16) -> (Frontend, Self) {
        echo_pair(queues)
    }

    fn finish(self) {
        self.join().unwrap();
    }
}

scenarios::echo_scenarios!(ServerHandle);

fn stop_and_resume(packed: bool) {
    scenarios::stop_and_resume::<ServerHandle>(packed, |front, ring, ram, base| {
        // While stopped the back-end does not touch the ring: a buffer added now
        // is served only after the restart.
        echo_through_after_restart(front, ring, ram, base);
        let base2 = front.get_vring_base(0).unwrap();
        if packed {
            assert_eq!(
                (base2.packed_avail_idx(), base2.packed_avail_wrap()),
                (15, true)
            );
        } else {
            assert_eq!(base2.split_next_avail(), 65535u16.wrapping_add(4));
        }
    });
}

fn echo_through_after_restart(
    front: &mut Frontend,
    ring: &mut DriverRing,
    ram: &GuestRam,
    base: VringBase,
) {
    use vring::memory::GuestSlice;
    let mem = ram.memory();
    GuestSlice::new(mem, BUFS, 4)
        .unwrap()
        .write_at(0, b"late")
        .unwrap();
    let (id, used) = scenarios::add_while_stopped_then_restart(front, ring, base);
    assert_eq!(used, vec![(id, 4)]);
    let mut back = [0u8; 4];
    GuestSlice::new(mem, BUFS + 64, 4)
        .unwrap()
        .read_at(0, &mut back)
        .unwrap();
    assert_eq!(&back, b"late");
    echo_through(ring, ram, 3, 16, 9);
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
    scenarios::memory_regions_added_and_removed_while_running::<ServerHandle>(|r0, ram, extra| {
        // Buffers in the added region work.
        use vring::memory::GuestSlice;
        let out = 0x1000_0000u64;
        GuestSlice::new(extra.memory(), out, 5)
            .unwrap()
            .write_at(0, b"extra")
            .unwrap();
        let id = r0.add(&[(out, 5)], &[(BUFS, 5)]).unwrap();
        r0.kick().unwrap();
        assert_eq!(r0.collect(1, TIMEOUT).unwrap(), vec![(id, 5)]);
        let mut back = [0u8; 5];
        GuestSlice::new(ram.memory(), BUFS, 5)
            .unwrap()
            .read_at(0, &mut back)
            .unwrap();
        assert_eq!(&back, b"extra");
    });
}

#[test]
fn a_frontend_that_disconnects_mid_io_is_followed_by_a_new_session() {
    use vhost_backend::echo::Echo;
    use vhost_io_std::backend::Server;
    let dir = TestDir::new(&format!("vhost-std-reconnect-{}", std::process::id()));
    let path = dir.join("echo.sock");
    let server = Server::bind(&path, Echo::new(2)).unwrap().spawn().unwrap();
    for round in 0..3u8 {
        scenarios::session_that_vanishes_mid_io(&path, round);
    }
    server.stop().unwrap();
    std::fs::remove_dir(dir.path()).unwrap();
}
