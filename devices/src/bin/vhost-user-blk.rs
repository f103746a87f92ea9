//! `vhost-user-blk`: a vhost-user-blk back-end (see `devices::blk::cli`).

fn main() -> std::process::ExitCode {
    devices::blk::cli::main(std::env::args_os())
}
