//! The in-memory disk's engine: every operation is a copy, done at once; completions are
//! handed back on the next reap (in reverse order per batch when asked, so that tests see
//! out-of-order completion).

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use vring::memory::{BufferMemory, GuestSlice};

use super::{Completion, Engine, Op};

/// Runs operations on an in-memory disk.
#[derive(Debug)]
pub struct MemoryEngine {
    disk: Arc<BufferMemory>,
    done: Vec<Completion>,
    reorder: bool,
}

impl MemoryEngine {
    /// An engine on `disk`; `reorder`: each reap returns its batch reversed.
    pub fn new(disk: Arc<BufferMemory>, reorder: bool) -> Self {
        MemoryEngine {
            disk,
            done: Vec::new(),
            reorder,
        }
    }

    /// Copies between the disk at `offset` and the iovecs; bytes moved or `-EIO`.
    ///
    /// # Safety
    ///
    /// The iovecs point to memory valid for reads and writes of their lengths.
    unsafe fn copy(&self, mut offset: u64, iov: &[libc::iovec], to_disk: bool) -> i64 {
        let mut total = 0i64;
        for v in iov {
            let Ok(disk) = GuestSlice::new(&*self.disk, offset, v.iov_len) else {
                return -i64::from(libc::EIO);
            };
            let (src, dst) = if to_disk {
                (v.iov_base.cast::<u8>().cast_const(), disk.as_ptr())
            } else {
                (disk.as_ptr().cast_const(), v.iov_base.cast::<u8>())
            };
            // SAFETY: `disk` was checked to lie inside the disk's allocation; the iovec is
            // valid for its length (the caller's contract); guest memory and the disk are
            // distinct allocations, so the ranges do not overlap.
            unsafe { std::ptr::copy_nonoverlapping(src, dst, v.iov_len) };
            offset = offset.saturating_add(v.iov_len as u64);
            total = total.saturating_add(v.iov_len as i64);
        }
        total
    }

    fn zero(&self, offset: u64, len: u64) -> i64 {
        let Ok(len) = usize::try_from(len) else {
            return -i64::from(libc::EIO);
        };
        if len == 0 {
            return 0;
        }
        match GuestSlice::new(&*self.disk, offset, len).and_then(|s| s.fill(0, len, 0)) {
            Ok(()) => 0,
            Err(_) => -i64::from(libc::EIO),
        }
    }
}

impl Engine for MemoryEngine {
    unsafe fn submit(&mut self, op: Op<'_>, tag: u64) {
        let result = match op {
            // SAFETY: forwarded from this method's contract.
            Op::Read { offset, iov } => unsafe { self.copy(offset, iov, false) },
            // SAFETY: as above.
            Op::Write { offset, iov, .. } => unsafe { self.copy(offset, iov, true) },
            Op::Flush => 0,
            Op::Zero { offset, len, .. } => self.zero(offset, len),
        };
        self.done.push(Completion { tag, result });
    }

    fn commit(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        if self.reorder {
            self.done.reverse();
        }
        out.append(&mut self.done);
        Ok(())
    }

    fn source(&self) -> Option<RawFd> {
        None
    }

    fn in_flight(&self) -> usize {
        self.done.len()
    }

    fn shutdown(&mut self) -> bool {
        self.done.clear();
        true
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{exercise, iov, run};
    use super::super::{Image, Op};

    #[test]
    fn memory_engine_reads_writes_and_zeroes() {
        let image = Image::memory(1 << 20).unwrap();
        let mut e = image.engine(Default::default(), 0, false).unwrap();
        assert_eq!(e.name(), "memory");
        exercise(&image, e.as_mut());
    }

    #[test]
    fn memory_engine_refuses_ranges_past_the_disk() {
        let image = Image::memory(4096).unwrap();
        let mut e = image.engine(Default::default(), 0, false).unwrap();
        let mut b = vec![0u8; 1024];
        let v = [iov(&mut b)];
        assert_eq!(
            run(
                e.as_mut(),
                Op::Read {
                    offset: 3584,
                    iov: &v
                },
                1
            )
            .result,
            -5
        );
        assert_eq!(
            run(
                e.as_mut(),
                Op::Zero {
                    offset: u64::MAX,
                    len: 1,
                    unmap: false
                },
                2
            )
            .result,
            -5
        );
        assert!(Image::memory(0).is_err());
        assert!(Image::memory(513).is_err());
        assert!(Image::memory(u64::MAX - 511).is_err());
    }

    #[test]
    fn reorder_reverses_each_batch() {
        let image = Image::memory(4096).unwrap();
        let mut e = image.engine(Default::default(), 0, true).unwrap();
        for t in 0..3 {
            // SAFETY: no buffers.
            unsafe { e.submit(Op::Flush, t) };
        }
        let mut out = Vec::new();
        e.reap(&mut out).unwrap();
        assert_eq!(out.iter().map(|c| c.tag).collect::<Vec<_>>(), [2, 1, 0]);
    }
}
