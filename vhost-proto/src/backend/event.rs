//! What the back-end connection asks the device to do, and the answer tokens it hands out.
//!
//! An event whose request needs the device's answer carries a token; the token's type
//! allows exactly the legal answer ([`Connection::ack`](super::Connection::ack),
//! [`Connection::answer_ring_stopped`](super::Connection::answer_ring_stopped), ...), and
//! answering consumes it. Until it is answered the connection decodes no further request
//! (input is buffered), so replies keep the order of requests. Answers may come later,
//! from another thread (tokens are `Send`).
//!
//! A token dropped without an answer is noticed at the connection's next entry point
//! (`handle_input`, `poll_event`, `poll_transmit`): the request gets its failure reply or
//! NACK and the connection fails with
//! [`FatalError::AnswerDropped`](crate::session::FatalError::AnswerDropped).

use crate::session::ticket::Ticket;
use crate::session::{FatalError, Rejection, RingConfig};
use crate::wire::{
    ConfigFlags, CryptoSession, DeviceStatus, InflightDesc, IotlbMsg, LogDescription, MemoryRegion,
    MigrationPhase, ProtocolFeatures, RegionFd, TransferDirection, Uuid, VirtioFeatures,
};

/// The device's refusal, carried into the NACK or failure reply and the rejection log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Refused {
    /// Why, for the log.
    pub reason: Option<&'static str>,
}

impl Refused {
    /// A refusal with a reason.
    pub fn because(reason: &'static str) -> Self {
        Refused {
            reason: Some(reason),
        }
    }
}

macro_rules! token {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        ///
        /// `Send`: it may be answered from another thread. Dropping it unanswered is an
        /// embedder bug the connection detects at its next entry point: the request gets its
        /// failure reply or NACK, then the connection fails with
        /// [`FatalError::AnswerDropped`](crate::session::FatalError::AnswerDropped).
        #[derive(Debug, PartialEq, Eq)]
        #[must_use = "the connection waits for this answer"]
        pub struct $name {
            pub(crate) ticket: Ticket,
        }
    };
}

token! {
    /// Answer with [`Connection::ack`](super::Connection::ack): success or refusal. The
    /// connection sends the u64 ack when the request asked for one (NEED_REPLY) or always
    /// has one (IOTLB_MSG, POSTCOPY_END, CHECK_DEVICE_STATE, SET_LOG_BASE).
    AckToken
}
token! {
    /// Answer with [`Connection::answer_memory`](super::Connection::answer_memory) once the
    /// regions are mapped (or mapping failed), or with
    /// [`Connection::answer_memory_postcopy`](super::Connection::answer_memory_postcopy) when
    /// [`MemoryToken::postcopy`] is set.
    MemoryToken
}
token! {
    /// Answer with [`Connection::answer_ring_stopped`](super::Connection::answer_ring_stopped)
    /// once the ring's worker stopped, giving the position to resume from.
    RingStopToken
}
token! {
    /// Answer with [`Connection::answer_ring_started`](super::Connection::answer_ring_started)
    /// once the ring's worker runs (or could not be set up). Until then no further request is
    /// processed, so the kick's ack (REPLY_ACK) tells the front-end the ring really runs.
    RingStartToken
}
token! {
    /// Answer with [`Connection::answer_config`](super::Connection::answer_config): exactly
    /// the requested number of bytes, or a refusal.
    ConfigToken
}
token! {
    /// Answer with [`Connection::answer_crypto_session`](super::Connection::answer_crypto_session).
    CryptoToken
}
token! {
    /// Answer with [`Connection::answer_postcopy_advise`](super::Connection::answer_postcopy_advise)
    /// with the userfaultfd.
    PostcopyAdviseToken
}
token! {
    /// Answer with [`Connection::answer_inflight`](super::Connection::answer_inflight) with the
    /// zero-filled buffer the device allocated.
    InflightToken
}
token! {
    /// Answer with [`Connection::answer_shared_object`](super::Connection::answer_shared_object)
    /// with the object's dma-buf fd.
    SharedObjectToken
}
token! {
    /// Answer with [`Connection::answer_device_state`](super::Connection::answer_device_state),
    /// optionally with the device's own end of the transfer channel.
    DeviceStateToken
}

impl MemoryToken {
    /// Whether postcopy is listening: answer with the back-end's mapping addresses.
    pub fn postcopy(&self) -> bool {
        self.ticket.postcopy
    }
}

/// What the device must act on. Read state (rings, memory, features) through the
/// connection's accessors; handles in events are moved to the device.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<H> {
    /// SET_FEATURES accepted. Without `PROTOCOL_FEATURES` all rings are now enabled
    /// (spec §7.2); `LOG_ALL` turns dirty logging on or off (spec §7.7).
    FeaturesSet {
        /// The acked features.
        features: VirtioFeatures,
    },
    /// SET_PROTOCOL_FEATURES accepted.
    ProtocolFeaturesSet {
        /// The negotiated protocol features.
        features: ProtocolFeatures,
    },
    /// SET_MEM_TABLE: map these regions (replacing all earlier ones) and answer.
    MemoryTable {
        /// The regions with their fds, in wire order.
        regions: Vec<RegionFd<H>>,
        /// The answer.
        answer: MemoryToken,
    },
    /// ADD_MEM_REG: map one more region and answer.
    MemoryRegionAdded {
        /// The region and its fd.
        region: RegionFd<H>,
        /// The answer.
        answer: MemoryToken,
    },
    /// REM_MEM_REG: unmap this region (it matched one in the table) and answer.
    MemoryRegionRemoved {
        /// The region as stored.
        region: MemoryRegion,
        /// The answer.
        answer: AckToken,
    },
    /// The front-end acknowledged the postcopy memory reply: memory may now be touched
    /// (spec §7.7).
    PostcopyMemoryReady,
    /// SET_LOG_BASE: map the dirty log and answer.
    LogBase {
        /// Size and offset.
        log: LogDescription,
        /// The log's shm fd.
        fd: H,
        /// The answer.
        answer: AckToken,
    },
    /// SET_LOG_FD: a new log eventfd ([`Connection::log_fd`](super::Connection::log_fd)).
    LogFdChanged,
    /// A ring started (SET_VRING_KICK or VRING_KICK on a configured ring, spec §7.2): build
    /// the queue from `config`; its notifiers are in [`Connection::ring`](super::Connection::ring).
    /// The ring reads as started while the answer is outstanding; a refusal marks it stopped
    /// again and NACKs the kick.
    RingStarted {
        /// Everything needed to run it.
        config: RingConfig,
        /// The answer, once the worker runs.
        answer: RingStartToken,
    },
    /// GET_VRING_BASE on a started ring: stop its worker (complete in-flight requests, or
    /// with GET_VRING_BASE_INFLIGHT record them) and answer with the position.
    RingStopped {
        /// Vring index.
        index: u16,
        /// The answer.
        answer: RingStopToken,
    },
    /// SET_VRING_ADDR on a started ring (e.g. used-ring logging toggled): rebuild the queue
    /// on the new addresses. A refusal means it could not be: the ring is marked stopped
    /// (GET_VRING_BASE then answers with its last known base) and the request is NACKed.
    RingConfigChanged {
        /// The new configuration.
        config: RingConfig,
        /// The answer.
        answer: AckToken,
    },
    /// SET_VRING_ENABLE changed a ring's enabled flag. A refusal NACKs; the flag stays as the
    /// front-end set it.
    RingEnabled {
        /// Vring index.
        index: u16,
        /// The new flag.
        enabled: bool,
        /// The answer.
        answer: AckToken,
    },
    /// A started ring's kick notifier was replaced ([`Connection::ring`](super::Connection::ring)
    /// shows the new one). A refusal NACKs and puts the old notifier back (a refused request
    /// changes nothing); the ring stays started.
    KickChanged {
        /// Vring index.
        index: u16,
        /// The answer.
        answer: AckToken,
    },
    /// A ring's call notifier was replaced (may happen while it runs). Refusal as for
    /// [`KickChanged`](Self::KickChanged).
    CallChanged {
        /// Vring index.
        index: u16,
        /// The answer.
        answer: AckToken,
    },
    /// A ring's err notifier was replaced. Refusal as for [`KickChanged`](Self::KickChanged).
    ErrChanged {
        /// Vring index.
        index: u16,
        /// The answer.
        answer: AckToken,
    },
    /// VRING_KICK on a started ring: an in-band kick (spec §7.11).
    RingKicked {
        /// Vring index.
        index: u16,
    },
    /// GET_CONFIG: read config space.
    ConfigRead {
        /// Offset.
        offset: u32,
        /// Number of bytes.
        size: u32,
        /// Flags value.
        flags: ConfigFlags,
        /// The answer.
        answer: ConfigToken,
    },
    /// SET_CONFIG: write config space; refuse writes to read-only fields unless the flags
    /// say migration (spec §5 id 25).
    ConfigWrite {
        /// Offset.
        offset: u32,
        /// Flags value.
        flags: ConfigFlags,
        /// The bytes.
        data: Vec<u8>,
        /// The answer.
        answer: AckToken,
    },
    /// SET_STATUS: the virtio status byte (0 = reset, spec §7.9).
    Status {
        /// The status.
        status: DeviceStatus,
        /// The answer; on success GET_STATUS returns it.
        answer: AckToken,
    },
    /// RESET_DEVICE: all rings are stopped, disabled and cleared; reset the device state.
    Reset {
        /// The answer.
        answer: AckToken,
    },
    /// SET_BACKEND_REQ_FD: the back-end channel socket; drive it with a
    /// [`Channel`](super::Channel). Accepting it makes
    /// [`has_backend_channel`](super::Connection::has_backend_channel) true; a refusal
    /// NACKs and records nothing.
    BackendChannel {
        /// The socket.
        fd: H,
        /// The answer.
        answer: AckToken,
    },
    /// GPU_SET_SOCKET: the vhost-user-gpu socket (spec §12).
    GpuSocket {
        /// The socket.
        fd: H,
        /// The answer (refuse when not a GPU device).
        answer: AckToken,
    },
    /// SEND_RARP: broadcast a RARP for this MAC.
    SendRarp {
        /// Guest MAC.
        mac: [u8; 6],
        /// The answer.
        answer: AckToken,
    },
    /// NET_SET_MTU: refuse an invalid MTU.
    SetMtu {
        /// The MTU.
        mtu: u64,
        /// The answer.
        answer: AckToken,
    },
    /// IOTLB_MSG: UPDATE or INVALIDATE an IOTLB entry.
    Iotlb {
        /// The message.
        msg: IotlbMsg,
        /// The answer (always replied).
        answer: AckToken,
    },
    /// CREATE_CRYPTO_SESSION.
    CryptoSessionCreate {
        /// QEMU's session struct.
        session: Box<CryptoSession>,
        /// The answer: the session id.
        answer: CryptoToken,
    },
    /// CLOSE_CRYPTO_SESSION.
    CryptoSessionClose {
        /// The session id.
        session_id: u64,
        /// The answer.
        answer: AckToken,
    },
    /// POSTCOPY_ADVISE: open a userfaultfd and answer with it.
    PostcopyAdvise {
        /// The answer.
        answer: PostcopyAdviseToken,
    },
    /// POSTCOPY_LISTEN: register memory with the userfaultfd.
    PostcopyListen {
        /// The answer.
        answer: AckToken,
    },
    /// POSTCOPY_END: disable the userfaultfd.
    PostcopyEnd {
        /// The answer.
        answer: AckToken,
    },
    /// GET_INFLIGHT_FD: allocate a zero-filled inflight buffer (spec §7.12).
    InflightGet {
        /// Queues to cover.
        num_queues: u16,
        /// Queue size.
        queue_size: u16,
        /// Packed rings negotiated (sizes the per-queue stride).
        packed: bool,
        /// The answer.
        answer: InflightToken,
    },
    /// SET_INFLIGHT_FD: map the inflight buffer (resubmit what it records).
    InflightSet {
        /// The buffer.
        desc: InflightDesc,
        /// Its fd.
        fd: H,
        /// The answer.
        answer: AckToken,
    },
    /// GET_SHARED_OBJECT: export the object with this UUID.
    SharedObjectGet {
        /// The UUID.
        uuid: Uuid,
        /// The answer.
        answer: SharedObjectToken,
    },
    /// SET_DEVICE_STATE_FD: start a device state transfer (spec §7.8).
    DeviceStateTransfer {
        /// SAVE or LOAD.
        direction: TransferDirection,
        /// Phase.
        phase: MigrationPhase,
        /// The front-end's end of the channel.
        fd: H,
        /// The answer.
        answer: DeviceStateToken,
    },
    /// CHECK_DEVICE_STATE: was the state saved/loaded successfully?
    DeviceStateCheck {
        /// The answer (always replied).
        answer: AckToken,
    },
    /// A request was refused (NACKed or answered with its failure reply when it asked for
    /// a reply; otherwise only reported here). For logging; the session continues.
    Rejected {
        /// What and why.
        rejection: Rejection,
    },
    /// The connection failed fatally while processing buffered input; close it. No more
    /// events follow.
    ConnectionLost {
        /// Why.
        error: FatalError,
    },
}
