//! Property test: a split driver and device exchange buffers through guest
//! memory under random interleavings, with and without EVENT_IDX and
//! indirect tables, queue sizes 1..=256, indexes that wrap at 65536, and
//! random completion order.
//!
//! Checked: every buffer comes back exactly once, with the length the device
//! wrote; the device sees exactly the elements and bytes the driver offered;
//! and no needed notification is suppressed — whenever one side is waiting
//! (it re-enabled notifications and was told nothing was pending), the other
//! side's next publish of new entries must say "notify".
// Helpers outside #[test] fns may unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::HashMap;

use proptest::prelude::*;
use vring::memory::BufferMemory;
use vring::split::{AvailChain, DeviceQueue, DriverQueue};
use vring::{Descriptor, QueueConfig, RingFeatures, RingPosition};

const TABLES: u64 = 0x4000;
const DATA: u64 = 0x10000;
const SLOT: u64 = 0x400;
const MEM: usize = 0x10000 + 256 * 0x400;

#[derive(Debug, Clone)]
enum Op {
    /// Driver adds a buffer with these element lengths.
    Add {
        readable: Vec<u32>,
        writable: Vec<u32>,
        indirect: bool,
    },
    Publish,
    PopUsed,
    EnableInterrupts,
    DisableInterrupts,
    /// Device pops one chain, reads it, writes `want` bytes.
    Pop {
        want: u32,
    },
    /// Device completes `n` popped chains starting at `pick` (mod pending).
    Complete {
        pick: usize,
        n: usize,
    },
    EnableNotifications,
    DisableNotifications,
}

fn op() -> impl Strategy<Value = Op> {
    let lens = || prop::collection::vec(1u32..=64, 0..=3);
    prop_oneof![
        4 => (lens(), lens(), any::<bool>()).prop_map(|(readable, writable, indirect)| Op::Add {
            readable,
            writable,
            indirect
        }),
        2 => Just(Op::Publish),
        2 => Just(Op::PopUsed),
        1 => Just(Op::EnableInterrupts),
        1 => Just(Op::DisableInterrupts),
        4 => (0u32..=200).prop_map(|want| Op::Pop { want }),
        3 => (any::<usize>(), 1usize..=32).prop_map(|(pick, n)| Op::Complete { pick, n }),
        1 => Just(Op::EnableNotifications),
        1 => Just(Op::DisableNotifications),
    ]
}

struct Offered {
    slot: u64,
    readable: Vec<(u64, u32)>,
    writable: Vec<(u64, u32)>,
}

struct Exchange<'m> {
    mem: &'m BufferMemory,
    drv: DriverQueue<&'m BufferMemory>,
    dev: DeviceQueue<&'m BufferMemory>,
    indirect: bool,
    free_slots: Vec<u64>,
    offered: HashMap<u16, Offered>,
    /// Popped by the device, not completed: chain and bytes written.
    pending: Vec<(AvailChain, u32)>,
    /// Completed by the device, not yet taken back: id -> len.
    used: HashMap<u16, u32>,
    driver_waiting: bool,
    device_waiting: bool,
    unpublished_avail: bool,
    unpublished_used: bool,
    added: u64,
    returned: u64,
}

impl<'m> Exchange<'m> {
    fn new(mem: &'m BufferMemory, size: u16, features: RingFeatures, start: u16) -> Self {
        let config = QueueConfig {
            size,
            desc_table: 0,
            driver_area: 0x1000,
            device_area: 0x2000,
            features,
        };
        let drv = DriverQueue::new_at(mem, &config, start).unwrap();
        let pos = RingPosition {
            next_avail: start,
            ..RingPosition::default()
        };
        let dev = DeviceQueue::new(mem, &config, pos).unwrap();
        Exchange {
            mem,
            drv,
            dev,
            indirect: features.indirect,
            free_slots: (0..256).rev().collect(),
            offered: HashMap::new(),
            pending: Vec::new(),
            used: HashMap::new(),
            driver_waiting: false,
            device_waiting: false,
            unpublished_avail: false,
            unpublished_used: false,
            added: 0,
            returned: 0,
        }
    }

    fn add(&mut self, readable: &[u32], writable: &[u32], indirect: bool) {
        if readable.is_empty() && writable.is_empty() {
            return;
        }
        let Some(&slot) = self.free_slots.last() else {
            return;
        };
        let base = DATA + slot * SLOT;
        let mut at = base;
        let mut place = |lens: &[u32]| -> Vec<(u64, u32)> {
            lens.iter()
                .map(|&l| {
                    let e = (at, l);
                    at += 64;
                    e
                })
                .collect()
        };
        let r = place(readable);
        let w = place(writable);
        for &(a, l) in &r {
            self.mem.write(a, &vec![slot as u8; l as usize]).unwrap();
        }
        let res = if indirect && self.indirect {
            self.drv.add_indirect(TABLES + slot * 128, &r, &w)
        } else {
            self.drv.add(&r, &w)
        };
        match res {
            Ok(id) => {
                self.free_slots.pop();
                let prev = self.offered.insert(
                    id,
                    Offered {
                        slot,
                        readable: r,
                        writable: w,
                    },
                );
                assert!(prev.is_none(), "id {id} handed out twice");
                self.unpublished_avail = true;
                self.added += 1;
            }
            Err(vring::Error::RingFull { .. }) => {}
            Err(e) => panic!("add: {e}"),
        }
    }

    fn publish(&mut self) {
        let kick = self.drv.publish();
        if self.unpublished_avail && self.device_waiting {
            assert!(kick, "a kick was suppressed while the device waited");
        }
        if kick {
            self.device_waiting = false;
        }
        self.unpublished_avail = false;
    }

    fn pop_used(&mut self) {
        while let Some((id, len)) = self.drv.pop_used().unwrap() {
            let expected = self.used.remove(&id).expect("used id was completed");
            assert_eq!(len, expected, "length of {id}");
            let o = self.offered.remove(&id).expect("id was offered");
            self.free_slots.push(o.slot);
            self.returned += 1;
            self.driver_waiting = false;
        }
    }

    fn pop(&mut self, want: u32) {
        let Some(chain) = self.dev.pop().unwrap() else {
            return;
        };
        self.device_waiting = false;
        let o = &self.offered[&chain.id()];
        let descs: Vec<Descriptor> = self
            .dev
            .descriptors(&chain)
            .collect::<Result<_, _>>()
            .unwrap();
        let expected: Vec<Descriptor> = o
            .readable
            .iter()
            .map(|&(addr, len)| (addr, len, false))
            .chain(o.writable.iter().map(|&(addr, len)| (addr, len, true)))
            .map(|(addr, len, writable)| Descriptor {
                addr,
                len,
                writable,
            })
            .collect();
        assert_eq!(descs, expected);
        let total: u32 = o.readable.iter().map(|e| e.1).sum();
        let mut buf = vec![0u8; total as usize + 8];
        let n = self.dev.reader(&chain).read(&mut buf).unwrap();
        assert_eq!(n, total as usize);
        assert!(buf[..n].iter().all(|&b| b == o.slot as u8));
        let mut w = self.dev.writer(&chain);
        let written = w.write(&vec![0xa5; want as usize]).unwrap();
        let cap: u32 = o.writable.iter().map(|e| e.1).sum();
        assert_eq!(written as u32, want.min(cap));
        assert_eq!(w.bytes_written(), written as u32);
        self.pending.push((chain, written as u32));
    }

    fn complete(&mut self, pick: usize, n: usize) {
        for _ in 0..n {
            if self.pending.is_empty() {
                break;
            }
            let (chain, len) = self.pending.swap_remove(pick % self.pending.len());
            self.dev.add_used(&chain, len).unwrap();
            assert!(self.used.insert(chain.id(), len).is_none());
            self.unpublished_used = true;
        }
        let notify = self.dev.publish_used();
        if self.unpublished_used && self.driver_waiting {
            assert!(
                notify,
                "an interrupt was suppressed while the driver waited"
            );
        }
        if notify {
            self.driver_waiting = false;
        }
        self.unpublished_used = false;
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
            Op::EnableInterrupts => {
                // Waiting means: enabled and told nothing is pending.
                self.driver_waiting = !self.drv.enable_interrupts();
            }
            Op::DisableInterrupts => {
                self.drv.disable_interrupts();
                self.driver_waiting = false;
            }
            Op::Pop { want } => self.pop(*want),
            Op::Complete { pick, n } => self.complete(*pick, *n),
            Op::EnableNotifications => {
                self.device_waiting = !self.dev.enable_notifications().unwrap();
            }
            Op::DisableNotifications => {
                self.dev.disable_notifications();
                self.device_waiting = false;
            }
        }
    }

    /// Completes everything and checks that every buffer came back.
    fn drain(&mut self) {
        assert!(self.dev.pop().unwrap().is_none(), "all chains were popped");
        self.complete(0, usize::MAX);
        self.pop_used();
        assert!(self.offered.is_empty(), "buffers never came back");
        assert_eq!(self.added, self.returned);
        assert_eq!(self.drv.free_descriptors(), self.drv.size());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn driver_and_device_exchange_every_buffer_once(
        size_log2 in 0u32..=8,
        event_idx in any::<bool>(),
        indirect in any::<bool>(),
        start_back in 0u16..600,
        ops in prop::collection::vec(op(), 1..400),
    ) {
        let size = 1u16 << size_log2;
        let features = RingFeatures { event_idx, indirect, in_order: false };
        let mem = BufferMemory::new(0, MEM);
        let start = 65535u16.wrapping_sub(start_back);
        let mut x = Exchange::new(&mem, size, features, start);
        for op in &ops {
            x.run(op);
        }
        // Pop what is left, then complete and collect everything.
        x.publish();
        while x.pending.len() < usize::from(size) {
            let before = x.pending.len();
            x.pop(0);
            if x.pending.len() == before {
                break;
            }
        }
        x.drain();
    }
}
