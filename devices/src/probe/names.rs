//! Feature bits by name: the transport and vhost bits every device shares, and the
//! virtio-blk bits.

use vhost_backend::vhost_proto::wire::{ProtocolFeatures, VirtioFeatures};

use crate::blk::config::feature;

/// Which device's names to use for bits 0–23.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// Device bits shown as `bit N`.
    Unknown,
    /// virtio-blk names.
    Blk,
}

/// The name of virtio feature bit `bit`.
pub fn feature_name(bit: u32, device: DeviceKind) -> String {
    let mask = 1u64.checked_shl(bit).unwrap_or(0);
    if bit < 24 {
        if device == DeviceKind::Blk
            && let Some((_, n)) = feature::NAMES.iter().find(|(m, _)| *m == mask)
        {
            return (*n).to_owned();
        }
        return format!("bit {bit}");
    }
    VirtioFeatures::from_bits_retain(mask)
        .iter_names()
        .next()
        .map(|(n, _)| n.to_owned())
        .unwrap_or_else(|| format!("bit {bit}"))
}

/// The names of the bits set in `features`.
pub fn feature_names(features: u64, device: DeviceKind) -> Vec<String> {
    (0..64)
        .filter(|b| features & (1u64 << b) != 0)
        .map(|b| feature_name(b, device))
        .collect()
}

/// The names of the protocol feature bits set in `features`.
pub fn protocol_names(features: ProtocolFeatures) -> Vec<String> {
    (0..64)
        .filter(|b| features.bits() & (1u64 << b) != 0)
        .map(|b| {
            ProtocolFeatures::from_bits_retain(1u64 << b)
                .iter_names()
                .next()
                .map(|(n, _)| n.to_owned())
                .unwrap_or_else(|| format!("bit {b}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(feature_name(32, DeviceKind::Unknown), "VERSION_1");
        assert_eq!(feature_name(9, DeviceKind::Blk), "FLUSH");
        assert_eq!(feature_name(9, DeviceKind::Unknown), "bit 9");
        assert_eq!(feature_name(63, DeviceKind::Blk), "bit 63");
        assert_eq!(
            feature_names((1 << 29) | (1 << 34), DeviceKind::Blk),
            ["EVENT_IDX", "RING_PACKED"]
        );
        assert_eq!(
            protocol_names(ProtocolFeatures::MQ | ProtocolFeatures::from_bits_retain(1 << 40)),
            ["MQ", "bit 40"]
        );
    }
}
