//! Our mio front-end (`vhost_io_mio::frontend::{FrontendSession, Handshake}`, rings from
//! `vhost_io_std::frontend::{DriverRing, GuestRam}`) against real back-ends, driven from a
//! plain `mio::Poll` loop as a VMM would:
//!
//! - qemu-storage-daemon's vhost-user-blk export (split ring): the full handshake
//!   (REPLY_ACK, MQ), virtio-blk writes of a few sectors, reads back, a flush, completions
//!   seen as `FrontendEvent::Call`, GET_VRING_BASE through the session; the image file on
//!   disk checked afterwards.
//! - DPDK testpmd's `net_vhost` in rxonly mode (split and packed rings): frames sent
//!   through our TX ring (vring 1), every one completed, and testpmd's final RX-packets
//!   equals what we sent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use tests::blk::{self, SECTOR};
use tests::{Peer, TempDir, net};
use vhost_backend::os::eventfd::EventFd;
use vhost_io_mio::frontend::{FrontendEvent, FrontendSession, Handshake, Progress, RingStart};
use vhost_io_std::frontend::{DriverRing, GuestRam};
use vhost_proto::frontend::{Connection, Reply, RequestId};
use vhost_proto::session::ApiError;
use vhost_proto::wire::{ConfigFlags, ProtocolFeatures, RegionFd, VirtioFeatures, VringBase};

/// testpmd takes both cores: one peer test at a time in this file.
static SERIAL: Mutex<()> = Mutex::new(());

const TIMEOUT: Duration = Duration::from_secs(10);

/// A front-end session in our own `Poll`.
struct Driver {
    poll: Poll,
    events: Events,
    session: FrontendSession,
    /// Rings whose call came (drained by the caller).
    calls: Vec<u16>,
}

fn ring_start(ram: &GuestRam, ring: &DriverRing) -> RingStart {
    RingStart {
        index: ring.index(),
        size: ring.size(),
        base: ring.base(),
        addr: ram.vring_addr(ring.index(), ring.config()).unwrap(),
        kick: ring.kick_fd().try_clone_to_owned().unwrap(),
        call: EventFd::from_fd(ring.call_fd().try_clone_to_owned().unwrap()),
        err: None,
    }
}

impl Driver {
    /// Connects and runs the whole handshake.
    fn handshake(
        sock: &Path,
        features: VirtioFeatures,
        protocol: ProtocolFeatures,
        ram: &GuestRam,
        rings: &mut [&mut DriverRing],
    ) -> Driver {
        let poll = Poll::new().unwrap();
        let mut session = FrontendSession::connect(sock).unwrap();
        poll.registry()
            .register(&mut session, Token(0), Interest::READABLE)
            .unwrap();
        let memory = ram
            .mem_table()
            .into_iter()
            .map(|(region, fd)| RegionFd {
                region,
                fd: fd.try_clone_to_owned().unwrap(),
            })
            .collect();
        let starts = rings.iter().map(|r| ring_start(ram, r)).collect();
        let mut hs = Handshake::new(features, protocol, memory, starts);
        let mut d = Driver {
            poll,
            events: Events::with_capacity(64),
            session,
            calls: Vec::new(),
        };
        hs.start(&mut d.session, Instant::now()).unwrap();
        let deadline = Instant::now() + TIMEOUT;
        while !hs.is_done() {
            assert!(Instant::now() < deadline, "handshake did not finish");
            for e in d.pump(Duration::from_millis(100)) {
                match hs.on_event(&mut d.session, Instant::now(), e).unwrap() {
                    Progress::NotMine(FrontendEvent::Call { index }) => d.calls.push(index),
                    Progress::NotMine(other) => panic!("during the handshake: {other:?}"),
                    _ => {}
                }
            }
        }
        for r in rings.iter_mut() {
            r.enable_interrupts();
        }
        d
    }

    /// One turn of the loop: waits at most `max` (or the session's deadline).
    fn pump(&mut self, max: Duration) -> Vec<FrontendEvent> {
        let now = Instant::now();
        let timeout = self
            .session
            .poll_timeout()
            .map_or(max, |d| d.saturating_duration_since(now).min(max));
        self.poll.poll(&mut self.events, Some(timeout)).unwrap();
        for e in &self.events {
            self.session.ready(e.token()).unwrap();
        }
        self.session.handle_timeout(Instant::now()).unwrap();
        let mut out = Vec::new();
        while let Some(e) = self.session.poll_event() {
            out.push(e);
        }
        out
    }

    /// A request through the core's typed helpers; waits for its reply.
    fn call(
        &mut self,
        f: impl FnOnce(&mut Connection<OwnedFd>, Instant) -> Result<RequestId, ApiError>,
    ) -> Reply<OwnedFd> {
        let id = self.session.request(Instant::now(), f).unwrap();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            assert!(Instant::now() < deadline, "no reply to request {id:?}");
            for e in self.pump(Duration::from_millis(100)) {
                match e {
                    FrontendEvent::Reply { id: got, reply, .. } if got == id => return reply,
                    FrontendEvent::Nacked { id: got, value, .. } if got == id => {
                        panic!("request NACKed with {value}")
                    }
                    FrontendEvent::Call { index } => self.calls.push(index),
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
    }

    /// Waits until `n` buffers of `ring` were used, popping them as calls come (and every
    /// 50 ms, so a missed call only slows the test down).
    fn collect(&mut self, ring: &mut DriverRing, n: usize) -> (Vec<(u16, u32)>, usize) {
        let mut used = Vec::new();
        let mut calls = 0;
        let deadline = Instant::now() + TIMEOUT;
        while used.len() < n {
            assert!(
                Instant::now() < deadline,
                "{} of {n} buffers used on ring {}",
                used.len(),
                ring.index()
            );
            while let Some(u) = ring.pop_used().unwrap() {
                used.push(u);
            }
            if used.len() >= n {
                break;
            }
            if ring.enable_interrupts() {
                continue;
            }
            for e in self.pump(Duration::from_millis(50)) {
                match e {
                    FrontendEvent::Call { index } if index == ring.index() => calls += 1,
                    FrontendEvent::Call { index } => self.calls.push(index),
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        (used, calls)
    }
}

// ---------------------------------------------------------------------------------------
// qemu-storage-daemon

const IMAGE: u64 = 64 << 20;

#[test]
fn mio_frontend_against_qsd_blk_split() {
    let qsd = tests::require_peer!("qemu-storage-daemon");
    let qemu_img = tests::require_peer!("qemu-img");
    let started = Instant::now();
    let dir = TempDir::new("mio_front_qsd").unwrap();
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

    let features = VirtioFeatures::VERSION_1
        | VirtioFeatures::EVENT_IDX
        | VirtioFeatures::from_bits_retain(blk::F_FLUSH);
    let ram = GuestRam::new(0, 8 << 20).unwrap();
    let mut ring = DriverRing::new(&ram, 0, 128, features).unwrap();
    let mut d = Driver::handshake(
        &sock,
        features,
        ProtocolFeatures::REPLY_ACK | ProtocolFeatures::MQ | ProtocolFeatures::CONFIG,
        &ram,
        &mut [&mut ring],
    );
    let neg = d.session.negotiated();
    assert!(neg.reply_ack());
    let Reply::Config { data, .. } =
        d.call(|c, now| c.get_config(now, 0, 60, ConfigFlags::Frontend))
    else {
        panic!("no config")
    };
    assert_eq!(blk::capacity(&data), Some(IMAGE / SECTOR));

    // Writes: 4 requests of 2 sectors at sectors 8, 10, 12, 14, all in flight at once.
    let mut reqs = Vec::new();
    let submit = |ring: &mut DriverRing, kind: u32, sector: u64, data: Option<&[u8]>, len: u32| {
        let hdr = ram.alloc(16, 16).unwrap();
        ram.write(hdr, &blk::header(kind, sector)).unwrap();
        let status = ram.alloc(1, 1).unwrap();
        ram.write(status, &[0xff]).unwrap();
        let buf = if len > 0 {
            ram.alloc(u64::from(len), 512).unwrap()
        } else {
            0
        };
        let id = match (kind, data) {
            (blk::T_OUT, Some(bytes)) => {
                ram.write(buf, bytes).unwrap();
                ring.add(&[(hdr, 16), (buf, len)], &[(status, 1)]).unwrap()
            }
            (blk::T_IN, _) => ring.add(&[(hdr, 16)], &[(buf, len), (status, 1)]).unwrap(),
            _ => ring.add(&[(hdr, 16)], &[(status, 1)]).unwrap(),
        };
        (id, kind, sector, buf, len, status)
    };
    for k in 0..4u64 {
        let sector = 8 + 2 * k;
        let bytes = blk::pattern(7, sector, 1024);
        reqs.push(submit(&mut ring, blk::T_OUT, sector, Some(&bytes), 1024));
    }
    ring.kick().unwrap();
    let (used, write_calls) = d.collect(&mut ring, 4);
    for (id, len) in &used {
        let r = reqs.iter().find(|r| r.0 == *id).unwrap();
        assert_eq!(*len, 1, "used length of a write");
        let mut st = [0u8];
        ram.read(r.5, &mut st).unwrap();
        assert_eq!(st[0], blk::S_OK);
    }
    // Flush, then read the 8 sectors back in one request.
    reqs.clear();
    reqs.push(submit(&mut ring, blk::T_FLUSH, 0, None, 0));
    ring.kick().unwrap();
    let (used, _) = d.collect(&mut ring, 1);
    assert_eq!(used[0].0, reqs[0].0);
    let mut st = [0u8];
    ram.read(reqs[0].5, &mut st).unwrap();
    assert_eq!(st[0], blk::S_OK, "flush");
    reqs.clear();
    reqs.push(submit(&mut ring, blk::T_IN, 8, None, 4096));
    ring.kick().unwrap();
    let (used, _) = d.collect(&mut ring, 1);
    assert_eq!(used[0], (reqs[0].0, 4097));
    let mut back = vec![0u8; 4096];
    ram.read(reqs[0].3, &mut back).unwrap();
    ram.read(reqs[0].5, &mut st).unwrap();
    assert_eq!(st[0], blk::S_OK, "read");
    let mut expect = Vec::new();
    for k in 0..4u64 {
        expect.extend(blk::pattern(7, 8 + 2 * k, 1024));
    }
    assert_eq!(back, expect, "read back");

    // Stop the ring: 6 buffers went through it.
    let Reply::VringBase { base, .. } = d.call(|c, now| c.get_vring_base(now, 0)) else {
        panic!("no ring base")
    };
    assert_eq!(base, VringBase::split(6));
    d.session.forget_ring(0);
    d.poll.registry().deregister(&mut d.session).unwrap();
    drop(d);

    let (status, clean) = peer.interrupt(tests::PEER_STOP_TIMEOUT).unwrap();
    assert!(
        clean && status.success(),
        "qsd exit {status}:\n{}",
        peer.output()
    );
    let disk = std::fs::read(&image).unwrap();
    assert_eq!(&disk[8 * 512..16 * 512], &expect[..], "image on disk");
    drop(peer);
    tests::assert_clean(&[pid], dir.path());
    eprintln!(
        "mio_frontend_against_qsd_blk_split: {:?} ({write_calls} calls for 4 writes)",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------
// DPDK net_vhost

const FRAMES: u64 = 5000;
const FRAME_LEN: usize = 64;
const QUEUE: u16 = 256;

fn dpdk(packed: bool) {
    let bin = tests::require_peer!("dpdk-testpmd");
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let started = Instant::now();
    let label = if packed {
        "mio_dpdk_packed"
    } else {
        "mio_dpdk_split"
    };
    let dir = TempDir::new(label).unwrap();
    let prefix = net::DpdkPrefix::new(if packed { "mp" } else { "ms" });
    let sock = dir.join("vhost.sock");
    let vdev = format!("net_vhost0,iface={},queues=1", sock.display());
    let cmd = net::testpmd(&bin, prefix.prefix(), "1", &[], &vdev, "rxonly");
    let mut peer = Peer::spawn("testpmd rxonly", cmd).unwrap();
    peer.wait_for_socket(&sock, tests::PEER_START_TIMEOUT)
        .unwrap();
    peer.wait_for_output("Rx-pps", tests::PEER_START_TIMEOUT)
        .unwrap();
    let pid = peer.pid();

    let mut features =
        VirtioFeatures::VERSION_1 | VirtioFeatures::from_bits_retain(net::F_MRG_RXBUF);
    if packed {
        features |= VirtioFeatures::RING_PACKED;
    }
    let ram = GuestRam::new(0, 16 << 20).unwrap();
    let mut rx = DriverRing::new(&ram, 0, QUEUE, features).unwrap();
    let mut tx = DriverRing::new(&ram, 1, QUEUE, features).unwrap();
    assert_eq!(tx.is_packed(), packed);
    // No STATUS (DPDK would wait for DRIVER_OK before it starts the device; the
    // handshake sends it, but keep to what peer_dpdk_backend pins), no CONFIG (not offered).
    let mut d = Driver::handshake(
        &sock,
        features,
        ProtocolFeatures::REPLY_ACK | ProtocolFeatures::MQ,
        &ram,
        &mut [&mut rx, &mut tx],
    );
    let slots: Vec<u64> = (0..u64::from(QUEUE) / 2)
        .map(|_| ram.alloc(128, 64).unwrap())
        .collect();
    let hdr = net::header(0);
    let mut sent = 0u64;
    let mut calls = 0;
    while sent < FRAMES {
        let n = (slots.len() as u64).min(FRAMES - sent);
        for k in 0..n {
            let at = slots[k as usize];
            ram.write(at, &hdr).unwrap();
            ram.write(at + net::HDR_LEN as u64, &net::frame(sent + k, FRAME_LEN))
                .unwrap();
            let len = (net::HDR_LEN + FRAME_LEN) as u32;
            if k % 2 == 0 {
                tx.add(&[(at, len)], &[]).unwrap();
            } else {
                tx.add(
                    &[
                        (at, net::HDR_LEN as u32),
                        (at + net::HDR_LEN as u64, FRAME_LEN as u32),
                    ],
                    &[],
                )
                .unwrap();
            }
        }
        tx.kick().unwrap();
        let (used, c) = d.collect(&mut tx, n as usize);
        assert_eq!(used.len() as u64, n);
        calls += c;
        sent += n;
    }
    // Let a statistics period pass, then stop testpmd: it counted every frame.
    std::thread::sleep(Duration::from_millis(300));
    let Reply::VringBase { base, .. } = d.call(|c, now| c.get_vring_base(now, 1)) else {
        panic!("no ring base")
    };
    if !packed {
        assert_eq!(base, VringBase::split(FRAMES as u16));
    }
    d.poll.registry().deregister(&mut d.session).unwrap();
    drop(d);
    let stats = net::stop_testpmd(&mut peer);
    assert_eq!(stats.rx_packets, FRAMES, "testpmd RX-packets");
    drop(peer);
    tests::assert_clean(&[pid], dir.path());
    eprintln!("{label}: {:?} ({calls} calls)", started.elapsed());
}

#[test]
fn mio_frontend_against_dpdk_net_vhost_split() {
    dpdk(false);
}

#[test]
fn mio_frontend_against_dpdk_net_vhost_packed() {
    dpdk(true);
}
