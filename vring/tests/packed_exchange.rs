//! Property test: a packed driver and device exchange buffers through guest
//! memory under random interleavings, with and without EVENT_IDX, indirect
//! tables and IN_ORDER, queue sizes 1..=256 (not only powers of two),
//! starting positions just before the end of the ring on either lap, random
//! batch sizes and random completion order.
//!
//! Checked: every buffer comes back exactly once with the length the device
//! wrote; the device sees exactly the elements and bytes the driver offered;
//! and no needed notification is suppressed — when one side sleeps (it
//! re-enabled notifications and was told nothing was pending), the other
//! side's next publish of new entries must say "notify".
// Helpers outside #[test] fns may unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::HashMap;

use proptest::prelude::*;
use vring::memory::BufferMemory;
use vring::packed::{AvailChain, DeviceQueue, DriverQueue};
use vring::{Descriptor, QueueConfig, RingFeatures, RingPosition};

const RING: u64 = 0x1_0000;
const EVENTS: u64 = 0x800;
const TABLES: u64 = 0x2_0000;
const DATA: u64 = 0x4_0000;
/// Guest bytes per buffer for its elements.
const PER_ID: u64 = 0x400;
/// Guest bytes per buffer for its indirect table (6 entries at most).
const PER_TABLE: u64 = 0x80;
const MEM: usize = 0x4_0000 + 256 * 0x400;

#[derive(Debug, Clone)]
enum Op {
    Add {
        readable: Vec<u32>,
        writable: Vec<u32>,
        indirect: bool,
    },
    Publish,
    PopUsed,
    EnableInterrupts,
    DisableInterrupts,
    /// The device pops up to `n` buffers, walking each right away.
    Pop {
        n: usize,
    },
    /// The device completes `n` walked buffers from `pick` and publishes.
    Complete {
        pick: usize,
        n: usize,
    },
    EnableNotifications,
    DisableNotifications,
}

fn op() -> impl Strategy<Value = Op> {
    let lens = || prop::collection::vec(1u32..=48, 0..=3);
    prop_oneof![
        5 => (lens(), lens(), any::<bool>()).prop_map(|(readable, writable, indirect)| Op::Add {
            readable,
            writable,
            indirect
        }),
        2 => Just(Op::Publish),
        3 => Just(Op::PopUsed),
        1 => Just(Op::EnableInterrupts),
        1 => Just(Op::DisableInterrupts),
        3 => (1usize..=6).prop_map(|n| Op::Pop { n }),
        3 => (any::<usize>(), 1usize..=8).prop_map(|(pick, n)| Op::Complete { pick, n }),
        1 => Just(Op::EnableNotifications),
        1 => Just(Op::DisableNotifications),
    ]
}

/// What the driver offered under an id.
#[derive(Debug, Clone)]
struct Offered {
    elements: Vec<Descriptor>,
    payload: Vec<u8>,
    writable: u32,
}

struct Exchange<'m> {
    driver: DriverQueue<&'m BufferMemory>,
    device: DeviceQueue<&'m BufferMemory>,
    mem: &'m BufferMemory,
    features: RingFeatures,
    offered: HashMap<u16, Offered>,
    /// Added but not yet published.
    unpublished: usize,
    /// Popped and walked by the device, not completed: (chain, len written).
    walked: Vec<(AvailChain, u32)>,
    /// Used lengths the device reported, by id.
    completed: HashMap<u16, u32>,
    returned: usize,
    serial: u8,
    /// The device sleeps until kicked.
    device_asleep: bool,
    /// The driver sleeps until interrupted.
    driver_asleep: bool,
    /// Which data area (by index) each outstanding id uses.
    slots_in_use: Vec<(u16, u16)>,
}

impl<'m> Exchange<'m> {
    fn add(&mut self, readable: &[u32], writable: &[u32], indirect: bool) {
        let n = readable.len() + writable.len();
        if n == 0 {
            assert_eq!(self.driver.add(&[], &[]), Err(vring::Error::EmptyBuffer));
            return;
        }
        let use_indirect = indirect && self.features.indirect;
        if use_indirect && n > usize::from(self.driver.size()) {
            assert!(matches!(
                self.driver.add_indirect(TABLES, &vec![(DATA, 1); n], &[]),
                Err(vring::Error::ChainTooLong { .. })
            ));
            return;
        }
        let needed = if use_indirect { 1 } else { n as u16 };
        if needed > self.driver.free_descriptors()
            || self.driver.outstanding() >= usize::from(self.driver.size())
        {
            assert!(matches!(
                self.driver.add(&vec![(DATA, 1); n], &[]),
                Err(vring::Error::RingFull { .. })
            ));
            return;
        }
        let mut offsets = Vec::new();
        let mut off = 0u64;
        for &l in readable.iter().chain(writable) {
            offsets.push(off);
            off += u64::from(l);
        }
        // Place the elements in a data area no outstanding buffer uses.
        let slot = (0..256u16).find(|s| !self.in_use_slot(*s)).unwrap();
        let base = DATA + PER_ID * u64::from(slot);
        let r: Vec<(u64, u32)> = readable
            .iter()
            .zip(&offsets)
            .map(|(&l, &o)| (base + o, l))
            .collect();
        let w: Vec<(u64, u32)> = writable
            .iter()
            .zip(&offsets[readable.len()..])
            .map(|(&l, &o)| (base + o, l))
            .collect();
        let id = if use_indirect {
            self.driver
                .add_indirect(TABLES + PER_TABLE * u64::from(slot), &r, &w)
                .unwrap()
        } else {
            self.driver.add(&r, &w).unwrap()
        };
        self.serial = self.serial.wrapping_add(1);
        let total_r: u32 = readable.iter().sum();
        let payload: Vec<u8> = (0..total_r)
            .map(|i| self.serial.wrapping_add(i as u8))
            .collect();
        let mut p = 0usize;
        for &(a, l) in &r {
            self.mem.write(a, &payload[p..p + l as usize]).unwrap();
            p += l as usize;
        }
        let elements = r
            .iter()
            .map(|&(addr, len)| Descriptor {
                addr,
                len,
                writable: false,
            })
            .chain(w.iter().map(|&(addr, len)| Descriptor {
                addr,
                len,
                writable: true,
            }))
            .collect();
        assert!(
            self.offered
                .insert(
                    id,
                    Offered {
                        elements,
                        payload,
                        writable: writable.iter().sum(),
                    }
                )
                .is_none()
        );
        self.slots_in_use.push((id, slot));
        self.unpublished += 1;
    }

    fn in_use_slot(&self, s: u16) -> bool {
        self.slots_in_use.iter().any(|&(_, x)| x == s)
    }

    fn publish(&mut self) {
        let kick = self.driver.publish();
        if self.unpublished > 0 && self.device_asleep {
            assert!(kick, "a kick was suppressed while the device slept");
        }
        if kick {
            self.device_asleep = false;
        }
        self.unpublished = 0;
    }

    fn pop_used(&mut self) {
        match self.driver.pop_used().unwrap() {
            Some((id, len)) => {
                let want = self.completed.remove(&id).expect("used id was completed");
                assert_eq!(len, want, "used length of {id}");
                self.offered.remove(&id).unwrap();
                self.slots_in_use.retain(|&(i, _)| i != id);
                self.returned += 1;
            }
            // Every completion is published right away: it must be visible.
            None => assert!(
                self.completed.is_empty(),
                "published used buffers are invisible"
            ),
        }
    }

    fn driver_sleep(&mut self) {
        if !self.driver.enable_interrupts() {
            self.driver_asleep = true;
        }
    }

    fn device_pop(&mut self, n: usize) {
        for _ in 0..n {
            let Some(chain) = self.device.pop().unwrap() else {
                if !self.device.enable_notifications().unwrap() {
                    self.device_asleep = true;
                }
                return;
            };
            let offered = self.offered[&chain.id()].clone();
            let got: Vec<Descriptor> = self
                .device
                .descriptors(&chain)
                .map(Result::unwrap)
                .collect();
            assert_eq!(got, offered.elements, "elements of {}", chain.id());
            let mut buf = vec![0u8; offered.payload.len()];
            self.device.reader(&chain).read_exact(&mut buf).unwrap();
            assert_eq!(buf, offered.payload);
            // Write part of the writable space.
            let want = offered.writable / 2 + u32::from(chain.id() % 2);
            let want = want.min(offered.writable);
            let mut w = self.device.writer(&chain);
            w.write_all(&vec![0xa5; want as usize]).unwrap();
            self.walked.push((chain, w.bytes_written()));
        }
    }

    fn complete(&mut self, pick: usize, n: usize) {
        if self.walked.is_empty() {
            return;
        }
        for k in 0..n.min(self.walked.len()) {
            let i = if self.features.in_order {
                0
            } else {
                (pick + k) % self.walked.len()
            };
            let (chain, len) = self.walked.remove(i);
            self.device.add_used(&chain, len).unwrap();
            self.completed.insert(chain.id(), len);
        }
        let notify = self.device.publish_used();
        if self.driver_asleep {
            assert!(notify, "an interrupt was suppressed while the driver slept");
        }
        if notify {
            self.driver_asleep = false;
        }
    }

    fn run(&mut self, op: &Op) {
        match op {
            Op::Add {
                readable,
                writable,
                indirect,
            } => self.add(readable, writable, *indirect),
            Op::Publish => self.publish(),
            Op::PopUsed => self.pop_used(),
            Op::EnableInterrupts => self.driver_sleep(),
            Op::DisableInterrupts => {
                self.driver.disable_interrupts();
                self.driver_asleep = false;
            }
            Op::Pop { n } => {
                if !self.device_asleep {
                    self.device_pop(*n)
                }
            }
            Op::Complete { pick, n } => self.complete(*pick, *n),
            Op::EnableNotifications => {
                if !self.device.enable_notifications().unwrap() {
                    self.device_asleep = true;
                }
            }
            Op::DisableNotifications => {
                if !self.device_asleep {
                    self.device.disable_notifications();
                }
            }
        }
    }

    /// Publishes, then lets both sides run until everything came back.
    fn drain(&mut self) {
        self.publish();
        self.device_asleep = false;
        for _ in 0..10_000 {
            self.device_pop(8);
            self.complete(0, 8);
            while self.driver.outstanding() > 0 {
                let before = self.returned;
                self.pop_used();
                if self.returned == before {
                    break;
                }
            }
            if self.offered.is_empty() {
                return;
            }
            self.device_asleep = false;
        }
        panic!("not drained: {:?}", self.offered.keys());
    }
}

fn exchange(size: u16, features: RingFeatures, start_back: u16, start_wrap: bool, ops: &[Op]) {
    let mem = BufferMemory::new(0, MEM);
    let config = QueueConfig {
        size,
        desc_table: RING,
        driver_area: EVENTS,
        device_area: EVENTS + 4,
        features,
    };
    let slot = size - 1 - start_back % size;
    let driver = DriverQueue::new_at(&mem, &config, slot, start_wrap).unwrap();
    let position = RingPosition {
        next_avail: slot,
        avail_wrap: start_wrap,
        next_used: slot,
        used_wrap: start_wrap,
    };
    let device = DeviceQueue::new(&mem, &config, position).unwrap();
    let mut x = Exchange {
        driver,
        device,
        mem: &mem,
        features,
        offered: HashMap::new(),
        unpublished: 0,
        walked: Vec::new(),
        completed: HashMap::new(),
        returned: 0,
        serial: 0,
        device_asleep: false,
        driver_asleep: false,
        slots_in_use: Vec::new(),
    };
    for op in ops {
        x.run(op);
    }
    x.drain();
    assert!(x.completed.is_empty());
    assert_eq!(x.driver.free_descriptors(), size);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn driver_and_device_exchange_every_buffer_once(
        size in prop_oneof![1u16..=8, 9u16..=256],
        event_idx in any::<bool>(),
        indirect in any::<bool>(),
        in_order in any::<bool>(),
        start_back in 0u16..4,
        start_wrap in any::<bool>(),
        ops in prop::collection::vec(op(), 0..160),
    ) {
        let features = RingFeatures { event_idx, indirect, in_order };
        exchange(size, features, start_back, start_wrap, &ops);
    }
}

#[test]
fn a_long_run_on_a_small_odd_ring() {
    // Many laps of a 3-slot ring with every feature.
    let features = RingFeatures {
        event_idx: true,
        indirect: true,
        in_order: false,
    };
    let mut ops = Vec::new();
    for i in 0..600usize {
        ops.push(Op::Add {
            readable: vec![4; i % 3],
            writable: vec![8],
            indirect: i % 4 == 0,
        });
        if i % 2 == 1 {
            ops.push(Op::Publish);
            ops.push(Op::Pop { n: 2 });
            ops.push(Op::Complete { pick: i, n: 2 });
            ops.push(Op::PopUsed);
            ops.push(Op::PopUsed);
            ops.push(Op::EnableInterrupts);
        }
    }
    exchange(3, features, 0, false, &ops);
}
