//! Checks that a test left nothing behind: no process of its peers' groups, no socket file.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long [`assert_peers_gone`] lets killed processes take to disappear.
pub const SETTLE: Duration = Duration::from_secs(3);

/// Pids of the live processes whose process group is `pgid` (scans `/proc`; zombies are
/// counted as live: they have not been reaped).
pub fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| stat_pgrp(*pid) == Some(pgid))
        .collect()
}

/// The process group of `pid` from `/proc/<pid>/stat`, if the process exists.
fn stat_pgrp(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid pgrp ...`; comm may contain spaces and parentheses.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    rest.split_whitespace().nth(2)?.parse().ok()
}

/// Whether process `pid` exists (alive or zombie).
pub fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Socket files under `dir` (recursively).
pub fn sockets_in(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.filter_map(Result::ok) {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                todo.push(e.path());
            } else if ft.is_socket() {
                out.push(e.path());
            }
        }
    }
    out
}

/// Panics unless every peer (given by pid = process group id, see
/// [`Peer::pid`](crate::Peer::pid)) is gone with its whole group. Call it after the peers
/// were dropped.
///
/// Killed processes other than our own children are reaped by init, so this allows them
/// a few seconds to disappear before failing.
pub fn assert_peers_gone(pids: &[u32]) {
    let deadline = Instant::now() + SETTLE;
    while pids
        .iter()
        .any(|&p| process_exists(p) || !group_members(p).is_empty())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    for &pid in pids {
        assert!(
            !process_exists(pid),
            "peer process {pid} is still there after drop"
        );
        let left = group_members(pid);
        assert!(
            left.is_empty(),
            "processes {left:?} of peer group {pid} are still there after drop"
        );
    }
}

/// Panics if a socket file is left under `dir`.
pub fn assert_no_sockets(dir: &Path) {
    let left = sockets_in(dir);
    assert!(left.is_empty(), "socket files left behind: {left:?}");
}

/// [`assert_peers_gone`] and [`assert_no_sockets`] together.
pub fn assert_clean(pids: &[u32], dir: &Path) {
    assert_peers_gone(pids);
    assert_no_sockets(dir);
}
