//! Inflight recovery of the `vhost-user-blk` program (spec §7.12): our front-end
//! (`Frontend` + `DriverRing`, with GET_INFLIGHT_FD/SET_INFLIGHT_FD) keeps 32 writes in
//! flight against the back-end serving an image file; the back-end is SIGKILLed under that
//! load, restarted on the same image, and `Frontend::reconnect` resumes the ring from the
//! inflight buffer (repeated, up to 5 kills on the same ring, until a kill caught the
//! back-end with writes not yet completed). Checked: every request outstanding at a kill
//! completes exactly once (with status OK, nothing else completes), and every write
//! (acknowledged before a kill, or completed after the restart) is in the image file. Each
//! request writes its own 256 KiB block, once, so "on disk" is unambiguous. Split and
//! packed rings.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tests::blk::{self, SECTOR, pattern};
use tests::{Peer, TempDir};
use vhost_io_std::frontend::{DriverRing, Frontend, GuestRam};
use vhost_proto::wire::{ProtocolFeatures, VirtioFeatures};

const IMAGE_SIZE: u64 = 512 << 20;
/// Bytes per write: large enough that the back-end still has some in flight (popped, not
/// completed) when the SIGKILL arrives right after a kick.
const BS: u64 = 256 << 10;
const DEPTH: usize = 32;
const QUEUE_SIZE: u16 = 128;
const RAM: u64 = 32 << 20;
/// Per-slot buffers: header at +0, status at +16, data at +BS.
const BUFS: u64 = 1 << 20;
const SLOT: u64 = 2 * BS;
/// Writes acknowledged before each kill.
const BEFORE_KILL: usize = 200;
/// At most this many kill/restart cycles.
const CYCLES: usize = 5;
const TIMEOUT: Duration = Duration::from_secs(10);

fn start(bin: &Path, sock: &Path, image: &Path) -> Peer {
    let mut cmd = Command::new(bin);
    cmd.arg("--socket-path")
        .arg(sock)
        .arg("--image")
        .arg(image)
        .args(["--io-engine", "auto"]);
    let mut p = Peer::spawn("vhost-user-blk", cmd).unwrap();
    p.wait_for_socket(sock, tests::PEER_START_TIMEOUT).unwrap();
    p
}

fn negotiate(
    front: &mut Frontend,
    packed: bool,
) -> Result<VirtioFeatures, vhost_io_std::ClientError> {
    let offered = front.get_features()?;
    assert!(offered.contains(VirtioFeatures::PROTOCOL_FEATURES));
    let p = front.get_protocol_features()?;
    assert!(
        p.contains(ProtocolFeatures::INFLIGHT_SHMFD),
        "no INFLIGHT_SHMFD: {p:?}"
    );
    front.set_protocol_features(
        ProtocolFeatures::MQ | ProtocolFeatures::REPLY_ACK | ProtocolFeatures::INFLIGHT_SHMFD,
    )?;
    front.set_owner()?;
    let mut f = VirtioFeatures::VERSION_1 | VirtioFeatures::PROTOCOL_FEATURES;
    if packed {
        f |= VirtioFeatures::RING_PACKED;
    }
    front.set_features(f)?;
    Ok(f)
}

struct Load<'a> {
    ram: &'a GuestRam,
    /// Descriptor id -> (slot, block).
    pending: HashMap<u16, (usize, u64)>,
    free_slots: Vec<usize>,
    next_block: u64,
    acked: Vec<u64>,
}

impl Load<'_> {
    fn submit(&mut self, ring: &mut DriverRing) {
        let slot = self.free_slots.pop().unwrap();
        let block = self.next_block;
        self.next_block += 1;
        let base = BUFS + slot as u64 * SLOT;
        let sector = block * BS / SECTOR;
        self.ram
            .write(base, &blk::header(blk::T_OUT, sector))
            .unwrap();
        self.ram.write(base + 16, &[0xff]).unwrap();
        self.ram
            .write(base + BS, &pattern(0x77, sector, BS as usize))
            .unwrap();
        let id = ring
            .add(&[(base, 16), (base + BS, BS as u32)], &[(base + 16, 1)])
            .unwrap();
        assert!(self.pending.insert(id, (slot, block)).is_none());
    }

    /// Handles one completion: checks the status, frees the slot, returns the block.
    fn complete(&mut self, id: u16, used_len: u32) -> u64 {
        let (slot, block) = self
            .pending
            .remove(&id)
            .unwrap_or_else(|| panic!("completion of id {id}, which is not in flight"));
        let mut status = [0u8];
        self.ram
            .read(BUFS + slot as u64 * SLOT + 16, &mut status)
            .unwrap();
        assert_eq!(status[0], blk::S_OK, "write of block {block} failed");
        assert_eq!(used_len, 1, "used length of a write");
        self.free_slots.push(slot);
        block
    }
}

fn recover(packed: bool) {
    let name = if packed {
        "blk_inflight_packed"
    } else {
        "blk_inflight_split"
    };
    let bin = tests::guest::workspace_binary("vhost-user-blk").expect("build vhost-user-blk");
    let dir = TempDir::new(name).unwrap();
    let image = dir.join("disk.img");
    File::create(&image).unwrap().set_len(IMAGE_SIZE).unwrap();
    let sock = dir.join("vub.sock");
    let mut backend = start(&bin, &sock, &image);
    let first_pid = backend.pid();

    let ram = GuestRam::new(0, RAM).unwrap();
    let mut front = Frontend::connect(&sock).unwrap();
    let features = negotiate(&mut front, packed).unwrap();
    let inflight = front
        .setup_inflight(1, QUEUE_SIZE)
        .unwrap()
        .expect("the back-end gives an inflight buffer");
    front.set_mem_table(&ram.mem_table()).unwrap();
    let (ring, _) = DriverRing::at(&ram, 0, 0, QUEUE_SIZE, features).unwrap();
    let mut rings = [ring];
    front.start_ring(&rings[0], &ram).unwrap();

    let mut load = Load {
        ram: &ram,
        pending: HashMap::new(),
        free_slots: (0..DEPTH).rev().collect(),
        next_block: 0,
        acked: Vec::new(),
    };
    let mut all_after = Vec::new();
    let mut resubmitted = 0;
    let mut pids = vec![first_pid];
    let mut cycle = 0;
    // Kill/restart cycles on the same ring and inflight buffer, until one SIGKILL caught
    // the back-end with requests not yet completed (usually within two: 32 writes of
    // 256 KiB take the back-end a few ms; sometimes it finishes them before the signal).
    while resubmitted == 0 {
        cycle += 1;
        assert!(
            cycle <= CYCLES,
            "in {CYCLES} kills the back-end never had a request in flight"
        );
        // Keep DEPTH writes in flight; kill the back-end once BEFORE_KILL more are
        // acknowledged, right after topping the ring up again.
        while !load.free_slots.is_empty() {
            load.submit(&mut rings[0]);
        }
        rings[0].kick().unwrap();
        let target = load.acked.len() + BEFORE_KILL;
        while load.acked.len() < target {
            let mut more = rings[0].collect(1, TIMEOUT).unwrap();
            while let Some(d) = rings[0].pop_used().unwrap() {
                more.push(d);
            }
            for (id, len) in more {
                let block = load.complete(id, len);
                load.acked.push(block);
            }
            while !load.free_slots.is_empty() {
                load.submit(&mut rings[0]);
            }
            rings[0].kick().unwrap();
        }
        backend.kill().unwrap();
        drop(backend);
        drop(front);
        let outstanding: BTreeSet<u64> = load.pending.values().map(|&(_, b)| b).collect();
        assert_eq!(outstanding.len(), DEPTH);
        // What the dead back-end published before it died (in the used ring, not yet seen).
        let mut after = Vec::new();
        while let Some((id, len)) = rings[0].pop_used().unwrap() {
            after.push(load.complete(id, len));
        }
        let published = after.len();

        // Restart on the same image; resume from the inflight buffer.
        backend = start(&bin, &sock, &image);
        pids.push(backend.pid());
        front = Frontend::reconnect(
            &sock,
            TIMEOUT,
            |f| negotiate(f, packed).map(|_| ()),
            &inflight,
            &ram,
            &mut rings,
        )
        .unwrap();
        // Collect until every outstanding request is back, once.
        while !load.pending.is_empty() {
            let got = rings[0].collect(1, TIMEOUT).unwrap_or_else(|e| {
                panic!(
                    "{} of {DEPTH} outstanding requests never completed: {e}",
                    load.pending.len()
                )
            });
            for (id, len) in got {
                after.push(load.complete(id, len));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            rings[0].pop_used().unwrap(),
            None,
            "a request completed twice (or one never submitted)"
        );
        let after_set: BTreeSet<u64> = after.iter().copied().collect();
        assert_eq!(after.len(), after_set.len(), "a request completed twice");
        assert_eq!(
            after_set, outstanding,
            "exactly the outstanding requests completed"
        );
        resubmitted += after.len() - published;
        eprintln!(
            "{name}: kill {cycle}: {} acknowledged so far; of the {DEPTH} outstanding, \
             {published} were in the used ring already and {} were completed by the restarted \
             back-end (resubmitted from the inflight buffer, or not yet read by the dead one)",
            load.acked.len(),
            after.len() - published
        );
        all_after.extend(after);
    }
    let after = all_after;

    // The ring goes on: one more write on the restarted back-end.
    load.submit(&mut rings[0]);
    rings[0].kick().unwrap();
    let (id, len) = rings[0].collect(1, TIMEOUT).unwrap()[0];
    let last = load.complete(id, len);

    drop(front);
    let (status, clean) = backend.interrupt(tests::PEER_STOP_TIMEOUT).unwrap();
    assert!(
        clean && status.success(),
        "stop: {status}\n{}",
        backend.output()
    );

    // Every write is on disk.
    let f = File::open(&image).unwrap();
    let mut buf = vec![0u8; BS as usize];
    for &block in load.acked.iter().chain(&after).chain([&last]) {
        f.read_exact_at(&mut buf, block * BS).unwrap();
        assert!(
            buf == pattern(0x77, block * BS / SECTOR, BS as usize),
            "block {block} is not on disk"
        );
    }
    drop(backend);
    tests::assert_clean(&pids, dir.path());
}

#[test]
fn sigkill_under_load_split() {
    recover(false);
}

#[test]
fn sigkill_under_load_packed() {
    recover(true);
}
