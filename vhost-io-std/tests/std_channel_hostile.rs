//! Hostile peers on the back-end channel and the main socket, at the std
//! binding's ends: typed errors, no panic, the session's checks hold.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use vhost_backend::BackendChannel;
use vhost_backend::os::socket::send_all_with_fds;
use vhost_io_std::frontend::{BackendMessage, Frontend, FrontendChannel};
use vhost_io_std::{ChannelError, ClientError};
use vhost_proto::session::{Negotiated, Rule};
use vhost_proto::wire::{
    BackendReply, BackendReq, BackendRequest, DecodeContext, FrontendReply, FrontendReq,
    ProtocolFeatures, Uuid, VirtioFeatures,
};

fn negotiated(protocol: ProtocolFeatures) -> Negotiated {
    Negotiated {
        offered_features: VirtioFeatures::VERSION_1 | VirtioFeatures::PROTOCOL_FEATURES,
        features: VirtioFeatures::VERSION_1 | VirtioFeatures::PROTOCOL_FEATURES,
        offered_protocol: protocol,
        protocol,
    }
}

fn read_u64_reply(s: &mut UnixStream) -> (u32, u64) {
    let mut b = [0u8; 20];
    s.read_exact(&mut b).unwrap();
    (
        u32::from_ne_bytes(b[0..4].try_into().unwrap()),
        u64::from_ne_bytes(b[12..20].try_into().unwrap()),
    )
}

#[test]
fn a_backend_request_outside_the_negotiation_is_rejected_and_nacked() {
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    let neg = negotiated(
        ProtocolFeatures::REPLY_ACK | ProtocolFeatures::BACKEND_REQ | ProtocolFeatures::CONFIG,
    );
    let mut fch = FrontendChannel::new(ours, neg);
    // SHARED_OBJECT was not negotiated.
    let e = BackendRequest::<BorrowedFd<'_>>::SharedObjectAdd {
        uuid: Uuid([3; 16]),
    }
    .encode(true, &DecodeContext::default())
    .unwrap();
    theirs.write_all(&e.bytes).unwrap();
    match fch.recv(Some(Duration::from_secs(5))).unwrap() {
        Some(BackendMessage::Rejected { rejection }) => {
            assert!(rejection.replied);
            assert!(matches!(
                rejection.rule,
                Rule::ProtocolFeatureNotNegotiated { .. }
            ));
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(
        read_u64_reply(&mut theirs),
        (BackendReq::SharedObjectAdd.raw(), 1),
        "NACKed"
    );
    // The channel goes on: a negotiated request is delivered.
    let e = BackendRequest::<BorrowedFd<'_>>::ConfigChange
        .encode(true, &DecodeContext::default())
        .unwrap();
    theirs.write_all(&e.bytes).unwrap();
    match fch.recv(Some(Duration::from_secs(5))).unwrap() {
        Some(BackendMessage::Request {
            request: BackendRequest::ConfigChange,
            answer,
        }) => fch.ack(answer, Ok(())).unwrap(),
        other => panic!("expected CONFIG_CHANGE_MSG, got {other:?}"),
    }
    assert_eq!(
        read_u64_reply(&mut theirs),
        (BackendReq::ConfigChangeMsg.raw(), 0)
    );
    // Garbage (a bad header version) closes the channel with a typed error.
    theirs
        .write_all(&[2, 0, 0, 0, 0x7, 0, 0, 0, 0, 0, 0, 0])
        .unwrap();
    assert!(matches!(
        fch.recv(Some(Duration::from_secs(5))),
        Err(ChannelError::Protocol(_))
    ));
    // The peer hanging up is a disconnect.
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut fch = FrontendChannel::new(ours, neg);
    drop(theirs);
    assert!(matches!(
        fch.recv(Some(Duration::from_secs(5))),
        Err(ChannelError::Disconnected)
    ));
}

#[test]
fn a_frontend_that_answers_wrong_or_not_at_all_is_a_typed_error() {
    let neg = negotiated(
        ProtocolFeatures::REPLY_ACK | ProtocolFeatures::BACKEND_REQ | ProtocolFeatures::CONFIG,
    );
    // No answer: a timeout.
    let (ours, _theirs) = UnixStream::pair().unwrap();
    let mut bch = BackendChannel::new(ours, neg);
    bch.set_reply_timeout(Duration::from_millis(50));
    assert!(matches!(
        bch.config_change(),
        Err(ChannelError::Timeout {
            request: BackendReq::ConfigChangeMsg
        })
    ));
    // An answer to another request: a protocol error, the channel closes.
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    let mut bch = BackendChannel::new(ours, neg);
    let t = std::thread::spawn(move || {
        let mut req = [0u8; 12];
        theirs.read_exact(&mut req).unwrap();
        let e = BackendReply::<BorrowedFd<'_>>::U64 { value: 0 }
            .encode(BackendReq::IotlbMsg, &DecodeContext::default())
            .unwrap();
        theirs.write_all(&e.bytes).unwrap();
        theirs
    });
    assert!(matches!(
        bch.config_change(),
        Err(ChannelError::Protocol(_))
    ));
    drop(t.join().unwrap());
    assert!(matches!(bch.config_change(), Err(ChannelError::Api(_))));
    // A gate not negotiated: nothing sent.
    let (ours, _theirs) = UnixStream::pair().unwrap();
    let mut bch = BackendChannel::new(ours, neg);
    assert!(matches!(bch.vring_call(0), Err(ChannelError::Api(_))));
    // The peer gone: a disconnect.
    let (ours, theirs) = UnixStream::pair().unwrap();
    drop(theirs);
    let mut bch = BackendChannel::new(ours, neg);
    assert!(matches!(
        bch.config_change(),
        Err(ChannelError::Disconnected)
    ));
}

#[test]
fn a_hostile_reply_on_the_main_socket_closes_the_client_session() {
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    let mut front = Frontend::from_stream(ours).unwrap();
    let t = std::thread::spawn(move || {
        let mut req = [0u8; 12];
        theirs.read_exact(&mut req).unwrap();
        // GET_FEATURES answered as if it were GET_PROTOCOL_FEATURES.
        let e = FrontendReply::<BorrowedFd<'_>>::U64 { value: 1 << 32 }
            .encode(FrontendReq::GetProtocolFeatures, &DecodeContext::default())
            .unwrap();
        send_all_with_fds(&theirs, &e.bytes, &[]).unwrap();
        theirs
    });
    assert!(matches!(
        front.get_features(),
        Err(ClientError::Protocol {
            request: FrontendReq::GetFeatures,
            ..
        })
    ));
    let _theirs = t.join().unwrap();
    // Closed: nothing more is sent.
    assert!(matches!(
        front.get_features(),
        Err(ClientError::NotSent { .. })
    ));

    // A request the negotiation does not allow is not sent at all.
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    let mut front = Frontend::from_stream(ours).unwrap();
    assert!(matches!(
        front.get_queue_num(),
        Err(ClientError::NotSent {
            request: FrontendReq::GetQueueNum,
            ..
        })
    ));
    theirs
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    assert!(theirs.read(&mut [0u8; 1]).is_err(), "nothing was written");
}
