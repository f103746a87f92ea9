//! Input a session buffers while it cannot decode (an answer is outstanding, or its event or
//! transmit queue is full), bounded.

use std::collections::VecDeque;

use super::MAX_BUFFERED_INPUT;
use super::error::FatalError;

/// Most buffered chunks that carry fds (each keeps its own fd boundary, spec §1).
const MAX_CHUNKS: usize = 64;

/// Buffered `(bytes, fds)` chunks in arrival order. Chunks without fds are merged into a
/// previous chunk without fds, which keeps every fd at the start of the bytes it came with.
#[derive(Debug)]
pub(crate) struct Inbox<H> {
    chunks: VecDeque<(Vec<u8>, Vec<H>)>,
    bytes: usize,
}

impl<H> Default for Inbox<H> {
    fn default() -> Self {
        Inbox {
            chunks: VecDeque::new(),
            bytes: 0,
        }
    }
}

impl<H> Inbox<H> {
    /// Whether nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Bytes buffered.
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// Appends a chunk; too much buffered input is fatal.
    pub fn push(&mut self, bytes: &[u8], fds: Vec<H>) -> Result<(), FatalError> {
        if bytes.is_empty() && fds.is_empty() {
            return Ok(());
        }
        let total = self.bytes.saturating_add(bytes.len());
        if total > MAX_BUFFERED_INPUT || (self.chunks.len() >= MAX_CHUNKS && !fds.is_empty()) {
            return Err(FatalError::InputOverflow { buffered: total });
        }
        self.bytes = total;
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
        Some(c)
    }

    /// Puts an unfinished rest back at the front.
    pub fn unpop(&mut self, bytes: &[u8], fds: Vec<H>) {
        if bytes.is_empty() && fds.is_empty() {
            return;
        }
        self.bytes = self.bytes.saturating_add(bytes.len());
        self.chunks.push_front((bytes.to_vec(), fds));
    }

    /// Drops everything (dropping the fds closes them).
    pub fn clear(&mut self) {
        self.chunks = VecDeque::new();
        self.bytes = 0;
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
