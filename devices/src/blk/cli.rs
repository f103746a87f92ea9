//! The `vhost-user-blk` program: QEMU's back-end program conventions
//! (vhost-user.md §8) around a [`BlkDevice`] served by the std runner.
//!
//! Exit status: 0 after a clean stop (SIGTERM, SIGINT, or the end of the `--fd`
//! connection), 1 when the device cannot be set up or serving fails (a missing image, a
//! busy socket path, ...), 2 for a bad command line.

use std::ffi::OsString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use vhost_io_std::backend::{BusyPoll, Server, Stopper};

use super::image::{EngineKind, Image};
use super::{BlkDevice, BlkOptions};
use crate::size::{format_size, parse_size};

/// Default size of the in-memory disk.
pub const DEFAULT_MEMORY: u64 = 64 << 20;

/// The capabilities JSON of `--print-capabilities` (vhost-user.md §8).
pub const CAPABILITIES: &str = r#"{"type": "block", "features": ["blk-file", "read-only"]}"#;

/// Which engine serves a file image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EngineArg {
    /// io_uring, falling back to the thread pool where it is unavailable.
    Auto,
    /// io_uring only (fail if unavailable).
    IoUring,
    /// The thread pool (preadv2/pwritev2 on worker threads).
    Threads,
}

/// vhost-user-blk: a virtio-blk vhost-user back-end.
#[derive(Debug, Parser)]
#[command(
    name = "vhost-user-blk",
    version,
    about = "A vhost-user-blk back-end: an in-memory disk (default) or a raw image file",
    after_help = "Exit status: 0 after a clean stop (SIGTERM/SIGINT, or the --fd connection \
                  ended), 1 when setting up or serving fails, 2 for a bad command line.\n\n\
                  Example:\n  vhost-user-blk --socket-path /tmp/vub.sock --memory 1G\n  \
                  qemu-system-x86_64 ... -chardev socket,id=c0,path=/tmp/vub.sock \
                  -device vhost-user-blk-pci,chardev=c0"
)]
pub struct Args {
    /// Listen for the front-end on this UNIX socket path.
    #[arg(long, value_name = "PATH", required_unless_present_any = ["fd", "print_capabilities"])]
    pub socket_path: Option<PathBuf>,
    /// Serve the front-end on this already connected socket fd.
    #[arg(long, value_name = "FDNUM", conflicts_with = "socket_path")]
    pub fd: Option<i32>,
    /// Print the capabilities JSON and exit (every other option is ignored).
    #[arg(long)]
    pub print_capabilities: bool,
    /// Serve this raw image file or block device (io_uring), instead of an in-memory disk.
    #[arg(
        long,
        visible_alias = "blk-file",
        value_name = "PATH",
        conflicts_with = "memory"
    )]
    pub image: Option<PathBuf>,
    /// Size of the in-memory disk, e.g. 64M, 1G [default: 64M].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub memory: Option<u64>,
    /// Offer a read-only disk (VIRTIO_BLK_F_RO): writes get IOERR.
    #[arg(long)]
    pub read_only: bool,
    /// Open the image with O_DIRECT (guest buffers must be 512-byte aligned).
    #[arg(long, requires = "image")]
    pub direct: bool,
    /// Number of request queues.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub num_queues: u16,
    /// The serial number GET_ID answers (at most 20 bytes are used).
    #[arg(long, default_value = "vhost-user-blk")]
    pub serial: String,
    /// The I/O engine of an image file.
    #[arg(long, value_enum, default_value = "auto")]
    pub io_engine: EngineArg,
    /// Start with the write cache off (every write durable before it completes).
    #[arg(long)]
    pub writethrough: bool,
    /// Busy-poll the rings for the lowest latency: each queue's thread spins on its ring
    /// with guest kicks suppressed, and sleeps until the next kick only after
    /// --busy-poll-idle without work (it takes a core while the guest does I/O).
    #[arg(long)]
    pub busy_poll: bool,
    /// With --busy-poll: microseconds of spinning without work before the thread sleeps
    /// until a kick (0: sleep after the first empty round).
    #[arg(
        long,
        value_name = "MICROS",
        requires = "busy_poll",
        default_value_t = 1000
    )]
    pub busy_poll_idle: u64,
    /// More log output on stderr (-v info, -vv debug, -vvv trace).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// Runs the program with these arguments (the first is the program name).
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let args: Vec<OsString> = args.into_iter().collect();
    // `--print-capabilities` ignores every other option (vhost-user.md §8).
    if args.iter().skip(1).any(|a| a == "--print-capabilities") {
        println!("{CAPABILITIES}");
        return ExitCode::SUCCESS;
    }
    let args = match Args::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    crate::logger::init(args.verbose);
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vhost-user-blk: {e}");
            ExitCode::from(1)
        }
    }
}

/// Builds the device the arguments describe.
pub fn device(args: &Args) -> Result<BlkDevice, String> {
    let image = match &args.image {
        Some(path) => Image::open(path, args.read_only, args.direct).map_err(|e| e.to_string())?,
        None => Image::memory(args.memory.unwrap_or(DEFAULT_MEMORY))
            .map_err(|e| e.to_string())?
            .with_read_only(args.read_only),
    };
    let engine = match args.io_engine {
        EngineArg::Auto => EngineKind::Auto,
        EngineArg::IoUring => EngineKind::IoUring,
        EngineArg::Threads => EngineKind::Threads,
    };
    if engine == EngineKind::IoUring
        && !image.is_memory()
        && let Err(e) = io_uring::IoUring::new(8)
    {
        return Err(format!(
            "--io-engine io-uring: io_uring is unavailable: {e}"
        ));
    }
    Ok(BlkDevice::new(
        image,
        BlkOptions {
            num_queues: args.num_queues,
            serial: args.serial.clone(),
            engine,
            writeback: !args.writethrough,
            ..BlkOptions::default()
        },
    ))
}

fn run(args: &Args) -> Result<(), String> {
    let device = device(args)?;
    let what = match &args.image {
        Some(p) => format!("image {}", p.display()),
        None => "in-memory disk".to_owned(),
    };
    let summary = format!(
        "{what}, {} ({} sectors){}, {} queue(s)",
        format_size(device.image().size()),
        device.capacity(),
        if device.image().is_read_only() {
            ", read-only"
        } else {
            ""
        },
        args.num_queues
    );
    // Signals go to the thread that waits for them, not to the workers.
    let signals = block_signals()?;
    let server = match (&args.socket_path, args.fd) {
        (Some(path), _) => {
            let s = Server::bind(path, device).map_err(|e| e.to_string())?;
            log::info!("serving {summary} on {}", path.display());
            s
        }
        (None, Some(fd)) => {
            let owned = socket_fd(fd)?;
            log::info!("serving {summary} on fd {fd}");
            Server::from_fd(owned, device).map_err(|e| e.to_string())?
        }
        (None, None) => return Err("one of --socket-path or --fd is needed".into()),
    };
    let server = if args.busy_poll {
        log::info!("busy polling, {} us idle spin", args.busy_poll_idle);
        server.with_busy_poll(
            BusyPoll::new().with_idle_spin(std::time::Duration::from_micros(args.busy_poll_idle)),
        )
    } else {
        server
    };
    spawn_signal_waiter(signals, server.stopper())?;
    server.serve().map_err(|e| e.to_string())?;
    log::info!("stopped");
    Ok(())
}

/// Takes fd `fd`, which must be an open socket.
fn socket_fd(fd: i32) -> Result<OwnedFd, String> {
    if fd < 0 {
        return Err(format!("--fd {fd}: not a file descriptor"));
    }
    // SAFETY: fstat writes into the zeroed struct we own; any fd number is allowed.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(format!("--fd {fd}: {}", std::io::Error::last_os_error()));
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(format!("--fd {fd}: not a socket"));
    }
    // SAFETY: the fd is open (fstat succeeded) and was handed to this program to own
    // (the --fd convention); nothing else in the process uses it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Blocks SIGTERM, SIGINT and SIGHUP in this thread (and the threads it starts).
fn block_signals() -> Result<libc::sigset_t, String> {
    // SAFETY: plain libc signal-set calls on a set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        let r = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if r != 0 {
            return Err(format!(
                "pthread_sigmask: {}",
                std::io::Error::from_raw_os_error(r)
            ));
        }
        Ok(set)
    }
}

/// A thread that stops the server when one of `set`'s signals arrives.
fn spawn_signal_waiter(set: libc::sigset_t, stopper: Stopper) -> Result<(), String> {
    struct Set(libc::sigset_t);
    // SAFETY: a sigset_t is plain data.
    unsafe impl Send for Set {}
    let set = Set(set);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let set = set;
            let mut sig = 0;
            // SAFETY: sigwait on a set we own, writing the signal number into `sig`.
            let r = unsafe { libc::sigwait(&set.0, &mut sig) };
            if r == 0 {
                log::info!("signal {sig}: stopping");
            }
            if let Err(e) = stopper.stop() {
                log::error!("stopping the server: {e}");
            }
        })
        .map(drop)
        .map_err(|e| format!("spawning the signal thread: {e}"))
}
