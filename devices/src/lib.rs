//! Reference vhost-user back-ends and a front-end probe.
//!
//! - [`blk`]: the vhost-user-blk device (request codec, config space, images, queue
//!   handler) and its program, `vhost-user-blk`;
//! - [`probe`]: `vhost-probe`, a front-end that connects to any back-end, prints what it
//!   offers and negotiates, and drives block I/O through our driver rings;
//! - [`size`], [`logger`]: what the programs share (sizes like `64M`, a stderr logger).
#![deny(missing_docs)]

pub mod blk;
pub mod logger;
pub mod probe;
pub mod size;
