//! Bytes and file descriptors over a Unix stream socket (SCM_RIGHTS).
//!
//! vhost-user sends the fds of a message as ancillary data of the `sendmsg`
//! that carries the first byte of its header, at most
//! [`MAX_FDS_PER_MESSAGE`] of them (spec §1). The receive side makes room for
//! [`RECV_FD_CAPACITY`] fds, more than the protocol allows, so that a peer
//! sending too many is seen (the protocol core counts and drops the extras)
//! rather than silently truncated; beyond that the kernel truncates and
//! [`recv_with_fds`] reports [`OsError::ControlTruncated`].
//!
//! Both functions work on blocking and non-blocking sockets: on a
//! non-blocking socket that is not ready they return an error of kind
//! [`io::ErrorKind::WouldBlock`]. `EINTR` is retried.
//!
//! Against a peer that stalls (stops reading, or trickles), the deadline
//! variants [`send_all_with_fds_deadline`] and [`recv_with_fds_deadline`]
//! give up at an [`Instant`] with [`io::ErrorKind::TimedOut`], on blocking
//! sockets too (`MSG_DONTWAIT` per call, `poll` in between), without
//! touching the socket's mode.
//!
//! ```
//! use std::os::fd::AsFd;
//! use std::os::unix::net::UnixStream;
//! use vhost_backend::os::eventfd::EventFd;
//! use vhost_backend::os::socket::{recv_with_fds, send_all_with_fds};
//!
//! let (front, back) = UnixStream::pair()?;
//! let kick = EventFd::new(false)?;
//! send_all_with_fds(&front, b"header+payload", &[kick.as_fd()])?;
//!
//! let mut buf = [0u8; 64];
//! let mut fds = Vec::new();
//! let n = recv_with_fds(&back, &mut buf, &mut fds)?;
//! assert_eq!(&buf[..n], b"header+payload");
//! assert_eq!(fds.len(), 1);
//!
//! // The received fd is the same eventfd: a signal through it wakes `kick`.
//! let received = EventFd::from_fd(fds.remove(0));
//! received.signal()?;
//! assert!(kick.try_consume()?);
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::io::Errno;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, recvmsg, sendmsg,
};

use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::{BindError, OsError};

/// The most fds one vhost-user message may carry (spec §1).
pub const MAX_FDS_PER_MESSAGE: usize = 8;

/// How many fds one [`recv_with_fds`] can receive before the kernel truncates
/// the control data.
pub const RECV_FD_CAPACITY: usize = 32;

const SEND_SPACE: usize = rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE));
const RECV_SPACE: usize = rustix::cmsg_space!(ScmRights(RECV_FD_CAPACITY));

/// Sends `bytes` with `fds` attached in one `sendmsg` (`MSG_NOSIGNAL`: a
/// closed peer is an `EPIPE` error, not a signal).
///
/// Returns how many bytes went out, which may be fewer than `bytes.len()`;
/// the fds go with the first byte, so send the rest without fds (or use
/// [`send_all_with_fds`]). More than [`MAX_FDS_PER_MESSAGE`] fds, or fds with
/// no byte to carry them, is an error (kind `InvalidInput`, with
/// [`OsError::TooManyFds`] / [`OsError::FdsWithoutData`] inside).
pub fn send_with_fds<S: AsFd>(sock: S, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    send_with_flags(sock.as_fd(), bytes, fds, SendFlags::empty())
}

/// [`send_with_fds`] with `extra` flags (`MSG_DONTWAIT`) on the `sendmsg`.
fn send_with_flags(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
    extra: SendFlags,
) -> io::Result<usize> {
    if fds.len() > MAX_FDS_PER_MESSAGE {
        return Err(OsError::TooManyFds {
            count: fds.len(),
            max: MAX_FDS_PER_MESSAGE,
        }
        .into());
    }
    if bytes.is_empty() && !fds.is_empty() {
        return Err(OsError::FdsWithoutData { count: fds.len() }.into());
    }
    let iov = [IoSlice::new(bytes)];
    let mut space = [MaybeUninit::<u8>::uninit(); SEND_SPACE];
    loop {
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            // Cannot happen: the buffer is sized for MAX_FDS_PER_MESSAGE.
            return Err(OsError::TooManyFds {
                count: fds.len(),
                max: MAX_FDS_PER_MESSAGE,
            }
            .into());
        }
        match sendmsg(sock, &iov, &mut control, SendFlags::NOSIGNAL | extra) {
            Err(Errno::INTR) => continue,
            other => return other.map_err(io::Error::from),
        }
    }
}

/// Sends the whole of `bytes`, with `fds` on the first `sendmsg` only (the
/// spec requires the fds to travel with the first byte of the header).
///
/// If the first `sendmsg` cannot send anything on a non-blocking socket, this
/// returns `WouldBlock` and nothing was sent. Once the first byte is out, the
/// message is never left half-written: on `WouldBlock` it waits with `poll`
/// for the socket to become writable and continues. A peer that closes the
/// connection is an error (`BrokenPipe`), as is `sendmsg` writing 0 bytes.
pub fn send_all_with_fds<S: AsFd>(sock: S, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let sock = sock.as_fd();
    let mut sent = send_with_fds(sock, bytes, fds)?;
    if sent == 0 && !bytes.is_empty() {
        return Err(io::ErrorKind::WriteZero.into());
    }
    while let Some(rest) = bytes.get(sent..).filter(|r| !r.is_empty()) {
        match send_with_fds(sock, rest, &[]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait_for(sock, PollFlags::OUT)?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Receives bytes into `buf` with one `recvmsg`, appending the fds that came
/// with them to `fds_out`.
///
/// Returns the number of bytes read; 0 means the peer closed the connection
/// (or `buf` is empty). The fds are received close-on-exec
/// (`MSG_CMSG_CLOEXEC`). Up to [`RECV_FD_CAPACITY`] fds are returned even
/// though the protocol allows only [`MAX_FDS_PER_MESSAGE`]: checking the count
/// is the protocol layer's job. If the peer sent even more, the kernel
/// truncates the control data: the fds that arrived are closed and the error
/// (kind `InvalidData`) holds [`OsError::ControlTruncated`]; the bytes of that
/// read are lost, so the connection cannot continue.
///
/// On a non-blocking socket with nothing to read, returns `WouldBlock`.
/// `EINTR` is retried.
pub fn recv_with_fds<S: AsFd>(
    sock: S,
    buf: &mut [u8],
    fds_out: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    recv_with_flags(sock.as_fd(), buf, fds_out, RecvFlags::empty())
}

/// [`recv_with_fds`] with `extra` flags (`MSG_DONTWAIT`) on the `recvmsg`.
fn recv_with_flags(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds_out: &mut Vec<OwnedFd>,
    extra: RecvFlags,
) -> io::Result<usize> {
    let mut space = [MaybeUninit::<u8>::uninit(); RECV_SPACE];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = loop {
        let mut iov = [IoSliceMut::new(buf)];
        match recvmsg(
            sock,
            &mut iov,
            &mut control,
            RecvFlags::CMSG_CLOEXEC | extra,
        ) {
            Err(Errno::INTR) => continue,
            other => break other?,
        }
    };
    // Take ownership of every fd that arrived first, so that none leaks
    // whatever happens next.
    let mut received = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = message {
            received.extend(fds);
        }
    }
    if msg.flags.contains(ReturnFlags::CTRUNC) {
        log::warn!(
            "recvmsg: control data truncated, closing {} received fds",
            received.len()
        );
        drop(received);
        return Err(OsError::ControlTruncated { bytes: msg.bytes }.into());
    }
    fds_out.append(&mut received);
    Ok(msg.bytes)
}

/// Sends the whole of `bytes`, with `fds` on the first `sendmsg`, or gives
/// up at `deadline` with an error of kind [`io::ErrorKind::TimedOut`]: the
/// stall defence against a peer that stops reading (or reads a byte now and
/// then, which a per-call `SO_SNDTIMEO` would not catch).
///
/// Works on blocking and non-blocking sockets alike without changing their
/// mode: each `sendmsg` has `MSG_DONTWAIT` (a flag of the call, not of the
/// open file description shared with the peer), and between them the
/// socket is polled for `POLLOUT` until the deadline. A deadline already
/// past still makes one attempt. `EINTR` is retried.
///
/// On `TimedOut` the message may be partly sent (the error message says how
/// much): the stream is then out of step and the connection must be closed.
/// Other errors are those of [`send_all_with_fds`] (`BrokenPipe` for a
/// closed peer, `WriteZero`, the fd-count errors).
pub fn send_all_with_fds_deadline<S: AsFd>(
    sock: S,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
    deadline: Instant,
) -> io::Result<()> {
    let sock = sock.as_fd();
    if bytes.is_empty() {
        return send_with_flags(sock, bytes, fds, SendFlags::DONTWAIT).map(drop);
    }
    let mut sent = 0usize;
    while let Some(rest) = bytes.get(sent..).filter(|r| !r.is_empty()) {
        let with = if sent == 0 { fds } else { &[] };
        match send_with_flags(sock, rest, with, SendFlags::DONTWAIT) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !wait_until(sock, PollFlags::OUT, deadline)? {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "send deadline passed with {sent} of {} bytes sent",
                            bytes.len()
                        ),
                    ));
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Like [`recv_with_fds`] (one `recvmsg`, fds appended to `fds_out`), but
/// waits at most until `deadline` for something to read: an error of kind
/// [`io::ErrorKind::TimedOut`] if nothing came. Works on blocking and
/// non-blocking sockets without changing their mode (`MSG_DONTWAIT` per
/// call); a deadline already past still makes one attempt.
pub fn recv_with_fds_deadline<S: AsFd>(
    sock: S,
    buf: &mut [u8],
    fds_out: &mut Vec<OwnedFd>,
    deadline: Instant,
) -> io::Result<usize> {
    let sock = sock.as_fd();
    loop {
        match recv_with_flags(sock, buf, fds_out, RecvFlags::DONTWAIT) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !wait_until(sock, PollFlags::IN, deadline)? {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "receive deadline passed with nothing received",
                    ));
                }
            }
            other => return other,
        }
    }
}

/// Waits until `fd` is ready for `events` (or reports an error or hang-up,
/// which the next call on it then returns) or `deadline` passes: `true` if
/// ready, `false` at the deadline. `EINTR` is retried with the time left.
pub fn wait_until(fd: BorrowedFd<'_>, events: PollFlags, deadline: Instant) -> io::Result<bool> {
    let mut pfd = [PollFd::from_borrowed_fd(fd, events)];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ts = Timespec {
            tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        match poll(&mut pfd, Some(&ts)) {
            Ok(0) if left.is_zero() => return Ok(false),
            Ok(0) => continue,
            Ok(_) => return Ok(true),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Blocks until `fd` is ready for `events` (retrying `EINTR`).
pub(crate) fn wait_for(fd: BorrowedFd<'_>, events: PollFlags) -> io::Result<()> {
    let mut pfd = [PollFd::from_borrowed_fd(fd, events)];
    loop {
        match poll(&mut pfd, None) {
            Ok(_) => return Ok(()),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Removes `path` if it is a socket nobody accepts on.
pub fn remove_stale_socket(path: &Path) -> Result<(), BindError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(path, "stat", e)),
    };
    if !meta.file_type().is_socket() {
        return Err(BindError::NotASocket {
            path: path.to_owned(),
        });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(BindError::AddrInUse {
            path: path.to_owned(),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            log::info!("vhost-backend: removing stale socket {}", path.display());
            std::fs::remove_file(path).map_err(|e| io_err(path, "unlink", e))
        }
        Err(e) => Err(io_err(path, "connect", e)),
    }
}

fn io_err(path: &Path, op: &'static str, source: io::Error) -> BindError {
    BindError::Io {
        path: path.to_owned(),
        op,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::memfd;
    use crate::os::test_util::same_file;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    fn memfds(n: usize) -> Vec<OwnedFd> {
        (0..n)
            .map(|i| memfd::create(&format!("t{i}"), 4096).unwrap())
            .collect()
    }

    #[test]
    fn zero_to_eight_fds_arrive_and_refer_to_the_same_files() {
        let (a, b) = UnixStream::pair().unwrap();
        for n in 0..=MAX_FDS_PER_MESSAGE {
            let files = memfds(n);
            let borrowed: Vec<_> = files.iter().map(|f| f.as_fd()).collect();
            let msg = [n as u8; 12];
            send_all_with_fds(&a, &msg, &borrowed).unwrap();
            let mut buf = [0u8; 12];
            let mut got = Vec::new();
            assert_eq!(recv_with_fds(&b, &mut buf, &mut got).unwrap(), 12);
            assert_eq!(buf, msg);
            assert_eq!(got.len(), n);
            for (sent, recvd) in files.iter().zip(&got) {
                assert_ne!(sent.as_raw_fd(), recvd.as_raw_fd());
                assert!(same_file(sent, recvd));
            }
        }
    }

    #[test]
    fn received_fds_are_cloexec() {
        let (a, b) = UnixStream::pair().unwrap();
        let f = memfds(2);
        send_with_fds(&a, b"x", &[f[0].as_fd(), f[1].as_fd()]).unwrap();
        let mut got = Vec::new();
        recv_with_fds(&b, &mut [0u8; 4], &mut got).unwrap();
        assert_eq!(got.len(), 2);
        for fd in &got {
            let flags = rustix::io::fcntl_getfd(fd).unwrap();
            assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
        }
    }

    #[test]
    fn too_many_fds_to_send_is_an_error() {
        let (a, _b) = UnixStream::pair().unwrap();
        let f = memfds(MAX_FDS_PER_MESSAGE + 1);
        let borrowed: Vec<_> = f.iter().map(|f| f.as_fd()).collect();
        let err = send_with_fds(&a, b"x", &borrowed).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(matches!(
            OsError::from_io(&err),
            Some(OsError::TooManyFds { count: 9, max: 8 })
        ));
        let err = send_with_fds(&a, b"", &borrowed[..1]).unwrap_err();
        assert!(matches!(
            OsError::from_io(&err),
            Some(OsError::FdsWithoutData { count: 1 })
        ));
    }

    #[test]
    fn more_fds_than_the_receive_buffer_is_ctrunc_and_closes_what_arrived() {
        let (a, b) = UnixStream::pair().unwrap();
        let f = memfds(RECV_FD_CAPACITY + 8);
        let borrowed: Vec<_> = f.iter().map(|f| f.as_fd()).collect();
        // Bypass our own limit to play a hostile peer.
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(40))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(&borrowed)));
        sendmsg(
            &a,
            &[IoSlice::new(b"hostile")],
            &mut control,
            SendFlags::NOSIGNAL,
        )
        .unwrap();
        let mut got = Vec::new();
        let err = recv_with_fds(&b, &mut [0u8; 16], &mut got).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(matches!(
            OsError::from_io(&err),
            Some(OsError::ControlTruncated { bytes: 7 })
        ));
        assert!(got.is_empty());
        // That the fds which did arrive were closed is checked by counting
        // /proc/self/fd in tests/os_fd_leaks.rs (a process of its own, one
        // test, so no other thread opens fds meanwhile).
    }

    #[test]
    fn a_message_split_across_reads_keeps_its_fds_on_the_first() {
        let (a, b) = UnixStream::pair().unwrap();
        let f = memfds(3);
        let borrowed: Vec<_> = f.iter().map(|f| f.as_fd()).collect();
        send_all_with_fds(&a, b"0123456789ab", &borrowed).unwrap();
        let mut got = Vec::new();
        let mut head = [0u8; 5];
        assert_eq!(recv_with_fds(&b, &mut head, &mut got).unwrap(), 5);
        assert_eq!(&head, b"01234");
        assert_eq!(got.len(), 3);
        let mut rest = [0u8; 7];
        let mut more = Vec::new();
        assert_eq!(recv_with_fds(&b, &mut rest, &mut more).unwrap(), 7);
        assert_eq!(&rest, b"56789ab");
        assert!(more.is_empty());
    }

    #[test]
    fn nonblocking_sockets_report_would_block_and_peer_close_is_zero() {
        let (a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        let err = recv_with_fds(&b, &mut [0u8; 8], &mut got).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);

        // Fill a non-blocking sender until it would block.
        a.set_nonblocking(true).unwrap();
        let chunk = [0u8; 4096];
        let err = loop {
            match send_with_fds(&a, &chunk, &[]) {
                Ok(_) => {}
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);

        drop(a);
        let mut buf = [0u8; 4096];
        while recv_with_fds(&b, &mut buf, &mut got).unwrap() != 0 {}
        assert!(got.is_empty());
    }

    #[test]
    fn send_all_completes_a_large_message_on_a_nonblocking_socket() {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let f = memfds(1);
        let msg: Vec<u8> = (0..1 << 20).map(|i| i as u8).collect();
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            let mut fds = Vec::new();
            let mut buf = vec![0u8; 65536];
            loop {
                let n = recv_with_fds(&b, &mut buf, &mut fds).unwrap();
                if n == 0 {
                    break;
                }
                all.extend_from_slice(&buf[..n]);
            }
            (all, fds.len())
        });
        send_all_with_fds(&a, &msg, &[f[0].as_fd()]).unwrap();
        drop(a);
        let (all, nfds) = reader.join().unwrap();
        assert_eq!(all, msg);
        assert_eq!(nfds, 1);
    }

    #[test]
    fn a_send_to_a_peer_that_never_reads_times_out_at_the_deadline() {
        let (a, _b) = UnixStream::pair().unwrap();
        let f = memfds(1);
        let msg = vec![7u8; 8 << 20];
        let start = Instant::now();
        let deadline = start + Duration::from_millis(200);
        let err = send_all_with_fds_deadline(&a, &msg, &[f[0].as_fd()], deadline).unwrap_err();
        let took = start.elapsed();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(err.to_string().contains("of 8388608 bytes sent"), "{err}");
        assert!(took >= Duration::from_millis(200), "{took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
        // The socket's own mode is untouched (still blocking).
        let fl = rustix::fs::fcntl_getfl(&a).unwrap();
        assert!(!fl.contains(rustix::fs::OFlags::NONBLOCK));
    }

    #[test]
    fn a_deadline_send_completes_with_a_reader_and_carries_the_fds() {
        let (a, b) = UnixStream::pair().unwrap();
        let f = memfds(2);
        let msg: Vec<u8> = (0..1 << 20).map(|i| (i * 7) as u8).collect();
        let reader = std::thread::spawn(move || {
            let (mut all, mut fds) = (Vec::new(), Vec::new());
            let mut buf = vec![0u8; 65536];
            loop {
                let deadline = Instant::now() + Duration::from_secs(10);
                let n = recv_with_fds_deadline(&b, &mut buf, &mut fds, deadline).unwrap();
                if n == 0 {
                    break;
                }
                all.extend_from_slice(&buf[..n]);
            }
            (all, fds.len())
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        send_all_with_fds_deadline(&a, &msg, &[f[0].as_fd(), f[1].as_fd()], deadline).unwrap();
        drop(a);
        let (all, nfds) = reader.join().unwrap();
        assert_eq!(all, msg);
        assert_eq!(nfds, 2);
    }

    #[test]
    fn deadline_helpers_report_errors_and_past_deadlines() {
        let (a, b) = UnixStream::pair().unwrap();
        // A past deadline still makes one attempt, which succeeds here.
        let past = Instant::now() - Duration::from_millis(1);
        send_all_with_fds_deadline(&a, b"hello", &[], past).unwrap();
        let mut buf = [0u8; 8];
        let mut fds = Vec::new();
        assert_eq!(
            recv_with_fds_deadline(&b, &mut buf, &mut fds, past).unwrap(),
            5
        );
        // Nothing more to read: TimedOut once the deadline passes.
        let start = Instant::now();
        let err = recv_with_fds_deadline(&b, &mut buf, &mut fds, start + Duration::from_millis(50))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(start.elapsed() >= Duration::from_millis(50));
        assert!(!wait_until(b.as_fd(), PollFlags::IN, past).unwrap());
        // The usual errors.
        let f = memfds(1);
        let err = send_all_with_fds_deadline(&a, b"", &[f[0].as_fd()], past).unwrap_err();
        assert!(matches!(
            OsError::from_io(&err),
            Some(OsError::FdsWithoutData { count: 1 })
        ));
        send_all_with_fds_deadline(&a, b"", &[], past).unwrap();
        drop(b);
        let err = send_all_with_fds_deadline(&a, b"x", &[], past).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn sending_to_a_closed_peer_is_broken_pipe_not_sigpipe() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let err = send_all_with_fds(&a, b"x", &[]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
