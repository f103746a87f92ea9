//! Model-based test of `backend::Connection`: random sequences of valid and invalid
//! front-end requests (wrong order, features not negotiated, bad indexes, split and packed,
//! with and without NEED_REPLY) run against the connection and against a small reference
//! model of the spec's rules written here independently. Replies, events and the final
//! state must agree.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::nonminimal_bool)]

use proptest::prelude::*;
use vhost_proto::backend::{Connection, DeviceDescription, Event, Refused};
use vhost_proto::session::RingPosition;
use vhost_proto::wire::{
    ConfigFlags, DecodeContext, DeviceStatus, FrontendRequest, MemoryRegion, ProtocolFeatures,
    RegionFd, VirtioFeatures, VringAddr, VringAddrFlags, VringBase,
};

const QUEUES: u16 = 2;
const MAX_QSIZE: u16 = 256;
const CONFIG_SIZE: u32 = 16;
const SLOTS: u32 = 8;
const UNKNOWN_CODE: u32 = 99;

const PROTOCOL_BITS: [ProtocolFeatures; 8] = [
    ProtocolFeatures::MQ,
    ProtocolFeatures::REPLY_ACK,
    ProtocolFeatures::CONFIGURE_MEM_SLOTS,
    ProtocolFeatures::STATUS,
    ProtocolFeatures::CONFIG,
    ProtocolFeatures::RESET_DEVICE,
    ProtocolFeatures::INBAND_NOTIFICATIONS,
    ProtocolFeatures::BACKEND_REQ,
];

#[derive(Clone, Copy, Debug)]
struct Reg {
    gpa: u64,
    size: u64,
    user: u64,
}

impl Reg {
    fn region(self) -> MemoryRegion {
        MemoryRegion {
            guest_phys_addr: self.gpa,
            memory_size: self.size,
            user_addr: self.user,
            mmap_offset: 0,
            xen: None,
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    GetFeatures,
    SetFeatures(u64),
    SetOwner,
    GetProtocolFeatures,
    SetProtocolFeatures(u64),
    GetQueueNum,
    SetMemTable(Vec<Reg>),
    AddMemReg(Reg),
    RemMemReg(Reg),
    SetVringNum(u32, u32),
    SetVringAddr(u32, u64),
    SetVringBase(u32, u32),
    GetVringBase(u32, u16),
    SetVringKick(u8, bool),
    SetVringCall(u8, bool),
    SetVringEnable(u32, bool),
    SetStatus(u8),
    GetStatus,
    GetConfig(u32, u32),
    ResetDevice,
    VringKick(u32),
    Unknown,
}

#[derive(Clone, Debug)]
struct Step {
    op: Op,
    need_reply: bool,
    device_ok: bool,
    split_at: usize,
}

fn reg() -> impl Strategy<Value = Reg> {
    (0u64..4, 1u64..3, 0u64..3).prop_map(|(g, s, u)| Reg {
        gpa: g * 0x1000,
        size: s * 0x1000,
        user: 0x7000_0000 + [g * 0x1000, 0x10_0000 + g * 0x1000, 0][u as usize],
    })
}

fn op() -> impl Strategy<Value = Op> {
    let feats = (any::<bool>(), any::<bool>(), any::<bool>(), 0u8..8).prop_map(
        |(p30, packed, evidx, extra)| {
            let mut f = VirtioFeatures::VERSION_1.bits();
            if p30 {
                f |= VirtioFeatures::PROTOCOL_FEATURES.bits()
            }
            if packed {
                f |= VirtioFeatures::RING_PACKED.bits()
            }
            if evidx {
                f |= VirtioFeatures::EVENT_IDX.bits()
            }
            if extra == 0 {
                f |= 1 << 50
            }
            f
        },
    );
    let addr = prop_oneof![
        Just(0x7000_0000u64),
        Just(0x7000_1000),
        Just(0x7000_0008),
        Just(0x5000_0000),
        Just(0x7010_1000)
    ];
    prop_oneof![
        Just(Op::GetFeatures),
        feats.prop_map(Op::SetFeatures),
        Just(Op::SetOwner),
        Just(Op::GetProtocolFeatures),
        (any::<u8>(), 0u8..6).prop_map(|(m, extra)| {
            let mut p = 0;
            for (i, b) in PROTOCOL_BITS.iter().enumerate() {
                if m & (1 << i) != 0 {
                    p |= b.bits()
                }
            }
            if extra == 0 {
                p |= ProtocolFeatures::SHMEM.bits()
            }
            Op::SetProtocolFeatures(p)
        }),
        Just(Op::GetQueueNum),
        prop::collection::vec(reg(), 0..3).prop_map(Op::SetMemTable),
        reg().prop_map(Op::AddMemReg),
        reg().prop_map(Op::RemMemReg),
        (
            0u32..3,
            prop_oneof![Just(0u32), Just(4), Just(6), Just(256), Just(512)]
        )
            .prop_map(|(i, n)| Op::SetVringNum(i, n)),
        (0u32..3, addr).prop_map(|(i, a)| Op::SetVringAddr(i, a)),
        (0u32..3, prop_oneof![Just(0u32), Just(5), Just(0x8001_0003)])
            .prop_map(|(i, b)| Op::SetVringBase(i, b)),
        (0u32..3, any::<u16>()).prop_map(|(i, p)| Op::GetVringBase(i, p)),
        (0u8..3, any::<bool>()).prop_map(|(i, f)| Op::SetVringKick(i, f)),
        (0u8..3, any::<bool>()).prop_map(|(i, f)| Op::SetVringCall(i, f)),
        (0u32..3, any::<bool>()).prop_map(|(i, e)| Op::SetVringEnable(i, e)),
        any::<u8>().prop_map(Op::SetStatus),
        Just(Op::GetStatus),
        (0u32..20, 0u32..20).prop_map(|(o, s)| Op::GetConfig(o, s)),
        Just(Op::ResetDevice),
        (0u32..3).prop_map(Op::VringKick),
        Just(Op::Unknown),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    (op(), any::<bool>(), prop::bool::weighted(0.8), 0usize..64).prop_map(
        |(op, need_reply, device_ok, split_at)| Step {
            op,
            need_reply,
            device_ok,
            split_at,
        },
    )
}

/// What the test observes of an event.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ev {
    Features(u64),
    Protocol(u64),
    MemTable(usize),
    MemAdd,
    MemRem,
    Started {
        index: u16,
        size: u16,
        packed: bool,
        desc: u64,
        next_avail: u16,
    },
    Stopped(u16),
    ConfigChanged(u16),
    Enabled(u16, bool),
    Kick(u16),
    Call(u16),
    ConfigRead(u32, u32),
    Status(u8),
    Reset,
    Kicked(u16),
    Rejected(u32),
}

// ---------------------------------------------------------------- the reference model

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct MRing {
    size: Option<u16>,
    desc: Option<u64>,
    /// Guest-physical avail and used areas.
    avail_used: Option<(u64, u64)>,
    base: u32,
    enabled: bool,
    started: bool,
    kick: Option<Option<i32>>,
}

#[derive(Debug)]
struct Model {
    offered_f: u64,
    offered_p: u64,
    f: u64,
    p: u64,
    rings: Vec<MRing>,
    regions: Vec<Reg>,
    status: u8,
    replies: Vec<(u32, Vec<u8>)>,
    events: Vec<Ev>,
}

fn u64b(v: u64) -> Vec<u8> {
    v.to_ne_bytes().to_vec()
}

fn state_b(i: u32, n: u32) -> Vec<u8> {
    let mut v = i.to_ne_bytes().to_vec();
    v.extend_from_slice(&n.to_ne_bytes());
    v
}

impl Model {
    fn packed(&self) -> bool {
        self.f & VirtioFeatures::RING_PACKED.bits() != 0
    }
    fn hasp(&self, b: ProtocolFeatures) -> bool {
        self.p & b.bits() != 0
    }
    fn translate(&self, user: u64) -> Option<u64> {
        self.regions
            .iter()
            .find(|r| user >= r.user && user < r.user + r.size)
            .map(|r| r.gpa + (user - r.user))
    }
    /// The three ring areas (start, bytes) by virtqueue.md; 1 byte each without a size.
    fn areas(&self, size: Option<u16>, d: u64, a: u64, u: u64) -> [(u64, u64); 3] {
        let Some(q) = size.map(u64::from) else {
            return [(d, 1), (a, 1), (u, 1)];
        };
        if self.packed() {
            [(d, 16 * q), (a, 4), (u, 4)]
        } else {
            [(d, 16 * q), (a, 6 + 2 * q), (u, 6 + 8 * q)]
        }
    }
    fn user_inside(&self, addr: u64, len: u64) -> bool {
        self.regions
            .iter()
            .any(|r| addr >= r.user && addr + len <= r.user + r.size)
    }
    fn gpa_inside(&self, addr: u64, len: u64) -> bool {
        self.regions
            .iter()
            .any(|r| addr >= r.gpa && addr + len <= r.gpa + r.size)
    }
    /// Whether ring `i` may start: a memory table holding its areas, a packed base in range.
    fn can_start(&self, i: usize) -> bool {
        let r = &self.rings[i];
        let size = r.size.unwrap();
        if self.packed()
            && ((r.base & 0x7fff) as u16 >= size || ((r.base >> 16) & 0x7fff) as u16 >= size)
        {
            return false;
        }
        let (a, u) = r.avail_used.unwrap();
        !self.regions.is_empty()
            && self
                .areas(Some(size), r.desc.unwrap(), a, u)
                .iter()
                .all(|&(s, l)| self.gpa_inside(s, l))
    }
    fn overlap(a: &Reg, b: &Reg) -> bool {
        (a.gpa < b.gpa + b.size && b.gpa < a.gpa + a.size)
            || (a.user < b.user + b.size && b.user < a.user + a.size)
    }
    fn ack(&mut self, code: u32, n: bool) {
        if n {
            self.replies.push((code, u64b(0)));
        }
    }
    /// A request without a reply body refused: NACK if asked, logged either way.
    fn nack(&mut self, code: u32, n: bool) {
        if n {
            self.replies.push((code, u64b(1)));
        }
        self.events.push(Ev::Rejected(code));
    }
    /// A request with a reply body refused: its failure reply, logged.
    fn fail(&mut self, code: u32, body: Vec<u8>) {
        self.replies.push((code, body));
        self.events.push(Ev::Rejected(code));
    }
    fn ring_ok(&self, i: u32) -> bool {
        i < u32::from(QUEUES)
    }
    /// A ring start: the event, then the kick's ack once the runner answered (a refusal
    /// leaves the ring stopped and NACKs).
    fn start(&mut self, i: usize, code: u32, n: bool, ok: bool) {
        let packed = self.packed();
        let r = &mut self.rings[i];
        r.started = ok;
        let next_avail = RingPosition::from_base(VringBase(r.base), packed).next_avail;
        self.events.push(Ev::Started {
            index: i as u16,
            size: r.size.unwrap(),
            packed,
            desc: r.desc.unwrap(),
            next_avail,
        });
        self.answered(code, n, ok);
    }
    /// The runner's answer to an ack token.
    fn answered(&mut self, code: u32, n: bool, ok: bool) {
        if ok {
            self.ack(code, n)
        } else {
            self.nack(code, n)
        }
    }

    fn apply(&mut self, s: &Step, fd: i32) {
        let n = s.need_reply;
        let ok = s.device_ok;
        let p30_offered = self.offered_f & VirtioFeatures::PROTOCOL_FEATURES.bits() != 0;
        match s.op.clone() {
            Op::GetFeatures => self.replies.push((1, u64b(self.offered_f))),
            Op::SetFeatures(f) => {
                if f & !self.offered_f != 0 {
                    return self.nack(2, n);
                }
                let layout = VirtioFeatures::RING_PACKED.bits() | VirtioFeatures::EVENT_IDX.bits();
                if (f ^ self.f) & layout != 0 && self.rings.iter().any(|r| r.started) {
                    return self.nack(2, n);
                }
                self.f = f;
                if f & VirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
                    self.rings.iter_mut().for_each(|r| r.enabled = true);
                }
                self.events.push(Ev::Features(f));
                self.ack(2, n);
            }
            Op::SetOwner => self.ack(3, n),
            Op::GetProtocolFeatures => {
                if !p30_offered {
                    return self.fail(15, u64b(0));
                }
                self.replies.push((15, u64b(self.offered_p)));
            }
            Op::SetProtocolFeatures(p) => {
                let inband = ProtocolFeatures::INBAND_NOTIFICATIONS.bits();
                let deps =
                    ProtocolFeatures::BACKEND_REQ.bits() | ProtocolFeatures::REPLY_ACK.bits();
                if !p30_offered || p & !self.offered_p != 0 || (p & inband != 0 && p & deps != deps)
                {
                    return self.nack(16, n);
                }
                self.p = p;
                self.events.push(Ev::Protocol(p));
                self.ack(16, n);
            }
            Op::GetQueueNum => {
                if !self.hasp(ProtocolFeatures::MQ) {
                    return self.fail(17, u64b(0));
                }
                self.replies.push((17, u64b(QUEUES.into())));
            }
            Op::SetMemTable(regs) => {
                let bad = regs
                    .iter()
                    .enumerate()
                    .any(|(i, a)| regs[..i].iter().any(|b| Self::overlap(a, b)));
                if bad {
                    return self.nack(5, n);
                }
                self.events.push(Ev::MemTable(regs.len()));
                if ok {
                    self.regions = regs;
                    self.ack(5, n);
                } else {
                    self.nack(5, n);
                }
            }
            Op::AddMemReg(r) => {
                if !self.hasp(ProtocolFeatures::CONFIGURE_MEM_SLOTS)
                    || self.regions.len() >= SLOTS as usize
                    || self.regions.iter().any(|b| Self::overlap(&r, b))
                {
                    return self.nack(37, n);
                }
                self.events.push(Ev::MemAdd);
                if ok {
                    self.regions.push(r);
                    self.ack(37, n);
                } else {
                    self.nack(37, n);
                }
            }
            Op::RemMemReg(r) => {
                let pos = self
                    .regions
                    .iter()
                    .position(|b| b.gpa == r.gpa && b.user == r.user && b.size == r.size);
                let Some(pos) = pos.filter(|_| self.hasp(ProtocolFeatures::CONFIGURE_MEM_SLOTS))
                else {
                    return self.nack(38, n);
                };
                let in_use = self.rings.iter().any(|m| {
                    let (Some(d), Some((a, u)), true) = (m.desc, m.avail_used, m.started) else {
                        return false;
                    };
                    self.areas(m.size, d, a, u)
                        .iter()
                        .any(|&(s, l)| s < r.gpa + r.size && r.gpa < s + l)
                });
                if in_use {
                    return self.nack(38, n);
                }
                self.events.push(Ev::MemRem);
                if ok {
                    self.regions.remove(pos);
                    self.ack(38, n);
                } else {
                    self.nack(38, n);
                }
            }
            Op::SetVringNum(i, num) => {
                let valid =
                    num >= 1 && num <= MAX_QSIZE.into() && (self.packed() || num.is_power_of_two());
                if !self.ring_ok(i) || self.rings[i as usize].started || !valid {
                    return self.nack(8, n);
                }
                self.rings[i as usize].size = Some(num as u16);
                self.ack(8, n);
            }
            Op::SetVringAddr(i, desc) => {
                let avail = desc + 0x400;
                let used = desc + 0x800;
                if !self.ring_ok(i) || desc % 16 != 0 {
                    return self.nack(9, n);
                }
                let (Some(d), Some(a), Some(u)) = (
                    self.translate(desc),
                    self.translate(avail),
                    self.translate(used),
                ) else {
                    return self.nack(9, n);
                };
                let size = self.rings[i as usize].size;
                if !self
                    .areas(size, desc, avail, used)
                    .iter()
                    .all(|&(s, l)| self.user_inside(s, l))
                {
                    return self.nack(9, n);
                }
                let r = &mut self.rings[i as usize];
                r.desc = Some(d);
                r.avail_used = Some((a, u));
                if r.started {
                    // A refused rebuild leaves the ring stopped.
                    r.started = ok;
                    self.events.push(Ev::ConfigChanged(i as u16));
                    self.answered(9, n, ok);
                } else {
                    self.ack(9, n);
                }
            }
            Op::SetVringBase(i, base) => {
                if !self.ring_ok(i)
                    || self.rings[i as usize].started
                    || (!self.packed() && base >> 16 != 0)
                {
                    return self.nack(10, n);
                }
                if let (true, Some(size)) = (self.packed(), self.rings[i as usize].size)
                    && ((base & 0x7fff) as u16 >= size || ((base >> 16) & 0x7fff) as u16 >= size)
                {
                    return self.nack(10, n);
                }
                self.rings[i as usize].base = base;
                self.ack(10, n);
            }
            Op::GetVringBase(i, pos) => {
                if !self.ring_ok(i) {
                    return self.fail(11, state_b(i, 0));
                }
                let packed = self.packed();
                let r = &mut self.rings[i as usize];
                if r.started {
                    r.started = false;
                    let p = RingPosition {
                        next_avail: pos & 0x7fff,
                        avail_wrap: pos & 1 == 0,
                        next_used: pos >> 3,
                        used_wrap: true,
                    };
                    r.base = p.to_base(packed).raw();
                    self.events.push(Ev::Stopped(i as u16));
                }
                let b = self.rings[i as usize].base;
                self.replies.push((11, state_b(i, b)));
            }
            Op::SetVringKick(i, has_fd) => {
                let i = u32::from(i);
                if !self.ring_ok(i) {
                    return self.nack(12, n);
                }
                let r = &self.rings[i as usize];
                if !r.started && !(r.size.is_some() && r.desc.is_some()) {
                    return self.nack(12, n);
                }
                let started = r.started;
                if !started && !self.can_start(i as usize) {
                    return self.nack(12, n);
                }
                self.rings[i as usize].kick = Some(has_fd.then_some(fd));
                if started {
                    self.events.push(Ev::Kick(i as u16));
                    self.answered(12, n, ok);
                } else {
                    self.start(i as usize, 12, n, ok);
                }
            }
            Op::SetVringCall(i, _) => {
                if !self.ring_ok(i.into()) {
                    return self.nack(13, n);
                }
                self.events.push(Ev::Call(i.into()));
                self.answered(13, n, ok);
            }
            Op::SetVringEnable(i, e) => {
                if self.f & VirtioFeatures::PROTOCOL_FEATURES.bits() == 0 || !self.ring_ok(i) {
                    return self.nack(18, n);
                }
                self.rings[i as usize].enabled = e;
                self.events.push(Ev::Enabled(i as u16, e));
                self.answered(18, n, ok);
            }
            Op::SetStatus(st) => {
                if !self.hasp(ProtocolFeatures::STATUS) {
                    return self.nack(39, n);
                }
                self.events.push(Ev::Status(st));
                if ok {
                    self.status = st;
                    self.ack(39, n);
                } else {
                    self.nack(39, n);
                }
            }
            Op::GetStatus => {
                if !self.hasp(ProtocolFeatures::STATUS) {
                    return self.fail(40, u64b(0));
                }
                self.replies.push((40, u64b(self.status.into())));
            }
            Op::GetConfig(off, size) => {
                if !self.hasp(ProtocolFeatures::CONFIG) || size == 0 || off + size > CONFIG_SIZE {
                    return self.fail(24, vec![]);
                }
                self.events.push(Ev::ConfigRead(off, size));
                if ok {
                    let mut b = off.to_ne_bytes().to_vec();
                    b.extend_from_slice(&size.to_ne_bytes());
                    b.extend_from_slice(&0u32.to_ne_bytes());
                    b.extend((0..size).map(|k| (off + k) as u8));
                    self.replies.push((24, b));
                } else {
                    self.fail(24, vec![]);
                }
            }
            Op::ResetDevice => {
                if !self.hasp(ProtocolFeatures::RESET_DEVICE) {
                    return self.nack(34, n);
                }
                self.rings.iter_mut().for_each(|r| *r = MRing::default());
                self.status = 0;
                self.f = 0;
                self.events.push(Ev::Reset);
                if ok {
                    self.ack(34, n)
                } else {
                    self.nack(34, n)
                }
            }
            Op::VringKick(i) => {
                if !self.hasp(ProtocolFeatures::INBAND_NOTIFICATIONS) || !self.ring_ok(i) {
                    return self.nack(35, n);
                }
                let r = &self.rings[i as usize];
                if r.started {
                    self.events.push(Ev::Kicked(i as u16));
                    self.ack(35, n);
                } else if r.size.is_some() && r.desc.is_some() && self.can_start(i as usize) {
                    self.start(i as usize, 35, n, ok);
                } else {
                    self.nack(35, n);
                }
            }
            Op::Unknown => self.nack(UNKNOWN_CODE, n),
        }
    }
}

// ---------------------------------------------------------------- driving the connection

fn encode(op: &Op, need_reply: bool, fd: i32) -> (Vec<u8>, Vec<i32>) {
    use FrontendRequest as Q;
    let ctx = DecodeContext::default();
    let req: FrontendRequest<i32> = match op.clone() {
        Op::GetFeatures => Q::GetFeatures,
        Op::SetFeatures(f) => Q::SetFeatures {
            features: VirtioFeatures::from_bits_retain(f),
        },
        Op::SetOwner => Q::SetOwner,
        Op::GetProtocolFeatures => Q::GetProtocolFeatures,
        Op::SetProtocolFeatures(p) => Q::SetProtocolFeatures {
            features: ProtocolFeatures::from_bits_retain(p),
        },
        Op::GetQueueNum => Q::GetQueueNum,
        Op::SetMemTable(regs) => Q::SetMemTable {
            regions: regs
                .iter()
                .enumerate()
                .map(|(k, r)| RegionFd {
                    region: r.region(),
                    fd: fd + k as i32,
                })
                .collect(),
        },
        Op::AddMemReg(r) => Q::AddMemReg {
            region: RegionFd {
                region: r.region(),
                fd,
            },
        },
        Op::RemMemReg(r) => Q::RemMemReg { region: r.region() },
        Op::SetVringNum(index, num) => Q::SetVringNum { index, num },
        Op::SetVringAddr(index, desc) => Q::SetVringAddr {
            addr: VringAddr {
                index,
                flags: VringAddrFlags::empty(),
                desc,
                avail: desc + 0x400,
                used: desc + 0x800,
                log: 0,
            },
        },
        Op::SetVringBase(index, b) => Q::SetVringBase {
            index,
            base: VringBase(b),
        },
        Op::GetVringBase(index, _) => Q::GetVringBase { index },
        Op::SetVringKick(index, f) => Q::SetVringKick {
            index,
            fd: f.then_some(fd),
        },
        Op::SetVringCall(index, f) => Q::SetVringCall {
            index,
            fd: f.then_some(fd),
        },
        Op::SetVringEnable(index, enable) => Q::SetVringEnable { index, enable },
        Op::SetStatus(s) => Q::SetStatus {
            status: DeviceStatus::from_bits_retain(s),
        },
        Op::GetStatus => Q::GetStatus,
        Op::GetConfig(offset, size) => Q::GetConfig {
            offset,
            size,
            flags: ConfigFlags::Frontend,
        },
        Op::ResetDevice => Q::ResetDevice,
        Op::VringKick(index) => Q::VringKick { index },
        Op::Unknown => {
            let mut b = UNKNOWN_CODE.to_ne_bytes().to_vec();
            b.extend_from_slice(&(if need_reply { 9u32 } else { 1 }).to_ne_bytes());
            b.extend_from_slice(&4u32.to_ne_bytes());
            b.extend_from_slice(&[1, 2, 3, 4]);
            return (b, vec![]);
        }
    };
    let e = req.encode(need_reply, &ctx).unwrap();
    (e.bytes, e.fds)
}

fn observe(conn: &mut Connection<i32>, s: &Step) -> (Vec<Ev>, Vec<(u32, Vec<u8>)>) {
    let mut evs = Vec::new();
    let mut txs = Vec::new();
    let no = || Err(Refused::because("test says no"));
    loop {
        while let Some(t) = conn.poll_transmit() {
            assert!(t.fds.is_empty());
            let code = u32::from_ne_bytes(t.bytes[0..4].try_into().unwrap());
            let flags = u32::from_ne_bytes(t.bytes[4..8].try_into().unwrap());
            let size = u32::from_ne_bytes(t.bytes[8..12].try_into().unwrap());
            assert_eq!(flags, 5);
            assert_eq!(size as usize, t.bytes.len() - 12);
            txs.push((code, t.bytes[12..].to_vec()));
        }
        let Some(e) = conn.poll_event() else { break };
        let ok = s.device_ok;
        let ev = match e {
            Event::FeaturesSet { features } => Ev::Features(features.bits()),
            Event::ProtocolFeaturesSet { features } => Ev::Protocol(features.bits()),
            Event::MemoryTable { regions, answer } => {
                conn.answer_memory(answer, if ok { Ok(()) } else { no() })
                    .unwrap();
                Ev::MemTable(regions.len())
            }
            Event::MemoryRegionAdded { answer, .. } => {
                conn.answer_memory(answer, if ok { Ok(()) } else { no() })
                    .unwrap();
                Ev::MemAdd
            }
            Event::MemoryRegionRemoved { answer, .. } => {
                conn.ack(answer, if ok { Ok(()) } else { no() }).unwrap();
                Ev::MemRem
            }
            Event::RingStarted { config, answer } => {
                conn.answer_ring_started(answer, if ok { Ok(()) } else { no() })
                    .unwrap();
                Ev::Started {
                    index: config.index,
                    size: config.size,
                    packed: config.packed,
                    desc: config.desc_table,
                    next_avail: config.position.next_avail,
                }
            }
            Event::RingStopped { index, answer } => {
                let Op::GetVringBase(_, pos) = s.op else {
                    panic!("stop without GET_VRING_BASE")
                };
                let p = RingPosition {
                    next_avail: pos & 0x7fff,
                    avail_wrap: pos & 1 == 0,
                    next_used: pos >> 3,
                    used_wrap: true,
                };
                conn.answer_ring_stopped(answer, p).unwrap();
                Ev::Stopped(index)
            }
            Event::RingConfigChanged { config, answer } => {
                conn.ack(answer, if ok { Ok(()) } else { no() }).unwrap();
                Ev::ConfigChanged(config.index)
            }
            Event::RingEnabled {
                index,
                enabled,
                answer,
            } => {
                conn.ack(answer, if ok { Ok(()) } else { no() }).unwrap();
                Ev::Enabled(index, enabled)
            }
            Event::KickChanged { index, answer } => {
                conn.ack(answer, if ok { Ok(()) } else { no() }).unwrap();
                Ev::Kick(index)
            }
            Event::CallChanged { index, answer } => {
                conn.ack(answer, if ok { Ok(()) } else { no() }).unwrap();
                Ev::Call(index)
            }
            Event::ConfigRead {
                offset,
                size,
                answer,
                ..
            } => {
                let data: Vec<u8> = (0..size).map(|k| (offset + k) as u8).collect();
                conn.answer_config(
                    answer,
                    if ok {
                        Ok(&data[..])
                    } else {
                        Err(Refused::because("test says no"))
                    },
                )
                .unwrap();
                Ev::ConfigRead(offset, size)
            }
            Event::Status { status, answer } => {
                conn.ack(answer, if ok { Ok(()) } else { no() }).unwrap();
                Ev::Status(status.bits())
            }
            Event::Reset { answer } => {
                conn.ack(answer, if ok { Ok(()) } else { no() }).unwrap();
                Ev::Reset
            }
            Event::RingKicked { index } => Ev::Kicked(index),
            Event::Rejected { rejection } => Ev::Rejected(rejection.code),
            other => panic!("unexpected event {other:?}"),
        };
        evs.push(ev);
    }
    (evs, txs)
}

/// Runs `steps` against the connection and the model; returns every event seen.
fn run(offered_p: u64, p30: bool, steps: &[Step]) -> Vec<Ev> {
    let mut seen = Vec::new();
    let offered_p = if p30 { offered_p } else { 0 };
    let mut offered_f =
        VirtioFeatures::VERSION_1 | VirtioFeatures::RING_PACKED | VirtioFeatures::EVENT_IDX;
    if p30 {
        offered_f |= VirtioFeatures::PROTOCOL_FEATURES;
    }
    let desc = DeviceDescription::new(
        offered_f,
        ProtocolFeatures::from_bits_retain(offered_p),
        QUEUES,
    )
    .with_max_queue_size(MAX_QSIZE)
    .with_max_mem_slots(SLOTS)
    .with_config_size(CONFIG_SIZE);
    let mut model = Model {
        offered_f: desc.features.bits(),
        offered_p,
        f: 0,
        p: 0,
        rings: vec![MRing::default(); QUEUES.into()],
        regions: vec![],
        status: 0,
        replies: vec![],
        events: vec![],
    };
    let mut conn = Connection::<i32>::new(desc);
    for (k, s) in steps.iter().enumerate() {
        let fd = 100 + 10 * k as i32;
        let (bytes, fds) = encode(&s.op, s.need_reply, fd);
        // Two reads: the fds travel with the first, which always holds the header's first byte.
        let cut = 1 + s.split_at % bytes.len();
        conn.handle_input(&bytes[..cut], fds).unwrap();
        conn.handle_input(&bytes[cut..], vec![]).unwrap();
        let (evs, txs) = observe(&mut conn, s);
        model.replies.clear();
        model.events.clear();
        model.apply(s, fd);
        assert_eq!(txs, model.replies, "replies of step {k}: {s:?}");
        assert_eq!(evs, model.events, "events of step {k}: {s:?}");
        seen.extend(evs);
        assert!(!conn.is_waiting());
    }
    // Final state.
    assert_eq!(conn.negotiated().features.bits(), model.f);
    assert_eq!(conn.negotiated().protocol.bits(), model.p);
    assert_eq!(conn.status().bits(), model.status);
    let regs: Vec<_> = conn
        .memory()
        .regions()
        .iter()
        .map(|r| (r.guest_phys_addr, r.memory_size, r.user_addr))
        .collect();
    let mregs: Vec<_> = model
        .regions
        .iter()
        .map(|r| (r.gpa, r.size, r.user))
        .collect();
    assert_eq!(regs, mregs);
    for (i, m) in model.rings.iter().enumerate() {
        let r = conn.ring(i as u16).unwrap();
        assert_eq!(r.started(), m.started, "ring {i} started");
        assert_eq!(r.enabled(), m.enabled, "ring {i} enabled");
        assert_eq!(r.size(), m.size, "ring {i} size");
        assert_eq!(r.base().raw(), m.base, "ring {i} base");
        assert_eq!(r.addresses().map(|a| a.desc), m.desc, "ring {i} desc");
        match m.kick {
            None => assert!(r.kick().is_none()),
            Some(k) => assert_eq!(r.kick().copied(), k),
        }
    }
    assert_eq!(conn.is_suspended(), model.rings.iter().all(|r| !r.started));
    seen
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn backend_matches_model(offered in any::<u8>(), p30 in prop::bool::weighted(0.9), steps in prop::collection::vec(step(), 1..60)) {
        let mut p = 0;
        for (i, b) in PROTOCOL_BITS.iter().enumerate() {
            if offered & (1 << i) != 0 { p |= b.bits() }
        }
        let _ = run(p, p30, &steps);
    }
}

/// A realistic QEMU-order handshake on a split ring, then a stop, checked by the model too.
#[test]
fn qemu_order_split_ring() {
    let all: u64 = PROTOCOL_BITS.iter().map(|b| b.bits()).fold(0, |a, b| a | b);
    let s = |op| Step {
        op,
        need_reply: true,
        device_ok: true,
        split_at: 5,
    };
    let f = (VirtioFeatures::VERSION_1 | VirtioFeatures::PROTOCOL_FEATURES).bits();
    let seen = run(
        all,
        true,
        &[
            s(Op::GetFeatures),
            s(Op::GetProtocolFeatures),
            s(Op::SetProtocolFeatures(all)),
            s(Op::GetQueueNum),
            s(Op::SetOwner),
            s(Op::SetFeatures(f)),
            s(Op::SetMemTable(vec![Reg {
                gpa: 0,
                size: 0x4000,
                user: 0x7000_0000,
            }])),
            s(Op::SetVringNum(0, 256)),
            s(Op::SetVringBase(0, 5)),
            s(Op::SetVringAddr(0, 0x7000_1000)),
            s(Op::SetVringKick(0, true)),
            s(Op::SetVringCall(0, true)),
            s(Op::SetVringEnable(0, true)),
            s(Op::SetStatus(0xf)),
            s(Op::GetVringBase(0, 42)),
            s(Op::GetStatus),
        ],
    );
    assert!(
        seen.iter()
            .any(|e| matches!(e, Ev::Started { index: 0, .. }))
    );
    assert!(seen.contains(&Ev::Stopped(0)));
}
