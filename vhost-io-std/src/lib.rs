//! vhost-user over blocking std Unix sockets.
//!
//! The [`os`] module holds the operating-system helpers that both IO crates
//! (this one and `vhost-io-mio`) use: `sendmsg`/`recvmsg` with file
//! descriptors, eventfds (or pipes), memfds and memory mappings. The blocking
//! session bindings come with the rest of the issue.
#![deny(missing_docs)]

pub mod error;
pub mod os;

pub use error::OsError;
