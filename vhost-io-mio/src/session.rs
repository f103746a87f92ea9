//! One back-end connection as a [`mio::event::Source`]: the socket, the protocol core, the
//! write queue and the started queues of one front-end, all driven from the caller's thread.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use mio::net::UnixStream;
use mio::{Interest, Registry, Token};
use vhost_backend::Device;
use vhost_backend::os::sigbus;
use vhost_backend::os::socket::{recv_with_fds, send_with_fds};
use vhost_backend::state::SessionState;
use vhost_proto::backend::{Connection, Event, Transmit};

use crate::Error;
pub use crate::rings::SLOTS;
use crate::rings::{Inline, Ring, token_slot};

/// Bytes read per `recvmsg`, on the stack of the call (no per-session buffer): the largest
/// request fits, and several small pipelined ones.
const READ_BUF: usize = 8192;

/// `recvmsg` calls per [`Session::ready`] before the session yields to the others: a peer
/// that never stops sending must not starve them. The socket is re-armed (`EPOLL_CTL_MOD`
/// reports it again while it is readable), so nothing is lost.
const READ_BUDGET: usize = 32;

/// The most tokens a session uses ([`Session::token_span`] for a device with the most
/// queues, 256): space session tokens this far apart to fit any device.
pub const MAX_TOKEN_SPAN: usize = 1 + vhost_proto::backend::MAX_QUEUES as usize * SLOTS;

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
/// Register it in your `mio::Poll` with a token of yours ([`mio::Registry::register`]): the
/// session uses that token for its socket and the [`token_span`](Self::token_span) tokens
/// that follow it for its rings (each ring's kick fd and each of its handler's
/// [`Source`](vhost_backend::Source)s has a token of its own, so a kick touches only its
/// ring); give sessions tokens at least [`MAX_TOKEN_SPAN`] apart (or `token_span()` for
/// this device). Call [`ready`](Self::ready) with every event whose token is in the
/// session's span ([`owns`](Self::owns)). Everything is edge-triggered and non-blocking:
/// `ready` reads until `WouldBlock`, writes until the socket is full (the rest waits for
/// the writable edge, with fds on the first byte), reads a kicked ring's kick fd once and
/// lets its handler serve it, in this thread.
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
    out: Option<Outgoing>,
    rings: Box<[Ring]>,
    token: Option<Token>,
    /// The front-end is gone; rings are quiescing.
    closing: bool,
    /// The process's contained guest-memory faults when last looked at.
    faults: u64,
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
            out: None,
            rings,
            token: None,
            closing: false,
            faults: sigbus::total_faults(),
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

    /// The tokens this session uses, from the one it is registered under: its socket and
    /// [`SLOTS`] per ring.
    pub fn token_span(&self) -> usize {
        1 + self.rings.len() * SLOTS
    }

    /// Whether `token` is one of this session's (it is registered).
    pub fn owns(&self, token: Token) -> bool {
        self.token.is_some_and(|base| {
            token
                .0
                .checked_sub(base.0)
                .is_some_and(|o| o < self.token_span())
        })
    }

    /// Serves whatever the event with `token` announced: for the session's own token,
    /// reads and processes requests until the socket would block, writes replies and
    /// handles the device's side of each request; for a ring's token, reads its kick once
    /// and lets its handler serve it, or passes a handler source's readiness on. Extra
    /// calls are harmless (a few `EAGAIN`s).
    ///
    /// `Ok(Status::Closed)` when the front-end hung up; an error when the connection failed
    /// (the front-end broke the protocol, or a system call failed). Either way the session
    /// is closed and deregistered from `registry`: drop it. The one exception is
    /// [`Error::NotRegistered`]: register the session, then call again.
    pub fn ready(&mut self, registry: &Registry, token: Token) -> Result<Status, Error> {
        if self.closed {
            return Ok(Status::Closed);
        }
        let Some(base) = self.token else {
            return Err(Error::NotRegistered);
        };
        if let Some((i, slot)) = token_slot(base, self.rings.len(), token) {
            let mut rings = Inline::new(&mut self.rings, Some(registry), self.token);
            rings.ready(i, slot);
            if self.closing {
                return Ok(self.finish_close(registry));
            }
            if let Some(r) = self.check_faults(registry) {
                return r;
            }
            let mut rings = Inline::new(&mut self.rings, Some(registry), self.token);
            if self.state.is_pending() && self.state.poll_pending(&mut rings) {
                // The late answer is queued: send it and go on with buffered requests.
                return self.after(registry, |s, r| s.drive(r));
            }
            return Ok(Status::Open);
        }
        if self.closing {
            return Ok(self.finish_close(registry));
        }
        let r = self.after(registry, |s, r| s.drive(r));
        self.check_faults(registry).unwrap_or(r)
    }

    /// Ends the session if its guest memory faulted under the mapping (a contained
    /// SIGBUS: the front-end shrank a shared file).
    fn check_faults(&mut self, registry: &Registry) -> Option<Result<Status, Error>> {
        let now = sigbus::total_faults();
        if now == self.faults {
            return None;
        }
        self.faults = now;
        if !self.state.memory_faulted() {
            return None;
        }
        log::error!("vhost-io-mio: guest memory faulted under its mapping: ending the session");
        Some(self.after(registry, |_, _| Err(Error::GuestMemoryFault)))
    }

    /// Runs `f`, turning a hang-up into `Closed` and closing the session on anything but
    /// `Open`.
    fn after(
        &mut self,
        registry: &Registry,
        f: impl FnOnce(&mut Self, &Registry) -> Result<Status, Error>,
    ) -> Result<Status, Error> {
        let r = match f(self, registry) {
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
        match r {
            Ok(Status::Open) => Ok(Status::Open),
            Ok(Status::Closed) => {
                self.begin_close(Some(registry));
                Ok(self.finish_close(registry))
            }
            Err(e) => {
                self.begin_close(Some(registry));
                self.finish_close(registry);
                Err(e)
            }
        }
    }

    /// Whether every ring has quiesced after the front-end left; `Closed` once they have
    /// (the session is then deregistered), `Open` while handlers still complete requests
    /// (their sources keep their tokens: keep calling `ready`).
    fn finish_close(&mut self, registry: &Registry) -> Status {
        let mut rings = Inline::new(&mut self.rings, Some(registry), self.token);
        self.state.poll_pending(&mut rings);
        if !self.state.is_closed() {
            return Status::Open;
        }
        rings.deregister_all();
        self.token = None;
        self.closed = true;
        Status::Closed
    }

    /// Ends the session: stops its queues (the device hears `queue_stopped` and
    /// `disconnected`), deregisters every fd from `registry` and closes the connection.
    pub fn close(mut self, registry: &Registry) {
        self.begin_close(Some(registry));
        self.wait_closed(Some(registry));
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
        rings.poll_rings();
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
            // The connection attributes the fds to the last message whose header starts
            // in this read.
            self.state.connection_mut().handle_input(bytes, fds)?;
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

    /// Serves the rings that have no kick fd to watch (see
    /// [`wants_polling`](Self::wants_polling)).
    pub fn poll_rings(&mut self, registry: &Registry) {
        if self.closed {
            return;
        }
        let mut rings = Inline::new(&mut self.rings, Some(registry), self.token);
        rings.poll_rings();
    }

    /// Stops reading the front-end and asks every ring to stop (each once its handler has
    /// completed what it holds).
    fn begin_close(&mut self, registry: Option<&Registry>) {
        if self.closing || self.closed {
            return;
        }
        self.closing = true;
        if let (Some(r), Some(_)) = (registry, self.token) {
            let _ = r.deregister(&mut self.stream);
        }
        self.out = None;
        let mut rings = Inline::new(&mut self.rings, registry, self.token);
        self.state.close(&mut rings);
    }

    /// Waits (blocking this thread) until every ring has quiesced: a handler with
    /// requests in flight completes them through its sources, polled here.
    fn wait_closed(&mut self, registry: Option<&Registry>) {
        loop {
            let mut rings = Inline::new(&mut self.rings, registry, self.token);
            if self.state.poll_pending(&mut rings) || self.state.is_closed() {
                rings.deregister_all();
                break;
            }
            crate::rings::wait_sources(&mut self.rings);
        }
        self.token = None;
        self.closed = true;
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
        self.begin_close(None);
        self.wait_closed(None);
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
        Inline::new(&mut self.rings, Some(registry), self.token).register_all();
        Ok(())
    }

    fn reregister(&mut self, registry: &Registry, token: Token, _: Interest) -> io::Result<()> {
        registry.reregister(
            &mut self.stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        Inline::new(&mut self.rings, Some(registry), self.token).deregister_all();
        self.token = Some(token);
        Inline::new(&mut self.rings, Some(registry), self.token).register_all();
        Ok(())
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        Inline::new(&mut self.rings, Some(registry), self.token).deregister_all();
        self.token = None;
        registry.deregister(&mut self.stream)
    }
}
