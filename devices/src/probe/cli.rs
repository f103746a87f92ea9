//! The `vhost-probe` program: one subcommand per mode, each `vhost-probe MODE --socket
//! PATH`.
//!
//! Exit status: 0 when the mode ran and every check passed, 1 when connecting, the
//! negotiation or a check failed, 2 for a bad command line.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use vhost_backend::vhost_proto::wire::{ProtocolFeatures, VirtioFeatures};
use vhost_io_std::frontend::Frontend;

use super::blk::{self, BlkClient, ClientOptions, Error, IoParams, IoReport, Verified};
use super::names::{DeviceKind, feature_name, feature_names, protocol_names};
use super::{check, simple};
use crate::blk::config::BlkConfig;
use crate::size::{format_size, parse_size};

/// vhost-probe: connects to a vhost-user back-end as its front-end.
#[derive(Debug, Parser)]
#[command(
    name = "vhost-probe",
    version,
    about = "A vhost-user front-end that probes back-ends: what they offer, block I/O, entropy, a virtio-fs file, and a conformance check",
    after_help = "Exit status: 0 when every check passed, 1 on a failure, 2 for a bad command line."
)]
pub struct Args {
    /// The mode.
    #[command(subcommand)]
    pub mode: Mode,
    /// More log output on stderr (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// The probe's modes.
#[derive(Debug, Subcommand)]
pub enum Mode {
    /// What the back-end offers: features by name, protocol features, queues, config.
    Caps(CapsArgs),
    /// Drive a vhost-user-blk back-end: negotiation, a verified write/read pass, a flush,
    /// then random I/O with IOPS, throughput and latency percentiles. WRITES to the
    /// disk's first blocks and anywhere during random writes (use --read-percent 100 on
    /// a disk whose data matters; a read-only disk is only read).
    Blk(BlkArgs),
    /// Conformance run against any back-end: malformed and out-of-order requests, a
    /// fresh connection per case; how it answered each and whether it survived.
    Check(CheckArgs),
    /// Read entropy from a virtio-rng back-end (device type 4, one queue).
    Rng(RngArgs),
    /// Read a file from a virtio-fs back-end: FUSE_INIT, LOOKUP, OPEN, READ, RELEASE
    /// through the request queue (queue 1; queue 0 is hiprio).
    Fs(FsArgs),
}

/// `rng` options.
#[derive(Debug, clap::Args)]
pub struct RngArgs {
    /// The back-end's vhost-user socket.
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// Bytes of entropy to read, e.g. 64 or 4K.
    #[arg(long, default_value = "64", value_parser = parse_size)]
    pub bytes: u64,
    /// Largest writable buffer per request.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1048576))]
    pub chunk: u32,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `fs` options.
#[derive(Debug, clap::Args)]
pub struct FsArgs {
    /// The back-end's vhost-user socket.
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// The file to read, by name in the shared directory's root.
    #[arg(long, value_name = "NAME")]
    pub file: String,
    /// Read at most this many bytes, e.g. 1M.
    #[arg(long, default_value = "1M", value_parser = parse_size)]
    pub max_bytes: u64,
    /// Print JSON (content in hex) instead of the content.
    #[arg(long)]
    pub json: bool,
}

/// `check` options.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The back-end's vhost-user socket.
    #[arg(long, value_name = "PATH", required_unless_present = "list")]
    pub socket: Option<PathBuf>,
    /// The back-end's process: check it stays alive and its fd count does not grow.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Seconds to wait for each answer.
    #[arg(long, default_value_t = 1.0)]
    pub timeout: f64,
    /// Run only this case (repeatable).
    #[arg(long = "case", value_name = "NAME")]
    pub cases: Vec<String>,
    /// Skip this case (repeatable).
    #[arg(long, value_name = "NAME")]
    pub skip: Vec<String>,
    /// List the cases and exit.
    #[arg(long)]
    pub list: bool,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// `caps` options.
#[derive(Debug, clap::Args)]
pub struct CapsArgs {
    /// The back-end's vhost-user socket.
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// Name device feature bits (and decode the config space) as this device type.
    #[arg(long, value_enum, default_value = "unknown")]
    pub device: DeviceArg,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Device types `caps` knows the bits of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    /// Device bits as `bit N`.
    Unknown,
    /// virtio-blk.
    Blk,
}

/// Ring layouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LayoutArg {
    /// Split rings.
    Split,
    /// Packed rings (RING_PACKED).
    Packed,
}

/// `blk` options.
#[derive(Debug, clap::Args)]
pub struct BlkArgs {
    /// The back-end's vhost-user socket.
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// Ring layout.
    #[arg(long, value_enum, default_value = "split")]
    pub layout: LayoutArg,
    /// Requests in flight during the random I/O run.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub queue_depth: u16,
    /// Bytes per request, e.g. 4K.
    #[arg(long, default_value = "4K", value_parser = parse_size)]
    pub block_size: u64,
    /// Seconds of random I/O (0: skip the run), e.g. 2 or 0.5.
    #[arg(long, default_value_t = 2.0)]
    pub duration: f64,
    /// Percentage of reads in the random run.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub read_percent: u8,
    /// Blocks of the verified write/read pass.
    #[arg(long, default_value_t = 64)]
    pub verify_blocks: u32,
    /// Entries per ring.
    #[arg(long, default_value_t = 256)]
    pub queue_size: u16,
    /// Print a JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs the program with these arguments (the first is the program name).
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
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
    let r = match &args.mode {
        Mode::Caps(a) => caps(a).map(|s| print!("{s}")),
        Mode::Blk(a) => run_blk(a, &mut std::io::stdout()),
        Mode::Check(a) => run_check(a, &mut std::io::stdout()),
        Mode::Rng(a) => run_rng(a, &mut std::io::stdout()),
        Mode::Fs(a) => run_fs(a, &mut std::io::stdout()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vhost-probe: {e}");
            ExitCode::from(1)
        }
    }
}

/// Runs the `rng` mode.
pub fn run_rng(a: &RngArgs, out: &mut dyn std::io::Write) -> Result<(), Error> {
    if a.bytes == 0 || a.bytes > 64 << 20 {
        return Err("--bytes must be in 1..=64M".into());
    }
    let front = connect(&a.socket)?;
    let e = simple::read_entropy(front, a.bytes as usize, a.chunk)?;
    let hex: String = e.bytes.iter().map(|b| format!("{b:02x}")).collect();
    if a.json {
        writeln!(
            out,
            "{{\"socket\": {}, \"bytes\": {}, \"requests\": {}, \"hex\": \"{hex}\"}}",
            json_str(&a.socket.display().to_string()),
            e.bytes.len(),
            e.requests
        )?;
    } else {
        writeln!(
            out,
            "entropy: {} bytes in {} requests from {}",
            e.bytes.len(),
            e.requests,
            a.socket.display()
        )?;
        write!(out, "{}", simple::hex_lines(&e.bytes))?;
    }
    Ok(())
}

/// Runs the `fs` mode.
pub fn run_fs(a: &FsArgs, out: &mut dyn std::io::Write) -> Result<(), Error> {
    if a.file.is_empty() || a.file.contains('/') || a.file.contains('\0') {
        return Err("--file must be a name in the root directory".into());
    }
    let front = connect(&a.socket)?;
    let r = simple::read_file(front, &a.file, a.max_bytes)?;
    if a.json {
        let hex: String = r.data.iter().map(|b| format!("{b:02x}")).collect();
        writeln!(
            out,
            "{{\"socket\": {}, \"fuse\": \"{}.{}\", \"file\": {}, \"nodeid\": {}, \"size\": {}, \"read\": {}, \"hex\": \"{hex}\"}}",
            json_str(&a.socket.display().to_string()),
            r.version.0,
            r.version.1,
            json_str(&a.file),
            r.nodeid,
            r.size,
            r.data.len()
        )?;
    } else {
        out.write_all(&r.data)?;
    }
    eprintln!(
        "vhost-probe fs: FUSE {}.{}, {} (node {}, {} bytes), read {} bytes",
        r.version.0,
        r.version.1,
        a.file,
        r.nodeid,
        r.size,
        r.data.len()
    );
    Ok(())
}

/// Runs the `check` mode, writing the table (or JSON) to `out`; an error when a case
/// did not survive.
pub fn run_check(a: &CheckArgs, out: &mut dyn std::io::Write) -> Result<(), Error> {
    if a.list {
        write!(out, "{}", check::list())?;
        return Ok(());
    }
    let socket = a.socket.clone().ok_or("--socket is required")?;
    if !(a.timeout > 0.0 && a.timeout <= 600.0) {
        return Err("--timeout must be in (0, 600] seconds".into());
    }
    let report = check::run(&check::CheckOptions {
        socket,
        pid: a.pid,
        timeout: Duration::from_secs_f64(a.timeout),
        only: a.cases.clone(),
        skip: a.skip.clone(),
    })?;
    if a.json {
        write!(out, "{}", report.json())?;
    } else {
        write!(out, "{}", report.text())?;
    }
    let failed: Vec<&str> = report
        .cases
        .iter()
        .filter(|c| !c.ok())
        .map(|c| c.name)
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("the back-end did not survive: {}", failed.join(", ")).into())
    }
}

fn connect(path: &Path) -> Result<Frontend, Error> {
    Frontend::connect(path).map_err(|e| format!("connecting to {}: {e}", path.display()).into())
}

/// The `caps` mode's output.
pub fn caps(a: &CapsArgs) -> Result<String, Error> {
    let mut front = connect(&a.socket)?;
    let device = match a.device {
        DeviceArg::Blk => DeviceKind::Blk,
        DeviceArg::Unknown => DeviceKind::Unknown,
    };
    let features = front.get_features()?;
    let mut protocol = ProtocolFeatures::empty();
    let (mut queues, mut slots, mut config) = (None, None, None);
    if features.contains(VirtioFeatures::PROTOCOL_FEATURES) {
        protocol = front.get_protocol_features()?;
        let ask = protocol
            & (ProtocolFeatures::MQ
                | ProtocolFeatures::CONFIG
                | ProtocolFeatures::CONFIGURE_MEM_SLOTS
                | ProtocolFeatures::REPLY_ACK);
        front.set_protocol_features(ask)?;
        if ask.contains(ProtocolFeatures::MQ) {
            queues = Some(front.get_queue_num()?);
        }
        if ask.contains(ProtocolFeatures::CONFIGURE_MEM_SLOTS) {
            slots = Some(front.get_max_mem_slots()?);
        }
        if ask.contains(ProtocolFeatures::CONFIG) {
            // The config size is the device's: try the common sizes, largest first.
            for size in [96, 72, 60, 8] {
                if let Ok(c) = front.get_config(0, size) {
                    config = Some(c);
                    break;
                }
            }
        }
    }
    let fnames = feature_names(features.bits(), device);
    let pnames = protocol_names(protocol);
    let blk = config
        .as_deref()
        .filter(|_| device == DeviceKind::Blk)
        .and_then(BlkConfig::decode);
    let mut o = String::new();
    if a.json {
        let _ = write!(
            o,
            "{{\"features\": \"{:#x}\", \"feature_names\": {}, \"protocol_features\": \"{:#x}\", \"protocol_feature_names\": {}",
            features.bits(),
            json_strings(&fnames),
            protocol.bits(),
            json_strings(&pnames)
        );
        let _ = write!(o, ", \"queues\": {}", json_opt(queues));
        let _ = write!(o, ", \"max_mem_slots\": {}", json_opt(slots));
        match &config {
            Some(c) => {
                let hex: String = c.iter().map(|b| format!("{b:02x}")).collect();
                let _ = write!(o, ", \"config\": \"{hex}\"");
            }
            None => o.push_str(", \"config\": null"),
        }
        if let Some(c) = &blk {
            let _ = write!(o, ", \"blk_config\": {}", blk_config_json(c));
        }
        o.push_str("}\n");
        return Ok(o);
    }
    let _ = writeln!(o, "back-end:           {}", a.socket.display());
    let _ = writeln!(o, "features:           {:#018x}", features.bits());
    for n in &fnames {
        let _ = writeln!(o, "  {n}");
    }
    let _ = writeln!(o, "protocol features:  {:#x}", protocol.bits());
    for n in &pnames {
        let _ = writeln!(o, "  {n}");
    }
    let _ = writeln!(o, "queues:             {}", opt(queues));
    let _ = writeln!(o, "max memory slots:   {}", opt(slots));
    match &config {
        Some(c) => {
            let _ = writeln!(o, "config space:       {} bytes", c.len());
            for (i, chunk) in c.chunks(16).enumerate() {
                let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
                let _ = writeln!(o, "  {:03x}: {}", i * 16, hex.join(" "));
            }
        }
        None => {
            let _ = writeln!(o, "config space:       (not readable)");
        }
    }
    if let Some(c) = &blk {
        o.push_str(&blk_config_text(c));
    }
    Ok(o)
}

fn opt(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

fn json_opt(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "null".into())
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn json_strings(v: &[String]) -> String {
    let items: Vec<String> = v.iter().map(|s| json_str(s)).collect();
    format!("[{}]", items.join(", "))
}

/// The decoded config space, one field a line.
pub fn blk_config_text(c: &BlkConfig) -> String {
    let mut o = String::new();
    let cap = c.capacity.get();
    let _ = writeln!(
        o,
        "config:             capacity {cap} sectors ({})",
        format_size(cap.saturating_mul(512))
    );
    let _ = writeln!(
        o,
        "                    size_max {}, seg_max {}, blk_size {}",
        c.size_max.get(),
        c.seg_max.get(),
        c.blk_size.get()
    );
    let _ = writeln!(
        o,
        "                    topology: physical_block_exp {}, alignment_offset {}, min_io_size {}, opt_io_size {}",
        c.physical_block_exp,
        c.alignment_offset,
        c.min_io_size.get(),
        c.opt_io_size.get()
    );
    let _ = writeln!(
        o,
        "                    writeback {}, num_queues {}",
        c.writeback,
        c.num_queues.get()
    );
    let _ = writeln!(
        o,
        "                    discard: {} sectors x {} segments, alignment {}",
        c.max_discard_sectors.get(),
        c.max_discard_seg.get(),
        c.discard_sector_alignment.get()
    );
    let _ = writeln!(
        o,
        "                    write zeroes: {} sectors x {} segments, may unmap {}",
        c.max_write_zeroes_sectors.get(),
        c.max_write_zeroes_seg.get(),
        c.write_zeroes_may_unmap
    );
    o
}

fn blk_config_json(c: &BlkConfig) -> String {
    format!(
        "{{\"capacity\": {}, \"size_max\": {}, \"seg_max\": {}, \"blk_size\": {}, \"physical_block_exp\": {}, \"alignment_offset\": {}, \"min_io_size\": {}, \"opt_io_size\": {}, \"writeback\": {}, \"num_queues\": {}, \"max_discard_sectors\": {}, \"max_discard_seg\": {}, \"discard_sector_alignment\": {}, \"max_write_zeroes_sectors\": {}, \"max_write_zeroes_seg\": {}, \"write_zeroes_may_unmap\": {}}}",
        c.capacity.get(),
        c.size_max.get(),
        c.seg_max.get(),
        c.blk_size.get(),
        c.physical_block_exp,
        c.alignment_offset,
        c.min_io_size.get(),
        c.opt_io_size.get(),
        c.writeback,
        c.num_queues.get(),
        c.max_discard_sectors.get(),
        c.max_discard_seg.get(),
        c.discard_sector_alignment.get(),
        c.max_write_zeroes_sectors.get(),
        c.max_write_zeroes_seg.get(),
        c.write_zeroes_may_unmap
    )
}

/// The negotiation table: every bit offered or asked for, with offered/acked columns.
pub fn negotiation_table(c: &BlkClient) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "  {:<22} {:<8} acked", "feature", "offered");
    let bits = c.offered.bits() | c.features.bits();
    for b in 0..64 {
        let m = 1u64 << b;
        if bits & m == 0 {
            continue;
        }
        let yes = |v: bool| if v { "yes" } else { "-" };
        let _ = writeln!(
            o,
            "  {:<22} {:<8} {}",
            feature_name(b, DeviceKind::Blk),
            yes(c.offered.bits() & m != 0),
            yes(c.features.bits() & m != 0)
        );
    }
    let _ = writeln!(
        o,
        "  protocol offered:      {}",
        protocol_names(c.offered_protocol).join(" ")
    );
    let _ = writeln!(
        o,
        "  protocol acked:        {}",
        protocol_names(c.protocol).join(" ")
    );
    o
}

/// What a `blk` run found.
#[derive(Debug)]
pub struct BlkOutcome {
    /// The verified pass.
    pub verified: Verified,
    /// GET_ID's answer.
    pub serial: Option<String>,
    /// The random run (None when skipped).
    pub io: Option<IoReport>,
}

/// Runs the `blk` mode, writing its report to `out`.
pub fn run_blk(a: &BlkArgs, out: &mut dyn std::io::Write) -> Result<(), Error> {
    let packed = a.layout == LayoutArg::Packed;
    let depth = usize::from(a.queue_depth);
    let queue_size = a
        .queue_size
        .max(u16::try_from((depth * 3).next_power_of_two()).unwrap_or(1024))
        .min(1024);
    let front = connect(&a.socket)?;
    let mut c = BlkClient::negotiate(
        front,
        ClientOptions {
            packed,
            queues: 1,
            queue_size,
            ram: (64 << 20) + 2 * a.block_size * u64::from(a.queue_depth),
        },
    )?;
    let layout = if packed { "packed" } else { "split" };
    if !a.json {
        writeln!(
            out,
            "== vhost-probe blk: {} ({layout} rings) ==",
            a.socket.display()
        )?;
        write!(out, "{}", negotiation_table(&c))?;
        writeln!(
            out,
            "queues:             {} offered, {} used, {} entries",
            opt(c.queue_num),
            c.rings.len(),
            queue_size
        )?;
        match &c.config {
            Some(cfg) => write!(out, "{}", blk_config_text(cfg))?,
            None => writeln!(out, "config:             (CONFIG not offered)")?,
        }
    }
    let block_size = u32::try_from(a.block_size)
        .ok()
        .filter(|b| b % 512 == 0 && *b > 0 && *b <= 1 << 20)
        .ok_or("--block-size must be a multiple of 512 up to 1M")?;
    let serial = c.get_id(0)?.ok();
    let verified = blk::verify(&mut c, 0, a.verify_blocks, block_size, 0x5eed)?;
    if !a.json {
        writeln!(
            out,
            "serial (GET_ID):    {}",
            serial
                .as_deref()
                .map(json_str)
                .unwrap_or_else(|| "(unsupported)".into())
        )?;
        writeln!(
            out,
            "verify:             {} x {} {} and read back: OK; flush: {}",
            verified.blocks,
            format_size(u64::from(verified.block_size)),
            if c.read_only() {
                "read (read-only disk)"
            } else {
                "written"
            },
            match verified.flushed {
                Some(true) => "OK",
                Some(false) => "FAILED",
                None => "not negotiated",
            }
        )?;
    }
    if verified.flushed == Some(false) {
        return Err("FLUSH failed".into());
    }
    let io = if a.duration > 0.0 {
        let params = IoParams {
            queue_depth: depth,
            block_size,
            duration: Duration::from_secs_f64(a.duration.min(86400.0)),
            read_percent: a.read_percent,
            progress: a.duration >= 3.0 && !a.json,
            seed: 0x1234_5678,
        };
        let r = blk::random_io(&mut c, 0, &params)?;
        if !a.json {
            writeln!(
                out,
                "random I/O:         QD {depth}, {} blocks, {}% reads, {:.1} s, {layout}",
                format_size(u64::from(block_size)),
                if c.read_only() { 100 } else { a.read_percent },
                r.seconds
            )?;
            writeln!(
                out,
                "  {:.0} IOPS, {:.1} MiB/s, {} requests ({} reads), {} errors",
                r.iops, r.mib_s, r.ops, r.reads, r.errors
            )?;
            writeln!(
                out,
                "  latency us: p50 {:.1}, p99 {:.1}, p99.9 {:.1}, mean {:.1}, max {:.1}",
                r.p50_us, r.p99_us, r.p999_us, r.mean_us, r.max_us
            )?;
        }
        if r.errors > 0 {
            return Err(format!("{} requests of the random run failed", r.errors).into());
        }
        Some(r)
    } else {
        None
    };
    c.stop()?;
    if a.json {
        let mut o = String::new();
        let _ = write!(
            o,
            "{{\"socket\": {}, \"layout\": \"{layout}\", \"offered\": \"{:#x}\", \"offered_names\": {}, \"acked\": \"{:#x}\", \"acked_names\": {}, \"protocol_offered\": {}, \"protocol_acked\": {}, \"queues\": {}",
            json_str(&a.socket.display().to_string()),
            c.offered.bits(),
            json_strings(&feature_names(c.offered.bits(), DeviceKind::Blk)),
            c.features.bits(),
            json_strings(&feature_names(c.features.bits(), DeviceKind::Blk)),
            json_strings(&protocol_names(c.offered_protocol)),
            json_strings(&protocol_names(c.protocol)),
            json_opt(c.queue_num)
        );
        match &c.config {
            Some(cfg) => {
                let _ = write!(o, ", \"config\": {}", blk_config_json(cfg));
            }
            None => o.push_str(", \"config\": null"),
        }
        let _ = write!(
            o,
            ", \"serial\": {}, \"verify\": {{\"blocks\": {}, \"block_size\": {}, \"ok\": true, \"flushed\": {}}}",
            serial
                .as_deref()
                .map(json_str)
                .unwrap_or_else(|| "null".into()),
            verified.blocks,
            verified.block_size,
            verified
                .flushed
                .map(|f| f.to_string())
                .unwrap_or_else(|| "null".into())
        );
        match &io {
            Some(r) => {
                let _ = write!(
                    o,
                    ", \"io\": {{\"queue_depth\": {depth}, \"block_size\": {block_size}, \"read_percent\": {}, \"seconds\": {:.3}, \"ops\": {}, \"reads\": {}, \"errors\": {}, \"iops\": {:.0}, \"mib_s\": {:.2}, \"latency_us\": {{\"p50\": {:.2}, \"p99\": {:.2}, \"p99.9\": {:.2}, \"mean\": {:.2}, \"max\": {:.2}}}}}",
                    if c.read_only() { 100 } else { a.read_percent },
                    r.seconds,
                    r.ops,
                    r.reads,
                    r.errors,
                    r.iops,
                    r.mib_s,
                    r.p50_us,
                    r.p99_us,
                    r.p999_us,
                    r.mean_us,
                    r.max_us
                );
            }
            None => o.push_str(", \"io\": null"),
        }
        o.push_str("}\n");
        out.write_all(o.as_bytes())?;
    }
    Ok(())
}
