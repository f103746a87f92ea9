//! The requesting side of a socket, the front-end's main connection and the back-end's
//! channel alike: requests wait behind the one whose reply is awaited (one at a time on the
//! wire), and a reply must match it.

use std::collections::VecDeque;

use super::error::FatalError;
use super::transmit::Transmit;
use crate::wire::{DecodeError, Input, ReqCode};

#[derive(Debug)]
struct Queued<W, H> {
    what: W,
    awaits_reply: bool,
    transmit: Transmit<H>,
}

/// Queued requests, the one whose reply is awaited, and the messages to write.
///
/// `W` is what a request is known by until it completes (its id and code, and whatever its
/// reply is checked against).
#[derive(Debug)]
pub(crate) struct Requests<W, H> {
    queue: VecDeque<Queued<W, H>>,
    outstanding: Option<W>,
    transmits: VecDeque<Transmit<H>>,
    next_id: u64,
}

impl<W, H> Default for Requests<W, H> {
    fn default() -> Self {
        Requests {
            queue: VecDeque::new(),
            outstanding: None,
            transmits: VecDeque::new(),
            next_id: 0,
        }
    }
}

impl<W: Copy, H> Requests<W, H> {
    /// Whether nothing is queued or waiting for a reply.
    pub fn is_idle(&self) -> bool {
        self.outstanding.is_none() && self.queue.is_empty()
    }

    /// How many requests wait behind the outstanding one.
    pub fn queued_len(&self) -> usize {
        self.queue.len()
    }

    /// The requests waiting behind the outstanding one, oldest first.
    pub fn queued(&self) -> impl Iterator<Item = &W> {
        self.queue.iter().map(|q| &q.what)
    }

    /// The request whose reply is awaited.
    pub fn outstanding(&self) -> Option<W> {
        self.outstanding
    }

    /// The id of the next request (ids start at 1).
    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Queues an encoded request and pumps; `true` when a request now awaits its reply
    /// that did not before (see [`pump`](Self::pump)).
    pub fn push(&mut self, what: W, awaits_reply: bool, transmit: Transmit<H>) -> bool {
        self.queue.push_back(Queued {
            what,
            awaits_reply,
            transmit,
        });
        self.pump()
    }

    /// Moves queued requests to the transmit queue while no reply is awaited; `true` when
    /// it moved one that awaits its reply (it is now outstanding).
    pub fn pump(&mut self) -> bool {
        while self.outstanding.is_none() {
            let Some(q) = self.queue.pop_front() else {
                break;
            };
            self.transmits.push_back(q.transmit);
            if q.awaits_reply {
                self.outstanding = Some(q.what);
                return true;
            }
        }
        false
    }

    /// Ends the outstanding request (its reply arrived); pump afterwards.
    pub fn complete(&mut self) -> Option<W> {
        self.outstanding.take()
    }

    /// The next message to write.
    pub fn poll_transmit(&mut self) -> Option<Transmit<H>> {
        self.transmits.pop_front()
    }

    /// Drops the queued requests and the awaited one (the socket failed); messages already
    /// handed to the transmit queue stay.
    pub fn clear(&mut self) {
        self.queue.clear();
        self.outstanding = None;
    }
}

/// The error for input that arrives while no reply is awaited: nothing may arrive, so only
/// the header's code is read, to name it (0 when fewer than 4 bytes came).
pub(crate) fn unexpected_input<H>(input: &Input<'_, H>) -> FatalError {
    let code = input
        .remaining()
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_ne_bytes);
    FatalError::UnexpectedReply {
        code: code.unwrap_or(0),
    }
}

/// Checks a decoded reply's code `got` against the awaited request (`code_of` gives its
/// code) and returns that request: a reply while none is awaited, or to another request, is
/// fatal (spec §2).
pub(crate) fn match_reply<W: Copy, C>(
    awaited: Option<W>,
    code_of: impl FnOnce(W) -> C,
    got: C,
) -> Result<W, FatalError>
where
    C: Copy + PartialEq + Into<ReqCode>,
{
    let Some(w) = awaited else {
        return Err(FatalError::UnexpectedReply {
            code: got.into().raw(),
        });
    };
    let expected = code_of(w);
    if expected != got {
        return Err(FatalError::ReplyCodeMismatch {
            expected: expected.into(),
            got: got.into(),
        });
    }
    Ok(w)
}

/// A reply decoder's error as the fatal error it is: a code no request has is an
/// unexpected reply.
pub(crate) fn reply_decode_fatal(e: DecodeError) -> FatalError {
    match e {
        DecodeError::UnknownReply { code } => FatalError::UnexpectedReply { code },
        e => FatalError::Decode(e),
    }
}
