//! The driver side of one ring, for a front-end that drives a back-end
//! without a guest (tests, probes, benches, the demo).

use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

use vhost_proto::wire::VringBase;

use crate::ClientError;
use crate::os::eventfd::EventFd;

use super::{Frontend, GuestRam, Memory};

/// Either layout's driver queue ([`vring::queue::DriverQueue`] dispatches).
type Inner = vring::queue::DriverQueue<Memory>;

/// A ring the front-end drives itself: a `vring` driver queue in
/// [`GuestRam`], with the kick eventfd it signals and the call eventfd the
/// back-end signals.
///
/// ```
/// use vhost_io_std::frontend::{DriverRing, GuestRam};
///
/// let ram = GuestRam::new(0, 1 << 20)?;
/// let (ring, end) = DriverRing::split(&ram, 0, 0x1000, 64, vring::RingFeatures::default())?;
/// assert!(end > 0x1000 && ring.size() == 64);
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
}

impl DriverRing {
    /// A split ring for vring `index` laid out in `ram` from guest address
    /// `base`; returns the ring and the first free address after it.
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
        let q = vring::split::DriverQueue::new_at(ram.memory().clone(), &config, start)
            .map_err(ring_err)?;
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
        let q = vring::packed::DriverQueue::new_at(ram.memory().clone(), &config, slot, wrap)
            .map_err(ring_err)?;
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
        })
    }

    /// Tells the back-end about the ring and starts it: SET_VRING_NUM,
    /// SET_VRING_BASE, SET_VRING_ADDR, SET_VRING_CALL, SET_VRING_KICK.
    pub fn configure(&self, front: &mut Frontend, ram: &GuestRam) -> Result<(), ClientError> {
        let i = u32::from(self.index);
        let idx8 = u8::try_from(self.index)
            .map_err(|_| os_err("vring index", io::ErrorKind::InvalidInput.into()))?;
        front.set_vring_num(i, self.config.size.into())?;
        front.set_vring_base(i, self.base)?;
        let addr = ram.vring_addr(i, &self.config).ok_or_else(|| {
            os_err(
                "ring layout",
                io::Error::new(io::ErrorKind::InvalidInput, "ring outside guest memory"),
            )
        })?;
        front.set_vring_addr(addr)?;
        front.set_vring_call(idx8, Some(self.call.write_fd()))?;
        front.set_vring_kick(idx8, Some(self.kick.as_fd()))
    }

    /// Restarts a ring the back-end stopped (GET_VRING_BASE): SET_VRING_BASE
    /// with `base`, then a new SET_VRING_CALL and SET_VRING_KICK.
    pub fn restart(&self, front: &mut Frontend, base: VringBase) -> Result<(), ClientError> {
        let i = u32::from(self.index);
        let idx8 = u8::try_from(self.index)
            .map_err(|_| os_err("vring index", io::ErrorKind::InvalidInput.into()))?;
        front.set_vring_base(i, base)?;
        front.set_vring_call(idx8, Some(self.call.write_fd()))?;
        front.set_vring_kick(idx8, Some(self.kick.as_fd()))
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

    /// Whether it is a packed ring.
    pub fn is_packed(&self) -> bool {
        matches!(self.queue, Inner::Packed(_))
    }

    /// Adds a buffer: readable then writable `(guest address, length)`
    /// elements; returns its id. Not visible until [`kick`](Self::kick).
    pub fn add(
        &mut self,
        readable: &[(u64, u32)],
        writable: &[(u64, u32)],
    ) -> Result<u16, vring::Error> {
        self.queue.add(readable, writable)
    }

    /// Adds a buffer as one INDIRECT ring descriptor whose table of
    /// `readable` then `writable` elements is written at guest address
    /// `table_addr` (needs INDIRECT_DESC); returns its id.
    pub fn add_indirect(
        &mut self,
        table_addr: u64,
        readable: &[(u64, u32)],
        writable: &[(u64, u32)],
    ) -> Result<u16, vring::Error> {
        self.queue.add_indirect(table_addr, readable, writable)
    }

    /// Publishes the added buffers and signals the kick eventfd if the
    /// back-end asked for kicks; returns whether it kicked.
    pub fn kick(&mut self) -> io::Result<bool> {
        let need = self.queue.publish();
        if need {
            self.kick.signal()?;
        }
        Ok(need)
    }

    /// The next used buffer `(id, bytes written)`.
    pub fn pop_used(&mut self) -> Result<Option<(u16, u32)>, vring::Error> {
        self.queue.pop_used()
    }

    /// Asks for call notifications again; `true` if used buffers arrived
    /// meanwhile (pop them before waiting).
    pub fn enable_interrupts(&mut self) -> bool {
        self.queue.enable_interrupts()
    }

    /// Waits at most `timeout` for the back-end's call; `true` if it came.
    pub fn wait_call(&self, timeout: Duration) -> io::Result<bool> {
        self.call.wait_timeout(timeout)
    }

    /// Pops used buffers until `n` were collected, waiting for calls (at
    /// most `timeout` each); returns them in order.
    pub fn collect(&mut self, n: usize, timeout: Duration) -> Result<Vec<(u16, u32)>, ClientError> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            while out.len() < n {
                match self.pop_used().map_err(ring_err)? {
                    Some(u) => out.push(u),
                    None => break,
                }
            }
            if out.len() == n || self.enable_interrupts() {
                continue;
            }
            if !self
                .wait_call(timeout)
                .map_err(|e| os_err("wait for call", e))?
            {
                return Err(ClientError::Os(crate::OsError::io(
                    "wait for call",
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the back-end did not complete the buffers in time",
                    ),
                )));
            }
        }
        Ok(out)
    }
}

fn os_err(op: &'static str, e: io::Error) -> ClientError {
    ClientError::Os(crate::OsError::io(op, e))
}

fn ring_err(e: vring::Error) -> ClientError {
    ClientError::Ring(e)
}
