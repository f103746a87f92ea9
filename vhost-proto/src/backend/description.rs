//! The device's static description: what the back-end offers, fixed for a connection.

use crate::wire::{ProtocolFeatures, ShmemConfig, VirtioFeatures};

/// Largest queue count: vring indexes in SET_VRING_KICK/CALL/ERR are 8 bits (spec §3.1, §7.5).
pub const MAX_QUEUES: u16 = 256;

/// Largest queue size of any ring (virtqueue.md: 32768).
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// Default [`DeviceDescription::max_memory`]: 1 TiB of guest memory in all regions. Large
/// enough for big VMs, small enough that a hostile front-end cannot make the runner map
/// more than a sliver of the 128 TiB user address space.
pub const DEFAULT_MAX_MEMORY: u64 = 1 << 40;

/// Default [`DeviceDescription::max_inflight`]: 64 MiB. 256 packed queues of 1024 entries
/// (the default queue size) need about 8.4 MiB.
pub const DEFAULT_MAX_INFLIGHT: u64 = 64 << 20;

/// What a back-end device offers, given to [`Connection::new`](super::Connection::new). The
/// connection answers GET_FEATURES, GET_PROTOCOL_FEATURES, GET_QUEUE_NUM, GET_MAX_MEM_SLOTS
/// and GET_SHMEM_CONFIG from it alone.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceDescription {
    /// Offered virtio features. `PROTOCOL_FEATURES` (bit 30) is added by
    /// [`new`](Self::new) when `protocol_features` is not empty.
    pub features: VirtioFeatures,
    /// Offered protocol features.
    pub protocol_features: ProtocolFeatures,
    /// Number of queues (1..=256), the GET_QUEUE_NUM answer.
    pub queues: u16,
    /// Largest queue size the device accepts in SET_VRING_NUM (1..=32768).
    pub max_queue_size: u16,
    /// GET_MAX_MEM_SLOTS answer, and the cap on mapped regions (at least 8 are always
    /// allowed for SET_MEM_TABLE, spec §3.7).
    pub max_mem_slots: u32,
    /// Size of the device config space: GET_CONFIG/SET_CONFIG beyond it are refused.
    pub config_size: u32,
    /// VIRTIO Shared Memory Regions (GET_SHMEM_CONFIG, SHMEM feature); `None` answers 0 regions.
    pub shmem: Option<Box<ShmemConfig>>,
    /// Most bytes of guest memory all mapped regions may total: SET_MEM_TABLE and
    /// ADD_MEM_REG beyond it are refused (default [`DEFAULT_MAX_MEMORY`]).
    pub max_memory: u64,
    /// Largest inflight buffer GET_INFLIGHT_FD may ask for, in bytes, sized as a 64-byte
    /// aligned per-queue stride of 16 (split) or 32 (packed) bytes per entry plus a header
    /// (default [`DEFAULT_MAX_INFLIGHT`]). GET_INFLIGHT_FD is also refused for 0 queues or
    /// more than [`queues`](Self::queues), and for a queue size of 0 or above
    /// [`max_queue_size`](Self::max_queue_size).
    pub max_inflight: u64,
}

impl DeviceDescription {
    /// A description with these offers and `queues` queues; queue size 1024, 509 memory
    /// slots (libvhost-user's value), no config space, no shared memory regions, at most
    /// [`DEFAULT_MAX_MEMORY`] of guest memory and [`DEFAULT_MAX_INFLIGHT`] of inflight
    /// buffer. Out-of-range values are clamped (queues to 1..=256).
    pub fn new(features: VirtioFeatures, protocol_features: ProtocolFeatures, queues: u16) -> Self {
        let mut features = features;
        if !protocol_features.is_empty() {
            features |= VirtioFeatures::PROTOCOL_FEATURES;
        }
        DeviceDescription {
            features,
            protocol_features,
            queues: queues.clamp(1, MAX_QUEUES),
            max_queue_size: 1024,
            max_mem_slots: 509,
            config_size: 0,
            shmem: None,
            max_memory: DEFAULT_MAX_MEMORY,
            max_inflight: DEFAULT_MAX_INFLIGHT,
        }
    }

    /// Sets the most bytes of guest memory all regions may total.
    pub fn with_max_memory(mut self, bytes: u64) -> Self {
        self.max_memory = bytes;
        self
    }

    /// Sets the largest inflight buffer GET_INFLIGHT_FD may ask for, in bytes.
    pub fn with_max_inflight(mut self, bytes: u64) -> Self {
        self.max_inflight = bytes;
        self
    }

    /// Sets the largest queue size (clamped to 1..=32768).
    pub fn with_max_queue_size(mut self, size: u16) -> Self {
        self.max_queue_size = size.clamp(1, MAX_QUEUE_SIZE);
        self
    }

    /// Sets the number of memory slots (at least 8).
    pub fn with_max_mem_slots(mut self, slots: u32) -> Self {
        self.max_mem_slots = slots.max(8);
        self
    }

    /// Sets the size of the config space (at most 4096).
    pub fn with_config_size(mut self, size: u32) -> Self {
        self.config_size = size.min(crate::wire::MAX_CONFIG_SIZE as u32);
        self
    }

    /// Sets the shared memory regions.
    pub fn with_shmem(mut self, config: ShmemConfig) -> Self {
        self.shmem = Some(Box::new(config));
        self
    }

    /// The same description with every field brought into range (the connection calls it).
    pub(crate) fn normalized(mut self) -> Self {
        if !self.protocol_features.is_empty() {
            self.features |= VirtioFeatures::PROTOCOL_FEATURES;
        }
        self.queues = self.queues.clamp(1, MAX_QUEUES);
        self.max_queue_size = self.max_queue_size.clamp(1, MAX_QUEUE_SIZE);
        self.max_mem_slots = self.max_mem_slots.max(8);
        self.config_size = self.config_size.min(crate::wire::MAX_CONFIG_SIZE as u32);
        self
    }
}
