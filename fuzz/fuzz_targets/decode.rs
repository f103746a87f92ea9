#![no_main]
//! Fuzzes the vhost-user wire decoder; the body is `vhost_proto::fuzzing::decode`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vhost_proto::fuzzing::decode(data));
