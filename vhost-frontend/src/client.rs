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
use std::time::{Duration, Instant};

use vhost_proto::frontend::{Connection, Event, Reply};
use vhost_proto::session::{ApiError, Negotiated};
use vhost_proto::wire::{
    ConfigFlags, CryptoSession, DeviceStatus, FrontendReq, FrontendRequest, InflightDesc, IotlbMsg,
    LogDescription, MemoryRegion, MigrationPhase, ProtocolFeatures, RegionFd, ShmemConfig,
    TransferDirection, Uuid, VirtioFeatures, VringAddr, VringBase, VringEndian,
};

use crate::ClientError;
use vhost_backend::os::socket::{recv_with_fds, send_all_with_fds};

use super::channel::FrontendChannel;
/// How long a [`Frontend`] waits for a reply unless told otherwise (the
/// core's default deadline).
pub const DEFAULT_REPLY_TIMEOUT: Duration = vhost_proto::frontend::DEFAULT_REPLY_TIMEOUT;

/// A blocking vhost-user front-end: one method per request, each sending one
/// message and, where the request has a reply (or REPLY_ACK is negotiated,
/// in which case every request asks for an ack), waiting for it at most the
/// reply timeout. The deadlines are the core's
/// ([`Connection::poll_timeout`]): a request whose reply does not come in
/// time is [`ClientError::Timeout`] and the connection is closed (a late
/// reply would be taken for the next request's).
///
/// ```
/// use std::os::unix::net::UnixStream;
/// use std::sync::Arc;
/// use vhost_backend::{Device, Queue, QueueHandler, handler_fn};
/// use vhost_io_std::backend::Server;
/// use vhost_frontend::Frontend;
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
        Ok(Frontend {
            stream,
            conn: Connection::new(),
            buf: vec![0u8; 4096 + 64],
            features_read: false,
            protocol_read: false,
            shared: Arc::default(),
        })
    }

    /// Sets the reply timeout for requests sent from now on (`None`: wait
    /// forever).
    pub fn set_reply_timeout(&mut self, timeout: Option<Duration>) {
        self.conn.set_reply_timeout(timeout);
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

    /// The sans-IO session underneath.
    pub fn connection(&self) -> &Connection<OwnedFd> {
        &self.conn
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

    /// Sends a request through one of the session's typed helpers and waits
    /// for its completion: its typed reply, [`Reply::Ack`] when acked or
    /// when there is nothing to wait for.
    fn call(
        &mut self,
        request: FrontendReq,
        send: impl FnOnce(
            &mut Connection<OwnedFd>,
            Instant,
        ) -> Result<vhost_proto::frontend::RequestId, ApiError>,
    ) -> Result<Reply<OwnedFd>, ClientError> {
        let id = send(&mut self.conn, Instant::now())
            .map_err(|source| ClientError::NotSent { request, source })?;
        loop {
            self.flush(request)?;
            while let Some(event) = self.conn.poll_event() {
                if event.id() != Some(id) {
                    if let Event::ConnectionLost { error } = event {
                        return Err(ClientError::Protocol { request, error });
                    }
                    continue;
                }
                match event.into_reply() {
                    Ok((_, reply)) => return Ok(reply),
                    Err(Event::Nacked { value, .. }) => {
                        return Err(ClientError::Refused { request, value });
                    }
                    Err(Event::ReplyTimeout { .. }) => {
                        return Err(ClientError::Timeout { request });
                    }
                    Err(other) => return Err(bad(request, format!("unexpected {other:?}"))),
                }
            }
            if self.conn.is_idle() {
                // Sent, and nothing to wait for.
                return Ok(Reply::Ack);
            }
            self.read(request)?;
        }
    }

    fn send(&mut self, req: FrontendRequest<OwnedFd>) -> Result<Reply<OwnedFd>, ClientError> {
        self.call(req.code(), |c, now| c.send_at(now, req))
    }

    /// Sends `req` and expects nothing but an ack (or nothing at all).
    fn ack(&mut self, req: FrontendRequest<OwnedFd>) -> Result<(), ClientError> {
        let code = req.code();
        match self.send(req)? {
            Reply::Ack => Ok(()),
            other => Err(bad(code, format!("expected an ack, got {other:?}"))),
        }
    }

    /// One `recvmsg`, fed to the session, waiting at most until the
    /// session's reply deadline (then the session times the request out).
    fn read(&mut self, request: FrontendReq) -> Result<(), ClientError> {
        let wait = self.conn.poll_timeout().map(|d| {
            d.saturating_duration_since(Instant::now())
                // SO_RCVTIMEO of 0 means "forever": wait the shortest instead.
                .max(Duration::from_millis(1))
        });
        self.stream
            .set_read_timeout(wait)
            .map_err(|source| ClientError::Io {
                request,
                op: "setsockopt",
                source,
            })?;
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
                // Fires the deadline if it passed (the caller sees the
                // ReplyTimeout event); a early wake-up just reads again.
                self.conn.handle_timeout(Instant::now());
                return Ok(());
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

    /// GET_FEATURES.
    pub fn get_features(&mut self) -> Result<VirtioFeatures, ClientError> {
        let code = FrontendReq::GetFeatures;
        match self.call(code, |c, t| c.get_features(t))? {
            Reply::Features(f) => {
                self.features_read = true;
                Ok(f)
            }
            other => Err(unexpected(code, other)),
        }
    }

    /// SET_FEATURES: a subset of the offer (read with GET_FEATURES first if
    /// it was not yet; features not offered are refused before sending).
    pub fn set_features(&mut self, features: VirtioFeatures) -> Result<(), ClientError> {
        if !self.features_read {
            self.get_features()?;
        }
        let r = self.ack(FrontendRequest::SetFeatures { features });
        self.share();
        r
    }

    /// SET_OWNER.
    pub fn set_owner(&mut self) -> Result<(), ClientError> {
        self.ack(FrontendRequest::SetOwner)
    }

    /// RESET_OWNER (deprecated by the spec; prefer
    /// [`reset_device`](Self::reset_device)).
    pub fn reset_owner(&mut self) -> Result<(), ClientError> {
        self.ack(FrontendRequest::ResetOwner)
    }

    /// GET_PROTOCOL_FEATURES.
    pub fn get_protocol_features(&mut self) -> Result<ProtocolFeatures, ClientError> {
        let code = FrontendReq::GetProtocolFeatures;
        match self.call(code, |c, t| c.get_protocol_features(t))? {
            Reply::ProtocolFeatures(f) => {
                self.protocol_read = true;
                Ok(f)
            }
            other => Err(unexpected(code, other)),
        }
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
        let r = self.ack(FrontendRequest::SetProtocolFeatures { features });
        self.share();
        r
    }

    /// GET_QUEUE_NUM (needs MQ).
    pub fn get_queue_num(&mut self) -> Result<u64, ClientError> {
        let code = FrontendReq::GetQueueNum;
        match self.call(code, |c, t| c.get_queue_num(t))? {
            Reply::QueueNum(n) => Ok(n),
            other => Err(unexpected(code, other)),
        }
    }

    /// GET_MAX_MEM_SLOTS (needs CONFIGURE_MEM_SLOTS).
    pub fn get_max_mem_slots(&mut self) -> Result<u64, ClientError> {
        let code = FrontendReq::GetMaxMemSlots;
        match self.call(code, |c, t| c.get_max_mem_slots(t))? {
            Reply::MaxMemSlots(n) => Ok(n),
            other => Err(unexpected(code, other)),
        }
    }

    /// SET_MEM_TABLE: the whole memory map, one fd per region (at most 8;
    /// [`GuestRam::mem_table`](super::GuestRam::mem_table) gives them).
    /// While postcopy listens the back-end answers with its mapping
    /// addresses (`Some`), to be acknowledged with
    /// [`set_mem_table_postcopy_ack`](Self::set_mem_table_postcopy_ack).
    pub fn set_mem_table(
        &mut self,
        regions: &[(MemoryRegion, BorrowedFd<'_>)],
    ) -> Result<Option<Vec<MemoryRegion>>, ClientError> {
        let code = FrontendReq::SetMemTable;
        let regions = regions
            .iter()
            .map(|(region, fd)| {
                Ok(RegionFd {
                    region: *region,
                    fd: dup(code, *fd)?,
                })
            })
            .collect::<Result<_, ClientError>>()?;
        match self.call(code, |c, t| c.set_mem_table(t, regions))? {
            Reply::Ack => Ok(None),
            Reply::PostcopyMemTable(r) => Ok(Some(r)),
            other => Err(unexpected(code, other)),
        }
    }

    /// SET_MEM_TABLE's postcopy acknowledgement (0 = the VMM registered the
    /// back-end's addresses, spec §7.7).
    pub fn set_mem_table_postcopy_ack(&mut self, value: u64) -> Result<(), ClientError> {
        self.ack(FrontendRequest::SetMemTablePostcopyAck { value })
    }

    /// ADD_MEM_REG (needs CONFIGURE_MEM_SLOTS); while postcopy listens the
    /// back-end's mapping address (`Some`), to be acknowledged with
    /// [`add_mem_reg_postcopy_ack`](Self::add_mem_reg_postcopy_ack).
    pub fn add_mem_reg(
        &mut self,
        region: MemoryRegion,
        fd: BorrowedFd<'_>,
    ) -> Result<Option<MemoryRegion>, ClientError> {
        let code = FrontendReq::AddMemReg;
        let region = RegionFd {
            region,
            fd: dup(code, fd)?,
        };
        match self.call(code, |c, t| c.add_mem_reg(t, region))? {
            Reply::Ack => Ok(None),
            Reply::PostcopyRegion(r) => Ok(Some(r)),
            other => Err(unexpected(code, other)),
        }
    }

    /// ADD_MEM_REG's postcopy acknowledgement (spec §7.7).
    pub fn add_mem_reg_postcopy_ack(&mut self, value: u64) -> Result<(), ClientError> {
        self.ack(FrontendRequest::AddMemRegPostcopyAck { value })
    }

    /// REM_MEM_REG (needs CONFIGURE_MEM_SLOTS).
    pub fn rem_mem_reg(&mut self, region: MemoryRegion) -> Result<(), ClientError> {
        self.ack(FrontendRequest::RemMemReg { region })
    }

    /// SET_LOG_BASE (needs LOG_SHMFD): the dirty log, `log.mmap_size` bytes
    /// of `fd` from `log.mmap_offset`. A non-zero status is
    /// [`ClientError::Refused`].
    pub fn set_log_base(
        &mut self,
        log: LogDescription,
        fd: BorrowedFd<'_>,
    ) -> Result<(), ClientError> {
        let code = FrontendReq::SetLogBase;
        let fd = dup(code, fd)?;
        match self.call(code, |c, t| c.set_log_base(t, log, fd))? {
            Reply::LogBase(None | Some(0)) | Reply::Ack => Ok(()),
            Reply::LogBase(Some(value)) => Err(ClientError::Refused {
                request: code,
                value,
            }),
            other => Err(unexpected(code, other)),
        }
    }

    /// SET_LOG_FD: the eventfd the back-end signals after log writes.
    pub fn set_log_fd(&mut self, fd: BorrowedFd<'_>) -> Result<(), ClientError> {
        let fd = dup(FrontendReq::SetLogFd, fd)?;
        self.ack(FrontendRequest::SetLogFd { fd })
    }

    /// SET_VRING_NUM.
    pub fn set_vring_num(&mut self, index: u16, num: u16) -> Result<(), ClientError> {
        let code = FrontendReq::SetVringNum;
        let r = self.call(code, |c, t| c.set_vring_num(t, index, num))?;
        expect_ack(code, r)
    }

    /// SET_VRING_ADDR (user addresses, see
    /// [`GuestRam::vring_addr`](super::GuestRam::vring_addr); `addr.index`
    /// names the ring, at most `u16::MAX`).
    pub fn set_vring_addr(&mut self, addr: VringAddr) -> Result<(), ClientError> {
        let code = FrontendReq::SetVringAddr;
        let index = u16::try_from(addr.index).map_err(|_| ClientError::NotSent {
            request: code,
            source: ApiError::InvalidArgument {
                request: code.into(),
                reason: "vring index above 65535",
            },
        })?;
        let r = self.call(code, |c, t| c.set_vring_addr(t, index, addr))?;
        expect_ack(code, r)
    }

    /// SET_VRING_BASE.
    pub fn set_vring_base(&mut self, index: u16, base: VringBase) -> Result<(), ClientError> {
        let code = FrontendReq::SetVringBase;
        let r = self.call(code, |c, t| c.set_vring_base(t, index, base))?;
        expect_ack(code, r)
    }

    /// GET_VRING_BASE: stops the ring and returns its position.
    pub fn get_vring_base(&mut self, index: u16) -> Result<VringBase, ClientError> {
        let code = FrontendReq::GetVringBase;
        match self.call(code, |c, t| c.get_vring_base(t, index))? {
            Reply::VringBase { base, .. } => Ok(base),
            other => Err(unexpected(code, other)),
        }
    }

    /// SET_VRING_KICK (`None`: the no-fd flag, the back-end polls; index at
    /// most 255).
    pub fn set_vring_kick(
        &mut self,
        index: u16,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(), ClientError> {
        let code = FrontendReq::SetVringKick;
        let fd = fd.map(|f| dup(code, f)).transpose()?;
        let r = self.call(code, |c, t| c.set_vring_kick(t, index, fd))?;
        expect_ack(code, r)
    }

    /// SET_VRING_CALL (`None`: the no-fd flag, the front-end polls; index at
    /// most 255).
    pub fn set_vring_call(
        &mut self,
        index: u16,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(), ClientError> {
        let code = FrontendReq::SetVringCall;
        let fd = fd.map(|f| dup(code, f)).transpose()?;
        let r = self.call(code, |c, t| c.set_vring_call(t, index, fd))?;
        expect_ack(code, r)
    }

    /// SET_VRING_ERR (index at most 255).
    pub fn set_vring_err(
        &mut self,
        index: u16,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(), ClientError> {
        let code = FrontendReq::SetVringErr;
        let fd = fd.map(|f| dup(code, f)).transpose()?;
        let r = self.call(code, |c, t| c.set_vring_err(t, index, fd))?;
        expect_ack(code, r)
    }

    /// SET_VRING_ENABLE.
    pub fn set_vring_enable(&mut self, index: u16, enable: bool) -> Result<(), ClientError> {
        let code = FrontendReq::SetVringEnable;
        let r = self.call(code, |c, t| c.set_vring_enable(t, index, enable))?;
        expect_ack(code, r)
    }

    /// SET_VRING_ENDIAN (needs CROSS_ENDIAN): the byte order of a legacy
    /// ring.
    pub fn set_vring_endian(&mut self, index: u16, endian: VringEndian) -> Result<(), ClientError> {
        let code = FrontendReq::SetVringEndian;
        let r = self.call(code, |c, t| c.set_vring_endian(t, index, endian))?;
        expect_ack(code, r)
    }

    /// VRING_KICK (needs INBAND_NOTIFICATIONS): an in-band kick.
    pub fn vring_kick(&mut self, index: u16) -> Result<(), ClientError> {
        let code = FrontendReq::VringKick;
        let r = self.call(code, |c, t| c.vring_kick(t, index))?;
        expect_ack(code, r)
    }

    /// SEND_RARP (needs RARP): the guest's MAC, for the back-end to announce.
    pub fn send_rarp(&mut self, mac: [u8; 6]) -> Result<(), ClientError> {
        self.ack(FrontendRequest::SendRarp { mac })
    }

    /// NET_SET_MTU (needs MTU).
    pub fn net_set_mtu(&mut self, mtu: u64) -> Result<(), ClientError> {
        self.ack(FrontendRequest::NetSetMtu { mtu })
    }

    /// IOTLB_MSG (needs ACCESS_PLATFORM): an IOTLB update or invalidation.
    /// A non-zero status is [`ClientError::Refused`].
    pub fn iotlb_msg(&mut self, msg: IotlbMsg) -> Result<(), ClientError> {
        let code = FrontendReq::IotlbMsg;
        match self.call(code, |c, t| c.iotlb_msg(t, msg))? {
            Reply::Iotlb(0) => Ok(()),
            Reply::Iotlb(value) => Err(ClientError::Refused {
                request: code,
                value,
            }),
            other => Err(unexpected(code, other)),
        }
    }

    /// GET_CONFIG: `size` bytes of config space at `offset` (needs CONFIG).
    /// A zero-length reply (the back-end's refusal) is
    /// [`ClientError::Refused`].
    pub fn get_config(&mut self, offset: u32, size: u32) -> Result<Vec<u8>, ClientError> {
        let code = FrontendReq::GetConfig;
        match self.call(code, |c, t| {
            c.get_config(t, offset, size, ConfigFlags::Frontend)
        })? {
            Reply::Config { data, .. } => Ok(data),
            Reply::ConfigRefused => Err(ClientError::Refused {
                request: code,
                value: 0,
            }),
            other => Err(unexpected(code, other)),
        }
    }

    /// SET_CONFIG (needs CONFIG).
    pub fn set_config(&mut self, offset: u32, data: &[u8]) -> Result<(), ClientError> {
        self.ack(FrontendRequest::SetConfig {
            offset,
            flags: ConfigFlags::Frontend,
            data: data.to_vec(),
        })
    }

    /// CREATE_CRYPTO_SESSION (needs CRYPTO_SESSION): the session with the
    /// back-end's id filled in; a negative id is [`ClientError::Refused`].
    pub fn create_crypto_session(
        &mut self,
        session: CryptoSession,
    ) -> Result<CryptoSession, ClientError> {
        let code = FrontendReq::CreateCryptoSession;
        match self.call(code, |c, t| c.create_crypto_session(t, Box::new(session)))? {
            Reply::CryptoSession(s) if s.session_id() >= 0 => Ok(*s),
            Reply::CryptoSession(s) => Err(ClientError::Refused {
                request: code,
                value: s.session_id().unsigned_abs(),
            }),
            other => Err(unexpected(code, other)),
        }
    }

    /// CLOSE_CRYPTO_SESSION (needs CRYPTO_SESSION).
    pub fn close_crypto_session(&mut self, session_id: u64) -> Result<(), ClientError> {
        self.ack(FrontendRequest::CloseCryptoSession { session_id })
    }

    /// POSTCOPY_ADVISE (needs PAGEFAULT): the back-end's userfaultfd.
    pub fn postcopy_advise(&mut self) -> Result<OwnedFd, ClientError> {
        let code = FrontendReq::PostcopyAdvise;
        match self.call(code, |c, t| c.postcopy_advise(t))? {
            Reply::Userfaultfd(fd) => Ok(fd),
            other => Err(unexpected(code, other)),
        }
    }

    /// POSTCOPY_LISTEN (needs PAGEFAULT; always acked).
    pub fn postcopy_listen(&mut self) -> Result<(), ClientError> {
        self.ack(FrontendRequest::PostcopyListen)
    }

    /// POSTCOPY_END (needs PAGEFAULT). A non-zero status is
    /// [`ClientError::Refused`].
    pub fn postcopy_end(&mut self) -> Result<(), ClientError> {
        let code = FrontendReq::PostcopyEnd;
        match self.call(code, |c, t| c.postcopy_end(t))? {
            Reply::PostcopyEnd(0) => Ok(()),
            Reply::PostcopyEnd(value) => Err(ClientError::Refused {
                request: code,
                value,
            }),
            other => Err(unexpected(code, other)),
        }
    }

    /// SET_STATUS (needs STATUS).
    pub fn set_status(&mut self, status: DeviceStatus) -> Result<(), ClientError> {
        self.ack(FrontendRequest::SetStatus { status })
    }

    /// GET_STATUS (needs STATUS).
    pub fn get_status(&mut self) -> Result<DeviceStatus, ClientError> {
        let code = FrontendReq::GetStatus;
        match self.call(code, |c, t| c.get_status(t))? {
            Reply::Status(s) => Ok(s),
            other => Err(unexpected(code, other)),
        }
    }

    /// RESET_DEVICE (needs RESET_DEVICE).
    pub fn reset_device(&mut self) -> Result<(), ClientError> {
        self.ack(FrontendRequest::ResetDevice)
    }

    /// GET_INFLIGHT_FD: the back-end's inflight buffer for `num_queues` ×
    /// `queue_size` (needs INFLIGHT_SHMFD). `None` if it has none to give.
    pub fn get_inflight_fd(
        &mut self,
        num_queues: u16,
        queue_size: u16,
    ) -> Result<Option<(InflightDesc, OwnedFd)>, ClientError> {
        let code = FrontendReq::GetInflightFd;
        match self.call(code, |c, t| c.get_inflight_fd(t, num_queues, queue_size))? {
            Reply::Inflight { desc, fd } => Ok(Some((desc, fd))),
            Reply::NoInflight { .. } => Ok(None),
            other => Err(unexpected(code, other)),
        }
    }

    /// SET_INFLIGHT_FD (needs INFLIGHT_SHMFD).
    pub fn set_inflight_fd(
        &mut self,
        desc: InflightDesc,
        fd: BorrowedFd<'_>,
    ) -> Result<(), ClientError> {
        let fd = dup(FrontendReq::SetInflightFd, fd)?;
        self.ack(FrontendRequest::SetInflightFd { desc, fd })
    }

    /// GPU_SET_SOCKET: the vhost-user-gpu socket (the device decides whether
    /// it takes one).
    pub fn gpu_set_socket(&mut self, fd: BorrowedFd<'_>) -> Result<(), ClientError> {
        let fd = dup(FrontendReq::GpuSetSocket, fd)?;
        self.ack(FrontendRequest::GpuSetSocket { fd })
    }

    /// GET_SHARED_OBJECT (needs SHARED_OBJECT): the object's dma-buf fd,
    /// `None` if the back-end has no such object.
    pub fn get_shared_object(&mut self, uuid: Uuid) -> Result<Option<OwnedFd>, ClientError> {
        let code = FrontendReq::GetSharedObject;
        match self.call(code, |c, t| c.get_shared_object(t, uuid))? {
            Reply::SharedObject(fd) => Ok(fd),
            other => Err(unexpected(code, other)),
        }
    }

    /// SET_DEVICE_STATE_FD (needs DEVICE_STATE): hands over this end of the
    /// state-transfer pipe; returns the back-end's own end if it gives one
    /// (then use that instead). A non-zero status is
    /// [`ClientError::Refused`].
    pub fn set_device_state_fd(
        &mut self,
        direction: TransferDirection,
        phase: MigrationPhase,
        fd: BorrowedFd<'_>,
    ) -> Result<Option<OwnedFd>, ClientError> {
        let code = FrontendReq::SetDeviceStateFd;
        let fd = dup(code, fd)?;
        match self.call(code, |c, t| c.set_device_state_fd(t, direction, phase, fd))? {
            Reply::DeviceStateFd { status: 0, fd } => Ok(fd),
            Reply::DeviceStateFd { status, .. } => Err(ClientError::Refused {
                request: code,
                value: status.into(),
            }),
            other => Err(unexpected(code, other)),
        }
    }

    /// CHECK_DEVICE_STATE (needs DEVICE_STATE): whether the state transfer
    /// succeeded; a non-zero status is [`ClientError::Refused`].
    pub fn check_device_state(&mut self) -> Result<(), ClientError> {
        let code = FrontendReq::CheckDeviceState;
        match self.call(code, |c, t| c.check_device_state(t))? {
            Reply::DeviceState(0) => Ok(()),
            Reply::DeviceState(value) => Err(ClientError::Refused {
                request: code,
                value,
            }),
            other => Err(unexpected(code, other)),
        }
    }

    /// GET_SHMEM_CONFIG (needs SHMEM): the sizes of the VIRTIO Shared Memory
    /// Regions.
    pub fn get_shmem_config(&mut self) -> Result<ShmemConfig, ClientError> {
        let code = FrontendReq::GetShmemConfig;
        match self.call(code, |c, t| c.get_shmem_config(t))? {
            Reply::ShmemConfig(c) => Ok(*c),
            other => Err(unexpected(code, other)),
        }
    }

    /// SET_BACKEND_REQ_FD with a socket of the caller's (see
    /// [`open_backend_channel`](Self::open_backend_channel) for one made
    /// and served here).
    pub fn set_backend_req_fd(&mut self, fd: BorrowedFd<'_>) -> Result<(), ClientError> {
        let fd = dup(FrontendReq::SetBackendReqFd, fd)?;
        let r = self.ack(FrontendRequest::SetBackendReqFd { fd });
        self.share();
        r
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
        self.ack(FrontendRequest::SetBackendReqFd {
            fd: OwnedFd::from(theirs),
        })?;
        self.share();
        Ok(FrontendChannel::following(ours, Arc::clone(&self.shared)))
    }

    /// Waits until the back-end has processed every request sent so far.
    /// Under REPLY_ACK each request was acked already; without it this is a
    /// GET_FEATURES round trip: a back-end answers requests in order, so its
    /// reply means the earlier ones were handled.
    pub fn sync(&mut self) -> Result<(), ClientError> {
        if self.reply_ack() {
            Ok(())
        } else {
            self.get_features().map(drop)
        }
    }

    /// Starts `ring` at the position it was built at
    /// ([`DriverRing::base`](super::DriverRing::base)); see
    /// [`start_ring_at`](Self::start_ring_at).
    pub fn start_ring(
        &mut self,
        ring: &super::DriverRing,
        ram: &super::GuestRam,
    ) -> Result<(), ClientError> {
        self.start_ring_at(ring, ram, ring.base())
    }

    /// Tells the back-end about `ring` and starts it at `base`, in the order
    /// QEMU's `vhost_virtqueue_start` + `vhost_dev_start` use
    /// (qemu/qemu `hw/virtio/vhost.c`): SET_VRING_NUM, SET_VRING_BASE,
    /// SET_VRING_ADDR, (SET_VRING_ERR, which QEMU does not send, before the
    /// ring starts,) SET_VRING_KICK, SET_VRING_CALL, and SET_VRING_ENABLE when PROTOCOL_FEATURES was acked (without it a
    /// ring is enabled as it starts). Then it synchronises
    /// ([`sync`](Self::sync)): when it returns, the back-end has processed
    /// every one of these requests, so a buffer kicked afterwards is seen.
    ///
    /// Why the round trip without REPLY_ACK: nothing else says the back-end
    /// read the requests, and rust-vmm's vhost-user-backend 0.10 drops a
    /// kick it reads from the kick eventfd before it processed
    /// SET_VRING_ENABLE, so a driver that kicks right after sending the
    /// start requests can hang.
    ///
    /// The ring is checked against the negotiation first
    /// ([`DriverRing::check`](super::DriverRing::check)).
    pub fn start_ring_at(
        &mut self,
        ring: &super::DriverRing,
        ram: &super::GuestRam,
        base: VringBase,
    ) -> Result<(), ClientError> {
        ring.check(self.negotiated())?;
        let i = ring.index();
        let addr = ram
            .vring_addr(i, ring.config())
            .ok_or(ClientError::RingMismatch {
                index: i,
                reason: "ring outside guest memory",
            })?;
        self.set_vring_num(i, ring.size())?;
        self.set_vring_base(i, base)?;
        self.set_vring_addr(addr)?;
        // QEMU does not send SET_VRING_ERR when it starts a ring; it goes before the kick
        // here, while the ring is not started yet (a back-end may stop a running ring's
        // worker to swap it).
        self.set_vring_err(i, Some(ring.err_fd()))?;
        self.set_vring_kick(i, Some(ring.kick_fd()))?;
        self.set_vring_call(i, Some(ring.call_fd()))?;
        if self
            .negotiated()
            .features
            .contains(VirtioFeatures::PROTOCOL_FEATURES)
        {
            self.set_vring_enable(i, true)?;
        }
        self.sync()
    }
}

impl Frontend {
    /// Restarts a ring this back-end stopped (GET_VRING_BASE) at `base`,
    /// its size and addresses unchanged: SET_VRING_BASE, SET_VRING_KICK,
    /// SET_VRING_CALL, SET_VRING_ENABLE (with PROTOCOL_FEATURES), then
    /// [`sync`](Self::sync). A new back-end needs
    /// [`start_ring_at`](Self::start_ring_at) instead.
    pub fn restart_ring(
        &mut self,
        ring: &super::DriverRing,
        base: VringBase,
    ) -> Result<(), ClientError> {
        ring.check(self.negotiated())?;
        let i = ring.index();
        self.set_vring_base(i, base)?;
        self.set_vring_kick(i, Some(ring.kick_fd()))?;
        self.set_vring_call(i, Some(ring.call_fd()))?;
        if self
            .negotiated()
            .features
            .contains(VirtioFeatures::PROTOCOL_FEATURES)
        {
            self.set_vring_enable(i, true)?;
        }
        self.sync()
    }
}

fn expect_ack(request: FrontendReq, reply: Reply<OwnedFd>) -> Result<(), ClientError> {
    match reply {
        Reply::Ack => Ok(()),
        other => Err(unexpected(request, other)),
    }
}

fn unexpected(request: FrontendReq, reply: Reply<OwnedFd>) -> ClientError {
    bad(request, format!("unexpected reply {reply:?}"))
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
