//! A tiny Linux guest for QEMU-frontend tests, and the workspace binaries those tests run.
//!
//! - [`require_kernel`]: Debian's cloud kernel (vmlinuz and its modules), extracted from
//!   the `linux-image-*-cloud-amd64` package by `.ci/install-peers` into
//!   [`DEFAULT_KERNEL_DIR`] (or `VHOST_GUEST_KERNEL_DIR`; or installed on the host under
//!   `/boot` and `/lib/modules`).
//! - [`build_initramfs`]: a gzip'd cpio (newc) holding static busybox, the virtio modules
//!   ([`VIRTIO_BLK_MODULES`]), an `/init` script and data files, built once per content and
//!   cached under the target directory.
//! - [`workspace_binary`]: the path of a binary of the `devices` crate, built on demand
//!   with `cargo build` (the `tests` crate cannot use `CARGO_BIN_EXE_*` of another package).
//! - [`QemuBlk`]: the QEMU 7.2 (TCG) command line that boots such a guest against a
//!   vhost-user-blk socket.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// Where `.ci/install-peers` extracts the guest kernel package (`boot/vmlinuz-*` and
/// `lib/modules/*` below it).
pub const DEFAULT_KERNEL_DIR: &str = "/opt/vhost-guest/kernel";

/// The variable that points at another extracted kernel package directory.
pub const KERNEL_DIR_VAR: &str = "VHOST_GUEST_KERNEL_DIR";

/// The modules a virtio-blk guest loads, in dependency order (every virtio driver is a
/// module in Debian's kernels; in 6.1 `virtio` needs symbols of `virtio_ring`).
pub const VIRTIO_BLK_MODULES: [&str; 6] = [
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio_blk",
];

/// A guest kernel: its image and its module tree (`lib/modules/<version>`).
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The bzImage.
    pub vmlinuz: PathBuf,
    /// `lib/modules/<version>`.
    pub modules: PathBuf,
}

impl Kernel {
    /// The path of module `name` (an uncompressed `.ko`) in the module tree.
    pub fn module(&self, name: &str) -> Option<PathBuf> {
        find_file(&self.modules.join("kernel"), &format!("{name}.ko"))
    }
}

fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let p = entry.path();
        if p.is_dir() {
            if let Some(f) = find_file(&p, name) {
                return Some(f);
            }
        } else if p.file_name().is_some_and(|n| n == name) {
            return Some(p);
        }
    }
    None
}

/// The cloud kernel under `root` (`root/boot/vmlinuz-*-cloud-amd64` and
/// `root/lib/modules/<same version>`).
fn kernel_under(root: &Path) -> Option<Kernel> {
    let mut names: Vec<String> = std::fs::read_dir(root.join("boot"))
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("vmlinuz-") && n.ends_with("-cloud-amd64"))
        .collect();
    names.sort();
    for name in names.iter().rev() {
        let version = &name["vmlinuz-".len()..];
        let modules = root.join("lib/modules").join(version);
        if modules.is_dir() {
            return Some(Kernel {
                vmlinuz: root.join("boot").join(name),
                modules,
            });
        }
    }
    None
}

/// Finds the guest kernel: `$VHOST_GUEST_KERNEL_DIR`, else [`DEFAULT_KERNEL_DIR`], else
/// the host's `/boot` and `/lib/modules` (`linux-image-cloud-amd64` installed).
pub fn find_kernel() -> Option<Kernel> {
    if let Some(dir) = std::env::var_os(KERNEL_DIR_VAR) {
        return kernel_under(Path::new(&dir));
    }
    kernel_under(Path::new(DEFAULT_KERNEL_DIR)).or_else(|| kernel_under(Path::new("/")))
}

/// The guest kernel for test `test`, with the peer rules of [`crate::require_peer()`]: a
/// missing kernel skips the test (`None`, a `SKIPPED` line) or, with
/// `VHOST_REQUIRE_PEERS=1`, panics.
pub fn require_kernel(test: &str) -> Option<Kernel> {
    if let Some(k) = find_kernel() {
        return Some(k);
    }
    let hint = format!(
        "run .ci/install-peers as root (it extracts linux-image-cloud-amd64 into \
         {DEFAULT_KERNEL_DIR}), or point {KERNEL_DIR_VAR} at an extracted kernel package"
    );
    if crate::peers_required() {
        panic!(
            "{test}: guest kernel not found and {}=1 ({hint})",
            crate::REQUIRE_PEERS_VAR
        );
    }
    eprintln!("SKIPPED: {test}: guest kernel not found ({hint})");
    None
}

/// The build directory of the running test binary (`target/<profile>`), found from
/// `current_exe()` (`target/<profile>/deps/<test>-<hash>`).
pub fn profile_dir() -> io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let deps = exe
        .parent()
        .ok_or_else(|| io::Error::other("test binary has no directory"))?;
    let dir = if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().unwrap_or(deps)
    } else {
        deps
    };
    Ok(dir.to_path_buf())
}

/// The path of binary `bin` of the `devices` crate, in the same target directory and
/// profile as the running test binary, built first with `cargo build -p devices --bin
/// BIN` (once per test process; a no-op when it is up to date).
///
/// Why this way: integration tests get `CARGO_BIN_EXE_*` only for binaries of their own
/// package, and artifact dependencies are unstable. Cargo releases its build lock before
/// it runs test binaries, so the nested build does not deadlock; it shares the target
/// directory, so it reuses what the outer build compiled. `VHOST_BIN_DIR` points at a
/// directory with prebuilt binaries instead (nothing is built then).
pub fn workspace_binary(bin: &str) -> io::Result<PathBuf> {
    static BUILT: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    if let Some(dir) = std::env::var_os("VHOST_BIN_DIR") {
        return Ok(Path::new(&dir).join(bin));
    }
    let profile_dir = profile_dir()?;
    let path = profile_dir.join(bin);
    let built = BUILT.get_or_init(|| Mutex::new(Vec::new()));
    let mut built = built
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if built.iter().any(|b| b == bin) {
        return Ok(path);
    }
    let target_dir = profile_dir
        .parent()
        .ok_or_else(|| io::Error::other("no target directory"))?;
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_owned(),
        Some("release") => "release".to_owned(),
        Some(other) => other.to_owned(),
    };
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .arg("build")
        .arg("--quiet")
        .arg("--manifest-path")
        .arg(&manifest)
        .args(["-p", "devices", "--bin", bin, "--profile", &profile])
        .arg("--target-dir")
        .arg(target_dir)
        .status()?;
    if !status.success() {
        return Err(io::Error::other(format!(
            "cargo build -p devices --bin {bin} failed: {status}"
        )));
    }
    built.push(bin.to_owned());
    Ok(path)
}

/// A built initramfs.
#[derive(Debug, Clone)]
pub struct Initramfs {
    /// The gzip'd cpio archive.
    pub path: PathBuf,
}

/// Builds (or reuses from the cache under `target/<profile>/guest/`) an initramfs with
/// static busybox at `/bin/busybox`, the [`VIRTIO_BLK_MODULES`] at `/lib/<name>.ko`, `init`
/// as `/init` and `files` (name relative to `/`, content). `busybox` and `cpio` are the
/// peer programs; `gzip` must be in `PATH`.
pub fn build_initramfs(
    kernel: &Kernel,
    busybox: &Path,
    cpio: &Path,
    init: &str,
    files: &[(&str, &[u8])],
) -> io::Result<Initramfs> {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut h = DefaultHasher::new();
    kernel.vmlinuz.hash(&mut h);
    busybox.hash(&mut h);
    init.hash(&mut h);
    files.hash(&mut h);
    let key = format!("{:016x}", h.finish());
    let cache = profile_dir()?.join("guest");
    let out = cache.join(format!("initrd-{key}.gz"));
    if out.exists() {
        return Ok(Initramfs { path: out });
    }
    let stage = cache.join(format!("stage-{key}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&stage);
    for d in ["bin", "lib", "dev", "proc", "sys", "tmp"] {
        std::fs::create_dir_all(stage.join(d))?;
    }
    std::fs::copy(busybox, stage.join("bin/busybox"))?;
    for m in VIRTIO_BLK_MODULES {
        let src = kernel.module(m).ok_or_else(|| {
            io::Error::other(format!(
                "module {m}.ko not found under {}",
                kernel.modules.display()
            ))
        })?;
        std::fs::copy(src, stage.join(format!("lib/{m}.ko")))?;
    }
    write_exec(&stage.join("init"), init.as_bytes())?;
    for (name, data) in files {
        let p = stage.join(name.trim_start_matches('/'));
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(p, data)?;
    }
    let tmp = cache.join(format!("initrd-{key}.gz.{}", std::process::id()));
    let script = format!(
        "cd '{}' && find . | '{}' -o -H newc -R 0:0 --quiet | gzip -1 > '{}'",
        stage.display(),
        cpio.display(),
        tmp.display()
    );
    let status = Command::new("sh").args(["-c", &script]).status()?;
    let _ = std::fs::remove_dir_all(&stage);
    if !status.success() {
        return Err(io::Error::other(format!(
            "building the initramfs failed: {status}"
        )));
    }
    std::fs::rename(&tmp, &out)?;
    Ok(Initramfs { path: out })
}

fn write_exec(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, data)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
}

/// A QEMU 7.2 TCG guest with one `vhost-user-blk-pci` disk.
#[derive(Debug, Clone)]
pub struct QemuBlk {
    /// The guest kernel.
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
    /// The back-end's socket.
    pub socket: PathBuf,
    /// `packed=on` on the device.
    pub packed: bool,
    /// `num-queues` of the device.
    pub num_queues: u16,
    /// Guest CPUs (`-smp`): the guest uses at most one request queue per CPU.
    pub cpus: u16,
    /// Guest RAM in MiB (shared memfd).
    pub mem_mib: u32,
    /// Extra kernel command line (e.g. `vhost_mode=basic`, passed to `/init` as
    /// environment variables).
    pub append: String,
}

impl QemuBlk {
    /// The command line.
    pub fn command(&self, qemu: &Path) -> Command {
        let mut c = Command::new(qemu);
        let mem = self.mem_mib;
        c.args([
            "-machine",
            "q35,accel=tcg",
            "-nographic",
            "-no-reboot",
            "-nic",
            "none",
        ])
        .args(["-m", &format!("{mem}")])
        .args(["-smp", &self.cpus.to_string()])
        .args([
            "-object",
            &format!("memory-backend-memfd,id=mem,size={mem}M,share=on"),
            "-numa",
            "node,memdev=mem",
        ])
        .arg("-kernel")
        .arg(&self.kernel)
        .arg("-initrd")
        .arg(&self.initrd)
        .args([
            "-append",
            &format!("console=ttyS0 quiet panic=-1 {}", self.append),
        ])
        .arg("-chardev")
        .arg(format!("socket,id=c0,path={}", self.socket.display()))
        .args([
            "-device",
            &format!(
                "vhost-user-blk-pci,chardev=c0,num-queues={}{}",
                self.num_queues,
                if self.packed { ",packed=on" } else { "" }
            ),
        ]);
        c
    }
}
