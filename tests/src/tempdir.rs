//! A fresh directory per test, removed on drop.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A directory created under the system temp dir (`std::env::temp_dir()`), unique to this
/// process and call, removed with everything in it when the guard drops.
///
/// Declare it *before* the peers that use it, so that the peers drop (and are killed) first:
/// locals drop in reverse order of declaration.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    /// Creates `<tmp>/vhost-<label>-<pid>-<n>-<nanos>`. `label` should name the test; it is
    /// sanitised to `[A-Za-z0-9_-]` and cut to 40 characters (Unix socket paths are limited
    /// to 107 bytes, so keep the directory short).
    pub fn new(label: &str) -> io::Result<Self> {
        let label: String = label
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(40)
            .collect();
        let base = std::env::temp_dir();
        for _ in 0..100 {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let path = base.join(format!(
                "vhost-{label}-{}-{n}-{nanos:x}",
                std::process::id()
            ));
            match fs::create_dir(&path) {
                Ok(()) => return Ok(Self { path, keep: false }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "no free temp dir name",
        ))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `self.path().join(name)`.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }

    /// Keeps the directory on drop (for debugging a failing test); prints where it is.
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.keep || std::env::var_os("VHOST_KEEP_TEMP").is_some() {
            eprintln!("temp dir kept: {}", self.path.display());
            return;
        }
        if let Err(e) = fs::remove_dir_all(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            eprintln!("cannot remove temp dir {}: {e}", self.path.display());
        }
    }
}
