//! 10,000 connect/disconnect cycles against one listening back-end leave the
//! process's open-fd count unchanged. One test in its own binary, so no other
//! test opens fds meanwhile.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use vhost_backend::echo::Echo;
use vhost_io_std::backend::Server;
use vhost_io_std::frontend::{Frontend, GuestRam};

#[test]
fn ten_thousand_sessions_leak_no_fd() {
    let dir = TestDir::new(&format!("vhost-std-cycles-{}", std::process::id()));
    let path = dir.join("echo.sock");
    let before = open_fds();
    let server = Server::bind(&path, Echo::new(2)).unwrap().spawn().unwrap();
    let start = std::time::Instant::now();
    for i in 0..10_000u32 {
        let mut front = Frontend::connect(&path).unwrap();
        front.get_features().unwrap();
        if i % 1000 == 0 {
            // Every thousandth session goes further: memory, a running ring
            // with kick/call fds, then a disconnect without stopping it.
            let ram = GuestRam::new(0, RAM).unwrap();
            handshake(&mut front, &ram, i % 2000 == 0, true);
            let mut ring = start_ring(&mut front, &ram, 0, 0, 64, i % 2000 == 0, true);
            echo_through(&mut ring, &ram, 20, 64, 0);
        }
    }
    let elapsed = start.elapsed();
    server.stop().unwrap();
    assert!(!path.exists(), "the server removes its socket");
    std::fs::remove_dir(dir.path()).unwrap();
    assert_eq!(open_fds(), before, "open fds after 10,000 sessions");
    eprintln!("10,000 sessions in {elapsed:?}");
}
