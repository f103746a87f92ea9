//! Encoded frames and the helpers that read payloads and check fds while decoding.

use zerocopy::{FromBytes, IntoBytes};

use super::codes::ReqCode;
use super::error::DecodeError;
use super::header::{HEADER_SIZE, Header, HeaderFlags};
use super::layout::U64Payload;
use super::rules::Limit;

/// One message ready for a single `sendmsg`: header + payload bytes, and the handles to
/// attach as SCM_RIGHTS, in order.
#[derive(Debug, PartialEq, Eq)]
pub struct Encoded<H> {
    /// Header and payload.
    pub bytes: Vec<u8>,
    /// Handles to send with the first byte of `bytes` (spec §1).
    pub fds: Vec<H>,
}

impl<H> Encoded<H> {
    /// Frames `payload` under a header with `code` and `flags`.
    pub(crate) fn frame(code: u32, flags: HeaderFlags, payload: &[u8], fds: Vec<H>) -> Self {
        let mut bytes = Vec::with_capacity(HEADER_SIZE + payload.len());
        // Payloads are bounded by the typed values (≤ MAX_PAYLOAD_SIZE), so this never saturates.
        let size = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        bytes.extend_from_slice(Header::new(code, flags, size).as_bytes());
        bytes.extend_from_slice(payload);
        Encoded { bytes, fds }
    }

    /// The header of this frame.
    pub fn header(&self) -> Header {
        Header::read_from_prefix(&self.bytes)
            .map(|(h, _)| h)
            .unwrap_or_default()
    }
}

/// Context of the message being decoded, to name it in errors.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Frame {
    pub request: ReqCode,
    pub reply: bool,
    pub need_reply: bool,
}

impl Frame {
    /// The context of a request with code `request` and header `flags`.
    pub(crate) fn request(request: impl Into<ReqCode>, flags: HeaderFlags) -> Frame {
        Frame {
            request: request.into(),
            reply: false,
            need_reply: flags.need_reply(),
        }
    }

    /// The context of a reply to the request with code `request`.
    pub(crate) fn reply(request: impl Into<ReqCode>) -> Frame {
        Frame {
            request: request.into(),
            reply: true,
            need_reply: false,
        }
    }

    /// Reads the u64 of a [`U64Payload`] at the start of `payload`.
    pub(crate) fn read_u64(&self, payload: &[u8]) -> Result<u64, DecodeError> {
        self.read::<U64Payload>(payload).map(|v| v.value)
    }

    /// Checks that no fd arrived.
    pub(crate) fn no_fds<H>(&self, fds: Vec<H>) -> Result<(), DecodeError> {
        self.fds_exact(fds, 0).map(|_| ())
    }

    /// Reads a `T` from the start of `payload`; a short payload is a size error.
    pub(crate) fn read<T: FromBytes>(&self, payload: &[u8]) -> Result<T, DecodeError> {
        T::read_from_prefix(payload)
            .map(|(t, _)| t)
            .map_err(|_| self.size_error(payload.len(), size_of::<T>()))
    }

    /// The payload size error for `size` when `expected` was needed.
    pub(crate) fn size_error(&self, size: usize, expected: usize) -> DecodeError {
        DecodeError::PayloadSize {
            request: self.request,
            reply: self.reply,
            size: u32::try_from(size).unwrap_or(u32::MAX),
            min: u32::try_from(expected).unwrap_or(u32::MAX),
            max: u32::try_from(expected).unwrap_or(u32::MAX),
        }
    }

    /// A rejectable error for a payload rule.
    pub(crate) fn invalid(&self, reason: super::error::PayloadError) -> DecodeError {
        DecodeError::InvalidPayload {
            request: self.request,
            need_reply: self.need_reply,
            reason,
        }
    }

    /// Checks that exactly `n` fds arrived.
    pub(crate) fn fds_exact<H>(&self, fds: Vec<H>, n: usize) -> Result<Vec<H>, DecodeError> {
        self.fds_in(fds, Limit::exact(n))
    }

    /// Checks that the fd count is within `limit`.
    pub(crate) fn fds_in<H>(&self, fds: Vec<H>, limit: Limit) -> Result<Vec<H>, DecodeError> {
        if limit.allows(fds.len()) {
            Ok(fds)
        } else {
            Err(DecodeError::FdCount {
                request: self.request,
                reply: self.reply,
                got: fds.len(),
                min: limit.min,
                max: limit.max,
            })
        }
    }

    /// Takes exactly one fd.
    pub(crate) fn one_fd<H>(&self, fds: Vec<H>) -> Result<H, DecodeError> {
        let mut fds = self.fds_exact(fds, 1)?;
        fds.pop().ok_or(DecodeError::FdCount {
            request: self.request,
            reply: self.reply,
            got: 0,
            min: 1,
            max: 1,
        })
    }

    /// Takes one fd if `want`, none otherwise.
    pub(crate) fn opt_fd<H>(&self, fds: Vec<H>, want: bool) -> Result<Option<H>, DecodeError> {
        if want {
            self.one_fd(fds).map(Some)
        } else {
            self.fds_exact(fds, 0).map(|_| None)
        }
    }

    /// Takes zero or one fd, whichever arrived.
    pub(crate) fn any_opt_fd<H>(&self, fds: Vec<H>) -> Result<Option<H>, DecodeError> {
        let mut fds = self.fds_in(fds, Limit::range(0, 1))?;
        Ok(fds.pop())
    }
}
