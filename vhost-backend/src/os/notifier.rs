//! Checking the notifier fds a front-end sends (kick, call and err fds of
//! SET_VRING_KICK/CALL/ERR, spec §7.5) before the runtime uses them.
//!
//! A hostile front-end can send any fd as a notifier. Without a check, a
//! regular file or `/dev/zero` as a kick fd is readable forever (the runner
//! spins), a blocking eventfd whose counter the peer saturated makes a signal
//! block forever, and a socket or a directory fails in ways that are hard to
//! attribute. [`EventFd::from_peer`] accepts only:
//!
//! - an eventfd (not in semaphore mode for a kick: `EFD_SEMAPHORE` hands out
//!   one count per read, so a count of 2^64 - 2 would wake us that often);
//! - a pipe or FIFO, opened for reading for a kick, for writing for a call or
//!   err fd (or `O_RDWR`),
//!
//! refuses anything else with a [`NotifierError`] that names what the fd is
//! ([`FdKind`]), and sets `O_NONBLOCK` (and `FD_CLOEXEC`) on what it accepts.
//!
//! The type is found with `fstat` and, for anonymous inodes (eventfd, epoll,
//! timerfd, ...), with `readlink("/proc/self/fd/N")` (`anon_inode:[eventfd]`)
//! and `/proc/self/fdinfo/N` (`eventfd-semaphore:`, Linux 6.6 and later;
//! before that a semaphore eventfd cannot be told apart and is accepted).
//! Without `/proc` an anonymous inode cannot be identified and is refused
//! ([`NotifierError::Io`]).
//!
//! ```
//! use std::os::fd::OwnedFd;
//! use vhost_backend::os::eventfd::EventFd;
//! use vhost_backend::os::notifier::{FdKind, NotifierError, NotifierRole};
//!
//! let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
//! let kick = EventFd::from_peer(r, NotifierRole::Kick)?;
//! let call = EventFd::from_peer(w, NotifierRole::Call)?;
//! call.signal()?;
//! assert!(kick.try_consume()?);
//!
//! let zero = OwnedFd::from(std::fs::File::open("/dev/zero")?);
//! let err = EventFd::from_peer(zero, NotifierRole::Kick).unwrap_err();
//! assert!(matches!(err, NotifierError::Refused { kind: FdKind::CharDevice { major: 1, minor: 5 }, .. }));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use rustix::fs::{FileType, OFlags};
use rustix::io::FdFlags;

use crate::os::eventfd::EventFd;

/// What a notifier fd is for, which decides the pipe end it must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NotifierRole {
    /// The kick fd (SET_VRING_KICK): the back-end waits on it and reads it.
    Kick,
    /// The call fd (SET_VRING_CALL): the back-end writes it.
    Call,
    /// The err fd (SET_VRING_ERR): the back-end writes it.
    Err,
}

impl NotifierRole {
    /// Whether the back-end reads this notifier (else it writes it).
    pub fn reads(self) -> bool {
        matches!(self, NotifierRole::Kick)
    }
}

impl fmt::Display for NotifierRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NotifierRole::Kick => "kick",
            NotifierRole::Call => "call",
            NotifierRole::Err => "err",
        })
    }
}

/// The access mode an fd was opened with (`O_ACCMODE` of `F_GETFL`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AccessMode {
    /// `O_RDONLY` (the reading end of a pipe).
    ReadOnly,
    /// `O_WRONLY` (the writing end of a pipe).
    WriteOnly,
    /// `O_RDWR`.
    ReadWrite,
}

impl AccessMode {
    fn from_flags(flags: OFlags) -> Self {
        let mode = flags & OFlags::RWMODE;
        if mode == OFlags::WRONLY {
            AccessMode::WriteOnly
        } else if mode == OFlags::RDWR {
            AccessMode::ReadWrite
        } else {
            AccessMode::ReadOnly
        }
    }

    /// Whether reading is allowed.
    pub fn can_read(self) -> bool {
        !matches!(self, AccessMode::WriteOnly)
    }

    /// Whether writing is allowed.
    pub fn can_write(self) -> bool {
        !matches!(self, AccessMode::ReadOnly)
    }
}

impl fmt::Display for AccessMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AccessMode::ReadOnly => "read-only",
            AccessMode::WriteOnly => "write-only",
            AccessMode::ReadWrite => "read-write",
        })
    }
}

/// What kind of file an fd refers to, as [`identify`] finds it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FdKind {
    /// An eventfd; `semaphore`: created with `EFD_SEMAPHORE` (known on Linux
    /// 6.6 and later only, `false` before).
    EventFd {
        /// Created with `EFD_SEMAPHORE`.
        semaphore: bool,
    },
    /// A pipe or a FIFO, and how this fd was opened.
    Fifo {
        /// The access mode of this fd.
        access: AccessMode,
    },
    /// A regular file (a memfd, a file on disk).
    RegularFile,
    /// A directory.
    Directory,
    /// A character device (`/dev/zero` is 1:5, `/dev/null` 1:3).
    CharDevice {
        /// The device's major number.
        major: u32,
        /// The device's minor number.
        minor: u32,
    },
    /// A block device.
    BlockDevice {
        /// The device's major number.
        major: u32,
        /// The device's minor number.
        minor: u32,
    },
    /// A socket.
    Socket,
    /// A symbolic link (only an `O_PATH | O_NOFOLLOW` fd can be one).
    Symlink,
    /// An `O_PATH` fd, which can be neither read nor written.
    PathOnly,
    /// Another anonymous inode: `[eventpoll]`, `[timerfd]`, `[signalfd]`,
    /// `[pidfd]`, `[io_uring]`, ...
    AnonInode {
        /// The name in its `/proc/self/fd` link, e.g. `[eventpoll]`.
        name: String,
    },
    /// None of the above.
    Unknown {
        /// `st_mode` from `fstat`.
        mode: u32,
        /// The fd's `/proc/self/fd` link, if it could be read.
        link: String,
    },
}

impl fmt::Display for FdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FdKind::EventFd { semaphore: false } => f.write_str("an eventfd"),
            FdKind::EventFd { semaphore: true } => f.write_str(
                "a semaphore-mode eventfd (EFD_SEMAPHORE: each read takes one count, \
                 so a large count would wake us that many times)",
            ),
            FdKind::Fifo { access } => write!(f, "a pipe or FIFO opened {access}"),
            FdKind::RegularFile => f.write_str("a regular file"),
            FdKind::Directory => f.write_str("a directory"),
            FdKind::CharDevice { major, minor } => {
                write!(f, "a character device ({major}:{minor})")
            }
            FdKind::BlockDevice { major, minor } => {
                write!(f, "a block device ({major}:{minor})")
            }
            FdKind::Socket => f.write_str("a socket"),
            FdKind::Symlink => f.write_str("a symbolic link"),
            FdKind::PathOnly => f.write_str("an O_PATH fd"),
            FdKind::AnonInode { name } => write!(f, "an anonymous inode {name}"),
            FdKind::Unknown { mode, link } => {
                write!(f, "an unknown kind of file (mode {mode:#o}, {link:?})")
            }
        }
    }
}

/// Why a notifier fd from a peer was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotifierError {
    /// The fd is neither an eventfd nor a pipe/FIFO (or is a semaphore-mode
    /// eventfd as a kick fd).
    #[error("{role} fd refused: it is {kind}; a notifier must be an eventfd or a pipe")]
    Refused {
        /// What the fd was sent as.
        role: NotifierRole,
        /// What the fd is.
        kind: FdKind,
    },
    /// A pipe/FIFO opened the wrong way: a kick fd must be readable, a call
    /// or err fd writable.
    #[error(
        "{role} fd refused: it is a pipe opened {access}, but the back-end must {} it",
        if role.reads() { "read" } else { "write" }
    )]
    WrongPipeEnd {
        /// What the fd was sent as.
        role: NotifierRole,
        /// How the pipe end was opened.
        access: AccessMode,
    },
    /// A system call needed to check the fd or to make it non-blocking
    /// failed (or `/proc` is missing, so an anonymous inode cannot be
    /// identified).
    #[error("{role} fd: {op} failed: {source}")]
    Io {
        /// What the fd was sent as.
        role: NotifierRole,
        /// The operation.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl From<NotifierError> for io::Error {
    /// `InvalidInput` for a refused fd, the OS error's own kind for
    /// [`NotifierError::Io`]; the [`NotifierError`] is kept inside.
    fn from(e: NotifierError) -> Self {
        let kind = match &e {
            NotifierError::Io { source, .. } => source.kind(),
            _ => io::ErrorKind::InvalidInput,
        };
        io::Error::new(kind, e)
    }
}

/// Identifies what `fd` is: `fcntl(F_GETFL)`, `fstat`, and for anonymous
/// inodes the `/proc/self/fd` link and fdinfo. Opens no fd that outlives the
/// call (reading fdinfo opens one briefly, close-on-exec).
pub fn identify(fd: BorrowedFd<'_>) -> io::Result<FdKind> {
    let flags = rustix::fs::fcntl_getfl(fd)?;
    if flags.contains(OFlags::PATH) {
        return Ok(FdKind::PathOnly);
    }
    let st = rustix::fs::fstat(fd)?;
    let raw = fd.as_raw_fd();
    let link = rustix::fs::readlink(format!("/proc/self/fd/{raw}"), Vec::new())
        .map(|l| l.to_string_lossy().into_owned());
    // Anonymous inodes first, whatever mode they report (0600 without a file
    // type today; some kernels have given them other modes).
    if let Ok(link) = &link
        && let Some(name) = link.strip_prefix("anon_inode:")
    {
        if name == "[eventfd]" {
            return Ok(FdKind::EventFd {
                semaphore: eventfd_is_semaphore(raw),
            });
        }
        return Ok(FdKind::AnonInode {
            name: name.to_owned(),
        });
    }
    let dev = || (rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev));
    Ok(match FileType::from_raw_mode(st.st_mode) {
        FileType::Fifo => FdKind::Fifo {
            access: AccessMode::from_flags(flags),
        },
        FileType::RegularFile => FdKind::RegularFile,
        FileType::Directory => FdKind::Directory,
        FileType::CharacterDevice => {
            let (major, minor) = dev();
            FdKind::CharDevice { major, minor }
        }
        FileType::BlockDevice => {
            let (major, minor) = dev();
            FdKind::BlockDevice { major, minor }
        }
        FileType::Socket => FdKind::Socket,
        FileType::Symlink => FdKind::Symlink,
        _ => FdKind::Unknown {
            mode: st.st_mode,
            link: link?,
        },
    })
}

/// Whether fdinfo says the eventfd `raw` is in semaphore mode (`false` if
/// fdinfo does not say: kernels before 6.6).
fn eventfd_is_semaphore(raw: i32) -> bool {
    std::fs::read_to_string(format!("/proc/self/fdinfo/{raw}"))
        .map(|info| {
            info.lines().any(|l| {
                l.strip_prefix("eventfd-semaphore:")
                    .is_some_and(|v| v.trim() == "1")
            })
        })
        .unwrap_or(false)
}

impl EventFd {
    /// Checks a notifier fd received from a peer and wraps it, non-blocking.
    ///
    /// Accepts an eventfd (in semaphore mode only as a call or err fd), or a
    /// pipe/FIFO whose access mode fits `role` (readable for
    /// [`NotifierRole::Kick`], writable for [`NotifierRole::Call`] and
    /// [`NotifierRole::Err`]). Anything else is refused with
    /// [`NotifierError::Refused`] naming what it is, or
    /// [`NotifierError::WrongPipeEnd`]; the fd is closed then (nothing leaks
    /// on any error).
    ///
    /// The accepted fd is made close-on-exec (`FD_CLOEXEC`, a flag of our fd
    /// alone) and non-blocking. `O_NONBLOCK` is a flag of the *open file
    /// description*, which the peer shares: the peer's copy becomes
    /// non-blocking too. That is harmless for eventfds and pipes, whose
    /// users poll before they read and treat `EAGAIN` on write as "a signal
    /// is pending" (as vhost-user front-ends do). The peer can also clear the
    /// flag again at any time; [`EventFd::consume`] polls before it reads, so
    /// a kick never blocks, and [`EventFd::signal_nowait`] polls before it
    /// writes for a caller that must not block even then.
    pub fn from_peer(fd: OwnedFd, role: NotifierRole) -> Result<EventFd, NotifierError> {
        let io_err = |op| {
            move |e: io::Error| NotifierError::Io {
                role,
                op,
                source: e,
            }
        };
        let kind = identify(fd.as_fd()).map_err(io_err("identifying the fd"))?;
        let fifo = match kind {
            FdKind::EventFd { semaphore: true } if role.reads() => {
                return Err(NotifierError::Refused { role, kind });
            }
            FdKind::EventFd { .. } => false,
            FdKind::Fifo { access } => {
                let fits = if role.reads() {
                    access.can_read()
                } else {
                    access.can_write()
                };
                if !fits {
                    return Err(NotifierError::WrongPipeEnd { role, access });
                }
                true
            }
            kind => return Err(NotifierError::Refused { role, kind }),
        };
        let flags = rustix::fs::fcntl_getfl(&fd).map_err(|e| io_err("fcntl(F_GETFL)")(e.into()))?;
        if !flags.contains(OFlags::NONBLOCK) {
            rustix::fs::fcntl_setfl(&fd, flags | OFlags::NONBLOCK)
                .map_err(|e| io_err("fcntl(F_SETFL, O_NONBLOCK)")(e.into()))?;
        }
        let fd_flags =
            rustix::io::fcntl_getfd(&fd).map_err(|e| io_err("fcntl(F_GETFD)")(e.into()))?;
        if !fd_flags.contains(FdFlags::CLOEXEC) {
            rustix::io::fcntl_setfd(&fd, fd_flags | FdFlags::CLOEXEC)
                .map_err(|e| io_err("fcntl(F_SETFD, FD_CLOEXEC)")(e.into()))?;
        }
        Ok(EventFd::from_checked_fd(fd, fifo))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::eventfd::Consumed;
    use crate::os::memfd;
    use rustix::event::{EventfdFlags, eventfd};
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};

    fn dup(fd: impl AsFd) -> OwnedFd {
        rustix::io::fcntl_dupfd_cloexec(fd, 0).unwrap()
    }

    fn nonblocking(fd: BorrowedFd<'_>) -> bool {
        rustix::fs::fcntl_getfl(fd)
            .unwrap()
            .contains(OFlags::NONBLOCK)
    }

    fn refused(fd: OwnedFd, role: NotifierRole) -> FdKind {
        match EventFd::from_peer(fd, role).unwrap_err() {
            NotifierError::Refused { kind, role: r } => {
                assert_eq!(r, role);
                kind
            }
            other => panic!("expected Refused, got {other:?}"),
        }
    }

    #[test]
    fn a_blocking_eventfd_is_accepted_and_made_nonblocking() {
        let ours = eventfd(0, EventfdFlags::CLOEXEC).unwrap();
        assert!(!nonblocking(ours.as_fd()));
        for role in [NotifierRole::Kick, NotifierRole::Call, NotifierRole::Err] {
            let e = EventFd::from_peer(dup(&ours), role).unwrap();
            assert!(nonblocking(e.read_fd()));
            assert!(!e.is_pipe());
        }
        // Shared open file description: ours is non-blocking now too.
        assert!(nonblocking(ours.as_fd()));
        assert_eq!(
            identify(ours.as_fd()).unwrap(),
            FdKind::EventFd { semaphore: false }
        );
    }

    #[test]
    fn a_semaphore_eventfd_is_refused_as_kick_only() {
        let sem = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::SEMAPHORE).unwrap();
        let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", sem.as_raw_fd()))
            .unwrap_or_default();
        if !fdinfo.contains("eventfd-semaphore") {
            eprintln!("kernel too old to tell a semaphore eventfd: skipped");
            return;
        }
        assert_eq!(
            refused(dup(&sem), NotifierRole::Kick),
            FdKind::EventFd { semaphore: true }
        );
        EventFd::from_peer(dup(&sem), NotifierRole::Call).unwrap();
    }

    #[test]
    fn pipe_ends_must_fit_the_role() {
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        assert!(!nonblocking(r.as_fd()));
        let kick = EventFd::from_peer(dup(&r), NotifierRole::Kick).unwrap();
        let call = EventFd::from_peer(dup(&w), NotifierRole::Call).unwrap();
        EventFd::from_peer(dup(&w), NotifierRole::Err).unwrap();
        assert!(nonblocking(r.as_fd()) && nonblocking(w.as_fd()));
        call.signal().unwrap();
        assert_eq!(kick.consume().unwrap(), Consumed::Signalled);
        assert_eq!(kick.consume().unwrap(), Consumed::Nothing);

        let err = EventFd::from_peer(dup(&w), NotifierRole::Kick).unwrap_err();
        assert!(matches!(
            err,
            NotifierError::WrongPipeEnd {
                role: NotifierRole::Kick,
                access: AccessMode::WriteOnly
            }
        ));
        assert!(err.to_string().contains("must read"), "{err}");
        let err = EventFd::from_peer(dup(&r), NotifierRole::Call).unwrap_err();
        assert!(matches!(
            err,
            NotifierError::WrongPipeEnd {
                role: NotifierRole::Call,
                access: AccessMode::ReadOnly
            }
        ));
        assert_eq!(io::Error::from(err).kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn an_rdwr_fifo_serves_every_role() {
        let dir = std::env::temp_dir().join(format!("vhost-fifo-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &dir,
            FileType::Fifo,
            rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
            0,
        )
        .unwrap();
        let fifo = rustix::fs::open(
            &dir,
            OFlags::RDWR | OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(
            identify(fifo.as_fd()).unwrap(),
            FdKind::Fifo {
                access: AccessMode::ReadWrite
            }
        );
        let kick = EventFd::from_peer(dup(&fifo), NotifierRole::Kick).unwrap();
        let call = EventFd::from_peer(dup(&fifo), NotifierRole::Call).unwrap();
        call.signal().unwrap();
        assert!(kick.try_consume().unwrap());
    }

    #[test]
    fn files_devices_sockets_directories_and_epoll_are_refused() {
        let file = memfd::create("notifier", 8).unwrap();
        assert_eq!(refused(file, NotifierRole::Kick), FdKind::RegularFile);
        let zero = OwnedFd::from(std::fs::File::open("/dev/zero").unwrap());
        assert_eq!(
            refused(zero, NotifierRole::Kick),
            FdKind::CharDevice { major: 1, minor: 5 }
        );
        let null = OwnedFd::from(std::fs::File::create("/dev/null").unwrap());
        let err = EventFd::from_peer(null, NotifierRole::Call).unwrap_err();
        assert!(err.to_string().contains("character device (1:3)"), "{err}");
        let (sock, _other) = UnixStream::pair().unwrap();
        assert_eq!(refused(sock.into(), NotifierRole::Call), FdKind::Socket);
        let dir = OwnedFd::from(std::fs::File::open("/").unwrap());
        assert_eq!(refused(dir, NotifierRole::Err), FdKind::Directory);
        let ep = rustix::event::epoll::create(rustix::event::epoll::CreateFlags::CLOEXEC).unwrap();
        assert_eq!(
            refused(ep, NotifierRole::Kick),
            FdKind::AnonInode {
                name: "[eventpoll]".into()
            }
        );
        let path = rustix::fs::open(
            "/",
            OFlags::PATH | OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        assert_eq!(refused(path, NotifierRole::Kick), FdKind::PathOnly);
    }

    #[test]
    fn a_saturated_eventfd_signal_returns_at_once() {
        // The peer's eventfd, blocking, preloaded to the maximum count.
        let peer = eventfd(0, EventfdFlags::CLOEXEC).unwrap();
        rustix::io::write(&peer, &0xffff_ffff_ffff_fffeu64.to_ne_bytes()).unwrap();
        let call = EventFd::from_peer(dup(&peer), NotifierRole::Call).unwrap();
        let start = Instant::now();
        for _ in 0..100 {
            call.signal().unwrap();
            call.signal_nowait().unwrap();
        }
        assert!(start.elapsed() < Duration::from_secs(2));

        // Even if the peer makes it blocking again, signal_nowait does not
        // block.
        let fl = rustix::fs::fcntl_getfl(&peer).unwrap();
        rustix::fs::fcntl_setfl(&peer, fl - OFlags::NONBLOCK).unwrap();
        call.signal_nowait().unwrap();
        // The count is still there for the peer.
        let mut b = [0u8; 8];
        rustix::io::read(&peer, &mut b).unwrap();
        assert_eq!(u64::from_ne_bytes(b), 0xffff_ffff_ffff_fffe);
    }

    #[test]
    fn a_full_pipe_signal_returns_at_once() {
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let call = EventFd::from_peer(w, NotifierRole::Call).unwrap();
        // Fill the pipe (64 KiB by default) through the notifier itself.
        let start = Instant::now();
        for _ in 0..20_000 {
            call.signal().unwrap();
        }
        call.signal_nowait().unwrap();
        assert!(start.elapsed() < Duration::from_secs(2));
        // It is full: a raw non-blocking write would fail.
        assert_eq!(
            rustix::io::write(call.write_fd(), &[0u8; 8]),
            Err(rustix::io::Errno::AGAIN)
        );
        drop(r);
        // No reader left: the signal reports EPIPE (never SIGPIPE: Rust
        // ignores SIGPIPE), rather than succeeding silently.
        assert!(call.signal().is_err());
    }

    #[test]
    fn a_peer_pipe_is_drained_fully_in_one_consume() {
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let kick = EventFd::from_peer(r, NotifierRole::Kick).unwrap();
        let call = EventFd::from_peer(w, NotifierRole::Call).unwrap();
        for _ in 0..10_000 {
            call.signal().unwrap();
        }
        assert_eq!(kick.consume().unwrap(), Consumed::Signalled);
        assert_eq!(kick.consume().unwrap(), Consumed::Nothing);
    }

    #[test]
    fn a_kick_pipe_whose_writer_closed_is_reported_closed() {
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let kick = EventFd::from_peer(r, NotifierRole::Kick).unwrap();
        rustix::io::write(&w, &1u64.to_ne_bytes()).unwrap();
        drop(w);
        // Buffered signals first, then closed, and closed again (no spin,
        // no block).
        assert_eq!(kick.consume().unwrap(), Consumed::Signalled);
        assert_eq!(kick.consume().unwrap(), Consumed::Closed);
        assert_eq!(kick.consume().unwrap(), Consumed::Closed);
        assert_eq!(
            kick.try_consume().unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        assert!(kick.wait().is_err());
    }

    #[test]
    fn a_pipe_a_peer_keeps_filling_is_drained_boundedly() {
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let kick = EventFd::from_peer(r, NotifierRole::Kick).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = std::sync::Arc::clone(&stop);
        let writer = std::thread::spawn(move || {
            let buf = [0u8; 4096];
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = rustix::io::write(&w, &buf);
            }
        });
        let start = Instant::now();
        for _ in 0..20 {
            kick.consume().unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // Unblock the writer if it waits on a full pipe.
        while !writer.is_finished() {
            let _ = kick.consume();
        }
        writer.join().unwrap();
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn the_error_names_the_role_and_kind() {
        let file = memfd::create("notifier", 8).unwrap();
        let err = EventFd::from_peer(file, NotifierRole::Kick).unwrap_err();
        assert_eq!(
            err.to_string(),
            "kick fd refused: it is a regular file; a notifier must be an eventfd or a pipe"
        );
    }
}
