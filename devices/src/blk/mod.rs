//! vhost-user-blk: a virtio-blk device (virtqueue.md §9.1) on the `vhost-backend` runtime.
//!
//! - [`request`]: the request codec (header, types, status, segments) and its checks;
//! - [`config`]: the config space layout and the feature bits;
//! - [`image`]: the disk (in memory, or a raw file served by io_uring or a thread pool);
//! - [`BlkDevice`]: the [`Device`] the runners serve, with one [`BlkQueue`] per started
//!   ring;
//! - [`cli`]: the `vhost-user-blk` program (QEMU's back-end program conventions).
//!
//! ```
//! use std::os::unix::net::UnixStream;
//! use devices::blk::{BlkDevice, BlkOptions, image::Image};
//! use vhost_io_std::backend::Server;
//!
//! let device = BlkDevice::new(Image::memory(1 << 20)?, BlkOptions::default());
//! assert_eq!(device.capacity(), 2048);
//! let (front, back) = UnixStream::pair()?;
//! let server = Server::from_stream(back, device)?.spawn()?;
//! drop(front); // a front-end would drive it: see devices::probe
//! server.join()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use vhost_backend::vhost_proto::backend::{DeviceDescription, Refused};
use vhost_backend::vhost_proto::wire::{ConfigFlags, ProtocolFeatures, VirtioFeatures};
use vhost_backend::{Device, Queue, QueueHandler};
use zerocopy::{FromZeros, IntoBytes};

pub mod cli;
pub mod config;
pub mod image;
mod queue;
pub mod request;

pub use queue::{BlkQueue, MAX_IOVECS, Stats};

use config::{BlkConfig, CONFIG_SIZE, WRITEBACK_OFFSET, feature};
use image::{EngineKind, Image};
use request::Limits;

/// Largest segment (descriptor) the config space advertises (`size_max`).
pub const SIZE_MAX: u32 = 1 << 20;
/// Most data segments per request the config space advertises (`seg_max`).
pub const SEG_MAX: u32 = 254;
/// Most sectors per discard / write-zeroes segment.
pub const MAX_ZERO_SECTORS: u32 = 1 << 22;
/// Most segments per discard / write-zeroes request.
pub const MAX_ZERO_SEGMENTS: u32 = 32;
/// Largest queue the device accepts.
pub const MAX_QUEUE_SIZE: u16 = 1024;

/// How a [`BlkDevice`] is set up.
#[derive(Clone, Debug)]
pub struct BlkOptions {
    /// Request queues (1..=256).
    pub num_queues: u16,
    /// The GET_ID answer (its first 20 bytes).
    pub serial: String,
    /// The engine of a file image.
    pub engine: EngineKind,
    /// io_uring entries per queue (requests beyond wait in the queue's backlog).
    pub ring_depth: u32,
    /// Write-back cache at start (and after a reset); the driver toggles it through
    /// `writeback` (CONFIG_WCE). Write-through makes every write durable before it
    /// completes.
    pub writeback: bool,
    /// Tests only: the memory engine completes each batch in reverse order.
    #[doc(hidden)]
    pub reorder_completions: bool,
}

impl Default for BlkOptions {
    fn default() -> Self {
        BlkOptions {
            num_queues: 1,
            serial: "vhost-user-blk".into(),
            engine: EngineKind::Auto,
            ring_depth: 256,
            writeback: true,
            reorder_completions: false,
        }
    }
}

/// The virtio features a [`BlkDevice`] offers (RO added when read-only).
pub fn blk_features(read_only: bool) -> VirtioFeatures {
    let mut blk = feature::SIZE_MAX
        | feature::SEG_MAX
        | feature::BLK_SIZE
        | feature::TOPOLOGY
        | feature::FLUSH
        | feature::CONFIG_WCE
        | feature::MQ;
    if read_only {
        blk |= feature::RO;
    } else {
        blk |= feature::DISCARD | feature::WRITE_ZEROES;
    }
    VirtioFeatures::VERSION_1
        | VirtioFeatures::EVENT_IDX
        | VirtioFeatures::INDIRECT_DESC
        | VirtioFeatures::RING_PACKED
        | VirtioFeatures::from_bits_retain(blk)
}

/// The protocol features a [`BlkDevice`] offers (all served by the runtime).
pub fn blk_protocol_features() -> ProtocolFeatures {
    ProtocolFeatures::MQ
        | ProtocolFeatures::REPLY_ACK
        | ProtocolFeatures::CONFIG
        | ProtocolFeatures::INFLIGHT_SHMFD
        | ProtocolFeatures::CONFIGURE_MEM_SLOTS
        | ProtocolFeatures::STATUS
        | ProtocolFeatures::RESET_DEVICE
}

/// A vhost-user-blk device on an [`Image`].
#[derive(Debug)]
pub struct BlkDevice {
    image: Image,
    options: BlkOptions,
    writeback: Arc<AtomicBool>,
    stats: Arc<Stats>,
}

impl BlkDevice {
    /// A device serving `image` as `options` say.
    pub fn new(image: Image, mut options: BlkOptions) -> Self {
        options.num_queues = options.num_queues.clamp(1, 256);
        BlkDevice {
            writeback: Arc::new(AtomicBool::new(options.writeback)),
            image,
            options,
            stats: Arc::default(),
        }
    }

    /// The image.
    pub fn image(&self) -> &Image {
        &self.image
    }

    /// Disk size in sectors.
    pub fn capacity(&self) -> u64 {
        self.image.size() / request::SECTOR_SIZE
    }

    /// What the queues counted.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Whether the write-back cache is on.
    pub fn writeback(&self) -> bool {
        self.writeback.load(Ordering::Relaxed)
    }

    /// The limits requests are checked against.
    pub fn limits(&self) -> Limits {
        let writable = !self.image.is_read_only();
        Limits {
            capacity: self.capacity(),
            read_only: !writable,
            max_data: u64::from(SIZE_MAX) * u64::from(SEG_MAX),
            discard: writable,
            max_discard_sectors: MAX_ZERO_SECTORS,
            max_discard_seg: MAX_ZERO_SEGMENTS,
            write_zeroes: writable,
            max_write_zeroes_sectors: MAX_ZERO_SECTORS,
            max_write_zeroes_seg: MAX_ZERO_SEGMENTS,
        }
    }

    /// The config space as it reads now.
    pub fn config(&self) -> BlkConfig {
        let mut c = BlkConfig::new_zeroed();
        c.capacity = self.capacity().into();
        c.size_max = SIZE_MAX.into();
        c.seg_max = SEG_MAX.into();
        c.blk_size = 512.into();
        c.min_io_size = 1.into();
        c.writeback = u8::from(self.writeback());
        c.num_queues = self.options.num_queues.into();
        if !self.image.is_read_only() {
            c.max_discard_sectors = MAX_ZERO_SECTORS.into();
            c.max_discard_seg = MAX_ZERO_SEGMENTS.into();
            c.discard_sector_alignment = 1.into();
            c.max_write_zeroes_sectors = MAX_ZERO_SECTORS.into();
            c.max_write_zeroes_seg = MAX_ZERO_SEGMENTS.into();
            c.write_zeroes_may_unmap = 1;
        }
        c
    }
}

impl Device for BlkDevice {
    fn description(&self) -> DeviceDescription {
        DeviceDescription::new(
            blk_features(self.image.is_read_only()),
            blk_protocol_features(),
            self.options.num_queues,
        )
        .with_config_size(CONFIG_SIZE)
        .with_max_queue_size(MAX_QUEUE_SIZE)
    }

    fn start_queue(self: Arc<Self>, queue: &Queue) -> Result<Box<dyn QueueHandler>, Refused> {
        let depth = self.options.ring_depth.min(u32::from(queue.size()).max(8));
        let engine = self
            .image
            .engine(self.options.engine, depth, self.options.reorder_completions)
            .map_err(|e| {
                log::error!("queue {}: no I/O engine: {e}", queue.index());
                Refused::because("the image's I/O engine could not be set up")
            })?;
        log::debug!(
            "queue {}: started ({} entries, {}, engine {})",
            queue.index(),
            queue.size(),
            if queue.is_packed() { "packed" } else { "split" },
            engine.name()
        );
        Ok(Box::new(BlkQueue::new(
            queue.index(),
            engine,
            self.limits(),
            Arc::clone(&self.writeback),
            request::id_bytes(&self.options.serial),
            Arc::clone(&self.stats),
        )))
    }

    fn read_config(&self, offset: u32, data: &mut [u8]) -> Result<(), Refused> {
        let config = self.config();
        let start = offset as usize;
        let src = config
            .as_bytes()
            .get(start..start.saturating_add(data.len()))
            .ok_or(Refused::because("outside the config space"))?;
        data.copy_from_slice(src);
        Ok(())
    }

    fn write_config(&self, offset: u32, data: &[u8], flags: ConfigFlags) -> Result<(), Refused> {
        // Only `writeback` is writable (CONFIG_WCE); a migration write may carry the
        // whole space, of which `writeback` is taken.
        let end = u64::from(offset) + data.len() as u64;
        let covers =
            u64::from(offset) <= u64::from(WRITEBACK_OFFSET) && end > u64::from(WRITEBACK_OFFSET);
        let only = offset == WRITEBACK_OFFSET && data.len() == 1;
        if !(only || (covers && flags == ConfigFlags::Migration)) {
            return Err(Refused::because("only the writeback byte is writable"));
        }
        let Some(&wce) = data.get((WRITEBACK_OFFSET - offset) as usize) else {
            return Err(Refused::because("only the writeback byte is writable"));
        };
        if wce > 1 {
            return Err(Refused::because("writeback is 0 or 1"));
        }
        log::debug!("writeback cache {}", if wce == 1 { "on" } else { "off" });
        self.writeback.store(wce == 1, Ordering::Relaxed);
        Ok(())
    }

    fn reset(&self) {
        self.writeback
            .store(self.options.writeback, Ordering::Relaxed);
    }
}
