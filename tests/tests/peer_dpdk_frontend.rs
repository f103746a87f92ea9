//! DPDK testpmd's `net_virtio_user` (a userspace virtio-net driver, a vhost-user front-end)
//! against our back-end: a small virtio-net test device on the std binding (queue 0 = RX,
//! queue 1 = TX). In `txonly` mode the frames our device takes from TX must equal testpmd's
//! final `TX-packets`; in `rxonly` mode testpmd's final `RX-packets` must equal the frames
//! our device completed on RX. Then the next testpmd connects to the same server. Split and
//! packed rings.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use std::sync::Arc;
use tests::net;
use tests::{Peer, TempDir};
use vhost_backend::QueueError;
use vhost_backend::os::eventfd::EventFd;
use vhost_backend::{Device, Queue};
use vhost_io_std::backend::Server;
use vhost_proto::backend::DeviceDescription;
use vhost_proto::wire::{ProtocolFeatures, VirtioFeatures};

/// testpmd tests take both cores: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Frame length testpmd's txonly mode sends by default (`--txpkts 64`).
const TXONLY_LEN: usize = 64;
/// Frame length our device delivers on RX.
const RX_LEN: usize = 64;
/// Frames our device delivers in each rxonly run.
const RX_FRAMES: u64 = 20_000;

/// The test device: counts what testpmd transmits, generates what it receives.
struct TestNet {
    /// Frames taken from TX (all connections).
    tx_frames: AtomicU64,
    /// TX frames whose header or length was not what testpmd sends.
    tx_bad: AtomicU64,
    /// TX frames taken while the ring was disabled.
    tx_disabled: AtomicU64,
    /// RX frames still to generate.
    rx_budget: AtomicU64,
    /// RX frames completed (all connections).
    rx_frames: AtomicU64,
    /// Wakes the RX worker (more budget, ring enabled).
    rx_wake: EventFd,
}

impl TestNet {
    fn new() -> Self {
        TestNet {
            tx_frames: AtomicU64::new(0),
            tx_bad: AtomicU64::new(0),
            tx_disabled: AtomicU64::new(0),
            rx_budget: AtomicU64::new(0),
            rx_frames: AtomicU64::new(0),
            rx_wake: EventFd::new(true).unwrap(),
        }
    }

    fn tx(&self, q: &mut Queue) -> Result<(), QueueError> {
        let mut buf = [0u8; 2048];
        while let Some(chain) = q.pop()? {
            let mut r = q.reader(&chain);
            let mut n = 0;
            loop {
                let k = r.read(&mut buf[n..])?;
                if k == 0 || n + k == buf.len() {
                    n += k;
                    break;
                }
                n += k;
            }
            let total = n as u64 + r.skip(usize::MAX)? as u64;
            let hdr = net::parse_header(&buf[..n]);
            let good = hdr.is_some_and(|h| h.gso_type == net::GSO_NONE && h.flags == 0)
                && total == (net::HDR_LEN + TXONLY_LEN) as u64;
            if !good {
                self.tx_bad.fetch_add(1, Ordering::Relaxed);
            }
            if !q.is_enabled() {
                self.tx_disabled.fetch_add(1, Ordering::Relaxed);
            }
            self.tx_frames.fetch_add(1, Ordering::Relaxed);
            q.complete(chain, 0)?;
        }
        Ok(())
    }

    fn rx(&self, q: &mut Queue) -> Result<(), QueueError> {
        if !q.is_enabled() {
            return Ok(());
        }
        let hdr = net::header(1);
        let mut done = 0u32;
        while self.rx_budget.load(Ordering::Acquire) > 0 {
            let Some(chain) = q.pop()? else { break };
            self.rx_budget.fetch_sub(1, Ordering::AcqRel);
            let seq = self.rx_frames.load(Ordering::Relaxed);
            let mut w = q.writer(&chain);
            w.write_all(&hdr)?;
            w.write_all(&net::frame(seq, RX_LEN))?;
            let len = w.bytes_written();
            q.complete(chain, len)?;
            self.rx_frames.fetch_add(1, Ordering::Release);
            done += 1;
            if done.is_multiple_of(64) {
                q.publish();
            }
        }
        Ok(())
    }
}

impl Device for TestNet {
    fn description(&self) -> DeviceDescription {
        DeviceDescription::new(
            VirtioFeatures::VERSION_1
                | VirtioFeatures::RING_PACKED
                | VirtioFeatures::EVENT_IDX
                | VirtioFeatures::INDIRECT_DESC
                | VirtioFeatures::from_bits_retain(net::F_MRG_RXBUF),
            ProtocolFeatures::MQ | ProtocolFeatures::REPLY_ACK | ProtocolFeatures::STATUS,
            2,
        )
    }

    fn start_queue(
        self: Arc<Self>,
        queue: &vhost_backend::Queue,
    ) -> Result<Box<dyn vhost_backend::QueueHandler>, vhost_proto::backend::Refused> {
        let wake = self.wakeup(queue.index());
        let h =
            vhost_backend::handler_fn(move |q: &mut vhost_backend::Queue| self.process_queue(q));
        Ok(match wake {
            Some(w) => Box::new(h.with_wakeup(w)),
            None => Box::new(h),
        })
    }

    fn queue_enabled(&self, index: u16, enabled: bool) {
        if index == 0 && enabled {
            let _ = self.rx_wake.signal();
        }
    }
}

impl TestNet {
    fn wakeup(&self, index: u16) -> Option<EventFd> {
        (index == 0)
            .then(|| self.rx_wake.try_clone().ok())
            .flatten()
    }

    fn process_queue(&self, q: &mut Queue) -> Result<(), QueueError> {
        match q.index() {
            0 => self.rx(q),
            _ => self.tx(q),
        }
    }
}

fn testpmd(bin: &Path, sock: &Path, prefix: &str, packed: bool, mode: &str) -> Command {
    let mut vdev = format!("net_virtio_user0,path={},queues=1", sock.display());
    if packed {
        vdev.push_str(",packed_vq=1");
    }
    net::testpmd(bin, prefix, "0", &["--single-file-segments"], &vdev, mode)
}

fn run(packed: bool) {
    let bin = tests::require_peer!("dpdk-testpmd");
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let started = Instant::now();
    let label = if packed {
        "dpdkfe_packed"
    } else {
        "dpdkfe_split"
    };
    let dir = TempDir::new(label).unwrap();
    let sock = dir.join("vhost.sock");
    let prefix = net::DpdkPrefix::new(if packed { "fp" } else { "fs" });
    let server = Server::bind(&sock, TestNet::new()).unwrap();
    let dev = std::sync::Arc::clone(server.device());
    let server = server.spawn().unwrap();
    let mut pids = Vec::new();

    // 1. txonly: everything testpmd says it sent reached our TX queue.
    {
        let mut peer = Peer::spawn(
            "testpmd txonly",
            testpmd(&bin, &sock, prefix.prefix(), packed, "txonly"),
        )
        .unwrap();
        pids.push(peer.pid());
        peer.wait_for_output("Tx-pps", tests::PEER_START_TIMEOUT)
            .unwrap();
        std::thread::sleep(Duration::from_secs(2));
        let stats = net::stop_testpmd(&mut peer);
        let got = dev.tx_frames.load(Ordering::Relaxed);
        eprintln!(
            "{label} txonly: testpmd TX-packets {} (dropped {}), device took {got}, {} with a bad header/length, {} while disabled",
            stats.tx_packets,
            stats.tx_dropped,
            dev.tx_bad.load(Ordering::Relaxed),
            dev.tx_disabled.load(Ordering::Relaxed),
        );
        assert!(
            stats.tx_packets > 1000,
            "testpmd sent too little: {stats:?}"
        );
        assert_eq!(got, stats.tx_packets, "frames taken vs testpmd TX-packets");
        assert_eq!(dev.tx_bad.load(Ordering::Relaxed), 0);
        assert_eq!(dev.rx_frames.load(Ordering::Relaxed), 0);
    }

    // 2. rxonly, a new testpmd on the same server: what we complete, testpmd receives.
    {
        let mut peer = Peer::spawn(
            "testpmd rxonly",
            testpmd(&bin, &sock, prefix.prefix(), packed, "rxonly"),
        )
        .unwrap();
        pids.push(peer.pid());
        // testpmd drains its RX queues when forwarding starts (frames it then does not
        // count): deliver only once it forwards.
        peer.wait_for_output("Rx-pps", tests::PEER_START_TIMEOUT)
            .unwrap();
        dev.rx_budget.store(RX_FRAMES, Ordering::Release);
        let deadline = Instant::now() + Duration::from_secs(20);
        // Until every frame was delivered and testpmd's port counters show them all.
        loop {
            let _ = dev.rx_wake.signal();
            let done = dev.rx_frames.load(Ordering::Acquire);
            let seen = net::latest_port_stats(&peer.output()).map_or(0, |c| c.rx_packets);
            if done == RX_FRAMES && seen == RX_FRAMES {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "rxonly stalled: device completed {done}, testpmd saw {seen}:\n{}",
                peer.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let stats = net::stop_testpmd(&mut peer);
        let done = dev.rx_frames.load(Ordering::Acquire);
        eprintln!(
            "{label} rxonly: device completed {done}, testpmd RX-packets {} (dropped {})",
            stats.rx_packets, stats.rx_dropped
        );
        assert_eq!(
            stats.rx_packets, done,
            "testpmd RX-packets vs frames completed"
        );
        assert_eq!(stats.tx_packets, 0);
    }
    server.stop().unwrap();
    assert!(!sock.exists(), "the server removes its socket");
    tests::assert_clean(&pids, dir.path());
    let took = started.elapsed();
    eprintln!("{label}: {took:?}");
    assert!(took < Duration::from_secs(60), "took {took:?}");
}

#[test]
fn dpdk_virtio_user_split() {
    run(false);
}

/// DPDK virtio-user sends a packed SET_VRING_BASE of `0x8000` (avail slot 0, avail wrap 1,
/// bits 16–31 zero); vhost-proto reads a missing used half as "used = avail", as DPDK's own
/// vhost library does (regression test in `vhost-proto/src/session/ring.rs`).
#[test]
fn dpdk_virtio_user_packed() {
    run(true);
}
