//! The front-end's end of the back-end channel: a blocking receiver over
//! `vhost_proto::frontend::Channel<OwnedFd>`.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use vhost_proto::backend::Refused;
use vhost_proto::frontend::{Channel, ChannelEvent, ChannelToken, LookupToken, Mappings};
use vhost_proto::session::{Negotiated, Rejection, Rule};
use vhost_proto::wire::{BackendRequest, Uuid};

use vhost_backend::ChannelError;
use vhost_backend::os::socket::{recv_with_fds, send_all_with_fds};

/// Bytes read per `recvmsg` (the largest back-end request is 52 bytes; a
/// few may come in one read).
const READ_BUF: usize = 4096;

/// A back-end request received on the channel, for the VMM to act on and
/// answer.
#[derive(Debug)]
#[non_exhaustive]
pub enum BackendMessage {
    /// A request (all but SHARED_OBJECT_LOOKUP) that passed its gates,
    /// with its fds. Answer with [`FrontendChannel::ack`].
    Request {
        /// The request.
        request: BackendRequest<OwnedFd>,
        /// The answer token.
        answer: ChannelToken,
    },
    /// BACKEND_SHARED_OBJECT_LOOKUP. Answer with
    /// [`FrontendChannel::answer_lookup`].
    SharedObjectLookup {
        /// The UUID looked up.
        uuid: Uuid,
        /// The answer token.
        answer: LookupToken,
    },
    /// A request the channel refused (its gate was not negotiated, or its
    /// payload was invalid); it was NACKed already if it asked for a reply.
    Rejected {
        /// What and why.
        rejection: Rejection,
    },
}

/// The front-end's end of the back-end channel opened by
/// [`Frontend::open_backend_channel`](super::Frontend::open_backend_channel):
/// [`recv`](Self::recv) yields the back-end's requests, typed and checked
/// against the negotiated features, and [`ack`](Self::ack) /
/// [`answer_lookup`](Self::answer_lookup) answer them. One request is
/// answered before the next is decoded.
#[derive(Debug)]
pub struct FrontendChannel {
    stream: UnixStream,
    chan: Channel<OwnedFd>,
    /// The negotiation as the [`Frontend`](super::Frontend) that opened the
    /// channel keeps it (SET_FEATURES may follow SET_BACKEND_REQ_FD).
    shared: Option<Arc<Mutex<Negotiated>>>,
    buf: Vec<u8>,
    /// Host notifiers and shared memory the back-end mapped ([`serve`](Self::serve)).
    pub(super) mappings: Mappings<OwnedFd>,
    /// Rings in-band notifications are checked against.
    pub(super) queues: Option<u16>,
}

impl FrontendChannel {
    /// The channel over `stream` for a session with this negotiation.
    pub fn new(stream: UnixStream, negotiated: Negotiated) -> Self {
        FrontendChannel {
            stream,
            chan: Channel::new(negotiated),
            shared: None,
            buf: vec![0u8; READ_BUF],
            mappings: Mappings::new(),
            queues: None,
        }
    }

    pub(crate) fn following(stream: UnixStream, shared: Arc<Mutex<Negotiated>>) -> Self {
        let neg = *shared.lock().unwrap_or_else(PoisonError::into_inner);
        let mut c = Self::new(stream, neg);
        c.shared = Some(shared);
        c
    }

    /// Updates the negotiation the gates check. A channel opened by
    /// [`Frontend::open_backend_channel`](super::Frontend::open_backend_channel)
    /// follows that front-end's negotiation by itself (until this is called).
    pub fn set_negotiated(&mut self, negotiated: Negotiated) {
        self.shared = None;
        self.chan.set_negotiated(negotiated);
    }

    /// The socket.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    fn flush(&mut self) -> Result<(), ChannelError> {
        while let Some(t) = self.chan.poll_transmit() {
            let fds: Vec<BorrowedFd<'_>> = t.fds.iter().map(AsFd::as_fd).collect();
            send_all_with_fds(&self.stream, &t.bytes, &fds)
                .map_err(|e| ChannelError::io("sendmsg", e))?;
        }
        Ok(())
    }

    /// Waits at most `timeout` (`None`: forever; at least 1 ms) for the
    /// back-end's next request; `Ok(None)` if none came in time.
    pub fn recv(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<Option<BackendMessage>, ChannelError> {
        // A zero timeout is refused by SO_RCVTIMEO: wait the shortest instead.
        let timeout = timeout.map(|t| t.max(Duration::from_millis(1)));
        self.stream
            .set_read_timeout(timeout)
            .map_err(|e| ChannelError::io("setsockopt", e))?;
        loop {
            self.flush()?;
            if let Some(event) = self.chan.poll_event() {
                let message = match event {
                    ChannelEvent::Request { request, answer } => {
                        BackendMessage::Request { request, answer }
                    }
                    ChannelEvent::SharedObjectLookup { uuid, answer } => {
                        BackendMessage::SharedObjectLookup { uuid, answer }
                    }
                    // The VMM's own refusals (answered by `ack` or
                    // `answer_lookup` with an error) are not news to it.
                    ChannelEvent::Rejected { rejection }
                        if matches!(rejection.rule, Rule::Refused { .. }) =>
                    {
                        continue;
                    }
                    ChannelEvent::Rejected { rejection } => {
                        // Its NACK (if any) is queued: send it now.
                        self.flush()?;
                        BackendMessage::Rejected { rejection }
                    }
                    ChannelEvent::ChannelLost { error } => {
                        return Err(ChannelError::Protocol(error));
                    }
                    _ => continue,
                };
                return Ok(Some(message));
            }
            let room = self.chan.input_room().clamp(1, self.buf.len());
            let buf = self.buf.get_mut(..room).unwrap_or_default();
            let mut fds = Vec::new();
            let n = match recv_with_fds(&self.stream, buf, &mut fds) {
                Ok(0) => return Err(ChannelError::Disconnected),
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ChannelError::io("recvmsg", e)),
            };
            if let Some(shared) = &self.shared {
                let neg = *shared.lock().unwrap_or_else(PoisonError::into_inner);
                self.chan.set_negotiated(neg);
            }
            let bytes = self.buf.get(..n).unwrap_or_default();
            self.chan.handle_input(bytes, fds)?;
        }
    }

    /// Answers a request: `Ok(())` when the VMM did what it asked. The ack
    /// is sent if the back-end asked for one (NEED_REPLY).
    pub fn ack(
        &mut self,
        answer: ChannelToken,
        result: Result<(), Refused>,
    ) -> Result<(), ChannelError> {
        self.chan.ack(answer, result)?;
        self.flush()
    }

    /// Answers SHARED_OBJECT_LOOKUP with the object's dma-buf fd (a duplicate
    /// is sent), or a refusal.
    pub fn answer_lookup(
        &mut self,
        answer: LookupToken,
        result: Result<BorrowedFd<'_>, Refused>,
    ) -> Result<(), ChannelError> {
        let result = match result {
            Ok(fd) => Ok(fd
                .try_clone_to_owned()
                .map_err(|e| ChannelError::io("dup", e))?),
            Err(r) => Err(r),
        };
        self.chan.answer_lookup(answer, result)?;
        self.flush()
    }
}
