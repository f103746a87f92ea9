//! Seed corpora of the `backend_channel` and `frontend_channel` fuzz targets: generator
//! and stable replay.
//!
//! `cargo test -p vhost-proto --lib -- --ignored write_channel_seeds` rewrites
//! `fuzz/seeds/backend_channel/` and `fuzz/seeds/frontend_channel/`.

use std::path::PathBuf;

use super::channel::{backend_channel_completions, frontend_channel_replies};
use crate::wire::ProtocolFeatures as P;

fn dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target)
}

fn header(p: P, access_platform: bool) -> Vec<u8> {
    let mut v = (p.bits() as u32).to_le_bytes().to_vec();
    v.push(u8::from(access_platform));
    v
}

/// Everything the back-end channel can carry.
fn all() -> P {
    P::REPLY_ACK
        | P::BACKEND_REQ
        | P::BACKEND_SEND_FD
        | P::CONFIG
        | P::HOST_NOTIFIER
        | P::INBAND_NOTIFICATIONS
        | P::SHARED_OBJECT
        | P::SHMEM
}

/// `backend_channel`: send `code`, transmit, reply `how` with `value`, collect.
fn be_round(v: &mut Vec<u8>, code: u8, how: u8, value: u64) {
    v.extend([0, code, 1, 2, 3]);
    v.extend([1, 0]);
    v.extend([2, how]);
    v.extend(value.to_le_bytes());
    v.push(5);
}

fn backend_seeds() -> Vec<(&'static str, Vec<u8>, usize)> {
    let mut seeds = Vec::new();
    let mut v = header(all(), true);
    for code in 0..10 {
        be_round(&mut v, code, 0, 0);
    }
    seeds.push(("all_codes_acked", v, 10));
    let mut v = header(all(), true);
    for code in 0..10 {
        be_round(&mut v, code, [4, 6, 7][usize::from(code % 3)], 1);
    }
    seeds.push(("nacks_lookups_cut", v, 10));
    // Several queued behind one awaiting its reply, then replied one by one.
    let mut v = header(all(), false);
    for code in [1, 3, 4, 7, 5] {
        v.extend([0, code, 0, 0, 0]);
    }
    for _ in 0..5 {
        v.extend([1, 0, 2, 0]);
        v.extend(0u64.to_le_bytes());
    }
    v.push(5);
    seeds.push(("queued_behind_reply", v, 5));
    // A reply for another request: fatal.
    let mut v = header(all(), false);
    be_round(&mut v, 1, 5, 0);
    be_round(&mut v, 1, 0, 0);
    seeds.push(("mismatched_reply", v, 0));
    // Without REPLY_ACK only the lookup is answered; raw garbage is fatal.
    let mut v = header(all() - P::REPLY_ACK, false);
    for code in [1, 7, 3] {
        be_round(&mut v, code, 0, 0);
    }
    v.extend([3, 12, 0, 1]);
    v.extend([7, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0]);
    v.push(5);
    seeds.push(("no_reply_ack_then_garbage", v, 1));
    // Gates: nothing negotiated, then everything.
    let mut v = header(P::empty(), false);
    for code in 0..10 {
        v.extend([0, code, 0, 0, 0]);
    }
    v.push(4);
    v.extend((all().bits() as u32).to_le_bytes());
    v.push(1);
    be_round(&mut v, 1, 0, 0);
    seeds.push(("renegotiated", v, 1));
    seeds
}

/// `frontend_channel`: the back-end sends `code` (NEED_REPLY), the VMM answers `choice`,
/// replies move.
fn fe_round(v: &mut Vec<u8>, code: u8, cut: u8, choice: u8) {
    v.extend([0, code, 1, 2, 3, 1 | cut << 1]);
    v.extend([2, choice]);
    v.push(3);
}

fn frontend_seeds() -> Vec<(&'static str, Vec<u8>, usize)> {
    let mut seeds = Vec::new();
    let mut v = header(all(), true);
    for code in 0..10 {
        fe_round(&mut v, code, 0, 0);
    }
    seeds.push(("all_codes_need_reply", v, 10));
    let mut v = header(all(), true);
    for code in 0..10 {
        fe_round(&mut v, code, code * 3, 4);
    }
    seeds.push(("refused_and_cut", v, 10));
    // Held tokens: the next requests wait; a late answer, then a stale one.
    let mut v = header(all(), false);
    fe_round(&mut v, 1, 0, 5);
    fe_round(&mut v, 7, 0, 0);
    v.extend([2, 6, 3]);
    v.extend([2, 5]);
    v.extend([4, 3]);
    seeds.push(("held_late_answers", v, 2));
    // A dropped token: NACKed, the channel fails.
    let mut v = header(all(), false);
    fe_round(&mut v, 1, 0, 0xfd);
    fe_round(&mut v, 3, 0, 0);
    seeds.push(("dropped_token", v, 1));
    // Nothing negotiated: every request refused (and NACKed); then raw garbage.
    let mut v = header(P::empty(), false);
    for code in 0..10 {
        fe_round(&mut v, code, 0, 0);
    }
    v.extend([1, 16, 0, 2]);
    v.extend([0xff, 0, 0, 0, 1, 0, 0, 0, 4, 0, 0, 0, 1, 2, 3, 4]);
    seeds.push(("ungated_then_garbage", v, 10));
    seeds
}

#[test]
fn channel_seeds_do_what_they_say() {
    for (name, data, n) in backend_seeds() {
        assert_eq!(
            backend_channel_completions(&data),
            n,
            "backend_channel/{name}"
        );
    }
    for (name, data, n) in frontend_seeds() {
        assert_eq!(
            frontend_channel_replies(&data),
            n,
            "frontend_channel/{name}"
        );
    }
}

#[test]
fn replays_the_channel_seed_corpora() {
    for (target, run) in [
        (
            "backend_channel",
            backend_channel_completions as fn(&[u8]) -> usize,
        ),
        ("frontend_channel", frontend_channel_replies),
    ] {
        let mut n = 0;
        for entry in std::fs::read_dir(dir(target)).expect("the seed directory exists") {
            run(&std::fs::read(entry.unwrap().path()).unwrap());
            n += 1;
        }
        assert!(n >= 5, "only {n} seeds for {target}");
    }
}

#[test]
fn channels_survive_pseudo_random_inputs() {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..500 {
        let mut data = Vec::new();
        for _ in 0..200 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            data.push(x as u8);
        }
        backend_channel_completions(&data);
        frontend_channel_replies(&data);
    }
}

#[test]
#[ignore = "rewrites fuzz/seeds/backend_channel and fuzz/seeds/frontend_channel"]
fn write_channel_seeds() {
    for (target, seeds) in [
        ("backend_channel", backend_seeds()),
        ("frontend_channel", frontend_seeds()),
    ] {
        let d = dir(target);
        std::fs::create_dir_all(&d).unwrap();
        for (name, data, _) in seeds {
            std::fs::write(d.join(name), data).unwrap();
        }
    }
}
