//! The back-end side: a blocking [`Server`] that serves a
//! [`Device`](vhost_backend::Device) over a Unix socket, its queues on worker
//! threads (by default one per started queue).
//!
//! The server reads the socket (`recvmsg` with SCM_RIGHTS), feeds the protocol
//! core, writes what it wants to send, and runs the binding-independent
//! session logic of [`vhost_backend::state`] with its queues on worker threads.
//!
//! # Threads and waiting: which mode when
//!
//! A worker thread serves one *queue group* ([`Server::with_queue_groups`]): every
//! started queue of the group, with one of two ways to wait for work.
//!
//! - **Blocking** (the default): the thread sleeps in `poll` on its queues' kick fds
//!   and their handlers' sources, and serves a ring when the driver kicks. It costs no
//!   CPU while idle, and a wakeup (a kick, then usually a call) per burst of requests.
//!   Use it for control queues, block devices, and any device whose load is moderate or
//!   bursty. The default, a group per queue, spreads queues over cores; put several
//!   queues in one group to bound the thread count (many queues, few cores).
//! - **Busy polling** ([`Server::with_busy_poll`], [`BusyPoll`]): the thread calls its
//!   queues' handlers in a loop with driver notifications suppressed, so a driver never
//!   pays for a kick (a VM exit for a guest) and a request is seen within a polling
//!   round instead of a wakeup. It takes a core while there is traffic, plus
//!   [`BusyPoll::idle_spin`] after it (then it sleeps until the next kick, like a
//!   blocking group). Use it for high packet rates (a net device competing with DPDK:
//!   a group per queue pair, pinned to its own core), with the control queue in a
//!   blocking group ([`Server::with_busy_poll_groups`]). Spinning threads on a shared,
//!   oversubscribed machine steal CPU from the guest: give busy groups dedicated cores.

mod groups;
mod server;
mod session;
mod worker;

pub use groups::{BusyPoll, DEFAULT_FD_CHECK_ROUNDS, DEFAULT_IDLE_SPIN};
pub use server::{DEFAULT_STALL_TIMEOUT, Server, ServerHandle, Stopper};
pub use session::Ended;
