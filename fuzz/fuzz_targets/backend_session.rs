#![no_main]
//! Fuzzes `backend::Connection` with chunked input, fd counts and device answers; the body
//! is `vhost_proto::fuzzing::backend_session`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vhost_proto::fuzzing::backend_session(data));
