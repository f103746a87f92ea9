//! Containing SIGBUS from shared memory that a peer shrinks under our
//! mapping.
//!
//! A front-end that `ftruncate`s a guest memory file (or the inflight or log
//! file) smaller after we mapped it turns every later access past the new end
//! of file into SIGBUS, which kills the whole back-end process, every session
//! with it. A file with `F_SEAL_SHRINK` cannot shrink
//! ([`MappedRegion::shrink_sealed`](crate::os::mmap::MappedRegion::shrink_sealed));
//! for the others, this module contains the fault:
//!
//! - a process-wide SIGBUS handler ([`install`], done on the first
//!   registration), `SA_SIGINFO | SA_ONSTACK | SA_RESTART`;
//! - a lock-free registry of guarded ranges, a fixed array of
//!   [`CAPACITY`] slots of atomics (start, end, fault count, under a
//!   generation counter read like a seqlock), filled by
//!   [`guard_range`] (a [`SigbusGuard`] that unregisters when dropped).
//!
//! When a fault's address (`si_addr`) lies in a registered range, the handler
//! maps anonymous private zero pages (`mmap(MAP_FIXED | MAP_PRIVATE |
//! MAP_ANONYMOUS | MAP_NORESERVE)`) over the range from the faulting page to
//! the end of the range, counts the fault on the range (and in
//! [`total_faults`]) and returns: the faulting instruction runs again, on the
//! zero page, and completes. Any other SIGBUS goes to the handler that was
//! installed before ours (Rust's standard library installs one, which reports
//! stack overflows and otherwise restores the default action), or, if there
//! was none, the default action is restored (and the signal raised again if
//! it was sent rather than caused by a fault), so the process dies of SIGBUS
//! as it would have without us.
//!
//! The handler is async-signal-safe: it only loads and stores atomics and
//! makes the `mmap` and (when chaining to the default) `sigaction`/`raise`
//! system calls; it allocates nothing, takes no lock, logs nothing, and saves
//! and restores `errno`.
//!
//! # What is guaranteed, and what is not
//!
//! - Guaranteed: a fault in a registered range does not kill the process; the
//!   access completes (a read yields zeros) and the range's fault count
//!   ([`SigbusGuard::faulted`], `MappedRegion::faulted`, `MemoryMap::faulted`)
//!   becomes non-zero before the faulting access returns, so a runner that
//!   checks after a processing pass sees it.
//! - Not guaranteed: anything about the data. From the faulting page to the
//!   end of the range, the mapping is no longer the peer's file: reads return
//!   zeros (or what we wrote after the fault), writes go to private memory
//!   and are lost, and pages there that were still valid are replaced too.
//!   The session must be ended (with an error) once `faulted()` is true; its
//!   memory must not be trusted or used again.
//! - System calls that read or write a truncated range (`write(fd, ptr)`,
//!   `sendmsg` from guest memory) do not raise SIGBUS: they fail with
//!   `EFAULT`, which the caller sees as an error.
//! - The guard only works while our handler is the one installed: code that
//!   later installs its own SIGBUS handler without chaining to the previous
//!   one disables it.
//! - A range is guarded only while its [`SigbusGuard`] lives. The owner must
//!   drop the guard before (or as) it unmaps the range; a range that is
//!   still mapped after its guard is gone is unguarded again (a fault there
//!   kills the process, as before).
//! - If the `mmap` in the handler fails (the process ran out of mappings, or
//!   the range is hugetlbfs memory whose page size is unknown to us; the
//!   handler retries with the granule given at registration), the fault is
//!   treated as unregistered: the process dies.
//! - At most [`CAPACITY`] ranges are guarded at once; [`guard_range`] fails
//!   beyond that (mapping code refuses the region then).

use std::ffi::{c_int, c_void};
use std::fmt;
use std::io;
use std::ptr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering, fence};

use rustix::mm::{MapFlags, ProtFlags};

/// How many ranges can be guarded at once, process-wide.
pub const CAPACITY: usize = 4096;

/// Slot status, in the low two bits of `Slot::state`; the rest is a
/// generation counter bumped on every claim.
const FREE: u64 = 0;
const CLAIMED: u64 = 1;
const ACTIVE: u64 = 2;
const STATUS_MASK: u64 = 3;
const GENERATION_ONE: u64 = 4;

struct Slot {
    state: AtomicU64,
    /// `[start, end)`: the mapping, page aligned.
    start: AtomicUsize,
    end: AtomicUsize,
    /// The alignment of a retry when replacing at page granularity fails
    /// (the huge page size of hugetlbfs memory).
    granule: AtomicUsize,
    faults: AtomicU64,
}

impl Slot {
    const fn new() -> Self {
        Slot {
            state: AtomicU64::new(FREE),
            start: AtomicUsize::new(0),
            end: AtomicUsize::new(0),
            granule: AtomicUsize::new(0),
            faults: AtomicU64::new(0),
        }
    }
}

static SLOTS: [Slot; CAPACITY] = [const { Slot::new() }; CAPACITY];
static TOTAL_FAULTS: AtomicU64 = AtomicU64::new(0);
static PAGE_SIZE: AtomicUsize = AtomicUsize::new(0);
/// The SIGBUS action in place before ours, to chain to.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();
/// The outcome of installing the handler (an errno on failure).
static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();

/// Why a range could not be guarded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GuardError {
    /// Every one of the [`CAPACITY`] slots is in use.
    #[error("all {capacity} SIGBUS guard slots are in use")]
    Full {
        /// [`CAPACITY`].
        capacity: usize,
    },
    /// The range is empty, not page aligned, or wraps around.
    #[error("cannot guard {len:#x} bytes at {start:#x}: not a page-aligned, non-empty range")]
    BadRange {
        /// The start address.
        start: usize,
        /// The length.
        len: usize,
    },
    /// `sigaction` failed.
    #[error("installing the SIGBUS handler failed: {0}")]
    Install(#[source] io::Error),
}

/// Installs the SIGBUS handler, once per process (later calls return the
/// first outcome). [`guard_range`] calls it; calling it early (at start-up,
/// before other threads exist) is optional.
///
/// The handler in place before is kept and chained to for every SIGBUS that
/// is not in a guarded range.
pub fn install() -> io::Result<()> {
    INSTALLED
        .get_or_init(|| install_handler().map_err(|e| e.raw_os_error().unwrap_or(libc::EINVAL)))
        .map_err(io::Error::from_raw_os_error)
}

fn install_handler() -> io::Result<()> {
    PAGE_SIZE.store(rustix::param::page_size(), Ordering::Relaxed);
    // SAFETY: `sigaction` is plain data (integers, a signal set, an optional
    // function pointer), for which all zeroes is a valid value.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a query (no new action), into a valid `sigaction`.
    if unsafe { libc::sigaction(libc::SIGBUS, ptr::null(), &mut old) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // Stored before ours is installed, so the handler always finds it.
    let _ = PREVIOUS.set(old);
    // SAFETY: as above, all zeroes is a valid `sigaction`.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    let handler: extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void) = on_sigbus;
    action.sa_sigaction = handler as usize;
    action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART;
    // SAFETY: `sa_mask` is a valid signal set to initialise.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    // SAFETY: `action` is fully initialised and its handler is an
    // `extern "C"` function of the SA_SIGINFO signature that is
    // async-signal-safe (see `on_sigbus`).
    if unsafe { libc::sigaction(libc::SIGBUS, &action, ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A registered range: faults in it are contained while this lives, and it
/// is unregistered when this is dropped.
pub struct SigbusGuard {
    slot: &'static Slot,
    index: usize,
    /// `state` of the slot while this registration is active.
    state: u64,
}

impl fmt::Debug for SigbusGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigbusGuard")
            .field("slot", &self.index)
            .field("start", &self.slot.start.load(Ordering::Relaxed))
            .field("end", &self.slot.end.load(Ordering::Relaxed))
            .field("faults", &self.faults())
            .finish()
    }
}

impl SigbusGuard {
    /// How many faults were contained in the range.
    pub fn faults(&self) -> u64 {
        self.slot.faults.load(Ordering::Acquire)
    }

    /// Whether any fault was contained in the range: its memory is no longer
    /// the peer's from some page on, and the session using it must end.
    pub fn faulted(&self) -> bool {
        self.faults() != 0
    }

    /// A handle that reads this registration's fault count without
    /// borrowing the guard.
    pub fn probe(&self) -> FaultProbe {
        FaultProbe {
            index: self.index,
            state: self.state,
        }
    }
}

impl Drop for SigbusGuard {
    fn drop(&mut self) {
        // Same generation, FREE: a probe or the handler reading the old
        // generation's ACTIVE state sees it has changed.
        self.slot
            .state
            .store((self.state & !STATUS_MASK) | FREE, Ordering::Release);
    }
}

/// A copyable handle on a [`SigbusGuard`]'s fault count (e.g. for a range
/// whose guard is owned by something that hides it, like a
/// [`vring::memory::SharedRegion`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultProbe {
    index: usize,
    state: u64,
}

impl FaultProbe {
    /// Whether the registration is still in place and has contained a
    /// fault. `false` once the guard is dropped (its range is unmapped then,
    /// nothing can touch it any more).
    pub fn faulted(&self) -> bool {
        let Some(slot) = SLOTS.get(self.index) else {
            return false;
        };
        let faults = slot.faults.load(Ordering::Acquire);
        fence(Ordering::Acquire);
        slot.state.load(Ordering::Relaxed) == self.state && faults != 0
    }
}

/// How many faults the handler has contained since the process started, in
/// all ranges: a cheap check (one atomic load) before looking at each map.
pub fn total_faults() -> u64 {
    TOTAL_FAULTS.load(Ordering::Acquire)
}

/// How many ranges are guarded now.
pub fn guarded_ranges() -> usize {
    SLOTS
        .iter()
        .filter(|s| s.state.load(Ordering::Relaxed) & STATUS_MASK == ACTIVE)
        .count()
}

/// Guards `[start, start + len)`, rounded up to whole pages, against SIGBUS
/// (installing the handler if needed). `granule` is the size to retry the
/// replacement with when replacing single pages fails (the huge page size of
/// hugetlbfs memory; anything smaller than a page means a page).
///
/// # Safety
///
/// `[start, start + len)` must be a mapping the caller owns, and stay mapped
/// until the returned guard is dropped (drop it before unmapping). When a
/// SIGBUS hits the range, the handler replaces the range from the faulting
/// page to its end with zero pages, at any moment, from any thread: so no
/// Rust reference (`&`/`&mut`) may point into the range, only raw pointers
/// and volatile or copying accesses (as vm-memory's and the ring engine's
/// are), and nothing may rely on its content staying the file's.
pub unsafe fn guard_range(
    start: *mut u8,
    len: usize,
    granule: usize,
) -> Result<SigbusGuard, GuardError> {
    install().map_err(GuardError::Install)?;
    let page = PAGE_SIZE.load(Ordering::Relaxed).max(1);
    let addr = start as usize;
    let bad = GuardError::BadRange { start: addr, len };
    if len == 0 || !addr.is_multiple_of(page) {
        return Err(bad);
    }
    let end = len
        .checked_next_multiple_of(page)
        .and_then(|l| addr.checked_add(l))
        .ok_or(bad)?;
    for (index, slot) in SLOTS.iter().enumerate() {
        let current = slot.state.load(Ordering::Relaxed);
        if current & STATUS_MASK != FREE {
            continue;
        }
        let claimed = (current & !STATUS_MASK).wrapping_add(GENERATION_ONE) | CLAIMED;
        if slot
            .state
            .compare_exchange(current, claimed, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            continue;
        }
        // Seqlock writer: the state left ACTIVE before the fields change.
        fence(Ordering::Release);
        slot.start.store(addr, Ordering::Relaxed);
        slot.end.store(end, Ordering::Relaxed);
        slot.granule.store(granule.max(page), Ordering::Relaxed);
        slot.faults.store(0, Ordering::Relaxed);
        let active = (claimed & !STATUS_MASK) | ACTIVE;
        slot.state.store(active, Ordering::Release);
        return Ok(SigbusGuard {
            slot,
            index,
            state: active,
        });
    }
    Err(GuardError::Full { capacity: CAPACITY })
}

/// The SIGBUS handler. Async-signal-safe: atomics, `mmap`, and in
/// [`chain`] `sigaction`/`raise` or the previous handler.
extern "C" fn on_sigbus(sig: c_int, info: *mut libc::siginfo_t, context: *mut c_void) {
    // SAFETY: `__errno_location` returns this thread's errno, valid for the
    // thread's life; the handler runs on the faulting thread.
    let errno = unsafe { libc::__errno_location() };
    // SAFETY: as above.
    let saved_errno = unsafe { errno.read() };
    let contained = !info.is_null() && {
        // SAFETY: with SA_SIGINFO the kernel passes a valid `siginfo_t`; for
        // a fault (`si_code > 0`) its address field is `si_addr`.
        let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
        code > 0 && contain(addr)
    };
    if !contained {
        chain(sig, info, context);
    }
    // SAFETY: as above.
    unsafe { errno.write(saved_errno) };
}

/// If `addr` is in a registered range, replaces the range from `addr`'s page
/// to its end with zero pages and counts the fault.
fn contain(addr: usize) -> bool {
    let page = PAGE_SIZE.load(Ordering::Relaxed);
    if page == 0 {
        return false;
    }
    for slot in &SLOTS {
        let state = slot.state.load(Ordering::Acquire);
        if state & STATUS_MASK != ACTIVE {
            continue;
        }
        let start = slot.start.load(Ordering::Relaxed);
        let end = slot.end.load(Ordering::Relaxed);
        let granule = slot.granule.load(Ordering::Relaxed);
        // Seqlock reader: the fields belong to `state` only if it is
        // unchanged after reading them.
        fence(Ordering::Acquire);
        if slot.state.load(Ordering::Relaxed) != state || addr < start || addr >= end {
            continue;
        }
        let from = addr & !(page - 1);
        let mut replaced = replace_with_zero_pages(from, end);
        if !replaced && granule > page && granule.is_power_of_two() {
            let from = (addr & !(granule - 1)).max(start);
            let to = end.checked_next_multiple_of(granule).unwrap_or(end);
            replaced = replace_with_zero_pages(from, to);
        }
        if replaced {
            slot.faults.fetch_add(1, Ordering::Release);
            TOTAL_FAULTS.fetch_add(1, Ordering::Release);
        }
        return replaced;
    }
    false
}

fn replace_with_zero_pages(from: usize, to: usize) -> bool {
    if to <= from {
        return false;
    }
    // SAFETY: `[from, to)` lies inside a range registered through
    // `guard_range`, whose contract makes replacing it sound: it is the
    // registrant's mapping (still mapped: the guard is alive), reached only
    // through raw pointers, whose content may change at any time. MAP_FIXED
    // replaces exactly those pages and nothing else.
    unsafe {
        rustix::mm::mmap_anonymous(
            from as *mut c_void,
            to - from,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE | MapFlags::FIXED | MapFlags::NORESERVE,
        )
    }
    .is_ok()
}

/// Hands a SIGBUS that is not ours to the previous handler, or restores the
/// default action.
fn chain(sig: c_int, info: *mut libc::siginfo_t, context: *mut c_void) {
    if let Some(previous) = PREVIOUS.get() {
        let handler = previous.sa_sigaction;
        if handler != libc::SIG_DFL && handler != libc::SIG_IGN {
            if previous.sa_flags & libc::SA_SIGINFO != 0 {
                // SAFETY: an SA_SIGINFO action's handler has this signature;
                // it was installed for SIGBUS and is async-signal-safe, as
                // every signal handler must be.
                let f: extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void) =
                    unsafe { std::mem::transmute::<usize, _>(handler) };
                f(sig, info, context);
            } else {
                // SAFETY: as above, a plain handler's signature.
                let f: extern "C" fn(c_int) = unsafe { std::mem::transmute::<usize, _>(handler) };
                f(sig);
            }
            return;
        }
    }
    // The default action: on return the faulting access runs again, faults
    // again, and kills the process with SIGBUS (and a core dump).
    // SAFETY: all zeroes is a valid `sigaction`; with `sa_sigaction` 0 it is
    // SIG_DFL with an empty mask.
    let default: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: `sigaction` is async-signal-safe; `default` is valid.
    unsafe { libc::sigaction(libc::SIGBUS, &default, ptr::null_mut()) };
    // SAFETY: `info` is null or valid (see `on_sigbus`).
    let sent = info.is_null() || unsafe { (*info).si_code } <= 0;
    if sent {
        // Sent by kill() rather than caused by an access: returning would not
        // repeat it. Raised now, it is delivered (default action) as soon as
        // this handler returns and unblocks it.
        // SAFETY: `raise` is async-signal-safe.
        unsafe { libc::raise(libc::SIGBUS) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anonymous(len: usize) -> *mut u8 {
        // SAFETY: fresh address space, freed with `munmap` by the test.
        unsafe {
            rustix::mm::mmap_anonymous(
                ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE,
            )
        }
        .unwrap()
        .cast()
    }

    #[test]
    fn guards_register_and_unregister() {
        let page = rustix::param::page_size();
        let base = anonymous(2 * page);
        // SAFETY: our mapping, unmapped after the guards are dropped, only
        // reached through raw pointers.
        let a = unsafe { guard_range(base, 2 * page - 1, 0) }.unwrap();
        // SAFETY: as above.
        let b = unsafe { guard_range(base, page, 0) }.unwrap();
        assert!(!a.faulted() && !b.faulted());
        let probe = a.probe();
        assert!(!probe.faulted());
        assert_eq!(
            SLOTS[a.index].end.load(Ordering::Relaxed),
            base as usize + 2 * page
        );
        assert_ne!(a.index, b.index);
        let index = a.index;
        drop(a);
        assert_eq!(
            SLOTS[index].state.load(Ordering::Relaxed) & STATUS_MASK,
            FREE
        );
        assert!(!probe.faulted());
        drop(b);
        // SAFETY: the guards are gone; nothing uses the mapping.
        unsafe { rustix::mm::munmap(base.cast(), 2 * page) }.unwrap();
    }

    #[test]
    fn bad_ranges_are_refused() {
        let page = rustix::param::page_size();
        let base = anonymous(page);
        // SAFETY: refused before anything is registered.
        let e = unsafe { guard_range(base.wrapping_add(1), 8, 0) }.unwrap_err();
        assert!(matches!(e, GuardError::BadRange { .. }));
        // SAFETY: as above.
        let e = unsafe { guard_range(base, 0, 0) }.unwrap_err();
        assert!(matches!(e, GuardError::BadRange { .. }));
        // SAFETY: as above.
        let e = unsafe { guard_range(base, usize::MAX - page, 0) }.unwrap_err();
        assert!(matches!(e, GuardError::BadRange { .. }));
        // SAFETY: nothing registered; ours to unmap.
        unsafe { rustix::mm::munmap(base.cast(), page) }.unwrap();
    }

    #[test]
    fn the_handler_is_installed_once_and_chains_to_the_previous_one() {
        install().unwrap();
        install().unwrap();
        // SAFETY: all zeroes is a valid sigaction; a query only.
        let mut now: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let r = unsafe { libc::sigaction(libc::SIGBUS, ptr::null(), &mut now) };
        assert_eq!(r, 0);
        let ours: extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void) = on_sigbus;
        assert_eq!(now.sa_sigaction, ours as usize);
        assert_ne!(now.sa_flags & libc::SA_ONSTACK, 0);
        assert!(PREVIOUS.get().is_some());
    }
}
