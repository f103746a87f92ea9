//! Per-request framing limits: payload size (spec §11) and fd count (spec §5, §6), the
//! table the decoder checks **before** buffering a body.
//!
//! These are header-level limits. Rules that need the payload (SET_MEM_TABLE fds ==
//! num_regions, SET_VRING_KICK fd iff the no-fd bit is clear, ...) are checked when the
//! body is decoded.

use super::codes::{BackendReq, FrontendReq};
use super::context::DecodeContext;
use super::layout::{
    CRYPTO_SESSION_SIZE, ConfigHeaderRaw, DeviceStateParamsRaw, InflightDescRaw, IotlbMsgRaw,
    LogDescriptionRaw, MAX_MEM_REGIONS, MAX_PAYLOAD_SIZE, MemoryTableHeaderRaw, SharedObjectRaw,
    ShmemConfigRaw, ShmemMmapRaw, SingleRegionHeaderRaw, U64Payload, VringAddrRaw, VringAreaRaw,
    VringStateRaw,
};

/// An inclusive range of allowed values (payload bytes or fds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// Smallest allowed value.
    pub min: usize,
    /// Largest allowed value.
    pub max: usize,
}

impl Limit {
    /// Exactly `n`.
    pub const fn exact(n: usize) -> Self {
        Limit { min: n, max: n }
    }

    /// `min..=max`.
    pub const fn range(min: usize, max: usize) -> Self {
        Limit { min, max }
    }

    /// Whether `n` is allowed.
    pub const fn allows(&self, n: usize) -> bool {
        n >= self.min && n <= self.max
    }
}

const NONE: Limit = Limit::exact(0);
const U64: Limit = Limit::exact(size_of::<U64Payload>());
const STATE: Limit = Limit::exact(size_of::<VringStateRaw>());
const CONFIG: Limit = Limit::range(size_of::<ConfigHeaderRaw>(), MAX_PAYLOAD_SIZE);
const ONE: Limit = Limit::exact(1);
const OPT: Limit = Limit::range(0, 1);

fn mem_table(ctx: &DecodeContext) -> Limit {
    let h = size_of::<MemoryTableHeaderRaw>();
    Limit::range(h, h + MAX_MEM_REGIONS * ctx.region_size())
}

fn single_region(ctx: &DecodeContext) -> usize {
    size_of::<SingleRegionHeaderRaw>() + ctx.region_size()
}

/// Payload size limit of a front-end request (spec §11).
pub fn frontend_request_size(req: FrontendReq, ctx: &DecodeContext) -> Limit {
    use FrontendReq::*;
    match req {
        GetFeatures | SetOwner | ResetOwner | SetLogFd | GetProtocolFeatures | GetQueueNum
        | SetBackendReqFd | PostcopyAdvise | PostcopyListen | PostcopyEnd | GpuSetSocket
        | ResetDevice | GetMaxMemSlots | GetStatus | CheckDeviceState | GetShmemConfig => NONE,
        SetFeatures | SetVringKick | SetVringCall | SetVringErr | SetProtocolFeatures
        | SendRarp | NetSetMtu | CloseCryptoSession | SetStatus => U64,
        SetVringNum | SetVringBase | GetVringBase | SetVringEnable | SetVringEndian | VringKick => {
            STATE
        }
        SetMemTable => mem_table(ctx),
        SetLogBase => Limit::exact(size_of::<LogDescriptionRaw>()),
        SetVringAddr => Limit::exact(size_of::<VringAddrRaw>()),
        IotlbMsg => Limit::exact(size_of::<IotlbMsgRaw>()),
        GetConfig | SetConfig => CONFIG,
        CreateCryptoSession => Limit::exact(CRYPTO_SESSION_SIZE),
        GetInflightFd | SetInflightFd => Limit::exact(size_of::<InflightDescRaw>()),
        // The postcopy follow-up ack of ADD_MEM_REG is a u64 (spec §7.7).
        AddMemReg if ctx.postcopy => Limit::range(U64.min, single_region(ctx)),
        AddMemReg | RemMemReg => Limit::exact(single_region(ctx)),
        GetSharedObject => Limit::exact(size_of::<SharedObjectRaw>()),
        SetDeviceStateFd => Limit::exact(size_of::<DeviceStateParamsRaw>()),
    }
}

/// Fd count limit of a front-end request (spec §5 "fds" column).
pub fn frontend_request_fds(req: FrontendReq, ctx: &DecodeContext) -> Limit {
    use FrontendReq::*;
    match req {
        SetMemTable => Limit::range(0, MAX_MEM_REGIONS),
        SetLogBase if ctx.log_shmfd => ONE,
        SetLogFd | SetBackendReqFd | SetInflightFd | GpuSetSocket | SetDeviceStateFd => ONE,
        AddMemReg if ctx.postcopy => OPT,
        AddMemReg => ONE,
        // An fd on REM_MEM_REG is closed unused, not an error (spec §5 id 38).
        SetVringKick | SetVringCall | SetVringErr | RemMemReg => OPT,
        _ => NONE,
    }
}

/// Payload size limit of the reply to a front-end request (spec §5 "Reply", §11). Every
/// request may get a u64 ack (REPLY_ACK); requests with an explicit reply body get that.
pub fn frontend_reply_size(req: FrontendReq, ctx: &DecodeContext) -> Limit {
    use FrontendReq::*;
    match req {
        GetVringBase => STATE,
        GetConfig => Limit::range(0, MAX_PAYLOAD_SIZE),
        CreateCryptoSession => Limit::exact(CRYPTO_SESSION_SIZE),
        PostcopyAdvise => NONE,
        GetInflightFd => Limit::exact(size_of::<InflightDescRaw>()),
        SetMemTable if ctx.postcopy => mem_table(ctx),
        AddMemReg if ctx.postcopy => Limit::exact(single_region(ctx)),
        SetLogBase => Limit::range(0, U64.max),
        GetSharedObject => Limit::range(0, size_of::<SharedObjectRaw>()),
        GetShmemConfig => Limit::exact(size_of::<ShmemConfigRaw>()),
        _ => U64,
    }
}

/// Fd count limit of the reply to a front-end request (spec §5).
pub fn frontend_reply_fds(req: FrontendReq) -> Limit {
    use FrontendReq::*;
    match req {
        PostcopyAdvise => ONE,
        GetInflightFd | GetSharedObject | SetDeviceStateFd => OPT,
        _ => NONE,
    }
}

/// Payload size limit of a back-end request (spec §6, §11).
pub fn backend_request_size(req: BackendReq) -> Limit {
    use BackendReq::*;
    match req {
        IotlbMsg => Limit::exact(size_of::<IotlbMsgRaw>()),
        ConfigChangeMsg => NONE,
        VringHostNotifierMsg => Limit::exact(size_of::<VringAreaRaw>()),
        VringCall | VringErr => STATE,
        SharedObjectAdd | SharedObjectRemove | SharedObjectLookup => {
            Limit::exact(size_of::<SharedObjectRaw>())
        }
        ShmemMap | ShmemUnmap => Limit::exact(size_of::<ShmemMmapRaw>()),
    }
}

/// Fd count limit of a back-end request (spec §6 "fds" column).
pub fn backend_request_fds(req: BackendReq) -> Limit {
    use BackendReq::*;
    match req {
        VringHostNotifierMsg => OPT,
        ShmemMap => ONE,
        _ => NONE,
    }
}

/// Payload size limit of the reply to a back-end request: always a u64 (spec §6).
pub fn backend_reply_size(_req: BackendReq) -> Limit {
    U64
}

/// Fd count limit of the reply to a back-end request (spec §6).
pub fn backend_reply_fds(req: BackendReq) -> Limit {
    match req {
        BackendReq::SharedObjectLookup => OPT,
        _ => NONE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_spec_table() {
        let c = DecodeContext::default();
        let x = DecodeContext {
            xen_mmap: true,
            ..c
        };
        assert_eq!(
            frontend_request_size(FrontendReq::SetMemTable, &c),
            Limit::range(8, 264)
        );
        assert_eq!(
            frontend_request_size(FrontendReq::SetMemTable, &x),
            Limit::range(8, 328)
        );
        assert_eq!(
            frontend_request_size(FrontendReq::AddMemReg, &c),
            Limit::exact(40)
        );
        assert_eq!(
            frontend_request_size(FrontendReq::AddMemReg, &x),
            Limit::exact(48)
        );
        assert_eq!(
            frontend_request_size(FrontendReq::SetVringAddr, &c),
            Limit::exact(40)
        );
        assert_eq!(
            frontend_request_size(FrontendReq::IotlbMsg, &c),
            Limit::exact(32)
        );
        assert_eq!(
            frontend_request_size(FrontendReq::SetConfig, &c),
            Limit::range(12, 4108)
        );
        assert_eq!(
            frontend_request_size(FrontendReq::GetInflightFd, &c),
            Limit::exact(24)
        );
        assert_eq!(
            frontend_request_size(FrontendReq::CreateCryptoSession, &c),
            Limit::exact(1072)
        );
        assert_eq!(
            frontend_reply_size(FrontendReq::GetShmemConfig, &c),
            Limit::exact(2056)
        );
        assert_eq!(
            frontend_reply_size(FrontendReq::GetFeatures, &c),
            Limit::exact(8)
        );
        assert_eq!(
            frontend_reply_size(FrontendReq::PostcopyAdvise, &c),
            Limit::exact(0)
        );
        assert_eq!(backend_request_size(BackendReq::ShmemMap), Limit::exact(40));
        assert_eq!(
            backend_request_size(BackendReq::VringHostNotifierMsg),
            Limit::exact(24)
        );
        for r in FrontendReq::ALL {
            assert!(frontend_request_size(*r, &x).max <= MAX_PAYLOAD_SIZE);
            assert!(frontend_reply_size(*r, &x).max <= MAX_PAYLOAD_SIZE);
            assert!(frontend_request_fds(*r, &x).max <= MAX_MEM_REGIONS);
        }
    }
}
