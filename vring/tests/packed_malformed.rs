//! Malformed packed rings: each layout is a typed error, never a panic, a
//! silent end of the buffer or an access outside guest memory (virtqueue
//! spec §2.11 and the packed rules of §3.4–§3.6).
// Helpers outside #[test] fns may unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use vring::memory::BufferMemory;
use vring::packed::{DeviceQueue, DriverQueue};
use vring::{Descriptor, Error, QueueConfig, RingFeatures, RingPosition};

const Q: u16 = 8;
const RING: u64 = 0x1000;
const DRIVER: u64 = 0x2000;
const DEVICE: u64 = 0x2004;
const MEM: usize = 0x10000;

const NEXT: u16 = 1;
const WRITE: u16 = 2;
const INDIRECT: u16 = 4;
/// AVAIL = 1, USED = 0: available on the first lap.
const AV: u16 = 1 << 7;

fn config(indirect: bool) -> QueueConfig {
    QueueConfig {
        size: Q,
        desc_table: RING,
        driver_area: DRIVER,
        device_area: DEVICE,
        features: RingFeatures {
            indirect,
            ..Default::default()
        },
    }
}

fn desc(addr: u64, len: u32, id: u16, flags: u16) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&addr.to_le_bytes());
    b[8..12].copy_from_slice(&len.to_le_bytes());
    b[12..14].copy_from_slice(&id.to_le_bytes());
    b[14..].copy_from_slice(&flags.to_le_bytes());
    b
}

/// A hand-written ring: descriptors placed slot by slot.
struct Ring {
    mem: BufferMemory,
}

impl Ring {
    fn new() -> Self {
        Ring {
            mem: BufferMemory::new(0, MEM),
        }
    }

    /// Writes descriptors `(addr, len, id, flags)` from slot 0, all marked
    /// available on the first lap (AV added).
    fn list(self, descs: &[(u64, u32, u16, u16)]) -> Self {
        for (slot, &(addr, len, id, flags)) in descs.iter().enumerate() {
            self.mem
                .write(RING + 16 * slot as u64, &desc(addr, len, id, flags | AV))
                .unwrap();
        }
        self
    }

    /// Writes an indirect table at `addr`.
    fn table(self, addr: u64, entries: &[(u64, u32, u16)]) -> Self {
        for (i, &(a, len, flags)) in entries.iter().enumerate() {
            self.mem
                .write(addr + 16 * i as u64, &desc(a, len, 0, flags))
                .unwrap();
        }
        self
    }

    fn device(&self, indirect: bool) -> DeviceQueue<&BufferMemory> {
        DeviceQueue::new(&self.mem, &config(indirect), RingPosition::default()).unwrap()
    }

    fn pop_err(&self, indirect: bool) -> Error {
        self.device(indirect).pop().unwrap_err()
    }

    /// Pops the buffer and walks it: the elements before the error, and the
    /// error. Checks that the iterator is fused after it.
    fn walk_err(&self, indirect: bool) -> (Vec<Descriptor>, Error) {
        let mut q = self.device(indirect);
        let chain = q.pop().unwrap().expect("a buffer is available");
        let mut it = q.descriptors(&chain);
        let mut ok = Vec::new();
        loop {
            match it.next() {
                Some(Ok(d)) => ok.push(d),
                Some(Err(e)) => {
                    assert!(it.next().is_none(), "fused after {e:?}");
                    assert!(it.next().is_none());
                    return (ok, e);
                }
                None => panic!("ended without an error after {ok:?}"),
            }
        }
    }
}

#[test]
fn buffer_id_out_of_range() {
    let e = Ring::new().list(&[(0x4000, 8, Q, 0)]).pop_err(false);
    assert_eq!(e, Error::BufferIdOutOfRange { id: Q, size: Q });
}

#[test]
fn buffer_id_out_of_range_in_the_last_descriptor_of_a_list() {
    // The id of the head is ignored; the last descriptor's counts.
    let e = Ring::new()
        .list(&[(0x4000, 8, 0, NEXT), (0x4100, 8, 0xffff, 0)])
        .pop_err(false);
    assert_eq!(
        e,
        Error::BufferIdOutOfRange {
            id: 0xffff,
            size: Q
        }
    );
}

#[test]
fn list_longer_than_the_queue() {
    let all_next: Vec<_> = (0..Q)
        .map(|i| (0x4000 + 16 * u64::from(i), 8, 0, NEXT))
        .collect();
    let e = Ring::new().list(&all_next).pop_err(false);
    assert_eq!(e, Error::ChainTooLong { max: u32::from(Q) });
}

#[test]
fn list_slot_not_available() {
    let r = Ring::new().list(&[(0x4000, 8, 0, NEXT)]);
    // Slot 1 stays zero: not available on the first lap.
    assert_eq!(r.pop_err(false), Error::DescriptorNotAvailable { slot: 1 });
    // A slot marked used (AVAIL == USED) is not available either.
    r.mem
        .write(RING + 16, &desc(0x4100, 8, 0, AV | (1 << 15)))
        .unwrap();
    assert_eq!(r.pop_err(false), Error::DescriptorNotAvailable { slot: 1 });
}

#[test]
fn indirect_at_the_head_of_a_next_list() {
    let (ok, e) = Ring::new()
        .list(&[(0x5000, 32, 0, INDIRECT | NEXT), (0x4100, 8, 1, 0)])
        .walk_err(true);
    assert!(ok.is_empty());
    assert_eq!(e, Error::IndirectWithNext);
}

#[test]
fn indirect_at_the_end_of_a_next_list() {
    let (ok, e) = Ring::new()
        .list(&[(0x4000, 8, 0, NEXT), (0x5000, 32, 1, INDIRECT)])
        .walk_err(true);
    assert_eq!(ok.len(), 1);
    assert_eq!(e, Error::IndirectWithNext);
}

#[test]
fn indirect_not_negotiated() {
    let (_, e) = Ring::new()
        .list(&[(0x5000, 16, 0, INDIRECT)])
        .table(0x5000, &[(0x4000, 8, 0)])
        .walk_err(false);
    assert_eq!(e, Error::IndirectNotNegotiated);
}

#[test]
fn indirect_table_of_length_zero() {
    let (_, e) = Ring::new().list(&[(0x5000, 0, 0, INDIRECT)]).walk_err(true);
    assert_eq!(e, Error::IndirectLength { len: 0 });
}

#[test]
fn indirect_table_length_not_a_multiple_of_16() {
    let (_, e) = Ring::new()
        .list(&[(0x5000, 24, 0, INDIRECT)])
        .walk_err(true);
    assert_eq!(e, Error::IndirectLength { len: 24 });
}

#[test]
fn indirect_table_longer_than_the_queue() {
    let len = 16 * (u32::from(Q) + 1);
    let (_, e) = Ring::new()
        .list(&[(0x5000, len, 0, INDIRECT)])
        .walk_err(true);
    assert_eq!(e, Error::ChainTooLong { max: u32::from(Q) });
}

#[test]
fn nested_indirect() {
    let (ok, e) = Ring::new()
        .list(&[(0x5000, 32, 0, INDIRECT)])
        .table(0x5000, &[(0x4000, 8, 0), (0x6000, 16, INDIRECT)])
        .walk_err(true);
    assert_eq!(ok.len(), 1);
    assert_eq!(e, Error::NestedIndirect);
}

#[test]
fn indirect_table_outside_guest_memory() {
    let (_, e) = Ring::new()
        .list(&[(MEM as u64 - 16, 32, 0, INDIRECT)])
        .walk_err(true);
    assert!(matches!(e, Error::Untranslatable { .. }), "{e:?}");
}

#[test]
fn indirect_table_address_overflow() {
    let (_, e) = Ring::new()
        .list(&[(u64::MAX - 15, 32, 0, INDIRECT)])
        .walk_err(true);
    assert!(matches!(e, Error::AddressOverflow { .. }), "{e:?}");
}

#[test]
fn readable_after_writable_in_a_list() {
    let (ok, e) = Ring::new()
        .list(&[(0x4000, 8, 0, NEXT | WRITE), (0x4100, 8, 0, 0)])
        .walk_err(false);
    assert_eq!(ok.len(), 1);
    assert_eq!(e, Error::ReadableAfterWritable);
}

#[test]
fn readable_after_writable_in_an_indirect_table() {
    let (ok, e) = Ring::new()
        .list(&[(0x5000, 48, 0, INDIRECT)])
        .table(
            0x5000,
            &[(0x4000, 8, 0), (0x4100, 8, WRITE), (0x4200, 8, 0)],
        )
        .walk_err(true);
    assert_eq!(ok.len(), 2);
    assert_eq!(e, Error::ReadableAfterWritable);
}

#[test]
fn element_address_overflow() {
    let (_, e) = Ring::new().list(&[(u64::MAX - 3, 8, 0, 0)]).walk_err(false);
    assert_eq!(
        e,
        Error::AddressOverflow {
            addr: u64::MAX - 3,
            len: 8
        }
    );
}

#[test]
fn total_length_above_4_gib() {
    let (ok, e) = Ring::new()
        .list(&[(0x1_0000_0000, u32::MAX, 0, NEXT), (0x2_0000_0000, 2, 0, 0)])
        .walk_err(false);
    assert_eq!(ok.len(), 1);
    assert_eq!(e, Error::ChainLengthOverflow);
}

#[test]
fn total_length_of_exactly_4_gib_is_accepted() {
    let r = Ring::new().list(&[(0x1_0000_0000, u32::MAX, 0, NEXT), (0x2_0000_0000, 1, 0, 0)]);
    let mut q = r.device(false);
    let chain = q.pop().unwrap().unwrap();
    assert_eq!(q.descriptors(&chain).filter(Result::is_ok).count(), 2);
}

#[test]
fn element_outside_guest_memory_is_reported_by_the_reader() {
    let r = Ring::new().list(&[(MEM as u64 - 4, 8, 0, 0)]);
    let mut q = r.device(false);
    let chain = q.pop().unwrap().unwrap();
    let mut buf = [0u8; 8];
    let e = q.reader(&chain).read(&mut buf).unwrap_err();
    assert!(matches!(e, Error::Untranslatable { .. }), "{e:?}");
}

#[test]
fn indirect_flag_appearing_after_pop_is_caught_while_walking() {
    // A hostile driver rewrites slot 1 between pop and walk.
    let r = Ring::new().list(&[(0x4000, 8, 0, NEXT), (0x4100, 8, 0, 0)]);
    let mut q = r.device(true);
    let chain = q.pop().unwrap().unwrap();
    r.mem
        .write(RING + 16, &desc(0x5000, 16, 0, INDIRECT | AV))
        .unwrap();
    let mut it = q.descriptors(&chain);
    assert!(it.next().unwrap().is_ok());
    assert_eq!(it.next().unwrap(), Err(Error::IndirectWithNext));
    assert!(it.next().is_none());
}

#[test]
fn chain_overwritten_by_an_earlier_completion() {
    // Buffer A (slots 0..3) is still unwalked when buffer B (slot 3) is
    // completed: B's used descriptor goes to slot 0 and the used position
    // moves into A's list.
    let r = Ring::new().list(&[
        (0x4000, 8, 0, NEXT),
        (0x4100, 8, 0, NEXT),
        (0x4200, 8, 0, 0),
        (0x4300, 8, 1, 0),
        (0x4400, 8, 2, 0),
    ]);
    let mut q = r.device(false);
    let a = q.pop().unwrap().unwrap();
    let b = q.pop().unwrap().unwrap();
    let c = q.pop().unwrap().unwrap();
    assert_eq!((a.slots(), b.slots(), c.slots()), (3, 1, 1));
    // Walking A is fine while nothing passed its slots.
    assert_eq!(q.descriptors(&a).count(), 3);
    q.push(&b, 0).unwrap();
    // One slot used: A's tail (slots 1, 2) is still intact.
    assert_eq!(q.descriptors(&a).filter(Result::is_ok).count(), 3);
    q.push(&c, 0).unwrap();
    // Now slot 1 was overwritten: a typed error, not stale data.
    let mut it = q.descriptors(&a);
    assert_eq!(it.next(), Some(Err(Error::ChainOverwritten { id: 0 })));
    assert!(it.next().is_none());
    // One-slot buffers never read the ring again.
    assert_eq!(q.descriptors(&c).count(), 1);
}

#[test]
fn driver_rejects_hostile_used_descriptors() {
    let mem = BufferMemory::new(0, MEM);
    let mut driver = DriverQueue::new(&mem, &config(false)).unwrap();
    let id = driver.add(&[(0x4000, 8)], &[]).unwrap();
    driver.publish();
    let used = AV | (1 << 15);
    // An id out of range.
    mem.write(RING, &desc(0, 0, Q + 3, used)).unwrap();
    assert_eq!(
        driver.pop_used(),
        Err(Error::BufferIdOutOfRange { id: Q + 3, size: Q })
    );
    // An id in range that is not outstanding.
    mem.write(RING, &desc(0, 0, id + 1, used)).unwrap();
    assert_eq!(driver.pop_used(), Err(Error::UnknownUsedId { id: id + 1 }));
    // The right one.
    mem.write(RING, &desc(0, 5, id, used)).unwrap();
    assert_eq!(driver.pop_used(), Ok(Some((id, 5))));
    // Replaying it (same slot content) is not used on the next position.
    assert_eq!(driver.pop_used(), Ok(None));
}

#[test]
fn setup_errors() {
    let mem = BufferMemory::new(0, MEM);
    let with = |f: &dyn Fn(&mut QueueConfig)| {
        let mut c = config(false);
        f(&mut c);
        DeviceQueue::new(&mem, &c, RingPosition::default()).map(|_| ())
    };
    assert_eq!(
        with(&|c| c.size = 0),
        Err(Error::InvalidQueueSize { size: 0 })
    );
    assert!(matches!(
        with(&|c| c.size = 32768 + 1),
        Err(Error::InvalidQueueSize { .. }) | Err(Error::RingUnmapped { .. })
    ));
    assert!(with(&|c| c.size = 7).is_ok(), "any size up to 32768");
    assert!(matches!(
        with(&|c| c.desc_table = RING + 8),
        Err(Error::Misaligned { align: 16, .. })
    ));
    assert!(matches!(
        with(&|c| c.driver_area = DRIVER + 2),
        Err(Error::Misaligned { align: 4, .. })
    ));
    assert!(matches!(
        with(&|c| c.device_area = MEM as u64),
        Err(Error::RingUnmapped { .. })
    ));
    assert!(matches!(
        with(&|c| c.desc_table = MEM as u64 - 16 * 4),
        Err(Error::RingUnmapped { .. })
    ));
    let pos = RingPosition {
        next_avail: Q,
        ..Default::default()
    };
    assert!(matches!(
        DeviceQueue::new(&mem, &config(false), pos),
        Err(Error::InvalidPosition { .. })
    ));
}
