//! The blocking client's methods for the requests the std back-end does not
//! offer, against a scripted back-end: each sends its request and turns the
//! reply into its typed result; a request whose feature was not negotiated
//! is not sent; a missing reply is the core's deadline (`Timeout`), after
//! which the connection is closed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vhost_backend::os::socket::{recv_with_fds, send_all_with_fds};
use vhost_io_std::ClientError;
use vhost_io_std::frontend::Frontend;
use vhost_proto::session::ApiError;
use vhost_proto::wire::{
    DecodeContext, FrontendReply, FrontendReq, FrontendRequest, FrontendRequestDecoder, Input,
    IotlbMsg, IotlbPerm, IotlbType, LogDescription, MigrationPhase, ProtocolFeatures, ShmemConfig,
    TransferDirection, Uuid, VirtioFeatures, VringEndian,
};

fn dev_null() -> OwnedFd {
    std::fs::File::open("/dev/null").unwrap().into()
}

/// A back-end that answers each request with `answer(request)` (`None`:
/// no reply), and records the codes it got.
fn scripted(
    stream: UnixStream,
    answer: impl Fn(&FrontendRequest<OwnedFd>) -> Option<FrontendReply<OwnedFd>> + Send + 'static,
    ctx: DecodeContext,
) -> JoinHandle<Vec<FrontendReq>> {
    std::thread::spawn(move || {
        let mut dec = FrontendRequestDecoder::<OwnedFd>::new(ctx);
        let mut seen = Vec::new();
        loop {
            // One message per round: the header (with the message's fds), then its body.
            let mut fds = Vec::new();
            let Some(mut msg) = read_exact(&stream, 12, &mut fds) else {
                return seen;
            };
            let size = u32::from_ne_bytes(msg[8..12].try_into().unwrap()) as usize;
            let Some(body) = read_exact(&stream, size, &mut fds) else {
                return seen;
            };
            msg.extend_from_slice(&body);
            let mut input = Input::new(&msg, fds);
            while let Some(msg) = dec.decode(&mut input).unwrap() {
                let code = msg.code;
                seen.push(code);
                let reply = answer(&msg.message)
                    .or_else(|| msg.need_reply().then_some(FrontendReply::U64 { value: 0 }));
                if let Some(r) = reply {
                    let e = r.encode(code, &ctx).unwrap();
                    let fds: Vec<BorrowedFd<'_>> = e.fds.iter().map(AsFd::as_fd).collect();
                    if send_all_with_fds(&stream, &e.bytes, &fds).is_err() {
                        return seen;
                    }
                }
            }
        }
    })
}

fn read_exact(stream: &UnixStream, n: usize, fds: &mut Vec<OwnedFd>) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match recv_with_fds(stream, &mut buf[got..], fds) {
            Ok(0) | Err(_) => return None,
            Ok(k) => got += k,
        }
    }
    Some(buf)
}

fn protocol() -> ProtocolFeatures {
    ProtocolFeatures::LOG_SHMFD
        | ProtocolFeatures::RARP
        | ProtocolFeatures::MTU
        | ProtocolFeatures::CROSS_ENDIAN
        | ProtocolFeatures::CRYPTO_SESSION
        | ProtocolFeatures::SHARED_OBJECT
        | ProtocolFeatures::DEVICE_STATE
        | ProtocolFeatures::SHMEM
}

fn features() -> VirtioFeatures {
    VirtioFeatures::VERSION_1 | VirtioFeatures::PROTOCOL_FEATURES | VirtioFeatures::ACCESS_PLATFORM
}

fn answer(req: &FrontendRequest<OwnedFd>) -> Option<FrontendReply<OwnedFd>> {
    use FrontendRequest as R;
    Some(match req {
        R::GetFeatures => FrontendReply::U64 {
            value: features().bits(),
        },
        R::GetProtocolFeatures => FrontendReply::U64 {
            value: protocol().bits(),
        },
        R::SetLogBase { .. } => FrontendReply::U64 { value: 0 },
        R::IotlbMsg { msg } => FrontendReply::U64 {
            value: u64::from(msg.iova != 0),
        },
        R::GetSharedObject { uuid } if uuid.0[0] == 1 => FrontendReply::SharedObject {
            uuid: Some(*uuid),
            fd: Some(dev_null()),
        },
        R::GetSharedObject { .. } => FrontendReply::SharedObject {
            uuid: None,
            fd: None,
        },
        R::SetDeviceStateFd { .. } => FrontendReply::DeviceStateFd {
            status: 0,
            fd: Some(dev_null()),
        },
        R::CheckDeviceState => FrontendReply::U64 { value: 3 },
        R::GetShmemConfig => {
            let mut memory_sizes = [0u64; 256];
            memory_sizes[0] = 1 << 20;
            FrontendReply::ShmemConfig {
                config: Box::new(ShmemConfig {
                    nregions: 1,
                    memory_sizes,
                }),
            }
        }
        _ => return None,
    })
}

fn negotiate(front: &mut Frontend) {
    front.get_features().unwrap();
    front.set_protocol_features(protocol()).unwrap();
    front.set_features(features()).unwrap();
}

#[test]
fn the_requests_beyond_the_std_backend() {
    let (a, b) = UnixStream::pair().unwrap();
    let ctx = DecodeContext::from_protocol_features(protocol());
    let backend = scripted(b, answer, ctx);
    let mut front = Frontend::from_stream(a).unwrap();
    // Not negotiated yet: not sent.
    assert!(matches!(
        front.send_rarp([0; 6]),
        Err(ClientError::NotSent {
            source: ApiError::NotNegotiated { .. },
            ..
        })
    ));
    negotiate(&mut front);
    let fd = dev_null();
    front
        .set_log_base(
            LogDescription {
                mmap_size: 4096,
                mmap_offset: 0,
            },
            fd.as_fd(),
        )
        .unwrap();
    front.set_log_fd(fd.as_fd()).unwrap();
    front.reset_owner().unwrap();
    front.set_vring_endian(0, VringEndian::Big).unwrap();
    front.send_rarp([2, 0, 0, 0, 0, 1]).unwrap();
    front.net_set_mtu(1500).unwrap();
    front.gpu_set_socket(fd.as_fd()).unwrap();
    front.close_crypto_session(7).unwrap();
    let msg = |iova| IotlbMsg {
        iova,
        size: 4096,
        uaddr: 0x1000,
        perm: IotlbPerm::all(),
        kind: IotlbType::Update,
    };
    front.iotlb_msg(msg(0)).unwrap();
    assert!(matches!(
        front.iotlb_msg(msg(1)),
        Err(ClientError::Refused {
            request: FrontendReq::IotlbMsg,
            value: 1
        })
    ));
    assert!(front.get_shared_object(Uuid([1; 16])).unwrap().is_some());
    assert!(front.get_shared_object(Uuid([2; 16])).unwrap().is_none());
    let theirs = front
        .set_device_state_fd(TransferDirection::Save, MigrationPhase::Stopped, fd.as_fd())
        .unwrap();
    assert!(theirs.is_some());
    assert!(matches!(
        front.check_device_state(),
        Err(ClientError::Refused { value: 3, .. })
    ));
    assert_eq!(front.get_shmem_config().unwrap().memory_sizes[0], 1 << 20);
    // Not negotiated: not sent.
    assert!(matches!(
        front.vring_kick(0),
        Err(ClientError::NotSent { .. })
    ));
    assert!(matches!(
        front.postcopy_advise(),
        Err(ClientError::NotSent { .. })
    ));
    // An index the 8-bit field cannot carry.
    assert!(matches!(
        front.set_vring_kick(256, None),
        Err(ClientError::NotSent {
            source: ApiError::InvalidArgument { .. },
            ..
        })
    ));
    drop(front);
    let seen = backend.join().unwrap();
    for code in [
        FrontendReq::SetLogBase,
        FrontendReq::SetLogFd,
        FrontendReq::ResetOwner,
        FrontendReq::SetVringEndian,
        FrontendReq::SendRarp,
        FrontendReq::NetSetMtu,
        FrontendReq::GpuSetSocket,
        FrontendReq::CloseCryptoSession,
        FrontendReq::IotlbMsg,
        FrontendReq::GetSharedObject,
        FrontendReq::SetDeviceStateFd,
        FrontendReq::CheckDeviceState,
        FrontendReq::GetShmemConfig,
    ] {
        assert!(seen.contains(&code), "{code} was not sent");
    }
    assert!(!seen.contains(&FrontendReq::VringKick));
    assert!(!seen.contains(&FrontendReq::SetVringKick));
}

#[test]
fn a_missing_reply_is_the_cores_deadline_and_closes_the_session() {
    let (a, b) = UnixStream::pair().unwrap();
    let ctx = DecodeContext::from_protocol_features(protocol());
    // Never answers GET_SHMEM_CONFIG.
    let backend = scripted(
        b,
        |r| match r {
            FrontendRequest::GetShmemConfig => None,
            r => answer(r),
        },
        ctx,
    );
    let mut front = Frontend::from_stream(a).unwrap();
    negotiate(&mut front);
    front.set_reply_timeout(Some(Duration::from_millis(50)));
    let t = Instant::now();
    assert!(matches!(
        front.get_shmem_config(),
        Err(ClientError::Timeout {
            request: FrontendReq::GetShmemConfig
        })
    ));
    assert!(t.elapsed() >= Duration::from_millis(50));
    assert!(front.connection().is_closed());
    assert!(matches!(
        front.get_features(),
        Err(ClientError::NotSent {
            source: ApiError::Closed,
            ..
        })
    ));
    drop(front);
    backend.join().unwrap();
}
