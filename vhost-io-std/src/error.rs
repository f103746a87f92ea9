//! Errors of the std runner.

use std::io;

/// Why a back-end [`Server`](crate::backend::Server) or one of its
/// connections stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// A socket operation failed.
    #[error("{op} failed: {source}")]
    Io {
        /// The operation (`"accept"`, `"recvmsg"`, `"sendmsg"`, ...).
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The front-end broke the protocol in a way that ends the connection
    /// (bad framing, oversize message, wrong fd count, ...). Only that
    /// connection is closed; a server keeps accepting new ones.
    #[error("protocol error, connection closed: {0}")]
    Protocol(#[from] vhost_proto::session::FatalError),
    /// The socket path could not be taken (in use, not a socket, ...).
    #[error(transparent)]
    Bind(#[from] vhost_backend::BindError),
    /// The front-end shrank a file of guest memory under the mapping (the access was
    /// contained, see `vhost_backend::os::sigbus`): the connection is closed.
    #[error("guest memory faulted under its mapping (a shared file was shrunk): connection closed")]
    GuestMemoryFault,
}

impl ServeError {
    pub(crate) fn io(op: &'static str, source: impl Into<io::Error>) -> Self {
        ServeError::Io {
            op,
            source: source.into(),
        }
    }
}
