//! The incremental decoder: bytes and fd handles in, typed messages out.
//!
//! httparse-style: an incomplete message is a state ([`Ok(None)`](Decoder::decode)), not an
//! error. The header's `size` is checked against the request's limit before any body byte
//! is buffered, and one body buffer (at most [`MAX_PAYLOAD_SIZE`] bytes) is reused.

use core::fmt::Debug;
use core::mem;

use zerocopy::FromBytes;

use super::backend_request::BackendRequest;
use super::codes::{BackendReq, FrontendReq, ReqCode};
use super::context::DecodeContext;
use super::encode::Encoded;
use super::error::{DecodeError, EncodeError};
use super::header::{HEADER_SIZE, Header, HeaderFlags};
use super::layout::MAX_PAYLOAD_SIZE;
use super::reply::{BackendReply, FrontendReply};
use super::request::FrontendRequest;
use super::rules::{self, Limit};

/// A message type one [`Decoder`] stream carries: front-end requests, back-end requests, or
/// the replies to either. Implemented by [`FrontendRequest`], [`BackendRequest`],
/// [`FrontendReply`] and [`BackendReply`]; the decoder is generic over it.
pub trait WireMessage: Sized {
    /// The fd handle type.
    type Handle;
    /// The request code type of the stream's code space.
    type Code: Copy + Debug + Eq + Into<u32> + Into<ReqCode>;
    /// Whether the stream carries replies (flags `0x5`; an echoed NEED_REPLY is tolerated and
    /// masked) rather than requests.
    const IS_REPLY: bool;

    /// The code for a raw header value, or `None` if unknown.
    fn parse_code(raw: u32) -> Option<Self::Code>;
    /// Payload size limit for `code` (spec §11).
    fn size_limit(code: Self::Code, ctx: &DecodeContext) -> Limit;
    /// Fd count limit for `code` (spec §5, §6).
    fn fd_limit(code: Self::Code, ctx: &DecodeContext) -> Limit;
    /// Decodes a complete payload whose header passed the checks above.
    fn decode_payload(
        code: Self::Code,
        flags: HeaderFlags,
        payload: &[u8],
        fds: Vec<Self::Handle>,
        ctx: &DecodeContext,
    ) -> Result<Self, DecodeError>;
    /// Encodes the message; `code` is the request answered (replies) and is ignored for
    /// requests, which know their code; `need_reply` is ignored for replies.
    fn encode_message(
        self,
        code: Self::Code,
        need_reply: bool,
        ctx: &DecodeContext,
    ) -> Result<Encoded<Self::Handle>, EncodeError>;
}

impl<H> WireMessage for FrontendRequest<H> {
    type Handle = H;
    type Code = FrontendReq;
    const IS_REPLY: bool = false;

    fn parse_code(raw: u32) -> Option<FrontendReq> {
        FrontendReq::try_from(raw).ok()
    }
    fn size_limit(code: FrontendReq, ctx: &DecodeContext) -> Limit {
        rules::frontend_request_size(code, ctx)
    }
    fn fd_limit(code: FrontendReq, ctx: &DecodeContext) -> Limit {
        rules::frontend_request_fds(code, ctx)
    }
    fn decode_payload(
        code: FrontendReq,
        flags: HeaderFlags,
        payload: &[u8],
        fds: Vec<H>,
        ctx: &DecodeContext,
    ) -> Result<Self, DecodeError> {
        Self::decode(code, flags, payload, fds, ctx)
    }
    fn encode_message(
        self,
        _: FrontendReq,
        need_reply: bool,
        ctx: &DecodeContext,
    ) -> Result<Encoded<H>, EncodeError> {
        self.encode(need_reply, ctx)
    }
}

impl<H> WireMessage for BackendRequest<H> {
    type Handle = H;
    type Code = BackendReq;
    const IS_REPLY: bool = false;

    fn parse_code(raw: u32) -> Option<BackendReq> {
        BackendReq::try_from(raw).ok()
    }
    fn size_limit(code: BackendReq, _: &DecodeContext) -> Limit {
        rules::backend_request_size(code)
    }
    fn fd_limit(code: BackendReq, _: &DecodeContext) -> Limit {
        rules::backend_request_fds(code)
    }
    fn decode_payload(
        code: BackendReq,
        flags: HeaderFlags,
        payload: &[u8],
        fds: Vec<H>,
        ctx: &DecodeContext,
    ) -> Result<Self, DecodeError> {
        Self::decode(code, flags, payload, fds, ctx)
    }
    fn encode_message(
        self,
        _: BackendReq,
        need_reply: bool,
        ctx: &DecodeContext,
    ) -> Result<Encoded<H>, EncodeError> {
        self.encode(need_reply, ctx)
    }
}

impl<H> WireMessage for FrontendReply<H> {
    type Handle = H;
    type Code = FrontendReq;
    const IS_REPLY: bool = true;

    fn parse_code(raw: u32) -> Option<FrontendReq> {
        FrontendReq::try_from(raw).ok()
    }
    fn size_limit(code: FrontendReq, ctx: &DecodeContext) -> Limit {
        rules::frontend_reply_size(code, ctx)
    }
    fn fd_limit(code: FrontendReq, _: &DecodeContext) -> Limit {
        rules::frontend_reply_fds(code)
    }
    fn decode_payload(
        code: FrontendReq,
        _: HeaderFlags,
        payload: &[u8],
        fds: Vec<H>,
        ctx: &DecodeContext,
    ) -> Result<Self, DecodeError> {
        Self::decode(code, payload, fds, ctx)
    }
    fn encode_message(
        self,
        code: FrontendReq,
        _: bool,
        ctx: &DecodeContext,
    ) -> Result<Encoded<H>, EncodeError> {
        self.encode(code, ctx)
    }
}

impl<H> WireMessage for BackendReply<H> {
    type Handle = H;
    type Code = BackendReq;
    const IS_REPLY: bool = true;

    fn parse_code(raw: u32) -> Option<BackendReq> {
        BackendReq::try_from(raw).ok()
    }
    fn size_limit(code: BackendReq, _: &DecodeContext) -> Limit {
        rules::backend_reply_size(code)
    }
    fn fd_limit(code: BackendReq, _: &DecodeContext) -> Limit {
        rules::backend_reply_fds(code)
    }
    fn decode_payload(
        code: BackendReq,
        _: HeaderFlags,
        payload: &[u8],
        fds: Vec<H>,
        ctx: &DecodeContext,
    ) -> Result<Self, DecodeError> {
        Self::decode(code, payload, fds, ctx)
    }
    fn encode_message(
        self,
        code: BackendReq,
        _: bool,
        ctx: &DecodeContext,
    ) -> Result<Encoded<H>, EncodeError> {
        self.encode(code, ctx)
    }
}

/// One chunk of input: the bytes of exactly one `recvmsg` and the fd handles that came with
/// them.
///
/// The fds belong to the **last** message whose header begins in these bytes: the peer sends
/// each message with one `sendmsg` (its fds go with the first byte of the header, spec §1),
/// and Linux ends a read right after a segment that carries fds but may merge earlier
/// fd-less segments into the same read, so one read can hold whole fd-less messages (QEMU
/// pipelines SET_VRING_ADDR before SET_VRING_KICK) followed by the start of the message the
/// fds came with. The decoder finds that header from its own framing state
/// ([`Decoder::last_header_start`]), so a read may be split anywhere. Fds in a read where no
/// header begins are fatal ([`DecodeError::FdsWithoutHeader`]).
///
/// Keep calling [`Decoder::decode`] with the same `Input` until it returns `Ok(None)`.
#[derive(Debug)]
pub struct Input<'a, H> {
    bytes: &'a [u8],
    fds: Vec<H>,
    /// How many of `bytes` come before the header the fds belong to, once located.
    fds_at: Option<usize>,
}

impl<'a, H> Input<'a, H> {
    /// A chunk of `bytes` received together with `fds` (one read).
    pub fn new(bytes: &'a [u8], fds: Vec<H>) -> Self {
        Input {
            bytes,
            fds,
            fds_at: None,
        }
    }

    /// The bytes not consumed yet.
    pub fn remaining(&self) -> &'a [u8] {
        self.bytes
    }

    /// Whether all bytes were consumed and all fds assigned.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty() && self.fds.is_empty()
    }

    /// Splits off the unconsumed rest: the bytes not decoded yet and the fds not yet assigned
    /// to a message (they still belong to the last header that begins in those bytes, so the
    /// rest can be fed again later as one `Input` to the same decoder). A session uses it to
    /// buffer input while it waits for an answer.
    pub fn into_parts(self) -> (&'a [u8], Vec<H>) {
        (self.bytes, self.fds)
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.bytes.len());
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        if let Some(at) = self.fds_at.as_mut() {
            *at = at.saturating_sub(n);
        }
        head
    }
}

/// A decoded message with the header fields a session needs (NEED_REPLY to ack).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received<M: WireMessage> {
    /// The header's request code (for a reply: the request it answers).
    pub code: M::Code,
    /// The header's flags (a reply's are always `0x5`: an echoed NEED_REPLY is masked).
    pub flags: HeaderFlags,
    /// The typed message with its handles.
    pub message: M,
}

impl<M: WireMessage> Received<M> {
    /// Whether the sender set NEED_REPLY (spec §2, §7.4).
    pub fn need_reply(&self) -> bool {
        self.flags.need_reply()
    }
}

#[derive(Debug)]
enum State<C> {
    /// Collecting the 12 header bytes.
    Header,
    /// Collecting the body of a known request.
    Body {
        code: C,
        flags: HeaderFlags,
        size: usize,
    },
    /// Skipping the body of a request with an unknown code (spec §9).
    Skip {
        code: u32,
        need_reply: bool,
        size: u32,
        left: usize,
    },
    /// A fatal error happened; nothing more is decoded.
    Poisoned,
}

/// The incremental decoder of one byte stream; the stream kind is the type parameter `M`
/// (see the aliases [`FrontendRequestDecoder`], [`BackendRequestDecoder`],
/// [`FrontendReplyDecoder`], [`BackendReplyDecoder`]).
///
/// Any split of the stream works, down to one byte at a time. After a fatal error
/// ([`DecodeError::is_fatal`]) the decoder is poisoned and the connection must close; after
/// a rejected message the decoder continues with the next one.
///
/// ```
/// use vhost_proto::wire::{
///     DecodeContext, FrontendRequest, FrontendRequestDecoder, Input, VirtioFeatures,
/// };
///
/// let ctx = DecodeContext::default();
/// // A SET_VRING_KICK with fd handle 7, then GET_FEATURES, as bytes + handles.
/// let kick = FrontendRequest::SetVringKick { index: 1, fd: Some(7) }.encode(false, &ctx).unwrap();
/// let get = FrontendRequest::<i32>::GetFeatures.encode(true, &ctx).unwrap();
/// let mut stream = kick.bytes.clone();
/// stream.extend_from_slice(&get.bytes);
///
/// let mut decoder = FrontendRequestDecoder::<i32>::new(ctx);
/// let mut out = Vec::new();
/// // Feed it in two reads: the first 5 bytes carry the fd (the kick's header begins there).
/// let (a, b) = stream.split_at(5);
/// for (bytes, fds) in [(a, kick.fds), (b, vec![])] {
///     let mut input = Input::new(bytes, fds);
///     while let Some(msg) = decoder.decode(&mut input).unwrap() {
///         out.push(msg);
///     }
/// }
/// assert_eq!(out[0].message, FrontendRequest::SetVringKick { index: 1, fd: Some(7) });
/// assert_eq!(out[1].message, FrontendRequest::GetFeatures);
/// assert!(out[1].need_reply());
/// # let _ = VirtioFeatures::empty();
/// ```
#[derive(Debug)]
pub struct Decoder<M: WireMessage> {
    ctx: DecodeContext,
    state: State<M::Code>,
    header: [u8; HEADER_SIZE],
    header_len: usize,
    body: Vec<u8>,
    fds: Vec<M::Handle>,
}

/// Decoder of front-end requests: the back-end's main socket.
pub type FrontendRequestDecoder<H> = Decoder<FrontendRequest<H>>;
/// Decoder of back-end requests: the front-end's back-end channel.
pub type BackendRequestDecoder<H> = Decoder<BackendRequest<H>>;
/// Decoder of the back-end's replies: the front-end's main socket.
pub type FrontendReplyDecoder<H> = Decoder<FrontendReply<H>>;
/// Decoder of the front-end's replies: the back-end's side of the back-end channel.
pub type BackendReplyDecoder<H> = Decoder<BackendReply<H>>;

impl<M: WireMessage> Decoder<M> {
    /// A decoder at the start of a stream, using `ctx` for negotiated layouts.
    pub fn new(ctx: DecodeContext) -> Self {
        Decoder {
            ctx,
            state: State::Header,
            header: [0; HEADER_SIZE],
            header_len: 0,
            body: Vec::new(),
            fds: Vec::new(),
        }
    }

    /// The context in use.
    pub fn context(&self) -> DecodeContext {
        self.ctx
    }

    /// Replaces the context (after features are acked, postcopy starts or ends). It applies
    /// to every header completed from now on.
    pub fn set_context(&mut self, ctx: DecodeContext) {
        self.ctx = ctx;
    }

    /// Whether a fatal error poisoned the decoder.
    pub fn is_poisoned(&self) -> bool {
        matches!(self.state, State::Poisoned)
    }

    /// Whether the decoder sits between messages (no partial message buffered); an EOF
    /// elsewhere means the peer closed mid-message.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Header) && self.header_len == 0
    }

    /// The offset in `bytes` of the last message header that begins there, if any, when
    /// `bytes` is the next read of this stream: where the fds of that read belong (see
    /// [`Input`]). Follows the framing only (12-byte header, `size` bytes of payload), from
    /// the decoder's current state; changes nothing. `None` also when poisoned.
    pub fn last_header_start(&self, bytes: &[u8]) -> Option<usize> {
        let (mut header, mut header_len, mut body_left) = match self.state {
            State::Poisoned => return None,
            State::Header => (self.header, self.header_len, 0),
            State::Body { size, .. } => ([0; HEADER_SIZE], 0, size.saturating_sub(self.body.len())),
            State::Skip { left, .. } => ([0; HEADER_SIZE], 0, left),
        };
        let mut pos = 0usize;
        let mut last = None;
        while let Some(rest) = bytes.get(pos..).filter(|r| !r.is_empty()) {
            if body_left > 0 {
                let n = body_left.min(rest.len());
                pos += n;
                body_left -= n;
                continue;
            }
            if header_len == 0 {
                last = Some(pos);
            }
            let n = HEADER_SIZE.saturating_sub(header_len).min(rest.len());
            if let (Some(dst), Some(src)) =
                (header.get_mut(header_len..header_len + n), rest.get(..n))
            {
                dst.copy_from_slice(src);
            }
            header_len += n;
            pos += n;
            if header_len == HEADER_SIZE {
                let size = Header::read_from_bytes(&header).map_or(0, |h| h.size);
                body_left = usize::try_from(size).unwrap_or(usize::MAX);
                header_len = 0;
            }
        }
        last
    }

    /// Capacity of the body buffer; never above [`MAX_PAYLOAD_SIZE`].
    pub fn buffered_capacity(&self) -> usize {
        self.body.capacity()
    }

    fn poison(&mut self, e: DecodeError) -> DecodeError {
        self.state = State::Poisoned;
        self.body = Vec::new();
        self.fds = Vec::new();
        self.header_len = 0;
        e
    }

    fn reset(&mut self) {
        self.state = State::Header;
        self.header_len = 0;
        self.body.clear();
    }

    /// Consumes bytes from `input` until one message is complete (`Ok(Some)`), the input is
    /// exhausted (`Ok(None)`), or an error occurs. Call it again with the same input until
    /// `Ok(None)`: one chunk may hold several messages.
    ///
    /// Errors: fatal ones poison the decoder (every later call returns
    /// [`DecodeError::Poisoned`]); rejected ones consumed exactly one message and dropped its
    /// fds, and decoding continues with the next call.
    pub fn decode(
        &mut self,
        input: &mut Input<'_, M::Handle>,
    ) -> Result<Option<Received<M>>, DecodeError> {
        if !input.fds.is_empty() && input.fds_at.is_none() && !self.is_poisoned() {
            match self.last_header_start(input.bytes) {
                Some(at) => input.fds_at = Some(at),
                None => {
                    // No header begins in this read: its fds belong to no message.
                    let count = mem::take(&mut input.fds).len();
                    input.bytes = &[];
                    return Err(self.poison(DecodeError::FdsWithoutHeader { count }));
                }
            }
        }
        let result = self.decode_inner(input);
        if input.bytes.is_empty() && !input.fds.is_empty() && !self.is_poisoned() {
            // The chunk is used up and no header began after its fds' turn: report it now,
            // in the call that consumed the chunk (a message completed here is dropped).
            let count = mem::take(&mut input.fds).len();
            return Err(self.poison(DecodeError::FdsWithoutHeader { count }));
        }
        result
    }

    fn decode_inner(
        &mut self,
        input: &mut Input<'_, M::Handle>,
    ) -> Result<Option<Received<M>>, DecodeError> {
        loop {
            if let State::Poisoned = self.state {
                input.bytes = &[];
                input.fds.clear();
                return Err(DecodeError::Poisoned);
            }
            if input.bytes.is_empty() {
                if !input.fds.is_empty() {
                    let count = mem::take(&mut input.fds).len();
                    return Err(self.poison(DecodeError::FdsWithoutHeader { count }));
                }
                return Ok(None);
            }
            match self.state {
                State::Poisoned => {}
                State::Header => {
                    if self.header_len == 0 {
                        // The read's fds belong to the last header that begins in it.
                        self.fds = if input.fds_at == Some(0) {
                            input.fds_at = None;
                            mem::take(&mut input.fds)
                        } else {
                            Vec::new()
                        };
                    }
                    let want = HEADER_SIZE.saturating_sub(self.header_len);
                    let got = input.take(want);
                    if let Some(dst) = self
                        .header
                        .get_mut(self.header_len..self.header_len + got.len())
                    {
                        dst.copy_from_slice(got);
                    }
                    self.header_len += got.len();
                    if self.header_len == HEADER_SIZE
                        && let Some(done) = self.on_header()?
                    {
                        return Ok(Some(done));
                    }
                }
                State::Body { size, .. } => {
                    let got = input.take(size.saturating_sub(self.body.len()));
                    self.body.extend_from_slice(got);
                    if self.body.len() == size {
                        return self.finish().map(Some);
                    }
                }
                State::Skip {
                    code,
                    need_reply,
                    size,
                    left,
                } => {
                    let got = input.take(left).len();
                    let left = left - got;
                    if left == 0 {
                        self.reset();
                        return Err(DecodeError::UnknownRequest {
                            code,
                            need_reply,
                            size,
                        });
                    }
                    self.state = State::Skip {
                        code,
                        need_reply,
                        size,
                        left,
                    };
                }
            }
        }
    }

    /// Checks a complete header; moves to the body, or completes an empty message.
    fn on_header(&mut self) -> Result<Option<Received<M>>, DecodeError> {
        let h = Header::read_from_bytes(&self.header).unwrap_or_default();
        let flags = h.header_flags();
        let code = h.request;
        if flags.version() != 1 {
            return Err(self.poison(DecodeError::BadVersion {
                code,
                flags: h.flags,
                version: flags.version(),
            }));
        }
        if flags.reserved() != 0 {
            return Err(self.poison(DecodeError::ReservedFlags {
                code,
                flags: h.flags,
            }));
        }
        let flags = if M::IS_REPLY {
            // Peer difference: libvhost-user (qemu-storage-daemon 7.2 and 10.0) echoes the
            // request's NEED_REPLY bit in its GET_FEATURES and GET_CONFIG replies: flags 0xd where
            // the spec reference (§2) says a reply carries exactly 0x5
            // (tests/data/transcripts/qsd-*-handshake-need-reply.txt). A reply never asks for an
            // ack, so the echoed bit means nothing: accept it and report the reply as 0x5 (so
            // decode → encode → decode stays exact). Every other deviation stays fatal, and our
            // encoders keep sending exactly 0x5.
            if flags.difference(HeaderFlags::NEED_REPLY) != HeaderFlags::reply() {
                return Err(self.poison(DecodeError::BadReplyFlags {
                    code,
                    flags: h.flags,
                }));
            }
            HeaderFlags::reply()
        } else if flags.is_reply() {
            return Err(self.poison(DecodeError::ReplyFlagOnRequest {
                code,
                flags: h.flags,
            }));
        } else {
            flags
        };
        if h.size as usize > MAX_PAYLOAD_SIZE {
            return Err(self.poison(DecodeError::PayloadTooLarge {
                code,
                size: h.size,
                max: MAX_PAYLOAD_SIZE as u32,
            }));
        }
        let size = h.size as usize;
        let Some(c) = M::parse_code(code) else {
            if M::IS_REPLY {
                return Err(self.poison(DecodeError::UnknownReply { code }));
            }
            // Spec §9: the size is known and bounded, so skip the body and let the session NACK.
            self.fds.clear();
            let need_reply = flags.need_reply();
            if size == 0 {
                self.reset();
                return Err(DecodeError::UnknownRequest {
                    code,
                    need_reply,
                    size: 0,
                });
            }
            self.state = State::Skip {
                code,
                need_reply,
                size: h.size,
                left: size,
            };
            return Ok(None);
        };
        let limit = M::size_limit(c, &self.ctx);
        if !limit.allows(size) {
            return Err(self.poison(DecodeError::PayloadSize {
                request: c.into(),
                reply: M::IS_REPLY,
                size: h.size,
                min: limit.min as u32,
                max: limit.max as u32,
            }));
        }
        let fd_limit = M::fd_limit(c, &self.ctx);
        if !fd_limit.allows(self.fds.len()) {
            let got = self.fds.len();
            return Err(self.poison(DecodeError::FdCount {
                request: c.into(),
                reply: M::IS_REPLY,
                got,
                min: fd_limit.min,
                max: fd_limit.max,
            }));
        }
        self.body.clear();
        if self.body.capacity() < size {
            self.body = Vec::with_capacity(size);
        }
        self.state = State::Body {
            code: c,
            flags,
            size,
        };
        if size == 0 {
            return self.finish().map(Some);
        }
        Ok(None)
    }

    /// Decodes a complete body.
    fn finish(&mut self) -> Result<Received<M>, DecodeError> {
        let State::Body { code, flags, .. } = self.state else {
            return Err(self.poison(DecodeError::Poisoned));
        };
        let fds = mem::take(&mut self.fds);
        let result = M::decode_payload(code, flags, &self.body, fds, &self.ctx);
        self.reset();
        match result {
            Ok(message) => Ok(Received {
                code,
                flags,
                message,
            }),
            Err(e) if e.is_fatal() => Err(self.poison(e)),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use proptest::prelude::*;

    use super::*;
    use crate::wire::{MemoryRegion, RegionFd, VringAddr, VringAddrFlags};

    type Q = FrontendRequest<i32>;

    fn raw(size: u32) -> Vec<u8> {
        let mut v = vec![0u8; HEADER_SIZE];
        v[4..8].copy_from_slice(&1u32.to_ne_bytes());
        v[8..12].copy_from_slice(&size.to_ne_bytes());
        v.extend(std::iter::repeat_n(0xaa, size as usize));
        v
    }

    /// Ported from the std binding's `Framer`: the last header start of each half of every
    /// split of three messages.
    #[test]
    fn last_header_start_in_any_split() {
        let mut all = raw(8);
        all.extend(raw(0));
        all.extend(raw(40));
        let starts = [0usize, 20, 32];
        for cut in 0..all.len() {
            let (a, b) = all.split_at(cut);
            let mut d = FrontendRequestDecoder::<i32>::new(DecodeContext::default());
            let la = d.last_header_start(a);
            // Move the decoder over `a` as a stream reader would (the payloads are invalid
            // for code 0, which is unknown: skipped, not fatal).
            let mut input = Input::new(a, vec![]);
            while let Ok(Some(_)) | Err(DecodeError::UnknownRequest { .. }) = d.decode(&mut input) {
            }
            let lb = d.last_header_start(b).map(|x| x + cut);
            let exp_a = starts.iter().rev().find(|&&s| s < cut).copied();
            let exp_b = starts.iter().rev().find(|&&s| s >= cut).copied();
            assert_eq!(la, exp_a, "cut {cut}");
            assert_eq!(lb, exp_b, "cut {cut}");
        }
    }

    fn messages() -> Vec<Q> {
        let region = |gpa| MemoryRegion {
            guest_phys_addr: gpa,
            memory_size: 0x1000,
            user_addr: 0x7000_0000 + gpa,
            mmap_offset: 0,
            xen: None,
        };
        vec![
            Q::GetFeatures,
            Q::SetVringNum { index: 0, num: 256 },
            Q::SetVringAddr {
                addr: VringAddr {
                    index: 0,
                    flags: VringAddrFlags::empty(),
                    desc: 0x7000_0000,
                    avail: 0x7000_1000,
                    used: 0x7000_2000,
                    log: 0,
                },
            },
            Q::SetVringKick {
                index: 0,
                fd: Some(10),
            },
            Q::SetVringCall {
                index: 0,
                fd: Some(11),
            },
            Q::GetFeatures,
            Q::SetVringErr { index: 0, fd: None },
            Q::SetMemTable {
                regions: vec![
                    RegionFd {
                        region: region(0),
                        fd: 12,
                    },
                    RegionFd {
                        region: region(0x1000),
                        fd: 13,
                    },
                ],
            },
            Q::SetOwner,
        ]
    }

    /// Decodes `stream` cut at `cuts` (sorted offsets), each read with the fds of the
    /// messages whose first byte it holds.
    fn decode_reads(
        stream: &[u8],
        starts: &[(usize, Vec<i32>)],
        cuts: &[usize],
    ) -> Result<Vec<Q>, DecodeError> {
        let mut d = FrontendRequestDecoder::<i32>::new(DecodeContext::default());
        let mut out = Vec::new();
        let mut from = 0;
        for &to in cuts.iter().chain(std::iter::once(&stream.len())) {
            if to <= from {
                continue;
            }
            let fds: Vec<i32> = starts
                .iter()
                .filter(|(s, _)| (from..to).contains(s))
                .flat_map(|(_, f)| f.clone())
                .collect();
            let mut input = Input::new(&stream[from..to], fds);
            while let Some(m) = d.decode(&mut input)? {
                out.push(m.message);
            }
            from = to;
        }
        Ok(out)
    }

    /// Where each message starts, with its fds.
    type Starts = Vec<(usize, Vec<i32>)>;

    /// The stream of [`messages`], its starts, and where each message with fds ends.
    fn encoded() -> (Vec<u8>, Starts, Vec<usize>) {
        let ctx = DecodeContext::default();
        let mut stream = Vec::new();
        let mut starts = Vec::new();
        let mut fd_ends = Vec::new();
        for m in messages() {
            let e = m.encode(false, &ctx).unwrap();
            starts.push((stream.len(), e.fds.clone()));
            stream.extend_from_slice(&e.bytes);
            if !e.fds.is_empty() {
                fd_ends.push(stream.len());
            }
        }
        (stream, starts, fd_ends)
    }

    #[test]
    fn fds_go_to_the_last_header_of_a_read() {
        let (stream, starts, fd_ends) = encoded();
        // QEMU pipelining: NUM, ADDR and the start of KICK in one read, the KICK's fd with it.
        let kick = starts[3].0;
        let mut cuts = vec![starts[1].0, kick + 3];
        cuts.extend(fd_ends);
        let got = decode_reads(&stream, &starts, &cuts).unwrap();
        assert_eq!(got, messages());
        // Byte by byte.
        let cuts: Vec<usize> = (1..stream.len()).collect();
        assert_eq!(decode_reads(&stream, &starts, &cuts).unwrap(), messages());
    }

    #[test]
    fn fds_in_a_read_without_header_are_fatal() {
        let (stream, _, _) = encoded();
        let mut d = FrontendRequestDecoder::<i32>::new(DecodeContext::default());
        // Half of GET_FEATURES' header, then the rest of it with an fd: no header begins.
        let mut a = Input::new(&stream[..6], vec![]);
        assert_eq!(d.decode(&mut a), Ok(None));
        let mut b = Input::new(&stream[6..12], vec![1]);
        assert_eq!(
            d.decode(&mut b),
            Err(DecodeError::FdsWithoutHeader { count: 1 })
        );
        assert!(d.is_poisoned());
        // A read of nothing but fds.
        let mut d = FrontendRequestDecoder::<i32>::new(DecodeContext::default());
        let mut c = Input::new(&[], vec![1, 2]);
        assert_eq!(
            d.decode(&mut c),
            Err(DecodeError::FdsWithoutHeader { count: 2 })
        );
    }

    proptest! {
        /// Random reads of the stream, cut as Linux may: anywhere, but always right after
        /// the bytes of a message that carries fds (a read ends after a segment with fds).
        #[test]
        fn fds_land_on_their_message_in_any_split(
            cuts in prop::collection::btree_set(1usize..400, 0..40),
        ) {
            let (stream, starts, fd_ends) = encoded();
            let mut cuts: Vec<usize> =
                cuts.into_iter().filter(|&c| c < stream.len()).chain(fd_ends).collect();
            cuts.sort_unstable();
            cuts.dedup();
            prop_assert_eq!(decode_reads(&stream, &starts, &cuts).unwrap(), messages());
        }

        /// The rest of a read fed again after `into_parts` (how a session buffers while it
        /// waits) keeps its fds for the last header.
        #[test]
        fn rest_of_a_read_keeps_its_fds(stop in 0usize..4) {
            let ctx = DecodeContext::default();
            let all = messages();
            let want = [all[1].clone(), all[2].clone(), all[0].clone(), all[4].clone()];
            let mut stream = Vec::new();
            let mut fds = Vec::new();
            for m in want.iter().cloned() {
                let e = m.encode(false, &ctx).unwrap();
                stream.extend_from_slice(&e.bytes);
                fds.extend(e.fds);
            }
            let mut d = FrontendRequestDecoder::<i32>::new(ctx);
            let mut input = Input::new(&stream, fds);
            let mut out = Vec::new();
            while out.len() < stop {
                let Some(m) = d.decode(&mut input).unwrap() else { break };
                out.push(m.message);
            }
            let (rest, fds) = input.into_parts();
            let mut again = Input::new(rest, fds);
            while let Some(m) = d.decode(&mut again).unwrap() {
                out.push(m.message);
            }
            prop_assert_eq!(&out[..], &want[..]);
        }
    }
}
