//! The defences against a hostile front-end leak no fd, on success or on
//! error: notifier checks, guarded mappings, deadline sends and receives.
//!
//! Counting `/proc/self/fd` is only exact when no other thread opens or closes
//! fds meanwhile, so this binary holds a single test that runs every scenario
//! in sequence.

// Helpers outside `#[test]` functions are test code too.
#![allow(clippy::unwrap_used)]

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vhost_backend::os::eventfd::{Consumed, EventFd};
use vhost_backend::os::memfd;
use vhost_backend::os::mmap::{MappedRegion, MemoryMap, RegionLayout, SharedMapping};
use vhost_backend::os::notifier::{NotifierRole, identify};
use vhost_backend::os::socket::{recv_with_fds_deadline, send_all_with_fds_deadline};

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

fn dup(fd: impl AsFd) -> OwnedFd {
    rustix::io::fcntl_dupfd_cloexec(fd, 0).unwrap()
}

#[test]
fn hostile_frontend_defences_leak_no_fd() {
    no_leak("notifiers accepted", || {
        let e = EventFd::new(false).unwrap();
        let k = EventFd::from_peer(dup(e.read_fd()), NotifierRole::Kick).unwrap();
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let kick = EventFd::from_peer(r, NotifierRole::Kick).unwrap();
        let call = EventFd::from_peer(w, NotifierRole::Call).unwrap();
        call.signal().unwrap();
        assert_eq!(kick.consume().unwrap(), Consumed::Signalled);
        drop(call);
        assert_eq!(kick.consume().unwrap(), Consumed::Closed);
        let _clone = k.try_clone().unwrap();
    });

    no_leak("notifiers refused (the fd is closed)", || {
        let refuse = |fd: OwnedFd, role| {
            assert!(EventFd::from_peer(fd, role).is_err());
        };
        refuse(memfd::create("f", 8).unwrap(), NotifierRole::Kick);
        refuse(
            std::fs::File::open("/dev/zero").unwrap().into(),
            NotifierRole::Kick,
        );
        refuse(std::fs::File::open("/").unwrap().into(), NotifierRole::Err);
        let (s, _t) = UnixStream::pair().unwrap();
        refuse(s.into(), NotifierRole::Call);
        refuse(
            rustix::event::epoll::create(rustix::event::epoll::CreateFlags::CLOEXEC).unwrap(),
            NotifierRole::Kick,
        );
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        refuse(r, NotifierRole::Call);
        refuse(w, NotifierRole::Kick);
        let sem = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::SEMAPHORE,
        )
        .unwrap();
        // Identifying reads fdinfo (an fd opened and closed).
        identify(sem.as_fd()).unwrap();
        let _ = EventFd::from_peer(sem, NotifierRole::Kick);
    });

    no_leak("guarded and sealed mappings, mapped and refused", || {
        let page = rustix::param::page_size() as u64;
        let open = memfd::create("guest", 2 * page).unwrap();
        let sealed = memfd::create_sealed("guest", 2 * page).unwrap();
        let layout = |gpa, size| RegionLayout {
            guest_phys_addr: gpa,
            memory_size: size,
            user_addr: gpa,
            mmap_offset: 0,
        };
        let map = MemoryMap::new(vec![
            MappedRegion::map(layout(0, page), dup(&open)).unwrap(),
            MappedRegion::map(layout(0x10_0000, page), dup(&sealed)).unwrap(),
        ])
        .unwrap();
        assert!(!map.faulted());
        drop(map);
        assert!(MappedRegion::map(layout(0, 3 * page), dup(&open)).is_err());
        let s = SharedMapping::new(&open, 8, page).unwrap();
        let region = s.into_shared_region();
        drop(region);
        assert!(SharedMapping::new(&sealed, 0, 3 * page).is_err());
    });

    no_leak(
        "deadline sends and receives, completed and timed out",
        || {
            let (a, b) = UnixStream::pair().unwrap();
            let f = memfd::create("sent", 8).unwrap();
            let soon = Instant::now() + Duration::from_secs(5);
            send_all_with_fds_deadline(&a, b"message", &[f.as_fd()], soon).unwrap();
            let mut fds = Vec::new();
            let mut buf = [0u8; 16];
            assert_eq!(
                recv_with_fds_deadline(&b, &mut buf, &mut fds, soon).unwrap(),
                7
            );
            assert_eq!(fds.len(), 1);
            drop(fds);
            let big = vec![0u8; 4 << 20];
            let short = Instant::now() + Duration::from_millis(50);
            let err = send_all_with_fds_deadline(&a, &big, &[f.as_fd()], short).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
            // What did get through carried the fd: receive and close it.
            let mut fds = Vec::new();
            let mut buf = vec![0u8; 1 << 16];
            let short = Instant::now() + Duration::from_millis(10);
            while recv_with_fds_deadline(&b, &mut buf, &mut fds, short).is_ok() {}
            assert_eq!(fds.len(), 1);
        },
    );
}
