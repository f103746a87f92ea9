//! The `packed_device` fuzz target: a hostile driver (the input bytes are
//! the guest memory and a program of device operations) against the device
//! side of a packed ring.
//!
//! Input: an 8-byte header (queue size, features and switches, start
//! position, program length), the program (one byte per operation), then the
//! guest memory image: the descriptor ring at 0, the driver and device event
//! areas at 0x1000 and 0x1004, buffers anywhere in two adjacent regions
//! `[0, 0x2000)` and `[0x2000, 0x3000)`; everything above is unmapped.

use crate::log::DirtyLog;
use crate::memory::{BufferMemory, SharedRegion};
use crate::packed::{AvailChain, DeviceQueue};
use crate::{Error, QueueConfig, RingFeatures, RingPosition};

/// Guest memory size of the target.
pub const MEM_LEN: usize = 0x3000;
/// Guest address of the driver event area (the device area follows at +4).
pub const EVENTS: u64 = 0x1000;
/// Length of the input header.
pub const HEADER_LEN: usize = 8;

/// Operations of the program, one per byte (the low 3 bits; the rest is an
/// argument).
pub mod op {
    /// Pop a buffer and walk it with a reader and a writer.
    pub const POP: u8 = 0;
    /// `add_used` of a walked buffer (argument: which).
    pub const ADD_USED: u8 = 1;
    /// `publish_used`.
    pub const PUBLISH: u8 = 2;
    /// `enable_notifications`.
    pub const ENABLE: u8 = 3;
    /// `disable_notifications`.
    pub const DISABLE: u8 = 4;
    /// Save the position and restart the device there (recovering the
    /// inflight region if one is attached; pending buffers are forgotten,
    /// as by a crash).
    pub const RESTART: u8 = 5;
    /// The driver flips a ring slot's AVAIL/USED bits (argument: slot).
    pub const FLIP: u8 = 6;
    /// `push` every walked buffer.
    pub const PUSH_ALL: u8 = 7;
}

/// Header switch bits (byte 2).
pub mod switch {
    /// VIRTIO_F_EVENT_IDX.
    pub const EVENT_IDX: u8 = 1;
    /// VIRTIO_F_INDIRECT_DESC.
    pub const INDIRECT: u8 = 2;
    /// VIRTIO_F_IN_ORDER.
    pub const IN_ORDER: u8 = 4;
    /// Attach an inflight region.
    pub const INFLIGHT: u8 = 8;
    /// Attach a dirty log (ring logging on).
    pub const LOG: u8 = 16;
}

/// Builds an input from its parts (seeds, tests).
pub fn input(
    size: u16,
    switches: u8,
    start: (u16, bool),
    program: &[u8],
    memory: &[u8],
) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_LEN + program.len() + memory.len());
    v.extend_from_slice(&(size - 1).to_le_bytes());
    v.push(switches);
    v.extend_from_slice(&start.0.to_le_bytes());
    v.push(u8::from(start.1));
    v.push(program.len().min(255) as u8);
    v.push(0);
    v.extend_from_slice(program.get(..program.len().min(255)).unwrap_or(&[]));
    v.extend_from_slice(memory);
    v
}

/// The fuzz target body: never panics, whatever `data` is.
pub fn packed_device(data: &[u8]) {
    let Some((header, rest)) = data.split_first_chunk::<HEADER_LEN>() else {
        return;
    };
    let [s0, s1, switches, p0, p1, wrap, prog_len, _] = *header;
    let size = (u16::from_le_bytes([s0, s1]) % 256) + 1;
    let start = u16::from_le_bytes([p0, p1]) % size;
    let prog_len = usize::from(prog_len).min(rest.len());
    let (program, image) = rest.split_at(prog_len);

    let mem = BufferMemory::with_regions(&[(0, 0x2000), (0x2000, MEM_LEN - 0x2000)]);
    let n = image.len().min(MEM_LEN);
    let _ = mem.write(0, image.get(..n).unwrap_or(&[]));
    run(&mem, size, switches, (start, wrap & 1 != 0), program);
}

fn run(mem: &BufferMemory, size: u16, switches: u8, start: (u16, bool), program: &[u8]) {
    let features = RingFeatures {
        event_idx: switches & switch::EVENT_IDX != 0,
        indirect: switches & switch::INDIRECT != 0,
        in_order: switches & switch::IN_ORDER != 0,
    };
    let config = QueueConfig {
        size,
        desc_table: 0,
        driver_area: EVENTS,
        device_area: EVENTS + 4,
        features,
    };
    let position = RingPosition {
        next_avail: start.0,
        avail_wrap: start.1,
        next_used: start.0,
        used_wrap: start.1,
    };
    let Ok(mut queue) = DeviceQueue::new(mem, &config, position) else {
        return;
    };
    let inflight = (switches & switch::INFLIGHT != 0).then(|| {
        SharedRegion::zeroed(crate::inflight::queue_region_size(
            crate::inflight::RingLayout::Packed,
            size,
        ))
    });
    if queue.set_inflight(inflight.clone()).is_err() {
        return;
    }
    let log = (switches & switch::LOG != 0).then(|| DirtyLog::new(SharedRegion::zeroed(8)));
    queue.set_dirty_log(log.clone(), log.as_ref().map(|_| 0));
    let mut walked: Vec<(AvailChain, u32)> = Vec::new();
    for &byte in program {
        let arg = usize::from(byte >> 3);
        let r = match byte & 7 {
            op::POP => pop(&mut queue, &mut walked),
            op::ADD_USED => {
                if walked.is_empty() {
                    Ok(())
                } else {
                    let (c, len) = walked.swap_remove(arg % walked.len());
                    queue.add_used(&c, len)
                }
            }
            op::PUBLISH => {
                queue.publish_used();
                Ok(())
            }
            op::ENABLE => queue.enable_notifications().map(|_| ()),
            op::DISABLE => {
                queue.disable_notifications();
                Ok(())
            }
            op::RESTART => restart(mem, &config, &inflight, &log, &mut queue, &mut walked),
            op::FLIP => {
                let slot = (arg as u64 * 7) % u64::from(size);
                let mut f = [0u8; 2];
                let _ = mem.read(slot * 16 + 14, &mut f);
                f[1] ^= 0x80;
                f[0] ^= 0x80;
                let _ = mem.write(slot * 16 + 14, &f);
                Ok(())
            }
            _ => {
                for (c, len) in walked.drain(..) {
                    if queue.add_used(&c, len).is_err() {
                        break;
                    }
                }
                queue.publish_used();
                Ok(())
            }
        };
        if r.is_err() {
            // A malformed ring is fatal for the queue: stop.
            return;
        }
        // The position always stays inside the ring.
        let p = queue.position();
        assert!(p.next_avail < size && p.next_used < size);
    }
}

/// Pops a buffer and walks it completely; a chain error drops the buffer
/// (it is not completed), a pop error is returned.
fn pop(
    queue: &mut DeviceQueue<&BufferMemory>,
    walked: &mut Vec<(AvailChain, u32)>,
) -> Result<(), Error> {
    let Some(chain) = queue.pop()? else {
        return Ok(());
    };
    walk(queue, chain, walked);
    Ok(())
}

fn walk(
    queue: &DeviceQueue<&BufferMemory>,
    chain: AvailChain,
    walked: &mut Vec<(AvailChain, u32)>,
) {
    let size = u32::from(queue.size());
    assert!(chain.id() < queue.size());
    assert!(chain.slots() >= 1 && u32::from(chain.slots()) <= size);
    // The iterator yields at most Q direct or Q indirect elements, then
    // stops for good after an error.
    let mut it = queue.descriptors(&chain);
    let mut n = 0u32;
    let mut failed = false;
    for d in it.by_ref() {
        n += 1;
        assert!(n <= size, "more elements than the queue size");
        if d.is_err() {
            failed = true;
            break;
        }
    }
    assert!(it.next().is_none(), "fused");
    if failed {
        return;
    }
    let mut buf = [0u8; 64];
    let mut reader = queue.reader(&chain);
    if reader.read(&mut buf).is_err() {
        return;
    }
    let mut writer = queue.writer(&chain);
    if writer.write(&buf).is_err() {
        return;
    }
    let len = writer.bytes_written();
    if walked.len() < 4096 {
        walked.push((chain, len));
    }
}

fn restart<'m>(
    mem: &'m BufferMemory,
    config: &QueueConfig,
    inflight: &Option<SharedRegion>,
    log: &Option<DirtyLog>,
    queue: &mut DeviceQueue<&'m BufferMemory>,
    walked: &mut Vec<(AvailChain, u32)>,
) -> Result<(), Error> {
    let mut fresh = DeviceQueue::new(mem, config, queue.position())?;
    fresh.set_dirty_log(log.clone(), log.as_ref().map(|_| 0));
    walked.clear();
    if let Some(region) = inflight {
        fresh.set_inflight(Some(region.clone()))?;
        for chain in fresh.recover_inflight()? {
            assert!(chain.is_recovered());
            walk(&fresh, chain, walked);
        }
    }
    // The old queue is dropped as if its process had died.
    let _ = std::mem::replace(queue, fresh);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packed::DriverQueue;
    use std::path::PathBuf;

    fn seed_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/packed_device")
    }

    /// A memory image made by our driver: buffers of several shapes.
    fn image(
        size: u16,
        features: RingFeatures,
        start: (u16, bool),
        shapes: &[(u8, u8, bool)],
    ) -> Vec<u8> {
        let mem = BufferMemory::with_regions(&[(0, 0x2000), (0x2000, MEM_LEN - 0x2000)]);
        let config = QueueConfig {
            size,
            desc_table: 0,
            driver_area: EVENTS,
            device_area: EVENTS + 4,
            features,
        };
        let mut d = DriverQueue::new_at(&mem, &config, start.0, start.1).unwrap();
        for (i, &(r, w, indirect)) in shapes.iter().enumerate() {
            let base = 0x1100 + 0x100 * i as u64;
            let rd: Vec<(u64, u32)> = (0..r).map(|k| (base + 16 * u64::from(k), 16)).collect();
            let wr: Vec<(u64, u32)> = (0..w)
                .map(|k| (base + 0x80 + 16 * u64::from(k), 16))
                .collect();
            let _ = if indirect {
                d.add_indirect(0x2800 + 0x80 * i as u64, &rd, &wr)
            } else {
                d.add(&rd, &wr)
            };
        }
        d.publish();
        let mut out = vec![0u8; MEM_LEN];
        mem.read(0, &mut out[..0x2000]).unwrap();
        mem.read(0x2000, &mut out[0x2000..]).unwrap();
        // Trim trailing zeroes (the rest of memory is zero anyway).
        let end = out.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
        out.truncate(end);
        out
    }

    fn seeds() -> Vec<(String, Vec<u8>)> {
        use op::*;
        let all = [
            POP, POP, ADD_USED, PUBLISH, POP, ENABLE, PUSH_ALL, DISABLE, POP, RESTART, POP,
            PUSH_ALL, ENABLE,
        ];
        let shapes: &[(u8, u8, bool)] = &[
            (1, 1, false),
            (2, 0, false),
            (0, 3, true),
            (1, 2, true),
            (1, 0, false),
        ];
        let mut v = Vec::new();
        for (size, switches, start) in [
            (8u16, 0u8, (0u16, true)),
            (8, switch::EVENT_IDX | switch::INDIRECT, (6, true)),
            (5, switch::INDIRECT | switch::INFLIGHT, (3, false)),
            (
                16,
                switch::INDIRECT | switch::IN_ORDER | switch::LOG,
                (15, true),
            ),
            (
                3,
                switch::EVENT_IDX | switch::INDIRECT | switch::INFLIGHT,
                (2, false),
            ),
            (1, switch::INDIRECT, (0, true)),
            (
                256,
                switch::INDIRECT | switch::INFLIGHT | switch::LOG | switch::EVENT_IDX,
                (254, true),
            ),
            (7, switch::INDIRECT | switch::INFLIGHT, (0, true)),
        ] {
            let features = RingFeatures {
                event_idx: switches & switch::EVENT_IDX != 0,
                indirect: switches & switch::INDIRECT != 0,
                in_order: switches & switch::IN_ORDER != 0,
            };
            let img = image(size, features, start, shapes);
            let name = format!("q{size}-s{switches}-at{}-{}", start.0, u8::from(start.1));
            v.push((name.clone(), input(size, switches, start, &all, &img)));
            let crashy = [
                POP,
                POP,
                POP,
                ADD_USED,
                ADD_USED | 8,
                RESTART,
                PUSH_ALL,
                POP,
                FLIP,
                POP,
                RESTART,
                PUSH_ALL,
            ];
            v.push((
                format!("{name}-restart"),
                input(size, switches, start, &crashy, &img),
            ));
        }
        // Hand-made malformed rings: a list without end, a bad id, nested
        // indirect, an unmapped table.
        let mut ring = vec![0u8; 0x100];
        for slot in 0..4 {
            ring[slot * 16 + 8] = 8;
            ring[slot * 16 + 14] = 0x81; // AVAIL | NEXT
        }
        v.push(("endless-list".into(), input(4, 0, (0, true), &[POP], &ring)));
        let mut ring = vec![0u8; 0x20];
        ring[12] = 9; // id 9 in a queue of 4
        ring[14] = 0x80;
        v.push(("bad-id".into(), input(4, 0, (0, true), &[POP], &ring)));
        let mut img = vec![0u8; 0x2810];
        img[0..8].copy_from_slice(&0x2800u64.to_le_bytes());
        img[8] = 16;
        img[14] = 0x84; // AVAIL | INDIRECT
        img[0x2800 + 14] = 4; // nested INDIRECT
        v.push((
            "nested-indirect".into(),
            input(4, switch::INDIRECT, (0, true), &[POP, PUSH_ALL], &img),
        ));
        let mut ring = vec![0u8; 0x20];
        ring[0..8].copy_from_slice(&0x10_0000u64.to_le_bytes());
        ring[8] = 32;
        ring[14] = 0x84;
        v.push((
            "unmapped-table".into(),
            input(4, switch::INDIRECT, (0, true), &[POP], &ring),
        ));
        v
    }

    #[test]
    #[ignore = "rewrites fuzz/seeds/packed_device"]
    fn write_packed_device_seeds() {
        let dir = seed_dir();
        std::fs::create_dir_all(&dir).unwrap();
        for (name, data) in seeds() {
            std::fs::write(dir.join(name), data).unwrap();
        }
    }

    #[test]
    fn generated_seeds_pass() {
        for (_, data) in seeds() {
            packed_device(&data);
        }
    }

    #[test]
    fn checked_in_seeds_pass() {
        let mut n = 0;
        for entry in std::fs::read_dir(seed_dir()).unwrap() {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            packed_device(&data);
            n += 1;
        }
        assert!(n >= 10, "only {n} seeds");
    }

    #[test]
    fn short_and_odd_inputs() {
        packed_device(&[]);
        packed_device(&[0; 7]);
        packed_device(&[0xff; 64]);
        for b in 0..=255u8 {
            packed_device(&[b, b, b, b, b, b, b, b, b, b]);
        }
    }
}
