//! Identity of an answer token: which session issued it and for which request.

use core::sync::atomic::{AtomicU64, Ordering};

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// A fresh session id, unique in this process (tokens of one session are refused by another).
pub(crate) fn new_session_id() -> u64 {
    NEXT_SESSION.fetch_add(1, Ordering::Relaxed)
}

/// The identity carried by every answer token: the issuing session and a sequence number,
/// plus one flag some tokens expose (e.g. postcopy for memory answers).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Ticket {
    pub session: u64,
    pub seq: u64,
    pub postcopy: bool,
}
