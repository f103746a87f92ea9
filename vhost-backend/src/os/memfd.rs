//! Anonymous shared files (`memfd_create`), for guest memory in tests and
//! demos and for the inflight buffer a back-end allocates (spec §7.12).
//!
//! ```
//! use vhost_backend::os::memfd;
//!
//! let fd = memfd::create_sealed("inflight", 4096)?;
//! assert_eq!(rustix::fs::fstat(&fd)?.st_size, 4096);
//! // Sealed: the peer that receives it cannot shrink it under our mapping.
//! assert!(rustix::fs::ftruncate(&fd, 0).is_err());
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io;
use std::os::fd::OwnedFd;

use rustix::fs::{MemfdFlags, SealFlags, fcntl_add_seals, ftruncate, memfd_create};

/// Creates a close-on-exec memfd of `size` bytes (zero-filled), not sealed:
/// it can still be resized.
///
/// `name` only shows up in `/proc/*/fd` links (`memfd:<name>`), for debugging.
pub fn create(name: &str, size: u64) -> io::Result<OwnedFd> {
    let fd = memfd_create(name, MemfdFlags::CLOEXEC)?;
    ftruncate(&fd, size)?;
    Ok(fd)
}

/// Creates a close-on-exec memfd of `size` bytes (zero-filled) whose size is
/// sealed (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`), so that no holder of
/// the fd can shrink it under a peer's mapping (touching a mapping past the
/// end of its file raises SIGBUS). The content stays writable.
pub fn create_sealed(name: &str, size: u64) -> io::Result<OwnedFd> {
    let fd = memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    ftruncate(&fd, size)?;
    fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memfds_have_their_size_and_cloexec() {
        for fd in [
            create("a", 8192).unwrap(),
            create_sealed("b", 8192).unwrap(),
        ] {
            assert_eq!(rustix::fs::fstat(&fd).unwrap().st_size, 8192);
            let flags = rustix::io::fcntl_getfd(&fd).unwrap();
            assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
        }
    }

    #[test]
    fn only_the_sealed_one_refuses_resizing() {
        let open = create("open", 4096).unwrap();
        ftruncate(&open, 100).unwrap();
        let sealed = create_sealed("sealed", 4096).unwrap();
        assert!(ftruncate(&sealed, 100).is_err());
        assert!(ftruncate(&sealed, 8192).is_err());
        rustix::io::pwrite(&sealed, b"still writable", 0).unwrap();
    }
}
