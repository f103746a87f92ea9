//! Malformed messages over a real socket: the back-end NACKs or closes that
//! one connection, leaks no fd, and keeps serving new connections. One test
//! in its own binary (it counts the process's open fds).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use common::*;
use vhost_backend::echo::Echo;
use vhost_backend::os::eventfd::EventFd;
use vhost_backend::os::socket::send_all_with_fds;
use vhost_io_std::backend::Server;
use vhost_io_std::frontend::{Frontend, GuestRam};

fn frame(code: u32, flags: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&code.to_ne_bytes());
    v.extend_from_slice(&flags.to_ne_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_ne_bytes());
    v.extend_from_slice(payload);
    v
}

/// The back-end closes the connection: the next read sees EOF.
fn assert_closed(s: &mut UnixStream) {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue, // a reply sent before the bad message
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("expected the back-end to close the connection: {e}"),
        }
    }
}

/// A u64 reply to `code` with a non-zero value.
fn assert_nack(s: &mut UnixStream, code: u32) {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 20];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(u32::from_ne_bytes(buf[0..4].try_into().unwrap()), code);
    assert_eq!(u32::from_ne_bytes(buf[4..8].try_into().unwrap()), 0x5);
    assert_eq!(u32::from_ne_bytes(buf[8..12].try_into().unwrap()), 8);
    assert_ne!(u64::from_ne_bytes(buf[12..20].try_into().unwrap()), 0);
}

/// A fresh, well-behaved session still works.
fn still_serving(path: &Path) {
    let mut front = Frontend::connect(path).unwrap();
    let ram = GuestRam::new(0, RAM).unwrap();
    handshake(&mut front, &ram, false, false);
    let mut ring = start_ring(&mut front, &ram, 0, 0, 32, false, false);
    echo_through(&mut ring, &ram, 8, 32, 7);
}

fn reply_ack_session(path: &Path) -> UnixStream {
    let mut s = UnixStream::connect(path).unwrap();
    // SET_PROTOCOL_FEATURES(REPLY_ACK) then SET_OWNER with NEED_REPLY: ack 0.
    s.write_all(&frame(16, 1, &8u64.to_ne_bytes())).unwrap();
    s.write_all(&frame(3, 1 | 8, &[])).unwrap();
    let mut buf = [0u8; 20];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(u64::from_ne_bytes(buf[12..20].try_into().unwrap()), 0);
    s
}

#[test]
fn malformed_messages_close_or_nack_one_connection_and_leak_nothing() {
    let dir = TestDir::new(&format!("vhost-std-malformed-{}", std::process::id()));
    let path = dir.join("echo.sock");
    let before = open_fds();
    let server = Server::bind(&path, Echo::new(1)).unwrap().spawn().unwrap();

    // 1. Oversize: a header announcing 1 MiB of payload. Fatal.
    let mut s = UnixStream::connect(&path).unwrap();
    s.write_all(&frame(5, 1, &[])[..8]).unwrap();
    s.write_all(&(1u32 << 20).to_ne_bytes()).unwrap();
    assert_closed(&mut s);
    drop(s);
    still_serving(&path);

    // 2. Wrong fd count: SET_VRING_KICK (index 0, fd expected) with three fds.
    let mut s = UnixStream::connect(&path).unwrap();
    let fds: Vec<EventFd> = (0..3).map(|_| EventFd::new(false).unwrap()).collect();
    let borrowed: Vec<_> = fds.iter().map(|e| e.as_fd()).collect();
    send_all_with_fds(&s, &frame(12, 1, &0u64.to_ne_bytes()), &borrowed).unwrap();
    assert_closed(&mut s);
    drop(s);
    drop(fds);
    still_serving(&path);

    // 3. A memory table announcing 2 regions with 1 fd.
    let mut s = UnixStream::connect(&path).unwrap();
    let ram = GuestRam::new(0, 1 << 20).unwrap();
    let mut payload = Vec::new();
    payload.extend_from_slice(&2u32.to_ne_bytes());
    payload.extend_from_slice(&0u32.to_ne_bytes());
    for gpa in [0u64, 1 << 20] {
        for v in [gpa, 1 << 20, 0x7f00_0000 + gpa, 0] {
            payload.extend_from_slice(&v.to_ne_bytes());
        }
    }
    send_all_with_fds(&s, &frame(5, 1, &payload), &[ram.fd()]).unwrap();
    assert_closed(&mut s);
    drop(s);
    still_serving(&path);

    // 4. Unknown request code with NEED_REPLY under REPLY_ACK: NACKed, and
    //    the same connection keeps working.
    let mut s = reply_ack_session(&path);
    s.write_all(&frame(999, 1 | 8, &[1, 2, 3, 4])).unwrap();
    assert_nack(&mut s, 999);
    //    A request that breaks a rule (queue size not a power of two): NACK.
    let mut state = Vec::new();
    state.extend_from_slice(&0u32.to_ne_bytes());
    state.extend_from_slice(&100u32.to_ne_bytes());
    s.write_all(&frame(8, 1 | 8, &state)).unwrap();
    assert_nack(&mut s, 8);
    //    GET_FEATURES still answered on this connection.
    s.write_all(&frame(1, 1, &[])).unwrap();
    let mut buf = [0u8; 20];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(u32::from_ne_bytes(buf[0..4].try_into().unwrap()), 1);
    drop(s);

    // 5. Reserved flag bits and a wrong version: fatal.
    for flags in [1 | 0x100, 2] {
        let mut s = UnixStream::connect(&path).unwrap();
        s.write_all(&frame(1, flags, &[])).unwrap();
        assert_closed(&mut s);
    }

    // 6. Fds with a half header, then the peer vanishes mid-message.
    let s = UnixStream::connect(&path).unwrap();
    let e = EventFd::new(false).unwrap();
    send_all_with_fds(&s, &frame(13, 1, &0u64.to_ne_bytes())[..6], &[e.as_fd()]).unwrap();
    drop(s);
    drop(e);

    // 7. A memory region that is not mappable (past the end of its memfd):
    //    refused with a NACK, the session goes on.
    let mut s = reply_ack_session(&path);
    let small = GuestRam::new(0, 1 << 16).unwrap();
    let mut payload = Vec::new();
    payload.extend_from_slice(&1u32.to_ne_bytes());
    payload.extend_from_slice(&0u32.to_ne_bytes());
    for v in [0u64, 1 << 24, 0x7f00_0000, 0] {
        payload.extend_from_slice(&v.to_ne_bytes());
    }
    send_all_with_fds(&s, &frame(5, 1 | 8, &payload), &[small.fd()]).unwrap();
    assert_nack(&mut s, 5);
    drop(s);
    drop(small);
    drop(ram);

    still_serving(&path);
    server.stop().unwrap();
    std::fs::remove_dir(dir.path()).unwrap();
    assert_eq!(open_fds(), before, "open fds after the malformed sessions");
}
