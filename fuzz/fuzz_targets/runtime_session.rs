#![no_main]
//! Fuzzes the runtime's back-end session (`vhost_backend::state::SessionState`) over real
//! memfd guest memory with hostile ring contents and an asynchronous device; the body is
//! `vhost_backend::fuzzing::runtime_session`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vhost_backend::fuzzing::runtime_session(data));
