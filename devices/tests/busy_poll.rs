//! `vhost-user-blk --busy-poll`: the probe's verified pass and a random-I/O run at QD 1
//! and QD 32 succeed on split and packed rings while the queue threads busy-poll; the
//! back-end does not sleep between requests (few voluntary context switches per request,
//! where a blocking back-end has about one) and goes idle once the front-end is gone;
//! `--busy-poll-idle` needs `--busy-poll`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
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

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vhost-busy-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn start(sock: &Path, extra: &[&str]) -> Backend {
    let child = Command::new(BLK)
        .arg("--socket-path")
        .arg(sock)
        .args(extra)
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

/// CPU time of the process (ns), exited threads included: utime + stime of
/// `/proc/<pid>/stat` (the queue threads end with the connection, and a thread that ended
/// is gone from `/proc/<pid>/task`).
fn cpu_ns(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses): state is field 3.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    ticks * 1_000_000_000 / hz
}

/// Voluntary context switches of every live thread of `pid`.
fn voluntary_switches(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum()
}

/// Runs the probe (verified pass, then 1.5 s of random I/O); samples the back-end's
/// voluntary context switches per second in the middle of the run. Returns the probe's
/// JSON, the IOPS and the switch rate.
fn probe(sock: &Path, pid: u32, layout: &str, qd: &str) -> (String, f64, f64) {
    let child = Command::new(PROBE)
        .args(["blk", "--socket"])
        .arg(sock)
        .args([
            "--layout",
            layout,
            "--queue-depth",
            qd,
            "--duration",
            "1.5",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let s0 = voluntary_switches(pid);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(400));
    let rate = (voluntary_switches(pid) - s0) as f64 / t0.elapsed().as_secs_f64();
    let o = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "probe {layout} QD{qd} failed: {}\n{out}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("\"ok\": true"), "verify pass failed: {out}");
    assert!(out.contains("\"errors\": 0"), "I/O errors: {out}");
    let iops = out
        .split("\"iops\": ")
        .nth(1)
        .and_then(|r| r.split([',', '}']).next())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap();
    (out, iops, rate)
}

#[test]
fn busy_polling_backend_serves_split_and_packed() {
    let d = dir("serve");
    let sock = d.join("vub.sock");
    // For contrast: a blocking back-end sleeps and is woken about once per request at QD 1.
    let blocking = start(&sock, &["--memory", "64M"]);
    let (_, iops, rate) = probe(&sock, blocking.0.id(), "split", "1");
    eprintln!("blocking split QD1: {iops:.0} IOPS, {rate:.0} voluntary switches/s");
    drop(blocking);
    let _ = std::fs::remove_file(&sock);

    let b = start(
        &sock,
        &["--busy-poll", "--memory", "64M", "--num-queues", "1"],
    );
    let pid = b.0.id();
    for layout in ["split", "packed"] {
        for qd in ["1", "32"] {
            let (_, iops, rate) = probe(&sock, pid, layout, qd);
            eprintln!("busy-poll {layout} QD{qd}: {iops:.0} IOPS, {rate:.0} voluntary switches/s");
            // A polling thread does not sleep between requests: far fewer voluntary
            // switches than requests (a blocking one has about one per request).
            assert!(
                rate < 0.1 * iops,
                "the back-end sleeps while busy polling: {rate:.0} switches/s at {iops:.0} IOPS"
            );
        }
    }
    // Idle again once the front-end is gone.
    std::thread::sleep(Duration::from_millis(200));
    let cpu0 = cpu_ns(pid);
    std::thread::sleep(Duration::from_millis(500));
    let idle = (cpu_ns(pid) - cpu0) as f64 / 0.5e9;
    assert!(
        idle < 0.1,
        "the back-end spins with no front-end ({idle:.2} CPUs)"
    );
    drop(b);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn busy_poll_idle_needs_busy_poll() {
    let d = dir("usage");
    let o = Command::new(BLK)
        .arg("--socket-path")
        .arg(d.join("vub.sock"))
        .args(["--busy-poll-idle", "10"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "a usage error");
    let _ = std::fs::remove_dir_all(&d);
}
