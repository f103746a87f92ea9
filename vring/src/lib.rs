//! Split and packed virtqueues, device and driver side.
#![deny(missing_docs)]
#![deny(clippy::indexing_slicing)]
