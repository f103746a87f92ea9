//! The io_uring engine: one ring per queue; readv/writev straight between the image and
//! the guest's buffers, fdatasync and fallocate for the rest; completions in whatever
//! order the kernel finishes them, signalled on an eventfd registered with the ring.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use io_uring::{IoUring, opcode, squeue, types};
use vhost_backend::os::eventfd::EventFd;

use super::{Completion, Engine, Op, zero_mode};

/// Runs operations on a file through an io_uring.
pub struct UringEngine {
    ring: IoUring,
    file: Arc<File>,
    event: EventFd,
    /// Entries not yet in the submission queue (it was full, or the in-kernel cap was
    /// reached).
    backlog: VecDeque<squeue::Entry>,
    /// Entries handed to the kernel whose completion was not reaped yet.
    in_kernel: usize,
    /// Most entries in the kernel at once (the completion queue never overflows).
    cap: usize,
    /// The ring failed: nothing more is known about what runs.
    failed: bool,
}

impl std::fmt::Debug for UringEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringEngine")
            .field("backlog", &self.backlog.len())
            .field("in_kernel", &self.in_kernel)
            .field("cap", &self.cap)
            .finish_non_exhaustive()
    }
}

impl UringEngine {
    /// A ring of `depth` entries (at least 8) on `file`. Fails where io_uring is
    /// unavailable (`ENOSYS`, `EPERM` under seccomp or `io_uring_disabled`, ...).
    pub fn new(file: Arc<File>, depth: u32) -> io::Result<Self> {
        let depth = depth.clamp(8, 4096).next_power_of_two();
        let ring = IoUring::new(depth)?;
        let event = EventFd::new(true)?;
        ring.submitter()
            .register_eventfd(event.read_fd().as_raw_fd())?;
        let cap = ring.params().sq_entries() as usize;
        Ok(UringEngine {
            ring,
            file,
            event,
            backlog: VecDeque::new(),
            in_kernel: 0,
            cap,
            failed: false,
        })
    }

    fn fd(&self) -> types::Fd {
        types::Fd(self.file.as_raw_fd())
    }
}

impl Engine for UringEngine {
    unsafe fn submit(&mut self, op: Op<'_>, tag: u64) {
        let fd = self.fd();
        let entry = match op {
            Op::Read { offset, iov } => {
                opcode::Readv::new(fd, iov.as_ptr(), iov.len().try_into().unwrap_or(u32::MAX))
                    .offset(offset)
                    .build()
            }
            Op::Write { offset, iov, dsync } => {
                opcode::Writev::new(fd, iov.as_ptr(), iov.len().try_into().unwrap_or(u32::MAX))
                    .offset(offset)
                    .rw_flags(if dsync { libc::RWF_DSYNC } else { 0 })
                    .build()
            }
            Op::Flush => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            Op::Zero { offset, len, unmap } => opcode::Fallocate::new(fd, len)
                .offset(offset)
                .mode(zero_mode(unmap))
                .build(),
        };
        self.backlog.push_back(entry.user_data(tag));
    }

    fn commit(&mut self) -> io::Result<()> {
        let mut pushed = 0;
        {
            let mut sq = self.ring.submission();
            while self.in_kernel < self.cap {
                let Some(e) = self.backlog.front() else {
                    break;
                };
                // SAFETY: the entry's buffers stay valid until its completion is reaped
                // (the contract of `submit`).
                if unsafe { sq.push(e) }.is_err() {
                    break;
                }
                self.backlog.pop_front();
                self.in_kernel += 1;
                pushed += 1;
            }
        }
        if pushed == 0 && self.ring.submission().is_empty() {
            return Ok(());
        }
        loop {
            match self.ring.submit() {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // The completion queue is full or the kernel is short of memory: the
                // entries stay queued and go with the next submit (after a reap).
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::EAGAIN)) => {
                    return Ok(());
                }
                Err(e) => {
                    self.failed = true;
                    return Err(e);
                }
            }
        }
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        // Consume the signal first: a completion posted after the drain below signals
        // again.
        self.event.try_consume()?;
        for cqe in self.ring.completion() {
            self.in_kernel = self.in_kernel.saturating_sub(1);
            out.push(Completion {
                tag: cqe.user_data(),
                result: i64::from(cqe.result()),
            });
        }
        self.commit()
    }

    fn source(&self) -> Option<RawFd> {
        Some(self.event.read_fd().as_raw_fd())
    }

    fn in_flight(&self) -> usize {
        self.in_kernel + self.backlog.len()
    }

    fn shutdown(&mut self) -> bool {
        self.backlog.clear();
        while self.in_kernel > 0 {
            if self.failed {
                return false;
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => {
                    log::error!("io_uring: waiting for in-flight operations failed: {e}");
                    return false;
                }
            }
            for _ in self.ring.completion() {
                self.in_kernel = self.in_kernel.saturating_sub(1);
            }
        }
        true
    }

    fn name(&self) -> &'static str {
        "io_uring"
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::exercise;
    use super::super::{EngineKind, Image};
    use std::io::Write;

    /// Whether io_uring works here (a sandbox may forbid it: then the test says so and
    /// the thread-pool tests cover the file image).
    pub fn available() -> bool {
        match io_uring::IoUring::new(8) {
            Ok(_) => true,
            Err(e) => {
                eprintln!("io_uring unavailable here ({e}): skipping");
                false
            }
        }
    }

    #[test]
    fn uring_engine_on_a_file() {
        if !available() {
            return;
        }
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&vec![0u8; 1 << 20]).unwrap();
        let image = Image::open(f.path(), false, false).unwrap();
        assert_eq!(image.size(), 1 << 20);
        let mut e = image.engine(EngineKind::IoUring, 16, false).unwrap();
        assert_eq!(e.name(), "io_uring");
        assert!(e.source().is_some());
        // 64 reads in flight on a 16-entry ring: the backlog feeds it.
        exercise(&image, e.as_mut());
    }

    #[test]
    fn auto_picks_io_uring_where_it_works() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let image = Image::open(f.path(), false, false).unwrap();
        let e = image.engine(EngineKind::Auto, 16, false).unwrap();
        assert_eq!(e.name(), if available() { "io_uring" } else { "threads" });
    }
}
