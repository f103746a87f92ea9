//! The back-end side: a blocking [`Server`] that serves a
//! [`Device`](vhost_backend::Device) over a Unix socket, one worker thread per
//! started queue.
//!
//! The server reads the socket (`recvmsg` with SCM_RIGHTS), feeds the protocol
//! core, writes what it wants to send, and runs the binding-independent
//! session logic of [`vhost_backend::state`] with its queues on worker threads.

mod groups;
mod server;
mod session;
mod worker;

pub use groups::{BusyPoll, DEFAULT_FD_CHECK_ROUNDS, DEFAULT_IDLE_SPIN};
pub use server::{DEFAULT_STALL_TIMEOUT, Server, ServerHandle, Stopper};
pub use session::Ended;
