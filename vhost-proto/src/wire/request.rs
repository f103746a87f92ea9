//! Typed front-end requests (spec §5): one variant per request, with its handles.

use zerocopy::IntoBytes;

use super::codes::FrontendReq;
use super::context::DecodeContext;
use super::encode::{Encoded, Frame};
use super::error::{DecodeError, EncodeError, PayloadError};
use super::flags::{
    ConfigFlags, DeviceStatus, MigrationPhase, ProtocolFeatures, TransferDirection, VirtioFeatures,
    VringEndian,
};
use super::header::HeaderFlags;
use super::layout::{
    CryptoSessionRaw, DeviceStateParamsRaw, InflightDescRaw, IotlbMsgRaw, LogDescriptionRaw,
    MAX_CONFIG_SIZE, SharedObjectRaw, SingleRegionHeaderRaw, U64Payload, VringAddrRaw,
    VringStateRaw,
};
use super::payload::{
    make_vring_index_word, read_config, read_mem_table, read_single_region, vring_index_word,
    write_config, write_mem_table, write_region,
};
use super::types::{
    CryptoSession, InflightDesc, IotlbMsg, LogDescription, MemoryRegion, RegionFd, Uuid, VringAddr,
    VringBase,
};

/// A request the front-end sends on the main socket (spec §5), decoded with its fd handles
/// of type `H`. Handles are owned: dropping the message drops (closes) them.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrontendRequest<H> {
    /// GET_FEATURES (1): read the virtio features.
    GetFeatures,
    /// SET_FEATURES (2): the negotiated virtio features (unknown bits kept).
    SetFeatures {
        /// The features.
        features: VirtioFeatures,
    },
    /// SET_OWNER (3): session start.
    SetOwner,
    /// RESET_OWNER (4): deprecated.
    ResetOwner,
    /// SET_MEM_TABLE (5): the whole memory map, one fd per region (at most 8; may be empty).
    SetMemTable {
        /// The regions with their fds, in wire order.
        regions: Vec<RegionFd<H>>,
    },
    /// SET_MEM_TABLE (5) with an 8-byte u64 payload while postcopy is listening: the front-end's
    /// acknowledgement of the back-end's memory-table reply (spec §7.7; 0 = OK).
    SetMemTablePostcopyAck {
        /// The ack value.
        value: u64,
    },
    /// SET_LOG_BASE (6): the dirty-log area; `fd` is `Some` exactly when LOG_SHMFD is negotiated.
    SetLogBase {
        /// Size and offset.
        log: LogDescription,
        /// The log shm fd.
        fd: Option<H>,
    },
    /// SET_LOG_FD (7): eventfd signalled after log writes.
    SetLogFd {
        /// The eventfd.
        fd: H,
    },
    /// SET_VRING_NUM (8): queue size.
    SetVringNum {
        /// Vring index.
        index: u32,
        /// Queue size.
        num: u32,
    },
    /// SET_VRING_ADDR (9): ring addresses.
    SetVringAddr {
        /// The addresses.
        addr: VringAddr,
    },
    /// SET_VRING_BASE (10): ring position (split or packed; see [`VringBase`]).
    SetVringBase {
        /// Vring index.
        index: u32,
        /// The position.
        base: VringBase,
    },
    /// GET_VRING_BASE (11): stop the ring and return its position.
    GetVringBase {
        /// Vring index (the reserved `num` is ignored).
        index: u32,
    },
    /// SET_VRING_KICK (12): kick eventfd; `None` ⇔ the no-fd bit (poll the ring).
    SetVringKick {
        /// Vring index (bits 0–7).
        index: u8,
        /// The eventfd.
        fd: Option<H>,
    },
    /// SET_VRING_CALL (13): call eventfd; `None` ⇔ the no-fd bit (the front-end polls).
    SetVringCall {
        /// Vring index (bits 0–7).
        index: u8,
        /// The eventfd.
        fd: Option<H>,
    },
    /// SET_VRING_ERR (14): error eventfd; `None` ⇔ the no-fd bit.
    SetVringErr {
        /// Vring index (bits 0–7).
        index: u8,
        /// The eventfd.
        fd: Option<H>,
    },
    /// GET_PROTOCOL_FEATURES (15).
    GetProtocolFeatures,
    /// SET_PROTOCOL_FEATURES (16): the negotiated protocol features (unknown bits kept).
    SetProtocolFeatures {
        /// The features.
        features: ProtocolFeatures,
    },
    /// GET_QUEUE_NUM (17).
    GetQueueNum,
    /// SET_VRING_ENABLE (18): `num` 1 enable, 0 disable (other values are rejected).
    SetVringEnable {
        /// Vring index.
        index: u32,
        /// Enable or disable.
        enable: bool,
    },
    /// SEND_RARP (19): the guest MAC (bytes 0–5 of the u64).
    SendRarp {
        /// The MAC address.
        mac: [u8; 6],
    },
    /// NET_SET_MTU (20).
    NetSetMtu {
        /// The MTU.
        mtu: u64,
    },
    /// SET_BACKEND_REQ_FD (21): the back-end channel socket.
    SetBackendReqFd {
        /// The socket.
        fd: H,
    },
    /// IOTLB_MSG (22): an IOTLB update or invalidation.
    IotlbMsg {
        /// The message.
        msg: IotlbMsg,
    },
    /// SET_VRING_ENDIAN (23): byte order of a legacy ring.
    SetVringEndian {
        /// Vring index.
        index: u32,
        /// The byte order.
        endian: VringEndian,
    },
    /// GET_CONFIG (24): read `size` bytes of config space at `offset` (the payload's data
    /// bytes are placeholders and are not kept).
    GetConfig {
        /// Offset into config space.
        offset: u32,
        /// Number of bytes.
        size: u32,
        /// Flags value.
        flags: ConfigFlags,
    },
    /// SET_CONFIG (25): write config space.
    SetConfig {
        /// Offset into config space.
        offset: u32,
        /// Flags value (0 front-end, 1 migration).
        flags: ConfigFlags,
        /// The bytes (at most 4096; `offset + len` ≤ 4096).
        data: Vec<u8>,
    },
    /// CREATE_CRYPTO_SESSION (26): QEMU's opaque session struct.
    CreateCryptoSession {
        /// The session description.
        session: Box<CryptoSession>,
    },
    /// CLOSE_CRYPTO_SESSION (27).
    CloseCryptoSession {
        /// The session id.
        session_id: u64,
    },
    /// POSTCOPY_ADVISE (28): open a userfaultfd.
    PostcopyAdvise,
    /// POSTCOPY_LISTEN (29): switch to postcopy.
    PostcopyListen,
    /// POSTCOPY_END (30): postcopy is over.
    PostcopyEnd,
    /// GET_INFLIGHT_FD (31): ask for the inflight buffer.
    GetInflightFd {
        /// num_queues and queue_size (mmap fields 0).
        desc: InflightDesc,
    },
    /// SET_INFLIGHT_FD (32): hand the inflight buffer to the back-end.
    SetInflightFd {
        /// The buffer description.
        desc: InflightDesc,
        /// The buffer's fd.
        fd: H,
    },
    /// GPU_SET_SOCKET (33): the vhost-user-gpu socket.
    GpuSetSocket {
        /// The socket.
        fd: H,
    },
    /// RESET_DEVICE (34).
    ResetDevice,
    /// VRING_KICK (35): in-band kick (the vring state's `num` is ignored).
    VringKick {
        /// Vring index.
        index: u32,
    },
    /// GET_MAX_MEM_SLOTS (36).
    GetMaxMemSlots,
    /// ADD_MEM_REG (37): map one region.
    AddMemReg {
        /// The region and its fd.
        region: RegionFd<H>,
    },
    /// ADD_MEM_REG (37) with an 8-byte u64 payload while postcopy is listening: the
    /// front-end's acknowledgement of the region replies (spec §7.7; 0 = OK).
    AddMemRegPostcopyAck {
        /// The ack value.
        value: u64,
    },
    /// REM_MEM_REG (38): unmap the matching region (an fd that arrives with it is dropped).
    RemMemReg {
        /// The region to remove.
        region: MemoryRegion,
    },
    /// SET_STATUS (39): the virtio device status byte.
    SetStatus {
        /// The status (unknown bits kept; bits above 7 are rejected).
        status: DeviceStatus,
    },
    /// GET_STATUS (40).
    GetStatus,
    /// GET_SHARED_OBJECT (41).
    GetSharedObject {
        /// The object's UUID.
        uuid: Uuid,
    },
    /// SET_DEVICE_STATE_FD (42): set up the state-transfer channel.
    SetDeviceStateFd {
        /// SAVE or LOAD.
        direction: TransferDirection,
        /// Migration phase.
        phase: MigrationPhase,
        /// The front-end's end of the channel.
        fd: H,
    },
    /// CHECK_DEVICE_STATE (43).
    CheckDeviceState,
    /// GET_SHMEM_CONFIG (44).
    GetShmemConfig,
}

fn state_of(f: &Frame, payload: &[u8]) -> Result<VringStateRaw, DecodeError> {
    f.read(payload)
}

impl<H> FrontendRequest<H> {
    /// The request code of this message.
    pub fn code(&self) -> FrontendReq {
        use FrontendRequest as R;
        match self {
            R::GetFeatures => FrontendReq::GetFeatures,
            R::SetFeatures { .. } => FrontendReq::SetFeatures,
            R::SetOwner => FrontendReq::SetOwner,
            R::ResetOwner => FrontendReq::ResetOwner,
            R::SetMemTable { .. } | R::SetMemTablePostcopyAck { .. } => FrontendReq::SetMemTable,
            R::SetLogBase { .. } => FrontendReq::SetLogBase,
            R::SetLogFd { .. } => FrontendReq::SetLogFd,
            R::SetVringNum { .. } => FrontendReq::SetVringNum,
            R::SetVringAddr { .. } => FrontendReq::SetVringAddr,
            R::SetVringBase { .. } => FrontendReq::SetVringBase,
            R::GetVringBase { .. } => FrontendReq::GetVringBase,
            R::SetVringKick { .. } => FrontendReq::SetVringKick,
            R::SetVringCall { .. } => FrontendReq::SetVringCall,
            R::SetVringErr { .. } => FrontendReq::SetVringErr,
            R::GetProtocolFeatures => FrontendReq::GetProtocolFeatures,
            R::SetProtocolFeatures { .. } => FrontendReq::SetProtocolFeatures,
            R::GetQueueNum => FrontendReq::GetQueueNum,
            R::SetVringEnable { .. } => FrontendReq::SetVringEnable,
            R::SendRarp { .. } => FrontendReq::SendRarp,
            R::NetSetMtu { .. } => FrontendReq::NetSetMtu,
            R::SetBackendReqFd { .. } => FrontendReq::SetBackendReqFd,
            R::IotlbMsg { .. } => FrontendReq::IotlbMsg,
            R::SetVringEndian { .. } => FrontendReq::SetVringEndian,
            R::GetConfig { .. } => FrontendReq::GetConfig,
            R::SetConfig { .. } => FrontendReq::SetConfig,
            R::CreateCryptoSession { .. } => FrontendReq::CreateCryptoSession,
            R::CloseCryptoSession { .. } => FrontendReq::CloseCryptoSession,
            R::PostcopyAdvise => FrontendReq::PostcopyAdvise,
            R::PostcopyListen => FrontendReq::PostcopyListen,
            R::PostcopyEnd => FrontendReq::PostcopyEnd,
            R::GetInflightFd { .. } => FrontendReq::GetInflightFd,
            R::SetInflightFd { .. } => FrontendReq::SetInflightFd,
            R::GpuSetSocket { .. } => FrontendReq::GpuSetSocket,
            R::ResetDevice => FrontendReq::ResetDevice,
            R::VringKick { .. } => FrontendReq::VringKick,
            R::GetMaxMemSlots => FrontendReq::GetMaxMemSlots,
            R::AddMemReg { .. } | R::AddMemRegPostcopyAck { .. } => FrontendReq::AddMemReg,
            R::RemMemReg { .. } => FrontendReq::RemMemReg,
            R::SetStatus { .. } => FrontendReq::SetStatus,
            R::GetStatus => FrontendReq::GetStatus,
            R::GetSharedObject { .. } => FrontendReq::GetSharedObject,
            R::SetDeviceStateFd { .. } => FrontendReq::SetDeviceStateFd,
            R::CheckDeviceState => FrontendReq::CheckDeviceState,
            R::GetShmemConfig => FrontendReq::GetShmemConfig,
        }
    }

    /// Decodes the payload of a front-end request whose header has already been checked.
    ///
    /// `payload` is exactly the header's `size` bytes and `fds` the handles that came with
    /// the header. Payload rules broken → a rejectable [`DecodeError::InvalidPayload`] (the
    /// fds are dropped); wrong size or fd count → a fatal error.
    pub fn decode(
        req: FrontendReq,
        flags: HeaderFlags,
        payload: &[u8],
        fds: Vec<H>,
        ctx: &DecodeContext,
    ) -> Result<Self, DecodeError> {
        use FrontendReq as C;
        let f = Frame::request(req, flags);
        let msg = match req {
            C::GetFeatures => f.no_fds(fds).map(|_| Self::GetFeatures)?,
            C::SetOwner => f.no_fds(fds).map(|_| Self::SetOwner)?,
            C::ResetOwner => f.no_fds(fds).map(|_| Self::ResetOwner)?,
            C::GetProtocolFeatures => f.no_fds(fds).map(|_| Self::GetProtocolFeatures)?,
            C::GetQueueNum => f.no_fds(fds).map(|_| Self::GetQueueNum)?,
            C::PostcopyAdvise => f.no_fds(fds).map(|_| Self::PostcopyAdvise)?,
            C::PostcopyListen => f.no_fds(fds).map(|_| Self::PostcopyListen)?,
            C::PostcopyEnd => f.no_fds(fds).map(|_| Self::PostcopyEnd)?,
            C::ResetDevice => f.no_fds(fds).map(|_| Self::ResetDevice)?,
            C::GetMaxMemSlots => f.no_fds(fds).map(|_| Self::GetMaxMemSlots)?,
            C::GetStatus => f.no_fds(fds).map(|_| Self::GetStatus)?,
            C::CheckDeviceState => f.no_fds(fds).map(|_| Self::CheckDeviceState)?,
            C::GetShmemConfig => f.no_fds(fds).map(|_| Self::GetShmemConfig)?,
            C::SetFeatures => {
                let v = f.read_u64(payload)?;
                f.no_fds(fds)?;
                Self::SetFeatures {
                    features: VirtioFeatures::from_bits_retain(v),
                }
            }
            C::SetProtocolFeatures => {
                let v = f.read_u64(payload)?;
                f.no_fds(fds)?;
                Self::SetProtocolFeatures {
                    features: ProtocolFeatures::from_bits_retain(v),
                }
            }
            C::SetMemTable if ctx.postcopy && payload.len() == size_of::<U64Payload>() => {
                let value = f.read_u64(payload)?;
                f.no_fds(fds)?;
                Self::SetMemTablePostcopyAck { value }
            }
            C::SetMemTable => {
                let regions = read_mem_table(&f, payload, ctx)?;
                let fds = f.fds_exact(fds, regions.len())?;
                Self::SetMemTable {
                    regions: regions
                        .into_iter()
                        .zip(fds)
                        .map(|(region, fd)| RegionFd { region, fd })
                        .collect(),
                }
            }
            C::SetLogBase => {
                let log: LogDescriptionRaw = f.read(payload)?;
                let fd = f.opt_fd(fds, ctx.log_shmfd)?;
                Self::SetLogBase {
                    log: log.into(),
                    fd,
                }
            }
            C::SetLogFd => Self::SetLogFd { fd: f.one_fd(fds)? },
            C::SetBackendReqFd => Self::SetBackendReqFd { fd: f.one_fd(fds)? },
            C::GpuSetSocket => Self::GpuSetSocket { fd: f.one_fd(fds)? },
            C::SetVringNum => {
                let s = state_of(&f, payload)?;
                f.no_fds(fds)?;
                Self::SetVringNum {
                    index: s.index,
                    num: s.num,
                }
            }
            C::SetVringAddr => {
                let a: VringAddrRaw = f.read(payload)?;
                f.no_fds(fds)?;
                Self::SetVringAddr { addr: a.into() }
            }
            C::SetVringBase => {
                let s = state_of(&f, payload)?;
                f.no_fds(fds)?;
                Self::SetVringBase {
                    index: s.index,
                    base: VringBase(s.num),
                }
            }
            C::GetVringBase => {
                let s = state_of(&f, payload)?;
                f.no_fds(fds)?;
                Self::GetVringBase { index: s.index }
            }
            C::SetVringKick | C::SetVringCall | C::SetVringErr => {
                let (index, nofd) =
                    vring_index_word(f.read_u64(payload)?).map_err(|e| f.invalid(e))?;
                let fd = f.opt_fd(fds, !nofd)?;
                match req {
                    C::SetVringKick => Self::SetVringKick { index, fd },
                    C::SetVringCall => Self::SetVringCall { index, fd },
                    _ => Self::SetVringErr { index, fd },
                }
            }
            C::SetVringEnable => {
                let s = state_of(&f, payload)?;
                let enable = match s.num {
                    0 => false,
                    1 => true,
                    v => {
                        return Err(f.invalid(PayloadError::InvalidValue {
                            field: "vring enable",
                            value: v.into(),
                        }));
                    }
                };
                f.no_fds(fds)?;
                Self::SetVringEnable {
                    index: s.index,
                    enable,
                }
            }
            C::SendRarp => {
                let v = f.read_u64(payload)?;
                f.no_fds(fds)?;
                let b = v.to_ne_bytes();
                let [m0, m1, m2, m3, m4, m5, _, _] = b;
                Self::SendRarp {
                    mac: [m0, m1, m2, m3, m4, m5],
                }
            }
            C::NetSetMtu => {
                let mtu = f.read_u64(payload)?;
                f.no_fds(fds)?;
                Self::NetSetMtu { mtu }
            }
            C::IotlbMsg => {
                let raw: IotlbMsgRaw = f.read(payload)?;
                let msg = IotlbMsg::try_from(raw).map_err(|e| f.invalid(e))?;
                f.no_fds(fds)?;
                Self::IotlbMsg { msg }
            }
            C::SetVringEndian => {
                let s = state_of(&f, payload)?;
                let endian = VringEndian::try_from(s.num).map_err(|v| {
                    f.invalid(PayloadError::InvalidValue {
                        field: "vring endian",
                        value: v.into(),
                    })
                })?;
                f.no_fds(fds)?;
                Self::SetVringEndian {
                    index: s.index,
                    endian,
                }
            }
            C::GetConfig => {
                let (hdr, _) = read_config(&f, payload)?;
                f.no_fds(fds)?;
                Self::GetConfig {
                    offset: hdr.offset,
                    size: hdr.size,
                    flags: hdr.flags.into(),
                }
            }
            C::SetConfig => {
                let (hdr, data) = read_config(&f, payload)?;
                f.no_fds(fds)?;
                Self::SetConfig {
                    offset: hdr.offset,
                    flags: hdr.flags.into(),
                    data: data.to_vec(),
                }
            }
            C::CreateCryptoSession => {
                let raw: CryptoSessionRaw = f.read(payload)?;
                f.no_fds(fds)?;
                Self::CreateCryptoSession {
                    session: Box::new(raw.into()),
                }
            }
            C::CloseCryptoSession => {
                let session_id = f.read_u64(payload)?;
                f.no_fds(fds)?;
                Self::CloseCryptoSession { session_id }
            }
            C::GetInflightFd => {
                let d: InflightDescRaw = f.read(payload)?;
                f.no_fds(fds)?;
                Self::GetInflightFd { desc: d.into() }
            }
            C::SetInflightFd => {
                let d: InflightDescRaw = f.read(payload)?;
                Self::SetInflightFd {
                    desc: d.into(),
                    fd: f.one_fd(fds)?,
                }
            }
            C::VringKick => {
                let s = state_of(&f, payload)?;
                f.no_fds(fds)?;
                Self::VringKick { index: s.index }
            }
            C::AddMemReg if ctx.postcopy && payload.len() == size_of::<U64Payload>() => {
                let value = f.read_u64(payload)?;
                f.no_fds(fds)?;
                Self::AddMemRegPostcopyAck { value }
            }
            C::AddMemReg => {
                let region = read_single_region(&f, payload, ctx)?;
                Self::AddMemReg {
                    region: RegionFd {
                        region,
                        fd: f.one_fd(fds)?,
                    },
                }
            }
            C::RemMemReg => {
                let region = read_single_region(&f, payload, ctx)?;
                // Spec §5 id 38: an fd that arrives anyway is closed unused.
                drop(f.fds_in(fds, super::rules::Limit::range(0, 1))?);
                Self::RemMemReg { region }
            }
            C::SetStatus => {
                let v = f.read_u64(payload)?;
                let status = u8::try_from(v).map_err(|_| {
                    f.invalid(PayloadError::InvalidValue {
                        field: "device status",
                        value: v,
                    })
                })?;
                f.no_fds(fds)?;
                Self::SetStatus {
                    status: DeviceStatus::from_bits_retain(status),
                }
            }
            C::GetSharedObject => {
                let u: SharedObjectRaw = f.read(payload)?;
                f.no_fds(fds)?;
                Self::GetSharedObject { uuid: Uuid(u.uuid) }
            }
            C::SetDeviceStateFd => {
                let p: DeviceStateParamsRaw = f.read(payload)?;
                let direction = TransferDirection::try_from(p.direction).map_err(|v| {
                    f.invalid(PayloadError::InvalidValue {
                        field: "transfer direction",
                        value: v.into(),
                    })
                })?;
                let phase = MigrationPhase::try_from(p.phase).map_err(|v| {
                    f.invalid(PayloadError::InvalidValue {
                        field: "migration phase",
                        value: v.into(),
                    })
                })?;
                Self::SetDeviceStateFd {
                    direction,
                    phase,
                    fd: f.one_fd(fds)?,
                }
            }
        };
        Ok(msg)
    }

    /// Encodes this request as one frame: flags `0x1`, or `0x9` with `need_reply` (spec §2).
    /// The handles move into the result in wire order, ready for one `sendmsg`.
    ///
    /// ```
    /// use vhost_proto::wire::{DecodeContext, FrontendRequest, MemoryRegion, RegionFd};
    ///
    /// let region = MemoryRegion {
    ///     guest_phys_addr: 0,
    ///     memory_size: 0x1000,
    ///     user_addr: 0x7f00_0000_0000,
    ///     mmap_offset: 0,
    ///     xen: None,
    /// };
    /// let msg = FrontendRequest::SetMemTable { regions: vec![RegionFd { region, fd: 42 }] };
    /// let out = msg.encode(true, &DecodeContext::default()).unwrap();
    /// assert_eq!(out.bytes.len(), 12 + 8 + 32); // header, table header, one region (spec §3.7)
    /// assert_eq!(out.header().request, 5);
    /// assert_eq!(out.header().flags, 0x9); // version 1 + NEED_REPLY
    /// assert_eq!(out.fds, vec![42]);
    /// ```
    pub fn encode(self, need_reply: bool, ctx: &DecodeContext) -> Result<Encoded<H>, EncodeError> {
        let code = self.code().raw();
        let flags = HeaderFlags::request(need_reply);
        let mut p: Vec<u8> = Vec::new();
        let mut fds: Vec<H> = Vec::new();
        let u64p =
            |p: &mut Vec<u8>, v: u64| p.extend_from_slice(U64Payload { value: v }.as_bytes());
        let state = |p: &mut Vec<u8>, index: u32, num: u32| {
            p.extend_from_slice(VringStateRaw { index, num }.as_bytes())
        };
        match self {
            Self::GetFeatures
            | Self::SetOwner
            | Self::ResetOwner
            | Self::GetProtocolFeatures
            | Self::GetQueueNum
            | Self::PostcopyAdvise
            | Self::PostcopyListen
            | Self::PostcopyEnd
            | Self::ResetDevice
            | Self::GetMaxMemSlots
            | Self::GetStatus
            | Self::CheckDeviceState
            | Self::GetShmemConfig => {}
            Self::SetFeatures { features } => u64p(&mut p, features.bits()),
            Self::SetProtocolFeatures { features } => u64p(&mut p, features.bits()),
            Self::SetMemTable { regions } => {
                write_mem_table(&mut p, regions.iter().map(|r| &r.region), ctx)?;
                fds.extend(regions.into_iter().map(|r| r.fd));
            }
            Self::SetMemTablePostcopyAck { value } | Self::AddMemRegPostcopyAck { value } => {
                u64p(&mut p, value)
            }
            Self::SetLogBase { log, fd } => {
                p.extend_from_slice(LogDescriptionRaw::from(log).as_bytes());
                fds.extend(fd);
            }
            Self::SetLogFd { fd } | Self::SetBackendReqFd { fd } | Self::GpuSetSocket { fd } => {
                fds.push(fd)
            }
            Self::SetVringNum { index, num } => state(&mut p, index, num),
            Self::SetVringAddr { addr } => p.extend_from_slice(VringAddrRaw::from(addr).as_bytes()),
            Self::SetVringBase { index, base } => state(&mut p, index, base.raw()),
            Self::GetVringBase { index } | Self::VringKick { index } => state(&mut p, index, 0),
            Self::SetVringKick { index, fd }
            | Self::SetVringCall { index, fd }
            | Self::SetVringErr { index, fd } => {
                u64p(&mut p, make_vring_index_word(index, fd.is_some()));
                fds.extend(fd);
            }
            Self::SetVringEnable { index, enable } => state(&mut p, index, enable.into()),
            Self::SendRarp { mac } => {
                let [m0, m1, m2, m3, m4, m5] = mac;
                u64p(&mut p, u64::from_ne_bytes([m0, m1, m2, m3, m4, m5, 0, 0]));
            }
            Self::NetSetMtu { mtu } => u64p(&mut p, mtu),
            Self::IotlbMsg { msg } => p.extend_from_slice(IotlbMsgRaw::from(msg).as_bytes()),
            Self::SetVringEndian { index, endian } => state(&mut p, index, endian.into()),
            Self::GetConfig {
                offset,
                size,
                flags,
            } => {
                if size as usize > MAX_CONFIG_SIZE {
                    return Err(EncodeError::ConfigTooLarge { len: size as usize });
                }
                write_config(&mut p, offset, flags, &vec![0; size as usize])?;
            }
            Self::SetConfig {
                offset,
                flags,
                data,
            } => write_config(&mut p, offset, flags, &data)?,
            Self::CreateCryptoSession { session } => p.extend_from_slice(&session.0),
            Self::CloseCryptoSession { session_id } => u64p(&mut p, session_id),
            Self::GetInflightFd { desc } => {
                p.extend_from_slice(InflightDescRaw::from(desc).as_bytes())
            }
            Self::SetInflightFd { desc, fd } => {
                p.extend_from_slice(InflightDescRaw::from(desc).as_bytes());
                fds.push(fd);
            }
            Self::AddMemReg { region } => {
                p.extend_from_slice(SingleRegionHeaderRaw::default().as_bytes());
                write_region(&mut p, &region.region, ctx)?;
                fds.push(region.fd);
            }
            Self::RemMemReg { region } => {
                p.extend_from_slice(SingleRegionHeaderRaw::default().as_bytes());
                write_region(&mut p, &region, ctx)?;
            }
            Self::SetStatus { status } => u64p(&mut p, status.bits().into()),
            Self::GetSharedObject { uuid } => p.extend_from_slice(&uuid.0),
            Self::SetDeviceStateFd {
                direction,
                phase,
                fd,
            } => {
                let raw = DeviceStateParamsRaw {
                    direction: direction.into(),
                    phase: phase.into(),
                };
                p.extend_from_slice(raw.as_bytes());
                fds.push(fd);
            }
        }
        Ok(Encoded::frame(code, flags, &p, fds))
    }
}
