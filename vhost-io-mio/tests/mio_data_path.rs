//! The std binding's end-to-end data path against the mio back-end: the std front-end
//! (`Frontend` + `DriverRing`) in the test thread, a mio `Server` in its own thread;
//! split and packed rings, EVENT_IDX on and off, several queues, stop/resume across the
//! wrap, memory changes while running, config/status, disconnects mid-I/O.
#![allow(clippy::unwrap_used, clippy::expect_used)]

// The std binding's own test helpers (handshake, ring start, echo checks), reused.
#[path = "../../vhost-io-std/tests/common/mod.rs"]
mod common;

use std::os::unix::net::UnixStream;

use common::*;
use vhost_io_mio::{Server, ServerHandle};
use vhost_io_std::echo::Echo;
use vhost_io_std::frontend::{DriverRing, Frontend, GuestRam};
use vhost_proto::wire::DeviceStatus;

fn mio_pair(queues: u16) -> (Frontend, ServerHandle) {
    let server = Server::new(Echo::new(queues)).unwrap().spawn().unwrap();
    let (a, b) = UnixStream::pair().unwrap();
    server.handle().add(b).unwrap();
    (Frontend::from_stream(a).unwrap(), server)
}

fn data_path(packed: bool, event_idx: bool) {
    let ram = GuestRam::new(0, RAM).unwrap();
    let (mut front, server) = mio_pair(4);
    handshake(&mut front, &ram, packed, event_idx);
    assert_eq!(front.get_queue_num().unwrap(), 4);
    let mut rings: Vec<DriverRing> = (0..3u16)
        .map(|i| {
            start_ring(
                &mut front,
                &ram,
                i,
                u64::from(i) * 0x4_0000,
                128,
                packed,
                event_idx,
            )
        })
        .collect();
    for (k, ring) in rings.iter_mut().enumerate() {
        echo_through(ring, &ram, 300, 256, k as u8);
    }
    for ring in &rings {
        let base = front.get_vring_base(ring.index().into()).unwrap();
        if packed {
            let (slots, size) = (600u32, u32::from(ring.size()));
            assert_eq!(u32::from(base.packed_avail_idx()), slots % size);
            assert_eq!(base.packed_avail_wrap(), (slots / size).is_multiple_of(2));
        } else {
            assert_eq!(base.split_next_avail(), 300);
        }
    }
    drop(front);
    server.stop().unwrap();
}

#[test]
fn split_ring_event_idx_off() {
    data_path(false, false);
}

#[test]
fn split_ring_event_idx_on() {
    data_path(false, true);
}

#[test]
fn packed_ring_event_idx_off() {
    data_path(true, false);
}

#[test]
fn packed_ring_event_idx_on() {
    data_path(true, true);
}

#[test]
fn config_status_and_refusals() {
    let ram = GuestRam::new(0, RAM).unwrap();
    let (mut front, server) = mio_pair(1);
    handshake(&mut front, &ram, false, true);
    let magic = front.get_config(0, 8).unwrap();
    assert_eq!(
        u64::from_le_bytes(magic.try_into().unwrap()),
        vhost_io_std::echo::CONFIG_MAGIC
    );
    assert!(front.get_config(4, 8).is_err());
    assert!(front.set_config(0, &[1]).is_err());
    front
        .set_status(DeviceStatus::from_bits_retain(0xf))
        .unwrap();
    assert_eq!(front.get_status().unwrap().bits(), 0xf);
    assert!(front.set_vring_num(7, 64).is_err());
    assert!(front.set_vring_num(0, 100).is_err());
    let mut ring = start_ring(&mut front, &ram, 0, 0, 64, false, true);
    echo_through(&mut ring, &ram, 10, 64, 1);
    front.reset_device().unwrap();
    drop(front);
    server.stop().unwrap();
}

fn stop_and_resume(packed: bool) {
    let ram = GuestRam::new(0, RAM).unwrap();
    let (mut front, server) = mio_pair(1);
    handshake(&mut front, &ram, packed, true);
    let f = ring_features(true);
    let (mut ring, _) = if packed {
        DriverRing::packed_at(&ram, 0, 0, 16, f, 13, false).unwrap()
    } else {
        DriverRing::split_at(&ram, 0, 0, 16, f, 65530).unwrap()
    };
    ring.configure(&mut front, &ram).unwrap();
    front.set_vring_enable(0, true).unwrap();
    echo_through(&mut ring, &ram, 5, 32, 3);
    let base = front.get_vring_base(0).unwrap();
    if packed {
        assert_eq!(
            (base.packed_avail_idx(), base.packed_avail_wrap()),
            (7, true)
        );
        assert_eq!((base.packed_used_idx(), base.packed_used_wrap()), (7, true));
    } else {
        assert_eq!(base.split_next_avail(), 65535);
    }
    // Stopped: a buffer added now is served only after the restart.
    let id = ring.add(&[(BUFS, 4)], &[(BUFS + 64, 4)]).unwrap();
    ring.kick().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(ring.pop_used().unwrap(), None);
    ring.restart(&mut front, base).unwrap();
    assert_eq!(ring.collect(1, TIMEOUT).unwrap().len(), 1);
    let _ = id;
    echo_through(&mut ring, &ram, 3, 16, 9);
    drop(front);
    server.stop().unwrap();
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
    let ram = GuestRam::new(0, RAM).unwrap();
    let (mut front, server) = mio_pair(2);
    handshake(&mut front, &ram, false, true);
    let mut r0 = start_ring(&mut front, &ram, 0, 0, 64, false, true);
    echo_through(&mut r0, &ram, 50, 128, 0);
    let extra = GuestRam::new(0x1000_0000, 1 << 20).unwrap();
    front.add_mem_reg(extra.region(), extra.fd()).unwrap();
    echo_through(&mut r0, &ram, 50, 128, 1);
    front.rem_mem_reg(extra.region()).unwrap();
    echo_through(&mut r0, &ram, 50, 128, 2);
    assert!(front.rem_mem_reg(extra.region()).is_err());
    front.set_mem_table(&[(ram.region(), ram.fd())]).unwrap();
    echo_through(&mut r0, &ram, 50, 128, 3);
    drop(front);
    server.stop().unwrap();
}

#[test]
fn frontends_that_vanish_mid_io_leave_the_others_served() {
    let dir = std::env::temp_dir().join(format!("vhost-mio-reconnect-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
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
        let ram2 = GuestRam::new(0, RAM).unwrap();
        let mut front = Frontend::connect(&path).unwrap();
        handshake(&mut front, &ram2, round % 2 == 1, true);
        let mut ring = start_ring(&mut front, &ram2, 0, 0, 64, round % 2 == 1, true);
        echo_through(&mut ring, &ram2, 20, 64, round);
        for k in 0..16u64 {
            ring.add(&[(BUFS + k * 128, 64)], &[(BUFS + k * 128 + 64, 64)])
                .unwrap();
        }
        ring.kick().unwrap();
        drop(front);
        echo_through(&mut steady_ring, &ram, 20, 64, round);
    }
    drop(steady);
    server.stop().unwrap();
    assert!(!path.exists());
    std::fs::remove_dir(&dir).unwrap();
}

/// A receive-only device: packets come from elsewhere and wake the queue through its
/// `queue_wakeup` eventfd, not through a kick.
struct Rx {
    pending: std::sync::Mutex<std::collections::VecDeque<Vec<u8>>>,
    wake: vhost_io_std::os::eventfd::EventFd,
}

impl vhost_io_std::backend::Device for Rx {
    fn description(&self) -> vhost_proto::backend::DeviceDescription {
        vhost_proto::backend::DeviceDescription::new(
            vhost_proto::wire::VirtioFeatures::VERSION_1,
            vhost_proto::wire::ProtocolFeatures::REPLY_ACK,
            1,
        )
    }

    fn process_queue(&self, q: &mut vhost_io_std::backend::Queue) -> Result<(), vring::Error> {
        let mut pending = self.pending.lock().unwrap();
        while !pending.is_empty() {
            let Some(chain) = q.pop()? else { break };
            let pkt = pending.pop_front().unwrap();
            let mut w = q.writer(&chain)?;
            w.write_all(&pkt)?;
            let len = w.bytes_written();
            q.add_used(&chain, len)?;
        }
        Ok(())
    }

    fn queue_wakeup(&self, index: u16) -> Option<vhost_io_std::os::eventfd::EventFd> {
        (index == 0).then(|| self.wake.try_clone().ok()).flatten()
    }
}

#[test]
fn a_device_wakeup_fd_runs_its_queue_without_a_kick() {
    use std::sync::Arc;
    use vring::memory::GuestSlice;
    let rx = Arc::new(Rx {
        pending: Default::default(),
        wake: vhost_io_std::os::eventfd::EventFd::new(true).unwrap(),
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

impl vhost_io_std::backend::Device for Panicky {
    fn description(&self) -> vhost_proto::backend::DeviceDescription {
        Echo::new(1).description()
    }

    fn process_queue(&self, q: &mut vhost_io_std::backend::Queue) -> Result<(), vring::Error> {
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
    use vhost_io_std::backend::Device;
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
    let (mut front, server) = mio_pair(1);
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
