//! Serving one front-end connection: a `poll` loop around the protocol core; its events are
//! handled by the shared [`SessionState`], with the queues running on worker threads (a
//! thread per queue group, started with the group's first running queue and ended with
//! its last).
//!
//! The loop waits on the socket, the server's stop signal, the workers' `done` eventfd
//! (a ring that was asked to stop has quiesced) and, while the connection looks stalled,
//! the server's listener: a front-end that stops mid-message (or sends nothing at all)
//! for longer than the stall timeout while another front-end is waiting loses its
//! connection to it.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::io::Errno;
use vhost_backend::os::eventfd::EventFd;
use vhost_backend::os::socket::{recv_with_fds, send_all_with_fds};
use vhost_backend::state::{Notifier, Rings, SessionState};
use vhost_backend::{Device, ServedQueue};
use vhost_proto::backend::Event;

use crate::ServeError;

use super::groups::Placement;
use super::worker::{Command, Notifiers, Worker};

/// Bytes read per `recvmsg`: the largest request (a 2 KiB SHMEM config, a 4 KiB config
/// write) fits; several small pipelined requests too.
const READ_BUF: usize = 8192;

/// How a connection ended without an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ended {
    /// The front-end closed the socket.
    Disconnected,
    /// [`ServerHandle::stop`](super::ServerHandle::stop) was called.
    Stopped,
    /// The front-end stalled (mid-message, or silent since it connected) for longer than
    /// the stall timeout while another front-end was waiting: it was disconnected.
    Preempted,
}

/// The std runner's [`Rings`]: one worker thread per queue group with running rings
/// (by default a group per queue).
struct Workers {
    placement: Placement,
    /// Per ring: the serial of the worker that holds it.
    slots: Vec<Option<u64>>,
    groups: Vec<GroupThread>,
    next_serial: u64,
    /// Signalled by every worker that hands a ring back or ends.
    done: Arc<EventFd>,
}

/// A group's running worker.
struct GroupThread {
    group: u16,
    serial: u64,
    worker: Worker,
    /// Rings of this session the worker holds (running or stopping).
    rings: usize,
}

/// One connection's state besides the socket.
pub(crate) struct Session<D: Device> {
    state: SessionState<D>,
    workers: Workers,
}

/// What a session needs from its server.
pub(crate) struct Context<'a> {
    pub stop: &'a StopSignal,
    /// The server's listener (a listening server): watched for a waiting front-end while
    /// this connection looks stalled.
    pub listener: Option<&'a UnixListener>,
    pub stall_timeout: Duration,
}

impl<D: Device> Session<D> {
    pub(crate) fn new(device: Arc<D>, placement: Placement) -> Result<Self, ServeError> {
        let state = SessionState::new(device);
        let n = state.connection().rings().len();
        Ok(Session {
            state,
            workers: Workers {
                placement,
                slots: vec![None; n],
                groups: Vec::new(),
                next_serial: 0,
                done: Arc::new(EventFd::new(true).map_err(|e| ServeError::io("eventfd", e))?),
            },
        })
    }

    /// Serves `stream` until the front-end disconnects, `stop` is signalled, the
    /// connection fails or is preempted. Every ring is stopped (its requests completed)
    /// before returning.
    pub(crate) fn run(
        mut self,
        stream: &UnixStream,
        cx: &Context<'_>,
    ) -> Result<Ended, ServeError> {
        let r = self.serve(stream, cx);
        self.shutdown();
        r
    }

    fn serve(&mut self, stream: &UnixStream, cx: &Context<'_>) -> Result<Ended, ServeError> {
        // A front-end that never reads its replies cannot hold us either.
        stream
            .set_write_timeout(Some(cx.stall_timeout))
            .map_err(|e| ServeError::io("setsockopt(SO_SNDTIMEO)", e))?;
        let mut buf = vec![0u8; READ_BUF];
        let connected = Instant::now();
        let mut partial_since: Option<Instant> = None;
        let mut someone_waits = false;
        loop {
            // Stalled: silent since connecting (no SET_OWNER yet), or stopped mid-message.
            let suspect_since = if !self.state.connection().has_owner() {
                Some(partial_since.map_or(connected, |p| p.min(connected)))
            } else {
                partial_since
            };
            let deadline = suspect_since.and_then(|s| s.checked_add(cx.stall_timeout));
            if someone_waits && deadline.is_some_and(|d| Instant::now() >= d) {
                log::warn!(
                    "vhost-io-std: front-end stalled for {:?} with another one waiting: \
                     disconnecting it",
                    cx.stall_timeout
                );
                return Ok(Ended::Preempted);
            }
            let watch_listener = suspect_since.is_some() && !someone_waits;
            let timeout = if someone_waits {
                deadline.map(|d| d.saturating_duration_since(Instant::now()))
            } else {
                None
            };
            let read_room = self.state.connection().input_room();
            let w = wait(
                stream,
                read_room > 0,
                cx.stop.event(),
                &self.workers.done,
                cx.listener.filter(|_| watch_listener),
                timeout,
            )?;
            if w.stop {
                return Ok(Ended::Stopped);
            }
            if w.listener {
                someone_waits = true;
            }
            if w.done {
                if let Err(e) = self.workers.done.try_consume() {
                    return Err(ServeError::io("eventfd read", e));
                }
                if self.state.memory_faulted() {
                    log::error!("vhost-io-std: guest memory faulted under its mapping");
                    return Err(ServeError::GuestMemoryFault);
                }
                self.state.poll_pending(&mut self.workers);
                self.drain(stream)?;
            }
            if !w.socket {
                continue;
            }
            let room = read_room.clamp(1, buf.len());
            let mut fds = Vec::new();
            let read = buf.get_mut(..room).unwrap_or_default();
            let n = match recv_with_fds(stream, read, &mut fds) {
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
            self.feed(stream, bytes, fds)?;
            partial_since = if self.state.connection().is_mid_message() {
                partial_since.or(Some(Instant::now()))
            } else {
                None
            };
        }
    }

    /// Feeds one read and its fds to the connection (it attributes the fds to their
    /// message) and handles what follows.
    fn feed(
        &mut self,
        stream: &UnixStream,
        bytes: &[u8],
        fds: Vec<OwnedFd>,
    ) -> Result<(), ServeError> {
        self.state.connection_mut().handle_input(bytes, fds)?;
        self.drain(stream)
    }

    /// Handles every pending event, then writes every pending transmit, until the
    /// connection has nothing more to say. Events first: an ack the connection queued for
    /// a request goes out once the runtime has acted on it.
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
                    event => self.state.handle(event, &mut self.workers),
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

    /// Stops every ring, waiting for their handlers to complete what they hold.
    fn shutdown(&mut self) {
        self.state.close(&mut self.workers);
        while !self.state.is_closed() {
            if let Err(e) = self.workers.done.wait() {
                log::error!("vhost-io-std: waiting for the queue workers failed: {e}");
                // Dropping the workers joins them.
                self.workers.groups.clear();
            }
            self.state.poll_pending(&mut self.workers);
        }
    }
}

impl Workers {
    /// The worker holding ring `index`.
    fn holder(&self, index: u16) -> Option<&GroupThread> {
        let serial = (*self.slots.get(usize::from(index))?)?;
        self.groups.iter().find(|g| g.serial == serial)
    }

    fn send(&self, index: u16, command: Command) {
        if let Some(g) = self.holder(index) {
            g.worker.send(command);
        }
    }

    /// A running worker for `group`, started if there is none (or it died).
    fn worker_for(&mut self, group: u16) -> std::io::Result<&mut GroupThread> {
        let at = match self
            .groups
            .iter()
            .position(|g| g.group == group && !g.worker.is_finished())
        {
            Some(at) => at,
            None => {
                let wait = self.placement.wait(group);
                let name = self.placement.thread_name(group, wait);
                let worker = Worker::spawn(name, wait, Arc::clone(&self.done))?;
                self.next_serial += 1;
                self.groups.push(GroupThread {
                    group,
                    serial: self.next_serial,
                    worker,
                    rings: 0,
                });
                self.groups.len() - 1
            }
        };
        self.groups
            .get_mut(at)
            .ok_or_else(|| std::io::Error::other("no worker"))
    }

    /// Ring `index` left its worker (handed back, or lost with it); a worker left
    /// without rings ends (it has nothing to finish: dropping it joins it at once).
    fn release(&mut self, index: u16, serial: u64) {
        if let Some(slot) = self.slots.get_mut(usize::from(index)) {
            *slot = None;
        }
        if let Some(at) = self.groups.iter().position(|g| g.serial == serial)
            && let Some(g) = self.groups.get_mut(at)
        {
            g.rings = g.rings.saturating_sub(1);
            if g.rings == 0 {
                drop(self.groups.swap_remove(at));
            }
        }
    }
}

impl<D: Device> Rings<D> for Workers {
    fn run(&mut self, state: &SessionState<D>, ring: ServedQueue) {
        let index = ring.index();
        let notifiers = Notifiers {
            kick: dup(state, index, Notifier::Kick),
            call: dup(state, index, Notifier::Call),
            err: dup(state, index, Notifier::Err),
        };
        let group = self.placement.group(index);
        let serial = match self.worker_for(group) {
            Ok(g) => {
                g.worker.send(Command::Run(Box::new(ring), notifiers));
                g.rings += 1;
                Some(g.serial)
            }
            Err(e) => {
                log::error!("vhost-io-std: queue {index}: cannot start its worker: {e}");
                None
            }
        };
        if let Some(slot) = self.slots.get_mut(usize::from(index)) {
            *slot = serial;
        }
    }

    fn begin_stop(&mut self, index: u16) {
        self.send(index, Command::Stop(index));
    }

    fn poll_stop(&mut self, index: u16) -> Poll<Option<ServedQueue>> {
        let Some(g) = self.holder(index) else {
            return Poll::Ready(None);
        };
        let serial = g.serial;
        if let Some(q) = g.worker.take_stopped(index) {
            self.release(index, serial);
            return Poll::Ready(Some(q));
        }
        if g.worker.is_finished() {
            log::error!("vhost-io-std: queue {index}: its worker ended (panicked?)");
            self.release(index, serial);
            return Poll::Ready(None);
        }
        Poll::Pending
    }

    fn notifier_changed(&mut self, state: &SessionState<D>, index: u16, which: Notifier) {
        if self.holder(index).is_none() {
            return;
        }
        let fd = dup(state, index, which);
        self.send(
            index,
            match which {
                Notifier::Kick => Command::Kick(index, fd),
                Notifier::Call => Command::Call(index, fd),
                Notifier::Err => Command::Err(index, fd),
            },
        );
    }

    fn ring_enabled(&mut self, _: &SessionState<D>, index: u16, enabled: bool) {
        self.send(index, Command::Enabled(index, enabled));
    }

    fn ring_kicked(&mut self, _: &SessionState<D>, index: u16) {
        self.send(index, Command::Kicked(index));
    }
}

/// A duplicate of one of ring `index`'s notifiers, owned by its worker.
fn dup<D: Device>(state: &SessionState<D>, index: u16, which: Notifier) -> Option<EventFd> {
    state.notifier(index, which).unwrap_or_else(|e| {
        log::error!("vhost-io-std: queue {index}: cannot duplicate a notifier: {e}");
        None
    })
}

/// What one wait found ready.
struct Ready {
    socket: bool,
    stop: bool,
    done: bool,
    listener: bool,
}

/// Waits until the socket is readable (when `read`), `stop` or `done` is signalled, or
/// `listener` has a connection waiting; at most `timeout`.
fn wait(
    stream: &UnixStream,
    read: bool,
    stop: &EventFd,
    done: &EventFd,
    listener: Option<&UnixListener>,
    timeout: Option<Duration>,
) -> Result<Ready, ServeError> {
    let ts = timeout.map(|t| Timespec {
        tv_sec: i64::try_from(t.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(t.subsec_nanos()),
    });
    // Hang-ups are reported whatever the interest: wait on the socket always, read it
    // only when the connection has room.
    let socket_flags = if read {
        PollFlags::IN
    } else {
        PollFlags::empty()
    };
    let mut fds = vec![
        PollFd::new(stream, socket_flags),
        PollFd::from_borrowed_fd(stop.read_fd(), PollFlags::IN),
        PollFd::from_borrowed_fd(done.read_fd(), PollFlags::IN),
    ];
    if let Some(l) = listener {
        fds.push(PollFd::new(l, PollFlags::IN));
    }
    loop {
        match poll(&mut fds, ts.as_ref()) {
            Ok(_) => break,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(ServeError::io("poll", e)),
        }
    }
    let ready = |i: usize| fds.get(i).is_some_and(|f| !f.revents().is_empty());
    Ok(Ready {
        socket: ready(0),
        stop: ready(1),
        done: ready(2),
        listener: ready(3),
    })
}

/// The stop request shared by a server, its connection loop and its stoppers: an eventfd
/// that is never consumed, so every waiter sees it.
#[derive(Debug)]
pub(crate) struct StopSignal {
    event: EventFd,
}

impl StopSignal {
    pub(crate) fn new() -> Result<Self, ServeError> {
        Ok(StopSignal {
            event: EventFd::new(true).map_err(|e| ServeError::io("eventfd", e))?,
        })
    }

    /// The eventfd the loops poll.
    pub(crate) fn event(&self) -> &EventFd {
        &self.event
    }

    /// Requests the stop: wakes the accept loop and the connection.
    pub(crate) fn fire(&self) -> Result<(), ServeError> {
        self.event
            .signal()
            .map_err(|e| ServeError::io("eventfd write", e))
    }
}

/// Waits until `stream` is readable (or closed); `true` if `stop` fired instead.
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
