//! The virtio-blk request codec (virtqueue.md §9.1): the header, the request types, the
//! status byte, the discard / write-zeroes segments, and the checks that turn a hostile
//! header into either a request the image may run or the status to answer with.
//!
//! Everything here is pure: it works on the header's bytes and the chain's lengths, so
//! it is tested (and property-tested) without rings or images.

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Bytes per sector: `sector` fields and `capacity` count 512-byte units whatever
/// `blk_size` says (virtqueue.md §9.1).
pub const SECTOR_SIZE: u64 = 512;

/// Size of the request header.
pub const HEADER_SIZE: u64 = 16;

/// Size of one discard / write-zeroes segment.
pub const SEGMENT_SIZE: u64 = 16;

/// Bytes of a GET_ID answer (NUL-padded, no NUL if all are used).
pub const ID_BYTES: usize = 20;

/// The request types (`type` field, virtqueue.md §9.1).
pub mod kind {
    /// VIRTIO_BLK_T_IN: read sectors into the writable part.
    pub const IN: u32 = 0;
    /// VIRTIO_BLK_T_OUT: write sectors from the readable part.
    pub const OUT: u32 = 1;
    /// VIRTIO_BLK_T_FLUSH: make completed writes durable.
    pub const FLUSH: u32 = 4;
    /// VIRTIO_BLK_T_GET_ID: the 20-byte device id (serial).
    pub const GET_ID: u32 = 8;
    /// VIRTIO_BLK_T_GET_LIFETIME (not supported: UNSUPP).
    pub const GET_LIFETIME: u32 = 10;
    /// VIRTIO_BLK_T_DISCARD: segments the device may deallocate.
    pub const DISCARD: u32 = 11;
    /// VIRTIO_BLK_T_WRITE_ZEROES: segments that read back as zeroes.
    pub const WRITE_ZEROES: u32 = 13;
    /// VIRTIO_BLK_T_SECURE_ERASE (not supported: UNSUPP).
    pub const SECURE_ERASE: u32 = 14;

    /// The name of a request type, for logs and the probe.
    pub fn name(kind: u32) -> &'static str {
        match kind {
            IN => "IN",
            OUT => "OUT",
            FLUSH => "FLUSH",
            GET_ID => "GET_ID",
            GET_LIFETIME => "GET_LIFETIME",
            DISCARD => "DISCARD",
            WRITE_ZEROES => "WRITE_ZEROES",
            SECURE_ERASE => "SECURE_ERASE",
            _ => "unknown",
        }
    }
}

/// The `flags` bit of a write-zeroes segment that lets the device deallocate
/// (VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP).
pub const SEGMENT_FLAG_UNMAP: u32 = 1;

/// The status byte, the last writable byte of every request (virtqueue.md §9.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Status {
    /// VIRTIO_BLK_S_OK.
    Ok = 0,
    /// VIRTIO_BLK_S_IOERR: the request failed (out of range, read-only, I/O error).
    IoErr = 1,
    /// VIRTIO_BLK_S_UNSUPP: the request type or a flag is not supported.
    Unsupp = 2,
}

impl Status {
    /// The wire value.
    pub fn byte(self) -> u8 {
        self as u8
    }

    /// The worse of two statuses (a request made of several operations reports its
    /// worst one: UNSUPP over IOERR over OK).
    pub fn worst(self, other: Status) -> Status {
        self.max(other)
    }

    /// The status a wire byte names, `None` for other values.
    pub fn from_byte(b: u8) -> Option<Status> {
        match b {
            0 => Some(Status::Ok),
            1 => Some(Status::IoErr),
            2 => Some(Status::Unsupp),
            _ => None,
        }
    }
}

/// The 16-byte request header: `type` le32, `reserved` le32 (legacy `ioprio`), `sector`
/// le64.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct RequestHeader {
    /// The request type ([`kind`]).
    pub kind: U32,
    /// Reserved (legacy I/O priority); ignored.
    pub reserved: U32,
    /// The first sector, in 512-byte units.
    pub sector: U64,
}

impl RequestHeader {
    /// A header of `kind` at `sector`.
    pub fn new(kind: u32, sector: u64) -> Self {
        RequestHeader {
            kind: kind.into(),
            reserved: 0.into(),
            sector: sector.into(),
        }
    }
}

/// A discard / write-zeroes segment: `sector` le64, `num_sectors` le32, `flags` le32.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct Segment {
    /// The first sector.
    pub sector: U64,
    /// How many sectors.
    pub num_sectors: U32,
    /// [`SEGMENT_FLAG_UNMAP`] or nothing.
    pub flags: U32,
}

impl Segment {
    /// A segment of `num_sectors` from `sector` with `flags`.
    pub fn new(sector: u64, num_sectors: u32, flags: u32) -> Self {
        Segment {
            sector: sector.into(),
            num_sectors: num_sectors.into(),
            flags: flags.into(),
        }
    }
}

/// What the device lets requests do: the disk's size and the limits its config space
/// advertises. Requests beyond them are answered, never run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Disk size in sectors.
    pub capacity: u64,
    /// Writes (OUT, DISCARD, WRITE_ZEROES) get IOERR.
    pub read_only: bool,
    /// Most data bytes one IN or OUT may carry (`seg_max × size_max`); more is IOERR.
    pub max_data: u64,
    /// DISCARD is offered (otherwise UNSUPP).
    pub discard: bool,
    /// Most sectors in one discard segment.
    pub max_discard_sectors: u32,
    /// Most segments in one DISCARD.
    pub max_discard_seg: u32,
    /// WRITE_ZEROES is offered (otherwise UNSUPP).
    pub write_zeroes: bool,
    /// Most sectors in one write-zeroes segment.
    pub max_write_zeroes_sectors: u32,
    /// Most segments in one WRITE_ZEROES.
    pub max_write_zeroes_seg: u32,
}

/// A request the image may run: every range is inside the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Read `len` bytes at byte `offset` into the data part (the writable bytes before the
    /// status).
    Read {
        /// Byte offset on the disk.
        offset: u64,
        /// Bytes (a multiple of [`SECTOR_SIZE`]).
        len: u64,
    },
    /// Write the `len` data bytes after the header at byte `offset`.
    Write {
        /// Byte offset on the disk.
        offset: u64,
        /// Bytes (a multiple of [`SECTOR_SIZE`]).
        len: u64,
    },
    /// Make completed writes durable.
    Flush,
    /// Write the id into the first `len` data bytes (at most [`ID_BYTES`]).
    GetId {
        /// Bytes to write.
        len: usize,
    },
    /// `segments` discard segments follow the header ([`decode_segment`] each).
    Discard {
        /// Number of segments (1 ..= max_discard_seg).
        segments: u32,
    },
    /// `segments` write-zeroes segments follow the header.
    WriteZeroes {
        /// Number of segments (1 ..= max_write_zeroes_seg).
        segments: u32,
    },
}

/// A byte range of the disk a segment names, checked against the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZeroRange {
    /// Byte offset.
    pub offset: u64,
    /// Bytes (may be 0: nothing to do).
    pub len: u64,
    /// The device may deallocate (discard, or write-zeroes with UNMAP).
    pub unmap: bool,
}

/// `sector .. sector + len bytes` as a byte range inside `capacity` sectors, with checked
/// arithmetic: `None` if it overflows or ends past the disk.
pub fn byte_range(sector: u64, len: u64, capacity: u64) -> Option<u64> {
    let offset = sector.checked_mul(SECTOR_SIZE)?;
    let end = offset.checked_add(len)?;
    let size = capacity.checked_mul(SECTOR_SIZE)?;
    (end <= size).then_some(offset)
}

/// Decodes a request from its header and its chain's byte counts (`readable` includes
/// the header, `writable` the status byte: the caller has checked `writable >= 1` and
/// `readable >= HEADER_SIZE`, see [`check_framing`]). `Err` is the status to answer with.
pub fn decode(
    header: &RequestHeader,
    readable: u64,
    writable: u64,
    limits: &Limits,
) -> Result<Request, Status> {
    // The data area: writable bytes before the status, readable bytes after the header.
    let data_in = writable.saturating_sub(1);
    let data_out = readable.saturating_sub(HEADER_SIZE);
    let sector = header.sector.get();
    match header.kind.get() {
        kind::IN => {
            let len = data_in;
            if !len.is_multiple_of(SECTOR_SIZE) || len > limits.max_data {
                return Err(Status::IoErr);
            }
            let offset = byte_range(sector, len, limits.capacity).ok_or(Status::IoErr)?;
            Ok(Request::Read { offset, len })
        }
        kind::OUT => {
            if limits.read_only {
                return Err(Status::IoErr);
            }
            let len = data_out;
            if !len.is_multiple_of(SECTOR_SIZE) || len > limits.max_data {
                return Err(Status::IoErr);
            }
            let offset = byte_range(sector, len, limits.capacity).ok_or(Status::IoErr)?;
            Ok(Request::Write { offset, len })
        }
        kind::FLUSH => Ok(Request::Flush),
        kind::GET_ID => Ok(Request::GetId {
            len: usize::try_from(data_in.min(ID_BYTES as u64)).unwrap_or(ID_BYTES),
        }),
        k @ (kind::DISCARD | kind::WRITE_ZEROES) => {
            let discard = k == kind::DISCARD;
            let (offered, max_seg) = if discard {
                (limits.discard, limits.max_discard_seg)
            } else {
                (limits.write_zeroes, limits.max_write_zeroes_seg)
            };
            // A write to a read-only device is IOERR (virtqueue.md §9.1), offered or not.
            if limits.read_only {
                return Err(Status::IoErr);
            }
            if !offered {
                return Err(Status::Unsupp);
            }
            if data_out == 0 || !data_out.is_multiple_of(SEGMENT_SIZE) {
                return Err(Status::IoErr);
            }
            let segments = data_out / SEGMENT_SIZE;
            if segments > u64::from(max_seg) {
                return Err(Status::Unsupp);
            }
            let segments = u32::try_from(segments).map_err(|_| Status::Unsupp)?;
            Ok(if discard {
                Request::Discard { segments }
            } else {
                Request::WriteZeroes { segments }
            })
        }
        _ => Err(Status::Unsupp),
    }
}

/// Why a chain cannot be answered as a request at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No writable byte: there is nowhere to put the status. The ring is stopped.
    NoStatus,
    /// Fewer readable bytes than a header: answered with IOERR.
    ShortHeader,
}

/// Checks a chain's byte counts before its header is read.
pub fn check_framing(readable: u64, writable: u64) -> Result<(), Framing> {
    if writable == 0 {
        Err(Framing::NoStatus)
    } else if readable < HEADER_SIZE {
        Err(Framing::ShortHeader)
    } else {
        Ok(())
    }
}

/// Decodes one segment of a DISCARD (`discard`) or WRITE_ZEROES request. Unknown flags,
/// and UNMAP on a discard, are UNSUPP; more sectors than the limit, or a range past the
/// disk, IOERR.
pub fn decode_segment(seg: &Segment, discard: bool, limits: &Limits) -> Result<ZeroRange, Status> {
    let flags = seg.flags.get();
    if flags & !SEGMENT_FLAG_UNMAP != 0 || (discard && flags != 0) {
        return Err(Status::Unsupp);
    }
    let sectors = seg.num_sectors.get();
    let max = if discard {
        limits.max_discard_sectors
    } else {
        limits.max_write_zeroes_sectors
    };
    if sectors > max {
        return Err(Status::IoErr);
    }
    let len = u64::from(sectors) * SECTOR_SIZE;
    let offset = byte_range(seg.sector.get(), len, limits.capacity).ok_or(Status::IoErr)?;
    Ok(ZeroRange {
        offset,
        len,
        unmap: discard || flags & SEGMENT_FLAG_UNMAP != 0,
    })
}

/// The GET_ID answer for `serial`: its first 20 bytes, NUL-padded.
pub fn id_bytes(serial: &str) -> [u8; ID_BYTES] {
    let mut id = [0u8; ID_BYTES];
    for (d, s) in id.iter_mut().zip(serial.bytes()) {
        *d = s;
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits() -> Limits {
        Limits {
            capacity: 2048, // 1 MiB
            read_only: false,
            max_data: 1 << 20,
            discard: true,
            max_discard_sectors: 1024,
            max_discard_seg: 4,
            write_zeroes: true,
            max_write_zeroes_sectors: 1024,
            max_write_zeroes_seg: 4,
        }
    }

    fn h(kind: u32, sector: u64) -> RequestHeader {
        RequestHeader::new(kind, sector)
    }

    #[test]
    fn reads_and_writes_inside_the_disk() {
        let l = limits();
        assert_eq!(
            decode(&h(kind::IN, 2), 16, 4097, &l),
            Ok(Request::Read {
                offset: 1024,
                len: 4096
            })
        );
        assert_eq!(
            decode(&h(kind::OUT, 2040), 16 + 4096, 1, &l),
            Ok(Request::Write {
                offset: 2040 * 512,
                len: 4096
            })
        );
        // The last sector, and a zero-length read at the very end.
        assert!(decode(&h(kind::IN, 2047), 16, 513, &l).is_ok());
        assert!(decode(&h(kind::IN, 2048), 16, 1, &l).is_ok());
    }

    #[test]
    fn out_of_range_overflowing_and_unaligned_are_ioerr() {
        let l = limits();
        assert_eq!(decode(&h(kind::IN, 2048), 16, 513, &l), Err(Status::IoErr));
        assert_eq!(
            decode(&h(kind::OUT, 2041), 16 + 4096, 1, &l),
            Err(Status::IoErr)
        );
        assert_eq!(
            decode(&h(kind::IN, u64::MAX), 16, 513, &l),
            Err(Status::IoErr)
        );
        assert_eq!(
            decode(&h(kind::IN, u64::MAX / 512), 16, 1025, &l),
            Err(Status::IoErr)
        );
        assert_eq!(decode(&h(kind::IN, 0), 16, 101, &l), Err(Status::IoErr));
        assert_eq!(decode(&h(kind::OUT, 0), 17, 1, &l), Err(Status::IoErr));
        // Huge lengths are refused before any range arithmetic.
        assert_eq!(
            decode(&h(kind::IN, 0), 16, u64::MAX, &l),
            Err(Status::IoErr)
        );
        assert_eq!(
            decode(
                &h(kind::IN, 0),
                16,
                (2 << 20) + 1,
                &Limits {
                    capacity: u64::MAX,
                    ..l
                }
            ),
            Err(Status::IoErr)
        );
    }

    #[test]
    fn read_only_refuses_writes_but_not_reads_or_flushes() {
        let l = Limits {
            read_only: true,
            ..limits()
        };
        assert_eq!(
            decode(&h(kind::OUT, 0), 16 + 512, 1, &l),
            Err(Status::IoErr)
        );
        assert_eq!(decode(&h(kind::DISCARD, 0), 32, 1, &l), Err(Status::IoErr));
        assert_eq!(
            decode(&h(kind::WRITE_ZEROES, 0), 32, 1, &l),
            Err(Status::IoErr)
        );
        assert!(decode(&h(kind::IN, 0), 16, 513, &l).is_ok());
        assert_eq!(decode(&h(kind::FLUSH, 0), 16, 1, &l), Ok(Request::Flush));
    }

    #[test]
    fn other_types_are_unsupp_and_get_id_fits_its_room() {
        let l = limits();
        for k in [
            2,
            3,
            5,
            kind::GET_LIFETIME,
            kind::SECURE_ERASE,
            15,
            0x8000_0000,
        ] {
            assert_eq!(decode(&h(k, 0), 16, 1, &l), Err(Status::Unsupp), "{k}");
        }
        assert_eq!(
            decode(&h(kind::GET_ID, 0), 16, 21, &l),
            Ok(Request::GetId { len: 20 })
        );
        assert_eq!(
            decode(&h(kind::GET_ID, 0), 16, 100, &l),
            Ok(Request::GetId { len: 20 })
        );
        assert_eq!(
            decode(&h(kind::GET_ID, 0), 16, 5, &l),
            Ok(Request::GetId { len: 4 })
        );
        assert_eq!(&id_bytes("abc")[..4], b"abc\0");
        assert_eq!(
            id_bytes("0123456789abcdefghijXYZ"),
            *b"0123456789abcdefghij"
        );
    }

    #[test]
    fn discard_and_write_zeroes_segments() {
        let l = limits();
        assert_eq!(
            decode(&h(kind::DISCARD, 0), 16 + 32, 1, &l),
            Ok(Request::Discard { segments: 2 })
        );
        assert_eq!(
            decode(&h(kind::DISCARD, 0), 16 + 20, 1, &l),
            Err(Status::IoErr)
        );
        assert_eq!(decode(&h(kind::DISCARD, 0), 16, 1, &l), Err(Status::IoErr));
        assert_eq!(
            decode(&h(kind::WRITE_ZEROES, 0), 16 + 80, 1, &l),
            Err(Status::Unsupp)
        );
        let off = Limits {
            discard: false,
            ..l
        };
        assert_eq!(
            decode(&h(kind::DISCARD, 0), 32, 1, &off),
            Err(Status::Unsupp)
        );

        let s = |sector, n, flags| Segment::new(sector, n, flags);
        assert_eq!(
            decode_segment(&s(8, 8, 0), true, &l),
            Ok(ZeroRange {
                offset: 4096,
                len: 4096,
                unmap: true
            })
        );
        assert_eq!(
            decode_segment(&s(8, 8, SEGMENT_FLAG_UNMAP), true, &l),
            Err(Status::Unsupp)
        );
        assert_eq!(decode_segment(&s(8, 8, 2), false, &l), Err(Status::Unsupp));
        assert_eq!(
            decode_segment(&s(0, 1025, 0), false, &l),
            Err(Status::IoErr)
        );
        assert_eq!(
            decode_segment(&s(2047, 2, 0), false, &l),
            Err(Status::IoErr)
        );
        assert_eq!(
            decode_segment(&s(u64::MAX, 1, 0), false, &l),
            Err(Status::IoErr)
        );
        assert_eq!(
            decode_segment(&s(0, 0, SEGMENT_FLAG_UNMAP), false, &l),
            Ok(ZeroRange {
                offset: 0,
                len: 0,
                unmap: true
            })
        );
    }

    #[test]
    fn framing() {
        assert_eq!(check_framing(16, 0), Err(Framing::NoStatus));
        assert_eq!(check_framing(15, 1), Err(Framing::ShortHeader));
        assert_eq!(check_framing(16, 1), Ok(()));
        assert_eq!(
            Status::Ok.worst(Status::IoErr).worst(Status::Unsupp),
            Status::Unsupp
        );
    }

    proptest! {
        /// Any header bytes with any chain lengths decode without panicking, and whatever
        /// is accepted lies inside the disk.
        #[test]
        fn random_requests_never_escape_the_disk(
            bytes in proptest::array::uniform16(any::<u8>()),
            readable in any::<u64>(),
            writable in 1..u64::MAX,
            capacity in prop_oneof![Just(0u64), 0..1u64 << 20, Just(u64::MAX / 512), Just(u64::MAX)],
            read_only in any::<bool>(),
        ) {
            let header = RequestHeader::read_from_bytes(&bytes).unwrap();
            let l = Limits { capacity, read_only, max_data: 1 << 20, ..limits() };
            let size = u128::from(capacity) * 512;
            match decode(&header, readable.max(16), writable, &l) {
                Ok(Request::Read { offset, len }) | Ok(Request::Write { offset, len }) => {
                    prop_assert!(u128::from(offset) + u128::from(len) <= size);
                    prop_assert_eq!(len % 512, 0);
                    prop_assert!(len <= l.max_data);
                    prop_assert_eq!(u128::from(offset), u128::from(header.sector.get()) * 512);
                }
                Ok(Request::GetId { len }) => prop_assert!(len <= ID_BYTES),
                Ok(Request::Discard { segments }) | Ok(Request::WriteZeroes { segments }) => {
                    prop_assert!(!read_only);
                    prop_assert!((1..=4).contains(&segments));
                }
                Ok(Request::Flush) => {}
                Err(s) => prop_assert!(s != Status::Ok),
            }
        }

        /// A read or write that ends past the disk is IOERR, one inside is accepted.
        #[test]
        fn out_of_range_sectors_are_ioerr(
            capacity in 1..1u64 << 40,
            sector in any::<u64>(),
            sectors in 0..2048u64,
            write in any::<bool>(),
        ) {
            let l = Limits { capacity, ..limits() };
            let len = sectors * 512;
            let (k, r, w) = if write { (kind::OUT, 16 + len, 1) } else { (kind::IN, 16, len + 1) };
            let got = decode(&h(k, sector), r, w, &l);
            let inside = u128::from(sector) * 512 + u128::from(len) <= u128::from(capacity) * 512;
            if inside {
                prop_assert!(got.is_ok());
            } else {
                prop_assert_eq!(got, Err(Status::IoErr));
            }
        }

        /// Any segment decodes without panicking; accepted ones are inside the disk.
        #[test]
        fn random_segments_never_escape_the_disk(
            bytes in proptest::array::uniform16(any::<u8>()),
            discard in any::<bool>(),
            capacity in any::<u64>(),
        ) {
            let seg = Segment::read_from_bytes(&bytes).unwrap();
            let l = Limits { capacity, max_discard_sectors: u32::MAX, max_write_zeroes_sectors: u32::MAX, ..limits() };
            if let Ok(r) = decode_segment(&seg, discard, &l) {
                prop_assert!(u128::from(r.offset) + u128::from(r.len) <= u128::from(capacity) * 512);
            }
        }
    }
}
