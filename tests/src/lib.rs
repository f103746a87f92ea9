//! Shared helpers for the workspace's integration and real-peer tests (in `tests/tests`).
#![deny(missing_docs)]
