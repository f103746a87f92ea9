//! `backend::Connection` flow control: answers keep request order, floods are processed in
//! bounded steps, framing errors are fatal, and an idle connection stays small.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use vhost_proto::backend::{Connection, DeviceDescription, Event};
use vhost_proto::wire::{
    DecodeContext, DeviceStatus, FrontendRequest, ProtocolFeatures, VirtioFeatures,
};

const QUEUES: u16 = 2;
const CONFIG_SIZE: u32 = 16;

const PROTOCOL_BITS: [ProtocolFeatures; 8] = [
    ProtocolFeatures::MQ,
    ProtocolFeatures::REPLY_ACK,
    ProtocolFeatures::CONFIGURE_MEM_SLOTS,
    ProtocolFeatures::STATUS,
    ProtocolFeatures::CONFIG,
    ProtocolFeatures::RESET_DEVICE,
    ProtocolFeatures::INBAND_NOTIFICATIONS,
    ProtocolFeatures::BACKEND_REQ,
];

fn full_conn() -> Connection<i32> {
    let all = PROTOCOL_BITS
        .iter()
        .fold(ProtocolFeatures::empty(), |a, b| a | *b);
    Connection::new(
        DeviceDescription::new(VirtioFeatures::VERSION_1, all, QUEUES)
            .with_config_size(CONFIG_SIZE),
    )
}

fn feed(conn: &mut Connection<i32>, reqs: Vec<(FrontendRequest<i32>, bool)>) {
    let mut bytes = Vec::new();
    let mut fds = Vec::new();
    for (r, n) in reqs {
        let e = r.encode(n, &DecodeContext::default()).unwrap();
        bytes.extend_from_slice(&e.bytes);
        fds.extend(e.fds);
    }
    conn.handle_input(&bytes, fds).unwrap();
}

/// A flood of requests in one read is processed in bounded steps as the embedder drains.
#[test]
fn flood_is_bounded_and_complete() {
    let mut conn = full_conn();
    feed(
        &mut conn,
        (0..1000)
            .map(|_| (FrontendRequest::GetFeatures, false))
            .collect(),
    );
    let mut n = 0;
    while let Some(t) = conn.poll_transmit() {
        assert_eq!(t.bytes.len(), 20);
        n += 1;
    }
    assert_eq!(n, 1000);
}

/// Requests after one that waits for the device stay buffered, in order, until the answer.
#[test]
fn waits_for_answers_in_order() {
    let mut conn = full_conn();
    feed(
        &mut conn,
        vec![
            (FrontendRequest::GetFeatures, false),
            (FrontendRequest::GetProtocolFeatures, false),
        ],
    );
    while conn.poll_transmit().is_some() {}
    let all = PROTOCOL_BITS
        .iter()
        .fold(ProtocolFeatures::empty(), |a, b| a | *b);
    feed(
        &mut conn,
        vec![
            (FrontendRequest::SetProtocolFeatures { features: all }, true),
            (
                FrontendRequest::SetStatus {
                    status: DeviceStatus::ACKNOWLEDGE,
                },
                true,
            ),
            (FrontendRequest::GetStatus, false),
        ],
    );
    let ack = conn.poll_transmit().unwrap();
    assert_eq!(&ack.bytes[12..], &0u64.to_ne_bytes());
    assert!(matches!(
        conn.poll_event(),
        Some(Event::ProtocolFeaturesSet { .. })
    ));
    let Some(Event::Status { answer, .. }) = conn.poll_event() else {
        panic!("status event")
    };
    assert!(
        conn.poll_transmit().is_none(),
        "GET_STATUS must wait for the SET_STATUS answer"
    );
    assert!(conn.is_waiting());
    // A token cannot be answered by another connection.
    let mut other = full_conn();
    feed(&mut other, vec![(FrontendRequest::GetFeatures, false)]);
    assert_eq!(
        other.ack(answer, Ok(())),
        Err(vhost_proto::session::ApiError::StaleToken)
    );
    // The token was consumed by the failed attempt; the right connection still waits, and
    // notices the lost token at its next entry point: NACK, then closed.
    assert!(conn.is_waiting());
    let nack = conn.poll_transmit().unwrap();
    assert_eq!(&nack.bytes[12..], &1u64.to_ne_bytes());
    assert!(matches!(
        conn.poll_event(),
        Some(Event::ConnectionLost {
            error: vhost_proto::session::FatalError::AnswerDropped { .. }
        })
    ));
    assert!(
        conn.poll_transmit().is_none(),
        "the buffered GET_STATUS is dropped"
    );
}

/// The answer sends the ack, then the buffered GET_STATUS sees the new status.
#[test]
fn answer_resumes_buffered_requests() {
    let mut conn = full_conn();
    let all = PROTOCOL_BITS
        .iter()
        .fold(ProtocolFeatures::empty(), |a, b| a | *b);
    feed(
        &mut conn,
        vec![
            (FrontendRequest::GetFeatures, false),
            (
                FrontendRequest::SetProtocolFeatures { features: all },
                false,
            ),
            (
                FrontendRequest::SetStatus {
                    status: DeviceStatus::ACKNOWLEDGE,
                },
                true,
            ),
            (FrontendRequest::GetStatus, false),
        ],
    );
    assert!(conn.poll_transmit().is_some());
    assert!(matches!(
        conn.poll_event(),
        Some(Event::ProtocolFeaturesSet { .. })
    ));
    let Some(Event::Status { answer, .. }) = conn.poll_event() else {
        panic!("status event")
    };
    conn.ack(answer, Ok(())).unwrap();
    let ack = conn.poll_transmit().unwrap();
    assert_eq!(&ack.bytes[..4], &39u32.to_ne_bytes());
    assert_eq!(&ack.bytes[12..], &0u64.to_ne_bytes());
    let st = conn.poll_transmit().unwrap();
    assert_eq!(&st.bytes[..4], &40u32.to_ne_bytes());
    assert_eq!(&st.bytes[12..], &1u64.to_ne_bytes());
}

/// A framing error is fatal and reported once as the last event.
#[test]
fn framing_error_is_fatal() {
    let mut conn = full_conn();
    let mut bad = 1u32.to_ne_bytes().to_vec();
    bad.extend_from_slice(&2u32.to_ne_bytes()); // version 2
    bad.extend_from_slice(&0u32.to_ne_bytes());
    assert!(conn.handle_input(&bad, vec![]).is_err());
    assert!(matches!(
        conn.poll_event(),
        Some(Event::ConnectionLost { .. })
    ));
    assert!(conn.poll_event().is_none());
    assert!(conn.is_closed());
    assert!(conn.handle_input(&[0], vec![]).is_err());
}

/// Idle footprint: the mio binding serves 1,000 sessions in one thread, so an idle
/// connection must stay small (budget 32 KiB with its heap: ring states, the decoder's
/// reused body buffer of at most one message, and emptied queues).
#[test]
fn idle_connection_is_small() {
    use std::mem::size_of;
    let conn = size_of::<Connection<std::os::fd::OwnedFd>>();
    let ring = size_of::<vhost_proto::backend::RingState<std::os::fd::OwnedFd>>();
    let event = size_of::<Event<std::os::fd::OwnedFd>>();
    // 16 queues, a 4 KiB decoder buffer, 32 queued events and transmits' slots.
    let budget = conn + 16 * ring + 4108 + 32 * event + 32 * 48;
    eprintln!("connection {conn} B, ring {ring} B, event {event} B, budget {budget} B");
    assert!(
        budget <= 32 * 1024,
        "conn {conn} ring {ring} event {event} total {budget}"
    );
}

/// One read holding fd-less requests and then the one its fd came with (QEMU pipelines
/// without REPLY_ACK; Linux merges the fd-less segments into the read that ends with the
/// fd's segment): the fd goes to the last header, also when the read is buffered behind an
/// answer the connection waits for.
#[test]
fn fds_of_a_read_go_to_its_last_header() {
    let mut conn = full_conn();
    feed(
        &mut conn,
        vec![
            (FrontendRequest::GetFeatures, false),
            (FrontendRequest::GetProtocolFeatures, false),
        ],
    );
    let all = PROTOCOL_BITS
        .iter()
        .fold(ProtocolFeatures::empty(), |a, b| a | *b);
    feed(
        &mut conn,
        vec![(
            FrontendRequest::SetProtocolFeatures { features: all },
            false,
        )],
    );
    while conn.poll_transmit().is_some() {}
    while conn.poll_event().is_some() {}
    // SET_STATUS waits for the device; SET_VRING_CALL (fd 42) is buffered with the fd.
    feed(
        &mut conn,
        vec![
            (
                FrontendRequest::SetStatus {
                    status: DeviceStatus::ACKNOWLEDGE,
                },
                false,
            ),
            (FrontendRequest::GetFeatures, false),
            (
                FrontendRequest::SetVringCall {
                    index: 1,
                    fd: Some(42),
                },
                false,
            ),
        ],
    );
    let Some(Event::Status { answer, .. }) = conn.poll_event() else {
        panic!("status event")
    };
    conn.ack(answer, Ok(())).unwrap();
    let Some(Event::CallChanged { index: 1, answer }) = conn.poll_event() else {
        panic!("call event")
    };
    conn.ack(answer, Ok(())).unwrap();
    assert_eq!(conn.ring(1).unwrap().call(), Some(&42));
}
