//! Serving one front-end connection: the blocking loop around
//! `backend::Connection<OwnedFd>`; its events are handled by the shared
//! [`SessionState`], with the queues running on worker threads.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, PoisonError};

use rustix::event::{PollFd, PollFlags, poll};
use rustix::io::Errno;
use vhost_proto::backend::Event;

use crate::ServeError;
use vhost_backend::os::eventfd::EventFd;
use vhost_backend::os::socket::{recv_with_fds, send_all_with_fds};

use super::worker::{SharedCall, Worker, WorkerSetup};
use vhost_backend::state::{Notifier, Rings, SessionState};
use vhost_backend::{Device, Framer, Queue};

/// Bytes read per `recvmsg`: the largest request (a 2 KiB SHMEM config, a
/// 4 KiB config write) fits; several small pipelined requests too.
const READ_BUF: usize = 8192;

/// How a connection ended without an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The front-end closed the socket.
    Disconnected,
    /// [`ServerHandle::stop`](super::ServerHandle::stop) was called.
    Stopped,
}

/// One ring's worker slot.
#[derive(Debug, Default)]
enum Slot {
    /// Not started, or started but its queue could not be built.
    #[default]
    Idle,
    Running(Worker),
    /// Stopped by the session (broken memory): keeps its position.
    Parked(Box<Queue>),
}

/// The std binding's [`Rings`]: one worker thread per running queue.
struct Workers {
    slots: Vec<Slot>,
    calls: Vec<SharedCall>,
}

/// One connection's state besides the socket.
pub(crate) struct Session<D: Device> {
    state: SessionState<D>,
    workers: Workers,
}

impl<D: Device> Session<D> {
    pub(crate) fn new(device: Arc<D>) -> Self {
        let state = SessionState::new(device);
        let n = state.connection().rings().len();
        Session {
            state,
            workers: Workers {
                slots: (0..n).map(|_| Slot::Idle).collect(),
                calls: (0..n).map(|_| Arc::new(Mutex::new(None))).collect(),
            },
        }
    }

    /// Serves `stream` until the front-end disconnects, `stop` is signalled,
    /// or the connection fails. Workers are stopped before returning.
    pub(crate) fn run(
        mut self,
        stream: &UnixStream,
        stop: &StopSignal,
    ) -> Result<Ended, ServeError> {
        let r = self.serve(stream, stop);
        self.shutdown();
        r
    }

    fn serve(&mut self, stream: &UnixStream, stop: &StopSignal) -> Result<Ended, ServeError> {
        let mut buf = vec![0u8; READ_BUF];
        let mut framer = Framer::default();
        // A blocking recvmsg per message, no poll: `stop` shuts the socket
        // down to wake it.
        let _registered = stop.register(stream)?;
        if stop.fired() {
            return Ok(Ended::Stopped);
        }
        loop {
            let room = self.state.connection().input_room().clamp(1, buf.len());
            let mut fds = Vec::new();
            let read = buf.get_mut(..room).unwrap_or_default();
            let n = match recv_with_fds(stream, read, &mut fds) {
                Ok(0) if stop.fired() => return Ok(Ended::Stopped),
                Ok(0) => return Ok(Ended::Disconnected),
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return Ok(Ended::Disconnected);
                }
                Err(e) => return Err(ServeError::io("recvmsg", e)),
            };
            let bytes = buf.get(..n).unwrap_or_default();
            let split = framer
                .last_header_start(bytes)
                .filter(|&s| s > 0 && !fds.is_empty());
            let conn = self.state.connection_mut();
            match split.and_then(|s| Some((bytes.get(..s)?, bytes.get(s..)?))) {
                Some((before, last)) => {
                    conn.handle_input(before, Vec::new())?;
                    self.drain(stream)?;
                    self.state.connection_mut().handle_input(last, fds)?;
                }
                None => conn.handle_input(bytes, fds)?,
            }
            self.drain(stream)?;
        }
    }

    /// Handles every pending event, then writes every pending transmit,
    /// until the connection has nothing more to say. Events first: an ack
    /// the connection queued for a request (SET_VRING_KICK, SET_FEATURES,
    /// ...) goes out once the binding has acted on it (the worker started,
    /// the channel gate updated), so a REPLY_ACK means "done".
    fn drain(&mut self, stream: &UnixStream) -> Result<(), ServeError> {
        loop {
            let mut lost = None;
            while let Some(event) = self.state.connection_mut().poll_event() {
                match event {
                    Event::ConnectionLost { error } => {
                        // What was queued before the failure still goes out.
                        lost = Some(error);
                        break;
                    }
                    event => self.handle(event),
                }
            }
            let sent = self.flush(stream)?;
            if let Some(error) = lost {
                return Err(error.into());
            }
            if !sent {
                return Ok(());
            }
        }
    }

    /// Writes every pending transmit; whether there was one.
    fn flush(&mut self, stream: &UnixStream) -> Result<bool, ServeError> {
        let mut sent = false;
        while let Some(t) = self.state.connection_mut().poll_transmit() {
            let fds: Vec<_> = t.fds.iter().map(AsFd::as_fd).collect();
            send_all_with_fds(stream, &t.bytes, &fds).map_err(|e| ServeError::io("sendmsg", e))?;
            sent = true;
        }
        Ok(sent)
    }

    fn handle(&mut self, event: Event<std::os::fd::OwnedFd>) {
        self.state.handle(event, &mut self.workers);
    }

    fn shutdown(&mut self) {
        self.state.shutdown(&mut self.workers);
    }
}

impl<D: Device> Rings<D> for Workers {
    fn start(&mut self, state: &SessionState<D>, queue: Queue) {
        self.update_call(state, queue.index());
        self.spawn(state, queue);
    }

    fn stop(&mut self, _: &SessionState<D>, index: u16) -> Option<Queue> {
        let slot = self.slots.get_mut(usize::from(index)).map(std::mem::take)?;
        match slot {
            Slot::Running(w) => w.stop(),
            Slot::Parked(q) => Some(*q),
            Slot::Idle => None,
        }
    }

    /// Running workers are stopped at a quiescent point, switched and
    /// restarted; parked queues are retried.
    fn memory_changed(&mut self, state: &SessionState<D>) {
        for i in 0..self.slots.len() {
            let slot = self
                .slots
                .get_mut(i)
                .map(std::mem::take)
                .unwrap_or_default();
            let queue = match slot {
                Slot::Running(w) => w.stop(),
                Slot::Parked(q) => Some(*q),
                Slot::Idle => None,
            };
            let Some(mut q) = queue else { continue };
            if state.move_queue(&mut q) {
                self.spawn(state, q);
            } else {
                self.park(q);
            }
        }
    }

    fn kick_changed(&mut self, state: &SessionState<D>, index: u16) {
        // The worker waits on the old kick fd: restart it on the new one.
        if let Some(q) = Rings::<D>::stop(self, state, index) {
            self.spawn(state, q);
        }
    }

    fn call_changed(&mut self, state: &SessionState<D>, index: u16) {
        self.update_call(state, index);
    }

    fn err_changed(&mut self, state: &SessionState<D>, index: u16) {
        if matches!(self.slots.get(usize::from(index)), Some(Slot::Running(_)))
            && let Some(q) = Rings::<D>::stop(self, state, index)
        {
            self.spawn(state, q);
        }
    }
}

impl Workers {
    fn park(&mut self, q: Queue) {
        if let Some(s) = self.slots.get_mut(usize::from(q.index())) {
            *s = Slot::Parked(Box::new(q));
        }
    }

    fn update_call<D: Device>(&mut self, state: &SessionState<D>, index: u16) {
        let fd = match state.notifier(index, Notifier::Call) {
            Ok(fd) => fd,
            Err(e) => {
                log::error!("vhost-io-std: queue {index}: cannot duplicate the call fd: {e}");
                None
            }
        };
        if let Some(c) = self.calls.get(usize::from(index)) {
            *c.lock().unwrap_or_else(PoisonError::into_inner) = fd;
        }
    }

    fn spawn<D: Device>(&mut self, state: &SessionState<D>, queue: Queue) {
        let index = queue.index();
        let kick = state.notifier(index, Notifier::Kick);
        let err = state.notifier(index, Notifier::Err);
        let (kick, err) = match (kick, err) {
            (Ok(k), Ok(e)) => (k, e),
            (Err(e), _) | (_, Err(e)) => {
                log::error!("vhost-io-std: queue {index}: cannot duplicate its notifiers: {e}");
                self.park(queue);
                return;
            }
        };
        let Some(call) = self.calls.get(usize::from(index)).cloned() else {
            return;
        };
        let setup = WorkerSetup {
            device: Arc::clone(state.device()),
            kick,
            call,
            err,
        };
        let slot = match Worker::spawn(queue, setup) {
            Ok(w) => Slot::Running(w),
            Err(e) => {
                log::error!("vhost-io-std: queue {index}: cannot start its worker: {e}");
                Slot::Idle
            }
        };
        if let Some(s) = self.slots.get_mut(usize::from(index)) {
            *s = slot;
        }
    }
}

/// The stop request shared by a server, its connection loop and its
/// stoppers: an eventfd (never consumed, so every waiter sees it) that wakes
/// the accept loop, and the connection being served, shut down to wake its
/// blocking `recvmsg`.
#[derive(Debug)]
pub(crate) struct StopSignal {
    event: EventFd,
    current: Mutex<Option<UnixStream>>,
}

/// Unregisters the connection when serving it ends.
pub(crate) struct Registered<'a>(&'a StopSignal);

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        *self
            .0
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }
}

impl StopSignal {
    pub(crate) fn new() -> Result<Self, ServeError> {
        Ok(StopSignal {
            event: EventFd::new(true).map_err(|e| ServeError::io("eventfd", e))?,
            current: Mutex::new(None),
        })
    }

    /// The eventfd the accept loop polls.
    pub(crate) fn event(&self) -> &EventFd {
        &self.event
    }

    /// Whether stop was requested (a zero-timeout poll, nothing consumed).
    pub(crate) fn fired(&self) -> bool {
        let mut fds = [PollFd::from_borrowed_fd(
            self.event.read_fd(),
            PollFlags::IN,
        )];
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        matches!(poll(&mut fds, Some(&zero)), Ok(n) if n > 0)
    }

    /// Makes `stream` the connection a stop request shuts down.
    pub(crate) fn register(&self, stream: &UnixStream) -> Result<Registered<'_>, ServeError> {
        let dup = stream.try_clone().map_err(|e| ServeError::io("dup", e))?;
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(dup);
        Ok(Registered(self))
    }

    /// Requests the stop: wakes the accept loop and the connection.
    pub(crate) fn fire(&self) -> Result<(), ServeError> {
        self.event
            .signal()
            .map_err(|e| ServeError::io("eventfd write", e))?;
        if let Some(s) = self
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            // ENOTCONN if the peer is already gone: nothing to wake then.
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        Ok(())
    }
}

/// Waits until `stream` is readable (or closed); `true` if `stop` fired
/// instead.
pub(crate) fn wait_readable(stream: impl AsFd, stop: &EventFd) -> Result<bool, ServeError> {
    let mut fds = [
        PollFd::new(&stream, PollFlags::IN),
        PollFd::from_borrowed_fd(stop.read_fd(), PollFlags::IN),
    ];
    loop {
        match poll(&mut fds, None) {
            Ok(_) => break,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(ServeError::io("poll", e)),
        }
    }
    let [_, s] = &fds;
    Ok(!s.revents().is_empty())
}
