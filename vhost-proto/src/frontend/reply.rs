//! The typed reply of each front-end request (spec §5 "Reply" column), as
//! [`Event::into_reply`](super::Event::into_reply) hands it out.

use crate::wire::{
    ConfigFlags, CryptoSession, DeviceStatus, FrontendReply, FrontendReq, InflightDesc,
    MemoryRegion, ProtocolFeatures, ShmemConfig, VirtioFeatures, VringBase,
};

/// What a request got back, typed by the request it answers. Values the spec defines as a
/// status (0 = success) are kept as the value; the caller decides what a non-zero one means.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reply<H> {
    /// The REPLY_ACK ack (0) of a request without a reply body of its own.
    Ack,
    /// GET_FEATURES (1).
    Features(VirtioFeatures),
    /// GET_PROTOCOL_FEATURES (15).
    ProtocolFeatures(ProtocolFeatures),
    /// GET_QUEUE_NUM (17).
    QueueNum(u64),
    /// GET_MAX_MEM_SLOTS (36).
    MaxMemSlots(u64),
    /// GET_STATUS (40).
    Status(DeviceStatus),
    /// GET_VRING_BASE (11): the stopped ring's position.
    VringBase {
        /// Vring index.
        index: u16,
        /// The position.
        base: VringBase,
    },
    /// GET_CONFIG (24): the bytes read.
    Config {
        /// Offset into config space.
        offset: u32,
        /// Flags value.
        flags: ConfigFlags,
        /// The bytes (as many as asked for).
        data: Vec<u8>,
    },
    /// GET_CONFIG (24) refused: the empty failure reply (libvhost-user).
    ConfigRefused,
    /// CREATE_CRYPTO_SESSION (26): the session with its id (negative: failure).
    CryptoSession(Box<CryptoSession>),
    /// POSTCOPY_ADVISE (28): the back-end's userfaultfd.
    Userfaultfd(H),
    /// GET_INFLIGHT_FD (31): the inflight buffer.
    Inflight {
        /// The buffer description.
        desc: InflightDesc,
        /// The buffer's fd.
        fd: H,
    },
    /// GET_INFLIGHT_FD (31): the back-end has no buffer to give (`mmap_size` 0, no fd).
    NoInflight {
        /// The reply's description (size 0).
        desc: InflightDesc,
    },
    /// SET_MEM_TABLE (5) while postcopy listens: the back-end's mapping addresses.
    PostcopyMemTable(Vec<MemoryRegion>),
    /// ADD_MEM_REG (37) while postcopy listens: the back-end's mapping address.
    PostcopyRegion(MemoryRegion),
    /// SET_LOG_BASE (6) with LOG_SHMFD: the u64 status, or `None` for the empty reply
    /// (DPDK).
    LogBase(Option<u64>),
    /// IOTLB_MSG (22): the u64 status (0 = success).
    Iotlb(u64),
    /// POSTCOPY_END (30): the u64 status (0 = success).
    PostcopyEnd(u64),
    /// CHECK_DEVICE_STATE (43): the u64 status (0 = the state transfer succeeded).
    DeviceState(u64),
    /// GET_SHARED_OBJECT (41): the dma-buf fd, `None` when the back-end has no such object.
    SharedObject(Option<H>),
    /// SET_DEVICE_STATE_FD (42): status (0 = ok) and the back-end's own channel end
    /// (`None`: use the front-end's).
    DeviceStateFd {
        /// 0 success, non-zero error.
        status: u8,
        /// The back-end's channel end.
        fd: Option<H>,
    },
    /// GET_SHMEM_CONFIG (44).
    ShmemConfig(Box<ShmemConfig>),
}

impl<H> Reply<H> {
    /// The typed form of a validated reply to `request`; a reply that does not fit the
    /// request is given back (the connection validated it already, so this does not happen
    /// for replies out of its events).
    pub fn from_reply(
        request: FrontendReq,
        reply: FrontendReply<H>,
    ) -> Result<Self, FrontendReply<H>> {
        use FrontendReply as P;
        use FrontendReq as C;
        Ok(match (request, reply) {
            (C::GetFeatures, P::U64 { value }) => {
                Reply::Features(VirtioFeatures::from_bits_retain(value))
            }
            (C::GetProtocolFeatures, P::U64 { value }) => {
                Reply::ProtocolFeatures(ProtocolFeatures::from_bits_retain(value))
            }
            (C::GetQueueNum, P::U64 { value }) => Reply::QueueNum(value),
            (C::GetMaxMemSlots, P::U64 { value }) => Reply::MaxMemSlots(value),
            (C::GetStatus, P::U64 { value }) => match u8::try_from(value) {
                Ok(b) => Reply::Status(DeviceStatus::from_bits_retain(b)),
                Err(_) => return Err(P::U64 { value }),
            },
            (C::IotlbMsg, P::U64 { value }) => Reply::Iotlb(value),
            (C::PostcopyEnd, P::U64 { value }) => Reply::PostcopyEnd(value),
            (C::CheckDeviceState, P::U64 { value }) => Reply::DeviceState(value),
            (C::SetLogBase, P::U64 { value }) => Reply::LogBase(Some(value)),
            (C::SetLogBase, P::Empty) => Reply::LogBase(None),
            (C::GetVringBase, P::VringBase { index, base }) => match u16::try_from(index) {
                Ok(index) => Reply::VringBase { index, base },
                Err(_) => return Err(P::VringBase { index, base }),
            },
            (C::GetConfig, P::Empty) => Reply::ConfigRefused,
            (
                C::GetConfig,
                P::Config {
                    offset,
                    flags,
                    data,
                },
            ) => Reply::Config {
                offset,
                flags,
                data,
            },
            (C::CreateCryptoSession, P::CryptoSession { session }) => Reply::CryptoSession(session),
            (C::PostcopyAdvise, P::PostcopyAdvise { fd }) => Reply::Userfaultfd(fd),
            (C::GetInflightFd, P::InflightFd { desc, fd: Some(fd) }) => {
                Reply::Inflight { desc, fd }
            }
            (C::GetInflightFd, P::InflightFd { desc, fd: None }) => Reply::NoInflight { desc },
            (C::SetMemTable, P::MemTable { regions }) => Reply::PostcopyMemTable(regions),
            (C::AddMemReg, P::AddMemReg { region }) => Reply::PostcopyRegion(region),
            (C::GetSharedObject, P::SharedObject { fd, .. }) => Reply::SharedObject(fd),
            (C::SetDeviceStateFd, P::DeviceStateFd { status, fd }) => {
                Reply::DeviceStateFd { status, fd }
            }
            (C::GetShmemConfig, P::ShmemConfig { config }) => Reply::ShmemConfig(config),
            (_, reply) => return Err(reply),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn typed_replies() {
        let r = Reply::<i32>::from_reply(FrontendReq::GetStatus, FrontendReply::U64 { value: 0xf });
        assert_eq!(r, Ok(Reply::Status(DeviceStatus::from_bits_retain(0xf))));
        let r =
            Reply::<i32>::from_reply(FrontendReq::GetStatus, FrontendReply::U64 { value: 0x100 });
        assert!(r.is_err());
        let r = Reply::<i32>::from_reply(FrontendReq::GetFeatures, FrontendReply::Empty);
        assert_eq!(r, Err(FrontendReply::Empty));
        let r = Reply::from_reply(
            FrontendReq::GetInflightFd,
            FrontendReply::InflightFd {
                desc: InflightDesc::default(),
                fd: Some(3),
            },
        );
        assert_eq!(
            r,
            Ok(Reply::Inflight {
                desc: InflightDesc::default(),
                fd: 3
            })
        );
    }
}
