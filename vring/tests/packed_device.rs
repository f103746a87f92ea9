//! Packed ring behaviour, device and driver side: wraps, batches, event
//! suppression, ring positions, dirty logging, IN_ORDER batches.
// Helpers outside #[test] fns may unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use vring::log::DirtyLog;
use vring::memory::{BufferMemory, SharedRegion};
use vring::packed::{DeviceQueue, DriverQueue};
use vring::{QueueConfig, RingFeatures, RingPosition};

const RING: u64 = 0x1000;
const DRIVER: u64 = 0x800;
const DEVICE: u64 = 0x804;
const BUF: u64 = 0x10000;

fn config(size: u16, features: RingFeatures) -> QueueConfig {
    QueueConfig {
        size,
        desc_table: RING,
        driver_area: DRIVER,
        device_area: DEVICE,
        features,
    }
}

fn mem() -> BufferMemory {
    BufferMemory::new(0, 0x40000)
}

fn event_idx() -> RingFeatures {
    RingFeatures {
        event_idx: true,
        ..Default::default()
    }
}

#[test]
fn lists_cross_the_end_of_the_ring_and_toggle_the_wrap_counters() {
    let mem = mem();
    let cfg = config(5, RingFeatures::default());
    let mut driver = DriverQueue::new(&mem, &cfg).unwrap();
    let mut device = DeviceQueue::new(&mem, &cfg, RingPosition::default()).unwrap();
    for round in 0..20u32 {
        // Three-slot buffers in a five-slot ring wrap every other round.
        mem.write(BUF, &round.to_le_bytes()).unwrap();
        let id = driver
            .add(&[(BUF, 2), (BUF + 2, 2)], &[(BUF + 0x100, 8)])
            .unwrap();
        driver.publish();
        let chain = device.pop().unwrap().unwrap();
        assert_eq!((chain.id(), chain.slots()), (id, 3));
        let mut got = [0u8; 4];
        device.reader(&chain).read_exact(&mut got).unwrap();
        assert_eq!(u32::from_le_bytes(got), round);
        let mut w = device.writer(&chain);
        w.write_all(&[round as u8; 8]).unwrap();
        device.push(&chain, w.bytes_written()).unwrap();
        assert_eq!(driver.pop_used().unwrap(), Some((id, 8)));
        assert_eq!(device.pop().unwrap(), None);
        let p = device.position();
        assert_eq!(p.next_avail, ((round + 1) * 3 % 5) as u16);
        assert_eq!(p.avail_wrap, ((round + 1) * 3 / 5) % 2 == 0);
        assert_eq!((p.next_used, p.used_wrap), (p.next_avail, p.avail_wrap));
    }
}

#[test]
fn a_batch_is_visible_only_once_published_and_its_first_descriptor_last() {
    let mem = mem();
    let cfg = config(8, RingFeatures::default());
    let mut driver = DriverQueue::new(&mem, &cfg).unwrap();
    let mut device = DeviceQueue::new(&mem, &cfg, RingPosition::default()).unwrap();
    let ids: Vec<u16> = (0..3)
        .map(|i| driver.add(&[], &[(BUF + 0x100 * i, 16)]).unwrap())
        .collect();
    // Nothing is visible before the driver publishes.
    assert_eq!(device.pop().unwrap(), None);
    assert!(driver.publish());
    let chains: Vec<_> = (0..3).map(|_| device.pop().unwrap().unwrap()).collect();
    for (c, len) in chains.iter().zip([1, 2, 3]) {
        device.add_used(c, len).unwrap();
    }
    // The later used descriptors are written, but the driver polls the
    // first slot, which is flagged at publish.
    assert_eq!(driver.pop_used().unwrap(), None);
    assert!(device.publish_used());
    let got: Vec<_> = (0..3)
        .map(|_| driver.pop_used().unwrap().unwrap())
        .collect();
    assert_eq!(got, vec![(ids[0], 1), (ids[1], 2), (ids[2], 3)]);
    assert!(!device.publish_used(), "nothing new to publish");
}

#[test]
fn out_of_order_completion_returns_each_buffer_once() {
    let mem = mem();
    let cfg = config(4, RingFeatures::default());
    let mut driver = DriverQueue::new(&mem, &cfg).unwrap();
    let mut device = DeviceQueue::new(&mem, &cfg, RingPosition::default()).unwrap();
    let a = driver.add(&[(BUF, 8), (BUF + 8, 8)], &[]).unwrap();
    let b = driver.add(&[(BUF, 8)], &[]).unwrap();
    driver.publish();
    let ca = device.pop().unwrap().unwrap();
    let cb = device.pop().unwrap().unwrap();
    // Walk A before completing B (its slots are reused by B's used entry).
    assert_eq!(device.descriptors(&ca).count(), 2);
    device.push(&cb, 0).unwrap();
    device.push(&ca, 0).unwrap();
    assert_eq!(driver.pop_used().unwrap(), Some((b, 0)));
    assert_eq!(driver.pop_used().unwrap(), Some((a, 0)));
    assert_eq!(driver.pop_used().unwrap(), None);
    assert_eq!(driver.free_descriptors(), 4);
    // The ring keeps working after the out-of-order lap.
    let c = driver.add(&[(BUF, 8); 4], &[]).unwrap();
    driver.publish();
    let cc = device.pop().unwrap().unwrap();
    assert_eq!((cc.id(), cc.slots()), (c, 4));
    device.push(&cc, 0).unwrap();
    assert_eq!(driver.pop_used().unwrap(), Some((c, 0)));
}

#[test]
fn driver_suppression_of_used_notifications() {
    let mem = mem();
    let cfg = config(4, RingFeatures::default());
    let mut driver = DriverQueue::new(&mem, &cfg).unwrap();
    let mut device = DeviceQueue::new(&mem, &cfg, RingPosition::default()).unwrap();
    driver.add(&[(BUF, 8)], &[]).unwrap();
    driver.add(&[(BUF, 8)], &[]).unwrap();
    driver.publish();
    driver.disable_interrupts();
    let c = device.pop().unwrap().unwrap();
    assert!(!device.push(&c, 0).unwrap(), "DISABLE");
    // Re-enabling sees the used buffer that arrived meanwhile.
    assert!(driver.enable_interrupts());
    let c = device.pop().unwrap().unwrap();
    assert!(device.push(&c, 0).unwrap(), "ENABLE");
}

#[test]
fn driver_desc_event_notifies_exactly_at_the_slot() {
    let mem = mem();
    let cfg = config(4, event_idx());
    let mut driver = DriverQueue::new(&mem, &cfg).unwrap();
    let mut device = DeviceQueue::new(&mem, &cfg, RingPosition::default()).unwrap();
    for lap in 0..6 {
        for _ in 0..4 {
            driver.add(&[(BUF, 8)], &[]).unwrap();
        }
        driver.publish();
        // DESC at the driver's next used slot: the first completion
        // notifies, the following ones (past the event) do not.
        assert!(!driver.enable_interrupts());
        let chains: Vec<_> = (0..4).map(|_| device.pop().unwrap().unwrap()).collect();
        for (i, c) in chains.iter().enumerate() {
            assert_eq!(device.push(c, 0).unwrap(), i == 0, "lap {lap} buffer {i}");
        }
        for _ in 0..4 {
            driver.pop_used().unwrap().unwrap();
        }
    }
}

#[test]
fn device_suppression_of_kicks() {
    let mem = mem();
    let cfg = config(4, RingFeatures::default());
    let mut driver = DriverQueue::new(&mem, &cfg).unwrap();
    let mut device = DeviceQueue::new(&mem, &cfg, RingPosition::default()).unwrap();
    device.disable_notifications();
    driver.add(&[(BUF, 8)], &[]).unwrap();
    assert!(!driver.publish(), "DISABLE");
    assert!(device.enable_notifications().unwrap(), "a buffer arrived");
    let c = device.pop().unwrap().unwrap();
    device.push(&c, 0).unwrap();
    assert!(!device.enable_notifications().unwrap());
    driver.add(&[(BUF, 8)], &[]).unwrap();
    assert!(driver.publish(), "ENABLE");
}

#[test]
fn device_desc_event_asks_for_a_kick_at_the_next_slot_only() {
    let mem = mem();
    let cfg = config(3, event_idx());
    let mut driver = DriverQueue::new(&mem, &cfg).unwrap();
    let mut device = DeviceQueue::new(&mem, &cfg, RingPosition::default()).unwrap();
    for round in 0..7 {
        assert!(!device.enable_notifications().unwrap());
        driver.add(&[(BUF, 8)], &[]).unwrap();
        assert!(driver.publish(), "round {round}: the awaited slot");
        // Without re-enabling, the next buffer does not kick.
        driver.add(&[(BUF, 8)], &[]).unwrap();
        assert!(!driver.publish(), "round {round}: past the event");
        for _ in 0..2 {
            let c = device.pop().unwrap().unwrap();
            device.push(&c, 0).unwrap();
            driver.pop_used().unwrap().unwrap();
        }
    }
}

#[test]
fn a_queue_resumes_at_a_saved_position() {
    let mem = mem();
    let cfg = config(6, RingFeatures::default());
    let mut driver = DriverQueue::new(&mem, &cfg).unwrap();
    let mut device = DeviceQueue::new(&mem, &cfg, RingPosition::default()).unwrap();
    let mut expect = Vec::new();
    for round in 0..25u16 {
        let n = usize::from(round % 3) + 1;
        let id = driver.add(&vec![(BUF, 4); n], &[]).unwrap();
        driver.publish();
        if round % 4 == 3 {
            // Stop and restart the device (GET/SET_VRING_BASE).
            let pos = device.position();
            device = DeviceQueue::new(&mem, &cfg, pos).unwrap();
            assert_eq!(device.position(), pos);
        }
        let c = device.pop().unwrap().unwrap();
        assert_eq!(c.id(), id);
        device.push(&c, u32::from(round)).unwrap();
        expect.push((id, u32::from(round)));
        assert_eq!(driver.pop_used().unwrap(), Some((id, u32::from(round))));
    }
}

#[test]
fn used_descriptor_and_buffer_writes_are_logged() {
    let mem = mem();
    let cfg = config(4, RingFeatures::default());
    let mut driver = DriverQueue::new(&mem, &cfg).unwrap();
    let mut device = DeviceQueue::new(&mem, &cfg, RingPosition::default()).unwrap();
    // The descriptor ring's log address differs from its address here, to
    // show which one is used.
    let ring_log = 0x3_0000;
    // Slot 0 is used once without a log, so the logged one is slot 1.
    driver.add(&[], &[(0x2_5000, 8)]).unwrap();
    driver.publish();
    let c = device.pop().unwrap().unwrap();
    device.push(&c, 0).unwrap();
    let region = SharedRegion::zeroed(16);
    device.set_dirty_log(Some(DirtyLog::new(region.clone())), Some(ring_log));
    driver.add(&[], &[(0x2_5000, 8)]).unwrap();
    driver.publish();
    let c = device.pop().unwrap().unwrap();
    let mut w = device.writer(&c);
    w.write_all(&[2; 8]).unwrap();
    device.push(&c, 8).unwrap();
    device.enable_notifications().unwrap();
    let check = DirtyLog::new(region);
    assert!(check.is_dirty(0x2_5000), "buffer write");
    assert!(check.is_dirty(ring_log + 16), "used descriptor in slot 1");
    assert!(check.is_dirty(DEVICE), "device event area");
    assert!(
        !check.is_dirty(RING),
        "the ring's own address is not the log address"
    );
    // Without a ring log address only buffer writes are logged.
    let region = SharedRegion::zeroed(16);
    device.set_dirty_log(Some(DirtyLog::new(region.clone())), None);
    driver.add(&[], &[(0x2_7000, 8)]).unwrap();
    driver.publish();
    let c = device.pop().unwrap().unwrap();
    device.writer(&c).write_all(&[3; 8]).unwrap();
    device.push(&c, 8).unwrap();
    let check = DirtyLog::new(region);
    assert!(check.is_dirty(0x2_7000));
    assert!(!check.is_dirty(ring_log));
}

#[test]
fn driver_understands_in_order_batches() {
    let mem = mem();
    let features = RingFeatures {
        in_order: true,
        ..Default::default()
    };
    let cfg = config(8, features);
    let mut driver = DriverQueue::new(&mem, &cfg).unwrap();
    let a = driver.add(&[(BUF, 8)], &[(BUF + 0x100, 100)]).unwrap();
    let b = driver
        .add(&[(BUF, 8), (BUF, 8)], &[(BUF + 0x200, 50)])
        .unwrap();
    let c = driver.add(&[], &[(BUF + 0x300, 10)]).unwrap();
    driver.publish();
    // A device writes one used descriptor for the batch a, b, c: Buffer ID
    // of the last, in the slot of the first (virtqueue spec §3.8).
    let mut d = [0u8; 16];
    d[8..12].copy_from_slice(&7u32.to_le_bytes());
    d[12..14].copy_from_slice(&c.to_le_bytes());
    d[14..].copy_from_slice(&(0x8080u16 | 2).to_le_bytes());
    mem.write(RING, &d).unwrap();
    assert_eq!(driver.pop_used().unwrap(), Some((a, 100)));
    assert_eq!(driver.pop_used().unwrap(), Some((b, 50)));
    assert_eq!(driver.pop_used().unwrap(), Some((c, 7)));
    assert_eq!(driver.pop_used().unwrap(), None);
    assert_eq!(driver.free_descriptors(), 8);
    // The next buffer's used descriptor is expected after the 6 slots.
    let mut device = DeviceQueue::new(
        &mem,
        &cfg,
        RingPosition {
            next_avail: 6,
            next_used: 6,
            ..Default::default()
        },
    )
    .unwrap();
    let e = driver.add(&[(BUF, 8)], &[]).unwrap();
    driver.publish();
    let ce = device.pop().unwrap().unwrap();
    device.push(&ce, 0).unwrap();
    assert_eq!(driver.pop_used().unwrap(), Some((e, 0)));
}

#[test]
fn driver_reports_a_full_ring() {
    let mem = mem();
    let cfg = config(3, RingFeatures::default());
    let mut driver = DriverQueue::new(&mem, &cfg).unwrap();
    driver.add(&[(BUF, 8), (BUF, 8)], &[]).unwrap();
    assert_eq!(
        driver.add(&[(BUF, 8), (BUF, 8)], &[]),
        Err(vring::Error::RingFull { needed: 2, free: 1 })
    );
    assert_eq!(driver.add(&[], &[]), Err(vring::Error::EmptyBuffer));
    driver.add(&[(BUF, 8)], &[]).unwrap();
    assert!(matches!(
        driver.add(&[(BUF, 8)], &[]),
        Err(vring::Error::RingFull { .. })
    ));
}
