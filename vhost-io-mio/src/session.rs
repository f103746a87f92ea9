//! One back-end connection as a [`mio::event::Source`]: the socket, the protocol core, the
//! write queue and the started queues of one front-end, all driven from the caller's thread.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use mio::net::UnixStream;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use vhost_backend::os::socket::{recv_with_fds, send_with_fds};
use vhost_backend::state::SessionState;
use vhost_backend::{Device, Framer};
use vhost_proto::backend::{Connection, Event, Transmit};

use crate::Error;
use crate::rings::{Inline, Ring, notifiers};

/// Bytes read per `recvmsg`, on the stack of the call (no per-session buffer): the largest
/// request fits, and several small pipelined ones.
const READ_BUF: usize = 8192;

/// `recvmsg` calls per [`Session::ready`] before the session yields to the others: a peer
/// that never stops sending must not starve them. The socket is re-armed (`EPOLL_CTL_MOD`
/// reports it again while it is readable), so nothing is lost.
const READ_BUDGET: usize = 32;

/// Whether a session goes on after [`Session::ready`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Still serving; wait for its next event.
    Open,
    /// The front-end closed the connection; the session is closed (queues stopped, fds
    /// deregistered): drop it.
    Closed,
}

/// A message being written: the fds go with the first byte that leaves.
#[derive(Debug)]
struct Outgoing {
    transmit: Transmit<OwnedFd>,
    sent: usize,
}

/// One front-end connection served in the caller's event loop.
///
/// Register it in your `mio::Poll` with a token of yours ([`mio::Registry::register`]); call
/// [`ready`](Self::ready) whenever an event carries that token. The session registers the
/// kick fds of its started rings (and the device's [`Device::queue_wakeup`] fds) itself,
/// **under the same token**, so one token per session is all the caller manages. Everything
/// is edge-triggered and non-blocking: `ready` reads until `WouldBlock`, writes until the
/// socket is full (the rest waits for the writable edge, with fds on the first byte),
/// consumes every signalled kick and lets the device process those rings, in this thread.
///
/// Interests passed to `register` are ignored: the session needs readable and writable
/// edges of its socket and readable edges of its kick fds.
///
/// Before dropping a session that is still registered, call [`close`](Self::close) (or
/// deregister it): kick fds are shared with the front-end, so epoll would otherwise keep
/// reporting them under the old token until the front-end closes them.
///
/// `D` may be `dyn Device` to serve different device types in one loop.
pub struct Session<D: Device + ?Sized> {
    stream: UnixStream,
    /// The protocol core, the device, guest memory: the event handling shared with the
    /// std binding.
    state: SessionState<D>,
    framer: Framer,
    out: Option<Outgoing>,
    rings: Box<[Ring]>,
    token: Option<Token>,
    closed: bool,
}

impl<D: Device + ?Sized> std::fmt::Debug for Session<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("stream", &self.stream)
            .field("token", &self.token)
            .field("closed", &self.closed)
            .field("rings", &self.rings)
            .finish_non_exhaustive()
    }
}

impl<D: Device + ?Sized> Session<D> {
    /// A session on a connected, non-blocking socket (from [`mio::net::UnixStream`] or
    /// [`Listener::accept`](crate::Listener::accept)).
    pub fn new(stream: UnixStream, device: Arc<D>) -> Self {
        let state = SessionState::new(device);
        let rings = (0..state.connection().rings().len())
            .map(|_| Ring::default())
            .collect();
        Session {
            stream,
            state,
            framer: Framer::default(),
            out: None,
            rings,
            token: None,
            closed: false,
        }
    }

    /// A session on a connected std socket (e.g. the `--fd` convention or one end of a
    /// socketpair); it is switched to non-blocking mode.
    pub fn from_std(stream: std::os::unix::net::UnixStream, device: Arc<D>) -> Result<Self, Error> {
        stream
            .set_nonblocking(true)
            .map_err(|e| Error::io("fcntl(O_NONBLOCK)", e))?;
        Ok(Self::new(UnixStream::from_std(stream), device))
    }

    /// The protocol state (features, rings, memory table, status).
    pub fn connection(&self) -> &Connection<OwnedFd> {
        self.state.connection()
    }

    /// The device.
    pub fn device(&self) -> &Arc<D> {
        self.state.device()
    }

    /// The token the session is registered under, if it is.
    pub fn token(&self) -> Option<Token> {
        self.token
    }

    /// Whether the session has ended ([`ready`](Self::ready) returned `Closed` or an error,
    /// or [`close`](Self::close) was called).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Serves whatever the session's event announced: reads and processes requests until
    /// the socket would block, writes replies, handles the device's side of each request,
    /// and processes every kicked ring. Call it for each event with the session's token
    /// (extra calls are harmless: a few `EAGAIN`s).
    ///
    /// `Ok(Status::Closed)` when the front-end hung up; an error when the connection failed
    /// (the front-end broke the protocol, or a system call failed). Either way the session
    /// is closed and deregistered from `registry`: drop it. The one exception is
    /// [`Error::NotRegistered`]: register the session, then call again.
    pub fn ready(&mut self, registry: &Registry) -> Result<Status, Error> {
        if self.closed {
            return Ok(Status::Closed);
        }
        if self.token.is_none() {
            return Err(Error::NotRegistered);
        }
        let r = match self.drive(registry) {
            // The front-end hung up while we still had replies for it: a disconnect.
            Err(Error::Io { source, .. })
                if matches!(
                    source.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                Ok(Status::Closed)
            }
            r => r,
        };
        if !matches!(r, Ok(Status::Open)) {
            self.shutdown(Some(registry));
        }
        r
    }

    /// Ends the session: stops its queues (the device hears `queue_stopped` and
    /// `disconnected`), deregisters every fd from `registry` and closes the connection.
    pub fn close(mut self, registry: &Registry) {
        self.shutdown(Some(registry));
    }

    fn drive(&mut self, registry: &Registry) -> Result<Status, Error> {
        let mut budget = READ_BUDGET;
        loop {
            let wrote = self.pump(registry)?;
            let read = match self.read(registry, &mut budget)? {
                Read::Eof => return Ok(Status::Closed),
                Read::Some => true,
                Read::Nothing => false,
                Read::Yield => {
                    self.rearm(registry)?;
                    break;
                }
            };
            if self.state.connection().is_closed() {
                return Err(Error::Protocol(vhost_proto::session::FatalError::Closed));
            }
            if !wrote && !read {
                break;
            }
        }
        let mut rings = Inline::new(&mut self.rings, Some(registry), self.token);
        rings.service(self.state.device().as_ref());
        Ok(Status::Open)
    }

    /// Reads until the socket would block (or the connection's input buffer is full: the
    /// writable edge resumes it), feeding each read to the connection.
    fn read(&mut self, registry: &Registry, budget: &mut usize) -> Result<Read, Error> {
        let mut buf = [0u8; READ_BUF];
        let mut got = false;
        loop {
            if *budget == 0 {
                return Ok(Read::Yield);
            }
            *budget -= 1;
            let room = self.state.connection().input_room().min(READ_BUF);
            if room == 0 {
                break;
            }
            let mut fds = Vec::new();
            let read = buf.get_mut(..room).unwrap_or_default();
            let n = match recv_with_fds(&self.stream, read, &mut fds) {
                Ok(0) => return Ok(Read::Eof),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(Read::Eof),
                Err(e) => return Err(Error::io("recvmsg", e)),
            };
            got = true;
            let bytes = buf.get(..n).unwrap_or_default();
            // The fds belong to the last message whose header starts in this read.
            let split = self
                .framer
                .last_header_start(bytes)
                .filter(|&s| s > 0 && !fds.is_empty());
            match split.and_then(|s| Some((bytes.get(..s)?, bytes.get(s..)?))) {
                Some((before, last)) => {
                    self.state
                        .connection_mut()
                        .handle_input(before, Vec::new())?;
                    self.pump(registry)?;
                    self.state.connection_mut().handle_input(last, fds)?;
                }
                None => self.state.connection_mut().handle_input(bytes, fds)?,
            }
            self.pump(registry)?;
        }
        Ok(if got { Read::Some } else { Read::Nothing })
    }

    /// Handles every pending event and writes every pending transmit the socket takes;
    /// `true` if anything was written.
    fn pump(&mut self, registry: &Registry) -> Result<bool, Error> {
        let mut wrote = false;
        loop {
            let (sent, blocked) = self.flush()?;
            wrote |= sent;
            match self.state.connection_mut().poll_event() {
                Some(Event::ConnectionLost { error }) => return Err(error.into()),
                Some(event) => {
                    let mut rings = Inline::new(&mut self.rings, Some(registry), self.token);
                    self.state.handle(event, &mut rings);
                }
                None if blocked || self.out.is_none() => return Ok(wrote),
                None => {}
            }
        }
    }

    /// Writes transmits until none is left or the socket is full: (wrote something, full).
    fn flush(&mut self) -> Result<(bool, bool), Error> {
        let mut wrote = false;
        loop {
            if self.out.is_none() {
                match self.state.connection_mut().poll_transmit() {
                    Some(transmit) => self.out = Some(Outgoing { transmit, sent: 0 }),
                    None => return Ok((wrote, false)),
                }
            }
            let Some(out) = self.out.as_mut() else {
                return Ok((wrote, false));
            };
            let rest = out.transmit.bytes.get(out.sent..).unwrap_or_default();
            let fds: Vec<BorrowedFd<'_>> = if out.sent == 0 {
                out.transmit.fds.iter().map(AsFd::as_fd).collect()
            } else {
                Vec::new()
            };
            match send_with_fds(&self.stream, rest, &fds) {
                Ok(0) if !rest.is_empty() => {
                    return Err(Error::io("sendmsg", io::ErrorKind::WriteZero));
                }
                Ok(n) => {
                    wrote = true;
                    out.sent += n;
                    if out.sent >= out.transmit.bytes.len() {
                        // Sent: our copies of its fds close here.
                        self.out = None;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((wrote, true)),
                Err(e) => return Err(Error::io("sendmsg", e)),
            }
        }
    }

    /// Asks epoll to report the socket again if it is still ready (edge-triggered
    /// registrations re-check the state on `EPOLL_CTL_MOD`).
    fn rearm(&mut self, registry: &Registry) -> Result<(), Error> {
        let Some(token) = self.token else {
            return Err(Error::NotRegistered);
        };
        registry
            .reregister(
                &mut self.stream,
                token,
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| Error::io("epoll_ctl", e))
    }

    /// Whether a started ring has no kick fd to watch (the front-end's no-fd flag, spec
    /// §3.1, or a kick fd epoll refuses) and must be looked at periodically: call
    /// [`ready`](Self::ready) every millisecond or so while this holds ([`Server`](crate::Server)
    /// does).
    pub fn wants_polling(&self) -> bool {
        !self.closed && crate::rings::wants_polling(&self.rings)
    }

    fn shutdown(&mut self, registry: Option<&Registry>) {
        if self.closed {
            return;
        }
        self.closed = true;
        let mut rings = Inline::new(&mut self.rings, registry, self.token);
        self.state.shutdown(&mut rings);
        if let (Some(r), Some(_)) = (registry, self.token.take()) {
            let _ = r.deregister(&mut self.stream);
        }
        self.out = None;
    }
}

/// What one round of reading found.
enum Read {
    Eof,
    Some,
    Nothing,
    /// The read budget is spent; input may be left.
    Yield,
}

impl<D: Device + ?Sized> Drop for Session<D> {
    fn drop(&mut self) {
        if self.token.is_some() && !self.closed {
            log::debug!("vhost-io-mio: session dropped while registered (use Session::close)");
        }
        self.shutdown(None);
    }
}

impl<D: Device + ?Sized> mio::event::Source for Session<D> {
    fn register(&mut self, registry: &Registry, token: Token, _: Interest) -> io::Result<()> {
        registry.register(
            &mut self.stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.token = Some(token);
        for raw in notifiers(&self.rings) {
            registry.register(&mut SourceFd(&raw), token, Interest::READABLE)?;
        }
        Ok(())
    }

    fn reregister(&mut self, registry: &Registry, token: Token, _: Interest) -> io::Result<()> {
        registry.reregister(
            &mut self.stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.token = Some(token);
        for raw in notifiers(&self.rings) {
            registry.reregister(&mut SourceFd(&raw), token, Interest::READABLE)?;
        }
        Ok(())
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        for raw in notifiers(&self.rings) {
            registry.deregister(&mut SourceFd(&raw))?;
        }
        self.token = None;
        registry.deregister(&mut self.stream)
    }
}
