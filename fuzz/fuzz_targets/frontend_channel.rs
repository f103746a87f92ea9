#![no_main]
//! Fuzzes the front-end's end of the back-end channel (`frontend::Channel`) with hostile
//! back-end requests and VMM answers; the body is `vhost_proto::fuzzing::frontend_channel`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vhost_proto::fuzzing::frontend_channel(data));
