//! A loopback device for tests, demos and benches: every request's readable
//! bytes are written back into its writable part.

use std::sync::atomic::{AtomicU64, Ordering};

use vhost_proto::backend::{DeviceDescription, Refused};
use vhost_proto::wire::{ProtocolFeatures, VirtioFeatures};

use crate::{Device, Queue};

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
    requests: AtomicU64,
    bytes: AtomicU64,
}

impl Echo {
    /// An echo device with `queues` queues.
    pub fn new(queues: u16) -> Self {
        Echo {
            queues,
            requests: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }

    /// Requests completed so far (all queues, all connections).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Bytes echoed so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
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

    fn process_queue(&self, q: &mut Queue) -> Result<(), vring::Error> {
        let mut buf = [0u8; 4096];
        let (mut n, mut total) = (0u64, 0u64);
        while let Some(chain) = q.pop()? {
            let mut reader = q.reader(&chain)?;
            let mut writer = q.writer(&chain)?;
            loop {
                let got = reader.read(&mut buf)?;
                let Some(data) = buf.get(..got).filter(|d| !d.is_empty()) else {
                    break;
                };
                if writer.write(data)? < got {
                    break;
                }
            }
            let len = writer.bytes_written();
            q.add_used(&chain, len)?;
            n += 1;
            total += u64::from(len);
        }
        self.requests.fetch_add(n, Ordering::Relaxed);
        self.bytes.fetch_add(total, Ordering::Relaxed);
        Ok(())
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
