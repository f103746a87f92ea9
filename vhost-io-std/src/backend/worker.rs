//! One thread per started queue: waits on the kick eventfd (and a stop
//! eventfd, and the device's wakeup eventfd), lets the device process the
//! ring, publishes and signals the call eventfd.

use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::io::Errno;

use vhost_backend::os::eventfd::EventFd;

use vhost_backend::state::drain;
use vhost_backend::{Device, Queue};

/// The call notifier of one ring, shared with its worker: SET_VRING_CALL may
/// replace it while the ring runs (spec §5 id 13).
pub(crate) type SharedCall = Arc<Mutex<Option<EventFd>>>;

/// Without a kick fd (no-fd flag: "poll the ring", spec §3.1) the worker
/// looks at the ring this often.
const POLL_INTERVAL: Timespec = Timespec {
    tv_sec: 0,
    tv_nsec: 1_000_000,
};

/// A running worker: stop it to get its queue back.
#[derive(Debug)]
pub(crate) struct Worker {
    stop: EventFd,
    thread: JoinHandle<Queue>,
}

/// What a worker needs besides the queue.
pub(crate) struct WorkerSetup<D> {
    pub device: Arc<D>,
    /// `None`: poll the ring.
    pub kick: Option<EventFd>,
    pub call: SharedCall,
    pub err: Option<EventFd>,
}

impl Worker {
    /// Starts a worker thread for `queue`.
    pub(crate) fn spawn<D: Device>(queue: Queue, setup: WorkerSetup<D>) -> io::Result<Worker> {
        let stop = EventFd::new(true)?;
        let stop_rx = stop.try_clone()?;
        let wake = setup.device.queue_wakeup(queue.index());
        let name = format!("vhost-q{}", queue.index());
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || run(queue, setup, &stop_rx, wake.as_ref()))?;
        Ok(Worker { stop, thread })
    }

    /// Stops the worker at a quiescent point (between two `process_queue`
    /// calls) and returns its queue; `None` if the worker panicked (the
    /// device's bug: the ring is lost, the session continues).
    pub(crate) fn stop(self) -> Option<Queue> {
        if let Err(e) = self.stop.signal() {
            log::error!("vhost-io-std: cannot signal a queue worker to stop: {e}");
        }
        match self.thread.join() {
            Ok(q) => Some(q),
            Err(_) => {
                log::error!("vhost-io-std: a queue worker panicked");
                None
            }
        }
    }
}

/// What woke the worker.
enum Wake {
    Stop,
    Work,
}

fn wait(stop: &EventFd, kick: Option<&EventFd>, wake: Option<&EventFd>) -> io::Result<Wake> {
    let timeout = kick.is_none().then_some(&POLL_INTERVAL);
    let s = pollfd(stop);
    match (kick.map(pollfd), wake.map(pollfd)) {
        (Some(k), Some(w)) => poll_retry(&mut [s, k, w], timeout)?,
        (Some(k), None) => poll_retry(&mut [s, k], timeout)?,
        (None, Some(w)) => poll_retry(&mut [s, w], timeout)?,
        (None, None) => poll_retry(&mut [s], timeout)?,
    }
    if stop.try_consume()? {
        return Ok(Wake::Stop);
    }
    if let Some(k) = kick {
        // A kick fd whose writer is gone (a closed pipe) is an error, not a
        // reason to spin.
        k.try_consume()?;
    }
    if let Some(w) = wake {
        w.try_consume()?;
    }
    Ok(Wake::Work)
}

fn pollfd(e: &EventFd) -> PollFd<'_> {
    PollFd::from_borrowed_fd(e.read_fd(), PollFlags::IN)
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

fn run<D: Device>(
    mut queue: Queue,
    setup: WorkerSetup<D>,
    stop: &EventFd,
    wake: Option<&EventFd>,
) -> Queue {
    let index = queue.index();
    setup.device.queue_started(index);
    let mut broken = false;
    // Look at the ring once when it starts (spec §7.2: tolerate a start
    // without a kick), then after every wakeup.
    loop {
        if !broken && let Err(e) = process(&mut queue, &setup) {
            log::error!("vhost-io-std: queue {index} stopped processing: {e}");
            broken = true;
            if let Some(err) = &setup.err
                && let Err(e) = err.signal()
            {
                log::warn!("vhost-io-std: queue {index}: cannot signal the err eventfd: {e}");
            }
        }
        let kick = if broken { None } else { setup.kick.as_ref() };
        match wait(stop, kick, if broken { None } else { wake }) {
            Ok(Wake::Stop) => break,
            Ok(Wake::Work) => {}
            Err(e) => {
                log::error!("vhost-io-std: queue {index}: waiting for a kick failed: {e}");
                broken = true;
                // Only the stop signal matters now.
                if stop.wait().is_ok() {
                    break;
                }
            }
        }
    }
    setup.device.queue_stopped(index);
    queue
}

/// Lets the device drain the ring until no more work arrives, with kicks
/// suppressed meanwhile (virtqueue spec §2.9: re-check after re-enabling).
fn process<D: Device>(queue: &mut Queue, setup: &WorkerSetup<D>) -> Result<(), vring::Error> {
    let index = queue.index();
    // No round limit: the worker has its thread to itself.
    drain(
        queue,
        usize::MAX,
        |q| setup.device.process_queue(q),
        || signal_call(index, &setup.call),
    )?;
    Ok(())
}

fn signal_call(index: u16, call: &SharedCall) {
    let guard = call.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(c) = guard.as_ref()
        && let Err(e) = c.signal()
    {
        log::warn!("vhost-io-std: queue {index}: cannot signal the call eventfd: {e}");
    }
}
