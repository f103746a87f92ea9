//! A peer must not be able to kill the back-end with SIGPIPE.
//!
//! Writing to a pipe whose read end is closed raises SIGPIPE, whose default action ends
//! the process. A front-end may hand us a pipe as a call or err notifier and close its
//! read end; `sendmsg` on our sockets uses `MSG_NOSIGNAL`, but a pipe write has no such
//! flag. Rust programs ignore SIGPIPE from `main` on, but a back-end embedded in a C
//! program (or a libFuzzer harness) may not: the runners call [`ignore`] when they are
//! built, which sets SIGPIPE to "ignore" if (and only if) it still has its default action
//! (a handler the program installed is left alone). The write then fails with `EPIPE`,
//! which the notifier reports as an error.

use std::io;
use std::ptr;
use std::sync::OnceLock;

static DONE: OnceLock<Result<(), i32>> = OnceLock::new();

/// Sets SIGPIPE to "ignore" if it has its default action; once per process.
pub fn ignore() -> io::Result<()> {
    DONE.get_or_init(|| set().map_err(|e| e.raw_os_error().unwrap_or(libc::EINVAL)))
        .map_err(io::Error::from_raw_os_error)
}

fn set() -> io::Result<()> {
    // SAFETY: `sigaction` is plain data for which all zeroes is a valid value.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a query (no new action) into a valid `sigaction`.
    if unsafe { libc::sigaction(libc::SIGPIPE, ptr::null(), &mut old) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if old.sa_sigaction != libc::SIG_DFL {
        return Ok(());
    }
    // SAFETY: all zeroes is a valid `sigaction`.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = libc::SIG_IGN;
    // SAFETY: `sa_mask` is a valid signal set to initialise.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    // SAFETY: `action` is fully initialised; SIG_IGN needs no handler.
    if unsafe { libc::sigaction(libc::SIGPIPE, &action, ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn sigpipe_ends_up_ignored_or_handled() {
        super::ignore().unwrap_or_else(|e| panic!("{e}"));
        let (r, w) = rustix::pipe::pipe().unwrap_or_else(|e| panic!("{e}"));
        drop(r);
        // Would kill the test process if SIGPIPE had its default action.
        let e = rustix::io::write(&w, b"x").unwrap_err();
        assert_eq!(e, rustix::io::Errno::PIPE);
    }
}
