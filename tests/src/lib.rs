//! Shared helpers for the workspace's integration and real-peer tests (in `tests/tests`).
//!
//! - [`TempDir`]: a fresh directory per test, removed on drop.
//! - [`Peer`]: a peer program in its own process group, output collected, waits with
//!   deadlines ([`Peer::wait_for_socket`], [`Peer::wait_for_output`]), [`Peer::interrupt`],
//!   and the whole group killed and reaped on drop, also when the test panics.
//! - [`find_peer`], [`require_peer()`] and [`require_peer!`]: where a real peer is, and whether
//!   a missing one skips the test or fails it (`VHOST_REQUIRE_PEERS=1`, set by CI).
//! - [`assert_clean`]: no process of the test's peers and no socket file left behind.
//!
//! A real-peer test looks like this (declare the [`TempDir`] first, so that it drops last):
//!
//! ```ignore
//! #[test]
//! fn blk_against_qsd() {
//!     let qsd = tests::require_peer!("qemu-storage-daemon");
//!     let dir = tests::TempDir::new("blk_against_qsd").unwrap();
//!     let sock = dir.join("vub.sock");
//!     let mut cmd = std::process::Command::new(qsd);
//!     cmd.args(["--blockdev", "..."]);
//!     let mut peer = tests::Peer::spawn("qemu-storage-daemon", cmd).unwrap();
//!     peer.wait_for_socket(&sock, tests::PEER_START_TIMEOUT).unwrap();
//!     // ... talk to it ...
//!     let pid = peer.pid();
//!     drop(peer);
//!     tests::assert_clean(&[pid], dir.path());
//! }
//! ```
#![deny(missing_docs)]

pub mod blk;
pub mod conformance;
mod discover;
pub mod guest;
mod leftovers;
pub mod net;
mod peer;
mod tempdir;

use std::time::Duration;

pub use discover::{
    REQUIRE_PEERS_VAR, current_test, find_peer, install_hint, override_var, peers_required,
    require_peer,
};
pub use leftovers::{
    assert_clean, assert_no_sockets, assert_peers_gone, group_members, process_exists, sockets_in,
};
pub use peer::{Peer, PeerError};
pub use tempdir::TempDir;

/// A generous deadline for a peer to come up (create its socket, print its banner) on a
/// loaded 2-core machine.
pub const PEER_START_TIMEOUT: Duration = Duration::from_secs(20);

/// A deadline for a peer to exit after SIGINT before it is killed.
pub const PEER_STOP_TIMEOUT: Duration = Duration::from_secs(5);
