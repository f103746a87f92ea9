//! Which message the fds of one `recvmsg` belong to.
//!
//! A Unix stream socket delivers the fds of one `sendmsg` with the first read
//! that touches its bytes, and Linux ends a read right after a segment that
//! carries fds, but it may merge earlier fd-less segments into the same read.
//! When a peer pipelines requests (QEMU sends SET_VRING_ADDR then
//! SET_VRING_KICK without waiting), one read can therefore hold a whole
//! fd-less message followed by the message the fds came with: the fds belong
//! to the **last** message whose header begins in the read. This tracker
//! follows the framing (12-byte header, `size` bytes of payload) to find that
//! header, so the read can be fed to the session in two pieces and each piece
//! has its fds on its first header (what the protocol core expects). One
//! `recvmsg` per message in the common case, no `MSG_PEEK`.

use vhost_proto::wire::HEADER_SIZE;

/// Follows message boundaries across reads.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct Framer {
    header: [u8; HEADER_SIZE],
    header_len: usize,
    /// Payload bytes still to come of the current message.
    body_left: u64,
}

impl Framer {
    /// Whether the bytes seen so far end inside a message (a header or a body is
    /// incomplete).
    pub fn mid_message(&self) -> bool {
        self.header_len > 0 || self.body_left > 0
    }

    /// Consumes one read; returns the offset of the last header that begins
    /// in it, if any.
    pub fn last_header_start(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut pos = 0;
        let mut last = None;
        while pos < bytes.len() {
            if self.body_left > 0 {
                let rest = bytes.len() - pos;
                let n = usize::try_from(self.body_left)
                    .unwrap_or(usize::MAX)
                    .min(rest);
                pos += n;
                self.body_left -= n as u64;
                continue;
            }
            if self.header_len == 0 {
                last = Some(pos);
            }
            let want = HEADER_SIZE - self.header_len;
            let take = want.min(bytes.len() - pos);
            if let (Some(dst), Some(src)) = (
                self.header.get_mut(self.header_len..self.header_len + take),
                bytes.get(pos..pos + take),
            ) {
                dst.copy_from_slice(src);
            }
            self.header_len += take;
            pos += take;
            if self.header_len == HEADER_SIZE {
                let size = self
                    .header
                    .get(8..12)
                    .and_then(|b| <[u8; 4]>::try_from(b).ok())
                    .map_or(0, u32::from_ne_bytes);
                self.body_left = u64::from(size);
                self.header_len = 0;
            }
        }
        last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(size: u32) -> Vec<u8> {
        let mut v = vec![0u8; 12];
        v[8..12].copy_from_slice(&size.to_ne_bytes());
        v.extend(std::iter::repeat_n(0xaa, size as usize));
        v
    }

    #[test]
    fn finds_the_last_header_in_any_split() {
        let mut all = msg(8);
        all.extend(msg(0));
        all.extend(msg(40));
        let starts = [0usize, 20, 32];
        for cut in 0..all.len() {
            let mut f = Framer::default();
            let (a, b) = all.split_at(cut);
            let la = f.last_header_start(a);
            let lb = f.last_header_start(b).map(|x| x + cut);
            let exp_a = starts.iter().rev().find(|&&s| s < cut).copied();
            let exp_b = starts
                .iter()
                .rev()
                .find(|&&s| s >= cut && s < all.len())
                .copied();
            assert_eq!(la, exp_a, "cut {cut}");
            assert_eq!(lb, exp_b, "cut {cut}");
        }
    }
}
