//! Input a session buffers while it cannot decode (an answer is outstanding, or its event or
//! transmit queue is full), bounded.

use std::collections::VecDeque;

use super::error::FatalError;
use super::{MAX_BUFFERED_FDS, MAX_BUFFERED_INPUT};

/// Buffered `(bytes, fds)` chunks in arrival order. A chunk with fds is kept apart (its fds
/// belong to the last header that begins in its bytes, so merging later bytes into it would
/// move them); chunks without fds are merged into a previous chunk without fds.
#[derive(Debug)]
pub(crate) struct Inbox<H> {
    chunks: VecDeque<(Vec<u8>, Vec<H>)>,
    bytes: usize,
    fds: usize,
}

impl<H> Default for Inbox<H> {
    fn default() -> Self {
        Inbox {
            chunks: VecDeque::new(),
            bytes: 0,
            fds: 0,
        }
    }
}

impl<H> Inbox<H> {
    /// Whether nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Bytes buffered.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// Bytes that may still be buffered: 0 once fewer than 8 more fds would fit (one read
    /// may bring 8, spec §2), so an embedder that reads at most this much never overflows.
    pub fn room(&self) -> usize {
        if self.fds + 8 > MAX_BUFFERED_FDS {
            0
        } else {
            MAX_BUFFERED_INPUT.saturating_sub(self.bytes)
        }
    }

    /// Appends a chunk; too much buffered input is fatal.
    pub fn push(&mut self, bytes: &[u8], fds: Vec<H>) -> Result<(), FatalError> {
        if bytes.is_empty() && fds.is_empty() {
            return Ok(());
        }
        let total = self.bytes.saturating_add(bytes.len());
        let total_fds = self.fds.saturating_add(fds.len());
        if total > MAX_BUFFERED_INPUT || total_fds > MAX_BUFFERED_FDS {
            return Err(FatalError::InputOverflow { buffered: total });
        }
        self.bytes = total;
        self.fds = total_fds;
        if fds.is_empty()
            && let Some((last, last_fds)) = self.chunks.back_mut()
            && last_fds.is_empty()
        {
            last.extend_from_slice(bytes);
            return Ok(());
        }
        self.chunks.push_back((bytes.to_vec(), fds));
        Ok(())
    }

    /// Takes the oldest chunk.
    pub fn pop(&mut self) -> Option<(Vec<u8>, Vec<H>)> {
        let c = self.chunks.pop_front()?;
        self.bytes = self.bytes.saturating_sub(c.0.len());
        self.fds = self.fds.saturating_sub(c.1.len());
        Some(c)
    }

    /// Puts an unfinished rest back at the front.
    pub fn unpop(&mut self, bytes: &[u8], fds: Vec<H>) {
        if bytes.is_empty() && fds.is_empty() {
            return;
        }
        self.bytes = self.bytes.saturating_add(bytes.len());
        self.fds = self.fds.saturating_add(fds.len());
        self.chunks.push_front((bytes.to_vec(), fds));
    }

    /// Drops everything (dropping the fds closes them).
    pub fn clear(&mut self) {
        self.chunks = VecDeque::new();
        self.bytes = 0;
        self.fds = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_fdless_chunks_and_bounds() {
        let mut i = Inbox::<i32>::default();
        i.push(b"ab", vec![1]).unwrap();
        i.push(b"cd", vec![]).unwrap();
        i.push(b"ef", vec![]).unwrap();
        assert_eq!(i.chunks.len(), 2);
        assert_eq!(i.len(), 6);
        assert_eq!(i.pop(), Some((b"ab".to_vec(), vec![1])));
        assert_eq!(i.pop(), Some((b"cdef".to_vec(), vec![])));
        assert!(i.is_empty());
        let big = vec![0u8; MAX_BUFFERED_INPUT + 1];
        assert!(matches!(
            i.push(&big, vec![]),
            Err(FatalError::InputOverflow { .. })
        ));
    }
}
