//! Finding the real peers and deciding whether a missing one skips or fails the test.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The environment variable that turns a missing peer from a skip into a failure (CI sets
/// it to `1`).
pub const REQUIRE_PEERS_VAR: &str = "VHOST_REQUIRE_PEERS";

/// Whether missing peers fail the tests (`VHOST_REQUIRE_PEERS=1`).
pub fn peers_required() -> bool {
    std::env::var(REQUIRE_PEERS_VAR).is_ok_and(|v| v.trim() == "1")
}

/// The variable that overrides where peer `name` is: `VHOST_PEER_` followed by the name in
/// upper case with `-` as `_`, e.g. `VHOST_PEER_QEMU_STORAGE_DAEMON`.
pub fn override_var(name: &str) -> String {
    let up: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("VHOST_PEER_{up}")
}

/// How to install peer `name` (for messages).
pub fn install_hint(name: &str) -> &'static str {
    match name {
        "qemu-storage-daemon" | "qemu-img" => {
            "apt-get install -y qemu-utils, or run .ci/install-peers as root"
        }
        "qemu-system-x86_64" => {
            "apt-get install -y qemu-system-x86, or run .ci/install-peers as root"
        }
        "dpdk-testpmd" => "apt-get install -y dpdk-dev, or run .ci/install-peers as root",
        "busybox" => "apt-get install -y busybox-static, or run .ci/install-peers as root",
        "cpio" => "apt-get install -y cpio, or run .ci/install-peers as root",
        _ => "run .ci/install-peers as root",
    }
}

fn is_executable(p: &Path) -> bool {
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The path of peer program `name`: the override variable (see [`override_var`]) if set,
/// else the first executable `name` in `PATH`, `/usr/local/bin`, `/usr/bin`, `/usr/sbin`,
/// `/sbin`, `/bin`.
pub fn find_peer(name: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(override_var(name)) {
        let p = PathBuf::from(p);
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = ["/usr/local/bin", "/usr/bin", "/usr/sbin", "/sbin", "/bin"].map(PathBuf::from);
    std::env::split_paths(&path)
        .chain(extra)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

/// Finds peer `name` for test `test`. When it is missing: panics with a clear message if
/// [`peers_required`], else prints `SKIPPED: <test>: <name> not found (<hint>)` to stderr
/// and returns `None` (the caller returns early). See also [`require_peer!`](macro@crate::require_peer).
pub fn require_peer(test: &str, name: &str) -> Option<PathBuf> {
    if let Some(p) = find_peer(name) {
        return Some(p);
    }
    let hint = install_hint(name);
    if peers_required() {
        panic!(
            "{test}: real peer {name} not found and {REQUIRE_PEERS_VAR}=1 ({hint}; or point {} at it)",
            override_var(name)
        );
    }
    eprintln!("SKIPPED: {test}: {name} not found ({hint})");
    None
}

/// The current test's name as libtest reports it (the thread's name), or `"test"`.
pub fn current_test() -> String {
    std::thread::current().name().unwrap_or("test").to_owned()
}

/// Evaluates to the path of the named peer, or returns from the enclosing test (printing
/// `SKIPPED: ...`) when it is missing, or panics when it is missing and
/// `VHOST_REQUIRE_PEERS=1`.
///
/// ```ignore
/// let qsd = require_peer!("qemu-storage-daemon");
/// ```
#[macro_export]
macro_rules! require_peer {
    ($name:expr) => {
        match $crate::require_peer(&$crate::current_test(), $name) {
            ::core::option::Option::Some(p) => p,
            ::core::option::Option::None => return,
        }
    };
}
