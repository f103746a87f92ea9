//! Packed virtqueues (virtqueue spec §3).
