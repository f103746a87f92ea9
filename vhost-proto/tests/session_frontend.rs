//! `frontend::Connection` against a scripted hostile back-end: random requests, each
//! answered by a reply that is right, or wrong in one way (wrong code, wrong size, extra or
//! missing fd, wrong flags, unsolicited, wrong ring index, wrong config size, NACK). A small
//! model says what each should produce: the right completion event, or a typed fatal error
//! after which the connection is closed. Never a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use proptest::prelude::*;
use vhost_proto::frontend::{Connection, Event};
use vhost_proto::session::FatalError;
use vhost_proto::wire::*;

#[derive(Clone, Copy, Debug)]
enum Req {
    GetFeatures,
    SetOwner,
    GetVringBase(u32),
    GetConfig(u32, u32),
    SetVringNum,
    GetInflight,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Hostility {
    Honest,
    Nack,
    WrongCode,
    WrongSize,
    ExtraFd,
    WrongFlags,
    Unsolicited,
    WrongIndex,
    ConfigSize,
    Silent,
}

fn raw(code: u32, flags: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = code.to_ne_bytes().to_vec();
    v.extend_from_slice(&flags.to_ne_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_ne_bytes());
    v.extend_from_slice(payload);
    v
}

fn request(r: Req) -> FrontendRequest<i32> {
    match r {
        Req::GetFeatures => FrontendRequest::GetFeatures,
        Req::SetOwner => FrontendRequest::SetOwner,
        Req::GetVringBase(index) => FrontendRequest::GetVringBase { index },
        Req::GetConfig(offset, size) => FrontendRequest::GetConfig {
            offset,
            size,
            flags: ConfigFlags::Frontend,
        },
        Req::SetVringNum => FrontendRequest::SetVringNum { index: 0, num: 8 },
        Req::GetInflight => FrontendRequest::GetInflightFd {
            desc: InflightDesc {
                num_queues: 1,
                queue_size: 8,
                ..Default::default()
            },
        },
    }
}

/// The honest reply's code, payload and fds; `None` when the request expects nothing.
fn honest(r: Req, reply_ack: bool) -> Option<(u32, Vec<u8>, usize)> {
    let state = |i: u32, n: u32| [i.to_ne_bytes(), n.to_ne_bytes()].concat();
    match r {
        Req::GetFeatures => Some((1, (1u64 << 32 | 1 << 30).to_ne_bytes().to_vec(), 0)),
        Req::SetOwner => reply_ack.then(|| (3, 0u64.to_ne_bytes().to_vec(), 0)),
        Req::SetVringNum => reply_ack.then(|| (8, 0u64.to_ne_bytes().to_vec(), 0)),
        Req::GetVringBase(i) => Some((11, state(i, 5), 0)),
        Req::GetConfig(o, s) => {
            let mut p = [o.to_ne_bytes(), s.to_ne_bytes(), 0u32.to_ne_bytes()].concat();
            p.extend(std::iter::repeat_n(7u8, s as usize));
            Some((24, p, 0))
        }
        Req::GetInflight => {
            let mut p = 4096u64.to_ne_bytes().to_vec();
            p.extend_from_slice(&0u64.to_ne_bytes());
            p.extend_from_slice(&1u16.to_ne_bytes());
            p.extend_from_slice(&8u16.to_ne_bytes());
            p.extend_from_slice(&[0; 4]);
            Some((31, p, 1))
        }
    }
}

fn req() -> impl Strategy<Value = Req> {
    prop_oneof![
        Just(Req::GetFeatures),
        Just(Req::SetOwner),
        (0u32..3).prop_map(Req::GetVringBase),
        (0u32..8, 1u32..8).prop_map(|(o, s)| Req::GetConfig(o, s)),
        Just(Req::SetVringNum),
        Just(Req::GetInflight),
    ]
}

fn hostility() -> impl Strategy<Value = Hostility> {
    prop_oneof![
        6 => Just(Hostility::Honest),
        1 => Just(Hostility::Nack),
        1 => Just(Hostility::WrongCode),
        1 => Just(Hostility::WrongSize),
        1 => Just(Hostility::ExtraFd),
        1 => Just(Hostility::WrongFlags),
        1 => Just(Hostility::Unsolicited),
        1 => Just(Hostility::WrongIndex),
        1 => Just(Hostility::ConfigSize),
        1 => Just(Hostility::Silent),
    ]
}

/// Brings a front-end to the point where REPLY_ACK and CONFIG and INFLIGHT are negotiated
/// (or not), with an honest back-end.
fn negotiated(reply_ack: bool) -> Connection<i32> {
    let mut c = Connection::<i32>::new();
    let pf = ProtocolFeatures::CONFIG
        | ProtocolFeatures::INFLIGHT_SHMFD
        | if reply_ack {
            ProtocolFeatures::REPLY_ACK
        } else {
            ProtocolFeatures::empty()
        };
    c.send(FrontendRequest::GetFeatures).unwrap();
    c.handle_input(&raw(1, 5, &(1u64 << 30 | 1 << 32).to_ne_bytes()), vec![])
        .unwrap();
    c.send(FrontendRequest::GetProtocolFeatures).unwrap();
    c.handle_input(&raw(15, 5, &pf.bits().to_ne_bytes()), vec![])
        .unwrap();
    c.send(FrontendRequest::SetProtocolFeatures { features: pf })
        .unwrap();
    while c.poll_transmit().is_some() {}
    while c.poll_event().is_some() {}
    c
}

fn run(reply_ack: bool, steps: &[(Req, Hostility, usize)]) {
    let mut c = negotiated(reply_ack);
    for (r, h, split) in steps {
        let id = c.send(request(*r)).unwrap();
        let sent = c.poll_transmit().unwrap();
        // The request's flags: NEED_REPLY exactly when REPLY_ACK and no reply body.
        let flags = u32::from_ne_bytes(sent.bytes[4..8].try_into().unwrap());
        let body = !matches!(r, Req::SetOwner | Req::SetVringNum);
        assert_eq!(flags, if reply_ack && !body { 9 } else { 1 });
        let honest = honest(*r, reply_ack);
        let (bytes, fds, fatal) = match (h, honest.clone()) {
            (Hostility::Silent, _) | (Hostility::Honest, None) => (vec![], 0, false),
            (Hostility::Unsolicited, None) => (raw(3, 5, &0u64.to_ne_bytes()), 0, true),
            (_, None) => (raw(99, 5, &[]), 0, true),
            (Hostility::Honest, Some((code, p, f))) => (raw(code, 5, &p), f, false),
            (Hostility::Nack, Some((code, _, _))) => {
                let ack_only = matches!(r, Req::SetOwner | Req::SetVringNum);
                // A NACK is fine for an ack; for a body it is a wrong reply (size or shape).
                (
                    raw(code, 5, &9u64.to_ne_bytes()),
                    0,
                    !ack_only && !matches!(r, Req::GetFeatures),
                )
            }
            (Hostility::WrongCode, Some((code, p, f))) => {
                (raw(if code == 1 { 2 } else { 1 }, 5, &p), f, true)
            }
            (Hostility::WrongSize, Some((code, mut p, f))) => {
                p.extend_from_slice(&[0; 3]);
                (raw(code, 5, &p), f, true)
            }
            (Hostility::ExtraFd, Some((code, p, f))) => (raw(code, 5, &p), f + 2, true),
            // 0xd (NEED_REPLY echoed) is tolerated like libvhost-user's replies; version 3 is not.
            (Hostility::WrongFlags, Some((code, p, f))) => (raw(code, 0x7, &p), f, true),
            (Hostility::Unsolicited, Some((code, p, f))) => {
                let mut b = raw(code, 5, &p);
                b.extend(raw(code, 5, &p));
                (b, f, true)
            }
            (Hostility::WrongIndex, Some((11, _, _))) => {
                if let Req::GetVringBase(i) = r {
                    (
                        raw(11, 5, &[(i + 1).to_ne_bytes(), 5u32.to_ne_bytes()].concat()),
                        0,
                        true,
                    )
                } else {
                    unreachable!()
                }
            }
            (Hostility::ConfigSize, Some((24, _, _))) => {
                let Req::GetConfig(o, s) = r else {
                    unreachable!()
                };
                let mut p = [o.to_ne_bytes(), (s + 1).to_ne_bytes(), 0u32.to_ne_bytes()].concat();
                p.extend(std::iter::repeat_n(7u8, *s as usize + 1));
                (raw(24, 5, &p), 0, true)
            }
            (_, Some((code, p, f))) => (raw(code, 5, &p), f, false),
        };
        let fd_handles: Vec<i32> = (0..fds as i32).collect();
        let cut = if bytes.is_empty() {
            0
        } else {
            1 + split % bytes.len()
        };
        let mut result = c.handle_input(&bytes[..cut], fd_handles);
        if result.is_ok() {
            result = c.handle_input(&bytes[cut..], vec![]);
        }
        if fatal {
            let err = result.expect_err("a hostile reply must be fatal");
            assert!(!matches!(err, FatalError::Closed), "{err}");
            assert!(c.is_closed());
            let evs: Vec<_> = std::iter::from_fn(|| c.poll_event()).collect();
            assert!(
                matches!(evs.last(), Some(Event::ConnectionLost { .. })),
                "{evs:?}"
            );
            assert!(c.send(FrontendRequest::GetFeatures).is_err());
            return;
        }
        result.unwrap();
        let ev = c.poll_event();
        match (h, honest) {
            (Hostility::Silent, Some(_)) => {
                assert!(ev.is_none());
                // Still waiting: the next request queues behind it. End the case here.
                return;
            }
            (_, None) => assert!(ev.is_none()),
            (Hostility::Nack, Some(_)) if !matches!(r, Req::GetFeatures) => {
                assert!(
                    matches!(ev, Some(Event::Nacked { id: got, value: 9, .. }) if got == id),
                    "{ev:?}"
                )
            }
            (_, Some(_)) if matches!(r, Req::SetOwner | Req::SetVringNum) => {
                assert!(
                    matches!(ev, Some(Event::Acked { id: got, .. }) if got == id),
                    "{ev:?}"
                )
            }
            (_, Some(_)) => assert!(
                matches!(ev, Some(Event::Reply { id: got, .. }) if got == id),
                "{ev:?}"
            ),
        }
        assert!(c.is_idle());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn frontend_against_hostile_backend(reply_ack in any::<bool>(), steps in prop::collection::vec((req(), hostility(), 0usize..64), 1..30)) {
        run(reply_ack, &steps);
    }
}

#[test]
fn inflight_reply_without_fd_for_a_buffer_is_fatal() {
    let mut c = negotiated(false);
    c.send(request(Req::GetInflight)).unwrap();
    let (code, p, _) = honest(Req::GetInflight, false).unwrap();
    let err = c.handle_input(&raw(code, 5, &p), vec![]).unwrap_err();
    assert!(matches!(err, FatalError::BadReply { .. }), "{err}");
}
