//! A virtio-blk driver on our front-end toolkit: negotiates with any vhost-user-blk
//! back-end, sends requests through driver rings in shared memory, checks what comes
//! back, and measures random I/O. The `vhost-probe blk` mode, the tests and the demo use
//! it.

use std::time::{Duration, Instant};

use vhost_backend::vhost_proto::wire::{ProtocolFeatures, VirtioFeatures};
use vhost_io_std::frontend::{DriverRing, Frontend, GuestRam};

use crate::blk::config::{BlkConfig, feature};
use crate::blk::request::{RequestHeader, SECTOR_SIZE, Segment, Status, kind};
use zerocopy::IntoBytes;

/// The probe's error: any failure, explained.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// How long one request may take before the probe gives up on the back-end.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How a [`BlkClient`] connects.
#[derive(Clone, Copy, Debug)]
pub struct ClientOptions {
    /// Packed rings (the back-end must offer RING_PACKED) instead of split.
    pub packed: bool,
    /// Queues to start (at most what the back-end offers).
    pub queues: u16,
    /// Entries per ring.
    pub queue_size: u16,
    /// Bytes of guest memory shared with the back-end.
    pub ram: u64,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            packed: false,
            queues: 1,
            queue_size: 256,
            ram: 64 << 20,
        }
    }
}

/// The virtio-blk bits the probe understands and acks when offered.
pub const DRIVER_BLK_FEATURES: u64 = feature::SIZE_MAX
    | feature::SEG_MAX
    | feature::GEOMETRY
    | feature::RO
    | feature::BLK_SIZE
    | feature::FLUSH
    | feature::TOPOLOGY
    | feature::CONFIG_WCE
    | feature::MQ
    | feature::DISCARD
    | feature::WRITE_ZEROES;

/// A connected, negotiated virtio-blk front-end with its rings started.
#[derive(Debug)]
pub struct BlkClient {
    /// The vhost-user connection.
    pub front: Frontend,
    /// The guest memory shared with the back-end.
    pub ram: GuestRam,
    /// The started rings, one per queue.
    pub rings: Vec<DriverRing>,
    /// GET_FEATURES.
    pub offered: VirtioFeatures,
    /// SET_FEATURES.
    pub features: VirtioFeatures,
    /// GET_PROTOCOL_FEATURES (empty without PROTOCOL_FEATURES).
    pub offered_protocol: ProtocolFeatures,
    /// SET_PROTOCOL_FEATURES.
    pub protocol: ProtocolFeatures,
    /// GET_QUEUE_NUM (with MQ).
    pub queue_num: Option<u64>,
    /// The config space (with CONFIG).
    pub config: Option<BlkConfig>,
}

/// What one request came back with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The status byte (an unknown value is kept as it is).
    pub status: u8,
    /// The used length.
    pub used: u32,
    /// The data the device wrote before the status (IN, GET_ID).
    pub data: Vec<u8>,
}

impl Reply {
    /// Whether the status is OK.
    pub fn ok(&self) -> bool {
        self.status == Status::Ok.byte()
    }
}

impl BlkClient {
    /// Negotiates on `front` (as QEMU does: protocol features, owner, features, memory
    /// table, then the rings) and starts `options.queues` rings.
    pub fn negotiate(mut front: Frontend, options: ClientOptions) -> Result<Self, Error> {
        let offered = front.get_features()?;
        let mut offered_protocol = ProtocolFeatures::empty();
        let mut protocol = ProtocolFeatures::empty();
        if offered.contains(VirtioFeatures::PROTOCOL_FEATURES) {
            offered_protocol = front.get_protocol_features()?;
            protocol = offered_protocol
                & (ProtocolFeatures::MQ
                    | ProtocolFeatures::REPLY_ACK
                    | ProtocolFeatures::CONFIG
                    | ProtocolFeatures::CONFIGURE_MEM_SLOTS
                    | ProtocolFeatures::STATUS);
            front.set_protocol_features(protocol)?;
        }
        front.set_owner()?;
        let queue_num = if protocol.contains(ProtocolFeatures::MQ) {
            Some(front.get_queue_num()?)
        } else {
            None
        };
        let config = if protocol.contains(ProtocolFeatures::CONFIG) {
            BlkConfig::decode(&front.get_config(0, 60)?)
        } else {
            None
        };
        if options.packed && !offered.contains(VirtioFeatures::RING_PACKED) {
            return Err("the back-end does not offer RING_PACKED: no packed rings".into());
        }
        let mut want = VirtioFeatures::VERSION_1
            | VirtioFeatures::PROTOCOL_FEATURES
            | VirtioFeatures::EVENT_IDX
            | VirtioFeatures::INDIRECT_DESC
            | VirtioFeatures::from_bits_retain(DRIVER_BLK_FEATURES);
        if options.packed {
            want |= VirtioFeatures::RING_PACKED;
        }
        let features = want & offered;
        if !features.contains(VirtioFeatures::VERSION_1) {
            return Err("the back-end does not offer VERSION_1".into());
        }
        front.set_features(features)?;
        let ram = GuestRam::new(0, options.ram.max(1 << 20))?;
        front.set_mem_table(&ram.mem_table())?;
        let mut max_queues = u64::from(options.queues.max(1));
        if let Some(n) = queue_num {
            max_queues = max_queues.min(n);
        }
        if features.bits() & feature::MQ != 0
            && let Some(c) = &config
        {
            max_queues = max_queues.min(u64::from(c.num_queues.get()).max(1));
        } else if features.bits() & feature::MQ == 0 {
            max_queues = 1;
        }
        let mut rings = Vec::new();
        for q in 0..max_queues as u16 {
            let ring = DriverRing::new(&ram, q, options.queue_size, features)?;
            front.start_ring(&ring, &ram)?;
            rings.push(ring);
        }
        Ok(BlkClient {
            front,
            ram,
            rings,
            offered,
            features,
            offered_protocol,
            protocol,
            queue_num,
            config,
        })
    }

    /// Disk size in sectors (from the config space; 0 without it).
    pub fn capacity(&self) -> u64 {
        self.config.map(|c| c.capacity.get()).unwrap_or(0)
    }

    /// Whether the device is read-only (RO negotiated).
    pub fn read_only(&self) -> bool {
        self.features.bits() & feature::RO != 0
    }

    /// Whether a virtio-blk feature bit was negotiated.
    pub fn has(&self, blk_feature: u64) -> bool {
        self.features.bits() & blk_feature != 0
    }

    /// The ring of queue `q`.
    pub fn ring(&mut self, q: usize) -> Result<&mut DriverRing, Error> {
        self.rings
            .get_mut(q)
            .ok_or_else(|| format!("queue {q} was not started").into())
    }

    /// Adds a buffer made of these `(address, length)` elements to queue `q` (as one
    /// indirect descriptor at `indirect` when given) and kicks; returns its id.
    pub fn submit(
        &mut self,
        q: usize,
        readable: &[(u64, u32)],
        writable: &[(u64, u32)],
        indirect: Option<u64>,
    ) -> Result<u16, Error> {
        let ring = self.ring(q)?;
        let id = match indirect {
            Some(table) => ring.add_indirect(table, readable, writable)?,
            None => ring.add(readable, writable)?,
        };
        ring.kick()?;
        Ok(id)
    }

    /// Waits for `n` completions on queue `q`: `(id, used length)` in completion order.
    pub fn wait(&mut self, q: usize, n: usize) -> Result<Vec<(u16, u32)>, Error> {
        Ok(self.ring(q)?.collect(n, REQUEST_TIMEOUT)?)
    }

    /// One request on queue `q`: header, `out` as its readable data, `in_len` writable
    /// data bytes, the status byte; waits for it.
    pub fn request(
        &mut self,
        q: usize,
        kind: u32,
        sector: u64,
        out: &[u8],
        in_len: u32,
    ) -> Result<Reply, Error> {
        let hdr = self.ram.alloc(64, 64)?;
        let data_len = out.len().max(in_len as usize).max(1) as u64;
        let data = self.ram.alloc(data_len, 4096)?;
        let r = self.request_at(q, kind, sector, out, in_len, hdr, data);
        self.ram.free(hdr, 64)?;
        self.ram.free(data, data_len)?;
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn request_at(
        &mut self,
        q: usize,
        kind: u32,
        sector: u64,
        out: &[u8],
        in_len: u32,
        hdr: u64,
        data: u64,
    ) -> Result<Reply, Error> {
        self.ram
            .write(hdr, RequestHeader::new(kind, sector).as_bytes())?;
        self.ram.write(hdr + 16, &[0xff])?;
        let mut readable = vec![(hdr, 16u32)];
        let mut writable = Vec::new();
        if !out.is_empty() {
            self.ram.write(data, out)?;
            readable.push((data, u32::try_from(out.len())?));
        }
        if in_len > 0 {
            writable.push((data, in_len));
        }
        writable.push((hdr + 16, 1));
        let id = self.submit(q, &readable, &writable, None)?;
        let used = self.wait(q, 1)?;
        let (got, len) = used.first().copied().ok_or("no completion")?;
        if got != id {
            return Err(format!("completion of buffer {got}, expected {id}").into());
        }
        let mut status = [0u8];
        self.ram.read(hdr + 16, &mut status)?;
        let mut back = vec![0u8; in_len as usize];
        self.ram.read(data, &mut back)?;
        Ok(Reply {
            status: status[0],
            used: len,
            data: back,
        })
    }

    /// Writes `data` (whole sectors) at `sector`; the status.
    pub fn write(&mut self, q: usize, sector: u64, data: &[u8]) -> Result<u8, Error> {
        Ok(self.request(q, kind::OUT, sector, data, 0)?.status)
    }

    /// Reads `len` bytes at `sector`.
    pub fn read(&mut self, q: usize, sector: u64, len: u32) -> Result<Reply, Error> {
        self.request(q, kind::IN, sector, &[], len)
    }

    /// FLUSH; the status.
    pub fn flush(&mut self, q: usize) -> Result<u8, Error> {
        Ok(self.request(q, kind::FLUSH, 0, &[], 0)?.status)
    }

    /// GET_ID: the serial (up to its first NUL), or the status if it failed.
    pub fn get_id(&mut self, q: usize) -> Result<Result<String, u8>, Error> {
        let r = self.request(q, kind::GET_ID, 0, &[], 20)?;
        if !r.ok() {
            return Ok(Err(r.status));
        }
        let end = r.data.iter().position(|&b| b == 0).unwrap_or(r.data.len());
        Ok(Ok(String::from_utf8_lossy(
            r.data.get(..end).unwrap_or(&[]),
        )
        .into_owned()))
    }

    /// DISCARD (`discard`) or WRITE_ZEROES of these segments; the status.
    pub fn zero(&mut self, q: usize, discard: bool, segments: &[Segment]) -> Result<u8, Error> {
        let bytes: Vec<u8> = segments
            .iter()
            .flat_map(|s| s.as_bytes().to_vec())
            .collect();
        let k = if discard {
            kind::DISCARD
        } else {
            kind::WRITE_ZEROES
        };
        Ok(self.request(q, k, 0, &bytes, 0)?.status)
    }

    /// Stops every ring (GET_VRING_BASE): the back-end has completed what it held.
    pub fn stop(&mut self) -> Result<(), Error> {
        for i in 0..self.rings.len() {
            self.front.get_vring_base(i as u16)?;
        }
        Ok(())
    }
}

/// The content the probe writes to `sector` for `seed` (each sector distinct).
pub fn pattern(seed: u64, sector: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            let s = sector + i as u64 / SECTOR_SIZE;
            let x = s
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .wrapping_add(seed.wrapping_mul(0xbf58_476d_1ce4_e5b9))
                .wrapping_add((i as u64 % SECTOR_SIZE).wrapping_mul(0x94d0_49bb_1331_11eb));
            (x >> 29) as u8
        })
        .collect()
}

/// What [`verify`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// Blocks written and read back.
    pub blocks: u32,
    /// Bytes per block.
    pub block_size: u32,
    /// Whether the flush succeeded (or FLUSH was not negotiated: `None`).
    pub flushed: Option<bool>,
}

/// Writes a pattern over `blocks` blocks of `block_size` bytes from sector 0 (skipped
/// on a read-only disk: then it only reads), reads it back and compares, flushes.
pub fn verify(
    c: &mut BlkClient,
    q: usize,
    blocks: u32,
    block_size: u32,
    seed: u64,
) -> Result<Verified, Error> {
    let per = u64::from(block_size / SECTOR_SIZE as u32);
    let blocks = blocks.min(u32::try_from(c.capacity() / per.max(1)).unwrap_or(u32::MAX));
    let write = !c.read_only();
    if write {
        for b in 0..u64::from(blocks) {
            let sector = b * per;
            let status = c.write(q, sector, &pattern(seed, sector, block_size as usize))?;
            if status != 0 {
                return Err(format!("write of sector {sector}: status {status}").into());
            }
        }
    }
    for b in 0..u64::from(blocks) {
        let sector = b * per;
        let r = c.read(q, sector, block_size)?;
        if !r.ok() {
            return Err(format!("read of sector {sector}: status {}", r.status).into());
        }
        if r.used != block_size + 1 {
            return Err(format!("read of sector {sector}: used length {}", r.used).into());
        }
        if write && r.data != pattern(seed, sector, block_size as usize) {
            return Err(
                format!("read of sector {sector}: data differs from what was written").into(),
            );
        }
    }
    let flushed = if c.has(feature::FLUSH) {
        Some(c.flush(q)? == 0)
    } else {
        None
    };
    Ok(Verified {
        blocks,
        block_size,
        flushed,
    })
}

/// A random I/O run's parameters.
#[derive(Clone, Copy, Debug)]
pub struct IoParams {
    /// Requests in flight.
    pub queue_depth: usize,
    /// Bytes per request (a multiple of 512).
    pub block_size: u32,
    /// How long.
    pub duration: Duration,
    /// Percentage of reads (the rest are writes; 100 on a read-only disk).
    pub read_percent: u8,
    /// Print a progress line each second on stderr.
    pub progress: bool,
    /// Random seed.
    pub seed: u64,
}

/// A random I/O run's results.
#[derive(Clone, Debug, Default)]
pub struct IoReport {
    /// Requests completed.
    pub ops: u64,
    /// Of which reads.
    pub reads: u64,
    /// Requests that did not complete with OK.
    pub errors: u64,
    /// Seconds measured.
    pub seconds: f64,
    /// Requests per second.
    pub iops: f64,
    /// MiB per second.
    pub mib_s: f64,
    /// Latency percentiles in microseconds: p50, p99, p99.9, and the mean and max.
    pub p50_us: f64,
    /// p99.
    pub p99_us: f64,
    /// p99.9.
    pub p999_us: f64,
    /// Mean.
    pub mean_us: f64,
    /// Max.
    pub max_us: f64,
}

/// One in-flight request of the run: its buffers and when it went.
#[derive(Debug)]
struct Slot {
    hdr: u64,
    data: u64,
    sent: Instant,
    read: bool,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Runs random reads and writes on queue `q` at `p.queue_depth` for `p.duration`.
pub fn random_io(c: &mut BlkClient, q: usize, p: &IoParams) -> Result<IoReport, Error> {
    let bs = p.block_size.max(512) / 512 * 512;
    let blocks = c.capacity() / u64::from(bs / 512);
    if blocks == 0 {
        return Err("the disk is smaller than one block".into());
    }
    let read_percent = if c.read_only() {
        100
    } else {
        p.read_percent.min(100)
    };
    let depth = p.queue_depth.max(1);
    let descs = 3 * depth;
    let size = c.ring(q)?.size() as usize;
    if descs > size {
        return Err(
            format!("queue depth {depth} needs {descs} descriptors, the ring has {size}").into(),
        );
    }
    let mut slots = Vec::with_capacity(depth);
    for _ in 0..depth {
        slots.push(Slot {
            hdr: c.ram.alloc(64, 64)?,
            data: c.ram.alloc(u64::from(bs), 4096)?,
            sent: Instant::now(),
            read: true,
        });
    }
    let mut by_id: Vec<Option<usize>> = vec![None; 1 << 16];
    let mut rng = Rng(p.seed | 1);
    let mut lat: Vec<u32> = Vec::with_capacity(1 << 20);
    let mut report = IoReport::default();
    let sector_of = |rng: &mut Rng| (rng.next() % blocks) * u64::from(bs / 512);

    let issue = |c: &mut BlkClient,
                 rng: &mut Rng,
                 slot: &mut Slot,
                 by_id: &mut Vec<Option<usize>>,
                 i: usize|
     -> Result<(), Error> {
        slot.read = (rng.next() % 100) < u64::from(read_percent);
        let k = if slot.read { kind::IN } else { kind::OUT };
        c.ram
            .write(slot.hdr, RequestHeader::new(k, sector_of(rng)).as_bytes())?;
        let data = (slot.data, bs);
        let status = (slot.hdr + 16, 1);
        let ring = c.ring(q)?;
        let id = if slot.read {
            ring.add(&[(slot.hdr, 16)], &[data, status])?
        } else {
            ring.add(&[(slot.hdr, 16), data], &[status])?
        };
        if let Some(e) = by_id.get_mut(usize::from(id)) {
            *e = Some(i);
        }
        slot.sent = Instant::now();
        Ok(())
    };

    let start = Instant::now();
    let deadline = start + p.duration;
    for (i, slot) in slots.iter_mut().enumerate() {
        issue(c, &mut rng, slot, &mut by_id, i)?;
    }
    c.ring(q)?.kick()?;
    let mut outstanding = depth;
    let mut last_progress = (start, 0u64);
    let mut idle_since: Option<Instant> = None;
    while outstanding > 0 {
        let now = Instant::now();
        let more = now < deadline;
        let mut got = 0;
        while let Some((id, _len)) = c.ring(q)?.pop_used()? {
            let Some(i) = by_id.get_mut(usize::from(id)).and_then(Option::take) else {
                return Err(format!("completion of unknown buffer {id}").into());
            };
            let Some(slot) = slots.get_mut(i) else {
                return Err("slot table out of step".into());
            };
            let done = Instant::now();
            lat.push(u32::try_from(done.duration_since(slot.sent).as_nanos()).unwrap_or(u32::MAX));
            let mut st = [0u8];
            c.ram.read(slot.hdr + 16, &mut st)?;
            report.ops += 1;
            if slot.read {
                report.reads += 1;
            }
            if st[0] != 0 {
                report.errors += 1;
            }
            got += 1;
            if more {
                issue(c, &mut rng, slot, &mut by_id, i)?;
            } else {
                outstanding -= 1;
            }
        }
        if got > 0 {
            idle_since = None;
            if more {
                c.ring(q)?.kick()?;
            }
        } else {
            let ring = c.ring(q)?;
            if !ring.enable_interrupts() {
                ring.wait_call(Duration::from_millis(100))?;
            }
            let since = *idle_since.get_or_insert(now);
            if now.duration_since(since) > REQUEST_TIMEOUT {
                return Err(format!(
                    "no completion for {} s with {outstanding} requests outstanding",
                    REQUEST_TIMEOUT.as_secs()
                )
                .into());
            }
        }
        if p.progress && now.duration_since(last_progress.0) >= Duration::from_secs(1) && more {
            let secs = now.duration_since(last_progress.0).as_secs_f64();
            eprintln!(
                "  {:5.1} s: {:>9.0} IOPS",
                now.duration_since(start).as_secs_f64(),
                (report.ops - last_progress.1) as f64 / secs
            );
            last_progress = (now, report.ops);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    for s in &slots {
        c.ram.free(s.hdr, 64)?;
        c.ram.free(s.data, u64::from(bs))?;
    }
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
        f64::from(lat.get(i).copied().unwrap_or(0)) / 1000.0
    };
    report.seconds = secs;
    report.iops = report.ops as f64 / secs;
    report.mib_s = report.iops * f64::from(bs) / f64::from(1u32 << 20);
    report.p50_us = pct(0.5);
    report.p99_us = pct(0.99);
    report.p999_us = pct(0.999);
    report.max_us = pct(1.0);
    report.mean_us = if lat.is_empty() {
        0.0
    } else {
        lat.iter().map(|&v| f64::from(v)).sum::<f64>() / lat.len() as f64 / 1000.0
    };
    Ok(report)
}
