//! A session embedded in the caller's own `Poll` honours the `Source` contract: it can be
//! deregistered (events stop, kicks stay pending) and registered again under another
//! token (the pending kicks are then served: no lost wakeup).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../vhost-io-std/tests/common/mod.rs"]
mod common;

use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use mio::{Events, Interest, Poll, Token};
use vhost_backend::echo::Echo;
use vhost_frontend::{Frontend, GuestRam};
use vhost_io_mio::{Session, Status};

enum Step {
    /// The front-end wants the session deregistered now.
    Deregister,
    /// ... and registered again under this token.
    Register(usize),
    Done,
}

#[test]
fn deregistered_sessions_keep_their_kicks_for_later() {
    let (a, b) = UnixStream::pair().unwrap();
    let (tx, rx) = mpsc::channel();
    let (ack_tx, ack_rx) = mpsc::channel::<()>();
    let front = std::thread::spawn(move || {
        let ram = GuestRam::new(0, RAM).unwrap();
        let mut front = Frontend::from_stream(a).unwrap();
        handshake(&mut front, &ram, false, true);
        let mut ring = start_ring(&mut front, &ram, 0, 0, 64, false, true);
        echo_through(&mut ring, &ram, 20, 64, 0);
        tx.send(Step::Deregister).unwrap();
        ack_rx.recv().unwrap();
        // Kicked while nobody listens: served once the session is registered again.
        let id = ring.add(&[(BUFS, 8)], &[(BUFS + 64, 8)]).unwrap();
        ring.kick().unwrap();
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(ring.pop_used().unwrap(), None);
        tx.send(Step::Register(42)).unwrap();
        assert_eq!(ring.collect(1, TIMEOUT).unwrap(), vec![(id, 8)]);
        echo_through(&mut ring, &ram, 20, 64, 1);
        tx.send(Step::Done).unwrap();
    });

    let mut poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(64);
    let mut session = Session::from_std(b, Arc::new(Echo::new(1))).unwrap();
    poll.registry()
        .register(&mut session, Token(1), Interest::READABLE)
        .unwrap();
    let mut done = false;
    'run: loop {
        poll.poll(&mut events, Some(Duration::from_millis(5)))
            .unwrap();
        for event in &events {
            assert!(
                session.owns(event.token()),
                "an event for a deregistered session"
            );
            if session.ready(poll.registry(), event.token()).unwrap() == Status::Closed {
                break 'run; // the front-end finished and hung up
            }
        }
        match rx.try_recv() {
            Ok(Step::Deregister) => {
                poll.registry().deregister(&mut session).unwrap();
                ack_tx.send(()).unwrap();
            }
            Ok(Step::Register(t)) => {
                poll.registry()
                    .register(&mut session, Token(t), Interest::READABLE)
                    .unwrap();
                assert_eq!(session.token(), Some(Token(t)));
            }
            Ok(Step::Done) => done = true,
            Err(_) => {}
        }
    }
    front.join().unwrap();
    assert!(done || matches!(rx.try_recv(), Ok(Step::Done)));
    assert!(session.is_closed());
}
