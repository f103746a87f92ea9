//! Replays the recorded conversations with real vhost-user peers
//! (`tests/data/transcripts/*.txt`, format in its README) through our wire codec.
//!
//! - Every message a real peer sent is decoded by the decoder our side would use: the
//!   requests of DPDK virtio-user (a front-end) by [`FrontendRequestDecoder`], the replies of
//!   qemu-storage-daemon and DPDK net_vhost (back-ends) by
//!   [`FrontendReplyDecoder`](vhost_proto::wire::FrontendReplyDecoder), each
//!   reply paired with the request we sent before it. Fds are integer handles, as many as
//!   the transcript recorded.
//! - Each peer stream is fed one message per read, in one read, byte by byte and in random
//!   splits; all must give the same typed messages, and those must match the recorder's
//!   independent annotation of each line (feature words, queue numbers, config bytes, vring
//!   bases, memory regions, ...), plus explicit checks of the key values.
//! - The requests *we* sent deliberately malformed (`*-malformed-*.txt`, after
//!   `# --- the case ---`) are not peer output: they are skipped, but what the peer did in
//!   response is asserted, as documentation of its behaviour. The few peer answers to them
//!   that our codec refuses are asserted to be refused the documented way.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers over a fixed, checked-in data set: a panic names the bad line"
)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::{Path, PathBuf};

use vhost_proto::wire::{
    ConfigFlags, DecodeContext, DecodeError, Decoder, DeviceStatus, FrontendReply, FrontendReq,
    FrontendRequest, FrontendRequestDecoder, HeaderFlags, Input, PayloadError, ProtocolFeatures,
    Received, VirtioFeatures, VringAddrFlags, VringBase, WireMessage,
};

// ---------------------------------------------------------------------------------------
// Transcript parsing
// ---------------------------------------------------------------------------------------

/// Who sent a message line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    /// `>`: our recorder.
    Ours,
    /// `<`: the real peer.
    Peer,
}

/// One `>`/`<` line.
#[derive(Clone, Debug)]
struct Line {
    dir: Dir,
    fds: usize,
    bytes: Vec<u8>,
    annotation: String,
    /// Sent by us inside the malformed case (between `# --- the case ---` and `# probe:`).
    in_case: bool,
    /// After the `# probe:` line.
    in_probe: bool,
    /// Which connection of the transcript (`*-reconnect.txt` has two).
    conn: usize,
}

#[derive(Debug)]
struct Transcript {
    name: String,
    lines: Vec<Line>,
    /// `!` lines (timeouts, EOF, resets) after the case section began, in order.
    events_after_case: Vec<String>,
    /// `# key: value` comments.
    comments: Vec<String>,
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/transcripts")
}

fn hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex {s:?}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn parse(name: &str, text: &str) -> Transcript {
    let mut t = Transcript {
        name: name.to_owned(),
        lines: Vec::new(),
        events_after_case: Vec::new(),
        comments: Vec::new(),
    };
    let (mut in_case, mut in_probe, mut conn) = (false, false, 0);
    for raw in text.lines() {
        if let Some(c) = raw.strip_prefix("# ") {
            if c.starts_with("second connection") {
                conn += 1;
            } else if c == "--- the case ---" {
                in_case = true;
            } else if c.starts_with("probe:") {
                in_case = false;
                in_probe = true;
            }
            t.comments.push(c.to_owned());
            continue;
        }
        if let Some(e) = raw.strip_prefix("! ") {
            if in_case || in_probe {
                t.events_after_case.push(e.to_owned());
            }
            continue;
        }
        let dir = match raw.get(..2) {
            Some("> ") => Dir::Ours,
            Some("< ") => Dir::Peer,
            _ if raw.trim().is_empty() => continue,
            _ => panic!("{name}: unparsable line {raw:?}"),
        };
        let (wire, annotation) = raw[2..].split_once(" | ").unwrap();
        let mut words = wire.split_whitespace();
        let fds = words
            .next()
            .and_then(|w| w.strip_prefix("fds="))
            .unwrap()
            .parse()
            .unwrap();
        let bytes: Vec<u8> = words.flat_map(hex).collect();
        t.lines.push(Line {
            dir,
            fds,
            bytes,
            annotation: annotation.to_owned(),
            in_case: in_case && dir == Dir::Ours,
            in_probe,
            conn,
        });
    }
    t
}

fn all_transcripts() -> Vec<Transcript> {
    let mut names: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".txt"))
        .collect();
    names.sort();
    names
        .iter()
        .map(|n| parse(n, &std::fs::read_to_string(dir().join(n)).unwrap()))
        .collect()
}

fn transcript(name: &str) -> Transcript {
    parse(
        name,
        &std::fs::read_to_string(dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}")),
    )
}

/// The recorder's annotation of a line: its name and `key=value` words, and the
/// bracketed memory regions (`[gpa=.. size=.. uaddr=.. off=..]`).
#[derive(Debug)]
struct Ann {
    name: String,
    kv: BTreeMap<String, String>,
    regions: Vec<BTreeMap<String, String>>,
}

impl Ann {
    fn parse(s: &str) -> Self {
        let name = s.split_whitespace().next().unwrap().to_owned();
        let mut outside = String::new();
        let mut regions = Vec::new();
        let mut rest = s;
        // Bracketed groups with `=` are regions; without, feature names (ignored).
        while let Some(open) = rest.find('[') {
            let close = open + rest[open..].find(']').unwrap();
            let group = &rest[open + 1..close];
            if group.contains('=') {
                regions.push(kv_words(group));
            }
            outside.push_str(&rest[..open]);
            outside.push(' ');
            rest = &rest[close + 1..];
        }
        outside.push_str(rest);
        Ann {
            name,
            kv: kv_words(&outside),
            regions,
        }
    }

    fn get(&self, key: &str) -> Option<u64> {
        self.kv.get(key).map(|v| num(v))
    }

    fn num(&self, key: &str) -> u64 {
        self.get(key)
            .unwrap_or_else(|| panic!("annotation {self:?} has no {key}"))
    }

    fn bool(&self, key: &str) -> bool {
        match self.kv.get(key).map(String::as_str) {
            Some("True") => true,
            Some("False") => false,
            v => panic!("annotation {self:?}: {key} = {v:?}"),
        }
    }
}

/// `key=value` words; a repeated key is stored as `key#2` (SET_VRING_ADDR has the header's
/// `flags=` and then the ring's).
fn kv_words(s: &str) -> BTreeMap<String, String> {
    let mut kv = BTreeMap::new();
    for (k, v) in s.split_whitespace().filter_map(|w| w.split_once('=')) {
        let key = if kv.contains_key(k) {
            format!("{k}#2")
        } else {
            k.to_owned()
        };
        kv.insert(key, v.to_owned());
    }
    kv
}

fn num(v: &str) -> u64 {
    match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).unwrap(),
        None => v.parse().unwrap(),
    }
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// The header's request code of a complete message.
fn code_of(bytes: &[u8]) -> u32 {
    le32(bytes, 0)
}

/// The header's flags word.
fn flags_of(bytes: &[u8]) -> u32 {
    le32(bytes, 4)
}

// ---------------------------------------------------------------------------------------
// Roles and peer streams
// ---------------------------------------------------------------------------------------

/// Our role in a transcript.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// We were the front-end (qsd, DPDK net_vhost): the peer sent replies.
    Frontend,
    /// We were the back-end (DPDK virtio-user): the peer sent requests.
    Backend,
}

fn role(t: &Transcript) -> Role {
    if t.name.starts_with("dpdk-virtio-user-") {
        Role::Backend
    } else {
        assert!(
            t.name.starts_with("qsd-") || t.name.starts_with("dpdk-vhost-"),
            "{}: unknown peer",
            t.name
        );
        Role::Frontend
    }
}

/// One peer message with what it answers (front-end role) and its fd handles.
#[derive(Clone, Debug)]
struct PeerMsg {
    /// Index into `Transcript::lines`.
    line: usize,
    /// The connection it was sent on.
    conn: usize,
    bytes: Vec<u8>,
    fds: Vec<i32>,
    /// Front-end role: the code of the request we sent last (the one answered).
    answers: Option<u32>,
    /// Front-end role: whether that request is one of our deliberately malformed ones.
    answers_case: bool,
    /// The decode context in effect from this message on (as the session would set it).
    ctx: DecodeContext,
}

/// The peer's messages in order, with fd handles numbered through the transcript, each
/// reply paired with our last complete request, and the context negotiation implies.
fn peer_messages(t: &Transcript) -> Vec<PeerMsg> {
    let mut out = Vec::new();
    let mut next_fd = 100;
    let mut ctx = DecodeContext::default();
    // Our requests, reassembled (the partial-header case sends one header in two lines).
    let mut ours: Vec<u8> = Vec::new();
    let mut last_request: Option<(u32, bool)> = None;
    for (i, l) in t.lines.iter().enumerate() {
        if i > 0 && l.conn != t.lines[i - 1].conn {
            // A new connection starts from scratch.
            ctx = DecodeContext::default();
            last_request = None;
        }
        let fds: Vec<i32> = (next_fd..next_fd + l.fds as i32).collect();
        next_fd += l.fds as i32;
        match (role(t), l.dir) {
            (Role::Frontend, Dir::Ours) => {
                ours.extend_from_slice(&l.bytes);
                if ours.len() >= 12 {
                    last_request = Some((code_of(&ours), l.in_case));
                    // The session applies what it negotiated (spec: SET_PROTOCOL_FEATURES).
                    if code_of(&ours) == FrontendReq::SetProtocolFeatures.raw() && !l.in_case {
                        ctx = DecodeContext::from_protocol_features(
                            ProtocolFeatures::from_bits_retain(le64(&ours, 12)),
                        );
                    }
                    ours.clear();
                }
            }
            (Role::Frontend, Dir::Peer) => {
                let (code, case) = last_request.unwrap();
                out.push(PeerMsg {
                    line: i,
                    conn: l.conn,
                    bytes: l.bytes.clone(),
                    fds,
                    answers: Some(code),
                    answers_case: case,
                    ctx,
                });
            }
            (Role::Backend, Dir::Peer) => {
                out.push(PeerMsg {
                    line: i,
                    conn: l.conn,
                    bytes: l.bytes.clone(),
                    fds,
                    answers: None,
                    answers_case: false,
                    ctx,
                });
                if code_of(&l.bytes) == FrontendReq::SetProtocolFeatures.raw() {
                    ctx = DecodeContext::from_protocol_features(
                        ProtocolFeatures::from_bits_retain(le64(&l.bytes, 12)),
                    );
                }
            }
            (Role::Backend, Dir::Ours) => {}
        }
    }
    out
}

/// Peer answers to our deliberately malformed requests that our codec refuses, by case
/// (the file name after `-malformed-`), with the refusal. Every other peer message must
/// decode.
fn refused_answer(case: &str, msg: &PeerMsg, err: &DecodeError) -> bool {
    match case {
        // Reserved bit 8 echoed (0x105): still fatal, we never send reserved bits.
        "reserved-flag" => matches!(err, DecodeError::ReservedFlags { flags: 0x105, .. }),
        // A reply to request 99, which our front-end never sends.
        "unknown-code-need-reply" => matches!(err, DecodeError::UnknownReply { code: 99 }),
        // libvhost-user echoes our inconsistent header (cfg size 60) over 8 data bytes.
        "get-config-size-mismatch" => {
            msg.answers == Some(FrontendReq::GetConfig.raw())
                && matches!(
                    err,
                    DecodeError::InvalidPayload {
                        reason: PayloadError::ConfigSizeMismatch {
                            declared: 60,
                            actual: 8
                        },
                        ..
                    }
                )
                && !err.is_fatal()
        }
        _ => false,
    }
}

fn case_name(t: &Transcript) -> Option<&str> {
    t.name
        .split_once("-malformed-")
        .map(|(_, c)| c.trim_end_matches(".txt"))
}

// ---------------------------------------------------------------------------------------
// Feeding streams
// ---------------------------------------------------------------------------------------

/// Tiny deterministic PRNG for the random splits.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[derive(Clone, Copy, Debug)]
enum Split {
    /// One read per message (the reference).
    PerMessage,
    /// Everything in as few reads as fds allow.
    Whole,
    /// One byte per read.
    ByteByByte,
    /// Random cut points, seeded.
    Random(u64),
}

/// Cuts the concatenated stream into reads as Linux delivers them: a read ends right after
/// a message carrying fds (fd-less messages before it may share the read), and the read in
/// which that message begins carries its fds.
fn chunks(msgs: &[PeerMsg], split: Split) -> Vec<(Vec<u8>, Vec<i32>)> {
    let stream: Vec<u8> = msgs.iter().flat_map(|m| m.bytes.clone()).collect();
    let mut starts = Vec::new();
    let mut forced = vec![false; stream.len() + 1];
    let mut at = 0;
    for m in msgs {
        starts.push(at);
        if matches!(split, Split::PerMessage) {
            forced[at] = true;
        }
        at += m.bytes.len();
        // Linux ends a read right after a segment that carries fds (it may merge fd-less
        // segments before it): the fds belong to the last header that starts in a read.
        if !m.fds.is_empty() {
            forced[at] = true;
        }
    }
    let mut cuts: Vec<usize> = (1..stream.len()).filter(|&i| forced[i]).collect();
    match split {
        Split::PerMessage | Split::Whole => {}
        Split::ByteByByte => cuts = (1..stream.len()).collect(),
        Split::Random(seed) => {
            let mut rng = XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let n = rng.below(stream.len() / 4 + 2);
            cuts.extend((0..n).map(|_| 1 + rng.below(stream.len().max(2) - 1)));
        }
    }
    cuts.push(0);
    cuts.push(stream.len());
    cuts.sort_unstable();
    cuts.dedup();
    cuts.windows(2)
        .map(|w| {
            let fds = msgs
                .iter()
                .zip(&starts)
                .filter(|(_, s)| (w[0]..w[1]).contains(*s))
                .flat_map(|(m, _)| m.fds.clone())
                .collect();
            (stream[w[0]..w[1]].to_vec(), fds)
        })
        .collect()
}

/// Decodes `msgs` split as asked; the context is updated after each message as the session
/// would. Returns one result per message (stopping at a fatal error).
fn decode<M>(msgs: &[PeerMsg], split: Split) -> Vec<Result<Received<M>, DecodeError>>
where
    M: WireMessage<Handle = i32>,
{
    assert!(
        msgs.windows(2).all(|w| w[0].conn == w[1].conn),
        "one connection per stream"
    );
    let mut decoder = Decoder::<M>::new(msgs.first().map(|m| m.ctx).unwrap_or_default());
    let mut out = Vec::new();
    for (bytes, fds) in chunks(msgs, split) {
        let mut input = Input::new(&bytes, fds);
        loop {
            match decoder.decode(&mut input) {
                Ok(None) => break,
                Ok(Some(r)) => out.push(Ok(r)),
                Err(e) => {
                    let fatal = e.is_fatal();
                    out.push(Err(e));
                    if fatal {
                        return out;
                    }
                }
            }
            if let Some(next) = msgs.get(out.len()) {
                decoder.set_context(next.ctx);
            }
        }
    }
    assert!(decoder.is_idle(), "stream ended mid-message");
    out
}

/// Decodes the stream every way; all splits must agree with one read per message.
/// Each connection is its own stream with a fresh decoder.
fn decode_all_splits<M>(name: &str, msgs: &[PeerMsg]) -> Vec<Result<Received<M>, DecodeError>>
where
    M: WireMessage<Handle = i32> + Debug + PartialEq,
    M::Code: Debug,
{
    let mut all = Vec::new();
    for conn in msgs.chunk_by(|a, b| a.conn == b.conn) {
        let reference = decode::<M>(conn, Split::PerMessage);
        let mut splits = vec![Split::Whole, Split::ByteByByte];
        splits.extend((0..48).map(Split::Random));
        for split in splits {
            let got = decode::<M>(conn, split);
            assert_eq!(
                got, reference,
                "{name}: {split:?} differs from one read per message"
            );
        }
        all.extend(reference);
    }
    all
}

// ---------------------------------------------------------------------------------------
// Expected values from the recorder's annotations
// ---------------------------------------------------------------------------------------

fn check_request(ann: &Ann, fds: &[i32], msg: &FrontendRequest<i32>) {
    use FrontendRequest as R;
    let n = ann.name.as_str();
    match (n, msg) {
        ("SET_OWNER", R::SetOwner)
        | ("GET_FEATURES", R::GetFeatures)
        | ("GET_PROTOCOL_FEATURES", R::GetProtocolFeatures)
        | ("GET_STATUS", R::GetStatus) => {}
        ("SET_FEATURES", R::SetFeatures { features }) => {
            assert_eq!(features.bits(), ann.num("u64"));
        }
        ("SET_PROTOCOL_FEATURES", R::SetProtocolFeatures { features }) => {
            assert_eq!(features.bits(), ann.num("u64"));
        }
        ("SET_STATUS", R::SetStatus { status }) => {
            assert_eq!(u64::from(status.bits()), ann.num("u64"));
        }
        ("SET_VRING_CALL", R::SetVringCall { index, fd })
        | ("SET_VRING_KICK", R::SetVringKick { index, fd }) => {
            assert_eq!(u64::from(*index), ann.num("index"));
            assert_eq!(fd.is_none(), ann.bool("nofd"));
            assert_eq!(fd.iter().copied().collect::<Vec<_>>(), fds);
        }
        ("SET_VRING_NUM", R::SetVringNum { index, num }) => {
            assert_eq!(u64::from(*index), ann.num("index"));
            assert_eq!(u64::from(*num), ann.num("num"));
        }
        ("SET_VRING_BASE", R::SetVringBase { index, base }) => {
            assert_eq!(u64::from(*index), ann.num("index"));
            assert_eq!(u64::from(base.raw()), ann.num("num"));
        }
        ("GET_VRING_BASE", R::GetVringBase { index }) => {
            assert_eq!(u64::from(*index), ann.num("index"));
        }
        ("SET_VRING_ENABLE", R::SetVringEnable { index, enable }) => {
            assert_eq!(u64::from(*index), ann.num("index"));
            assert_eq!(u64::from(*enable), ann.num("num"));
        }
        ("SET_VRING_ADDR", R::SetVringAddr { addr }) => {
            // The annotation has two `flags=`: the header's first, then the ring's.
            assert_eq!(u64::from(addr.index), ann.num("index"));
            assert_eq!(u64::from(addr.flags.bits()), ann.num("flags#2"));
            assert_eq!(addr.desc, ann.num("desc"));
            assert_eq!(addr.used, ann.num("used"));
            assert_eq!(addr.avail, ann.num("avail"));
            assert_eq!(addr.log, ann.num("log"));
        }
        ("SET_MEM_TABLE", R::SetMemTable { regions }) => {
            assert_eq!(regions.len() as u64, ann.num("regions"));
            assert_eq!(regions.len(), ann.regions.len());
            for ((r, a), fd) in regions.iter().zip(&ann.regions).zip(fds) {
                assert_eq!(r.region.guest_phys_addr, num(&a["gpa"]));
                assert_eq!(r.region.memory_size, num(&a["size"]));
                assert_eq!(r.region.user_addr, num(&a["uaddr"]));
                assert_eq!(r.region.mmap_offset, num(&a["off"]));
                assert_eq!(r.region.xen, None);
                assert_eq!(r.fd, *fd);
            }
        }
        _ => panic!("no expectation for a peer request annotated {ann:?}, decoded {msg:?}"),
    }
}

fn check_reply(ann: &Ann, answers: u32, msg: &FrontendReply<i32>) {
    match (FrontendReq::try_from(answers).unwrap(), msg) {
        (
            FrontendReq::GetConfig,
            FrontendReply::Config {
                offset,
                flags,
                data,
            },
        ) => {
            assert_eq!(u64::from(*offset), ann.num("offset"));
            assert_eq!(u64::from(u32::from(*flags)), ann.num("cfg_flags"));
            assert_eq!(data.len() as u64, ann.num("cfg_size"));
            assert_eq!(*data, hex(&ann.kv["data"]));
        }
        (FrontendReq::GetVringBase, FrontendReply::VringBase { index, base }) => {
            assert_eq!(u64::from(*index), ann.num("index"));
            assert_eq!(u64::from(base.raw()), ann.num("num"));
        }
        (_, FrontendReply::U64 { value }) => {
            // The recorder annotates an ack to SET_MEM_TABLE as a table (`regions=<u64>`).
            let want = ann.get("u64").or_else(|| ann.get("regions"));
            assert_eq!(Some(*value), want, "annotation {ann:?}");
        }
        (req, _) => panic!("no expectation for a reply to {req:?} annotated {ann:?}: {msg:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// The replay
// ---------------------------------------------------------------------------------------

#[test]
fn every_transcript_is_present_and_parses() {
    let all = all_transcripts();
    let count = |p: &str| all.iter().filter(|t| t.name.starts_with(p)).count();
    assert_eq!(count("qsd-7.2-"), 26);
    assert_eq!(count("qsd-10.0-"), 26);
    assert_eq!(count("dpdk-virtio-user-"), 2);
    assert_eq!(count("dpdk-vhost-"), 24);
    assert_eq!(all.len(), 78);
    for t in &all {
        assert!(
            t.lines.iter().any(|l| l.dir == Dir::Peer),
            "{}: no peer message",
            t.name
        );
        for l in t.lines.iter().filter(|l| !l.in_case) {
            // Every line outside our malformed cases is one complete message.
            if l.bytes.len() >= 12 {
                assert_eq!(
                    l.bytes.len(),
                    12 + le32(&l.bytes, 8) as usize,
                    "{}: {:?}",
                    t.name,
                    l
                )
            } else {
                panic!("{}: short line {l:?}", t.name);
            }
        }
    }
}

/// Replays every transcript and returns how many peer messages decoded.
#[test]
fn every_peer_message_decodes_in_every_split() {
    let mut decoded = 0;
    let mut refused = 0;
    for t in all_transcripts() {
        let msgs = peer_messages(&t);
        match role(&t) {
            Role::Backend => {
                let out = decode_all_splits::<FrontendRequest<i32>>(&t.name, &msgs);
                assert_eq!(out.len(), msgs.len(), "{}", t.name);
                for (m, r) in msgs.iter().zip(out) {
                    let l = &t.lines[m.line];
                    let r = r.unwrap_or_else(|e| panic!("{}: {l:?}: {e}", t.name));
                    let ann = Ann::parse(&l.annotation);
                    assert_eq!(u64::from(r.flags.bits()), ann.num("flags"), "{}", t.name);
                    assert_eq!(r.code.raw(), code_of(&m.bytes));
                    check_request(&ann, &m.fds, &r.message);
                    decoded += 1;
                }
            }
            Role::Frontend => {
                // Answers to our malformed requests that we refuse are checked one by one;
                // everything else is one stream that must decode.
                let (good, bad): (Vec<PeerMsg>, Vec<PeerMsg>) = msgs.into_iter().partition(|m| {
                    !m.answers_case
                        || decode::<FrontendReply<i32>>(std::slice::from_ref(m), Split::Whole)
                            .iter()
                            .all(Result::is_ok)
                });
                for m in &bad {
                    let out = decode::<FrontendReply<i32>>(std::slice::from_ref(m), Split::Whole);
                    let e = out.last().unwrap().as_ref().unwrap_err();
                    let case = case_name(&t).unwrap();
                    assert!(
                        refused_answer(case, m, e),
                        "{}: refused an answer to our malformed {case}: {e}",
                        t.name
                    );
                    refused += 1;
                }
                let out = decode_all_splits::<FrontendReply<i32>>(&t.name, &good);
                assert_eq!(out.len(), good.len(), "{}", t.name);
                for (m, r) in good.iter().zip(out) {
                    let l = &t.lines[m.line];
                    let r = r.unwrap_or_else(|e| panic!("{}: {l:?}: {e}", t.name));
                    let ann = Ann::parse(&l.annotation);
                    // The reply answers the request we sent last.
                    assert_eq!(Some(r.code.raw()), m.answers, "{}: {l:?}", t.name);
                    // Decoded reply flags are 0x5 even where libvhost-user echoed NEED_REPLY.
                    assert_eq!(r.flags, HeaderFlags::reply());
                    assert!(matches!(flags_of(&m.bytes), 0x5 | 0xd), "{}: {l:?}", t.name);
                    check_reply(&ann, m.answers.unwrap(), &r.message);
                    decoded += 1;
                }
            }
        }
    }
    // 2 × 3 refused answers of qsd (0x105, reply to 99, GET_CONFIG echo) + 2 of DPDK;
    // every other peer message decoded.
    assert_eq!(refused, 8);
    let peer_lines = all_transcripts()
        .iter()
        .map(|t| t.lines.iter().filter(|l| l.dir == Dir::Peer).count())
        .sum::<usize>();
    assert_eq!(decoded + refused, peer_lines);
    eprintln!(
        "{decoded} peer messages decoded, {refused} answers to our malformed requests refused"
    );
}

// ---------------------------------------------------------------------------------------
// Key values, per peer
// ---------------------------------------------------------------------------------------

/// A decoded reply with the request it answers.
type AnsweredReply = (FrontendReq, Received<FrontendReply<i32>>);

fn replies(name: &str) -> Vec<AnsweredReply> {
    let t = transcript(name);
    let msgs = peer_messages(&t);
    let out = decode_all_splits::<FrontendReply<i32>>(name, &msgs);
    msgs.iter()
        .zip(out)
        .map(|(m, r)| {
            let r = r.unwrap();
            (FrontendReq::try_from(m.answers.unwrap()).unwrap(), r)
        })
        .collect()
}

fn u64_reply(replies: &[AnsweredReply], req: FrontendReq) -> Vec<u64> {
    replies
        .iter()
        .filter(|(q, _)| *q == req)
        .map(|(_, r)| match r.message {
            FrontendReply::U64 { value } => value,
            ref m => panic!("{req:?}: {m:?}"),
        })
        .collect()
}

#[test]
fn qsd_handshake_values() {
    for (ver, slots) in [("7.2", 32), ("10.0", 509)] {
        for file in ["handshake", "handshake-need-reply"] {
            let name = format!("qsd-{ver}-{file}.txt");
            let r = replies(&name);
            let feats = u64_reply(&r, FrontendReq::GetFeatures);
            assert_eq!(feats, [0x1_7500_7e46, 0x1_7500_7e46], "{name}");
            let f = VirtioFeatures::from_bits_retain(feats[0]);
            assert!(f.contains(
                VirtioFeatures::VERSION_1
                    | VirtioFeatures::PROTOCOL_FEATURES
                    | VirtioFeatures::EVENT_IDX
                    | VirtioFeatures::INDIRECT_DESC
                    | VirtioFeatures::NOTIFY_ON_EMPTY
                    | VirtioFeatures::LOG_ALL
            ));
            assert!(!f.intersects(
                VirtioFeatures::RING_PACKED
                    | VirtioFeatures::ANY_LAYOUT
                    | VirtioFeatures::ACCESS_PLATFORM
            ));
            let proto = u64_reply(&r, FrontendReq::GetProtocolFeatures);
            assert_eq!(proto, [0x8f2b]);
            let p = ProtocolFeatures::from_bits_retain(proto[0]);
            assert!(p.contains(ProtocolFeatures::REPLY_ACK | ProtocolFeatures::CONFIG));
            assert!(!p.intersects(
                ProtocolFeatures::INFLIGHT_SHMFD
                    | ProtocolFeatures::RESET_DEVICE
                    | ProtocolFeatures::STATUS
            ));
            assert_eq!(u64_reply(&r, FrontendReq::GetQueueNum), [2]);
            assert_eq!(u64_reply(&r, FrontendReq::GetMaxMemSlots), [slots]);
            let config: Vec<_> = r
                .iter()
                .filter(|(q, _)| *q == FrontendReq::GetConfig)
                .collect();
            assert_eq!(config.len(), 1);
            let FrontendReply::Config {
                offset,
                flags,
                data,
            } = &config[0].1.message
            else {
                panic!("{name}: {:?}", config[0]);
            };
            assert_eq!((*offset, *flags), (0, ConfigFlags::from(0)));
            check_blk_config(data);
            if file == "handshake-need-reply" {
                // Every request had NEED_REPLY: the acks of the set requests are 0.
                assert_eq!(u64_reply(&r, FrontendReq::SetProtocolFeatures), [0]);
                assert_eq!(u64_reply(&r, FrontendReq::SetOwner), [0]);
            } else {
                assert!(u64_reply(&r, FrontendReq::SetOwner).is_empty());
            }
        }
    }
}

/// The 60-byte virtio-blk config of the 64 MiB export (virtio spec 5.2.4 layout).
fn check_blk_config(c: &[u8]) {
    assert_eq!(c.len(), 60);
    assert_eq!(le64(c, 0), 131_072, "capacity in 512-byte sectors");
    assert_eq!(le32(c, 8), 0, "size_max");
    assert_eq!(le32(c, 12), 126, "seg_max");
    assert_eq!(&c[16..20], [0, 0, 0, 0], "geometry");
    assert_eq!(le32(c, 20), 512, "blk_size");
    assert_eq!(
        (c[24], c[25]),
        (0, 0),
        "physical_block_exp, alignment_offset"
    );
    assert_eq!(le16(c, 26), 1, "min_io_size");
    assert_eq!(le32(c, 28), 1, "opt_io_size");
    assert_eq!(c[32], 0, "wce");
    assert_eq!(le16(c, 34), 2, "num_queues");
    assert_eq!(le32(c, 36), 0x8000, "max_discard_sectors");
    assert_eq!(le32(c, 40), 1, "max_discard_seg");
    assert_eq!(le32(c, 44), 1, "discard_sector_alignment");
    assert_eq!(le32(c, 48), 0x8000, "max_write_zeroes_sectors");
    assert_eq!(le32(c, 52), 1, "max_write_zeroes_seg");
    assert_eq!(c[56], 0, "write_zeroes_may_unmap");
}

#[test]
fn qsd_echoes_need_reply_in_get_features_and_get_config_replies_only() {
    for ver in ["7.2", "10.0"] {
        let t = transcript(&format!("qsd-{ver}-handshake-need-reply.txt"));
        for m in peer_messages(&t) {
            let code = FrontendReq::try_from(m.answers.unwrap()).unwrap();
            let want = match code {
                FrontendReq::GetFeatures | FrontendReq::GetConfig => 0xd,
                _ => 0x5,
            };
            assert_eq!(flags_of(&m.bytes), want, "qsd {ver}: {code:?}");
        }
        // Without NEED_REPLY every reply is exactly 0x5.
        let t = transcript(&format!("qsd-{ver}-handshake.txt"));
        assert!(peer_messages(&t).iter().all(|m| flags_of(&m.bytes) == 0x5));
    }
}

#[test]
fn qsd_reconnect_is_a_fresh_session() {
    for ver in ["7.2", "10.0"] {
        let r = replies(&format!("qsd-{ver}-reconnect.txt"));
        assert!(u64_reply(&r, FrontendReq::GetFeatures).contains(&0x1_7500_7e46));
        assert_eq!(
            u64_reply(&r, FrontendReq::GetProtocolFeatures),
            [0x8f2b, 0x8f2b]
        );
    }
}

#[test]
fn dpdk_vhost_handshake_values() {
    for name in [
        "dpdk-vhost-handshake.txt",
        "dpdk-vhost-handshake-need-reply.txt",
    ] {
        let r = replies(name);
        for f in u64_reply(&r, FrontendReq::GetFeatures) {
            assert_eq!(f, 0xd_7c66_e7cb, "{name}");
            let f = VirtioFeatures::from_bits_retain(f);
            assert!(f.contains(
                VirtioFeatures::VERSION_1
                    | VirtioFeatures::PROTOCOL_FEATURES
                    | VirtioFeatures::RING_PACKED
                    | VirtioFeatures::IN_ORDER
            ));
        }
        let p = u64_reply(&r, FrontendReq::GetProtocolFeatures);
        assert_eq!(p, [0x1_0cbf], "{name}");
        let p = ProtocolFeatures::from_bits_retain(p[0]);
        assert!(p.contains(ProtocolFeatures::STATUS | ProtocolFeatures::REPLY_ACK));
        assert!(!p.intersects(ProtocolFeatures::CONFIG | ProtocolFeatures::CONFIGURE_MEM_SLOTS));
        // Its compile-time maximum, not the queues=1 it was started with.
        assert_eq!(u64_reply(&r, FrontendReq::GetQueueNum), [128]);
        assert_eq!(u64_reply(&r, FrontendReq::GetStatus), [0]);
        assert!(r.iter().all(|(q, _)| *q != FrontendReq::GetConfig));
    }
    // With NEED_REPLY DPDK answers 0x5 (no echo).
    let t = transcript("dpdk-vhost-handshake-need-reply.txt");
    assert!(peer_messages(&t).iter().all(|m| flags_of(&m.bytes) == 0x5));
}

fn requests(name: &str) -> Vec<Received<FrontendRequest<i32>>> {
    let t = transcript(name);
    let msgs = peer_messages(&t);
    decode_all_splits::<FrontendRequest<i32>>(name, &msgs)
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn dpdk_virtio_user_sequence() {
    use FrontendRequest as R;
    for (name, features, packed) in [
        ("dpdk-virtio-user-split.txt", 0x1_5000_8000u64, false),
        ("dpdk-virtio-user-packed.txt", 0x5_5000_8000, true),
    ] {
        let rs = requests(name);
        let pos = |pred: &dyn Fn(&R<i32>) -> bool| rs.iter().position(|r| pred(&r.message));
        // SET_OWNER first, before GET_FEATURES (a session-level difference from QEMU's order).
        assert_eq!(rs[0].message, R::SetOwner, "{name}");
        assert_eq!(rs[1].message, R::GetFeatures, "{name}");
        // MQ | REPLY_ACK | STATUS only.
        let proto = ProtocolFeatures::MQ | ProtocolFeatures::REPLY_ACK | ProtocolFeatures::STATUS;
        assert!(
            rs.iter()
                .any(|r| r.message == R::SetProtocolFeatures { features: proto })
        );
        // SET_VRING_CALL for both rings before SET_FEATURES and SET_MEM_TABLE.
        let set_features = pos(&|m| matches!(m, R::SetFeatures { .. })).unwrap();
        let mem_table = pos(&|m| matches!(m, R::SetMemTable { .. })).unwrap();
        for i in 0..2 {
            let call = pos(&|m| matches!(m, R::SetVringCall { index, fd: Some(_) } if *index == i));
            assert!(call.unwrap() < set_features.min(mem_table), "{name}");
        }
        assert_eq!(
            rs[set_features].message,
            R::SetFeatures {
                features: VirtioFeatures::from_bits_retain(features)
            }
        );
        let f = VirtioFeatures::from_bits_retain(features);
        assert_eq!(f.contains(VirtioFeatures::RING_PACKED), packed);
        assert!(!f.contains(VirtioFeatures::EVENT_IDX));
        // SET_STATUS and SET_MEM_TABLE carry NEED_REPLY; nothing else does.
        for r in &rs {
            let needs = matches!(r.message, R::SetStatus { .. } | R::SetMemTable { .. });
            assert_eq!(r.need_reply(), needs, "{name}: {r:?}");
        }
        let status: Vec<u8> = rs
            .iter()
            .filter_map(|r| match r.message {
                R::SetStatus { status } => Some(status.bits()),
                _ => None,
            })
            .collect();
        assert_eq!(status, [0xb, 0xf]);
        assert_eq!(
            DeviceStatus::from_bits_retain(0xb),
            DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK
        );
        // One region, its fd, guest address = its user address (virtio-user's own VAs).
        let R::SetMemTable { regions } = &rs[mem_table].message else {
            unreachable!()
        };
        assert_eq!(regions.len(), 1);
        let r = &regions[0];
        assert_eq!(r.region.guest_phys_addr, 0x1_0033_8000);
        assert_eq!(r.region.user_addr, r.region.guest_phys_addr);
        assert_eq!(
            (r.region.memory_size, r.region.mmap_offset),
            (0x1000_0000, 0)
        );
        // Per ring: NUM 256, BASE (packed: 0x8000, the driver wrap counter), ADDR, KICK.
        for i in 0..2u32 {
            assert!(
                rs.iter()
                    .any(|r| r.message == R::SetVringNum { index: i, num: 256 })
            );
            let base = rs
                .iter()
                .find_map(|r| match r.message {
                    R::SetVringBase { index, base } if index == i => Some(base),
                    _ => None,
                })
                .unwrap();
            if packed {
                assert_eq!(base, VringBase(0x8000));
                assert_eq!(base, VringBase::packed(0, true, 0, false));
                assert!(base.packed_avail_wrap() && !base.packed_used_wrap());
                assert_eq!((base.packed_avail_idx(), base.packed_used_idx()), (0, 0));
            } else {
                assert_eq!(base, VringBase::split(0));
                assert!(!base.split_has_reserved_bits());
            }
            let addr = rs
                .iter()
                .find_map(|r| match r.message {
                    R::SetVringAddr { addr } if addr.index == i => Some(addr),
                    _ => None,
                })
                .unwrap();
            assert_eq!((addr.flags, addr.log), (VringAddrFlags::empty(), 0));
            assert!(addr.desc != 0 && addr.avail != 0 && addr.used != 0);
            let kick = pos(
                &|m| matches!(m, R::SetVringKick { index, fd: Some(_) } if u32::from(*index) == i),
            );
            assert!(kick.is_some(), "{name}: no kick fd for {i}");
        }
        // Enable both, then (after SIGINT) disable both and read the bases back; then EOF.
        let enables: Vec<(u32, bool)> = rs
            .iter()
            .filter_map(|r| match r.message {
                R::SetVringEnable { index, enable } => Some((index, enable)),
                _ => None,
            })
            .collect();
        assert_eq!(enables, [(0, true), (1, true), (0, false), (1, false)]);
        let n = rs.len();
        assert_eq!(rs[n - 2].message, R::GetVringBase { index: 0 });
        assert_eq!(rs[n - 1].message, R::GetVringBase { index: 1 });
        let t = transcript(name);
        assert!(
            t.comments
                .iter()
                .any(|c| c == "connection closed by testpmd: True")
        );
    }
}

// ---------------------------------------------------------------------------------------
// Our deliberately malformed requests: what the peers did (documentation)
// ---------------------------------------------------------------------------------------

/// What a peer answered to the malformed case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    /// No message.
    Nothing,
    /// A u64 ack/NACK with flags 0x5.
    Ack(u64),
    /// A reply with its own body, flags as given.
    Reply(u32),
}

/// `(case, qsd (both versions), DPDK net_vhost)`: the answer and whether the GET_FEATURES
/// probe afterwards was still answered. `None`: not run against that peer.
type Behaviour = Option<(Answer, bool)>;

#[rustfmt::skip]
const PEER_BEHAVIOUR: &[(&str, Behaviour, Behaviour)] = {
    use Answer::*;
    &[
        ("unknown-code",                    Some((Nothing, false)),      Some((Nothing, false))),
        ("unknown-code-need-reply",         Some((Ack(0), false)),       Some((Ack(1), true))),
        ("version-0",                       Some((Reply(0x5), true)),    Some((Reply(0x5), true))),
        ("version-2",                       Some((Reply(0x5), true)),    Some((Reply(0x5), true))),
        ("reserved-flag",                   Some((Reply(0x105), true)),  Some((Reply(0x105), true))),
        ("reply-flag-on-request",           Some((Reply(0x5), true)),    Some((Reply(0x5), true))),
        ("get-features-with-payload",       Some((Reply(0x5), true)),    Some((Reply(0x5), true))),
        ("oversize-payload",                Some((Nothing, false)),      Some((Reply(0x5), true))),
        ("huge-size-no-payload",            Some((Nothing, false)),      Some((Nothing, false))),
        ("get-config-too-big",              Some((Nothing, false)),      Some((Nothing, false))),
        ("get-config-offset",               Some((Reply(0x5), true)),    Some((Nothing, false))),
        ("get-config-size-mismatch",        Some((Reply(0x5), true)),    Some((Nothing, false))),
        ("get-vring-base-out-of-range",     Some((Nothing, false)),      Some((Reply(0x5), true))),
        ("set-vring-num-out-of-range",      Some((Ack(0), true)),        Some((Ack(0), true))),
        ("set-vring-num-before-owner",      Some((Ack(0), true)),        Some((Ack(0), true))),
        ("set-vring-kick-missing-fd",       Some((Ack(0), false)),       Some((Ack(1), true))),
        ("set-mem-table-missing-fd",        Some((Ack(0), false)),       Some((Ack(1), true))),
        ("unexpected-fd",                   Some((Reply(0x5), true)),    Some((Nothing, false))),
        ("partial-header",                  Some((Reply(0x5), true)),    None),
        ("reset-owner",                     Some((Ack(0), true)),        Some((Ack(0), true))),
        ("short-u64",                       Some((Ack(0), false)),       Some((Ack(1), true))),
        ("set-features-unoffered",          Some((Ack(0), true)),        Some((Ack(0), true))),
        ("set-protocol-features-unoffered", Some((Ack(0), true)),        Some((Ack(1), true))),
    ]
};

/// What our own back-end decoder does with the malformed request we sent: `Ok`, or the
/// error's variant name and whether it is fatal.
type Outcome = Result<&'static str, (&'static str, bool)>;

const OUR_DECODER: &[(&str, Outcome)] = &[
    ("unknown-code", Err(("UnknownRequest", false))),
    ("unknown-code-need-reply", Err(("UnknownRequest", false))),
    ("version-0", Err(("BadVersion", true))),
    ("version-2", Err(("BadVersion", true))),
    ("reserved-flag", Err(("ReservedFlags", true))),
    ("reply-flag-on-request", Err(("ReplyFlagOnRequest", true))),
    ("get-features-with-payload", Err(("PayloadSize", true))),
    ("oversize-payload", Err(("PayloadSize", true))),
    ("huge-size-no-payload", Err(("PayloadTooLarge", true))),
    // 300 config bytes are within the spec's 4096: the device (session) bounds its config.
    ("get-config-too-big", Ok("GetConfig")),
    ("get-config-offset", Ok("GetConfig")),
    ("get-config-size-mismatch", Err(("InvalidPayload", false))),
    // Ring indices, ordering and feature subsets are session checks.
    ("get-vring-base-out-of-range", Ok("GetVringBase")),
    ("set-vring-num-out-of-range", Ok("SetVringNum")),
    ("set-vring-num-before-owner", Ok("SetVringNum")),
    ("set-vring-kick-missing-fd", Err(("FdCount", true))),
    ("set-mem-table-missing-fd", Err(("FdCount", true))),
    ("unexpected-fd", Err(("FdCount", true))),
    ("partial-header", Ok("GetFeatures")),
    ("reset-owner", Ok("ResetOwner")),
    ("short-u64", Err(("PayloadSize", true))),
    ("set-features-unoffered", Ok("SetFeatures")),
    ("set-protocol-features-unoffered", Ok("SetProtocolFeatures")),
];

fn variant<T: Debug>(v: &T) -> String {
    let s = format!("{v:?}");
    s.split([' ', '{', '(']).next().unwrap().to_owned()
}

#[test]
fn peer_behaviour_on_our_malformed_requests() {
    let mut seen = 0;
    for t in all_transcripts() {
        let Some(case) = case_name(&t) else { continue };
        let qsd = t.name.starts_with("qsd-");
        let (_, q, d) = PEER_BEHAVIOUR
            .iter()
            .find(|(c, ..)| *c == case)
            .unwrap_or_else(|| panic!("{}: case not in the table", t.name));
        let (answer, kept) = if qsd { q } else { d }.unwrap();

        // Our malformed request(s) and the peer's answers to them.
        let ours: Vec<u8> = t
            .lines
            .iter()
            .filter(|l| l.in_case)
            .flat_map(|l| l.bytes.clone())
            .collect();
        let our_fds = t
            .lines
            .iter()
            .filter(|l| l.in_case)
            .map(|l| l.fds)
            .sum::<usize>();
        let first_case = t.lines.iter().position(|l| l.in_case).unwrap();
        let answers: Vec<&Line> = t.lines[first_case..]
            .iter()
            .filter(|l| l.dir == Dir::Peer && !l.in_probe)
            .collect();
        let got = match answers.as_slice() {
            [] => Answer::Nothing,
            [a] => {
                assert_eq!(
                    code_of(&a.bytes),
                    code_of(&ours),
                    "{}: answers another code",
                    t.name
                );
                let u64_ack = le32(&a.bytes, 8) == 8
                    && !matches!(
                        FrontendReq::try_from(code_of(&ours)),
                        Ok(FrontendReq::GetFeatures | FrontendReq::GetVringBase)
                    );
                if u64_ack {
                    assert_eq!(flags_of(&a.bytes), 0x5);
                    Answer::Ack(le64(&a.bytes, 12))
                } else {
                    Answer::Reply(flags_of(&a.bytes))
                }
            }
            more => panic!("{}: {} answers", t.name, more.len()),
        };
        assert_eq!(got, answer, "{}", t.name);
        let probe_answered = t.lines.iter().any(|l| l.in_probe && l.dir == Dir::Peer);
        let closed = t
            .events_after_case
            .iter()
            .any(|e| e.starts_with("eof") || e.starts_with("error"));
        assert_eq!(probe_answered, kept, "{}", t.name);
        assert_eq!(closed, !kept, "{}", t.name);

        // What our own back-end would make of the same bytes (context as negotiated).
        let (_, expect) = OUR_DECODER.iter().find(|(c, _)| *c == case).unwrap();
        let ctx = DecodeContext::from_protocol_features(
            ProtocolFeatures::MQ | ProtocolFeatures::LOG_SHMFD | ProtocolFeatures::REPLY_ACK,
        );
        let mut dec = FrontendRequestDecoder::<i32>::new(ctx);
        let mut input = Input::new(&ours, (0..our_fds as i32).collect());
        let mut result = Ok(None);
        while !input.remaining().is_empty() && matches!(result, Ok(None)) {
            result = dec.decode(&mut input);
        }
        let got = match &result {
            Ok(Some(r)) => Ok(variant(&r.message)),
            Ok(None) => panic!("{}: our request did not complete", t.name),
            Err(e) => Err((variant(e), e.is_fatal())),
        };
        let expect = expect
            .map(str::to_owned)
            .map_err(|(v, f)| (v.to_owned(), f));
        assert_eq!(
            got, expect,
            "{}: our decoder on our malformed request",
            t.name
        );
        seen += 1;
    }
    assert_eq!(seen, 2 * 23 + 22);
}

#[test]
fn peer_exits() {
    // qsd aborts on GET_VRING_BASE for a ring it does not have (both versions), and 7.2
    // segfaults on exit after SET_VRING_NUM for vring 200 (memory corrupted); 10.0 exits 0.
    for (name, still_running, status) in [
        (
            "qsd-7.2-malformed-get-vring-base-out-of-range.txt",
            "False",
            "-6",
        ),
        (
            "qsd-10.0-malformed-get-vring-base-out-of-range.txt",
            "False",
            "-6",
        ),
        (
            "qsd-7.2-malformed-set-vring-num-out-of-range.txt",
            "True",
            "-11",
        ),
        (
            "qsd-10.0-malformed-set-vring-num-out-of-range.txt",
            "True",
            "0",
        ),
        ("qsd-10.0-malformed-unknown-code.txt", "True", "0"),
    ] {
        let t = transcript(name);
        let c = |k: &str| {
            t.comments
                .iter()
                .find_map(|c| c.strip_prefix(k))
                .unwrap_or_else(|| panic!("{name}: no {k}"))
                .to_owned()
        };
        assert_eq!(
            c("daemon still running after our close: "),
            still_running,
            "{name}"
        );
        assert_eq!(c("daemon exit status after SIGINT: "), status, "{name}");
    }
}

#[test]
fn qsd_get_config_offset_is_ignored() {
    // GET_CONFIG(offset 256, size 8) past the 60-byte blk config: qsd answers with the
    // *first* 8 config bytes and echoes offset 256. Our codec cannot tell (the reply is
    // well-formed); a front-end must not trust config reads beyond the device's config size.
    for ver in ["7.2", "10.0"] {
        let r = replies(&format!("qsd-{ver}-malformed-get-config-offset.txt"));
        let (_, cfg) = r
            .iter()
            .find(|(q, _)| *q == FrontendReq::GetConfig)
            .unwrap();
        let FrontendReply::Config { offset, data, .. } = &cfg.message else {
            panic!()
        };
        assert_eq!(*offset, 256);
        assert_eq!(le64(data, 0), 131_072, "the capacity, from offset 0");
    }
}

#[test]
fn dpdk_answers_get_vring_base_for_a_ring_it_does_not_have() {
    let r = replies("dpdk-vhost-malformed-get-vring-base-out-of-range.txt");
    let (_, vb) = r
        .iter()
        .find(|(q, _)| *q == FrontendReq::GetVringBase)
        .unwrap();
    assert_eq!(
        vb.message,
        FrontendReply::VringBase {
            index: 5,
            base: VringBase(0)
        }
    );
}

#[test]
fn splits_keep_fds_with_their_message() {
    // The fd-carrying messages of virtio-user get exactly their own handles in every split.
    let t = transcript("dpdk-virtio-user-split.txt");
    let msgs = peer_messages(&t);
    let with_fds: Vec<&PeerMsg> = msgs.iter().filter(|m| !m.fds.is_empty()).collect();
    assert_eq!(with_fds.len(), 5, "2 calls, 1 memory table, 2 kicks");
    for seed in 0..16 {
        let out = decode::<FrontendRequest<i32>>(&msgs, Split::Random(seed));
        for (m, r) in msgs.iter().zip(&out) {
            let handles: Vec<i32> = match &r.as_ref().unwrap().message {
                FrontendRequest::SetVringCall { fd, .. }
                | FrontendRequest::SetVringKick { fd, .. } => fd.iter().copied().collect(),
                FrontendRequest::SetMemTable { regions } => regions.iter().map(|r| r.fd).collect(),
                _ => Vec::new(),
            };
            assert_eq!(handles, m.fds);
        }
    }
}
