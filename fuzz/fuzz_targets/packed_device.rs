#![no_main]
//! Fuzzes the device side of a packed ring against a hostile driver; the body
//! is `vring::fuzzing::packed::packed_device`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vring::fuzzing::packed::packed_device(data));
