//! A started ring as a runner holds it: the [`Queue`] and the [`QueueHandler`] that serves
//! it, with the calls every runner makes on them (drain after a kick, a ready source, the
//! stop), each publishing and notifying afterwards and containing a panicking handler.

use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::device::{QueueHandler, Source};
use crate::error::QueueError;
use crate::queue::Queue;

/// How [`ServedQueue::drain`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drained {
    /// No work left: the ring waits for its next kick (kicks are enabled).
    Idle,
    /// The round limit was reached with work left: come back to it (kicks are enabled, but
    /// the driver may not kick again for chains it already published).
    Busy,
}

/// A started ring: its queue, its handler, and the handler's sources.
pub struct ServedQueue {
    queue: Queue,
    handler: Box<dyn QueueHandler>,
    sources: Vec<Source>,
    /// The handler failed (or panicked): nothing more is processed.
    broken: bool,
}

impl std::fmt::Debug for ServedQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedQueue")
            .field("queue", &self.queue)
            .field("sources", &self.sources)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl ServedQueue {
    pub(crate) fn new(queue: Queue, handler: Box<dyn QueueHandler>) -> Self {
        let sources = handler.sources();
        ServedQueue {
            queue,
            handler,
            sources,
            broken: false,
        }
    }

    /// The vring index.
    pub fn index(&self) -> u16 {
        self.queue.index()
    }

    /// The queue.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// The handler's sources (asked once when the queue started).
    pub fn sources(&self) -> &[Source] {
        &self.sources
    }

    /// Whether the handler failed: the ring is processed no more (its err fd was to be
    /// signalled by the caller that got the error).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Whether the ring may stop now: it is stopping and nothing is in flight (a broken
    /// ring stops at once: the chains its handler still holds are the handler's).
    pub fn is_quiesced(&self) -> bool {
        self.queue.is_stopping() && (self.broken || self.queue.quiesced())
    }

    /// Whether the ring is being stopped.
    pub fn is_stopping(&self) -> bool {
        self.queue.is_stopping()
    }

    /// Calls the handler, containing a panic (the ring breaks, the session goes on),
    /// then publishes and calls `notify` if the driver must be told.
    fn call(
        &mut self,
        notify: &mut impl FnMut(),
        f: impl FnOnce(&mut dyn QueueHandler, &mut Queue) -> Result<(), QueueError>,
    ) -> Result<(), QueueError> {
        if self.broken {
            return Ok(());
        }
        let (handler, queue) = (&mut self.handler, &mut self.queue);
        let r = match catch_unwind(AssertUnwindSafe(|| f(handler.as_mut(), queue))) {
            Ok(r) => r,
            Err(_) => Err(QueueError::Device {
                queue: queue.index(),
                reason: "the queue handler panicked".into(),
            }),
        };
        if self.queue.take_notify() {
            notify();
        }
        if r.is_err() {
            self.broken = true;
        }
        r
    }

    /// Lets the handler drain the ring with kicks suppressed meanwhile, then re-enables
    /// them and re-checks (virtqueue spec §2.9): the way every runner serves a kick.
    ///
    /// A round is a [`QueueHandler::process`] pass with kicks suppressed; it is repeated
    /// while the handler takes chains, at most `max_rounds` times. A pass that takes
    /// nothing while chains are there is followed by one more with kicks enabled: the
    /// chains may have come after the handler's last pop from a driver that saw kicks
    /// suppressed and did not kick (no lost wakeup), and a handler that leaves chains on
    /// purpose (an RX queue without packets) is called once more, not spun. `notify` is
    /// called after any pass whose completions call for a notification. An error broke the
    /// ring: signal its err fd.
    pub fn drain(
        &mut self,
        max_rounds: usize,
        mut notify: impl FnMut(),
    ) -> Result<Drained, QueueError> {
        if self.broken || self.queue.is_stopping() {
            return Ok(Drained::Idle);
        }
        for _ in 0..max_rounds {
            self.queue.disable_notifications();
            let before = self.queue.pops();
            self.call(&mut notify, |h, q| h.process(q))?;
            let more = match self.queue.enable_notifications() {
                Ok(m) => m,
                Err(e) => {
                    self.broken = true;
                    return Err(e.into());
                }
            };
            if !more {
                return Ok(Drained::Idle);
            }
            if self.queue.pops() == before {
                // Chains are there but this pass took none: look once more, kicks
                // enabled (see above).
                self.call(&mut notify, |h, q| h.process(q))?;
                if self.queue.pops() == before {
                    return Ok(Drained::Idle);
                }
            }
        }
        Ok(Drained::Busy)
    }

    /// Asks the driver not to kick: for a runner that looks at the ring on its own (busy
    /// polling with [`poll_pass`](Self::poll_pass)). Kicks stay suppressed until the next
    /// [`drain`](Self::drain), which re-enables them (and re-checks) before it returns
    /// [`Drained::Idle`]: call it before waiting for kicks again.
    pub fn suppress_kicks(&mut self) {
        if !self.broken {
            self.queue.disable_notifications();
        }
    }

    /// One busy-poll pass: a [`QueueHandler::process`] call that leaves kicks as they are
    /// (suppressed with [`suppress_kicks`](Self::suppress_kicks): the runner comes back
    /// without one), then publishes and calls `notify` if the driver must be told.
    /// `Ok(true)` if the handler took chains. Nothing is done while the ring is stopping
    /// or broken. An error broke the ring: signal its err fd.
    pub fn poll_pass(&mut self, mut notify: impl FnMut()) -> Result<bool, QueueError> {
        if self.broken || self.queue.is_stopping() {
            return Ok(false);
        }
        let before = self.queue.pops();
        self.call(&mut notify, |h, q| h.process(q))?;
        Ok(self.queue.pops() != before)
    }

    /// Source `id` is readable: lets the handler collect completions or serve the ring.
    pub fn ready(&mut self, id: u32, mut notify: impl FnMut()) -> Result<(), QueueError> {
        self.call(&mut notify, |h, q| h.ready(q, id))
    }

    /// Begins stopping the ring: nothing more is popped, the handler is asked to complete
    /// what it holds ([`QueueHandler::quiesce`]). Wait for [`is_quiesced`](Self::is_quiesced),
    /// serving the handler's sources meanwhile.
    pub fn begin_stop(&mut self, mut notify: impl FnMut()) -> Result<(), QueueError> {
        if self.queue.is_stopping() {
            return Ok(());
        }
        self.queue.set_stopping(true);
        self.call(&mut notify, |h, q| h.quiesce(q))
    }

    /// The stopped queue runs again (after a memory change, or a stop that was not
    /// finished), from where it was.
    pub(crate) fn resume(&mut self) {
        self.queue.set_stopping(false);
    }

    pub(crate) fn queue_mut(&mut self) -> &mut Queue {
        &mut self.queue
    }

    /// Tells the handler its queue is on new guest memory.
    pub(crate) fn memory_changed(&mut self) {
        let (handler, queue) = (&mut self.handler, &self.queue);
        if catch_unwind(AssertUnwindSafe(|| handler.memory_changed(queue))).is_err() {
            self.broken = true;
        }
    }

    /// The ring failed outside the handler (a dead kick fd): nothing more is processed.
    pub fn set_broken(&mut self) {
        self.broken = true;
    }
}
