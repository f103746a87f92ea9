//! The thread-pool engine, for where io_uring is unavailable: worker threads run
//! `preadv2`/`pwritev2`/`fdatasync`/`fallocate` and post completions on a channel,
//! signalling an eventfd.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use vhost_backend::os::eventfd::EventFd;

use super::{Completion, Engine, Op, zero_mode};

/// An operation with its iovecs copied, for a worker.
enum Job {
    Read {
        offset: u64,
        iov: Vec<libc::iovec>,
    },
    Write {
        offset: u64,
        iov: Vec<libc::iovec>,
        dsync: bool,
    },
    Flush,
    Zero {
        offset: u64,
        len: u64,
        unmap: bool,
    },
}

struct Task {
    tag: u64,
    job: Job,
}

// SAFETY: the iovecs point into guest memory that stays mapped and valid from any thread
// until the task's completion is reaped (the contract of `Engine::submit`); nothing else
// in a task is thread-bound.
unsafe impl Send for Task {}

/// Runs operations on a file with worker threads.
pub struct PoolEngine {
    tx: Option<Sender<Task>>,
    done: Receiver<Completion>,
    event: Arc<EventFd>,
    workers: Vec<JoinHandle<()>>,
    queued: Vec<Task>,
    in_flight: usize,
}

impl std::fmt::Debug for PoolEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolEngine")
            .field("workers", &self.workers.len())
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

impl PoolEngine {
    /// `threads` workers (at least one) on `file`.
    pub fn new(file: Arc<File>, threads: usize) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Task>();
        let (done_tx, done) = mpsc::channel();
        let rx = Arc::new(Mutex::new(rx));
        let event = Arc::new(EventFd::new(true)?);
        let mut workers = Vec::new();
        for i in 0..threads.max(1) {
            let (rx, done_tx, event, file) = (
                Arc::clone(&rx),
                done_tx.clone(),
                Arc::clone(&event),
                Arc::clone(&file),
            );
            let w = std::thread::Builder::new()
                .name(format!("blk-io-{i}"))
                .spawn(move || worker(&file, &rx, &done_tx, &event))?;
            workers.push(w);
        }
        Ok(PoolEngine {
            tx: Some(tx),
            done,
            event,
            workers,
            queued: Vec::new(),
            in_flight: 0,
        })
    }
}

fn worker(file: &File, rx: &Mutex<Receiver<Task>>, done: &Sender<Completion>, event: &EventFd) {
    loop {
        let task = {
            let rx = rx.lock().unwrap_or_else(PoisonError::into_inner);
            match rx.recv() {
                Ok(t) => t,
                Err(_) => return,
            }
        };
        let result = run(file.as_raw_fd(), task.job);
        if done
            .send(Completion {
                tag: task.tag,
                result,
            })
            .is_err()
        {
            return;
        }
        if let Err(e) = event.signal() {
            log::error!("thread pool: signalling a completion failed: {e}");
        }
    }
}

fn errno() -> i64 {
    -i64::from(
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    )
}

fn run(fd: RawFd, job: Job) -> i64 {
    match job {
        Job::Read { offset, mut iov } => rw_all(fd, &mut iov, offset, false, 0),
        Job::Write {
            offset,
            mut iov,
            dsync,
        } => rw_all(
            fd,
            &mut iov,
            offset,
            true,
            if dsync { libc::RWF_DSYNC } else { 0 },
        ),
        Job::Flush => loop {
            // SAFETY: fdatasync on an fd this engine keeps open.
            if unsafe { libc::fdatasync(fd) } == 0 {
                return 0;
            }
            let e = errno();
            if e != -i64::from(libc::EINTR) {
                return e;
            }
        },
        Job::Zero { offset, len, unmap } => {
            let (Ok(off), Ok(n)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len))
            else {
                return -i64::from(libc::EINVAL);
            };
            // SAFETY: fallocate on an fd this engine keeps open; no memory is passed.
            if unsafe { libc::fallocate(fd, zero_mode(unmap), off, n) } == 0 {
                0
            } else {
                errno()
            }
        }
    }
}

/// Moves every byte of `iov` (short transfers resumed); total bytes, or `-errno`. Stops
/// early at the end of the file.
fn rw_all(fd: RawFd, iov: &mut [libc::iovec], mut offset: u64, write: bool, flags: i32) -> i64 {
    let mut total = 0i64;
    let mut rest: &mut [libc::iovec] = iov;
    while !rest.is_empty() {
        let Ok(off) = libc::off_t::try_from(offset) else {
            return -i64::from(libc::EINVAL);
        };
        let cnt = rest.len().min(1024) as libc::c_int;
        // SAFETY: the iovecs point to guest memory valid for the transfer (the contract of
        // `Engine::submit`); `cnt` does not exceed the slice.
        let n = unsafe {
            if write {
                libc::pwritev2(fd, rest.as_ptr(), cnt, off, flags)
            } else {
                libc::preadv2(fd, rest.as_ptr(), cnt, off, flags)
            }
        };
        if n < 0 {
            let e = errno();
            if e == -i64::from(libc::EINTR) {
                continue;
            }
            return e;
        }
        if n == 0 {
            break;
        }
        let n = n as u64;
        total = total.saturating_add(n as i64);
        offset = offset.saturating_add(n);
        rest = advance(rest, n);
    }
    total
}

/// Drops `n` bytes from the front of `iov`.
fn advance(iov: &mut [libc::iovec], mut n: u64) -> &mut [libc::iovec] {
    let mut skip = 0;
    for v in iov.iter_mut() {
        let len = v.iov_len as u64;
        if n >= len {
            n -= len;
            skip += 1;
            continue;
        }
        let k = n as usize;
        // SAFETY: k < iov_len, so the new base stays inside the same buffer.
        v.iov_base = unsafe { v.iov_base.cast::<u8>().add(k) }.cast();
        v.iov_len -= k;
        break;
    }
    iov.get_mut(skip..).unwrap_or_default()
}

impl Engine for PoolEngine {
    unsafe fn submit(&mut self, op: Op<'_>, tag: u64) {
        let job = match op {
            Op::Read { offset, iov } => Job::Read {
                offset,
                iov: iov.to_vec(),
            },
            Op::Write { offset, iov, dsync } => Job::Write {
                offset,
                iov: iov.to_vec(),
                dsync,
            },
            Op::Flush => Job::Flush,
            Op::Zero { offset, len, unmap } => Job::Zero { offset, len, unmap },
        };
        self.queued.push(Task { tag, job });
    }

    fn commit(&mut self) -> io::Result<()> {
        let Some(tx) = &self.tx else {
            return Err(io::Error::other("thread pool stopped"));
        };
        for task in self.queued.drain(..) {
            tx.send(task)
                .map_err(|_| io::Error::other("thread pool workers exited"))?;
            self.in_flight += 1;
        }
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        self.event.try_consume()?;
        while let Ok(c) = self.done.try_recv() {
            self.in_flight = self.in_flight.saturating_sub(1);
            out.push(c);
        }
        Ok(())
    }

    fn source(&self) -> Option<RawFd> {
        Some(self.event.read_fd().as_raw_fd())
    }

    fn in_flight(&self) -> usize {
        self.in_flight + self.queued.len()
    }

    fn shutdown(&mut self) -> bool {
        self.queued.clear();
        // Workers run what was sent, then see the channel closed.
        self.tx = None;
        let mut ok = true;
        for w in self.workers.drain(..) {
            ok &= w.join().is_ok();
        }
        self.in_flight = 0;
        ok
    }

    fn name(&self) -> &'static str {
        "threads"
    }
}

impl Drop for PoolEngine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::exercise;
    use super::super::{EngineKind, Image};
    use super::*;
    use std::io::Write;

    #[test]
    fn thread_pool_engine_on_a_file() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&vec![0u8; 1 << 20]).unwrap();
        let image = Image::open(f.path(), false, false).unwrap();
        let mut e = image.engine(EngineKind::Threads, 16, false).unwrap();
        assert_eq!(e.name(), "threads");
        exercise(&image, e.as_mut());
    }

    #[test]
    fn advance_skips_whole_and_partial_iovecs() {
        let mut a = [0u8; 4];
        let mut b = [0u8; 4];
        let mut v = [
            libc::iovec {
                iov_base: a.as_mut_ptr().cast(),
                iov_len: 4,
            },
            libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: 4,
            },
        ];
        let rest = advance(&mut v, 5);
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].iov_len, 3);
        assert_eq!(rest[0].iov_base.cast::<u8>(), b[1..].as_mut_ptr());
        assert!(advance(rest, 3).is_empty());
    }

    #[test]
    fn missing_images_are_clear_errors() {
        let e =
            Image::open(std::path::Path::new("/nonexistent/disk.img"), false, false).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/disk.img"), "{e}");
    }
}
