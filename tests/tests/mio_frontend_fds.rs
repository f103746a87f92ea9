//! The mio front-end leaks no fd: full sessions against both back-ends, a back-end
//! channel, a back-end that times out, hostile ones that send fds and garbage, and a
//! session dropped while registered. One test in its own binary: `/proc/self/fd` is only
//! exact when no other test opens or closes fds meanwhile.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod frontend_support;

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use frontend_support::*;
use mio::Token;
use vhost_backend::os::eventfd::EventFd;
use vhost_frontend::{DriverRing, GuestRam};
use vhost_io_mio::frontend::{FrontendError, FrontendEvent, Handshake};
use vhost_proto::wire::{ProtocolFeatures, VirtioFeatures};

fn full_session(runner: Runner, packed: bool) {
    let (stream, backend) = Backend::start(runner, 1);
    let mut lp = Loop::new(stream, Token(7));
    let f = features(packed, true);
    let ram = GuestRam::new(0, 1 << 20).unwrap();
    let mut ring = DriverRing::new(&ram, 0, 16, f).unwrap();
    let mut hs = Handshake::new(
        f,
        protocol(true),
        memory(&ram),
        vec![ring_start(&ram, &ring, true)],
    );
    lp.handshake(&mut hs).unwrap();
    echo(&mut lp, &ram, &mut ring, 20, 128);
    let id = lp
        .session
        .request(Instant::now(), |c, now| c.get_vring_base(now, 0))
        .unwrap();
    lp.until(|_, ev| {
        Ok(matches!(ev, FrontendEvent::Reply { id: got, .. } if got == id).then_some(()))
    })
    .unwrap();
    // Dropped while registered: it deregisters itself.
    drop(lp);
    backend.finish();
}

fn timeout() {
    let (stream, peer) = peer(|mut s| while read_request(&mut s).is_some() {});
    let mut lp = Loop::new(stream, Token(0));
    lp.session
        .connection_mut()
        .set_reply_timeout(Some(Duration::from_millis(50)));
    let mut hs = Handshake::new(
        VirtioFeatures::VERSION_1,
        ProtocolFeatures::empty(),
        Vec::new(),
        Vec::new(),
    );
    let e = lp.handshake(&mut hs).unwrap_err();
    assert!(matches!(e, FrontendError::ReplyTimeout { .. }), "{e:?}");
    drop(lp);
    peer.join().unwrap();
}

/// A reply that carries fds it should not: the fds that arrived are closed with the
/// session.
fn hostile_fds() {
    let (stream, peer) = peer(|s| {
        let mut r = s.try_clone().unwrap();
        read_request(&mut r).unwrap();
        let evs: Vec<EventFd> = (0..4).map(|_| EventFd::new(false).unwrap()).collect();
        let fds: Vec<_> = evs.iter().map(|e| e.read_fd()).collect();
        let bytes = reply(1, &(1u64 << 32).to_le_bytes());
        let _ = vhost_backend::os::socket::send_all_with_fds(s.as_fd(), &bytes, &fds);
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
    assert!(matches!(e, FrontendError::Protocol(_)), "{e:?}");
    drop(lp);
    peer.join().unwrap();
}

fn backend_channel_refused() {
    // The echo back-end has no BACKEND_REQ: the channel is not opened, nothing leaks.
    let (stream, backend) = Backend::start(Runner::Mio, 1);
    let mut lp = Loop::new(stream, Token(3));
    let mut hs = Handshake::new(
        VirtioFeatures::VERSION_1,
        ProtocolFeatures::REPLY_ACK | ProtocolFeatures::BACKEND_REQ,
        Vec::new(),
        Vec::new(),
    )
    .with_backend_channel();
    lp.handshake(&mut hs).unwrap();
    assert!(!lp.session.has_backend_channel());
    let e = lp.session.open_backend_channel(Instant::now()).unwrap_err();
    assert!(matches!(e, FrontendError::NotSent(_)), "{e:?}");
    lp.poll.registry().deregister(&mut lp.session).unwrap();
    lp.session.close();
    backend.finish();
}

#[test]
fn no_fd_is_leaked() {
    // Warm up: one-time fds (the SIGBUS guard, lazily opened files) are not leaks.
    full_session(Runner::Std, false);
    full_session(Runner::Mio, false);
    let before = open_fds();
    for _ in 0..2 {
        full_session(Runner::Std, false);
        full_session(Runner::Std, true);
        full_session(Runner::Mio, false);
        full_session(Runner::Mio, true);
        timeout();
        hostile_fds();
        backend_channel_refused();
    }
    assert_eq!(open_fds(), before);
}
