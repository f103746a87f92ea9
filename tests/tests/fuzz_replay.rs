//! Replays the `runtime_session` seed corpus (`fuzz/seeds/runtime_session/`) through the
//! fuzz body, counting `/proc/self/fd` around each run: a run may leak no fd (guest
//! memfds, notifiers, inflight buffers, back-end channels, replies' fds).
//!
//! Counting is only exact when no other thread opens or closes fds meanwhile, so this
//! binary holds a single test.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use vhost_backend::fuzzing::runtime_session_stats;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn runtime_session_seeds_leak_no_fd() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/runtime_session");
    let mut seeds: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    seeds.sort();
    assert!(
        seeds.len() >= 8,
        "only {} seeds in {}",
        seeds.len(),
        dir.display()
    );
    // Warm up once-only state (the SIGBUS handler, lazily opened files).
    for path in &seeds {
        runtime_session_stats(&std::fs::read(path).unwrap());
    }
    for path in &seeds {
        let data = std::fs::read(path).unwrap();
        let before = open_fds();
        let stats = runtime_session_stats(&data);
        let after = open_fds();
        assert_eq!(
            before,
            after,
            "{}: {before} fds open before, {after} after ({stats:?})",
            path.display()
        );
    }
}
