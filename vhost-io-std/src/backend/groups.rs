//! Which thread serves which queue ([`Server::with_queue_groups`]) and how it waits
//! ([`Server::with_busy_poll`]).
//!
//! [`Server::with_queue_groups`]: super::Server::with_queue_groups
//! [`Server::with_busy_poll`]: super::Server::with_busy_poll

use std::sync::Arc;
use std::time::Duration;

/// How long a busy-polling group spins without finding work before it re-enables driver
/// notifications and sleeps until a kick, unless told otherwise
/// ([`BusyPoll::with_idle_spin`]).
pub const DEFAULT_IDLE_SPIN: Duration = Duration::from_millis(1);

/// How many polling rounds a busy-polling group makes between two looks at its fds
/// (kicks, the handlers' sources, its control fd), unless told otherwise
/// ([`BusyPoll::with_fd_check_rounds`]).
pub const DEFAULT_FD_CHECK_ROUNDS: u32 = 64;

/// Busy polling for a queue group ([`Server::with_busy_poll`](super::Server::with_busy_poll)).
///
/// The group's thread serves every started queue of the group in a loop, with driver
/// notifications (kicks) suppressed: each round calls every ring's handler once
/// ([`QueueHandler::process`](vhost_backend::QueueHandler::process)), publishes and
/// signals the call fd when the driver asked for it. Every
/// [`fd_check_rounds`](Self::fd_check_rounds) rounds it looks at its fds without
/// blocking (the handlers' [`Source`](vhost_backend::Source)s, the kick fds for a dead
/// kick, its control fd); commands from the session (stop, new notifiers, enable) are
/// seen every round.
///
/// After [`idle_spin`](Self::idle_spin) without work (no chain taken, no source ready),
/// the group backs off: it re-enables kicks on every ring (re-checking for chains that
/// raced in) and sleeps in `poll` on its kicks and sources like a blocking group, until
/// the driver kicks; then it spins again.
///
/// ```
/// use std::time::Duration;
/// use vhost_io_std::backend::{BusyPoll, DEFAULT_IDLE_SPIN};
///
/// let default = BusyPoll::new();
/// assert_eq!(default.idle_spin(), Some(DEFAULT_IDLE_SPIN));
/// let eager = BusyPoll::new().with_idle_spin(Duration::from_micros(50));
/// assert_eq!(eager.idle_spin(), Some(Duration::from_micros(50)));
/// // Like DPDK's vhost PMD: never sleeps, a core per group.
/// assert_eq!(BusyPoll::new().spin_forever().idle_spin(), None);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BusyPoll {
    idle_spin: Option<Duration>,
    fd_check_rounds: u32,
}

impl BusyPoll {
    /// Spins [`DEFAULT_IDLE_SPIN`] before sleeping, looks at its fds every
    /// [`DEFAULT_FD_CHECK_ROUNDS`] rounds.
    pub const fn new() -> Self {
        BusyPoll {
            idle_spin: Some(DEFAULT_IDLE_SPIN),
            fd_check_rounds: DEFAULT_FD_CHECK_ROUNDS,
        }
    }

    /// Spins `spin` without work before sleeping until a kick (zero: sleeps after the
    /// first empty round).
    pub const fn with_idle_spin(mut self, spin: Duration) -> Self {
        self.idle_spin = Some(spin);
        self
    }

    /// Never sleeps: the group's thread takes a core while its queues run (kicks stay
    /// suppressed until a ring stops).
    pub const fn spin_forever(mut self) -> Self {
        self.idle_spin = None;
        self
    }

    /// Looks at the fds (sources, kicks, control) every `rounds` polling rounds (at least
    /// 1). Fewer rounds serve a handler's sources sooner, at one `poll` system call each.
    pub const fn with_fd_check_rounds(mut self, rounds: u32) -> Self {
        self.fd_check_rounds = if rounds == 0 { 1 } else { rounds };
        self
    }

    /// How long the group spins without work before it sleeps; `None`: never.
    pub const fn idle_spin(&self) -> Option<Duration> {
        self.idle_spin
    }

    /// Polling rounds between two looks at the fds.
    pub const fn fd_check_rounds(&self) -> u32 {
        self.fd_check_rounds
    }
}

impl Default for BusyPoll {
    fn default() -> Self {
        Self::new()
    }
}

/// How a group's thread waits for work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Blocks in `poll` on every kick, source and the control fd.
    Block,
    /// Polls the rings with kicks suppressed.
    Busy(BusyPoll),
}

type GroupOf = dyn Fn(u16) -> u16 + Send + Sync;
type BusyOf = dyn Fn(u16) -> Option<BusyPoll> + Send + Sync;

/// A server's queue-to-thread mapping, handed to each of its sessions.
#[derive(Clone, Default)]
pub(crate) struct Placement {
    /// `None`: a group per queue (its index).
    group_of: Option<Arc<GroupOf>>,
    /// `None`: every group blocks.
    busy_of: Option<Arc<BusyOf>>,
}

impl std::fmt::Debug for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Placement")
            .field("grouped", &self.group_of.is_some())
            .field("busy", &self.busy_of.is_some())
            .finish()
    }
}

impl Placement {
    pub(crate) fn set_groups(&mut self, f: Arc<GroupOf>) {
        self.group_of = Some(f);
    }

    pub(crate) fn set_busy(&mut self, f: Arc<BusyOf>) {
        self.busy_of = Some(f);
    }

    /// The group of queue `index`.
    pub(crate) fn group(&self, index: u16) -> u16 {
        self.group_of.as_ref().map_or(index, |f| f(index))
    }

    /// How group `group`'s thread waits.
    pub(crate) fn wait(&self, group: u16) -> Wait {
        match self.busy_of.as_ref().and_then(|f| f(group)) {
            Some(b) => Wait::Busy(b),
            None => Wait::Block,
        }
    }

    /// The name of group `group`'s thread (at most 15 bytes, the kernel's limit):
    /// `vhost-q<queue>` for a queue of its own (the default mapping), `vhost-g<group>` for
    /// a configured group, `vhost-poll<group>` for a busy-polling one.
    pub(crate) fn thread_name(&self, group: u16, wait: Wait) -> String {
        match (wait, self.group_of.is_some()) {
            (Wait::Busy(_), _) => format!("vhost-poll{group}"),
            (Wait::Block, true) => format!("vhost-g{group}"),
            (Wait::Block, false) => format!("vhost-q{group}"),
        }
    }
}
