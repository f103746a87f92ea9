//! One front-end connection as a [`mio::event::Source`]: the main socket, the back-end
//! channel and the ring call/err eventfds, over the sans-IO [`Connection`].

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use mio::net::UnixStream;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use vhost_backend::os::eventfd::{Consumed, EventFd};
use vhost_backend::os::socket::{recv_with_fds, send_with_fds};
use vhost_proto::backend::Refused;
use vhost_proto::frontend::{
    Channel, ChannelEvent, ChannelToken, Connection, Event, LookupToken, Reply, RequestId, Transmit,
};
use vhost_proto::session::{ApiError, FatalError, Negotiated, Rejection};
use vhost_proto::wire::{BackendRequest, FrontendReq, FrontendRequest, Uuid};

use super::FrontendError;

/// Bytes read per `recvmsg`, on the stack of the call: the largest reply fits.
const READ_BUF: usize = 8192;

/// `recvmsg` calls per [`FrontendSession::ready`] before the session yields (the socket
/// is re-armed, so nothing is lost): a back-end that never stops sending cannot starve
/// the user's other sources.
const READ_BUDGET: usize = 32;

/// Rings whose call and err eventfds a session can watch: SET_VRING_CALL/ERR name a
/// ring in 8 bits.
pub const MAX_RINGS: usize = 256;

/// The tokens a [`FrontendSession`] uses from the one it is registered under: the main
/// socket (`+0`), the back-end channel (`+1`), and for ring `i` its call eventfd
/// (`+2 + 2i`) and its err eventfd (`+3 + 2i`). Space sessions this far apart.
pub const FRONTEND_TOKEN_SPAN: usize = 2 + 2 * MAX_RINGS;

/// What a [`FrontendSession`] reports to the user's loop.
#[derive(Debug)]
#[non_exhaustive]
pub enum FrontendEvent {
    /// A request completed: its typed reply ([`Reply::Ack`] for an acked request without a
    /// reply body). Requests without a reply, sent without REPLY_ACK, complete silently.
    Reply {
        /// The id the request was queued with.
        id: RequestId,
        /// Its code.
        request: FrontendReq,
        /// The reply.
        reply: Reply<OwnedFd>,
    },
    /// The back-end NACKed a request sent with NEED_REPLY (the session goes on; QEMU
    /// gives up on the back-end, the decision is yours).
    Nacked {
        /// The request.
        id: RequestId,
        /// Its code.
        request: FrontendReq,
        /// The non-zero ack value.
        value: u64,
    },
    /// Ring `index` completed something: its call eventfd was signalled (or BACKEND_VRING_CALL
    /// came in-band). Calls coalesce: pop every used buffer.
    Call {
        /// The ring.
        index: u16,
    },
    /// Ring `index` failed on the back-end: its err eventfd was signalled (or
    /// BACKEND_VRING_ERR came in-band).
    RingError {
        /// The ring.
        index: u16,
    },
    /// A back-end channel request for the VMM (all but BACKEND_VRING_CALL/ERR, which are
    /// acked here and reported as [`Call`](Self::Call) / [`RingError`](Self::RingError)).
    /// Answer it with [`FrontendSession::answer_backend`]: the channel reads no further
    /// request until then.
    BackendRequest {
        /// The request, with its fds.
        request: BackendRequest<OwnedFd>,
        /// The answer token.
        answer: ChannelToken,
    },
    /// BACKEND_SHARED_OBJECT_LOOKUP; answer with [`FrontendSession::answer_lookup`].
    SharedObjectLookup {
        /// The object's UUID.
        uuid: Uuid,
        /// The answer token.
        answer: LookupToken,
    },
    /// A back-end channel request that was refused at its gate (NACKed if it asked).
    BackendRejected {
        /// What and why.
        rejection: Rejection,
    },
    /// The back-end channel ended (the back-end closed it, or broke its protocol: `error`);
    /// the main connection goes on.
    ChannelClosed {
        /// The protocol error, `None` for a close or an IO error.
        error: Option<FatalError>,
    },
}

/// A message being written: its fds go with the first byte that leaves, a partial write
/// resumes on the writable edge.
#[derive(Debug, Default)]
struct Writer {
    out: Option<(Transmit<OwnedFd>, usize)>,
}

impl Writer {
    /// Writes transmits from `next` until none is left or the socket is full; `Ok(true)`
    /// if anything was written.
    fn flush(
        &mut self,
        sock: &UnixStream,
        mut next: impl FnMut() -> Option<Transmit<OwnedFd>>,
    ) -> Result<bool, FrontendError> {
        let mut wrote = false;
        loop {
            if self.out.is_none() {
                match next() {
                    Some(t) => self.out = Some((t, 0)),
                    None => return Ok(wrote),
                }
            }
            let Some((t, sent)) = self.out.as_mut() else {
                return Ok(wrote);
            };
            let rest = t.bytes.get(*sent..).unwrap_or_default();
            let fds: Vec<BorrowedFd<'_>> = if *sent == 0 {
                t.fds.iter().map(AsFd::as_fd).collect()
            } else {
                Vec::new()
            };
            match send_with_fds(sock, rest, &fds) {
                Ok(0) if !rest.is_empty() => {
                    return Err(FrontendError::io("sendmsg", io::ErrorKind::WriteZero));
                }
                Ok(n) => {
                    wrote = true;
                    *sent += n;
                    if *sent >= t.bytes.len() {
                        // Sent: our copies of its fds close here.
                        self.out = None;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(wrote),
                Err(e) if disconnect(&e) => return Err(FrontendError::Disconnected),
                Err(e) => return Err(FrontendError::io("sendmsg", e)),
            }
        }
    }
}

fn disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}

/// What one read of a socket found.
enum Read {
    /// `n` bytes (and fds).
    Got(usize, Vec<OwnedFd>),
    /// Nothing more now.
    Blocked,
    /// End of file.
    Eof,
}

fn read_once(sock: &UnixStream, buf: &mut [u8]) -> Result<Read, FrontendError> {
    let mut fds = Vec::new();
    loop {
        return match recv_with_fds(sock, buf, &mut fds) {
            Ok(0) => Ok(Read::Eof),
            Ok(n) => Ok(Read::Got(n, fds)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Read::Blocked),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if disconnect(&e) => Ok(Read::Eof),
            Err(e) => Err(FrontendError::io("recvmsg", e)),
        };
    }
}

/// The back-end channel: this end of the socket pair sent with SET_BACKEND_REQ_FD.
#[derive(Debug)]
struct Backchannel {
    stream: UnixStream,
    chan: Channel<OwnedFd>,
    out: Writer,
}

/// An eventfd the session watches for a ring.
#[derive(Debug)]
struct Watched {
    fd: EventFd,
    registered: bool,
}

/// The call and err eventfds of one ring.
#[derive(Debug, Default)]
struct RingFds {
    call: Option<Watched>,
    err: Option<Watched>,
}

/// Which token of a session's span.
enum Slot {
    Main,
    Channel,
    Call(u16),
    Err(u16),
}

/// One vhost-user front-end connection driven from the user's mio loop.
///
/// Register it in your `Poll` with a token of yours ([`Registry::register`]; the
/// interest is ignored): the session takes that token for its socket and the
/// [`FRONTEND_TOKEN_SPAN`] − 1 tokens after it for the back-end channel and the rings'
/// call/err eventfds (see [`FRONTEND_TOKEN_SPAN`]); it keeps a clone of the registry to
/// add and remove those fds as they come and go. Call [`ready`](Self::ready) with every
/// event whose token it [`owns`](Self::owns), sleep in `Poll::poll` at most until
/// [`poll_timeout`](Self::poll_timeout) and then call
/// [`handle_timeout`](Self::handle_timeout), and take what happened with
/// [`poll_event`](Self::poll_event).
///
/// Requests are queued through the protocol core's typed helpers
/// ([`request`](Self::request), which writes at once what the socket accepts): the core
/// gates them on the negotiation, sets NEED_REPLY under REPLY_ACK, keeps one request that
/// waits for a reply on the wire at a time, matches and validates every reply. The fds a
/// request carries travel with its first byte; a partial write resumes on the writable
/// edge. Ring notifications have their own methods: [`set_vring_call`](Self::set_vring_call)
/// and [`set_vring_err`](Self::set_vring_err) send the eventfd and watch it
/// ([`FrontendEvent::Call`], [`FrontendEvent::RingError`]);
/// [`open_backend_channel`](Self::open_backend_channel) sends SET_BACKEND_REQ_FD and serves
/// the channel ([`FrontendEvent::BackendRequest`]).
///
/// Every error but [`FrontendError::NotSent`] and [`FrontendError::NotRegistered`]
/// closes the session: its fds are deregistered and its socket shut down.
/// Deregister (or [`close`](Self::close)) before dropping a registered session; a dropped
/// one deregisters itself through its registry clone.
#[derive(Debug)]
pub struct FrontendSession {
    stream: UnixStream,
    conn: Connection<OwnedFd>,
    out: Writer,
    channel: Option<Backchannel>,
    rings: BTreeMap<u16, RingFds>,
    events: VecDeque<FrontendEvent>,
    registry: Option<Registry>,
    token: Option<Token>,
    /// The first request the core timed out, for the error.
    timed_out: Option<(RequestId, FrontendReq)>,
    closed: bool,
}

impl FrontendSession {
    /// A session on a connected, non-blocking socket.
    pub fn new(stream: UnixStream) -> Self {
        FrontendSession {
            stream,
            conn: Connection::new(),
            out: Writer::default(),
            channel: None,
            rings: BTreeMap::new(),
            events: VecDeque::new(),
            registry: None,
            token: None,
            timed_out: None,
            closed: false,
        }
    }

    /// A session on a connected std socket (a socketpair end, a connected path); it is
    /// switched to non-blocking mode.
    pub fn from_std(stream: std::os::unix::net::UnixStream) -> Result<Self, FrontendError> {
        stream
            .set_nonblocking(true)
            .map_err(|e| FrontendError::io("fcntl(O_NONBLOCK)", e))?;
        Ok(Self::new(UnixStream::from_std(stream)))
    }

    /// Connects to a back-end listening on `path`.
    pub fn connect(path: impl AsRef<std::path::Path>) -> Result<Self, FrontendError> {
        let s = std::os::unix::net::UnixStream::connect(path)
            .map_err(|e| FrontendError::io("connect", e))?;
        Self::from_std(s)
    }

    /// The protocol core: negotiation, queue count, reply timeout.
    pub fn connection(&self) -> &Connection<OwnedFd> {
        &self.conn
    }

    /// The protocol core, e.g. for [`Connection::set_reply_timeout`]. Requests queued
    /// here directly are written by the next [`flush`](Self::flush) or `ready`.
    pub fn connection_mut(&mut self) -> &mut Connection<OwnedFd> {
        &mut self.conn
    }

    /// What was offered and negotiated so far.
    pub fn negotiated(&self) -> &Negotiated {
        self.conn.negotiated()
    }

    /// The token the session is registered under, if it is.
    pub fn token(&self) -> Option<Token> {
        self.token
    }

    /// Whether `token` is in this session's span (it is registered).
    pub fn owns(&self, token: Token) -> bool {
        self.token.is_some_and(|base| {
            token
                .0
                .checked_sub(base.0)
                .is_some_and(|o| o < FRONTEND_TOKEN_SPAN)
        })
    }

    /// Whether the session has ended (an error, or [`close`](Self::close)).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Whether the back-end channel is open.
    pub fn has_backend_channel(&self) -> bool {
        self.channel.is_some()
    }

    /// Whether nothing is queued, being written or waiting for a reply.
    pub fn is_idle(&self) -> bool {
        self.conn.is_idle() && self.out.out.is_none()
    }

    /// The next thing that happened.
    pub fn poll_event(&mut self) -> Option<FrontendEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next (the oldest
    /// reply deadline; pass `deadline - now` to `Poll::poll`). `None`: no deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            None
        } else {
            self.conn.poll_timeout()
        }
    }

    /// Tells the session the time is `now`: a request whose reply is overdue is
    /// [`FrontendError::ReplyTimeout`] and the session is closed (a late reply would be
    /// taken for the next request's). Early calls do nothing.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), FrontendError> {
        if self.closed {
            return Ok(());
        }
        self.conn.handle_timeout(now);
        let r = self.collect();
        self.check(r)
    }

    /// Queues a request through one of the core's typed helpers at time `now` (which
    /// starts its reply deadline) and writes what the socket accepts, e.g.
    /// `session.request(now, |c, now| c.get_vring_base(now, 0))`.
    ///
    /// The completion is a [`FrontendEvent::Reply`] with the returned id (or
    /// [`FrontendEvent::Nacked`]). A request the core refuses is
    /// [`FrontendError::NotSent`] and nothing changes.
    pub fn request(
        &mut self,
        now: Instant,
        f: impl FnOnce(&mut Connection<OwnedFd>, Instant) -> Result<RequestId, ApiError>,
    ) -> Result<RequestId, FrontendError> {
        if self.closed {
            return Err(FrontendError::Closed);
        }
        let id = f(&mut self.conn, now).map_err(FrontendError::NotSent)?;
        self.flush()?;
        Ok(id)
    }

    /// Queues `req` at time `now` ([`Connection::send_at`]) and writes what the socket
    /// accepts.
    pub fn send(
        &mut self,
        now: Instant,
        req: FrontendRequest<OwnedFd>,
    ) -> Result<RequestId, FrontendError> {
        self.request(now, |c, now| c.send_at(now, req))
    }

    /// Writes what is queued as far as the socket accepts (the rest goes on the writable
    /// edge, in [`ready`](Self::ready)).
    pub fn flush(&mut self) -> Result<(), FrontendError> {
        if self.closed {
            return Err(FrontendError::Closed);
        }
        let conn = &mut self.conn;
        let r = self.out.flush(&self.stream, || conn.poll_transmit());
        let r = r.map(drop);
        self.check(r)
    }

    /// SET_VRING_CALL for ring `index` with `call` (an eventfd the back-end signals when it
    /// used buffers; [`EventFd::new`], or a duplicate of your driver ring's): the session
    /// sends a duplicate and watches `call` under the ring's call token, reporting
    /// [`FrontendEvent::Call`]. A call fd watched before for the ring is replaced.
    pub fn set_vring_call(
        &mut self,
        now: Instant,
        index: u16,
        call: EventFd,
    ) -> Result<RequestId, FrontendError> {
        let r = self.notifier(now, index, call, false);
        self.check(r)
    }

    /// SET_VRING_ERR for ring `index` with `err`, watched like
    /// [`set_vring_call`](Self::set_vring_call) ([`FrontendEvent::RingError`]).
    pub fn set_vring_err(
        &mut self,
        now: Instant,
        index: u16,
        err: EventFd,
    ) -> Result<RequestId, FrontendError> {
        let r = self.notifier(now, index, err, true);
        self.check(r)
    }

    fn notifier(
        &mut self,
        now: Instant,
        index: u16,
        fd: EventFd,
        err: bool,
    ) -> Result<RequestId, FrontendError> {
        if self.closed {
            return Err(FrontendError::Closed);
        }
        let dup = fd
            .write_fd()
            .try_clone_to_owned()
            .map_err(|e| FrontendError::io("dup", e))?;
        let id = if err {
            self.conn.set_vring_err(now, index, Some(dup))
        } else {
            self.conn.set_vring_call(now, index, Some(dup))
        }
        .map_err(FrontendError::NotSent)?;
        let mut watched = Watched {
            fd,
            registered: false,
        };
        let slot = if err {
            Slot::Err(index)
        } else {
            Slot::Call(index)
        };
        if let (Some(reg), Some(token)) = (&self.registry, self.slot_token(&slot)) {
            register_fd(reg, &mut watched, token)?;
        }
        let ring = self.rings.entry(index).or_default();
        let old = if err {
            ring.err.replace(watched)
        } else {
            ring.call.replace(watched)
        };
        if let (Some(mut old), Some(reg)) = (old, &self.registry) {
            deregister_fd(reg, &mut old);
        }
        self.flush()?;
        Ok(id)
    }

    /// Stops watching ring `index`'s call and err eventfds (after GET_VRING_BASE, or
    /// before giving the ring up); they are closed here (the back-end keeps its copies).
    pub fn forget_ring(&mut self, index: u16) {
        if let (Some(mut ring), Some(reg)) = (self.rings.remove(&index), &self.registry) {
            for w in [ring.call.as_mut(), ring.err.as_mut()]
                .into_iter()
                .flatten()
            {
                deregister_fd(reg, w);
            }
        }
    }

    /// SET_BACKEND_REQ_FD (needs BACKEND_REQ): sends one end of a new socket pair and
    /// serves the other under the session's channel token ([`FrontendEvent::BackendRequest`],
    /// answered with [`answer_backend`](Self::answer_backend)). A channel opened before is
    /// closed.
    pub fn open_backend_channel(&mut self, now: Instant) -> Result<RequestId, FrontendError> {
        let r = self.channel_opened(now);
        self.check(r)
    }

    fn channel_opened(&mut self, now: Instant) -> Result<RequestId, FrontendError> {
        if self.closed {
            return Err(FrontendError::Closed);
        }
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()
            .map_err(|e| FrontendError::io("socketpair", e))?;
        ours.set_nonblocking(true)
            .map_err(|e| FrontendError::io("fcntl(O_NONBLOCK)", e))?;
        let id = self
            .conn
            .set_backend_req_fd(now, OwnedFd::from(theirs))
            .map_err(FrontendError::NotSent)?;
        self.drop_channel();
        let mut ch = Backchannel {
            stream: UnixStream::from_std(ours),
            chan: Channel::new(*self.conn.negotiated()),
            out: Writer::default(),
        };
        if let (Some(reg), Some(token)) = (&self.registry, self.slot_token(&Slot::Channel)) {
            reg.register(
                &mut ch.stream,
                token,
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| FrontendError::io("epoll_ctl", e))?;
        }
        self.channel = Some(ch);
        self.flush()?;
        Ok(id)
    }

    /// Answers a [`FrontendEvent::BackendRequest`]: `Ok(())` when the VMM did what it asked
    /// (acked when the back-end set NEED_REPLY), a refusal otherwise (NACKed).
    pub fn answer_backend(
        &mut self,
        answer: ChannelToken,
        result: Result<(), Refused>,
    ) -> Result<(), FrontendError> {
        let Some(ch) = self.channel.as_mut() else {
            return Err(FrontendError::Closed);
        };
        ch.chan
            .ack(answer, result)
            .map_err(FrontendError::NotSent)?;
        self.serve_channel();
        Ok(())
    }

    /// Answers a [`FrontendEvent::SharedObjectLookup`] with the object's dma-buf fd or a
    /// refusal.
    pub fn answer_lookup(
        &mut self,
        answer: LookupToken,
        result: Result<OwnedFd, Refused>,
    ) -> Result<(), FrontendError> {
        let Some(ch) = self.channel.as_mut() else {
            return Err(FrontendError::Closed);
        };
        ch.chan
            .answer_lookup(answer, result)
            .map_err(FrontendError::NotSent)?;
        self.serve_channel();
        Ok(())
    }

    /// Serves whatever the event with `token` announced: for the socket, writes what is
    /// queued and reads replies until the socket would block; for the channel, reads and
    /// answers the back-end's requests; for a ring's call or err eventfd, consumes it and
    /// reports the ring. Extra calls are harmless.
    ///
    /// A token outside the session's span is ignored.
    pub fn ready(&mut self, token: Token) -> Result<(), FrontendError> {
        if self.closed {
            return Err(FrontendError::Closed);
        }
        let Some(base) = self.token else {
            return Err(FrontendError::NotRegistered);
        };
        let Some(off) = token.0.checked_sub(base.0) else {
            return Ok(());
        };
        let slot = match off {
            0 => Slot::Main,
            1 => Slot::Channel,
            n if n < FRONTEND_TOKEN_SPAN => {
                let ring = u16::try_from((n - 2) / 2).unwrap_or(u16::MAX);
                if n % 2 == 0 {
                    Slot::Call(ring)
                } else {
                    Slot::Err(ring)
                }
            }
            _ => return Ok(()),
        };
        match slot {
            Slot::Main => {
                let r = self.drive();
                self.check(r)
            }
            Slot::Channel => {
                self.serve_channel();
                Ok(())
            }
            Slot::Call(i) => {
                self.notified(i, false);
                Ok(())
            }
            Slot::Err(i) => {
                self.notified(i, true);
                Ok(())
            }
        }
    }

    /// Closes the session: deregisters every fd, shuts the socket down and drops the
    /// channel and ring fds. Events already queued are lost with it.
    pub fn close(mut self) {
        self.shutdown();
    }

    /// Closes the session with `error` (the handshake's failures): see
    /// [`FrontendError`].
    pub(crate) fn fail(&mut self, error: FrontendError) -> FrontendError {
        self.shutdown();
        error
    }

    /// Writes and reads the main socket until neither makes progress.
    fn drive(&mut self) -> Result<(), FrontendError> {
        let mut budget = READ_BUDGET;
        let mut buf = [0u8; READ_BUF];
        loop {
            let conn = &mut self.conn;
            let wrote = self.out.flush(&self.stream, || conn.poll_transmit())?;
            let mut read = false;
            loop {
                if budget == 0 {
                    // Yield; EPOLL_CTL_MOD reports the socket again if it is still ready.
                    self.rearm()?;
                    return self.collect();
                }
                budget -= 1;
                let room = self.conn.input_room().min(READ_BUF);
                if room == 0 {
                    break;
                }
                let chunk = buf.get_mut(..room).unwrap_or_default();
                match read_once(&self.stream, chunk)? {
                    Read::Got(n, fds) => {
                        read = true;
                        let bytes = buf.get(..n).unwrap_or_default();
                        if let Err(e) = self.conn.handle_input(bytes, fds) {
                            // Keep the replies that came before it; the error wins.
                            let _ = self.collect();
                            return Err(FrontendError::Protocol(e));
                        }
                        self.collect()?;
                    }
                    Read::Blocked => break,
                    Read::Eof => {
                        let _ = self.collect();
                        return Err(FrontendError::Disconnected);
                    }
                }
            }
            if !wrote && !read {
                return self.collect();
            }
        }
    }

    /// Moves the core's completions to the session's events; the end of the connection
    /// is the error.
    fn collect(&mut self) -> Result<(), FrontendError> {
        while let Some(ev) = self.conn.poll_event() {
            let request = match &ev {
                Event::Reply { request, .. } | Event::Acked { request, .. } => *request,
                Event::Nacked { id, request, value } => {
                    self.events.push_back(FrontendEvent::Nacked {
                        id: *id,
                        request: *request,
                        value: *value,
                    });
                    continue;
                }
                Event::ReplyTimeout { id, request } => {
                    self.timed_out.get_or_insert((*id, *request));
                    continue;
                }
                Event::ConnectionLost { error } => {
                    return Err(match (error, self.timed_out) {
                        (FatalError::ReplyTimeout { .. }, Some((id, request))) => {
                            FrontendError::ReplyTimeout { id, request }
                        }
                        (e, _) => FrontendError::Protocol(e.clone()),
                    });
                }
                _ => continue,
            };
            match ev.into_reply() {
                Ok((id, reply)) => {
                    self.events
                        .push_back(FrontendEvent::Reply { id, request, reply })
                }
                Err(_) => return Err(FrontendError::UnexpectedReply { request }),
            }
        }
        Ok(())
    }

    /// Closes the session on a fatal error.
    fn check<T>(&mut self, r: Result<T, FrontendError>) -> Result<T, FrontendError> {
        if let Err(e) = &r
            && !e.is_recoverable()
        {
            self.shutdown();
        }
        r
    }

    fn rearm(&mut self) -> Result<(), FrontendError> {
        let (Some(reg), Some(token)) = (&self.registry, self.token) else {
            return Err(FrontendError::NotRegistered);
        };
        reg.reregister(
            &mut self.stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        )
        .map_err(|e| FrontendError::io("epoll_ctl", e))
    }

    /// A ring's eventfd was reported readable.
    fn notified(&mut self, index: u16, err: bool) {
        let Some(ring) = self.rings.get_mut(&index) else {
            return;
        };
        let w = if err { &mut ring.err } else { &mut ring.call };
        let Some(watched) = w.as_mut() else {
            return;
        };
        match watched.fd.consume() {
            Ok(Consumed::Signalled) => {}
            Ok(Consumed::Nothing) => return,
            // Never signalled again (a pipe without writers) or broken: stop watching.
            Ok(Consumed::Closed) | Err(_) => {
                if let Some(reg) = &self.registry {
                    deregister_fd(reg, watched);
                }
                *w = None;
                return;
            }
        }
        self.push_ring_event(index, err);
    }

    fn push_ring_event(&mut self, index: u16, err: bool) {
        let ev = if err {
            FrontendEvent::RingError { index }
        } else {
            FrontendEvent::Call { index }
        };
        // Notifications coalesce: one queued event per ring and kind.
        let queued = self.events.iter().any(|e| match (e, &ev) {
            (FrontendEvent::Call { index: a }, FrontendEvent::Call { index: b })
            | (FrontendEvent::RingError { index: a }, FrontendEvent::RingError { index: b }) => {
                a == b
            }
            _ => false,
        });
        if !queued {
            self.events.push_back(ev);
        }
    }

    /// Reads, answers and writes the back-end channel; closes it on failure (the main
    /// connection goes on).
    fn serve_channel(&mut self) {
        let r = self.drive_channel();
        if let Err(error) = r {
            self.drop_channel();
            self.events
                .push_back(FrontendEvent::ChannelClosed { error });
        }
    }

    fn drive_channel(&mut self) -> Result<(), Option<FatalError>> {
        let neg = *self.conn.negotiated();
        let mut budget = READ_BUDGET;
        let mut buf = [0u8; READ_BUF];
        loop {
            let Some(ch) = self.channel.as_mut() else {
                return Ok(());
            };
            ch.chan.set_negotiated(neg);
            let chan = &mut ch.chan;
            let wrote = ch.out.flush(&ch.stream, || chan.poll_transmit());
            let wrote = wrote.map_err(|_| None)?;
            let mut read = false;
            if budget == 0 {
                if let (Some(reg), Some(token)) = (&self.registry, self.token) {
                    let t = Token(token.0 + 1);
                    let _ =
                        reg.reregister(&mut ch.stream, t, Interest::READABLE | Interest::WRITABLE);
                }
                return Ok(());
            }
            budget -= 1;
            let room = ch.chan.input_room().min(READ_BUF);
            if room > 0 {
                let chunk = buf.get_mut(..room).unwrap_or_default();
                match read_once(&ch.stream, chunk).map_err(|_| None)? {
                    Read::Got(n, fds) => {
                        read = true;
                        let bytes = buf.get(..n).unwrap_or_default();
                        ch.chan.handle_input(bytes, fds).map_err(Some)?;
                    }
                    Read::Blocked => {}
                    Read::Eof => return Err(None),
                }
            }
            let answered = self.channel_events()?;
            if !wrote && !read && !answered {
                return Ok(());
            }
        }
    }

    /// Moves the channel's requests to the session's events; acks in-band calls and
    /// errors itself. `Ok(true)` if it answered something (there is more to write).
    fn channel_events(&mut self) -> Result<bool, Option<FatalError>> {
        let mut answered = false;
        loop {
            let Some(ch) = self.channel.as_mut() else {
                return Ok(answered);
            };
            let Some(ev) = ch.chan.poll_event() else {
                return Ok(answered);
            };
            match ev {
                ChannelEvent::Request { request, answer } => match request {
                    BackendRequest::VringCall { index } | BackendRequest::VringErr { index } => {
                        let err = matches!(request, BackendRequest::VringErr { .. });
                        let ring = u16::try_from(index)
                            .ok()
                            .filter(|&i| usize::from(i) < MAX_RINGS);
                        let result = match ring {
                            Some(_) => Ok(()),
                            None => Err(Refused::because("no such ring")),
                        };
                        // The token is this channel's own, just handed out: it fits.
                        let _ = ch.chan.ack(answer, result);
                        answered = true;
                        if let Some(i) = ring {
                            self.push_ring_event(i, err);
                        }
                    }
                    request => self
                        .events
                        .push_back(FrontendEvent::BackendRequest { request, answer }),
                },
                ChannelEvent::SharedObjectLookup { uuid, answer } => self
                    .events
                    .push_back(FrontendEvent::SharedObjectLookup { uuid, answer }),
                ChannelEvent::Rejected { rejection } => {
                    answered = true;
                    self.events
                        .push_back(FrontendEvent::BackendRejected { rejection });
                }
                ChannelEvent::ChannelLost { error } => return Err(Some(error)),
                _ => {}
            }
        }
    }

    fn drop_channel(&mut self) {
        if let (Some(mut ch), Some(reg)) = (self.channel.take(), &self.registry) {
            let _ = reg.deregister(&mut ch.stream);
        }
    }

    fn slot_token(&self, slot: &Slot) -> Option<Token> {
        let base = self.token?.0;
        let off = match *slot {
            Slot::Main => 0,
            Slot::Channel => 1,
            Slot::Call(i) => 2 + 2 * usize::from(i),
            Slot::Err(i) => 3 + 2 * usize::from(i),
        };
        (off < FRONTEND_TOKEN_SPAN).then(|| Token(base.saturating_add(off)))
    }

    fn register_all(&mut self, registry: &Registry) -> io::Result<()> {
        let Some(base) = self.token else {
            return Ok(());
        };
        if let Some(ch) = self.channel.as_mut() {
            registry.register(
                &mut ch.stream,
                Token(base.0 + 1),
                Interest::READABLE | Interest::WRITABLE,
            )?;
        }
        let tokens: Vec<(u16, Option<Token>, Option<Token>)> = self
            .rings
            .keys()
            .map(|&i| {
                (
                    i,
                    self.slot_token(&Slot::Call(i)),
                    self.slot_token(&Slot::Err(i)),
                )
            })
            .collect();
        for (i, call, err) in tokens {
            let Some(ring) = self.rings.get_mut(&i) else {
                continue;
            };
            if let (Some(w), Some(t)) = (ring.call.as_mut(), call) {
                register_fd(registry, w, t).map_err(io::Error::other)?;
            }
            if let (Some(w), Some(t)) = (ring.err.as_mut(), err) {
                register_fd(registry, w, t).map_err(io::Error::other)?;
            }
        }
        Ok(())
    }

    fn deregister_all(&mut self, registry: &Registry) {
        if let Some(ch) = self.channel.as_mut() {
            let _ = registry.deregister(&mut ch.stream);
        }
        for ring in self.rings.values_mut() {
            for w in [ring.call.as_mut(), ring.err.as_mut()]
                .into_iter()
                .flatten()
            {
                deregister_fd(registry, w);
            }
        }
        if self.token.is_some() {
            let _ = registry.deregister(&mut self.stream);
        }
    }

    /// Deregisters everything, shuts the socket down and drops the channel and the ring
    /// fds. Queued events stay.
    fn shutdown(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        if let Some(reg) = self.registry.take() {
            self.deregister_all(&reg);
        }
        self.token = None;
        self.channel = None;
        self.rings.clear();
        self.out.out = None;
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

fn register_fd(registry: &Registry, w: &mut Watched, token: Token) -> Result<(), FrontendError> {
    let raw = w.fd.read_fd().as_raw_fd();
    registry
        .register(&mut SourceFd(&raw), token, Interest::READABLE)
        .map_err(|e| FrontendError::io("epoll_ctl", e))?;
    w.registered = true;
    Ok(())
}

fn deregister_fd(registry: &Registry, w: &mut Watched) {
    if w.registered {
        let raw = w.fd.read_fd().as_raw_fd();
        let _ = registry.deregister(&mut SourceFd(&raw));
        w.registered = false;
    }
}

impl Drop for FrontendSession {
    fn drop(&mut self) {
        // Eventfds and the channel are shared with the back-end: epoll would go on
        // reporting them under our tokens after we close our copies.
        if let Some(reg) = self.registry.take() {
            self.deregister_all(&reg);
        }
    }
}

impl mio::event::Source for FrontendSession {
    fn register(&mut self, registry: &Registry, token: Token, _: Interest) -> io::Result<()> {
        if self.closed {
            return Err(io::Error::other("the session is closed"));
        }
        if self.token.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the session is registered already",
            ));
        }
        let clone = registry.try_clone()?;
        registry.register(
            &mut self.stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.token = Some(token);
        if let Err(e) = self.register_all(registry) {
            self.deregister_all(registry);
            self.token = None;
            return Err(e);
        }
        self.registry = Some(clone);
        Ok(())
    }

    fn reregister(&mut self, registry: &Registry, token: Token, i: Interest) -> io::Result<()> {
        mio::event::Source::deregister(self, registry)?;
        mio::event::Source::register(self, registry, token, i)
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        if self.token.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the session is not registered",
            ));
        }
        self.deregister_all(registry);
        self.token = None;
        self.registry = None;
        Ok(())
    }
}
