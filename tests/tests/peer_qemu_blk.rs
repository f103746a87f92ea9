//! QEMU 7.2 (TCG) as the front-end of our `vhost-user-blk`: a tiny Linux guest (Debian's
//! cloud kernel, a busybox initramfs built by the test, see `tests::guest`) writes a pattern
//! to `/dev/vda` with `dd oflag=direct`, syncs, reads it back with `iflag=direct`, reads
//! data the host put into the image beforehand, and powers off; the host then checks the
//! image file. Split and packed rings, 1 and 2 queues (2 guest CPUs, one `dd` per CPU so
//! both queues carry requests). And a reconnect: QEMU is SIGKILLed while the guest writes,
//! a new QEMU attaches to the same (still running) back-end, and the image is consistent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tests::blk::{SECTOR, pattern};
use tests::guest::{self, QemuBlk};
use tests::{Peer, TempDir};

const IMAGE_SIZE: u64 = 64 << 20;
const BLOCK: u64 = 4096;
/// The area the guest writes and reads back (in 4 KiB blocks).
const W: u64 = 2048;
/// The area the host fills before boot and the guest reads.
const H: u64 = 1024;
/// Blocks in the W and H areas.
const N: u64 = 64;
/// The reconnect test's region: filled with pattern A by the host, overwritten with B and C
/// alternately by the guest until QEMU is killed.
const R: u64 = 4096;
const NR: u64 = 256;

const SEED_NEW: u8 = 0x22;
const SEED_HOST: u8 = 0x11;
const SEED_A: u8 = 0x33;
const SEED_B: u8 = 0x44;
const SEED_C: u8 = 0x55;

/// A guest boot: powered off and printed its markers within this (TCG on a loaded 2-core
/// machine; an idle boot takes about 6 s).
const BOOT_TIMEOUT: Duration = Duration::from_secs(150);

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
say() { echo "VHOST-$*"; }
die() { say "FAIL $*"; poweroff -f; sleep 10; }
for a in $(cat /proc/cmdline); do case "$a" in vhost_*=*) export "$a";; esac; done
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk; do
  insmod /lib/$m.ko || die "insmod $m"
done
i=0
while [ ! -b /dev/vda ]; do i=$((i+1)); [ $i -gt 300 ] && die "no /dev/vda"; sleep 0.1; done
say "FEATURES $(cat /sys/bus/virtio/devices/virtio0/features)"
say "MQ $(ls /sys/block/vda/mq | wc -l)"
say "CPUS $(nproc)"
on() { k=$1; shift; if [ "$(nproc)" -gt 1 ]; then taskset $((1 << k)) "$@"; else "$@"; fi; }
# wr FILE SEEK COUNT: FILE to blocks [SEEK, SEEK+COUNT), one half from each CPU.
wr() {
  h=$(($3 / 2))
  on 0 dd if=$1 of=/dev/vda bs=4096 count=$h seek=$2 oflag=direct conv=notrunc 2>/tmp/e0 &
  p=$!
  on 1 dd if=$1 of=/dev/vda bs=4096 skip=$h count=$(($3 - h)) seek=$(($2 + h)) oflag=direct conv=notrunc 2>/tmp/e1 || die "dd write: $(cat /tmp/e1)"
  wait $p || die "dd write: $(cat /tmp/e0)"
}
# rd SKIP COUNT OUT
rd() {
  h=$(($2 / 2))
  on 0 dd if=/dev/vda of=$3.0 bs=4096 skip=$1 count=$h iflag=direct 2>/tmp/e0 &
  p=$!
  on 1 dd if=/dev/vda of=$3.1 bs=4096 skip=$(($1 + h)) count=$(($2 - h)) iflag=direct 2>/tmp/e1 || die "dd read: $(cat /tmp/e1)"
  wait $p || die "dd read: $(cat /tmp/e0)"
  cat $3.0 $3.1 > $3
  rm -f $3.0 $3.1
}
basic() {
  wr /new.bin $vhost_w $vhost_n
  sync
  rd $vhost_w $vhost_n /tmp/back
  cmp /new.bin /tmp/back || die "read back differs"
  say "WRITE-OK"
  rd $vhost_h $vhost_n /tmp/host
  cmp /host.bin /tmp/host || die "host data differs"
  say "READ-OK"
  # How often each hardware queue was run (blk-mq debugfs), to show both carried I/O.
  mount -t debugfs none /sys/kernel/debug || say "NODEBUGFS"
  for d in /sys/kernel/debug/block/vda/hctx*; do
    say "HCTX ${d##*/} $(cat $d/run)"
  done
}
case "$vhost_mode" in
basic) basic ;;
loop)
  say "WRITING"
  while true; do wr /b.bin $vhost_r $vhost_nr; say "PASS-B"; wr /c.bin $vhost_r $vhost_nr; say "PASS-C"; done
  ;;
verify)
  rd $vhost_r $vhost_nr /tmp/r
  say "MD5 $(md5sum < /tmp/r)"
  basic
  ;;
*) die "unknown mode $vhost_mode" ;;
esac
say "DONE"
poweroff -f
sleep 10
"#;

struct Env {
    qemu: PathBuf,
    blk: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
}

/// The peers, the backend binary and the guest, found or built once per test binary.
/// `None`: skipped (a peer is missing and not required).
fn env() -> Option<&'static Env> {
    static ENV: OnceLock<Option<Env>> = OnceLock::new();
    ENV.get_or_init(|| {
        let test = tests::current_test();
        let qemu = tests::require_peer(&test, "qemu-system-x86_64")?;
        let busybox = tests::require_peer(&test, "busybox")?;
        let cpio = tests::require_peer(&test, "cpio")?;
        let kernel = guest::require_kernel(&test)?;
        let blk = guest::workspace_binary("vhost-user-blk").expect("build vhost-user-blk");
        let new = pattern(SEED_NEW, W * BLOCK / SECTOR, (N * BLOCK) as usize);
        let host = pattern(SEED_HOST, H * BLOCK / SECTOR, (N * BLOCK) as usize);
        let b = pattern(SEED_B, R * BLOCK / SECTOR, (NR * BLOCK) as usize);
        let c = pattern(SEED_C, R * BLOCK / SECTOR, (NR * BLOCK) as usize);
        let files: [(&str, &[u8]); 4] = [
            ("new.bin", &new),
            ("host.bin", &host),
            ("b.bin", &b),
            ("c.bin", &c),
        ];
        let t = Instant::now();
        let initrd = guest::build_initramfs(&kernel, &busybox, &cpio, INIT, &files)
            .expect("build the initramfs");
        eprintln!(
            "guest: kernel {}, initramfs {} ({:?})",
            kernel.vmlinuz.display(),
            initrd.path.display(),
            t.elapsed()
        );
        Some(Env {
            qemu,
            blk,
            kernel: kernel.vmlinuz,
            initrd: initrd.path,
        })
    })
    .as_ref()
}

/// A 64 MiB image: zeros, the host area and region R (pattern A) filled.
fn make_image(path: &Path) {
    let f = File::create(path).unwrap();
    f.set_len(IMAGE_SIZE).unwrap();
    let host = pattern(SEED_HOST, H * BLOCK / SECTOR, (N * BLOCK) as usize);
    f.write_all_at(&host, H * BLOCK).unwrap();
    let a = pattern(SEED_A, R * BLOCK / SECTOR, (NR * BLOCK) as usize);
    f.write_all_at(&a, R * BLOCK).unwrap();
    f.sync_all().unwrap();
}

fn read_image(path: &Path, block: u64, blocks: u64) -> Vec<u8> {
    let f = OpenOptions::new().read(true).open(path).unwrap();
    let mut buf = vec![0u8; (blocks * BLOCK) as usize];
    f.read_exact_at(&mut buf, block * BLOCK).unwrap();
    buf
}

fn start_backend(env: &Env, dir: &TempDir, image: &Path, queues: u16) -> (Peer, PathBuf) {
    let sock = dir.join("vub.sock");
    let mut cmd = Command::new(&env.blk);
    cmd.arg("--socket-path")
        .arg(&sock)
        .arg("--image")
        .arg(image)
        .args(["--num-queues", &queues.to_string(), "-v"]);
    let mut peer = Peer::spawn("vhost-user-blk", cmd).unwrap();
    peer.wait_for_socket(&sock, tests::PEER_START_TIMEOUT)
        .unwrap();
    (peer, sock)
}

fn qemu(env: &Env, sock: &Path, packed: bool, queues: u16, mode: &str) -> Peer {
    let q = QemuBlk {
        kernel: env.kernel.clone(),
        initrd: env.initrd.clone(),
        socket: sock.to_path_buf(),
        packed,
        num_queues: queues,
        cpus: queues,
        mem_mib: 256,
        append: format!(
            "vhost_mode={mode} vhost_w={W} vhost_h={H} vhost_n={N} vhost_r={R} vhost_nr={NR}"
        ),
    };
    Peer::spawn("qemu-system-x86_64", q.command(&env.qemu)).unwrap()
}

/// The guest's `VHOST-<name> ...` line, its value after the name.
fn marker(out: &str, name: &str) -> Option<String> {
    let key = format!("VHOST-{name}");
    out.lines()
        .filter_map(|l| l.find(&key).map(|i| &l[i + key.len()..]))
        .map(|rest| rest.trim().to_owned())
        .next()
}

/// Waits until the guest powered off (QEMU exited) and checks it got through `DONE`.
fn wait_guest(q: &mut Peer, what: &str) -> String {
    let start = Instant::now();
    let status = q.wait_timeout(BOOT_TIMEOUT).unwrap();
    let out = q.output();
    assert!(
        status.is_some(),
        "{what}: guest did not power off within {BOOT_TIMEOUT:?}; output:\n{out}"
    );
    assert!(
        marker(&out, "FAIL").is_none(),
        "{what}: guest failed; output:\n{out}"
    );
    assert!(
        marker(&out, "DONE").is_some(),
        "{what}: guest ended without DONE ({:?}); output:\n{out}",
        status
    );
    eprintln!("{what}: guest ran {:?}", start.elapsed());
    out
}

/// Checks the features and queue count the guest reports.
fn check_negotiated(out: &str, packed: bool, queues: u16) {
    let features = marker(out, "FEATURES").expect("features line");
    let bit = |n: usize| features.as_bytes().get(n) == Some(&b'1');
    assert!(bit(32), "VERSION_1 not negotiated: {features}");
    assert_eq!(
        bit(34),
        packed,
        "RING_PACKED (bit 34) negotiated: {features}"
    );
    let mq: u16 = marker(out, "MQ").unwrap().parse().unwrap();
    assert_eq!(mq, queues, "guest hardware queues");
    let hctx: Vec<(String, u64)> = out
        .lines()
        .filter_map(|l| l.split("VHOST-HCTX ").nth(1))
        .filter_map(|rest| {
            let mut it = rest.split_whitespace();
            Some((it.next()?.to_owned(), it.next()?.parse().ok()?))
        })
        .collect();
    eprintln!("runs per hardware queue: {hctx:?}");
    assert_eq!(hctx.len(), usize::from(queues), "blk-mq debugfs: {hctx:?}");
    assert!(
        hctx.iter().all(|(_, n)| *n > 0),
        "a queue carried no requests: {hctx:?}"
    );
}

fn check_basic_image(image: &Path) {
    let new = pattern(SEED_NEW, W * BLOCK / SECTOR, (N * BLOCK) as usize);
    assert!(
        read_image(image, W, N) == new,
        "the guest's writes are not in the image"
    );
}

fn stop_backend(mut b: Peer) {
    let (status, by_sigint) = b.interrupt(tests::PEER_STOP_TIMEOUT).unwrap();
    assert!(
        by_sigint && status.success(),
        "vhost-user-blk did not stop cleanly ({status}); output:\n{}",
        b.output()
    );
}

fn boot_case(name: &str, packed: bool, queues: u16) {
    let Some(env) = env() else { return };
    let dir = TempDir::new(name).unwrap();
    let image = dir.join("disk.img");
    make_image(&image);
    let (backend, sock) = start_backend(env, &dir, &image, queues);
    let mut q = qemu(env, &sock, packed, queues, "basic");
    let out = wait_guest(&mut q, name);
    check_negotiated(&out, packed, queues);
    assert!(marker(&out, "WRITE-OK").is_some() && marker(&out, "READ-OK").is_some());
    let pids = [q.pid(), backend.pid()];
    drop(q);
    stop_backend(backend);
    check_basic_image(&image);
    tests::assert_clean(&pids, dir.path());
}

#[test]
fn qemu_split_1q() {
    boot_case("qemu_split_1q", false, 1);
}

#[test]
fn qemu_packed_1q() {
    boot_case("qemu_packed_1q", true, 1);
}

#[test]
fn qemu_split_2q() {
    boot_case("qemu_split_2q", false, 2);
}

#[test]
fn qemu_packed_2q() {
    boot_case("qemu_packed_2q", true, 2);
}

/// QEMU is SIGKILLed while the guest overwrites region R (pattern A) with B and C in
/// turn; a second QEMU attaches to the same back-end process, reads R (its MD5 must match
/// the image file: the back-end serves what is on disk) and runs the basic write/read
/// pass. Consistency: every 512-byte sector of R holds exactly A, B or C for that sector
/// (no torn sector, nothing from another sector); 4 KiB requests may be half-written only
/// at sector granularity.
#[test]
fn qemu_reconnect_after_kill() {
    let Some(env) = env() else { return };
    let name = "qemu_reconnect_after_kill";
    let dir = TempDir::new(name).unwrap();
    let image = dir.join("disk.img");
    make_image(&image);
    let (mut backend, sock) = start_backend(env, &dir, &image, 1);

    let mut q1 = qemu(env, &sock, false, 1, "loop");
    q1.wait_for_output("VHOST-WRITING", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("first guest: {e}"));
    let writing = Instant::now();
    q1.wait_for_output("VHOST-PASS-B", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("first guest: {e}"));
    // Kill somewhere inside the second (C) pass: about half a pass later.
    std::thread::sleep(writing.elapsed() / 2);
    let q1_pid = q1.pid();
    q1.kill().unwrap();
    let passes = q1.output().matches("VHOST-PASS-").count();
    drop(q1);
    assert!(
        backend.try_wait().unwrap().is_none(),
        "the back-end exited when QEMU was killed:\n{}",
        backend.output()
    );

    let mut q2 = qemu(env, &sock, false, 1, "verify");
    let out = wait_guest(&mut q2, "second guest");
    let md5 = marker(&out, "MD5").unwrap();
    let md5 = md5.split_whitespace().next().unwrap().to_owned();
    let q2_pid = q2.pid();
    drop(q2);
    let backend_pid = backend.pid();
    stop_backend(backend);

    check_basic_image(&image);
    let region = read_image(&image, R, NR);
    let host_md5 = md5_hex(&region);
    assert_eq!(
        md5, host_md5,
        "the guest read region R differently from the image"
    );
    let a = pattern(SEED_A, R * BLOCK / SECTOR, region.len());
    let b = pattern(SEED_B, R * BLOCK / SECTOR, region.len());
    let c = pattern(SEED_C, R * BLOCK / SECTOR, region.len());
    let mut counts = [0usize; 3];
    for (i, sector) in region.chunks(SECTOR as usize).enumerate() {
        let at = i * SECTOR as usize..(i + 1) * SECTOR as usize;
        let which = [&a, &b, &c]
            .iter()
            .position(|p| p[at.clone()] == *sector)
            .unwrap_or_else(|| panic!("sector {i} of region R is torn or foreign"));
        counts[which] += 1;
    }
    eprintln!(
        "{name}: killed after {passes} completed passes; region R sectors: {} A, {} B, {} C",
        counts[0], counts[1], counts[2]
    );
    assert_eq!(
        counts[0], 0,
        "the first B pass had completed before the kill"
    );
    tests::assert_clean(&[q1_pid, q2_pid, backend_pid], dir.path());
}

/// MD5 (RFC 1321) of `data` as lowercase hex, to compare with the guest's `md5sum`.
fn md5_hex(data: &[u8]) -> String {
    const S: [u32; 64] = [
        7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5,
        9, 14, 20, 5, 9, 14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10,
        15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
    ];
    let k: Vec<u32> = (0..64)
        .map(|i| ((i as f64 + 1.0).sin().abs() * 4_294_967_296.0) as u32)
        .collect();
    let mut msg = data.to_vec();
    let bits = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bits.to_le_bytes());
    let (mut a0, mut b0, mut c0, mut d0) = (
        0x6745_2301u32,
        0xefcd_ab89u32,
        0x98ba_dcfeu32,
        0x1032_5476u32,
    );
    for chunk in msg.chunks(64) {
        let m: Vec<u32> = chunk
            .chunks(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        let (mut a, mut b, mut c, mut d) = (a0, b0, c0, d0);
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let f = f.wrapping_add(a).wrapping_add(k[i]).wrapping_add(m[g]);
            a = d;
            d = c;
            c = b;
            b = b.wrapping_add(f.rotate_left(S[i]));
        }
        a0 = a0.wrapping_add(a);
        b0 = b0.wrapping_add(b);
        c0 = c0.wrapping_add(c);
        d0 = d0.wrapping_add(d);
    }
    [a0, b0, c0, d0]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn md5_matches_rfc1321() {
    assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
    assert_eq!(
        md5_hex(b"The quick brown fox jumps over the lazy dog"),
        "9e107d9d372bb6826bd81d3542a419d6"
    );
}
