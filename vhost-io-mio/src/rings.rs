//! The started rings of one session, processed inline in the loop's thread: the mio
//! binding's [`Rings`]. Their kick fds (and the device's wakeup fds) are registered under
//! the session's token; the session calls [`Inline::service`] on its events.

use std::os::fd::AsRawFd;

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use vhost_backend::os::eventfd::EventFd;
use vhost_backend::state::{Drained, Notifier, Rings, SessionState, drain};
use vhost_backend::{Device, Queue};

/// Rounds of `process_queue` per ring and wakeup before the ring yields to the other
/// sessions (it kicks itself to come back: no lost wakeup, no starvation).
const MAX_ROUNDS: usize = 8;

/// A started ring: its queue and the notifier duplicates this session registered.
#[derive(Debug, Default)]
pub(crate) struct Ring {
    queue: Option<Queue>,
    /// Stopped because its ring is not in the current memory; keeps its position.
    parked: bool,
    /// A malformed chain or a dead notifier: no more processing until restarted.
    broken: bool,
    /// No kick fd (spec §3.1 "poll the ring") or one epoll refused: processed on every
    /// event of the session.
    polled: bool,
    /// Our duplicate of the kick fd, registered under the session's token.
    kick: Option<EventFd>,
    /// The device's wakeup fd ([`Device::queue_wakeup`]), registered the same way.
    wake: Option<EventFd>,
    call: Option<EventFd>,
    err: Option<EventFd>,
}

impl Ring {
    fn running(&self) -> bool {
        self.queue.is_some() && !self.parked
    }
}

/// Whether a running ring has no kick fd to watch and must be looked at periodically.
pub(crate) fn wants_polling(rings: &[Ring]) -> bool {
    rings.iter().any(|r| r.running() && r.polled && !r.broken)
}

/// The raw fds of the running rings' registered notifiers.
pub(crate) fn notifiers(rings: &[Ring]) -> Vec<i32> {
    rings
        .iter()
        .filter(|r| r.running())
        .flat_map(|r| [&r.kick, &r.wake])
        .flatten()
        .map(|fd| fd.read_fd().as_raw_fd())
        .collect()
}

/// A session's rings with what (de)registering their notifiers takes: the registry (none
/// when the session is dropped without one: the duplicates just close) and the session's
/// token (none while it is not registered: its rings are polled).
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

    /// Consumes every signalled kick and wakeup fd and processes those rings.
    pub(crate) fn service<D: Device + ?Sized>(&mut self, device: &D) {
        for i in 0..self.rings.len() {
            let Some(ring) = self.rings.get_mut(i) else {
                continue;
            };
            if !ring.running() || ring.broken {
                continue;
            }
            let mut work = ring.polled;
            for fd in [&ring.kick, &ring.wake].into_iter().flatten() {
                match fd.try_consume() {
                    Ok(c) => work |= c,
                    Err(e) => {
                        log::warn!("vhost-io-mio: queue {i}: its notifier failed: {e}");
                        ring.broken = true;
                    }
                }
            }
            if ring.broken {
                self.deregister(i);
                continue;
            }
            if work {
                self.process(device, i);
            }
        }
    }

    /// Lets the device drain ring `i` ([`drain`]: kicks suppressed meanwhile, re-checked
    /// after re-enabling), signalling the call fd when the driver asks for it.
    fn process<D: Device + ?Sized>(&mut self, device: &D, i: usize) {
        let Some(ring) = self.rings.get_mut(i) else {
            return;
        };
        if ring.broken || ring.parked {
            return;
        }
        let Some(q) = ring.queue.as_mut() else {
            return;
        };
        let call = ring.call.as_ref();
        let processed = drain(
            q,
            MAX_ROUNDS,
            |q| {
                // A panicking device breaks this ring only, as a panicking worker thread
                // does in the std binding; the other sessions of the thread go on.
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    device.process_queue(q)
                })) {
                    Ok(r) => r.map_err(Broken::Ring),
                    Err(_) => Err(Broken::Panicked),
                }
            },
            || {
                if let Some(call) = call
                    && let Err(e) = call.signal()
                {
                    log::warn!("vhost-io-mio: queue {i}: cannot signal the call fd: {e}");
                }
            },
        );
        match processed {
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
                ring.broken = true;
                if let Some(err) = &ring.err
                    && let Err(e) = err.signal()
                {
                    log::warn!("vhost-io-mio: queue {i}: cannot signal the err fd: {e}");
                }
            }
        }
    }

    /// Duplicates ring `i`'s kick fd, asks the device for its wakeup fd, and registers both
    /// under the session's token.
    fn register<D: Device + ?Sized>(&mut self, state: &SessionState<D>, i: usize) {
        let Ok(index) = u16::try_from(i) else {
            return;
        };
        let kick = dup(state, index, Notifier::Kick);
        let wake = state.device().queue_wakeup(index);
        let Some(ring) = self.rings.get_mut(i) else {
            return;
        };
        ring.polled = kick.is_none();
        ring.kick = kick;
        ring.wake = wake;
        let (Some(token), Some(registry)) = (self.token, self.registry) else {
            ring.polled = true;
            return;
        };
        for slot in [&mut ring.kick, &mut ring.wake] {
            let Some(fd) = slot.as_ref() else {
                continue;
            };
            let raw = fd.read_fd().as_raw_fd();
            if let Err(e) = registry.register(&mut SourceFd(&raw), token, Interest::READABLE) {
                // E.g. a regular file as kick fd: epoll refuses it (and reading it would
                // consume file data). Drop it and poll the ring instead.
                log::warn!("vhost-io-mio: queue {i}: cannot watch a notifier ({e}); polling");
                *slot = None;
                ring.polled = true;
            }
        }
    }

    /// Deregisters and closes ring `i`'s kick and wakeup duplicates.
    fn deregister(&mut self, i: usize) {
        let Some(ring) = self.rings.get_mut(i) else {
            return;
        };
        for fd in [ring.kick.take(), ring.wake.take()].into_iter().flatten() {
            if let (Some(registry), Some(_)) = (self.registry, self.token) {
                let raw = fd.read_fd().as_raw_fd();
                // Not registered (epoll refused it) is fine.
                let _ = registry.deregister(&mut SourceFd(&raw));
            }
        }
    }
}

impl<D: Device + ?Sized> Rings<D> for Inline<'_> {
    fn start(&mut self, state: &SessionState<D>, queue: Queue) {
        let index = queue.index();
        let i = usize::from(index);
        let call = dup(state, index, Notifier::Call);
        let err = dup(state, index, Notifier::Err);
        let Some(ring) = self.rings.get_mut(i) else {
            return;
        };
        ring.call = call;
        ring.err = err;
        ring.queue = Some(queue);
        ring.parked = false;
        ring.broken = false;
        self.register(state, i);
        state.device().queue_started(index);
        // Look at the ring once when it starts (spec §7.2: tolerate a start without a kick).
        self.process(state.device().as_ref(), i);
    }

    fn stop(&mut self, state: &SessionState<D>, index: u16) -> Option<Queue> {
        let i = usize::from(index);
        self.deregister(i);
        let ring = self.rings.get_mut(i)?;
        let was_running = ring.running();
        ring.parked = false;
        let q = ring.queue.take();
        if was_running {
            state.device().queue_stopped(index);
        }
        q
    }

    /// Queues are not running between two calls of `process_queue` (one thread), so they
    /// switch in place; a parked queue whose ring is in the new memory resumes.
    fn memory_changed(&mut self, state: &SessionState<D>) {
        for i in 0..self.rings.len() {
            let Some(ring) = self.rings.get_mut(i) else {
                continue;
            };
            let Some(q) = ring.queue.as_mut() else {
                continue;
            };
            if state.move_queue(q) {
                if ring.parked {
                    ring.parked = false;
                    self.register(state, i);
                    self.process(state.device().as_ref(), i);
                }
            } else if !ring.parked {
                ring.parked = true;
                self.deregister(i);
            }
        }
    }

    fn ring_enabled(&mut self, state: &SessionState<D>, index: u16, enabled: bool) {
        if enabled {
            self.process(state.device().as_ref(), usize::from(index));
        }
    }

    fn kick_changed(&mut self, state: &SessionState<D>, index: u16) {
        // Swap the registered duplicate; the ring keeps running.
        let i = usize::from(index);
        if self.rings.get(i).is_some_and(Ring::running) {
            self.deregister(i);
            self.register(state, i);
            self.process(state.device().as_ref(), i);
        }
    }

    fn call_changed(&mut self, state: &SessionState<D>, index: u16) {
        let call = dup(state, index, Notifier::Call);
        if let Some(r) = self.rings.get_mut(usize::from(index)) {
            r.call = call;
        }
    }

    fn err_changed(&mut self, state: &SessionState<D>, index: u16) {
        let err = dup(state, index, Notifier::Err);
        if let Some(r) = self.rings.get_mut(usize::from(index)) {
            r.err = err;
        }
    }

    fn ring_kicked(&mut self, state: &SessionState<D>, index: u16) {
        self.process(state.device().as_ref(), usize::from(index));
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

/// Why a ring stopped being processed.
#[derive(Debug, thiserror::Error)]
enum Broken {
    #[error("{0}")]
    Ring(vring::Error),
    #[error("the device panicked in process_queue")]
    Panicked,
}

impl From<vring::Error> for Broken {
    fn from(e: vring::Error) -> Self {
        Broken::Ring(e)
    }
}
