//! Typed back-end requests on the back-end channel (spec §6).

use zerocopy::IntoBytes;

use super::codes::BackendReq;
use super::context::DecodeContext;
use super::encode::{Encoded, Frame};
use super::error::{DecodeError, EncodeError};
use super::header::HeaderFlags;
use super::layout::{IotlbMsgRaw, SharedObjectRaw, ShmemMmapRaw, VringAreaRaw, VringStateRaw};
use super::payload::{make_vring_index_word, vring_index_word};
use super::types::{IotlbMsg, ShmemMap, Uuid, check_range};

/// A request the back-end sends on the back-end channel (spec §6), with its fd handles.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendRequest<H> {
    /// BACKEND_IOTLB_MSG (1): a miss or an access failure.
    IotlbMsg {
        /// The message.
        msg: IotlbMsg,
    },
    /// BACKEND_CONFIG_CHANGE_MSG (2): config space changed.
    ConfigChange,
    /// BACKEND_VRING_HOST_NOTIFIER_MSG (3): map `fd[offset, size]` as the notify area, or
    /// drop the existing one when `fd` is `None` (the no-fd bit).
    VringHostNotifier {
        /// Vring index (bits 0–7).
        index: u8,
        /// Size of the area.
        size: u64,
        /// Offset in the fd.
        offset: u64,
        /// The area's fd.
        fd: Option<H>,
    },
    /// BACKEND_VRING_CALL (4): in-band used-buffer interrupt (the state's `num` is ignored).
    VringCall {
        /// Vring index.
        index: u32,
    },
    /// BACKEND_VRING_ERR (5): in-band error (the state's `num` is ignored).
    VringErr {
        /// Vring index.
        index: u32,
    },
    /// BACKEND_SHARED_OBJECT_ADD (6).
    SharedObjectAdd {
        /// The UUID.
        uuid: Uuid,
    },
    /// BACKEND_SHARED_OBJECT_REMOVE (7).
    SharedObjectRemove {
        /// The UUID.
        uuid: Uuid,
    },
    /// BACKEND_SHARED_OBJECT_LOOKUP (8).
    SharedObjectLookup {
        /// The UUID.
        uuid: Uuid,
    },
    /// BACKEND_SHMEM_MAP (9): map `fd[fd_offset, len]` into a shared memory region.
    ShmemMap {
        /// What to map where.
        map: ShmemMap,
        /// The fd to map.
        fd: H,
    },
    /// BACKEND_SHMEM_UNMAP (10): unmap one earlier mapping.
    ShmemUnmap {
        /// The range to unmap.
        map: ShmemMap,
    },
}

impl<H> BackendRequest<H> {
    /// The request code of this message.
    pub fn code(&self) -> BackendReq {
        match self {
            Self::IotlbMsg { .. } => BackendReq::IotlbMsg,
            Self::ConfigChange => BackendReq::ConfigChangeMsg,
            Self::VringHostNotifier { .. } => BackendReq::VringHostNotifierMsg,
            Self::VringCall { .. } => BackendReq::VringCall,
            Self::VringErr { .. } => BackendReq::VringErr,
            Self::SharedObjectAdd { .. } => BackendReq::SharedObjectAdd,
            Self::SharedObjectRemove { .. } => BackendReq::SharedObjectRemove,
            Self::SharedObjectLookup { .. } => BackendReq::SharedObjectLookup,
            Self::ShmemMap { .. } => BackendReq::ShmemMap,
            Self::ShmemUnmap { .. } => BackendReq::ShmemUnmap,
        }
    }

    /// Decodes the payload of a back-end request whose header has already been checked
    /// (same contract as [`FrontendRequest::decode`](super::FrontendRequest::decode)).
    pub fn decode(
        req: BackendReq,
        flags: HeaderFlags,
        payload: &[u8],
        fds: Vec<H>,
        _ctx: &DecodeContext,
    ) -> Result<Self, DecodeError> {
        use BackendReq as C;
        let f = Frame::request(req, flags);
        let uuid = |payload: &[u8]| f.read::<SharedObjectRaw>(payload).map(|u| Uuid(u.uuid));
        Ok(match req {
            C::IotlbMsg => {
                let raw: IotlbMsgRaw = f.read(payload)?;
                let msg = IotlbMsg::try_from(raw).map_err(|e| f.invalid(e))?;
                f.no_fds(fds)?;
                Self::IotlbMsg { msg }
            }
            C::ConfigChangeMsg => {
                f.no_fds(fds)?;
                Self::ConfigChange
            }
            C::VringHostNotifierMsg => {
                let a: VringAreaRaw = f.read(payload)?;
                let (index, nofd) = vring_index_word(a.u64).map_err(|e| f.invalid(e))?;
                check_range(0, "host notifier offset", a.offset, a.size)
                    .map_err(|e| f.invalid(e))?;
                let fd = f.opt_fd(fds, !nofd)?;
                Self::VringHostNotifier {
                    index,
                    size: a.size,
                    offset: a.offset,
                    fd,
                }
            }
            C::VringCall | C::VringErr => {
                let s: VringStateRaw = f.read(payload)?;
                f.no_fds(fds)?;
                if req == C::VringCall {
                    Self::VringCall { index: s.index }
                } else {
                    Self::VringErr { index: s.index }
                }
            }
            C::SharedObjectAdd => {
                let uuid = uuid(payload)?;
                f.no_fds(fds)?;
                Self::SharedObjectAdd { uuid }
            }
            C::SharedObjectRemove => {
                let uuid = uuid(payload)?;
                f.no_fds(fds)?;
                Self::SharedObjectRemove { uuid }
            }
            C::SharedObjectLookup => {
                let uuid = uuid(payload)?;
                f.no_fds(fds)?;
                Self::SharedObjectLookup { uuid }
            }
            C::ShmemMap | C::ShmemUnmap => {
                let raw: ShmemMmapRaw = f.read(payload)?;
                let map = ShmemMap::from(raw);
                map.validate().map_err(|e| f.invalid(e))?;
                if req == C::ShmemMap {
                    Self::ShmemMap {
                        map,
                        fd: f.one_fd(fds)?,
                    }
                } else {
                    f.no_fds(fds)?;
                    Self::ShmemUnmap { map }
                }
            }
        })
    }

    /// Encodes this request as one frame: flags `0x1`, or `0x9` with `need_reply` (spec §2).
    pub fn encode(self, need_reply: bool, _ctx: &DecodeContext) -> Result<Encoded<H>, EncodeError> {
        let code = self.code().raw();
        let mut p: Vec<u8> = Vec::new();
        let mut fds = Vec::new();
        match self {
            Self::IotlbMsg { msg } => p.extend_from_slice(IotlbMsgRaw::from(msg).as_bytes()),
            Self::ConfigChange => {}
            Self::VringHostNotifier {
                index,
                size,
                offset,
                fd,
            } => {
                let raw = VringAreaRaw {
                    u64: make_vring_index_word(index, fd.is_some()),
                    size,
                    offset,
                };
                p.extend_from_slice(raw.as_bytes());
                fds.extend(fd);
            }
            Self::VringCall { index } | Self::VringErr { index } => {
                p.extend_from_slice(VringStateRaw { index, num: 0 }.as_bytes());
            }
            Self::SharedObjectAdd { uuid }
            | Self::SharedObjectRemove { uuid }
            | Self::SharedObjectLookup { uuid } => {
                p.extend_from_slice(&uuid.0);
            }
            Self::ShmemMap { map, fd } => {
                p.extend_from_slice(ShmemMmapRaw::from(map).as_bytes());
                fds.push(fd);
            }
            Self::ShmemUnmap { map } => p.extend_from_slice(ShmemMmapRaw::from(map).as_bytes()),
        }
        Ok(Encoded::frame(
            code,
            HeaderFlags::request(need_reply),
            &p,
            fds,
        ))
    }
}
