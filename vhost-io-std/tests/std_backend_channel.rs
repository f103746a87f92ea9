//! The back-end channel end to end through the std binding: a device sends
//! back-end requests on the `BackendChannel` the server hands it, the
//! front-end's `FrontendChannel` receives them typed and answers each;
//! gates and the suspended rule hold.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use vhost_backend::ChannelError;
use vhost_backend::QueueError;
use vhost_backend::os::memfd;
use vhost_backend::{BackendChannel, Device, Queue};
use vhost_io_std::backend::Server;
use vhost_io_std::frontend::{BackendMessage, DriverRing, Frontend, FrontendChannel, GuestRam};
use vhost_proto::backend::DeviceDescription;
use vhost_proto::session::ApiError;
use vhost_proto::wire::{
    BackendRequest, ProtocolFeatures, ShmemMap, ShmemMapFlags, Uuid, VirtioFeatures,
};

/// A device that keeps the channel it is given, for the test to send on.
struct Chatty {
    channel: Mutex<Option<BackendChannel>>,
}

impl Device for Chatty {
    fn description(&self) -> DeviceDescription {
        DeviceDescription::new(
            VirtioFeatures::VERSION_1,
            ProtocolFeatures::MQ
                | ProtocolFeatures::REPLY_ACK
                | ProtocolFeatures::BACKEND_REQ
                | ProtocolFeatures::BACKEND_SEND_FD
                | ProtocolFeatures::CONFIG
                | ProtocolFeatures::SHARED_OBJECT
                | ProtocolFeatures::INBAND_NOTIFICATIONS
                | ProtocolFeatures::SHMEM,
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

    fn backend_channel_opened(&self, channel: BackendChannel) {
        *self.channel.lock().unwrap() = Some(channel);
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

/// Starts a server for a `Chatty`, negotiates `protocol`, opens the
/// back-end channel and returns both ends of it.
fn open(
    protocol: ProtocolFeatures,
) -> (
    Frontend,
    GuestRam,
    FrontendChannel,
    BackendChannel,
    vhost_io_std::backend::ServerHandle,
) {
    let (a, b) = UnixStream::pair().unwrap();
    let server = Server::from_stream(
        b,
        Chatty {
            channel: Mutex::new(None),
        },
    )
    .unwrap();
    let device = std::sync::Arc::clone(server.device());
    let server = server.spawn().unwrap();
    let mut front = Frontend::from_stream(a).unwrap();
    front.get_features().unwrap();
    front.get_protocol_features().unwrap();
    front.set_protocol_features(protocol).unwrap();
    front.set_owner().unwrap();
    // QEMU's order: the channel before SET_FEATURES.
    let fch = front.open_backend_channel().unwrap();
    front
        .set_features(VirtioFeatures::VERSION_1 | VirtioFeatures::PROTOCOL_FEATURES)
        .unwrap();
    let ram = GuestRam::new(0, RAM).unwrap();
    front.set_mem_table(&[(ram.region(), ram.fd())]).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    let bch = loop {
        if let Some(c) = device.channel.lock().unwrap().take() {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "the device never got its channel"
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    (front, ram, fch, bch, server)
}

fn start(front: &mut Frontend, ram: &GuestRam) -> DriverRing {
    let (ring, _) = DriverRing::split(ram, 0, 0, 64, ring_features(false)).unwrap();
    front.start_ring(&ring, ram).unwrap();
    front.set_vring_enable(0, true).unwrap();
    ring
}

fn memfd_with(text: &[u8]) -> OwnedFd {
    let fd = memfd::create("chan-test", 4096).unwrap();
    let mut f = File::from(fd);
    f.write_all(text).unwrap();
    OwnedFd::from(f)
}

fn read_back(fd: OwnedFd, len: usize) -> Vec<u8> {
    let mut f = File::from(fd);
    f.rewind().unwrap();
    let mut v = vec![0u8; len];
    f.read_exact(&mut v).unwrap();
    v
}

#[test]
fn every_backend_request_arrives_typed_and_is_answered() {
    let all = ProtocolFeatures::MQ
        | ProtocolFeatures::REPLY_ACK
        | ProtocolFeatures::BACKEND_REQ
        | ProtocolFeatures::BACKEND_SEND_FD
        | ProtocolFeatures::CONFIG
        | ProtocolFeatures::SHARED_OBJECT
        | ProtocolFeatures::INBAND_NOTIFICATIONS
        | ProtocolFeatures::SHMEM;
    let (mut front, ram, mut fch, mut bch, server) = open(all);

    // Suspended (no ring started yet): nothing is sent.
    assert!(matches!(
        bch.config_change(),
        Err(ChannelError::Suspended { .. })
    ));
    assert!(
        fch.recv(Some(Duration::from_millis(50))).unwrap().is_none(),
        "a suspended device sent something"
    );

    let _ring = start(&mut front, &ram);
    let uuid = Uuid([7; 16]);
    let map = ShmemMap {
        shmid: 0,
        fd_offset: 0,
        shm_offset: 0x1000,
        len: 0x1000,
        flags: ShmemMapFlags::WRITABLE,
    };
    let device = std::thread::spawn(move || {
        bch.config_change().unwrap();
        bch.shared_object_add(uuid).unwrap();
        let object = bch.shared_object_lookup(uuid).unwrap().expect("an fd");
        bch.vring_call(0).unwrap();
        let shm = memfd_with(b"shared memory");
        bch.shmem_map(map, shm.as_fd()).unwrap();
        bch.shmem_unmap(map).unwrap();
        (bch, read_back(object, 10))
    });

    let next = |fch: &mut FrontendChannel| fch.recv(Some(TIMEOUT)).unwrap().expect("a request");
    match next(&mut fch) {
        BackendMessage::Request {
            request: BackendRequest::ConfigChange,
            answer,
        } => fch.ack(answer, Ok(())).unwrap(),
        other => panic!("expected CONFIG_CHANGE_MSG, got {other:?}"),
    }
    match next(&mut fch) {
        BackendMessage::Request {
            request: BackendRequest::SharedObjectAdd { uuid: got },
            answer,
        } => {
            assert_eq!(got, uuid);
            fch.ack(answer, Ok(())).unwrap();
        }
        other => panic!("expected SHARED_OBJECT_ADD, got {other:?}"),
    }
    match next(&mut fch) {
        BackendMessage::SharedObjectLookup { uuid: got, answer } => {
            assert_eq!(got, uuid);
            let object = memfd_with(b"dma-buf ok");
            fch.answer_lookup(answer, Ok(object.as_fd())).unwrap();
        }
        other => panic!("expected SHARED_OBJECT_LOOKUP, got {other:?}"),
    }
    match next(&mut fch) {
        BackendMessage::Request {
            request: BackendRequest::VringCall { index: 0 },
            answer,
        } => fch.ack(answer, Ok(())).unwrap(),
        other => panic!("expected VRING_CALL, got {other:?}"),
    }
    match next(&mut fch) {
        BackendMessage::Request {
            request: BackendRequest::ShmemMap { map: got, fd },
            answer,
        } => {
            assert_eq!(got, map);
            assert_eq!(read_back(fd, 13), b"shared memory");
            fch.ack(answer, Ok(())).unwrap();
        }
        other => panic!("expected SHMEM_MAP, got {other:?}"),
    }
    match next(&mut fch) {
        BackendMessage::Request {
            request: BackendRequest::ShmemUnmap { map: got },
            answer,
        } => {
            assert_eq!(got, map);
            fch.ack(answer, Ok(())).unwrap();
        }
        other => panic!("expected SHMEM_UNMAP, got {other:?}"),
    }
    let (mut bch, object) = device.join().unwrap();
    assert_eq!(
        object, b"dma-buf ok",
        "the lookup's fd is the front-end's object"
    );

    // A refusal comes back as a typed error; the channel goes on.
    let device = std::thread::spawn(move || {
        let r = bch.config_change();
        (bch, r)
    });
    match next(&mut fch) {
        BackendMessage::Request { answer, .. } => fch
            .ack(
                answer,
                Err(vhost_proto::backend::Refused::because("not now")),
            )
            .unwrap(),
        other => panic!("expected CONFIG_CHANGE_MSG, got {other:?}"),
    }
    let (mut bch, r) = device.join().unwrap();
    assert!(
        matches!(r, Err(ChannelError::Refused { value: 1, .. })),
        "{r:?}"
    );

    // Every ring stopped: suspended again.
    front.get_vring_base(0).unwrap();
    assert!(matches!(
        bch.config_change(),
        Err(ChannelError::Suspended { .. })
    ));
    assert!(fch.recv(Some(Duration::from_millis(50))).unwrap().is_none());

    drop(front);
    server.join().unwrap();
}

#[test]
fn requests_whose_gate_was_not_negotiated_are_not_sent() {
    // No BACKEND_SEND_FD, no INBAND_NOTIFICATIONS, no SHARED_OBJECT.
    let some = ProtocolFeatures::MQ
        | ProtocolFeatures::REPLY_ACK
        | ProtocolFeatures::BACKEND_REQ
        | ProtocolFeatures::CONFIG
        | ProtocolFeatures::SHMEM;
    let (mut front, ram, mut fch, mut bch, server) = open(some);
    let _ring = start(&mut front, &ram);
    let shm = memfd_with(b"x");
    let map = ShmemMap {
        shmid: 0,
        fd_offset: 0,
        shm_offset: 0,
        len: 0x1000,
        flags: ShmemMapFlags::empty(),
    };
    let not = |r: Result<(), ChannelError>| {
        assert!(
            matches!(r, Err(ChannelError::Api(ApiError::NotNegotiated { .. }))),
            "{r:?}"
        )
    };
    not(bch.shmem_map(map, shm.as_fd()));
    not(bch.vring_call(0));
    not(bch.shared_object_add(Uuid([1; 16])));
    assert!(fch.recv(Some(Duration::from_millis(50))).unwrap().is_none());
    // What was negotiated still goes through (without an fd).
    let device = std::thread::spawn(move || bch.shmem_unmap(map));
    match fch.recv(Some(TIMEOUT)).unwrap() {
        Some(BackendMessage::Request {
            request: BackendRequest::ShmemUnmap { .. },
            answer,
        }) => fch.ack(answer, Ok(())).unwrap(),
        other => panic!("expected SHMEM_UNMAP, got {other:?}"),
    }
    device.join().unwrap().unwrap();
    drop(front);
    server.join().unwrap();
}
