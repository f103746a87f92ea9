//! vhost-user back-end sessions in a mio event loop: many front-ends and their queues
//! served by one thread.
//!
//! - [`Session`]: one front-end connection as a [`mio::event::Source`]. Register it in
//!   **your** `Poll` under **your** token; call [`Session::ready`] for each event with that
//!   token. It reads until `WouldBlock`, writes replies as the socket accepts them (fds with
//!   the first byte, partial writes resumed on the writable edge), answers the protocol
//!   core's events with a [`Device`](vhost_backend::Device) of `vhost-backend`
//!   (the same trait the std runner serves: every device runs on both), and processes kicked rings
//!   inline: the kick fd of each started ring, and each source of its handler, is registered
//!   under a token of its own that follows the session's.
//! - [`Listener`]: a listening socket as a source; accepts connections as sessions.
//! - [`Server`]: a ready-made loop for users without one: a listener and/or sockets handed
//!   over with [`Handle::add`], any number of sessions in one thread.
//!
//! Devices run in the loop's thread: [`QueueHandler`](vhost_backend::QueueHandler)s and
//! the other [`Device`](vhost_backend::Device) callbacks must not block (slow work goes to
//! the handler's own completion source, a [`Source`](vhost_backend::Source) the session
//! registers under a token of its own). A handler that panics breaks only its ring (its
//! err fd is signalled), as on the std runner. GET_VRING_BASE, memory changes, reset and
//! a front-end that leaves wait, without blocking the loop, until the handlers have
//! completed what they hold. A session never buffers much: reads
//! go through a buffer on the stack, input and output are bounded by the protocol core's
//! queues, and a front-end that reads no reply stops being read.
//!
//! The device contract, the handling of the protocol core's events (device calls, memory
//! maps, queue builds, inflight buffers, the drain loop with its lost-wakeup re-check) and
//! the OS helpers are `vhost-backend`'s, shared with the std runner; this crate adds the
//! non-blocking socket IO and runs the queues inline instead of on worker threads.
//!
//! Embedding next to a source of your own:
//!
//! ```no_run
//! use std::sync::Arc;
//! use mio::{Events, Interest, Poll, Token};
//! use vhost_io_mio::{Listener, MAX_TOKEN_SPAN, Session, Status};
//! use vhost_backend::echo::Echo;
//!
//! let mut poll = Poll::new()?;
//! let mut listener = Listener::bind("/tmp/echo.sock")?;
//! poll.registry().register(&mut listener, Token(0), Interest::READABLE)?;
//! let device = Arc::new(Echo::new(1));
//! let mut sessions: Vec<Option<Session<Echo>>> = Vec::new();
//! let mut events = Events::with_capacity(256);
//! loop {
//!     poll.poll(&mut events, None)?;
//!     for event in &events {
//!         match event.token() {
//!             Token(0) => {
//!                 while let Some(mut s) = listener.accept_session(Arc::clone(&device))? {
//!                     // A session's rings use the tokens after its own.
//!                     let token = Token(1 + sessions.len() * MAX_TOKEN_SPAN);
//!                     poll.registry().register(&mut s, token, Interest::READABLE)?;
//!                     sessions.push(Some(s));
//!                 }
//!             }
//!             token @ Token(n) => {
//!                 let Some(slot) = sessions.get_mut((n - 1) / MAX_TOKEN_SPAN) else { continue };
//!                 if let Some(s) = slot {
//!                     if !matches!(s.ready(poll.registry(), token), Ok(Status::Open)) {
//!                         *slot = None; // closed and deregistered
//!                     }
//!                 }
//!             }
//!         }
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

mod error;
pub mod frontend;
mod listener;
mod rings;
mod server;
mod session;

pub use error::Error;
pub use listener::Listener;
pub use server::{Handle, Server, ServerHandle};
pub use session::{MAX_TOKEN_SPAN, SLOTS, Session, Status};
