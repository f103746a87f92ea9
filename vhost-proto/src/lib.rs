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
//! ## Streams and their decoders
//!
//! | socket, reader | decoder alias | yields |
//! |---|---|---|
//! | main socket, back-end | [`wire::FrontendRequestDecoder`] | [`wire::FrontendRequest`] |
//! | main socket, front-end | [`wire::FrontendReplyDecoder`] | [`wire::FrontendReply`] (keyed by the header's code) |
//! | back-end channel, front-end | [`wire::BackendRequestDecoder`] | [`wire::BackendRequest`] |
//! | back-end channel, back-end | [`wire::BackendReplyDecoder`] | [`wire::BackendReply`] |
//!
//! Each decoded message comes as a [`wire::Received`] (`code`, `flags`, `message`;
//! `need_reply()` tells whether to ack). Feed input as [`wire::Input`] (the bytes of exactly
//! one read plus its fds; the decoder gives the fds to the last header that begins in the
//! read, so bindings need no framing of their own) and call `decode` until it returns
//! `Ok(None)`.
//!
//! ## Error classes
//!
//! - **Fatal** (`DecodeError::is_fatal()`): bad version or reserved flag bits, REPLY on a
//!   request or reply flags other than `0x5`, `size` over the cap or outside the request's
//!   size rule, wrong fd count, fds without a header, unknown code in a reply. The decoder is
//!   poisoned; close the connection.
//! - **Rejected** (`DecodeError::class()` is `ErrorClass::Rejected { code, need_reply }`): a
//!   well-framed request with an unknown code (body skipped; spec §9) or an invalid payload
//!   (zero-size or overflowing region, too many regions, config size mismatch, reserved bits
//!   in a vring index word, undefined values, ...). The message's fds were dropped; NACK it
//!   when `need_reply` and keep decoding.
//!
//! Wire module layout: see [`wire`] (header, codes, layouts, flags, typed values, context,
//! size/fd rules, requests, replies, decoder, encoder, errors).
#![doc = include_str!("../docs/sessions.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![deny(clippy::indexing_slicing)]

pub mod wire;

pub mod backend;
pub mod frontend;
pub mod session;

#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
