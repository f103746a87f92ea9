//! A front-end that pipelines thousands of requests and reads no reply: the session stops
//! reading once its bounded queues are full (no unbounded buffering), the server thread
//! sleeps meanwhile (no busy loop on edge-triggered events), and once the front-end reads,
//! every reply arrives complete and in order — including one carrying an fd after a run of
//! partial writes. One test in its own process: it measures the server thread's CPU time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use vhost_backend::echo::Echo;
use vhost_backend::os::socket::recv_with_fds;
use vhost_frontend::Frontend;
use vhost_io_mio::Server;
use vhost_proto::wire::{
    DecodeContext, FrontendRequest, InflightDesc, ProtocolFeatures, VirtioFeatures,
};

const REQUESTS: usize = 100_000;

/// CPU ticks (user + system) of every thread named `vhost-mio` in this process.
fn server_ticks() -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != "vhost-mio" {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let f: Vec<&str> = rest.split_whitespace().collect();
        total += f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    }
    total
}

#[test]
fn a_frontend_that_reads_nothing_stalls_its_session_without_spinning() {
    let server = Server::new(Echo::new(1)).unwrap().spawn().unwrap();
    let (a, b) = UnixStream::pair().unwrap();
    server.handle().add(b).unwrap();
    let mut front = Frontend::from_stream(a).unwrap();
    let offered = front.get_features().unwrap();
    front
        .set_protocol_features(ProtocolFeatures::INFLIGHT_SHMFD | ProtocolFeatures::MQ)
        .unwrap();
    front.set_owner().unwrap();
    front
        .set_features(offered & (VirtioFeatures::VERSION_1 | VirtioFeatures::PROTOCOL_FEATURES))
        .unwrap();

    let ctx = DecodeContext::default();
    let mut burst = Vec::new();
    for _ in 0..REQUESTS {
        let e = FrontendRequest::<BorrowedFd<'_>>::GetFeatures
            .encode(false, &ctx)
            .unwrap();
        burst.extend_from_slice(&e.bytes);
    }
    let inflight = FrontendRequest::<BorrowedFd<'_>>::GetInflightFd {
        desc: InflightDesc {
            mmap_size: 0,
            mmap_offset: 0,
            num_queues: 1,
            queue_size: 64,
        },
    }
    .encode(false, &ctx)
    .unwrap();
    burst.extend_from_slice(&inflight.bytes);
    let mut writer = front.stream().try_clone().unwrap();
    let reader = front.stream().try_clone().unwrap();
    let sender = std::thread::spawn(move || writer.write_all(&burst).unwrap());

    // Let both sides fill up and stall, then check the server sleeps.
    std::thread::sleep(Duration::from_millis(200));
    let before = server_ticks();
    std::thread::sleep(Duration::from_millis(400));
    let spent = server_ticks() - before;
    assert!(
        spent <= 5,
        "the server thread burnt {spent} ticks while stalled"
    );
    assert!(!sender.is_finished(), "the server buffered the whole burst");

    // Read everything: REQUESTS feature replies in order, then the inflight reply + fd.
    let reply = 12 + 8;
    let want = REQUESTS * reply + 12 + 24; // VhostUserInflight: 2 u64 + 2 u16, padded
    let mut got = Vec::with_capacity(want);
    let mut fds: Vec<OwnedFd> = Vec::new();
    let mut buf = vec![0u8; 65536];
    while got.len() < want {
        let n = recv_with_fds(&reader, &mut buf, &mut fds)
            .unwrap_or_else(|e| panic!("{e} after {} of {want} bytes", got.len()));
        assert_ne!(n, 0, "the server hung up");
        got.extend_from_slice(&buf[..n]);
    }
    sender.join().unwrap();
    assert_eq!(got.len(), want);
    for k in 0..REQUESTS {
        let m = &got[k * reply..(k + 1) * reply];
        assert_eq!(
            u32::from_ne_bytes(m[0..4].try_into().unwrap()),
            1,
            "reply {k}"
        );
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 8);
        assert_eq!(
            u64::from_ne_bytes(m[12..20].try_into().unwrap()),
            offered.bits()
        );
    }
    let last = &got[REQUESTS * reply..];
    assert_eq!(u32::from_ne_bytes(last[0..4].try_into().unwrap()), 31);
    assert_eq!(fds.len(), 1, "the inflight fd travels with its reply");
    // The session is still in step.
    assert_eq!(front.get_features().unwrap(), offered);
    drop(front);
    server.stop().unwrap();
}
