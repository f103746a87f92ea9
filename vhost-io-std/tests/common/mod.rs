//! Shared pieces of the std binding's integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use vhost_frontend::{DriverRing, Frontend, GuestRam};
use vhost_proto::wire::{ProtocolFeatures, VirtioFeatures};

pub const TIMEOUT: Duration = Duration::from_secs(5);

/// A fresh directory under the system temp dir for a test's sockets, removed
/// with whatever is left in it when the guard drops — also when the test
/// fails half-way, so no socket file is left behind.
pub struct TestDir(std::path::PathBuf);

impl TestDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        TestDir(dir)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }

    pub fn join(&self, file: &str) -> std::path::PathBuf {
        self.0.join(file)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Guest RAM layout of the tests: rings from 0, buffers from BUFS.
pub const RAM: u64 = 4 << 20;
pub const BUFS: u64 = 1 << 20;

/// The whole start-up: features, protocol features (REPLY_ACK and more),
/// owner, memory table.
pub fn handshake(
    front: &mut Frontend,
    ram: &GuestRam,
    packed: bool,
    event_idx: bool,
) -> VirtioFeatures {
    let offered = front.get_features().unwrap();
    assert!(offered.contains(VirtioFeatures::PROTOCOL_FEATURES));
    let protocol = front.get_protocol_features().unwrap();
    let want = ProtocolFeatures::MQ
        | ProtocolFeatures::REPLY_ACK
        | ProtocolFeatures::CONFIG
        | ProtocolFeatures::CONFIGURE_MEM_SLOTS
        | ProtocolFeatures::RESET_DEVICE
        | ProtocolFeatures::STATUS;
    front.set_protocol_features(protocol & want).unwrap();
    front.set_owner().unwrap();
    let mut features = VirtioFeatures::VERSION_1 | VirtioFeatures::PROTOCOL_FEATURES;
    if packed {
        features |= VirtioFeatures::RING_PACKED;
    }
    if event_idx {
        features |= VirtioFeatures::EVENT_IDX;
    }
    front.set_features(features).unwrap();
    front.set_mem_table(&[(ram.region(), ram.fd())]).unwrap();
    features
}

pub fn ring_features(event_idx: bool) -> vring::RingFeatures {
    vring::RingFeatures {
        event_idx,
        indirect: false,
        in_order: false,
    }
}

/// Makes ring `index` (at `base`) and starts it on the back-end.
pub fn start_ring(
    front: &mut Frontend,
    ram: &GuestRam,
    index: u16,
    base: u64,
    size: u16,
    packed: bool,
    event_idx: bool,
) -> DriverRing {
    let f = ring_features(event_idx);
    let (ring, _) = if packed {
        DriverRing::packed(ram, index, base, size, f).unwrap()
    } else {
        DriverRing::split(ram, index, base, size, f).unwrap()
    };
    front.start_ring(&ring, ram).unwrap();
    ring
}

/// Sends `count` echo requests of `len` bytes through `ring` (at most a
/// queue's worth in flight) and checks every answer.
pub fn echo_through(ring: &mut DriverRing, ram: &GuestRam, count: usize, len: u32, seed: u8) {
    use vring::memory::GuestSlice;
    let mem = ram.memory();
    let slots = usize::from(ring.size() / 2).clamp(1, 64);
    let region = BUFS + u64::from(ring.index()) * 0x4_0000;
    let mut sent = 0usize;
    let mut done = 0usize;
    while done < count {
        let mut batch = Vec::new();
        while sent < count && batch.len() < slots {
            let k = batch.len() as u64;
            let out = region + k * 2 * u64::from(len);
            let inn = out + u64::from(len);
            let pattern: Vec<u8> = (0..len).map(|i| (i as u8) ^ (sent as u8) ^ seed).collect();
            GuestSlice::new(mem, out, len as usize)
                .unwrap()
                .write_at(0, &pattern)
                .unwrap();
            GuestSlice::new(mem, inn, len as usize)
                .unwrap()
                .fill(0, len as usize, 0)
                .unwrap();
            let id = ring.add(&[(out, len)], &[(inn, len)]).unwrap();
            batch.push((id, inn, pattern));
            sent += 1;
        }
        ring.kick().unwrap();
        let used = ring.collect(batch.len(), TIMEOUT).unwrap();
        for (id, used_len) in used {
            let (_, inn, pattern) = batch.iter().find(|b| b.0 == id).expect("unknown id");
            assert_eq!(used_len, len);
            let mut back = vec![0u8; len as usize];
            GuestSlice::new(mem, *inn, len as usize)
                .unwrap()
                .read_at(0, &mut back)
                .unwrap();
            assert_eq!(&back, pattern);
            done += 1;
        }
    }
}

/// Open fds of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}
