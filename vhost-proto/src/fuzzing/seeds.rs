//! The seed corpus of the `decode` fuzz target: generator and stable replay.
//!
//! `cargo test -p vhost-proto -- --ignored write_decode_seeds` rewrites `fuzz/seeds/decode/`.

use std::path::PathBuf;

use super::{StreamKind, make_input};
use crate::wire::*;

type Fr = FrontendRequest<u32>;

fn seed_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/decode")
}

fn region(gpa: u64, size: u64, ua: u64, off: u64, xen: bool) -> MemoryRegion {
    MemoryRegion {
        guest_phys_addr: gpa,
        memory_size: size,
        user_addr: ua,
        mmap_offset: off,
        xen: xen.then_some(XenRegion {
            flags: XenMmapFlags::FOREIGN,
            domid: 7,
        }),
    }
}

/// Concatenates encoded messages; each becomes one chunk with its fds.
fn stream(msgs: Vec<Encoded<u32>>) -> (Vec<(u16, u8)>, Vec<u8>) {
    let mut chunks = Vec::new();
    let mut bytes = Vec::new();
    for m in msgs {
        chunks.push((m.bytes.len() as u16, m.fds.len() as u8));
        bytes.extend_from_slice(&m.bytes);
    }
    (chunks, bytes)
}

fn req(m: Fr, ctx: &DecodeContext) -> Encoded<u32> {
    m.encode(false, ctx).unwrap()
}

fn raw(code: u32, flags: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&code.to_ne_bytes());
    v.extend_from_slice(&flags.to_ne_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_ne_bytes());
    v.extend_from_slice(payload);
    v
}

fn qemu_startup(ctx: &DecodeContext) -> Vec<Encoded<u32>> {
    let pf = ProtocolFeatures::MQ
        | ProtocolFeatures::REPLY_ACK
        | ProtocolFeatures::BACKEND_REQ
        | ProtocolFeatures::CONFIG
        | ProtocolFeatures::CONFIGURE_MEM_SLOTS
        | ProtocolFeatures::STATUS;
    let vf =
        VirtioFeatures::VERSION_1 | VirtioFeatures::EVENT_IDX | VirtioFeatures::PROTOCOL_FEATURES;
    vec![
        req(Fr::GetFeatures, ctx),
        req(Fr::GetProtocolFeatures, ctx),
        req(Fr::SetProtocolFeatures { features: pf }, ctx),
        req(Fr::GetQueueNum, ctx),
        req(Fr::GetMaxMemSlots, ctx),
        req(Fr::SetBackendReqFd { fd: 3 }, ctx),
        req(Fr::SetOwner, ctx),
        req(Fr::GetFeatures, ctx),
        req(
            Fr::GetConfig {
                offset: 0,
                size: 60,
                flags: ConfigFlags::Frontend,
            },
            ctx,
        ),
        req(Fr::SetFeatures { features: vf }, ctx),
        req(
            Fr::SetMemTable {
                regions: vec![
                    RegionFd {
                        region: region(0, 0x8000_0000, 0x7f00_0000_0000, 0, false),
                        fd: 4,
                    },
                    RegionFd {
                        region: region(0x1_0000_0000, 0x4000_0000, 0x7f80_0000_0000, 0, false),
                        fd: 5,
                    },
                ],
            },
            ctx,
        ),
        req(Fr::SetVringNum { index: 0, num: 256 }, ctx),
        req(
            Fr::SetVringBase {
                index: 0,
                base: VringBase::split(0),
            },
            ctx,
        ),
        req(
            Fr::SetVringAddr {
                addr: VringAddr {
                    index: 0,
                    flags: VringAddrFlags::empty(),
                    desc: 0x7f00_0001_0000,
                    used: 0x7f00_0001_2000,
                    avail: 0x7f00_0001_1000,
                    log: 0x1_2000,
                },
            },
            ctx,
        ),
        req(
            Fr::SetVringKick {
                index: 0,
                fd: Some(6),
            },
            ctx,
        ),
        req(
            Fr::SetVringCall {
                index: 0,
                fd: Some(7),
            },
            ctx,
        ),
    ]
}

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let c = DecodeContext::default();
    let mut out = Vec::new();
    let fr = StreamKind::FrontendRequests;

    let (chunks, bytes) = stream(qemu_startup(&c));
    out.push(("qemu-startup", make_input(fr, c, &chunks, false, &bytes)));
    // The same bytes as one read with all fds: they belong to the last header (not what Linux
    // delivers), so the first request before it that needs an fd has none: fatal there.
    let all: Vec<Encoded<u32>> = qemu_startup(&c);
    let nfds: usize = all.iter().map(|e| e.fds.len()).sum();
    let (_, bytes) = stream(all);
    out.push((
        "qemu-startup-all-fds-first-header",
        make_input(fr, c, &[(bytes.len() as u16, nfds as u8)], false, &bytes),
    ));

    let (_, bytes) = stream(vec![
        req(
            Fr::SetVringEnable {
                index: 0,
                enable: true,
            },
            &c,
        ),
        Fr::GetStatus.encode(true, &c).unwrap(),
        req(
            Fr::SetStatus {
                status: DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::DRIVER_OK,
            },
            &c,
        ),
        req(
            Fr::SetVringEnable {
                index: 0,
                enable: false,
            },
            &c,
        ),
        req(Fr::GetVringBase { index: 0 }, &c),
        req(Fr::GetVringBase { index: 1 }, &c),
        req(
            Fr::SetStatus {
                status: DeviceStatus::empty(),
            },
            &c,
        ),
    ]);
    out.push((
        "start-stop-byte-by-byte",
        make_input(fr, c, &[], true, &bytes),
    ));

    let (chunks, bytes) = stream(vec![
        req(
            Fr::SetFeatures {
                features: VirtioFeatures::VERSION_1 | VirtioFeatures::RING_PACKED,
            },
            &c,
        ),
        req(
            Fr::GetInflightFd {
                desc: InflightDesc {
                    num_queues: 2,
                    queue_size: 256,
                    ..Default::default()
                },
            },
            &c,
        ),
        req(
            Fr::SetInflightFd {
                desc: InflightDesc {
                    mmap_size: 8192,
                    mmap_offset: 0,
                    num_queues: 2,
                    queue_size: 256,
                },
                fd: 9,
            },
            &c,
        ),
        req(
            Fr::SetVringBase {
                index: 1,
                base: VringBase::packed(10, true, 10, true),
            },
            &c,
        ),
        req(Fr::ResetDevice, &c),
        req(Fr::ResetOwner, &c),
    ]);
    out.push(("inflight-packed", make_input(fr, c, &chunks, false, &bytes)));

    let x = DecodeContext {
        xen_mmap: true,
        ..c
    };
    let (chunks, bytes) = stream(vec![
        req(
            Fr::AddMemReg {
                region: RegionFd {
                    region: region(0, 0x10_0000, 0, 0, true),
                    fd: 1,
                },
            },
            &x,
        ),
        req(
            Fr::RemMemReg {
                region: region(0, 0x10_0000, 0, 0, true),
            },
            &x,
        ),
        req(
            Fr::SetMemTable {
                regions: vec![RegionFd {
                    region: region(0x1000, 0x1000, 0x1000, 0x1000, true),
                    fd: 2,
                }],
            },
            &x,
        ),
    ]);
    out.push(("xen-mem-slots", make_input(fr, x, &chunks, false, &bytes)));

    let p = DecodeContext {
        postcopy: true,
        ..c
    };
    let (chunks, bytes) = stream(vec![
        req(Fr::PostcopyAdvise, &c),
        Fr::PostcopyListen.encode(true, &c).unwrap(),
        req(
            Fr::SetMemTable {
                regions: vec![RegionFd {
                    region: region(0, 0x4000_0000, 0x7f00_0000_0000, 0, false),
                    fd: 3,
                }],
            },
            &p,
        ),
        req(Fr::SetMemTablePostcopyAck { value: 0 }, &p),
        req(
            Fr::AddMemReg {
                region: RegionFd {
                    region: region(0x4000_0000, 0x1000, 0x1000, 0, false),
                    fd: 4,
                },
            },
            &p,
        ),
        req(Fr::AddMemRegPostcopyAck { value: 0 }, &p),
        Fr::PostcopyEnd.encode(true, &c).unwrap(),
    ]);
    out.push(("postcopy", make_input(fr, p, &chunks, false, &bytes)));

    let l = DecodeContext {
        log_shmfd: true,
        ..c
    };
    let (chunks, bytes) = stream(vec![
        req(
            Fr::SetFeatures {
                features: VirtioFeatures::LOG_ALL | VirtioFeatures::VERSION_1,
            },
            &l,
        ),
        req(
            Fr::SetLogBase {
                log: LogDescription {
                    mmap_size: 0x2000,
                    mmap_offset: 0,
                },
                fd: Some(5),
            },
            &l,
        ),
        req(Fr::SetLogFd { fd: 6 }, &l),
        req(
            Fr::SetVringAddr {
                addr: VringAddr {
                    index: 0,
                    flags: VringAddrFlags::LOG,
                    desc: 0x1000,
                    used: 0x3000,
                    avail: 0x2000,
                    log: 0x3000,
                },
            },
            &l,
        ),
    ]);
    out.push(("dirty-log", make_input(fr, l, &chunks, false, &bytes)));

    let mut crypto = [0u8; 1072];
    crypto[0] = 1;
    let (chunks, bytes) = stream(vec![
        req(
            Fr::SetConfig {
                offset: 4,
                flags: ConfigFlags::Migration,
                data: vec![1, 2, 3, 4],
            },
            &c,
        ),
        req(
            Fr::IotlbMsg {
                msg: IotlbMsg {
                    iova: 0x1000,
                    size: 0x1000,
                    uaddr: 0x7f00_0000_0000,
                    perm: IotlbPerm::READ_WRITE,
                    kind: IotlbType::Update,
                },
            },
            &c,
        ),
        req(
            Fr::SetVringEndian {
                index: 0,
                endian: VringEndian::Big,
            },
            &c,
        ),
        req(
            Fr::SendRarp {
                mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            },
            &c,
        ),
        req(Fr::NetSetMtu { mtu: 1500 }, &c),
        req(
            Fr::CreateCryptoSession {
                session: Box::new(CryptoSession(crypto)),
            },
            &c,
        ),
        req(Fr::CloseCryptoSession { session_id: 3 }, &c),
        req(Fr::GpuSetSocket { fd: 1 }, &c),
        req(Fr::VringKick { index: 0 }, &c),
        req(Fr::SetVringErr { index: 2, fd: None }, &c),
        req(
            Fr::GetSharedObject {
                uuid: Uuid([7; 16]),
            },
            &c,
        ),
        req(
            Fr::SetDeviceStateFd {
                direction: TransferDirection::Save,
                phase: MigrationPhase::Stopped,
                fd: 8,
            },
            &c,
        ),
        req(Fr::CheckDeviceState, &c),
        req(Fr::GetShmemConfig, &c),
    ]);
    out.push(("misc-requests", make_input(fr, c, &chunks, false, &bytes)));

    let br = StreamKind::BackendRequests;
    let map = ShmemMap {
        shmid: 1,
        fd_offset: 0,
        shm_offset: 0x1000,
        len: 0x1000,
        flags: ShmemMapFlags::WRITABLE,
    };
    let msgs: Vec<Encoded<u32>> = vec![
        BackendRequest::IotlbMsg {
            msg: IotlbMsg {
                iova: 0x1000,
                size: 0,
                uaddr: 0,
                perm: IotlbPerm::READ,
                kind: IotlbType::Miss,
            },
        },
        BackendRequest::ConfigChange,
        BackendRequest::VringHostNotifier {
            index: 1,
            size: 4096,
            offset: 0,
            fd: Some(1),
        },
        BackendRequest::VringHostNotifier {
            index: 1,
            size: 0,
            offset: 0,
            fd: None,
        },
        BackendRequest::VringCall { index: 0 },
        BackendRequest::VringErr { index: 0 },
        BackendRequest::SharedObjectAdd {
            uuid: Uuid([1; 16]),
        },
        BackendRequest::SharedObjectRemove {
            uuid: Uuid([1; 16]),
        },
        BackendRequest::SharedObjectLookup {
            uuid: Uuid([1; 16]),
        },
        BackendRequest::ShmemMap { map, fd: 2 },
        BackendRequest::ShmemUnmap { map },
    ]
    .into_iter()
    .map(|m| m.encode(true, &c).unwrap())
    .collect();
    let (chunks, bytes) = stream(msgs);
    out.push((
        "backend-requests",
        make_input(br, c, &chunks, false, &bytes),
    ));

    let rep =
        |m: FrontendReply<u32>, r: FrontendReq, ctx: &DecodeContext| m.encode(r, ctx).unwrap();
    let (chunks, bytes) = stream(vec![
        rep(
            FrontendReply::U64 {
                value: 0x1_7000_0000,
            },
            FrontendReq::GetFeatures,
            &c,
        ),
        rep(FrontendReply::U64 { value: 0 }, FrontendReq::SetOwner, &c),
        rep(
            FrontendReply::VringBase {
                index: 0,
                base: VringBase::split(42),
            },
            FrontendReq::GetVringBase,
            &c,
        ),
        rep(
            FrontendReply::Config {
                offset: 0,
                flags: ConfigFlags::Frontend,
                data: vec![0; 60],
            },
            FrontendReq::GetConfig,
            &c,
        ),
        rep(FrontendReply::Empty, FrontendReq::GetConfig, &c),
        rep(
            FrontendReply::PostcopyAdvise { fd: 1 },
            FrontendReq::PostcopyAdvise,
            &c,
        ),
        rep(
            FrontendReply::InflightFd {
                desc: InflightDesc {
                    mmap_size: 4096,
                    mmap_offset: 0,
                    num_queues: 1,
                    queue_size: 128,
                },
                fd: Some(2),
            },
            FrontendReq::GetInflightFd,
            &c,
        ),
        rep(
            FrontendReply::SharedObject {
                uuid: Some(Uuid([3; 16])),
                fd: Some(3),
            },
            FrontendReq::GetSharedObject,
            &c,
        ),
        rep(
            FrontendReply::DeviceStateFd {
                status: 0,
                fd: None,
            },
            FrontendReq::SetDeviceStateFd,
            &c,
        ),
        rep(
            FrontendReply::ShmemConfig {
                config: Box::new(ShmemConfig {
                    nregions: 1,
                    memory_sizes: [0x10_0000; 256],
                }),
            },
            FrontendReq::GetShmemConfig,
            &c,
        ),
        rep(
            FrontendReply::CryptoSession {
                session: Box::new(CryptoSession([0; 1072])),
            },
            FrontendReq::CreateCryptoSession,
            &c,
        ),
        rep(FrontendReply::Empty, FrontendReq::SetLogBase, &c),
    ]);
    out.push((
        "frontend-replies",
        make_input(StreamKind::FrontendReplies, c, &chunks, false, &bytes),
    ));

    let (chunks, bytes) = stream(vec![
        rep(
            FrontendReply::MemTable {
                regions: vec![region(0, 0x1000, 0x7fff_0000_0000, 0, false)],
            },
            FrontendReq::SetMemTable,
            &p,
        ),
        rep(
            FrontendReply::AddMemReg {
                region: region(0x1000, 0x1000, 0x7fff_1000_0000, 0, false),
            },
            FrontendReq::AddMemReg,
            &p,
        ),
        rep(
            FrontendReply::U64 { value: 0 },
            FrontendReq::PostcopyEnd,
            &p,
        ),
    ]);
    out.push((
        "postcopy-replies",
        make_input(StreamKind::FrontendReplies, p, &chunks, false, &bytes),
    ));

    let (chunks, bytes) = stream(vec![
        BackendReply::<u32>::U64 { value: 0 }
            .encode(BackendReq::ShmemMap, &c)
            .unwrap(),
        BackendReply::SharedObjectLookup {
            value: 0,
            fd: Some(1),
        }
        .encode(BackendReq::SharedObjectLookup, &c)
        .unwrap(),
        BackendReply::<u32>::SharedObjectLookup { value: 1, fd: None }
            .encode(BackendReq::SharedObjectLookup, &c)
            .unwrap(),
    ]);
    out.push((
        "backend-replies",
        make_input(StreamKind::BackendReplies, c, &chunks, false, &bytes),
    ));

    // Malformed streams.
    let ok = raw(1, 1, &[]);
    let cat = |a: &[u8], b: &[u8]| [a, b].concat();
    out.push((
        "bad-version",
        make_input(fr, c, &[], false, &cat(&raw(1, 2, &[]), &ok)),
    ));
    out.push((
        "reserved-flags",
        make_input(fr, c, &[], false, &raw(1, 0x11, &[])),
    ));
    out.push((
        "reply-flag-on-request",
        make_input(fr, c, &[], false, &raw(3, 5, &[])),
    ));
    let mut big = raw(25, 1, &[]);
    big[8..12].copy_from_slice(&0xffff_fff0u32.to_ne_bytes());
    out.push(("oversize", make_input(fr, c, &[], false, &big)));
    out.push((
        "unknown-code-then-ok",
        make_input(fr, c, &[], false, &cat(&raw(99, 9, &[1, 2, 3]), &ok)),
    ));
    let mut mt = Vec::new();
    mt.extend_from_slice(&2u32.to_ne_bytes());
    mt.extend_from_slice(&0u32.to_ne_bytes());
    mt.extend_from_slice(&[0u8; 64]);
    out.push((
        "mem-table-zero-size-one-fd",
        make_input(fr, c, &[(80, 1)], false, &raw(5, 1, &mt)),
    ));
    out.push((
        "fds-without-header",
        make_input(fr, c, &[(6, 0), (6, 2)], false, &ok),
    ));
    let mut cfg = Vec::new();
    for v in [0u32, 8, 0] {
        cfg.extend_from_slice(&v.to_ne_bytes());
    }
    cfg.extend_from_slice(&[0; 4]);
    out.push((
        "config-size-mismatch",
        make_input(fr, c, &[], false, &cat(&raw(25, 9, &cfg), &ok)),
    ));
    out.push((
        "kick-reserved-bits",
        make_input(
            fr,
            c,
            &[(20, 1)],
            false,
            &raw(12, 1, &0x1_0000u64.to_ne_bytes()),
        ),
    ));
    out.push(("truncated-header", make_input(fr, c, &[], true, &ok[..7])));
    out.push((
        "reply-need-reply",
        make_input(
            StreamKind::FrontendReplies,
            c,
            &[],
            false,
            &raw(1, 0xd, &[0; 8]),
        ),
    ));
    out
}

#[test]
#[ignore = "rewrites the checked-in seed corpus"]
fn write_decode_seeds() {
    let dir = seed_dir();
    std::fs::create_dir_all(&dir).unwrap();
    for (name, data) in seeds() {
        std::fs::write(dir.join(name), data).unwrap();
    }
}

#[test]
fn generated_seeds_pass() {
    use super::Stats;
    let expect = |decoded, rejected, fatal| Stats {
        decoded,
        rejected,
        fatal,
    };
    for (name, data) in seeds() {
        let stats = super::decode_stats(&data);
        let want = match name {
            "qemu-startup" => expect(16, 0, false),
            "start-stop-byte-by-byte" => expect(7, 0, false),
            "inflight-packed" => expect(6, 0, false),
            "xen-mem-slots" => expect(3, 0, false),
            "postcopy" => expect(7, 0, false),
            "dirty-log" => expect(4, 0, false),
            "misc-requests" => expect(14, 0, false),
            "backend-requests" => expect(11, 0, false),
            "frontend-replies" => expect(12, 0, false),
            "postcopy-replies" => expect(3, 0, false),
            "backend-replies" => expect(3, 0, false),
            "unknown-code-then-ok" => expect(1, 1, false),
            "config-size-mismatch" => expect(1, 1, false),
            // An echoed NEED_REPLY in a reply is tolerated (libvhost-user sends 0xd).
            "reply-need-reply" => expect(1, 0, false),
            "kick-reserved-bits" | "mem-table-zero-size-one-fd" => expect(0, 1, false),
            "truncated-header" => expect(0, 0, false),
            "fds-without-header" => expect(0, 0, true),
            "qemu-startup-all-fds-first-header" => expect(5, 0, true),
            _ => expect(0, 0, true),
        };
        assert_eq!(stats, want, "seed {name}");
    }
}

#[test]
fn replay_seed_corpus() {
    let mut n = 0;
    for entry in std::fs::read_dir(seed_dir()).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        super::decode(&data);
        n += 1;
    }
    assert!(n >= 10, "only {n} seeds in {}", seed_dir().display());
}
