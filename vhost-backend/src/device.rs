//! The device contract: what a back-end device offers ([`Device`]) and how each of its
//! started queues is served ([`QueueHandler`]), asynchronously if it likes.

use std::os::fd::RawFd;
use std::sync::Arc;

use vhost_proto::backend::{DeviceDescription, Refused};
use vhost_proto::wire::{ConfigFlags, DeviceStatus, ProtocolFeatures, VirtioFeatures};

use crate::channel::BackendChannel;
use crate::error::QueueError;
use crate::queue::Queue;

/// A vhost-user back-end device, served by either runner (`vhost-io-std`'s `Server`,
/// `vhost-io-mio`'s `Session`) unchanged.
///
/// The trait is capability-oriented: [`description`](Self::description) states what the
/// device offers (features, protocol features, queue count, config space size, limits),
/// and the device implements what it offers. When a ring starts, the runner asks
/// [`start_queue`](Self::start_queue) for the ring's [`QueueHandler`], which serves it
/// until it stops. Every other method has a default that refuses cleanly (the session then
/// NACKs the request or sends the spec's failure reply, e.g. a zero-length GET_CONFIG
/// reply) or ignores a notification. The protocol state (features, rings, memory table)
/// stays in the session; the device never keeps a copy.
///
/// Methods take `&self`: handlers run on queue threads (std) or in the loop (mio) while
/// control events arrive, so a device keeps shared mutable state behind its own locks or
/// atomics; per-queue state belongs in the handler.
///
/// # A virtio-blk back-end (in-memory disk, synchronous completion)
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use vhost_backend::{Device, Queue, QueueError, QueueHandler, ReadObj};
/// use vhost_backend::vhost_proto::backend::{DeviceDescription, Refused};
/// use vhost_backend::vhost_proto::wire::{ProtocolFeatures, VirtioFeatures};
///
/// const IN: u32 = 0;
/// const OUT: u32 = 1;
/// const FLUSH: u32 = 4;
/// const S_OK: u8 = 0;
/// const S_IOERR: u8 = 1;
/// const S_UNSUPP: u8 = 2;
///
/// /// The request header (virtio spec 5.2.6): type, reserved, sector, little-endian.
/// #[derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::KnownLayout, zerocopy::Immutable)]
/// #[repr(C)]
/// struct BlkHeader { kind: zerocopy::little_endian::U32, _reserved: u32, sector: zerocopy::little_endian::U64 }
///
/// struct Blk { disk: Arc<Mutex<Vec<u8>>> }
/// struct BlkQueue { disk: Arc<Mutex<Vec<u8>>> }
///
/// impl Device for Blk {
///     fn description(&self) -> DeviceDescription {
///         DeviceDescription::new(
///             VirtioFeatures::VERSION_1 | VirtioFeatures::EVENT_IDX,
///             ProtocolFeatures::MQ | ProtocolFeatures::REPLY_ACK | ProtocolFeatures::CONFIG,
///             1,
///         )
///         .with_config_size(8) // capacity in sectors (u64)
///     }
///     fn start_queue(self: Arc<Self>, _: &Queue) -> Result<Box<dyn QueueHandler>, Refused> {
///         Ok(Box::new(BlkQueue { disk: Arc::clone(&self.disk) }))
///     }
///     fn read_config(&self, offset: u32, data: &mut [u8]) -> Result<(), Refused> {
///         let capacity = (self.disk.lock().unwrap().len() as u64 / 512).to_le_bytes();
///         let src = capacity.get(offset as usize..offset as usize + data.len())
///             .ok_or(Refused::because("outside config space"))?;
///         data.copy_from_slice(src);
///         Ok(())
///     }
/// }
///
/// impl QueueHandler for BlkQueue {
///     fn process(&mut self, q: &mut Queue) -> Result<(), QueueError> {
///         while let Some(chain) = q.pop()? {
///             // The status byte is the last writable byte; data comes before it.
///             let lengths = q.lengths(&chain)?;
///             let Some(data_len) = lengths.writable.checked_sub(1) else {
///                 // No room for a status: a malformed request stops the ring.
///                 return Err(QueueError::Device { queue: q.index(), reason: "no status byte".into() });
///             };
///             let mut reader = q.reader(&chain);
///             let hdr: BlkHeader = reader.read_obj()?;
///             let mut writer = q.writer(&chain);
///             let mut disk = self.disk.lock().unwrap();
///             let start = hdr.sector.get().checked_mul(512).and_then(|s| usize::try_from(s).ok());
///             let status = match hdr.kind.get() {
///                 IN => {
///                     let n = usize::try_from(data_len).unwrap_or(usize::MAX);
///                     match start.and_then(|s| disk.get(s..s.checked_add(n)?)) {
///                         Some(src) => { writer.write_all(src)?; S_OK }
///                         None => { writer.skip(n)?; S_IOERR }
///                     }
///                 }
///                 OUT => {
///                     let n = usize::try_from(lengths.readable.saturating_sub(16)).unwrap_or(usize::MAX);
///                     match start.and_then(|s| disk.get_mut(s..s.checked_add(n)?)) {
///                         Some(dst) => { reader.read_exact(dst)?; S_OK }
///                         None => S_IOERR,
///                     }
///                 }
///                 FLUSH => S_OK,
///                 _ => S_UNSUPP,
///             };
///             writer.write_all(&[status])?;
///             let len = writer.bytes_written();
///             q.complete(chain, len)?;
///         }
///         Ok(())
///     }
/// }
/// # let _ = Blk { disk: Arc::new(Mutex::new(vec![0; 4096])) }.description();
/// ```
///
/// # Asynchronous completion
///
/// A handler may keep popped chains and complete them later, in any order: it registers
/// the fd its completions arrive on (an io_uring completion eventfd, a pipe from a thread
/// pool) in [`QueueHandler::sources`], and completes them in [`QueueHandler::ready`]. The
/// chains keep their guest memory mapped until they are completed. GET_VRING_BASE, memory
/// changes, RESET_DEVICE and disconnect wait (without blocking the runner) until every
/// chain handed out is completed: see [`QueueHandler::quiesce`].
pub trait Device: Send + Sync + 'static {
    /// What the device offers. Read once per connection; the session answers
    /// GET_FEATURES, GET_PROTOCOL_FEATURES, GET_QUEUE_NUM and GET_MAX_MEM_SLOTS from it
    /// alone.
    fn description(&self) -> DeviceDescription;

    /// Ring `queue.index()` starts: the handler that serves it until it stops (it may keep
    /// `self`, the runner's shared handle on the device). Called in
    /// the runner's control context (not on the queue's thread) before the start is
    /// acknowledged; a refusal NACKs the start and leaves the ring stopped. `queue` shows
    /// the ring's layout, size, memory and enabled flag.
    fn start_queue(self: Arc<Self>, queue: &Queue) -> Result<Box<dyn QueueHandler>, Refused>;

    /// SET_VRING_ENABLE changed queue `index`'s enabled flag (also readable with
    /// [`Queue::is_enabled`]).
    fn queue_enabled(&self, index: u16, enabled: bool) {
        let _ = (index, enabled);
    }

    /// SET_FEATURES acked these virtio features.
    fn features_acked(&self, features: VirtioFeatures) {
        let _ = features;
    }

    /// SET_PROTOCOL_FEATURES acked these protocol features.
    fn protocol_features_acked(&self, features: ProtocolFeatures) {
        let _ = features;
    }

    /// GET_CONFIG: fill `data` from config space at `offset` (the range is inside the
    /// description's `config_size`). Default: refused (the session sends a zero-length
    /// config, the spec's failure reply).
    fn read_config(&self, offset: u32, data: &mut [u8]) -> Result<(), Refused> {
        let _ = (offset, data);
        Err(Refused::because("device has no readable config space"))
    }

    /// SET_CONFIG: write `data` at `offset`; refuse writes to read-only fields unless
    /// `flags` says migration. Default: refused.
    fn write_config(&self, offset: u32, data: &[u8], flags: ConfigFlags) -> Result<(), Refused> {
        let _ = (offset, data, flags);
        Err(Refused::because("device config space is read-only"))
    }

    /// SET_STATUS: the virtio status byte (0 = reset). Default: accepted.
    fn set_status(&self, status: DeviceStatus) -> Result<(), Refused> {
        let _ = status;
        Ok(())
    }

    /// RESET_DEVICE: every queue has been stopped (its handler dropped); return to the
    /// initial state. Default: nothing to reset.
    fn reset(&self) {}

    /// NET_SET_MTU. Default: refused.
    fn set_mtu(&self, mtu: u64) -> Result<(), Refused> {
        let _ = mtu;
        Err(Refused::because("MTU not supported"))
    }

    /// SEND_RARP. Default: refused.
    fn send_rarp(&self, mac: [u8; 6]) -> Result<(), Refused> {
        let _ = mac;
        Err(Refused::because("RARP not supported"))
    }

    /// SET_BACKEND_REQ_FD: the back-end → front-end channel, ready to send the ten
    /// back-end requests (gated by what was negotiated, refused while the device is
    /// suspended). A new SET_BACKEND_REQ_FD hands over a new channel. Default: dropped
    /// (closed).
    fn backend_channel_opened(&self, channel: BackendChannel) {
        drop(channel);
    }

    /// The front-end disconnected (or the connection failed); every queue has stopped.
    /// Device state is kept for the next connection.
    fn disconnected(&self) {}
}

/// One fd a [`QueueHandler`] waits on besides the ring's kick: the runner polls it and
/// calls [`QueueHandler::ready`] with `id` when it is readable.
///
/// The handler owns the fd and keeps it open while it lives (the runner stops watching it
/// before dropping the handler). Readiness may be reported edge-triggered (mio): consume
/// until the fd would block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Source {
    /// The fd (a tap, an io_uring completion eventfd, a timerfd, a pipe, ...).
    pub fd: RawFd,
    /// The handler's name for it, passed back to `ready`.
    pub id: u32,
}

/// Serves one started ring: created by [`Device::start_queue`], dropped when the ring
/// stops. Runs on the queue's thread (std runner) or in the loop (mio runner): it must not
/// block; slow work goes to the handler's own completion source.
///
/// **Malformed chains.** Guest memory is hostile: a chain the handler cannot serve (the
/// ring engine's errors, a request without room for its status, ...) is returned as an
/// error from the method that found it. The runner then stops processing the ring and
/// signals the ring's err fd; the front-end restarts the ring to recover. Requests that are
/// well-formed but fail (a read past the disk's end) complete with the device's error
/// status instead.
pub trait QueueHandler: Send + 'static {
    /// Serves the available chains: pop, read, write, and complete now (or keep the chains
    /// and complete them later, from [`ready`](Self::ready)).
    ///
    /// Called when the ring starts (a start needs no kick, spec §7.2), after each kick,
    /// and again while it makes progress, with driver notifications suppressed meanwhile
    /// (the runner re-enables and re-checks them: no lost wakeup). The runner publishes
    /// completed chains and signals the driver after each call.
    fn process(&mut self, queue: &mut Queue) -> Result<(), QueueError>;

    /// The fds this handler waits on besides the kick, asked once when the queue starts.
    /// Default: none.
    fn sources(&self) -> Vec<Source> {
        Vec::new()
    }

    /// Source `id` is readable: collect completions and complete their chains, or serve
    /// the ring (an RX queue whose tap has packets). Default: [`process`](Self::process).
    fn ready(&mut self, queue: &mut Queue, id: u32) -> Result<(), QueueError> {
        let _ = id;
        self.process(queue)
    }

    /// The runner is stopping the ring (GET_VRING_BASE, a memory change, RESET_DEVICE or
    /// disconnect): [`Queue::pop`] hands out nothing more, and the ring stops once every
    /// chain handed out is completed ([`Queue::in_flight`] is 0). Called once when the
    /// stop begins; completions then keep arriving through [`ready`](Self::ready).
    /// A handler with requests queued internally (not yet submitted) completes them here,
    /// with an error status if it must. Default: nothing.
    fn quiesce(&mut self, queue: &mut Queue) -> Result<(), QueueError> {
        let _ = queue;
        Ok(())
    }

    /// The guest memory changed (the ring was quiesced first): buffers registered with the
    /// kernel (io_uring fixed buffers) are registered again from [`Queue::memory`].
    /// Default: nothing.
    fn memory_changed(&mut self, queue: &Queue) {
        let _ = queue;
    }
}

/// A [`QueueHandler`] made of a closure, for queues served synchronously:
/// `Box::new(handler_fn(move |q| ...))` from [`Device::start_queue`]. With
/// [`FnHandler::with_wakeup`] the closure also runs when the device signals an eventfd (an
/// RX queue whose packets arrived from elsewhere).
pub fn handler_fn<F>(f: F) -> FnHandler<F>
where
    F: FnMut(&mut Queue) -> Result<(), QueueError> + Send + 'static,
{
    FnHandler { f, wake: None }
}

/// See [`handler_fn`].
#[derive(Debug)]
pub struct FnHandler<F> {
    f: F,
    wake: Option<crate::os::eventfd::EventFd>,
}

impl<F> FnHandler<F> {
    /// Also runs the closure whenever `wake` is signalled (the signal is consumed first).
    pub fn with_wakeup(mut self, wake: crate::os::eventfd::EventFd) -> Self {
        self.wake = Some(wake);
        self
    }
}

impl<F> QueueHandler for FnHandler<F>
where
    F: FnMut(&mut Queue) -> Result<(), QueueError> + Send + 'static,
{
    fn process(&mut self, queue: &mut Queue) -> Result<(), QueueError> {
        (self.f)(queue)
    }

    fn sources(&self) -> Vec<Source> {
        use std::os::fd::AsRawFd;
        self.wake
            .iter()
            .map(|w| Source {
                fd: w.read_fd().as_raw_fd(),
                id: 0,
            })
            .collect()
    }

    fn ready(&mut self, queue: &mut Queue, _: u32) -> Result<(), QueueError> {
        if let Some(w) = &self.wake {
            w.try_consume().map_err(|source| QueueError::Io {
                queue: queue.index(),
                what: "reading the wakeup eventfd",
                source,
            })?;
        }
        (self.f)(queue)
    }
}
