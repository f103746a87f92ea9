//! A peer program run as a child process in its own process group, killed with its whole
//! group and reaped on drop (also when the test panics), with its output collected.

use std::fmt;
use std::io::{self, Read};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, WaitId, WaitIdOptions};

/// How often the waits poll the file system or the child.
const POLL: Duration = Duration::from_millis(10);
/// How long drop waits for the output threads after the group was killed.
const DRAIN: Duration = Duration::from_secs(2);

/// What went wrong while waiting for a peer.
#[derive(Debug)]
pub enum PeerError {
    /// The deadline passed first.
    Timeout {
        /// The peer's name.
        peer: String,
        /// What was awaited.
        what: String,
        /// Everything the peer printed so far.
        output: String,
    },
    /// The peer exited (or closed its output) before the awaited thing happened.
    Exited {
        /// The peer's name.
        peer: String,
        /// What was awaited.
        what: String,
        /// Its exit status, if it was reaped.
        status: Option<ExitStatus>,
        /// Everything the peer printed.
        output: String,
    },
    /// A system call failed.
    Io(io::Error),
}

impl fmt::Display for PeerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout { peer, what, output } => {
                write!(
                    f,
                    "{peer}: timed out waiting for {what}; output so far:\n{output}"
                )
            }
            Self::Exited {
                peer,
                what,
                status,
                output,
            } => write!(
                f,
                "{peer}: exited ({}) while waiting for {what}; output:\n{output}",
                status.map_or_else(|| "output closed".to_owned(), |s| s.to_string())
            ),
            Self::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for PeerError {}

impl From<io::Error> for PeerError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// Output collected from the child's stdout and stderr (interleaved in arrival order).
#[derive(Debug, Default)]
struct Collected {
    bytes: Vec<u8>,
    /// Streams (stdout, stderr) not yet at end of file.
    open: u8,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<Collected>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Collected> {
        // A reader thread cannot panic while holding the lock; recover anyway.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A running peer. Spawned in a new process group whose id is its pid; dropping it sends
/// SIGKILL to the whole group and reaps the child, so no process outlives the test.
#[derive(Debug)]
pub struct Peer {
    name: String,
    child: Child,
    pgid: Pid,
    status: Option<ExitStatus>,
    shared: Arc<Shared>,
    readers: Vec<JoinHandle<()>>,
}

impl Peer {
    /// Spawns `cmd` (stdin null, stdout and stderr piped into a collected buffer) in a new
    /// process group. `name` is used in messages.
    pub fn spawn(name: &str, mut cmd: Command) -> io::Result<Self> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn()?;
        let raw = i32::try_from(child.id()).ok().and_then(Pid::from_raw);
        let Some(pgid) = raw else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::other("child pid out of range"));
        };
        let shared = Arc::new(Shared::default());
        let mut readers = Vec::new();
        let streams: [Option<Box<dyn Read + Send>>; 2] = [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ];
        for stream in streams.into_iter().flatten() {
            shared.lock().open += 1;
            let shared = Arc::clone(&shared);
            readers.push(std::thread::spawn(move || collect(stream, &shared)));
        }
        Ok(Self {
            name: name.to_owned(),
            child,
            pgid,
            status: None,
            shared,
            readers,
        })
    }

    /// The child's pid, which is also its process group id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The peer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Everything the peer printed so far (stdout and stderr interleaved), lossily decoded.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.shared.lock().bytes).into_owned()
    }

    /// The exit status if the child has exited (reaping it, after killing what is left of
    /// its group).
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_some() {
            return Ok(self.status);
        }
        // Look without reaping: while the leader is a zombie its pid cannot be reused, so
        // the group kill below cannot hit an unrelated process.
        let opts = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
        match rustix::process::waitid(WaitId::Pid(self.pgid), opts) {
            Ok(Some(_)) => {
                self.kill_group(Signal::KILL);
                let status = self.child.wait()?;
                self.status = Some(status);
                Ok(Some(status))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn kill_group(&self, sig: Signal) {
        // ESRCH (group already empty) is the expected outcome once everything has exited.
        let _ = rustix::process::kill_process_group(self.pgid, sig);
    }

    fn exited(&self, what: &str) -> PeerError {
        PeerError::Exited {
            peer: self.name.clone(),
            what: what.to_owned(),
            status: self.status,
            output: self.output(),
        }
    }

    fn timeout(&self, what: &str) -> PeerError {
        PeerError::Timeout {
            peer: self.name.clone(),
            what: what.to_owned(),
            output: self.output(),
        }
    }

    /// Waits until `path` exists and is a Unix socket. Fails if the peer exits first or
    /// the deadline passes.
    pub fn wait_for_socket(&mut self, path: &Path, timeout: Duration) -> Result<(), PeerError> {
        let what = format!("socket {}", path.display());
        let deadline = Instant::now() + timeout;
        loop {
            if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
                return Ok(());
            }
            if self.try_wait()?.is_some() {
                return Err(self.exited(&what));
            }
            if Instant::now() >= deadline {
                return Err(self.timeout(&what));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until the output contains `pattern`; returns the (first) line that contains it.
    /// Fails if the peer closes its output first or the deadline passes.
    pub fn wait_for_output(
        &mut self,
        pattern: &str,
        timeout: Duration,
    ) -> Result<String, PeerError> {
        let what = format!("output {pattern:?}");
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            let text = String::from_utf8_lossy(&state.bytes);
            if let Some(line) = text.lines().find(|l| l.contains(pattern)) {
                return Ok(line.to_owned());
            }
            // A pattern spanning lines is still found, reported as the whole output.
            if text.contains(pattern) {
                return Ok(text.into_owned());
            }
            let open = state.open;
            drop(text);
            if open == 0 {
                drop(state);
                let _ = self.try_wait();
                return Err(self.exited(&what));
            }
            let now = Instant::now();
            if now >= deadline {
                drop(state);
                return Err(self.timeout(&what));
            }
            let wait = (deadline - now).min(Duration::from_millis(100));
            state = self
                .shared
                .changed
                .wait_timeout(state, wait)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Waits for the child to exit by itself, at most `timeout`; `Ok(None)` if it has not.
    pub fn wait_timeout(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait()? {
                return Ok(Some(s));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(POLL);
        }
    }

    /// Sends SIGINT to the whole group and waits up to `timeout` for the child to exit;
    /// then SIGKILLs the group. Returns the exit status and whether it exited on SIGINT
    /// (`true`) or had to be killed (`false`).
    pub fn interrupt(&mut self, timeout: Duration) -> io::Result<(ExitStatus, bool)> {
        if let Some(s) = self.status {
            return Ok((s, true));
        }
        self.kill_group(Signal::INT);
        if let Some(s) = self.wait_timeout(timeout)? {
            return Ok((s, true));
        }
        Ok((self.kill()?, false))
    }

    /// SIGKILLs the whole group and reaps the child.
    pub fn kill(&mut self) -> io::Result<ExitStatus> {
        if let Some(s) = self.status {
            self.kill_group(Signal::KILL);
            return Ok(s);
        }
        self.kill_group(Signal::KILL);
        let status = self.child.wait()?;
        self.status = Some(status);
        Ok(status)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            eprintln!(
                "{}: cannot reap pid {}: {e}",
                self.name,
                self.pgid.as_raw_nonzero()
            );
        }
        // Other members of the group were killed too but are reaped by init, not by us:
        // wait (bounded) until they are really gone, killing again any that appeared since.
        let deadline = Instant::now() + DRAIN;
        while !crate::group_members(self.pid()).is_empty() && Instant::now() < deadline {
            self.kill_group(Signal::KILL);
            std::thread::sleep(POLL);
        }
        // The reader threads end when every holder of the pipes is gone; a process that left
        // the group could keep them open, so do not wait for ever.
        let deadline = Instant::now() + DRAIN;
        let mut state = self.shared.lock();
        while state.open > 0 && Instant::now() < deadline {
            state = self
                .shared
                .changed
                .wait_timeout(state, POLL)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        let drained = state.open == 0;
        drop(state);
        if drained {
            for r in self.readers.drain(..) {
                let _ = r.join();
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "--- output of {} (pid {}) ---\n{}--- end ---",
                self.name,
                self.pid(),
                self.output()
            );
        }
    }
}

fn collect(mut stream: Box<dyn Read + Send>, shared: &Shared) {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                shared
                    .lock()
                    .bytes
                    .extend_from_slice(buf.get(..n).unwrap_or_default());
                shared.changed.notify_all();
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    shared.lock().open -= 1;
    shared.changed.notify_all();
}
