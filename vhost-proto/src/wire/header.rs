//! The 12-byte message header (spec §2).

use bitflags::bitflags;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Size of the message header in bytes (spec §2).
pub const HEADER_SIZE: usize = 12;

/// The only protocol version, carried in flag bits 0–1 (spec §2, `VHOST_USER_VERSION`).
pub const VERSION: u32 = 0x1;

/// Mask of the version bits in `flags` (spec §2).
pub const VERSION_MASK: u32 = 0x3;

/// Mask of the reserved flag bits 4–31, which must be 0 (spec §2).
pub const RESERVED_FLAGS_MASK: u32 = !0xf;

/// The header that precedes every message (spec §2): request code, flags and payload size,
/// all native-endian u32s.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct Header {
    /// Request code (front-end and back-end codes are separate spaces).
    pub request: u32,
    /// Version, REPLY and NEED_REPLY bits; see [`HeaderFlags`].
    pub flags: u32,
    /// Number of payload bytes after the header.
    pub size: u32,
}
const _: () = assert!(size_of::<Header>() == HEADER_SIZE);

bitflags! {
    /// The `flags` word of the header (spec §2). The version occupies bits 0–1 and must be 1.
    ///
    /// Unknown bits are kept (`from_bits_retain`) so a rejected header can be logged as received.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct HeaderFlags: u32 {
        /// Version 1 (`VHOST_USER_VERSION`), the only valid value of bits 0–1.
        const VERSION_1 = VERSION;
        /// Set on every reply (spec §2).
        const REPLY = 0x4;
        /// The sender asks for an ack (spec §2, §7.4).
        const NEED_REPLY = 0x8;
    }
}

impl HeaderFlags {
    /// Flags of a request: version 1, plus NEED_REPLY when asked (spec §2).
    pub const fn request(need_reply: bool) -> Self {
        if need_reply {
            Self::VERSION_1.union(Self::NEED_REPLY)
        } else {
            Self::VERSION_1
        }
    }

    /// Flags of every reply: exactly `0x5` (QEMU rejects anything else, spec §2).
    pub const fn reply() -> Self {
        Self::VERSION_1.union(Self::REPLY)
    }

    /// Whether the sender asked for an ack.
    pub const fn need_reply(self) -> bool {
        self.contains(Self::NEED_REPLY)
    }

    /// Whether this is a reply.
    pub const fn is_reply(self) -> bool {
        self.contains(Self::REPLY)
    }

    /// The version field (bits 0–1).
    pub const fn version(self) -> u32 {
        self.bits() & VERSION_MASK
    }

    /// Reserved bits 4–31 that are set (must be 0).
    pub const fn reserved(self) -> u32 {
        self.bits() & RESERVED_FLAGS_MASK
    }
}

impl Header {
    /// A header for `request` with `flags` and `size` payload bytes.
    pub const fn new(request: u32, flags: HeaderFlags, size: u32) -> Self {
        Header {
            request,
            flags: flags.bits(),
            size,
        }
    }

    /// The flags word as typed flags (unknown bits retained).
    pub const fn header_flags(&self) -> HeaderFlags {
        HeaderFlags::from_bits_retain(self.flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_values_match_spec() {
        assert_eq!(HeaderFlags::request(false).bits(), 0x1);
        assert_eq!(HeaderFlags::request(true).bits(), 0x9);
        assert_eq!(HeaderFlags::reply().bits(), 0x5);
        let f = HeaderFlags::from_bits_retain(0x8000_0019);
        assert_eq!(f.version(), 1);
        assert_eq!(f.reserved(), 0x8000_0010);
        assert!(f.need_reply());
    }

    #[test]
    fn header_layout_is_native_and_packed() {
        let h = Header::new(5, HeaderFlags::request(false), 264);
        let mut expect = Vec::new();
        expect.extend_from_slice(&5u32.to_ne_bytes());
        expect.extend_from_slice(&1u32.to_ne_bytes());
        expect.extend_from_slice(&264u32.to_ne_bytes());
        assert_eq!(h.as_bytes(), &expect[..]);
        assert_eq!(Header::read_from_bytes(&expect).unwrap(), h);
    }
}
