//! The device's static description: what the back-end offers, fixed for a connection.

use crate::wire::{ProtocolFeatures, ShmemConfig, VirtioFeatures};

/// Largest queue count: vring indexes in SET_VRING_KICK/CALL/ERR are 8 bits (spec §3.1, §7.5).
pub const MAX_QUEUES: u16 = 256;

/// Largest queue size of any ring (virtqueue.md: 32768).
pub const MAX_QUEUE_SIZE: u16 = 32768;

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
}

impl DeviceDescription {
    /// A description with these offers and `queues` queues; queue size 1024, 509 memory
    /// slots (libvhost-user's value), no config space, no shared memory regions. Out-of-range
    /// values are clamped (queues to 1..=256).
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
        }
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
