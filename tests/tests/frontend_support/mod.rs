//! Shared by the mio front-end tests: a `Poll` loop around one `FrontendSession`, the
//! echo back-ends (std and mio runners) on a socketpair, rings in `GuestRam`, scripted
//! hostile peers.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use vhost_backend::echo::Echo;
use vhost_backend::os::eventfd::EventFd;
use vhost_io_mio::frontend::{
    FrontendError, FrontendEvent, FrontendSession, Handshake, Progress, RingStart,
};
use vhost_io_std::frontend::{DriverRing, GuestRam};
use vhost_proto::wire::{ProtocolFeatures, RegionFd, VirtioFeatures};

/// How long any test waits for anything.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A user's loop: a `Poll` with the session registered under `base`, and a source of its
/// own next to it (token 0, never ready) to show the session ignores foreign tokens.
pub struct Loop {
    pub poll: Poll,
    pub events: Events,
    pub session: FrontendSession,
}

impl Loop {
    pub fn new(stream: UnixStream, base: Token) -> Self {
        let poll = Poll::new().unwrap();
        let mut session = FrontendSession::from_std(stream).unwrap();
        poll.registry()
            .register(&mut session, base, Interest::READABLE)
            .unwrap();
        Loop {
            poll,
            events: Events::with_capacity(64),
            session,
        }
    }

    /// One turn: sleep until readiness or the session's deadline (at most `cap`), serve
    /// what is ready, fire deadlines.
    pub fn turn(&mut self, cap: Duration) -> Result<(), FrontendError> {
        let now = Instant::now();
        let wait = self
            .session
            .poll_timeout()
            .map_or(cap, |d| d.saturating_duration_since(now).min(cap));
        self.poll.poll(&mut self.events, Some(wait)).unwrap();
        for e in self.events.iter() {
            if self.session.owns(e.token()) {
                self.session.ready(e.token())?;
            }
        }
        self.session.handle_timeout(Instant::now())
    }

    /// Turns until `f` returns something for an event (or fails); panics after
    /// [`PATIENCE`].
    pub fn until<T>(
        &mut self,
        mut f: impl FnMut(&mut FrontendSession, FrontendEvent) -> Result<Option<T>, FrontendError>,
    ) -> Result<T, FrontendError> {
        let give_up = Instant::now() + PATIENCE;
        loop {
            while let Some(ev) = self.session.poll_event() {
                if let Some(t) = f(&mut self.session, ev)? {
                    return Ok(t);
                }
            }
            assert!(Instant::now() < give_up, "nothing happened in time");
            self.turn(Duration::from_millis(100))?;
        }
    }

    /// Runs `hs` to the end; events not its own are returned.
    pub fn handshake(&mut self, hs: &mut Handshake) -> Result<Vec<FrontendEvent>, FrontendError> {
        hs.start(&mut self.session, Instant::now())?;

        let mut other = Vec::new();
        self.until(|s, ev| match hs.on_event(s, Instant::now(), ev)? {
            Progress::Done => Ok(Some(())),
            Progress::NotMine(ev) => {
                other.push(ev);
                Ok(None)
            }
            _ => Ok(None),
        })?;
        Ok(other)
    }
}

/// The memory table of `ram` with owned duplicates of its fds.
pub fn memory(ram: &GuestRam) -> Vec<RegionFd<std::os::fd::OwnedFd>> {
    ram.mem_table()
        .into_iter()
        .map(|(region, fd)| RegionFd {
            region,
            fd: fd.try_clone_to_owned().unwrap(),
        })
        .collect()
}

/// What the handshake needs to start `ring` (duplicates of its eventfds).
pub fn ring_start(ram: &GuestRam, ring: &DriverRing, with_err: bool) -> RingStart {
    RingStart {
        index: ring.index(),
        size: ring.size(),
        base: ring.base(),
        addr: ram.vring_addr(ring.index(), ring.config()).unwrap(),
        kick: ring.kick_fd().try_clone_to_owned().unwrap(),
        call: EventFd::from_fd(ring.call_fd().try_clone_to_owned().unwrap()),
        err: with_err.then(|| EventFd::from_fd(ring.err_fd().try_clone_to_owned().unwrap())),
    }
}

/// Which runner serves the echo device.
#[derive(Clone, Copy, Debug)]
pub enum Runner {
    Std,
    Mio,
}

/// An echo back-end serving one end of a socketpair.
pub enum Backend {
    Std(vhost_io_std::backend::ServerHandle),
    Mio(vhost_io_mio::ServerHandle),
}

impl Backend {
    pub fn start(runner: Runner, queues: u16) -> (UnixStream, Backend) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let b = match runner {
            Runner::Std => Backend::Std(
                vhost_io_std::backend::Server::from_stream(theirs, Echo::new(queues))
                    .unwrap()
                    .spawn()
                    .unwrap(),
            ),
            Runner::Mio => {
                let s = vhost_io_mio::Server::new(Echo::new(queues))
                    .unwrap()
                    .spawn()
                    .unwrap();
                s.handle().add(theirs).unwrap();
                Backend::Mio(s)
            }
        };
        (ours, b)
    }

    /// Waits for the back-end to end (after the front-end closed).
    pub fn finish(self) {
        match self {
            Backend::Std(h) => h.join().unwrap(),
            Backend::Mio(h) => h.stop().unwrap(),
        }
    }

    /// Waits for the back-end to end after the front-end cut it off mid-conversation
    /// (the std runner reports the replies it could not write).
    pub fn finish_cut_off(self) {
        match self {
            Backend::Std(h) => {
                let _ = h.join();
            }
            Backend::Mio(h) => h.stop().unwrap(),
        }
    }
}

/// Echoes `count` buffers of `len` bytes through `ring` (batches of up to half the ring),
/// waiting for the completions through the session's `Call` events; checks every byte.
pub fn echo(lp: &mut Loop, ram: &GuestRam, ring: &mut DriverRing, count: usize, len: u32) {
    let slots = usize::from(ring.size() / 2).max(1);
    let bufs: Vec<(u64, u64)> = (0..slots)
        .map(|_| {
            (
                ram.alloc(len.into(), 8).unwrap(),
                ram.alloc(len.into(), 8).unwrap(),
            )
        })
        .collect();
    let mut done = 0;
    while done < count {
        let n = slots.min(count - done);
        let mut batch = Vec::new();
        for (k, &(out, inn)) in bufs.iter().take(n).enumerate() {
            let pattern: Vec<u8> = (0..len)
                .map(|i| (i as u8) ^ ((done + k) as u8) ^ 0x5a)
                .collect();
            ram.write(out, &pattern).unwrap();
            ram.write(inn, &vec![0; len as usize]).unwrap();
            let id = ring.add(&[(out, len)], &[(inn, len)]).unwrap();
            batch.push((id, inn, pattern));
        }
        // Arm the call before kicking (with EVENT_IDX: used_event = the next used
        // index), as a driver does before it sleeps.
        ring.enable_interrupts();
        ring.kick().unwrap();
        let index = ring.index();
        let mut used = Vec::new();
        lp.until(|_, ev| {
            match ev {
                // Pop everything, re-arm, pop again if completions raced the re-arm.
                FrontendEvent::Call { index: i } if i == index => loop {
                    while let Some(u) = ring.pop_used().unwrap() {
                        used.push(u);
                    }
                    if !ring.enable_interrupts() {
                        break;
                    }
                },
                other => panic!("unexpected event {other:?}"),
            }
            Ok((used.len() >= batch.len()).then_some(()))
        })
        .unwrap();
        assert_eq!(used.len(), batch.len());
        for (id, got) in used {
            let (_, inn, pattern) = batch.iter().find(|b| b.0 == id).expect("unknown id");
            assert_eq!(got, len);
            let mut back = vec![0u8; len as usize];
            ram.read(*inn, &mut back).unwrap();
            assert_eq!(&back, pattern);
        }
        done += n;
    }
    for (out, inn) in bufs {
        ram.free(out, len.into()).unwrap();
        ram.free(inn, len.into()).unwrap();
    }
}

/// The features an echo ring is laid out for.
pub fn features(packed: bool, event_idx: bool) -> VirtioFeatures {
    let mut f = VirtioFeatures::VERSION_1;
    if packed {
        f |= VirtioFeatures::RING_PACKED;
    }
    if event_idx {
        f |= VirtioFeatures::EVENT_IDX;
    }
    f
}

/// The protocol features the echo tests ask for.
pub fn protocol(reply_ack: bool) -> ProtocolFeatures {
    let p = ProtocolFeatures::MQ | ProtocolFeatures::CONFIG | ProtocolFeatures::STATUS;
    if reply_ack {
        p | ProtocolFeatures::REPLY_ACK
    } else {
        p
    }
}

/// A message the front-end sent, as a scripted peer reads it.
pub struct Request {
    pub code: u32,
    pub flags: u32,
    pub payload: Vec<u8>,
}

/// Reads one request (header, then its payload) from a blocking socket; `None` at EOF.
pub fn read_request(s: &mut UnixStream) -> Option<Request> {
    let mut hdr = [0u8; 12];
    s.read_exact(&mut hdr).ok()?;
    let word = |i: usize| u32::from_le_bytes(hdr[i..i + 4].try_into().unwrap());
    let mut payload = vec![0u8; word(8) as usize];
    s.read_exact(&mut payload).ok()?;
    Some(Request {
        code: word(0),
        flags: word(4),
        payload,
    })
}

/// A reply header + payload: version 1, the reply bit.
pub fn reply(code: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&code.to_le_bytes());
    v.extend_from_slice(&(0x1u32 | 0x4).to_le_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    v.extend_from_slice(payload);
    v
}

/// A scripted back-end on the other end of a socketpair, in its own thread.
pub fn peer(script: impl FnOnce(UnixStream) + Send + 'static) -> (UnixStream, JoinHandle<()>) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    theirs.set_read_timeout(Some(PATIENCE)).unwrap();
    (ours, std::thread::spawn(move || script(theirs)))
}

/// Writes `bytes` with `fds` attached (blocking).
pub fn write_with_fds(s: &UnixStream, bytes: &[u8], fds: &[std::os::fd::BorrowedFd<'_>]) {
    vhost_backend::os::socket::send_all_with_fds(s.as_fd(), bytes, fds).unwrap();
}

/// Writes all of `bytes` (blocking).
pub fn write(s: &mut UnixStream, bytes: &[u8]) {
    s.write_all(bytes).unwrap();
}

/// Open fds of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}
