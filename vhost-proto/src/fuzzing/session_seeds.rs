//! Seed corpora of the `backend_session` and `frontend_session` fuzz targets: generator
//! and stable replay.
//!
//! `cargo test -p vhost-proto --lib -- --ignored write_session_seeds` rewrites
//! `fuzz/seeds/backend_session/` and `fuzz/seeds/frontend_session/`.

use std::path::PathBuf;

use super::session::{
    backend_session, backend_session_replies, frontend_session, frontend_session_completions,
};
use crate::wire::*;

type Q = FrontendRequest<u32>;

fn dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target)
}

/// The 6-byte device header: offered protocol features, virtio mask, queue selector.
fn header(protocol: u32, virtio: u8, queues: u8) -> Vec<u8> {
    let mut v = protocol.to_le_bytes().to_vec();
    v.push(virtio);
    v.push(queues);
    v
}

fn region(gpa: u64) -> MemoryRegion {
    MemoryRegion {
        guest_phys_addr: gpa,
        memory_size: 0x10000,
        user_addr: 0x7000_0000 + gpa,
        mmap_offset: 0,
        xen: None,
    }
}

/// A QEMU-like start of a session: negotiation, memory, two rings, status, stop.
fn handshake(pf: ProtocolFeatures, vf: VirtioFeatures, need_reply: bool) -> Vec<Encoded<u32>> {
    let ctx = DecodeContext::default();
    let mut m: Vec<Q> = vec![
        Q::GetFeatures,
        Q::GetProtocolFeatures,
        Q::SetProtocolFeatures { features: pf },
        Q::GetQueueNum,
        Q::GetMaxMemSlots,
        Q::SetBackendReqFd { fd: 9 },
        Q::SetOwner,
        Q::SetFeatures { features: vf },
        Q::GetConfig {
            offset: 0,
            size: 8,
            flags: ConfigFlags::Frontend,
        },
        Q::SetMemTable {
            regions: vec![
                RegionFd {
                    region: region(0),
                    fd: 10,
                },
                RegionFd {
                    region: region(0x10000),
                    fd: 11,
                },
            ],
        },
    ];
    for i in 0..2u8 {
        let base = 0x7000_0000 + u64::from(i) * 0x1000;
        m.extend([
            Q::SetVringNum {
                index: i.into(),
                num: 256,
            },
            Q::SetVringBase {
                index: i.into(),
                base: VringBase(0),
            },
            Q::SetVringAddr {
                addr: VringAddr {
                    index: i.into(),
                    flags: VringAddrFlags::empty(),
                    desc: base,
                    avail: base + 0x800,
                    used: base + 0xc00,
                    log: 0,
                },
            },
            Q::SetVringKick {
                index: i,
                fd: Some(20 + u32::from(i)),
            },
            Q::SetVringCall {
                index: i,
                fd: Some(30 + u32::from(i)),
            },
            Q::SetVringEnable {
                index: i.into(),
                enable: true,
            },
        ]);
    }
    m.extend([
        Q::GetStatus,
        Q::SetStatus {
            status: DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::DRIVER_OK,
        },
        Q::GetVringBase { index: 0 },
        Q::GetVringBase { index: 1 },
        Q::SetStatus {
            status: DeviceStatus::empty(),
        },
    ]);
    m.into_iter()
        .filter_map(|q| q.encode(need_reply, &ctx).ok())
        .collect()
}

/// Frames messages as `backend_session` ops: one chunk each, a drain after every `drain_every`.
fn backend_ops(msgs: &[Encoded<u32>], drain_every: usize, choice: u8) -> Vec<u8> {
    let mut v = Vec::new();
    for (k, m) in msgs.iter().enumerate() {
        v.push(0);
        v.extend_from_slice(&(m.bytes.len() as u16).to_le_bytes());
        v.push(m.fds.len() as u8);
        v.extend_from_slice(&m.bytes);
        if (k + 1) % drain_every == 0 {
            v.extend_from_slice(&[3, choice]);
        }
    }
    v.extend_from_slice(&[3, 0, 3, 0]);
    v
}

fn raw(code: u32, flags: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = code.to_ne_bytes().to_vec();
    v.extend_from_slice(&flags.to_ne_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_ne_bytes());
    v.extend_from_slice(payload);
    v
}

fn chunk(bytes: &[u8], fds: u8) -> Vec<u8> {
    let mut v = vec![0];
    v.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
    v.push(fds);
    v.extend_from_slice(bytes);
    v
}

pub(crate) fn backend_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let all = ProtocolFeatures::from_bits_retain((1 << 23) - 1) - ProtocolFeatures::XEN_MMAP;
    let basic = ProtocolFeatures::MQ
        | ProtocolFeatures::REPLY_ACK
        | ProtocolFeatures::CONFIG
        | ProtocolFeatures::STATUS
        | ProtocolFeatures::CONFIGURE_MEM_SLOTS
        | ProtocolFeatures::BACKEND_REQ;
    let split =
        VirtioFeatures::VERSION_1 | VirtioFeatures::PROTOCOL_FEATURES | VirtioFeatures::EVENT_IDX;
    let packed = split | VirtioFeatures::RING_PACKED;
    let mut seeds = Vec::new();
    let mut with = |name, pf: ProtocolFeatures, virtio: u8, body: Vec<u8>| {
        let mut v = header(pf.bits() as u32, virtio, 1);
        v.extend(body);
        seeds.push((name, v));
    };
    with(
        "split_reply_ack",
        basic,
        0x11,
        backend_ops(&handshake(basic, split, true), 1, 0),
    );
    with(
        "split_no_ack",
        basic,
        0x11,
        backend_ops(&handshake(basic, split, false), 4, 0),
    );
    with(
        "packed_all_features",
        all,
        0x13,
        backend_ops(&handshake(all, packed, true), 2, 0),
    );
    with(
        "split_refusals",
        basic,
        0x11,
        backend_ops(&handshake(basic, split, true), 1, 6),
    );
    with(
        "split_held_answers",
        basic,
        0x11,
        backend_ops(&handshake(basic, split, true), 3, 7),
    );
    // The device drops the first token: the back-end NACKs it and closes.
    with(
        "split_dropped_token",
        basic,
        0x11,
        backend_ops(&handshake(basic, split, true), 1, 0xfd),
    );
    with(
        "no_protocol_features",
        ProtocolFeatures::empty(),
        0x01,
        backend_ops(&handshake(basic, split, true), 1, 0),
    );
    with("unnegotiated_requests", basic, 0x11, {
        let ctx = DecodeContext::default();
        let msgs: Vec<_> = [
            Q::GetFeatures,
            Q::ResetDevice,
            Q::VringKick { index: 0 },
            Q::GetShmemConfig,
            Q::PostcopyListen,
            Q::GetInflightFd {
                desc: InflightDesc::default(),
            },
        ]
        .into_iter()
        .filter_map(|q| q.encode(true, &ctx).ok())
        .collect();
        backend_ops(&msgs, 1, 0)
    });
    // One message spread over many one-byte chunks, fds with the first.
    with("byte_by_byte", basic, 0x11, {
        let m = handshake(basic, split, true);
        let mut v = Vec::new();
        for e in m.iter().take(12) {
            for (k, b) in e.bytes.iter().enumerate() {
                v.extend(chunk(&[*b], if k == 0 { e.fds.len() as u8 } else { 0 }));
            }
        }
        v.extend_from_slice(&[3, 0]);
        v
    });
    with("all_messages_one_chunk", basic, 0x11, {
        let m = handshake(basic, split, true);
        let bytes: Vec<u8> = m.iter().flat_map(|e| e.bytes.clone()).collect();
        let mut v = chunk(&bytes, 0);
        v.extend_from_slice(&[3, 0, 3, 0, 3, 0]);
        v
    });
    with("bad_version", basic, 0x11, chunk(&raw(1, 2, &[]), 0));
    with(
        "oversize",
        basic,
        0x11,
        chunk(
            &raw(24, 1, &[0; 16])[..12]
                .iter()
                .copied()
                .chain(u32::MAX.to_ne_bytes())
                .collect::<Vec<_>>(),
            0,
        ),
    );
    with("wrong_fd_count", basic, 0x11, chunk(&raw(1, 1, &[]), 3));
    with("unknown_codes", basic, 0x11, {
        let mut v = chunk(&raw(99, 9, &[1, 2, 3]), 0);
        v.extend(chunk(&raw(0, 1, &[]), 0));
        v.extend_from_slice(&[3, 0]);
        v
    });
    with("postcopy", all, 0x13, {
        let ctx = DecodeContext::default();
        let mut msgs: Vec<Encoded<u32>> = [
            Q::GetFeatures,
            Q::SetProtocolFeatures { features: all },
            Q::PostcopyAdvise,
            Q::PostcopyListen,
        ]
        .into_iter()
        .filter_map(|q| q.encode(true, &ctx).ok())
        .collect();
        let pctx = DecodeContext {
            postcopy: true,
            ..ctx
        };
        msgs.extend(
            Q::SetMemTable {
                regions: vec![RegionFd {
                    region: region(0),
                    fd: 3,
                }],
            }
            .encode(false, &pctx)
            .ok(),
        );
        msgs.extend(
            Q::SetMemTablePostcopyAck { value: 0 }
                .encode(false, &pctx)
                .ok(),
        );
        msgs.extend(Q::PostcopyEnd.encode(false, &pctx).ok());
        backend_ops(&msgs, 1, 0)
    });
    seeds
}

/// Deterministic pseudo-random bytes (xorshift), for unstructured seeds.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `frontend_session` ops: send `code` with parameter bytes, then a full round trip.
fn send(code: u8, params: [u8; 7]) -> Vec<u8> {
    let mut v = vec![0, code - 1];
    v.extend_from_slice(&params);
    v.extend_from_slice(&[3, 5, 4, 0, 5, 0]);
    v
}

pub(crate) fn frontend_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let all = (1u32 << 23) - 1 - ProtocolFeatures::XEN_MMAP.bits() as u32;
    let ff = [0xff; 7];
    let negotiate = |protocol: u32| {
        let mut v = header(protocol, 0x1f, 1);
        for (code, p) in [
            (1, [0; 7]),
            (15, [0; 7]),
            (16, ff),
            (17, [0; 7]),
            (36, [0; 7]),
            (3, [0; 7]),
            (2, ff),
        ] {
            v.extend(send(code, p));
        }
        v
    };
    let mut seeds = Vec::new();
    seeds.push(("negotiate_all", negotiate(all)));
    seeds.push(("negotiate_none", negotiate(0)));
    // Every code after negotiation, with varied parameters.
    for (name, p) in [
        ("every_code_a", [1u8, 2, 3, 4, 5, 6, 7]),
        ("every_code_b", [0u8; 7]),
        ("every_code_c", [3u8, 1, 0, 2, 1, 3, 0]),
    ] {
        let mut v = negotiate(all);
        for code in 1..=44u8 {
            v.extend(send(code, p));
        }
        seeds.push((name, v));
    }
    // A device start: memory, ring 0 configured and kicked, stop.
    let mut v = negotiate(all);
    for (code, p) in [
        (5, [1, 0, 0, 0, 0, 0, 0]),
        (8, [0, 1, 0, 0, 0, 0, 0]),
        (10, [0; 7]),
        (9, [0; 7]),
        (12, [0, 1, 0, 0, 0, 0, 0]),
        (18, [0, 1, 0, 0, 0, 0, 0]),
        (11, [0; 7]),
    ] {
        v.extend(send(code, p));
    }
    seeds.push(("ring_start_stop", v));
    let mut v = negotiate(all);
    v.extend(send(1, [0; 7]));
    v.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 6, 0, 1, 0]);
    seeds.push(("corrupted_flip", v));
    let mut v = negotiate(all);
    v.extend_from_slice(&[0, 10, 0, 0, 0, 0, 0, 0, 0, 3, 0, 6, 0, 6, 0]);
    seeds.push(("corrupted_cut", v));
    let mut v = negotiate(all);
    v.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 6, 0, 2, 0]);
    seeds.push(("corrupted_extra_fd", v));
    let mut v = negotiate(all);
    v.extend_from_slice(&[7, 20, 1]);
    v.extend(noise(7, 20));
    seeds.push(("hostile_chunk", v));
    for (i, name) in ["noise_a", "noise_b", "noise_c", "noise_d"]
        .into_iter()
        .enumerate()
    {
        seeds.push((name, noise(100 + i as u64, 64 << i)));
    }
    seeds
}

#[test]
fn replay_session_seeds() {
    let mut n = 0;
    for (name, s) in backend_seeds() {
        let replies = backend_session_replies(&s);
        let min = match name {
            "split_reply_ack" | "packed_all_features" | "split_refusals" => 25,
            "split_no_ack" => 8,
            "split_dropped_token" => 6,
            _ => 0,
        };
        assert!(replies >= min, "{name}: only {replies} replies");
        n += 1;
    }
    for (name, s) in frontend_seeds() {
        let done = frontend_session_completions(&s);
        let min = match name {
            "negotiate_all" => 5,
            n if n.starts_with("every_code") => 20,
            "ring_start_stop" => 10,
            _ => 0,
        };
        assert!(done >= min, "{name}: only {done} completions");
        n += 1;
    }
    // The checked-in corpora (which the fuzzer may have grown).
    for (target, body) in [
        ("backend_session", backend_session as fn(&[u8])),
        ("frontend_session", frontend_session),
    ] {
        let Ok(entries) = std::fs::read_dir(dir(target)) else {
            continue;
        };
        for e in entries.flatten() {
            if let Ok(data) = std::fs::read(e.path()) {
                body(&data);
                n += 1;
            }
        }
    }
    assert!(n >= 20);
}

#[test]
#[ignore = "rewrites the checked-in seed corpora"]
fn write_session_seeds() {
    for (target, seeds) in [
        ("backend_session", backend_seeds()),
        ("frontend_session", frontend_seeds()),
    ] {
        let d = dir(target);
        std::fs::create_dir_all(&d).unwrap();
        for (name, data) in seeds {
            std::fs::write(d.join(name), data).unwrap();
        }
    }
}
