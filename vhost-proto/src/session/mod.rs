//! Pieces shared by the four session state machines ([`backend::Connection`],
//! [`backend::Channel`], [`frontend::Connection`], [`frontend::Channel`]): transmits, bounded
//! input buffering, the feature gates of every request, ring configuration types, and the
//! three error classes.
//!
//! [`backend::Connection`]: crate::backend::Connection
//! [`backend::Channel`]: crate::backend::Channel
//! [`frontend::Connection`]: crate::frontend::Connection
//! [`frontend::Channel`]: crate::frontend::Channel

mod error;
pub(crate) mod inbox;
mod negotiation;
pub(crate) mod requests;
mod ring;
pub(crate) mod ticket;
mod transmit;

pub use error::{ApiError, Error, ErrorClass, FatalError, Rejection, Rule};
pub use negotiation::{Gate, Negotiated, backend_gate, frontend_gate, has_reply_body};
pub use ring::{AddressSpace, RingConfig, RingFeatures, RingPosition};
pub use transmit::Transmit;

/// Most events a session queues before it stops decoding input until the embedder drains
/// them (bounds memory against a peer that floods small requests).
pub const MAX_PENDING_EVENTS: usize = 32;

/// Most transmits a session queues before it stops decoding input until the embedder drains
/// them.
pub const MAX_PENDING_TRANSMITS: usize = 32;

/// Most input bytes a session buffers while it cannot decode (an answer is outstanding or
/// its queues are full). Feeding more is a [`FatalError::InputOverflow`]; check
/// `wants_input()` before reading from the socket.
pub const MAX_BUFFERED_INPUT: usize = 64 * 1024;

/// Most fd handles a session buffers while it cannot decode (QEMU pipelines a kick and a
/// call fd per ring without REPLY_ACK). `input_room()` drops to 0 before this is reached.
pub const MAX_BUFFERED_FDS: usize = 1024;
