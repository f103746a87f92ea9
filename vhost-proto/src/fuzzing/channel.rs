//! Bodies of the `backend_channel` and `frontend_channel` fuzz targets: the two ends of
//! the back-end channel (spec §6, §7.6), each fed a hostile peer.
//!
//! Both read their input with [`arbitrary::Unstructured`] (zero once it runs short, so
//! any byte string is an input). Both start with a negotiation header:
//!
//! | bytes | meaning |
//! |---|---|
//! | 4 | negotiated protocol features (bits 0–22; the offer is the same) |
//! | 1 | bit 0: ACCESS_PLATFORM negotiated |
//!
//! # `backend_channel`: [`backend::Channel`](crate::backend::Channel) (the back-end's end)
//!
//! Ops (`op % 6`), each reading a fixed number of bytes but 2 and 3:
//!
//! | op | bytes | action |
//! |---|---|---|
//! | 0 | 4 | send a back-end request of any code (`b0 % 10`) with fields from the rest |
//! | 1 | 1 | move transmits to the front-end, which checks each decodes as the request sent, in order |
//! | 2 | 1 + 8 | the front-end replies to the oldest request awaiting one: how (`b % 8`: 0–3 ack, 4 nack with the value, 5 another code, 6 lookup fd, 7 cut in two reads), the value |
//! | 3 | 2 + 1 + n | raw reply bytes: length, fd count (`% 3`), bytes |
//! | 4 | 5 | a new negotiation ([`Channel::set_negotiated`](crate::backend::Channel::set_negotiated)) |
//! | 5 | 0 | collect completions, each checked against what was sent |
//!
//! # `frontend_channel`: [`frontend::Channel`](crate::frontend::Channel) (the front-end's end)
//!
//! Ops (`op % 5`):
//!
//! | op | bytes | action |
//! |---|---|---|
//! | 0 | 5 | the back-end sends a request of any code (`b0 % 10`), NEED_REPLY from `b4` bit 0, cut in two reads at `b4 >> 1` |
//! | 1 | 2 + 1 + n | raw request bytes: length, fd count (`% 3`), bytes |
//! | 2 | 1 | the VMM answers what it was asked: one choice for this drain (`% 8`: 0–3 yes, 4 refuse, 5 hold the token, 6 answer a held token (a stale one after its request was answered), exactly `0xfd` drop the token) |
//! | 3 | 0 | move transmits to the back-end, which checks each decodes as a reply |
//! | 4 | 0 | answer every held token |

use std::collections::VecDeque;

use arbitrary::Unstructured;

use crate::backend::{Channel as BackendChannel, ChannelEvent as BackendEvent, RequestId};
use crate::frontend::{Channel as FrontendChannel, ChannelEvent as FrontendEvent};
use crate::session::{ApiError, FatalError, Negotiated, Transmit};
use crate::wire::*;

type H = u32;

fn byte(u: &mut Unstructured<'_>) -> u8 {
    u.arbitrary::<u8>().unwrap_or(0)
}

fn negotiation(u: &mut Unstructured<'_>) -> Negotiated {
    let p = u.arbitrary::<u32>().unwrap_or(0) & ((1 << 23) - 1);
    let v = byte(u);
    let protocol = ProtocolFeatures::from_bits_retain(p.into());
    let mut features = VirtioFeatures::VERSION_1 | VirtioFeatures::PROTOCOL_FEATURES;
    if v & 1 != 0 {
        features |= VirtioFeatures::ACCESS_PLATFORM;
    }
    Negotiated {
        offered_features: features,
        features,
        offered_protocol: protocol,
        protocol,
    }
}

/// A back-end request of code `b0 % 10` with fields from the other bytes and fds
/// numbered from `fd`.
fn backend_request(b: [u8; 4], fd: &mut H) -> BackendRequest<H> {
    use BackendRequest as R;
    let [code, x, y, z] = b;
    let mut next_fd = || {
        *fd = fd.wrapping_add(1);
        *fd
    };
    let uuid = Uuid([x; 16]);
    let map = ShmemMap {
        shmid: x % 3,
        fd_offset: u64::from(y) * 0x1000,
        shm_offset: u64::from(z) * 0x1000,
        len: if x & 0x80 != 0 { 0 } else { 0x1000 },
        flags: ShmemMapFlags::from_bits_retain(u64::from(y & 3)),
    };
    match code % 10 {
        0 => R::IotlbMsg {
            msg: IotlbMsg {
                iova: u64::from(y) << 12,
                size: 4096,
                uaddr: 0,
                perm: IotlbPerm::from_bits_retain(z & 3),
                kind: if x & 1 != 0 {
                    IotlbType::Miss
                } else {
                    IotlbType::AccessFail
                },
            },
        },
        1 => R::ConfigChange,
        2 => R::VringHostNotifier {
            index: x % 4,
            size: u64::from(y) * 0x1000,
            offset: u64::from(z) * 0x1000,
            fd: (x & 0x80 == 0).then(&mut next_fd),
        },
        3 => R::VringCall {
            index: u32::from(x % 4),
        },
        4 => R::VringErr {
            index: u32::from(x % 4),
        },
        5 => R::SharedObjectAdd { uuid },
        6 => R::SharedObjectRemove { uuid },
        7 => R::SharedObjectLookup { uuid },
        8 => R::ShmemMap { map, fd: next_fd() },
        _ => R::ShmemUnmap { map },
    }
}

/// A request the back-end end sent and has not seen completed.
#[derive(Debug)]
struct Sent {
    id: RequestId,
    code: BackendReq,
    /// Whether a reply completes it (NEED_REPLY, or SHARED_OBJECT_LOOKUP).
    replied: bool,
    /// Whether its transmit went out.
    transmitted: bool,
    /// Whether its reply came (or the channel failed, so none will).
    completed: bool,
}

/// The oldest request still waiting for its reply: the only one a reply may complete (a
/// hostile front-end may answer it before its transmit is written).
fn oldest_awaiting(sent: &mut VecDeque<Sent>) -> Option<&mut Sent> {
    sent.iter_mut().find(|s| s.replied && !s.completed)
}

/// Fuzz body: the back-end's end of the back-end channel sends arbitrary requests and is
/// fed arbitrary (well-formed, mismatched and raw) front-end replies. Never a panic; a
/// failure closes it for good and is reported once; every transmit is the request sent,
/// in order; every completion is of the oldest request awaiting a reply, with its code.
pub fn backend_channel(data: &[u8]) {
    let _ = backend_channel_completions(data);
}

/// [`backend_channel`], returning how many requests were completed (for seed tests).
pub fn backend_channel_completions(data: &[u8]) -> usize {
    let mut u = Unstructured::new(data);
    let neg = negotiation(&mut u);
    let mut ch = BackendChannel::<H>::new(neg);
    // The channel's reply decoder keeps the context it was made with; its gates and
    // encoder follow `set_negotiated`.
    let ctx = neg.decode_context(false);
    let mut cur = neg;
    let mut fd: H = 0;
    // Sent requests, oldest first, until transmitted and completed.
    let mut sent: VecDeque<Sent> = VecDeque::new();
    let mut completions = 0;
    let mut lost = false;
    let mut steps = 0;
    while !u.is_empty() && steps < 10_000 {
        steps += 1;
        match byte(&mut u) % 6 {
            0 => {
                let b = [byte(&mut u), byte(&mut u), byte(&mut u), byte(&mut u)];
                let req = backend_request(b, &mut fd);
                let code = req.code();
                let lookup = code == BackendReq::SharedObjectLookup;
                match ch.send(req) {
                    Ok(id) => {
                        assert!(!ch.is_closed());
                        sent.push_back(Sent {
                            id,
                            code,
                            replied: lookup || cur.reply_ack(),
                            transmitted: false,
                            completed: false,
                        });
                    }
                    Err(ApiError::Closed) => assert!(ch.is_closed()),
                    Err(_) => {}
                }
            }
            1 => {
                let _cut = byte(&mut u);
                while let Some(t) = ch.poll_transmit() {
                    let Some(s) = sent.iter_mut().find(|s| !s.transmitted) else {
                        panic!("the channel sent {:02x?}, which was not asked for", t.bytes);
                    };
                    s.transmitted = true;
                    check_request(&t, s.code, &cur.decode_context(false));
                }
            }
            2 => {
                let how = byte(&mut u) % 8;
                let value = u.arbitrary::<u64>().unwrap_or(0);
                let Some(first) = oldest_awaiting(&mut sent).filter(|s| s.transmitted) else {
                    continue;
                };
                let code = if how == 5 {
                    BackendReq::try_from(first.code.raw() % 10 + 1).unwrap_or(first.code)
                } else {
                    first.code
                };
                let reply = match (how, code) {
                    (_, BackendReq::SharedObjectLookup) => BackendReply::SharedObjectLookup {
                        value: if how == 4 { value } else { 0 },
                        fd: (how == 6 || how < 4).then(|| {
                            fd = fd.wrapping_add(1);
                            fd
                        }),
                    },
                    (4, _) => BackendReply::U64 { value },
                    _ => BackendReply::U64 { value: 0 },
                };
                let Ok(e) = reply.encode(code, &ctx) else {
                    continue;
                };
                let r = if how == 7 {
                    let (a, b) = e.bytes.split_at(e.bytes.len() / 2);
                    ch.handle_input(a, e.fds)
                        .and_then(|()| ch.handle_input(b, vec![]))
                } else {
                    ch.handle_input(&e.bytes, e.fds)
                };
                if r.is_err() {
                    assert!(ch.is_closed(), "a failed channel stays open: {r:?}");
                }
            }
            3 => {
                let len = usize::from(u.arbitrary::<u16>().unwrap_or(0) % 512);
                let nfds = byte(&mut u) % 3;
                let bytes = u.bytes(len.min(u.len())).unwrap_or_default();
                let fds = (0..nfds)
                    .map(|_| {
                        fd = fd.wrapping_add(1);
                        fd
                    })
                    .collect();
                let was_closed = ch.is_closed();
                let r = ch.handle_input(bytes, fds);
                if was_closed {
                    assert!(matches!(r, Err(FatalError::Closed)), "{r:?}");
                }
                if r.is_err() {
                    assert!(ch.is_closed(), "a failed channel stays open: {r:?}");
                }
            }
            4 => {
                cur = negotiation(&mut u);
                ch.set_negotiated(cur);
            }
            _ => {}
        }
        // Completions, checked against what was sent.
        while let Some(ev) = ch.poll_event() {
            match ev {
                BackendEvent::ChannelLost { .. } => {
                    assert!(!lost, "the channel reported its loss twice");
                    assert!(ch.is_closed());
                    lost = true;
                    // No reply completes anything now; requests already handed to the
                    // transmit queue still go out.
                    sent.iter_mut().for_each(|s| s.completed = true);
                }
                BackendEvent::Acked { id, request } | BackendEvent::Nacked { id, request, .. } => {
                    let s = oldest_awaiting(&mut sent);
                    assert!(
                        s.as_ref().is_some_and(|s| s.id == id && s.code == request),
                        "completion of {id:?} {request:?}, expected {s:?}"
                    );
                    if let Some(s) = s {
                        s.completed = true;
                    }
                    completions += 1;
                }
                BackendEvent::SharedObject { id, value, fd } => {
                    let s = oldest_awaiting(&mut sent);
                    assert!(
                        s.as_ref().is_some_and(
                            |s| s.id == id && s.code == BackendReq::SharedObjectLookup
                        ),
                        "lookup completion of {id:?}, expected {s:?}"
                    );
                    if let Some(s) = s {
                        s.completed = true;
                    }
                    assert!(fd.is_none() || value == 0, "an fd with a failure");
                    completions += 1;
                }
            }
        }
        while sent
            .front()
            .is_some_and(|s| s.transmitted && (s.completed || !s.replied))
        {
            sent.pop_front();
        }
        if ch.is_closed() {
            assert!(lost, "the channel closed without reporting it");
            assert!(matches!(
                ch.send(BackendRequest::ConfigChange),
                Err(ApiError::Closed)
            ));
        }
    }
    completions
}

/// Checks that a transmit of the back-end's end is one request with code `code`.
fn check_request(t: &Transmit<H>, code: BackendReq, ctx: &DecodeContext) {
    let mut d = BackendRequestDecoder::<H>::new(*ctx);
    let mut input = Input::new(&t.bytes, t.fds.clone());
    match d.decode(&mut input) {
        Ok(Some(r)) => assert_eq!(r.code, code, "sent in another order"),
        other => panic!(
            "the channel sent {:02x?}, which decodes as {other:?}",
            t.bytes
        ),
    }
    assert!(input.is_empty(), "a transmit holds more than one request");
}

/// Fuzz body: the front-end's end of the back-end channel is fed arbitrary (well-formed
/// and raw) back-end requests, and the VMM answers, refuses, holds, answers late, answers
/// with stale tokens, or drops tokens. Never a panic; a failure closes it for good; every
/// transmit decodes as one reply; a well-formed request that asked for a reply gets
/// exactly one (while the input stays well-formed); a dropped token closes the channel.
pub fn frontend_channel(data: &[u8]) {
    let _ = frontend_channel_replies(data);
}

/// A token the VMM holds.
enum Held {
    Ack(crate::frontend::ChannelToken),
    Lookup(crate::frontend::LookupToken),
}

/// [`frontend_channel`], returning how many replies the channel sent (for seed tests).
pub fn frontend_channel_replies(data: &[u8]) -> usize {
    let mut u = Unstructured::new(data);
    let neg = negotiation(&mut u);
    let ctx = neg.decode_context(false);
    let mut ch = FrontendChannel::<H>::new(neg);
    let mut fd: H = 1 << 20;
    let mut outbox: VecDeque<(Vec<u8>, Vec<H>)> = VecDeque::new();
    let mut held: Vec<Held> = Vec::new();
    // Replies owed for well-formed requests (while no raw input was fed).
    let mut owed = 0usize;
    let mut clean = true;
    let mut dropped = false;
    let mut replies = 0;
    let mut steps = 0;
    while !u.is_empty() && steps < 10_000 {
        steps += 1;
        match byte(&mut u) % 5 {
            0 => {
                let b = [byte(&mut u), byte(&mut u), byte(&mut u), byte(&mut u)];
                let flags = byte(&mut u);
                let req = backend_request(b, &mut fd);
                let code = req.code();
                let need = flags & 1 != 0;
                let Ok(e) = req.encode(need, &ctx) else {
                    continue;
                };
                if need || code == BackendReq::SharedObjectLookup {
                    owed += 1;
                }
                // fds come with at least one byte (SCM_RIGHTS).
                let cut = usize::from(flags >> 1).clamp(1, e.bytes.len().max(1));
                let (a, b) = e.bytes.split_at(cut);
                outbox.push_back((a.to_vec(), e.fds));
                outbox.push_back((b.to_vec(), Vec::new()));
            }
            1 => {
                clean = false;
                let len = usize::from(u.arbitrary::<u16>().unwrap_or(0) % 512);
                let nfds = byte(&mut u) % 3;
                let bytes = u.bytes(len.min(u.len())).unwrap_or_default().to_vec();
                let fds = (0..nfds)
                    .map(|_| {
                        fd = fd.wrapping_add(1);
                        fd
                    })
                    .collect();
                outbox.push_back((bytes, fds));
            }
            2 => {
                let choice = byte(&mut u);
                while let Some(ev) = ch.poll_event() {
                    let r = match ev {
                        FrontendEvent::Request { answer, .. } => match choice % 8 {
                            _ if choice == 0xfd => {
                                dropped = true;
                                drop(answer);
                                Ok(())
                            }
                            5 => {
                                held.push(Held::Ack(answer));
                                Ok(())
                            }
                            4 => ch.ack(answer, Err(crate::backend::Refused::because("no"))),
                            _ => ch.ack(answer, Ok(())),
                        },
                        FrontendEvent::SharedObjectLookup { answer, .. } => match choice % 8 {
                            _ if choice == 0xfd => {
                                dropped = true;
                                drop(answer);
                                Ok(())
                            }
                            5 => {
                                held.push(Held::Lookup(answer));
                                Ok(())
                            }
                            4 => ch
                                .answer_lookup(answer, Err(crate::backend::Refused::because("no"))),
                            _ => {
                                fd = fd.wrapping_add(1);
                                ch.answer_lookup(answer, Ok(fd))
                            }
                        },
                        FrontendEvent::ChannelLost { error } => {
                            assert!(ch.is_closed());
                            assert!(
                                !clean
                                    || dropped
                                    || !matches!(error, FatalError::AnswerDropped { .. }),
                                "answer dropped although every token was answered"
                            );
                            Ok(())
                        }
                        _ => Ok(()),
                    };
                    // Answers with live tokens are refused only once the channel closed.
                    assert!(r.is_ok() || ch.is_closed(), "answer refused: {r:?}");
                }
                if choice % 8 == 6 {
                    answer_held(&mut ch, &mut held);
                }
            }
            3 => {}
            _ => answer_held(&mut ch, &mut held),
        }
        // The back-end reads the replies; the channel reads what it has room for.
        while let Some(t) = ch.poll_transmit() {
            check_reply(&t, &ctx);
            replies += 1;
        }
        while let Some((bytes, fds)) = outbox.pop_front() {
            if ch.is_closed() {
                outbox.clear();
                break;
            }
            let room = ch.input_room();
            if room == 0 {
                outbox.push_front((bytes, fds));
                break;
            }
            let (now, later) = bytes.split_at(room.min(bytes.len()));
            let r = ch.handle_input(now, fds);
            if !later.is_empty() {
                outbox.push_front((later.to_vec(), Vec::new()));
            }
            if let Err(e) = r {
                assert!(ch.is_closed(), "a failed channel stays open: {e:?}");
                assert!(
                    !clean || dropped,
                    "well-formed requests failed the channel: {e:?}"
                );
                assert!(matches!(
                    ch.handle_input(b"x", vec![]),
                    Err(FatalError::Closed)
                ));
            }
        }
    }
    // Answer everything; a clean run owes no reply then.
    answer_held(&mut ch, &mut held);
    for _ in 0..64 {
        let mut moved = false;
        while let Some(t) = ch.poll_transmit() {
            check_reply(&t, &ctx);
            replies += 1;
            moved = true;
        }
        while let Some(ev) = ch.poll_event() {
            moved = true;
            let _ = match ev {
                FrontendEvent::Request { answer, .. } => ch.ack(answer, Ok(())),
                FrontendEvent::SharedObjectLookup { answer, .. } => ch.answer_lookup(answer, Ok(7)),
                _ => Ok(()),
            };
        }
        while let Some((bytes, fds)) = outbox.pop_front() {
            if ch.is_closed() || ch.input_room() < bytes.len() {
                outbox.push_front((bytes, fds));
                break;
            }
            moved = true;
            let _ = ch.handle_input(&bytes, fds);
        }
        if !moved {
            break;
        }
    }
    if clean && !dropped && !ch.is_closed() && outbox.is_empty() {
        assert_eq!(
            replies, owed,
            "well-formed requests asking for a reply got {replies}"
        );
    }
    if dropped {
        // The next entry point notices the dropped token.
        let _ = ch.poll_event();
        assert!(ch.is_closed(), "a dropped token went unnoticed");
    }
    replies
}

/// Answers every held token (a stale one is refused, never a panic).
fn answer_held(ch: &mut FrontendChannel<H>, held: &mut Vec<Held>) {
    for h in held.drain(..) {
        let r = match h {
            Held::Ack(t) => ch.ack(t, Ok(())),
            Held::Lookup(t) => ch.answer_lookup(t, Err(crate::backend::Refused::because("late"))),
        };
        assert!(
            matches!(
                r,
                Ok(()) | Err(ApiError::StaleToken) | Err(ApiError::Closed)
            ),
            "{r:?}"
        );
    }
}

/// Checks that a transmit of the front-end's end is one reply to a back-end request.
fn check_reply(t: &Transmit<H>, ctx: &DecodeContext) {
    assert!(t.fds.len() <= 1, "a reply carries {} fds", t.fds.len());
    let mut d = BackendReplyDecoder::<H>::new(*ctx);
    let mut input = Input::new(&t.bytes, t.fds.clone());
    match d.decode(&mut input) {
        Ok(Some(_)) => assert!(input.is_empty(), "a transmit holds more than one reply"),
        // A request of a code we do not know that asked for a reply gets its NACK under
        // that code, as QEMU sends it: a u64 reply frame our codec cannot name.
        Err(DecodeError::UnknownReply { .. }) => {
            let word = |i: usize| {
                t.bytes
                    .get(i..i + 4)
                    .and_then(|b| b.try_into().ok())
                    .map(u32::from_ne_bytes)
            };
            assert_eq!(word(4), Some(HeaderFlags::reply().bits()), "reply flags");
            assert_eq!(word(8), Some(8), "a NACK is one u64");
            assert_eq!(t.bytes.len(), HEADER_SIZE + 8, "reply size");
            assert!(t.fds.is_empty());
        }
        other => panic!(
            "the channel sent {:02x?}, which decodes as {other:?}",
            t.bytes
        ),
    }
}
