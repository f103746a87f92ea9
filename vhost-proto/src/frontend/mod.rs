//! The front-end's (VMM's) side of vhost-user: [`Connection`] for the main socket and
//! [`Channel`] for the back-end → front-end channel.
//!
//! [`Connection`] has one typed helper per request (`get_features`, `set_vring_num`, ...,
//! `get_shmem_config`; see `requests.rs`), reply deadlines ([`Connection::poll_timeout`],
//! [`Connection::handle_timeout`]) and typed replies ([`Event::into_reply`] → [`Reply`]).
//! [`Mappings`] keeps the back-end channel's host-notifier and shared-memory tables.

mod channel;
mod connection;
mod event;
mod mappings;
mod reply;
mod reply_check;
mod requests;
mod timeout;

pub use crate::session::Transmit;
pub use channel::{Channel, ChannelEvent, ChannelToken, LookupToken};
pub use connection::{Connection, DEFAULT_REPLY_TIMEOUT};
pub use event::{Event, RequestId};
pub use mappings::{HostNotifier, MappingError, Mappings};
pub use reply::Reply;
