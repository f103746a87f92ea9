//! A small ready-made event loop for users without one of their own: one thread, one
//! `Poll`, any number of sessions.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use mio::{Events, Interest, Poll, Token, Waker};
use vhost_backend::Device;

use crate::session::MAX_TOKEN_SPAN;
use crate::session::Status;
use crate::{Error, Listener, Session};

const WAKER: Token = Token(usize::MAX);
const LISTENER: Token = Token(usize::MAX - 1);

/// Events taken per `epoll_wait`.
const EVENTS: usize = 1024;

/// How often sessions with rings to poll ([`Session::wants_polling`]) are looked at.
const POLL_INTERVAL: Duration = Duration::from_millis(1);

/// How long to wait before accepting again when the process is out of fds.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

type Factory<D> = Box<dyn FnMut() -> Arc<D> + Send>;

/// What other threads share with a running [`Server`].
#[derive(Debug)]
struct Shared {
    waker: Waker,
    stop: AtomicBool,
    /// Sessions being served (for other threads).
    live: AtomicUsize,
    incoming: Mutex<Vec<std::os::unix::net::UnixStream>>,
}

/// Serves any number of front-ends in one thread: accepts on a [`Listener`] and/or takes
/// connected sockets from [`Handle::add`], each in its own [`Session`] with a device from
/// the factory (the same shared device by default).
///
/// ```
/// use std::os::unix::net::UnixStream;
/// use vhost_io_mio::Server;
/// use vhost_backend::echo::Echo;
/// use vhost_frontend::Frontend;
/// use vhost_proto::wire::VirtioFeatures;
///
/// let server = Server::new(Echo::new(1))?.spawn()?;
/// let (ours, theirs) = UnixStream::pair()?;
/// server.handle().add(theirs)?;
/// let mut front = Frontend::from_stream(ours)?;
/// assert!(front.get_features()?.contains(VirtioFeatures::VERSION_1));
/// drop(front);
/// server.stop()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Server<D: Device + ?Sized> {
    poll: Poll,
    events: Events,
    tokens: Vec<Token>,
    listener: Option<Listener>,
    sessions: Vec<Option<Box<Session<D>>>>,
    free: Vec<usize>,
    live: usize,
    factory: Factory<D>,
    shared: Arc<Shared>,
    accept_backoff: bool,
    /// Slots of the sessions that want polling.
    polled: Vec<usize>,
}

impl<D: Device + ?Sized> std::fmt::Debug for Server<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listener", &self.listener)
            .field("sessions", &self.live)
            .finish_non_exhaustive()
    }
}

impl<D: Device> Server<D> {
    /// A server whose sessions all share `device` (its state carries across
    /// connections, as with the std binding's server).
    pub fn new(device: D) -> Result<Self, Error> {
        let device = Arc::new(device);
        Self::with_factory(move || Arc::clone(&device))
    }
}

impl<D: Device + ?Sized> Server<D> {
    /// A server that asks `factory` for the device of each new connection (`D` may be
    /// `dyn Device`: different device types in one loop).
    pub fn with_factory(factory: impl FnMut() -> Arc<D> + Send + 'static) -> Result<Self, Error> {
        let poll = Poll::new().map_err(|e| Error::io("epoll_create", e))?;
        let waker = Waker::new(poll.registry(), WAKER).map_err(|e| Error::io("eventfd", e))?;
        Ok(Server {
            poll,
            events: Events::with_capacity(EVENTS),
            tokens: Vec::new(),
            listener: None,
            sessions: Vec::new(),
            free: Vec::new(),
            live: 0,
            factory: Box::new(factory),
            shared: Arc::new(Shared {
                waker,
                stop: AtomicBool::new(false),
                live: AtomicUsize::new(0),
                incoming: Mutex::new(Vec::new()),
            }),
            accept_backoff: false,
            polled: Vec::new(),
        })
    }

    /// Also accepts connections on `path` (see [`Listener::bind`]).
    pub fn bind(self, path: impl AsRef<Path>) -> Result<Self, Error> {
        self.listen(Listener::bind(path)?)
    }

    /// Also accepts connections on `listener`.
    pub fn listen(mut self, mut listener: Listener) -> Result<Self, Error> {
        self.poll
            .registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(|e| Error::io("epoll_ctl", e))?;
        self.listener = Some(listener);
        Ok(self)
    }

    /// Serves a connected socket (the `--fd` convention, one end of a socketpair).
    pub fn add(&mut self, stream: std::os::unix::net::UnixStream) -> Result<Token, Error> {
        let device = (self.factory)();
        let session = Session::from_std(stream, device)?;
        self.insert(session)
    }

    /// A handle to add connections or stop the server from other threads.
    pub fn handle(&self) -> Handle {
        Handle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// How many sessions are being served.
    pub fn sessions(&self) -> usize {
        self.live
    }

    /// The session registered under `token`.
    pub fn session(&self, token: Token) -> Option<&Session<D>> {
        self.sessions.get(token.0 / MAX_TOKEN_SPAN)?.as_deref()
    }

    /// Serves until [`Handle::stop`]; every session is then closed.
    pub fn run(&mut self) -> Result<(), Error> {
        while !self.shared.stop.load(Ordering::Acquire) {
            self.run_once(None)?;
        }
        self.close_all();
        Ok(())
    }

    /// Waits for events (at most `timeout`) and serves them: one turn of the loop, for
    /// callers that interleave other work.
    pub fn run_once(&mut self, timeout: Option<Duration>) -> Result<(), Error> {
        let cap = |t: Option<Duration>, max: Duration| Some(t.map_or(max, |t| t.min(max)));
        let mut timeout = timeout;
        if self.accept_backoff {
            timeout = cap(timeout, ACCEPT_BACKOFF);
        }
        if !self.polled.is_empty() {
            timeout = cap(timeout, POLL_INTERVAL);
        }
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(Error::io("epoll_wait", e)),
        }
        self.tokens.clear();
        self.tokens.extend(self.events.iter().map(|e| e.token()));
        if self.accept_backoff {
            self.tokens.push(LISTENER);
        }
        self.tokens
            .extend(self.polled.iter().map(|&s| Token(s * MAX_TOKEN_SPAN)));
        for i in 0..self.tokens.len() {
            let Some(&token) = self.tokens.get(i) else {
                break;
            };
            match token {
                WAKER => self.take_incoming(),
                LISTENER => self.accept_all(),
                token => self.serve(token),
            }
        }
        Ok(())
    }

    /// Runs [`run`](Self::run) in a thread of its own.
    pub fn spawn(mut self) -> Result<ServerHandle, Error>
    where
        Self: Send + 'static,
    {
        let handle = self.handle();
        let thread = std::thread::Builder::new()
            .name("vhost-mio".into())
            .spawn(move || self.run())
            .map_err(|e| Error::io("spawn", e))?;
        Ok(ServerHandle { handle, thread })
    }

    fn insert(&mut self, session: Session<D>) -> Result<Token, Error> {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.sessions.push(None);
                self.sessions.len() - 1
            }
        };
        // Each session's rings use the tokens after its own.
        let token = Token(slot * MAX_TOKEN_SPAN);
        let mut session = Box::new(session);
        if let Err(e) = self
            .poll
            .registry()
            .register(session.as_mut(), token, Interest::READABLE)
        {
            // Undo what did get registered.
            session.close(self.poll.registry());
            self.free.push(slot);
            return Err(Error::io("epoll_ctl", e));
        }
        if let Some(s) = self.sessions.get_mut(slot) {
            *s = Some(session);
            self.live += 1;
            self.shared.live.store(self.live, Ordering::Relaxed);
        }
        Ok(token)
    }

    fn serve(&mut self, token: Token) {
        let slot = token.0 / MAX_TOKEN_SPAN;
        let registry = self.poll.registry();
        let Some(Some(session)) = self.sessions.get_mut(slot) else {
            return; // a stale event of a session closed earlier in this batch
        };
        let result = session.ready(registry, token);
        let wants_polling = session.wants_polling();
        let ended = match result {
            Ok(Status::Open) => false,
            Ok(Status::Closed) => {
                log::debug!("vhost-io-mio: front-end {slot} disconnected");
                true
            }
            Err(e) => {
                log::warn!("vhost-io-mio: connection {slot} closed: {e}");
                true
            }
        };
        let listed = self.polled.iter().position(|&s| s == slot);
        match (wants_polling && !ended, listed) {
            (true, None) => self.polled.push(slot),
            (false, Some(k)) => {
                self.polled.swap_remove(k);
            }
            _ => {}
        }
        if ended {
            if let Some(s) = self.sessions.get_mut(slot) {
                *s = None;
            }
            self.free.push(slot);
            self.live -= 1;
            self.shared.live.store(self.live, Ordering::Relaxed);
        }
    }

    fn accept_all(&mut self) {
        self.accept_backoff = false;
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok(Some(stream)) => {
                    let session = Session::new(stream, (self.factory)());
                    if let Err(e) = self.insert(session) {
                        log::warn!("vhost-io-mio: cannot serve a new connection: {e}");
                    }
                }
                Ok(None) => return,
                Err(Error::Io { source, .. })
                    if source.raw_os_error().is_some_and(|n| {
                        n == rustix::io::Errno::MFILE.raw_os_error()
                            || n == rustix::io::Errno::NFILE.raw_os_error()
                    }) =>
                {
                    // Out of fds: the connection stays in the backlog; try again soon
                    // (the listener's edge will not come again for it).
                    log::warn!("vhost-io-mio: accept: out of file descriptors, backing off");
                    self.accept_backoff = true;
                    return;
                }
                Err(e) => {
                    log::error!("vhost-io-mio: {e}");
                    return;
                }
            }
        }
    }

    fn take_incoming(&mut self) {
        let streams = std::mem::take(
            &mut *self
                .shared
                .incoming
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for s in streams {
            if let Err(e) = self.add(s) {
                log::warn!("vhost-io-mio: cannot serve an added connection: {e}");
            }
        }
    }

    fn close_all(&mut self) {
        let registry = self.poll.registry();
        for s in self.sessions.iter_mut() {
            if let Some(s) = s.take() {
                s.close(registry);
            }
        }
        self.sessions.clear();
        self.free.clear();
        self.polled.clear();
        self.live = 0;
        self.shared.live.store(0, Ordering::Relaxed);
    }
}

impl<D: Device + ?Sized> Drop for Server<D> {
    fn drop(&mut self) {
        self.close_all();
    }
}

/// Adds connections to a [`Server`] or stops it, from any thread.
#[derive(Debug, Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

impl Handle {
    /// Hands a connected socket to the server, which serves it from its next turn.
    pub fn add(&self, stream: std::os::unix::net::UnixStream) -> Result<(), Error> {
        self.shared
            .incoming
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(stream);
        self.shared
            .waker
            .wake()
            .map_err(|e| Error::io("eventfd write", e))
    }

    /// How many sessions the server is serving.
    pub fn sessions(&self) -> usize {
        self.shared.live.load(Ordering::Relaxed)
    }

    /// Asks the server to stop: [`Server::run`] closes every session and returns.
    pub fn stop(&self) -> Result<(), Error> {
        self.shared.stop.store(true, Ordering::Release);
        self.shared
            .waker
            .wake()
            .map_err(|e| Error::io("eventfd write", e))
    }
}

/// A [`Server`] running in its own thread.
#[derive(Debug)]
pub struct ServerHandle {
    handle: Handle,
    thread: JoinHandle<Result<(), Error>>,
}

impl ServerHandle {
    /// A handle to add connections or stop the server.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Stops the server and waits for it; returns what [`Server::run`] returned.
    pub fn stop(self) -> Result<(), Error> {
        self.handle.stop()?;
        match self.thread.join() {
            Ok(r) => r,
            Err(_) => Err(Error::io(
                "join",
                io::Error::other("server thread panicked"),
            )),
        }
    }
}
