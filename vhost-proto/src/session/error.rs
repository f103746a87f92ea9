//! The three error classes of a session.
//!
//! | class | type | what the embedder does |
//! |---|---|---|
//! | fatal protocol error | [`FatalError`] | close the connection (the stream can no longer be trusted) |
//! | rejected request | [`Rejection`] (in an event) | nothing: it was NACKed or answered with the spec's failure reply; log it |
//! | embedder error | [`ApiError`] | fix the caller: the API was used out of order |
//!
//! [`Error`] wraps all three with [`Error::class`] for callers that funnel them together.

use thiserror::Error;

use crate::wire::{
    BackendReq, DecodeError, EncodeError, FrontendReq, IotlbType, PayloadError, ProtocolFeatures,
    ReqCode, VirtioFeatures,
};

/// A protocol rule a request broke, or the device's refusal (spec section cited per variant).
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rule {
    /// The request needs a protocol feature that was not negotiated (spec §4.2, §5 "Gate").
    #[error("protocol feature {feature:?} not negotiated")]
    ProtocolFeatureNotNegotiated {
        /// The missing feature.
        feature: ProtocolFeatures,
    },
    /// The request needs a virtio feature that was not acked (spec §5 "Gate").
    #[error("virtio feature {feature:?} not negotiated")]
    VirtioFeatureNotNegotiated {
        /// The missing feature.
        feature: VirtioFeatures,
    },
    /// GET/SET_PROTOCOL_FEATURES without bit 30 offered (spec §7.1).
    #[error("VHOST_USER_F_PROTOCOL_FEATURES (bit 30) not offered")]
    ProtocolFeaturesNotOffered,
    /// SET_VRING_ENABLE without bit 30 acked in SET_FEATURES (spec §7.2).
    #[error("VHOST_USER_F_PROTOCOL_FEATURES (bit 30) not acked with SET_FEATURES")]
    ProtocolFeaturesNotAcked,
    /// SET_FEATURES acks bits that were not offered (spec §4.1).
    #[error("features {extra:?} were not offered")]
    FeaturesNotOffered {
        /// The bits not offered.
        extra: VirtioFeatures,
    },
    /// SET_FEATURES / SET_PROTOCOL_FEATURES before the offer was read (spec §7.1).
    #[error("the offer was not read yet (GET_FEATURES / GET_PROTOCOL_FEATURES first)")]
    OfferUnknown,
    /// SET_PROTOCOL_FEATURES sets bits that were not offered (spec §7.1: a subset).
    #[error("protocol features {extra:?} were not offered")]
    UnofferedProtocolFeatures {
        /// The bits not offered.
        extra: ProtocolFeatures,
    },
    /// A protocol feature set without the features it depends on (spec §4.2 constraints).
    #[error("protocol feature {feature:?} needs {needs:?}")]
    FeatureDependency {
        /// The feature.
        feature: ProtocolFeatures,
        /// What it needs.
        needs: ProtocolFeatures,
    },
    /// Vring index beyond the device's queue count (spec §7.5).
    #[error("vring index {index} out of range (device has {queues} queues)")]
    IndexOutOfRange {
        /// The index.
        index: u32,
        /// The queue count.
        queues: u16,
    },
    /// The request is not allowed while the ring runs (stop it with GET_VRING_BASE, spec §7.2).
    #[error("vring {index} is started")]
    RingStarted {
        /// The index.
        index: u16,
    },
    /// The ring cannot start: it lacks a size or addresses (spec §7.2).
    #[error("vring {index} is not configured (needs SET_VRING_NUM and SET_VRING_ADDR)")]
    RingNotConfigured {
        /// The index.
        index: u16,
    },
    /// SET_VRING_NUM outside 1..=max, or not a power of two for a split ring (virtqueue.md).
    #[error("queue size {num} invalid (max {max}, split rings need a power of two)")]
    QueueSize {
        /// The size.
        num: u32,
        /// The device maximum.
        max: u16,
    },
    /// A split-ring SET_VRING_BASE with reserved bits 16–31 set (spec §3.3).
    #[error("split ring base {base:#x} has reserved bits set")]
    SplitBaseReserved {
        /// The raw base.
        base: u32,
    },
    /// A ring address no memory region maps (spec §7.10).
    #[error("{area} address {addr:#x} is not in any memory region")]
    Untranslatable {
        /// Which area.
        area: &'static str,
        /// The address.
        addr: u64,
    },
    /// A ring address not aligned as the ring layout needs (virtqueue.md, spec §3.5).
    #[error("{area} address {addr:#x} is not {align}-byte aligned")]
    Misaligned {
        /// Which area.
        area: &'static str,
        /// The address.
        addr: u64,
        /// The alignment needed.
        align: u64,
    },
    /// Two memory regions overlap in guest-physical or user address space (spec §7.10).
    #[error("memory region {gpa:#x}+{size:#x} overlaps another region")]
    RegionOverlap {
        /// Guest-physical start of the new region.
        gpa: u64,
        /// Its size.
        size: u64,
    },
    /// More regions than the device's memory slots (spec §3.7, §5 id 36).
    #[error("{count} memory regions exceed the {max} slots")]
    TooManyRegions {
        /// Regions requested.
        count: usize,
        /// Slots available.
        max: u32,
    },
    /// REM_MEM_REG names no region with that guest address, user address and size (spec §5 id 38).
    #[error("no memory region at {gpa:#x} size {size:#x} to remove")]
    RegionNotFound {
        /// Guest-physical start.
        gpa: u64,
        /// Size.
        size: u64,
    },
    /// GPA_ADDRESSES: a region's user address differs from its guest address (spec §7.10).
    #[error("GPA_ADDRESSES: region user address {user:#x} differs from guest address {gpa:#x}")]
    GpaMismatch {
        /// Guest-physical start.
        gpa: u64,
        /// User address.
        user: u64,
    },
    /// A ring area (descriptor table, available/driver area, used/device area) that does not
    /// lie entirely inside one memory region: the ring could never be mapped (spec §7.10;
    /// sizes from virtqueue.md: split desc 16·Q, avail 6 + 2·Q, used 6 + 8·Q; packed desc 16·Q,
    /// event areas 4 each). `size` is 1 when the queue size is not known yet (only the start
    /// address is checked then).
    #[error("vring {index} {area} area {addr:#x}+{size:#x} is not inside one memory region")]
    RingAreaOutside {
        /// Vring index.
        index: u16,
        /// Which area.
        area: &'static str,
        /// Its start (user address at SET_VRING_ADDR, guest-physical at ring start).
        addr: u64,
        /// Its size in bytes.
        size: u64,
    },
    /// A ring cannot start without a memory table to map it from (spec §7.10).
    #[error("vring {index} cannot start: no memory table")]
    NoMemoryTable {
        /// Vring index.
        index: u16,
    },
    /// A packed ring's avail or used index (15 bits) is not below the ring size (spec §3.4,
    /// virtqueue.md: indexes count descriptor slots).
    #[error("packed vring {index} base avail {avail} / used {used} not below the size {size}")]
    PackedBaseOutOfRange {
        /// Vring index.
        index: u16,
        /// The avail index.
        avail: u16,
        /// The used index.
        used: u16,
        /// The ring size.
        size: u16,
    },
    /// SET_FEATURES changes the ring layout features (RING_PACKED, EVENT_IDX) while a ring
    /// runs on the old layout (spec §7.2: stop rings with GET_VRING_BASE first). Other bits
    /// (LOG_ALL during migration, spec §7.7) may change.
    #[error("features {changed:?} change while vring {index} is started")]
    RingFeaturesChanged {
        /// The layout bits that would change.
        changed: VirtioFeatures,
        /// A started ring.
        index: u16,
    },
    /// REM_MEM_REG of a region a started ring lives in (spec §5 id 38, §7.10).
    #[error("memory region {gpa:#x}+{size:#x} holds started vring {index}")]
    RegionInUse {
        /// Guest-physical start of the region.
        gpa: u64,
        /// Its size.
        size: u64,
        /// The ring that lives in it.
        index: u16,
    },
    /// SET_MEM_TABLE / ADD_MEM_REG beyond the device's memory limit
    /// ([`DeviceDescription::max_memory`](crate::backend::DeviceDescription::max_memory)).
    #[error("{total:#x} bytes of guest memory exceed the limit of {max:#x}")]
    MemoryLimit {
        /// Total bytes of all regions the table would hold.
        total: u64,
        /// The limit.
        max: u64,
    },
    /// GET_INFLIGHT_FD for more queues than the device has (spec §7.12).
    #[error("inflight buffer for {num_queues} queues, the device has {queues}")]
    InflightQueues {
        /// Queues asked for.
        num_queues: u16,
        /// The device's queue count.
        queues: u16,
    },
    /// GET_INFLIGHT_FD with a queue size of 0 or above the device's maximum (spec §7.12).
    #[error("inflight queue size {queue_size} outside 1..={max}")]
    InflightQueueSize {
        /// The queue size asked for.
        queue_size: u16,
        /// The device's maximum queue size.
        max: u16,
    },
    /// GET_INFLIGHT_FD whose buffer would exceed the device's limit
    /// ([`DeviceDescription::max_inflight`](crate::backend::DeviceDescription::max_inflight)).
    #[error("inflight buffer of {size} bytes exceeds the limit of {max}")]
    InflightLimit {
        /// The buffer size the request implies.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// A config access beyond the device's config space (spec §3.11).
    #[error("config access offset {offset} size {size} beyond the {config_size}-byte space")]
    ConfigRange {
        /// Offset.
        offset: u32,
        /// Size.
        size: u32,
        /// The device's config space size.
        config_size: u32,
    },
    /// IOTLB_MSG from the front-end must be UPDATE or INVALIDATE (spec §5 id 22).
    #[error("IOTLB type {kind:?} not allowed in this direction")]
    IotlbType {
        /// The type received.
        kind: IotlbType,
    },
    /// Postcopy requests out of order: ADVISE → LISTEN → END (spec §7.7).
    #[error("postcopy request out of order ({state})")]
    PostcopyOrder {
        /// The state the session was in.
        state: &'static str,
    },
    /// An 8-byte postcopy acknowledgement that nothing waits for (spec §7.7).
    #[error("unexpected postcopy memory acknowledgement")]
    UnexpectedPostcopyAck,
    /// Device state transfer while a ring runs (spec §7.8: the device must be suspended).
    #[error("device state transfer needs a suspended device (all rings stopped)")]
    NotSuspended,
    /// CHECK_DEVICE_STATE without a transfer set up (spec §7.8).
    #[error("no device state transfer in progress")]
    NoTransfer,
    /// The device (or the front-end, on the back-end channel) refused the request.
    #[error("refused by the device{}", reason.map(|r| format!(": {r}")).unwrap_or_default())]
    Refused {
        /// Why, if the device said.
        reason: Option<&'static str>,
    },
    /// The payload broke a wire rule (spec §3).
    #[error("invalid payload: {0}")]
    InvalidPayload(PayloadError),
    /// An unknown request code (spec §9).
    #[error("unknown request code")]
    UnknownRequest,
}

/// A request that was refused while the session continues: it was NACKed, answered with its
/// failure reply, or (without NEED_REPLY) only reported. Carried by the sessions'
/// `Event::Rejected` for logging.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{} rejected: {rule}{}", request.map(|r| r.to_string()).unwrap_or_else(|| format!("request {code}")), if *replied { " (failure reply sent)" } else { "" })]
pub struct Rejection {
    /// The request, if its code is known.
    pub request: Option<ReqCode>,
    /// The raw request code.
    pub code: u32,
    /// The rule broken.
    pub rule: Rule,
    /// Whether a NACK or failure reply was sent to the peer.
    pub replied: bool,
}

/// An error after which the connection must be closed.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FatalError {
    /// The byte stream broke a framing rule (spec §2, §9, §11).
    #[error("framing: {0}")]
    Decode(DecodeError),
    /// More input was fed than [`MAX_BUFFERED_INPUT`](super::MAX_BUFFERED_INPUT) while the
    /// session could not process it (the embedder ignored `wants_input()`).
    #[error("input overflow: {buffered} bytes buffered while an answer is outstanding")]
    InputOverflow {
        /// Bytes that would have been buffered.
        buffered: usize,
    },
    /// A reply arrived while no request waited for one (spec §1: "an unexpected reply").
    #[error("unexpected reply to {code} while no reply was expected")]
    UnexpectedReply {
        /// The reply's code.
        code: u32,
    },
    /// A reply repeats another request code than the one waiting (spec §2).
    #[error("reply to {got} while waiting for the reply to {expected}")]
    ReplyCodeMismatch {
        /// The request waiting for its reply.
        expected: ReqCode,
        /// The code in the reply.
        got: ReqCode,
    },
    /// A reply's content breaks the spec (wrong index, wrong config size, error with an fd, ...).
    #[error("reply to {request}: {reason}")]
    BadReply {
        /// The request answered.
        request: ReqCode,
        /// What is wrong.
        reason: &'static str,
    },
    /// The peer used a feature that was not negotiated in a way that cannot be NACKed.
    #[error("{request}: {rule}")]
    Forbidden {
        /// The request.
        request: ReqCode,
        /// The rule.
        rule: Rule,
    },
    /// Encoding one of our own messages failed (a bug; reported rather than panicking).
    #[error("encoding {request}: {error}")]
    Encode {
        /// The message.
        request: ReqCode,
        /// The encoder's error.
        error: EncodeError,
    },
    /// An answer token was dropped without being answered (or was passed to an answer that
    /// did not fit and so was lost). An embedder bug: the request's failure reply or NACK was
    /// sent so the peer is not left waiting, but the state the token guarded (a ring the
    /// runner may or may not run, memory it may or may not have mapped, ...) can no longer be
    /// trusted, so the connection closes.
    #[error("the answer token for {request} was dropped without an answer")]
    AnswerDropped {
        /// The request whose answer was dropped.
        request: ReqCode,
    },
    /// The session already failed fatally.
    #[error("session closed by an earlier fatal error")]
    Closed,
    /// No reply came before the request's deadline (front-end reply deadlines, see
    /// `frontend::Connection::handle_timeout`). A late reply would be matched to the wrong
    /// request, so the connection is closed.
    #[error("no reply to {request} before its deadline")]
    ReplyTimeout {
        /// The request whose reply did not come.
        request: ReqCode,
    },
}

/// Wrong use of the API by the embedder. The session state is unchanged.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ApiError {
    /// The token was issued by another session, or for an answer already given.
    #[error("answer token does not belong to the request this session waits on")]
    StaleToken,
    /// The answer does not fit the request (e.g. config data of the wrong length).
    #[error("answer does not fit the request: {0}")]
    BadAnswer(&'static str),
    /// The request needs a feature that was not negotiated; nothing was sent.
    #[error("{request} not allowed: {rule}")]
    NotNegotiated {
        /// The request.
        request: ReqCode,
        /// The gate.
        rule: Rule,
    },
    /// Too many requests queued; drain transmits and events first.
    #[error("request queue full")]
    QueueFull,
    /// The request cannot be encoded as given.
    #[error("cannot encode: {0}")]
    Encode(EncodeError),
    /// The session failed fatally earlier; nothing more can be done on it.
    #[error("session closed by an earlier fatal error")]
    Closed,
    /// An argument is outside what the request's wire field can carry (e.g. a vring index
    /// above 255 where the wire field is 8 bits); nothing was sent.
    #[error("{request}: {reason}")]
    InvalidArgument {
        /// The request.
        request: ReqCode,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Which of the three classes an [`Error`](enum@Error) is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Close the connection.
    Fatal,
    /// The request was refused; the session continues.
    Rejected,
    /// The embedder misused the API.
    Embedder,
}

/// Any session error, for callers that handle the classes in one place.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// Fatal protocol error.
    #[error(transparent)]
    Fatal(#[from] FatalError),
    /// Rejected request.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// Embedder error.
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl Error {
    /// The class of this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Fatal(_) => ErrorClass::Fatal,
            Error::Rejected(_) => ErrorClass::Rejected,
            Error::Api(_) => ErrorClass::Embedder,
        }
    }
}

impl Rejection {
    /// A rejection of a front-end request.
    pub(crate) fn frontend(req: FrontendReq, rule: Rule, replied: bool) -> Self {
        Rejection {
            request: Some(req.into()),
            code: req.raw(),
            rule,
            replied,
        }
    }

    /// A rejection of a back-end request.
    pub(crate) fn backend(req: BackendReq, rule: Rule, replied: bool) -> Self {
        Rejection {
            request: Some(req.into()),
            code: req.raw(),
            rule,
            replied,
        }
    }
}
