//! End-to-end scenarios of the echo device that both bindings' back-ends run: the std
//! `Server` (`vhost-io-std/tests/std_data_path.rs`) and the mio `Server`
//! (`vhost-io-mio/tests/mio_data_path.rs`), each through its own [`EchoBackend`]. Our
//! std front-end (`Frontend` + `DriverRing`) drives them from the test thread.
//!
//! Included next to `common` with
//! `#[path = ".../vhost-io-std/tests/common/scenarios.rs"] mod scenarios;`.

use std::path::Path;

use crate::common::*;
use vhost_frontend::{DriverRing, Frontend, GuestRam};
use vhost_proto::wire::{DeviceStatus, VringBase};

/// How a binding serves the echo device to one front-end.
pub trait EchoBackend: Sized {
    /// A back-end serving `Echo::new(queues)`, and our front-end connected to it.
    fn start(queues: u16) -> (Frontend, Self);
    /// Once the front-end is gone: ends the back-end, which must end without an error.
    fn finish(self);
}

/// `#[test]`s running the scenarios without per-binding checks against `$backend`
/// (an [`EchoBackend`]), under the same names in both bindings' suites.
macro_rules! echo_scenarios {
    ($backend:ty) => {
        #[test]
        fn split_ring_event_idx_off() {
            scenarios::data_path::<$backend>(false, false);
        }

        #[test]
        fn split_ring_event_idx_on() {
            scenarios::data_path::<$backend>(false, true);
        }

        #[test]
        fn packed_ring_event_idx_off() {
            scenarios::data_path::<$backend>(true, false);
        }

        #[test]
        fn packed_ring_event_idx_on() {
            scenarios::data_path::<$backend>(true, true);
        }

        #[test]
        fn config_status_and_refusals() {
            scenarios::config_status_and_refusals::<$backend>();
        }
    };
}
pub(crate) use echo_scenarios;

/// Handshake, data through three queues, then every ring stopped: the positions cover
/// every request.
pub fn data_path<B: EchoBackend>(packed: bool, event_idx: bool) {
    let ram = GuestRam::new(0, RAM).unwrap();
    let (mut front, server) = B::start(4);
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
        let base = front.get_vring_base(ring.index()).unwrap();
        if packed {
            // 300 two-descriptor buffers: 600 slots in a 128 ring.
            let (slots, size) = (600u32, u32::from(ring.size()));
            assert_eq!(u32::from(base.packed_avail_idx()), slots % size);
            assert_eq!(base.packed_avail_wrap(), (slots / size).is_multiple_of(2));
        } else {
            assert_eq!(base.split_next_avail(), 300);
        }
    }
    drop(front);
    server.finish();
}

pub fn config_status_and_refusals<B: EchoBackend>() {
    let ram = GuestRam::new(0, RAM).unwrap();
    let (mut front, server) = B::start(1);
    handshake(&mut front, &ram, false, true);
    let magic = front.get_config(0, 8).unwrap();
    assert_eq!(
        u64::from_le_bytes(magic.try_into().unwrap()),
        vhost_backend::echo::CONFIG_MAGIC
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
    server.finish();
}

/// A ring of 16 started near the end of the index space / ring so that both wrap, five
/// echoes through it, then stopped: its position is checked and handed to `restart`
/// (the binding's checks of the stopped ring and of its restart from that position).
pub fn stop_and_resume<B: EchoBackend>(
    packed: bool,
    restart: impl FnOnce(&mut Frontend, &mut DriverRing, &GuestRam, VringBase),
) {
    let ram = GuestRam::new(0, RAM).unwrap();
    let (mut front, server) = B::start(1);
    handshake(&mut front, &ram, packed, true);
    let f = ring_features(true);
    let (mut ring, _) = if packed {
        DriverRing::packed_at(&ram, 0, 0, 16, f, 13, false).unwrap()
    } else {
        DriverRing::split_at(&ram, 0, 0, 16, f, 65530).unwrap()
    };
    front.start_ring(&ring, &ram).unwrap();
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
    restart(&mut front, &mut ring, &ram, base);
    drop(front);
    server.finish();
}

/// For a `stop_and_resume` hook: a buffer (`BUFS` -> `BUFS + 64`, 4 bytes) added and
/// kicked while the ring is stopped is not served; the ring restarted from `base`, it
/// is. Returns its id and what the ring then used.
pub fn add_while_stopped_then_restart(
    front: &mut Frontend,
    ring: &mut DriverRing,
    base: VringBase,
) -> (u16, Vec<(u16, u32)>) {
    let id = ring.add(&[(BUFS, 4)], &[(BUFS + 64, 4)]).unwrap();
    ring.kick().unwrap();
    // Nothing comes back while the ring is stopped.
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(ring.pop_used().unwrap(), None);
    front.restart_ring(ring, base).unwrap();
    (id, ring.collect(1, TIMEOUT).unwrap())
}

/// Ring 0 keeps running while a second region is added (`with_extra` then runs with the
/// ring and both memories), removed, removed again (refused) and while a whole new table
/// is set.
pub fn memory_regions_added_and_removed_while_running<B: EchoBackend>(
    with_extra: impl FnOnce(&mut DriverRing, &GuestRam, &GuestRam),
) {
    let ram = GuestRam::new(0, RAM).unwrap();
    let (mut front, server) = B::start(2);
    handshake(&mut front, &ram, false, true);
    let mut r0 = start_ring(&mut front, &ram, 0, 0, 64, false, true);
    echo_through(&mut r0, &ram, 50, 128, 0);
    // A second region, added while ring 0 runs.
    let extra = GuestRam::new(0x1000_0000, 1 << 20).unwrap();
    front.add_mem_reg(extra.region(), extra.fd()).unwrap();
    with_extra(&mut r0, &ram, &extra);
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
    server.finish();
}

/// A front-end that connects to the server at `path`, echoes through a ring (split in
/// even rounds, packed in odd ones), leaves requests in flight and vanishes without
/// stopping the ring.
pub fn session_that_vanishes_mid_io(path: &Path, round: u8) {
    let ram = GuestRam::new(0, RAM).unwrap();
    let mut front = Frontend::connect(path).unwrap();
    handshake(&mut front, &ram, round % 2 == 1, true);
    let mut ring = start_ring(&mut front, &ram, 0, 0, 64, round % 2 == 1, true);
    echo_through(&mut ring, &ram, 20, 64, round);
    // Requests in flight, then the front-end vanishes without stopping the ring.
    for k in 0..16u64 {
        ring.add(&[(BUFS + k * 128, 64)], &[(BUFS + k * 128 + 64, 64)])
            .unwrap();
    }
    ring.kick().unwrap();
    drop(front);
}
