//! Why a session, a listener or the ready-made server failed.

use std::io;

/// An error of this binding. A [`Session`](crate::Session) that returned one is closed
/// (its queues stopped, its fds deregistered); the others are unaffected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A system call failed.
    #[error("{op} failed: {source}")]
    Io {
        /// The operation (`"recvmsg"`, `"sendmsg"`, `"accept"`, `"epoll_ctl"`, ...).
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The front-end broke the protocol in a way that ends the connection (bad framing,
    /// oversize message, wrong fd count, ...).
    #[error("protocol error, connection closed: {0}")]
    Protocol(#[from] vhost_proto::session::FatalError),
    /// [`Session::ready`](crate::Session::ready) was called before the session was
    /// registered with a mio `Registry`: its kick fds would have nowhere to go.
    #[error("the session is not registered with a mio registry")]
    NotRegistered,
    /// Binding a socket path failed (a live server is there, or the path is not a socket).
    #[error(transparent)]
    Bind(#[from] vhost_backend::BindError),
    /// The front-end shrank a file of guest memory under the mapping (the access was
    /// contained, see `vhost_backend::os::sigbus`): the session is ended.
    #[error("guest memory faulted under its mapping (a shared file was shrunk): session ended")]
    GuestMemoryFault,
}

impl Error {
    pub(crate) fn io(op: &'static str, source: impl Into<io::Error>) -> Self {
        Error::Io {
            op,
            source: source.into(),
        }
    }
}
