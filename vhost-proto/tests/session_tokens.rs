//! Answer tokens: acks follow the runner's answers, and a token dropped unanswered is
//! detected (failure reply or NACK, then `FatalError::AnswerDropped`) instead of stalling
//! the connection. One case per token kind, on the back-end connection and the front-end's
//! back-end channel.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use vhost_proto::backend::{Connection, DeviceDescription, Event, Refused};
use vhost_proto::session::{FatalError, Negotiated, RingPosition, Transmit};
use vhost_proto::wire::*;
use vhost_proto::{backend, frontend};

type Q = FrontendRequest<i32>;

fn protocol() -> ProtocolFeatures {
    ProtocolFeatures::MQ
        | ProtocolFeatures::REPLY_ACK
        | ProtocolFeatures::STATUS
        | ProtocolFeatures::CONFIG
        | ProtocolFeatures::CRYPTO_SESSION
        | ProtocolFeatures::PAGEFAULT
        | ProtocolFeatures::INFLIGHT_SHMFD
        | ProtocolFeatures::SHARED_OBJECT
        | ProtocolFeatures::DEVICE_STATE
        | ProtocolFeatures::BACKEND_REQ
        | ProtocolFeatures::CONFIGURE_MEM_SLOTS
}

fn send(conn: &mut Connection<i32>, r: Q, need_reply: bool) {
    let e = r.encode(need_reply, &DecodeContext::default()).unwrap();
    conn.handle_input(&e.bytes, e.fds).unwrap();
}

/// Answers every event yes, returns the transmits.
fn settle(conn: &mut Connection<i32>) -> Vec<Transmit<i32>> {
    let mut out = Vec::new();
    loop {
        out.extend(std::iter::from_fn(|| conn.poll_transmit()));
        let Some(e) = conn.poll_event() else { break };
        match e {
            Event::MemoryTable { answer, .. } | Event::MemoryRegionAdded { answer, .. } => {
                conn.answer_memory(answer, Ok(())).unwrap()
            }
            Event::RingStarted { answer, .. } => conn.answer_ring_started(answer, Ok(())).unwrap(),
            Event::RingStopped { answer, .. } => conn
                .answer_ring_stopped(answer, RingPosition::default())
                .unwrap(),
            Event::Rejected { rejection } => panic!("rejected: {rejection}"),
            Event::FeaturesSet { .. } | Event::ProtocolFeaturesSet { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    out
}

fn region() -> MemoryRegion {
    MemoryRegion {
        guest_phys_addr: 0,
        memory_size: 0x10000,
        user_addr: 0x7000_0000,
        mmap_offset: 0,
        xen: None,
    }
}

fn vring_addr() -> VringAddr {
    VringAddr {
        index: 0,
        flags: VringAddrFlags::empty(),
        desc: 0x7000_0000,
        avail: 0x7000_1000,
        used: 0x7000_2000,
        log: 0,
    }
}

/// A negotiated connection (split rings), answered.
fn negotiated() -> Connection<i32> {
    let desc = DeviceDescription::new(VirtioFeatures::VERSION_1, protocol(), 2)
        .with_config_size(16)
        .with_max_queue_size(256);
    let mut conn = Connection::new(desc);
    send(&mut conn, Q::GetFeatures, false);
    send(&mut conn, Q::GetProtocolFeatures, false);
    send(
        &mut conn,
        Q::SetProtocolFeatures {
            features: protocol(),
        },
        false,
    );
    send(
        &mut conn,
        Q::SetFeatures {
            features: VirtioFeatures::VERSION_1 | VirtioFeatures::PROTOCOL_FEATURES,
        },
        false,
    );
    settle(&mut conn);
    conn
}

/// ... with a memory table and ring 0 configured (not started).
fn configured() -> Connection<i32> {
    let mut conn = negotiated();
    send(
        &mut conn,
        Q::SetMemTable {
            regions: vec![RegionFd {
                region: region(),
                fd: 3,
            }],
        },
        false,
    );
    send(&mut conn, Q::SetVringNum { index: 0, num: 256 }, false);
    send(&mut conn, Q::SetVringAddr { addr: vring_addr() }, false);
    settle(&mut conn);
    conn
}

/// ... with ring 0 started.
fn started() -> Connection<i32> {
    let mut conn = configured();
    send(
        &mut conn,
        Q::SetVringKick {
            index: 0,
            fd: Some(5),
        },
        false,
    );
    settle(&mut conn);
    assert!(conn.ring(0).unwrap().started());
    conn
}

fn code_of(t: &Transmit<i32>) -> u32 {
    u32::from_ne_bytes(t.bytes[0..4].try_into().unwrap())
}

/// The request that makes the event under test, on a connection prepared for it.
struct Case {
    name: &'static str,
    conn: fn() -> Connection<i32>,
    request: Q,
    code: FrontendReq,
    /// The failure reply's payload.
    reply: Vec<u8>,
}

fn cases() -> Vec<Case> {
    let u64b = |v: u64| v.to_ne_bytes().to_vec();
    let mut crypto_reply = vec![0u8; layout::CRYPTO_SESSION_SIZE];
    crypto_reply[1064..1072].copy_from_slice(&(-1i64).to_ne_bytes());
    let mut vring_base = 0u32.to_ne_bytes().to_vec();
    vring_base.extend_from_slice(&0u32.to_ne_bytes());
    vec![
        Case {
            name: "ack (SET_STATUS)",
            conn: negotiated,
            request: Q::SetStatus {
                status: DeviceStatus::ACKNOWLEDGE,
            },
            code: FrontendReq::SetStatus,
            reply: u64b(1),
        },
        Case {
            name: "ack (SET_VRING_CALL)",
            conn: started,
            request: Q::SetVringCall { index: 0, fd: None },
            code: FrontendReq::SetVringCall,
            reply: u64b(1),
        },
        Case {
            name: "ack (SET_BACKEND_REQ_FD)",
            conn: negotiated,
            request: Q::SetBackendReqFd { fd: 9 },
            code: FrontendReq::SetBackendReqFd,
            reply: u64b(1),
        },
        Case {
            name: "memory",
            conn: negotiated,
            request: Q::SetMemTable {
                regions: vec![RegionFd {
                    region: region(),
                    fd: 3,
                }],
            },
            code: FrontendReq::SetMemTable,
            reply: u64b(1),
        },
        Case {
            name: "ring start",
            conn: configured,
            request: Q::SetVringKick {
                index: 0,
                fd: Some(5),
            },
            code: FrontendReq::SetVringKick,
            reply: u64b(1),
        },
        Case {
            name: "ring stop",
            conn: started,
            request: Q::GetVringBase { index: 0 },
            code: FrontendReq::GetVringBase,
            reply: vring_base,
        },
        Case {
            name: "config",
            conn: negotiated,
            request: Q::GetConfig {
                offset: 0,
                size: 8,
                flags: ConfigFlags::Frontend,
            },
            code: FrontendReq::GetConfig,
            reply: vec![],
        },
        Case {
            name: "crypto",
            conn: negotiated,
            request: Q::CreateCryptoSession {
                session: Box::new(CryptoSession([0; layout::CRYPTO_SESSION_SIZE])),
            },
            code: FrontendReq::CreateCryptoSession,
            reply: crypto_reply,
        },
        Case {
            name: "postcopy advise",
            conn: negotiated,
            request: Q::PostcopyAdvise,
            code: FrontendReq::PostcopyAdvise,
            reply: vec![],
        },
        Case {
            name: "inflight",
            conn: negotiated,
            request: Q::GetInflightFd {
                desc: InflightDesc {
                    num_queues: 2,
                    queue_size: 256,
                    ..Default::default()
                },
            },
            code: FrontendReq::GetInflightFd,
            reply: vec![0; 24],
        },
        Case {
            name: "shared object",
            conn: negotiated,
            request: Q::GetSharedObject {
                uuid: Uuid([7; 16]),
            },
            code: FrontendReq::GetSharedObject,
            reply: vec![],
        },
        Case {
            name: "device state",
            conn: negotiated,
            request: Q::SetDeviceStateFd {
                direction: TransferDirection::Save,
                phase: MigrationPhase::Stopped,
                fd: 8,
            },
            code: FrontendReq::SetDeviceStateFd,
            reply: u64b(1 | 1 << 8),
        },
    ]
}

/// How the embedder comes back to the connection after dropping the token.
#[derive(Clone, Copy, Debug)]
enum Entry {
    Input,
    Event,
    Transmit,
}

#[test]
fn dropped_tokens_are_detected_at_every_entry_point() {
    for entry in [Entry::Input, Entry::Event, Entry::Transmit] {
        for case in cases() {
            let what = format!("{} via {entry:?}", case.name);
            let mut conn = (case.conn)();
            send(&mut conn, case.request, true);
            // A request behind it stays buffered, and is dropped with the connection.
            send(&mut conn, Q::GetFeatures, false);
            let event = conn.poll_event().unwrap();
            assert!(conn.is_waiting(), "{what}");
            assert!(
                conn.poll_transmit().is_none(),
                "{what}: no reply before the answer"
            );
            drop(event);
            let expected = FatalError::AnswerDropped {
                request: case.code.into(),
            };
            let mut transmits = Vec::new();
            match entry {
                Entry::Input => {
                    assert_eq!(conn.handle_input(&[], vec![]), Err(expected.clone()));
                }
                Entry::Event => {}
                Entry::Transmit => transmits.extend(conn.poll_transmit()),
            }
            match conn.poll_event() {
                Some(Event::ConnectionLost { error }) => assert_eq!(error, expected, "{what}"),
                other => panic!("{what}: {other:?}"),
            }
            assert!(conn.poll_event().is_none(), "{what}");
            assert!(conn.is_closed() && !conn.is_waiting(), "{what}");
            transmits.extend(std::iter::from_fn(|| conn.poll_transmit()));
            assert_eq!(transmits.len(), 1, "{what}: only the failure reply");
            let t = &transmits[0];
            assert!(t.fds.is_empty(), "{what}");
            assert_eq!(code_of(t), case.code.raw(), "{what}");
            assert_eq!(&t.bytes[12..], &case.reply[..], "{what}");
            assert_eq!(
                conn.handle_input(&[0], vec![]),
                Err(FatalError::Closed),
                "{what}"
            );
        }
    }
}

/// A token answered or dropped on another thread: tokens are `Send`.
#[test]
fn tokens_cross_threads() {
    fn is_send<T: Send + Sync>() {}
    is_send::<backend::AckToken>();
    is_send::<backend::RingStartToken>();
    is_send::<backend::RingStopToken>();
    is_send::<backend::MemoryToken>();
    is_send::<backend::ConfigToken>();
    is_send::<backend::CryptoToken>();
    is_send::<backend::PostcopyAdviseToken>();
    is_send::<backend::InflightToken>();
    is_send::<backend::SharedObjectToken>();
    is_send::<backend::DeviceStateToken>();
    is_send::<frontend::ChannelToken>();
    is_send::<frontend::LookupToken>();
    let mut conn = negotiated();
    send(
        &mut conn,
        Q::SetStatus {
            status: DeviceStatus::ACKNOWLEDGE,
        },
        true,
    );
    let Some(Event::Status { answer, .. }) = conn.poll_event() else {
        panic!()
    };
    let answer = std::thread::spawn(move || answer).join().unwrap();
    conn.ack(answer, Ok(())).unwrap();
    assert_eq!(
        &conn.poll_transmit().unwrap().bytes[12..],
        &0u64.to_ne_bytes()
    );
    send(
        &mut conn,
        Q::SetStatus {
            status: DeviceStatus::ACKNOWLEDGE,
        },
        true,
    );
    let Some(Event::Status { answer, .. }) = conn.poll_event() else {
        panic!()
    };
    std::thread::spawn(move || drop(answer)).join().unwrap();
    assert!(matches!(
        conn.poll_event(),
        Some(Event::ConnectionLost {
            error: FatalError::AnswerDropped { .. }
        })
    ));
}

/// An answer of the wrong shape consumes the token: the connection cannot be answered any
/// more, so it closes like after a drop rather than waiting forever.
#[test]
fn bad_answer_counts_as_dropped() {
    let mut conn = negotiated();
    send(
        &mut conn,
        Q::GetConfig {
            offset: 0,
            size: 8,
            flags: ConfigFlags::Frontend,
        },
        false,
    );
    let Some(Event::ConfigRead { answer, .. }) = conn.poll_event() else {
        panic!()
    };
    assert!(conn.answer_config(answer, Ok(&[1, 2, 3])).is_err());
    let t = conn.poll_transmit().unwrap();
    assert_eq!(t.bytes.len(), 12, "empty config: the failure form");
    assert!(matches!(
        conn.poll_event(),
        Some(Event::ConnectionLost {
            error: FatalError::AnswerDropped { .. }
        })
    ));
}

/// Acks follow actions: the ring events wait for the runner, and a refusal undoes what the
/// runner could not do.
#[test]
fn ring_acks_follow_the_runner() {
    // A refused start: NACK, ring stopped, a later kick starts it again.
    let mut conn = configured();
    send(
        &mut conn,
        Q::SetVringKick {
            index: 0,
            fd: Some(5),
        },
        true,
    );
    send(&mut conn, Q::GetFeatures, false);
    let Some(Event::RingStarted { config, answer }) = conn.poll_event() else {
        panic!()
    };
    assert_eq!((config.index, config.size), (0, 256));
    assert!(conn.ring(0).unwrap().started());
    assert!(conn.poll_transmit().is_none());
    conn.answer_ring_started(answer, Err(Refused::because("no worker")))
        .unwrap();
    assert!(!conn.ring(0).unwrap().started());
    let nack = conn.poll_transmit().unwrap();
    assert_eq!(code_of(&nack), 12);
    assert_eq!(&nack.bytes[12..], &1u64.to_ne_bytes());
    assert_eq!(
        code_of(&conn.poll_transmit().unwrap()),
        1,
        "buffered GET_FEATURES"
    );
    assert!(matches!(conn.poll_event(), Some(Event::Rejected { .. })));
    send(&mut conn, Q::SetVringKick { index: 0, fd: None }, true);
    let Some(Event::RingStarted { answer, .. }) = conn.poll_event() else {
        panic!()
    };
    conn.answer_ring_started(answer, Ok(())).unwrap();
    assert!(conn.ring(0).unwrap().started());
    assert_eq!(
        &conn.poll_transmit().unwrap().bytes[12..],
        &0u64.to_ne_bytes()
    );

    // A refused rebuild on new addresses: NACK, ring stopped.
    let mut conn = started();
    send(&mut conn, Q::SetVringAddr { addr: vring_addr() }, true);
    let Some(Event::RingConfigChanged { answer, .. }) = conn.poll_event() else {
        panic!()
    };
    assert!(conn.poll_transmit().is_none());
    conn.ack(answer, Err(Refused::because("cannot rebuild")))
        .unwrap();
    assert!(!conn.ring(0).unwrap().started());
    assert_eq!(
        &conn.poll_transmit().unwrap().bytes[12..],
        &1u64.to_ne_bytes()
    );

    // Refused notifier and enable changes: NACK; a refused notifier is not recorded (the
    // old one is kept), the ring runs.
    let mut conn = started();
    for (req, code) in [
        (
            Q::SetVringKick {
                index: 0,
                fd: Some(6),
            },
            12u32,
        ),
        (
            Q::SetVringCall {
                index: 0,
                fd: Some(7),
            },
            13,
        ),
        (
            Q::SetVringErr {
                index: 0,
                fd: Some(8),
            },
            14,
        ),
        (
            Q::SetVringEnable {
                index: 0,
                enable: true,
            },
            18,
        ),
    ] {
        send(&mut conn, req, true);
        let answer = match conn.poll_event().unwrap() {
            Event::KickChanged { answer, .. }
            | Event::CallChanged { answer, .. }
            | Event::ErrChanged { answer, .. }
            | Event::RingEnabled { answer, .. } => answer,
            other => panic!("{other:?}"),
        };
        assert!(conn.poll_transmit().is_none());
        conn.ack(answer, Err(Refused::because("no"))).unwrap();
        let nack = conn.poll_transmit().unwrap();
        assert_eq!(
            (code_of(&nack), &nack.bytes[12..]),
            (code, &1u64.to_ne_bytes()[..])
        );
        assert!(matches!(conn.poll_event(), Some(Event::Rejected { .. })));
    }
    let r = conn.ring(0).unwrap();
    assert!(r.started() && r.enabled());
    assert_eq!((r.kick(), r.call(), r.err()), (Some(&5), None, None));

    // A refused back-end channel is not recorded as installed.
    let mut conn = negotiated();
    send(&mut conn, Q::SetBackendReqFd { fd: 9 }, true);
    let Some(Event::BackendChannel { fd: 9, answer }) = conn.poll_event() else {
        panic!()
    };
    conn.ack(answer, Err(Refused::because("no"))).unwrap();
    assert!(!conn.has_backend_channel());
    assert!(matches!(conn.poll_event(), Some(Event::Rejected { .. })));
    send(&mut conn, Q::SetBackendReqFd { fd: 10 }, true);
    let Some(Event::BackendChannel { answer, .. }) = conn.poll_event() else {
        panic!()
    };
    conn.ack(answer, Ok(())).unwrap();
    assert!(conn.has_backend_channel());
}

/// The front-end's back-end channel: both token kinds.
#[test]
fn channel_tokens_dropped() {
    let neg = Negotiated {
        protocol: ProtocolFeatures::BACKEND_REQ
            | ProtocolFeatures::REPLY_ACK
            | ProtocolFeatures::CONFIG
            | ProtocolFeatures::SHARED_OBJECT,
        ..Negotiated::default()
    };
    let ctx = DecodeContext::default();
    for (req, need_reply) in [
        (BackendRequest::<i32>::ConfigChange, true),
        (
            BackendRequest::SharedObjectLookup {
                uuid: Uuid([1; 16]),
            },
            false,
        ),
    ] {
        let mut rx = frontend::Channel::<i32>::new(neg);
        let e = req.encode(need_reply, &ctx).unwrap();
        rx.handle_input(&e.bytes, e.fds).unwrap();
        let ev = rx.poll_event().unwrap();
        assert!(matches!(
            ev,
            frontend::ChannelEvent::Request { .. }
                | frontend::ChannelEvent::SharedObjectLookup { .. }
        ));
        drop(ev);
        let t = rx.poll_transmit().unwrap();
        assert_eq!(&t.bytes[12..], &1u64.to_ne_bytes());
        assert!(matches!(
            rx.poll_event(),
            Some(frontend::ChannelEvent::ChannelLost {
                error: FatalError::AnswerDropped { .. }
            })
        ));
        assert!(rx.is_closed());
    }
}
