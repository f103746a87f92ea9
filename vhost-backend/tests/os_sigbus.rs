//! The SIGBUS guard: a peer shrinking a mapped file no longer kills the
//! process, and a SIGBUS outside every guarded range still does.
//!
//! Each scenario runs in a child process (this test binary run again with
//! `VHOST_SIGBUS_CHILD` naming the scenario), so that a failing guard kills
//! the child, not the test run, and so that the deadly scenario can be
//! checked at all.

// Helpers outside `#[test]` functions are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus};

use vhost_backend::os::memfd;
use vhost_backend::os::mmap::{MappedRegion, MemoryMap, RegionLayout, SharedMapping};
use vhost_backend::os::sigbus;
use vhost_backend::vring::memory::GuestSlice;

const CHILD_ENV: &str = "VHOST_SIGBUS_CHILD";

fn page() -> usize {
    rustix::param::page_size()
}

/// Runs `scenario` in a child process and returns how the child ended; in the
/// child itself, runs it and exits 0.
fn in_child(name: &str, scenario: fn()) -> ExitStatus {
    if std::env::var(CHILD_ENV).as_deref() == Ok(name) {
        // A child killed by SIGBUS must not leave a core file behind.
        rustix::process::setrlimit(
            rustix::process::Resource::Core,
            rustix::process::Rlimit {
                current: Some(0),
                maximum: Some(0),
            },
        )
        .unwrap();
        scenario();
        std::process::exit(0);
    }
    Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, name)
        .status()
        .unwrap()
}

fn assert_survived(status: ExitStatus) {
    assert!(
        status.success(),
        "the child did not survive: {status:?} (signal {:?})",
        status.signal()
    );
}

fn assert_killed_by_sigbus(status: ExitStatus) {
    assert_eq!(
        status.signal(),
        Some(libc::SIGBUS),
        "the child was not killed by SIGBUS: {status:?}"
    );
}

/// A guest region over a 2-page memfd that the peer shrinks to 1 page.
fn region_shrunk_under_its_mapping() {
    let page = page();
    let fd = memfd::create("guest", 2 * page as u64).unwrap();
    rustix::io::pwrite(&fd, b"page 0", 0).unwrap();
    rustix::io::pwrite(&fd, b"page 1", page as u64).unwrap();
    let peer = rustix::io::fcntl_dupfd_cloexec(&fd, 0).unwrap();
    let layout = RegionLayout {
        guest_phys_addr: 0x10_0000,
        memory_size: 2 * page as u64,
        user_addr: 0x7f00_0000,
        mmap_offset: 0,
    };
    let region = MappedRegion::map(layout, fd).unwrap();
    assert!(!region.shrink_sealed());
    assert!(region.guarded());
    let map = MemoryMap::new(vec![region]).unwrap();
    let mem = map.memory();
    let second = 0x10_0000 + page as u64;
    let mut buf = [0u8; 6];
    GuestSlice::new(mem, second, 6)
        .unwrap()
        .read_at(0, &mut buf)
        .unwrap();
    assert_eq!(&buf, b"page 1");
    assert!(!map.faulted());
    let before = sigbus::total_faults();

    // The hostile peer shrinks the file.
    rustix::fs::ftruncate(&peer, page as u64).unwrap();

    // Volatile read and write of the 2nd page through the mapping.
    let host = map.regions()[0].host_addr() as usize as *mut u8;
    // SAFETY: inside the live mapping of the region (2 pages).
    let byte = unsafe { host.add(page + 3).read_volatile() };
    assert_eq!(byte, 0, "a contained fault reads a zero page");
    // SAFETY: as above.
    unsafe { host.add(page + 3).write_volatile(0xab) };
    // SAFETY: as above.
    assert_eq!(unsafe { host.add(page + 3).read_volatile() }, 0xab);
    // And through the ring engine's accessors.
    GuestSlice::new(mem, second + 8, 4)
        .unwrap()
        .write_at(0, b"lost")
        .unwrap();
    GuestSlice::new(mem, second + 8, 4)
        .unwrap()
        .read_at(0, &mut buf[..4])
        .unwrap();
    assert_eq!(&buf[..4], b"lost");

    assert!(map.faulted());
    assert!(map.regions()[0].faulted());
    assert!(sigbus::total_faults() > before);
    // The first page is still the file's.
    GuestSlice::new(mem, 0x10_0000, 6)
        .unwrap()
        .read_at(0, &mut buf)
        .unwrap();
    assert_eq!(&buf, b"page 0");
    // What was written after the fault went to a private page, not the file
    // (which has no second page any more).
    assert_eq!(rustix::fs::fstat(&peer).unwrap().st_size, page as i64);
    drop(map);
    assert_eq!(sigbus::guarded_ranges(), 0);
}

#[test]
fn a_region_shrunk_under_its_mapping_is_contained() {
    assert_survived(in_child(
        "a_region_shrunk_under_its_mapping_is_contained",
        region_shrunk_under_its_mapping,
    ));
}

fn shared_mapping_shrunk() {
    let page = page();
    let fd = memfd::create("inflight", 3 * page as u64).unwrap();
    let mapping = SharedMapping::new(&fd, 8, 2 * page as u64).unwrap();
    assert!(!mapping.shrink_sealed());
    let probe = mapping.fault_probe().unwrap();
    let ptr = mapping.as_ptr();
    rustix::fs::ftruncate(&fd, 0).unwrap();
    // SAFETY: inside the live mapping.
    unsafe { ptr.add(page).write_volatile(1) };
    assert!(mapping.faulted());
    let region = mapping.into_shared_region();
    assert!(
        probe.faulted(),
        "the probe sees it through the SharedRegion"
    );
    let mut b = [0u8; 1];
    region.as_slice().read_at(0, &mut b).unwrap();
    drop(region);
    assert!(!probe.faulted(), "unregistered with its mapping");
}

#[test]
fn a_shared_mapping_shrunk_under_it_is_contained() {
    assert_survived(in_child(
        "a_shared_mapping_shrunk_under_it_is_contained",
        shared_mapping_shrunk,
    ));
}

fn sealed_region_is_not_guarded() {
    let page = page() as u64;
    let fd = memfd::create_sealed("guest", 2 * page).unwrap();
    let layout = RegionLayout {
        guest_phys_addr: 0,
        memory_size: 2 * page,
        user_addr: 0,
        mmap_offset: 0,
    };
    let region = MappedRegion::map(layout, fd).unwrap();
    assert!(region.shrink_sealed() && !region.guarded() && !region.faulted());
    assert_eq!(sigbus::guarded_ranges(), 0);
}

#[test]
fn a_sealed_region_needs_no_guard() {
    assert_survived(in_child(
        "a_sealed_region_needs_no_guard",
        sealed_region_is_not_guarded,
    ));
}

/// A guarded region comes and goes, then a plain mapping of a truncated file
/// is touched: the process must still die of SIGBUS.
fn unguarded_fault() {
    let page = page();
    sigbus::install().unwrap();
    {
        let fd = memfd::create("guest", 2 * page as u64).unwrap();
        let layout = RegionLayout {
            guest_phys_addr: 0,
            memory_size: 2 * page as u64,
            user_addr: 0,
            mmap_offset: 0,
        };
        let region = MappedRegion::map(layout, fd).unwrap();
        assert!(region.guarded());
    }
    assert_eq!(sigbus::guarded_ranges(), 0);
    let fd = memfd::create("plain", 2 * page as u64).unwrap();
    // SAFETY: fresh address space, touched only through a raw pointer below.
    let ptr = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            2 * page,
            rustix::mm::ProtFlags::READ,
            rustix::mm::MapFlags::SHARED,
            &fd,
            0,
        )
    }
    .unwrap()
    .cast::<u8>();
    rustix::fs::ftruncate(&fd, page as u64).unwrap();
    // SAFETY: inside the mapping; it raises SIGBUS, which must kill us.
    let byte = unsafe { ptr.add(page).read_volatile() };
    eprintln!("survived an unguarded SIGBUS, read {byte}");
}

#[test]
fn a_sigbus_outside_every_guarded_range_still_kills() {
    assert_killed_by_sigbus(in_child(
        "a_sigbus_outside_every_guarded_range_still_kills",
        unguarded_fault,
    ));
}

/// Without any previous handler (SIG_DFL before ours), an unguarded SIGBUS
/// still kills.
fn unguarded_fault_over_sig_dfl() {
    // SAFETY: all zeroes is SIG_DFL with an empty mask; this child process
    // has no other use for Rust's SIGBUS handler.
    let dfl: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a valid action for SIGBUS.
    let r = unsafe { libc::sigaction(libc::SIGBUS, &dfl, std::ptr::null_mut()) };
    assert_eq!(r, 0);
    unguarded_fault();
}

#[test]
fn a_sigbus_outside_every_guarded_range_still_kills_without_a_previous_handler() {
    assert_killed_by_sigbus(in_child(
        "a_sigbus_outside_every_guarded_range_still_kills_without_a_previous_handler",
        unguarded_fault_over_sig_dfl,
    ));
}
