//! Sans-IO core of the vhost-user protocol.
//!
//! Bytes and fd handles go in, typed events and transmits come out; this crate
//! performs no I/O, spawns no threads and reads no clock.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![deny(clippy::indexing_slicing)]
