//! What a session wants written to its socket.

use crate::wire::Encoded;

/// One message to write with a single `sendmsg`: the bytes (header + payload) and the fd
/// handles to attach as SCM_RIGHTS to its first byte (spec §1).
#[derive(Debug, PartialEq, Eq)]
pub struct Transmit<H> {
    /// Header and payload.
    pub bytes: Vec<u8>,
    /// Handles to send with the first byte of `bytes`; dropping them closes them.
    pub fds: Vec<H>,
}

impl<H> From<Encoded<H>> for Transmit<H> {
    fn from(e: Encoded<H>) -> Self {
        Transmit {
            bytes: e.bytes,
            fds: e.fds,
        }
    }
}
