//! The image layer: where the disk's bytes live (an in-memory disk, a raw file or block
//! device) and the per-queue I/O engines that move them to and from guest memory.
//!
//! An engine takes operations on iovecs that point into guest memory, runs them
//! asynchronously and hands back completions tagged by the caller, in whatever order
//! they finish: [`memory`] copies at once, [`uring`] submits to an io_uring (one ring per
//! queue, completions signalled on an eventfd), [`pool`] runs them on worker threads where
//! io_uring is unavailable.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::RawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vring::memory::BufferMemory;

pub mod memory;
pub mod pool;
pub mod uring;

/// Which engine serves a file image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EngineKind {
    /// io_uring, or the thread pool where io_uring is unavailable.
    #[default]
    Auto,
    /// io_uring only: a queue whose ring cannot be set up is refused.
    IoUring,
    /// The thread pool (`preadv2`/`pwritev2` on worker threads).
    Threads,
}

/// Why an image could not be opened or made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// The image file could not be opened.
    #[error("image {path}: {source}")]
    Open {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The image's size could not be read.
    #[error("image {path}: cannot read its size: {source}")]
    Size {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// An in-memory disk of this size cannot be made.
    #[error("in-memory disk of {size} bytes: {reason}")]
    BadSize {
        /// The size asked for.
        size: u64,
        /// Why not.
        reason: &'static str,
    },
}

/// Where the disk's bytes live.
#[derive(Debug)]
enum Backing {
    Memory(Arc<BufferMemory>),
    File(Arc<File>),
}

/// A disk image: an in-memory disk or a raw file (or block device), with its size.
#[derive(Debug)]
pub struct Image {
    backing: Backing,
    size: u64,
    read_only: bool,
    direct: bool,
}

/// An operation an engine runs. The iovecs point into guest memory.
#[derive(Debug)]
pub enum Op<'a> {
    /// Read into the iovecs from byte `offset`.
    Read {
        /// Byte offset in the image.
        offset: u64,
        /// Destination buffers.
        iov: &'a [libc::iovec],
    },
    /// Write the iovecs at byte `offset`; `dsync`: durable before completion
    /// (write-through).
    Write {
        /// Byte offset in the image.
        offset: u64,
        /// Source buffers.
        iov: &'a [libc::iovec],
        /// `RWF_DSYNC`.
        dsync: bool,
    },
    /// Make completed writes durable (`fdatasync`).
    Flush,
    /// Make `len` bytes from `offset` read as zeroes; `unmap`: they may be deallocated
    /// (a hole is punched), otherwise they stay allocated.
    Zero {
        /// Byte offset.
        offset: u64,
        /// Bytes.
        len: u64,
        /// May deallocate.
        unmap: bool,
    },
}

/// One finished operation: the caller's tag and the result (bytes moved, or `-errno`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The tag given to [`Engine::submit`].
    pub tag: u64,
    /// Bytes transferred (reads, writes) or 0, or a negative errno.
    pub result: i64,
}

/// A per-queue I/O engine.
pub trait Engine: Send {
    /// Queues `op`; its completion is returned by a later [`reap`](Self::reap) with
    /// `tag`. Nothing reaches the kernel before [`commit`](Self::commit).
    ///
    /// # Safety
    ///
    /// The memory the iovecs point to, and the iovec array itself, must stay valid (and
    /// not be accessed through Rust references) until the operation's completion has been
    /// reaped, or [`shutdown`](Self::shutdown) has returned `true`.
    unsafe fn submit(&mut self, op: Op<'_>, tag: u64);

    /// Hands the queued operations to the kernel or the workers (as many as fit; the
    /// rest go as completions make room).
    fn commit(&mut self) -> io::Result<()>;

    /// Collects finished operations into `out` (and consumes the completion source's
    /// readiness), then commits what was waiting for room.
    fn reap(&mut self, out: &mut Vec<Completion>) -> io::Result<()>;

    /// The fd that becomes readable when completions arrive (`None`: operations complete
    /// within `commit`, nothing to wait for).
    fn source(&self) -> Option<RawFd>;

    /// Operations submitted and not yet reaped.
    fn in_flight(&self) -> usize;

    /// Waits until no operation is running any more (their results are dropped). `false`
    /// if that cannot be known (the engine failed): the caller must then keep the
    /// operations' memory alive for good.
    fn shutdown(&mut self) -> bool;

    /// The engine's name for logs: `memory`, `io_uring` or `threads`.
    fn name(&self) -> &'static str;
}

impl Image {
    /// An in-memory disk of `size` bytes (a whole number of sectors, at least one),
    /// zero-filled; its pages are allocated as they are written.
    pub fn memory(size: u64) -> Result<Image, ImageError> {
        if size == 0 || !size.is_multiple_of(crate::blk::request::SECTOR_SIZE) {
            return Err(ImageError::BadSize {
                size,
                reason: "not a positive multiple of 512",
            });
        }
        let len = usize::try_from(size).map_err(|_| ImageError::BadSize {
            size,
            reason: "larger than the address space",
        })?;
        if len > isize::MAX as usize / 2 {
            return Err(ImageError::BadSize {
                size,
                reason: "larger than the address space",
            });
        }
        Ok(Image {
            backing: Backing::Memory(Arc::new(BufferMemory::new(0, len))),
            size,
            read_only: false,
            direct: false,
        })
    }

    /// Opens a raw image file or block device; `read_only` opens it for reading only,
    /// `direct` with `O_DIRECT` (guest buffers and offsets must then be aligned to the
    /// device's logical block size, or the request fails with IOERR). Its size is rounded
    /// down to whole sectors.
    pub fn open(path: &Path, read_only: bool, direct: bool) -> Result<Image, ImageError> {
        let mut opts = OpenOptions::new();
        opts.read(true).write(!read_only);
        if direct {
            opts.custom_flags(libc::O_DIRECT);
        }
        let mut file = opts.open(path).map_err(|source| ImageError::Open {
            path: path.to_owned(),
            source,
        })?;
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|source| ImageError::Size {
                path: path.to_owned(),
                source,
            })?;
        let size = size - size % crate::blk::request::SECTOR_SIZE;
        Ok(Image {
            backing: Backing::File(Arc::new(file)),
            size,
            read_only,
            direct,
        })
    }

    /// Marks the image read-only (writes are refused by the device).
    pub fn with_read_only(mut self, read_only: bool) -> Self {
        self.read_only |= read_only;
        self
    }

    /// Size in bytes (a multiple of 512).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the device must refuse writes.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Whether the file was opened with `O_DIRECT`.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Whether this is an in-memory disk.
    pub fn is_memory(&self) -> bool {
        matches!(self.backing, Backing::Memory(_))
    }

    /// Reads `buf.len()` bytes at `offset` synchronously (tests and tools look at the
    /// disk with it).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        match &self.backing {
            Backing::Memory(m) => m
                .read(offset, buf)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e)),
            Backing::File(f) => std::os::unix::fs::FileExt::read_exact_at(&**f, buf, offset),
        }
    }

    /// Writes `buf` at `offset` synchronously (tests prepare a disk with it).
    pub fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        match &self.backing {
            Backing::Memory(m) => m
                .write(offset, buf)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e)),
            Backing::File(f) => std::os::unix::fs::FileExt::write_all_at(&**f, buf, offset),
        }
    }

    /// A new engine for one queue: the memory engine for an in-memory disk; for a file,
    /// io_uring with `depth` entries or the thread pool, as `kind` says. `reorder`
    /// (memory only) hands each batch of completions back in reverse, to exercise
    /// out-of-order completion.
    pub fn engine(
        &self,
        kind: EngineKind,
        depth: u32,
        reorder: bool,
    ) -> io::Result<Box<dyn Engine>> {
        match &self.backing {
            Backing::Memory(m) => Ok(Box::new(memory::MemoryEngine::new(Arc::clone(m), reorder))),
            Backing::File(f) => match kind {
                EngineKind::Threads => Ok(Box::new(pool::PoolEngine::new(Arc::clone(f), 4)?)),
                EngineKind::IoUring => Ok(Box::new(uring::UringEngine::new(Arc::clone(f), depth)?)),
                EngineKind::Auto => match uring::UringEngine::new(Arc::clone(f), depth) {
                    Ok(e) => Ok(Box::new(e)),
                    Err(e) => {
                        log::info!("io_uring unavailable ({e}); using the thread pool");
                        Ok(Box::new(pool::PoolEngine::new(Arc::clone(f), 4)?))
                    }
                },
            },
        }
    }
}

/// The `fallocate` mode of a [`Op::Zero`].
pub(crate) fn zero_mode(unmap: bool) -> libc::c_int {
    if unmap {
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
    } else {
        libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Engine tests shared by the three engines: heap buffers stand in for guest memory.
    use super::*;

    /// Runs `op` to completion on `engine` (waiting on its source if it has one).
    pub fn run(engine: &mut dyn Engine, op: Op<'_>, tag: u64) -> Completion {
        // SAFETY: the caller's buffers outlive this call, which waits for the completion.
        unsafe { engine.submit(op, tag) };
        engine.commit().unwrap();
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while out.is_empty() {
            engine.reap(&mut out).unwrap();
            assert!(std::time::Instant::now() < deadline, "no completion");
            if out.is_empty() {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        assert_eq!(out.len(), 1);
        out[0]
    }

    pub fn iov(buf: &mut [u8]) -> libc::iovec {
        libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }
    }

    /// Write, read back across two iovecs, zero, flush; many in flight at once
    /// completed in any order.
    pub fn exercise(image: &Image, engine: &mut dyn Engine) {
        let mut a = vec![0xa5u8; 4096];
        let mut b: Vec<u8> = (0..8192u32).map(|i| i as u8).collect();
        let w = [iov(&mut a), iov(&mut b)];
        let c = run(
            engine,
            Op::Write {
                offset: 512,
                iov: &w,
                dsync: false,
            },
            7,
        );
        assert_eq!(
            c,
            Completion {
                tag: 7,
                result: 12288
            }
        );
        let mut x = vec![0u8; 1000];
        let mut y = vec![0u8; 11288];
        let r = [iov(&mut x), iov(&mut y)];
        let c = run(
            engine,
            Op::Read {
                offset: 512,
                iov: &r,
            },
            8,
        );
        assert_eq!(c.result, 12288);
        let mut both = x.clone();
        both.extend_from_slice(&y);
        let mut want = a.clone();
        want.extend_from_slice(&b);
        assert_eq!(both, want);
        assert_eq!(run(engine, Op::Flush, 9).result, 0);
        let c = run(
            engine,
            Op::Zero {
                offset: 1024,
                len: 2048,
                unmap: true,
            },
            10,
        );
        assert_eq!(c.result, 0);
        let mut z = vec![1u8; 4096];
        image.read_at(512, &mut z).unwrap();
        assert!(z[..512].iter().all(|&v| v == 0xa5));
        assert!(z[512..2560].iter().all(|&v| v == 0));
        assert!(z[2560..].iter().all(|&v| v == 0xa5));

        // 64 reads in flight.
        let mut bufs: Vec<Vec<u8>> = (0..64).map(|_| vec![0u8; 512]).collect();
        let iovs: Vec<[libc::iovec; 1]> = bufs.iter_mut().map(|b| [iov(b)]).collect();
        for (i, v) in iovs.iter().enumerate() {
            // SAFETY: `bufs` and `iovs` live until every completion is reaped below.
            unsafe {
                engine.submit(
                    Op::Read {
                        offset: i as u64 * 512,
                        iov: v,
                    },
                    i as u64,
                )
            };
        }
        engine.commit().unwrap();
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while out.len() < 64 {
            engine.reap(&mut out).unwrap();
            assert!(std::time::Instant::now() < deadline);
        }
        let mut tags: Vec<u64> = out.iter().map(|c| c.tag).collect();
        tags.sort_unstable();
        assert_eq!(tags, (0..64).collect::<Vec<_>>());
        assert!(out.iter().all(|c| c.result == 512));
        assert_eq!(engine.in_flight(), 0);
        assert!(engine.shutdown());
    }
}
