//! Device-side cost of the packed ring, against our split ring in the same
//! run: the same cases as `benches/split.rs` (1-descriptor chains pop+push,
//! a 128-descriptor chain walk, indirect chains, batches of 32), over the
//! same `vm_memory::GuestMemoryMmap`, refilled by each layout's own driver
//! between timed stretches.
//!
//! Every case reports time per chain. Timed: pop, walk every descriptor
//! (reading addr/len/flags), complete (used descriptor / used element + idx)
//! and the notification decision. Not timed: the driver refilling the ring
//! and collecting used buffers.
//!
//!     cargo bench -p vring --bench packed -- --warm-up-time 1 --measurement-time 3
// Setup failures in a bench are bench failures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use vm_memory::GuestMemoryMmap;
use vring::{RingPosition, packed, split};

#[path = "common/mod.rs"]
mod common;
use common::{CASES, Driver, Shape, config, memory, refill};

/// The timed part, one function per layout (not inlined: the same code for
/// every case, and a name for callgrind's `--toggle-collect`): pop, walk,
/// push `n` chains, `batch` chains completed per publish.
macro_rules! device_loop {
    ($name:ident, $layout:ident) => {
        #[inline(never)]
        fn $name(
            dev: &mut $layout::DeviceQueue<&GuestMemoryMmap>,
            n: u64,
            batch: usize,
            chains: &mut Vec<$layout::AvailChain>,
        ) {
            let mut left = n;
            while left > 0 {
                chains.clear();
                while chains.len() < batch {
                    match dev.pop().unwrap() {
                        Some(c) => chains.push(c),
                        None => break,
                    }
                }
                for c in chains.iter() {
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
        }
    };
}

device_loop!(device_loop_packed, packed);
device_loop!(device_loop_split, split);

/// `iters` chains of `shape` through a new device of each layout: the ring
/// refilled by the layout's driver (not timed), then the device loop (timed).
macro_rules! device_run {
    ($layout:ident, $device_loop:ident, $iters:expr, $shape:expr, $batch:expr) => {{
        let (iters, shape, batch): (u64, Shape, usize) = ($iters, $shape, $batch);
        let mem = memory();
        let mut drv = $layout::DriverQueue::new(&mem, &config()).unwrap();
        let mut dev = $layout::DeviceQueue::new(&mem, &config(), RingPosition::default()).unwrap();
        let mut total = Duration::ZERO;
        let mut done = 0;
        let mut chains = Vec::with_capacity(batch);
        while done < iters {
            let n = shape.per_ring().min(iters - done);
            refill(&mut drv, shape, n);
            let start = Instant::now();
            $device_loop(&mut dev, n, batch, &mut chains);
            total += start.elapsed();
            drv.drain();
            done += n;
        }
        total
    }};
}

fn bench(c: &mut Criterion) {
    for (name, shape, batch) in CASES {
        let mut g = c.benchmark_group(format!("packed/{name}"));
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::new("packed", "per chain"), |b| {
            b.iter_custom(|iters| device_run!(packed, device_loop_packed, iters, shape, batch));
        });
        g.bench_function(BenchmarkId::new("split", "per chain"), |b| {
            b.iter_custom(|iters| device_run!(split, device_loop_split, iters, shape, batch));
        });
        g.finish();
    }
}

criterion_group!(benches, bench);

/// Instruction counts: with `VRING_BENCH_IR="<packed|split> <case 0-3>
/// <chains>"` the binary runs that many chains of one case through one
/// layout's device loop, without criterion, for
/// `valgrind --tool=callgrind --toggle-collect='*device_loop_<layout>*'`
/// (Ir in the device loop / chains = Ir per chain).
fn main() {
    if let Ok(spec) = std::env::var("VRING_BENCH_IR") {
        let mut it = spec.split_whitespace();
        let layout = it.next().unwrap_or("packed");
        let case: usize = it.next().map_or(0, |s| s.parse().unwrap());
        let chains: u64 = it.next().map_or(25600, |s| s.parse().unwrap());
        let (_, shape, batch) = CASES[case];
        let t = match layout {
            "split" => device_run!(split, device_loop_split, chains, shape, batch),
            _ => device_run!(packed, device_loop_packed, chains, shape, batch),
        };
        eprintln!("{layout} case {case}: {chains} chains, {t:?} in the device loop");
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
