//! vhost-user sessions in a mio event loop.
//!
//! Filled by its own issue; an empty library until then.
#![deny(missing_docs)]
