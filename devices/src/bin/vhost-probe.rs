//! `vhost-probe`: a vhost-user front-end that probes back-ends (see `devices::probe::cli`).

fn main() -> std::process::ExitCode {
    devices::probe::cli::main(std::env::args_os())
}
