//! Our front-end against a real vhost-user-blk back-end: qemu-storage-daemon exporting a raw
//! 64 MiB image with two queues. Negotiation (REPLY_ACK, CONFIG, MQ), config space, guest
//! memory in a memfd, both queues as split rings driven by our `vring` driver side, virtio-blk
//! writes, reads and flushes in three chain shapes (one descriptor per part, several
//! descriptors per part, an indirect table), ring positions from GET_VRING_BASE, and the
//! image file on disk checked afterwards. Once with EVENT_IDX, once without.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tests::blk::{self, SECTOR};
use tests::{Peer, TempDir};
use vhost_io_std::frontend::{DriverRing, Frontend, GuestRam};
use vhost_proto::wire::{ProtocolFeatures, VirtioFeatures};
use vring::memory::GuestSlice;

const IMAGE_SIZE: u64 = 64 << 20;
const RAM: u64 = 16 << 20;
const QUEUE_SIZE: u16 = 128;
/// Buffers of queue `q` live in `[BUFS + q * BUF_AREA, BUFS + (q + 1) * BUF_AREA)`.
const BUFS: u64 = 1 << 20;
const BUF_AREA: u64 = 4 << 20;
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// Header, data and status each in one descriptor.
    Simple,
    /// Header in two descriptors, data in one per sector (plus a ragged split), status alone.
    Multi,
    /// The `Multi` chain as one ring descriptor pointing at an indirect table.
    Indirect,
}

/// One request in flight.
#[derive(Debug)]
struct Req {
    id: u16,
    kind: u32,
    sector: u64,
    data: u64,
    len: u32,
    status: u64,
}

/// Bump allocator over one queue's buffer area, reset after every batch.
struct Arena {
    start: u64,
    next: u64,
    end: u64,
}

impl Arena {
    fn new(queue: u16) -> Self {
        let start = BUFS + u64::from(queue) * BUF_AREA;
        Arena {
            start,
            next: start,
            end: start + BUF_AREA,
        }
    }

    fn take(&mut self, len: u64) -> u64 {
        let at = self.next.div_ceil(16) * 16;
        assert!(at + len <= self.end, "arena full");
        self.next = at + len;
        at
    }

    fn reset(&mut self) {
        self.next = self.start;
    }
}

fn write_mem(ram: &GuestRam, addr: u64, data: &[u8]) {
    GuestSlice::new(ram.memory(), addr, data.len())
        .unwrap()
        .write_at(0, data)
        .unwrap();
}

fn read_mem(ram: &GuestRam, addr: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    GuestSlice::new(ram.memory(), addr, len)
        .unwrap()
        .read_at(0, &mut out)
        .unwrap();
    out
}

/// A queue of the blk device: our driver ring, its buffer arena and how many requests it
/// was given in all.
struct BlkQueue {
    ring: DriverRing,
    arena: Arena,
    submitted: u32,
    indirect: bool,
}

impl BlkQueue {
    /// Adds one request (not yet kicked). `payload` is the data to write for T_OUT; T_IN
    /// reads `len` bytes; T_FLUSH has no data.
    fn add(
        &mut self,
        ram: &GuestRam,
        kind: u32,
        sector: u64,
        payload: Option<&[u8]>,
        len: u32,
        shape: Shape,
    ) -> Req {
        let shape = if shape == Shape::Indirect && !self.indirect {
            Shape::Multi
        } else {
            shape
        };
        let hdr = self.arena.take(16);
        write_mem(ram, hdr, &blk::header(kind, sector));
        let data = if len > 0 {
            self.arena.take(u64::from(len))
        } else {
            0
        };
        match payload {
            Some(p) => {
                assert_eq!(p.len(), len as usize);
                write_mem(ram, data, p);
            }
            None if len > 0 => write_mem(ram, data, &vec![0xa5; len as usize]),
            None => {}
        }
        let status = self.arena.take(1);
        write_mem(ram, status, &[0xff]);
        let data_parts: Vec<(u64, u32)> = match shape {
            _ if len == 0 => Vec::new(),
            Shape::Simple => vec![(data, len)],
            Shape::Multi | Shape::Indirect => split_parts(data, len),
        };
        let hdr_parts: Vec<(u64, u32)> = match shape {
            Shape::Simple => vec![(hdr, blk::HEADER_LEN)],
            Shape::Multi | Shape::Indirect => vec![(hdr, 8), (hdr + 8, 8)],
        };
        let mut readable = hdr_parts;
        let mut writable = Vec::new();
        if kind == blk::T_OUT {
            readable.extend(&data_parts);
        } else {
            writable.extend(&data_parts);
        }
        writable.push((status, 1));
        let id = if shape == Shape::Indirect {
            let n = (readable.len() + writable.len()) as u64;
            let table = self.arena.take(16 * n);
            self.ring.add_indirect(table, &readable, &writable).unwrap()
        } else {
            self.ring.add(&readable, &writable).unwrap()
        };
        self.submitted += 1;
        Req {
            id,
            kind,
            sector,
            data,
            len,
            status,
        }
    }

    /// Kicks, waits for every request of `batch`, checks their status and used lengths and
    /// returns the data read by T_IN requests, by sector.
    fn complete(&mut self, ram: &GuestRam, batch: Vec<Req>) -> Vec<(u64, Vec<u8>)> {
        self.ring.kick().unwrap();
        let used = self.ring.collect(batch.len(), TIMEOUT).unwrap();
        let mut reads = Vec::new();
        for (id, used_len) in used {
            let req = batch
                .iter()
                .find(|r| r.id == id)
                .unwrap_or_else(|| panic!("used id {id} was never submitted"));
            let status = read_mem(ram, req.status, 1)[0];
            assert_eq!(
                status,
                blk::S_OK,
                "request type {} at sector {} failed",
                req.kind,
                req.sector
            );
            // Used length: the bytes the device wrote, data read plus the status byte.
            let expect = if req.kind == blk::T_IN {
                req.len + 1
            } else {
                1
            };
            assert_eq!(
                used_len, expect,
                "used length of type {} at sector {}",
                req.kind, req.sector
            );
            if req.kind == blk::T_IN {
                reads.push((req.sector, read_mem(ram, req.data, req.len as usize)));
            }
        }
        self.arena.reset();
        reads
    }
}

/// Splits `len` bytes at `addr` into descriptors: whole sectors, the last one cut in two
/// uneven parts (so a sector spans descriptors).
fn split_parts(addr: u64, len: u32) -> Vec<(u64, u32)> {
    let mut parts = Vec::new();
    let mut off = 0u32;
    while off < len {
        let n = (len - off).min(SECTOR as u32);
        if off + n == len && n > 100 {
            parts.push((addr + u64::from(off), 100));
            parts.push((addr + u64::from(off) + 100, n - 100));
        } else {
            parts.push((addr + u64::from(off), n));
        }
        off += n;
    }
    parts
}

/// One write: sector, sectors, shape. Queue `q`'s writes are at `q * 0x10000 + sector`.
const WRITES: &[(u64, u32, Shape)] = &[
    (0, 1, Shape::Simple),
    (1, 8, Shape::Multi),
    (64, 4, Shape::Indirect),
    (100, 16, Shape::Simple),
    (200, 3, Shape::Multi),
    (300, 8, Shape::Indirect),
    (1000, 1, Shape::Indirect),
    (2047, 2, Shape::Multi),
];

fn queue_sector(q: u16, sector: u64) -> u64 {
    u64::from(q) * 0x1_0000 + sector
}

fn seed(q: u16) -> u8 {
    0x30 + q as u8 * 0x41
}

fn run_qsd(event_idx: bool) {
    let qsd = tests::require_peer!("qemu-storage-daemon");
    let qemu_img = tests::require_peer!("qemu-img");
    let started = Instant::now();
    let label = if event_idx {
        "qsd_evidx"
    } else {
        "qsd_noevidx"
    };
    let dir = TempDir::new(label).unwrap();
    let image = dir.join("disk.img");
    let sock = dir.join("vub.sock");
    let out = Command::new(&qemu_img)
        .args(["create", "-f", "raw"])
        .arg(&image)
        .arg("64M")
        .output()
        .unwrap();
    assert!(out.status.success(), "qemu-img: {out:?}");
    let mut cmd = Command::new(&qsd);
    cmd.arg("--blockdev")
        .arg(format!(
            "driver=file,node-name=file0,filename={}",
            image.display()
        ))
        .args(["--blockdev", "driver=raw,node-name=disk0,file=file0"])
        .arg("--export")
        .arg(format!(
            "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path={},writable=on,num-queues=2",
            sock.display()
        ));
    let mut peer = Peer::spawn("qemu-storage-daemon", cmd).unwrap();
    peer.wait_for_socket(&sock, tests::PEER_START_TIMEOUT)
        .unwrap();
    let pid = peer.pid();

    drive(&sock, event_idx);

    // qsd keeps listening after the front-end went away; SIGINT ends it cleanly.
    let (status, clean) = peer.interrupt(tests::PEER_STOP_TIMEOUT).unwrap();
    assert!(
        clean && status.success(),
        "qsd exit {status}:\n{}",
        peer.output()
    );
    check_image(&image);
    drop(peer);
    // qsd removes its listening socket when it exits on SIGINT: nothing stale is left.
    tests::assert_clean(&[pid], dir.path());
    let took = started.elapsed();
    eprintln!("{label}: {took:?}");
    assert!(took < Duration::from_secs(60), "took {took:?}");
}

fn drive(sock: &Path, event_idx: bool) {
    let mut front = Frontend::connect(sock).unwrap();
    let offered = front.get_features().unwrap();
    assert!(offered.contains(VirtioFeatures::VERSION_1 | VirtioFeatures::PROTOCOL_FEATURES));
    assert!(
        !offered.contains(VirtioFeatures::RING_PACKED),
        "qsd (libvhost-user) has split rings only"
    );
    if event_idx {
        assert!(offered.contains(VirtioFeatures::EVENT_IDX));
    }
    let protocol = front.get_protocol_features().unwrap();
    let want = ProtocolFeatures::REPLY_ACK | ProtocolFeatures::CONFIG | ProtocolFeatures::MQ;
    let chosen = protocol & want;
    front.set_protocol_features(chosen).unwrap();
    assert_eq!(
        front.reply_ack(),
        protocol.contains(ProtocolFeatures::REPLY_ACK)
    );
    if chosen.contains(ProtocolFeatures::MQ) {
        assert_eq!(front.get_queue_num().unwrap(), 2);
    }
    front.set_owner().unwrap();

    let indirect = offered.contains(VirtioFeatures::INDIRECT_DESC);
    let blk_bits = VirtioFeatures::from_bits_retain(blk::F_FLUSH | blk::F_MQ | blk::F_BLK_SIZE);
    let mut features = VirtioFeatures::VERSION_1
        | VirtioFeatures::PROTOCOL_FEATURES
        | (offered & (blk_bits | VirtioFeatures::INDIRECT_DESC));
    if event_idx {
        features |= VirtioFeatures::EVENT_IDX;
    }
    assert!(
        features.bits() & blk::F_FLUSH != 0,
        "qsd offers VIRTIO_BLK_F_FLUSH"
    );
    front.set_features(features).unwrap();

    if chosen.contains(ProtocolFeatures::CONFIG) {
        let config = front.get_config(0, 60).unwrap();
        assert_eq!(blk::capacity(&config), Some(IMAGE_SIZE / SECTOR));
        if offered.bits() & blk::F_MQ != 0 {
            assert_eq!(blk::num_queues(&config), Some(2));
        }
    }

    let ram = GuestRam::new(0, RAM).unwrap();
    front.set_mem_table(&[(ram.region(), ram.fd())]).unwrap();
    let rf = vring::RingFeatures {
        event_idx,
        indirect,
        in_order: false,
    };
    let mut queues: Vec<BlkQueue> = (0..2u16)
        .map(|q| {
            let (ring, end) =
                DriverRing::split(&ram, q, u64::from(q) * 0x1_0000, QUEUE_SIZE, rf).unwrap();
            assert!(end <= BUFS);
            front.start_ring(&ring, &ram).unwrap();
            BlkQueue {
                ring,
                arena: Arena::new(q),
                submitted: 0,
                indirect,
            }
        })
        .collect();

    // Writes: each queue its own sectors, in batches of four.
    for (q, queue) in (0u16..).zip(queues.iter_mut()) {
        for chunk in WRITES.chunks(4) {
            let batch = chunk
                .iter()
                .map(|&(sector, n, shape)| {
                    let s = queue_sector(q, sector);
                    let data = blk::pattern(seed(q), s, (u64::from(n) * SECTOR) as usize);
                    queue.add(&ram, blk::T_OUT, s, Some(&data), n * SECTOR as u32, shape)
                })
                .collect();
            assert!(queue.complete(&ram, batch).is_empty());
        }
        let flush = queue.add(&ram, blk::T_FLUSH, 0, None, 0, Shape::Simple);
        queue.complete(&ram, vec![flush]);
    }
    // Reads: each queue reads back what the *other* queue wrote, in other shapes, and then
    // its own.
    let shapes = [Shape::Indirect, Shape::Simple, Shape::Multi];
    for (q, queue) in (0u16..).zip(queues.iter_mut()) {
        for writer in [1 - q, q] {
            for (k, chunk) in WRITES.chunks(3).enumerate() {
                let batch = chunk
                    .iter()
                    .map(|&(sector, n, _)| {
                        let s = queue_sector(writer, sector);
                        queue.add(
                            &ram,
                            blk::T_IN,
                            s,
                            None,
                            n * SECTOR as u32,
                            shapes[(k + writer as usize) % 3],
                        )
                    })
                    .collect();
                for (s, data) in queue.complete(&ram, batch) {
                    assert!(
                        data == blk::pattern(seed(writer), s, data.len()),
                        "queue {q} read sector {s} written by queue {writer}: wrong data"
                    );
                }
            }
        }
        let flush = queue.add(&ram, blk::T_FLUSH, 0, None, 0, Shape::Multi);
        queue.complete(&ram, vec![flush]);
    }
    // A read of a never-written sector gives zeros (the image is sparse).
    {
        let queue = &mut queues[1];
        let r = queue.add(&ram, blk::T_IN, 5000, None, 1024, Shape::Indirect);
        let got = queue.complete(&ram, vec![r]);
        assert_eq!(got, vec![(5000, vec![0u8; 1024])]);
    }

    // Stop both rings: the position is the number of requests each was given.
    for queue in &queues {
        let base = front.get_vring_base(queue.ring.index()).unwrap();
        assert_eq!(
            u32::from(base.split_next_avail()),
            queue.submitted,
            "ring {} position",
            queue.ring.index()
        );
    }
    drop(front);
}

fn check_image(image: &Path) {
    let bytes = std::fs::read(image).unwrap();
    assert_eq!(bytes.len() as u64, IMAGE_SIZE);
    for q in 0..2u16 {
        for &(sector, n, _) in WRITES {
            let s = queue_sector(q, sector);
            let at = (s * SECTOR) as usize;
            let len = (u64::from(n) * SECTOR) as usize;
            assert!(
                bytes[at..at + len] == blk::pattern(seed(q), s, len)[..],
                "image at sector {s} (queue {q})"
            );
        }
    }
    // Nothing was written elsewhere: e.g. the sectors right after each write are zero.
    for q in 0..2u16 {
        for &(sector, n, _) in WRITES {
            let s = queue_sector(q, sector) + u64::from(n);
            if WRITES.iter().any(|&(w, _, _)| queue_sector(q, w) == s) {
                continue;
            }
            let at = (s * SECTOR) as usize;
            assert!(
                bytes[at..at + SECTOR as usize].iter().all(|&b| b == 0),
                "sector {s} was not written but is not zero"
            );
        }
    }
}

#[test]
fn qsd_blk_split_event_idx() {
    run_qsd(true);
}

#[test]
fn qsd_blk_split_no_event_idx() {
    run_qsd(false);
}
