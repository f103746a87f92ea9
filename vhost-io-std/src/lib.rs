//! vhost-user over blocking std Unix sockets: a threaded runner of the
//! `vhost-backend` device runtime, and a blocking front-end client.
//!
//! - [`backend`]: a [`Server`](backend::Server) that serves a
//!   [`Device`](vhost_backend::Device) (listen on a path, connect to one, or
//!   an fd already connected), one worker thread per started queue or per
//!   queue group, blocking or busy polling; the
//!   device's end of the back-end channel is a gated
//!   [`BackendChannel`](vhost_backend::BackendChannel).
//! - [`frontend`]: a blocking [`Frontend`](frontend::Frontend) client with one
//!   method per request, reply timeouts, and memfd-backed guest memory for
//!   front-ends that drive a back-end without a guest; the front-end's end of
//!   the back-end channel ([`FrontendChannel`](frontend::FrontendChannel)).
//!   Both ends run on the `vhost_proto` sessions, which own the protocol
//!   state; this crate moves bytes and fds.
//! - [`os`]: the operating-system helpers of `vhost-backend`, re-exported.
#![deny(missing_docs)]

pub mod backend;
mod error;

pub use error::ServeError;
pub use vhost_backend::os;
pub use vhost_backend::{ChannelError, OsError};
/// The front-end toolkit (`vhost-frontend`): the blocking client, guest RAM, driver
/// rings, the back-end channel's front-end end.
pub use vhost_frontend as frontend;
pub use vhost_frontend::ClientError;
