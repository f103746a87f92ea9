//! The back-end's side of vhost-user: [`Connection`] for the main socket and [`Channel`] for
//! the back-end → front-end channel.

mod answer;
mod channel;
mod connection;
mod description;
mod dispatch;
mod event;
mod memory;
mod ring;

pub use crate::session::{AddressSpace, RingConfig, RingFeatures, RingPosition, Transmit};
pub use channel::{Channel, ChannelEvent, RequestId};
pub use connection::{Connection, PostcopyState};
pub use description::{
    DEFAULT_MAX_INFLIGHT, DEFAULT_MAX_MEMORY, DeviceDescription, MAX_QUEUE_SIZE, MAX_QUEUES,
};
pub use event::{
    AckToken, ConfigToken, CryptoToken, DeviceStateToken, Event, InflightToken, MemoryToken,
    PostcopyAdviseToken, Refused, RingStartToken, RingStopToken, SharedObjectToken,
};
pub use memory::MemoryTable;
pub use ring::{Notifier, RingAddresses, RingState};
