//! A small stderr logger for the programs: quiet by default (warnings and errors),
//! `-v` for info, `-vv` for debug, `-vvv` for trace; `RUST_LOG=debug` etc. also works.

use std::io::Write;

struct Stderr {
    level: log::LevelFilter,
}

impl log::Log for Stderr {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let mut e = std::io::stderr().lock();
            let _ = writeln!(
                e,
                "[{} {}] {}",
                record.level().as_str().to_ascii_lowercase(),
                record.target(),
                record.args()
            );
        }
    }

    fn flush(&self) {}
}

/// The level `verbosity` `-v` flags ask for (`RUST_LOG` wins when it names a level).
pub fn level(verbosity: u8) -> log::LevelFilter {
    if let Ok(v) = std::env::var("RUST_LOG")
        && let Ok(l) = v.parse::<log::LevelFilter>()
    {
        return l;
    }
    match verbosity {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        2 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    }
}

/// Installs the logger (once; later calls only change the level).
pub fn init(verbosity: u8) {
    let level = level(verbosity);
    let _ = log::set_logger(Box::leak(Box::new(Stderr { level })));
    log::set_max_level(level);
}
