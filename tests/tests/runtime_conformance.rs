//! The device runtime's conformance suite (`tests::conformance`) against both runners:
//! asynchronous out-of-order completion, answers that wait for in-flight requests, NACKed
//! ring starts, hostile notifiers, shrunk guest memory and oversized inflight requests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

/// Not a test: the child back-end of the inflight-recovery scenarios (it does nothing
/// unless `VHOST_CONFORMANCE_CHILD` is set).
#[test]
fn child_backend() {
    tests::conformance::child_backend();
}

mod std_runner {
    tests::conformance_tests!(tests::conformance::Std);
}

mod mio_runner {
    tests::conformance_tests!(tests::conformance::Mio);
}
