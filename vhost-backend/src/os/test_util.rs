//! Helpers for the unit tests of the OS layer.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};

/// Whether two fds refer to the same file: writes a fresh marker through `a`
/// and reads it back through `b` (both must be seekable, at least 8 bytes).
pub(crate) fn same_file(a: impl AsFd, b: impl AsFd) -> bool {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let marker = NEXT.fetch_add(1, Ordering::Relaxed).to_ne_bytes();
    rustix::io::pwrite(&a, &marker, 0).unwrap();
    let mut back = [0u8; 8];
    rustix::io::pread(&b, &mut back, 0).unwrap();
    back == marker
}
