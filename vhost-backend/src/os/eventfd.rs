//! The kick/call/err notifier: an eventfd, or a pipe where eventfd is missing.
//!
//! vhost-user (spec §1) signals by writing an 8-byte value (that means
//! nothing) and consumes a signal by reading 8 bytes. An [`EventFd`] is either
//! one fd used both ways (an eventfd we created, or any fd received from a
//! peer), or the two ends of a pipe.
//!
//! Fds received from a front-end should go through
//! [`EventFd::from_peer`] (see [`crate::os::notifier`]),
//! which refuses anything but an eventfd or the right end of a pipe and makes
//! the fd non-blocking; then:
//!
//! - [`signal`](EventFd::signal) never blocks: a full pipe or a saturated
//!   eventfd counter (`EAGAIN`) already holds a pending signal, so it is
//!   success;
//! - [`consume`](EventFd::consume) never spins: a pipe whose writers are all
//!   gone is [`Consumed::Closed`] (not "readable again"), and a pipe a peer
//!   keeps filling is drained at most [`MAX_DRAIN_BYTES`] per call.
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
    /// One end (or an `O_RDWR` open) of a pipe/FIFO received from a peer,
    /// checked by [`EventFd::from_peer`]: reads drain it in chunks.
    PeerFifo(OwnedFd),
    /// The reading and the writing end of a pipe.
    Pipe { read: OwnedFd, write: OwnedFd },
}

/// What one [`EventFd::consume`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Consumed {
    /// At least one signal was pending, and has been consumed.
    Signalled,
    /// No signal was pending.
    Nothing,
    /// The notifier can never be signalled again: a pipe whose writing ends
    /// are all closed (a `read` returns 0), or an fd `poll` reports hung up
    /// or in error with nothing to read. Stop waiting on it (a level-triggered
    /// loop would otherwise wake up forever); for a kick fd, stop the ring and
    /// signal its err fd.
    Closed,
}

/// Enough to drain many pipe signals per `read`; an eventfd read returns 8.
const DRAIN_CHUNK: usize = 4096;

/// The most bytes one [`EventFd::consume`] reads from a pipe (the default
/// pipe capacity is 64 KiB, the largest a peer can set without privileges
/// `/proc/sys/fs/pipe-max-size`, 1 MiB by default), so that a peer writing
/// without pause cannot keep us in one call forever. What is left stays
/// readable and is consumed by the next call.
pub const MAX_DRAIN_BYTES: usize = 1 << 20;

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

    /// Wraps a peer's fd that [`from_peer`](Self::from_peer) has checked;
    /// `fifo`: it is a pipe/FIFO (drained in chunks) rather than an eventfd.
    pub(crate) fn from_checked_fd(fd: OwnedFd, fifo: bool) -> Self {
        EventFd {
            inner: if fifo {
                Inner::PeerFifo(fd)
            } else {
                Inner::Single(fd)
            },
        }
    }

    /// The fd to wait on (register it with `poll`/`epoll`/mio for readable).
    pub fn read_fd(&self) -> BorrowedFd<'_> {
        match &self.inner {
            Inner::Single(fd) | Inner::PeerFifo(fd) | Inner::Pipe { read: fd, .. } => fd.as_fd(),
        }
    }

    /// The fd signals are written to.
    pub fn write_fd(&self) -> BorrowedFd<'_> {
        match &self.inner {
            Inner::Single(fd) | Inner::PeerFifo(fd) | Inner::Pipe { write: fd, .. } => fd.as_fd(),
        }
    }

    /// Whether this is the pipe variant (two fds).
    pub fn is_pipe(&self) -> bool {
        matches!(self.inner, Inner::Pipe { .. })
    }

    /// Whether reads may return part of what is pending (a pipe), so that
    /// consuming reads until a short read.
    fn is_stream(&self) -> bool {
        matches!(self.inner, Inner::Pipe { .. } | Inner::PeerFifo(_))
    }

    /// Duplicates the notifier (close-on-exec duplicates of its fds), e.g. to
    /// keep one copy and send the other to a peer.
    pub fn try_clone(&self) -> io::Result<Self> {
        let dup = |fd: &OwnedFd| rustix::io::fcntl_dupfd_cloexec(fd, 0);
        let inner = match &self.inner {
            Inner::Single(fd) => Inner::Single(dup(fd)?),
            Inner::PeerFifo(fd) => Inner::PeerFifo(dup(fd)?),
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
    ///
    /// This never blocks on a non-blocking fd (every fd [`EventFd::new`]
    /// with `nonblocking`, [`EventFd::pipe`] and
    /// [`from_peer`](Self::from_peer) make). On a blocking fd whose counter
    /// is saturated (or pipe full) it blocks until the reader consumes;
    /// [`signal_nowait`](Self::signal_nowait) avoids that.
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

    /// Like [`signal`](Self::signal), but first checks with `poll` (zero
    /// timeout) that the fd is writable, and does not write if it is not
    /// (the reader has a signal pending then): one more system call, but it
    /// does not block even if the peer cleared `O_NONBLOCK` on the open file
    /// description it shares with us, unless the peer fills the counter in
    /// the instant between the `poll` and the `write` and then stops reading.
    pub fn signal_nowait(&self) -> io::Result<()> {
        let fd = self.write_fd();
        let mut pfd = [PollFd::from_borrowed_fd(fd, PollFlags::OUT)];
        loop {
            match poll(&mut pfd, Some(&Timespec::default())) {
                Ok(_) => break,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let revents = pfd[0].revents();
        if revents.contains(PollFlags::OUT) {
            return self.signal();
        }
        if revents.intersects(PollFlags::ERR | PollFlags::HUP | PollFlags::NVAL) {
            // Let the write report what is wrong (EPIPE for a pipe without
            // a reader).
            return self.signal();
        }
        Ok(())
    }

    /// Consumes the pending signals without blocking: `true` if there were
    /// any. A pipe is drained of every pending signal (up to
    /// [`MAX_DRAIN_BYTES`] per call).
    ///
    /// Readiness is checked with `poll` first, so this does not block on a
    /// blocking fd either, as long as no other thread consumes the same fd
    /// between the `poll` and the `read`. A notifier that can never be
    /// signalled again ([`Consumed::Closed`] of [`consume`](Self::consume),
    /// e.g. a pipe whose writing end is closed) is an `UnexpectedEof` error
    /// (it would otherwise look readable forever).
    pub fn try_consume(&self) -> io::Result<bool> {
        match self.consume()? {
            Consumed::Signalled => Ok(true),
            Consumed::Nothing => Ok(false),
            Consumed::Closed => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "notifier closed by its writer",
            )),
        }
    }

    /// Consumes the pending signals without blocking, and tells whether there
    /// were any or whether the notifier is closed for good
    /// ([`Consumed::Closed`]: the pipe's writers are gone, or `poll` reports
    /// hang-up or error with nothing left to read). Any other failure of
    /// `poll` or `read` is an `Err`.
    ///
    /// Signals still buffered when the writers went away are reported first
    /// (`Signalled`), `Closed` on the next call. Like
    /// [`try_consume`](Self::try_consume), this does not block on a blocking
    /// fd (it polls first) and drains a pipe of at most [`MAX_DRAIN_BYTES`].
    pub fn consume(&self) -> io::Result<Consumed> {
        let fd = self.read_fd();
        let stream = self.is_stream();
        let mut consumed = false;
        let mut total = 0usize;
        loop {
            let revents = poll_in(fd, Some(Duration::ZERO))?;
            if revents.is_empty() {
                break;
            }
            let mut buf = [0u8; DRAIN_CHUNK];
            match rustix::io::read(fd, &mut buf) {
                Ok(0) if consumed => break,
                Ok(0) => return Ok(Consumed::Closed),
                Ok(n) => {
                    consumed = true;
                    total = total.saturating_add(n);
                    if n < DRAIN_CHUNK || !stream || total >= MAX_DRAIN_BYTES {
                        break;
                    }
                }
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN)
                    if !consumed
                        && revents
                            .intersects(PollFlags::ERR | PollFlags::HUP | PollFlags::NVAL) =>
                {
                    // Ready by hang-up or error, yet nothing to read: it
                    // would be "ready" forever.
                    return Ok(Consumed::Closed);
                }
                Err(Errno::AGAIN) => break,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(if consumed {
            Consumed::Signalled
        } else {
            Consumed::Nothing
        })
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
    Ok(!poll_in(fd, timeout)?.is_empty())
}

/// Like [`readable`], but returns the events `poll` reported (empty on
/// timeout).
fn poll_in(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<PollFlags> {
    let ts = timeout.map(|t| Timespec {
        tv_sec: i64::try_from(t.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(t.subsec_nanos()),
    });
    let mut pfd = [PollFd::from_borrowed_fd(fd, PollFlags::IN)];
    loop {
        match poll(&mut pfd, ts.as_ref()) {
            Ok(0) => return Ok(PollFlags::empty()),
            Ok(_) => return Ok(pfd[0].revents()),
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
