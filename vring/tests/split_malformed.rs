//! Malformed split rings (virtqueue spec §2.11): each layout yields its typed
//! error, never a panic, a silent end of chain or an access outside memory.
// Helpers outside #[test] fns may unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use vring::desc::{DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};
use vring::memory::BufferMemory;
use vring::split::DeviceQueue;
use vring::{Descriptor, Error, QueueConfig, RingArea, RingFeatures, RingPosition};

const MEM: usize = 0x10000;
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
const Q: u16 = 8;

fn config(features: RingFeatures) -> QueueConfig {
    QueueConfig {
        size: Q,
        desc_table: DESC,
        driver_area: AVAIL,
        device_area: USED,
        features,
    }
}

fn indirect() -> RingFeatures {
    RingFeatures {
        indirect: true,
        ..RingFeatures::default()
    }
}

/// Guest memory with descriptors and one offered head.
struct Ring {
    mem: BufferMemory,
}

impl Ring {
    fn new() -> Self {
        Ring {
            mem: BufferMemory::new(0, MEM),
        }
    }

    fn desc(&self, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) -> &Self {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&addr.to_le_bytes());
        b[8..12].copy_from_slice(&len.to_le_bytes());
        b[12..14].copy_from_slice(&flags.to_le_bytes());
        b[14..].copy_from_slice(&next.to_le_bytes());
        self.mem.write(table + 16 * u64::from(i), &b).unwrap();
        self
    }

    fn avail(&self, idx: u16, heads: &[u16]) -> &Self {
        for (k, h) in heads.iter().enumerate() {
            self.mem
                .write(AVAIL + 4 + 2 * (k as u64 % u64::from(Q)), &h.to_le_bytes())
                .unwrap();
        }
        self.mem.write(AVAIL + 2, &idx.to_le_bytes()).unwrap();
        self
    }

    /// Pops head 0 and walks it, returning what the walk yielded.
    fn walk(&self, features: RingFeatures) -> Vec<Result<Descriptor, Error>> {
        self.avail(1, &[0]);
        let mut q =
            DeviceQueue::new(&self.mem, &config(features), RingPosition::default()).unwrap();
        let chain = q.pop().unwrap().unwrap();
        let mut it = q.descriptors(&chain);
        let v: Vec<_> = it.by_ref().take(100_000).collect();
        assert!(it.next().is_none(), "the walk is fused after its end");
        v
    }

    /// The walk's error, checking it is the last item.
    fn walk_err(&self, features: RingFeatures) -> Error {
        let v = self.walk(features);
        let last = v.last().cloned().expect("at least one item");
        assert!(v[..v.len() - 1].iter().all(Result::is_ok));
        last.expect_err("the chain must end in an error")
    }
}

fn new_err(config: &QueueConfig) -> Error {
    let ring = Ring::new();
    DeviceQueue::new(&ring.mem, config, RingPosition::default()).unwrap_err()
}

// ---- ring setup ----

#[test]
fn m01_queue_size_zero() {
    let mut c = config(RingFeatures::default());
    c.size = 0;
    assert_eq!(new_err(&c), Error::InvalidQueueSize { size: 0 });
}

#[test]
fn m02_queue_size_not_a_power_of_two() {
    let mut c = config(RingFeatures::default());
    c.size = 48;
    assert_eq!(new_err(&c), Error::InvalidQueueSize { size: 48 });
}

#[test]
fn m03_queue_size_above_32768() {
    let mut c = config(RingFeatures::default());
    c.size = u16::MAX;
    assert_eq!(new_err(&c), Error::InvalidQueueSize { size: 65535 });
}

#[test]
fn m04_descriptor_table_misaligned() {
    let mut c = config(RingFeatures::default());
    c.desc_table = 0x104;
    assert_eq!(
        new_err(&c),
        Error::Misaligned {
            area: RingArea::Descriptors,
            addr: 0x104,
            align: 16
        }
    );
}

#[test]
fn m05_used_ring_misaligned() {
    let mut c = config(RingFeatures::default());
    c.device_area = USED + 2;
    assert_eq!(
        new_err(&c),
        Error::Misaligned {
            area: RingArea::Device,
            addr: USED + 2,
            align: 4
        }
    );
}

#[test]
fn m06_avail_ring_unmapped() {
    let mut c = config(RingFeatures::default());
    c.driver_area = MEM as u64 - 4;
    assert_eq!(
        new_err(&c),
        Error::RingUnmapped {
            area: RingArea::Driver,
            addr: MEM as u64 - 4,
            len: 6 + 2 * u64::from(Q)
        }
    );
}

#[test]
fn m07_descriptor_table_address_overflows() {
    let mut c = config(RingFeatures::default());
    c.desc_table = u64::MAX - 15;
    assert!(matches!(
        new_err(&c),
        Error::RingUnmapped {
            area: RingArea::Descriptors,
            ..
        }
    ));
}

// ---- available ring ----

#[test]
fn m08_avail_index_jumps_past_the_queue_size() {
    let ring = Ring::new();
    ring.avail(Q + 1, &[0]);
    let mut q = DeviceQueue::new(
        &ring.mem,
        &config(RingFeatures::default()),
        RingPosition::default(),
    )
    .unwrap();
    assert_eq!(
        q.pop(),
        Err(Error::AvailIndexJump {
            avail_idx: Q + 1,
            last_avail: 0,
            size: Q
        })
    );
}

#[test]
fn m09_avail_index_moves_backwards() {
    // Behind last_avail by one = 65535 entries ahead.
    let ring = Ring::new();
    ring.avail(4, &[0]);
    let pos = RingPosition {
        next_avail: 5,
        ..RingPosition::default()
    };
    let mut q = DeviceQueue::new(&ring.mem, &config(RingFeatures::default()), pos).unwrap();
    assert!(matches!(
        q.pop(),
        Err(Error::AvailIndexJump { avail_idx: 4, .. })
    ));
}

#[test]
fn m10_head_out_of_range() {
    let ring = Ring::new();
    ring.avail(1, &[Q]);
    let mut q = DeviceQueue::new(
        &ring.mem,
        &config(RingFeatures::default()),
        RingPosition::default(),
    )
    .unwrap();
    assert_eq!(q.pop(), Err(Error::HeadOutOfRange { head: Q, size: Q }));
}

// ---- direct chains ----

#[test]
fn m11_next_out_of_range() {
    let ring = Ring::new();
    ring.desc(DESC, 0, 0x8000, 4, DESC_F_NEXT, Q);
    assert_eq!(
        ring.walk_err(RingFeatures::default()),
        Error::NextOutOfRange {
            next: Q,
            size: Q.into()
        }
    );
}

#[test]
fn m12_self_loop() {
    let ring = Ring::new();
    ring.desc(DESC, 0, 0x8000, 4, DESC_F_NEXT, 0);
    assert_eq!(
        ring.walk_err(RingFeatures::default()),
        Error::ChainTooLong { max: Q.into() }
    );
}

#[test]
fn m13_two_descriptor_loop() {
    let ring = Ring::new();
    ring.desc(DESC, 0, 0x8000, 4, DESC_F_NEXT, 5)
        .desc(DESC, 5, 0x8000, 4, DESC_F_NEXT, 0);
    let v = ring.walk(RingFeatures::default());
    assert_eq!(v.len(), usize::from(Q) + 1, "Q descriptors, then the error");
    assert_eq!(v.last(), Some(&Err(Error::ChainTooLong { max: Q.into() })));
}

#[test]
fn m14_readable_after_writable() {
    let ring = Ring::new();
    ring.desc(DESC, 0, 0x8000, 4, DESC_F_NEXT | DESC_F_WRITE, 1)
        .desc(DESC, 1, 0x8100, 4, 0, 0);
    assert_eq!(
        ring.walk_err(RingFeatures::default()),
        Error::ReadableAfterWritable
    );
}

#[test]
fn m15_descriptor_address_overflows() {
    let ring = Ring::new();
    ring.desc(DESC, 0, u64::MAX - 8, 16, 0, 0);
    assert_eq!(
        ring.walk_err(RingFeatures::default()),
        Error::AddressOverflow {
            addr: u64::MAX - 8,
            len: 16
        }
    );
}

#[test]
fn m16_chain_longer_than_4gib() {
    let ring = Ring::new();
    ring.desc(DESC, 0, 0x1_0000_0000, u32::MAX, DESC_F_NEXT, 1)
        .desc(DESC, 1, 0x2_0000_0000, 2, 0, 0);
    assert_eq!(
        ring.walk_err(RingFeatures::default()),
        Error::ChainLengthOverflow
    );
}

#[test]
fn m17_buffer_outside_guest_memory() {
    let ring = Ring::new();
    ring.desc(DESC, 0, MEM as u64 - 2, 4, 0, 0).avail(1, &[0]);
    let mut q = DeviceQueue::new(
        &ring.mem,
        &config(RingFeatures::default()),
        RingPosition::default(),
    )
    .unwrap();
    let chain = q.pop().unwrap().unwrap();
    let mut buf = [0u8; 4];
    assert_eq!(
        q.reader(&chain).read(&mut buf),
        Err(Error::Untranslatable {
            addr: MEM as u64,
            len: 2
        })
    );
}

// ---- indirect tables ----

#[test]
fn m18_indirect_not_negotiated() {
    let ring = Ring::new();
    ring.desc(DESC, 0, 0x4000, 32, DESC_F_INDIRECT, 0);
    assert_eq!(
        ring.walk_err(RingFeatures::default()),
        Error::IndirectNotNegotiated
    );
}

#[test]
fn m19_indirect_with_next() {
    let ring = Ring::new();
    ring.desc(DESC, 0, 0x4000, 32, DESC_F_INDIRECT | DESC_F_NEXT, 1);
    assert_eq!(ring.walk_err(indirect()), Error::IndirectWithNext);
}

#[test]
fn m20_nested_indirect() {
    let ring = Ring::new();
    ring.desc(DESC, 0, 0x4000, 32, DESC_F_INDIRECT, 0)
        .desc(0x4000, 0, 0x8000, 4, DESC_F_NEXT, 1)
        .desc(0x4000, 1, 0x5000, 16, DESC_F_INDIRECT, 0);
    assert_eq!(ring.walk_err(indirect()), Error::NestedIndirect);
}

#[test]
fn m21_indirect_length_zero() {
    let ring = Ring::new();
    ring.desc(DESC, 0, 0x4000, 0, DESC_F_INDIRECT, 0);
    assert_eq!(ring.walk_err(indirect()), Error::IndirectLength { len: 0 });
}

#[test]
fn m22_indirect_length_not_a_multiple_of_16() {
    let ring = Ring::new();
    ring.desc(DESC, 0, 0x4000, 24, DESC_F_INDIRECT, 0);
    assert_eq!(ring.walk_err(indirect()), Error::IndirectLength { len: 24 });
}

#[test]
fn m23_indirect_next_out_of_table() {
    let ring = Ring::new();
    ring.desc(DESC, 0, 0x4000, 32, DESC_F_INDIRECT, 0)
        .desc(0x4000, 0, 0x8000, 4, DESC_F_NEXT, 2);
    assert_eq!(
        ring.walk_err(indirect()),
        Error::NextOutOfRange { next: 2, size: 2 }
    );
}

#[test]
fn m24_indirect_loop() {
    let ring = Ring::new();
    ring.desc(DESC, 0, 0x4000, 48, DESC_F_INDIRECT, 0)
        .desc(0x4000, 0, 0x8000, 4, DESC_F_NEXT, 1)
        .desc(0x4000, 1, 0x8000, 4, DESC_F_NEXT, 0);
    assert_eq!(ring.walk_err(indirect()), Error::ChainTooLong { max: 3 });
}

#[test]
fn m25_indirect_table_unmapped() {
    let ring = Ring::new();
    ring.desc(DESC, 0, MEM as u64 - 16, 32, DESC_F_INDIRECT, 0);
    assert_eq!(
        ring.walk_err(indirect()),
        Error::Untranslatable {
            addr: MEM as u64 - 16,
            len: 32
        }
    );
}

#[test]
fn m26_indirect_table_address_overflows() {
    let ring = Ring::new();
    ring.desc(DESC, 0, u64::MAX - 15, 32, DESC_F_INDIRECT, 0);
    assert!(matches!(
        ring.walk_err(indirect()),
        Error::AddressOverflow { .. }
    ));
}

#[test]
fn m27_readable_after_writable_across_the_indirect_boundary() {
    let ring = Ring::new();
    ring.desc(DESC, 0, 0x8000, 4, DESC_F_NEXT | DESC_F_WRITE, 1)
        .desc(DESC, 1, 0x4000, 16, DESC_F_INDIRECT, 0)
        .desc(0x4000, 0, 0x8100, 4, 0, 0);
    assert_eq!(ring.walk_err(indirect()), Error::ReadableAfterWritable);
}

#[test]
fn m28_loop_through_direct_descriptors_before_an_indirect() {
    // 0 -> 1 -> 0 ...: the indirect table at 2 is never reached.
    let ring = Ring::new();
    ring.desc(DESC, 0, 0x8000, 4, DESC_F_NEXT, 1)
        .desc(DESC, 1, 0x8000, 4, DESC_F_NEXT, 0)
        .desc(DESC, 2, 0x4000, 16, DESC_F_INDIRECT, 0);
    assert_eq!(
        ring.walk_err(indirect()),
        Error::ChainTooLong { max: Q.into() }
    );
}

#[test]
fn m29_errors_reach_the_writer_too() {
    let ring = Ring::new();
    ring.desc(DESC, 0, 0x8000, 4, DESC_F_WRITE | DESC_F_NEXT, 0)
        .avail(1, &[0]);
    let mut q = DeviceQueue::new(
        &ring.mem,
        &config(RingFeatures::default()),
        RingPosition::default(),
    )
    .unwrap();
    let chain = q.pop().unwrap().unwrap();
    let mut w = q.writer(&chain);
    assert_eq!(
        w.write(&[0u8; 1000]),
        Err(Error::ChainTooLong { max: Q.into() })
    );
}
