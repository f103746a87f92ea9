//! `vhost-user-blk` against qemu-storage-daemon (qsd), same front-end, same run: libblkio's
//! `virtio-blk-vhost-user` driver, 1 queue, 4 KiB random reads and writes at QD 1 and QD 32.
//!
//! - (a) protocol and ring cost: our in-memory disk vs qsd `null-co,read-zeroes=on` (main
//!   loop, and in an iothread);
//! - (b) a raw image in /dev/shm: our io_uring engine vs qsd with its defaults (thread-pool
//!   AIO) and with `aio=io_uring` in an iothread (its fastest setup).
//!
//! Reported per case: IOPS, mean/p50/p99 latency, and the back-end's CPU time per request
//! (all its threads, from `/proc/<pid>/task/*/schedstat`), and ratios against qsd. Then
//! split vs packed rings with our own probe (`vhost-probe blk --layout`).
//!
//! The front-end (this process) is pinned to CPU 0 and every back-end to CPU 1
//! (`taskset -c 1`), or with `BLK_BENCH_PIN=same` both to CPU 0 (a wakeup across vCPUs
//! costs ~20 us of CPU on the 2-vCPU VM, which then dominates CPU per request at QD 1). libblkio waits for completions on the call eventfd (blocking
//! `do_io`), the mode a guest-like front-end uses.
//!
//! Run: `cargo bench -p tests --bench blk_vs_qsd` (`BENCH_SECS=N` per case, default 2;
//! `BENCH_ROUNDS=N` interleaved rounds, medians reported, default 3;
//! `BENCH_FILTER=substring` to run only matching back-ends).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use blkio::{Blkio, Completion, ReqFlags};
use tests::{Peer, TempDir};

const DISK: u64 = 256 << 20;
const BS: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Read,
    Write,
}

#[derive(Debug, Clone, Copy)]
struct Result {
    iops: f64,
    mean_us: f64,
    p50_us: f64,
    p99_us: f64,
    cpu_ns_per_req: f64,
}

/// CPU time (ns) of all threads of `pid` so far.
fn cpu_ns(pid: u32) -> u64 {
    let mut total = 0;
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    for t in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
            total += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

/// xorshift64*.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Runs `op` at queue depth `qd` for `secs` against the back-end on `sock` (pid `pid`).
fn run(sock: &Path, pid: u32, op: Op, qd: usize, secs: f64) -> Result {
    let mut b = Blkio::new("virtio-blk-vhost-user").unwrap();
    b.set_str("path", sock.to_str().unwrap()).unwrap();
    b.connect().unwrap();
    b.set_i32("num-queues", 1).unwrap();
    b.set_i32("queue-size", 256).unwrap();
    let capacity = b.get_u64("capacity").unwrap();
    let blocks = capacity / BS as u64;
    let align = b.get_u64("mem-region-alignment").unwrap() as usize;
    let len = (qd * BS).div_ceil(align) * align;
    let region = b.alloc_mem_region(len).unwrap();
    let mut started = b.start().unwrap();
    b.map_mem_region(&region).unwrap();
    let q = &mut started.queues[0];
    let base = region.addr as *mut u8;
    // SAFETY: the region is len >= qd * BS bytes, mapped read-write.
    unsafe { std::ptr::write_bytes(base, 0x5a, qd * BS) };
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut submit_at = vec![Instant::now(); qd];
    let mut lat_ns: Vec<u32> = Vec::with_capacity(1 << 20);
    let submit = |q: &mut blkio::Blkioq, slot: usize, rng: &mut Rng| {
        let off = (rng.next() % blocks) * BS as u64;
        // SAFETY: slot < qd: inside the region.
        let buf = unsafe { base.add(slot * BS) };
        match op {
            Op::Read => q.read(off, buf, BS, slot, ReqFlags::empty()),
            Op::Write => q.write(off, buf, BS, slot, ReqFlags::empty()),
        }
    };
    let mut comps: Vec<MaybeUninit<Completion>> = (0..qd).map(|_| MaybeUninit::uninit()).collect();
    // Warm-up 0.3 s, then measure.
    for (slot, at) in submit_at.iter_mut().enumerate() {
        *at = Instant::now();
        submit(q, slot, &mut rng);
    }
    let warm_end = Instant::now() + Duration::from_millis(300);
    let mut measuring = false;
    let mut start = Instant::now();
    let mut cpu0 = 0;
    let mut done: u64 = 0;
    let end_after = Duration::from_secs_f64(secs);
    loop {
        let mut timeout = Duration::from_secs(10);
        let n = q.do_io(&mut comps, 1, Some(&mut timeout), None).unwrap();
        assert!(n > 0, "no completion in 10 s");
        let now = Instant::now();
        for c in &comps[..n] {
            // SAFETY: do_io initialised the first n entries.
            let c = unsafe { c.assume_init_ref() };
            assert_eq!(c.ret, 0, "request failed");
            let slot = c.user_data;
            if measuring {
                lat_ns.push(now.duration_since(submit_at[slot]).as_nanos() as u32);
                done += 1;
            }
            submit_at[slot] = Instant::now();
            submit(q, slot, &mut rng);
        }
        if !measuring && now >= warm_end {
            measuring = true;
            start = Instant::now();
            cpu0 = cpu_ns(pid);
        } else if measuring && now.duration_since(start) >= end_after {
            break;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_ns(pid) - cpu0;
    // Drain what is in flight.
    let mut left = qd;
    while left > 0 {
        let mut timeout = Duration::from_secs(10);
        let n = q.do_io(&mut comps, left, Some(&mut timeout), None).unwrap();
        if n == 0 {
            break;
        }
        left -= n;
    }
    lat_ns.sort_unstable();
    let pct = |p: f64| {
        let i = ((lat_ns.len() as f64 - 1.0) * p) as usize;
        f64::from(lat_ns[i]) / 1000.0
    };
    let mean = lat_ns.iter().map(|&v| f64::from(v)).sum::<f64>() / lat_ns.len() as f64 / 1000.0;
    Result {
        iops: done as f64 / elapsed,
        mean_us: mean,
        p50_us: pct(0.5),
        p99_us: pct(0.99),
        cpu_ns_per_req: cpu as f64 / done as f64,
    }
}

struct Backend {
    name: &'static str,
    group: char,
    ours: bool,
    args: Vec<String>,
}

fn backends(blk: &Path, qsd: Option<&Path>, shm_img: &Path, sock: &Path) -> Vec<Backend> {
    let s = sock.display().to_string();
    let img = shm_img.display().to_string();
    let blk = blk.display().to_string();
    let mem_args = vec![
        blk.clone(),
        "--socket-path".into(),
        s.clone(),
        "--memory".into(),
        "256M".into(),
    ];
    let mut busy_mem = mem_args.clone();
    busy_mem.push("--busy-poll".into());
    let mut v = vec![
        Backend {
            name: "ours in-memory",
            group: 'a',
            ours: true,
            args: mem_args,
        },
        Backend {
            name: "ours in-memory busy-poll",
            group: 'a',
            ours: true,
            args: busy_mem,
        },
    ];
    let export = |iothread: bool| {
        format!(
            "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path={s},writable=on,num-queues=1{}",
            if iothread { ",iothread=iot0" } else { "" }
        )
    };
    let qsd_args = |blockdevs: Vec<String>, iothread: bool| {
        let mut a = vec![qsd.unwrap().display().to_string()];
        if iothread {
            a.extend(["--object".into(), "iothread,id=iot0".into()]);
        }
        for bd in blockdevs {
            a.extend(["--blockdev".into(), bd]);
        }
        a.extend(["--export".into(), export(iothread)]);
        a
    };
    if qsd.is_some() {
        let null = format!("driver=null-co,node-name=disk0,size={DISK},read-zeroes=on");
        v.push(Backend {
            name: "qsd null-co",
            group: 'a',
            ours: false,
            args: qsd_args(vec![null.clone()], false),
        });
        v.push(Backend {
            name: "qsd null-co iothread",
            group: 'a',
            ours: false,
            args: qsd_args(vec![null], true),
        });
    }
    let shm_args = vec![
        blk,
        "--socket-path".into(),
        s.clone(),
        "--image".into(),
        img.clone(),
        "--io-engine".into(),
        "io-uring".into(),
    ];
    let mut busy_shm = shm_args.clone();
    busy_shm.push("--busy-poll".into());
    v.push(Backend {
        name: "ours shm io_uring",
        group: 'b',
        ours: true,
        args: shm_args,
    });
    v.push(Backend {
        name: "ours shm io_uring busy-poll",
        group: 'b',
        ours: true,
        args: busy_shm,
    });
    if qsd.is_some() {
        v.push(Backend {
            name: "qsd shm default",
            group: 'b',
            ours: false,
            args: qsd_args(
                vec![
                    format!("driver=file,node-name=file0,filename={img}"),
                    "driver=raw,node-name=disk0,file=file0".into(),
                ],
                false,
            ),
        });
        v.push(Backend {
            name: "qsd shm io_uring iothread",
            group: 'b',
            ours: false,
            args: qsd_args(
                vec![
                    format!("driver=file,node-name=file0,filename={img},aio=io_uring"),
                    "driver=raw,node-name=disk0,file=file0".into(),
                ],
                true,
            ),
        });
    }
    v
}

/// The back-end's CPU: 1 (`BLK_BENCH_PIN=split`, the default: front-end on 0) or 0
/// (`BLK_BENCH_PIN=same`: both ends on CPU 0).
fn backend_cpu() -> &'static str {
    match std::env::var("BLK_BENCH_PIN").as_deref() {
        Ok("same") => "0",
        _ => "1",
    }
}

fn spawn(args: &[String], name: &str, sock: &Path) -> Peer {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", backend_cpu()]).args(args);
    let mut p = Peer::spawn(name, cmd).unwrap();
    p.wait_for_socket(sock, tests::PEER_START_TIMEOUT).unwrap();
    p
}

fn pin_self_cpu0() {
    let mut set = rustix::thread::CpuSet::new();
    set.set(0);
    if let Err(e) = rustix::thread::sched_setaffinity(None, &set) {
        eprintln!("cannot pin the front-end to CPU 0: {e}");
    }
}

fn main() {
    // libtest-style arguments (`--bench`) are ignored.
    let secs: f64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let filter = std::env::var("BENCH_FILTER").unwrap_or_default();
    // Against a back-end started by hand (e.g. under `perf record`): BENCH_SOCKET=path
    // BENCH_PID=pid (for its CPU time) BENCH_CASES=rw,qd;... (default: all four).
    if let Some(sock) = std::env::var_os("BENCH_SOCKET") {
        pin_self_cpu0();
        let pid: u32 = std::env::var("BENCH_PID")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let cases =
            std::env::var("BENCH_CASES").unwrap_or("read,1;write,1;read,32;write,32".into());
        for case in cases.split(';') {
            let (rw, qd) = case.split_once(',').unwrap();
            let op = if rw == "read" { Op::Read } else { Op::Write };
            let r = run(Path::new(&sock), pid, op, qd.parse().unwrap(), secs);
            println!(
                "rand{rw} QD{qd}: {:.0} IOPS, mean {:.1} us, CPU {:.0} ns/req",
                r.iops, r.mean_us, r.cpu_ns_per_req
            );
        }
        return;
    }
    let blk = tests::guest::workspace_binary("vhost-user-blk").expect("build vhost-user-blk");
    let probe = tests::guest::workspace_binary("vhost-probe").expect("build vhost-probe");
    let qsd = tests::find_peer("qemu-storage-daemon");
    if qsd.is_none() {
        eprintln!("qemu-storage-daemon not found: measuring ours only");
    }
    let dir = TempDir::new("blk_vs_qsd").unwrap();
    let sock = dir.join("vub.sock");
    let shm = PathBuf::from(format!("/dev/shm/blk_vs_qsd-{}.img", std::process::id()));
    {
        // A fully allocated image (not sparse), so reads hit real pages.
        let f = std::fs::File::create(&shm).unwrap();
        let chunk = vec![0x3cu8; 1 << 20];
        use std::io::Write;
        let mut w = std::io::BufWriter::new(f);
        for _ in 0..DISK >> 20 {
            w.write_all(&chunk).unwrap();
        }
    }
    pin_self_cpu0();
    println!(
        "# blk_vs_qsd: libblkio virtio-blk-vhost-user, 1 queue, {BS} B random I/O, {secs} s per case, front-end on CPU 0, back-end on CPU {}",
        backend_cpu()
    );
    // Rounds: every back-end runs each workload once per round, back-ends interleaved,
    // so that load from elsewhere on the machine hits them alike; the median round is
    // reported (IOPS, latency and CPU each as their median).
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let bes: Vec<Backend> = backends(&blk, qsd.as_deref(), &shm, &sock)
        .into_iter()
        .filter(|be| be.name.contains(filter.as_str()))
        // A spinning back-end on the front-end's only CPU measures nothing useful.
        .filter(|be| backend_cpu() == "1" || !be.name.contains("busy-poll"))
        .collect();
    let workloads = [
        (Op::Read, 1),
        (Op::Write, 1),
        (Op::Read, 32),
        (Op::Write, 32),
    ];
    let mut samples: Vec<Vec<Result>> = vec![Vec::new(); bes.len() * workloads.len()];
    for round in 0..rounds {
        eprintln!("round {}/{rounds}", round + 1);
        for (wi, &(op, qd)) in workloads.iter().enumerate() {
            for (bi, be) in bes.iter().enumerate() {
                let peer = spawn(&be.args, be.name, &sock);
                let r = run(&sock, peer.pid(), op, qd, secs);
                drop(peer);
                let _ = std::fs::remove_file(&sock);
                samples[bi * workloads.len() + wi].push(r);
            }
        }
    }
    let median = |v: &[Result], f: fn(&Result) -> f64| {
        let mut x: Vec<f64> = v.iter().map(f).collect();
        x.sort_by(f64::total_cmp);
        x[x.len() / 2]
    };
    let mut results: Vec<(&'static str, char, bool, Op, usize, Result)> = Vec::new();
    for (bi, be) in bes.iter().enumerate() {
        for (wi, &(op, qd)) in workloads.iter().enumerate() {
            let v = &samples[bi * workloads.len() + wi];
            let r = Result {
                iops: median(v, |r| r.iops),
                mean_us: median(v, |r| r.mean_us),
                p50_us: median(v, |r| r.p50_us),
                p99_us: median(v, |r| r.p99_us),
                cpu_ns_per_req: median(v, |r| r.cpu_ns_per_req),
            };
            println!(
                "({}) {:<27} rand{:<5} QD{:<2}: {:>8.0} IOPS  lat mean {:>6.1} us p50 {:>6.1} p99 {:>7.1}  backend CPU {:>6.0} ns/req",
                be.group,
                be.name,
                if op == Op::Read { "read" } else { "write" },
                qd,
                r.iops,
                r.mean_us,
                r.p50_us,
                r.p99_us,
                r.cpu_ns_per_req
            );
            results.push((be.name, be.group, be.ours, op, qd, r));
        }
    }
    println!("\n# ratios (ours / qsd setup): IOPS ratio, qsd CPU per request / ours");
    for (oname, group, ours, op, qd, o) in &results {
        if !*ours {
            continue;
        }
        for (name, _, _, _, _, r) in results
            .iter()
            .filter(|x| !x.2 && x.1 == *group && x.3 == *op && x.4 == *qd)
        {
            println!(
                "({group}) {oname:<27} vs {name:<26} rand{:<5} QD{qd:<2}: IOPS x{:.2}  CPU/req x{:.2} lower",
                if *op == Op::Read { "read" } else { "write" },
                o.iops / r.iops,
                r.cpu_ns_per_req / o.cpu_ns_per_req
            );
        }
    }
    let _ = std::fs::remove_file(&shm);

    // Split vs packed with our own probe (in-memory disk, 50% reads, QD 32 and 1).
    if "probe".contains(filter.as_str()) || filter.is_empty() {
        println!("\n# vhost-probe blk: split vs packed, in-memory disk, 4 KiB, 50% reads");
        for (busy, qd) in [(false, "1"), (false, "32"), (true, "1"), (true, "32")] {
            if busy && backend_cpu() == "0" {
                continue;
            }
            for layout in ["split", "packed"] {
                let mut args = vec![
                    blk.display().to_string(),
                    "--socket-path".into(),
                    sock.display().to_string(),
                    "--memory".into(),
                    "256M".into(),
                ];
                if busy {
                    args.push("--busy-poll".into());
                }
                let peer = spawn(&args, "vhost-user-blk", &sock);
                let out = Command::new("taskset")
                    .args(["-c", "0"])
                    .arg(&probe)
                    .args(["blk", "--socket"])
                    .arg(&sock)
                    .args(["--layout", layout, "--queue-depth", qd, "--json"])
                    .args(["--duration", &secs.to_string()])
                    .output()
                    .unwrap();
                drop(peer);
                let _ = std::fs::remove_file(&sock);
                let text = String::from_utf8_lossy(&out.stdout);
                let mode = if busy { "busy-poll" } else { "blocking" };
                println!(
                    "{layout:<6} {mode:<9} QD{qd:<2}: {}",
                    summarize_probe(&text)
                );
            }
        }
    }
}

/// Picks the IOPS and latency figures out of the probe's JSON (without a JSON parser:
/// the fields named `iops` and `p50`/`p99`-like keys, as printed).
fn summarize_probe(json: &str) -> String {
    let mut parts = Vec::new();
    for key in ["\"iops\"", "\"mib_s\"", "\"mean\"", "\"p50\"", "\"p99\""] {
        if let Some(i) = json.find(key) {
            let rest = &json[i + key.len()..];
            let val: String = rest
                .trim_start_matches([':', ' '])
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            parts.push(format!("{}={val}", key.trim_matches('"')));
        }
    }
    if parts.is_empty() {
        format!("(unparsed) {}", json.trim())
    } else {
        parts.join(" ")
    }
}
