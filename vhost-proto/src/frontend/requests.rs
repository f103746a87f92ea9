//! One typed helper per front-end request (spec §5, ids 1–44), on top of
//! [`Connection::send_at`].
//!
//! Every helper takes the current time first (the core reads no clock; the time starts the
//! request's reply deadline, see [`Connection::poll_timeout`]), checks the request against
//! the negotiation the connection tracks (a missing feature is an
//! [`ApiError::NotNegotiated`] and nothing is sent), and returns the [`RequestId`] its
//! completion carries. The completion's typed value is
//! [`Event::into_reply`](super::Event::into_reply); the `Reply` variant each helper gets is
//! named in its doc. Requests without a reply body complete with [`Reply::Ack`] under
//! REPLY_ACK, and without any event otherwise.
//!
//! Rings are named by a `u16` index everywhere; where the wire field is 8 bits
//! (SET_VRING_KICK/CALL/ERR) an index above 255 is an [`ApiError::InvalidArgument`].
//!
//! [`Reply::Ack`]: super::Reply::Ack

use std::time::Instant;

use crate::session::ApiError;
use crate::wire::{
    ConfigFlags, CryptoSession, DeviceStatus, FrontendReq, FrontendRequest, InflightDesc, IotlbMsg,
    LogDescription, MemoryRegion, MigrationPhase, ProtocolFeatures, RegionFd, TransferDirection,
    Uuid, VirtioFeatures, VringAddr, VringBase, VringEndian,
};

use super::connection::Connection;
use super::event::RequestId;

fn index8(request: FrontendReq, index: u16) -> Result<u8, ApiError> {
    u8::try_from(index).map_err(|_| ApiError::InvalidArgument {
        request: request.into(),
        reason: "vring index above 255 (the wire field is 8 bits)",
    })
}

impl<H> Connection<H> {
    /// GET_FEATURES (1) → `Reply::Features`.
    pub fn get_features(&mut self, now: Instant) -> Result<RequestId, ApiError> {
        self.send_at(now, FrontendRequest::GetFeatures)
    }

    /// SET_FEATURES (2): a subset of what GET_FEATURES offered (read it first).
    pub fn set_features(
        &mut self,
        now: Instant,
        features: VirtioFeatures,
    ) -> Result<RequestId, ApiError> {
        self.send_at(now, FrontendRequest::SetFeatures { features })
    }

    /// SET_OWNER (3).
    pub fn set_owner(&mut self, now: Instant) -> Result<RequestId, ApiError> {
        self.send_at(now, FrontendRequest::SetOwner)
    }

    /// RESET_OWNER (4, deprecated; QEMU no longer sends it: prefer RESET_DEVICE).
    pub fn reset_owner(&mut self, now: Instant) -> Result<RequestId, ApiError> {
        self.send_at(now, FrontendRequest::ResetOwner)
    }

    /// SET_MEM_TABLE (5): the whole memory map, one fd per region (at most 8). While
    /// postcopy listens → `Reply::PostcopyMemTable`, to be acknowledged with
    /// [`set_mem_table_postcopy_ack`](Self::set_mem_table_postcopy_ack).
    pub fn set_mem_table(
        &mut self,
        now: Instant,
        regions: Vec<RegionFd<H>>,
    ) -> Result<RequestId, ApiError> {
        self.send_at(now, FrontendRequest::SetMemTable { regions })
    }

    /// SET_MEM_TABLE (5) as the postcopy acknowledgement of the back-end's table (0 = OK,
    /// spec §7.7).
    pub fn set_mem_table_postcopy_ack(
        &mut self,
        now: Instant,
        value: u64,
    ) -> Result<RequestId, ApiError> {
        self.send_at(now, FrontendRequest::SetMemTablePostcopyAck { value })
    }

    /// SET_LOG_BASE (6, needs LOG_SHMFD): the dirty log in `fd` → `Reply::LogBase`.
    pub fn set_log_base(
        &mut self,
        now: Instant,
        log: LogDescription,
        fd: H,
    ) -> Result<RequestId, ApiError> {
        self.send_at(now, FrontendRequest::SetLogBase { log, fd: Some(fd) })
    }

    /// SET_LOG_FD (7): the eventfd the back-end signals after log writes.
    pub fn set_log_fd(&mut self, now: Instant, fd: H) -> Result<RequestId, ApiError> {
        self.send_at(now, FrontendRequest::SetLogFd { fd })
    }

    /// SET_VRING_NUM (8): the queue size of ring `index`.
    pub fn set_vring_num(
        &mut self,
        now: Instant,
        index: u16,
        num: u16,
    ) -> Result<RequestId, ApiError> {
        self.send_at(
            now,
            FrontendRequest::SetVringNum {
                index: index.into(),
                num: num.into(),
            },
        )
    }

    /// SET_VRING_ADDR (9): the addresses of ring `index` (`addr.index` is set from it).
    pub fn set_vring_addr(
        &mut self,
        now: Instant,
        index: u16,
        addr: VringAddr,
    ) -> Result<RequestId, ApiError> {
        let addr = VringAddr {
            index: index.into(),
            ..addr
        };
        self.send_at(now, FrontendRequest::SetVringAddr { addr })
    }

    /// SET_VRING_BASE (10): where ring `index` starts (split or packed form).
    pub fn set_vring_base(
        &mut self,
        now: Instant,
        index: u16,
        base: VringBase,
    ) -> Result<RequestId, ApiError> {
        self.send_at(
            now,
            FrontendRequest::SetVringBase {
                index: index.into(),
                base,
            },
        )
    }

    /// GET_VRING_BASE (11): stops ring `index` → `Reply::VringBase`.
    pub fn get_vring_base(&mut self, now: Instant, index: u16) -> Result<RequestId, ApiError> {
        self.send_at(
            now,
            FrontendRequest::GetVringBase {
                index: index.into(),
            },
        )
    }

    /// SET_VRING_KICK (12): the kick eventfd of ring `index` (≤ 255); `None`: the back-end
    /// polls.
    pub fn set_vring_kick(
        &mut self,
        now: Instant,
        index: u16,
        fd: Option<H>,
    ) -> Result<RequestId, ApiError> {
        let index = index8(FrontendReq::SetVringKick, index)?;
        self.send_at(now, FrontendRequest::SetVringKick { index, fd })
    }

    /// SET_VRING_CALL (13): the call eventfd of ring `index` (≤ 255); `None`: the front-end
    /// polls (or gets BACKEND_VRING_CALL in-band).
    pub fn set_vring_call(
        &mut self,
        now: Instant,
        index: u16,
        fd: Option<H>,
    ) -> Result<RequestId, ApiError> {
        let index = index8(FrontendReq::SetVringCall, index)?;
        self.send_at(now, FrontendRequest::SetVringCall { index, fd })
    }

    /// SET_VRING_ERR (14): the error eventfd of ring `index` (≤ 255).
    pub fn set_vring_err(
        &mut self,
        now: Instant,
        index: u16,
        fd: Option<H>,
    ) -> Result<RequestId, ApiError> {
        let index = index8(FrontendReq::SetVringErr, index)?;
        self.send_at(now, FrontendRequest::SetVringErr { index, fd })
    }

    /// GET_PROTOCOL_FEATURES (15, needs the PROTOCOL_FEATURES offer) →
    /// `Reply::ProtocolFeatures`.
    pub fn get_protocol_features(&mut self, now: Instant) -> Result<RequestId, ApiError> {
        self.send_at(now, FrontendRequest::GetProtocolFeatures)
    }

    /// SET_PROTOCOL_FEATURES (16): a subset of the offer, with its dependencies.
    pub fn set_protocol_features(
        &mut self,
        now: Instant,
        features: ProtocolFeatures,
    ) -> Result<RequestId, ApiError> {
        self.send_at(now, FrontendRequest::SetProtocolFeatures { features })
    }

    /// GET_QUEUE_NUM (17, needs MQ) → `Reply::QueueNum`.
    pub fn get_queue_num(&mut self, now: Instant) -> Result<RequestId, ApiError> {
        self.send_at(now, FrontendRequest::GetQueueNum)
    }

    /// SET_VRING_ENABLE (18, needs PROTOCOL_FEATURES acked).
    pub fn set_vring_enable(
        &mut self,
        now: Instant,
        index: u16,
        enable: bool,
    ) -> Result<RequestId, ApiError> {
        self.send_at(
            now,
            FrontendRequest::SetVringEnable {
                index: index.into(),
                enable,
            },
        )
    }

    /// SEND_RARP (19, needs RARP): the guest's MAC.
    pub fn send_rarp(&mut self, now: Instant, mac: [u8; 6]) -> Result<RequestId, ApiError> {
        self.send_at(now, FrontendRequest::SendRarp { mac })
    }

    /// NET_SET_MTU (20, needs MTU).
    pub fn net_set_mtu(&mut self, now: Instant, mtu: u64) -> Result<RequestId, ApiError> {
        self.send_at(now, FrontendRequest::NetSetMtu { mtu })
    }

    /// SET_BACKEND_REQ_FD (21, needs BACKEND_REQ): the back-end channel socket.
    pub fn set_backend_req_fd(&mut self, now: Instant, fd: H) -> Result<RequestId, ApiError> {
        self.send_at(now, FrontendRequest::SetBackendReqFd { fd })
    }

    /// IOTLB_MSG (22, needs ACCESS_PLATFORM) → `Reply::Iotlb`.
    pub fn iotlb_msg(&mut self, now: Instant, msg: IotlbMsg) -> Result<RequestId, ApiError> {
        self.send_at(now, FrontendRequest::IotlbMsg { msg })
    }

    /// SET_VRING_ENDIAN (23, needs CROSS_ENDIAN): byte order of legacy ring `index`.
    pub fn set_vring_endian(
        &mut self,
        now: Instant,
        index: u16,
        endian: VringEndian,
    ) -> Result<RequestId, ApiError> {
        self.send_at(
            now,
            FrontendRequest::SetVringEndian {
                index: index.into(),
                endian,
            },
        )
    }

    /// GET_CONFIG (24, needs CONFIG): `size` bytes at `offset` → `Reply::Config` or
    /// `Reply::ConfigRefused`.
    pub fn get_config(
        &mut self,
        now: Instant,
        offset: u32,
        size: u32,
        flags: ConfigFlags,
    ) -> Result<RequestId, ApiError> {
        self.send_at(
            now,
            FrontendRequest::GetConfig {
                offset,
                size,
                flags,
            },
        )
    }

    /// SET_CONFIG (25, needs CONFIG).
    pub fn set_config(
        &mut self,
        now: Instant,
        offset: u32,
        flags: ConfigFlags,
        data: Vec<u8>,
    ) -> Result<RequestId, ApiError> {
        self.send_at(
            now,
            FrontendRequest::SetConfig {
                offset,
                flags,
                data,
            },
        )
    }

    /// CREATE_CRYPTO_SESSION (26, needs CRYPTO_SESSION) → `Reply::CryptoSession`.
    pub fn create_crypto_session(
        &mut self,
        now: Instant,
        session: Box<CryptoSession>,
    ) -> Result<RequestId, ApiError> {
        self.send_at(now, FrontendRequest::CreateCryptoSession { session })
    }

    /// CLOSE_CRYPTO_SESSION (27, needs CRYPTO_SESSION).
    pub fn close_crypto_session(
        &mut self,
        now: Instant,
        session_id: u64,
    ) -> Result<RequestId, ApiError> {
        self.send_at(now, FrontendRequest::CloseCryptoSession { session_id })
    }

    /// POSTCOPY_ADVISE (28, needs PAGEFAULT) → `Reply::Userfaultfd`.
    pub fn postcopy_advise(&mut self, now: Instant) -> Result<RequestId, ApiError> {
        self.send_at(now, FrontendRequest::PostcopyAdvise)
    }

    /// POSTCOPY_LISTEN (29, needs PAGEFAULT; always sent with NEED_REPLY, as QEMU does) →
    /// `Reply::Ack`.
    pub fn postcopy_listen(&mut self, now: Instant) -> Result<RequestId, ApiError> {
        self.send_at(now, FrontendRequest::PostcopyListen)
    }

    /// POSTCOPY_END (30, needs PAGEFAULT) → `Reply::PostcopyEnd`.
    pub fn postcopy_end(&mut self, now: Instant) -> Result<RequestId, ApiError> {
        self.send_at(now, FrontendRequest::PostcopyEnd)
    }

    /// GET_INFLIGHT_FD (31, needs INFLIGHT_SHMFD) → `Reply::Inflight` or
    /// `Reply::NoInflight`.
    pub fn get_inflight_fd(
        &mut self,
        now: Instant,
        num_queues: u16,
        queue_size: u16,
    ) -> Result<RequestId, ApiError> {
        let desc = InflightDesc {
            num_queues,
            queue_size,
            ..InflightDesc::default()
        };
        self.send_at(now, FrontendRequest::GetInflightFd { desc })
    }

    /// SET_INFLIGHT_FD (32, needs INFLIGHT_SHMFD).
    pub fn set_inflight_fd(
        &mut self,
        now: Instant,
        desc: InflightDesc,
        fd: H,
    ) -> Result<RequestId, ApiError> {
        self.send_at(now, FrontendRequest::SetInflightFd { desc, fd })
    }

    /// GPU_SET_SOCKET (33): the vhost-user-gpu socket (no protocol gate: the device
    /// decides).
    pub fn gpu_set_socket(&mut self, now: Instant, fd: H) -> Result<RequestId, ApiError> {
        self.send_at(now, FrontendRequest::GpuSetSocket { fd })
    }

    /// RESET_DEVICE (34, needs RESET_DEVICE).
    pub fn reset_device(&mut self, now: Instant) -> Result<RequestId, ApiError> {
        self.send_at(now, FrontendRequest::ResetDevice)
    }

    /// VRING_KICK (35, needs INBAND_NOTIFICATIONS): an in-band kick of ring `index`.
    pub fn vring_kick(&mut self, now: Instant, index: u16) -> Result<RequestId, ApiError> {
        self.send_at(
            now,
            FrontendRequest::VringKick {
                index: index.into(),
            },
        )
    }

    /// GET_MAX_MEM_SLOTS (36, needs CONFIGURE_MEM_SLOTS) → `Reply::MaxMemSlots`.
    pub fn get_max_mem_slots(&mut self, now: Instant) -> Result<RequestId, ApiError> {
        self.send_at(now, FrontendRequest::GetMaxMemSlots)
    }

    /// ADD_MEM_REG (37, needs CONFIGURE_MEM_SLOTS). While postcopy listens →
    /// `Reply::PostcopyRegion`, acknowledged with
    /// [`add_mem_reg_postcopy_ack`](Self::add_mem_reg_postcopy_ack).
    pub fn add_mem_reg(
        &mut self,
        now: Instant,
        region: RegionFd<H>,
    ) -> Result<RequestId, ApiError> {
        self.send_at(now, FrontendRequest::AddMemReg { region })
    }

    /// ADD_MEM_REG (37) as the postcopy acknowledgement (0 = OK, spec §7.7).
    pub fn add_mem_reg_postcopy_ack(
        &mut self,
        now: Instant,
        value: u64,
    ) -> Result<RequestId, ApiError> {
        self.send_at(now, FrontendRequest::AddMemRegPostcopyAck { value })
    }

    /// REM_MEM_REG (38, needs CONFIGURE_MEM_SLOTS).
    pub fn rem_mem_reg(
        &mut self,
        now: Instant,
        region: MemoryRegion,
    ) -> Result<RequestId, ApiError> {
        self.send_at(now, FrontendRequest::RemMemReg { region })
    }

    /// SET_STATUS (39, needs STATUS).
    pub fn set_status(
        &mut self,
        now: Instant,
        status: DeviceStatus,
    ) -> Result<RequestId, ApiError> {
        self.send_at(now, FrontendRequest::SetStatus { status })
    }

    /// GET_STATUS (40, needs STATUS) → `Reply::Status`.
    pub fn get_status(&mut self, now: Instant) -> Result<RequestId, ApiError> {
        self.send_at(now, FrontendRequest::GetStatus)
    }

    /// GET_SHARED_OBJECT (41, needs SHARED_OBJECT) → `Reply::SharedObject`.
    pub fn get_shared_object(&mut self, now: Instant, uuid: Uuid) -> Result<RequestId, ApiError> {
        self.send_at(now, FrontendRequest::GetSharedObject { uuid })
    }

    /// SET_DEVICE_STATE_FD (42, needs DEVICE_STATE): the state-transfer pipe end →
    /// `Reply::DeviceStateFd`.
    pub fn set_device_state_fd(
        &mut self,
        now: Instant,
        direction: TransferDirection,
        phase: MigrationPhase,
        fd: H,
    ) -> Result<RequestId, ApiError> {
        self.send_at(
            now,
            FrontendRequest::SetDeviceStateFd {
                direction,
                phase,
                fd,
            },
        )
    }

    /// CHECK_DEVICE_STATE (43, needs DEVICE_STATE) → `Reply::DeviceState`.
    pub fn check_device_state(&mut self, now: Instant) -> Result<RequestId, ApiError> {
        self.send_at(now, FrontendRequest::CheckDeviceState)
    }

    /// GET_SHMEM_CONFIG (44, needs SHMEM) → `Reply::ShmemConfig`.
    pub fn get_shmem_config(&mut self, now: Instant) -> Result<RequestId, ApiError> {
        self.send_at(now, FrontendRequest::GetShmemConfig)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::wire::layout::CRYPTO_SESSION_SIZE;
    use crate::wire::{
        DecodeContext, FrontendReply, FrontendRequestDecoder, Input, IotlbPerm, IotlbType,
        VringAddrFlags,
    };

    type Helper = fn(&mut Connection<i32>, Instant) -> Result<RequestId, ApiError>;

    fn region() -> MemoryRegion {
        MemoryRegion {
            guest_phys_addr: 0,
            memory_size: 0x1000,
            user_addr: 0x10_0000,
            mmap_offset: 0,
            xen: None,
        }
    }

    /// Every request 1–44 (the postcopy acks need postcopy state and are left out) with the
    /// code it must put on the wire.
    fn helpers() -> Vec<(FrontendReq, Helper)> {
        use FrontendReq as C;
        vec![
            (C::GetFeatures, |c, t| c.get_features(t)),
            (C::SetFeatures, |c, t| {
                c.set_features(t, VirtioFeatures::VERSION_1)
            }),
            (C::SetOwner, |c, t| c.set_owner(t)),
            (C::ResetOwner, |c, t| c.reset_owner(t)),
            (C::SetMemTable, |c, t| {
                c.set_mem_table(
                    t,
                    vec![RegionFd {
                        region: region(),
                        fd: 5,
                    }],
                )
            }),
            (C::SetLogBase, |c, t| {
                c.set_log_base(
                    t,
                    LogDescription {
                        mmap_size: 4096,
                        mmap_offset: 0,
                    },
                    5,
                )
            }),
            (C::SetLogFd, |c, t| c.set_log_fd(t, 5)),
            (C::SetVringNum, |c, t| c.set_vring_num(t, 300, 256)),
            (C::SetVringAddr, |c, t| {
                c.set_vring_addr(
                    t,
                    1,
                    VringAddr {
                        index: 0,
                        flags: VringAddrFlags::empty(),
                        desc: 0,
                        used: 0x1000,
                        avail: 0x800,
                        log: 0,
                    },
                )
            }),
            (C::SetVringBase, |c, t| {
                c.set_vring_base(t, 1, VringBase::split(3))
            }),
            (C::GetVringBase, |c, t| c.get_vring_base(t, 1)),
            (C::SetVringKick, |c, t| c.set_vring_kick(t, 255, Some(5))),
            (C::SetVringCall, |c, t| c.set_vring_call(t, 1, None)),
            (C::SetVringErr, |c, t| c.set_vring_err(t, 1, Some(5))),
            (C::GetProtocolFeatures, |c, t| c.get_protocol_features(t)),
            (C::SetProtocolFeatures, |c, t| {
                c.set_protocol_features(t, ProtocolFeatures::MQ)
            }),
            (C::GetQueueNum, |c, t| c.get_queue_num(t)),
            (C::SetVringEnable, |c, t| c.set_vring_enable(t, 1, true)),
            (C::SendRarp, |c, t| c.send_rarp(t, [2, 0, 0, 0, 0, 1])),
            (C::NetSetMtu, |c, t| c.net_set_mtu(t, 1500)),
            (C::SetBackendReqFd, |c, t| c.set_backend_req_fd(t, 5)),
            (C::IotlbMsg, |c, t| {
                c.iotlb_msg(
                    t,
                    IotlbMsg {
                        iova: 0,
                        size: 4096,
                        uaddr: 0,
                        perm: IotlbPerm::all(),
                        kind: IotlbType::Update,
                    },
                )
            }),
            (C::SetVringEndian, |c, t| {
                c.set_vring_endian(t, 1, VringEndian::Big)
            }),
            (C::GetConfig, |c, t| {
                c.get_config(t, 0, 8, ConfigFlags::Frontend)
            }),
            (C::SetConfig, |c, t| {
                c.set_config(t, 0, ConfigFlags::Frontend, vec![1, 2])
            }),
            (C::CreateCryptoSession, |c, t| {
                c.create_crypto_session(t, Box::new(CryptoSession([0; CRYPTO_SESSION_SIZE])))
            }),
            (C::CloseCryptoSession, |c, t| c.close_crypto_session(t, 3)),
            (C::PostcopyAdvise, |c, t| c.postcopy_advise(t)),
            (C::PostcopyListen, |c, t| c.postcopy_listen(t)),
            (C::PostcopyEnd, |c, t| c.postcopy_end(t)),
            (C::GetInflightFd, |c, t| c.get_inflight_fd(t, 2, 256)),
            (C::SetInflightFd, |c, t| {
                c.set_inflight_fd(
                    t,
                    InflightDesc {
                        mmap_size: 4096,
                        mmap_offset: 0,
                        num_queues: 2,
                        queue_size: 256,
                    },
                    5,
                )
            }),
            (C::GpuSetSocket, |c, t| c.gpu_set_socket(t, 5)),
            (C::ResetDevice, |c, t| c.reset_device(t)),
            (C::VringKick, |c, t| c.vring_kick(t, 1)),
            (C::GetMaxMemSlots, |c, t| c.get_max_mem_slots(t)),
            (C::AddMemReg, |c, t| {
                c.add_mem_reg(
                    t,
                    RegionFd {
                        region: region(),
                        fd: 5,
                    },
                )
            }),
            (C::RemMemReg, |c, t| c.rem_mem_reg(t, region())),
            (C::SetStatus, |c, t| {
                c.set_status(t, DeviceStatus::ACKNOWLEDGE)
            }),
            (C::GetStatus, |c, t| c.get_status(t)),
            (C::GetSharedObject, |c, t| {
                c.get_shared_object(t, Uuid([7; 16]))
            }),
            (C::SetDeviceStateFd, |c, t| {
                c.set_device_state_fd(t, TransferDirection::Save, MigrationPhase::Stopped, 5)
            }),
            (C::CheckDeviceState, |c, t| c.check_device_state(t)),
            (C::GetShmemConfig, |c, t| c.get_shmem_config(t)),
        ]
    }

    fn reply(c: &mut Connection<i32>, code: FrontendReq, value: u64) {
        let r = FrontendReply::<i32>::U64 { value }
            .encode(code, &DecodeContext::default())
            .unwrap();
        c.handle_input(&r.bytes, r.fds).unwrap();
    }

    /// A connection where everything but REPLY_ACK (and what needs it) was negotiated.
    fn negotiated() -> Connection<i32> {
        let t = Instant::now();
        let mut c = Connection::new();
        c.get_features(t).unwrap();
        reply(
            &mut c,
            FrontendReq::GetFeatures,
            VirtioFeatures::all().bits(),
        );
        c.set_features(t, VirtioFeatures::all()).unwrap();
        c.get_protocol_features(t).unwrap();
        reply(
            &mut c,
            FrontendReq::GetProtocolFeatures,
            ProtocolFeatures::all().bits(),
        );
        let p = ProtocolFeatures::all()
            - ProtocolFeatures::REPLY_ACK
            - ProtocolFeatures::INBAND_NOTIFICATIONS
            - ProtocolFeatures::XEN_MMAP;
        c.set_protocol_features(t, p).unwrap();
        while c.poll_transmit().is_some() {}
        while c.poll_event().is_some() {}
        c
    }

    #[test]
    fn every_helper_sends_its_request() {
        let t = Instant::now();
        let helpers = helpers();
        assert_eq!(helpers.len(), 44);
        for (code, helper) in helpers {
            let mut c = negotiated();
            if code == FrontendReq::VringKick {
                // Needs INBAND_NOTIFICATIONS, which needs REPLY_ACK.
                let p = c.negotiated().protocol
                    | ProtocolFeatures::REPLY_ACK
                    | ProtocolFeatures::INBAND_NOTIFICATIONS;
                c.set_protocol_features(t, p).unwrap();
                let _ = c.poll_transmit();
            }
            helper(&mut c, t).unwrap_or_else(|e| panic!("{code}: {e}"));
            let out = c
                .poll_transmit()
                .unwrap_or_else(|| panic!("{code}: nothing sent"));
            let mut d = FrontendRequestDecoder::new(c.negotiated().decode_context(false));
            let mut input = Input::new(&out.bytes, out.fds);
            let got = d.decode(&mut input).unwrap().unwrap();
            assert_eq!(got.code, code);
            assert_eq!(got.message.code(), code);
        }
    }

    #[test]
    fn gated_helpers_send_nothing() {
        let t = Instant::now();
        for (code, helper) in helpers() {
            let mut c = Connection::<i32>::new();
            let gated = crate::session::frontend_gate(code) != crate::session::Gate::None
                || matches!(code, FrontendReq::SetFeatures);
            let r = helper(&mut c, t);
            assert_eq!(r.is_err(), gated, "{code}: {r:?}");
            if gated {
                assert!(
                    matches!(r, Err(ApiError::NotNegotiated { .. })),
                    "{code}: {r:?}"
                );
                assert!(c.poll_transmit().is_none(), "{code} sent");
            }
        }
    }

    #[test]
    fn eight_bit_indexes_are_range_checked() {
        let t = Instant::now();
        let mut c = negotiated();
        for r in [
            c.set_vring_kick(t, 256, None),
            c.set_vring_call(t, 256, None),
            c.set_vring_err(t, 300, None),
        ] {
            assert!(matches!(r, Err(ApiError::InvalidArgument { .. })), "{r:?}");
        }
        assert!(c.poll_transmit().is_none());
        assert!(c.set_vring_num(t, 256, 8).is_ok());
    }
}
