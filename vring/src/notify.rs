//! The event-index rule shared by both ring layouts.

/// Whether publishing the entries `[old, new)` passes `event`: the
/// `vring_need_event` formula of virtqueue spec §2.7, in wrapping u16
/// arithmetic. Used for used-buffer notifications (split `used_event`, packed
/// DESC mode) and for kicks (split `avail_event`).
///
/// ```
/// use vring::need_event;
/// assert!(need_event(0, 1, 0)); // event 0 is in [0, 1)
/// assert!(!need_event(1, 1, 0));
/// assert!(need_event(65535, 2, 65534)); // across the u16 wrap
/// ```
#[inline]
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

#[cfg(test)]
mod tests {
    use super::need_event;

    #[test]
    fn matches_the_window_definition() {
        // Exhaustive over a small window at several bases, including the wrap.
        for base in [0u16, 100, 65530] {
            for d_old in 0u16..8 {
                for d_new in d_old..d_old + 8 {
                    for d_ev in 0u16..20 {
                        let old = base.wrapping_add(d_old);
                        let new = base.wrapping_add(d_new);
                        let ev = base.wrapping_add(d_ev);
                        let in_window = d_ev >= d_old && d_ev < d_new;
                        assert_eq!(need_event(ev, new, old), in_window, "{ev} {new} {old}");
                    }
                }
            }
        }
    }
}
