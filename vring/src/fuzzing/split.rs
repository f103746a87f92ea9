//! Body of the `split_device` fuzz target: a hostile driver's guest memory
//! and a script of device operations.
//!
//! Input format (hand-parsed, so seeds can be generated from real rings):
//!
//! | bytes | meaning |
//! |---|---|
//! | 0 | queue size: `1 << (b % 9)` (1..=256) |
//! | 1 | bit 0 EVENT_IDX, bit 1 INDIRECT_DESC, bit 2 IN_ORDER, bit 3 a second memory region, bit 4 a misaligned used ring |
//! | 2..4 | `next_avail` of the starting position (le16) |
//! | 4..6 | length `n` of the script (le16) |
//! | 6..6+n | the script: one opcode byte per operation, some followed by a parameter byte |
//! | rest | the image of guest memory from address 0 (rings at [`layout`]) |
//!
//! The device runs the script, then drains the ring (pop, walk, push until
//! empty). Any ring error ends the run, as it would stop a real queue; no
//! input may make it panic, hang or touch memory outside the regions.

use crate::inflight::{RingLayout, queue_region_size};
use crate::log::DirtyLog;
use crate::memory::{BufferMemory, SharedRegion};
use crate::split::{AvailChain, DeviceQueue};
use crate::{QueueConfig, RingFeatures, RingPosition};

/// Guest address of the second memory region (input byte 1, bit 3).
pub const SECOND_REGION: u64 = 0x10_0000;
/// Size of the second memory region.
pub const SECOND_REGION_LEN: usize = 0x1000;
/// Most bytes a Reader or Writer op moves.
const MAX_COPY: usize = 0x1_0000;
/// Most chains held popped and not completed.
const MAX_PENDING: usize = 64;

/// Script opcodes (`byte % OPS`).
pub mod op {
    /// Pop a chain.
    pub const POP: u8 = 0;
    /// Walk the newest popped chain's descriptors.
    pub const WALK: u8 = 1;
    /// Read the newest popped chain's readable part.
    pub const READ: u8 = 2;
    /// Write the newest popped chain's writable part.
    pub const WRITE: u8 = 3;
    /// `add_used` of the oldest popped chain; parameter: len / 16.
    pub const ADD_USED: u8 = 4;
    /// `publish_used`.
    pub const PUBLISH: u8 = 5;
    /// `push` of the oldest popped chain; parameter: len.
    pub const PUSH: u8 = 6;
    /// `enable_notifications`.
    pub const ENABLE: u8 = 7;
    /// `disable_notifications`.
    pub const DISABLE: u8 = 8;
    /// Save the position and build a new queue from it.
    pub const RESTART: u8 = 9;
    /// Attach the inflight region and recover from it.
    pub const INFLIGHT: u8 = 10;
    /// Scribble on the inflight region; parameter: offset / 2, then value.
    pub const SCRIBBLE: u8 = 11;
    /// Turn on dirty logging; parameter: used ring log address / 4096.
    pub const LOG: u8 = 12;
    /// Number of opcodes.
    pub const OPS: u8 = 13;
}

/// Where the rings of a queue of `size` live in the fuzz input's memory, and
/// how large region 0 is.
pub fn layout(size: u16, features: RingFeatures, misaligned_used: bool) -> (QueueConfig, usize) {
    let q = u64::from(size);
    let avail = 16 * q;
    let used = (avail + 6 + 2 * q).next_multiple_of(4) + if misaligned_used { 2 } else { 0 };
    let end = used + 6 + 8 * q;
    let config = QueueConfig {
        size,
        desc_table: 0,
        driver_area: avail,
        device_area: used,
        features,
    };
    (config, (end as usize + 0x4000).next_multiple_of(0x1000))
}

/// Builds the input bytes for a memory `image` and a `script`.
pub fn encode(size_log2: u8, flags: u8, next_avail: u16, script: &[u8], image: &[u8]) -> Vec<u8> {
    let mut v = vec![size_log2, flags];
    v.extend_from_slice(&next_avail.to_le_bytes());
    v.extend_from_slice(&(script.len() as u16).to_le_bytes());
    v.extend_from_slice(script);
    v.extend_from_slice(image);
    v
}

struct Script<'a> {
    bytes: &'a [u8],
}

impl Script<'_> {
    fn next(&mut self) -> Option<u8> {
        let (&b, rest) = self.bytes.split_first()?;
        self.bytes = rest;
        Some(b)
    }
}

/// Runs the device side over `data` (see the module docs). Never panics.
pub fn split_device(data: &[u8]) {
    let _ = outcome(data);
}

/// How the run over `data` ended: `None` if the input is too short.
fn outcome(data: &[u8]) -> Option<Result<(), crate::Error>> {
    let [size_b, flags, p0, p1, n0, n1, rest @ ..] = data else {
        return None;
    };
    let size = 1u16 << (size_b % 9);
    let features = RingFeatures {
        event_idx: flags & 1 != 0,
        indirect: flags & 2 != 0,
        in_order: flags & 4 != 0,
    };
    let n = usize::from(u16::from_le_bytes([*n0, *n1])).min(rest.len());
    let (script, image) = rest.split_at(n);
    let (config, len) = layout(size, features, flags & 16 != 0);
    let mem = if flags & 8 != 0 {
        BufferMemory::with_regions(&[(0, len), (SECOND_REGION, SECOND_REGION_LEN)])
    } else {
        BufferMemory::new(0, len)
    };
    let image = image.get(..len).unwrap_or(image);
    if let Err(e) = mem.write(0, image) {
        return Some(Err(e));
    }
    let pos = RingPosition {
        next_avail: u16::from_le_bytes([*p0, *p1]),
        ..RingPosition::default()
    };
    let region = SharedRegion::zeroed(queue_region_size(RingLayout::Split, size));
    Some(run(&mem, &config, pos, &region, Script { bytes: script }))
}

fn run(
    mem: &BufferMemory,
    config: &QueueConfig,
    pos: RingPosition,
    region: &SharedRegion,
    mut script: Script<'_>,
) -> Result<(), crate::Error> {
    let mut q = DeviceQueue::new(mem, config, pos)?;
    let mut pending: Vec<AvailChain> = Vec::with_capacity(MAX_PENDING);
    let mut scratch = vec![0u8; MAX_COPY];
    while let Some(b) = script.next() {
        match b % op::OPS {
            op::POP => {
                if pending.len() < MAX_PENDING
                    && let Some(c) = q.pop()?
                {
                    pending.push(c);
                }
            }
            op::WALK => {
                if let Some(c) = pending.last() {
                    for d in q.descriptors(c) {
                        d?;
                    }
                }
            }
            op::READ => {
                if let Some(c) = pending.last() {
                    q.reader(c).read(&mut scratch)?;
                }
            }
            op::WRITE => {
                if let Some(c) = pending.last() {
                    let mut w = q.writer(c);
                    w.write(&scratch)?;
                }
            }
            op::ADD_USED => {
                let len = u32::from(script.next().unwrap_or(0)) * 16;
                if !pending.is_empty() {
                    let c = pending.remove(0);
                    q.add_used(&c, len)?;
                }
            }
            op::PUBLISH => {
                q.publish_used();
            }
            op::PUSH => {
                let len = script.next().unwrap_or(0).into();
                if !pending.is_empty() {
                    let c = pending.remove(0);
                    q.push(&c, len)?;
                }
            }
            op::ENABLE => {
                q.enable_notifications()?;
            }
            op::DISABLE => q.disable_notifications(),
            op::RESTART => {
                let inflight = q.inflight().is_some();
                q = DeviceQueue::new(mem, config, q.position())?;
                if inflight {
                    q.set_inflight(Some(region.clone()))?;
                }
            }
            op::INFLIGHT => {
                q.set_inflight(Some(region.clone()))?;
                let chains = q.recover_inflight()?;
                pending.clear();
                pending.extend(chains.into_iter().take(MAX_PENDING));
            }
            op::SCRIBBLE => {
                let off = usize::from(script.next().unwrap_or(0)) * 2;
                let v = script.next().unwrap_or(0);
                let _ = region.as_slice().write_at(off % region.len().max(1), &[v]);
            }
            _ => {
                let addr = u64::from(script.next().unwrap_or(0)) * 0x1000;
                let log = DirtyLog::new(SharedRegion::zeroed(64));
                q.set_dirty_log(Some(log), Some(addr));
            }
        }
    }
    // Drain: every chain left is walked and completed, until the ring is
    // empty or broken.
    for c in pending.drain(..) {
        q.push(&c, 0)?;
    }
    for _ in 0..=config.size {
        let Some(c) = q.pop()? else {
            break;
        };
        for d in q.descriptors(&c) {
            d?;
        }
        q.push(&c, 0)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desc::{DESC_F_INDIRECT, DESC_F_NEXT};
    use crate::split::DriverQueue;
    use std::path::PathBuf;

    fn seed_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/split_device")
    }

    #[test]
    fn replays_the_seed_corpus() {
        let dir = seed_dir();
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("fuzz/seeds/split_device exists") {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let result = outcome(&std::fs::read(&path).unwrap());
            // The generated seeds say what they should do; others (fuzzer
            // findings) only must not panic.
            if name.starts_with("valid_") {
                assert_eq!(result, Some(Ok(())), "{name}");
            } else if name.starts_with("bad_") {
                assert!(matches!(result, Some(Err(_))), "{name}: {result:?}");
            }
            n += 1;
        }
        assert!(n >= 10, "only {n} seeds in {}", dir.display());
    }

    #[test]
    fn survives_pseudo_random_inputs() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..600usize {
            let data: Vec<u8> = (0..len * 7)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            split_device(&data);
        }
    }

    /// A ring image with `buffers` chains offered by a real driver.
    fn image(
        size_log2: u8,
        flags: u8,
        start: u16,
        fill: impl FnOnce(&mut DriverQueue<&BufferMemory>),
    ) -> Vec<u8> {
        let size = 1u16 << size_log2;
        let features = RingFeatures {
            event_idx: flags & 1 != 0,
            indirect: flags & 2 != 0,
            in_order: flags & 4 != 0,
        };
        let (config, len) = layout(size, features, false);
        let mem = BufferMemory::new(0, len);
        let mut drv = DriverQueue::new_at(&mem, &config, start).unwrap();
        fill(&mut drv);
        drv.publish();
        let mut img = vec![0u8; len];
        mem.read(0, &mut img).unwrap();
        // Trim trailing zeroes past the rings: the harness zero-fills.
        let rings_end = (config.device_area + 6 + 8 * u64::from(size)) as usize;
        while img.len() > rings_end && img.last() == Some(&0) {
            img.pop();
        }
        img
    }

    fn data_area(size: u16) -> u64 {
        let (_, len) = layout(size, RingFeatures::default(), false);
        len as u64 - 0x3000
    }

    fn put_desc(img: &mut Vec<u8>, at: u64, addr: u64, len: u32, flags: u16, next: u16) {
        let at = at as usize;
        if img.len() < at + 16 {
            img.resize(at + 16, 0);
        }
        img[at..at + 8].copy_from_slice(&addr.to_le_bytes());
        img[at + 8..at + 12].copy_from_slice(&len.to_le_bytes());
        img[at + 12..at + 14].copy_from_slice(&flags.to_le_bytes());
        img[at + 14..at + 16].copy_from_slice(&next.to_le_bytes());
    }

    /// Writes the seed corpus (run with `--ignored` after changing the input
    /// format).
    #[test]
    #[ignore]
    fn generate_seed_corpus() {
        use op::*;
        let dir = seed_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let mut seeds: Vec<(&str, Vec<u8>)> = Vec::new();
        let all_ops = [
            POP, WALK, READ, WRITE, PUSH, 7, POP, POP, ADD_USED, 3, ADD_USED, 0, PUBLISH, ENABLE,
            DISABLE, POP, INFLIGHT, POP, PUSH, 1, RESTART, LOG, 0, POP, WRITE, PUSH, 9,
        ];
        for (name, log2, flags, start) in [
            ("valid_q1", 0u8, 0u8, 0u16),
            ("valid_q8", 3, 0, 0),
            ("valid_q8_event_idx", 3, 1, 0),
            ("valid_q16_wrap", 4, 1, 65533),
            ("valid_q256", 8, 3, 100),
            ("valid_q4_in_order", 2, 4, 0),
        ] {
            let size = 1u16 << log2;
            let base = data_area(size);
            let img = image(log2, flags, start, |d| {
                for i in 0..u64::from(size.min(6)) {
                    let a = base + i * 0x100;
                    let _ = d.add(&[(a, 16), (a + 16, 8)], &[(a + 32, 64)]);
                }
            });
            seeds.push((name, encode(log2, flags, start, &all_ops, &img)));
        }
        // Indirect chains, direct-then-indirect.
        let base = data_area(8);
        let img = image(3, 3, 0, |d| {
            d.add_indirect(
                base,
                &[(base + 0x100, 32)],
                &[(base + 0x200, 32), (base + 0x300, 1)],
            )
            .unwrap();
            d.add(&[(base + 0x400, 4)], &[(base + 0x500, 4)]).unwrap();
        });
        seeds.push(("valid_indirect", encode(3, 3, 0, &all_ops, &img)));
        let mut mixed = image(3, 2, 0, |d| {
            d.add(&[(base, 4)], &[]).unwrap();
        });
        put_desc(&mut mixed, 0, base, 4, DESC_F_NEXT, 1);
        put_desc(&mut mixed, 16, base + 0x100, 32, DESC_F_INDIRECT, 0);
        put_desc(&mut mixed, base + 0x100, base + 0x800, 8, DESC_F_NEXT, 1);
        put_desc(&mut mixed, base + 0x110, base + 0x900, 8, 2, 0);
        seeds.push(("valid_mixed_indirect", encode(3, 2, 0, &all_ops, &mixed)));
        // Two regions, a buffer in the second.
        let img = image(2, 8, 0, |d| {
            d.add(&[(SECOND_REGION, 64)], &[(SECOND_REGION + 64, 64)])
                .unwrap();
        });
        seeds.push(("valid_two_regions", encode(2, 8, 0, &all_ops, &img)));
        // Malformed rings, each starting from a valid one-chain image.
        let one = |flags: u8| {
            image(3, flags, 0, |d| {
                d.add(&[(base, 16)], &[(base + 0x100, 16)]).unwrap();
            })
        };
        let mut m = one(0);
        put_desc(&mut m, 16, base, 16, DESC_F_NEXT, 0);
        seeds.push(("bad_loop", encode(3, 0, 0, &all_ops, &m)));
        let mut m = one(0);
        put_desc(&mut m, 0, base, 16, DESC_F_NEXT, 200);
        seeds.push(("bad_next", encode(3, 0, 0, &all_ops, &m)));
        let mut m = one(0);
        m[128 + 4] = 9; // avail ring[0] = head 9
        seeds.push(("bad_head", encode(3, 0, 0, &all_ops, &m)));
        let mut m = one(0);
        m[128 + 2] = 50; // avail idx jumps
        seeds.push(("bad_avail_jump", encode(3, 0, 0, &all_ops, &m)));
        let mut m = one(2);
        put_desc(&mut m, 0, base + 0x100, 32, DESC_F_INDIRECT, 0);
        put_desc(&mut m, base + 0x100, base, 16, DESC_F_INDIRECT, 0);
        seeds.push(("bad_nested_indirect", encode(3, 2, 0, &all_ops, &m)));
        let mut m = one(2);
        put_desc(&mut m, 0, base + 0x100, 24, DESC_F_INDIRECT, 0);
        seeds.push(("bad_indirect_len", encode(3, 2, 0, &all_ops, &m)));
        let mut m = one(2);
        put_desc(
            &mut m,
            0,
            base + 0x100,
            32,
            DESC_F_INDIRECT | DESC_F_NEXT,
            1,
        );
        seeds.push(("bad_indirect_next", encode(3, 2, 0, &all_ops, &m)));
        let mut m = one(0);
        put_desc(&mut m, 0, base + 0x100, 32, DESC_F_INDIRECT, 0);
        seeds.push(("bad_indirect_not_negotiated", encode(3, 0, 0, &all_ops, &m)));
        let mut m = one(0);
        put_desc(&mut m, 0, u64::MAX - 4, 16, 0, 0);
        seeds.push(("bad_addr_overflow", encode(3, 0, 0, &all_ops, &m)));
        let mut m = one(0);
        put_desc(&mut m, 0, 0x7fff_0000, 16, 0, 0);
        seeds.push(("bad_unmapped_buffer", encode(3, 0, 0, &all_ops, &m)));
        let mut m = one(0);
        put_desc(&mut m, 0, base, 16, 2 | DESC_F_NEXT, 1);
        put_desc(&mut m, 16, base, 16, 0, 0);
        seeds.push(("bad_readable_after_writable", encode(3, 0, 0, &all_ops, &m)));
        seeds.push(("bad_misaligned_used", encode(3, 16, 0, &all_ops, &one(0))));
        // Inflight recovery from a scribbled region.
        let script = [
            POP, POP, INFLIGHT, POP, SCRIBBLE, 7, 5, SCRIBBLE, 6, 1, INFLIGHT, PUSH, 0,
        ];
        let img = image(3, 0, 0, |d| {
            for i in 0..4 {
                d.add(&[(base + i * 0x100, 16)], &[]).unwrap();
            }
        });
        seeds.push(("inflight_scribbled", encode(3, 0, 0, &script, &img)));
        for (name, bytes) in &seeds {
            split_device(bytes);
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        assert!(seeds.len() >= 10);
    }
}
