//! Our front-end and our back-end wired back to back in memory (a `Pair`, as in
//! quinn-proto's tests), with integer fd handles: a full session that uses every front-end
//! request 1–44 with all features offered, then every back-end request 1–10 on the channel.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::collections::BTreeSet;

use vhost_proto::backend::{self, DeviceDescription};
use vhost_proto::frontend;
use vhost_proto::session::RingPosition;
use vhost_proto::wire::*;

/// A front-end and a back-end connected in memory; the back-end's device says yes to all.
struct Pair {
    vmm: frontend::Connection<i32>,
    dev: backend::Connection<i32>,
    next_fd: i32,
    device_log: Vec<String>,
    channel_fd: Option<i32>,
    rejected: Vec<String>,
}

impl Pair {
    fn new(desc: DeviceDescription) -> Self {
        Pair {
            vmm: frontend::Connection::new(),
            dev: backend::Connection::new(desc),
            next_fd: 1000,
            device_log: vec![],
            channel_fd: None,
            rejected: vec![],
        }
    }

    fn fd(&mut self) -> i32 {
        self.next_fd += 1;
        self.next_fd
    }

    /// The device's side: does what each event asks and answers yes.
    fn device(&mut self, e: backend::Event<i32>) {
        use backend::Event as E;
        self.device_log.push(
            format!("{e:?}")
                .split([' ', '{', '('])
                .next()
                .unwrap()
                .to_string(),
        );
        let d = &mut self.dev;
        match e {
            E::MemoryTable { regions, answer } => {
                if answer.postcopy() {
                    let mapped = regions
                        .iter()
                        .map(|r| 0x5555_0000_0000 + r.region.guest_phys_addr)
                        .collect();
                    d.answer_memory_postcopy(answer, Ok(mapped)).unwrap()
                } else {
                    d.answer_memory(answer, Ok(())).unwrap()
                }
            }
            E::MemoryRegionAdded { answer, .. } => d.answer_memory(answer, Ok(())).unwrap(),
            E::RingStopped { answer, .. } => d
                .answer_ring_stopped(
                    answer,
                    RingPosition {
                        next_avail: 7,
                        ..Default::default()
                    },
                )
                .unwrap(),
            E::ConfigRead { size, answer, .. } => d
                .answer_config(answer, Ok(&vec![0xab; size as usize]))
                .unwrap(),
            E::CryptoSessionCreate { answer, .. } => {
                d.answer_crypto_session(answer, Ok(42)).unwrap()
            }
            E::PostcopyAdvise { answer } => {
                let fd = self.next_fd + 1;
                self.next_fd = fd;
                self.dev.answer_postcopy_advise(answer, Ok(fd)).unwrap()
            }
            E::InflightGet { answer, .. } => {
                let fd = self.fd();
                self.dev.answer_inflight(answer, Ok((4096, 0, fd))).unwrap()
            }
            E::SharedObjectGet { answer, .. } => {
                let fd = self.fd();
                self.dev.answer_shared_object(answer, Ok(fd)).unwrap()
            }
            E::DeviceStateTransfer { answer, .. } => {
                d.answer_device_state(answer, Ok(None)).unwrap()
            }
            E::BackendChannel { fd, answer } => {
                self.channel_fd = Some(fd);
                self.dev.ack(answer, Ok(())).unwrap()
            }
            E::RingStarted { answer, .. } => d.answer_ring_started(answer, Ok(())).unwrap(),
            E::RingConfigChanged { answer, .. }
            | E::RingEnabled { answer, .. }
            | E::KickChanged { answer, .. }
            | E::CallChanged { answer, .. }
            | E::ErrChanged { answer, .. } => d.ack(answer, Ok(())).unwrap(),
            E::Rejected { rejection } => self.rejected.push(rejection.to_string()),
            E::MemoryRegionRemoved { answer, .. }
            | E::LogBase { answer, .. }
            | E::ConfigWrite { answer, .. }
            | E::Status { answer, .. }
            | E::Reset { answer }
            | E::GpuSocket { answer, .. }
            | E::SendRarp { answer, .. }
            | E::SetMtu { answer, .. }
            | E::Iotlb { answer, .. }
            | E::CryptoSessionClose { answer, .. }
            | E::PostcopyListen { answer }
            | E::PostcopyEnd { answer }
            | E::InflightSet { answer, .. }
            | E::DeviceStateCheck { answer } => d.ack(answer, Ok(())).unwrap(),
            E::ConnectionLost { error } => panic!("back-end lost: {error}"),
            _ => {}
        }
    }

    /// Moves messages both ways and lets the device act until nothing moves.
    fn drive(&mut self) -> Vec<frontend::Event<i32>> {
        loop {
            let mut moved = false;
            while let Some(t) = self.vmm.poll_transmit() {
                // Feed in two reads to exercise reassembly; the fds go with the header.
                let cut = t.bytes.len().min(7);
                self.dev.handle_input(&t.bytes[..cut], t.fds).unwrap();
                self.dev.handle_input(&t.bytes[cut..], vec![]).unwrap();
                moved = true;
            }
            while let Some(e) = self.dev.poll_event() {
                self.device(e);
                moved = true;
            }
            while let Some(t) = self.dev.poll_transmit() {
                self.vmm.handle_input(&t.bytes, t.fds).unwrap();
                moved = true;
            }
            if !moved {
                break;
            }
        }
        std::iter::from_fn(|| self.vmm.poll_event()).collect()
    }

    /// Sends one request and returns its completion (None when it expects no reply).
    fn request(&mut self, req: FrontendRequest<i32>) -> Option<frontend::Event<i32>> {
        let id = self.vmm.send(req).unwrap();
        let mut evs = self.drive();
        assert!(evs.len() <= 1, "{evs:?}");
        let ev = evs.pop();
        match &ev {
            Some(
                frontend::Event::Reply { id: got, .. } | frontend::Event::Acked { id: got, .. },
            ) => assert_eq!(*got, id),
            Some(other) => panic!("request {id:?} failed: {other:?}"),
            None => {}
        }
        ev
    }
}

fn all_protocol() -> ProtocolFeatures {
    ProtocolFeatures::from_bits_retain((1 << 23) - 1)
}

fn region(gpa: u64, fd: i32) -> RegionFd<i32> {
    RegionFd {
        region: MemoryRegion {
            guest_phys_addr: gpa,
            memory_size: 0x10000,
            user_addr: 0x7f00_0000_0000 + gpa,
            mmap_offset: 0,
            // XEN_MMAP is negotiated too: regions carry the Xen fields.
            xen: Some(XenRegion {
                flags: XenMmapFlags::empty(),
                domid: 0,
            }),
        },
        fd,
    }
}

fn u64_of(ev: Option<frontend::Event<i32>>) -> u64 {
    match ev {
        Some(frontend::Event::Reply {
            reply: FrontendReply::U64 { value },
            ..
        }) => value,
        other => panic!("expected a u64 reply, got {other:?}"),
    }
}

#[test]
fn every_request_of_both_code_spaces() {
    let features = VirtioFeatures::VERSION_1
        | VirtioFeatures::EVENT_IDX
        | VirtioFeatures::ACCESS_PLATFORM
        | VirtioFeatures::LOG_ALL;
    let mut shmem = ShmemConfig {
        nregions: 1,
        memory_sizes: [0; 256],
    };
    shmem.memory_sizes[0] = 1 << 20;
    let desc = DeviceDescription::new(features, all_protocol(), 2)
        .with_config_size(64)
        .with_shmem(shmem);
    let mut p = Pair::new(desc);
    let mut used = BTreeSet::new();
    let mut req = |p: &mut Pair, r: FrontendRequest<i32>| {
        used.insert(r.code().raw());
        p.request(r)
    };
    use FrontendRequest as Q;

    // Negotiation, in QEMU's order.
    let offered = u64_of(req(&mut p, Q::GetFeatures));
    assert!(offered & VirtioFeatures::PROTOCOL_FEATURES.bits() != 0);
    assert_eq!(
        u64_of(req(&mut p, Q::GetProtocolFeatures)),
        all_protocol().bits()
    );
    assert!(
        req(
            &mut p,
            Q::SetProtocolFeatures {
                features: all_protocol()
            }
        )
        .is_none()
    );
    assert_eq!(u64_of(req(&mut p, Q::GetQueueNum)), 2);
    assert_eq!(u64_of(req(&mut p, Q::GetMaxMemSlots)), 509);
    let fd = p.fd();
    req(&mut p, Q::SetBackendReqFd { fd });
    assert_eq!(p.channel_fd, Some(fd));
    req(&mut p, Q::SetOwner);
    req(
        &mut p,
        Q::SetFeatures {
            features: VirtioFeatures::from_bits_retain(offered),
        },
    );
    let cfg = req(
        &mut p,
        Q::GetConfig {
            offset: 8,
            size: 16,
            flags: ConfigFlags::Frontend,
        },
    );
    assert!(
        matches!(cfg, Some(frontend::Event::Reply { reply: FrontendReply::Config { ref data, .. }, .. }) if data.len() == 16)
    );
    req(
        &mut p,
        Q::SetConfig {
            offset: 0,
            flags: ConfigFlags::Frontend,
            data: vec![1, 2, 3, 4],
        },
    );

    // Device start.
    let inflight = req(
        &mut p,
        Q::GetInflightFd {
            desc: InflightDesc {
                num_queues: 2,
                queue_size: 256,
                ..Default::default()
            },
        },
    );
    assert!(matches!(
        inflight,
        Some(frontend::Event::Reply {
            reply: FrontendReply::InflightFd { fd: Some(_), .. },
            ..
        })
    ));
    let fd = p.fd();
    req(
        &mut p,
        Q::SetInflightFd {
            desc: InflightDesc {
                mmap_size: 4096,
                mmap_offset: 0,
                num_queues: 2,
                queue_size: 256,
            },
            fd,
        },
    );
    assert!(p.dev.has_inflight());
    let (a, b) = (p.fd(), p.fd());
    req(
        &mut p,
        Q::SetMemTable {
            regions: vec![region(0, a), region(0x10000, b)],
        },
    );
    let c = p.fd();
    req(
        &mut p,
        Q::AddMemReg {
            region: region(0x100000, c),
        },
    );
    req(
        &mut p,
        Q::RemMemReg {
            region: region(0x100000, 0).region,
        },
    );
    assert_eq!(p.dev.memory().len(), 2);
    let fd = p.fd();
    req(
        &mut p,
        Q::SetLogBase {
            log: LogDescription {
                mmap_size: 4096,
                mmap_offset: 0,
            },
            fd: Some(fd),
        },
    );
    let fd = p.fd();
    req(&mut p, Q::SetLogFd { fd });
    for index in 0..2u8 {
        req(
            &mut p,
            Q::SetVringNum {
                index: index.into(),
                num: 256,
            },
        );
        req(
            &mut p,
            Q::SetVringBase {
                index: index.into(),
                base: VringBase::split(3),
            },
        );
        let addr = VringAddr {
            index: index.into(),
            flags: VringAddrFlags::LOG,
            desc: 0x1000,
            used: 0x3000,
            avail: 0x2000,
            log: 0x3000,
        };
        req(&mut p, Q::SetVringAddr { addr });
        req(
            &mut p,
            Q::SetVringEndian {
                index: index.into(),
                endian: VringEndian::Little,
            },
        );
        let (k, c, e) = (p.fd(), p.fd(), p.fd());
        req(&mut p, Q::SetVringKick { index, fd: Some(k) });
        req(&mut p, Q::SetVringCall { index, fd: Some(c) });
        req(&mut p, Q::SetVringErr { index, fd: Some(e) });
        req(
            &mut p,
            Q::SetVringEnable {
                index: index.into(),
                enable: true,
            },
        );
        let r = p.dev.ring(index.into()).unwrap();
        assert!(r.started() && r.enabled());
        assert_eq!(r.kick(), Some(&k));
    }
    assert!(p.device_log.iter().filter(|l| *l == "RingStarted").count() == 2);
    req(&mut p, Q::VringKick { index: 1 });
    req(
        &mut p,
        Q::SetStatus {
            status: DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::DRIVER_OK,
        },
    );
    assert_eq!(u64_of(req(&mut p, Q::GetStatus)), 7);

    // Device-specific and optional requests.
    req(
        &mut p,
        Q::SendRarp {
            mac: [2, 0, 0, 0, 0, 1],
        },
    );
    req(&mut p, Q::NetSetMtu { mtu: 1500 });
    let iotlb = IotlbMsg {
        iova: 0x1000,
        size: 0x1000,
        uaddr: 0x7f00_0000_1000,
        perm: IotlbPerm::READ_WRITE,
        kind: IotlbType::Update,
    };
    assert_eq!(u64_of(req(&mut p, Q::IotlbMsg { msg: iotlb })), 0);
    let cs = req(
        &mut p,
        Q::CreateCryptoSession {
            session: Box::new(CryptoSession([0; 1072])),
        },
    );
    assert!(
        matches!(cs, Some(frontend::Event::Reply { reply: FrontendReply::CryptoSession { ref session }, .. }) if session.session_id() == 42)
    );
    req(&mut p, Q::CloseCryptoSession { session_id: 42 });
    let fd = p.fd();
    req(&mut p, Q::GpuSetSocket { fd });
    let so = req(
        &mut p,
        Q::GetSharedObject {
            uuid: Uuid([7; 16]),
        },
    );
    assert!(matches!(
        so,
        Some(frontend::Event::Reply {
            reply: FrontendReply::SharedObject { fd: Some(_), .. },
            ..
        })
    ));
    let sh = req(&mut p, Q::GetShmemConfig);
    assert!(
        matches!(sh, Some(frontend::Event::Reply { reply: FrontendReply::ShmemConfig { ref config }, .. }) if config.memory_sizes[0] == 1 << 20)
    );

    // Back-end channel: every back-end request, answered by the VMM.
    back_channel(&p);

    // Stop, migrate the device state, postcopy, reset.
    for index in 0..2 {
        let vb = req(&mut p, Q::GetVringBase { index });
        assert!(
            matches!(vb, Some(frontend::Event::Reply { reply: FrontendReply::VringBase { base, .. }, .. }) if base.split_next_avail() == 7)
        );
    }
    assert!(p.dev.is_suspended());
    let fd = p.fd();
    let ds = req(
        &mut p,
        Q::SetDeviceStateFd {
            direction: TransferDirection::Save,
            phase: MigrationPhase::Stopped,
            fd,
        },
    );
    assert!(matches!(
        ds,
        Some(frontend::Event::Reply {
            reply: FrontendReply::DeviceStateFd {
                status: 0,
                fd: None
            },
            ..
        })
    ));
    assert_eq!(u64_of(req(&mut p, Q::CheckDeviceState)), 0);
    let adv = req(&mut p, Q::PostcopyAdvise);
    assert!(matches!(
        adv,
        Some(frontend::Event::Reply {
            reply: FrontendReply::PostcopyAdvise { .. },
            ..
        })
    ));
    req(&mut p, Q::PostcopyListen);
    assert!(p.vmm.postcopy());
    let (a, b) = (p.fd(), p.fd());
    let mt = req(
        &mut p,
        Q::SetMemTable {
            regions: vec![region(0, a), region(0x10000, b)],
        },
    );
    assert!(
        matches!(mt, Some(frontend::Event::Reply { reply: FrontendReply::MemTable { ref regions }, .. }) if regions[1].user_addr == 0x5555_0001_0000)
    );
    assert!(req(&mut p, Q::SetMemTablePostcopyAck { value: 0 }).is_none());
    assert!(p.device_log.iter().any(|l| l == "PostcopyMemoryReady"));
    assert_eq!(u64_of(req(&mut p, Q::PostcopyEnd)), 0);
    assert!(!p.vmm.postcopy());
    req(&mut p, Q::ResetDevice);
    assert!(
        p.dev
            .rings()
            .iter()
            .all(|r| !r.started() && !r.enabled() && r.kick().is_none())
    );
    req(&mut p, Q::ResetOwner);

    assert!(p.rejected.is_empty(), "{:?}", p.rejected);
    let missing: Vec<u32> = (1..=44).filter(|c| !used.contains(c)).collect();
    assert!(missing.is_empty(), "requests not exercised: {missing:?}");
}

/// All ten back-end requests through `backend::Channel` → `frontend::Channel` and back.
fn back_channel(p: &Pair) {
    let mut tx = backend::Channel::<i32>::new(*p.dev.negotiated());
    let mut rx = frontend::Channel::<i32>::new(*p.vmm.negotiated());
    let map = ShmemMap {
        shmid: 0,
        fd_offset: 0,
        shm_offset: 0,
        len: 4096,
        flags: ShmemMapFlags::WRITABLE,
    };
    let iotlb = IotlbMsg {
        iova: 0x1000,
        size: 0,
        uaddr: 0,
        perm: IotlbPerm::READ,
        kind: IotlbType::Miss,
    };
    use BackendRequest as B;
    let reqs: Vec<BackendRequest<i32>> = vec![
        B::IotlbMsg { msg: iotlb },
        B::ConfigChange,
        B::VringHostNotifier {
            index: 0,
            size: 4096,
            offset: 0,
            fd: Some(77),
        },
        B::VringCall { index: 0 },
        B::VringErr { index: 1 },
        B::SharedObjectAdd {
            uuid: Uuid([1; 16]),
        },
        B::SharedObjectRemove {
            uuid: Uuid([1; 16]),
        },
        B::SharedObjectLookup {
            uuid: Uuid([2; 16]),
        },
        B::ShmemMap { map, fd: 78 },
        B::ShmemUnmap { map },
    ];
    let mut codes = BTreeSet::new();
    for r in reqs {
        let code = r.code();
        let id = tx.send(r).unwrap();
        loop {
            let mut moved = false;
            while let Some(t) = tx.poll_transmit() {
                rx.handle_input(&t.bytes, t.fds).unwrap();
                moved = true;
            }
            while let Some(e) = rx.poll_event() {
                match e {
                    frontend::ChannelEvent::Request { request, answer } => {
                        assert_eq!(request.code(), code);
                        rx.ack(answer, Ok(())).unwrap();
                    }
                    frontend::ChannelEvent::SharedObjectLookup { answer, .. } => {
                        rx.answer_lookup(answer, Ok(79)).unwrap()
                    }
                    other => panic!("{other:?}"),
                }
                moved = true;
            }
            while let Some(t) = rx.poll_transmit() {
                tx.handle_input(&t.bytes, t.fds).unwrap();
                moved = true;
            }
            if !moved {
                break;
            }
        }
        match tx.poll_event() {
            Some(backend::ChannelEvent::Acked { id: got, request }) => {
                assert!(got == id && request == code)
            }
            Some(backend::ChannelEvent::SharedObject {
                id: got,
                value: 0,
                fd: Some(79),
            }) => assert_eq!(got, id),
            other => panic!("{code}: {other:?}"),
        }
        codes.insert(code.raw());
    }
    assert_eq!(codes.len(), 10);
}

/// Without REPLY_ACK nothing is acked, and a request whose feature was not negotiated is
/// refused before anything is sent.
#[test]
fn gates_before_sending() {
    let desc = DeviceDescription::new(
        VirtioFeatures::VERSION_1,
        ProtocolFeatures::MQ | ProtocolFeatures::CONFIG,
        1,
    );
    let mut p = Pair::new(desc);
    p.request(FrontendRequest::GetFeatures);
    p.request(FrontendRequest::GetProtocolFeatures);
    assert!(
        p.request(FrontendRequest::SetProtocolFeatures {
            features: ProtocolFeatures::MQ
        })
        .is_none()
    );
    let err = p
        .vmm
        .send(FrontendRequest::GetConfig {
            offset: 0,
            size: 4,
            flags: ConfigFlags::Frontend,
        })
        .unwrap_err();
    assert!(
        matches!(err, vhost_proto::session::ApiError::NotNegotiated { .. }),
        "{err}"
    );
    assert!(p.vmm.poll_transmit().is_none());
    let err = p
        .vmm
        .send(FrontendRequest::SetProtocolFeatures {
            features: ProtocolFeatures::STATUS,
        })
        .unwrap_err();
    assert!(
        matches!(err, vhost_proto::session::ApiError::NotNegotiated { .. }),
        "{err}"
    );
}
