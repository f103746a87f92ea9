//! The driver side of one ring, for a front-end that drives a back-end
//! without a guest (tests, probes, benches, the demo).

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use vhost_proto::session::Negotiated;
use vhost_proto::wire::{VirtioFeatures, VringBase};

use crate::ClientError;
use vhost_backend::os::eventfd::EventFd;

use super::memory::{packed_ring_len, split_ring_len};
use super::{GuestRam, Memory};

/// Either layout's driver queue ([`vring::queue::DriverQueue`] dispatches).
type Inner = vring::queue::DriverQueue<Memory>;

/// The ring features (EVENT_IDX, INDIRECT_DESC, IN_ORDER) a ring must be
/// built with for these negotiated virtio features; whether it is packed is
/// `features.contains(VirtioFeatures::RING_PACKED)`.
pub fn ring_features(features: VirtioFeatures) -> vring::RingFeatures {
    vring::RingFeatures::from_virtio_features(features.bits())
}

/// A ring the front-end drives itself: a `vring` driver queue in
/// [`GuestRam`], with the kick eventfd it signals and the call and error
/// eventfds the back-end signals. Every method fails with the one
/// [`ClientError`].
///
/// Build it from the negotiated features ([`new`](Self::new), or
/// [`at`](Self::at) for a fixed place), start it with
/// [`Frontend::start_ring`](super::Frontend::start_ring).
///
/// ```
/// use vhost_frontend::{DriverRing, GuestRam};
/// use vhost_proto::wire::VirtioFeatures;
///
/// let ram = GuestRam::new(0, 1 << 20)?;
/// let features = VirtioFeatures::VERSION_1 | VirtioFeatures::EVENT_IDX;
/// let ring = DriverRing::new(&ram, 0, 64, features)?;
/// assert!(!ring.is_packed() && ring.features().event_idx && ring.size() == 64);
/// let packed = DriverRing::new(&ram, 1, 64, features | VirtioFeatures::RING_PACKED)?;
/// assert!(packed.is_packed());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct DriverRing {
    index: u16,
    config: vring::QueueConfig,
    base: VringBase,
    queue: Inner,
    kick: EventFd,
    call: EventFd,
    err: EventFd,
    /// Completions popped but not yet handed out (kept across a timeout).
    pending: VecDeque<(u16, u32)>,
}

impl DriverRing {
    /// A ring for vring `index` of `size` entries in memory allocated from
    /// `ram` ([`GuestRam::alloc`]), split or packed and with the ring
    /// features the negotiated `features` say.
    pub fn new(
        ram: &GuestRam,
        index: u16,
        size: u16,
        features: VirtioFeatures,
    ) -> Result<Self, ClientError> {
        let packed = features.contains(VirtioFeatures::RING_PACKED);
        let len = if packed {
            packed_ring_len(size)
        } else {
            split_ring_len(size)
        };
        let gpa = ram.alloc(len, 64)?;
        Self::at(ram, index, gpa, size, features).map(|(r, _)| r)
    }

    /// Like [`new`](Self::new), laid out from guest address `base` (not
    /// taken from the allocator); returns the first free address after it.
    pub fn at(
        ram: &GuestRam,
        index: u16,
        base: u64,
        size: u16,
        features: VirtioFeatures,
    ) -> Result<(Self, u64), ClientError> {
        let f = ring_features(features);
        if features.contains(VirtioFeatures::RING_PACKED) {
            Self::packed(ram, index, base, size, f)
        } else {
            Self::split(ram, index, base, size, f)
        }
    }

    /// A split ring for vring `index` laid out in `ram` from guest address
    /// `base` with explicit ring features (see [`new`](Self::new) to derive
    /// them); returns the ring and the first free address after it.
    pub fn split(
        ram: &GuestRam,
        index: u16,
        base: u64,
        size: u16,
        features: vring::RingFeatures,
    ) -> Result<(Self, u64), ClientError> {
        Self::split_at(ram, index, base, size, features, 0)
    }

    /// Like [`split`](Self::split), with the ring's indexes starting at
    /// `start` (the back-end is told with SET_VRING_BASE).
    pub fn split_at(
        ram: &GuestRam,
        index: u16,
        base: u64,
        size: u16,
        features: vring::RingFeatures,
        start: u16,
    ) -> Result<(Self, u64), ClientError> {
        let (config, end) = super::split_ring(base, size, features);
        let q = vring::split::DriverQueue::new_at(ram.memory().clone(), &config, start)?;
        Ok((
            Self::with(index, config, VringBase::split(start), Inner::Split(q))?,
            end,
        ))
    }

    /// A packed ring for vring `index` laid out in `ram` from guest address
    /// `base`.
    pub fn packed(
        ram: &GuestRam,
        index: u16,
        base: u64,
        size: u16,
        features: vring::RingFeatures,
    ) -> Result<(Self, u64), ClientError> {
        Self::packed_at(ram, index, base, size, features, 0, true)
    }

    /// Like [`packed`](Self::packed), with both sides starting at ring slot
    /// `slot` with wrap counter `wrap`.
    pub fn packed_at(
        ram: &GuestRam,
        index: u16,
        base: u64,
        size: u16,
        features: vring::RingFeatures,
        slot: u16,
        wrap: bool,
    ) -> Result<(Self, u64), ClientError> {
        let (config, end) = super::packed_ring(base, size, features);
        let q = vring::packed::DriverQueue::new_at(ram.memory().clone(), &config, slot, wrap)?;
        let vb = VringBase::packed(slot, wrap, slot, wrap);
        Ok((Self::with(index, config, vb, Inner::Packed(q))?, end))
    }

    fn with(
        index: u16,
        config: vring::QueueConfig,
        base: VringBase,
        queue: Inner,
    ) -> Result<Self, ClientError> {
        let ev = |op| EventFd::new(true).map_err(|e| os_err(op, e));
        Ok(DriverRing {
            index,
            config,
            base,
            queue,
            kick: ev("eventfd (kick)")?,
            call: ev("eventfd (call)")?,
            err: ev("eventfd (err)")?,
            pending: VecDeque::new(),
        })
    }

    /// Checks the ring against the negotiation: its layout (split or
    /// packed) and ring features must be what the acked features say, or
    /// the back-end would read the ring differently (and hang silently).
    pub fn check(&self, negotiated: &Negotiated) -> Result<(), ClientError> {
        let f = negotiated.features;
        let mismatch = |reason| ClientError::RingMismatch {
            index: self.index,
            reason,
        };
        if f.contains(VirtioFeatures::RING_PACKED) != self.is_packed() {
            return Err(mismatch(if self.is_packed() {
                "packed ring, but RING_PACKED was not negotiated"
            } else {
                "split ring, but RING_PACKED was negotiated"
            }));
        }
        if ring_features(f) != self.config.features {
            return Err(mismatch(
                "ring features (EVENT_IDX, INDIRECT_DESC, IN_ORDER) differ from the negotiated ones",
            ));
        }
        Ok(())
    }

    /// The vring index.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// The queue size.
    pub fn size(&self) -> u16 {
        self.config.size
    }

    /// The ring's layout.
    pub fn config(&self) -> &vring::QueueConfig {
        &self.config
    }

    /// The ring features it was built with.
    pub fn features(&self) -> vring::RingFeatures {
        self.config.features
    }

    /// Whether it is a packed ring.
    pub fn is_packed(&self) -> bool {
        matches!(self.queue, Inner::Packed(_))
    }

    /// The position the ring was built at (SET_VRING_BASE of a first start).
    pub fn base(&self) -> VringBase {
        self.base
    }

    /// The position to restart the ring at on a new back-end: the device's
    /// position after every completion it published (split: the used index;
    /// packed: the next used slot and wrap counter, for both halves).
    /// Completions waiting in the used ring are popped first and kept for
    /// [`pop_used`](Self::pop_used), so none is lost.
    pub fn resume_base(&mut self) -> Result<VringBase, ClientError> {
        while let Some(u) = self.queue.pop_used()? {
            self.pending.push_back(u);
        }
        Ok(match &self.queue {
            Inner::Split(q) => VringBase::split(q.used_index()),
            Inner::Packed(q) => {
                let (_, (slot, wrap)) = q.position();
                VringBase::packed(slot, wrap, slot, wrap)
            }
        })
    }

    /// The eventfd the front-end signals (SET_VRING_KICK).
    pub fn kick_fd(&self) -> BorrowedFd<'_> {
        self.kick.as_fd()
    }

    /// The eventfd the back-end signals on used buffers (SET_VRING_CALL).
    pub fn call_fd(&self) -> BorrowedFd<'_> {
        self.call.write_fd()
    }

    /// The eventfd the back-end signals on errors (SET_VRING_ERR).
    pub fn err_fd(&self) -> BorrowedFd<'_> {
        self.err.write_fd()
    }

    /// Adds a buffer: readable then writable `(guest address, length)`
    /// elements; returns its id. Not visible until [`kick`](Self::kick).
    pub fn add(
        &mut self,
        readable: &[(u64, u32)],
        writable: &[(u64, u32)],
    ) -> Result<u16, ClientError> {
        Ok(self.queue.add(readable, writable)?)
    }

    /// Adds a buffer as one INDIRECT ring descriptor whose table of
    /// `readable` then `writable` elements is written at guest address
    /// `table_addr` (needs INDIRECT_DESC); returns its id.
    pub fn add_indirect(
        &mut self,
        table_addr: u64,
        readable: &[(u64, u32)],
        writable: &[(u64, u32)],
    ) -> Result<u16, ClientError> {
        Ok(self.queue.add_indirect(table_addr, readable, writable)?)
    }

    /// Publishes the added buffers and signals the kick eventfd if the
    /// back-end asked for kicks; returns whether it kicked.
    pub fn kick(&mut self) -> Result<bool, ClientError> {
        let need = self.queue.publish();
        if need {
            self.kick.signal().map_err(|e| os_err("kick", e))?;
        }
        Ok(need)
    }

    /// The next used buffer `(id, bytes written)`.
    pub fn pop_used(&mut self) -> Result<Option<(u16, u32)>, ClientError> {
        if let Some(u) = self.pending.pop_front() {
            return Ok(Some(u));
        }
        Ok(self.queue.pop_used()?)
    }

    /// Asks for call notifications again; `true` if used buffers arrived
    /// meanwhile (pop them before waiting).
    pub fn enable_interrupts(&mut self) -> bool {
        !self.pending.is_empty() | self.queue.enable_interrupts()
    }

    /// Waits at most `timeout` for the back-end's call; `true` if it came.
    pub fn wait_call(&self, timeout: Duration) -> Result<bool, ClientError> {
        self.call
            .wait_timeout(timeout)
            .map_err(|e| os_err("wait for call", e))
    }

    /// Whether the back-end signalled the error eventfd (consumes the
    /// signal).
    pub fn take_error(&self) -> Result<bool, ClientError> {
        self.err
            .try_consume()
            .map_err(|e| os_err("read err eventfd", e))
    }

    /// Pops used buffers until `n` were collected, waiting for calls, at
    /// most `timeout` in all; returns them in order. On timeout the ones
    /// that did complete stay in the ring (the next `collect` or
    /// [`pop_used`](Self::pop_used) returns them first) and the error is
    /// [`ClientError::CallTimeout`]: no completion is lost.
    pub fn collect(&mut self, n: usize, timeout: Duration) -> Result<Vec<(u16, u32)>, ClientError> {
        let deadline = Instant::now().checked_add(timeout);
        let mut out = Vec::with_capacity(n);
        let r = self.collect_into(&mut out, n, deadline);
        if r.is_err() {
            // Keep them, in order, ahead of anything popped later.
            for u in out.into_iter().rev() {
                self.pending.push_front(u);
            }
            return r.map(|()| Vec::new());
        }
        Ok(out)
    }

    fn collect_into(
        &mut self,
        out: &mut Vec<(u16, u32)>,
        n: usize,
        deadline: Option<Instant>,
    ) -> Result<(), ClientError> {
        while out.len() < n {
            while out.len() < n {
                match self.pop_used()? {
                    Some(u) => out.push(u),
                    None => break,
                }
            }
            if out.len() == n || self.enable_interrupts() {
                continue;
            }
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            if left.is_zero() || !self.wait_call(left)? {
                // A last look: a completion may have raced the timeout.
                if self.enable_interrupts() {
                    continue;
                }
                return Err(ClientError::CallTimeout {
                    index: self.index,
                    ready: out.len(),
                    wanted: n,
                });
            }
        }
        Ok(())
    }
}

fn os_err(op: &'static str, e: std::io::Error) -> ClientError {
    ClientError::Os(vhost_backend::OsError::io(op, e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use vring::queue::DeviceQueue;

    /// A completion that arrives while `collect` waits for more is kept
    /// through the timeout and handed out by the next call.
    #[test]
    fn collect_keeps_completions_across_a_timeout() {
        let ram = GuestRam::new(0, 1 << 20).unwrap();
        let f = VirtioFeatures::VERSION_1;
        let mut ring = DriverRing::new(&ram, 3, 8, f).unwrap();
        let buf = ram.alloc(64, 8).unwrap();
        let a = ring.add(&[], &[(buf, 8)]).unwrap();
        let b = ring.add(&[], &[(buf + 8, 8)]).unwrap();
        ring.kick().unwrap();
        // Play the device: complete only the first.
        let mut dev = DeviceQueue::new(
            ram.memory().clone(),
            ring.config(),
            Default::default(),
            false,
        )
        .unwrap();
        let c = dev.pop().unwrap().unwrap();
        dev.push(&c, 4).unwrap();
        let e = ring.collect(2, Duration::from_millis(20)).unwrap_err();
        assert!(matches!(
            e,
            ClientError::CallTimeout {
                index: 3,
                ready: 1,
                wanted: 2
            }
        ));
        let c = dev.pop().unwrap().unwrap();
        dev.push(&c, 5).unwrap();
        assert_eq!(
            ring.collect(2, Duration::from_secs(1)).unwrap(),
            [(a, 4), (b, 5)]
        );
    }

    #[test]
    fn rings_are_checked_against_the_negotiation() {
        let ram = GuestRam::new(0, 1 << 20).unwrap();
        let ring = DriverRing::new(&ram, 0, 8, VirtioFeatures::EVENT_IDX).unwrap();
        let neg = |features| Negotiated {
            features,
            ..Negotiated::default()
        };
        assert!(ring.check(&neg(VirtioFeatures::EVENT_IDX)).is_ok());
        assert!(matches!(
            ring.check(&neg(VirtioFeatures::empty())),
            Err(ClientError::RingMismatch { .. })
        ));
        assert!(matches!(
            ring.check(&neg(VirtioFeatures::EVENT_IDX | VirtioFeatures::RING_PACKED)),
            Err(ClientError::RingMismatch { .. })
        ));
    }
}
