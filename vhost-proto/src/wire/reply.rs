//! Typed replies (spec §5 "Reply" column, §6): what the back-end answers to front-end
//! requests, and what the front-end answers on the back-end channel.
//!
//! A reply's layout depends on the request it answers, so decoding takes that request
//! code (the header repeats it); the session checks it matches what it sent.

use zerocopy::IntoBytes;

use super::codes::{BackendReq, FrontendReq};
use super::context::DecodeContext;
use super::encode::{Encoded, Frame};
use super::error::{DecodeError, EncodeError, PayloadError};
use super::flags::ConfigFlags;
use super::header::HeaderFlags;
use super::layout::{
    CryptoSessionRaw, InflightDescRaw, SharedObjectRaw, ShmemConfigRaw, SingleRegionHeaderRaw,
    U64Payload, VRING_IDX_MASK, VRING_NOFD_MASK, VringStateRaw,
};
use super::payload::{
    read_config, read_mem_table, read_single_region, write_config, write_mem_table, write_region,
};
use super::types::{CryptoSession, InflightDesc, MemoryRegion, ShmemConfig, Uuid, VringBase};

/// The back-end's reply to a front-end request (spec §5), with its fd handles.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrontendReply<H> {
    /// A u64: the REPLY_ACK ack (0 = success) of any request, or the value of GET_FEATURES,
    /// GET_PROTOCOL_FEATURES, GET_QUEUE_NUM, GET_MAX_MEM_SLOTS, GET_STATUS, IOTLB_MSG,
    /// POSTCOPY_LISTEN/END, CHECK_DEVICE_STATE, SET_LOG_BASE (spec §5, §7.4).
    U64 {
        /// The value.
        value: u64,
    },
    /// A reply with no payload: DPDK's SET_LOG_BASE reply, or libvhost-user's GET_CONFIG
    /// failure (spec §5 ids 6, 24).
    Empty,
    /// GET_VRING_BASE (11): the stopped ring's position.
    VringBase {
        /// Vring index.
        index: u32,
        /// The position.
        base: VringBase,
    },
    /// GET_CONFIG (24): the config bytes read.
    Config {
        /// Offset into config space.
        offset: u32,
        /// Flags value.
        flags: ConfigFlags,
        /// The bytes (at most 4096).
        data: Vec<u8>,
    },
    /// CREATE_CRYPTO_SESSION (26): the session with its id filled in.
    CryptoSession {
        /// The session.
        session: Box<CryptoSession>,
    },
    /// POSTCOPY_ADVISE (28): size 0 plus the userfaultfd.
    PostcopyAdvise {
        /// The userfaultfd.
        fd: H,
    },
    /// GET_INFLIGHT_FD (31): the buffer description and its fd (`mmap_size` 0 and no fd: no buffer).
    InflightFd {
        /// The buffer description.
        desc: InflightDesc,
        /// The buffer's fd.
        fd: Option<H>,
    },
    /// SET_MEM_TABLE (5) while postcopy listens: the table with the back-end's mapping
    /// addresses in `user_addr` (spec §7.7).
    MemTable {
        /// The regions.
        regions: Vec<MemoryRegion>,
    },
    /// ADD_MEM_REG (37) while postcopy listens: the region with the back-end's address.
    AddMemReg {
        /// The region.
        region: MemoryRegion,
    },
    /// GET_SHARED_OBJECT (41): the dma-buf fd on success; libvhost-user echoes the UUID.
    SharedObject {
        /// The echoed UUID, if the payload carried one (16 bytes) rather than nothing.
        uuid: Option<Uuid>,
        /// The dma-buf fd.
        fd: Option<H>,
    },
    /// SET_DEVICE_STATE_FD (42): status (bits 0–7, 0 = ok) and the back-end's own channel
    /// (`None` ⇔ bit 8, no fd).
    DeviceStateFd {
        /// 0 success, non-zero error.
        status: u8,
        /// The back-end's channel end.
        fd: Option<H>,
    },
    /// GET_SHMEM_CONFIG (44).
    ShmemConfig {
        /// The region sizes.
        config: Box<ShmemConfig>,
    },
}

/// Which reply body a request gets (given the context).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    U64,
    VringBase,
    Config,
    Crypto,
    PostcopyAdvise,
    Inflight,
    MemTable,
    AddMemReg,
    LogBase,
    SharedObject,
    DeviceState,
    Shmem,
}

fn shape(req: FrontendReq, ctx: &DecodeContext) -> Shape {
    use FrontendReq as C;
    match req {
        C::GetVringBase => Shape::VringBase,
        C::GetConfig => Shape::Config,
        C::CreateCryptoSession => Shape::Crypto,
        C::PostcopyAdvise => Shape::PostcopyAdvise,
        C::GetInflightFd => Shape::Inflight,
        C::SetMemTable if ctx.postcopy => Shape::MemTable,
        C::AddMemReg if ctx.postcopy => Shape::AddMemReg,
        C::SetLogBase => Shape::LogBase,
        C::GetSharedObject => Shape::SharedObject,
        C::SetDeviceStateFd => Shape::DeviceState,
        C::GetShmemConfig => Shape::Shmem,
        _ => Shape::U64,
    }
}

impl<H> FrontendReply<H> {
    fn name(&self) -> &'static str {
        match self {
            Self::U64 { .. } => "U64",
            Self::Empty => "Empty",
            Self::VringBase { .. } => "VringBase",
            Self::Config { .. } => "Config",
            Self::CryptoSession { .. } => "CryptoSession",
            Self::PostcopyAdvise { .. } => "PostcopyAdvise",
            Self::InflightFd { .. } => "InflightFd",
            Self::MemTable { .. } => "MemTable",
            Self::AddMemReg { .. } => "AddMemReg",
            Self::SharedObject { .. } => "SharedObject",
            Self::DeviceStateFd { .. } => "DeviceStateFd",
            Self::ShmemConfig { .. } => "ShmemConfig",
        }
    }

    /// Decodes the reply to `req` (the request the front-end sent; the header repeats its
    /// code). `payload` is exactly the header's `size` bytes, whose limit was checked.
    pub fn decode(
        req: FrontendReq,
        payload: &[u8],
        fds: Vec<H>,
        ctx: &DecodeContext,
    ) -> Result<Self, DecodeError> {
        let f = Frame::reply(req);
        Ok(match shape(req, ctx) {
            Shape::U64 => {
                let value = f.read_u64(payload)?;
                f.no_fds(fds)?;
                Self::U64 { value }
            }
            Shape::LogBase if payload.is_empty() => {
                f.no_fds(fds)?;
                Self::Empty
            }
            Shape::LogBase => {
                let value = f.read_u64(payload)?;
                f.no_fds(fds)?;
                Self::U64 { value }
            }
            Shape::VringBase => {
                let s: VringStateRaw = f.read(payload)?;
                f.no_fds(fds)?;
                Self::VringBase {
                    index: s.index,
                    base: VringBase(s.num),
                }
            }
            Shape::Config if payload.is_empty() => {
                f.no_fds(fds)?;
                Self::Empty
            }
            Shape::Config => {
                let (hdr, data) = read_config(&f, payload)?;
                f.no_fds(fds)?;
                Self::Config {
                    offset: hdr.offset,
                    flags: hdr.flags.into(),
                    data: data.to_vec(),
                }
            }
            Shape::Crypto => {
                let raw: CryptoSessionRaw = f.read(payload)?;
                f.no_fds(fds)?;
                Self::CryptoSession {
                    session: Box::new(raw.into()),
                }
            }
            Shape::PostcopyAdvise => Self::PostcopyAdvise { fd: f.one_fd(fds)? },
            Shape::Inflight => {
                let d: InflightDescRaw = f.read(payload)?;
                Self::InflightFd {
                    desc: d.into(),
                    fd: f.any_opt_fd(fds)?,
                }
            }
            Shape::MemTable => {
                let regions = read_mem_table(&f, payload, ctx)?;
                f.no_fds(fds)?;
                Self::MemTable { regions }
            }
            Shape::AddMemReg => {
                let region = read_single_region(&f, payload, ctx)?;
                f.no_fds(fds)?;
                Self::AddMemReg { region }
            }
            Shape::SharedObject => {
                let uuid = if payload.is_empty() {
                    None
                } else {
                    Some(Uuid(f.read::<SharedObjectRaw>(payload)?.uuid))
                };
                if !payload.is_empty() && payload.len() != size_of::<SharedObjectRaw>() {
                    return Err(f.size_error(payload.len(), size_of::<SharedObjectRaw>()));
                }
                Self::SharedObject {
                    uuid,
                    fd: f.any_opt_fd(fds)?,
                }
            }
            Shape::DeviceState => {
                let v = f.read_u64(payload)?;
                if v & !(VRING_IDX_MASK | VRING_NOFD_MASK) != 0 {
                    return Err(f.invalid(PayloadError::InvalidValue {
                        field: "device state reply",
                        value: v,
                    }));
                }
                let status = (v & VRING_IDX_MASK) as u8;
                let has_fd = v & VRING_NOFD_MASK == 0;
                if status != 0 && has_fd {
                    return Err(f.invalid(PayloadError::ErrorWithFd {
                        status: status.into(),
                    }));
                }
                Self::DeviceStateFd {
                    status,
                    fd: f.opt_fd(fds, has_fd)?,
                }
            }
            Shape::Shmem => {
                let raw: ShmemConfigRaw = f.read(payload)?;
                let config = ShmemConfig::try_from(raw).map_err(|e| f.invalid(e))?;
                f.no_fds(fds)?;
                Self::ShmemConfig {
                    config: Box::new(config),
                }
            }
        })
    }

    /// Encodes this reply to `req` as one frame with flags exactly `0x5` (spec §2); a reply
    /// type that does not answer `req` is an [`EncodeError::ReplyMismatch`].
    ///
    /// ```
    /// use vhost_proto::wire::{DecodeContext, FrontendReply, FrontendReq, VringBase};
    ///
    /// let ctx = DecodeContext::default();
    /// let reply = FrontendReply::<i32>::VringBase { index: 0, base: VringBase::split(42) };
    /// let out = reply.encode(FrontendReq::GetVringBase, &ctx).unwrap();
    /// assert_eq!(out.header().flags, 0x5);
    /// assert_eq!(out.header().size, 8);
    /// // The same reply cannot answer GET_FEATURES.
    /// let wrong = FrontendReply::<i32>::VringBase { index: 0, base: VringBase(0) };
    /// assert!(wrong.encode(FrontendReq::GetFeatures, &ctx).is_err());
    /// ```
    pub fn encode(self, req: FrontendReq, ctx: &DecodeContext) -> Result<Encoded<H>, EncodeError> {
        let sh = shape(req, ctx);
        let ok = matches!(
            (&self, sh),
            (Self::U64 { .. }, Shape::U64 | Shape::LogBase)
                | (Self::Empty, Shape::LogBase | Shape::Config)
                | (Self::VringBase { .. }, Shape::VringBase)
                | (Self::Config { .. }, Shape::Config)
                | (Self::CryptoSession { .. }, Shape::Crypto)
                | (Self::PostcopyAdvise { .. }, Shape::PostcopyAdvise)
                | (Self::InflightFd { .. }, Shape::Inflight)
                | (Self::MemTable { .. }, Shape::MemTable)
                | (Self::AddMemReg { .. }, Shape::AddMemReg)
                | (Self::SharedObject { .. }, Shape::SharedObject)
                | (Self::DeviceStateFd { .. }, Shape::DeviceState)
                | (Self::ShmemConfig { .. }, Shape::Shmem)
        );
        if !ok {
            return Err(EncodeError::ReplyMismatch {
                request: req.into(),
                reply: self.name(),
            });
        }
        let mut p: Vec<u8> = Vec::new();
        let mut fds = Vec::new();
        match self {
            Self::U64 { value } => p.extend_from_slice(U64Payload { value }.as_bytes()),
            Self::Empty => {}
            Self::VringBase { index, base } => {
                p.extend_from_slice(
                    VringStateRaw {
                        index,
                        num: base.raw(),
                    }
                    .as_bytes(),
                );
            }
            Self::Config {
                offset,
                flags,
                data,
            } => write_config(&mut p, offset, flags, &data)?,
            Self::CryptoSession { session } => p.extend_from_slice(&session.0),
            Self::PostcopyAdvise { fd } => fds.push(fd),
            Self::InflightFd { desc, fd } => {
                p.extend_from_slice(InflightDescRaw::from(desc).as_bytes());
                fds.extend(fd);
            }
            Self::MemTable { regions } => write_mem_table(&mut p, regions.iter(), ctx)?,
            Self::AddMemReg { region } => {
                p.extend_from_slice(SingleRegionHeaderRaw::default().as_bytes());
                write_region(&mut p, &region, ctx)?;
            }
            Self::SharedObject { uuid, fd } => {
                if let Some(u) = uuid {
                    p.extend_from_slice(&u.0);
                }
                fds.extend(fd);
            }
            Self::DeviceStateFd { status, fd } => {
                let v = u64::from(status) | if fd.is_some() { 0 } else { VRING_NOFD_MASK };
                p.extend_from_slice(U64Payload { value: v }.as_bytes());
                fds.extend(fd);
            }
            Self::ShmemConfig { config } => {
                p.extend_from_slice(ShmemConfigRaw::from(*config).as_bytes())
            }
        }
        Ok(Encoded::frame(req.raw(), HeaderFlags::reply(), &p, fds))
    }
}

/// The front-end's reply to a back-end request (spec §6), with its fd handles.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendReply<H> {
    /// The u64 ack (0 = success; QEMU sends 1 on failure).
    U64 {
        /// The value.
        value: u64,
    },
    /// BACKEND_SHARED_OBJECT_LOOKUP (8): u64 result and the dma-buf fd on success.
    SharedObjectLookup {
        /// 0 = success.
        value: u64,
        /// The dma-buf fd (never together with a failure).
        fd: Option<H>,
    },
}

impl<H> BackendReply<H> {
    /// Decodes the reply to the back-end request `req` (same contract as
    /// [`FrontendReply::decode`]).
    pub fn decode(
        req: BackendReq,
        payload: &[u8],
        fds: Vec<H>,
        _ctx: &DecodeContext,
    ) -> Result<Self, DecodeError> {
        let f = Frame::reply(req);
        let value = f.read_u64(payload)?;
        if req == BackendReq::SharedObjectLookup {
            let fd = f.any_opt_fd(fds)?;
            if value != 0 && fd.is_some() {
                return Err(f.invalid(PayloadError::ErrorWithFd { status: value }));
            }
            Ok(Self::SharedObjectLookup { value, fd })
        } else {
            f.fds_exact(fds, 0)?;
            Ok(Self::U64 { value })
        }
    }

    /// Encodes this reply to `req` as one frame with flags exactly `0x5` (spec §2).
    pub fn encode(self, req: BackendReq, _ctx: &DecodeContext) -> Result<Encoded<H>, EncodeError> {
        let lookup = req == BackendReq::SharedObjectLookup;
        let (value, fds) = match self {
            Self::U64 { value } if !lookup => (value, Vec::new()),
            Self::SharedObjectLookup { value, fd } if lookup => (value, fd.into_iter().collect()),
            Self::U64 { .. } => {
                return Err(EncodeError::ReplyMismatch {
                    request: req.into(),
                    reply: "U64",
                });
            }
            Self::SharedObjectLookup { .. } => {
                return Err(EncodeError::ReplyMismatch {
                    request: req.into(),
                    reply: "SharedObjectLookup",
                });
            }
        };
        Ok(Encoded::frame(
            req.raw(),
            HeaderFlags::reply(),
            U64Payload { value }.as_bytes(),
            fds,
        ))
    }
}
