//! The device's end of the back-end channel: a blocking sender over
//! `vhost_proto::backend::Channel<OwnedFd>`.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use vhost_proto::backend::{Channel, ChannelEvent};
use vhost_proto::session::Negotiated;
use vhost_proto::wire::{BackendRequest, IotlbMsg, ShmemMap, Uuid};

use crate::ChannelError;
use crate::os::socket::{recv_with_fds, send_all_with_fds};

/// How long a [`BackendChannel`] waits for the front-end's answer unless
/// told otherwise.
pub const DEFAULT_CHANNEL_TIMEOUT: Duration = Duration::from_secs(5);

/// What the serving session tells the channels it handed out: the current
/// negotiation (SET_FEATURES may come after SET_BACKEND_REQ_FD, as QEMU
/// sends them) and whether the device is suspended (every ring stopped).
#[derive(Debug)]
pub(crate) struct ChannelGate {
    negotiated: Mutex<Negotiated>,
    suspended: AtomicBool,
}

impl ChannelGate {
    pub(crate) fn new() -> Self {
        ChannelGate {
            negotiated: Mutex::new(Negotiated::default()),
            suspended: AtomicBool::new(true),
        }
    }

    pub(crate) fn set_negotiated(&self, neg: Negotiated) {
        *self
            .negotiated
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = neg;
    }

    fn negotiated(&self) -> Negotiated {
        *self
            .negotiated
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn set_suspended(&self, suspended: bool) {
        self.suspended.store(suspended, Ordering::Release);
    }

    fn suspended(&self) -> bool {
        self.suspended.load(Ordering::Acquire)
    }
}

/// The device's end of the back-end channel (SET_BACKEND_REQ_FD, spec §6,
/// §7.6), handed to [`Device::backend_channel_opened`](super::Device::backend_channel_opened)
/// by the runner (`vhost-io-std`'s `Server`, `vhost-io-mio`'s `Session`).
///
/// One method per back-end request. Each is checked against what the
/// session negotiated (BACKEND_REQ, the request's own feature, and
/// BACKEND_SEND_FD when it carries an fd) before anything is sent; with
/// REPLY_ACK the method waits at most the reply timeout for the front-end's
/// ack (SHARED_OBJECT_LOOKUP always waits for its answer). While the device
/// is suspended (every ring stopped, spec §7.3) nothing is sent:
/// [`ChannelError::Suspended`].
///
/// Methods take `&mut self`; a device that sends from several queue workers
/// keeps the channel behind a `Mutex` (requests are answered one at a time).
#[derive(Debug)]
pub struct BackendChannel {
    stream: UnixStream,
    chan: Channel<OwnedFd>,
    gate: Option<Arc<ChannelGate>>,
    negotiated: Negotiated,
    timeout: Duration,
    buf: Vec<u8>,
}

impl BackendChannel {
    pub(crate) fn with_gate(stream: UnixStream, gate: Arc<ChannelGate>) -> Self {
        let mut c = Self::new(stream, gate.negotiated());
        c.gate = Some(gate);
        c
    }

    /// A channel over a socket received some other way (e.g. by a device
    /// served by another binding) for a session with this negotiation. It
    /// does not know when the device is suspended: the caller keeps that
    /// rule.
    pub fn new(stream: UnixStream, negotiated: Negotiated) -> Self {
        BackendChannel {
            stream,
            chan: Channel::new(negotiated),
            gate: None,
            negotiated,
            timeout: DEFAULT_CHANNEL_TIMEOUT,
            buf: vec![0u8; 256],
        }
    }

    /// Sets how long to wait for an answer (at least 1 ms).
    pub fn set_reply_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout.max(Duration::from_millis(1));
    }

    /// The negotiation the gates check (kept current by the server).
    pub fn negotiated(&self) -> Negotiated {
        match &self.gate {
            Some(g) => g.negotiated(),
            None => self.negotiated,
        }
    }

    /// Updates the negotiation the gates check, for a channel built with
    /// [`new`](Self::new) (the server keeps its own channels current).
    pub fn set_negotiated(&mut self, negotiated: Negotiated) {
        self.negotiated = negotiated;
        self.chan.set_negotiated(negotiated);
    }

    /// The socket, for a device that wants to hand it on.
    pub fn into_stream(self) -> UnixStream {
        self.stream
    }

    /// Sends `req` and waits for its answer when there is one: `Ok(None)`
    /// when acked (or nothing to wait for), `Ok(Some(fd))` for a
    /// SHARED_OBJECT_LOOKUP answered with an fd.
    pub fn send(&mut self, req: BackendRequest<OwnedFd>) -> Result<Option<OwnedFd>, ChannelError> {
        let request = req.code();
        if let Some(g) = &self.gate {
            if g.suspended() {
                return Err(ChannelError::Suspended { request });
            }
            self.chan.set_negotiated(g.negotiated());
        }
        let id = self.chan.send(req)?;
        self.stream
            .set_read_timeout(Some(self.timeout))
            .map_err(|e| ChannelError::io("setsockopt", e))?;
        loop {
            while let Some(t) = self.chan.poll_transmit() {
                let fds: Vec<BorrowedFd<'_>> = t.fds.iter().map(AsFd::as_fd).collect();
                send_all_with_fds(&self.stream, &t.bytes, &fds)
                    .map_err(|e| ChannelError::io("sendmsg", e))?;
            }
            while let Some(event) = self.chan.poll_event() {
                match event {
                    ChannelEvent::Acked { id: got, .. } if got == id => return Ok(None),
                    ChannelEvent::Nacked { id: got, value, .. } if got == id => {
                        return Err(ChannelError::Refused { request, value });
                    }
                    ChannelEvent::SharedObject { id: got, value, fd } if got == id => {
                        return if value == 0 {
                            Ok(fd)
                        } else {
                            Err(ChannelError::Refused { request, value })
                        };
                    }
                    ChannelEvent::ChannelLost { error } => {
                        return Err(ChannelError::Protocol(error));
                    }
                    // The late answer to a request that timed out.
                    _ => {}
                }
            }
            if self.chan.is_idle() {
                return Ok(None);
            }
            let mut fds = Vec::new();
            let n = match recv_with_fds(&self.stream, &mut self.buf, &mut fds) {
                Ok(0) => return Err(ChannelError::Disconnected),
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(ChannelError::Timeout { request });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ChannelError::io("recvmsg", e)),
            };
            let bytes = self.buf.get(..n).unwrap_or_default();
            self.chan.handle_input(bytes, fds)?;
        }
    }

    fn send_plain(&mut self, req: BackendRequest<OwnedFd>) -> Result<(), ChannelError> {
        self.send(req).map(drop)
    }

    /// BACKEND_IOTLB_MSG (needs IOMMU_PLATFORM): a miss or an access failure.
    pub fn iotlb_msg(&mut self, msg: IotlbMsg) -> Result<(), ChannelError> {
        self.send_plain(BackendRequest::IotlbMsg { msg })
    }

    /// BACKEND_CONFIG_CHANGE_MSG (needs CONFIG): the config space changed.
    pub fn config_change(&mut self) -> Result<(), ChannelError> {
        self.send_plain(BackendRequest::ConfigChange)
    }

    /// BACKEND_VRING_HOST_NOTIFIER_MSG (needs HOST_NOTIFIER, and
    /// BACKEND_SEND_FD with an fd): map `fd[offset, size]` as ring `index`'s
    /// notify area, or drop it (`None`).
    pub fn vring_host_notifier(
        &mut self,
        index: u8,
        size: u64,
        offset: u64,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(), ChannelError> {
        let fd = fd.map(dup).transpose()?;
        self.send_plain(BackendRequest::VringHostNotifier {
            index,
            size,
            offset,
            fd,
        })
    }

    /// BACKEND_VRING_CALL (needs INBAND_NOTIFICATIONS): an in-band
    /// used-buffer notification for ring `index`.
    pub fn vring_call(&mut self, index: u32) -> Result<(), ChannelError> {
        self.send_plain(BackendRequest::VringCall { index })
    }

    /// BACKEND_VRING_ERR (needs INBAND_NOTIFICATIONS): an in-band error for
    /// ring `index`.
    pub fn vring_err(&mut self, index: u32) -> Result<(), ChannelError> {
        self.send_plain(BackendRequest::VringErr { index })
    }

    /// BACKEND_SHARED_OBJECT_ADD (needs SHARED_OBJECT).
    pub fn shared_object_add(&mut self, uuid: Uuid) -> Result<(), ChannelError> {
        self.send_plain(BackendRequest::SharedObjectAdd { uuid })
    }

    /// BACKEND_SHARED_OBJECT_REMOVE (needs SHARED_OBJECT).
    pub fn shared_object_remove(&mut self, uuid: Uuid) -> Result<(), ChannelError> {
        self.send_plain(BackendRequest::SharedObjectRemove { uuid })
    }

    /// BACKEND_SHARED_OBJECT_LOOKUP (needs SHARED_OBJECT): the object's
    /// dma-buf fd (`None` if the front-end answered success without one); a
    /// refusal is [`ChannelError::Refused`].
    pub fn shared_object_lookup(&mut self, uuid: Uuid) -> Result<Option<OwnedFd>, ChannelError> {
        self.send(BackendRequest::SharedObjectLookup { uuid })
    }

    /// BACKEND_SHMEM_MAP (needs SHMEM and BACKEND_SEND_FD): map
    /// `fd[map.fd_offset, map.len]` at `map.shm_offset` of region
    /// `map.shmid`.
    pub fn shmem_map(&mut self, map: ShmemMap, fd: BorrowedFd<'_>) -> Result<(), ChannelError> {
        let fd = dup(fd)?;
        self.send_plain(BackendRequest::ShmemMap { map, fd })
    }

    /// BACKEND_SHMEM_UNMAP (needs SHMEM): unmap one earlier mapping.
    pub fn shmem_unmap(&mut self, map: ShmemMap) -> Result<(), ChannelError> {
        self.send_plain(BackendRequest::ShmemUnmap { map })
    }
}

fn dup(fd: BorrowedFd<'_>) -> Result<OwnedFd, ChannelError> {
    fd.try_clone_to_owned()
        .map_err(|e| ChannelError::io("dup", e))
}
