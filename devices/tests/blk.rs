//! vhost-user-blk end to end: the device served by the std runner (and the mio runner)
//! over a socketpair, driven by our front-end (`Frontend` + `DriverRing` + `GuestRam`)
//! through `devices::probe::blk::BlkClient`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on failure

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use devices::blk::config::feature;
use devices::blk::image::{EngineKind, Image};
use devices::blk::request::{RequestHeader, SEGMENT_FLAG_UNMAP, Segment, Status, kind};
use devices::blk::{BlkDevice, BlkOptions};
use devices::probe::blk::{BlkClient, ClientOptions, pattern};
use vhost_io_std::backend::Server;
use vhost_io_std::frontend::Frontend;
use zerocopy::IntoBytes;

const OK: u8 = Status::Ok as u8;
const IOERR: u8 = Status::IoErr as u8;
const UNSUPP: u8 = Status::Unsupp as u8;

/// A device served by the std runner, a client negotiated with it.
struct Rig {
    client: BlkClient,
    device: Arc<BlkDevice>,
    stop: Option<Box<dyn FnOnce()>>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop();
        }
    }
}

fn rig(device: BlkDevice, packed: bool, queues: u16) -> Rig {
    let (front, back) = UnixStream::pair().unwrap();
    let server = Server::from_stream(back, device).unwrap();
    let device = Arc::clone(server.device());
    let handle = server.spawn().unwrap();
    let front = Frontend::from_stream(front).unwrap();
    let opts = ClientOptions {
        packed,
        queues,
        ..ClientOptions::default()
    };
    let client = BlkClient::negotiate(front, opts).unwrap();
    Rig {
        client,
        device,
        stop: Some(Box::new(move || {
            let _ = handle.stop();
        })),
    }
}

fn mio_rig(device: BlkDevice, packed: bool) -> Rig {
    let (front, back) = UnixStream::pair().unwrap();
    let device = Arc::new(device);
    let d = Arc::clone(&device);
    let server = vhost_io_mio::Server::with_factory(move || Arc::clone(&d)).unwrap();
    server.handle().add(back).unwrap();
    let handle = server.spawn().unwrap();
    let front = Frontend::from_stream(front).unwrap();
    let opts = ClientOptions {
        packed,
        ..ClientOptions::default()
    };
    let client = BlkClient::negotiate(front, opts).unwrap();
    Rig {
        client,
        device,
        stop: Some(Box::new(move || {
            let _ = handle.stop();
        })),
    }
}

fn memory(size: u64, opts: BlkOptions) -> BlkDevice {
    BlkDevice::new(Image::memory(size).unwrap(), opts)
}

fn file_image(size: usize) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(&vec![0u8; size]).unwrap();
    f.flush().unwrap();
    f
}

/// Compares two byte buffers, reporting the first difference only.
#[track_caller]
fn same(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let i = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: lengths {} and {}, first difference at {i:?}",
            got.len(),
            want.len()
        );
    }
}

fn waits_for_error(c: &mut BlkClient, q: usize) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if c.ring(q).unwrap().take_error().unwrap() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// Write, read, flush, GET_ID, discard and write-zeroes on a client.
fn basic_requests(c: &mut BlkClient, device: &BlkDevice, serial: &str) {
    let data = pattern(1, 8, 4096);
    assert_eq!(c.write(0, 8, &data).unwrap(), OK);
    let r = c.read(0, 8, 4096).unwrap();
    assert!(r.ok());
    assert_eq!(r.used, 4097, "data and status counted");
    same(&r.data, &data, "data");
    let mut on_disk = vec![0u8; 4096];
    device.image().read_at(8 * 512, &mut on_disk).unwrap();
    assert_eq!(on_disk, data);
    assert_eq!(c.flush(0).unwrap(), OK);
    assert_eq!(c.get_id(0).unwrap(), Ok(serial.to_owned()));

    // Discard sectors 9..11, write zeroes over 12 (with UNMAP) and 13 (without).
    assert_eq!(c.zero(0, true, &[Segment::new(9, 2, 0)]).unwrap(), OK);
    let segs = [
        Segment::new(12, 1, SEGMENT_FLAG_UNMAP),
        Segment::new(13, 1, 0),
    ];
    assert_eq!(c.zero(0, false, &segs).unwrap(), OK);
    let r = c.read(0, 8, 4096).unwrap();
    let mut want = data.clone();
    want[512..1536].fill(0);
    want[2048..3072].fill(0);
    same(&r.data, &want, "data");

    // Bad segments: nothing runs, the data stays.
    let flagged = [
        Segment::new(8, 1, 0),
        Segment::new(9, 1, SEGMENT_FLAG_UNMAP),
    ];
    assert_eq!(
        c.zero(0, true, &flagged).unwrap(),
        UNSUPP,
        "UNMAP on a discard"
    );
    assert_eq!(c.zero(0, false, &[Segment::new(8, 1, 4)]).unwrap(), UNSUPP);
    let cap = c.capacity();
    let past = [Segment::new(8, 1, 0), Segment::new(cap, 1, 0)];
    assert_eq!(c.zero(0, false, &past).unwrap(), IOERR);
    assert_eq!(
        c.zero(0, false, &[Segment::new(u64::MAX, u32::MAX, 0)])
            .unwrap(),
        IOERR
    );
    same(&c.read(0, 8, 4096).unwrap().data, &want, "data");
}

#[test]
fn memory_disk_serves_every_request_type_split_and_packed() {
    for packed in [false, true] {
        let opts = BlkOptions {
            serial: "serial-0123456789abcdefXYZ".into(),
            ..BlkOptions::default()
        };
        let mut r = rig(memory(1 << 20, opts), packed, 1);
        assert_eq!(r.client.capacity(), 2048);
        assert_eq!(r.client.rings[0].is_packed(), packed);
        let device = Arc::clone(&r.device);
        basic_requests(&mut r.client, &device, "serial-0123456789abc");
        r.client.stop().unwrap();
    }
}

#[test]
fn the_mio_runner_serves_the_same_device() {
    for packed in [false, true] {
        let mut r = mio_rig(memory(1 << 20, BlkOptions::default()), packed);
        let device = Arc::clone(&r.device);
        basic_requests(&mut r.client, &device, "vhost-user-blk");
        r.client.stop().unwrap();
    }
}

#[test]
fn file_images_with_io_uring_and_the_thread_pool() {
    for engine in [EngineKind::Auto, EngineKind::Threads] {
        let f = file_image(1 << 20);
        let image = Image::open(f.path(), false, false).unwrap();
        let opts = BlkOptions {
            engine,
            ..BlkOptions::default()
        };
        let mut r = rig(BlkDevice::new(image, opts), false, 1);
        let device = Arc::clone(&r.device);
        basic_requests(&mut r.client, &device, "vhost-user-blk");
        // The data is in the file itself.
        let bytes = std::fs::read(f.path()).unwrap();
        assert_eq!(&bytes[8 * 512..9 * 512], &pattern(1, 8, 512)[..]);
        r.client.stop().unwrap();
    }
}

/// A header split over two descriptors, data over many small ones and sharing its last
/// descriptor with the status byte; then the same through an indirect table.
#[test]
fn requests_spanning_many_descriptors_and_indirect_tables() {
    for packed in [false, true] {
        let mut r = rig(memory(1 << 20, BlkOptions::default()), packed, 1);
        let c = &mut r.client;
        let data = pattern(2, 16, 4096);
        // OUT: header as 4 + 12 bytes, data as eight 512-byte pieces far apart.
        let hdr = c.ram.alloc(16, 16).unwrap();
        c.ram
            .write(hdr, RequestHeader::new(kind::OUT, 16).as_bytes())
            .unwrap();
        let mut readable = vec![(hdr, 4u32), (hdr + 4, 12)];
        for i in 0..8u64 {
            let piece = c.ram.alloc(512, 4096).unwrap();
            c.ram
                .write(piece, &data[i as usize * 512..][..512])
                .unwrap();
            readable.push((piece, 512));
        }
        let status = c.ram.alloc(1, 1).unwrap();
        c.ram.write(status, &[0xff]).unwrap();
        c.submit(0, &readable, &[(status, 1)], None).unwrap();
        c.wait(0, 1).unwrap();
        let mut s = [0u8];
        c.ram.read(status, &mut s).unwrap();
        assert_eq!(s[0], OK);

        // IN through an indirect table: 7 × 512 data, then 513 (512 data + the status).
        let hdr2 = c.ram.alloc(16, 16).unwrap();
        c.ram
            .write(hdr2, RequestHeader::new(kind::IN, 16).as_bytes())
            .unwrap();
        let mut writable = Vec::new();
        let mut pieces = Vec::new();
        for _ in 0..7 {
            let p = c.ram.alloc(512, 512).unwrap();
            writable.push((p, 512u32));
            pieces.push(p);
        }
        let last = c.ram.alloc(513, 512).unwrap();
        c.ram.write(last + 512, &[0xff]).unwrap();
        writable.push((last, 513));
        let table = c.ram.alloc(16 * 16, 16).unwrap();
        c.submit(0, &[(hdr2, 16)], &writable, Some(table)).unwrap();
        let used = c.wait(0, 1).unwrap();
        assert_eq!(used[0].1, 4097);
        let mut back = Vec::new();
        for p in pieces.iter().copied().chain([last]) {
            let mut b = vec![0u8; 512];
            c.ram.read(p, &mut b).unwrap();
            back.extend_from_slice(&b);
        }
        assert_eq!(back, data);
        c.ram.read(last + 512, &mut s).unwrap();
        assert_eq!(s[0], OK);
        r.client.stop().unwrap();
    }
}

#[test]
fn out_of_range_and_malformed_requests_get_a_status_and_write_nothing() {
    let mut r = rig(memory(1 << 20, BlkOptions::default()), false, 1);
    let c = &mut r.client;
    let cap = c.capacity();
    let keep = pattern(3, cap - 8, 4096);
    assert_eq!(c.write(0, cap - 8, &keep).unwrap(), OK);
    // Past the end, straddling the end, overflowing sector numbers.
    assert_eq!(c.read(0, cap, 512).unwrap().status, IOERR);
    // Straddling the end: IOERR, and the data buffer is left as it was.
    let (hdr, data, st) = (
        c.ram.alloc(16, 16).unwrap(),
        c.ram.alloc(1024, 512).unwrap(),
        c.ram.alloc(1, 1).unwrap(),
    );
    c.ram
        .write(hdr, RequestHeader::new(kind::IN, cap - 1).as_bytes())
        .unwrap();
    c.ram.write(data, &[0xee; 1024]).unwrap();
    c.submit(0, &[(hdr, 16)], &[(data, 1024), (st, 1)], None)
        .unwrap();
    assert_eq!(c.wait(0, 1).unwrap()[0].1, 1, "used: the status only");
    let mut back = vec![0u8; 1024];
    c.ram.read(data, &mut back).unwrap();
    assert!(back.iter().all(|&b| b == 0xee), "no data written on IOERR");
    let mut s = [0u8];
    c.ram.read(st, &mut s).unwrap();
    assert_eq!(s[0], IOERR);
    assert_eq!(c.write(0, cap - 4, &[7u8; 4096]).unwrap(), IOERR);
    assert_eq!(c.write(0, u64::MAX / 256, &[7u8; 512]).unwrap(), IOERR);
    assert_eq!(c.read(0, u64::MAX, 512).unwrap().status, IOERR);
    // Lengths that are not whole sectors; unknown and unsupported types.
    assert_eq!(c.read(0, 0, 100).unwrap().status, IOERR);
    assert_eq!(c.write(0, 0, &[1u8; 513]).unwrap(), IOERR);
    for k in [2, 3, kind::GET_LIFETIME, kind::SECURE_ERASE, 99, u32::MAX] {
        assert_eq!(
            c.request(0, k, 0, &[], 0).unwrap().status,
            UNSUPP,
            "type {k}"
        );
    }
    same(&c.read(0, cap - 8, 4096).unwrap().data, &keep, "data");

    // A header shorter than 16 bytes: IOERR in the status.
    c.submit(0, &[(hdr, 8)], &[(st, 1)], None).unwrap();
    assert_eq!(c.wait(0, 1).unwrap()[0].1, 1);
    c.ram.read(st, &mut s).unwrap();
    assert_eq!(s[0], IOERR);
    assert!(!c.ring(0).unwrap().take_error().unwrap());

    // No writable byte at all: there is nowhere to answer, the ring stops with an error.
    c.ram
        .write(hdr, RequestHeader::new(kind::IN, 0).as_bytes())
        .unwrap();
    c.submit(0, &[(hdr, 16)], &[], None).unwrap();
    assert!(waits_for_error(c, 0), "the err fd is signalled");
    let errors = r.device.stats().errors.load(Ordering::Relaxed);
    assert!(errors >= 10, "{errors}");
}

#[test]
fn a_data_descriptor_outside_guest_memory_stops_the_ring() {
    let mut r = rig(memory(1 << 20, BlkOptions::default()), false, 1);
    let c = &mut r.client;
    let hdr = c.ram.alloc(16, 16).unwrap();
    let st = c.ram.alloc(1, 1).unwrap();
    c.ram
        .write(hdr, RequestHeader::new(kind::IN, 0).as_bytes())
        .unwrap();
    c.ram.write(st, &[0xff]).unwrap();
    // 4 KiB of "data" far outside the 64 MiB of guest memory.
    c.submit(0, &[(hdr, 16)], &[(1 << 40, 4096), (st, 1)], None)
        .unwrap();
    assert!(waits_for_error(c, 0));
    let mut s = [0u8];
    c.ram.read(st, &mut s).unwrap();
    assert_eq!(s[0], 0xff, "no status written for a broken chain");
}

#[test]
fn read_only_disks_refuse_writes() {
    let image = Image::memory(1 << 20).unwrap().with_read_only(true);
    image.write_at(0, &[9u8; 512]).unwrap();
    let mut r = rig(BlkDevice::new(image, BlkOptions::default()), false, 1);
    let c = &mut r.client;
    assert!(c.read_only());
    assert!(!c.has(feature::DISCARD) && !c.has(feature::WRITE_ZEROES));
    assert_eq!(c.write(0, 0, &[1u8; 512]).unwrap(), IOERR);
    assert_eq!(c.zero(0, true, &[Segment::new(0, 1, 0)]).unwrap(), IOERR);
    assert_eq!(c.zero(0, false, &[Segment::new(0, 1, 0)]).unwrap(), IOERR);
    assert_eq!(c.read(0, 0, 512).unwrap().data, vec![9u8; 512]);
    assert_eq!(c.flush(0).unwrap(), OK);
}

/// 32 requests in flight at once, with their buffers; returns the ids in submission
/// order and the completions in the order they came.
fn thirty_two_in_flight(c: &mut BlkClient) -> (Vec<u16>, Vec<(u16, u32)>) {
    let mut ids = Vec::new();
    let mut reads = Vec::new();
    for i in 0..32u64 {
        let hdr = c.ram.alloc(17, 16).unwrap();
        let data = c.ram.alloc(4096, 4096).unwrap();
        let sector = i * 8;
        let id = if i % 2 == 0 {
            c.ram
                .write(hdr, RequestHeader::new(kind::OUT, sector).as_bytes())
                .unwrap();
            c.ram.write(data, &pattern(4, sector, 4096)).unwrap();
            c.ring(0)
                .unwrap()
                .add(&[(hdr, 16), (data, 4096)], &[(hdr + 16, 1)])
                .unwrap()
        } else {
            // Odd requests read what the test wrote beforehand.
            c.ram
                .write(hdr, RequestHeader::new(kind::IN, sector).as_bytes())
                .unwrap();
            reads.push((sector, data));
            c.ring(0)
                .unwrap()
                .add(&[(hdr, 16)], &[(data, 4096), (hdr + 16, 1)])
                .unwrap()
        };
        ids.push(id);
    }
    c.ring(0).unwrap().kick().unwrap();
    let used = c.wait(0, 32).unwrap();
    for (sector, data) in reads {
        let mut b = vec![0u8; 4096];
        c.ram.read(data, &mut b).unwrap();
        assert_eq!(b, pattern(5, sector, 4096), "read of sector {sector}");
    }
    (ids, used)
}

fn prepare_odd_blocks(device: &BlkDevice) {
    for i in (1..32u64).step_by(2) {
        device
            .image()
            .write_at(i * 8 * 512, &pattern(5, i * 8, 4096))
            .unwrap();
    }
}

#[test]
fn thirty_two_in_flight_complete_out_of_order() {
    // The memory engine hands each batch back reversed: the used ring shows it.
    for packed in [false, true] {
        let opts = BlkOptions {
            reorder_completions: true,
            ..BlkOptions::default()
        };
        let mut r = rig(memory(1 << 20, opts), packed, 1);
        prepare_odd_blocks(&r.device);
        let (ids, used) = thirty_two_in_flight(&mut r.client);
        let order: Vec<u16> = used.iter().map(|u| u.0).collect();
        assert_ne!(order, ids, "completed out of order");
        let mut sorted = order.clone();
        sorted.sort_unstable();
        let mut want = ids.clone();
        want.sort_unstable();
        assert_eq!(sorted, want, "each exactly once");
        assert!(r.device.stats().max_in_flight.load(Ordering::Relaxed) >= 32);
        for i in (0..32u64).step_by(2) {
            let mut b = vec![0u8; 4096];
            r.device.image().read_at(i * 8 * 512, &mut b).unwrap();
            assert_eq!(b, pattern(4, i * 8, 4096));
        }
        r.client.stop().unwrap();
    }
}

#[test]
fn thirty_two_in_flight_on_io_uring_and_the_thread_pool() {
    for (engine, packed) in [
        (EngineKind::Auto, false),
        (EngineKind::Auto, true),
        (EngineKind::Threads, false),
    ] {
        let f = file_image(1 << 20);
        let image = Image::open(f.path(), false, false).unwrap();
        let opts = BlkOptions {
            engine,
            ..BlkOptions::default()
        };
        let mut r = rig(BlkDevice::new(image, opts), packed, 1);
        prepare_odd_blocks(&r.device);
        let (ids, used) = thirty_two_in_flight(&mut r.client);
        assert_eq!(used.len(), 32);
        assert!(used.iter().all(|u| ids.contains(&u.0)));
        assert!(
            r.device.stats().max_in_flight.load(Ordering::Relaxed) >= 32,
            "{engine:?}: all 32 were with the engine at once"
        );
        let bytes = std::fs::read(f.path()).unwrap();
        for i in (0..32usize).step_by(2) {
            assert_eq!(
                &bytes[i * 4096..][..4096],
                &pattern(4, i as u64 * 8, 4096)[..]
            );
        }
        r.client.stop().unwrap();
    }
}

#[test]
fn two_queues_share_the_disk() {
    for packed in [false, true] {
        let opts = BlkOptions {
            num_queues: 2,
            ..BlkOptions::default()
        };
        let mut r = rig(memory(1 << 20, opts), packed, 2);
        let c = &mut r.client;
        assert_eq!(c.rings.len(), 2);
        assert_eq!(c.config.unwrap().num_queues.get(), 2);
        for i in 0..8u64 {
            let (wq, rq) = ((i % 2) as usize, ((i + 1) % 2) as usize);
            assert_eq!(c.write(wq, i * 8, &pattern(6, i * 8, 4096)).unwrap(), OK);
            same(
                &c.read(rq, i * 8, 4096).unwrap().data,
                &pattern(6, i * 8, 4096),
                "data",
            );
        }
        r.client.stop().unwrap();
    }
}

#[test]
fn the_write_cache_is_toggled_through_set_config() {
    let f = file_image(1 << 20);
    let image = Image::open(f.path(), false, false).unwrap();
    let mut r = rig(BlkDevice::new(image, BlkOptions::default()), false, 1);
    let c = &mut r.client;
    assert!(c.has(feature::CONFIG_WCE));
    assert_eq!(c.front.get_config(32, 1).unwrap(), [1]);
    c.front.set_config(32, &[0]).unwrap();
    assert_eq!(c.front.get_config(32, 1).unwrap(), [0]);
    assert!(!r.device.writeback());
    // Write-through: the write is durable when it completes.
    assert_eq!(c.write(0, 0, &pattern(7, 0, 4096)).unwrap(), OK);
    assert_eq!(
        &std::fs::read(f.path()).unwrap()[..4096],
        &pattern(7, 0, 4096)[..]
    );
    // Everything else is read-only.
    assert!(c.front.set_config(0, &[0; 8]).is_err());
    assert!(c.front.set_config(32, &[2]).is_err());
    assert!(c.front.set_config(31, &[0, 1]).is_err());
    c.front.set_config(32, &[1]).unwrap();
    assert!(r.device.writeback());
}
