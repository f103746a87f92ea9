//! Queue groups (one worker thread serving several queues) and busy polling, through our
//! front-end: the shared echo scenarios with every queue in one busy group and in one
//! blocking group; data on 2 and 4 queues of a group at once (split and packed, EVENT_IDX
//! on and off) and their GET_VRING_BASE positions; one ring of a group stopped while the
//! others run, then restarted; a whole group stopped and restarted; kicks suppressed
//! while a group polls; an idle group backing off (its CPU time stays low, kicks come
//! back); handler sources served while polling, and GET_VRING_BASE waiting for chains a
//! handler holds while the rest of its group runs on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/scenarios.rs"]
#[allow(dead_code)]
mod scenarios;

use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use vhost_backend::echo::{Echo, echo_chain};
use vhost_backend::os::eventfd::EventFd;
use vhost_backend::{Chain, Device, Queue, QueueError, QueueHandler, Source};
use vhost_io_std::backend::{BusyPoll, Server, ServerHandle};
use vhost_io_std::frontend::{DriverRing, Frontend, GuestRam};
use vhost_proto::backend::{DeviceDescription, Refused};
use vhost_proto::wire::{ProtocolFeatures, VringBase};

/// A server of `device` over a socketpair with every queue in group `group`, busy polling
/// as `busy` says (`None`: blocking).
fn serve_grouped<D: Device>(
    device: D,
    group: u16,
    busy: Option<BusyPoll>,
) -> (Frontend, ServerHandle) {
    let (a, b) = UnixStream::pair().unwrap();
    let mut server = Server::from_stream(b, device)
        .unwrap()
        .with_queue_groups(move |_| group);
    if let Some(b) = busy {
        server = server.with_busy_poll(b);
    }
    (Frontend::from_stream(a).unwrap(), server.spawn().unwrap())
}

fn start_rings(
    front: &mut Frontend,
    ram: &GuestRam,
    n: u16,
    size: u16,
    packed: bool,
    event_idx: bool,
) -> Vec<DriverRing> {
    (0..n)
        .map(|i| {
            start_ring(
                front,
                ram,
                i,
                u64::from(i) * 0x4_0000,
                size,
                packed,
                event_idx,
            )
        })
        .collect()
}

/// Echoes `count` requests through every ring at once (a thread per ring).
fn echo_all(rings: &mut [DriverRing], ram: &GuestRam, count: usize, seed: u8) {
    std::thread::scope(|s| {
        for (k, ring) in rings.iter_mut().enumerate() {
            s.spawn(move || echo_through(ring, ram, count, 64, seed ^ k as u8));
        }
    });
}

/// The position after `chains` two-descriptor echo requests from the start of a ring.
fn assert_position(base: VringBase, ring: &DriverRing, chains: u32, packed: bool) {
    if packed {
        let (slots, size) = (2 * chains, u32::from(ring.size()));
        assert_eq!(
            (u32::from(base.packed_avail_idx()), base.packed_avail_wrap()),
            (slots % size, (slots / size).is_multiple_of(2)),
            "ring {}",
            ring.index()
        );
    } else {
        assert_eq!(
            u32::from(base.split_next_avail()),
            chains % 65536,
            "ring {}",
            ring.index()
        );
    }
}

/// CPU time (schedstat, ns) of this process's thread named `name`.
fn thread_cpu(name: &str) -> Option<Duration> {
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let path = task.ok()?.path();
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        if comm.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("schedstat")).ok()?;
        let ns: u64 = stat.split_whitespace().next()?.parse().ok()?;
        return Some(Duration::from_nanos(ns));
    }
    None
}

fn thread_exists(name: &str) -> bool {
    thread_cpu(name).is_some()
}

/// Waits until a thread is named `name` (a new thread names itself once it runs).
fn wait_thread(name: &str) {
    let deadline = Instant::now() + TIMEOUT;
    while !thread_exists(name) {
        assert!(Instant::now() < deadline, "no thread {name}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits until no thread is named `name` (its group ended).
fn wait_thread_gone(name: &str) {
    let deadline = Instant::now() + TIMEOUT;
    while thread_exists(name) {
        assert!(Instant::now() < deadline, "{name} still runs");
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---- the shared scenarios, every queue in one group ----

/// Every queue in one busy-polling group (default idle back-off).
struct BusyGroup(ServerHandle);
/// Every queue in one blocking group.
struct BlockingGroup(ServerHandle);

impl scenarios::EchoBackend for BusyGroup {
    fn start(queues: u16) -> (Frontend, Self) {
        let (f, s) = serve_grouped(Echo::new(queues), 0, Some(BusyPoll::new()));
        (f, BusyGroup(s))
    }

    fn finish(self) {
        self.0.join().unwrap();
    }
}

impl scenarios::EchoBackend for BlockingGroup {
    fn start(queues: u16) -> (Frontend, Self) {
        let (f, s) = serve_grouped(Echo::new(queues), 0, None);
        (f, BlockingGroup(s))
    }

    fn finish(self) {
        self.0.join().unwrap();
    }
}

fn restart_after_stop(front: &mut Frontend, ring: &mut DriverRing, ram: &GuestRam, b: VringBase) {
    let (id, used) = scenarios::add_while_stopped_then_restart(front, ring, b);
    assert_eq!(used, vec![(id, 4)]);
    echo_through(ring, ram, 3, 16, 9);
}

mod busy_group {
    use super::*;

    scenarios::echo_scenarios!(BusyGroup);

    #[test]
    fn split_ring_stops_and_resumes_in_position() {
        scenarios::stop_and_resume::<BusyGroup>(false, restart_after_stop);
    }

    #[test]
    fn packed_ring_stops_and_resumes_in_position() {
        scenarios::stop_and_resume::<BusyGroup>(true, restart_after_stop);
    }

    #[test]
    fn memory_regions_added_and_removed_while_running() {
        scenarios::memory_regions_added_and_removed_while_running::<BusyGroup>(|_, _, _| {});
    }
}

mod blocking_group {
    use super::*;

    scenarios::echo_scenarios!(BlockingGroup);

    #[test]
    fn split_ring_stops_and_resumes_in_position() {
        scenarios::stop_and_resume::<BlockingGroup>(false, restart_after_stop);
    }

    #[test]
    fn packed_ring_stops_and_resumes_in_position() {
        scenarios::stop_and_resume::<BlockingGroup>(true, restart_after_stop);
    }

    #[test]
    fn memory_regions_added_and_removed_while_running() {
        scenarios::memory_regions_added_and_removed_while_running::<BlockingGroup>(|_, _, _| {});
    }
}

// ---- several queues of one group ----

fn queues_of_one_group(busy: Option<BusyPoll>, group: u16) {
    for n in [2u16, 4] {
        for packed in [false, true] {
            for event_idx in [false, true] {
                let ram = GuestRam::new(0, RAM).unwrap();
                let (mut front, server) = serve_grouped(Echo::new(4), group, busy);
                handshake(&mut front, &ram, packed, event_idx);
                let mut rings = start_rings(&mut front, &ram, n, 64, packed, event_idx);
                echo_all(&mut rings, &ram, 150, 1);
                echo_all(&mut rings, &ram, 50, 2);
                for ring in &rings {
                    let base = front.get_vring_base(ring.index()).unwrap();
                    assert_position(base, ring, 200, packed);
                }
                drop(front);
                server.join().unwrap();
            }
        }
    }
}

#[test]
fn two_and_four_queues_of_one_busy_group_carry_data_and_stop_in_position() {
    queues_of_one_group(Some(BusyPoll::new()), 0);
}

#[test]
fn two_and_four_queues_of_one_blocking_group_carry_data_and_stop_in_position() {
    queues_of_one_group(None, 0);
}

fn one_ring_stops_while_the_others_run(busy: Option<BusyPoll>, packed: bool, event_idx: bool) {
    use vring::memory::GuestSlice;
    let ram = GuestRam::new(0, RAM).unwrap();
    let (mut front, server) = serve_grouped(Echo::new(4), 0, busy);
    handshake(&mut front, &ram, packed, event_idx);
    let mut rings = start_rings(&mut front, &ram, 4, 32, packed, event_idx);
    echo_all(&mut rings, &ram, 40, 3);
    // Ring 1 stops: its position covers what it served.
    let base = front.get_vring_base(1).unwrap();
    assert_position(base, &rings[1], 40, packed);
    // A buffer added to the stopped ring is not served...
    let (out, inn) = (BUFS + 0x7_0000, BUFS + 0x7_0100);
    GuestSlice::new(ram.memory(), out, 4)
        .unwrap()
        .write_at(0, b"wait")
        .unwrap();
    let id = rings[1].add(&[(out, 4)], &[(inn, 4)]).unwrap();
    rings[1].kick().unwrap();
    // ...while the other rings of its group carry on.
    let (stopped, running) = rings.split_at_mut(2);
    let (before, one) = stopped.split_at_mut(1);
    let mut others: Vec<&mut DriverRing> = before.iter_mut().chain(running.iter_mut()).collect();
    std::thread::scope(|s| {
        for (k, ring) in others.iter_mut().enumerate() {
            let ram = &ram;
            s.spawn(move || echo_through(ring, ram, 60, 32, k as u8));
        }
    });
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        one[0].pop_used().unwrap(),
        None,
        "a stopped ring was served"
    );
    // Restarted where it stopped, it serves the waiting buffer, then more.
    front.restart_ring(&one[0], base).unwrap();
    assert_eq!(one[0].collect(1, TIMEOUT).unwrap(), vec![(id, 4)]);
    let mut back = [0u8; 4];
    GuestSlice::new(ram.memory(), inn, 4)
        .unwrap()
        .read_at(0, &mut back)
        .unwrap();
    assert_eq!(&back, b"wait");
    echo_all(&mut rings, &ram, 20, 4);
    for (i, ring) in rings.iter().enumerate() {
        let served = match i {
            1 => 40 + 1 + 20,
            _ => 40 + 60 + 20,
        };
        assert_position(
            front.get_vring_base(ring.index()).unwrap(),
            ring,
            served,
            packed,
        );
    }
    drop(front);
    server.join().unwrap();
}

#[test]
fn stopping_one_ring_of_a_busy_group_leaves_the_others_running() {
    for packed in [false, true] {
        for event_idx in [false, true] {
            one_ring_stops_while_the_others_run(Some(BusyPoll::new()), packed, event_idx);
        }
    }
}

#[test]
fn stopping_one_ring_of_a_blocking_group_leaves_the_others_running() {
    for packed in [false, true] {
        one_ring_stops_while_the_others_run(None, packed, true);
    }
}

#[test]
fn a_group_whose_rings_all_stopped_ends_and_restarts() {
    for (group, busy) in [(11u16, Some(BusyPoll::new())), (12, None)] {
        let name = match busy {
            Some(_) => format!("vhost-poll{group}"),
            None => format!("vhost-g{group}"),
        };
        let ram = GuestRam::new(0, RAM).unwrap();
        let (mut front, server) = serve_grouped(Echo::new(4), group, busy);
        handshake(&mut front, &ram, false, true);
        let mut rings = start_rings(&mut front, &ram, 3, 32, false, true);
        wait_thread(&name);
        echo_all(&mut rings, &ram, 10, 5);
        let bases: Vec<_> = rings
            .iter()
            .map(|r| front.get_vring_base(r.index()).unwrap())
            .collect();
        // Its last ring stopped, the group's thread ends.
        wait_thread_gone(&name);
        for (ring, base) in rings.iter().zip(&bases) {
            front.restart_ring(ring, *base).unwrap();
        }
        wait_thread(&name);
        echo_all(&mut rings, &ram, 10, 6);
        for ring in &rings {
            assert_position(front.get_vring_base(ring.index()).unwrap(), ring, 20, false);
        }
        drop(front);
        server.join().unwrap();
    }
}

#[test]
fn busy_and_blocking_groups_side_by_side() {
    // Queue pairs: (0, 1) busy-poll in group 40, (2, 3) block in group 41.
    let ram = GuestRam::new(0, RAM).unwrap();
    let (a, b) = UnixStream::pair().unwrap();
    let server = Server::from_stream(b, Echo::new(4))
        .unwrap()
        .with_queue_groups(|i| 40 + i / 2)
        .with_busy_poll_groups(|g| (g == 40).then(BusyPoll::new))
        .spawn()
        .unwrap();
    let mut front = Frontend::from_stream(a).unwrap();
    handshake(&mut front, &ram, true, true);
    let mut rings = start_rings(&mut front, &ram, 4, 64, true, true);
    wait_thread("vhost-poll40");
    wait_thread("vhost-g41");
    assert!(!thread_exists("vhost-poll41") && !thread_exists("vhost-g40"));
    echo_all(&mut rings, &ram, 100, 7);
    for ring in &rings {
        assert_position(front.get_vring_base(ring.index()).unwrap(), ring, 100, true);
    }
    drop(front);
    server.join().unwrap();
}

// ---- notifications ----

/// Echoes one request through `ring`; whether its kick was needed.
fn one_echo(ring: &mut DriverRing) -> bool {
    let out = BUFS + u64::from(ring.index()) * 0x4_0000;
    let id = ring.add(&[(out, 8)], &[(out + 8, 8)]).unwrap();
    let kicked = ring.kick().unwrap();
    assert_eq!(ring.collect(1, TIMEOUT).unwrap(), vec![(id, 8)]);
    kicked
}

#[test]
fn kicks_are_suppressed_while_a_group_polls() {
    for packed in [false, true] {
        for event_idx in [false, true] {
            let ram = GuestRam::new(0, RAM).unwrap();
            let spin = BusyPoll::new().spin_forever();
            let (mut front, server) = serve_grouped(Echo::new(2), 0, Some(spin));
            handshake(&mut front, &ram, packed, event_idx);
            let mut rings = start_rings(&mut front, &ram, 2, 32, packed, event_idx);
            for ring in &mut rings {
                // The first requests may come before the group's first polling round
                // (while kicks are still on; with EVENT_IDX a split ring's driver kicks
                // once when it passes the event index the device left).
                let mut n = 0;
                while one_echo(ring) {
                    n += 1;
                    assert!(n < 10, "kicks never suppressed ({packed}, {event_idx})");
                }
                // From then on the group polls: no kick is asked for, the requests are
                // served all the same.
                for _ in 0..50 {
                    assert!(!one_echo(ring), "a kick asked for ({packed}, {event_idx})");
                }
            }
            drop(front);
            server.join().unwrap();
        }
    }
}

#[test]
fn an_idle_busy_group_sleeps_until_a_kick() {
    const NAME: &str = "vhost-poll21";
    for (packed, event_idx) in [(false, false), (true, false), (false, true), (true, true)] {
        let ram = GuestRam::new(0, RAM).unwrap();
        let busy = BusyPoll::new().with_idle_spin(Duration::from_millis(2));
        let (mut front, server) = serve_grouped(Echo::new(2), 21, Some(busy));
        handshake(&mut front, &ram, packed, event_idx);
        let mut rings = start_rings(&mut front, &ram, 2, 32, packed, event_idx);
        for _ in 0..3 {
            echo_all(&mut rings, &ram, 100, 8);
            // Idle: after its spin the group sleeps, and kicks are asked for again.
            std::thread::sleep(Duration::from_millis(50));
            let before = thread_cpu(NAME).unwrap();
            std::thread::sleep(Duration::from_millis(300));
            let used = thread_cpu(NAME).unwrap() - before;
            assert!(
                used < Duration::from_millis(20),
                "an idle group used {used:?} of CPU in 300 ms"
            );
            // (A kick wakes the group, which polls again: one ring at a time.)
            for ring in &mut rings {
                std::thread::sleep(Duration::from_millis(20));
                assert!(one_echo(ring), "no kick asked for while the group sleeps");
            }
        }
        drop(front);
        server.join().unwrap();
    }
}

#[test]
fn a_group_that_never_sleeps_keeps_polling_when_idle() {
    const NAME: &str = "vhost-poll22";
    let ram = GuestRam::new(0, RAM).unwrap();
    let (mut front, server) = serve_grouped(Echo::new(1), 22, Some(BusyPoll::new().spin_forever()));
    handshake(&mut front, &ram, false, false);
    let mut rings = start_rings(&mut front, &ram, 1, 32, false, false);
    echo_all(&mut rings, &ram, 10, 9);
    let before = thread_cpu(NAME).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let used = thread_cpu(NAME).unwrap() - before;
    // It spins (the measurement sees it), on a shared machine for some of the time.
    assert!(
        used > Duration::from_millis(30),
        "a spinning group used {used:?}"
    );
    assert!(!one_echo(&mut rings[0]));
    drop(front);
    server.join().unwrap();
    wait_thread_gone(NAME);
}

// ---- handler sources and held chains ----

/// Echoes every chain but completes it only when its eventfd is signalled (completions
/// from a source of its own, as an io_uring device would).
struct Held {
    release: Vec<EventFd>,
    popped: Arc<AtomicUsize>,
}

struct HeldQueue {
    release: EventFd,
    held: Vec<(Chain, u32)>,
    popped: Arc<AtomicUsize>,
}

impl Device for Held {
    fn description(&self) -> DeviceDescription {
        DeviceDescription::new(
            vhost_backend::echo::echo_features(),
            ProtocolFeatures::MQ | ProtocolFeatures::REPLY_ACK,
            self.release.len() as u16,
        )
    }

    fn start_queue(self: Arc<Self>, q: &Queue) -> Result<Box<dyn QueueHandler>, Refused> {
        Ok(Box::new(HeldQueue {
            release: self.release[usize::from(q.index())].try_clone().unwrap(),
            held: Vec::new(),
            popped: Arc::clone(&self.popped),
        }))
    }
}

impl QueueHandler for HeldQueue {
    fn process(&mut self, q: &mut Queue) -> Result<(), QueueError> {
        while let Some(chain) = q.pop()? {
            let len = echo_chain(q, &chain)?;
            self.held.push((chain, len));
            self.popped.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn sources(&self) -> Vec<Source> {
        use std::os::fd::AsRawFd;
        vec![Source {
            fd: self.release.read_fd().as_raw_fd(),
            id: 7,
        }]
    }

    fn ready(&mut self, q: &mut Queue, id: u32) -> Result<(), QueueError> {
        assert_eq!(id, 7);
        self.release.try_consume().unwrap();
        // Out of order.
        while let Some((chain, len)) = self.held.pop() {
            q.complete(chain, len)?;
        }
        Ok(())
    }
}

#[test]
fn a_busy_group_serves_sources_and_a_stop_waits_for_held_chains() {
    for packed in [false, true] {
        let release: Vec<EventFd> = (0..2).map(|_| EventFd::new(true).unwrap()).collect();
        let mine: Vec<EventFd> = release.iter().map(|e| e.try_clone().unwrap()).collect();
        let popped = Arc::new(AtomicUsize::new(0));
        let device = Held {
            release,
            popped: Arc::clone(&popped),
        };
        let ram = GuestRam::new(0, RAM).unwrap();
        let (mut front, server) = serve_grouped(device, 0, Some(BusyPoll::new()));
        handshake(&mut front, &ram, packed, true);
        let mut rings = start_rings(&mut front, &ram, 2, 32, packed, true);
        // Ring 0: four requests, held by the handler.
        let ids: Vec<u16> = (0..4u64)
            .map(|k| {
                let out = BUFS + k * 64;
                rings[0].add(&[(out, 16)], &[(out + 32, 16)]).unwrap()
            })
            .collect();
        rings[0].kick().unwrap();
        let deadline = Instant::now() + TIMEOUT;
        while popped.load(Ordering::Relaxed) < 4 {
            assert!(Instant::now() < deadline, "the requests were not taken");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(rings[0].pop_used().unwrap(), None);
        let (_, r1) = rings.split_at_mut(1);
        std::thread::scope(|s| {
            let stopper = s.spawn(|| {
                let asked = Instant::now();
                let base = front.get_vring_base(0).unwrap();
                (asked.elapsed(), base)
            });
            // While ring 0's stop waits for its handler, ring 1 of the same group serves
            // (its completions go through its source too: released as they come).
            let (ring, release) = (&mut r1[0], &mine[1]);
            for k in 0..20u64 {
                let out = BUFS + 0x4_0000 + k * 64;
                let id = ring.add(&[(out, 8)], &[(out + 32, 8)]).unwrap();
                ring.kick().unwrap();
                let deadline = Instant::now() + TIMEOUT;
                while popped.load(Ordering::Relaxed) < 5 + k as usize {
                    assert!(Instant::now() < deadline, "ring 1 stalled");
                    std::thread::yield_now();
                }
                release.signal().unwrap();
                assert_eq!(ring.collect(1, TIMEOUT).unwrap(), vec![(id, 8)]);
            }
            std::thread::sleep(Duration::from_millis(50));
            assert!(
                !stopper.is_finished(),
                "GET_VRING_BASE returned with chains held"
            );
            mine[0].signal().unwrap();
            let (waited, base) = stopper.join().unwrap();
            assert!(waited >= Duration::from_millis(50));
            if packed {
                assert_eq!((base.packed_avail_idx(), base.packed_used_idx()), (8, 8));
            } else {
                assert_eq!(base.split_next_avail(), 4);
            }
        });
        let mut used = rings[0].collect(4, TIMEOUT).unwrap();
        used.sort_unstable();
        let mut want: Vec<(u16, u32)> = ids.iter().map(|&id| (id, 16)).collect();
        want.sort_unstable();
        assert_eq!(used, want);
        drop(front);
        server.join().unwrap();
    }
}
