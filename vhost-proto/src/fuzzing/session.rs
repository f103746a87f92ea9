//! Bodies of the `backend_session` and `frontend_session` fuzz targets.
//!
//! Both read their input with [`arbitrary::Unstructured`]; when it runs short every value
//! reads as zero, so any byte string is a valid input.
//!
//! # `backend_session`
//!
//! | bytes | meaning |
//! |---|---|
//! | 4 | offered protocol features (bits 0–22 used) |
//! | 1 | offered virtio features: bit 0 EVENT_IDX, 1 RING_PACKED, 2 ACCESS_PLATFORM, 3 LOG_ALL, 4 PROTOCOL_FEATURES |
//! | 1 | queue count (`% 4 + 1`) |
//! | then ops | `op % 4` ∈ {0, 1, 2}: feed a chunk: u16 length, u8 fd count (`% 9`), the bytes; 3: drain transmits and events; the next byte answers every token of this drain (`% 8`: 0–5 yes, 6 refuse, 7 hold the first one until the next drain; exactly `0xfd`: drop the first token unanswered, after which the connection must close with `AnswerDropped`) |
//!
//! # `frontend_session`
//!
//! Our front-end against our back-end, with the same 6-byte device header, then ops
//! (`op % 8`), each reading a fixed number of bytes:
//!
//! | op | bytes | action |
//! |---|---|---|
//! | 0–2 | 8 | send a request: code `1 + b0 % 44`, fields from the other 7 |
//! | 3 | 1 | move front-end transmits to the back-end, each cut in two reads at that byte |
//! | 4 | 1 | the device answers its events (choice byte as in `backend_session`) |
//! | 5 | 1 | the same, then move back-end transmits to the front-end |
//! | 6 | 3 | the same, corrupting the first (u16: flip a byte, cut it, add or drop an fd) |
//! | 7 | 2 + n | feed the front-end a raw chunk: length, fd count, bytes |
//! While nothing was corrupted neither side may
//! fail fatally: our two ends must always agree.

use arbitrary::Unstructured;

use crate::backend::{self, DeviceDescription, Event};
use crate::frontend;
use crate::session::{FatalError, RingPosition, Transmit};
use crate::wire::*;

type H = u32;

fn description(u: &mut Unstructured<'_>) -> DeviceDescription {
    let p = u.arbitrary::<u32>().unwrap_or(0) & ((1 << 23) - 1);
    let v = u.arbitrary::<u8>().unwrap_or(0);
    let q = u.arbitrary::<u8>().unwrap_or(0) % 4 + 1;
    let mut f = VirtioFeatures::VERSION_1;
    for (bit, feat) in [
        VirtioFeatures::EVENT_IDX,
        VirtioFeatures::RING_PACKED,
        VirtioFeatures::ACCESS_PLATFORM,
        VirtioFeatures::LOG_ALL,
        VirtioFeatures::PROTOCOL_FEATURES,
    ]
    .into_iter()
    .enumerate()
    {
        if v & (1 << bit) != 0 {
            f |= feat;
        }
    }
    let mut shmem = ShmemConfig {
        nregions: 1,
        memory_sizes: [0; layout::SHMEM_MAX_REGIONS],
    };
    if let Some(s) = shmem.memory_sizes.first_mut() {
        *s = 1 << 20;
    }
    DeviceDescription::new(f, ProtocolFeatures::from_bits_retain(p.into()), q.into())
        .with_max_queue_size(256)
        .with_config_size(64)
        .with_shmem(shmem)
}

/// Checks one transmit of a back-end: a reply with flags exactly 0x5 and an honest size.
fn check_reply(t: &Transmit<H>) {
    let word = |i: usize| {
        t.bytes
            .get(i..i + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_ne_bytes)
    };
    assert_eq!(word(4), Some(HeaderFlags::reply().bits()), "reply flags");
    assert_eq!(
        word(8).map(|s| s as usize + HEADER_SIZE),
        Some(t.bytes.len()),
        "reply size"
    );
    assert!(t.bytes.len() <= HEADER_SIZE + MAX_PAYLOAD_SIZE);
    assert!(t.fds.len() <= 1);
}

/// The choice byte that drops a token on purpose (`backend_session` only).
const DROP_CHOICE: u8 = 0xfd;

/// Whether the event carries an answer token.
fn has_token(e: &Event<H>) -> bool {
    !matches!(
        e,
        Event::FeaturesSet { .. }
            | Event::ProtocolFeaturesSet { .. }
            | Event::PostcopyMemoryReady
            | Event::LogFdChanged
            | Event::RingKicked { .. }
            | Event::Rejected { .. }
            | Event::ConnectionLost { .. }
    )
}

/// A device that answers from fuzz input: yes (with made-up values), or refusal.
struct Device {
    next_fd: H,
    held: Option<Event<H>>,
    /// Whether the device may drop a token on purpose.
    may_drop: bool,
    /// Whether it did (the connection must close).
    dropped: bool,
}

impl Device {
    fn fd(&mut self) -> H {
        self.next_fd = self.next_fd.wrapping_add(1);
        self.next_fd
    }

    /// Answers `e`; `choice % 8`: 0–5 yes, 6 refuse, 7 hold (when `may_hold`).
    fn answer(&mut self, c: &mut backend::Connection<H>, e: Event<H>, choice: u8, may_hold: bool) {
        use Event as E;
        if choice % 8 == 7 && may_hold && self.held.is_none() {
            self.held = Some(e);
            return;
        }
        if choice == DROP_CHOICE && self.may_drop && !self.dropped && has_token(&e) {
            // An embedder bug on purpose: the connection must notice, not stall.
            self.dropped = true;
            drop(e);
            return;
        }
        // POSTCOPY_ADVISE has no failure form a front-end can decode (spec §5 id 28).
        if choice % 8 == 6 && !matches!(e, E::PostcopyAdvise { .. }) {
            let _ = c.refuse(e);
            return;
        }
        let r = match e {
            E::MemoryTable { regions, answer } => {
                if answer.postcopy() {
                    let n = regions.len() as u64;
                    c.answer_memory_postcopy(
                        answer,
                        Ok((0..n).map(|i| 0x5000_0000 + i * 0x1000).collect()),
                    )
                } else {
                    c.answer_memory(answer, Ok(()))
                }
            }
            E::MemoryRegionAdded { answer, .. } => {
                if answer.postcopy() {
                    c.answer_memory_postcopy(answer, Ok(vec![0x6000_0000]))
                } else {
                    c.answer_memory(answer, Ok(()))
                }
            }
            E::RingStopped { answer, .. } => c.answer_ring_stopped(
                answer,
                RingPosition {
                    next_avail: u16::from(choice),
                    ..RingPosition::default()
                },
            ),
            E::ConfigRead { size, answer, .. } => {
                c.answer_config(answer, Ok(&vec![choice; size as usize]))
            }
            E::CryptoSessionCreate { answer, .. } => {
                c.answer_crypto_session(answer, Ok(choice.into()))
            }
            E::PostcopyAdvise { answer } => {
                let fd = self.fd();
                c.answer_postcopy_advise(answer, Ok(fd))
            }
            E::InflightGet { answer, .. } => {
                let fd = self.fd();
                c.answer_inflight(answer, Ok((4096, 0, fd)))
            }
            E::SharedObjectGet { answer, .. } => {
                let fd = self.fd();
                c.answer_shared_object(answer, Ok(fd))
            }
            E::DeviceStateTransfer { answer, .. } => {
                let fd = choice.is_multiple_of(2).then(|| self.fd());
                c.answer_device_state(answer, Ok(fd))
            }
            E::RingStarted { answer, .. } => c.answer_ring_started(answer, Ok(())),
            E::RingConfigChanged { answer, .. }
            | E::RingEnabled { answer, .. }
            | E::KickChanged { answer, .. }
            | E::CallChanged { answer, .. }
            | E::ErrChanged { answer, .. }
            | E::BackendChannel { answer, .. } => c.ack(answer, Ok(())),
            E::MemoryRegionRemoved { answer, .. }
            | E::LogBase { answer, .. }
            | E::ConfigWrite { answer, .. }
            | E::Status { answer, .. }
            | E::Reset { answer }
            | E::GpuSocket { answer, .. }
            | E::SendRarp { answer, .. }
            | E::SetMtu { answer, .. }
            | E::Iotlb { answer, .. }
            | E::CryptoSessionClose { answer, .. }
            | E::PostcopyListen { answer }
            | E::PostcopyEnd { answer }
            | E::InflightSet { answer, .. }
            | E::DeviceStateCheck { answer } => c.ack(answer, Ok(())),
            E::ConnectionLost { error } => {
                // Only a dropped token or hostile input closes the connection.
                assert!(
                    self.dropped || !matches!(error, FatalError::AnswerDropped { .. }),
                    "answer dropped although every token was answered"
                );
                Ok(())
            }
            _ => Ok(()),
        };
        // Answers from the device we drive are always well-formed.
        assert!(r.is_ok() || c.is_closed(), "answer refused: {r:?}");
    }

    /// Drains a back-end connection; one byte from `u` decides every answer of this drain
    /// (so a seed's layout does not depend on how many events a message causes).
    fn drain(
        &mut self,
        c: &mut backend::Connection<H>,
        u: &mut Unstructured<'_>,
        out: &mut Vec<Transmit<H>>,
    ) {
        let choice = u.arbitrary::<u8>().unwrap_or(0);
        if let Some(e) = self.held.take() {
            self.answer(c, e, choice % 7, false);
        }
        for _ in 0..4096 {
            let mut moved = false;
            while let Some(t) = c.poll_transmit() {
                check_reply(&t);
                out.push(t);
                moved = true;
            }
            if let Some(e) = c.poll_event() {
                self.answer(c, e, choice, true);
                moved = true;
            }
            if !moved {
                break;
            }
        }
    }
}

/// Fuzz body: a back-end connection fed arbitrary chunks with arbitrary fd counts, with a
/// device giving arbitrary answers at arbitrary times. It must never panic, and its replies
/// must always be well-framed.
pub fn backend_session(data: &[u8]) {
    let _ = backend_session_replies(data);
}

/// [`backend_session`], returning how many replies the back-end sent (for seed tests).
pub fn backend_session_replies(data: &[u8]) -> usize {
    let mut u = Unstructured::new(data);
    let mut replies = 0;
    let mut conn = backend::Connection::<H>::new(description(&mut u));
    let mut dev = Device {
        next_fd: 0,
        held: None,
        may_drop: true,
        dropped: false,
    };
    let mut out = Vec::new();
    while !u.is_empty() {
        let op = u.arbitrary::<u8>().unwrap_or(0);
        if op % 4 == 3 {
            dev.drain(&mut conn, &mut u, &mut out);
            replies += out.len();
            out.clear();
            continue;
        }
        let len = usize::from(u.arbitrary::<u16>().unwrap_or(0)).min(conn.input_room());
        let nfds = u.arbitrary::<u8>().unwrap_or(0) % 9;
        let bytes = u.bytes(len.min(u.len())).unwrap_or_default();
        let fds = (0..nfds).map(|_| dev.fd()).collect();
        if let Err(e) = conn.handle_input(bytes, fds) {
            assert!(conn.is_closed());
            assert!(dev.dropped || !matches!(e, FatalError::AnswerDropped { .. }));
            assert!(conn.handle_input(b"x", vec![]).is_err());
        }
    }
    let mut rest = Unstructured::new(&[]);
    dev.drain(&mut conn, &mut rest, &mut out);
    if let Some(e) = dev.held.take() {
        dev.answer(&mut conn, e, 0, false);
        dev.drain(&mut conn, &mut rest, &mut out);
    }
    assert!(
        conn.is_closed() || !conn.is_waiting(),
        "every token was answered"
    );
    if dev.dropped {
        assert!(conn.is_closed(), "a dropped token closes the connection");
    }
    replies + out.len()
}

/// A request of any code, with fields from `u`, valid for the front-end's negotiation
/// as far as layouts go (the front-end's own gates may still refuse it).
fn request(
    u: &mut Unstructured<'_>,
    vmm: &frontend::Connection<H>,
    dev: &mut Device,
) -> FrontendRequest<H> {
    use FrontendRequest as Q;
    let n = vmm.negotiated();
    let xen = n.has(ProtocolFeatures::XEN_MMAP);
    let int = |u: &mut Unstructured<'_>| u.arbitrary::<u64>().unwrap_or(0);
    let small = |u: &mut Unstructured<'_>| u32::from(u.arbitrary::<u8>().unwrap_or(0) % 4);
    let region = |u: &mut Unstructured<'_>| {
        let k = u.arbitrary::<u8>().unwrap_or(0) % 4;
        MemoryRegion {
            guest_phys_addr: u64::from(k) * 0x10000,
            memory_size: 0x10000,
            user_addr: 0x7000_0000 + u64::from(k) * 0x10000,
            mmap_offset: 0,
            xen: xen.then_some(XenRegion {
                flags: XenMmapFlags::empty(),
                domid: 0,
            }),
        }
    };
    let code = u.int_in_range(1..=44u32).unwrap_or(1);
    match code {
        1 => Q::GetFeatures,
        2 => Q::SetFeatures {
            features: n.offered_features & VirtioFeatures::from_bits_retain(int(u)),
        },
        3 => Q::SetOwner,
        4 => Q::ResetOwner,
        5 if vmm.postcopy() && u.arbitrary::<bool>().unwrap_or(false) => {
            Q::SetMemTablePostcopyAck { value: 0 }
        }
        5 => {
            let count = u.arbitrary::<u8>().unwrap_or(0) % 3;
            let regions = (0..count)
                .map(|_| RegionFd {
                    region: region(u),
                    fd: dev.fd(),
                })
                .collect();
            Q::SetMemTable { regions }
        }
        6 => Q::SetLogBase {
            log: LogDescription {
                mmap_size: 4096,
                mmap_offset: 0,
            },
            fd: n.has(ProtocolFeatures::LOG_SHMFD).then(|| dev.fd()),
        },
        7 => Q::SetLogFd { fd: dev.fd() },
        8 => Q::SetVringNum {
            index: small(u),
            num: [0, 8, 256, 100]
                .get(small(u) as usize)
                .copied()
                .unwrap_or(8),
        },
        9 => {
            let base = 0x7000_0000 + u64::from(small(u)) * 0x1000;
            Q::SetVringAddr {
                addr: VringAddr {
                    index: small(u),
                    flags: VringAddrFlags::empty(),
                    desc: base,
                    avail: base + 0x800,
                    used: base + 0xc00,
                    log: 0,
                },
            }
        }
        10 => Q::SetVringBase {
            index: small(u),
            base: VringBase(small(u)),
        },
        11 => Q::GetVringBase { index: small(u) },
        12 => Q::SetVringKick {
            index: small(u) as u8,
            fd: u.arbitrary::<bool>().unwrap_or(true).then(|| dev.fd()),
        },
        13 => Q::SetVringCall {
            index: small(u) as u8,
            fd: Some(dev.fd()),
        },
        14 => Q::SetVringErr {
            index: small(u) as u8,
            fd: None,
        },
        15 => Q::GetProtocolFeatures,
        16 => Q::SetProtocolFeatures {
            features: n.offered_protocol & ProtocolFeatures::from_bits_retain(int(u)),
        },
        17 => Q::GetQueueNum,
        18 => Q::SetVringEnable {
            index: small(u),
            enable: u.arbitrary().unwrap_or(true),
        },
        19 => Q::SendRarp {
            mac: [2, 0, 0, 0, 0, 1],
        },
        20 => Q::NetSetMtu { mtu: int(u) },
        21 => Q::SetBackendReqFd { fd: dev.fd() },
        22 => Q::IotlbMsg {
            msg: IotlbMsg {
                iova: int(u),
                size: 4096,
                uaddr: 0,
                perm: IotlbPerm::READ,
                kind: if small(u) == 0 {
                    IotlbType::Miss
                } else {
                    IotlbType::Update
                },
            },
        },
        23 => Q::SetVringEndian {
            index: small(u),
            endian: VringEndian::Little,
        },
        24 => Q::GetConfig {
            offset: small(u) * 8,
            size: small(u) * 8,
            flags: ConfigFlags::Frontend,
        },
        25 => Q::SetConfig {
            offset: small(u),
            flags: ConfigFlags::Migration,
            data: vec![1; small(u) as usize],
        },
        26 => Q::CreateCryptoSession {
            session: Box::new(CryptoSession([0; layout::CRYPTO_SESSION_SIZE])),
        },
        27 => Q::CloseCryptoSession { session_id: int(u) },
        28 => Q::PostcopyAdvise,
        29 => Q::PostcopyListen,
        30 => Q::PostcopyEnd,
        31 => Q::GetInflightFd {
            desc: InflightDesc {
                num_queues: 2,
                queue_size: 256,
                ..Default::default()
            },
        },
        32 => Q::SetInflightFd {
            desc: InflightDesc {
                mmap_size: 4096,
                mmap_offset: 0,
                num_queues: 2,
                queue_size: 256,
            },
            fd: dev.fd(),
        },
        33 => Q::GpuSetSocket { fd: dev.fd() },
        34 => Q::ResetDevice,
        35 => Q::VringKick { index: small(u) },
        36 => Q::GetMaxMemSlots,
        37 if vmm.postcopy() && u.arbitrary::<bool>().unwrap_or(false) => {
            Q::AddMemRegPostcopyAck { value: 0 }
        }
        37 => Q::AddMemReg {
            region: RegionFd {
                region: region(u),
                fd: dev.fd(),
            },
        },
        38 => Q::RemMemReg { region: region(u) },
        39 => Q::SetStatus {
            status: DeviceStatus::from_bits_retain(u.arbitrary().unwrap_or(0)),
        },
        40 => Q::GetStatus,
        41 => Q::GetSharedObject {
            uuid: Uuid([small(u) as u8; 16]),
        },
        42 => Q::SetDeviceStateFd {
            direction: TransferDirection::Load,
            phase: MigrationPhase::Stopped,
            fd: dev.fd(),
        },
        43 => Q::CheckDeviceState,
        _ => Q::GetShmemConfig,
    }
}

/// Fuzz body: our front-end against our back-end, with arbitrary requests, device answers
/// and (optionally) corrupted or hostile back-end output. Never a panic; while nothing was
/// corrupted, neither side fails.
pub fn frontend_session(data: &[u8]) {
    let _ = frontend_session_completions(data);
}

/// [`frontend_session`], returning how many requests the front-end saw completed.
pub fn frontend_session_completions(data: &[u8]) -> usize {
    let mut completions = 0;
    let mut u = Unstructured::new(data);
    let mut be = backend::Connection::<H>::new(description(&mut u));
    let mut vmm = frontend::Connection::<H>::new();
    let mut dev = Device {
        next_fd: 1 << 20,
        held: None,
        may_drop: false,
        dropped: false,
    };
    let mut corrupted = false;
    let mut to_vmm: Vec<Transmit<H>> = Vec::new();
    let mut to_be: std::collections::VecDeque<Transmit<H>> = Default::default();
    let mut steps = 0usize;
    while !u.is_empty() && steps < 10_000 && !vmm.is_closed() {
        steps += 1;
        let op = u.arbitrary::<u8>().unwrap_or(0) % 8;
        // Every op reads a fixed number of bytes, so seeds can be written by hand.
        match op {
            0..=2 => {
                let params = u.bytes(8.min(u.len())).unwrap_or_default();
                let r = request(&mut Unstructured::new(params), &vmm, &mut dev);
                let _ = vmm.send(r);
            }
            3 => {
                // Like an embedder, read only as much as the back-end has room for.
                let cut = usize::from(u.arbitrary::<u8>().unwrap_or(0));
                to_be.extend(std::iter::from_fn(|| vmm.poll_transmit()));
                while let Some(t) = to_be.front() {
                    if t.bytes.len() > be.input_room() {
                        break;
                    }
                    let Some(t) = to_be.pop_front() else { break };
                    let (a, b) = t
                        .bytes
                        .split_at(cut.clamp(1, t.bytes.len().max(1)).min(t.bytes.len()));
                    let r = be
                        .handle_input(a, t.fds)
                        .and_then(|()| be.handle_input(b, vec![]));
                    assert!(
                        r.is_ok() || corrupted,
                        "back-end failed on our front-end's output: {r:?}"
                    );
                }
            }
            4 => dev.drain(&mut be, &mut u, &mut to_vmm),
            5 | 6 => {
                dev.drain(&mut be, &mut u, &mut to_vmm);
                let k = if op == 6 {
                    u.arbitrary::<u16>().unwrap_or(0)
                } else {
                    0
                };
                for (n, mut t) in to_vmm.drain(..).enumerate() {
                    if op == 6 && n == 0 {
                        corrupted = true;
                        match k % 4 {
                            0 => {
                                let i = usize::from(k >> 2) % t.bytes.len().max(1);
                                if let Some(b) = t.bytes.get_mut(i) {
                                    *b ^= 0x41;
                                }
                            }
                            1 => t.bytes.truncate(usize::from(k >> 2) % t.bytes.len().max(1)),
                            2 => t.fds.push(dev.fd()),
                            _ => t.fds.clear(),
                        }
                    }
                    let r = vmm.handle_input(&t.bytes, t.fds);
                    if let Err(FatalError::Decode(DecodeError::PayloadSize {
                        request: ReqCode::Frontend(FrontendReq::AddMemReg),
                        reply: true,
                        ..
                    })) = r
                    {
                        // Known gap: a refused ADD_MEM_REG in postcopy has no failure form
                        // the codec decodes (spec §7.7); the front-end closes.
                        return completions;
                    }
                    assert!(
                        r.is_ok() || corrupted,
                        "front-end failed on our back-end's output: {r:?}"
                    );
                    if r.is_err() {
                        break;
                    }
                }
            }
            _ => {
                corrupted = true;
                let len = usize::from(u.arbitrary::<u8>().unwrap_or(0));
                let nfds = u.arbitrary::<u8>().unwrap_or(0) % 3;
                let bytes = u.bytes(len.min(u.len())).unwrap_or_default();
                let fds = (0..nfds).map(|_| dev.fd()).collect();
                let _ = vmm.handle_input(bytes, fds);
            }
        }
        while let Some(e) = vmm.poll_event() {
            if let frontend::Event::ConnectionLost { error } = e {
                assert!(corrupted, "front-end lost the connection: {error}");
            } else {
                completions += 1;
            }
        }
    }
    completions
}
