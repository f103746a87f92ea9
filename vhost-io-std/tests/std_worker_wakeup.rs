//! A driver that publishes while the worker has kicks suppressed, after the
//! device's last pop, does not kick (it reads kicks as suppressed); the
//! worker must still see those chains when it re-enables kicks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Duration;

use common::*;
use vhost_backend::QueueError;
use vhost_backend::{Device, Queue};
use vhost_io_std::backend::Server;
use vhost_io_std::frontend::{Frontend, GuestRam};
use vhost_proto::backend::DeviceDescription;
use vhost_proto::wire::ProtocolFeatures;

/// Completes every chain; on its first call, once it found nothing more to
/// pop, waits for the test to publish a chain before returning.
struct Racer {
    window: Mutex<Option<(Sender<()>, Receiver<()>)>>,
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
        _: &vhost_backend::Queue,
    ) -> Result<Box<dyn vhost_backend::QueueHandler>, vhost_proto::backend::Refused> {
        Ok(Box::new(vhost_backend::handler_fn(
            move |q: &mut vhost_backend::Queue| self.process_queue(q),
        )))
    }
}

impl Racer {
    fn process_queue(&self, q: &mut Queue) -> Result<(), QueueError> {
        while let Some(c) = q.pop()? {
            q.complete(c, 0)?;
        }
        if let Some((reached, go)) = self.window.lock().unwrap().take() {
            reached.send(()).unwrap();
            go.recv().unwrap();
        }
        Ok(())
    }
}

fn publish_in_the_window(packed: bool, event_idx: bool) {
    let (reached_tx, reached_rx) = channel();
    let (go_tx, go_rx) = channel();
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let server = Server::from_stream(
        b,
        Racer {
            window: Mutex::new(Some((reached_tx, go_rx))),
        },
    )
    .unwrap()
    .spawn()
    .unwrap();
    let mut front = Frontend::from_stream(a).unwrap();
    let ram = GuestRam::new(0, RAM).unwrap();
    handshake(&mut front, &ram, packed, event_idx);
    let mut ring = start_ring(&mut front, &ram, 0, 0, 64, packed, event_idx);
    // The worker's first pass popped nothing and is still in the device.
    reached_rx.recv_timeout(TIMEOUT).unwrap();
    ring.add(&[(BUFS, 8)], &[]).unwrap();
    let kicked = ring.kick().unwrap();
    if !event_idx {
        // Flag suppression is on while the worker runs (with EVENT_IDX the
        // device may leave its event index where a kick still comes).
        assert!(!kicked, "kicks are suppressed while the worker runs");
    }
    go_tx.send(()).unwrap();
    let used = ring.collect(1, Duration::from_secs(2));
    assert!(
        used.is_ok(),
        "the chain published in the window was lost: {used:?}"
    );
    drop(front);
    server.join().unwrap();
}

#[test]
fn a_chain_published_while_kicks_are_suppressed_is_served() {
    for packed in [false, true] {
        for event_idx in [false, true] {
            publish_in_the_window(packed, event_idx);
        }
    }
}
