//! Queue workers: one thread per queue group, serving 1..n started rings. The session
//! thread hands it rings and talks to it through commands (new notifiers, enable, in-band
//! kick, stop); a ring asked to stop lets its handler complete what it holds first, and the
//! worker hands the quiesced ring back (and signals the session's `done` eventfd) instead of
//! being joined while it still works.
//!
//! One loop, two ways to wait ([`Wait`]):
//! - **blocking**: one `poll` on the control fd, every ring's kick fd and every handler's
//!   sources; a kick is read once per wakeup and the ring drained
//!   ([`ServedQueue::drain`]: kicks suppressed while the handler works, re-enabled and
//!   re-checked afterwards);
//! - **busy polling**: kicks suppressed ([`ServedQueue::suppress_kicks`]), every ring's
//!   handler called each round ([`ServedQueue::poll_pass`]), the fds looked at with a
//!   zero-timeout `poll` every few rounds and the commands every round (an atomic flag).
//!   After the idle spin without work, every ring is drained (kicks re-enabled and
//!   re-checked) and the worker blocks like a blocking one until something wakes it.

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::io::Errno;
use vhost_backend::os::eventfd::EventFd;
use vhost_backend::os::sigbus;
use vhost_backend::{Drained, ServedQueue, Source};

use super::groups::Wait;

/// Without a kick fd (no-fd flag: "poll the ring", spec §3.1) a blocking worker looks at
/// the ring this often.
const POLL_INTERVAL: Timespec = Timespec {
    tv_sec: 0,
    tv_nsec: 1_000_000,
};

const NO_WAIT: Timespec = Timespec {
    tv_sec: 0,
    tv_nsec: 0,
};

/// Rounds a blocking worker drains one ring before it looks at the others (and its fds)
/// again; the ring is drained on right after.
const DRAIN_ROUNDS: usize = 64;

/// What the session thread tells a worker.
#[derive(Debug)]
pub(crate) enum Command {
    /// Serve this ring (just started), and look at it once (a start needs no kick).
    Run(Box<ServedQueue>, Notifiers),
    /// Stop ring `index` once its handler has completed what it holds, and hand it back.
    Stop(u16),
    /// Ring `index`'s kick fd changed.
    Kick(u16, Option<EventFd>),
    /// Ring `index`'s call fd changed.
    Call(u16, Option<EventFd>),
    /// Ring `index`'s err fd changed.
    Err(u16, Option<EventFd>),
    /// Ring `index` was enabled (look at it: chains may wait) or disabled.
    Enabled(u16, bool),
    /// An in-band kick of ring `index` (VRING_KICK).
    Kicked(u16),
    /// Stop every ring and end once they have quiesced.
    Exit,
}

/// A ring's notifiers, owned by its worker (duplicates of the session's).
#[derive(Debug, Default)]
pub(crate) struct Notifiers {
    /// `None`: poll the ring.
    pub kick: Option<EventFd>,
    pub call: Option<EventFd>,
    pub err: Option<EventFd>,
}

#[derive(Debug)]
struct Shared {
    commands: Mutex<Vec<Command>>,
    /// Set with every command: a spinning worker checks it every round, without a system
    /// call.
    pending: AtomicBool,
    /// Signalled with every command (wakes a blocked worker).
    control: EventFd,
    /// The session's `done` eventfd: signalled when a ring is handed back, when the
    /// worker ends, and when a guest-memory fault was contained (the session thread ends
    /// the session).
    done: Arc<EventFd>,
    /// Rings that quiesced after a stop, for the session to collect.
    stopped: Mutex<Vec<ServedQueue>>,
    finished: AtomicBool,
}

/// A running worker: the thread of one queue group.
#[derive(Debug)]
pub(crate) struct Worker {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts a worker thread named `name` with no ring yet (send [`Command::Run`]); it
    /// signals `done` whenever it hands a ring back and when it ends.
    pub(crate) fn spawn(name: String, wait: Wait, done: Arc<EventFd>) -> io::Result<Worker> {
        let shared = Arc::new(Shared {
            commands: Mutex::new(Vec::new()),
            pending: AtomicBool::new(false),
            done: Arc::clone(&done),
            control: EventFd::new(true)?,
            stopped: Mutex::new(Vec::new()),
            finished: AtomicBool::new(false),
        });
        let theirs = Arc::clone(&shared);
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            Group::new(&theirs, wait).run();
            theirs.finished.store(true, Ordering::Release);
            if let Err(e) = done.signal() {
                log::error!("vhost-io-std: a queue worker cannot report its end: {e}");
            }
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
        self.shared.pending.store(true, Ordering::Release);
        if let Err(e) = self.shared.control.signal() {
            log::error!("vhost-io-std: cannot signal a queue worker: {e}");
        }
    }

    /// Ring `index` if it quiesced after a stop (the worker no longer holds it).
    pub(crate) fn take_stopped(&self, index: u16) -> Option<ServedQueue> {
        let mut stopped = self
            .shared
            .stopped
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let at = stopped.iter().position(|q| q.index() == index)?;
        Some(stopped.swap_remove(at))
    }

    /// Whether the worker ended (after [`Command::Exit`], or because it panicked: the
    /// rings it held are lost, the session continues).
    pub(crate) fn is_finished(&self) -> bool {
        self.shared.finished.load(Ordering::Acquire)
            || self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            // Stop it and wait: the handlers may still be using guest memory. A worker
            // with no ring left ends at once.
            self.send(Command::Exit);
            if t.join().is_err() {
                log::error!("vhost-io-std: a queue worker panicked");
            }
        }
    }
}

/// One ring as its worker holds it.
struct Ring {
    q: ServedQueue,
    n: Notifiers,
    /// The handler's sources (asked once when the ring started).
    sources: Vec<Source>,
    /// Serve it in this round (a kick, a start, an enable, a drain that had more).
    look: bool,
    /// Kicks are suppressed for busy polling (re-enabled by the drain before sleeping).
    suppressed: bool,
}

impl Ring {
    fn index(&self) -> u16 {
        self.q.index()
    }

    /// Whether its kick fd is worth waiting on (a stopping or broken ring takes no chains).
    fn watches_kick(&self) -> bool {
        !self.q.is_stopping() && !self.q.is_broken()
    }

    /// A ring without a kick fd (spec §3.1: poll it) that takes chains.
    fn polled_without_kick(&self) -> bool {
        self.watches_kick() && self.n.kick.is_none()
    }

    /// Lets the handler drain the ring (kicks re-enabled afterwards).
    fn drain(&mut self, rounds: usize) -> Drained {
        let Ring { q, n, .. } = self;
        let index = q.index();
        let call = n.call.as_ref();
        self.suppressed = false;
        match q.drain(rounds, || signal(index, call)) {
            Ok(d) => d,
            Err(e) => {
                log::error!("vhost-io-std: queue {index} stopped processing: {e}");
                signal_err(index, n);
                Drained::Idle
            }
        }
    }

    /// One busy-poll pass (kicks suppressed first); whether it took chains.
    fn poll_pass(&mut self) -> bool {
        let Ring { q, n, .. } = self;
        let index = q.index();
        if !self.suppressed {
            q.suppress_kicks();
            self.suppressed = true;
        }
        let call = n.call.as_ref();
        match q.poll_pass(|| signal(index, call)) {
            Ok(took) => took,
            Err(e) => {
                log::error!("vhost-io-std: queue {index} stopped processing: {e}");
                signal_err(index, n);
                false
            }
        }
    }

    /// Source `id` is readable.
    fn ready(&mut self, id: u32) {
        let Ring { q, n, .. } = self;
        let index = q.index();
        let call = n.call.as_ref();
        if let Err(e) = q.ready(id, || signal(index, call)) {
            log::error!("vhost-io-std: queue {index} stopped processing: {e}");
            signal_err(index, n);
        }
    }

    fn begin_stop(&mut self) {
        let Ring { q, n, .. } = self;
        let index = q.index();
        let call = n.call.as_ref();
        if let Err(e) = q.begin_stop(|| signal(index, call)) {
            log::error!("vhost-io-std: queue {index} stopped processing: {e}");
            signal_err(index, n);
        }
    }
}

/// What one look at the fds found (kicks are consumed as they are found).
#[derive(Default)]
struct Found {
    control: bool,
    /// Anything at all was ready (a kick, a source, the control fd).
    any: bool,
}

/// A worker's loop state.
struct Group<'s> {
    shared: &'s Shared,
    wait: Wait,
    rings: Vec<Ring>,
    /// Sources found readable: (position in `rings`, id).
    ready: Vec<(usize, u32)>,
    exiting: bool,
    faults: u64,
    /// Busy polling: spinning with kicks suppressed (else blocked in poll, kicks on).
    spinning: bool,
    /// Busy polling: when the last round with work was (`None`: the last round had some).
    idle_since: Option<Instant>,
    rounds: u32,
}

impl<'s> Group<'s> {
    fn new(shared: &'s Shared, wait: Wait) -> Self {
        Group {
            shared,
            wait,
            rings: Vec::new(),
            ready: Vec::new(),
            exiting: false,
            faults: sigbus::total_faults(),
            spinning: false,
            idle_since: None,
            rounds: 0,
        }
    }

    fn run(&mut self) {
        loop {
            self.hand_back_quiesced();
            if self.exiting && self.rings.is_empty() {
                return;
            }
            self.check_faults();
            // A busy worker with no ring blocks on its control fd.
            let busy = match self.wait {
                Wait::Busy(b) if !self.rings.is_empty() => Some(b),
                _ => None,
            };
            let spin = busy.is_some() && self.spinning;
            let check_fds = match busy {
                Some(b) if spin => {
                    self.rounds = self.rounds.wrapping_add(1);
                    self.rounds.is_multiple_of(b.fd_check_rounds())
                }
                _ => true,
            };
            let mut found = Found::default();
            if check_fds {
                let timeout = if spin || self.rings.iter().any(|r| r.look) {
                    Some(&NO_WAIT)
                } else if self.rings.iter().any(Ring::polled_without_kick) {
                    Some(&POLL_INTERVAL)
                } else {
                    None
                };
                found = self.look_at_fds(timeout);
                if !spin {
                    // No kick fd: look at the ring every interval (or sooner).
                    for r in &mut self.rings {
                        r.look |= r.polled_without_kick();
                    }
                }
            }
            if found.control {
                consume(&self.shared.control);
            }
            // (Read before swapping: a spinning worker does not write the flag's cache
            // line every round.)
            let pending = self.shared.pending.load(Ordering::Acquire)
                && self.shared.pending.swap(false, Ordering::AcqRel);
            if found.control || pending {
                self.apply_commands();
            }
            let mut progress = !self.ready.is_empty();
            if spin {
                for r in &mut self.rings {
                    r.look = false;
                    progress |= r.poll_pass();
                }
            } else {
                for r in self.rings.iter_mut().filter(|r| r.look) {
                    r.look = r.drain(DRAIN_ROUNDS) == Drained::Busy;
                }
            }
            for (at, id) in std::mem::take(&mut self.ready) {
                if let Some(r) = self.rings.get_mut(at) {
                    r.ready(id);
                }
            }
            if let Some(b) = busy {
                self.busy_step(b, spin, progress, found.any);
            }
        }
    }

    /// The busy-polling state machine, after a round.
    fn busy_step(&mut self, b: super::BusyPoll, spun: bool, progress: bool, woken: bool) {
        if !spun {
            // Blocked (or just started): whatever woke us, spin now.
            if woken || self.rings.iter().any(|r| r.look) {
                self.spinning = true;
                self.idle_since = None;
            }
            return;
        }
        if progress {
            self.idle_since = None;
            return;
        }
        let Some(spin) = b.idle_spin() else {
            std::hint::spin_loop();
            return;
        };
        std::hint::spin_loop();
        let now = Instant::now();
        let since = *self.idle_since.get_or_insert(now);
        if now.saturating_duration_since(since) < spin {
            return;
        }
        // Idle for long enough: kicks back on (each drain re-checks the ring), then sleep
        // unless chains raced in.
        let mut more = false;
        for r in &mut self.rings {
            if r.q.is_broken() {
                continue;
            }
            let d = r.drain(1);
            r.look = false;
            more |= d == Drained::Busy;
        }
        if more {
            self.idle_since = None;
        } else {
            self.spinning = false;
        }
    }

    /// Hands every ring that quiesced back to the session.
    fn hand_back_quiesced(&mut self) {
        let mut i = 0;
        while let Some(r) = self.rings.get(i) {
            if !r.q.is_quiesced() {
                i += 1;
                continue;
            }
            let r = self.rings.swap_remove(i);
            let index = r.index();
            self.shared
                .stopped
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(r.q);
            if let Err(e) = self.shared.done.signal() {
                log::error!("vhost-io-std: queue {index}: cannot report its stop: {e}");
            }
        }
    }

    /// Some mapping faulted (maybe ours; the access was contained): the session thread
    /// looks and ends the session if it is its memory.
    fn check_faults(&mut self) {
        let now = sigbus::total_faults();
        if now != self.faults {
            self.faults = now;
            if let Err(e) = self.shared.done.signal() {
                log::error!("vhost-io-std: a queue worker cannot report a memory fault: {e}");
            }
        }
    }

    fn ring_mut(&mut self, index: u16) -> Option<&mut Ring> {
        self.rings.iter_mut().find(|r| r.index() == index)
    }

    fn apply_commands(&mut self) {
        let commands = std::mem::take(
            &mut *self
                .shared
                .commands
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for c in commands {
            match c {
                Command::Run(q, n) => {
                    let sources = q.sources().to_vec();
                    let mut ring = Ring {
                        q: *q,
                        n,
                        sources,
                        look: true,
                        suppressed: false,
                    };
                    if self.exiting {
                        ring.begin_stop();
                    }
                    // Rings are only appended here: positions in `ready` stay valid.
                    self.rings.push(ring);
                }
                Command::Stop(i) => {
                    if let Some(r) = self.ring_mut(i) {
                        r.begin_stop();
                    }
                }
                Command::Kick(i, k) => {
                    if let Some(r) = self.ring_mut(i) {
                        r.n.kick = k;
                        r.look = true;
                    }
                }
                Command::Call(i, c) => {
                    if let Some(r) = self.ring_mut(i) {
                        r.n.call = c;
                        // Completions published since the ring started may have found no
                        // call fd (SET_VRING_CALL comes after the kick that starts a
                        // ring) or the old one: one call on the new fd, so that the driver
                        // never waits for them (a spurious call is harmless).
                        signal(i, r.n.call.as_ref());
                    }
                }
                Command::Err(i, e) => {
                    if let Some(r) = self.ring_mut(i) {
                        r.n.err = e;
                    }
                }
                Command::Enabled(i, on) => {
                    if let Some(r) = self.ring_mut(i) {
                        r.look |= on;
                    }
                }
                Command::Kicked(i) => {
                    if let Some(r) = self.ring_mut(i) {
                        r.look = true;
                    }
                }
                Command::Exit => {
                    self.exiting = true;
                    for r in &mut self.rings {
                        r.begin_stop();
                    }
                }
            }
        }
    }

    /// One `poll` on the control fd, the kick fds and the sources (at most `timeout`):
    /// kicks are read (the ring marked to look at, or broken at EOF), ready sources queued
    /// in `self.ready`.
    fn look_at_fds(&mut self, timeout: Option<&Timespec>) -> Found {
        enum Entry {
            Control,
            Kick(usize),
            Source(usize, u32),
        }
        let mut entries = Vec::with_capacity(1 + 2 * self.rings.len());
        let revents: Vec<PollFlags> = {
            let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(entries.capacity());
            fds.push(PollFd::from_borrowed_fd(
                self.shared.control.read_fd(),
                PollFlags::IN,
            ));
            entries.push(Entry::Control);
            for (at, r) in self.rings.iter().enumerate() {
                if let Some(k) = r.n.kick.as_ref().filter(|_| r.watches_kick()) {
                    fds.push(PollFd::from_borrowed_fd(k.read_fd(), PollFlags::IN));
                    entries.push(Entry::Kick(at));
                }
                if r.q.is_broken() {
                    continue;
                }
                for s in &r.sources {
                    // SAFETY: the handler owns these fds and keeps them open while it
                    // lives (the `Source` contract); it lives in `self.rings`, which
                    // outlives this poll (nothing is removed before it returns).
                    let fd = unsafe { BorrowedFd::borrow_raw(s.fd) };
                    fds.push(PollFd::from_borrowed_fd(fd, PollFlags::IN));
                    entries.push(Entry::Source(at, s.id));
                }
            }
            if let Err(e) = poll_retry(&mut fds, timeout) {
                drop(fds);
                log::error!("vhost-io-std: a queue worker's poll failed: {e}");
                for r in &mut self.rings {
                    r.q.set_broken();
                    signal_err(r.index(), &r.n);
                }
                return Found::default();
            }
            fds.iter().map(PollFd::revents).collect()
        };
        let mut found = Found::default();
        for (e, rev) in entries.iter().zip(revents) {
            if rev.is_empty() {
                continue;
            }
            found.any = true;
            match *e {
                Entry::Control => found.control = true,
                Entry::Kick(at) => {
                    let Some(r) = self.rings.get_mut(at) else {
                        continue;
                    };
                    if kick_consumed(r.index(), r.n.kick.as_ref(), rev) {
                        r.look = true;
                    } else {
                        // A kick fd at EOF or in error: the ring cannot be served any more.
                        r.q.set_broken();
                        signal_err(r.index(), &r.n);
                    }
                }
                Entry::Source(at, id) => self.ready.push((at, id)),
            }
        }
        found
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

fn signal(index: u16, call: Option<&EventFd>) {
    if let Some(c) = call
        && let Err(e) = c.signal()
    {
        log::warn!("vhost-io-std: queue {index}: cannot signal the call fd: {e}");
    }
}

fn signal_err(index: u16, n: &Notifiers) {
    if let Some(err) = &n.err
        && let Err(e) = err.signal()
    {
        log::warn!("vhost-io-std: queue {index}: cannot signal the err fd: {e}");
    }
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
