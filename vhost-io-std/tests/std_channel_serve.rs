//! `FrontendChannel::serve` against a scripted back-end that sends each of
//! the 10 back-end requests, and hostile ones: overlapping maps, unmaps of
//! nothing, bad ring indexes, wrong fd counts. Every request asking for a
//! reply gets the right one; nothing panics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use vhost_backend::ChannelError;
use vhost_backend::os::socket::{recv_with_fds, send_all_with_fds};
use vhost_io_std::frontend::{ChannelHandler, ChannelNotice, FrontendChannel, RefuseAll};
use vhost_proto::backend::Refused;
use vhost_proto::frontend::MappingError;
use vhost_proto::session::Negotiated;
use vhost_proto::wire::{
    BackendReq, BackendRequest, DecodeContext, IotlbMsg, IotlbPerm, IotlbType, ProtocolFeatures,
    ShmemMap, ShmemMapFlags, Uuid, VirtioFeatures,
};

const T: Option<Duration> = Some(Duration::from_secs(5));

fn negotiated() -> Negotiated {
    let protocol = ProtocolFeatures::REPLY_ACK
        | ProtocolFeatures::BACKEND_REQ
        | ProtocolFeatures::BACKEND_SEND_FD
        | ProtocolFeatures::CONFIG
        | ProtocolFeatures::HOST_NOTIFIER
        | ProtocolFeatures::INBAND_NOTIFICATIONS
        | ProtocolFeatures::SHARED_OBJECT
        | ProtocolFeatures::SHMEM;
    let features = VirtioFeatures::VERSION_1
        | VirtioFeatures::PROTOCOL_FEATURES
        | VirtioFeatures::ACCESS_PLATFORM;
    Negotiated {
        offered_features: features,
        features,
        offered_protocol: protocol,
        protocol,
    }
}

/// The scripted back-end's end.
struct Script(UnixStream);

impl Script {
    fn send(&mut self, req: BackendRequest<BorrowedFd<'_>>) {
        let e = req.encode(true, &DecodeContext::default()).unwrap();
        send_all_with_fds(&self.0, &e.bytes, &e.fds).unwrap();
    }

    fn raw(&mut self, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
        send_all_with_fds(&self.0, bytes, fds).unwrap();
    }

    /// The u64 answer to `code` (and the fds that came with it).
    fn answer(&mut self, code: BackendReq) -> (u64, Vec<OwnedFd>) {
        let mut b = [0u8; 20];
        let mut fds = Vec::new();
        let n = recv_with_fds(&self.0, &mut b, &mut fds).unwrap();
        assert_eq!(n, 20);
        assert_eq!(u32::from_ne_bytes(b[0..4].try_into().unwrap()), code.raw());
        assert_eq!(u32::from_ne_bytes(b[4..8].try_into().unwrap()), 0x5);
        (u64::from_ne_bytes(b[12..20].try_into().unwrap()), fds)
    }
}

fn pair() -> (FrontendChannel, Script) {
    let (a, b) = UnixStream::pair().unwrap();
    let mut ch = FrontendChannel::new(a, negotiated());
    ch.set_queue_count(2);
    (ch, Script(b))
}

fn map(shm_offset: u64, len: u64) -> ShmemMap {
    ShmemMap {
        shmid: 0,
        fd_offset: 0,
        shm_offset,
        len,
        flags: ShmemMapFlags::WRITABLE,
    }
}

fn memfd() -> OwnedFd {
    std::fs::File::open("/dev/null").unwrap().into()
}

/// Records what it was asked and answers from a tiny object store.
#[derive(Default)]
struct Vmm {
    misses: Vec<IotlbMsg>,
    objects: Vec<Uuid>,
    config_changes: usize,
}

impl ChannelHandler for Vmm {
    fn iotlb_miss(&mut self, msg: IotlbMsg) -> Result<(), Refused> {
        self.misses.push(msg);
        if msg.iova < 0x1000 {
            Ok(())
        } else {
            Err(Refused::because("unmapped iova"))
        }
    }

    fn config_changed(&mut self) -> Result<(), Refused> {
        self.config_changes += 1;
        Ok(())
    }

    fn shared_object_add(&mut self, uuid: Uuid) -> Result<(), Refused> {
        self.objects.push(uuid);
        Ok(())
    }

    fn shared_object_remove(&mut self, uuid: Uuid) -> Result<(), Refused> {
        let i = self
            .objects
            .iter()
            .position(|u| *u == uuid)
            .ok_or(Refused::because("unknown object"))?;
        self.objects.remove(i);
        Ok(())
    }

    fn shared_object_lookup(&mut self, uuid: Uuid) -> Result<OwnedFd, Refused> {
        if self.objects.contains(&uuid) {
            Ok(memfd())
        } else {
            Err(Refused::because("unknown object"))
        }
    }
}

#[test]
fn each_backend_request_is_acted_on_and_answered() {
    let (mut ch, mut be) = pair();
    let mut vmm = Vmm::default();

    // 1 IOTLB_MSG (miss), resolved and refused.
    let miss = |iova| IotlbMsg {
        iova,
        size: 0,
        uaddr: 0,
        perm: IotlbPerm::all(),
        kind: IotlbType::Miss,
    };
    be.send(BackendRequest::IotlbMsg { msg: miss(0x10) });
    assert!(matches!(
        ch.serve(&mut vmm, T).unwrap(),
        Some(ChannelNotice::Iotlb { ok: true, .. })
    ));
    assert_eq!(be.answer(BackendReq::IotlbMsg).0, 0);
    be.send(BackendRequest::IotlbMsg {
        msg: miss(0x10_0000),
    });
    assert!(matches!(
        ch.serve(&mut vmm, T).unwrap(),
        Some(ChannelNotice::Iotlb { ok: false, .. })
    ));
    assert_ne!(be.answer(BackendReq::IotlbMsg).0, 0);
    assert_eq!(vmm.misses.len(), 2);

    // 2 CONFIG_CHANGE_MSG.
    be.send(BackendRequest::ConfigChange);
    assert!(matches!(
        ch.serve(&mut vmm, T).unwrap(),
        Some(ChannelNotice::ConfigChanged)
    ));
    assert_eq!(be.answer(BackendReq::ConfigChangeMsg).0, 0);
    assert_eq!(vmm.config_changes, 1);

    // 3 VRING_HOST_NOTIFIER_MSG: set, replace, remove.
    let fd = memfd();
    for _ in 0..2 {
        be.send(BackendRequest::VringHostNotifier {
            index: 1,
            size: 0x1000,
            offset: 0,
            fd: Some(fd.as_fd()),
        });
        assert!(matches!(
            ch.serve(&mut vmm, T).unwrap(),
            Some(ChannelNotice::HostNotifierSet { index: 1, .. })
        ));
        assert_eq!(be.answer(BackendReq::VringHostNotifierMsg).0, 0);
    }
    assert!(ch.mappings().notifier(1).is_some());
    be.send(BackendRequest::VringHostNotifier {
        index: 1,
        size: 0,
        offset: 0,
        fd: None,
    });
    assert!(matches!(
        ch.serve(&mut vmm, T).unwrap(),
        Some(ChannelNotice::HostNotifierRemoved { index: 1 })
    ));
    assert_eq!(be.answer(BackendReq::VringHostNotifierMsg).0, 0);
    assert!(ch.mappings().notifier(1).is_none());

    // 4, 5 VRING_CALL / VRING_ERR in-band.
    be.send(BackendRequest::VringCall { index: 0 });
    assert!(matches!(
        ch.serve(&mut vmm, T).unwrap(),
        Some(ChannelNotice::VringCall { index: 0 })
    ));
    assert_eq!(be.answer(BackendReq::VringCall).0, 0);
    be.send(BackendRequest::VringErr { index: 1 });
    assert!(matches!(
        ch.serve(&mut vmm, T).unwrap(),
        Some(ChannelNotice::VringErr { index: 1 })
    ));
    assert_eq!(be.answer(BackendReq::VringErr).0, 0);

    // 6, 8, 7 SHARED_OBJECT_ADD, LOOKUP, REMOVE, LOOKUP again.
    let uuid = Uuid([9; 16]);
    be.send(BackendRequest::SharedObjectAdd { uuid });
    assert!(matches!(
        ch.serve(&mut vmm, T).unwrap(),
        Some(ChannelNotice::SharedObject { ok: true, .. })
    ));
    assert_eq!(be.answer(BackendReq::SharedObjectAdd).0, 0);
    be.send(BackendRequest::SharedObjectLookup { uuid });
    ch.serve(&mut vmm, T).unwrap();
    let (v, fds) = be.answer(BackendReq::SharedObjectLookup);
    assert_eq!((v, fds.len()), (0, 1), "the object's fd");
    be.send(BackendRequest::SharedObjectRemove { uuid });
    ch.serve(&mut vmm, T).unwrap();
    assert_eq!(be.answer(BackendReq::SharedObjectRemove).0, 0);
    be.send(BackendRequest::SharedObjectLookup { uuid });
    assert!(matches!(
        ch.serve(&mut vmm, T).unwrap(),
        Some(ChannelNotice::SharedObject { ok: false, .. })
    ));
    let (v, fds) = be.answer(BackendReq::SharedObjectLookup);
    assert_eq!((v, fds.len()), (1, 0), "a refusal carries no fd");

    // 9, 10 SHMEM_MAP / UNMAP.
    be.send(BackendRequest::ShmemMap {
        map: map(0, 0x1000),
        fd: fd.as_fd(),
    });
    assert!(matches!(
        ch.serve(&mut vmm, T).unwrap(),
        Some(ChannelNotice::ShmemMapped { .. })
    ));
    assert_eq!(be.answer(BackendReq::ShmemMap).0, 0);
    assert_eq!(ch.mappings().shmem_mappings().count(), 1);
    be.send(BackendRequest::ShmemUnmap {
        map: map(0, 0x1000),
    });
    assert!(matches!(
        ch.serve(&mut vmm, T).unwrap(),
        Some(ChannelNotice::ShmemUnmapped { .. })
    ));
    assert_eq!(be.answer(BackendReq::ShmemUnmap).0, 0);
    assert_eq!(ch.mappings().shmem_mappings().count(), 0);

    // Nothing more: a timeout, not an error.
    assert!(
        ch.serve(&mut vmm, Some(Duration::from_millis(10)))
            .unwrap()
            .is_none()
    );
}

#[test]
fn hostile_mapping_requests_are_nacked() {
    let (mut ch, mut be) = pair();
    let mut h = RefuseAll;
    let fd = memfd();
    be.send(BackendRequest::ShmemMap {
        map: map(0x1000, 0x2000),
        fd: fd.as_fd(),
    });
    ch.serve(&mut h, T).unwrap();
    assert_eq!(be.answer(BackendReq::ShmemMap).0, 0);

    // Overlapping map, from either side.
    for m in [map(0x2000, 0x2000), map(0, 0x1001), map(0x1800, 0x10)] {
        be.send(BackendRequest::ShmemMap {
            map: m,
            fd: fd.as_fd(),
        });
        assert!(matches!(
            ch.serve(&mut h, T).unwrap(),
            Some(ChannelNotice::MappingRefused {
                error: MappingError::Overlap { .. },
                ..
            })
        ));
        assert_ne!(be.answer(BackendReq::ShmemMap).0, 0);
    }
    // Unmap of something not mapped (or not exactly).
    for m in [map(0x4000, 0x1000), map(0x1000, 0x1000)] {
        be.send(BackendRequest::ShmemUnmap { map: m });
        assert!(matches!(
            ch.serve(&mut h, T).unwrap(),
            Some(ChannelNotice::MappingRefused {
                error: MappingError::NotMapped { .. },
                ..
            })
        ));
        assert_ne!(be.answer(BackendReq::ShmemUnmap).0, 0);
    }
    // A zero-length map.
    be.send(BackendRequest::ShmemMap {
        map: map(0x8000, 0),
        fd: fd.as_fd(),
    });
    assert!(matches!(
        ch.serve(&mut h, T).unwrap(),
        Some(ChannelNotice::MappingRefused {
            error: MappingError::Empty,
            ..
        })
    ));
    assert_ne!(be.answer(BackendReq::ShmemMap).0, 0);
    // Bad ring indexes: in-band call on ring 7 of 2, a host notifier on ring 200.
    be.send(BackendRequest::VringCall { index: 7 });
    assert!(matches!(
        ch.serve(&mut h, T).unwrap(),
        Some(ChannelNotice::BadIndex { index: 7, .. })
    ));
    assert_ne!(be.answer(BackendReq::VringCall).0, 0);
    be.send(BackendRequest::VringErr { index: 0x1_0000 });
    assert!(matches!(
        ch.serve(&mut h, T).unwrap(),
        Some(ChannelNotice::BadIndex { .. })
    ));
    assert_ne!(be.answer(BackendReq::VringErr).0, 0);
    be.send(BackendRequest::VringHostNotifier {
        index: 200,
        size: 0x1000,
        offset: 0,
        fd: Some(fd.as_fd()),
    });
    assert!(matches!(
        ch.serve(&mut h, T).unwrap(),
        Some(ChannelNotice::MappingRefused {
            error: MappingError::BadIndex { index: 200, .. },
            ..
        })
    ));
    assert_ne!(be.answer(BackendReq::VringHostNotifierMsg).0, 0);
    // The handler refuses shared objects and IOTLB misses: NACKs.
    be.send(BackendRequest::SharedObjectAdd {
        uuid: Uuid([1; 16]),
    });
    ch.serve(&mut h, T).unwrap();
    assert_ne!(be.answer(BackendReq::SharedObjectAdd).0, 0);
    // The channel still works: the first mapping is intact.
    assert_eq!(ch.mappings().shmem_mappings().count(), 1);
}

#[test]
fn wrong_fd_counts_close_the_channel() {
    // SHMEM_MAP without its fd.
    let (mut ch, mut be) = pair();
    let e = BackendRequest::<BorrowedFd<'_>>::ShmemUnmap {
        map: map(0, 0x1000),
    }
    .encode(true, &DecodeContext::default())
    .unwrap();
    let mut bytes = e.bytes.clone();
    bytes[0..4].copy_from_slice(&BackendReq::ShmemMap.raw().to_ne_bytes());
    be.raw(&bytes, &[]);
    assert!(matches!(
        ch.serve(&mut RefuseAll, T),
        Err(ChannelError::Protocol(_))
    ));

    // CONFIG_CHANGE_MSG with an fd.
    let (mut ch, mut be) = pair();
    let e = BackendRequest::<BorrowedFd<'_>>::ConfigChange
        .encode(true, &DecodeContext::default())
        .unwrap();
    let fd = memfd();
    be.raw(&e.bytes, &[fd.as_fd()]);
    assert!(matches!(
        ch.serve(&mut RefuseAll, T),
        Err(ChannelError::Protocol(_))
    ));

    // A host notifier with two fds.
    let (mut ch, mut be) = pair();
    let e = BackendRequest::VringHostNotifier {
        index: 0,
        size: 0x1000,
        offset: 0,
        fd: Some(fd.as_fd()),
    }
    .encode(true, &DecodeContext::default())
    .unwrap();
    be.raw(&e.bytes, &[fd.as_fd(), fd.as_fd()]);
    assert!(matches!(
        ch.serve(&mut RefuseAll, T),
        Err(ChannelError::Protocol(_))
    ));
    // The back-end sees the channel closed.
    drop(ch);
    let mut b = [0u8; 1];
    assert_eq!(be.0.read(&mut b).unwrap_or(0), 0);
    let _ = be.0.write_all(&[0]);
}
