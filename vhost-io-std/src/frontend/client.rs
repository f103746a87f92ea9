//! A blocking front-end client over `vhost_proto::frontend::Connection`.
//!
//! The session owns the protocol state: it checks each request against what
//! was negotiated, sets NEED_REPLY under REPLY_ACK, matches each reply to its
//! request and validates it (a hostile reply is a fatal error). This file
//! only moves bytes: one `sendmsg` per message, one `recvmsg` per reply.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use vhost_proto::frontend::{Connection, Event};
use vhost_proto::session::Negotiated;
use vhost_proto::wire::{
    ConfigFlags, DeviceStatus, FrontendReply, FrontendReq, FrontendRequest, InflightDesc,
    MemoryRegion, ProtocolFeatures, RegionFd, VirtioFeatures, VringAddr, VringBase,
};

use crate::ClientError;
use crate::os::socket::{recv_with_fds, send_all_with_fds};

use super::channel::FrontendChannel;
/// How long a [`Frontend`] waits for a reply unless told otherwise.
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// A blocking vhost-user front-end: one method per request, each sending one
/// message and, where the request has a reply (or REPLY_ACK is negotiated,
/// in which case every request asks for an ack), waiting for it at most the
/// reply timeout.
///
/// ```
/// use std::os::unix::net::UnixStream;
/// use std::sync::Arc;
/// use vhost_backend::{Device, Queue, QueueHandler, handler_fn};
/// use vhost_io_std::backend::Server;
/// use vhost_io_std::frontend::Frontend;
/// use vhost_proto::backend::{DeviceDescription, Refused};
/// use vhost_proto::wire::{ProtocolFeatures, VirtioFeatures};
///
/// struct Sink;
/// impl Device for Sink {
///     fn description(&self) -> DeviceDescription {
///         DeviceDescription::new(VirtioFeatures::VERSION_1, ProtocolFeatures::REPLY_ACK | ProtocolFeatures::MQ, 4)
///     }
///     fn start_queue(self: Arc<Self>, _: &Queue) -> Result<Box<dyn QueueHandler>, Refused> {
///         Ok(Box::new(handler_fn(|q: &mut Queue| {
///             while let Some(c) = q.pop()? { q.complete(c, 0)?; }
///             Ok(())
///         })))
///     }
/// }
///
/// let (front_sock, back_sock) = UnixStream::pair()?;
/// let server = Server::from_stream(back_sock, Sink)?.spawn()?;
/// let mut front = Frontend::from_stream(front_sock)?;
/// let features = front.get_features()?;
/// let protocol = front.get_protocol_features()?;
/// front.set_protocol_features(protocol)?; // REPLY_ACK on: every request is acked from now on
/// front.set_owner()?;
/// assert_eq!(front.get_queue_num()?, 4);
/// front.set_features(features)?;
/// assert!(front.set_vring_num(9, 256).is_err()); // out of range: NACKed, the session goes on
/// front.set_vring_num(0, 256)?;
/// drop(front);
/// server.join()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Frontend {
    stream: UnixStream,
    conn: Connection<OwnedFd>,
    buf: Vec<u8>,
    /// GET_FEATURES / GET_PROTOCOL_FEATURES answered: the session checks
    /// SET_FEATURES / SET_PROTOCOL_FEATURES against the offer.
    features_read: bool,
    protocol_read: bool,
    /// The negotiation, shared with the back-end channels this opened.
    shared: Arc<Mutex<Negotiated>>,
}

impl Frontend {
    /// Connects to a back-end listening on `path`.
    pub fn connect(path: impl AsRef<Path>) -> io::Result<Self> {
        Self::from_stream(UnixStream::connect(path)?)
    }

    /// Accepts one back-end connection on `listener` (the front-end as the
    /// listening side, QEMU's `server=on`).
    pub fn accept(listener: &UnixListener) -> io::Result<Self> {
        let (stream, _) = listener.accept()?;
        Self::from_stream(stream)
    }

    /// Uses a connected socket; replies are waited for at most
    /// [`DEFAULT_REPLY_TIMEOUT`].
    pub fn from_stream(stream: UnixStream) -> io::Result<Self> {
        stream.set_read_timeout(Some(DEFAULT_REPLY_TIMEOUT))?;
        Ok(Frontend {
            stream,
            conn: Connection::new(),
            buf: vec![0u8; 4096 + 64],
            features_read: false,
            protocol_read: false,
            shared: Arc::default(),
        })
    }

    /// Sets the reply timeout (`None`: wait forever).
    pub fn set_reply_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.stream.set_read_timeout(timeout)
    }

    /// The socket.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Whether REPLY_ACK was negotiated (every request then waits for an ack).
    pub fn reply_ack(&self) -> bool {
        self.conn.negotiated().reply_ack()
    }

    /// What was offered and negotiated so far (the session's record).
    pub fn negotiated(&self) -> &Negotiated {
        self.conn.negotiated()
    }

    /// Publishes the session's negotiation to the channels this opened.
    fn share(&self) {
        *self.shared.lock().unwrap_or_else(PoisonError::into_inner) = *self.conn.negotiated();
    }

    /// Writes every message the session has ready, one `sendmsg` each.
    fn flush(&mut self, request: FrontendReq) -> Result<(), ClientError> {
        while let Some(t) = self.conn.poll_transmit() {
            let fds: Vec<BorrowedFd<'_>> = t.fds.iter().map(AsFd::as_fd).collect();
            send_all_with_fds(&self.stream, &t.bytes, &fds).map_err(|source| {
                match source.kind() {
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => {
                        ClientError::Disconnected { request }
                    }
                    _ => ClientError::Io {
                        request,
                        op: "sendmsg",
                        source,
                    },
                }
            })?;
        }
        Ok(())
    }

    /// Sends `req` through the session; waits for its reply or ack when
    /// there is one (`None`: acked, or nothing to wait for).
    fn call(
        &mut self,
        req: FrontendRequest<OwnedFd>,
    ) -> Result<Option<FrontendReply<OwnedFd>>, ClientError> {
        let request = req.code();
        let id = self
            .conn
            .send(req)
            .map_err(|source| ClientError::NotSent { request, source })?;
        loop {
            self.flush(request)?;
            while let Some(event) = self.conn.poll_event() {
                match event {
                    Event::Reply { id: got, reply, .. } if got == id => return Ok(Some(reply)),
                    Event::Acked { id: got, .. } if got == id => return Ok(None),
                    Event::Nacked { id: got, value, .. } if got == id => {
                        return Err(ClientError::Refused { request, value });
                    }
                    Event::ConnectionLost { error } => {
                        return Err(ClientError::Protocol { request, error });
                    }
                    // The late completion of a request that timed out.
                    _ => {}
                }
            }
            if self.conn.is_idle() {
                // Sent, and nothing to wait for.
                return Ok(None);
            }
            self.read(request)?;
        }
    }

    /// One `recvmsg`, fed to the session.
    fn read(&mut self, request: FrontendReq) -> Result<(), ClientError> {
        let mut fds = Vec::new();
        let room = self.conn.input_room().clamp(1, self.buf.len());
        let buf = self.buf.get_mut(..room).unwrap_or_default();
        let n = match recv_with_fds(&self.stream, buf, &mut fds) {
            Ok(0) => return Err(ClientError::Disconnected { request }),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ClientError::Timeout { request });
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                return Err(ClientError::Disconnected { request });
            }
            Err(source) => {
                return Err(ClientError::Io {
                    request,
                    op: "recvmsg",
                    source,
                });
            }
        };
        let bytes = self.buf.get(..n).unwrap_or_default();
        self.conn
            .handle_input(bytes, fds)
            .map_err(|error| ClientError::Protocol { request, error })
    }

    fn u64_reply(&mut self, req: FrontendRequest<OwnedFd>) -> Result<u64, ClientError> {
        let code = req.code();
        match self.call(req)? {
            Some(FrontendReply::U64 { value }) => Ok(value),
            other => Err(bad(code, format!("expected a u64, got {other:?}"))),
        }
    }

    /// GET_FEATURES.
    pub fn get_features(&mut self) -> Result<VirtioFeatures, ClientError> {
        let f = self
            .u64_reply(FrontendRequest::GetFeatures)
            .map(VirtioFeatures::from_bits_retain)?;
        self.features_read = true;
        Ok(f)
    }

    /// SET_FEATURES: a subset of the offer (read with GET_FEATURES first if
    /// it was not yet; features not offered are refused before sending).
    pub fn set_features(&mut self, features: VirtioFeatures) -> Result<(), ClientError> {
        if !self.features_read {
            self.get_features()?;
        }
        let r = self.call(FrontendRequest::SetFeatures { features });
        self.share();
        r.map(drop)
    }

    /// SET_OWNER.
    pub fn set_owner(&mut self) -> Result<(), ClientError> {
        self.call(FrontendRequest::SetOwner).map(drop)
    }

    /// GET_PROTOCOL_FEATURES.
    pub fn get_protocol_features(&mut self) -> Result<ProtocolFeatures, ClientError> {
        let f = self
            .u64_reply(FrontendRequest::GetProtocolFeatures)
            .map(ProtocolFeatures::from_bits_retain)?;
        self.protocol_read = true;
        Ok(f)
    }

    /// SET_PROTOCOL_FEATURES: a subset of the offer, with its dependencies
    /// (read with GET_PROTOCOL_FEATURES first if it was not yet). With
    /// REPLY_ACK in `features`, every later request waits for the back-end's
    /// ack (and this one is not acked: the back-end learns about REPLY_ACK
    /// from it).
    pub fn set_protocol_features(&mut self, features: ProtocolFeatures) -> Result<(), ClientError> {
        if !self.protocol_read {
            self.get_protocol_features()?;
        }
        let r = self.call(FrontendRequest::SetProtocolFeatures { features });
        self.share();
        r.map(drop)
    }

    /// GET_QUEUE_NUM (needs MQ).
    pub fn get_queue_num(&mut self) -> Result<u64, ClientError> {
        self.u64_reply(FrontendRequest::GetQueueNum)
    }

    /// GET_MAX_MEM_SLOTS (needs CONFIGURE_MEM_SLOTS).
    pub fn get_max_mem_slots(&mut self) -> Result<u64, ClientError> {
        self.u64_reply(FrontendRequest::GetMaxMemSlots)
    }

    /// SET_MEM_TABLE: the whole memory map, one fd per region (at most 8).
    pub fn set_mem_table(
        &mut self,
        regions: &[(MemoryRegion, BorrowedFd<'_>)],
    ) -> Result<(), ClientError> {
        let regions = regions
            .iter()
            .map(|(region, fd)| {
                Ok(RegionFd {
                    region: *region,
                    fd: dup(FrontendReq::SetMemTable, *fd)?,
                })
            })
            .collect::<Result<_, ClientError>>()?;
        self.call(FrontendRequest::SetMemTable { regions })
            .map(drop)
    }

    /// ADD_MEM_REG (needs CONFIGURE_MEM_SLOTS).
    pub fn add_mem_reg(
        &mut self,
        region: MemoryRegion,
        fd: BorrowedFd<'_>,
    ) -> Result<(), ClientError> {
        self.call(FrontendRequest::AddMemReg {
            region: RegionFd {
                region,
                fd: dup(FrontendReq::AddMemReg, fd)?,
            },
        })
        .map(drop)
    }

    /// REM_MEM_REG (needs CONFIGURE_MEM_SLOTS).
    pub fn rem_mem_reg(&mut self, region: MemoryRegion) -> Result<(), ClientError> {
        self.call(FrontendRequest::RemMemReg { region }).map(drop)
    }

    /// SET_VRING_NUM.
    pub fn set_vring_num(&mut self, index: u32, num: u32) -> Result<(), ClientError> {
        self.call(FrontendRequest::SetVringNum { index, num })
            .map(drop)
    }

    /// SET_VRING_ADDR (user addresses, see
    /// [`GuestRam::vring_addr`](super::GuestRam::vring_addr)).
    pub fn set_vring_addr(&mut self, addr: VringAddr) -> Result<(), ClientError> {
        self.call(FrontendRequest::SetVringAddr { addr }).map(drop)
    }

    /// SET_VRING_BASE.
    pub fn set_vring_base(&mut self, index: u32, base: VringBase) -> Result<(), ClientError> {
        self.call(FrontendRequest::SetVringBase { index, base })
            .map(drop)
    }

    /// GET_VRING_BASE: stops the ring and returns its position.
    pub fn get_vring_base(&mut self, index: u32) -> Result<VringBase, ClientError> {
        match self.call(FrontendRequest::GetVringBase { index })? {
            Some(FrontendReply::VringBase { base, .. }) => Ok(base),
            other => Err(bad(
                FrontendReq::GetVringBase,
                format!("expected a vring base, got {other:?}"),
            )),
        }
    }

    /// SET_VRING_KICK (`None`: the no-fd flag, the back-end polls).
    pub fn set_vring_kick(
        &mut self,
        index: u8,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(), ClientError> {
        let fd = fd.map(|f| dup(FrontendReq::SetVringKick, f)).transpose()?;
        self.call(FrontendRequest::SetVringKick { index, fd })
            .map(drop)
    }

    /// SET_VRING_CALL (`None`: the no-fd flag, the front-end polls).
    pub fn set_vring_call(
        &mut self,
        index: u8,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(), ClientError> {
        let fd = fd.map(|f| dup(FrontendReq::SetVringCall, f)).transpose()?;
        self.call(FrontendRequest::SetVringCall { index, fd })
            .map(drop)
    }

    /// SET_VRING_ERR.
    pub fn set_vring_err(
        &mut self,
        index: u8,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(), ClientError> {
        let fd = fd.map(|f| dup(FrontendReq::SetVringErr, f)).transpose()?;
        self.call(FrontendRequest::SetVringErr { index, fd })
            .map(drop)
    }

    /// SET_VRING_ENABLE.
    pub fn set_vring_enable(&mut self, index: u32, enable: bool) -> Result<(), ClientError> {
        self.call(FrontendRequest::SetVringEnable { index, enable })
            .map(drop)
    }

    /// GET_CONFIG: `size` bytes of config space at `offset` (needs CONFIG).
    /// A zero-length reply (the back-end's refusal) is
    /// [`ClientError::Refused`].
    pub fn get_config(&mut self, offset: u32, size: u32) -> Result<Vec<u8>, ClientError> {
        let code = FrontendReq::GetConfig;
        match self.call(FrontendRequest::GetConfig {
            offset,
            size,
            flags: ConfigFlags::Frontend,
        })? {
            Some(FrontendReply::Config { data, .. }) if data.len() == size as usize => Ok(data),
            Some(FrontendReply::Config { .. } | FrontendReply::Empty) => {
                Err(ClientError::Refused {
                    request: code,
                    value: 0,
                })
            }
            other => Err(bad(code, format!("expected config bytes, got {other:?}"))),
        }
    }

    /// SET_CONFIG (needs CONFIG).
    pub fn set_config(&mut self, offset: u32, data: &[u8]) -> Result<(), ClientError> {
        let data = data.to_vec();
        self.call(FrontendRequest::SetConfig {
            offset,
            flags: ConfigFlags::Frontend,
            data,
        })
        .map(drop)
    }

    /// SET_STATUS (needs STATUS).
    pub fn set_status(&mut self, status: DeviceStatus) -> Result<(), ClientError> {
        self.call(FrontendRequest::SetStatus { status }).map(drop)
    }

    /// GET_STATUS (needs STATUS).
    pub fn get_status(&mut self) -> Result<DeviceStatus, ClientError> {
        let v = self.u64_reply(FrontendRequest::GetStatus)?;
        let byte = u8::try_from(v).map_err(|_| {
            bad(
                FrontendReq::GetStatus,
                format!("status {v:#x} is not a byte"),
            )
        })?;
        Ok(DeviceStatus::from_bits_retain(byte))
    }

    /// RESET_DEVICE (needs RESET_DEVICE).
    pub fn reset_device(&mut self) -> Result<(), ClientError> {
        self.call(FrontendRequest::ResetDevice).map(drop)
    }

    /// GET_INFLIGHT_FD: the back-end's inflight buffer for `num_queues` ×
    /// `queue_size` (needs INFLIGHT_SHMFD). `None` if it has none to give.
    pub fn get_inflight_fd(
        &mut self,
        num_queues: u16,
        queue_size: u16,
    ) -> Result<Option<(InflightDesc, OwnedFd)>, ClientError> {
        let desc = InflightDesc {
            num_queues,
            queue_size,
            ..Default::default()
        };
        match self.call(FrontendRequest::GetInflightFd { desc })? {
            Some(FrontendReply::InflightFd { desc, fd: Some(fd) }) => Ok(Some((desc, fd))),
            Some(FrontendReply::InflightFd { fd: None, .. }) => Ok(None),
            other => Err(bad(
                FrontendReq::GetInflightFd,
                format!("expected an inflight reply, got {other:?}"),
            )),
        }
    }

    /// SET_INFLIGHT_FD (needs INFLIGHT_SHMFD).
    pub fn set_inflight_fd(
        &mut self,
        desc: InflightDesc,
        fd: BorrowedFd<'_>,
    ) -> Result<(), ClientError> {
        let fd = dup(FrontendReq::SetInflightFd, fd)?;
        self.call(FrontendRequest::SetInflightFd { desc, fd })
            .map(drop)
    }

    /// SET_BACKEND_REQ_FD: opens the back-end → front-end channel (needs
    /// BACKEND_REQ) and returns this side of it: a [`FrontendChannel`] that
    /// yields the back-end's requests, typed and checked against what was
    /// negotiated, and answers them.
    pub fn open_backend_channel(&mut self) -> Result<FrontendChannel, ClientError> {
        let code = FrontendReq::SetBackendReqFd;
        let (ours, theirs) = UnixStream::pair().map_err(|source| ClientError::Io {
            request: code,
            op: "socketpair",
            source,
        })?;
        self.call(FrontendRequest::SetBackendReqFd {
            fd: OwnedFd::from(theirs),
        })?;
        self.share();
        Ok(FrontendChannel::following(ours, Arc::clone(&self.shared)))
    }
}

/// An owned duplicate of `fd` for the session to send (closed once sent).
fn dup(request: FrontendReq, fd: BorrowedFd<'_>) -> Result<OwnedFd, ClientError> {
    fd.try_clone_to_owned().map_err(|source| ClientError::Io {
        request,
        op: "dup",
        source,
    })
}

fn bad(request: FrontendReq, reason: impl Into<String>) -> ClientError {
    ClientError::BadReply {
        request,
        reason: reason.into(),
    }
}
