//! What was negotiated, and which feature each request needs (spec §5, §6 "Gate" columns).

use crate::wire::{BackendReq, DecodeContext, FrontendReq, ProtocolFeatures, VirtioFeatures};

use super::error::Rule;

/// The feature a request needs before it may be sent or served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// No gate.
    None,
    /// The back-end offered `VHOST_USER_F_PROTOCOL_FEATURES` (bit 30) in GET_FEATURES
    /// (GET/SET_PROTOCOL_FEATURES: legal before SET_FEATURES, spec §7.1).
    ProtocolFeaturesOffered,
    /// Bit 30 was acked with SET_FEATURES (SET_VRING_ENABLE, spec §7.2).
    ProtocolFeaturesAcked,
    /// These protocol features were negotiated with SET_PROTOCOL_FEATURES.
    Protocol(ProtocolFeatures),
    /// These virtio features were acked with SET_FEATURES.
    Virtio(VirtioFeatures),
}

/// The gate of a front-end request (spec §5).
///
/// SET_LOG_BASE is gated on LOG_SHMFD: without it the request would carry a host address,
/// which means nothing to a separate process. GPU_SET_SOCKET has no protocol gate: the
/// device decides.
pub fn frontend_gate(req: FrontendReq) -> Gate {
    use FrontendReq as C;
    let p = Gate::Protocol;
    match req {
        C::GetProtocolFeatures | C::SetProtocolFeatures => Gate::ProtocolFeaturesOffered,
        C::SetVringEnable => Gate::ProtocolFeaturesAcked,
        C::GetQueueNum => p(ProtocolFeatures::MQ),
        C::SetLogBase => p(ProtocolFeatures::LOG_SHMFD),
        C::SendRarp => p(ProtocolFeatures::RARP),
        C::NetSetMtu => p(ProtocolFeatures::MTU),
        C::SetBackendReqFd => p(ProtocolFeatures::BACKEND_REQ),
        C::IotlbMsg => Gate::Virtio(VirtioFeatures::ACCESS_PLATFORM),
        C::SetVringEndian => p(ProtocolFeatures::CROSS_ENDIAN),
        C::GetConfig | C::SetConfig => p(ProtocolFeatures::CONFIG),
        C::CreateCryptoSession | C::CloseCryptoSession => p(ProtocolFeatures::CRYPTO_SESSION),
        C::PostcopyAdvise | C::PostcopyListen | C::PostcopyEnd => p(ProtocolFeatures::PAGEFAULT),
        C::GetInflightFd | C::SetInflightFd => p(ProtocolFeatures::INFLIGHT_SHMFD),
        C::ResetDevice => p(ProtocolFeatures::RESET_DEVICE),
        C::VringKick => p(ProtocolFeatures::INBAND_NOTIFICATIONS),
        C::GetMaxMemSlots | C::AddMemReg | C::RemMemReg => p(ProtocolFeatures::CONFIGURE_MEM_SLOTS),
        C::SetStatus | C::GetStatus => p(ProtocolFeatures::STATUS),
        C::GetSharedObject => p(ProtocolFeatures::SHARED_OBJECT),
        C::SetDeviceStateFd | C::CheckDeviceState => p(ProtocolFeatures::DEVICE_STATE),
        C::GetShmemConfig => p(ProtocolFeatures::SHMEM),
        _ => Gate::None,
    }
}

/// The gate of a back-end request (spec §6). The whole channel also needs BACKEND_REQ, and
/// fds need BACKEND_SEND_FD; [`Negotiated::check_backend`] checks those too.
pub fn backend_gate(req: BackendReq) -> Gate {
    use BackendReq as C;
    let p = Gate::Protocol;
    match req {
        C::IotlbMsg => Gate::Virtio(VirtioFeatures::ACCESS_PLATFORM),
        C::ConfigChangeMsg => p(ProtocolFeatures::CONFIG),
        C::VringHostNotifierMsg => p(ProtocolFeatures::HOST_NOTIFIER),
        C::VringCall | C::VringErr => p(ProtocolFeatures::INBAND_NOTIFICATIONS),
        C::SharedObjectAdd | C::SharedObjectRemove | C::SharedObjectLookup => {
            p(ProtocolFeatures::SHARED_OBJECT)
        }
        C::ShmemMap | C::ShmemUnmap => p(ProtocolFeatures::SHMEM),
    }
}

/// Whether the back-end answers `req` with a reply body of its own, whatever NEED_REPLY says
/// (spec §5 "always" replies, §7.4). Requests without one get a u64 ack only when NEED_REPLY
/// is set. `log_shmfd` and `postcopy` are the negotiated LOG_SHMFD and the postcopy-listening
/// state. POSTCOPY_LISTEN is not listed: QEMU sets NEED_REPLY on it, which asks for the ack.
pub fn has_reply_body(req: FrontendReq, log_shmfd: bool, postcopy: bool) -> bool {
    use FrontendReq as C;
    match req {
        C::GetFeatures
        | C::GetProtocolFeatures
        | C::GetVringBase
        | C::GetQueueNum
        | C::IotlbMsg
        | C::GetConfig
        | C::CreateCryptoSession
        | C::PostcopyAdvise
        | C::PostcopyEnd
        | C::GetInflightFd
        | C::GetMaxMemSlots
        | C::GetStatus
        | C::GetSharedObject
        | C::SetDeviceStateFd
        | C::CheckDeviceState
        | C::GetShmemConfig => true,
        C::SetLogBase => log_shmfd,
        C::SetMemTable | C::AddMemReg => postcopy,
        _ => false,
    }
}

/// The negotiation state of one connection, as both ends track it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Negotiated {
    /// Virtio features the back-end offers (GET_FEATURES).
    pub offered_features: VirtioFeatures,
    /// Virtio features acked with SET_FEATURES.
    pub features: VirtioFeatures,
    /// Protocol features the back-end offers (GET_PROTOCOL_FEATURES).
    pub offered_protocol: ProtocolFeatures,
    /// Protocol features negotiated with SET_PROTOCOL_FEATURES.
    pub protocol: ProtocolFeatures,
}

impl Negotiated {
    /// Whether all of `f` were negotiated with SET_PROTOCOL_FEATURES.
    pub fn has(&self, f: ProtocolFeatures) -> bool {
        self.protocol.contains(f)
    }

    /// Whether REPLY_ACK was negotiated.
    pub fn reply_ack(&self) -> bool {
        self.has(ProtocolFeatures::REPLY_ACK)
    }

    /// Whether packed rings were negotiated.
    pub fn packed(&self) -> bool {
        self.features.contains(VirtioFeatures::RING_PACKED)
    }

    /// The decode context these features imply (postcopy as given).
    pub fn decode_context(&self, postcopy: bool) -> DecodeContext {
        DecodeContext {
            postcopy,
            ..DecodeContext::from_protocol_features(self.protocol)
        }
    }

    /// Checks a gate against this state.
    pub fn check_gate(&self, gate: Gate) -> Result<(), Rule> {
        match gate {
            Gate::None => Ok(()),
            Gate::ProtocolFeaturesOffered
                if self
                    .offered_features
                    .contains(VirtioFeatures::PROTOCOL_FEATURES) =>
            {
                Ok(())
            }
            Gate::ProtocolFeaturesOffered => Err(Rule::ProtocolFeaturesNotOffered),
            Gate::ProtocolFeaturesAcked
                if self.features.contains(VirtioFeatures::PROTOCOL_FEATURES) =>
            {
                Ok(())
            }
            Gate::ProtocolFeaturesAcked => Err(Rule::ProtocolFeaturesNotAcked),
            Gate::Protocol(f) if self.protocol.contains(f) => Ok(()),
            Gate::Protocol(f) => Err(Rule::ProtocolFeatureNotNegotiated { feature: f }),
            Gate::Virtio(f) if self.features.contains(f) => Ok(()),
            Gate::Virtio(f) => Err(Rule::VirtioFeatureNotNegotiated { feature: f }),
        }
    }

    /// Checks the gate of a front-end request.
    pub fn check_frontend(&self, req: FrontendReq) -> Result<(), Rule> {
        self.check_gate(frontend_gate(req))
    }

    /// Checks the gates of a back-end request carrying `fds` handles: BACKEND_REQ for the
    /// channel, the request's own gate, and BACKEND_SEND_FD when it carries fds (spec §7.6).
    pub fn check_backend(&self, req: BackendReq, fds: usize) -> Result<(), Rule> {
        self.check_gate(Gate::Protocol(ProtocolFeatures::BACKEND_REQ))?;
        self.check_gate(backend_gate(req))?;
        if fds > 0 {
            self.check_gate(Gate::Protocol(ProtocolFeatures::BACKEND_SEND_FD))?;
        }
        Ok(())
    }

    /// Checks a SET_PROTOCOL_FEATURES value: a subset of the offer, with its dependencies
    /// (INBAND_NOTIFICATIONS needs BACKEND_REQ and REPLY_ACK; GET_VRING_BASE_INFLIGHT needs
    /// INFLIGHT_SHMFD; spec §4.2).
    pub fn check_protocol_features(&self, f: ProtocolFeatures) -> Result<(), Rule> {
        let extra = f.difference(self.offered_protocol);
        if !extra.is_empty() {
            return Err(Rule::UnofferedProtocolFeatures { extra });
        }
        let deps = [
            (
                ProtocolFeatures::INBAND_NOTIFICATIONS,
                ProtocolFeatures::BACKEND_REQ.union(ProtocolFeatures::REPLY_ACK),
            ),
            (
                ProtocolFeatures::GET_VRING_BASE_INFLIGHT,
                ProtocolFeatures::INFLIGHT_SHMFD,
            ),
        ];
        for (feature, needs) in deps {
            if f.contains(feature) && !f.contains(needs) {
                return Err(Rule::FeatureDependency { feature, needs });
            }
        }
        Ok(())
    }

    /// Checks a SET_FEATURES value: a subset of the offer (spec §4.1).
    pub fn check_features(&self, f: VirtioFeatures) -> Result<(), Rule> {
        let extra = f.difference(self.offered_features);
        if extra.is_empty() {
            Ok(())
        } else {
            Err(Rule::FeaturesNotOffered { extra })
        }
    }
}
