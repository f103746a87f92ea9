//! The programs as a user runs them: `vhost-user-blk`'s conventions (capabilities, exit
//! codes, clear errors), `vhost-probe`'s modes against a running back-end, and the demo.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on failure

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BLK: &str = env!("CARGO_BIN_EXE_vhost-user-blk");
const PROBE: &str = env!("CARGO_BIN_EXE_vhost-probe");
const DEMO: &str = env!("CARGO_BIN_EXE_vhost-blk-demo");

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A back-end process, killed if the test fails.
struct Backend(Child);

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_backend(sock: &Path, extra: &[&str]) -> Backend {
    let child = Command::new(BLK)
        .arg("--socket-path")
        .arg(sock)
        .args(extra)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(sock).is_err() {
        assert!(Instant::now() < deadline, "back-end did not listen");
        std::thread::sleep(Duration::from_millis(10));
    }
    Backend(child)
}

fn sigterm(b: &mut Backend) -> std::process::ExitStatus {
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(b.0.id() as i32, libc::SIGTERM) }, 0);
    b.0.wait().unwrap()
}

#[test]
fn print_capabilities_is_json_and_ignores_other_options() {
    let o = run(
        BLK,
        &["--print-capabilities", "--memory", "garbage", "--bogus"],
    );
    assert!(o.status.success());
    assert_eq!(
        stdout(&o).trim(),
        r#"{"type": "block", "features": ["blk-file", "read-only"]}"#
    );
}

#[test]
fn usage_errors_exit_2_and_setup_errors_exit_1_with_clear_messages() {
    let o = run(BLK, &[]);
    assert_eq!(o.status.code(), Some(2), "no socket: {}", stderr(&o));
    let o = run(BLK, &["--socket-path", "/tmp/x.sock", "--memory", "12Q"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("unknown unit"), "{}", stderr(&o));
    let o = run(BLK, &["--socket-path", "/tmp/x.sock", "--fd", "3"]);
    assert_eq!(o.status.code(), Some(2));

    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let s = sock.to_str().unwrap();
    let o = run(
        BLK,
        &["--socket-path", s, "--image", "/nonexistent/disk.img"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("/nonexistent/disk.img"),
        "{}",
        stderr(&o)
    );
    let o = run(BLK, &["--socket-path", s, "--memory", "1000"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("multiple of 512"), "{}", stderr(&o));

    // A socket path someone listens on is busy.
    let _live = UnixListener::bind(&sock).unwrap();
    let o = run(BLK, &["--socket-path", s]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("listening"), "{}", stderr(&o));

    let o = run(BLK, &["--fd", "0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not a socket"), "{}", stderr(&o));

    let o = run(BLK, &["--help"]);
    assert!(o.status.success());
    for opt in [
        "--socket-path",
        "--fd",
        "--print-capabilities",
        "--image",
        "--memory",
        "--read-only",
        "--num-queues",
    ] {
        assert!(stdout(&o).contains(opt), "{opt} in --help");
    }
}

#[test]
fn the_probe_lists_its_modes_and_drives_a_backend_process() {
    let o = run(PROBE, &["--help"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("caps") && stdout(&o).contains("blk"));

    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    std::fs::write(&img, vec![0u8; 4 << 20]).unwrap();
    let sock = dir.path().join("s.sock");
    let mut b = start_backend(
        &sock,
        &[
            "--image",
            img.to_str().unwrap(),
            "--num-queues",
            "2",
            "--serial",
            "probe-test",
        ],
    );
    let s = sock.to_str().unwrap();
    let o = run(PROBE, &["caps", "--socket", s, "--device", "blk"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for want in [
        "VERSION_1",
        "RING_PACKED",
        "FLUSH",
        "INFLIGHT_SHMFD",
        "capacity 8192 sectors",
    ] {
        assert!(out.contains(want), "{want} in\n{out}");
    }
    for layout in ["split", "packed"] {
        let o = run(
            PROBE,
            &[
                "blk",
                "--socket",
                s,
                "--layout",
                layout,
                "--duration",
                "0.3",
                "--json",
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let out = stdout(&o);
        assert!(
            out.starts_with('{') && out.trim_end().ends_with('}'),
            "{out}"
        );
        assert!(out.contains("\"serial\": \"probe-test\""), "{out}");
        assert!(out.contains("\"errors\": 0"), "{out}");
        assert!(out.contains(&format!("\"layout\": \"{layout}\"")));
    }
    // A verify-only pass (no random writes after it): the pattern is in the image file.
    let o = run(PROBE, &["blk", "--socket", s, "--duration", "0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let status = sigterm(&mut b);
    assert!(status.success(), "{status}");
    assert!(!sock.exists(), "socket removed on SIGTERM");
    let bytes = std::fs::read(&img).unwrap();
    assert!(bytes[..4096] == devices::probe::blk::pattern(0x5eed, 0, 4096)[..]);
}

#[test]
fn the_probe_reports_a_missing_backend() {
    let o = run(PROBE, &["blk", "--socket", "/nonexistent/s.sock"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("/nonexistent/s.sock"));
}

#[test]
fn read_only_backend_is_only_read() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ro.sock");
    let mut b = start_backend(&sock, &["--read-only", "--memory", "1M"]);
    let o = run(
        PROBE,
        &[
            "blk",
            "--socket",
            sock.to_str().unwrap(),
            "--duration",
            "0.2",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("read (read-only disk)"),
        "{}",
        stdout(&o)
    );
    assert!(sigterm(&mut b).success());
}

#[test]
fn the_demo_runs_end_to_end() {
    let o = run(DEMO, &[]);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("split rings") && out.contains("packed rings"),
        "{out}"
    );
    assert!(out.contains("read back: OK"));
    assert!(out.contains("IOPS"));
    assert!(out.contains("socket removed: true"));
}
