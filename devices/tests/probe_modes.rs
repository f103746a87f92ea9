//! `vhost-probe rng` and `vhost-probe fs` against small test devices served by our runtime
//! (the std runner, `vhost_io_std::backend::Server`):
//!
//! - a virtio-rng device (type 4, one queue) that fills at most 100 bytes of each writable
//!   buffer with a known sequence: the probe must read exactly `--bytes` bytes, in several
//!   requests, and print them;
//! - a virtio-fs device (hiprio queue 0, request queue 1) that answers FUSE_INIT, LOOKUP,
//!   OPEN, READ and RELEASE for one in-memory file (Linux uapi `fuse.h` layouts) and ENOENT
//!   for other names: the probe must print the file's content.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use devices::probe::simple::fuse;
use vhost_backend::vhost_proto::backend::{DeviceDescription, Refused};
use vhost_backend::vhost_proto::wire::{ProtocolFeatures, VirtioFeatures};
use vhost_backend::{Device, Queue, QueueError, QueueHandler};
use vhost_io_std::backend::Server;

const PROBE: &str = env!("CARGO_BIN_EXE_vhost-probe");

fn probe(args: &[&str], sock: &Path) -> Output {
    Command::new(PROBE)
        .arg(args[0])
        .arg("--socket")
        .arg(sock)
        .args(&args[1..])
        .output()
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// virtio-rng

/// Byte `i` of the test rng's stream.
fn rng_byte(i: u64) -> u8 {
    (i.wrapping_mul(0x9e37_79b9).wrapping_add(i >> 3) >> 5) as u8
}

#[derive(Default)]
struct TestRng {
    /// Bytes produced so far (the stream position).
    produced: Arc<AtomicU64>,
}

struct RngQueue(Arc<AtomicU64>);

impl Device for TestRng {
    fn description(&self) -> DeviceDescription {
        DeviceDescription::new(
            VirtioFeatures::VERSION_1 | VirtioFeatures::EVENT_IDX,
            ProtocolFeatures::REPLY_ACK | ProtocolFeatures::MQ,
            1,
        )
    }

    fn start_queue(self: Arc<Self>, _: &Queue) -> Result<Box<dyn QueueHandler>, Refused> {
        Ok(Box::new(RngQueue(Arc::clone(&self.produced))))
    }
}

impl QueueHandler for RngQueue {
    fn process(&mut self, q: &mut Queue) -> Result<(), QueueError> {
        while let Some(chain) = q.pop()? {
            let room = q.lengths(&chain)?.writable;
            let n = room.min(100);
            let start = self.0.fetch_add(n, Ordering::Relaxed);
            let bytes: Vec<u8> = (start..start + n).map(rng_byte).collect();
            let mut w = q.writer(&chain);
            w.write_all(&bytes)?;
            let len = w.bytes_written();
            q.complete(chain, len)?;
        }
        Ok(())
    }
}

#[test]
fn rng_reads_entropy_from_a_test_rng_device() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("rng.sock");
    let server = Server::bind(&sock, TestRng::default())
        .unwrap()
        .spawn()
        .unwrap();
    let o = probe(&["rng", "--bytes", "250", "--json"], &sock);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let expect: String = (0..250u64)
        .map(|i| format!("{:02x}", rng_byte(i)))
        .collect();
    assert!(out.contains(&format!("\"hex\": \"{expect}\"")), "{out}");
    assert!(out.contains("\"bytes\": 250, \"requests\": 3"), "{out}");
    // Text form: the size and 32 bytes a line (the stream goes on from byte 250).
    let o = probe(&["rng", "--bytes", "64"], &sock);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}");
    assert!(out.starts_with("entropy: 64 bytes in 1 requests"), "{out}");
    let line: String = (250..282u64)
        .map(|i| format!("{:02x}", rng_byte(i)))
        .collect();
    assert_eq!(out.lines().nth(1), Some(line.as_str()), "{out}");
    server.stop().unwrap();
}

// ---------------------------------------------------------------------------------------
// virtio-fs

const FILE_NAME: &str = "hello.txt";
const FILE_NODE: u64 = 2;
const FILE_FH: u64 = 77;

fn file_content() -> Vec<u8> {
    let mut v = b"Hello from a test virtio-fs device.\n".to_vec();
    // Long enough that a READ cut at 64 KiB would show.
    for i in 0..3000 {
        v.extend_from_slice(format!("line {i}\n").as_bytes());
    }
    v
}

struct TestFs {
    content: Arc<Vec<u8>>,
    /// Opcodes seen, in order (for the test to check).
    seen: Arc<std::sync::Mutex<Vec<u32>>>,
}

struct FsQueue {
    content: Arc<Vec<u8>>,
    seen: Arc<std::sync::Mutex<Vec<u32>>>,
    hiprio: bool,
}

impl Device for TestFs {
    fn description(&self) -> DeviceDescription {
        DeviceDescription::new(VirtioFeatures::VERSION_1, ProtocolFeatures::REPLY_ACK, 2)
    }

    fn start_queue(self: Arc<Self>, q: &Queue) -> Result<Box<dyn QueueHandler>, Refused> {
        Ok(Box::new(FsQueue {
            content: Arc::clone(&self.content),
            seen: Arc::clone(&self.seen),
            hiprio: q.index() == 0,
        }))
    }
}

const ENOENT: i32 = 2;
const EINVAL: i32 = 22;
const EBADF: i32 = 9;

fn le_u32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_le_bytes(s.try_into().unwrap()))
}

impl FsQueue {
    /// The reply (error, body) to one request.
    fn answer(&self, req: &[u8]) -> (u64, i32, Vec<u8>) {
        if req.len() < fuse::IN_HEADER_LEN || le_u32(req, 0) as usize != req.len() {
            return (0, EINVAL, vec![]);
        }
        let opcode = le_u32(req, 4);
        let unique = fuse::u64_at(req, 8).unwrap();
        let nodeid = fuse::u64_at(req, 16).unwrap();
        let body = &req[fuse::IN_HEADER_LEN..];
        self.seen.lock().unwrap().push(opcode);
        let (error, out) = match opcode {
            fuse::INIT => {
                if le_u32(body, 0) != fuse::KERNEL_VERSION {
                    (EINVAL, vec![])
                } else {
                    let mut o = vec![0u8; fuse::INIT_OUT_LEN];
                    o[0..4].copy_from_slice(&7u32.to_le_bytes());
                    o[4..8].copy_from_slice(&le_u32(body, 4).min(38).to_le_bytes());
                    o[8..12].copy_from_slice(&le_u32(body, 8).to_le_bytes());
                    o[20..24].copy_from_slice(&(128u32 << 10).to_le_bytes()); // max_write
                    (0, o)
                }
            }
            fuse::LOOKUP => {
                let name = body.split(|b| *b == 0).next().unwrap_or_default();
                if nodeid != fuse::ROOT_ID || name != FILE_NAME.as_bytes() {
                    (ENOENT, vec![])
                } else {
                    let mut o = vec![0u8; fuse::ENTRY_OUT_LEN];
                    o[0..8].copy_from_slice(&FILE_NODE.to_le_bytes());
                    o[40..48].copy_from_slice(&FILE_NODE.to_le_bytes()); // attr.ino
                    o[48..56].copy_from_slice(&(self.content.len() as u64).to_le_bytes());
                    o[100..104].copy_from_slice(&0o100444u32.to_le_bytes()); // attr.mode
                    o[104..108].copy_from_slice(&1u32.to_le_bytes()); // attr.nlink
                    (0, o)
                }
            }
            fuse::OPEN if nodeid == FILE_NODE => {
                let mut o = vec![0u8; fuse::OPEN_OUT_LEN];
                o[0..8].copy_from_slice(&FILE_FH.to_le_bytes());
                (0, o)
            }
            fuse::READ if nodeid == FILE_NODE => {
                let fh = fuse::u64_at(body, 0).unwrap_or(0);
                let off = fuse::u64_at(body, 8).unwrap_or(0) as usize;
                let size = le_u32(body, 16) as usize;
                if fh != FILE_FH {
                    (EBADF, vec![])
                } else {
                    let end = off.saturating_add(size).min(self.content.len());
                    (
                        0,
                        self.content
                            .get(off.min(end)..end)
                            .unwrap_or_default()
                            .to_vec(),
                    )
                }
            }
            fuse::RELEASE if nodeid == FILE_NODE => {
                if fuse::u64_at(body, 0) == Some(FILE_FH) {
                    (0, vec![])
                } else {
                    (EBADF, vec![])
                }
            }
            fuse::OPEN | fuse::READ | fuse::RELEASE => (ENOENT, vec![]),
            _ => (38, vec![]), // ENOSYS
        };
        (unique, error, out)
    }
}

impl QueueHandler for FsQueue {
    fn process(&mut self, q: &mut Queue) -> Result<(), QueueError> {
        while let Some(chain) = q.pop()? {
            if self.hiprio {
                // FORGET / INTERRUPT: no reply.
                q.complete(chain, 0)?;
                continue;
            }
            let lens = q.lengths(&chain)?;
            let mut req = vec![0u8; lens.readable as usize];
            q.reader(&chain).read_exact(&mut req)?;
            let (unique, error, body) = self.answer(&req);
            let body = if error == 0 { body } else { vec![] };
            let total = fuse::OUT_HEADER_LEN + body.len();
            let mut msg = Vec::with_capacity(total);
            msg.extend_from_slice(&(total as u32).to_le_bytes());
            msg.extend_from_slice(&(-error).to_le_bytes());
            msg.extend_from_slice(&unique.to_le_bytes());
            msg.extend_from_slice(&body);
            let mut w = q.writer(&chain);
            let len = if msg.len() <= lens.writable as usize {
                w.write_all(&msg)?;
                w.bytes_written()
            } else {
                0
            };
            q.complete(chain, len)?;
        }
        Ok(())
    }
}

#[test]
fn fs_reads_a_file_from_a_test_virtiofs_device() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("fs.sock");
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let content = Arc::new(file_content());
    let server = Server::bind(
        &sock,
        TestFs {
            content: Arc::clone(&content),
            seen: Arc::clone(&seen),
        },
    )
    .unwrap()
    .spawn()
    .unwrap();
    let o = probe(&["fs", "--file", FILE_NAME], &sock);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.stdout, *content);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("FUSE 7.38"), "{err}");
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.first(), Some(&fuse::INIT));
        assert_eq!(&seen[1..3], &[fuse::LOOKUP, fuse::OPEN]);
        // About 27 KB of file: one READ (of at most 64 KiB).
        assert_eq!(&seen[3..], &[fuse::READ, fuse::RELEASE], "{seen:?}");
    }
    // --max-bytes and JSON.
    let o = probe(
        &["fs", "--file", FILE_NAME, "--max-bytes", "16", "--json"],
        &sock,
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}");
    let hex: String = content[..16].iter().map(|b| format!("{b:02x}")).collect();
    assert!(
        out.contains(&format!("\"read\": 16, \"hex\": \"{hex}\"")),
        "{out}"
    );
    assert!(
        out.contains(&format!("\"size\": {}", content.len())),
        "{out}"
    );
    // A name the device does not have: LOOKUP's ENOENT, exit 1.
    let o = probe(&["fs", "--file", "missing.txt"], &sock);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("error -2"));
    server.stop().unwrap();
}
