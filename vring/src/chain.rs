//! Copying into and out of a buffer's elements without allocating.
//!
//! A buffer (a descriptor chain) is its device-readable elements followed by
//! its device-writable ones (virtqueue spec §1). [`Reader`] walks the readable
//! part, [`Writer`] the writable part; both pull elements lazily from a
//! [`DescriptorIter`] of either ring layout, translate each element when they
//! reach it (an element that crosses a memory-region border is walked piece by
//! piece), and never allocate. A malformed chain surfaces as the iterator's
//! typed error from the call that reached it.

use crate::Error;
use crate::desc::{Descriptor, DescriptorIter};
use crate::log::DirtyLog;
use crate::memory::{GuestMemory, GuestSlice};

/// The element being consumed: guest address of the next byte and bytes left.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    addr: u64,
    left: u32,
}

impl Cursor {
    /// Translates and consumes the next host-contiguous piece of at most
    /// `max` bytes of this element.
    fn take<'m, M: GuestMemory + ?Sized>(
        &mut self,
        mem: &'m M,
        max: usize,
    ) -> Result<GuestSlice<'m>, Error> {
        let want = (self.left as usize).min(max);
        let slice = GuestSlice::new_prefix(mem, self.addr, want)?;
        let n = slice.len();
        self.addr = self.addr.wrapping_add(n as u64);
        self.left -= n as u32;
        Ok(slice)
    }
}

/// Reads the device-readable part of a buffer.
#[derive(Debug)]
pub struct Reader<'m, M: ?Sized, I> {
    mem: &'m M,
    descs: I,
    cur: Option<Cursor>,
    ended: bool,
    read: u64,
}

impl<'m, M: GuestMemory + ?Sized, I: DescriptorIter> Reader<'m, M, I> {
    /// A reader over the elements `descs` yields, in guest memory `mem`.
    pub fn new(mem: &'m M, descs: I) -> Self {
        Reader {
            mem,
            descs,
            cur: None,
            ended: false,
            read: 0,
        }
    }

    /// Makes `self.cur` a readable element with bytes left; `false` at the end
    /// of the readable part.
    fn fill(&mut self) -> Result<bool, Error> {
        loop {
            if matches!(self.cur, Some(c) if c.left > 0) {
                return Ok(true);
            }
            if self.ended {
                return Ok(false);
            }
            match self.descs.next() {
                Some(Ok(Descriptor {
                    writable: false,
                    addr,
                    len,
                })) => self.cur = Some(Cursor { addr, left: len }),
                Some(Ok(_)) | None => {
                    self.ended = true;
                    self.cur = None;
                }
                Some(Err(e)) => {
                    self.ended = true;
                    self.cur = None;
                    return Err(e);
                }
            }
        }
    }

    /// The next contiguous piece of the readable part, at most `max` bytes,
    /// consumed; `None` at the end of the readable part. For zero-copy I/O.
    pub fn next_slice(&mut self, max: usize) -> Result<Option<GuestSlice<'m>>, Error> {
        if max == 0 || !self.fill()? {
            return Ok(None);
        }
        let Some(cur) = self.cur.as_mut() else {
            return Ok(None);
        };
        let slice = cur.take(self.mem, max)?;
        self.read += slice.len() as u64;
        Ok(Some(slice))
    }

    /// Copies as many bytes as are left (up to `buf.len()`) into `buf`;
    /// returns how many.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        let mut done = 0;
        while done < buf.len() {
            let Some(slice) = self.next_slice(buf.len() - done)? else {
                break;
            };
            let n = slice.len();
            let dst = buf.get_mut(done..done + n).ok_or(Error::OutOfBounds {
                addr: slice.guest_addr(),
                len: n as u64,
                offset: 0,
                access: n as u64,
            })?;
            slice.read_at(0, dst)?;
            done += n;
        }
        Ok(done)
    }

    /// Fills `buf` completely, or fails with [`Error::NoRoom`].
    pub fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), Error> {
        let n = self.read(buf)?;
        if n < buf.len() {
            return Err(Error::NoRoom {
                what: "readable",
                available: n as u64,
                needed: buf.len() as u64,
            });
        }
        Ok(())
    }

    /// Skips up to `n` readable bytes; returns how many were skipped.
    pub fn skip(&mut self, mut n: usize) -> Result<usize, Error> {
        let mut done = 0;
        while n > 0 {
            let Some(slice) = self.next_slice(n)? else {
                break;
            };
            done += slice.len();
            n -= slice.len();
        }
        Ok(done)
    }

    /// Total bytes consumed so far.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }
}

/// Writes the device-writable part of a buffer, counting the bytes written
/// (the used length) and marking them in the dirty log when one is set.
#[derive(Debug)]
pub struct Writer<'m, M: ?Sized, I> {
    mem: &'m M,
    descs: I,
    log: Option<&'m DirtyLog>,
    cur: Option<Cursor>,
    seen_writable: bool,
    ended: bool,
    written: u64,
}

impl<'m, M: GuestMemory + ?Sized, I: DescriptorIter> Writer<'m, M, I> {
    /// A writer over the elements `descs` yields; readable elements before the
    /// first writable one are skipped. Writes are logged in `log` if given.
    pub fn new(mem: &'m M, descs: I, log: Option<&'m DirtyLog>) -> Self {
        Writer {
            mem,
            descs,
            log,
            cur: None,
            seen_writable: false,
            ended: false,
            written: 0,
        }
    }

    fn fill(&mut self) -> Result<bool, Error> {
        loop {
            if matches!(self.cur, Some(c) if c.left > 0) {
                return Ok(true);
            }
            if self.ended {
                return Ok(false);
            }
            match self.descs.next() {
                Some(Ok(Descriptor {
                    writable: true,
                    addr,
                    len,
                })) => {
                    self.seen_writable = true;
                    self.cur = Some(Cursor { addr, left: len });
                }
                Some(Ok(Descriptor {
                    writable: false, ..
                })) => {
                    if self.seen_writable {
                        self.ended = true;
                        self.cur = None;
                        return Err(Error::ReadableAfterWritable);
                    }
                }
                None => {
                    self.ended = true;
                    self.cur = None;
                }
                Some(Err(e)) => {
                    self.ended = true;
                    self.cur = None;
                    return Err(e);
                }
            }
        }
    }

    /// The next contiguous piece of the writable part, at most `max` bytes.
    /// The piece counts as written (and is logged) in full: fill all of it.
    /// `None` when the writable part is used up.
    pub fn next_slice(&mut self, max: usize) -> Result<Option<GuestSlice<'m>>, Error> {
        if max == 0 || !self.fill()? {
            return Ok(None);
        }
        let Some(cur) = self.cur.as_mut() else {
            return Ok(None);
        };
        let slice = cur.take(self.mem, max)?;
        self.written += slice.len() as u64;
        if let Some(log) = self.log {
            log.mark(slice.guest_addr(), slice.len() as u64);
        }
        Ok(Some(slice))
    }

    /// Copies as much of `buf` as fits; returns how many bytes were written.
    pub fn write(&mut self, buf: &[u8]) -> Result<usize, Error> {
        let mut done = 0;
        while done < buf.len() {
            let Some(slice) = self.next_slice(buf.len() - done)? else {
                break;
            };
            let n = slice.len();
            let src = buf.get(done..done + n).ok_or(Error::OutOfBounds {
                addr: slice.guest_addr(),
                len: n as u64,
                offset: 0,
                access: n as u64,
            })?;
            slice.write_at(0, src)?;
            done += n;
        }
        Ok(done)
    }

    /// Writes all of `buf`, or fails with [`Error::NoRoom`] (having written
    /// what fit).
    pub fn write_all(&mut self, buf: &[u8]) -> Result<(), Error> {
        let n = self.write(buf)?;
        if n < buf.len() {
            return Err(Error::NoRoom {
                what: "writable",
                available: n as u64,
                needed: buf.len() as u64,
            });
        }
        Ok(())
    }

    /// Skips up to `n` bytes of the writable part without writing them (e.g. a data area
    /// the device filled by other means, such as an io_uring read into the slices it got
    /// from [`next_slice`](Self::next_slice) of another writer); they count as written and
    /// are logged in the dirty log. Returns how many bytes were skipped (fewer when the
    /// writable part ends).
    pub fn skip(&mut self, mut n: usize) -> Result<usize, Error> {
        let mut done = 0;
        while n > 0 {
            let Some(slice) = self.next_slice(n)? else {
                break;
            };
            done += slice.len();
            n -= slice.len();
        }
        Ok(done)
    }

    /// Bytes written so far: the `len` to report in the used element. Saturates
    /// at `u32::MAX` (a chain longer than 2^32 bytes is malformed anyway).
    pub fn bytes_written(&self) -> u32 {
        u32::try_from(self.written).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{BufferMemory, SharedRegion};

    fn d(addr: u64, len: u32, writable: bool) -> Result<Descriptor, Error> {
        Ok(Descriptor {
            addr,
            len,
            writable,
        })
    }

    #[test]
    fn reader_spans_elements_and_stops_at_the_writable_part() {
        let mem = BufferMemory::new(0, 0x1000);
        mem.write(0x100, b"abc").unwrap();
        mem.write(0x200, b"defg").unwrap();
        let descs = vec![d(0x100, 3, false), d(0x200, 4, false), d(0x300, 8, true)];
        let mut r = Reader::new(&mem, descs.into_iter());
        let mut buf = [0u8; 10];
        assert_eq!(r.read(&mut buf).unwrap(), 7);
        assert_eq!(&buf[..7], b"abcdefg");
        assert_eq!(r.read(&mut buf).unwrap(), 0);
        assert_eq!(r.bytes_read(), 7);
    }

    #[test]
    fn reader_reports_chain_errors() {
        let mem = BufferMemory::new(0, 0x1000);
        let descs = vec![d(0x100, 3, false), Err(Error::NestedIndirect)];
        let mut r = Reader::new(&mem, descs.into_iter());
        let mut buf = [0u8; 10];
        assert_eq!(r.read(&mut buf), Err(Error::NestedIndirect));
        assert!(matches!(
            Reader::new(&mem, vec![d(0x100, 3, false)].into_iter()).read_exact(&mut buf),
            Err(Error::NoRoom { available: 3, .. })
        ));
    }

    #[test]
    fn reader_rejects_unmapped_elements() {
        let mem = BufferMemory::new(0, 0x1000);
        let mut r = Reader::new(&mem, vec![d(0xff0, 0x20, false)].into_iter());
        let mut buf = [0u8; 0x20];
        assert!(matches!(
            r.read(&mut buf),
            Err(Error::Untranslatable { addr: 0x1000, .. })
        ));
    }

    #[test]
    fn elements_crossing_adjacent_regions_are_walked_in_pieces() {
        let mem = BufferMemory::with_regions(&[(0, 0x100), (0x100, 0x100)]);
        mem.write(0xfc, b"abcdefgh").unwrap_err(); // one slice cannot cross
        let descs = vec![d(0xfc, 8, true)];
        let mut w = Writer::new(&mem, descs.into_iter(), None);
        w.write_all(b"abcdefgh").unwrap();
        assert_eq!(w.bytes_written(), 8);
        let mut r = Reader::new(&mem, vec![d(0xfc, 8, false)].into_iter());
        let mut buf = [0u8; 8];
        r.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"abcdefgh");
    }

    #[test]
    fn writer_skips_readable_then_rejects_readable_after_writable() {
        let mem = BufferMemory::new(0, 0x1000);
        let descs = vec![d(0x100, 3, false), d(0x200, 2, true), d(0x300, 2, false)];
        let mut w = Writer::new(&mem, descs.into_iter(), None);
        assert_eq!(w.write(b"xy").unwrap(), 2);
        assert_eq!(w.write(b"z"), Err(Error::ReadableAfterWritable));
        let mut b = [0u8; 2];
        mem.read(0x200, &mut b).unwrap();
        assert_eq!(&b, b"xy");
    }

    #[test]
    fn writer_logs_what_it_writes() {
        let mem = BufferMemory::new(0, 0x10000);
        let log = DirtyLog::new(SharedRegion::zeroed(2));
        let descs = vec![d(0x1ffe, 4, true), d(0x5000, 0x10, true)];
        let mut w = Writer::new(&mem, descs.into_iter(), Some(&log));
        w.write_all(&[1; 6]).unwrap();
        assert!(matches!(
            w.write_all(&[0; 20]),
            Err(Error::NoRoom { available: 14, .. })
        ));
        assert_eq!(w.bytes_written(), 20);
        for page in 0..16u64 {
            assert_eq!(
                log.is_dirty(page * 0x1000),
                [1, 2, 5].contains(&page),
                "{page}"
            );
        }
    }

    #[test]
    fn writer_skip_counts_and_ends_with_the_writable_part() {
        let mem = BufferMemory::new(0, 0x1000);
        // A virtio-blk IN request: 512 data bytes, then the status byte last.
        let descs = vec![d(0x100, 16, false), d(0x200, 512, true), d(0x400, 1, true)];
        let mut w = Writer::new(&mem, descs.into_iter(), None);
        assert_eq!(w.skip(512).unwrap(), 512);
        w.write_all(&[7]).unwrap();
        assert_eq!(w.bytes_written(), 513);
        assert_eq!(w.skip(10).unwrap(), 0);
        let mut b = [0u8; 1];
        mem.read(0x400, &mut b).unwrap();
        assert_eq!(b, [7]);
    }
}
