//! The main job: starts `vhost-user-blk` on a 64 MiB in-memory disk on a temp socket (a
//! child process), drives it with `vhost-probe blk` (negotiation table, a verified
//! write/read pass, a short random I/O run, split then packed rings), stops the
//! back-end with SIGTERM and checks that it exited cleanly. No root, no peer.
//!
//! `cargo run --release -p devices --bin vhost-blk-demo`
//!
//! The back-end is this same executable run as `vhost-blk-demo backend ARGS...`, which
//! is exactly `vhost-user-blk ARGS...` (one code path, `devices::blk::cli`), so the demo
//! never runs a stale sibling binary.

use std::error::Error;
use std::ffi::OsString;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};

use devices::probe::cli::{BlkArgs, LayoutArg, run_blk};

/// Removes the demo's directory and kills a back-end still running, however the demo
/// ends.
struct Cleanup {
    dir: PathBuf,
    child: Option<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "backend") {
        let rest = args.into_iter().skip(2);
        return devices::blk::cli::main(
            std::iter::once(OsString::from("vhost-user-blk")).chain(rest),
        );
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vhost-blk-demo: {e}");
            ExitCode::from(1)
        }
    }
}

/// Waits until something accepts on `path`.
fn wait_for_socket(path: &Path, child: &mut Child) -> Result<(), Box<dyn Error>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait()? {
            return Err(format!("the back-end exited early: {status}").into());
        }
        if UnixStream::connect(path).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("the back-end did not listen within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn run() -> Result<(), Box<dyn Error>> {
    let dir = std::env::temp_dir().join(format!("vhost-blk-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut guard = Cleanup {
        dir: dir.clone(),
        child: None,
    };
    let sock = dir.join("blk.sock");
    let exe = std::env::current_exe()?;
    println!(
        "$ vhost-user-blk --socket-path {} --memory 64M --num-queues 2",
        sock.display()
    );
    let child = Command::new(&exe)
        .arg("backend")
        .arg("--socket-path")
        .arg(&sock)
        .args([
            "--memory",
            "64M",
            "--num-queues",
            "2",
            "--serial",
            "demo-disk-0",
        ])
        .spawn()?;
    let pid = child.id();
    let child = guard.child.insert(child);
    wait_for_socket(&sock, child)?;
    println!("back-end: pid {pid}, listening on {}", sock.display());

    for layout in [LayoutArg::Split, LayoutArg::Packed] {
        let name = if layout == LayoutArg::Packed {
            "packed"
        } else {
            "split"
        };
        println!(
            "\n$ vhost-probe blk --socket {} --layout {name} --duration 1",
            sock.display()
        );
        let args = BlkArgs {
            socket: sock.clone(),
            layout,
            queue_depth: 32,
            block_size: 4096,
            duration: 1.0,
            read_percent: 50,
            verify_blocks: 64,
            queue_size: 256,
            json: false,
        };
        run_blk(&args, &mut std::io::stdout()).map_err(|e| e as Box<dyn Error>)?;
    }

    // Stop the back-end as a service manager would.
    let pid = i32::try_from(pid)?;
    // SAFETY: kill(2) on our own child's pid.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        return Err(format!("kill: {}", std::io::Error::last_os_error()).into());
    }
    let mut child = guard.child.take().ok_or("no back-end")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err("the back-end did not stop within 10 s of SIGTERM".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if !status.success() {
        return Err(format!("the back-end exited with {status}").into());
    }
    println!(
        "\nback-end stopped by SIGTERM: {status}, socket removed: {}",
        !sock.exists()
    );
    Ok(())
}
