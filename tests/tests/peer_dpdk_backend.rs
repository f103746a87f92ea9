//! Our front-end against DPDK testpmd's `net_vhost` (DPDK's vhost library as the back-end):
//! we are the virtio-net driver, vring 0 = RX, vring 1 = TX, driven by our `vring` driver
//! side in memfd guest memory. In `rxonly` mode testpmd must count exactly the N frames we
//! transmit; in `txonly` mode every frame we receive must carry a 12-byte `virtio_net_hdr`
//! (no offloads, `num_buffers` 1) and testpmd's 64-byte frame, and testpmd's final
//! `TX-packets` must equal what we received. Split and packed rings.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tests::net;
use tests::{Peer, TempDir};
use vhost_io_std::frontend::{DriverRing, Frontend, GuestRam};
use vhost_proto::wire::{ProtocolFeatures, VirtioFeatures};
use vring::memory::GuestSlice;

/// testpmd tests take both cores: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const RAM: u64 = 16 << 20;
const QUEUE_SIZE: u16 = 256;
/// RX buffers from here (one 2 KiB buffer per ring slot), TX buffers after them.
const RX_BUFS: u64 = 1 << 20;
const RX_BUF_LEN: u32 = 2048;
const TX_BUFS: u64 = 4 << 20;
const TX_SLOT: u64 = 128;
/// Frame length testpmd's txonly mode sends by default.
const TXONLY_LEN: usize = 64;
/// Frames we transmit in rxonly mode, and length.
const TX_FRAMES: u64 = 20_000;
const TX_LEN: usize = 64;
/// Frames we receive in txonly mode before we stop posting buffers.
const RX_FRAMES: u64 = 20_000;
const TIMEOUT: Duration = Duration::from_secs(10);

fn testpmd(bin: &Path, sock: &Path, prefix: &str, mode: &str) -> Command {
    let vdev = format!("net_vhost0,iface={},queues=1", sock.display());
    net::testpmd(bin, prefix, "1", &[], &vdev, mode)
}

/// Handshake with DPDK's vhost library and both rings started; returns the rings (RX, TX).
fn connect(sock: &Path, ram: &GuestRam, packed: bool) -> (Frontend, DriverRing, DriverRing) {
    let mut front = Frontend::connect(sock).unwrap();
    let offered = front.get_features().unwrap();
    let mrg = VirtioFeatures::from_bits_retain(net::F_MRG_RXBUF);
    assert!(offered.contains(VirtioFeatures::VERSION_1 | VirtioFeatures::PROTOCOL_FEATURES | mrg));
    if packed {
        assert!(offered.contains(VirtioFeatures::RING_PACKED));
    }
    let protocol = front.get_protocol_features().unwrap();
    // No CONFIG from DPDK's vhost library (GET_CONFIG would close the connection); no
    // STATUS either: with it the device waits for SET_STATUS(DRIVER_OK).
    assert!(!protocol.contains(ProtocolFeatures::CONFIG));
    let chosen = protocol & (ProtocolFeatures::REPLY_ACK | ProtocolFeatures::MQ);
    front.set_protocol_features(chosen).unwrap();
    assert!(front.reply_ack());
    if chosen.contains(ProtocolFeatures::MQ) {
        // Its compile-time maximum, not the `queues=1` it was started with.
        assert!(front.get_queue_num().unwrap() >= 1);
    }
    front.set_owner().unwrap();
    let mut features = VirtioFeatures::VERSION_1 | VirtioFeatures::PROTOCOL_FEATURES | mrg;
    if packed {
        features |= VirtioFeatures::RING_PACKED;
    }
    front.set_features(features).unwrap();
    front.set_mem_table(&[(ram.region(), ram.fd())]).unwrap();
    let rf = vring::RingFeatures::default();
    let make = |index: u16, base: u64| {
        if packed {
            DriverRing::packed(ram, index, base, QUEUE_SIZE, rf).unwrap()
        } else {
            DriverRing::split(ram, index, base, QUEUE_SIZE, rf).unwrap()
        }
    };
    let (rx, end0) = make(0, 0);
    let (tx, end1) = make(1, 0x2_0000);
    assert!(end0 <= 0x2_0000 && end1 <= RX_BUFS);
    for ring in [&rx, &tx] {
        front.start_ring(ring, ram).unwrap();
    }
    (front, rx, tx)
}

/// Pops every used buffer available now, without waiting.
fn drain(ring: &mut DriverRing) -> Vec<(u16, u32)> {
    let mut out = Vec::new();
    while let Some(u) = ring.pop_used().unwrap() {
        out.push(u);
    }
    out
}

fn start_testpmd(bin: &Path, sock: &Path, prefix: &str, mode: &str) -> Peer {
    let mut peer =
        Peer::spawn(&format!("testpmd {mode}"), testpmd(bin, sock, prefix, mode)).unwrap();
    peer.wait_for_socket(sock, tests::PEER_START_TIMEOUT)
        .unwrap();
    // Forwarding has started (and testpmd's start-up drain of its RX queues is over).
    peer.wait_for_output("Rx-pps", tests::PEER_START_TIMEOUT)
        .unwrap();
    peer
}

/// rxonly: we transmit TX_FRAMES frames; testpmd counts them all.
fn rxonly(bin: &Path, dir: &TempDir, prefix: &str, packed: bool) -> u32 {
    let sock = dir.join("vhost-rx.sock");
    let mut peer = start_testpmd(bin, &sock, prefix, "rxonly");
    let ram = GuestRam::new(0, RAM).unwrap();
    let (mut front, _rx, mut tx) = connect(&sock, &ram, packed);
    let mem = ram.memory();
    let hdr = net::header(0);
    let mut sent = 0u64;
    let mut slots = 0u64;
    let batch = u64::from(QUEUE_SIZE / 4);
    while sent < TX_FRAMES {
        let n = batch.min(TX_FRAMES - sent);
        let mut ids = Vec::new();
        for k in 0..n {
            let seq = sent + k;
            let at = TX_BUFS + k * TX_SLOT;
            let slice = GuestSlice::new(mem, at, TX_SLOT as usize).unwrap();
            slice.write_at(0, &hdr).unwrap();
            slice
                .write_at(net::HDR_LEN, &net::frame(seq, TX_LEN))
                .unwrap();
            let len = (net::HDR_LEN + TX_LEN) as u32;
            // Header and frame in one descriptor, or in two.
            let id = if seq.is_multiple_of(2) {
                slots += 1;
                tx.add(&[(at, len)], &[]).unwrap()
            } else {
                slots += 2;
                tx.add(
                    &[
                        (at, net::HDR_LEN as u32),
                        (at + net::HDR_LEN as u64, TX_LEN as u32),
                    ],
                    &[],
                )
                .unwrap()
            };
            ids.push(id);
        }
        tx.kick().unwrap();
        let used = tx.collect(ids.len(), TIMEOUT).unwrap();
        assert_eq!(used.len(), ids.len());
        sent += n;
    }
    // testpmd's port counters show them all before it is stopped.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = net::latest_port_stats(&peer.output()).map_or(0, |c| c.rx_packets);
        if seen >= TX_FRAMES {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "testpmd saw {seen} of {TX_FRAMES}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Stopping the TX ring: its position covers every frame.
    let base = front.get_vring_base(1).unwrap();
    if packed {
        let size = u64::from(QUEUE_SIZE);
        assert_eq!(u64::from(base.packed_avail_idx()), slots % size, "{base:?}");
        assert_eq!(base.packed_avail_wrap(), (slots / size).is_multiple_of(2));
    } else {
        assert_eq!(u64::from(base.split_next_avail()), TX_FRAMES % 65536);
    }
    let _ = front.get_vring_base(0).unwrap();
    drop(front);
    let stats = net::stop_testpmd(&mut peer);
    eprintln!(
        "rxonly ({}): we sent {TX_FRAMES}, testpmd RX-packets {} (dropped {})",
        if packed { "packed" } else { "split" },
        stats.rx_packets,
        stats.rx_dropped
    );
    assert_eq!(stats.rx_packets, TX_FRAMES);
    assert_eq!(stats.tx_packets, 0);
    let pid = peer.pid();
    drop(peer);
    assert!(!sock.exists(), "testpmd removes its socket");
    pid
}

/// txonly: testpmd transmits; we receive until RX_FRAMES, then stop posting buffers.
fn txonly(bin: &Path, dir: &TempDir, prefix: &str, packed: bool) -> u32 {
    let sock = dir.join("vhost-tx.sock");
    let mut peer = start_testpmd(bin, &sock, prefix, "txonly");
    let ram = GuestRam::new(0, RAM).unwrap();
    let (front, mut rx, _tx) = connect(&sock, &ram, packed);
    let mem = ram.memory();
    // Buffer `id` -> its address (ids are reused as buffers complete).
    let mut addr_of = std::collections::HashMap::new();
    let post =
        |rx: &mut DriverRing, slot: u64, addr_of: &mut std::collections::HashMap<u16, u64>| {
            let at = RX_BUFS + slot * u64::from(RX_BUF_LEN);
            GuestSlice::new(mem, at, RX_BUF_LEN as usize)
                .unwrap()
                .fill(0, RX_BUF_LEN as usize, 0xee)
                .unwrap();
            let id = rx.add(&[], &[(at, RX_BUF_LEN)]).unwrap();
            addr_of.insert(id, at);
        };
    let mut free_slots: Vec<u64> = (0..u64::from(QUEUE_SIZE)).rev().collect();
    while let Some(s) = free_slots.pop() {
        post(&mut rx, s, &mut addr_of);
    }
    rx.kick().unwrap();
    let mut received = 0u64;
    let check = |id: u16, len: u32, addr_of: &std::collections::HashMap<u16, u64>| -> u64 {
        let at = *addr_of.get(&id).expect("unknown used id");
        assert_eq!(len as usize, net::HDR_LEN + TXONLY_LEN, "used length");
        let mut b = vec![0u8; len as usize];
        GuestSlice::new(mem, at, b.len())
            .unwrap()
            .read_at(0, &mut b)
            .unwrap();
        let h = net::parse_header(&b).unwrap();
        assert_eq!(
            (h.flags, h.gso_type, h.num_buffers),
            (0, net::GSO_NONE, 1),
            "virtio_net_hdr {h:?}"
        );
        at
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while received < RX_FRAMES {
        let used = drain(&mut rx);
        if used.is_empty() {
            if !rx.enable_interrupts() {
                rx.wait_call(Duration::from_millis(100)).unwrap();
            }
            assert!(Instant::now() < deadline, "received only {received}");
            continue;
        }
        // Check every used buffer before posting again: posting reuses the freed ids.
        let done: Vec<u64> = used
            .into_iter()
            .map(|(id, len)| check(id, len, &addr_of))
            .collect();
        for at in done {
            received += 1;
            if received < RX_FRAMES {
                post(
                    &mut rx,
                    (at - RX_BUFS) / u64::from(RX_BUF_LEN),
                    &mut addr_of,
                );
            }
        }
        rx.kick().unwrap();
    }
    // testpmd fills what is still posted, then we stop it and count the rest.
    std::thread::sleep(Duration::from_millis(300));
    let stats = net::stop_testpmd(&mut peer);
    for (id, len) in drain(&mut rx) {
        check(id, len, &addr_of);
        received += 1;
    }
    drop(front);
    eprintln!(
        "txonly ({}): we received {received}, testpmd TX-packets {} (dropped {})",
        if packed { "packed" } else { "split" },
        stats.tx_packets,
        stats.tx_dropped
    );
    assert_eq!(
        stats.tx_packets, received,
        "testpmd TX-packets vs frames received"
    );
    assert_eq!(stats.rx_packets, 0);
    let pid = peer.pid();
    drop(peer);
    assert!(!sock.exists(), "testpmd removes its socket");
    pid
}

fn run(packed: bool) {
    let bin = tests::require_peer!("dpdk-testpmd");
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let started = Instant::now();
    let label = if packed {
        "dpdkbe_packed"
    } else {
        "dpdkbe_split"
    };
    let dir = TempDir::new(label).unwrap();
    let prefix = net::DpdkPrefix::new(if packed { "bp" } else { "bs" });
    let a = rxonly(&bin, &dir, prefix.prefix(), packed);
    let b = txonly(&bin, &dir, prefix.prefix(), packed);
    tests::assert_clean(&[a, b], dir.path());
    let took = started.elapsed();
    eprintln!("{label}: {took:?}");
    assert!(took < Duration::from_secs(60), "took {took:?}");
}

#[test]
fn dpdk_vhost_split() {
    run(false);
}

#[test]
fn dpdk_vhost_packed() {
    run(true);
}
