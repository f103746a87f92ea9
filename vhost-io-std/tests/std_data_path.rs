//! Our front-end and our back-end in separate threads over a socketpair:
//! handshake, data through split and packed rings (EVENT_IDX on and off,
//! several queues), memory changes while running, stop/resume positions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use vhost_io_std::frontend::{DriverRing, GuestRam};
use vhost_proto::wire::{DeviceStatus, VringBase};

fn data_path(packed: bool, event_idx: bool) {
    let ram = GuestRam::new(0, RAM).unwrap();
    let (mut front, server) = echo_pair(4);
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
    // Stop all rings: positions cover every request.
    for ring in &rings {
        let base = front.get_vring_base(ring.index().into()).unwrap();
        if packed {
            // 300 single-descriptor... two-descriptor buffers: 600 slots in a 128 ring.
            let (slots, size) = (600u32, u32::from(ring.size()));
            assert_eq!(u32::from(base.packed_avail_idx()), slots % size);
            assert_eq!(base.packed_avail_wrap(), (slots / size).is_multiple_of(2));
        } else {
            assert_eq!(base.split_next_avail(), 300);
        }
    }
    drop(front);
    server.join().unwrap();
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
    let (mut front, server) = echo_pair(1);
    handshake(&mut front, &ram, false, true);
    let magic = front.get_config(0, 8).unwrap();
    assert_eq!(
        u64::from_le_bytes(magic.try_into().unwrap()),
        vhost_io_std::echo::CONFIG_MAGIC
    );
    // Beyond the config space: the session refuses, the connection goes on.
    assert!(front.get_config(4, 8).is_err());
    // The echo device's config is read-only (the trait's default refuses).
    assert!(front.set_config(0, &[1]).is_err());
    front
        .set_status(DeviceStatus::from_bits_retain(0xf))
        .unwrap();
    assert_eq!(front.get_status().unwrap().bits(), 0xf);
    // Bad ring index and queue size: NACKed.
    assert!(front.set_vring_num(7, 64).is_err());
    assert!(front.set_vring_num(0, 100).is_err());
    let mut ring = start_ring(&mut front, &ram, 0, 0, 64, false, true);
    echo_through(&mut ring, &ram, 10, 64, 1);
    front.reset_device().unwrap();
    drop(front);
    server.join().unwrap();
}

fn stop_and_resume(packed: bool) {
    let ram = GuestRam::new(0, RAM).unwrap();
    let (mut front, server) = echo_pair(1);
    handshake(&mut front, &ram, packed, true);
    // Start near the end of the index space / ring so that both wrap.
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
        // 5 buffers × 2 slots from slot 13 (wrap 0) in a ring of 16.
        assert_eq!(
            (base.packed_avail_idx(), base.packed_avail_wrap()),
            (7, true)
        );
        assert_eq!((base.packed_used_idx(), base.packed_used_wrap()), (7, true));
    } else {
        assert_eq!(base.split_next_avail(), 65535);
    }
    // While stopped the back-end does not touch the ring: a buffer added now
    // is served only after the restart.
    echo_through_after_restart(&mut front, &mut ring, &ram, base);
    let base2 = front.get_vring_base(0).unwrap();
    if packed {
        assert_eq!(
            (base2.packed_avail_idx(), base2.packed_avail_wrap()),
            (15, true)
        );
    } else {
        assert_eq!(base2.split_next_avail(), 65535u16.wrapping_add(4));
    }
    drop(front);
    server.join().unwrap();
}

fn echo_through_after_restart(
    front: &mut vhost_io_std::frontend::Frontend,
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
    let id = ring.add(&[(BUFS, 4)], &[(BUFS + 64, 4)]).unwrap();
    ring.kick().unwrap();
    // Nothing comes back while the ring is stopped.
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(ring.pop_used().unwrap(), None);
    ring.restart(front, base).unwrap();
    let used = ring.collect(1, TIMEOUT).unwrap();
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
    let ram = GuestRam::new(0, RAM).unwrap();
    let (mut front, server) = echo_pair(2);
    handshake(&mut front, &ram, false, true);
    let mut r0 = start_ring(&mut front, &ram, 0, 0, 64, false, true);
    echo_through(&mut r0, &ram, 50, 128, 0);
    // A second region, added while ring 0 runs; buffers in it work.
    let extra = GuestRam::new(0x1000_0000, 1 << 20).unwrap();
    front.add_mem_reg(extra.region(), extra.fd()).unwrap();
    {
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
    }
    echo_through(&mut r0, &ram, 50, 128, 1);
    // Removing it: the ring (in the first region) keeps running.
    front.rem_mem_reg(extra.region()).unwrap();
    echo_through(&mut r0, &ram, 50, 128, 2);
    // Removing an unknown region is refused.
    assert!(front.rem_mem_reg(extra.region()).is_err());
    // A whole new table (same memory) while running.
    front.set_mem_table(&[(ram.region(), ram.fd())]).unwrap();
    echo_through(&mut r0, &ram, 50, 128, 3);
    drop(front);
    server.join().unwrap();
}

#[test]
fn a_frontend_that_disconnects_mid_io_is_followed_by_a_new_session() {
    use vhost_io_std::backend::Server;
    use vhost_io_std::echo::Echo;
    use vhost_io_std::frontend::Frontend;
    let dir = std::env::temp_dir().join(format!("vhost-std-reconnect-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("echo.sock");
    let server = Server::bind(&path, Echo::new(2)).unwrap().spawn().unwrap();
    for round in 0..3u8 {
        let ram = GuestRam::new(0, RAM).unwrap();
        let mut front = Frontend::connect(&path).unwrap();
        handshake(&mut front, &ram, round % 2 == 1, true);
        let mut ring = start_ring(&mut front, &ram, 0, 0, 64, round % 2 == 1, true);
        echo_through(&mut ring, &ram, 20, 64, round);
        // Requests in flight, then the front-end vanishes without stopping
        // the ring.
        for k in 0..16u64 {
            ring.add(&[(BUFS + k * 128, 64)], &[(BUFS + k * 128 + 64, 64)])
                .unwrap();
        }
        ring.kick().unwrap();
        drop(front);
    }
    server.stop().unwrap();
    std::fs::remove_dir(&dir).unwrap();
}
