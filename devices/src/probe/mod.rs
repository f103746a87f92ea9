//! `vhost-probe`: a front-end that connects to any vhost-user back-end, prints what it
//! offers and negotiates, and drives I/O through our driver rings.
//!
//! - [`names`]: feature bits by name;
//! - [`blk`]: a virtio-blk driver ([`blk::BlkClient`]), the verified write/read pass and
//!   the random I/O run;
//! - [`cli`]: the program and its modes (`caps`, `blk`, `check`, `rng`, `fs`);
//! - [`check`]: the conformance battery;
//! - [`simple`]: the virtio-rng and virtio-fs drivers.

pub mod blk;
pub mod check;
pub mod cli;
pub mod names;
pub mod simple;
