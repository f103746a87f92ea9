//! A driver that publishes while the session has kicks suppressed, after the device's last
//! pop, does not kick (it reads kicks as suppressed); the session must still see those
//! chains when it re-enables kicks (the mio counterpart of the std binding's
//! `std_worker_wakeup`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../vhost-io-std/tests/common/mod.rs"]
mod common;

use std::os::unix::net::UnixStream;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use vhost_backend::QueueError;
use vhost_backend::os::eventfd::EventFd;
use vhost_backend::{Device, Queue};
use vhost_frontend::{Frontend, GuestRam};
use vhost_io_mio::Server;
use vhost_proto::backend::DeviceDescription;
use vhost_proto::wire::ProtocolFeatures;

type Window = Arc<Mutex<Option<(Sender<()>, Receiver<()>)>>>;

/// Completes every chain; once the test armed its window, the first call that finds
/// nothing to pop waits (in the loop thread) for the test to publish a chain.
struct Racer {
    window: Window,
    wake: EventFd,
}

impl Device for Racer {
    fn description(&self) -> DeviceDescription {
        DeviceDescription::new(
            vhost_backend::echo::echo_features(),
            ProtocolFeatures::MQ | ProtocolFeatures::REPLY_ACK,
            1,
        )
    }

    fn start_queue(
        self: Arc<Self>,
        queue: &vhost_backend::Queue,
    ) -> Result<Box<dyn vhost_backend::QueueHandler>, vhost_proto::backend::Refused> {
        let wake = self.wakeup(queue.index());
        let h =
            vhost_backend::handler_fn(move |q: &mut vhost_backend::Queue| self.process_queue(q));
        Ok(match wake {
            Some(w) => Box::new(h.with_wakeup(w)),
            None => Box::new(h),
        })
    }
}

impl Racer {
    fn wakeup(&self, _index: u16) -> Option<EventFd> {
        Some(self.wake.try_clone().unwrap())
    }

    fn process_queue(&self, q: &mut Queue) -> Result<(), QueueError> {
        let mut popped = false;
        while let Some(c) = q.pop()? {
            q.complete(c, 0)?;
            popped = true;
        }
        if !popped && let Some((reached, go)) = self.window.lock().unwrap().take() {
            reached.send(()).unwrap();
            go.recv().unwrap();
        }
        Ok(())
    }
}

fn publish_in_the_window(packed: bool, event_idx: bool) {
    let window: Window = Arc::default();
    let wake = EventFd::new(true).unwrap();
    let racer = Racer {
        window: Arc::clone(&window),
        wake: wake.try_clone().unwrap(),
    };
    let server = Server::new(racer).unwrap().spawn().unwrap();
    let (a, b) = UnixStream::pair().unwrap();
    server.handle().add(b).unwrap();
    let mut front = Frontend::from_stream(a).unwrap();
    let ram = GuestRam::new(0, RAM).unwrap();
    handshake(&mut front, &ram, packed, event_idx);
    let mut ring = start_ring(&mut front, &ram, 0, 0, 64, packed, event_idx);
    // A request answered after the ring started: the loop has handled every event of the
    // start (the passes that look at a new or enabled ring included) and nothing else
    // wakes the ring until the test does.
    assert_eq!(front.get_queue_num().unwrap(), 1);
    // Arm the window, then wake the ring with nothing in it: that pass pops nothing and
    // stops in the device, kicks suppressed.
    let (reached_tx, reached_rx) = channel();
    let (go_tx, go_rx) = channel();
    *window.lock().unwrap() = Some((reached_tx, go_rx));
    wake.signal().unwrap();
    reached_rx.recv_timeout(TIMEOUT).unwrap();
    ring.add(&[(BUFS, 8)], &[]).unwrap();
    // A wakeup source is served with kicks enabled (only kick-driven passes suppress
    // them), so the driver may kick here; either way the chain must be served.
    ring.kick().unwrap();
    go_tx.send(()).unwrap();
    let used = ring.collect(1, Duration::from_secs(2));
    assert!(
        used.is_ok(),
        "the chain published in the window was lost: {used:?}"
    );
    drop(front);
    server.stop().unwrap();
}

#[test]
fn a_chain_published_while_kicks_are_suppressed_is_served() {
    for packed in [false, true] {
        for event_idx in [false, true] {
            publish_in_the_window(packed, event_idx);
        }
    }
}
