//! `vhost-probe check`: a conformance run against any vhost-user back-end.
//!
//! A battery of malformed and out-of-order requests, each on a FRESH connection: a
//! prefix of well-formed requests (the case's [`Stage`]), then the case's raw bytes,
//! written by hand so that they can break every rule (headers as
//! [`vhost_proto::wire::Header`], sent with [`send_with_fds`]). For each case the run
//! records how the back-end answered ([`Answer`]: a reply, an ack, a NACK, a close, or
//! nothing before the deadline), whether the same connection still answers a
//! GET_FEATURES, and whether the back-end survived: a new connection completes
//! GET_FEATURES afterwards, and with `--pid` the process is still alive and its open fd
//! count (`/proc/PID/fd`) is back to what it was before the battery.

use std::fmt::Write as _;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vhost_backend::os::eventfd::EventFd;
use vhost_backend::os::memfd;
use vhost_backend::os::socket::{recv_with_fds_deadline, send_with_fds};
use vhost_backend::vhost_proto::wire::Header;
use zerocopy::IntoBytes;

use super::cli::json_str;

/// Request codes the battery uses (spec §5).
mod code {
    pub const GET_FEATURES: u32 = 1;
    pub const SET_FEATURES: u32 = 2;
    pub const SET_OWNER: u32 = 3;
    pub const RESET_OWNER: u32 = 4;
    pub const SET_MEM_TABLE: u32 = 5;
    pub const SET_VRING_NUM: u32 = 8;
    pub const SET_VRING_ADDR: u32 = 9;
    pub const SET_VRING_BASE: u32 = 10;
    pub const GET_VRING_BASE: u32 = 11;
    pub const SET_VRING_KICK: u32 = 12;
    pub const SET_VRING_CALL: u32 = 13;
    pub const GET_PROTOCOL_FEATURES: u32 = 15;
    pub const SET_PROTOCOL_FEATURES: u32 = 16;
    pub const SET_VRING_ENABLE: u32 = 18;
    pub const GET_CONFIG: u32 = 24;
    pub const GET_INFLIGHT_FD: u32 = 31;
    /// Not a request of the spec.
    pub const UNKNOWN: u32 = 99;
}

const V1: u32 = 0x1;
const NEED_REPLY: u32 = 0x8;
const REPLY: u32 = 0x4;
const F_VERSION_1: u64 = 1 << 32;
const F_PROTOCOL_FEATURES: u64 = 1 << 30;
const P_MQ: u64 = 1 << 0;
const P_REPLY_ACK: u64 = 1 << 3;
const P_CONFIG: u64 = 1 << 9;
const P_INFLIGHT_SHMFD: u64 = 1 << 12;
/// Guest memory of the `ring` stage: one region at guest address 0.
const RAM: u64 = 1 << 20;
/// The "front-end virtual address" of that region (any value: the back-end only
/// translates ring addresses with it).
const UADDR: u64 = 0x7f00_0000_0000;
const RING_SIZE: u32 = 64;

/// What the back-end did after the case's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A reply to a request with its own reply (a GET), with its header flags and size.
    Reply {
        /// Header flags of the reply.
        flags: u32,
        /// Payload size.
        size: u32,
        /// Fds that came with it.
        fds: usize,
    },
    /// A u64 ack of 0 (success) to a request without its own reply.
    Ack,
    /// A nonzero u64 ack: the request was refused.
    Nack(u64),
    /// The back-end closed the connection (EOF or reset).
    Closed,
    /// Nothing within the deadline (the expected answer for a request without NEED_REPLY).
    Nothing,
    /// Some other message.
    Other(String),
    /// The case could not be set up (a well-formed prefix request failed).
    SetupFailed(String),
    /// Not sent to this back-end, for this reason.
    Skipped(&'static str),
}

impl Answer {
    /// A short text: `reply 0x5/8` (flags/size, `+N fd` with fds), `ack 0`, `NACK 1`, `closed`, `no answer`, ...
    pub fn text(&self) -> String {
        match self {
            Answer::Reply {
                flags,
                size,
                fds: 0,
            } => format!("reply {flags:#x}/{size}"),
            Answer::Reply { flags, size, fds } => format!("reply {flags:#x}/{size} +{fds} fd"),
            Answer::Ack => "ack 0".into(),
            Answer::Nack(v) => format!("NACK {v}"),
            Answer::Closed => "closed".into(),
            Answer::Nothing => "no answer".into(),
            Answer::Other(s) => s.clone(),
            Answer::SetupFailed(s) => format!("setup failed: {s}"),
            Answer::Skipped(s) => format!("skipped: {s}"),
        }
    }

    /// A single-word kind for JSON and tests: `reply`, `ack`, `nack`, `closed`,
    /// `none`, `other`, `setup-failed`.
    pub fn kind(&self) -> &'static str {
        match self {
            Answer::Reply { .. } => "reply",
            Answer::Ack => "ack",
            Answer::Nack(_) => "nack",
            Answer::Closed => "closed",
            Answer::Nothing => "none",
            Answer::Other(_) => "other",
            Answer::SetupFailed(_) => "setup-failed",
            Answer::Skipped(_) => "skipped",
        }
    }
}

/// The prefix of well-formed requests a case starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Nothing: the case is the first message.
    Fresh,
    /// GET_FEATURES, GET/SET_PROTOCOL_FEATURES (REPLY_ACK, MQ, CONFIG when offered).
    Protocol,
    /// `Protocol` and SET_OWNER.
    Owner,
    /// `Owner`, SET_FEATURES (VERSION_1, PROTOCOL_FEATURES), SET_MEM_TABLE (1 MiB
    /// memfd) and ring 0 configured (NUM 64, ADDR, BASE 0, CALL), without a kick.
    Ring,
}

/// What the back-end does after a case's bytes, as the case expects it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// A message should come back (a reply or an ack).
    Answer,
    /// Nothing comes back (no NEED_REPLY): only the same-connection probe is read.
    Silence,
    /// A half message was sent: wait for the deadline, no same-connection probe.
    Half,
    /// Not sent, for this reason.
    Skip(&'static str),
}

/// What a case knows about the back-end (from the prefix).
#[derive(Clone, Copy, Debug, Default)]
struct Info {
    features: u64,
    /// Offered protocol features.
    offered_protocol: u64,
    /// Negotiated protocol features.
    protocol: u64,
    reply_ack: bool,
}

type CaseFn = fn(&mut Conn, &Info) -> Result<Expect, Setup>;

/// One case of the battery.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    /// Its name (`--case NAME`).
    pub name: &'static str,
    /// The request code of the case's message (what an answer is classified against).
    pub code: u32,
    /// What it sends.
    pub what: &'static str,
    /// Its prefix.
    pub stage: Stage,
    run: CaseFn,
}

/// Why a prefix or a case could not be sent.
#[derive(Debug)]
struct Setup(String);

impl From<io::Error> for Setup {
    fn from(e: io::Error) -> Self {
        Setup(e.to_string())
    }
}

/// One message received.
#[derive(Debug)]
struct Msg {
    code: u32,
    flags: u32,
    payload: Vec<u8>,
    /// How many fds came with it (closed at once).
    fds: usize,
}

impl Msg {
    fn u64(&self) -> Option<u64> {
        Some(u64::from_le_bytes(self.payload.get(..8)?.try_into().ok()?))
    }
}

/// Why no message came.
#[derive(Debug)]
enum Gone {
    Closed,
    Timeout,
    Error(String),
}

/// A connection to the back-end: raw sends, message-framed receives with deadlines.
#[derive(Debug)]
struct Conn {
    sock: UnixStream,
    buf: Vec<u8>,
    /// Fds received and not yet given to a message.
    fds: usize,
    timeout: Duration,
    /// Descriptors the back-end may still hold (kept open until the case ends).
    keep: Vec<OwnedFd>,
}

fn header(request: u32, flags: u32, size: u32) -> [u8; 12] {
    let mut h = [0u8; 12];
    h.copy_from_slice(
        Header {
            request,
            flags,
            size,
        }
        .as_bytes(),
    );
    h
}

impl Conn {
    fn connect(path: &Path, timeout: Duration) -> io::Result<Conn> {
        let deadline = Instant::now() + timeout.max(Duration::from_secs(2));
        let sock = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        Ok(Conn {
            sock,
            buf: Vec::new(),
            fds: 0,
            timeout,
            keep: Vec::new(),
        })
    }

    /// Sends raw bytes with `fds`.
    fn raw(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let mut sent = send_with_fds(&self.sock, bytes, fds)?;
        while sent < bytes.len() {
            let n = send_with_fds(&self.sock, bytes.get(sent..).unwrap_or_default(), &[])?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            sent += n;
        }
        Ok(())
    }

    /// Sends one message whose header says `size` = the payload's length.
    fn send(
        &self,
        code: u32,
        flags: u32,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> io::Result<()> {
        let mut m = header(code, flags, payload.len() as u32).to_vec();
        m.extend_from_slice(payload);
        self.raw(&m, fds)
    }

    /// Receives the next message, or why none came before `timeout`.
    fn recv(&mut self) -> Result<Msg, Gone> {
        let deadline = Instant::now() + self.timeout;
        loop {
            if self.buf.len() >= 12 {
                let word = |i: usize| {
                    u32::from_le_bytes([
                        self.buf[i],
                        self.buf[i + 1],
                        self.buf[i + 2],
                        self.buf[i + 3],
                    ])
                };
                let (code, flags, size) = (word(0), word(4), word(8));
                if size > 65536 {
                    return Err(Gone::Error(format!(
                        "a header with size {size} (code {code}, flags {flags:#x})"
                    )));
                }
                let end = 12 + size as usize;
                if self.buf.len() >= end {
                    let payload = self.buf[12..end].to_vec();
                    self.buf.drain(..end);
                    return Ok(Msg {
                        code,
                        flags,
                        payload,
                        fds: std::mem::take(&mut self.fds),
                    });
                }
            }
            let mut tmp = [0u8; 4096];
            let mut fds = Vec::new();
            match recv_with_fds_deadline(&self.sock, &mut tmp, &mut fds, deadline) {
                Ok(0) => return Err(Gone::Closed),
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    self.fds += fds.len();
                }
                Err(e) if e.kind() == io::ErrorKind::TimedOut => return Err(Gone::Timeout),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                    ) =>
                {
                    return Err(Gone::Closed);
                }
                Err(e) => return Err(Gone::Error(e.to_string())),
            }
        }
    }

    /// A well-formed GET request; its u64 reply.
    fn get_u64(&mut self, code: u32) -> Result<u64, Setup> {
        self.send(code, V1, &[], &[])?;
        let m = self.expect_reply(code)?;
        m.u64()
            .ok_or_else(|| Setup(format!("reply to {code} has {} bytes", m.payload.len())))
    }

    fn expect_reply(&mut self, code: u32) -> Result<Msg, Setup> {
        match self.recv() {
            Ok(m) if m.code == code && m.flags & REPLY != 0 => Ok(m),
            Ok(m) => Err(Setup(format!(
                "unexpected message code {} flags {:#x} to request {code}",
                m.code, m.flags
            ))),
            Err(g) => Err(Setup(format!("request {code}: {}", gone_text(&g)))),
        }
    }

    /// A well-formed request without its own reply: with NEED_REPLY when REPLY_ACK was
    /// negotiated, and then its ack must be 0.
    fn set(
        &mut self,
        info: &Info,
        code: u32,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), Setup> {
        let flags = if info.reply_ack { V1 | NEED_REPLY } else { V1 };
        self.send(code, flags, payload, fds)?;
        if info.reply_ack {
            let m = self.expect_reply(code)?;
            if m.u64() != Some(0) {
                return Err(Setup(format!("request {code} acked {:?}", m.u64())));
            }
        }
        Ok(())
    }

    /// Runs the prefix up to `stage`.
    fn prefix(&mut self, stage: Stage) -> Result<Info, Setup> {
        let mut info = Info::default();
        if stage == Stage::Fresh {
            return Ok(info);
        }
        info.features = self.get_u64(code::GET_FEATURES)?;
        if info.features & F_PROTOCOL_FEATURES != 0 {
            let offered = self.get_u64(code::GET_PROTOCOL_FEATURES)?;
            info.offered_protocol = offered;
            info.protocol = offered & (P_REPLY_ACK | P_MQ | P_CONFIG);
            self.send(
                code::SET_PROTOCOL_FEATURES,
                V1,
                &info.protocol.to_le_bytes(),
                &[],
            )?;
            info.reply_ack = info.protocol & P_REPLY_ACK != 0;
        }
        if stage == Stage::Protocol {
            return Ok(info);
        }
        self.set(&info, code::SET_OWNER, &[], &[])?;
        if stage == Stage::Owner {
            return Ok(info);
        }
        let features = info.features & (F_VERSION_1 | F_PROTOCOL_FEATURES);
        self.set(&info, code::SET_FEATURES, &features.to_le_bytes(), &[])?;
        let mem = memfd::create("vhost-probe-check", RAM)?;
        self.set(
            &info,
            code::SET_MEM_TABLE,
            &mem_table(0, RAM, 0),
            &[mem.as_fd()],
        )?;
        self.keep.push(mem);
        self.set(&info, code::SET_VRING_NUM, &vring_state(0, RING_SIZE), &[])?;
        self.set(
            &info,
            code::SET_VRING_ADDR,
            &vring_addr(0, UADDR, UADDR + 0x2000, UADDR + 0x1000),
            &[],
        )?;
        self.set(&info, code::SET_VRING_BASE, &vring_state(0, 0), &[])?;
        let call = EventFd::new(true)?;
        self.set(
            &info,
            code::SET_VRING_CALL,
            &0u64.to_le_bytes(),
            &[call.write_fd()],
        )?;
        Ok(info)
    }
}

fn gone_text(g: &Gone) -> String {
    match g {
        Gone::Closed => "connection closed".into(),
        Gone::Timeout => "no answer".into(),
        Gone::Error(e) => e.clone(),
    }
}

/// A SET_MEM_TABLE payload with one region.
fn mem_table(gpa: u64, size: u64, offset: u64) -> Vec<u8> {
    let mut p = Vec::with_capacity(40);
    p.extend_from_slice(&1u32.to_le_bytes());
    p.extend_from_slice(&0u32.to_le_bytes());
    for v in [gpa, size, UADDR, offset] {
        p.extend_from_slice(&v.to_le_bytes());
    }
    p
}

fn vring_state(index: u32, num: u32) -> Vec<u8> {
    let mut p = index.to_le_bytes().to_vec();
    p.extend_from_slice(&num.to_le_bytes());
    p
}

fn vring_addr(index: u32, desc: u64, used: u64, avail: u64) -> Vec<u8> {
    let mut p = index.to_le_bytes().to_vec();
    p.extend_from_slice(&0u32.to_le_bytes());
    for v in [desc, used, avail, 0] {
        p.extend_from_slice(&v.to_le_bytes());
    }
    p
}

fn need(info: &Info) -> u32 {
    if info.reply_ack { V1 | NEED_REPLY } else { V1 }
}

fn expect_ack(info: &Info) -> Expect {
    if info.reply_ack {
        Expect::Answer
    } else {
        Expect::Silence
    }
}

/// A regular file, unlinked: a notifier that is not an eventfd.
fn regular_file() -> io::Result<File> {
    let dir = std::env::temp_dir();
    for i in 0..100u32 {
        let p: PathBuf = dir.join(format!("vhost-probe-check-{}-{i}", std::process::id()));
        match File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&p)
        {
            Ok(f) => {
                let _ = std::fs::remove_file(&p);
                return Ok(f);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::ErrorKind::AlreadyExists.into())
}

/// The battery, in the order it runs.
pub const CASES: &[Case] = &[
    Case {
        name: "version-0",
        code: code::GET_FEATURES,
        what: "GET_FEATURES with version bits 0",
        stage: Stage::Fresh,
        run: |c, _| {
            c.send(code::GET_FEATURES, 0, &[], &[])?;
            Ok(Expect::Answer)
        },
    },
    Case {
        name: "version-2",
        code: code::GET_FEATURES,
        what: "GET_FEATURES with version bits 2",
        stage: Stage::Fresh,
        run: |c, _| {
            c.send(code::GET_FEATURES, 2, &[], &[])?;
            Ok(Expect::Answer)
        },
    },
    Case {
        name: "reserved-flag",
        code: code::GET_FEATURES,
        what: "GET_FEATURES with reserved flag bit 8",
        stage: Stage::Fresh,
        run: |c, _| {
            c.send(code::GET_FEATURES, V1 | 0x100, &[], &[])?;
            Ok(Expect::Answer)
        },
    },
    Case {
        name: "reply-flag",
        code: code::GET_FEATURES,
        what: "GET_FEATURES with the REPLY flag set",
        stage: Stage::Fresh,
        run: |c, _| {
            c.send(code::GET_FEATURES, V1 | REPLY, &[], &[])?;
            Ok(Expect::Answer)
        },
    },
    Case {
        name: "get-features-payload",
        code: code::GET_FEATURES,
        what: "GET_FEATURES with an 8-byte payload",
        stage: Stage::Fresh,
        run: |c, _| {
            c.send(code::GET_FEATURES, V1, &[0; 8], &[])?;
            Ok(Expect::Answer)
        },
    },
    Case {
        name: "oversize-payload",
        code: code::SET_VRING_NUM,
        what: "SET_VRING_NUM with a 300-byte payload",
        stage: Stage::Owner,
        run: |c, i| {
            let mut p = vring_state(0, RING_SIZE);
            p.resize(300, 0);
            c.send(code::SET_VRING_NUM, need(i), &p, &[])?;
            Ok(expect_ack(i))
        },
    },
    Case {
        name: "oversize-header",
        code: code::GET_FEATURES,
        what: "GET_FEATURES whose header says 65536 payload bytes, none sent",
        stage: Stage::Fresh,
        run: |c, _| {
            c.raw(&header(code::GET_FEATURES, V1, 65536), &[])?;
            Ok(Expect::Half)
        },
    },
    Case {
        name: "unexpected-fd",
        code: code::GET_FEATURES,
        what: "GET_FEATURES carrying an fd",
        stage: Stage::Fresh,
        run: |c, _| {
            let e = EventFd::new(true)?;
            c.send(code::GET_FEATURES, V1, &[], &[e.write_fd()])?;
            Ok(Expect::Answer)
        },
    },
    Case {
        name: "unknown-code",
        code: code::UNKNOWN,
        what: "request 99 without NEED_REPLY",
        stage: Stage::Owner,
        run: |c, _| {
            c.send(code::UNKNOWN, V1, &[], &[])?;
            Ok(Expect::Silence)
        },
    },
    Case {
        name: "unknown-code-need-reply",
        code: code::UNKNOWN,
        what: "request 99 with NEED_REPLY",
        stage: Stage::Owner,
        run: |c, _| {
            c.send(code::UNKNOWN, V1 | NEED_REPLY, &[], &[])?;
            Ok(Expect::Answer)
        },
    },
    Case {
        name: "vring-num-before-owner",
        code: code::SET_VRING_NUM,
        what: "SET_VRING_NUM before SET_OWNER (NEED_REPLY with REPLY_ACK)",
        stage: Stage::Protocol,
        run: |c, i| {
            c.send(
                code::SET_VRING_NUM,
                need(i),
                &vring_state(0, RING_SIZE),
                &[],
            )?;
            Ok(expect_ack(i))
        },
    },
    Case {
        name: "set-owner-twice",
        code: code::SET_OWNER,
        what: "a second SET_OWNER",
        stage: Stage::Owner,
        run: |c, i| {
            c.send(code::SET_OWNER, need(i), &[], &[])?;
            Ok(expect_ack(i))
        },
    },
    Case {
        name: "vring-num-out-of-range",
        code: code::SET_VRING_NUM,
        what: "SET_VRING_NUM for ring 200",
        stage: Stage::Owner,
        run: |c, i| {
            c.send(
                code::SET_VRING_NUM,
                need(i),
                &vring_state(200, RING_SIZE),
                &[],
            )?;
            Ok(expect_ack(i))
        },
    },
    Case {
        name: "vring-num-huge",
        code: code::SET_VRING_NUM,
        what: "SET_VRING_NUM 65535 (not a power of 2, over 32768) for ring 0",
        stage: Stage::Owner,
        run: |c, i| {
            c.send(code::SET_VRING_NUM, need(i), &vring_state(0, 65535), &[])?;
            Ok(expect_ack(i))
        },
    },
    Case {
        name: "get-vring-base-out-of-range",
        code: code::GET_VRING_BASE,
        what: "GET_VRING_BASE for ring 200",
        stage: Stage::Owner,
        run: |c, _| {
            c.send(code::GET_VRING_BASE, V1, &vring_state(200, 0), &[])?;
            Ok(Expect::Answer)
        },
    },
    Case {
        name: "vring-enable-out-of-range",
        code: code::SET_VRING_ENABLE,
        what: "SET_VRING_ENABLE(1) for ring 200",
        stage: Stage::Owner,
        run: |c, i| {
            c.send(code::SET_VRING_ENABLE, need(i), &vring_state(200, 1), &[])?;
            Ok(expect_ack(i))
        },
    },
    Case {
        name: "get-config-beyond",
        code: code::GET_CONFIG,
        what: "GET_CONFIG offset 256 size 8 (past any config space)",
        stage: Stage::Owner,
        run: |c, _| {
            let mut p = 256u32.to_le_bytes().to_vec();
            p.extend_from_slice(&8u32.to_le_bytes());
            p.extend_from_slice(&0u32.to_le_bytes());
            p.extend_from_slice(&[0; 8]);
            c.send(code::GET_CONFIG, V1, &p, &[])?;
            Ok(Expect::Answer)
        },
    },
    Case {
        name: "get-config-oversize",
        code: code::GET_CONFIG,
        what: "GET_CONFIG offset 0 size 4097 (over the 4096 maximum)",
        stage: Stage::Owner,
        run: |c, _| {
            let mut p = 0u32.to_le_bytes().to_vec();
            p.extend_from_slice(&4097u32.to_le_bytes());
            p.extend_from_slice(&0u32.to_le_bytes());
            p.resize(12 + 4097, 0);
            c.send(code::GET_CONFIG, V1, &p, &[])?;
            Ok(Expect::Answer)
        },
    },
    Case {
        name: "get-config-size-mismatch",
        code: code::GET_CONFIG,
        what: "GET_CONFIG claiming 60 bytes but carrying 8",
        stage: Stage::Owner,
        run: |c, _| {
            let mut p = 0u32.to_le_bytes().to_vec();
            p.extend_from_slice(&60u32.to_le_bytes());
            p.extend_from_slice(&0u32.to_le_bytes());
            p.extend_from_slice(&[0; 8]);
            c.send(code::GET_CONFIG, V1, &p, &[])?;
            Ok(Expect::Answer)
        },
    },
    Case {
        name: "set-features-unoffered",
        code: code::SET_FEATURES,
        what: "SET_FEATURES with every offered bit and one not offered",
        stage: Stage::Owner,
        run: |c, i| {
            let extra = (0..64)
                .rev()
                .map(|b| 1u64 << b)
                .find(|m| i.features & m == 0)
                .unwrap_or(0);
            c.send(
                code::SET_FEATURES,
                need(i),
                &(i.features | extra).to_le_bytes(),
                &[],
            )?;
            Ok(expect_ack(i))
        },
    },
    Case {
        name: "set-features-short",
        code: code::SET_FEATURES,
        what: "SET_FEATURES with a 4-byte payload",
        stage: Stage::Owner,
        run: |c, i| {
            c.send(code::SET_FEATURES, need(i), &[0; 4], &[])?;
            Ok(expect_ack(i))
        },
    },
    Case {
        name: "protocol-features-unoffered",
        code: code::SET_PROTOCOL_FEATURES,
        what: "SET_PROTOCOL_FEATURES with bit 63 (never offered) and NEED_REPLY",
        stage: Stage::Protocol,
        run: |c, i| {
            let v = i.protocol | (1 << 63);
            c.send(code::SET_PROTOCOL_FEATURES, need(i), &v.to_le_bytes(), &[])?;
            Ok(expect_ack(i))
        },
    },
    Case {
        name: "mem-table-no-fd",
        code: code::SET_MEM_TABLE,
        what: "SET_MEM_TABLE with 1 region and no fd",
        stage: Stage::Owner,
        run: |c, i| {
            c.send(code::SET_MEM_TABLE, need(i), &mem_table(0, RAM, 0), &[])?;
            Ok(expect_ack(i))
        },
    },
    Case {
        name: "mem-table-fd-count",
        code: code::SET_MEM_TABLE,
        what: "SET_MEM_TABLE with 2 regions and 1 fd",
        stage: Stage::Owner,
        run: |c, i| {
            let mem = memfd::create("vhost-probe-check", RAM)?;
            let mut p = mem_table(0, RAM / 2, 0);
            p[0] = 2;
            for v in [RAM / 2, RAM / 2, UADDR + RAM / 2, RAM / 2] {
                p.extend_from_slice(&v.to_le_bytes());
            }
            c.send(code::SET_MEM_TABLE, need(i), &p, &[mem.as_fd()])?;
            c.keep.push(mem);
            Ok(expect_ack(i))
        },
    },
    Case {
        name: "mem-table-bad-region",
        code: code::SET_MEM_TABLE,
        what: "SET_MEM_TABLE with a region of size 2^63 at guest address 2^64 - 4096",
        stage: Stage::Owner,
        run: |c, i| {
            let mem = memfd::create("vhost-probe-check", RAM)?;
            let p = mem_table(u64::MAX - 4095, 1 << 63, 0);
            c.send(code::SET_MEM_TABLE, need(i), &p, &[mem.as_fd()])?;
            c.keep.push(mem);
            Ok(expect_ack(i))
        },
    },
    Case {
        name: "mem-table-beyond-fd",
        code: code::SET_MEM_TABLE,
        what: "SET_MEM_TABLE with a 1 MiB region at offset 1 GiB of a 1 MiB memfd",
        stage: Stage::Owner,
        run: |c, i| {
            let mem = memfd::create("vhost-probe-check", RAM)?;
            let p = mem_table(0, RAM, 1 << 30);
            c.send(code::SET_MEM_TABLE, need(i), &p, &[mem.as_fd()])?;
            c.keep.push(mem);
            Ok(expect_ack(i))
        },
    },
    Case {
        name: "vring-addr-outside-memory",
        code: code::SET_VRING_ADDR,
        what: "SET_VRING_ADDR for ring 0 with rings outside guest memory",
        stage: Stage::Ring,
        run: |c, i| {
            let far = UADDR + (64 << 30);
            c.send(
                code::SET_VRING_ADDR,
                need(i),
                &vring_addr(0, far, far + 0x2000, far + 0x1000),
                &[],
            )?;
            Ok(expect_ack(i))
        },
    },
    Case {
        name: "kick-regular-file",
        code: code::SET_VRING_KICK,
        what: "SET_VRING_KICK for a configured ring 0 with a regular file, then SET_VRING_ENABLE(1)",
        stage: Stage::Ring,
        run: |c, i| {
            let f = regular_file()?;
            c.send(
                code::SET_VRING_KICK,
                need(i),
                &0u64.to_le_bytes(),
                &[f.as_fd()],
            )?;
            c.send(code::SET_VRING_ENABLE, V1, &vring_state(0, 1), &[])?;
            c.keep.push(f.into());
            Ok(expect_ack(i))
        },
    },
    Case {
        name: "kick-no-fd",
        code: code::SET_VRING_KICK,
        what: "SET_VRING_KICK for ring 0 without fd and without the nofd bit",
        stage: Stage::Ring,
        run: |c, i| {
            c.send(code::SET_VRING_KICK, need(i), &0u64.to_le_bytes(), &[])?;
            Ok(expect_ack(i))
        },
    },
    Case {
        name: "kick-two-fds",
        code: code::SET_VRING_KICK,
        what: "SET_VRING_KICK for ring 0 with 2 fds",
        stage: Stage::Ring,
        run: |c, i| {
            let (a, b) = (EventFd::new(true)?, EventFd::new(true)?);
            c.send(
                code::SET_VRING_KICK,
                need(i),
                &0u64.to_le_bytes(),
                &[a.write_fd(), b.write_fd()],
            )?;
            Ok(expect_ack(i))
        },
    },
    Case {
        name: "inflight-huge",
        code: code::GET_INFLIGHT_FD,
        what: "GET_INFLIGHT_FD for 65535 queues of 32768 entries (only with INFLIGHT_SHMFD offered)",
        stage: Stage::Owner,
        run: |c, i| {
            // libvhost-user (qemu-storage-daemon) answers it without offering
            // INFLIGHT_SHMFD by allocating and zeroing the whole region (about 68 GB of
            // shared memory here): the machine's OOM killer ends it. Not sent then.
            if i.offered_protocol & P_INFLIGHT_SHMFD == 0 {
                return Ok(Expect::Skip("INFLIGHT_SHMFD not offered"));
            }
            let mut p = vec![0u8; 16];
            p.extend_from_slice(&0xffffu16.to_le_bytes());
            p.extend_from_slice(&0x8000u16.to_le_bytes());
            p.extend_from_slice(&[0; 4]);
            c.send(code::GET_INFLIGHT_FD, V1, &p, &[])?;
            Ok(Expect::Answer)
        },
    },
    Case {
        name: "reset-owner",
        code: code::RESET_OWNER,
        what: "RESET_OWNER (deprecated)",
        stage: Stage::Owner,
        run: |c, i| {
            c.send(code::RESET_OWNER, need(i), &[], &[])?;
            Ok(expect_ack(i))
        },
    },
    Case {
        name: "half-header",
        code: code::GET_FEATURES,
        what: "6 bytes of a GET_FEATURES header, then silence",
        stage: Stage::Fresh,
        run: |c, _| {
            c.raw(&header(code::GET_FEATURES, V1, 0)[..6], &[])?;
            Ok(Expect::Half)
        },
    },
    Case {
        name: "half-payload",
        code: code::SET_FEATURES,
        what: "SET_FEATURES header and 4 of its 8 payload bytes, then silence",
        stage: Stage::Owner,
        run: |c, _| {
            let mut m = header(code::SET_FEATURES, V1, 8).to_vec();
            m.extend_from_slice(&[0; 4]);
            c.raw(&m, &[])?;
            Ok(Expect::Half)
        },
    },
];

/// The options of a run.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// The back-end's socket.
    pub socket: PathBuf,
    /// The back-end's process, for liveness and fd counts.
    pub pid: Option<u32>,
    /// How long to wait for each answer.
    pub timeout: Duration,
    /// Only these cases (all when empty).
    pub only: Vec<String>,
    /// Not these cases.
    pub skip: Vec<String>,
}

/// What one case found.
#[derive(Clone, Debug)]
pub struct CaseResult {
    /// The case's name.
    pub name: &'static str,
    /// What it sent.
    pub what: &'static str,
    /// The back-end's answer to the case.
    pub answer: Answer,
    /// Whether the same connection still answered a GET_FEATURES afterwards (None for
    /// half messages, whose connection is not probed).
    pub kept: Option<bool>,
    /// Whether a new connection completed GET_FEATURES afterwards.
    pub survived: bool,
    /// With `--pid`: whether the process is alive.
    pub alive: Option<bool>,
    /// With `--pid`: its open fds after the case (once settled).
    pub fds: Option<usize>,
    /// With `--pid`: whether that is more than before this case (a leak of the case;
    /// a later case may close it again).
    pub fd_growth: bool,
}

impl CaseResult {
    /// Survived, alive (if known) and no fd growth.
    pub fn ok(&self) -> bool {
        self.survived && self.alive != Some(false) && !self.fd_growth
    }
}

/// A whole run.
#[derive(Clone, Debug)]
pub struct CheckReport {
    /// The socket.
    pub socket: PathBuf,
    /// The pid given.
    pub pid: Option<u32>,
    /// Open fds before the battery.
    pub baseline_fds: Option<usize>,
    /// One result per case run.
    pub cases: Vec<CaseResult>,
    /// How long the run took.
    pub seconds: f64,
}

impl CheckReport {
    /// Whether every case survived.
    pub fn ok(&self) -> bool {
        self.cases.iter().all(CaseResult::ok)
    }

    /// A case's result by name.
    pub fn case(&self, name: &str) -> Option<&CaseResult> {
        self.cases.iter().find(|c| c.name == name)
    }

    /// The table.
    pub fn text(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "== vhost-probe check: {} ==", self.socket.display());
        let _ = writeln!(
            o,
            "{:<28} {:<36} {:<6} {:<9} {:<6} fds",
            "case", "answer", "kept", "survived", "alive"
        );
        let yn = |v: bool| if v { "yes" } else { "NO" };
        for c in &self.cases {
            let fds = match (c.fds, self.baseline_fds) {
                (Some(n), Some(_)) if c.fd_growth => format!("{n} (grew)"),
                (Some(n), _) => n.to_string(),
                _ => "-".into(),
            };
            let _ = writeln!(
                o,
                "{:<28} {:<36} {:<6} {:<9} {:<6} {}",
                c.name,
                c.answer.text(),
                c.kept.map_or("-", yn),
                yn(c.survived),
                c.alive.map_or("-", yn),
                fds
            );
        }
        let bad = self.cases.iter().filter(|c| !c.ok()).count();
        let _ = writeln!(
            o,
            "{} cases, {} ok, {bad} failed (not survived, died or fds grew), baseline fds {}, {:.1} s",
            self.cases.len(),
            self.cases.len() - bad,
            self.baseline_fds
                .map_or_else(|| "-".into(), |b| b.to_string()),
            self.seconds
        );
        o
    }

    /// The JSON object: one case object a line in `"cases"`.
    pub fn json(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "{{\"socket\": {}, \"pid\": {}, \"baseline_fds\": {}, \"seconds\": {:.3}, \"ok\": {}, \"cases\": [",
            json_str(&self.socket.display().to_string()),
            self.pid.map_or_else(|| "null".into(), |p| p.to_string()),
            self.baseline_fds
                .map_or_else(|| "null".into(), |b| b.to_string()),
            self.seconds,
            self.ok()
        );
        let opt_bool = |v: Option<bool>| v.map_or_else(|| "null".into(), |b| b.to_string());
        for (i, c) in self.cases.iter().enumerate() {
            let _ = writeln!(
                o,
                "{{\"name\": {}, \"what\": {}, \"answer\": {}, \"answer_kind\": \"{}\", \"kept\": {}, \"survived\": {}, \"alive\": {}, \"fds\": {}, \"fd_growth\": {}}}{}",
                json_str(c.name),
                json_str(c.what),
                json_str(&c.answer.text()),
                c.answer.kind(),
                opt_bool(c.kept),
                c.survived,
                opt_bool(c.alive),
                c.fds.map_or_else(|| "null".into(), |n| n.to_string()),
                c.fd_growth,
                if i + 1 < self.cases.len() { "," } else { "" }
            );
        }
        o.push_str("]}\n");
        o
    }
}

/// Whether process `pid` exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|st| st != "Z" && st != "X"),
        Err(_) => false,
    }
}

/// The number of open fds of `pid`.
pub fn fd_count(pid: u32) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count())
}

/// Waits up to 2 s for `pid`'s fd count to be at most `limit` (a back-end closes a
/// connection's fds after it sees the close); the last count.
fn settled_fds(pid: u32, limit: Option<usize>) -> Option<usize> {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut last = fd_count(pid);
    let mut stable_since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(25));
        let n = fd_count(pid);
        match (n, limit) {
            (Some(n), Some(l)) if n <= l => return Some(n),
            (None, _) => return None,
            _ => {}
        }
        if n != last {
            last = n;
            stable_since = Instant::now();
        } else if limit.is_none() && stable_since.elapsed() >= Duration::from_millis(200) {
            return n;
        }
        if Instant::now() >= deadline {
            return n;
        }
    }
}

/// Whether a new connection completes GET_FEATURES.
fn survives(socket: &Path, timeout: Duration) -> bool {
    let Ok(mut c) = Conn::connect(socket, timeout) else {
        return false;
    };
    c.timeout = timeout.max(Duration::from_secs(2));
    c.get_u64(code::GET_FEATURES).is_ok()
}

/// The message sent last was `code`: how its answer `m` reads.
fn classify(m: &Msg, sent: u32) -> Answer {
    let own_reply = matches!(sent, 1 | 11 | 15 | 17 | 24 | 31 | 36 | 40);
    if m.code == sent && m.flags & REPLY != 0 {
        if !own_reply && m.payload.len() == 8 {
            return match m.u64() {
                Some(0) => Answer::Ack,
                Some(v) => Answer::Nack(v),
                None => Answer::Other("short ack".into()),
            };
        }
        return Answer::Reply {
            flags: m.flags,
            size: m.payload.len() as u32,
            fds: m.fds,
        };
    }
    Answer::Other(format!(
        "message {} flags {:#x} size {}",
        m.code,
        m.flags,
        m.payload.len()
    ))
}

/// Runs one case on a fresh connection: its answer and whether the connection was kept.
fn run_case(case: &Case, socket: &Path, timeout: Duration) -> (Answer, Option<bool>) {
    let mut c = match Conn::connect(socket, timeout) {
        Ok(c) => c,
        Err(e) => return (Answer::SetupFailed(format!("connect: {e}")), None),
    };
    let info = match c.prefix(case.stage) {
        Ok(i) => i,
        Err(Setup(e)) => return (Answer::SetupFailed(e), None),
    };
    let expect = match (case.run)(&mut c, &info) {
        Ok(e) => e,
        // The back-end may have closed already (a send to a closed socket).
        Err(Setup(e)) => {
            return match c.recv() {
                Ok(m) => (classify(&m, case.code), Some(false)),
                Err(Gone::Closed) => (Answer::Closed, Some(false)),
                _ => (Answer::SetupFailed(e), None),
            };
        }
    };
    let sent = case.code;
    let mut answer = Answer::Nothing;
    match expect {
        Expect::Skip(why) => return (Answer::Skipped(why), None),
        Expect::Half => {
            return match c.recv() {
                Ok(m) => (classify(&m, sent), None),
                Err(Gone::Closed) => (Answer::Closed, None),
                Err(Gone::Timeout) => (Answer::Nothing, None),
                Err(Gone::Error(e)) => (Answer::Other(e), None),
            };
        }
        Expect::Answer => match c.recv() {
            Ok(m) => answer = classify(&m, sent),
            Err(Gone::Closed) => return (Answer::Closed, Some(false)),
            Err(Gone::Timeout) => answer = Answer::Nothing,
            Err(Gone::Error(e)) => return (Answer::Other(e), None),
        },
        Expect::Silence => {}
    }
    // The same-connection probe.
    if c.send(code::GET_FEATURES, V1, &[], &[]).is_err() {
        return (
            if answer == Answer::Nothing {
                Answer::Closed
            } else {
                answer
            },
            Some(false),
        );
    }
    loop {
        match c.recv() {
            Ok(m)
                if m.code == code::GET_FEATURES && m.flags & REPLY != 0 && m.payload.len() == 8 =>
            {
                return (answer, Some(true));
            }
            Ok(m) => {
                // An answer to the case that came late (or a second one).
                if answer == Answer::Nothing {
                    answer = classify(&m, sent);
                } else {
                    return (answer, Some(false));
                }
            }
            Err(Gone::Closed) => {
                if answer == Answer::Nothing && expect == Expect::Silence {
                    answer = Answer::Closed;
                }
                return (answer, Some(false));
            }
            Err(_) => return (answer, Some(false)),
        }
    }
}

/// Runs the battery.
pub fn run(o: &CheckOptions) -> Result<CheckReport, String> {
    let start = Instant::now();
    for n in o.only.iter().chain(&o.skip) {
        if !CASES.iter().any(|c| c.name == n) {
            return Err(format!("no case named {n:?} (see --list)"));
        }
    }
    // A warm-up connection: the back-end must answer at all.
    if !survives(&o.socket, o.timeout) {
        return Err(format!(
            "{}: no GET_FEATURES answer on a new connection before the battery",
            o.socket.display()
        ));
    }
    let baseline = o.pid.and_then(|p| settled_fds(p, None));
    let mut cases = Vec::new();
    let mut before = baseline;
    for case in CASES {
        if (!o.only.is_empty() && !o.only.iter().any(|n| n == case.name))
            || o.skip.iter().any(|n| n == case.name)
        {
            continue;
        }
        log::info!("check: {}", case.name);
        let (answer, kept) = run_case(case, &o.socket, o.timeout);
        let survived = survives(&o.socket, o.timeout);
        let alive = o.pid.map(process_alive);
        let fds = o.pid.and_then(|p| settled_fds(p, before));
        let fd_growth = matches!((fds, before), (Some(n), Some(b)) if n > b);
        if fds.is_some() {
            before = fds;
        }
        cases.push(CaseResult {
            name: case.name,
            what: case.what,
            answer,
            kept,
            survived,
            alive,
            fds,
            fd_growth,
        });
    }
    Ok(CheckReport {
        socket: o.socket.clone(),
        pid: o.pid,
        baseline_fds: baseline,
        cases,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The case list, one `name  what` a line.
pub fn list() -> String {
    let mut o = String::new();
    for c in CASES {
        let _ = writeln!(o, "{:<28} {}", c.name, c.what);
    }
    o
}
