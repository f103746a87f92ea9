//! Back-end channel sessions with fds in both directions (SHMEM_MAP's fd,
//! SHARED_OBJECT_LOOKUP's answer) leave the process's open-fd count
//! unchanged, refused ones included. One test in its own binary, so no other
//! test opens fds meanwhile.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use vhost_backend::QueueError;
use vhost_backend::os::memfd;
use vhost_backend::{BackendChannel, Device, Queue};
use vhost_io_std::backend::Server;
use vhost_io_std::frontend::{BackendMessage, DriverRing, Frontend, GuestRam};
use vhost_proto::backend::{DeviceDescription, Refused};
use vhost_proto::wire::{
    BackendRequest, ProtocolFeatures, ShmemMap, ShmemMapFlags, Uuid, VirtioFeatures,
};

struct Chatty(Mutex<Option<BackendChannel>>);

impl Device for Chatty {
    fn description(&self) -> DeviceDescription {
        DeviceDescription::new(VirtioFeatures::VERSION_1, protocol(), 1)
    }
    fn start_queue(
        self: Arc<Self>,
        _: &vhost_backend::Queue,
    ) -> Result<Box<dyn vhost_backend::QueueHandler>, vhost_proto::backend::Refused> {
        Ok(Box::new(vhost_backend::handler_fn(
            move |q: &mut vhost_backend::Queue| self.process_queue(q),
        )))
    }
    fn backend_channel_opened(&self, channel: BackendChannel) {
        *self.0.lock().unwrap() = Some(channel);
    }
}

impl Chatty {
    fn process_queue(&self, q: &mut Queue) -> Result<(), QueueError> {
        while let Some(c) = q.pop()? {
            q.complete(c, 0)?;
        }
        Ok(())
    }
}

fn protocol() -> ProtocolFeatures {
    ProtocolFeatures::MQ
        | ProtocolFeatures::REPLY_ACK
        | ProtocolFeatures::BACKEND_REQ
        | ProtocolFeatures::BACKEND_SEND_FD
        | ProtocolFeatures::SHARED_OBJECT
        | ProtocolFeatures::SHMEM
}

fn session(refuse: bool) {
    let (a, b) = UnixStream::pair().unwrap();
    let server = Server::from_stream(b, Chatty(Mutex::new(None))).unwrap();
    let device = Arc::clone(server.device());
    let server = server.spawn().unwrap();
    let mut front = Frontend::from_stream(a).unwrap();
    front.get_features().unwrap();
    front.get_protocol_features().unwrap();
    front.set_protocol_features(protocol()).unwrap();
    front.set_owner().unwrap();
    let mut fch = front.open_backend_channel().unwrap();
    front
        .set_features(VirtioFeatures::VERSION_1 | VirtioFeatures::PROTOCOL_FEATURES)
        .unwrap();
    let ram = GuestRam::new(0, RAM).unwrap();
    front.set_mem_table(&[(ram.region(), ram.fd())]).unwrap();
    let (ring, _) = DriverRing::split(&ram, 0, 0, 64, ring_features(false)).unwrap();
    front.start_ring(&ring, &ram).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    let mut bch = loop {
        if let Some(c) = device.0.lock().unwrap().take() {
            break c;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(1));
    };
    let map = ShmemMap {
        shmid: 0,
        fd_offset: 0,
        shm_offset: 0,
        len: 4096,
        flags: ShmemMapFlags::empty(),
    };
    let t = std::thread::spawn(move || {
        let shm = memfd::create("leak-test", 4096).unwrap();
        let mapped = bch.shmem_map(map, shm.as_fd());
        let looked = bch.shared_object_lookup(Uuid([9; 16]));
        (mapped.is_ok(), looked.map(|fd| fd.is_some()).ok())
    });
    match fch.recv(Some(TIMEOUT)).unwrap() {
        Some(BackendMessage::Request {
            request: BackendRequest::ShmemMap { fd, .. },
            answer,
        }) => {
            drop(fd);
            let r = if refuse {
                Err(Refused::because("no"))
            } else {
                Ok(())
            };
            fch.ack(answer, r).unwrap();
        }
        other => panic!("expected SHMEM_MAP, got {other:?}"),
    }
    match fch.recv(Some(TIMEOUT)).unwrap() {
        Some(BackendMessage::SharedObjectLookup { answer, .. }) => {
            let object = memfd::create("object", 4096).unwrap();
            let r = if refuse {
                Err(Refused::because("no"))
            } else {
                Ok(object.as_fd())
            };
            fch.answer_lookup(answer, r).unwrap();
        }
        other => panic!("expected SHARED_OBJECT_LOOKUP, got {other:?}"),
    }
    let (mapped, looked) = t.join().unwrap();
    assert_eq!(mapped, !refuse);
    assert_eq!(looked, (!refuse).then_some(true));
    drop(ring);
    drop(fch);
    drop(front);
    server.join().unwrap();
}

#[test]
fn channel_sessions_leak_no_fd() {
    session(false);
    let before = open_fds();
    for i in 0..100 {
        session(i % 2 == 1);
    }
    assert_eq!(open_fds(), before, "open fds after 100 channel sessions");
}
