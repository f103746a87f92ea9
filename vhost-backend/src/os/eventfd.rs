//! The kick/call/err notifier: an eventfd, or a pipe where eventfd is missing.
//!
//! vhost-user (spec §1) signals by writing an 8-byte value (that means
//! nothing) and consumes a signal by reading 8 bytes. An [`EventFd`] is either
//! one fd used both ways (an eventfd we created, or any fd received from a
//! peer), or the two ends of a pipe.
//!
//! ```
//! use vhost_backend::os::eventfd::EventFd;
//!
//! let call = EventFd::new(true)?;
//! assert!(!call.try_consume()?);
//! call.signal()?;
//! call.signal()?; // signals coalesce
//! assert!(call.try_consume()?);
//! assert!(!call.try_consume()?);
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec, eventfd, poll};
use rustix::io::Errno;
use rustix::pipe::{PipeFlags, pipe_with};

/// A notifier: `signal` on one side, `wait` or `try_consume` on the other.
#[derive(Debug)]
pub struct EventFd {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    /// One fd for both directions (an eventfd, or an fd from a peer).
    Single(OwnedFd),
    /// The reading and the writing end of a pipe.
    Pipe { read: OwnedFd, write: OwnedFd },
}

/// Enough to drain many pipe signals per `read`; an eventfd read returns 8.
const DRAIN_CHUNK: usize = 512;

impl EventFd {
    /// Creates an eventfd (close-on-exec, counter 0); `nonblocking` sets
    /// `O_NONBLOCK` on it, which matters only to those who read it directly
    /// (the methods here never block except [`wait`](Self::wait)).
    pub fn new(nonblocking: bool) -> io::Result<Self> {
        let mut flags = EventfdFlags::CLOEXEC;
        if nonblocking {
            flags |= EventfdFlags::NONBLOCK;
        }
        Ok(EventFd {
            inner: Inner::Single(eventfd(0, flags)?),
        })
    }

    /// Creates a pipe-based notifier (both ends close-on-exec and
    /// non-blocking), for systems without eventfd.
    ///
    /// Give [`read_fd`](Self::read_fd) to the peer that waits (a kick fd for
    /// the back-end) and [`write_fd`](Self::write_fd) to the peer that
    /// signals (a call fd).
    pub fn pipe() -> io::Result<Self> {
        let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        Ok(EventFd {
            inner: Inner::Pipe { read, write },
        })
    }

    /// Wraps an fd received from a peer (an eventfd, or one end of a pipe),
    /// used both to signal and to wait. Nothing is checked beyond it being an
    /// fd; its blocking mode is left alone (the peer shares it).
    pub fn from_fd(fd: OwnedFd) -> Self {
        EventFd {
            inner: Inner::Single(fd),
        }
    }

    /// The fd to wait on (register it with `poll`/`epoll`/mio for readable).
    pub fn read_fd(&self) -> BorrowedFd<'_> {
        match &self.inner {
            Inner::Single(fd) | Inner::Pipe { read: fd, .. } => fd.as_fd(),
        }
    }

    /// The fd signals are written to.
    pub fn write_fd(&self) -> BorrowedFd<'_> {
        match &self.inner {
            Inner::Single(fd) | Inner::Pipe { write: fd, .. } => fd.as_fd(),
        }
    }

    /// Whether this is the pipe variant (two fds).
    pub fn is_pipe(&self) -> bool {
        matches!(self.inner, Inner::Pipe { .. })
    }

    /// Duplicates the notifier (close-on-exec duplicates of its fds), e.g. to
    /// keep one copy and send the other to a peer.
    pub fn try_clone(&self) -> io::Result<Self> {
        let dup = |fd: &OwnedFd| rustix::io::fcntl_dupfd_cloexec(fd, 0);
        let inner = match &self.inner {
            Inner::Single(fd) => Inner::Single(dup(fd)?),
            Inner::Pipe { read, write } => Inner::Pipe {
                read: dup(read)?,
                write: dup(write)?,
            },
        };
        Ok(EventFd { inner })
    }

    /// Signals: writes an 8-byte 1. A full pipe or a saturated eventfd
    /// counter (`WouldBlock`) already holds a pending signal, so that is
    /// success too.
    pub fn signal(&self) -> io::Result<()> {
        let fd = self.write_fd();
        loop {
            match rustix::io::write(fd, &1u64.to_ne_bytes()) {
                Ok(_) | Err(Errno::AGAIN) => return Ok(()),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Consumes the pending signals without blocking: `true` if there were
    /// any. A pipe is drained of every pending signal.
    ///
    /// Readiness is checked with `poll` first, so this does not block on a
    /// blocking fd either, as long as no other thread consumes the same fd
    /// between the `poll` and the `read`. A pipe whose writing end is closed
    /// is an `UnexpectedEof` error (it would otherwise look readable forever).
    pub fn try_consume(&self) -> io::Result<bool> {
        let fd = self.read_fd();
        let mut consumed = false;
        while readable(fd, Some(Duration::ZERO))? {
            let mut buf = [0u8; DRAIN_CHUNK];
            match rustix::io::read(fd, &mut buf) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "notifier closed by its writer",
                    ));
                }
                Ok(n) => {
                    consumed = true;
                    if n < DRAIN_CHUNK || !self.is_pipe() {
                        break;
                    }
                }
                Err(Errno::AGAIN) => break,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(consumed)
    }

    /// Blocks until a signal arrives, and consumes it.
    pub fn wait(&self) -> io::Result<()> {
        loop {
            readable(self.read_fd(), None)?;
            if self.try_consume()? {
                return Ok(());
            }
        }
    }

    /// Like [`wait`](Self::wait), but gives up after `timeout`: `true` if a
    /// signal was consumed, `false` on timeout.
    pub fn wait_timeout(&self, timeout: Duration) -> io::Result<bool> {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            // No deadline (an absurd timeout): wait forever.
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if !readable(self.read_fd(), left)? {
                return self.try_consume();
            }
            if self.try_consume()? {
                return Ok(true);
            }
        }
    }
}

impl AsFd for EventFd {
    /// The fd to wait on ([`read_fd`](EventFd::read_fd)).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.read_fd()
    }
}

impl From<OwnedFd> for EventFd {
    fn from(fd: OwnedFd) -> Self {
        EventFd::from_fd(fd)
    }
}

/// Polls `fd` for input (or hang-up/error, which a read then reports) for at
/// most `timeout` (`None`: forever). `EINTR` is retried with the same timeout,
/// which may only lengthen the wait a little.
fn readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
    let ts = timeout.map(|t| Timespec {
        tv_sec: i64::try_from(t.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(t.subsec_nanos()),
    });
    let mut pfd = [PollFd::from_borrowed_fd(fd, PollFlags::IN)];
    loop {
        match poll(&mut pfd, ts.as_ref()) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(!pfd[0].revents().is_empty()),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn variants() -> Vec<EventFd> {
        vec![
            EventFd::new(false).unwrap(),
            EventFd::new(true).unwrap(),
            EventFd::pipe().unwrap(),
        ]
    }

    #[test]
    fn signal_then_consume_in_every_variant() {
        for e in variants() {
            assert!(!e.try_consume().unwrap());
            e.signal().unwrap();
            e.signal().unwrap();
            e.signal().unwrap();
            assert!(e.try_consume().unwrap());
            assert!(!e.try_consume().unwrap(), "signals coalesce: {e:?}");
            assert!(!e.wait_timeout(Duration::from_millis(1)).unwrap());
        }
    }

    #[test]
    fn wait_wakes_on_a_signal_from_another_thread() {
        for e in variants() {
            let e = Arc::new(e);
            let signaller = Arc::clone(&e);
            let t = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(10));
                signaller.signal().unwrap();
            });
            e.wait().unwrap();
            t.join().unwrap();
            assert!(!e.try_consume().unwrap());
        }
    }

    #[test]
    fn a_received_fd_signals_the_original() {
        let e = EventFd::new(false).unwrap();
        let peer = EventFd::from_fd(rustix::io::fcntl_dupfd_cloexec(&e, 0).unwrap());
        peer.signal().unwrap();
        assert!(e.wait_timeout(Duration::from_secs(5)).unwrap());

        // A pipe: the peer that signals holds the writing end only.
        let p = EventFd::pipe().unwrap();
        let writer = EventFd::from(rustix::io::fcntl_dupfd_cloexec(p.write_fd(), 0).unwrap());
        writer.signal().unwrap();
        assert!(p.try_consume().unwrap());
    }

    #[test]
    fn a_full_pipe_still_counts_as_signalled_and_drains_fully() {
        let p = EventFd::pipe().unwrap();
        // 64 KiB pipe: 8192 signals fill it; more must not fail.
        for _ in 0..10_000 {
            p.signal().unwrap();
        }
        assert!(p.try_consume().unwrap());
        assert!(!p.try_consume().unwrap());
    }

    #[test]
    fn a_pipe_whose_writer_closed_is_eof() {
        let p = EventFd::pipe().unwrap();
        let reader = EventFd::from(rustix::io::fcntl_dupfd_cloexec(p.read_fd(), 0).unwrap());
        drop(p);
        let err = reader.try_consume().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn clones_share_the_counter() {
        for e in variants() {
            let c = e.try_clone().unwrap();
            c.signal().unwrap();
            assert!(e.try_consume().unwrap());
        }
    }
}
