//! `vhost-probe check` against our own `vhost-user-blk`: every case of the battery
//! survived (a new connection answers GET_FEATURES afterwards), the process is alive and
//! its fd count is back to the baseline after every case; `--help` lists every mode.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BLK: &str = env!("CARGO_BIN_EXE_vhost-user-blk");
const PROBE: &str = env!("CARGO_BIN_EXE_vhost-probe");

struct Backend(Child);

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_backend(sock: &Path) -> Backend {
    let child = Command::new(BLK)
        .arg("--socket-path")
        .arg(sock)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(sock).is_err() {
        assert!(Instant::now() < deadline, "back-end did not listen");
        std::thread::sleep(Duration::from_millis(10));
    }
    Backend(child)
}

#[test]
fn help_lists_every_mode() {
    let o = Command::new(PROBE).arg("--help").output().unwrap();
    assert!(o.status.success());
    let help = String::from_utf8_lossy(&o.stdout);
    for mode in ["caps", "blk", "check", "rng", "fs"] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(mode)),
            "{mode} missing from --help:\n{help}"
        );
    }
}

#[test]
fn check_lists_its_cases() {
    let o = Command::new(PROBE)
        .args(["check", "--list"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let list = String::from_utf8_lossy(&o.stdout);
    assert!(list.lines().count() >= 30, "{list}");
    assert!(list.contains("kick-regular-file"), "{list}");
    let o = Command::new(PROBE)
        .args(["check", "--socket", "/nonexistent.sock", "--case", "nope"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn check_against_our_blk_backend_every_case_survives() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("blk.sock");
    let b = start_backend(&sock);
    let pid = b.0.id().to_string();
    let t = Instant::now();
    let o = Command::new(PROBE)
        .arg("check")
        .arg("--socket")
        .arg(&sock)
        .args(["--pid", &pid, "--timeout", "0.5", "--json"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("\"ok\": true"), "{out}");
    let cases: Vec<&str> = out.lines().filter(|l| l.starts_with("{\"name\"")).collect();
    assert!(cases.len() >= 30, "{out}");
    for c in &cases {
        assert!(c.contains("\"survived\": true"), "{c}");
        assert!(c.contains("\"alive\": true"), "{c}");
        assert!(c.contains("\"fd_growth\": false"), "{c}");
    }
    // What our back-end answers, pinned for the cases where the answer is the point.
    let answer = |name: &str| -> String {
        let l = cases
            .iter()
            .find(|l| l.contains(&format!("\"name\": \"{name}\"")))
            .unwrap_or_else(|| panic!("no case {name}"));
        let at = l.find("\"answer_kind\": \"").unwrap() + 16;
        l[at..].split('"').next().unwrap().to_string()
    };
    assert_eq!(answer("unknown-code-need-reply"), "nack");
    assert_eq!(answer("version-0"), "closed");
    assert_eq!(answer("mem-table-no-fd"), "closed");
    assert_eq!(answer("kick-regular-file"), "nack");
    assert_eq!(answer("set-features-unoffered"), "nack");
    assert_eq!(answer("vring-addr-outside-memory"), "nack");
    assert_eq!(answer("half-header"), "none");
    // The table form exits 0 too and names every case.
    let o = Command::new(PROBE)
        .arg("check")
        .arg("--socket")
        .arg(&sock)
        .args([
            "--timeout",
            "0.5",
            "--case",
            "version-0",
            "--case",
            "reset-owner",
        ])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{table}");
    assert!(table.contains("2 cases, 2 ok, 0 failed"), "{table}");
    eprintln!(
        "check against vhost-user-blk: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    drop(b);
}
