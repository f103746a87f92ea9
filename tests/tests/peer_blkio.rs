//! libblkio (the `blkio` crate, the userspace block I/O library of QEMU's storage
//! developers) as the front-end of our `vhost-user-blk`: its `virtio-blk-vhost-user`
//! driver negotiates, maps its memfd buffers with SET_MEM_TABLE and drives 2 split queues.
//! Verified writes and reads from both queues at queue depth 16 each, a flush, and the
//! image file checked on disk; once more with `--busy-poll`. The same test against
//! qemu-storage-daemon as a cross-check of the test itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::mem::MaybeUninit;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use blkio::{Blkio, Blkioq, Completion, ReqFlags};
use tests::blk::{SECTOR, pattern};
use tests::{Peer, TempDir};

const IMAGE_SIZE: u64 = 64 << 20;
const QUEUES: usize = 2;
const DEPTH: usize = 16;
const BS: usize = 4096;
/// Requests per queue (in rounds of DEPTH).
const PER_QUEUE: usize = 256;
const TIMEOUT: Duration = Duration::from_secs(10);

/// Queue `q`, request `i`: where it goes (queue 0 the first half of the disk's first 4 MiB,
/// queue 1 the second, interleaved so both queues write neighbouring blocks).
fn offset(q: usize, i: usize) -> u64 {
    ((i * QUEUES + q) * BS) as u64
}

/// Submits `count` requests and waits for all of them, checking each succeeded.
fn wait_all(q: &mut Blkioq, count: usize) {
    let mut comps: Vec<MaybeUninit<Completion>> =
        (0..count).map(|_| MaybeUninit::uninit()).collect();
    let mut got = 0;
    while got < count {
        let mut timeout = TIMEOUT;
        let n = q
            .do_io(&mut comps[got..], count - got, Some(&mut timeout), None)
            .unwrap();
        assert!(n > 0, "no completion within {TIMEOUT:?}");
        for c in &comps[got..got + n] {
            // SAFETY: do_io initialised the first `n` entries it was given.
            let c = unsafe { c.assume_init_ref() };
            assert_eq!(c.ret, 0, "request {} failed: {}", c.user_data, c.ret);
        }
        got += n;
    }
}

/// Runs the verified write/read pass over `QUEUES` queues against the back-end on `sock`.
fn blkio_pass(sock: &Path) {
    let mut b = Blkio::new("virtio-blk-vhost-user").unwrap();
    b.set_str("path", sock.to_str().unwrap()).unwrap();
    b.connect().unwrap();
    b.set_i32("num-queues", QUEUES as i32).unwrap();
    b.set_i32("queue-size", 128).unwrap();
    let capacity = b.get_u64("capacity").unwrap();
    assert_eq!(capacity, IMAGE_SIZE, "capacity (bytes)");
    let align = b.get_u64("mem-region-alignment").unwrap() as usize;
    let len = (QUEUES * DEPTH * BS).div_ceil(align) * align;
    let region = b.alloc_mem_region(len).unwrap();
    let mut started = b.start().unwrap();
    b.map_mem_region(&region).unwrap();
    assert_eq!(started.queues.len(), QUEUES);
    let base = region.addr as *mut u8;
    let buf = |q: usize, slot: usize| -> *mut u8 {
        // SAFETY: inside the mapped region of QUEUES * DEPTH * BS bytes.
        unsafe { base.add((q * DEPTH + slot) * BS) }
    };

    // Writes, a round of DEPTH requests on every queue at a time.
    for round in 0..PER_QUEUE / DEPTH {
        for (qi, q) in started.queues.iter_mut().enumerate() {
            for slot in 0..DEPTH {
                let i = round * DEPTH + slot;
                let off = offset(qi, i);
                let data = pattern(0x5a, off / SECTOR, BS);
                // SAFETY: the slot is BS bytes of the mapped region, not in flight.
                unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), buf(qi, slot), BS) };
                q.write(off, buf(qi, slot), BS, i, ReqFlags::empty());
            }
        }
        for q in &mut started.queues {
            wait_all(q, DEPTH);
        }
    }
    for q in &mut started.queues {
        q.flush(0, ReqFlags::empty());
        wait_all(q, 1);
    }
    // Reads back, each queue reading what the other one wrote.
    for round in 0..PER_QUEUE / DEPTH {
        for (qi, q) in started.queues.iter_mut().enumerate() {
            for slot in 0..DEPTH {
                // SAFETY: as above.
                unsafe { std::ptr::write_bytes(buf(qi, slot), 0xee, BS) };
                let i = round * DEPTH + slot;
                q.read(
                    offset(QUEUES - 1 - qi, i),
                    buf(qi, slot),
                    BS,
                    i,
                    ReqFlags::empty(),
                );
            }
        }
        for (qi, q) in started.queues.iter_mut().enumerate() {
            wait_all(q, DEPTH);
            for slot in 0..DEPTH {
                let off = offset(QUEUES - 1 - qi, round * DEPTH + slot);
                // SAFETY: the request completed; the slot holds what the device wrote.
                let got = unsafe { std::slice::from_raw_parts(buf(qi, slot), BS) };
                assert!(
                    got == pattern(0x5a, off / SECTOR, BS).as_slice(),
                    "queue {qi}: data read at {off:#x} differs"
                );
            }
        }
    }
}

fn check_image(image: &Path) {
    let f = File::open(image).unwrap();
    let total = PER_QUEUE * QUEUES * BS;
    let mut disk = vec![0u8; total];
    f.read_exact_at(&mut disk, 0).unwrap();
    assert!(
        disk == pattern(0x5a, 0, total),
        "the image does not hold what libblkio wrote"
    );
}

fn make_image(dir: &TempDir) -> std::path::PathBuf {
    let image = dir.join("disk.img");
    File::create(&image).unwrap().set_len(IMAGE_SIZE).unwrap();
    image
}

#[test]
fn blkio_two_queues_against_vhost_user_blk() {
    against_ours("blkio_vub", &[]);
}

/// The same with both queue threads busy polling (`--busy-poll`).
#[test]
fn blkio_two_queues_against_busy_polling_vhost_user_blk() {
    against_ours("blkio_vub_busy", &["--busy-poll"]);
}

fn against_ours(name: &str, extra: &[&str]) {
    let dir = TempDir::new(name).unwrap();
    let image = make_image(&dir);
    let bin = tests::guest::workspace_binary("vhost-user-blk").expect("build vhost-user-blk");
    let sock = dir.join("vub.sock");
    let mut cmd = Command::new(bin);
    cmd.arg("--socket-path")
        .arg(&sock)
        .arg("--image")
        .arg(&image)
        .args(["--num-queues", "2"])
        .args(extra);
    let mut peer = Peer::spawn("vhost-user-blk", cmd).unwrap();
    peer.wait_for_socket(&sock, tests::PEER_START_TIMEOUT)
        .unwrap();
    blkio_pass(&sock);
    let (status, clean) = peer.interrupt(tests::PEER_STOP_TIMEOUT).unwrap();
    assert!(
        clean && status.success(),
        "stop: {status}\n{}",
        peer.output()
    );
    check_image(&image);
    let pid = peer.pid();
    drop(peer);
    tests::assert_clean(&[pid], dir.path());
}

#[test]
fn blkio_two_queues_against_qsd() {
    let qsd = tests::require_peer!("qemu-storage-daemon");
    let dir = TempDir::new("blkio_qsd").unwrap();
    let image = make_image(&dir);
    let sock = dir.join("vub.sock");
    let mut cmd = Command::new(qsd);
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
    blkio_pass(&sock);
    let pid = peer.pid();
    let _ = peer.interrupt(tests::PEER_STOP_TIMEOUT).unwrap();
    check_image(&image);
    drop(peer);
    tests::assert_clean(&[pid], dir.path());
}
