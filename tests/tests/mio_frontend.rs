//! The mio front-end (`vhost_io_mio::frontend`) in a mio `Poll`, driving our std back-end
//! and our mio back-end over a socketpair: full handshake, echo through split and packed
//! rings, GET_VRING_BASE, the back-end channel; and scripted hostile back-ends: one that
//! stops answering (reply deadline → typed timeout), ones that send garbage (typed
//! protocol error, session closed), one that hangs up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod frontend_support;

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use frontend_support::*;
use mio::{Interest, Token};
use vhost_backend::os::eventfd::EventFd;
use vhost_backend::{BackendChannel, Device, Queue, QueueError, QueueHandler};
use vhost_frontend::{DriverRing, GuestRam};
use vhost_io_mio::frontend::{FrontendError, FrontendEvent, Handshake, Progress};
use vhost_proto::backend::{DeviceDescription, Refused};
use vhost_proto::frontend::Reply;
use vhost_proto::wire::{BackendRequest, FrontendReq, ProtocolFeatures, VirtioFeatures, VringBase};

const RAM: u64 = 4 << 20;

/// Handshake with two rings, echo through both, GET_VRING_BASE on both (the position is
/// the driver's), then hang up.
fn echo_case(runner: Runner, packed: bool, event_idx: bool, reply_ack: bool) {
    let (stream, backend) = Backend::start(runner, 2);
    // Tokens of the user's own: the session's span starts at 10.
    let mut lp = Loop::new(stream, Token(10));
    let f = features(packed, event_idx);
    let ram = GuestRam::new(0, RAM).unwrap();
    let mut rings: Vec<DriverRing> = (0..2)
        .map(|i| DriverRing::new(&ram, i, 64, f).unwrap())
        .collect();
    let starts = rings.iter().map(|r| ring_start(&ram, r, true)).collect();
    let mut hs = Handshake::new(f, protocol(reply_ack), memory(&ram), starts);
    let other = lp.handshake(&mut hs).unwrap();
    assert!(hs.is_done());
    assert!(other.is_empty(), "{other:?}");
    let neg = *lp.session.negotiated();
    assert_eq!(neg.reply_ack(), reply_ack);
    assert!(neg.features.contains(f | VirtioFeatures::PROTOCOL_FEATURES));
    assert_eq!(lp.session.connection().queue_num(), Some(2));

    // More buffers than the ring holds: the indexes wrap.
    echo(&mut lp, &ram, &mut rings[0], 150, 512);
    echo(&mut lp, &ram, &mut rings[1], 10, 4000);

    for ring in &mut rings {
        let index = ring.index();
        let now = Instant::now();
        let id = lp
            .session
            .request(now, |c, now| c.get_vring_base(now, index))
            .unwrap();
        let base = lp
            .until(|_, ev| match ev {
                FrontendEvent::Reply {
                    id: got,
                    request: FrontendReq::GetVringBase,
                    reply: Reply::VringBase { index: i, base },
                } if got == id => {
                    assert_eq!(i, index);
                    Ok(Some(base))
                }
                FrontendEvent::Reply { .. } => Ok(None),
                other => panic!("unexpected {other:?}"),
            })
            .unwrap();
        assert_eq!(base, ring.resume_base().unwrap(), "ring {index}");
        lp.session.forget_ring(index);
    }
    if !packed {
        assert_eq!(rings[0].resume_base().unwrap(), VringBase::split(150));
    }
    lp.poll.registry().deregister(&mut lp.session).unwrap();
    drop(lp);
    backend.finish();
}

#[test]
fn std_backend_split_ring_reply_ack() {
    echo_case(Runner::Std, false, false, true);
}

#[test]
fn std_backend_packed_ring_event_idx_without_reply_ack() {
    echo_case(Runner::Std, true, true, false);
}

#[test]
fn mio_backend_split_ring_event_idx_without_reply_ack() {
    echo_case(Runner::Mio, false, true, false);
}

#[test]
fn mio_backend_packed_ring_reply_ack() {
    echo_case(Runner::Mio, true, false, true);
}

#[test]
fn typed_requests_between_echoes_and_a_new_token() {
    let (stream, backend) = Backend::start(Runner::Mio, 1);
    let mut lp = Loop::new(stream, Token(0));
    let f = features(false, false);
    let ram = GuestRam::new(0, RAM).unwrap();
    let mut ring = DriverRing::new(&ram, 0, 32, f).unwrap();
    let mut hs = Handshake::new(
        f,
        protocol(true),
        memory(&ram),
        vec![ring_start(&ram, &ring, false)],
    );
    lp.handshake(&mut hs).unwrap();
    echo(&mut lp, &ram, &mut ring, 5, 64);

    // Typed replies through the core's helpers: config space, status.
    let now = Instant::now();
    let cfg = lp
        .session
        .request(now, |c, now| {
            c.get_config(now, 0, 8, vhost_proto::wire::ConfigFlags::Frontend)
        })
        .unwrap();
    let data = lp
        .until(|_, ev| match ev {
            FrontendEvent::Reply {
                id,
                reply: Reply::Config { data, .. },
                ..
            } if id == cfg => Ok(Some(data)),
            other => panic!("unexpected {other:?}"),
        })
        .unwrap();
    assert_eq!(data, vhost_backend::echo::CONFIG_MAGIC.to_le_bytes());
    // The handshake ended with SET_STATUS DRIVER_OK (STATUS negotiated).
    let st = lp.session.request(now, |c, now| c.get_status(now)).unwrap();
    let status = lp
        .until(|_, ev| match ev {
            FrontendEvent::Reply {
                id,
                reply: Reply::Status(s),
                ..
            } if id == st => Ok(Some(s)),
            other => panic!("unexpected {other:?}"),
        })
        .unwrap();
    assert!(status.contains(vhost_proto::wire::DeviceStatus::DRIVER_OK));
    // A request the negotiation does not allow is refused before it is sent; the session
    // goes on.
    let e = lp
        .session
        .request(now, |c, now| c.get_inflight_fd(now, 1, 32))
        .unwrap_err();
    assert!(matches!(e, FrontendError::NotSent(_)), "{e:?}");
    assert!(e.is_recoverable() && !lp.session.is_closed());

    // Move the session to another token: rings and socket follow.
    lp.poll
        .registry()
        .reregister(&mut lp.session, Token(5000), Interest::READABLE)
        .unwrap();
    assert!(lp.session.owns(Token(5002)) && !lp.session.owns(Token(2)));
    echo(&mut lp, &ram, &mut ring, 40, 64);
    lp.poll.registry().deregister(&mut lp.session).unwrap();
    // Unregistered, it cannot serve readiness.
    assert!(matches!(
        lp.session.ready(Token(5000)),
        Err(FrontendError::NotRegistered)
    ));
    drop(lp);
    backend.finish();
}

/// A back-end that talks back on the channel: each time its queue is kicked it completes
/// the buffers, sends CONFIG_CHANGE_MSG and an in-band BACKEND_VRING_CALL, and records
/// what the front-end answered.
struct Chatty {
    channel: Mutex<Option<BackendChannel>>,
    /// 1: config change acked; 2: in-band call acked as well.
    acked: Arc<AtomicU8>,
}

impl Device for Chatty {
    fn description(&self) -> DeviceDescription {
        DeviceDescription::new(
            VirtioFeatures::VERSION_1,
            ProtocolFeatures::REPLY_ACK
                | ProtocolFeatures::BACKEND_REQ
                | ProtocolFeatures::CONFIG
                | ProtocolFeatures::INBAND_NOTIFICATIONS,
            1,
        )
    }

    fn start_queue(self: Arc<Self>, _: &Queue) -> Result<Box<dyn QueueHandler>, Refused> {
        Ok(Box::new(ChattyQueue(self)))
    }

    fn backend_channel_opened(&self, channel: BackendChannel) {
        *self.channel.lock().unwrap() = Some(channel);
    }
}

struct ChattyQueue(Arc<Chatty>);

impl QueueHandler for ChattyQueue {
    fn process(&mut self, q: &mut Queue) -> Result<(), QueueError> {
        let mut any = false;
        while let Some(c) = q.pop()? {
            q.complete(c, 0)?;
            any = true;
        }
        if any
            && let Some(ch) = self.0.channel.lock().unwrap().as_mut()
            && ch.config_change().is_ok()
        {
            self.0.acked.store(1, Ordering::SeqCst);
            if ch.vring_call(0).is_ok() {
                self.0.acked.store(2, Ordering::SeqCst);
            }
        }
        Ok(())
    }
}

#[test]
fn backend_channel_requests_are_delivered_and_answered() {
    let acked = Arc::new(AtomicU8::new(0));
    let dev = Chatty {
        channel: Mutex::new(None),
        acked: Arc::clone(&acked),
    };
    let (ours, theirs) = UnixStream::pair().unwrap();
    let backend = vhost_io_std::backend::Server::from_stream(theirs, dev)
        .unwrap()
        .spawn()
        .unwrap();
    let mut lp = Loop::new(ours, Token(1));
    let f = VirtioFeatures::VERSION_1;
    let ram = GuestRam::new(0, RAM).unwrap();
    let mut ring = DriverRing::new(&ram, 0, 16, f).unwrap();
    let want = ProtocolFeatures::REPLY_ACK
        | ProtocolFeatures::BACKEND_REQ
        | ProtocolFeatures::CONFIG
        | ProtocolFeatures::INBAND_NOTIFICATIONS;
    let mut hs = Handshake::new(f, want, memory(&ram), vec![ring_start(&ram, &ring, true)])
        .with_backend_channel();
    lp.handshake(&mut hs).unwrap();
    assert!(lp.session.has_backend_channel());
    assert!(lp.session.negotiated().has(want));

    let buf = ram.alloc(64, 8).unwrap();
    ring.add(&[], &[(buf, 64)]).unwrap();
    ring.kick().unwrap();
    let (mut config_changes, mut calls) = (0, 0);
    lp.until(|s, ev| {
        match ev {
            FrontendEvent::BackendRequest {
                request: BackendRequest::ConfigChange,
                answer,
            } => {
                config_changes += 1;
                s.answer_backend(answer, Ok(()))?;
            }
            FrontendEvent::Call { index: 0 } => calls += 1,
            other => panic!("unexpected {other:?}"),
        }
        Ok((config_changes == 1 && calls >= 1).then_some(()))
    })
    .unwrap();
    // The in-band call was acked (the device saw it) and reported as a Call; wait for the
    // device to record the second ack.
    let give_up = Instant::now() + PATIENCE;
    while acked.load(Ordering::SeqCst) != 2 {
        assert!(Instant::now() < give_up);
        lp.turn(Duration::from_millis(20)).unwrap();
    }
    assert_eq!(ring.pop_used().unwrap().map(|u| u.1), Some(0));
    lp.poll.registry().deregister(&mut lp.session).unwrap();
    drop(lp);
    backend.join().unwrap();
}

#[test]
fn a_backend_that_stops_answering_times_out() {
    // Answers GET_FEATURES, then reads and never answers again.
    let (stream, peer) = peer(|mut s| {
        let r = read_request(&mut s).unwrap();
        assert_eq!(r.code, 1);
        let offer = (VirtioFeatures::VERSION_1 | VirtioFeatures::PROTOCOL_FEATURES).bits();
        write(&mut s, &reply(1, &offer.to_le_bytes()));
        while read_request(&mut s).is_some() {}
    });
    let mut lp = Loop::new(stream, Token(0));
    lp.session
        .connection_mut()
        .set_reply_timeout(Some(Duration::from_millis(200)));
    let mut hs = Handshake::new(
        VirtioFeatures::VERSION_1,
        ProtocolFeatures::REPLY_ACK,
        Vec::new(),
        Vec::new(),
    );
    let t0 = Instant::now();
    let e = lp.handshake(&mut hs).unwrap_err();
    assert!(
        matches!(
            e,
            FrontendError::ReplyTimeout {
                request: FrontendReq::GetProtocolFeatures,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(t0.elapsed() >= Duration::from_millis(200));
    assert!(lp.session.is_closed());
    assert!(lp.session.poll_timeout().is_none());
    assert!(matches!(
        lp.session
            .request(Instant::now(), |c, now| c.get_features(now)),
        Err(FrontendError::Closed)
    ));
    drop(lp);
    peer.join().unwrap();
}

/// Runs the handshake against a peer that answers the first request with `garbage`
/// (and `fds`), returns the session's error.
fn garbage(garbage: Vec<u8>, with_fd: bool) -> FrontendError {
    let (stream, peer) = peer(move |s| {
        let mut r = s.try_clone().unwrap();
        if read_request(&mut r).is_none() {
            return;
        }
        let ev = EventFd::new(false).unwrap();
        let fds = if with_fd { vec![ev.read_fd()] } else { vec![] };
        // The session may close before all of it went out.
        let _ = vhost_backend::os::socket::send_all_with_fds(s.as_fd(), &garbage, &fds);
        while read_request(&mut r).is_some() {}
    });
    let mut lp = Loop::new(stream, Token(0));
    let mut hs = Handshake::new(
        VirtioFeatures::VERSION_1,
        ProtocolFeatures::empty(),
        Vec::new(),
        Vec::new(),
    );
    let e = lp.handshake(&mut hs).unwrap_err();
    assert!(lp.session.is_closed(), "{e:?}");
    assert!(matches!(
        lp.session.ready(Token(0)),
        Err(FrontendError::Closed)
    ));
    drop(lp);
    peer.join().unwrap();
    e
}

#[test]
fn a_backend_that_sends_garbage_is_a_protocol_error() {
    let features = 1u64 << 32;
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("all ones", vec![0xff; 40], false),
        (
            "random bytes",
            (0..97u32).map(|i| (i * 37 + 11) as u8).collect(),
            false,
        ),
        (
            "reply to another request",
            reply(15, &features.to_le_bytes()),
            false,
        ),
        ("wrong payload size", reply(1, &[1, 2, 3]), false),
        (
            "an fd with the reply",
            reply(1, &features.to_le_bytes()),
            true,
        ),
        (
            "no reply flag",
            {
                let mut v = reply(1, &features.to_le_bytes());
                v[4] = 1;
                v
            },
            false,
        ),
        (
            "oversize",
            {
                let mut v = reply(1, &features.to_le_bytes());
                v[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
                v
            },
            false,
        ),
        (
            "a second, unasked reply",
            {
                let mut v = reply(1, &features.to_le_bytes());
                v.extend(reply(1, &features.to_le_bytes()));
                v
            },
            false,
        ),
    ];
    for (what, bytes, fd) in cases {
        let e = garbage(bytes, fd);
        // A reply that was valid may have completed GET_FEATURES before the garbage
        // that follows it: the error is the garbage's either way.
        assert!(matches!(e, FrontendError::Protocol(_)), "{what}: {e:?}");
    }
}

#[test]
fn a_backend_without_the_required_features_fails_the_handshake() {
    let (stream, peer) = peer(|mut s| {
        read_request(&mut s).unwrap();
        write(
            &mut s,
            &reply(1, &VirtioFeatures::VERSION_1.bits().to_le_bytes()),
        );
        while read_request(&mut s).is_some() {}
    });
    let mut lp = Loop::new(stream, Token(0));
    let mut hs = Handshake::new(
        VirtioFeatures::VERSION_1 | VirtioFeatures::RING_PACKED,
        ProtocolFeatures::empty(),
        Vec::new(),
        Vec::new(),
    );
    let e = lp.handshake(&mut hs).unwrap_err();
    assert!(
        matches!(e, FrontendError::Unsupported { missing } if missing == VirtioFeatures::RING_PACKED),
        "{e:?}"
    );
    assert!(lp.session.is_closed());
    drop(lp);
    peer.join().unwrap();
}

#[test]
fn a_backend_that_nacks_fails_the_handshake_and_one_that_hangs_up_disconnects() {
    // The echo back-end has 1 queue: SET_VRING_NUM 0 on ring 0 is refused.
    let (stream, backend) = Backend::start(Runner::Std, 1);
    let mut lp = Loop::new(stream, Token(0));
    let f = features(false, false);
    let ram = GuestRam::new(0, RAM).unwrap();
    let ring = DriverRing::new(&ram, 0, 8, f).unwrap();
    let mut start = ring_start(&ram, &ring, false);
    start.size = 0;
    let mut hs = Handshake::new(f, protocol(true), memory(&ram), vec![start]);
    let e = lp.handshake(&mut hs).unwrap_err();
    assert!(
        matches!(
            e,
            FrontendError::Refused {
                request: FrontendReq::SetVringNum,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(lp.session.is_closed());
    drop(lp);
    backend.finish_cut_off();

    // A ring past the back-end's queue count.
    let (stream, backend) = Backend::start(Runner::Mio, 1);
    let mut lp = Loop::new(stream, Token(0));
    let ring = DriverRing::new(&ram, 3, 8, f).unwrap();
    let mut hs = Handshake::new(
        f,
        protocol(true),
        memory(&ram),
        vec![ring_start(&ram, &ring, false)],
    );
    let e = lp.handshake(&mut hs).unwrap_err();
    assert!(
        matches!(
            e,
            FrontendError::NoSuchRing {
                index: 3,
                queues: 1
            }
        ),
        "{e:?}"
    );
    drop(lp);
    backend.finish();

    let (stream, peer) = peer(|mut s| {
        read_request(&mut s).unwrap();
    });
    let mut lp = Loop::new(stream, Token(0));
    let mut hs = Handshake::new(
        VirtioFeatures::VERSION_1,
        ProtocolFeatures::empty(),
        Vec::new(),
        Vec::new(),
    );
    let e = lp.handshake(&mut hs).unwrap_err();
    assert!(matches!(e, FrontendError::Disconnected), "{e:?}");
    assert!(lp.session.is_closed());
    peer.join().unwrap();
}

#[test]
fn the_handshake_passes_foreign_events_through() {
    // A request of the user's own, queued before the handshake, completes through
    // `NotMine`.
    let (stream, backend) = Backend::start(Runner::Std, 1);
    let mut lp = Loop::new(stream, Token(0));
    let mine = lp
        .session
        .request(Instant::now(), |c, now| c.get_features(now))
        .unwrap();
    let mut hs = Handshake::new(
        VirtioFeatures::VERSION_1,
        ProtocolFeatures::REPLY_ACK,
        Vec::new(),
        Vec::new(),
    );
    hs.start(&mut lp.session, Instant::now()).unwrap();
    let mut foreign = Vec::new();
    lp.until(|s, ev| match hs.on_event(s, Instant::now(), ev)? {
        Progress::Done => Ok(Some(())),
        Progress::NotMine(ev) => {
            foreign.push(ev);
            Ok(None)
        }
        _ => Ok(None),
    })
    .unwrap();
    assert!(
        matches!(
            foreign.as_slice(),
            [FrontendEvent::Reply { id, reply: Reply::Features(_), .. }] if *id == mine
        ),
        "{foreign:?}"
    );
    drop(lp);
    backend.finish();
}

#[test]
fn writes_the_socket_does_not_take_at_once_resume_with_fds_on_their_message() {
    const CONFIGS: usize = 30;
    let (stream, peer) = peer(|mut s| {
        let offer = (VirtioFeatures::VERSION_1 | VirtioFeatures::PROTOCOL_FEATURES).bits();
        assert_eq!(read_request(&mut s).unwrap().code, 1);
        write(&mut s, &reply(1, &offer.to_le_bytes()));
        assert_eq!(read_request(&mut s).unwrap().code, 15);
        write(
            &mut s,
            &reply(15, &ProtocolFeatures::CONFIG.bits().to_le_bytes()),
        );
        // Let the front-end's socket fill up.
        std::thread::sleep(Duration::from_millis(300));
        let mut codes = Vec::new();
        let mut fds_on = Vec::new();
        for _ in 0..2 + 2 * CONFIGS {
            let mut hdr = [0u8; 12];
            let mut got = 0;
            let mut fds = Vec::new();
            while got < 12 {
                let n = vhost_backend::os::socket::recv_with_fds(&s, &mut hdr[got..], &mut fds)
                    .unwrap();
                assert!(n > 0);
                got += n;
            }
            let code = u32::from_le_bytes(hdr[0..4].try_into().unwrap());
            let size = u32::from_le_bytes(hdr[8..12].try_into().unwrap());
            let mut payload = vec![0u8; size as usize];
            std::io::Read::read_exact(&mut s, &mut payload).unwrap();
            if !fds.is_empty() {
                fds_on.push((code, fds.len()));
            }
            codes.push(code);
        }
        assert_eq!(codes[0], 16);
        assert!(codes[1..=CONFIGS].iter().all(|&c| c == 25));
        assert_eq!(codes[CONFIGS + 1], 13);
        assert!(codes[CONFIGS + 2..].iter().all(|&c| c == 25));
        assert_eq!(fds_on, [(13, 1)]);
        while read_request(&mut s).is_some() {}
    });
    rustix::net::sockopt::set_socket_send_buffer_size(&stream, 4096).unwrap();
    let mut lp = Loop::new(stream, Token(0));
    let now = Instant::now();
    for step in 0..2 {
        let id = if step == 0 {
            lp.session.request(now, |c, now| c.get_features(now))
        } else {
            lp.session
                .request(now, |c, now| c.get_protocol_features(now))
        }
        .unwrap();
        lp.until(|_, ev| {
            Ok(matches!(ev, FrontendEvent::Reply { id: got, .. } if got == id).then_some(()))
        })
        .unwrap();
    }
    let send = |lp: &mut Loop| {
        lp.session
            .request(now, |c, now| {
                c.set_config(
                    now,
                    0,
                    vhost_proto::wire::ConfigFlags::Frontend,
                    vec![7; 200],
                )
            })
            .unwrap();
    };
    lp.session
        .request(now, |c, now| {
            c.set_protocol_features(now, ProtocolFeatures::CONFIG)
        })
        .unwrap();
    (0..CONFIGS).for_each(|_| send(&mut lp));
    lp.session
        .set_vring_call(now, 0, EventFd::new(true).unwrap())
        .unwrap();
    (0..CONFIGS).for_each(|_| send(&mut lp));
    assert!(!lp.session.is_idle(), "the socket took everything at once");
    let give_up = Instant::now() + PATIENCE;
    while !lp.session.is_idle() {
        assert!(Instant::now() < give_up);
        lp.turn(Duration::from_millis(50)).unwrap();
    }
    drop(lp);
    peer.join().unwrap();
}
