//! The front-end's (VMM's) side of vhost-user: [`Connection`] for the main socket and
//! [`Channel`] for the back-end → front-end channel.

mod channel;
mod connection;
mod event;
mod reply_check;

pub use crate::session::Transmit;
pub use channel::{Channel, ChannelEvent, ChannelToken, LookupToken};
pub use connection::Connection;
pub use event::{Event, RequestId};
