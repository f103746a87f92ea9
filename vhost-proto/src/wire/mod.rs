//! The vhost-user wire codec: header, codes, payload layouts, typed messages, the
//! incremental [`Decoder`] and the encoders.
//!
//! Everything here follows `spec/vhost-user.md` (sections cited per item). Byte order is the
//! host's (spec §1); fd handles are a type parameter `H` that the codec only moves around.
//!
//! # Module layout
//!
//! | module | content |
//! |---|---|
//! | `header` | [`Header`], [`HeaderFlags`] (spec §2) |
//! | `codes` | [`FrontendReq`] (1–44), [`BackendReq`] (1–10), [`ReqCode`] (spec §5, §6) |
//! | [`layout`] | the raw `zerocopy` payload structs, one per spec §3 layout, with size asserts |
//! | `flags` | `bitflags` feature sets and flag words, value enums (spec §3, §4) |
//! | `types` | typed payload values ([`VringBase`], [`MemoryRegion`], [`IotlbMsg`], ...) |
//! | `context` | [`DecodeContext`]: negotiated state that changes layouts |
//! | `rules` | per-request payload size and fd count limits ([`Limit`], spec §11) |
//! | `payload` | shared payload pieces: region tables, config payloads, vring index word |
//! | `request` | [`FrontendRequest`] decode/encode |
//! | `backend_request` | [`BackendRequest`] decode/encode |
//! | `reply` | [`FrontendReply`], [`BackendReply`] decode/encode |
//! | `decoder` | [`Decoder`], [`Input`], [`Received`], [`WireMessage`] |
//! | `encode` | [`Encoded`] |
//! | `error` | [`DecodeError`], [`PayloadError`], [`EncodeError`], [`ErrorClass`] |

mod backend_request;
mod codes;
mod context;
mod decoder;
mod encode;
mod error;
mod flags;
mod header;
pub mod layout;
mod payload;
mod reply;
mod request;
pub mod rules;
mod types;

pub use backend_request::BackendRequest;
pub use codes::{BackendReq, FrontendReq, ReqCode};
pub use context::DecodeContext;
pub use decoder::{
    BackendReplyDecoder, BackendRequestDecoder, Decoder, FrontendReplyDecoder,
    FrontendRequestDecoder, Input, Received, WireMessage,
};
pub use encode::Encoded;
pub use error::{DecodeError, EncodeError, ErrorClass, PayloadError, UnknownCode};
pub use flags::{
    ConfigFlags, DeviceStatus, IotlbPerm, IotlbType, MigrationPhase, ProtocolFeatures,
    ShmemMapFlags, TransferDirection, VirtioFeatures, VringAddrFlags, VringEndian, VringFdFlags,
    XenMmapFlags,
};
pub use header::{HEADER_SIZE, Header, HeaderFlags, RESERVED_FLAGS_MASK, VERSION, VERSION_MASK};
pub use layout::{
    MAX_CONFIG_SIZE, MAX_MEM_REGIONS, MAX_PAYLOAD_SIZE, VRING_IDX_MASK, VRING_NOFD_MASK,
};
pub use reply::{BackendReply, FrontendReply};
pub use request::FrontendRequest;
pub use rules::Limit;
pub use types::{
    CryptoSession, InflightDesc, IotlbMsg, LogDescription, MemoryRegion, RegionFd, ShmemConfig,
    ShmemMap, Uuid, VringAddr, VringBase, XenRegion,
};
