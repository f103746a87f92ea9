//! vhost-user over blocking std Unix sockets.
//!
//! Filled by its own issue; an empty library until then.
#![deny(missing_docs)]
