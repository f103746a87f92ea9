//! Hostile and careless peers: each breaks only its own session, and nothing leaks. One
//! test in its own process (it counts this process's fds).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../vhost-io-std/tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::*;
use vhost_backend::echo::Echo;
use vhost_backend::os::memfd;
use vhost_backend::os::socket::send_all_with_fds;
use vhost_frontend::{Frontend, GuestRam};
use vhost_io_mio::{Error, Handle, Server, Session};
use vhost_proto::wire::{DecodeContext, FrontendRequest};

fn wait_sessions(handle: &Handle, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while handle.sessions() != n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(handle.sessions(), n);
}

/// The server closes the connection: our end reads EOF.
fn assert_hung_up(mut s: &UnixStream) {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("expected a hang-up, got {e}"),
        }
    }
}

#[test]
fn hostile_peers_break_only_their_own_session() {
    let fds_before = open_fds();
    let server = Server::new(Echo::new(1)).unwrap().spawn().unwrap();
    let handle = server.handle().clone();

    // A well-behaved front-end that keeps working throughout.
    let ram = GuestRam::new(0, RAM).unwrap();
    let (a, b) = UnixStream::pair().unwrap();
    handle.add(b).unwrap();
    let mut good = Frontend::from_stream(a).unwrap();
    handshake(&mut good, &ram, false, true);
    let mut ring = start_ring(&mut good, &ram, 0, 0, 64, false, true);
    echo_through(&mut ring, &ram, 10, 64, 0);

    // 1. Garbage header (bad version bits): fatal, that connection is closed.
    let (a, b) = UnixStream::pair().unwrap();
    handle.add(b).unwrap();
    (&a).write_all(&[0xff; 12]).unwrap();
    assert_hung_up(&a);
    drop(a);

    // 2. Too many fds on a request that takes none.
    let (a, b) = UnixStream::pair().unwrap();
    handle.add(b).unwrap();
    let files: Vec<_> = (0..8)
        .map(|i| memfd::create(&format!("x{i}"), 4096).unwrap())
        .collect();
    let borrowed: Vec<BorrowedFd<'_>> = files.iter().map(AsFd::as_fd).collect();
    let req = FrontendRequest::<BorrowedFd<'_>>::GetFeatures
        .encode(false, &DecodeContext::default())
        .unwrap();
    send_all_with_fds(&a, &req.bytes, &borrowed).unwrap();
    assert_hung_up(&a);
    drop(borrowed);
    drop((a, files));

    // 3. An oversize body announced in the header.
    let (a, b) = UnixStream::pair().unwrap();
    handle.add(b).unwrap();
    let mut hdr = req.bytes[..12].to_vec();
    hdr[8..12].copy_from_slice(&u32::MAX.to_ne_bytes());
    (&a).write_all(&hdr).unwrap();
    assert_hung_up(&a);
    drop(a);

    // 4. Half a header, then gone.
    let (a, b) = UnixStream::pair().unwrap();
    handle.add(b).unwrap();
    (&a).write_all(&req.bytes[..5]).unwrap();
    drop(a);

    // 5. A regular file as kick fd (always readable, never a signal): refused when it
    //    arrives; the ring keeps its old kick fd and runs on.
    let plain = memfd::create("not-an-eventfd", 4096).unwrap();
    assert!(good.set_vring_kick(0, Some(plain.as_fd())).is_err());
    echo_through(&mut ring, &ram, 10, 64, 3);

    // 6. The no-fd flag (spec §3.1): the back-end polls the ring.
    good.set_vring_kick(0, None).unwrap();
    echo_through(&mut ring, &ram, 20, 64, 2);

    wait_sessions(&handle, 1);
    echo_through(&mut ring, &ram, 0, 64, 1);
    assert!(good.get_features().is_ok());
    drop(good);
    wait_sessions(&handle, 0);
    server.stop().unwrap();
    drop((ring, ram, plain));

    // A session used before it is registered says so instead of losing its kicks.
    let poll = mio::Poll::new().unwrap();
    let (a, b) = UnixStream::pair().unwrap();
    let mut s = Session::from_std(b, std::sync::Arc::new(Echo::new(1))).unwrap();
    assert!(matches!(
        s.ready(poll.registry(), mio::Token(0)),
        Err(Error::NotRegistered)
    ));
    drop((s, a, poll, handle));

    assert_eq!(open_fds(), fds_before, "fds leaked");
}
