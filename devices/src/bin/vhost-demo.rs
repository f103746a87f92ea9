//! The std binding end to end: our back-end (an echo device) and our
//! front-end on a real Unix socket in a temp dir, guest memory in a memfd,
//! data through a split ring and then a packed ring.
//!
//! `cargo run --release -p devices --bin vhost-demo`

use std::error::Error;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vhost_backend::echo::Echo;
use vhost_io_std::backend::Server;
use vhost_io_std::frontend::{DriverRing, Frontend, GuestRam};
use vhost_proto::wire::{ProtocolFeatures, VirtioFeatures};
use vring::memory::GuestSlice;

const QUEUE_SIZE: u16 = 256;
const BATCH: u16 = 64;
const REQUEST: u32 = 4096;
const RUN: Duration = Duration::from_millis(1500);
const BUFS: u64 = 1 << 20;

/// Removes the demo's directory however the demo ends.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("vhost-demo: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn Error>> {
    let dir = TempDir(std::env::temp_dir().join(format!("vhost-demo-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0)?;
    let path = dir.0.join("echo.sock");
    let server = Server::bind(&path, Echo::new(2))?.spawn()?;
    println!("back-end: echo device listening on {}", path.display());

    for packed in [false, true] {
        let layout = if packed { "packed" } else { "split" };
        let ram = GuestRam::new(0, 8 << 20)?;
        let mut front = Frontend::connect(&path)?;
        let offered = front.get_features()?;
        let offered_protocol = front.get_protocol_features()?;
        let protocol = offered_protocol
            & (ProtocolFeatures::MQ | ProtocolFeatures::REPLY_ACK | ProtocolFeatures::CONFIG);
        front.set_protocol_features(protocol)?;
        front.set_owner()?;
        let queues = front.get_queue_num()?;
        let mut features = VirtioFeatures::VERSION_1
            | VirtioFeatures::PROTOCOL_FEATURES
            | VirtioFeatures::EVENT_IDX;
        if packed {
            features |= VirtioFeatures::RING_PACKED;
        }
        front.set_features(features & offered)?;
        front.set_mem_table(&[(ram.region(), ram.fd())])?;
        println!("\n== {layout} ring ==");
        println!("offered features:    {offered:?}");
        println!("acked features:      {:?}", features & offered);
        println!("protocol features:   {protocol:?} (of {offered_protocol:?})");
        println!("queues:              {queues} offered, 1 used, {QUEUE_SIZE} entries");
        println!(
            "guest memory:        {} MiB memfd at gpa {:#x}",
            (ram.end() - ram.start()) >> 20,
            ram.start()
        );

        let f = vring::RingFeatures {
            event_idx: true,
            indirect: false,
            in_order: false,
        };
        let (mut ring, _) = if packed {
            DriverRing::packed(&ram, 0, 0, QUEUE_SIZE, f)?
        } else {
            DriverRing::split(&ram, 0, 0, QUEUE_SIZE, f)?
        };
        front.start_ring(&ring, &ram)?;

        let mem = ram.memory();
        for k in 0..u64::from(BATCH) {
            let pattern: Vec<u8> = (0..REQUEST).map(|i| (i as u64 ^ k) as u8).collect();
            GuestSlice::new(mem, BUFS + k * 2 * u64::from(REQUEST), REQUEST as usize)?
                .write_at(0, &pattern)?;
        }
        let start = Instant::now();
        let mut requests = 0u64;
        let mut first = true;
        while start.elapsed() < RUN {
            for k in 0..u64::from(BATCH) {
                let out = BUFS + k * 2 * u64::from(REQUEST);
                ring.add(&[(out, REQUEST)], &[(out + u64::from(REQUEST), REQUEST)])?;
            }
            ring.kick()?;
            let used = ring.collect(BATCH.into(), Duration::from_secs(5))?;
            if used.iter().any(|&(_, len)| len != REQUEST) {
                return Err("the back-end returned a short buffer".into());
            }
            if first {
                // Check the echo once: every byte came back.
                for k in 0..u64::from(BATCH) {
                    let out = BUFS + k * 2 * u64::from(REQUEST);
                    let (mut a, mut b) = (vec![0u8; REQUEST as usize], vec![0u8; REQUEST as usize]);
                    GuestSlice::new(mem, out, REQUEST as usize)?.read_at(0, &mut a)?;
                    GuestSlice::new(mem, out + u64::from(REQUEST), REQUEST as usize)?
                        .read_at(0, &mut b)?;
                    if a != b {
                        return Err("echo mismatch".into());
                    }
                }
                first = false;
            }
            requests += u64::from(BATCH);
        }
        let secs = start.elapsed().as_secs_f64();
        let base = front.get_vring_base(0)?;
        let rps = requests as f64 / secs;
        let mbps = rps * f64::from(REQUEST) / 1e6;
        println!(
            "moved:               {requests} requests of {REQUEST} bytes each way in {secs:.2} s"
        );
        println!("throughput:          {rps:.0} requests/s, {mbps:.1} MB/s echoed");
        println!("stopped at:          vring base {:#010x}", base.raw());
    }
    server.stop()?;
    println!("\nback-end stopped, socket removed: {}", !path.exists());
    Ok(())
}
