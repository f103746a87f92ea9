//! Identity of an answer token: which session issued it and for which request, and how the
//! session learns that a token was dropped without an answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// A fresh session id, unique in this process (tokens of one session are refused by another).
pub(crate) fn new_session_id() -> u64 {
    NEXT_SESSION.fetch_add(1, Ordering::Relaxed)
}

/// The identity carried by every answer token: the issuing session and a sequence number,
/// plus one flag some tokens expose (e.g. postcopy for memory answers).
///
/// Dropping a ticket always raises the flag it shares with the session's waiting entry
/// ([`DropFlag`]). An answer that the session accepts takes the waiting entry first, so the
/// flag of an answered ticket is never looked at again; a ticket that is dropped unanswered,
/// or passed to an answer the session refuses (wrong shape), leaves the entry waiting with a
/// raised flag, and the session notices at its next entry point instead of stalling.
#[derive(Debug)]
pub(crate) struct Ticket {
    pub session: u64,
    pub seq: u64,
    pub postcopy: bool,
    dropped: Arc<AtomicBool>,
}

/// The session's half of a [`Ticket`]: raised when the ticket is dropped.
#[derive(Debug)]
pub(crate) struct DropFlag(Arc<AtomicBool>);

impl DropFlag {
    /// Whether the ticket is gone.
    pub fn is_raised(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl Ticket {
    /// A ticket and the flag its drop raises.
    pub fn issue(session: u64, seq: u64, postcopy: bool) -> (Ticket, DropFlag) {
        let dropped = Arc::new(AtomicBool::new(false));
        (
            Ticket {
                session,
                seq,
                postcopy,
                dropped: Arc::clone(&dropped),
            },
            DropFlag(dropped),
        )
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::Release);
    }
}

impl PartialEq for Ticket {
    fn eq(&self, other: &Self) -> bool {
        self.session == other.session && self.seq == other.seq && self.postcopy == other.postcopy
    }
}

impl Eq for Ticket {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_raises_the_flag_and_tickets_are_send() {
        fn send<T: Send + Sync>(_: &T) {}
        let (t, flag) = Ticket::issue(1, 2, false);
        send(&t);
        assert!(!flag.is_raised());
        std::thread::spawn(move || drop(t)).join().ok();
        assert!(flag.is_raised());
    }
}
