#![no_main]
//! Fuzzes the device side of a split ring against a hostile driver; the body
//! is `vring::fuzzing::split::split_device`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vring::fuzzing::split::split_device(data));
