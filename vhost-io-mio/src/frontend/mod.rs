//! vhost-user front-end sessions in a mio event loop: a VMM drives back-ends it did not
//! write from its own `Poll`.
//!
//! - [`FrontendSession`]: one connection to a back-end as a [`mio::event::Source`]. It
//!   registers the main socket under **your** token and, in the [`FRONTEND_TOKEN_SPAN`]
//!   tokens after it, the back-end channel (`+1`, once
//!   [`open_backend_channel`](FrontendSession::open_backend_channel) sent
//!   SET_BACKEND_REQ_FD) and each ring's call (`+2 + 2i`) and err (`+3 + 2i`) eventfd.
//!   Requests go through the protocol core's typed helpers
//!   ([`vhost_proto::frontend::Connection`], with [`FrontendSession::request`]); the
//!   session writes them as the socket accepts them, reads and validates the replies, and
//!   reports [`FrontendEvent`]s: typed replies, NACKs, "ring N completed something",
//!   back-end channel requests. Reply deadlines are the core's: sleep in `Poll::poll` at
//!   most until [`poll_timeout`](FrontendSession::poll_timeout), then call
//!   [`handle_timeout`](FrontendSession::handle_timeout).
//! - [`Handshake`]: the full handshake (features, protocol features, owner, memory
//!   table, ring starts, in QEMU's order) as a state machine your loop feeds with events.
//!
//! The ring itself (descriptors in guest memory) is yours: the session only moves the
//! kick, call and err eventfds. Any driver-side ring works; the example uses
//! `vhost-io-std`'s `DriverRing` and `GuestRam` (a memfd-backed guest memory).
//!
//! One error type, [`FrontendError`]: a back-end that sends garbage is
//! [`FrontendError::Protocol`], one that stops answering is
//! [`FrontendError::ReplyTimeout`], one that hangs up is
//! [`FrontendError::Disconnected`]; each closes the session (its fds deregistered).
//!
//! A handshake and an echo round trip through a split ring against an in-process echo
//! back-end:
//!
//! ```
//! use std::os::fd::AsFd;
//! use std::time::Instant;
//! use mio::{Events, Interest, Poll, Token};
//! use vhost_backend::echo::Echo;
//! use vhost_backend::os::eventfd::EventFd;
//! use vhost_io_mio::frontend::{FrontendEvent, FrontendSession, Handshake, Progress, RingStart};
//! use vhost_frontend::{DriverRing, GuestRam};
//! use vhost_proto::wire::{ProtocolFeatures, RegionFd, VirtioFeatures};
//!
//! // The back-end: the mio runner serving an echo device on a socketpair, in its own
//! // thread.
//! let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
//! let backend = vhost_io_mio::Server::new(Echo::new(1))?.spawn()?;
//! backend.handle().add(theirs)?;
//!
//! // Guest memory and a ring laid out in it for the features we will ack.
//! let features = VirtioFeatures::VERSION_1;
//! let ram = GuestRam::new(0, 1 << 20)?;
//! let mut ring = DriverRing::new(&ram, 0, 64, features)?;
//! let memory = ram
//!     .mem_table()
//!     .into_iter()
//!     .map(|(region, fd)| Ok(RegionFd { region, fd: fd.try_clone_to_owned()? }))
//!     .collect::<std::io::Result<Vec<_>>>()?;
//! let start = RingStart {
//!     index: 0,
//!     size: ring.size(),
//!     base: ring.base(),
//!     addr: ram.vring_addr(0, ring.config()).ok_or("ring outside memory")?,
//!     kick: ring.kick_fd().try_clone_to_owned()?,
//!     call: EventFd::from_fd(ring.call_fd().try_clone_to_owned()?),
//!     err: None,
//! };
//!
//! let mut poll = Poll::new()?;
//! let mut session = FrontendSession::from_std(ours)?;
//! poll.registry().register(&mut session, Token(0), Interest::READABLE)?;
//! let mut handshake = Handshake::new(features, ProtocolFeatures::REPLY_ACK, memory, vec![start]);
//! handshake.start(&mut session, Instant::now())?;
//!
//! let (out, inn) = (ram.alloc(16, 8)?, ram.alloc(16, 8)?);
//! let mut events = Events::with_capacity(64);
//! let mut echoed = None;
//! while echoed.is_none() {
//!     let timeout = session.poll_timeout().map(|d| d.saturating_duration_since(Instant::now()));
//!     poll.poll(&mut events, timeout)?;
//!     for e in &events {
//!         session.ready(e.token())?;
//!     }
//!     session.handle_timeout(Instant::now())?;
//!     while let Some(event) = session.poll_event() {
//!         match handshake.on_event(&mut session, Instant::now(), event)? {
//!             Progress::Done => {
//!                 // Started: send one buffer through the ring.
//!                 ram.write(out, b"hello, vhost-mio")?;
//!                 ring.add(&[(out, 16)], &[(inn, 16)])?;
//!                 ring.kick()?;
//!             }
//!             Progress::NotMine(FrontendEvent::Call { index: 0 }) => {
//!                 echoed = ring.pop_used()?;
//!             }
//!             _ => {}
//!         }
//!     }
//! }
//! let mut back = [0u8; 16];
//! ram.read(inn, &mut back)?;
//! assert_eq!(&back, b"hello, vhost-mio");
//! assert_eq!(echoed.map(|(_, len)| len), Some(16));
//!
//! poll.registry().deregister(&mut session)?;
//! drop(session); // the back-end sees the hang-up and ends
//! backend.stop()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod error;
mod handshake;
mod session;

pub use error::FrontendError;
pub use handshake::{Handshake, Progress, RingStart};
pub use session::{FRONTEND_TOKEN_SPAN, FrontendEvent, FrontendSession, MAX_RINGS};
