//! The negotiated state that changes how payloads are framed.

use super::flags::ProtocolFeatures;
use super::layout::{MemoryRegionRaw, XenMemoryRegionRaw};

/// Negotiation results that change payload layouts; the session owns one, updates it as
/// features are acked and postcopy starts, and hands it to the decoder and encoder.
///
/// | field | set when | effect |
/// |---|---|---|
/// | `xen_mmap` | protocol feature XEN_MMAP (17) acked | memory regions are 40 bytes (spec §3.6, §3.8) |
/// | `log_shmfd` | protocol feature LOG_SHMFD (1) acked | SET_LOG_BASE carries exactly one fd (spec §5 id 6) |
/// | `postcopy` | after POSTCOPY_LISTEN, until POSTCOPY_END | SET_MEM_TABLE / ADD_MEM_REG replies carry regions, and the front-end's 8-byte follow-up acks decode as `*PostcopyAck` (spec §7.7) |
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DecodeContext {
    /// XEN_MMAP negotiated: memory regions carry the Xen fields.
    pub xen_mmap: bool,
    /// LOG_SHMFD negotiated: SET_LOG_BASE carries the log fd.
    pub log_shmfd: bool,
    /// Postcopy is listening (between POSTCOPY_LISTEN and POSTCOPY_END).
    pub postcopy: bool,
}

impl DecodeContext {
    /// The context implied by a set of acked protocol features (postcopy off).
    pub fn from_protocol_features(features: ProtocolFeatures) -> Self {
        DecodeContext {
            xen_mmap: features.contains(ProtocolFeatures::XEN_MMAP),
            log_shmfd: features.contains(ProtocolFeatures::LOG_SHMFD),
            postcopy: false,
        }
    }

    /// Size of one memory region on the wire: 32, or 40 with XEN_MMAP (spec §3.6).
    pub const fn region_size(&self) -> usize {
        if self.xen_mmap {
            size_of::<XenMemoryRegionRaw>()
        } else {
            size_of::<MemoryRegionRaw>()
        }
    }
}
