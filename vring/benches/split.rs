//! Device-side cost of the split ring: our engine against rust-vmm's
//! `virtio-queue` in the same run, over the same `vm_memory::GuestMemoryMmap`
//! and the same ring layout, refilled by the same driver between timed
//! stretches.
//!
//! Every case reports time per chain. Timed: pop, walk every descriptor
//! (reading addr/len/flags), complete (used element + used idx) and the
//! notification decision. Not timed: the driver refilling the ring and
//! collecting used buffers.
//!
//!     cargo bench -p vring --bench split -- --warm-up-time 1 --measurement-time 3
// Setup failures in a bench are bench failures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vring::RingPosition;
use vring::split::{DeviceQueue, DriverQueue};

#[path = "common/mod.rs"]
mod common;
use common::{CASES, DESC, DEVICE_AREA, DRIVER_AREA, Driver, Q, Shape, config, memory, refill};

/// virtio-queue's names for the split ring's driver and device areas.
const AVAIL: u64 = DRIVER_AREA;
const USED: u64 = DEVICE_AREA;

/// Our device: pop, walk, push — `batch` chains completed per publish.
fn ours(iters: u64, shape: Shape, batch: usize) -> Duration {
    let mem = memory();
    let mut drv = DriverQueue::new(&mem, &config()).unwrap();
    let mut dev = DeviceQueue::new(&mem, &config(), RingPosition::default()).unwrap();
    let mut total = Duration::ZERO;
    let mut done = 0;
    let mut chains = Vec::with_capacity(batch);
    while done < iters {
        let n = shape.per_ring().min(iters - done);
        refill(&mut drv, shape, n);
        let start = Instant::now();
        let mut left = n;
        while left > 0 {
            chains.clear();
            while chains.len() < batch {
                match dev.pop().unwrap() {
                    Some(c) => chains.push(c),
                    None => break,
                }
            }
            for c in &chains {
                let mut bytes = 0u64;
                for d in dev.descriptors(c) {
                    let d = d.unwrap();
                    bytes += u64::from(d.len) + d.addr + u64::from(d.writable);
                }
                black_box(bytes);
                dev.add_used(c, 0).unwrap();
            }
            black_box(dev.publish_used());
            left -= chains.len() as u64;
        }
        total += start.elapsed();
        drv.drain();
        done += n;
    }
    total
}

/// virtio-queue's device on the same ring: the same work.
fn theirs(iters: u64, shape: Shape, batch: usize) -> Duration {
    let mem = memory();
    let mut drv = DriverQueue::new(&mem, &config()).unwrap();
    let mut q = Queue::new(Q).unwrap();
    q.set_size(Q);
    q.try_set_desc_table_address(GuestAddress(DESC)).unwrap();
    q.try_set_avail_ring_address(GuestAddress(AVAIL)).unwrap();
    q.try_set_used_ring_address(GuestAddress(USED)).unwrap();
    q.set_event_idx(true);
    q.set_ready(true);
    let mut total = Duration::ZERO;
    let mut done = 0;
    let mut heads = Vec::with_capacity(batch);
    while done < iters {
        let n = shape.per_ring().min(iters - done);
        refill(&mut drv, shape, n);
        let start = Instant::now();
        let mut left = n;
        while left > 0 {
            heads.clear();
            while heads.len() < batch {
                match q.pop_descriptor_chain(&mem) {
                    Some(mut chain) => {
                        let mut bytes = 0u64;
                        for d in chain.by_ref() {
                            bytes += u64::from(d.len()) + d.addr().0 + u64::from(d.is_write_only());
                        }
                        black_box(bytes);
                        heads.push(chain.head_index());
                    }
                    None => break,
                }
            }
            for &h in &heads {
                q.add_used(&mem, h, 0).unwrap();
            }
            black_box(q.needs_notification(&mem).unwrap());
            left -= heads.len() as u64;
        }
        total += start.elapsed();
        drv.drain();
        done += n;
    }
    total
}

fn bench(c: &mut Criterion) {
    for (name, shape, batch) in CASES {
        let mut g = c.benchmark_group(format!("split/{name}"));
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::new("vring", "per chain"), |b| {
            b.iter_custom(|iters| ours(iters, shape, batch));
        });
        g.bench_function(BenchmarkId::new("virtio-queue", "per chain"), |b| {
            b.iter_custom(|iters| theirs(iters, shape, batch));
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
