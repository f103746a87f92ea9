//! Sans-IO core of the vhost-user protocol.
//!
//! Bytes and fd handles go in, typed events and transmits come out; this crate
//! performs no I/O, spawns no threads and reads no clock.
//!
//! # The wire codec ([`wire`])
//!
//! - [`wire::Decoder`] turns a byte stream (any split) plus the fd handles of each read into
//!   typed messages: [`wire::FrontendRequest`] on a back-end's main socket,
//!   [`wire::BackendRequest`] on a front-end's back-end channel, [`wire::FrontendReply`] /
//!   [`wire::BackendReply`] for the answers. Fd handles are a type parameter `H` (the IO
//!   crates use `OwnedFd`, tests use integers); the codec never opens or closes an fd, it
//!   only moves or drops handles.
//! - Each message type has `encode(...) -> Encoded<H>`, the exact inverse: header + payload
//!   bytes and the handles for one `sendmsg`.
//! - Layout choices that depend on negotiation (XEN_MMAP, LOG_SHMFD, postcopy) come from a
//!   [`wire::DecodeContext`] the session owns and updates.
//! - [`wire::DecodeError::class`] separates *fatal* errors (close the connection) from
//!   *rejected* messages (NACK if NEED_REPLY, continue).
//!
//! Wire module layout: see [`wire`] (header, codes, layouts, flags, typed values, context,
//! size/fd rules, requests, replies, decoder, encoder, errors).
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![deny(clippy::indexing_slicing)]

pub mod wire;

#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
