//! No OS helper leaks an fd, on success or on error.
//!
//! Counting `/proc/self/fd` is only exact when no other thread opens or closes
//! fds meanwhile, so this binary holds a single test that runs every scenario
//! in sequence (the unit tests of the crate run in another process).

// Helpers outside `#[test]` functions are test code too.
#![allow(clippy::unwrap_used)]

use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};
use vhost_backend::OsError;
use vhost_backend::os::eventfd::EventFd;
use vhost_backend::os::memfd;
use vhost_backend::os::mmap::{MappedRegion, MemoryMap, RegionLayout, SharedMapping};
use vhost_backend::os::socket::{
    MAX_FDS_PER_MESSAGE, RECV_FD_CAPACITY, recv_with_fds, send_all_with_fds, send_with_fds,
};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Runs `f` and checks the number of open fds is the same afterwards.
fn no_leak(name: &str, f: impl FnOnce()) {
    let before = open_fds();
    f();
    let after = open_fds();
    assert_eq!(
        before, after,
        "{name}: {before} fds open before, {after} after"
    );
}

fn memfds(n: usize) -> Vec<OwnedFd> {
    (0..n)
        .map(|_| memfd::create("leak", 4096).unwrap())
        .collect()
}

fn is_closed(fd: i32) -> bool {
    // Through /proc rather than fcntl(F_GETFD), which would need to borrow a
    // raw number we do not own.
    std::fs::symlink_metadata(format!("/proc/self/fd/{fd}")).is_err()
}

#[test]
fn os_helpers_leak_no_fd() {
    no_leak("send and receive 0..=8 fds", || {
        let (a, b) = UnixStream::pair().unwrap();
        for n in 0..=MAX_FDS_PER_MESSAGE {
            let f = memfds(n);
            let borrowed: Vec<_> = f.iter().map(|f| f.as_fd()).collect();
            send_all_with_fds(&a, b"message", &borrowed).unwrap();
            let mut got = Vec::new();
            recv_with_fds(&b, &mut [0u8; 16], &mut got).unwrap();
            assert_eq!(got.len(), n);
        }
    });

    no_leak("received but never read", || {
        // Fds still queued in a socket are released with it.
        let (a, b) = UnixStream::pair().unwrap();
        let f = memfds(8);
        let borrowed: Vec<_> = f.iter().map(|f| f.as_fd()).collect();
        send_with_fds(&a, b"x", &borrowed).unwrap();
        drop((a, b));
    });

    no_leak("too many fds to send", || {
        let (a, _b) = UnixStream::pair().unwrap();
        let f = memfds(MAX_FDS_PER_MESSAGE + 1);
        let borrowed: Vec<_> = f.iter().map(|f| f.as_fd()).collect();
        assert!(send_with_fds(&a, b"x", &borrowed).is_err());
    });

    no_leak("more fds than the receive buffer (CTRUNC)", || {
        let (a, b) = UnixStream::pair().unwrap();
        let f = memfds(RECV_FD_CAPACITY + 10);
        let borrowed: Vec<_> = f.iter().map(|f| f.as_fd()).collect();
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(64))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(&borrowed)));
        sendmsg(
            &a,
            &[IoSlice::new(b"hostile")],
            &mut control,
            SendFlags::NOSIGNAL,
        )
        .unwrap();
        // The kernel installs received fds at the lowest free numbers: these
        // are the ones to find closed again after the failed receive.
        let probe = memfds(RECV_FD_CAPACITY);
        let numbers: Vec<i32> = probe.iter().map(|f| f.as_raw_fd()).collect();
        drop(probe);
        let mut got = Vec::new();
        let err = recv_with_fds(&b, &mut [0u8; 16], &mut got).unwrap_err();
        assert!(matches!(
            OsError::from_io(&err),
            Some(OsError::ControlTruncated { .. })
        ));
        assert!(got.is_empty());
        for n in numbers {
            assert!(is_closed(n), "fd {n} left open after CTRUNC");
        }
    });

    no_leak("eventfds and pipes", || {
        for e in [EventFd::new(false).unwrap(), EventFd::pipe().unwrap()] {
            e.signal().unwrap();
            let c = e.try_clone().unwrap();
            assert!(c.wait_timeout(Duration::from_secs(5)).unwrap());
        }
    });

    no_leak("guest memory regions and shared mappings", || {
        let fd = memfd::create_sealed("guest", 8192).unwrap();
        let dup = || rustix::io::fcntl_dupfd_cloexec(&fd, 0).unwrap();
        let layout = |gpa, off| RegionLayout {
            guest_phys_addr: gpa,
            memory_size: 4096,
            user_addr: gpa,
            mmap_offset: off,
        };
        let map = MemoryMap::new(vec![
            MappedRegion::map(layout(0, 0), dup()).unwrap(),
            MappedRegion::map(layout(0x10000, 4096), dup()).unwrap(),
        ])
        .unwrap();
        let (smaller, removed) = map.without_region(0, 4096).unwrap();
        drop((map, smaller, removed));
        // Refused regions close the fd they were given.
        assert!(MappedRegion::map(layout(0, 1), dup()).is_err());
        assert!(MappedRegion::map(layout(0, 8192), dup()).is_err());
        let region = SharedMapping::new(&fd, 8, 4096)
            .unwrap()
            .into_shared_region();
        drop(region.clone());
        drop(region);
        assert!(SharedMapping::new(&fd, 0, 0).is_err());
    });
}
