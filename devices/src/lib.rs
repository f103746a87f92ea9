//! Reference vhost-user backends (blk, net) and a frontend probe.
//!
//! Filled by its own issue; an empty library until then.
#![deny(missing_docs)]
