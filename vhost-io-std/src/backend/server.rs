//! Where connections come from (listen on a path, connect to one, an fd
//! already connected) and the serve loop around them.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::ServeError;
use vhost_backend::Device;

use super::groups::{BusyPoll, Placement};
use super::session::{Context, Ended, Session, StopSignal, wait_readable};
use vhost_backend::os::socket::remove_stale_socket;

/// A vhost-user back-end server: serves a [`Device`] to one front-end
/// connection at a time, each in a fresh session (the device's own state
/// carries over).
///
/// ```
/// use std::os::unix::net::UnixStream;
/// use std::sync::Arc;
/// use vhost_backend::{Device, Queue, QueueHandler, handler_fn};
/// use vhost_io_std::backend::Server;
/// use vhost_io_std::frontend::Frontend;
/// use vhost_proto::backend::{DeviceDescription, Refused};
/// use vhost_proto::wire::{ProtocolFeatures, VirtioFeatures};
///
/// struct Null;
/// impl Device for Null {
///     fn description(&self) -> DeviceDescription {
///         DeviceDescription::new(VirtioFeatures::VERSION_1, ProtocolFeatures::REPLY_ACK, 1)
///     }
///     fn start_queue(self: Arc<Self>, _: &Queue) -> Result<Box<dyn QueueHandler>, Refused> {
///         Ok(Box::new(handler_fn(|q: &mut Queue| {
///             while let Some(chain) = q.pop()? {
///                 q.complete(chain, 0)?;
///             }
///             Ok(())
///         })))
///     }
/// }
///
/// let dir = std::env::temp_dir().join(format!("vhost-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let path = dir.join("null.sock");
/// let server = Server::bind(&path, Null)?.spawn()?;
/// let mut front = Frontend::connect(&path)?;
/// let features = front.get_features()?;
/// assert!(features.contains(VirtioFeatures::VERSION_1));
/// drop(front);
/// server.stop()?;
/// assert!(!path.exists()); // the server removed its socket
/// # std::fs::remove_dir(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Server<D: Device> {
    device: Arc<D>,
    source: Source,
    stop: Arc<StopSignal>,
    stall_timeout: Duration,
    placement: Placement,
}

/// How long a front-end may stall (stop mid-message, or stay silent after connecting)
/// while another one waits, unless told otherwise
/// ([`Server::with_stall_timeout`]).
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug)]
enum Source {
    /// Accept connections; the path is removed when the server ends.
    Listener(UnixListener, Option<PathBuf>),
    /// Serve this one connection.
    Stream(UnixStream),
}

impl<D: Device> Server<D> {
    /// Listens on `path`. A stale socket file there (a socket nobody accepts
    /// on) is removed first; a live socket is [`BindError::AddrInUse`](vhost_backend::BindError), any
    /// other file `BindError::NotASocket`. The socket file is removed
    /// when the server ends.
    pub fn bind(path: impl AsRef<Path>, device: D) -> Result<Self, ServeError> {
        let path = path.as_ref();
        remove_stale_socket(path)?;
        let listener = UnixListener::bind(path).map_err(|e| ServeError::io("bind", e))?;
        Self::with_source(Source::Listener(listener, Some(path.to_owned())), device)
    }

    /// Accepts connections on a listener the caller made.
    pub fn from_listener(listener: UnixListener, device: D) -> Result<Self, ServeError> {
        Self::with_source(Source::Listener(listener, None), device)
    }

    /// Connects to a front-end listening on `path` (QEMU's `server=on`) and
    /// serves that one connection.
    pub fn connect(path: impl AsRef<Path>, device: D) -> Result<Self, ServeError> {
        let stream = UnixStream::connect(path).map_err(|e| ServeError::io("connect", e))?;
        Self::from_stream(stream, device)
    }

    /// Serves one connection that is already open (the `--fd` convention,
    /// spec §8, or one end of a socketpair).
    pub fn from_stream(stream: UnixStream, device: D) -> Result<Self, ServeError> {
        Self::with_source(Source::Stream(stream), device)
    }

    /// Serves the connected socket `fd` (the `--fd=FDNUM` convention).
    pub fn from_fd(fd: OwnedFd, device: D) -> Result<Self, ServeError> {
        Self::from_stream(UnixStream::from(fd), device)
    }

    fn with_source(source: Source, device: D) -> Result<Self, ServeError> {
        Ok(Server {
            device: Arc::new(device),
            source,
            stop: Arc::new(StopSignal::new()?),
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            placement: Placement::default(),
        })
    }

    /// Sets how long a front-end may stall while another one waits to connect (a
    /// listening server serves one front-end at a time): one that stops mid-message, or
    /// sends nothing after connecting, for longer is disconnected
    /// ([`Ended::Preempted`]) and the next one is served. Also bounds how long a reply
    /// may wait for a front-end that does not read. Default
    /// [`DEFAULT_STALL_TIMEOUT`]; at least 1 ms.
    pub fn with_stall_timeout(mut self, timeout: Duration) -> Self {
        self.stall_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Maps queues to threads: queues for which `group_of` returns the same group share
    /// one worker thread, which serves all of them (one `poll` on all their kicks and
    /// sources, or busy polling: [`with_busy_poll`](Self::with_busy_poll)). A group's
    /// thread runs while any of its queues is started (it starts with the first and ends
    /// with the last). Stopping one queue of a group (GET_VRING_BASE) leaves the others
    /// running. Default: a group per queue (`|index| index`), a thread per started queue.
    ///
    /// ```
    /// # use vhost_backend::echo::Echo;
    /// # use vhost_io_std::backend::{BusyPoll, Server};
    /// # let (_, b) = std::os::unix::net::UnixStream::pair()?;
    /// // A net device with 4 queue pairs and a control queue (index 8): a thread per
    /// // queue pair (RX 2k and TX 2k+1), busy polling, the control queue blocking.
    /// let server = Server::from_stream(b, Echo::new(9))?
    ///     .with_queue_groups(|index| index / 2)
    ///     .with_busy_poll_groups(|group| (group < 4).then(BusyPoll::new));
    /// # drop(server);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_queue_groups(
        mut self,
        group_of: impl Fn(u16) -> u16 + Send + Sync + 'static,
    ) -> Self {
        self.placement.set_groups(Arc::new(group_of));
        self
    }

    /// Every queue group busy-polls as `busy` says (see [`BusyPoll`]): its thread serves
    /// its started queues in a loop with driver notifications suppressed, and sleeps
    /// until a kick after an idle spin. Default: no group busy-polls (each blocks in
    /// `poll` until a kick).
    pub fn with_busy_poll(self, busy: BusyPoll) -> Self {
        self.with_busy_poll_groups(move |_| Some(busy))
    }

    /// The groups (see [`with_queue_groups`](Self::with_queue_groups)) for which
    /// `busy_of` returns `Some` busy-poll; the others block in `poll`.
    pub fn with_busy_poll_groups(
        mut self,
        busy_of: impl Fn(u16) -> Option<BusyPoll> + Send + Sync + 'static,
    ) -> Self {
        self.placement.set_busy(Arc::new(busy_of));
        self
    }

    /// The device.
    pub fn device(&self) -> &Arc<D> {
        &self.device
    }

    /// Serves until stopped: a listening server accepts one connection after
    /// another (a connection that breaks the protocol is closed and logged,
    /// and the next one is served); a connected server returns when its
    /// connection ends.
    pub fn serve(self) -> Result<(), ServeError> {
        match &self.source {
            Source::Stream(s) => self.serve_one(s, None).map(drop),
            Source::Listener(l, _) => loop {
                if wait_readable(l, self.stop.event())? {
                    return Ok(());
                }
                let stream = match l.accept() {
                    Ok((s, _)) => s,
                    Err(e) if transient(&e) => continue,
                    Err(e) => return Err(ServeError::io("accept", e)),
                };
                match self.serve_one(&stream, Some(l)) {
                    Ok(Ended::Stopped) => return Ok(()),
                    Ok(Ended::Preempted) => log::warn!("vhost-io-std: stalled front-end dropped"),
                    Ok(_) => log::debug!("vhost-io-std: front-end disconnected"),
                    Err(e) => log::warn!("vhost-io-std: connection closed: {e}"),
                }
            },
        }
    }

    fn serve_one(
        &self,
        stream: &UnixStream,
        listener: Option<&UnixListener>,
    ) -> Result<Ended, ServeError> {
        let cx = Context {
            stop: &self.stop,
            listener,
            stall_timeout: self.stall_timeout,
        };
        Session::new(Arc::clone(&self.device), self.placement.clone())?.run(stream, &cx)
    }

    /// Runs [`serve`](Self::serve) in a thread; the handle stops it.
    pub fn spawn(self) -> Result<ServerHandle, ServeError> {
        let stop = Arc::clone(&self.stop);
        let thread = std::thread::Builder::new()
            .name("vhost-server".into())
            .spawn(move || self.serve())
            .map_err(|e| ServeError::io("spawn", e))?;
        Ok(ServerHandle { stop, thread })
    }

    /// A handle that stops [`serve`](Self::serve) from another thread.
    pub fn stopper(&self) -> Stopper {
        Stopper {
            stop: Arc::clone(&self.stop),
        }
    }
}

impl<D: Device> Drop for Server<D> {
    fn drop(&mut self) {
        if let Source::Listener(_, Some(path)) = &self.source
            && let Err(e) = std::fs::remove_file(path)
            && e.kind() != io::ErrorKind::NotFound
        {
            log::warn!("vhost-io-std: cannot remove {}: {e}", path.display());
        }
    }
}

fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock | io::ErrorKind::ConnectionAborted
    )
}

/// Stops a [`Server`] from another thread (see [`Server::stopper`]).
#[derive(Debug, Clone)]
pub struct Stopper {
    stop: Arc<StopSignal>,
}

impl Stopper {
    /// Asks the server to stop: the connection being served is closed (its
    /// workers stopped first) and `serve` returns.
    pub fn stop(&self) -> Result<(), ServeError> {
        self.stop.fire()
    }
}

/// A server running in its own thread.
#[derive(Debug)]
pub struct ServerHandle {
    stop: Arc<StopSignal>,
    thread: JoinHandle<Result<(), ServeError>>,
}

impl ServerHandle {
    /// Stops the server and waits for it: the current connection is closed,
    /// every queue worker has exited, the socket file is removed. Returns
    /// what `serve` returned.
    pub fn stop(self) -> Result<(), ServeError> {
        self.stop.fire()?;
        self.join()
    }

    /// Waits for the server to end by itself (a connected server whose
    /// connection ended).
    pub fn join(self) -> Result<(), ServeError> {
        match self.thread.join() {
            Ok(r) => r,
            Err(_) => Err(ServeError::io(
                "join",
                io::Error::other("server thread panicked"),
            )),
        }
    }

    /// Whether the server thread has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }
}
