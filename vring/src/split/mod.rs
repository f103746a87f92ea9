//! Split virtqueues (virtqueue spec §2).
