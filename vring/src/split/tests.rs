//! Unit tests of the split ring rules, one per rule.

use super::layout::{self, RawDesc};
use super::{DeviceQueue, DriverQueue};
use crate::desc::{DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};
use crate::log::DirtyLog;
use crate::memory::{BufferMemory, SharedRegion};
use crate::{Descriptor, Error, QueueConfig, RingArea, RingFeatures, RingPosition};

const DESC: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;

fn config(size: u16, features: RingFeatures) -> QueueConfig {
    QueueConfig {
        size,
        desc_table: DESC,
        driver_area: AVAIL,
        device_area: USED,
        features,
    }
}

fn mem() -> BufferMemory {
    BufferMemory::new(0, 0x20000)
}

fn event_idx() -> RingFeatures {
    RingFeatures {
        event_idx: true,
        ..RingFeatures::default()
    }
}

fn write_desc(mem: &BufferMemory, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
    let d = RawDesc {
        addr,
        len,
        flags,
        next,
    };
    mem.write(table + 16 * u64::from(i), &d.to_bytes()).unwrap();
}

fn read_u16(mem: &BufferMemory, addr: u64) -> u16 {
    let mut b = [0u8; 2];
    mem.read(addr, &mut b).unwrap();
    u16::from_le_bytes(b)
}

fn write_u16(mem: &BufferMemory, addr: u64, v: u16) {
    mem.write(addr, &v.to_le_bytes()).unwrap();
}

/// Offers heads `heads` directly in the avail ring starting at `start`.
fn offer(mem: &BufferMemory, size: u16, start: u16, heads: &[u16]) {
    for (k, &h) in heads.iter().enumerate() {
        let slot = start.wrapping_add(k as u16) % size;
        write_u16(mem, AVAIL + 4 + 2 * u64::from(slot), h);
    }
    write_u16(mem, AVAIL + 2, start.wrapping_add(heads.len() as u16));
}

#[test]
fn sizes_must_be_powers_of_two_up_to_32768() {
    let m = mem();
    for size in [0u16, 3, 100, 32769, 65535] {
        assert_eq!(
            DeviceQueue::new(
                &m,
                &config(size, RingFeatures::default()),
                RingPosition::default()
            )
            .err(),
            Some(Error::InvalidQueueSize { size: size.into() }),
            "{size}"
        );
    }
    for size in [1u16, 2, 64, 256] {
        assert!(
            DeviceQueue::new(
                &m,
                &config(size, RingFeatures::default()),
                RingPosition::default()
            )
            .is_ok()
        );
    }
}

#[test]
fn areas_are_checked_for_alignment_and_mapping() {
    let m = mem();
    let f = RingFeatures::default();
    let mut c = config(8, f);
    c.desc_table = 8;
    assert!(matches!(
        DeviceQueue::new(&m, &c, RingPosition::default()),
        Err(Error::Misaligned {
            area: RingArea::Descriptors,
            align: 16,
            ..
        })
    ));
    let mut c = config(8, f);
    c.driver_area = AVAIL + 1;
    assert!(matches!(
        DeviceQueue::new(&m, &c, RingPosition::default()),
        Err(Error::Misaligned {
            area: RingArea::Driver,
            align: 2,
            ..
        })
    ));
    let mut c = config(8, f);
    c.device_area = USED + 2;
    assert!(matches!(
        DeviceQueue::new(&m, &c, RingPosition::default()),
        Err(Error::Misaligned {
            area: RingArea::Device,
            align: 4,
            ..
        })
    ));
    let mut c = config(8, f);
    c.device_area = 0x20000 - 8; // the used ring runs off the region
    assert!(matches!(
        DeviceQueue::new(&m, &c, RingPosition::default()),
        Err(Error::RingUnmapped {
            area: RingArea::Device,
            ..
        })
    ));
    // Legal minimum alignments work: avail at 2 mod 4, used at 4 mod 8.
    let mut c = config(8, f);
    c.driver_area = AVAIL + 2;
    c.device_area = USED + 4;
    assert!(DeviceQueue::new(&m, &c, RingPosition::default()).is_ok());
}

#[test]
fn pop_serves_a_batch_from_one_avail_idx_read() {
    let m = mem();
    let c = config(8, RingFeatures::default());
    for i in 0..3 {
        write_desc(&m, DESC, i, 0x8000, 1, 0, 0);
    }
    offer(&m, 8, 0, &[0, 1, 2]);
    let mut q = DeviceQueue::new(&m, &c, RingPosition::default()).unwrap();
    assert_eq!(q.pop().unwrap().unwrap().id(), 0);
    // The driver "jumps" avail idx now; the cached batch is still served.
    write_u16(&m, AVAIL + 2, 200);
    assert_eq!(q.pop().unwrap().unwrap().id(), 1);
    assert_eq!(q.pop().unwrap().unwrap().id(), 2);
    // Only the next read sees the jump, and the error sticks.
    for _ in 0..2 {
        assert_eq!(
            q.pop(),
            Err(Error::AvailIndexJump {
                avail_idx: 200,
                last_avail: 3,
                size: 8
            })
        );
    }
}

#[test]
fn head_out_of_range_is_fatal() {
    let m = mem();
    let c = config(4, RingFeatures::default());
    offer(&m, 4, 0, &[4]);
    let mut q = DeviceQueue::new(&m, &c, RingPosition::default()).unwrap();
    assert_eq!(q.pop(), Err(Error::HeadOutOfRange { head: 4, size: 4 }));
    assert_eq!(q.pop(), Err(Error::HeadOutOfRange { head: 4, size: 4 }));
    assert_eq!(q.position().next_avail, 0);
}

#[test]
fn used_idx_is_read_at_construction_then_shadowed() {
    let m = mem();
    let c = config(4, RingFeatures::default());
    write_desc(&m, DESC, 0, 0x8000, 1, 0, 0);
    write_u16(&m, USED + 2, 7);
    offer(&m, 4, 9, &[0]);
    let mut q = DeviceQueue::new(
        &m,
        &c,
        RingPosition {
            next_avail: 9,
            ..Default::default()
        },
    )
    .unwrap();
    let chain = q.pop().unwrap().unwrap();
    // A hostile guest scribbles on used->idx: the device keeps its shadow.
    write_u16(&m, USED + 2, 1000);
    q.push(&chain, 3).unwrap();
    assert_eq!(read_u16(&m, USED + 2), 8);
    // Element at slot 7 % 4 = 3.
    let mut e = [0u8; 8];
    m.read(USED + 4 + 8 * 3, &mut e).unwrap();
    assert_eq!(e, [0, 0, 0, 0, 3, 0, 0, 0]);
    assert_eq!(q.position().next_avail, 10);
}

#[test]
fn add_used_is_invisible_until_published() {
    let m = mem();
    let c = config(4, RingFeatures::default());
    for i in 0..2 {
        write_desc(&m, DESC, i, 0x8000, 1, 0, 0);
    }
    offer(&m, 4, 0, &[0, 1]);
    let mut q = DeviceQueue::new(&m, &c, RingPosition::default()).unwrap();
    let a = q.pop().unwrap().unwrap();
    let b = q.pop().unwrap().unwrap();
    q.add_used(&b, 1).unwrap();
    q.add_used(&a, 2).unwrap();
    assert_eq!(read_u16(&m, USED + 2), 0);
    assert!(q.publish_used());
    assert_eq!(read_u16(&m, USED + 2), 2);
    assert!(!q.publish_used(), "nothing new to publish");
}

#[test]
fn no_interrupt_flag_suppresses_without_event_idx() {
    let m = mem();
    let c = config(4, RingFeatures::default());
    write_desc(&m, DESC, 0, 0x8000, 1, 0, 0);
    offer(&m, 4, 0, &[0, 0]);
    let mut q = DeviceQueue::new(&m, &c, RingPosition::default()).unwrap();
    write_u16(&m, AVAIL, layout::AVAIL_F_NO_INTERRUPT);
    let ch = q.pop().unwrap().unwrap();
    assert!(!q.push(&ch, 0).unwrap());
    write_u16(&m, AVAIL, 0);
    // used_event is ignored without EVENT_IDX.
    write_u16(&m, AVAIL + 4 + 2 * 4, 100);
    let ch = q.pop().unwrap().unwrap();
    assert!(q.push(&ch, 0).unwrap());
}

#[test]
fn used_event_decides_with_event_idx() {
    let m = mem();
    let c = config(8, event_idx());
    write_desc(&m, DESC, 0, 0x8000, 1, 0, 0);
    offer(&m, 8, 0, &[0; 5]);
    let mut q = DeviceQueue::new(&m, &c, RingPosition::default()).unwrap();
    // NO_INTERRUPT is ignored with EVENT_IDX.
    write_u16(&m, AVAIL, layout::AVAIL_F_NO_INTERRUPT);
    write_u16(&m, AVAIL + 4 + 2 * 8, 2); // used_event = 2
    let mut notified = vec![];
    for _ in 0..2 {
        let ch = q.pop().unwrap().unwrap();
        notified.push(q.push(&ch, 0).unwrap()); // idx 0->1, 1->2
    }
    // A batch of three crossing the event (2 -> 5) notifies once.
    for _ in 0..3 {
        let ch = q.pop().unwrap().unwrap();
        q.add_used(&ch, 0).unwrap();
    }
    notified.push(q.publish_used());
    assert_eq!(notified, [false, false, true]);
}

#[test]
fn notifications_without_event_idx_use_no_notify() {
    let m = mem();
    let c = config(4, RingFeatures::default());
    let mut q = DeviceQueue::new(&m, &c, RingPosition::default()).unwrap();
    q.disable_notifications();
    assert_eq!(read_u16(&m, USED), layout::USED_F_NO_NOTIFY);
    assert!(!q.enable_notifications().unwrap());
    assert_eq!(read_u16(&m, USED), 0);
    offer(&m, 4, 0, &[0]);
    q.disable_notifications();
    // Buffers arrived while disabled: enabling reports them.
    assert!(q.enable_notifications().unwrap());
}

#[test]
fn notifications_with_event_idx_use_avail_event() {
    let m = mem();
    let c = config(4, event_idx());
    write_desc(&m, DESC, 0, 0x8000, 1, 0, 0);
    let mut q = DeviceQueue::new(
        &m,
        &c,
        RingPosition {
            next_avail: 5,
            ..Default::default()
        },
    )
    .unwrap();
    offer(&m, 4, 5, &[0, 0]);
    q.disable_notifications();
    assert_eq!(read_u16(&m, USED), 0, "flags stay 0 with EVENT_IDX");
    assert!(q.enable_notifications().unwrap());
    assert_eq!(read_u16(&m, USED + 4 + 8 * 4), 5);
    q.pop().unwrap().unwrap();
    q.pop().unwrap().unwrap();
    assert!(!q.enable_notifications().unwrap());
    assert_eq!(read_u16(&m, USED + 4 + 8 * 4), 7);
}

#[test]
fn enable_notifications_reports_an_avail_jump() {
    let m = mem();
    let c = config(4, event_idx());
    let mut q = DeviceQueue::new(&m, &c, RingPosition::default()).unwrap();
    write_u16(&m, AVAIL + 2, 5);
    assert!(matches!(
        q.enable_notifications(),
        Err(Error::AvailIndexJump { .. })
    ));
}

fn walk(q: &DeviceQueue<&BufferMemory>, head: u16) -> Vec<Result<Descriptor, Error>> {
    let mut it = q.descriptors(&super::AvailChain { head });
    let v: Vec<_> = it.by_ref().collect();
    assert!(it.next().is_none(), "fused");
    v
}

fn d(addr: u64, len: u32, writable: bool) -> Result<Descriptor, Error> {
    Ok(Descriptor {
        addr,
        len,
        writable,
    })
}

#[test]
fn mixed_direct_then_indirect_chain_ignores_write_on_the_table_descriptor() {
    let m = mem();
    let f = RingFeatures {
        indirect: true,
        ..RingFeatures::default()
    };
    let c = config(8, f);
    // Unaligned table address (virtqueue spec §2.3 sets no alignment).
    let table = 0x9003;
    write_desc(&m, DESC, 3, 0x8000, 10, DESC_F_NEXT, 5);
    write_desc(&m, DESC, 5, table, 48, DESC_F_INDIRECT | DESC_F_WRITE, 0);
    write_desc(&m, table, 0, 0x8100, 20, DESC_F_NEXT, 2);
    write_desc(&m, table, 2, 0x8200, 30, DESC_F_NEXT | DESC_F_WRITE, 1);
    write_desc(&m, table, 1, 0x8300, 40, DESC_F_WRITE, 0);
    let q = DeviceQueue::new(&m, &c, RingPosition::default()).unwrap();
    assert_eq!(
        walk(&q, 3),
        [
            d(0x8000, 10, false),
            d(0x8100, 20, false),
            d(0x8200, 30, true),
            d(0x8300, 40, true)
        ]
    );
}

#[test]
fn a_chain_of_exactly_queue_size_descriptors_is_fine() {
    let m = mem();
    let c = config(4, RingFeatures::default());
    for i in 0..4u16 {
        let flags = if i < 3 { DESC_F_NEXT } else { 0 };
        write_desc(&m, DESC, i, 0x8000, 1, flags, i + 1);
    }
    let q = DeviceQueue::new(&m, &c, RingPosition::default()).unwrap();
    assert_eq!(walk(&q, 0).len(), 4);
    assert!(walk(&q, 0).iter().all(Result::is_ok));
    // Starting at 1, the same table is a 3-descriptor chain.
    assert_eq!(walk(&q, 1).len(), 3);
}

#[test]
fn chain_length_of_exactly_4gib_is_allowed() {
    let m = mem();
    let c = config(4, RingFeatures::default());
    write_desc(&m, DESC, 0, 0x1_0000_0000, u32::MAX, DESC_F_NEXT, 1);
    write_desc(&m, DESC, 1, 0x2_0000_0000, 1, 0, 0);
    let q = DeviceQueue::new(&m, &c, RingPosition::default()).unwrap();
    assert!(walk(&q, 0).iter().all(Result::is_ok));
}

#[test]
fn reader_and_writer_follow_the_chain() {
    let m = mem();
    let c = config(4, RingFeatures::default());
    m.write(0x8000, b"abc").unwrap();
    write_desc(&m, DESC, 0, 0x8000, 3, DESC_F_NEXT, 1);
    write_desc(&m, DESC, 1, 0x8800, 4, DESC_F_WRITE, 0);
    offer(&m, 4, 0, &[0]);
    let mut q = DeviceQueue::new(&m, &c, RingPosition::default()).unwrap();
    let ch = q.pop().unwrap().unwrap();
    let mut b = [0u8; 8];
    assert_eq!(q.reader(&ch).read(&mut b).unwrap(), 3);
    let mut w = q.writer(&ch);
    assert_eq!(w.write(b"wxyz!").unwrap(), 4);
    let mut out = [0u8; 4];
    m.read(0x8800, &mut out).unwrap();
    assert_eq!(&out, b"wxyz");
}

#[test]
fn dirty_log_marks_used_ring_and_buffer_writes() {
    let m = BufferMemory::new(0, 0x40000);
    let c = config(256, RingFeatures::default());
    write_desc(&m, DESC, 0, 0x30000, 8, DESC_F_WRITE, 0);
    offer(&m, 256, 0, &[0]);
    let mut q = DeviceQueue::new(&m, &c, RingPosition::default()).unwrap();
    let log = DirtyLog::new(SharedRegion::zeroed(64));
    // The log address of the used ring differs from its guest address.
    let used_log = 0x10_0000;
    q.set_dirty_log(Some(log.clone()), Some(used_log));
    let ch = q.pop().unwrap().unwrap();
    q.writer(&ch).write_all(&[1; 8]).unwrap();
    q.push(&ch, 8).unwrap();
    assert!(log.is_dirty(0x30000), "buffer page");
    assert!(log.is_dirty(used_log), "used idx / element 0 page");
    assert!(
        !log.is_dirty(USED),
        "the translated address is not what is logged"
    );
    // The 256-entry used ring spans two pages; element 200 is on the second.
    let log = DirtyLog::new(SharedRegion::zeroed(64));
    q.set_dirty_log(Some(log.clone()), Some(used_log + 0x1000 - 4 - 8 * 200));
    offer(&m, 256, 1, &[0; 199]);
    for _ in 0..199 {
        let ch = q.pop().unwrap().unwrap();
        q.push(&ch, 0).unwrap();
    }
    assert!(!log.is_dirty(used_log + 0x1000));
    offer(&m, 256, 200, &[0]);
    let ch = q.pop().unwrap().unwrap();
    q.push(&ch, 0).unwrap();
    assert!(log.is_dirty(used_log + 0x1000));
    // Without a used log address only buffer writes are logged.
    let log = DirtyLog::new(SharedRegion::zeroed(64));
    q.set_dirty_log(Some(log.clone()), None);
    q.disable_notifications();
    assert!((0..0x80000).step_by(0x1000).all(|a| !log.is_dirty(a)));
}

#[test]
fn position_round_trips() {
    let m = mem();
    let c = config(8, RingFeatures::default());
    write_desc(&m, DESC, 0, 0x8000, 1, 0, 0);
    offer(&m, 8, 65534, &[0, 0, 0]);
    let mut q = DeviceQueue::new(
        &m,
        &c,
        RingPosition {
            next_avail: 65534,
            ..Default::default()
        },
    )
    .unwrap();
    q.pop().unwrap().unwrap();
    q.pop().unwrap().unwrap();
    let pos = q.position();
    assert_eq!(pos.next_avail, 0);
    let mut q2 = DeviceQueue::new(&m, &c, pos).unwrap();
    assert!(q2.pop().unwrap().is_some());
    assert!(q2.pop().unwrap().is_none());
}

#[test]
fn set_memory_retranslates() {
    let m1 = mem();
    let m2 = mem();
    let c = config(4, RingFeatures::default());
    write_desc(&m2, DESC, 2, 0x8000, 1, 0, 0);
    offer(&m2, 4, 0, &[2]);
    let mut q = DeviceQueue::new(&m1, &c, RingPosition::default()).unwrap();
    assert!(q.pop().unwrap().is_none());
    q.set_memory(&m2).unwrap();
    assert_eq!(q.pop().unwrap().unwrap().id(), 2);
    let small = BufferMemory::new(0, 0x100);
    assert!(q.set_memory(&small).is_err());
    assert!(std::ptr::eq(*q.memory(), &m2));
}

// ---- driver ----

#[test]
fn driver_reports_full_and_empty() {
    let m = mem();
    let c = config(2, RingFeatures::default());
    let mut drv = DriverQueue::new(&m, &c).unwrap();
    assert_eq!(drv.add(&[], &[]), Err(Error::EmptyBuffer));
    assert_eq!(
        drv.add(&[(0, 1); 3], &[]),
        Err(Error::RingFull { needed: 3, free: 2 })
    );
    assert_eq!(
        drv.add_indirect(0x9000, &[(0, 1)], &[]),
        Err(Error::IndirectNotNegotiated)
    );
    drv.add(&[(0x8000, 1)], &[(0x8100, 1)]).unwrap();
    assert_eq!(
        drv.add(&[(0, 1)], &[]),
        Err(Error::RingFull { needed: 1, free: 0 })
    );
}

#[test]
fn driver_rejects_hostile_used_entries() {
    let m = mem();
    let c = config(4, RingFeatures::default());
    let mut drv = DriverQueue::new(&m, &c).unwrap();
    let id = drv.add(&[(0x8000, 1)], &[]).unwrap();
    drv.publish();
    // used[0] = {id: 9}, idx = 1
    m.write(USED + 4, &9u32.to_le_bytes()).unwrap();
    write_u16(&m, USED + 2, 1);
    assert_eq!(
        drv.pop_used(),
        Err(Error::BufferIdOutOfRange { id: 9, size: 4 })
    );
    m.write(USED + 4, &(id as u32 + 1).to_le_bytes()).unwrap();
    assert_eq!(drv.pop_used(), Err(Error::UnknownUsedId { id: id + 1 }));
    m.write(USED + 4, &u32::from(id).to_le_bytes()).unwrap();
    assert_eq!(drv.pop_used(), Ok(Some((id, 0))));
    // The same id again is no longer outstanding.
    write_u16(&m, USED + 2, 2);
    m.write(USED + 12, &u32::from(id).to_le_bytes()).unwrap();
    assert_eq!(drv.pop_used(), Err(Error::UnknownUsedId { id }));
}

#[test]
fn driver_kick_follows_no_notify_and_avail_event() {
    let m = mem();
    let mut drv = DriverQueue::new(&m, &config(4, RingFeatures::default())).unwrap();
    assert!(!drv.publish(), "nothing added");
    drv.add(&[(0x8000, 1)], &[]).unwrap();
    write_u16(&m, USED, layout::USED_F_NO_NOTIFY);
    assert!(!drv.publish());
    let mut drv = DriverQueue::new(&m, &config(4, event_idx())).unwrap();
    write_u16(&m, USED + 4 + 8 * 4, 1); // avail_event = 1
    drv.add(&[(0x8000, 1)], &[]).unwrap();
    assert!(!drv.publish()); // 0 -> 1 does not pass 1
    drv.add(&[(0x8000, 1)], &[]).unwrap();
    assert!(drv.publish()); // 1 -> 2 does
}

#[test]
fn driver_interrupt_suppression() {
    let m = mem();
    let mut drv = DriverQueue::new(&m, &config(4, RingFeatures::default())).unwrap();
    drv.disable_interrupts();
    assert_eq!(read_u16(&m, AVAIL), 1);
    assert!(!drv.enable_interrupts());
    assert_eq!(read_u16(&m, AVAIL), 0);
    let mut drv = DriverQueue::new_at(&m, &config(4, event_idx()), 10).unwrap();
    drv.disable_interrupts();
    assert_eq!(read_u16(&m, AVAIL + 4 + 8), 9);
    assert!(!drv.enable_interrupts());
    assert_eq!(read_u16(&m, AVAIL + 4 + 8), 10);
    write_u16(&m, USED + 2, 11);
    assert!(drv.enable_interrupts());
}

#[test]
fn driver_expands_in_order_batches() {
    let m = mem();
    let f = RingFeatures {
        in_order: true,
        ..RingFeatures::default()
    };
    let c = config(8, f);
    let mut drv = DriverQueue::new_at(&m, &c, 65534).unwrap();
    let a = drv.add(&[(0x8000, 1)], &[(0x8100, 10)]).unwrap();
    let b = drv.add(&[], &[(0x8200, 20), (0x8300, 5)]).unwrap();
    let cc = drv.add(&[(0x8400, 1)], &[(0x8500, 30)]).unwrap();
    assert_eq!((a, b, cc), (0, 2, 4), "descriptors in table order");
    drv.publish();
    // One used entry for the batch a, b, c at the slot of a (65534 % 8 = 6):
    // id = c, len = 7; used idx advances by 3.
    m.write(USED + 4 + 8 * 6, &4u32.to_le_bytes()).unwrap();
    m.write(USED + 4 + 8 * 6 + 4, &7u32.to_le_bytes()).unwrap();
    write_u16(&m, USED + 2, 1);
    assert_eq!(drv.pop_used(), Ok(Some((0, 10))));
    assert_eq!(drv.pop_used(), Ok(Some((2, 25))));
    assert_eq!(drv.pop_used(), Ok(Some((4, 7))));
    assert_eq!(drv.pop_used(), Ok(None));
    assert_eq!(drv.free_descriptors(), 8);
    // The next buffer uses descriptor 6 (FIFO free list, table order).
    assert_eq!(drv.add(&[(0x8000, 1)], &[]), Ok(6));
}

#[test]
fn driver_free_list_survives_out_of_order_completion() {
    let m = mem();
    let c = config(4, RingFeatures::default());
    let mut drv = DriverQueue::new(&m, &c).unwrap();
    let mut dev = DeviceQueue::new(&m, &c, RingPosition::default()).unwrap();
    for round in 0..50u32 {
        let a = drv.add(&[(0x8000, 1)], &[(0x8100, 2)]).unwrap();
        let b = drv.add(&[(0x8200, 3)], &[]).unwrap();
        drv.publish();
        let ca = dev.pop().unwrap().unwrap();
        let cb = dev.pop().unwrap().unwrap();
        assert_eq!((ca.id(), cb.id()), (a, b));
        assert_eq!(dev.descriptors(&ca).count(), 2);
        dev.push(&cb, round).unwrap();
        dev.push(&ca, 1).unwrap();
        assert_eq!(drv.pop_used(), Ok(Some((b, round))));
        assert_eq!(drv.pop_used(), Ok(Some((a, 1))));
        assert_eq!(drv.free_descriptors(), 4);
    }
}
