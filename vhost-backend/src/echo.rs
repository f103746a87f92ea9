//! A loopback device for tests, demos and benches: every request's readable
//! bytes are written back into its writable part.

use std::sync::atomic::{AtomicU64, Ordering};

use vhost_proto::backend::{DeviceDescription, Refused};
use vhost_proto::wire::{ProtocolFeatures, VirtioFeatures};

use std::sync::Arc;

use crate::{Device, Queue, QueueError, QueueHandler};

/// The echo device's 8-byte config space: this magic, little-endian.
pub const CONFIG_MAGIC: u64 = 0x6f68_6365_7473_6f68;

/// Echoes each request: copies its readable bytes into its writable bytes
/// (as many as fit) and completes it with that length. Offers split and
/// packed rings, EVENT_IDX, INDIRECT_DESC, several queues, REPLY_ACK, MQ,
/// CONFIG (8 bytes), CONFIGURE_MEM_SLOTS, STATUS, RESET_DEVICE and
/// INFLIGHT_SHMFD.
///
/// ```
/// use vhost_backend::Device;
/// use vhost_backend::echo::Echo;
///
/// let echo = Echo::new(2);
/// assert_eq!(echo.description().queues, 2);
/// ```
#[derive(Debug)]
pub struct Echo {
    queues: u16,
    stats: Arc<Stats>,
}

/// What every queue of an [`Echo`] counts.
#[derive(Debug, Default)]
struct Stats {
    requests: AtomicU64,
    bytes: AtomicU64,
}

/// One started queue of an [`Echo`].
#[derive(Debug)]
struct EchoQueue {
    stats: Arc<Stats>,
}

impl Echo {
    /// An echo device with `queues` queues.
    pub fn new(queues: u16) -> Self {
        Echo {
            queues,
            stats: Arc::default(),
        }
    }

    /// Requests completed so far (all queues, all connections).
    pub fn requests(&self) -> u64 {
        self.stats.requests.load(Ordering::Relaxed)
    }

    /// Bytes echoed so far.
    pub fn bytes(&self) -> u64 {
        self.stats.bytes.load(Ordering::Relaxed)
    }
}

/// The virtio features the echo device offers.
pub fn echo_features() -> VirtioFeatures {
    VirtioFeatures::VERSION_1
        | VirtioFeatures::EVENT_IDX
        | VirtioFeatures::INDIRECT_DESC
        | VirtioFeatures::RING_PACKED
}

impl Device for Echo {
    fn description(&self) -> DeviceDescription {
        let protocol = ProtocolFeatures::MQ
            | ProtocolFeatures::REPLY_ACK
            | ProtocolFeatures::CONFIG
            | ProtocolFeatures::CONFIGURE_MEM_SLOTS
            | ProtocolFeatures::STATUS
            | ProtocolFeatures::RESET_DEVICE
            | ProtocolFeatures::INFLIGHT_SHMFD;
        DeviceDescription::new(echo_features(), protocol, self.queues)
            .with_config_size(8)
            .with_max_queue_size(32768)
    }

    fn start_queue(self: Arc<Self>, _: &Queue) -> Result<Box<dyn QueueHandler>, Refused> {
        Ok(Box::new(EchoQueue {
            stats: Arc::clone(&self.stats),
        }))
    }

    fn read_config(&self, offset: u32, data: &mut [u8]) -> Result<(), Refused> {
        let bytes = CONFIG_MAGIC.to_le_bytes();
        let start = offset as usize;
        let src = bytes
            .get(start..start.saturating_add(data.len()))
            .ok_or(Refused::because("outside the config space"))?;
        data.copy_from_slice(src);
        Ok(())
    }
}

impl QueueHandler for EchoQueue {
    fn process(&mut self, q: &mut Queue) -> Result<(), QueueError> {
        let (mut n, mut total) = (0u64, 0u64);
        while let Some(chain) = q.pop()? {
            let len = echo_chain(q, &chain)?;
            q.complete(chain, len)?;
            n += 1;
            total += u64::from(len);
        }
        self.stats.requests.fetch_add(n, Ordering::Relaxed);
        self.stats.bytes.fetch_add(total, Ordering::Relaxed);
        Ok(())
    }
}

/// Copies `chain`'s readable bytes into its writable bytes (as many as fit), guest memory
/// to guest memory, slice by slice; returns the used length.
pub fn echo_chain(q: &Queue, chain: &crate::Chain) -> Result<u32, QueueError> {
    let mut reader = q.reader(chain);
    let mut writer = q.writer(chain);
    while let Some(src) = reader.next_slice(usize::MAX)? {
        let mut done = 0;
        while done < src.len() {
            let Some(dst) = writer.next_slice(src.len() - done)? else {
                return Ok(writer.bytes_written());
            };
            dst.copy_from(0, &src, done, dst.len())?;
            done += dst.len();
        }
    }
    Ok(writer.bytes_written())
}
