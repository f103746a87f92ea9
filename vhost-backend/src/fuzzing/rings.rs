//! The harness's [`Rings`]: started rings served inline, like the mio runner's, but with
//! no fd registered anywhere: the input says when a ring is kicked and when a handler's
//! completion source fires.

use std::task::Poll;

use crate::os::eventfd::EventFd;
use crate::state::{Notifier, Rings, SessionState};
use crate::{Device, ServedQueue};

use super::device::SOURCE_ID;

/// Rounds of `process` per drain.
const MAX_ROUNDS: usize = 4;

/// A started ring and the notifiers the harness holds for it.
#[derive(Debug)]
struct Ring {
    served: ServedQueue,
    call: Option<EventFd>,
    err: Option<EventFd>,
}

/// The started rings of one session.
#[derive(Debug, Default)]
pub struct InlineRings {
    rings: Vec<Option<Ring>>,
    /// Rings handed over by the session so far.
    pub runs: usize,
    /// Drains that ended with an error (the ring broke).
    pub broken: usize,
}

impl InlineRings {
    /// Room for `n` rings.
    pub fn new(n: usize) -> Self {
        InlineRings {
            rings: (0..n).map(|_| None).collect(),
            runs: 0,
            broken: 0,
        }
    }

    /// Whether ring `i` runs here (possibly stopping).
    pub fn holds(&self, i: usize) -> bool {
        self.rings.get(i).is_some_and(Option::is_some)
    }

    /// A kick of ring `i`: drain it.
    pub fn kick(&mut self, i: usize) {
        let Some(Some(ring)) = self.rings.get_mut(i) else {
            return;
        };
        let call = ring.call.as_ref();
        if ring.served.drain(MAX_ROUNDS, || signal(call)).is_err() {
            self.broken += 1;
            signal(ring.err.as_ref());
        }
    }

    /// Ring `i`'s handler source fired: it completes held chains (and serves the ring).
    pub fn ready(&mut self, i: usize) {
        let Some(Some(ring)) = self.rings.get_mut(i) else {
            return;
        };
        let call = ring.call.as_ref();
        if ring.served.ready(SOURCE_ID, || signal(call)).is_err() {
            self.broken += 1;
            signal(ring.err.as_ref());
        }
    }

    /// Fires every ring's source (the end of a run, with the device releasing its chains).
    pub fn ready_all(&mut self) {
        for i in 0..self.rings.len() {
            self.ready(i);
        }
    }

    /// Rings held here.
    pub fn count(&self) -> usize {
        self.rings.iter().filter(|r| r.is_some()).count()
    }
}

fn signal(fd: Option<&EventFd>) {
    if let Some(fd) = fd {
        // A full pipe or a failing fd is the front-end's business.
        let _ = fd.signal();
    }
}

fn dup<D: Device + ?Sized>(
    state: &SessionState<D>,
    index: u16,
    which: Notifier,
) -> Option<EventFd> {
    state.notifier(index, which).ok().flatten()
}

impl<D: Device + ?Sized> Rings<D> for InlineRings {
    fn run(&mut self, state: &SessionState<D>, served: ServedQueue) {
        let index = served.index();
        let i = usize::from(index);
        let ring = Ring {
            served,
            call: dup(state, index, Notifier::Call),
            err: dup(state, index, Notifier::Err),
        };
        if let Some(slot) = self.rings.get_mut(i) {
            // The session never runs a ring twice without collecting it first.
            assert!(slot.is_none(), "ring {i} handed over while it runs");
            *slot = Some(ring);
            self.runs += 1;
            self.kick(i);
        }
    }

    fn begin_stop(&mut self, index: u16) {
        let Some(Some(ring)) = self.rings.get_mut(usize::from(index)) else {
            return;
        };
        let call = ring.call.as_ref();
        if ring.served.begin_stop(|| signal(call)).is_err() {
            self.broken += 1;
            signal(ring.err.as_ref());
        }
    }

    fn poll_stop(&mut self, index: u16) -> Poll<Option<ServedQueue>> {
        let i = usize::from(index);
        match self.rings.get(i) {
            Some(Some(r)) if !r.served.is_quiesced() => Poll::Pending,
            Some(Some(_)) => Poll::Ready(
                self.rings
                    .get_mut(i)
                    .and_then(Option::take)
                    .map(|r| r.served),
            ),
            _ => Poll::Ready(None),
        }
    }

    fn notifier_changed(&mut self, state: &SessionState<D>, index: u16, which: Notifier) {
        let i = usize::from(index);
        if !self.holds(i) {
            return;
        }
        let fd = dup(state, index, which);
        match which {
            Notifier::Kick => self.kick(i),
            Notifier::Call => {
                if let Some(Some(r)) = self.rings.get_mut(i) {
                    r.call = fd;
                }
            }
            Notifier::Err => {
                if let Some(Some(r)) = self.rings.get_mut(i) {
                    r.err = fd;
                }
            }
        }
    }

    fn ring_enabled(&mut self, _: &SessionState<D>, index: u16, enabled: bool) {
        if enabled {
            self.kick(usize::from(index));
        }
    }

    fn ring_kicked(&mut self, _: &SessionState<D>, index: u16) {
        self.kick(usize::from(index));
    }
}
