//! Reply deadlines, quinn-style: the connection reads no clock. Requests sent with a time
//! ([`Connection::send_at`] and the typed helpers) that wait for a reply get a deadline;
//! the embedder sleeps until [`Connection::poll_timeout`] and then calls
//! [`Connection::handle_timeout`] with the current time.

use std::time::{Duration, Instant};

use crate::session::FatalError;

use super::Event;
use super::connection::{Connection, Outstanding};

impl<H> Connection<H> {
    /// How long a request waits for its reply (`None`: forever). Default
    /// [`DEFAULT_REPLY_TIMEOUT`](super::DEFAULT_REPLY_TIMEOUT).
    pub fn reply_timeout(&self) -> Option<Duration> {
        self.reply_timeout
    }

    /// Sets how long requests sent from now on wait for their reply (`None` disables the
    /// deadlines). Requests already sent keep their deadline.
    pub fn set_reply_timeout(&mut self, timeout: Option<Duration>) {
        self.reply_timeout = timeout;
    }

    fn deadlines(&self) -> impl Iterator<Item = Outstanding> + '_ {
        self.requests
            .outstanding()
            .into_iter()
            .chain(self.requests.queued().copied())
            .filter(|o| o.deadline.is_some())
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next: the deadline of
    /// the oldest request that waits for its reply (the one on the wire, or one queued
    /// behind it; a deadline counts from the request's `send_at` time). `None` when no
    /// request with a deadline waits, or the connection is closed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_closed() {
            return None;
        }
        self.deadlines().filter_map(|o| o.deadline).min()
    }

    /// Tells the connection the time is `now`. Every request whose deadline passed becomes
    /// an [`Event::ReplyTimeout`] (oldest first), and the connection is closed with
    /// [`FatalError::ReplyTimeout`] ([`Event::ConnectionLost`] follows): a reply that comes
    /// late would otherwise be matched to the wrong request. Calling it early, or with no
    /// deadline pending, does nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.is_closed() {
            return;
        }
        let expired: Vec<Outstanding> = self
            .deadlines()
            .filter(|o| o.deadline.is_some_and(|d| d <= now))
            .collect();
        let Some(first) = expired.first().map(|o| o.code) else {
            return;
        };
        for o in &expired {
            self.events.push_back(Event::ReplyTimeout {
                id: o.id,
                request: o.code,
            });
        }
        log::debug!("vhost-user front-end: no reply to {first} before its deadline");
        let _ = self.fail(FatalError::ReplyTimeout {
            request: first.into(),
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::wire::{DecodeContext, FrontendReply, FrontendReq, FrontendRequest};

    #[test]
    fn deadline_of_the_oldest_request_fires_and_closes() {
        let t0 = Instant::now();
        let mut c = Connection::<i32>::new();
        assert_eq!(c.poll_timeout(), None);
        let a = c.get_features(t0).unwrap();
        let _b = c
            .get_protocol_features(t0 + Duration::from_secs(1))
            .unwrap_err();
        // GET_PROTOCOL_FEATURES is gated on the offer: nothing queued, no deadline.
        assert_eq!(
            c.poll_timeout(),
            Some(t0 + super::super::DEFAULT_REPLY_TIMEOUT)
        );
        c.handle_timeout(t0 + Duration::from_secs(4));
        assert!(c.poll_event().is_none(), "early: nothing happens");
        c.handle_timeout(t0 + Duration::from_secs(5));
        assert!(matches!(
            c.poll_event(),
            Some(Event::ReplyTimeout { id, request: FrontendReq::GetFeatures }) if id == a
        ));
        assert!(matches!(
            c.poll_event(),
            Some(Event::ConnectionLost {
                error: FatalError::ReplyTimeout { .. }
            })
        ));
        assert!(c.is_closed());
        assert_eq!(c.poll_timeout(), None);
        // The late reply is not matched to anything.
        let late = FrontendReply::<i32>::U64 { value: 0 }
            .encode(FrontendReq::GetFeatures, &DecodeContext::default())
            .unwrap();
        assert!(c.handle_input(&late.bytes, late.fds).is_err());
    }

    #[test]
    fn queued_requests_keep_their_own_deadline_and_none_disables() {
        let t0 = Instant::now();
        let mut c = Connection::<i32>::new();
        c.set_reply_timeout(Some(Duration::from_secs(1)));
        c.get_features(t0).unwrap();
        c.get_features(t0 + Duration::from_secs(3)).unwrap();
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(1)));
        let _ = c.poll_transmit();
        let r = FrontendReply::<i32>::U64 { value: 1 << 30 }
            .encode(FrontendReq::GetFeatures, &DecodeContext::default())
            .unwrap();
        c.handle_input(&r.bytes, vec![]).unwrap();
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(4)));
        c.handle_input(&r.bytes, vec![]).unwrap();
        assert_eq!(c.poll_timeout(), None);
        c.set_reply_timeout(None);
        c.get_features(t0).unwrap();
        assert_eq!(c.poll_timeout(), None);
        // `send` without a time has no deadline either.
        c.set_reply_timeout(Some(Duration::from_secs(1)));
        c.send(FrontendRequest::GetFeatures).unwrap();
        c.handle_timeout(t0 + Duration::from_secs(100));
        assert!(!c.is_closed());
    }

    proptest::proptest! {
        /// Against a model (a FIFO of deadlines): `poll_timeout` is the oldest pending
        /// deadline, and the connection closes exactly when time reaches it.
        #[test]
        fn deadlines_match_a_fifo_model(ops in proptest::collection::vec((0u8..3, 0u64..4000), 1..40)) {
            let t0 = Instant::now();
            let mut c = Connection::<i32>::new();
            c.set_reply_timeout(Some(Duration::from_millis(1000)));
            let mut now = t0;
            let mut model: std::collections::VecDeque<Instant> = Default::default();
            let mut closed = false;
            for (op, ms) in ops {
                match op {
                    0 if !closed => {
                        now += Duration::from_millis(ms / 4);
                        c.get_features(now).unwrap();
                        model.push_back(now + Duration::from_millis(1000));
                    }
                    1 if !closed && !model.is_empty() => {
                        while c.poll_transmit().is_some() {}
                        let r = FrontendReply::<i32>::U64 { value: 0 }
                            .encode(FrontendReq::GetFeatures, &DecodeContext::default())
                            .unwrap();
                        c.handle_input(&r.bytes, vec![]).unwrap();
                        model.pop_front();
                    }
                    _ => {
                        now += Duration::from_millis(ms);
                        c.handle_timeout(now);
                        if model.front().is_some_and(|d| *d <= now) {
                            closed = true;
                        }
                    }
                }
                proptest::prop_assert_eq!(c.is_closed(), closed);
                let want = if closed { None } else { model.front().copied() };
                proptest::prop_assert_eq!(c.poll_timeout(), want);
            }
        }
    }
}
