//! A front-end that never stops sending does not monopolise the thread: one `ready` reads
//! a bounded amount, re-arms the socket (so the rest is reported again) and returns, and
//! the other sessions of the loop get their turn.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mio::{Events, Interest, Poll, Token};
use vhost_backend::echo::Echo;
use vhost_io_mio::{Session, Status};
use vhost_proto::wire::{DecodeContext, FrontendRequest};

#[test]
fn a_flooding_frontend_does_not_monopolise_the_loop() {
    let (flood, b) = UnixStream::pair().unwrap();
    // Requests without a reply (SET_OWNER again and again: refused, not answered), so
    // the flood is never slowed down by replies nobody reads.
    let burst: Vec<u8> = (0..1000)
        .flat_map(|_| {
            FrontendRequest::<BorrowedFd<'_>>::SetOwner
                .encode(false, &DecodeContext::default())
                .unwrap()
                .bytes
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let stop_w = Arc::clone(&stop);
    let mut w = flood.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        while !stop_w.load(Ordering::Relaxed) {
            if w.write_all(&burst).is_err() {
                break;
            }
        }
    });

    // The loop under test, in a thread of its own so that a hang is seen.
    let (tx, rx) = std::sync::mpsc::channel();
    let lp = std::thread::spawn(move || {
        let mut poll = Poll::new().unwrap();
        let mut events = Events::with_capacity(16);
        let mut s = Session::from_std(b, Arc::new(Echo::new(1))).unwrap();
        poll.registry()
            .register(&mut s, Token(7), Interest::READABLE)
            .unwrap();
        for turn in 0..20 {
            // Every turn the flooded session is reported again: nothing is lost ...
            poll.poll(&mut events, Some(Duration::from_secs(5)))
                .unwrap();
            assert!(events.iter().any(|e| e.token() == Token(7)), "turn {turn}");
            // ... and each `ready` returns although input keeps coming.
            assert_eq!(s.ready(poll.registry(), Token(7)).unwrap(), Status::Open);
            tx.send(turn).unwrap();
        }
        s.close(poll.registry());
    });
    for turn in 0..20 {
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(1)),
            Ok(turn),
            "a turn took over 1 s"
        );
    }
    lp.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    flood.shutdown(std::net::Shutdown::Both).unwrap();
    writer.join().unwrap();
}
