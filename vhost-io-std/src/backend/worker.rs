//! One thread per started queue: waits on its kick fd, its control fd and its handler's
//! sources with one `poll`, reads the kick once per wakeup, lets the handler serve the
//! ring, and signals the call fd when the driver asked for it. The session thread talks to
//! it through commands (new notifiers, enable, in-band kick, stop); a stop lets the handler
//! complete what it holds first, and the worker reports the end on the session's `done`
//! eventfd instead of being joined while it still works.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::io::Errno;
use vhost_backend::os::eventfd::EventFd;
use vhost_backend::os::sigbus;
use vhost_backend::{Drained, ServedQueue};

/// Without a kick fd (no-fd flag: "poll the ring", spec §3.1) the worker looks at the ring
/// this often.
const POLL_INTERVAL: Timespec = Timespec {
    tv_sec: 0,
    tv_nsec: 1_000_000,
};

/// What the session thread tells a worker.
#[derive(Debug)]
pub(crate) enum Command {
    /// Stop once the handler has completed what it holds.
    Stop,
    /// The kick fd changed (a kick on the new fd before the worker switches is not lost:
    /// the worker looks at the ring when it switches).
    Kick(Option<EventFd>),
    /// The ring was enabled (look at it: chains may wait) or disabled.
    Enabled(bool),
    /// An in-band kick (VRING_KICK).
    Kicked,
}

/// The ring's notifiers (duplicates of the session's). The kick fd is the worker's own;
/// the call and err fds are swapped by the session thread in place, so that the ack of a
/// SET_VRING_CALL/ERR means the worker signals the new fd from then on.
#[derive(Debug, Default)]
pub(crate) struct Notifiers {
    /// `None`: poll the ring.
    pub kick: Option<EventFd>,
    pub call: Option<EventFd>,
    pub err: Option<EventFd>,
}

/// The call and err fds shared by a worker and its session thread.
#[derive(Debug, Default)]
struct Outputs {
    call: Mutex<Option<EventFd>>,
    err: Mutex<Option<EventFd>>,
}

#[derive(Debug)]
struct Shared {
    commands: Mutex<Vec<Command>>,
    outputs: Outputs,
    /// The session's `done` eventfd, also signalled when a guest-memory fault was
    /// contained (the session thread ends the session).
    done: Arc<EventFd>,
    /// Signalled with every command.
    control: EventFd,
    finished: AtomicBool,
}

/// A running worker.
#[derive(Debug)]
pub(crate) struct Worker {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<ServedQueue>>,
}

impl Worker {
    /// Starts a worker thread for `ring`; it signals `done` when it ends.
    pub(crate) fn spawn(
        ring: ServedQueue,
        notifiers: Notifiers,
        done: Arc<EventFd>,
    ) -> io::Result<Worker> {
        let Notifiers { kick, call, err } = notifiers;
        let shared = Arc::new(Shared {
            commands: Mutex::new(Vec::new()),
            outputs: Outputs {
                call: Mutex::new(call),
                err: Mutex::new(err),
            },
            done: Arc::clone(&done),
            control: EventFd::new(true)?,
            finished: AtomicBool::new(false),
        });
        let name = format!("vhost-q{}", ring.index());
        let theirs = Arc::clone(&shared);
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            let ring = run(ring, kick, &theirs);
            theirs.finished.store(true, Ordering::Release);
            if let Err(e) = done.signal() {
                log::error!("vhost-io-std: a queue worker cannot report its end: {e}");
            }
            ring
        })?;
        Ok(Worker {
            shared,
            thread: Some(thread),
        })
    }

    /// Sends a command.
    pub(crate) fn send(&self, command: Command) {
        self.shared
            .commands
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(command);
        if let Err(e) = self.shared.control.signal() {
            log::error!("vhost-io-std: cannot signal a queue worker: {e}");
        }
    }

    /// Replaces the call fd: the worker signals the new one from now on.
    pub(crate) fn set_call(&self, fd: Option<EventFd>) {
        *lock(&self.shared.outputs.call) = fd;
    }

    /// Replaces the err fd: the worker signals the new one from now on.
    pub(crate) fn set_err(&self, fd: Option<EventFd>) {
        *lock(&self.shared.outputs.err) = fd;
    }

    /// Whether the worker ended (after a stop, or because it panicked).
    pub(crate) fn is_finished(&self) -> bool {
        self.shared.finished.load(Ordering::Acquire)
            || self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// The ended worker's ring; `None` if the thread panicked (the ring is lost, the
    /// session continues).
    pub(crate) fn join(mut self) -> Option<ServedQueue> {
        let thread = self.thread.take()?;
        match thread.join() {
            Ok(q) => Some(q),
            Err(_) => {
                log::error!("vhost-io-std: a queue worker panicked");
                None
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            // Stop it and wait: the handler may still be using guest memory.
            self.send(Command::Stop);
            let _ = t.join();
        }
    }
}

fn run(mut ring: ServedQueue, kick: Option<EventFd>, shared: &Shared) -> ServedQueue {
    let mut n = Ring {
        kick,
        outputs: &shared.outputs,
    };
    let index = ring.index();
    // Taken before the ring is first touched: a fault in the first pass counts.
    let mut faults = sigbus::total_faults();
    // Look at the ring once when it starts (spec §7.2: tolerate a start without a kick).
    serve(&mut ring, &n);
    let sources: Vec<_> = ring.sources().to_vec();
    loop {
        if ring.is_quiesced() {
            break;
        }
        let now = sigbus::total_faults();
        if now != faults {
            // Some mapping faulted (maybe ours; the access was contained): the session
            // thread looks and ends the session if it is its memory.
            faults = now;
            if let Err(e) = shared.done.signal() {
                log::error!("vhost-io-std: queue {index}: cannot report a memory fault: {e}");
            }
        }
        let watch_kick = !ring.is_stopping() && !ring.is_broken();
        let kick = n.kick.as_ref().filter(|_| watch_kick);
        let timeout = (watch_kick && n.kick.is_none()).then_some(&POLL_INTERVAL);
        let watch_sources = !ring.is_broken();
        // The poll set borrows the notifiers for this round only (commands may replace
        // them afterwards).
        let (control_ready, kick_ready, ready_sources) = {
            let mut round: Vec<PollFd<'_>> = Vec::with_capacity(2 + sources.len());
            round.push(PollFd::from_borrowed_fd(
                shared.control.read_fd(),
                PollFlags::IN,
            ));
            if let Some(k) = kick {
                round.push(PollFd::from_borrowed_fd(k.read_fd(), PollFlags::IN));
            }
            let first_source = round.len();
            let borrowed: Vec<_> = if watch_sources {
                sources
                    .iter()
                    // SAFETY: the handler owns these fds and keeps them open while it
                    // lives (the `Source` contract); it lives in `ring`, which outlives
                    // this round.
                    .map(|s| unsafe { std::os::fd::BorrowedFd::borrow_raw(s.fd) })
                    .collect()
            } else {
                Vec::new()
            };
            for b in &borrowed {
                round.push(PollFd::from_borrowed_fd(*b, PollFlags::IN));
            }
            if let Err(e) = poll_retry(&mut round, timeout) {
                log::error!("vhost-io-std: queue {index}: poll failed: {e}");
                ring.set_broken();
                signal_err(index, &n);
                continue;
            }
            let revents = |i: usize| {
                round
                    .get(i)
                    .map(PollFd::revents)
                    .unwrap_or(PollFlags::empty())
            };
            let control = !revents(0).is_empty();
            let kick_ready = kick.is_some().then(|| revents(1));
            let ready: Vec<u32> = sources
                .iter()
                .enumerate()
                .filter(|(i, _)| watch_sources && !revents(first_source + i).is_empty())
                .map(|(_, s)| s.id)
                .collect();
            (control, kick_ready, ready)
        };
        let mut look = false;
        if control_ready {
            consume(&shared.control);
            let commands = std::mem::take(
                &mut *shared
                    .commands
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner),
            );
            for c in commands {
                match c {
                    Command::Stop => {
                        if let Err(e) = ring.begin_stop(|| n.signal_call(index)) {
                            log::error!("vhost-io-std: queue {index} stopped processing: {e}");
                            signal_err(index, &n);
                        }
                    }
                    Command::Kick(k) => {
                        n.kick = k;
                        look = true;
                    }
                    Command::Enabled(on) => look |= on,
                    Command::Kicked => look = true,
                }
            }
        }
        match kick_ready {
            Some(rev) if !rev.is_empty() => {
                if kick_consumed(index, n.kick.as_ref(), rev) {
                    look = true;
                } else {
                    // A kick fd at EOF or in error: the ring cannot be served any more.
                    ring.set_broken();
                    signal_err(index, &n);
                }
            }
            _ => {}
        }
        if timeout.is_some() {
            // No kick fd: look at the ring every interval.
            look = true;
        }
        if look {
            serve(&mut ring, &n);
        }
        for id in ready_sources {
            if let Err(e) = ring.ready(id, || n.signal_call(index)) {
                log::error!("vhost-io-std: queue {index} stopped processing: {e}");
                signal_err(index, &n);
            }
        }
    }
    ring
}

/// Lets the handler drain the ring (no round limit: the worker has its thread to itself).
fn serve(ring: &mut ServedQueue, n: &Ring<'_>) {
    let index = ring.index();
    match ring.drain(usize::MAX, || n.signal_call(index)) {
        Ok(Drained::Idle | Drained::Busy) => {}
        Err(e) => {
            log::error!("vhost-io-std: queue {index} stopped processing: {e}");
            signal_err(index, n);
        }
    }
}

/// Reads the kick fd once (poll said it is readable); `false` if it is at EOF or in error.
fn kick_consumed(index: u16, kick: Option<&EventFd>, revents: PollFlags) -> bool {
    let Some(kick) = kick else {
        return true;
    };
    let mut buf = [0u8; 512];
    loop {
        match rustix::io::read(kick.read_fd(), &mut buf) {
            Ok(0) => {
                log::warn!("vhost-io-std: queue {index}: the kick fd was closed by its writer");
                return false;
            }
            Ok(_) => return true,
            Err(Errno::AGAIN) => {
                // Nothing to read: a hang-up or error without data is the end of it.
                return !revents.intersects(PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL);
            }
            Err(Errno::INTR) => continue,
            Err(e) => {
                log::warn!("vhost-io-std: queue {index}: reading the kick fd failed: {e}");
                return false;
            }
        }
    }
}

fn consume(e: &EventFd) {
    if let Err(err) = e.try_consume() {
        log::error!("vhost-io-std: a worker's control fd failed: {err}");
    }
}

/// What the worker loop holds of its ring's notifiers.
struct Ring<'a> {
    /// `None`: poll the ring.
    kick: Option<EventFd>,
    outputs: &'a Outputs,
}

impl Ring<'_> {
    fn signal_call(&self, index: u16) {
        if let Some(c) = lock(&self.outputs.call).as_ref()
            && let Err(e) = c.signal()
        {
            log::warn!("vhost-io-std: queue {index}: cannot signal the call fd: {e}");
        }
    }
}

fn signal_err(index: u16, n: &Ring<'_>) {
    if let Some(err) = lock(&n.outputs.err).as_ref()
        && let Err(e) = err.signal()
    {
        log::warn!("vhost-io-std: queue {index}: cannot signal the err fd: {e}");
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn poll_retry(fds: &mut [PollFd<'_>], timeout: Option<&Timespec>) -> io::Result<()> {
    loop {
        match poll(fds, timeout) {
            Ok(_) => return Ok(()),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}
