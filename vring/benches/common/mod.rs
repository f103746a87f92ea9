//! What both device-side benches (`split.rs`, `packed.rs`) set up the same way: the ring
//! layout in one `vm_memory::GuestMemoryMmap`, the chain shapes and cases measured, and
//! the driver that refills the ring between timed stretches (not timed).

use vm_memory::{GuestAddress, GuestMemoryMmap};
use vring::{QueueConfig, RingFeatures, packed, split};

pub const Q: u16 = 256;
pub const DESC: u64 = 0x0;
/// Packed: driver / device event areas; split: avail / used rings.
pub const DRIVER_AREA: u64 = 0x1000;
pub const DEVICE_AREA: u64 = 0x2000;
pub const TABLES: u64 = 0x10000;
pub const DATA: u64 = 0x100000;

pub fn config() -> QueueConfig {
    QueueConfig {
        size: Q,
        desc_table: DESC,
        driver_area: DRIVER_AREA,
        device_area: DEVICE_AREA,
        features: RingFeatures {
            event_idx: true,
            indirect: true,
            in_order: false,
        },
    }
}

pub fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x400000)]).unwrap()
}

/// What a chain looks like.
#[derive(Clone, Copy)]
pub enum Shape {
    /// One readable descriptor.
    Direct1,
    /// `n` direct descriptors, half readable, half writable.
    DirectN(usize),
    /// One ring descriptor pointing at a table of `n` elements.
    Indirect(usize),
}

impl Shape {
    /// Chains per refill of the ring.
    pub fn per_ring(self) -> u64 {
        match self {
            Shape::Direct1 | Shape::Indirect(_) => u64::from(Q),
            Shape::DirectN(n) => u64::from(Q) / n as u64,
        }
    }
}

/// The cases, as (name, shape, chains per publish).
pub const CASES: [(&str, Shape, usize); 4] = [
    ("1-desc pop+push", Shape::Direct1, 1),
    ("128-desc chain walk", Shape::DirectN(128), 1),
    ("indirect 8 pop+walk+push", Shape::Indirect(8), 1),
    ("1-desc batch 32", Shape::Direct1, 32),
];

/// The driver calls both layouts share.
pub trait Driver {
    fn add(&mut self, r: &[(u64, u32)], w: &[(u64, u32)]);
    fn add_indirect(&mut self, table: u64, r: &[(u64, u32)], w: &[(u64, u32)]);
    fn publish(&mut self);
    /// Collects every used buffer.
    fn drain(&mut self);
}

macro_rules! driver {
    ($t:ty) => {
        impl Driver for $t {
            fn add(&mut self, r: &[(u64, u32)], w: &[(u64, u32)]) {
                <$t>::add(self, r, w).unwrap();
            }
            fn add_indirect(&mut self, table: u64, r: &[(u64, u32)], w: &[(u64, u32)]) {
                <$t>::add_indirect(self, table, r, w).unwrap();
            }
            fn publish(&mut self) {
                <$t>::publish(self);
            }
            fn drain(&mut self) {
                while self.pop_used().unwrap().is_some() {}
            }
        }
    };
}

driver!(packed::DriverQueue<&GuestMemoryMmap>);
driver!(split::DriverQueue<&GuestMemoryMmap>);

/// Fills the ring with `count` chains of `shape` and publishes them.
pub fn refill(drv: &mut impl Driver, shape: Shape, count: u64) {
    let mut elems = Vec::new();
    for i in 0..count {
        let base = DATA + i * 0x1000;
        match shape {
            Shape::Direct1 => drv.add(&[(base, 64)], &[]),
            Shape::DirectN(n) | Shape::Indirect(n) => {
                elems.clear();
                elems.extend((0..n as u64).map(|k| (base + k * 16, 16u32)));
                let (r, w) = elems.split_at(n / 2);
                if let Shape::Indirect(_) = shape {
                    drv.add_indirect(TABLES + i * 0x100, r, w);
                } else {
                    drv.add(r, w);
                }
            }
        }
    }
    drv.publish();
}
