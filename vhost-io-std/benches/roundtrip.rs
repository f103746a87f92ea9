//! Control-plane round trips per second: SET_VRING_NUM with REPLY_ACK over a
//! socketpair, our Frontend and Server against rust-vmm's `vhost` Frontend
//! and BackendReqHandler, in the same run.
//!
//! `cargo bench -p vhost-io-std --bench roundtrip` (add `-- <count>` to
//! change the number of round trips; syscalls per message: run the bench
//! binary under `strace -c -f`).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::fs::File;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use vhost::VhostBackend;
use vhost::vhost_user::message::*;
use vhost::vhost_user::{
    BackendReqHandler, Frontend as VmmFrontend, GpuBackend, VhostUserBackendReqHandlerMut,
    VhostUserFrontend,
};
use vhost_backend::echo::Echo;
use vhost_io_std::backend::Server;
use vhost_io_std::frontend::Frontend;
use vhost_proto::wire::{ProtocolFeatures, VirtioFeatures};

type VResult<T> = vhost::vhost_user::Result<T>;

fn no<T>() -> VResult<T> {
    Err(vhost::vhost_user::Error::InvalidOperation(
        "not in this bench",
    ))
}

/// The smallest rust-vmm back-end handler that answers the bench's requests.
#[derive(Default)]
struct VmmBackend {
    protocol: u64,
    vring_num: [u32; 2],
}

impl VhostUserBackendReqHandlerMut for VmmBackend {
    fn set_owner(&mut self) -> VResult<()> {
        Ok(())
    }
    fn reset_owner(&mut self) -> VResult<()> {
        Ok(())
    }
    fn reset_device(&mut self) -> VResult<()> {
        Ok(())
    }
    fn get_features(&mut self) -> VResult<u64> {
        Ok((VirtioFeatures::VERSION_1 | VirtioFeatures::PROTOCOL_FEATURES).bits())
    }
    fn set_features(&mut self, _features: u64) -> VResult<()> {
        Ok(())
    }
    fn set_mem_table(
        &mut self,
        _ctx: &[VhostUserMemoryRegion],
        _files: Vec<File>,
        _postcopy: Option<bool>,
    ) -> VResult<Option<Vec<u64>>> {
        no()
    }
    fn set_vring_num(&mut self, index: u32, num: u32) -> VResult<()> {
        let slot = self
            .vring_num
            .get_mut(index as usize)
            .ok_or(vhost::vhost_user::Error::InvalidParam)?;
        *slot = num;
        Ok(())
    }
    fn set_vring_addr(
        &mut self,
        _: u32,
        _: VhostUserVringAddrFlags,
        _: u64,
        _: u64,
        _: u64,
        _: u64,
    ) -> VResult<()> {
        no()
    }
    fn set_vring_base(&mut self, _: u32, _: u32) -> VResult<()> {
        no()
    }
    fn get_vring_base(&mut self, _: u32) -> VResult<VhostUserVringState> {
        no()
    }
    fn set_vring_kick(&mut self, _: u8, _: Option<File>) -> VResult<()> {
        no()
    }
    fn set_vring_call(&mut self, _: u8, _: Option<File>) -> VResult<()> {
        no()
    }
    fn set_vring_err(&mut self, _: u8, _: Option<File>) -> VResult<()> {
        no()
    }
    fn get_protocol_features(&mut self) -> VResult<VhostUserProtocolFeatures> {
        Ok(VhostUserProtocolFeatures::REPLY_ACK | VhostUserProtocolFeatures::MQ)
    }
    fn set_protocol_features(&mut self, features: u64) -> VResult<()> {
        self.protocol = features;
        Ok(())
    }
    fn get_queue_num(&mut self) -> VResult<u64> {
        Ok(2)
    }
    fn set_vring_enable(&mut self, _: u32, _: bool) -> VResult<()> {
        no()
    }
    fn get_config(&mut self, _: u32, _: u32, _: VhostUserConfigFlags) -> VResult<Vec<u8>> {
        no()
    }
    fn set_config(&mut self, _: u32, _: &[u8], _: VhostUserConfigFlags) -> VResult<()> {
        no()
    }
    fn set_gpu_socket(&mut self, _: GpuBackend) -> VResult<()> {
        no()
    }
    fn get_shared_object(&mut self, _: VhostUserSharedMsg) -> VResult<File> {
        no()
    }
    fn get_inflight_fd(&mut self, _: &VhostUserInflight) -> VResult<(VhostUserInflight, File)> {
        no()
    }
    fn set_inflight_fd(&mut self, _: &VhostUserInflight, _: File) -> VResult<()> {
        no()
    }
    fn get_max_mem_slots(&mut self) -> VResult<u64> {
        Ok(8)
    }
    fn add_mem_region(
        &mut self,
        _: &VhostUserSingleMemoryRegion,
        _: File,
        _: Option<bool>,
    ) -> VResult<Option<u64>> {
        no()
    }
    fn remove_mem_region(&mut self, _: &VhostUserSingleMemoryRegion) -> VResult<()> {
        no()
    }
    fn set_device_state_fd(
        &mut self,
        _: VhostTransferStateDirection,
        _: VhostTransferStatePhase,
        _: File,
    ) -> VResult<Option<File>> {
        no()
    }
    fn check_device_state(&mut self) -> VResult<()> {
        no()
    }
    fn get_shmem_config(&mut self) -> VResult<VhostUserShMemConfig> {
        no()
    }
    fn set_log_base(&mut self, _: &VhostUserLog, _: File) -> VResult<()> {
        no()
    }
}

fn ours(count: u32) -> f64 {
    let (a, b) = UnixStream::pair().unwrap();
    let server = Server::from_stream(b, Echo::new(2))
        .unwrap()
        .spawn()
        .unwrap();
    let mut front = Frontend::from_stream(a).unwrap();
    front.get_features().unwrap();
    front
        .set_protocol_features(ProtocolFeatures::REPLY_ACK | ProtocolFeatures::MQ)
        .unwrap();
    front.set_owner().unwrap();
    front
        .set_features(VirtioFeatures::VERSION_1 | VirtioFeatures::PROTOCOL_FEATURES)
        .unwrap();
    assert!(front.reply_ack());
    let start = Instant::now();
    for i in 0..count {
        front.set_vring_num((i % 2) as u16, 256).unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    drop(front);
    server.join().unwrap();
    f64::from(count) / secs
}

fn rust_vmm(count: u32) -> f64 {
    let (a, b) = UnixStream::pair().unwrap();
    let backend = Arc::new(Mutex::new(VmmBackend::default()));
    let mut handler = BackendReqHandler::from_stream(b, backend);
    let thread = std::thread::spawn(move || while handler.handle_request().is_ok() {});
    let mut front = VmmFrontend::from_stream(a, 2);
    front.get_features().unwrap();
    front.set_owner().unwrap();
    front
        .set_protocol_features(VhostUserProtocolFeatures::REPLY_ACK | VhostUserProtocolFeatures::MQ)
        .unwrap();
    front
        .set_features((VirtioFeatures::VERSION_1 | VirtioFeatures::PROTOCOL_FEATURES).bits())
        .unwrap();
    front.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    let start = Instant::now();
    for i in 0..count {
        front.set_vring_num((i % 2) as usize, 256).unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    drop(front);
    thread.join().unwrap();
    f64::from(count) / secs
}

fn main() {
    // `cargo bench` passes `--bench`; a bare number sets the count.
    let count: u32 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200_000);
    let which = std::env::var("ROUNDTRIP_ONLY").unwrap_or_default();
    let mut ours_best = 0f64;
    let mut vmm_best = 0f64;
    for _ in 0..3 {
        if which != "rust-vmm" {
            ours_best = ours_best.max(ours(count));
        }
        if which != "ours" {
            vmm_best = vmm_best.max(rust_vmm(count));
        }
    }
    println!(
        "SET_VRING_NUM + REPLY_ACK round trips over a socketpair, {count} per run, best of 3:"
    );
    if ours_best > 0.0 {
        println!("  vhost-io-std (Frontend <-> Server):              {ours_best:>10.0} /s");
    }
    if vmm_best > 0.0 {
        println!("  rust-vmm vhost 0.18 (Frontend <-> BackendReqHandler): {vmm_best:>10.0} /s");
    }
    if ours_best > 0.0 && vmm_best > 0.0 {
        println!("  ratio: {:.2}x", ours_best / vmm_best);
    }
}
