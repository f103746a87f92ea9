//! Tests of the real-peer harness itself (`tests/src`): no orphan process, even when the
//! test panics; waits with deadlines; missing peers skip or fail; temp dirs are removed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tests::{Peer, PeerError, TempDir};

const SHORT: Duration = Duration::from_millis(300);
const LONG: Duration = Duration::from_secs(20);

fn sh(script: &str) -> Command {
    let mut c = Command::new("/bin/sh");
    c.args(["-c", script]);
    c
}

/// Runs this test binary again, only the (ignored) helper test `name`, with `envs`.
fn helper(name: &str, envs: &[(&str, &str)]) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "--exact",
        name,
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    c.env_remove(tests::REQUIRE_PEERS_VAR);
    for (k, v) in envs {
        c.env(k, v);
    }
    c
}

#[test]
fn child_is_gone_after_drop() {
    let peer = Peer::spawn("sleep", sh("sleep 1000")).unwrap();
    let pid = peer.pid();
    assert!(tests::process_exists(pid));
    // `sh` may or may not have forked `sleep` yet: the group holds the child at least.
    assert!(tests::group_members(pid).contains(&pid));
    drop(peer);
    tests::assert_peers_gone(&[pid]);
}

#[test]
fn whole_group_is_gone_after_drop_even_when_the_test_panics() {
    let dir = TempDir::new("panics").unwrap();
    let pid = AtomicU32::new(0);
    let result = catch_unwind(AssertUnwindSafe(|| {
        // A grandchild in the same group, as qemu or testpmd threads/helpers would be.
        let mut peer =
            Peer::spawn("sleepers", sh("sleep 1000 & echo started; sleep 1000")).unwrap();
        pid.store(peer.pid(), Ordering::SeqCst);
        peer.wait_for_output("started", LONG).unwrap();
        assert!(tests::group_members(peer.pid()).len() >= 2);
        panic!("the test fails while its peer runs");
    }));
    assert!(result.is_err());
    let pid = pid.load(Ordering::SeqCst);
    assert_ne!(pid, 0);
    tests::assert_clean(&[pid], dir.path());
}

#[test]
fn wait_for_output_finds_lines_on_both_streams_and_times_out() {
    let mut peer = Peer::spawn(
        "echo",
        sh("echo out-line; sleep 0.1; echo 'err: ready now' >&2; sleep 1000"),
    )
    .unwrap();
    assert_eq!(peer.wait_for_output("out-line", LONG).unwrap(), "out-line");
    assert_eq!(
        peer.wait_for_output("ready", LONG).unwrap(),
        "err: ready now"
    );
    let start = Instant::now();
    let err = peer.wait_for_output("never printed", SHORT).unwrap_err();
    assert!(matches!(err, PeerError::Timeout { .. }), "{err}");
    assert!(start.elapsed() < LONG);
    assert!(
        err.to_string().contains("out-line"),
        "the error carries the output: {err}"
    );
}

#[test]
fn wait_for_output_fails_when_the_peer_exits() {
    let mut peer = Peer::spawn("exits", sh("echo bye; exit 3")).unwrap();
    let err = peer.wait_for_output("never printed", LONG).unwrap_err();
    assert!(matches!(err, PeerError::Exited { .. }), "{err}");
    assert_eq!(peer.wait_timeout(LONG).unwrap().unwrap().code(), Some(3));
}

#[test]
fn wait_for_socket_sees_the_socket_and_times_out() {
    let dir = TempDir::new("socket").unwrap();
    let sock = dir.join("s.sock");
    let mut peer = Peer::spawn(
        "binder",
        helper(
            "helper_bind_socket",
            &[("HARNESS_SOCKET", sock.to_str().unwrap())],
        ),
    )
    .unwrap();
    peer.wait_for_socket(&sock, LONG).unwrap();
    let err = peer
        .wait_for_socket(&dir.join("other.sock"), SHORT)
        .unwrap_err();
    assert!(matches!(err, PeerError::Timeout { .. }), "{err}");
    let pid = peer.pid();
    drop(peer);
    tests::assert_peers_gone(&[pid]);
    // The helper was killed, so its socket file is still there: the check must see it.
    assert_eq!(tests::sockets_in(dir.path()), vec![sock.clone()]);
    let caught = catch_unwind(|| tests::assert_no_sockets(dir.path()));
    assert!(caught.is_err());
    std::fs::remove_file(&sock).unwrap();
    tests::assert_clean(&[pid], dir.path());
}

#[test]
fn wait_for_socket_fails_when_the_peer_exits() {
    let dir = TempDir::new("socket_exit").unwrap();
    let mut peer = Peer::spawn("false", sh("exit 1")).unwrap();
    let err = peer.wait_for_socket(&dir.join("s.sock"), LONG).unwrap_err();
    assert!(
        matches!(
            err,
            PeerError::Exited {
                status: Some(_),
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn interrupt_stops_with_sigint_or_kills() {
    let mut peer = Peer::spawn("sleep", sh("sleep 1000")).unwrap();
    let (status, clean) = peer.interrupt(LONG).unwrap();
    assert!(clean, "sleep exits on SIGINT: {status}");
    // A peer that ignores SIGINT is killed after the timeout.
    let mut peer = Peer::spawn(
        "deaf",
        sh("trap '' INT; echo trapped; sleep 1000; sleep 1000"),
    )
    .unwrap();
    peer.wait_for_output("trapped", LONG).unwrap();
    let start = Instant::now();
    let (_, clean) = peer.interrupt(SHORT).unwrap();
    assert!(!clean);
    assert!(start.elapsed() < LONG);
    let pid = peer.pid();
    drop(peer);
    tests::assert_peers_gone(&[pid]);
}

#[test]
fn missing_peer_skips_without_the_variable() {
    let mut peer = Peer::spawn("helper", helper("helper_require_missing", &[])).unwrap();
    let status = peer.wait_timeout(LONG).unwrap().expect("helper finished");
    let out = peer.output();
    assert!(status.success(), "{out}");
    assert!(
        out.contains("SKIPPED: helper_require_missing: no-such-peer-xyz not found"),
        "{out}"
    );
    assert!(
        !out.contains("AFTER REQUIRE"),
        "the test returned early: {out}"
    );
}

#[test]
fn missing_peer_fails_with_the_variable() {
    let mut peer = Peer::spawn(
        "helper",
        helper("helper_require_missing", &[(tests::REQUIRE_PEERS_VAR, "1")]),
    )
    .unwrap();
    let status = peer.wait_timeout(LONG).unwrap().expect("helper finished");
    let out = peer.output();
    assert!(!status.success(), "{out}");
    assert!(
        out.contains("no-such-peer-xyz not found and VHOST_REQUIRE_PEERS=1"),
        "{out}"
    );
}

#[test]
fn find_peer_searches_path_and_honours_the_override() {
    assert!(tests::find_peer("sh").is_some());
    assert!(tests::find_peer("no-such-peer-xyz").is_none());
    assert_eq!(
        tests::override_var("qemu-storage-daemon"),
        "VHOST_PEER_QEMU_STORAGE_DAEMON"
    );
    let mut peer = Peer::spawn(
        "helper",
        helper(
            "helper_require_missing",
            &[("VHOST_PEER_NO_SUCH_PEER_XYZ", "/bin/sh")],
        ),
    )
    .unwrap();
    assert!(peer.wait_timeout(LONG).unwrap().unwrap().success());
    assert!(
        peer.output().contains("AFTER REQUIRE /bin/sh"),
        "{}",
        peer.output()
    );
}

#[test]
fn temp_dir_is_removed_on_drop() {
    let dir = TempDir::new("a name/with odd chars").unwrap();
    let path = dir.path().to_path_buf();
    assert!(path.starts_with(std::env::temp_dir()));
    assert!(
        path.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("vhost-a_name_with_odd_chars-")
    );
    std::fs::create_dir(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/f"), b"x").unwrap();
    let other = TempDir::new("a name/with odd chars").unwrap();
    assert_ne!(other.path(), dir.path());
    drop(dir);
    assert!(!path.exists());
}

/// Helper run as a child by `wait_for_socket_*`: binds the socket named by
/// `HARNESS_SOCKET` and waits to be killed.
#[test]
#[ignore = "helper, run by other tests"]
fn helper_bind_socket() {
    let Some(path) = std::env::var_os("HARNESS_SOCKET") else {
        return;
    };
    std::thread::sleep(Duration::from_millis(100));
    let _l = std::os::unix::net::UnixListener::bind(path).unwrap();
    std::thread::sleep(Duration::from_secs(1000));
}

/// Helper run as a child by `missing_peer_*`: requires a peer that does not exist.
#[test]
#[ignore = "helper, run by other tests"]
fn helper_require_missing() {
    let p = tests::require_peer!("no-such-peer-xyz");
    println!("AFTER REQUIRE {}", p.display());
}
