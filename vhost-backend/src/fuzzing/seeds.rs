//! Seed corpus of the `runtime_session` fuzz target: generator and stable replay.
//!
//! `cargo test -p vhost-backend --lib -- --ignored write_runtime_session_seeds` rewrites
//! `fuzz/seeds/runtime_session/`.

use std::path::PathBuf;

use super::device::policy;
use super::session::{Stats, op, runtime_session_stats};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/runtime_session")
}

/// Device byte bits.
const EVENT_IDX: u8 = 1 << 2;
const INDIRECT: u8 = 1 << 3;
const PACKED: u8 = 1 << 4;
const BACKEND_REQ: u8 = 1 << 6;
const UNSEALED: u8 = 1 << 7;

/// Request codes (`session::request`).
mod req {
    pub const GET_FEATURES: u8 = 0;
    pub const SET_MEM_TABLE: u8 = 4;
    pub const SET_VRING_ADDR: u8 = 6;
    pub const GET_VRING_BASE: u8 = 8;
    pub const SET_VRING_KICK: u8 = 9;
    pub const SET_VRING_ENABLE: u8 = 15;
    pub const GET_CONFIG: u8 = 20;
    pub const GET_INFLIGHT_FD: u8 = 22;
    pub const SET_INFLIGHT_FD: u8 = 23;
    pub const RESET_DEVICE: u8 = 24;
    pub const VRING_KICK: u8 = 25;
    pub const ADD_MEM_REG: u8 = 27;
    pub const REM_MEM_REG: u8 = 28;
    pub const SET_STATUS: u8 = 29;
    pub const GET_STATUS: u8 = 30;
}

/// Builds an input op by op.
struct Seed(Vec<u8>);

impl Seed {
    fn new(protocol: u8, device: u8, policy: u8) -> Self {
        Seed(vec![protocol, device, policy])
    }
    fn handshake(mut self, drop: u8, flags: u8) -> Self {
        self.0.extend([op::HANDSHAKE, drop, flags]);
        self
    }
    fn ring(mut self, ring: u8, size_log2: u8, base: u8, flags: u8) -> Self {
        self.0
            .extend([op::SETUP_RING, ring, size_log2, base, flags]);
        self
    }
    fn req(mut self, code: u8, a: u8, b: u8, c: u8, flags: u8) -> Self {
        self.0.extend([op::REQUEST, code, a, b, c, flags]);
        self
    }
    fn raw(mut self, bytes: &[u8], fd_kinds: &[u8]) -> Self {
        self.0.push(op::RAW);
        self.0.extend((bytes.len() as u16).to_le_bytes());
        self.0.push(fd_kinds.len() as u8);
        self.0.extend(fd_kinds);
        self.0.extend(bytes);
        self
    }
    fn poke(mut self, gpa: u64, bytes: &[u8]) -> Self {
        self.0.push(op::POKE);
        self.0.extend(((gpa / 2) as u16).to_le_bytes());
        self.0.push(bytes.len() as u8);
        self.0.extend(bytes);
        self
    }
    /// `elements`: one byte each (readable first).
    fn post(mut self, ring: u8, nr: u8, nw: u8, flags: u8, elements: &[u8]) -> Self {
        self.0.extend([op::POST, ring, nr | nw << 2 | flags]);
        self.0.extend(elements);
        self
    }
    fn kick(mut self, ring: u8) -> Self {
        self.0.extend([op::KICK, ring]);
        self
    }
    fn complete(mut self, ring: u8, order: &[u8]) -> Self {
        self.0.extend([op::COMPLETE, ring, order.len() as u8]);
        self.0.extend(order);
        self
    }
    fn policy(mut self, p: u8) -> Self {
        self.0.extend([op::POLICY, p]);
        self
    }
    fn reap(mut self, ring: u8) -> Self {
        self.0.extend([op::REAP, ring]);
        self
    }
    fn disconnect(mut self) -> Self {
        self.0.push(op::DISCONNECT);
        self
    }
    fn reconnect(mut self) -> Self {
        self.0.push(op::RECONNECT);
        self
    }
    /// A few requests on `ring`, kicked and reaped.
    fn traffic(self, ring: u8) -> Self {
        self.post(ring, 1, 1, 0, &[0x03, 0x13])
            .post(ring, 2, 1, 0, &[0x20, 0x31, 0x4f])
            .post(ring, 1, 2, 0x20, &[0x50, 0x61, 0x72])
            .kick(ring)
            .reap(ring)
    }
}

/// All eight protocol feature choices.
const ALL: u8 = 0xff;
/// Post flags: indirect, kick after, hostile elements.
const POST_INDIRECT: u8 = 0x10;
const POST_KICK: u8 = 0x20;
const POST_HOSTILE: u8 = 0x40;

/// A seed: its name, its bytes, and what its run must reach.
type SeedCase = (&'static str, Vec<u8>, fn(&Stats) -> bool);

/// Every seed with what it must reach.
// One push per seed, each with its comment.
#[allow(clippy::vec_init_then_push)]
fn seeds() -> Vec<SeedCase> {
    let mut v: Vec<SeedCase> = Vec::new();
    // A full start, two split rings with traffic, queries, status, stops.
    v.push((
        "split_echo",
        Seed::new(ALL, 1 | EVENT_IDX | INDIRECT, 0)
            .handshake(0, 0)
            .ring(0, 3, 0, 0)
            .ring(1, 4, 0, 0x10)
            .traffic(0)
            .traffic(1)
            .post(0, 1, 1, POST_INDIRECT | POST_KICK, &[0x05, 0x15])
            .reap(0)
            .req(req::GET_CONFIG, 0, 8, 0, 1)
            .req(req::SET_STATUS, 0x0f, 0, 0, 1)
            .req(req::GET_STATUS, 0, 0, 0, 0)
            .req(req::GET_VRING_BASE, 0, 0, 0, 0)
            .req(req::GET_VRING_BASE, 1, 0, 0, 0)
            .0,
        |s| s.runs >= 2 && s.completed >= 7 && s.reaped >= 7 && s.failed == 0,
    ));
    // The same without REPLY_ACK, starting at a base near the u16 wrap.
    v.push((
        "split_no_ack_wrap",
        Seed::new(ALL & !1, EVENT_IDX, 0)
            .handshake(0, 0)
            .ring(0, 4, 0xfe, 0)
            .traffic(0)
            .traffic(0)
            .req(req::GET_VRING_BASE, 0, 0, 0, 0)
            .0,
        |s| s.runs >= 1 && s.completed >= 6 && s.failed == 0,
    ));
    // Packed rings, an odd size, indirect chains, wrap counter set.
    v.push((
        "packed_echo",
        Seed::new(ALL, 1 | EVENT_IDX | INDIRECT | PACKED, 0)
            .handshake(0, 1)
            .ring(0, 3, 5, 0x20)
            .ring(1, 0x80 | 3, 2, 1)
            .traffic(0)
            .traffic(1)
            .post(1, 2, 2, POST_INDIRECT | POST_KICK, &[1, 2, 3, 4])
            .reap(1)
            .req(req::GET_VRING_BASE, 1, 0, 0, 1)
            .0,
        |s| s.runs >= 2 && s.completed >= 6 && s.reaped >= 6 && s.failed == 0,
    ));
    // The handler holds every chain; GET_VRING_BASE waits for them, the requests behind
    // it wait too, then the chains complete out of order.
    v.push((
        "held_get_vring_base",
        Seed::new(ALL, EVENT_IDX, 1)
            .handshake(0, 1)
            .ring(0, 3, 0, 1)
            .traffic(0)
            .req(req::GET_VRING_BASE, 0, 0, 0, 1)
            .req(req::GET_FEATURES, 0, 0, 0, 0)
            .req(req::GET_CONFIG, 0, 8, 0, 0)
            .complete(0, &[2])
            .complete(0, &[1, 0])
            .reap(0)
            .0,
        |s| s.waited && s.completed >= 3 && s.reaped >= 3,
    ));
    // A memory table change and an added region while chains are held; the quiesce
    // completes them.
    v.push((
        "held_memory_change",
        Seed::new(ALL, 1 | EVENT_IDX | UNSEALED, 1)
            .handshake(0, 1)
            .ring(0, 4, 0, 1)
            .ring(1, 4, 0, 1)
            .traffic(0)
            .traffic(1)
            .req(req::SET_MEM_TABLE, 3, 0, 0, 1 | 4 << 1)
            .req(req::GET_FEATURES, 0, 0, 0, 0)
            .complete(0, &[2, 1, 0])
            .complete(1, &[0, 0, 0])
            .req(req::REM_MEM_REG, 1, 0, 0, 1)
            .req(req::ADD_MEM_REG, 2, 0, 0, 1 | 4 << 1)
            .policy(1 | policy::QUIESCE_COMPLETES)
            .traffic(0)
            .req(req::SET_MEM_TABLE, 3, 0, 0, 1 | 4 << 1)
            .traffic(0)
            .0,
        |s| s.waited && s.completed >= 9 && s.runs >= 6 && s.broken == 0,
    ));
    // Hostile ring contents: a descriptor loop, a huge avail index, buffers outside
    // memory; each ring breaks and is restarted.
    let (desc0, avail0, _) = super::guest::ring_areas(0);
    let mut looped = Vec::new();
    for d in [(0x1_0000u64, 64u32, 1u16, 1u16), (0x1_0100, 64, 1, 0)] {
        looped.extend(d.0.to_le_bytes());
        looped.extend(d.1.to_le_bytes());
        looped.extend(d.2.to_le_bytes());
        looped.extend(d.3.to_le_bytes());
    }
    v.push((
        "malformed_split",
        Seed::new(ALL, INDIRECT, policy::LENGTHS)
            .handshake(0, 1)
            .ring(0, 3, 0, 0x11)
            .post(0, 1, 0, 0, &[0x01])
            .poke(desc0, &looped)
            .kick(0)
            .ring(0, 3, 0, 1)
            .poke(avail0 + 2, &[0x40, 0x00])
            .kick(0)
            .ring(0, 3, 0, 1)
            .post(0, 1, 1, POST_HOSTILE | POST_KICK, &[0xff, 0xf7])
            .post(
                0,
                3,
                3,
                POST_INDIRECT | POST_HOSTILE | POST_KICK,
                &[1, 2, 3, 4, 5, 6],
            )
            .ring(0, 3, 0, 1)
            .traffic(0)
            .0,
        |s| s.runs >= 3 && s.broken >= 1,
    ));
    v.push((
        "malformed_packed",
        Seed::new(
            ALL,
            PACKED | INDIRECT,
            policy::COMPLETE_BROKEN | policy::ERROR_MAGIC,
        )
        .handshake(0, 1)
        .ring(0, 3, 0, 1)
        .post(0, 1, 1, 0, &[0x01, 0x11])
        .poke(desc0 + 14, &[0xff, 0xff])
        .poke(desc0 + 16 + 14, &[0x80, 0x00])
        .kick(0)
        .ring(0, 0x80 | 2, 0, 1)
        .poke(0x1_0000, &[0xee; 8])
        .post(0, 1, 1, POST_KICK, &[0x00, 0x10])
        .post(0, 1, 1, POST_HOSTILE | POST_KICK, &[0xf0, 0x0f])
        .ring(0, 3, 0, 1)
        .traffic(0)
        .0,
        |s| s.runs >= 3 && s.broken >= 1,
    ));
    // Hang up with chains held, complete them while closing, connect again; the new
    // connection gets the inflight buffer and polls a ring without kick fd through
    // in-band kicks.
    v.push((
        "disconnect_held_reconnect",
        Seed::new(ALL, 1 | EVENT_IDX | BACKEND_REQ, 2)
            .handshake(0, 0x11)
            .req(req::GET_INFLIGHT_FD, 2, 3, 0, 1)
            .req(req::SET_INFLIGHT_FD, 0, 0, 0, 1)
            .ring(0, 3, 0, 1)
            .traffic(0)
            .traffic(0)
            .disconnect()
            .complete(0, &[0, 0, 0])
            .reconnect()
            .handshake(0, 1)
            .req(req::SET_INFLIGHT_FD, 0, 0, 0, 1)
            .ring(0, 3, 0, 3)
            .post(0, 1, 1, 0, &[0x01, 0x11])
            .req(req::VRING_KICK, 0, 0, 0, 1)
            .req(req::SET_VRING_KICK, 0, 1, 0, 1)
            .reap(0)
            .0,
        |s| s.sessions == 2 && s.runs >= 2 && s.completed >= 4,
    ));
    // RESET_DEVICE and a restart (SET_VRING_ADDR on a started ring) while chains are
    // held; a completion on the wrong queue; raw garbage last.
    v.push((
        "reset_restart_wrong_queue",
        Seed::new(ALL, 1 | EVENT_IDX | INDIRECT, 3)
            .handshake(0, 1)
            .ring(0, 3, 0, 1)
            .ring(1, 3, 0, 1)
            .traffic(0)
            .traffic(1)
            .req(req::SET_VRING_ADDR, 0, 0, 0, 1)
            .complete(0, &[0, 0])
            .req(req::SET_VRING_ENABLE, 1, 0, 0, 1)
            .complete(1, &[0, 0, 0])
            .policy(0)
            .req(req::RESET_DEVICE, 0, 0, 0, 1)
            .complete(0, &[0, 0, 0, 0])
            .complete(1, &[0, 0, 0, 0])
            .raw(&[1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0], &[])
            .raw(&[5, 0, 0, 0, 1, 0, 0, 0, 0xff, 0, 0, 0], &[3, 4])
            .0,
        |s| s.waited && s.runs >= 3,
    ));
    // Packed rings completed out of order: a held multi-descriptor chain walked after a
    // later chain's used descriptor went over its slots. It broke the ring
    // (`ChainOverwritten`) until the queue learnt to copy such lists first; now it must not.
    v.push((
        "packed_out_of_order",
        Seed::new(ALL, 1 | PACKED, 1)
            .handshake(0, 1)
            .ring(0, 4, 0, 1)
            .traffic(0)
            .complete(0, &[2, 1, 0])
            .req(req::GET_VRING_BASE, 0, 0, 0, 1)
            .0,
        |s| s.broken == 0 && s.runs == 1,
    ));
    // A runtime bug this seed found (WRONG_QUEUE_HANGS, fixed): ring 0's chain completed
    // on ring 1 stayed in flight on ring 0 for ever; GET_VRING_BASE of ring 0 never
    // answered and the session never closed.
    v.push((
        "finding_wrong_queue_hang",
        Seed::new(ALL, 1, 1)
            .handshake(0, 1)
            .ring(0, 3, 0, 1)
            .ring(1, 3, 0, 1)
            .post(0, 1, 1, POST_KICK, &[0x01, 0x11])
            .complete(1, &[0x80])
            .req(req::GET_VRING_BASE, 0, 0, 0, 1)
            .0,
        |s| s.misrouted,
    ));
    v
}

/// The runtime bug behind [`WRONG_QUEUE_HANGS`](super::device::WRONG_QUEUE_HANGS), fixed:
/// a misrouted completion no longer hangs its ring's stop.
#[test]
fn a_misrouted_completion_does_not_hang_the_stop() {
    let seed = seeds()
        .into_iter()
        .find(|(n, _, _)| *n == "finding_wrong_queue_hang")
        .unwrap();
    super::session::runtime_session_strict_stats(&seed.1);
}

#[test]
fn seeds_reach_their_states() {
    let mut failed = Vec::new();
    for (name, data, reached) in seeds() {
        let stats = runtime_session_stats(&data);
        println!("{name}: {stats:?}");
        if !reached(&stats) {
            failed.push(name);
        }
    }
    assert!(failed.is_empty(), "{failed:?} do not reach their states");
}

#[test]
fn replays_the_seed_corpus() {
    let mut n = 0;
    for entry in std::fs::read_dir(dir()).expect("fuzz/seeds/runtime_session exists") {
        let path = entry.unwrap().path();
        runtime_session_stats(&std::fs::read(&path).unwrap());
        n += 1;
    }
    assert!(n >= 8, "only {n} seeds");
}

#[test]
fn survives_pseudo_random_inputs() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..200 {
        let mut data = Vec::new();
        for _ in 0..256 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            data.push(x as u8);
        }
        runtime_session_stats(&data);
    }
}

#[test]
#[ignore = "rewrites fuzz/seeds/runtime_session"]
fn write_runtime_session_seeds() {
    let d = dir();
    std::fs::create_dir_all(&d).unwrap();
    for (name, data, _) in seeds() {
        std::fs::write(d.join(name), data).unwrap();
    }
}
