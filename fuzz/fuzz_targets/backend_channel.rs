#![no_main]
//! Fuzzes the back-end's end of the back-end channel (`backend::Channel`) with hostile
//! front-end replies; the body is `vhost_proto::fuzzing::backend_channel`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vhost_proto::fuzzing::backend_channel(data));
