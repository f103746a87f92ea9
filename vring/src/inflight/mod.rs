//! Inflight I/O tracking (vhost-user spec §7.12).
