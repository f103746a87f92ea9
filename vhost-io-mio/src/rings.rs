//! The started rings of one session, served inline in the loop's thread: the mio runner's
//! [`Rings`]. Each ring's kick fd and each of its handler's sources is registered under a
//! token of its own, derived from the session's token ([`ring_token`]), so a kick touches
//! only its ring.

use std::os::fd::AsRawFd;
use std::task::Poll;

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use rustix::io::Errno;
use vhost_backend::os::eventfd::EventFd;
use vhost_backend::state::{Notifier, Rings, SessionState};
use vhost_backend::{Device, Drained, ServedQueue};

/// Rounds of `process` per ring and wakeup before the ring yields to the other sessions
/// (it kicks itself to come back: no lost wakeup, no starvation).
const MAX_ROUNDS: usize = 8;

/// Tokens per ring: its kick, then up to `SLOTS - 1` handler sources.
pub const SLOTS: usize = 8;

/// The token of slot `slot` (0: the kick; 1..: the handler's sources in order) of ring
/// `index`, for a session registered under `base`.
pub(crate) fn ring_token(base: Token, index: usize, slot: usize) -> Token {
    Token(
        base.0
            .wrapping_add(1)
            .wrapping_add(index.wrapping_mul(SLOTS))
            .wrapping_add(slot),
    )
}

/// The ring and slot a token names, for a session registered under `base` with `rings`
/// rings.
pub(crate) fn token_slot(base: Token, rings: usize, token: Token) -> Option<(usize, usize)> {
    let off = token.0.checked_sub(base.0)?.checked_sub(1)?;
    let (index, slot) = (off / SLOTS, off % SLOTS);
    (index < rings).then_some((index, slot))
}

/// A started ring: the served queue and the notifier duplicates this session holds.
#[derive(Debug, Default)]
pub(crate) struct Ring {
    served: Option<ServedQueue>,
    /// No kick fd (spec §3.1 "poll the ring") or one epoll refused: served on every event
    /// of the session.
    polled: bool,
    /// Our duplicate of the kick fd, registered under the ring's kick token.
    kick: Option<EventFd>,
    kick_registered: bool,
    sources_registered: bool,
    call: Option<EventFd>,
    err: Option<EventFd>,
}

impl Ring {
    fn running(&self) -> bool {
        self.served
            .as_ref()
            .is_some_and(|s| !s.is_broken() && !s.is_stopping())
    }
}

/// Whether a running ring has no kick fd to watch and must be looked at periodically.
pub(crate) fn wants_polling(rings: &[Ring]) -> bool {
    rings.iter().any(|r| r.running() && r.polled)
}

/// A session's rings with what (de)registering their fds takes: the registry (none when
/// the session is dropped without one: the duplicates just close) and the session's token
/// (none while it is not registered: its rings are polled).
pub(crate) struct Inline<'a> {
    rings: &'a mut [Ring],
    registry: Option<&'a Registry>,
    token: Option<Token>,
}

impl<'a> Inline<'a> {
    pub(crate) fn new(
        rings: &'a mut [Ring],
        registry: Option<&'a Registry>,
        token: Option<Token>,
    ) -> Self {
        Inline {
            rings,
            registry,
            token,
        }
    }

    /// Serves an event of ring `i`'s slot `slot`: its kick (read once, then drain) or one
    /// of its handler's sources.
    pub(crate) fn ready(&mut self, i: usize, slot: usize) {
        let Some(ring) = self.rings.get_mut(i) else {
            return;
        };
        if slot == 0 {
            if !ring.running() {
                return;
            }
            match consume_kick(ring.kick.as_ref()) {
                Kick::Signalled => self.drain(i),
                Kick::Nothing => {}
                Kick::Dead => {
                    log::warn!("vhost-io-mio: queue {i}: the kick fd is closed or failed");
                    if let Some(s) = ring.served.as_mut() {
                        s.set_broken();
                    }
                    signal_err(i, ring.err.as_ref());
                    self.deregister_kick(i);
                }
            }
            return;
        }
        let Some(served) = ring.served.as_mut() else {
            return;
        };
        let Some(id) = served.sources().get(slot - 1).map(|s| s.id) else {
            return;
        };
        let call = ring.call.as_ref();
        if let Err(e) = served.ready(id, || signal_call(i, call)) {
            log::error!("vhost-io-mio: queue {i} stopped processing: {e}");
            signal_err(i, ring.err.as_ref());
        }
    }

    /// Serves every running ring without a kick fd.
    pub(crate) fn poll_rings(&mut self) {
        for i in 0..self.rings.len() {
            if self.rings.get(i).is_some_and(|r| r.running() && r.polled) {
                self.drain(i);
            }
        }
    }

    /// Lets the handler drain ring `i`, signalling the call fd when the driver asks for it.
    fn drain(&mut self, i: usize) {
        let Some(ring) = self.rings.get_mut(i) else {
            return;
        };
        let Some(served) = ring.served.as_mut() else {
            return;
        };
        let call = ring.call.as_ref();
        match served.drain(MAX_ROUNDS, || signal_call(i, call)) {
            Ok(Drained::Idle) => {}
            // Still busy: come back through the loop, after the other sessions.
            Ok(Drained::Busy) => match &ring.kick {
                Some(k) => {
                    if let Err(e) = k.signal() {
                        log::warn!("vhost-io-mio: queue {i}: cannot re-kick itself: {e}");
                    }
                }
                None => log::debug!("vhost-io-mio: queue {i}: busy polled ring yields"),
            },
            Err(e) => {
                log::error!("vhost-io-mio: queue {i} stopped processing: {e}");
                signal_err(i, ring.err.as_ref());
            }
        }
    }

    /// Registers ring `i`'s kick duplicate and its handler's sources under their tokens.
    pub(crate) fn register(&mut self, i: usize) {
        let (Some(registry), Some(base)) = (self.registry, self.token) else {
            if let Some(r) = self.rings.get_mut(i) {
                r.polled = true;
            }
            return;
        };
        let Some(ring) = self.rings.get_mut(i) else {
            return;
        };
        if !ring.kick_registered
            && let Some(k) = ring.kick.as_ref()
            && !ring.served.as_ref().is_some_and(ServedQueue::is_stopping)
        {
            let raw = k.read_fd().as_raw_fd();
            match registry.register(
                &mut SourceFd(&raw),
                ring_token(base, i, 0),
                Interest::READABLE,
            ) {
                Ok(()) => {
                    ring.kick_registered = true;
                    ring.polled = false;
                }
                Err(e) => {
                    // E.g. a regular file as kick fd: epoll refuses it (and reading it
                    // would consume file data). Poll the ring instead.
                    log::warn!("vhost-io-mio: queue {i}: cannot watch the kick fd ({e}); polling");
                    ring.kick = None;
                    ring.polled = true;
                }
            }
        } else if ring.kick.is_none() {
            ring.polled = true;
        }
        if !ring.sources_registered
            && let Some(served) = ring.served.as_mut()
        {
            let mut ok = true;
            for (slot, s) in served.sources().iter().enumerate() {
                let token = ring_token(base, i, slot + 1);
                let r = if slot + 1 >= SLOTS {
                    Err(std::io::Error::other("too many sources"))
                } else {
                    registry.register(&mut SourceFd(&s.fd), token, Interest::READABLE)
                };
                if let Err(e) = r {
                    log::error!("vhost-io-mio: queue {i}: cannot watch source {}: {e}", s.id);
                    ok = false;
                }
            }
            ring.sources_registered = true;
            if !ok {
                served.set_broken();
                signal_err(i, ring.err.as_ref());
            }
        }
    }

    fn deregister_kick(&mut self, i: usize) {
        let Some(ring) = self.rings.get_mut(i) else {
            return;
        };
        if ring.kick_registered {
            ring.kick_registered = false;
            if let (Some(registry), Some(k)) = (self.registry, ring.kick.as_ref()) {
                let raw = k.read_fd().as_raw_fd();
                let _ = registry.deregister(&mut SourceFd(&raw));
            }
        }
    }

    fn deregister_sources(&mut self, i: usize) {
        let Some(ring) = self.rings.get_mut(i) else {
            return;
        };
        if ring.sources_registered {
            ring.sources_registered = false;
            if let (Some(registry), Some(served)) = (self.registry, ring.served.as_ref()) {
                for s in served.sources() {
                    // Not registered (epoll refused it) is fine.
                    let _ = registry.deregister(&mut SourceFd(&s.fd));
                }
            }
        }
    }

    /// Deregisters every fd of every ring (the session's registration ends).
    pub(crate) fn deregister_all(&mut self) {
        for i in 0..self.rings.len() {
            self.deregister_kick(i);
            self.deregister_sources(i);
        }
    }

    /// Registers every fd of every ring (the session was registered).
    pub(crate) fn register_all(&mut self) {
        for i in 0..self.rings.len() {
            if self.rings.get(i).is_some_and(|r| r.served.is_some()) {
                self.register(i);
            }
        }
    }
}

impl<D: Device + ?Sized> Rings<D> for Inline<'_> {
    fn run(&mut self, state: &SessionState<D>, served: ServedQueue) {
        let index = served.index();
        let i = usize::from(index);
        let kick = dup(state, index, Notifier::Kick);
        let call = dup(state, index, Notifier::Call);
        let err = dup(state, index, Notifier::Err);
        let Some(ring) = self.rings.get_mut(i) else {
            return;
        };
        *ring = Ring {
            served: Some(served),
            polled: kick.is_none(),
            kick,
            kick_registered: false,
            sources_registered: false,
            call,
            err,
        };
        self.register(i);
        // Look at the ring once when it starts (spec §7.2: tolerate a start without a kick).
        self.drain(i);
    }

    fn begin_stop(&mut self, index: u16) {
        let i = usize::from(index);
        self.deregister_kick(i);
        let Some(ring) = self.rings.get_mut(i) else {
            return;
        };
        if let Some(served) = ring.served.as_mut() {
            let call = ring.call.as_ref();
            if let Err(e) = served.begin_stop(|| signal_call(i, call)) {
                log::error!("vhost-io-mio: queue {i} stopped processing: {e}");
                signal_err(i, ring.err.as_ref());
            }
        }
    }

    fn poll_stop(&mut self, index: u16) -> Poll<Option<ServedQueue>> {
        let i = usize::from(index);
        match self.rings.get(i).and_then(|r| r.served.as_ref()) {
            None => return Poll::Ready(None),
            Some(s) if !s.is_quiesced() => return Poll::Pending,
            Some(_) => {}
        }
        self.deregister_kick(i);
        self.deregister_sources(i);
        let ring = self.rings.get_mut(i).map(std::mem::take);
        Poll::Ready(ring.and_then(|r| r.served))
    }

    fn notifier_changed(&mut self, state: &SessionState<D>, index: u16, which: Notifier) {
        let i = usize::from(index);
        if self.rings.get(i).is_none_or(|r| r.served.is_none()) {
            return;
        }
        let fd = dup(state, index, which);
        match which {
            Notifier::Kick => {
                // Swap the registered duplicate; the ring keeps running.
                self.deregister_kick(i);
                if let Some(r) = self.rings.get_mut(i) {
                    r.kick = fd;
                }
                self.register(i);
                self.drain(i);
            }
            Notifier::Call => {
                if let Some(r) = self.rings.get_mut(i) {
                    r.call = fd;
                }
            }
            Notifier::Err => {
                if let Some(r) = self.rings.get_mut(i) {
                    r.err = fd;
                }
            }
        }
    }

    fn ring_enabled(&mut self, _: &SessionState<D>, index: u16, enabled: bool) {
        if enabled {
            self.drain(usize::from(index));
        }
    }

    fn ring_kicked(&mut self, _: &SessionState<D>, index: u16) {
        self.drain(usize::from(index));
    }
}

/// What reading a kick fd found.
enum Kick {
    Signalled,
    Nothing,
    /// At EOF (a pipe whose writer closed) or failed: the ring cannot be served any more.
    Dead,
}

/// Reads the kick fd once (its token fired).
fn consume_kick(kick: Option<&EventFd>) -> Kick {
    let Some(kick) = kick else {
        return Kick::Signalled;
    };
    let mut buf = [0u8; 512];
    loop {
        match rustix::io::read(kick.read_fd(), &mut buf) {
            Ok(0) => return Kick::Dead,
            Ok(_) => return Kick::Signalled,
            Err(Errno::AGAIN) => return Kick::Nothing,
            Err(Errno::INTR) => continue,
            Err(_) => return Kick::Dead,
        }
    }
}

/// A duplicate of one of ring `index`'s notifiers, owned by this session.
fn dup<D: Device + ?Sized>(
    state: &SessionState<D>,
    index: u16,
    which: Notifier,
) -> Option<EventFd> {
    state.notifier(index, which).unwrap_or_else(|e| {
        log::error!("vhost-io-mio: queue {index}: cannot duplicate a notifier: {e}");
        None
    })
}

fn signal_call(i: usize, call: Option<&EventFd>) {
    if let Some(call) = call
        && let Err(e) = call.signal()
    {
        log::warn!("vhost-io-mio: queue {i}: cannot signal the call fd: {e}");
    }
}

fn signal_err(i: usize, err: Option<&EventFd>) {
    if let Some(err) = err
        && let Err(e) = err.signal()
    {
        log::warn!("vhost-io-mio: queue {i}: cannot signal the err fd: {e}");
    }
}

/// Blocks until one of the handlers' sources of a stopping ring is readable (or 10 ms
/// pass), then lets the handlers collect their completions: the wait of a session closed
/// without its event loop.
pub(crate) fn wait_sources(rings: &mut [Ring]) {
    let mut fds = Vec::new();
    for r in rings.iter() {
        if let Some(s) = r.served.as_ref() {
            for src in s.sources() {
                // SAFETY: the handler owns these fds and keeps them open while it lives
                // (the `Source` contract); it outlives this poll.
                let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(src.fd) };
                fds.push(rustix::event::PollFd::from_borrowed_fd(
                    fd,
                    rustix::event::PollFlags::IN,
                ));
            }
        }
    }
    let ten_ms = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 10_000_000,
    };
    let _ = rustix::event::poll(&mut fds, Some(&ten_ms));
    drop(fds);
    for (i, r) in rings.iter_mut().enumerate() {
        let Some(s) = r.served.as_mut() else { continue };
        let ids: Vec<u32> = s.sources().iter().map(|x| x.id).collect();
        for id in ids {
            let call = r.call.as_ref();
            if let Err(e) = s.ready(id, || signal_call(i, call)) {
                log::error!("vhost-io-mio: queue {i} stopped processing: {e}");
            }
        }
    }
}
