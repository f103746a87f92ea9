//! The probe's small virtio drivers beyond blk: `rng` (virtio-rng, device type 4) and
//! `fs` (virtio-fs, device type 26: FUSE through the request queue), on the blocking
//! front-end ([`Frontend`]) with driver rings in shared memory.

use std::fmt::Write as _;
use std::time::Duration;

use vhost_backend::vhost_proto::wire::{ProtocolFeatures, VirtioFeatures};
use vhost_io_std::frontend::{DriverRing, Frontend, GuestRam};

use super::blk::Error;

/// How long one request may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A negotiated device with its rings started.
#[derive(Debug)]
pub struct Driver {
    /// The connection.
    pub front: Frontend,
    /// Guest memory shared with the back-end.
    pub ram: GuestRam,
    /// The started rings, by queue index.
    pub rings: Vec<DriverRing>,
    /// GET_FEATURES.
    pub offered: VirtioFeatures,
    /// SET_FEATURES.
    pub features: VirtioFeatures,
}

impl Driver {
    /// Negotiates (QEMU's order) and starts `queues` split rings of `size` entries.
    pub fn negotiate(mut front: Frontend, queues: u16, size: u16) -> Result<Driver, Error> {
        let offered = front.get_features()?;
        if offered.contains(VirtioFeatures::PROTOCOL_FEATURES) {
            let p = front.get_protocol_features()?;
            let want = p & (ProtocolFeatures::REPLY_ACK | ProtocolFeatures::MQ);
            front.set_protocol_features(want)?;
            if want.contains(ProtocolFeatures::MQ) {
                let n = front.get_queue_num()?;
                if n < u64::from(queues) {
                    return Err(format!("the back-end has {n} queues, {queues} needed").into());
                }
            }
        }
        front.set_owner()?;
        let features = offered
            & (VirtioFeatures::VERSION_1
                | VirtioFeatures::PROTOCOL_FEATURES
                | VirtioFeatures::EVENT_IDX
                | VirtioFeatures::INDIRECT_DESC);
        if !features.contains(VirtioFeatures::VERSION_1) {
            return Err("the back-end does not offer VERSION_1".into());
        }
        front.set_features(features)?;
        let ram = GuestRam::new(0, 4 << 20)?;
        front.set_mem_table(&ram.mem_table())?;
        let mut rings = Vec::new();
        for q in 0..queues {
            let ring = DriverRing::new(&ram, q, size, features)?;
            front.start_ring(&ring, &ram)?;
            rings.push(ring);
        }
        Ok(Driver {
            front,
            ram,
            rings,
            offered,
            features,
        })
    }

    /// One buffer on queue `q` (readable bytes, then `writable` bytes); waits for it:
    /// the used length and the writable bytes.
    pub fn exchange(
        &mut self,
        q: usize,
        readable: &[u8],
        writable: u32,
    ) -> Result<(u32, Vec<u8>), Error> {
        let rlen = readable.len().max(1) as u64;
        let wlen = u64::from(writable.max(1));
        let out = self.ram.alloc(rlen, 64)?;
        let inn = self.ram.alloc(wlen, 64)?;
        let r = self.exchange_at(q, readable, writable, out, inn);
        self.ram.free(out, rlen)?;
        self.ram.free(inn, wlen)?;
        r
    }

    fn exchange_at(
        &mut self,
        q: usize,
        readable: &[u8],
        writable: u32,
        out: u64,
        inn: u64,
    ) -> Result<(u32, Vec<u8>), Error> {
        self.ram.write(out, readable)?;
        let ring = self
            .rings
            .get_mut(q)
            .ok_or_else(|| format!("queue {q} not started"))?;
        let r: Vec<(u64, u32)> = if readable.is_empty() {
            vec![]
        } else {
            vec![(out, u32::try_from(readable.len())?)]
        };
        let w: Vec<(u64, u32)> = if writable == 0 {
            vec![]
        } else {
            vec![(inn, writable)]
        };
        let id = ring.add(&r, &w)?;
        ring.kick()?;
        let used = ring.collect(1, TIMEOUT)?;
        match used.first() {
            Some(&(uid, len)) if uid == id => {
                if len > writable {
                    return Err(
                        format!("used length {len} over the {writable} writable bytes").into(),
                    );
                }
                let mut data = vec![0u8; len as usize];
                self.ram.read(inn, &mut data)?;
                Ok((len, data))
            }
            other => Err(format!("unexpected completion {other:?}").into()),
        }
    }
}

/// Hex lines of 32 bytes.
pub fn hex_lines(data: &[u8]) -> String {
    let mut o = String::new();
    for chunk in data.chunks(32) {
        for b in chunk {
            let _ = write!(o, "{b:02x}");
        }
        o.push('\n');
    }
    o
}

/// What `rng` read.
#[derive(Debug, Clone)]
pub struct Entropy {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// Requests it took.
    pub requests: u32,
}

/// Reads `n` bytes from a virtio-rng back-end (one queue; each request one writable
/// buffer of at most `chunk` bytes; the device may fill fewer).
pub fn read_entropy(front: Frontend, n: usize, chunk: u32) -> Result<Entropy, Error> {
    let mut d = Driver::negotiate(front, 1, 64)?;
    let mut bytes = Vec::with_capacity(n);
    let mut requests = 0u32;
    while bytes.len() < n {
        let want = u32::try_from(n - bytes.len())
            .unwrap_or(u32::MAX)
            .min(chunk.max(1));
        let (len, data) = d.exchange(0, &[], want)?;
        requests += 1;
        if len == 0 && requests > 1000 {
            return Err("the device returns no entropy".into());
        }
        bytes.extend_from_slice(&data);
    }
    bytes.truncate(n);
    Ok(Entropy { bytes, requests })
}

/// FUSE (Linux uapi `fuse.h`): the opcodes and structs `fs` uses.
pub mod fuse {
    /// FUSE_LOOKUP.
    pub const LOOKUP: u32 = 1;
    /// FUSE_OPEN.
    pub const OPEN: u32 = 14;
    /// FUSE_READ.
    pub const READ: u32 = 15;
    /// FUSE_RELEASE.
    pub const RELEASE: u32 = 18;
    /// FUSE_INIT.
    pub const INIT: u32 = 26;
    /// The root directory's node id.
    pub const ROOT_ID: u64 = 1;
    /// Protocol major version.
    pub const KERNEL_VERSION: u32 = 7;
    /// The minor version we announce.
    pub const KERNEL_MINOR_VERSION: u32 = 38;
    /// `fuse_in_header` size.
    pub const IN_HEADER_LEN: usize = 40;
    /// `fuse_out_header` size.
    pub const OUT_HEADER_LEN: usize = 16;
    /// `fuse_init_in` size (with flags2 and the unused words, minor ≥ 36).
    pub const INIT_IN_LEN: usize = 64;
    /// `fuse_init_out` size.
    pub const INIT_OUT_LEN: usize = 64;
    /// `fuse_entry_out` size (with its 88-byte `fuse_attr`).
    pub const ENTRY_OUT_LEN: usize = 128;
    /// `fuse_open_out` size.
    pub const OPEN_OUT_LEN: usize = 16;
    /// `fuse_read_in` size.
    pub const READ_IN_LEN: usize = 40;
    /// `fuse_release_in` size.
    pub const RELEASE_IN_LEN: usize = 24;
    /// `fuse_open_in` size.
    pub const OPEN_IN_LEN: usize = 8;
    /// Offset of `attr.size` in `fuse_entry_out`.
    pub const ENTRY_ATTR_SIZE: usize = 48;

    /// A request: `fuse_in_header` then `body`.
    pub fn request(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(IN_HEADER_LEN + body.len());
        m.extend_from_slice(&((IN_HEADER_LEN + body.len()) as u32).to_le_bytes());
        m.extend_from_slice(&opcode.to_le_bytes());
        m.extend_from_slice(&unique.to_le_bytes());
        m.extend_from_slice(&nodeid.to_le_bytes());
        m.extend_from_slice(&[0; 16]); // uid, gid, pid, total_extlen + padding
        m.extend_from_slice(body);
        m
    }

    /// `(len, error, unique)` of a `fuse_out_header`.
    pub fn out_header(b: &[u8]) -> Option<(u32, i32, u64)> {
        Some((
            u32::from_le_bytes(b.get(0..4)?.try_into().ok()?),
            i32::from_le_bytes(b.get(4..8)?.try_into().ok()?),
            u64::from_le_bytes(b.get(8..16)?.try_into().ok()?),
        ))
    }

    /// A little-endian u64 at `at`.
    pub fn u64_at(b: &[u8], at: usize) -> Option<u64> {
        Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
    }
}

/// What `fs` found.
#[derive(Debug, Clone)]
pub struct FsRead {
    /// FUSE_INIT's answer: (major, minor).
    pub version: (u32, u32),
    /// The file's node id.
    pub nodeid: u64,
    /// Its size (from LOOKUP's attributes).
    pub size: u64,
    /// Its content (up to `max` bytes).
    pub data: Vec<u8>,
}

/// One FUSE request on the request queue (queue 1); the reply body after a successful
/// `fuse_out_header`.
fn fuse_call(
    d: &mut Driver,
    unique: &mut u64,
    opcode: u32,
    nodeid: u64,
    body: &[u8],
    out_len: u32,
) -> Result<Vec<u8>, Error> {
    *unique += 1;
    let req = fuse::request(opcode, *unique, nodeid, body);
    let (len, data) = d.exchange(1, &req, fuse::OUT_HEADER_LEN as u32 + out_len)?;
    let (olen, error, u) = fuse::out_header(&data)
        .ok_or_else(|| format!("FUSE opcode {opcode}: {len} bytes, no fuse_out_header"))?;
    if u != *unique {
        return Err(format!("FUSE opcode {opcode}: reply for unique {u}, sent {unique}").into());
    }
    if error != 0 {
        return Err(format!("FUSE opcode {opcode}: error {error}").into());
    }
    if olen as usize != data.len() {
        return Err(format!("FUSE opcode {opcode}: header says {olen} bytes, used {len}").into());
    }
    Ok(data[fuse::OUT_HEADER_LEN..].to_vec())
}

/// FUSE_INIT, LOOKUP of `name` in the root, OPEN, READ of up to `max` bytes (in
/// requests of up to 64 KiB), RELEASE, through the request queue of a virtio-fs back-end.
pub fn read_file(front: Frontend, name: &str, max: u64) -> Result<FsRead, Error> {
    let mut d = Driver::negotiate(front, 2, 64)?;
    let mut unique = 0u64;
    let mut init = vec![0u8; fuse::INIT_IN_LEN];
    init[0..4].copy_from_slice(&fuse::KERNEL_VERSION.to_le_bytes());
    init[4..8].copy_from_slice(&fuse::KERNEL_MINOR_VERSION.to_le_bytes());
    init[8..12].copy_from_slice(&(128u32 << 10).to_le_bytes()); // max_readahead
    let out = fuse_call(
        &mut d,
        &mut unique,
        fuse::INIT,
        0,
        &init,
        fuse::INIT_OUT_LEN as u32,
    )?;
    let major = out
        .get(0..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let minor = out
        .get(4..8)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let (Some(major), Some(minor)) = (major, minor) else {
        return Err("FUSE_INIT: short reply".into());
    };
    if major != fuse::KERNEL_VERSION {
        return Err(format!("FUSE_INIT: major version {major}").into());
    }
    let mut lookup = name.as_bytes().to_vec();
    lookup.push(0);
    let entry = fuse_call(
        &mut d,
        &mut unique,
        fuse::LOOKUP,
        fuse::ROOT_ID,
        &lookup,
        fuse::ENTRY_OUT_LEN as u32,
    )?;
    let nodeid = fuse::u64_at(&entry, 0).ok_or("LOOKUP: short reply")?;
    let size = fuse::u64_at(&entry, fuse::ENTRY_ATTR_SIZE).ok_or("LOOKUP: short reply")?;
    let open = fuse_call(
        &mut d,
        &mut unique,
        fuse::OPEN,
        nodeid,
        &[0; fuse::OPEN_IN_LEN], // O_RDONLY
        fuse::OPEN_OUT_LEN as u32,
    )?;
    let fh = fuse::u64_at(&open, 0).ok_or("OPEN: short reply")?;
    let want = size.min(max);
    let mut data = Vec::new();
    while (data.len() as u64) < want {
        let n = (want - data.len() as u64).min(64 << 10) as u32;
        let mut read = Vec::with_capacity(fuse::READ_IN_LEN);
        read.extend_from_slice(&fh.to_le_bytes());
        read.extend_from_slice(&(data.len() as u64).to_le_bytes());
        read.extend_from_slice(&n.to_le_bytes());
        read.resize(fuse::READ_IN_LEN, 0);
        let got = fuse_call(&mut d, &mut unique, fuse::READ, nodeid, &read, n)?;
        if got.is_empty() {
            break;
        }
        data.extend_from_slice(&got);
    }
    let mut release = fh.to_le_bytes().to_vec();
    release.resize(fuse::RELEASE_IN_LEN, 0);
    fuse_call(&mut d, &mut unique, fuse::RELEASE, nodeid, &release, 0)?;
    Ok(FsRead {
        version: (major, minor),
        nodeid,
        size,
        data,
    })
}
