#![no_main]
//! Fuzzes `frontend::Connection` against our back-end, with corrupted and hostile replies;
//! the body is `vhost_proto::fuzzing::frontend_session`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vhost_proto::fuzzing::frontend_session(data));
