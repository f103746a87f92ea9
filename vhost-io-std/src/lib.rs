//! vhost-user over blocking std Unix sockets.
//!
//! - [`backend`]: a [`Server`](backend::Server) that serves a
//!   [`Device`](backend::Device) (listen on a path, connect to one, or an
//!   fd already connected), one worker thread per started queue, and the
//!   device's end of the back-end channel
//!   ([`BackendChannel`](backend::BackendChannel)).
//! - [`frontend`]: a blocking [`Frontend`](frontend::Frontend) client with one
//!   method per request, reply timeouts, and memfd-backed guest memory for
//!   front-ends that drive a back-end without a guest; the front-end's end of
//!   the back-end channel ([`FrontendChannel`](frontend::FrontendChannel)).
//!   Both ends run on the `vhost_proto` sessions, which own the protocol
//!   state; this crate moves bytes and fds.
//! - [`os`]: the operating-system helpers that both IO crates (this one and
//!   `vhost-io-mio`) use: `sendmsg`/`recvmsg` with file descriptors, eventfds
//!   (or pipes), memfds and memory mappings.
#![deny(missing_docs)]

pub mod backend;
pub mod echo;
pub mod error;
pub mod frontend;
pub mod os;

pub use error::{ChannelError, ClientError, OsError, ServeError};
