//! The queue handler: pops chains, decodes their requests, hands the I/O to the queue's
//! engine with the chain's guest buffers as iovecs, and completes each chain (status in
//! its last writable byte) when its operations finish, in whatever order they do.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use vhost_backend::vring::memory::GuestSlice;
use vhost_backend::{Chain, Queue, QueueError, QueueHandler, ReadObj, Source};

use super::image::{Completion, Engine, Op};
use super::request::{
    self, Framing, ID_BYTES, Limits, Request, RequestHeader, Segment, Status, ZeroRange,
};

/// Most iovecs one request may span (the kernel's `IOV_MAX`); more is IOERR.
pub const MAX_IOVECS: usize = 1024;

/// What every queue of a device counts.
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests completed.
    pub requests: AtomicU64,
    /// Most requests one queue had in flight at once.
    pub max_in_flight: AtomicU32,
    /// Requests answered with IOERR or UNSUPP.
    pub errors: AtomicU64,
}

/// Iovecs into guest memory, reused from request to request.
#[derive(Debug, Default)]
struct IoVecs(Vec<libc::iovec>);

// SAFETY: the iovecs point into guest memory, which is valid from any thread while the
// chain that holds it lives; the vector is only read by the engine the handler owns.
unsafe impl Send for IoVecs {}

/// A request handed to the engine.
#[derive(Debug)]
struct Active {
    chain: Chain,
    /// Guest address of the status byte (translated when the request started).
    status_addr: u64,
    /// The used length when the request succeeds.
    used_ok: u32,
    /// Operations still running.
    pending: u32,
    /// Worst status so far.
    status: Status,
    /// Bytes a read or write must move (`None`: any non-negative result is success).
    expect: Option<u64>,
}

#[derive(Debug, Default)]
struct Slot {
    active: Option<Active>,
    iov: IoVecs,
}

/// Serves one ring of a [`BlkDevice`](super::BlkDevice).
pub struct BlkQueue {
    index: u16,
    engine: Box<dyn Engine>,
    limits: Limits,
    writeback: Arc<AtomicBool>,
    id: [u8; ID_BYTES],
    slots: Vec<Slot>,
    free: Vec<usize>,
    in_flight: u32,
    done: Vec<Completion>,
    stats: Arc<Stats>,
}

impl std::fmt::Debug for BlkQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlkQueue")
            .field("index", &self.index)
            .field("engine", &self.engine.name())
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

/// What `start` decided for a chain.
enum Plan {
    /// Answer now with this status and used length.
    Answer(Status, u32),
    /// The request is with the engine.
    Submitted,
}

impl BlkQueue {
    pub(crate) fn new(
        index: u16,
        engine: Box<dyn Engine>,
        limits: Limits,
        writeback: Arc<AtomicBool>,
        id: [u8; ID_BYTES],
        stats: Arc<Stats>,
    ) -> Self {
        BlkQueue {
            index,
            engine,
            limits,
            writeback,
            id,
            slots: Vec::new(),
            free: Vec::new(),
            in_flight: 0,
            done: Vec::new(),
            stats,
        }
    }

    fn device_error(&self, reason: String) -> QueueError {
        QueueError::Device {
            queue: self.index,
            reason,
        }
    }

    fn io_error(&self, what: &'static str, source: std::io::Error) -> QueueError {
        QueueError::Io {
            queue: self.index,
            what,
            source,
        }
    }

    fn alloc(&mut self) -> usize {
        match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot::default());
                self.slots.len() - 1
            }
        }
    }

    /// Starts serving `chain`: answered at once, or handed to the engine. A chain that
    /// cannot be served at all (malformed, no status byte) is an error that stops the
    /// ring; it is completed with length 0 first so that it is not lost.
    fn start(&mut self, q: &mut Queue, chain: Chain) -> Result<(), QueueError> {
        let i = self.alloc();
        let r = self.plan(q, &chain, i);
        let Some(slot) = self.slots.get_mut(i) else {
            return Err(self.device_error("slot table out of step".into()));
        };
        match r {
            Ok((Plan::Submitted, status_addr, used_ok, pending, expect)) => {
                slot.active = Some(Active {
                    chain,
                    status_addr,
                    used_ok,
                    pending,
                    status: Status::Ok,
                    expect,
                });
                self.in_flight += 1;
                self.stats
                    .max_in_flight
                    .fetch_max(self.in_flight, Ordering::Relaxed);
                Ok(())
            }
            Ok((Plan::Answer(status, used), status_addr, ..)) => {
                slot.iov.0.clear();
                self.free.push(i);
                self.answer(q, chain, status_addr, status, used)
            }
            Err(e) => {
                slot.iov.0.clear();
                self.free.push(i);
                let _ = q.complete(chain, 0);
                Err(e)
            }
        }
    }

    /// Decodes `chain` and, for I/O, submits it to the engine with slot `i`'s iovecs.
    /// Returns the plan, the status byte's guest address, the used length on success, the
    /// operations submitted, and the byte count a read or write must move.
    #[allow(clippy::type_complexity)]
    fn plan(
        &mut self,
        q: &Queue,
        chain: &Chain,
        i: usize,
    ) -> Result<(Plan, u64, u32, u32, Option<u64>), QueueError> {
        let lengths = q.lengths(chain)?;
        let framing = request::check_framing(lengths.readable, lengths.writable);
        if framing == Err(Framing::NoStatus) {
            return Err(self.device_error(format!(
                "chain {} has no writable byte for the status",
                chain.id()
            )));
        }
        let status_offset = lengths.writable - 1;
        let Ok(status_skip) = usize::try_from(status_offset) else {
            return Err(self.device_error("chain longer than the address space".into()));
        };
        let mut reader = q.reader(chain);
        let mut writer = q.writer(chain);
        let status_at =
            |writer: &mut vhost_backend::ChainWriter<'_>, skip: usize| -> Result<u64, QueueError> {
                let skipped = writer.skip(skip)?;
                match writer.next_slice(1)? {
                    Some(s) if skipped == skip => Ok(s.guest_addr()),
                    _ => Err(vhost_backend::vring::Error::NoRoom {
                        what: "writable",
                        available: skipped as u64,
                        needed: skip as u64 + 1,
                    }
                    .into()),
                }
            };
        if framing == Err(Framing::ShortHeader) {
            let addr = status_at(&mut writer, status_skip)?;
            return Ok((Plan::Answer(Status::IoErr, 1), addr, 1, 0, None));
        }
        let header: RequestHeader = reader.read_obj()?;
        let req = match request::decode(&header, lengths.readable, lengths.writable, &self.limits) {
            Ok(r) => r,
            Err(status) => {
                log::debug!(
                    "queue {}: {} request at sector {}: {status:?}",
                    self.index,
                    request::kind::name(header.kind.get()),
                    header.sector.get()
                );
                let addr = status_at(&mut writer, status_skip)?;
                return Ok((Plan::Answer(status, 1), addr, 1, 0, None));
            }
        };
        let Some(slot) = self.slots.get_mut(i) else {
            return Err(self.device_error("slot table out of step".into()));
        };
        let iov = &mut slot.iov.0;
        iov.clear();
        let tag = i as u64;
        match req {
            Request::Read { offset, len } | Request::Write { offset, len } => {
                let write = matches!(req, Request::Write { .. });
                if len == 0 {
                    let addr = status_at(&mut writer, status_skip)?;
                    return Ok((Plan::Answer(Status::Ok, 1), addr, 1, 0, None));
                }
                let mut left = len;
                while left > 0 {
                    let max = usize::try_from(left).unwrap_or(usize::MAX);
                    let s = if write {
                        reader.next_slice(max)?
                    } else {
                        writer.next_slice(max)?
                    };
                    let Some(s) = s else {
                        return Err(self.device_error(format!(
                            "chain {} changed under the device",
                            chain.id()
                        )));
                    };
                    if iov.len() == MAX_IOVECS {
                        // Too fragmented for one vectored I/O: refuse it whole.
                        iov.clear();
                        let rest = status_skip - if write { 0 } else { (len - left) as usize };
                        let addr = status_at(&mut writer, rest)?;
                        return Ok((Plan::Answer(Status::IoErr, 1), addr, 1, 0, None));
                    }
                    iov.push(libc::iovec {
                        iov_base: s.as_ptr().cast(),
                        iov_len: s.len(),
                    });
                    left -= s.len() as u64;
                }
                let rest = if write {
                    status_skip
                } else {
                    status_skip - len as usize
                };
                let addr = status_at(&mut writer, rest)?;
                let op = if write {
                    Op::Write {
                        offset,
                        iov,
                        dsync: !self.writeback.load(Ordering::Relaxed),
                    }
                } else {
                    Op::Read { offset, iov }
                };
                // SAFETY: the iovecs point into the chain's guest buffers, which stay
                // mapped while the chain lives; the chain and the iovec vector stay in
                // slot `i` until the operation's completion is reaped (or the engine is
                // shut down, see Drop).
                unsafe { self.engine.submit(op, tag) };
                let used_ok = if write { 1 } else { len as u32 + 1 };
                Ok((Plan::Submitted, addr, used_ok, 1, Some(len)))
            }
            Request::Flush => {
                let addr = status_at(&mut writer, status_skip)?;
                // SAFETY: no buffers.
                unsafe { self.engine.submit(Op::Flush, tag) };
                Ok((Plan::Submitted, addr, 1, 1, None))
            }
            Request::GetId { len } => {
                let id = self.id.get(..len).unwrap_or(&self.id);
                writer.write_all(id)?;
                let addr = status_at(&mut writer, status_skip - id.len())?;
                Ok((
                    Plan::Answer(Status::Ok, id.len() as u32 + 1),
                    addr,
                    1,
                    0,
                    None,
                ))
            }
            Request::Discard { segments } | Request::WriteZeroes { segments } => {
                let discard = matches!(req, Request::Discard { .. });
                let addr = status_at(&mut writer, status_skip)?;
                // Every segment is checked before any runs.
                let mut ranges: Vec<ZeroRange> = Vec::with_capacity(segments as usize);
                let mut status = Status::Ok;
                for _ in 0..segments {
                    let seg: Segment = reader.read_obj()?;
                    match request::decode_segment(&seg, discard, &self.limits) {
                        Ok(r) if r.len > 0 => ranges.push(r),
                        Ok(_) => {}
                        Err(s) => status = status.worst(s),
                    }
                }
                if status != Status::Ok || ranges.is_empty() {
                    return Ok((Plan::Answer(status, 1), addr, 1, 0, None));
                }
                for r in &ranges {
                    let op = Op::Zero {
                        offset: r.offset,
                        len: r.len,
                        unmap: r.unmap,
                    };
                    // SAFETY: no buffers.
                    unsafe { self.engine.submit(op, tag) };
                }
                Ok((Plan::Submitted, addr, 1, ranges.len() as u32, None))
            }
        }
    }

    /// Writes `status` at `status_addr` and completes the chain with `used` bytes.
    fn answer(
        &mut self,
        q: &mut Queue,
        chain: Chain,
        status_addr: u64,
        status: Status,
        used: u32,
    ) -> Result<(), QueueError> {
        let written = GuestSlice::new(chain.memory(), status_addr, 1)
            .and_then(|s| s.write_at(0, &[status.byte()]));
        if let Err(e) = written {
            let _ = q.complete(chain, 0);
            return Err(e.into());
        }
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        if status != Status::Ok {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        q.complete(chain, used)
    }

    /// Collects the engine's completions and completes the chains whose operations are
    /// all done, in the order they finished.
    fn collect(&mut self, q: &mut Queue) -> Result<(), QueueError> {
        let mut done = std::mem::take(&mut self.done);
        let r = self
            .engine
            .reap(&mut done)
            .map_err(|e| self.io_error("collecting I/O completions", e));
        let mut out = Ok(());
        for c in done.drain(..) {
            if let Err(e) = self.finish(q, c) {
                out = Err(e);
                break;
            }
        }
        self.done = done;
        r.and(out)
    }

    fn finish(&mut self, q: &mut Queue, c: Completion) -> Result<(), QueueError> {
        let i = usize::try_from(c.tag).unwrap_or(usize::MAX);
        let Some(slot) = self.slots.get_mut(i) else {
            return Err(self.device_error(format!("completion of unknown slot {}", c.tag)));
        };
        let Some(a) = slot.active.as_mut() else {
            return Err(self.device_error(format!("completion of idle slot {}", c.tag)));
        };
        let ok = c.result >= 0 && a.expect.is_none_or(|n| c.result as u64 == n);
        if !ok {
            log::debug!("queue {}: I/O failed: result {}", self.index, c.result);
            a.status = a.status.worst(Status::IoErr);
        }
        a.pending = a.pending.saturating_sub(1);
        if a.pending > 0 {
            return Ok(());
        }
        let Some(a) = slot.active.take() else {
            return Ok(());
        };
        slot.iov.0.clear();
        self.free.push(i);
        self.in_flight -= 1;
        let used = if a.status == Status::Ok { a.used_ok } else { 1 };
        self.answer(q, a.chain, a.status_addr, a.status, used)
    }
}

impl QueueHandler for BlkQueue {
    fn process(&mut self, q: &mut Queue) -> Result<(), QueueError> {
        while let Some(chain) = q.pop()? {
            if let Err(e) = self.start(q, chain) {
                // Submit what did start: those chains complete through `ready`.
                let _ = self.engine.commit();
                return Err(e);
            }
        }
        self.engine
            .commit()
            .map_err(|e| self.io_error("submitting I/O", e))?;
        self.collect(q)
    }

    fn sources(&self) -> Vec<Source> {
        self.engine
            .source()
            .map(|fd| Source { fd, id: 0 })
            .into_iter()
            .collect()
    }

    fn ready(&mut self, q: &mut Queue, _id: u32) -> Result<(), QueueError> {
        self.collect(q)
    }

    fn quiesce(&mut self, q: &mut Queue) -> Result<(), QueueError> {
        // Nothing is held back: what waits for room in the engine goes as completions
        // make room, and the runner serves `ready` until every chain is completed.
        self.engine
            .commit()
            .map_err(|e| self.io_error("submitting I/O", e))?;
        self.collect(q)
    }
}

impl Drop for BlkQueue {
    fn drop(&mut self) {
        // The engine may still be writing into the chains' buffers (a broken ring stops
        // with requests in flight): wait for it before the chains release their memory.
        if !self.engine.shutdown() {
            log::error!(
                "queue {}: in-flight I/O could not be waited for; its guest memory is kept",
                self.index
            );
            std::mem::forget(std::mem::take(&mut self.slots));
        }
        let lost = self.slots.iter().filter(|s| s.active.is_some()).count();
        if lost > 0 {
            log::warn!(
                "queue {}: stopped with {lost} requests in flight (the ring broke)",
                self.index
            );
        }
    }
}
