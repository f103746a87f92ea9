//! Bodies of the cargo-fuzz targets (`fuzz/fuzz_targets/*.rs`), plain
//! functions so that a stable `cargo test` replays the checked-in seeds in
//! `fuzz/seeds/<target>/`.
//!
//! Each body builds guest memory from arbitrary bytes (a hostile driver) and
//! drives the device side of a ring over it; it must never panic.
pub mod packed;
pub mod split;
