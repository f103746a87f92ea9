//! Bodies of the cargo-fuzz targets, shared with stable tests that replay the seed corpus
//! in `fuzz/seeds/`.
//!
//! # Input format of [`decode`]
//!
//! Read with [`arbitrary::Unstructured`] (integers little-endian, zero-filled when short):
//!
//! | bytes | meaning |
//! |---|---|
//! | 1 | stream kind: [`StreamKind`] `(b % 4)` |
//! | 1 | context: bit 0 `xen_mmap`, bit 1 `log_shmfd`, bit 2 `postcopy` |
//! | 1 | bits 0–4: number of chunk specs (`% 17`); bit 7: feed what is left one byte at a time |
//! | 3 × n | chunk specs: u16 length (0 is taken as 1), u8 fd count (`% 10`) |
//! | rest | the byte stream |
//!
//! The stream is cut by the chunk specs, in order; whatever is left after them is fed as
//! one chunk (or byte by byte), without fds. Integer handles stand in for fds.

use arbitrary::Unstructured;

use crate::wire::{
    BackendReply, BackendRequest, DecodeContext, Decoder, FrontendReply, FrontendRequest, Input,
    MAX_PAYLOAD_SIZE, WireMessage,
};

/// Which stream the fuzzed decoder reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    /// Front-end requests (a back-end's main socket).
    FrontendRequests = 0,
    /// Back-end requests (a front-end's back-end channel).
    BackendRequests = 1,
    /// Replies to front-end requests.
    FrontendReplies = 2,
    /// Replies to back-end requests.
    BackendReplies = 3,
}

/// Builds a [`decode`] input from its parts (for seed generators).
pub fn make_input(
    kind: StreamKind,
    ctx: DecodeContext,
    chunks: &[(u16, u8)],
    byte_by_byte: bool,
    stream: &[u8],
) -> Vec<u8> {
    let mut v = vec![
        kind as u8,
        u8::from(ctx.xen_mmap) | u8::from(ctx.log_shmfd) << 1 | u8::from(ctx.postcopy) << 2,
        (chunks.len().min(16) as u8) | if byte_by_byte { 0x80 } else { 0 },
    ];
    for (len, fds) in chunks.iter().take(16) {
        v.extend_from_slice(&len.to_le_bytes());
        v.push(*fds);
    }
    v.extend_from_slice(stream);
    v
}

/// Fuzz body: decodes an arbitrary chunked stream with arbitrary fds, and checks that the
/// decoder never panics, never buffers more than the cap, stays poisoned after a fatal
/// error, and that every decoded message re-encodes and decodes to the same value.
pub fn decode(data: &[u8]) {
    let _ = decode_stats(data);
}

/// What one [`decode`] run saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages decoded (and round-tripped).
    pub decoded: usize,
    /// Rejected messages.
    pub rejected: usize,
    /// Whether a fatal error ended the stream.
    pub fatal: bool,
}

/// [`decode`], returning what happened (for tests of the seed corpus).
pub fn decode_stats(data: &[u8]) -> Stats {
    let mut u = Unstructured::new(data);
    let kind = u.arbitrary::<u8>().unwrap_or(0) % 4;
    let c = u.arbitrary::<u8>().unwrap_or(0);
    let ctx = DecodeContext {
        xen_mmap: c & 1 != 0,
        log_shmfd: c & 2 != 0,
        postcopy: c & 4 != 0,
    };
    let n = u.arbitrary::<u8>().unwrap_or(0);
    let byte_by_byte = n & 0x80 != 0;
    let mut chunks = Vec::new();
    for _ in 0..(n & 0x1f) % 17 {
        let len = u.arbitrary::<u16>().unwrap_or(1).max(1) as usize;
        let fds = u.arbitrary::<u8>().unwrap_or(0) % 10;
        chunks.push((len, fds as usize));
    }
    let stream = u.take_rest();
    match kind {
        0 => run::<FrontendRequest<u32>>(ctx, &chunks, byte_by_byte, stream),
        1 => run::<BackendRequest<u32>>(ctx, &chunks, byte_by_byte, stream),
        2 => run::<FrontendReply<u32>>(ctx, &chunks, byte_by_byte, stream),
        _ => run::<BackendReply<u32>>(ctx, &chunks, byte_by_byte, stream),
    }
}

fn run<M>(ctx: DecodeContext, chunks: &[(usize, usize)], byte_by_byte: bool, stream: &[u8]) -> Stats
where
    M: WireMessage<Handle = u32> + Clone + PartialEq + core::fmt::Debug,
{
    let mut stats = Stats::default();
    let mut decoder = Decoder::<M>::new(ctx);
    let mut next_fd = 0u32;
    let mut rest = stream;
    let mut pieces: Vec<(&[u8], usize)> = Vec::new();
    for &(len, fds) in chunks {
        let (a, b) = rest.split_at(len.min(rest.len()));
        pieces.push((a, fds));
        rest = b;
    }
    if byte_by_byte {
        pieces.extend(rest.chunks(1).map(|b| (b, 0)));
    } else if !rest.is_empty() {
        pieces.push((rest, 0));
    }
    for (bytes, nfds) in pieces {
        let fds: Vec<u32> = (0..nfds as u32).map(|i| next_fd + i).collect();
        next_fd += nfds as u32;
        let mut input = Input::new(bytes, fds);
        loop {
            let result = decoder.decode(&mut input);
            assert!(decoder.buffered_capacity() <= MAX_PAYLOAD_SIZE);
            match result {
                Ok(None) => break,
                Ok(Some(received)) => {
                    stats.decoded += 1;
                    check_round_trip::<M>(ctx, received);
                }
                Err(e) if e.is_fatal() => {
                    assert!(decoder.is_poisoned());
                    let mut more = Input::new(b"x", vec![1]);
                    assert_eq!(
                        decoder.decode(&mut more),
                        Err(crate::wire::DecodeError::Poisoned)
                    );
                    stats.fatal = true;
                    return stats;
                }
                Err(_) => {
                    stats.rejected += 1;
                    assert!(!decoder.is_poisoned());
                }
            }
        }
    }
    stats
}

fn check_round_trip<M>(ctx: DecodeContext, received: crate::wire::Received<M>)
where
    M: WireMessage<Handle = u32> + Clone + PartialEq + core::fmt::Debug,
{
    let encoded =
        match received
            .message
            .clone()
            .encode_message(received.code, received.need_reply(), &ctx)
        {
            Ok(e) => e,
            Err(e) => panic!("decoded {received:?} does not re-encode: {e}"),
        };
    let mut decoder = Decoder::<M>::new(ctx);
    let mut input = Input::new(&encoded.bytes, encoded.fds);
    let again = decoder.decode(&mut input);
    match again {
        Ok(Some(again)) => assert_eq!(again, received),
        other => panic!("re-encoded {received:?} decodes as {other:?}"),
    }
    assert!(input.is_empty());
    assert!(decoder.is_idle());
}

#[cfg(test)]
mod seeds;

mod channel;
pub use channel::{
    backend_channel, backend_channel_completions, frontend_channel, frontend_channel_replies,
};
#[cfg(test)]
mod channel_seeds;

mod session;
pub use session::{
    backend_session, backend_session_replies, frontend_session, frontend_session_completions,
};
#[cfg(test)]
mod session_seeds;
