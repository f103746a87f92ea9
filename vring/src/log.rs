//! Dirty-page logging for live migration (vhost-user spec §7.7).
//!
//! A [`DirtyLog`] is the bitmap the front-end shares with SET_LOG_BASE: bit
//! `page % 8` of byte `page / 8` is set for every 4 KiB guest page the device
//! writes. Queues hold an `Option<DirtyLog>`; with `None` logging costs one
//! predictable branch per write.

use std::sync::atomic::Ordering;

use crate::memory::SharedRegion;

/// Size of a logged page (`VHOST_LOG_PAGE`).
pub const LOG_PAGE: u64 = 0x1000;

/// A shared dirty-page bitmap.
#[derive(Debug, Clone)]
pub struct DirtyLog {
    region: SharedRegion,
}

impl DirtyLog {
    /// Uses `region` (the mapped log, starting at the bit for guest address 0)
    /// as the bitmap.
    pub fn new(region: SharedRegion) -> Self {
        DirtyLog { region }
    }

    /// The number of guest bytes the bitmap covers.
    pub fn covered_len(&self) -> u64 {
        (self.region.len() as u64).saturating_mul(8 * LOG_PAGE)
    }

    /// Marks the pages of the guest range `[addr, addr + len)` dirty. Pages
    /// beyond the bitmap are ignored (the front-end sized it to cover all
    /// memory; a write outside it cannot be logged). Returns whether every
    /// page was inside the bitmap.
    pub fn mark(&self, addr: u64, len: u64) -> bool {
        if len == 0 {
            return true;
        }
        let first = addr / LOG_PAGE;
        let last = addr.saturating_add(len - 1) / LOG_PAGE;
        let area = self.region.area();
        let mut all = true;
        let mut page = first;
        while page <= last {
            let byte = page / 8;
            let Ok(byte) = usize::try_from(byte) else {
                return false;
            };
            if byte >= area.len() {
                return false;
            }
            // Set all bits of this byte that fall in [page, last].
            let lo = (page % 8) as u32;
            let hi = if last / 8 == page / 8 {
                (last % 8) as u32
            } else {
                7
            };
            let bits = ((0xffu32 >> (7 - hi)) & (0xffu32 << lo)) as u8;
            all &= area.fetch_or_u8(byte, bits, Ordering::Relaxed).is_some();
            page = (page | 7).saturating_add(1);
            if page == 0 {
                break;
            }
        }
        all
    }

    /// Whether the page that contains guest address `addr` is marked dirty.
    pub fn is_dirty(&self, addr: u64) -> bool {
        let page = addr / LOG_PAGE;
        usize::try_from(page / 8)
            .ok()
            .and_then(|byte| self.region.area().read_bytes::<1>(byte))
            .is_some_and(|[b]| b & (1 << (page % 8)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(log: &DirtyLog) -> Vec<u8> {
        let mut v = vec![0u8; log.region.len()];
        log.region.as_slice().read_at(0, &mut v).unwrap();
        v
    }

    #[test]
    fn marks_each_touched_page() {
        let log = DirtyLog::new(SharedRegion::zeroed(4));
        assert!(log.mark(0, 1));
        assert!(log.mark(3 * LOG_PAGE - 1, 2)); // pages 2 and 3
        assert!(log.mark(9 * LOG_PAGE, 8 * LOG_PAGE)); // pages 9..=16
        assert_eq!(bits(&log), vec![0b0000_1101, 0b1111_1110, 0b0000_0001, 0]);
        assert!(log.mark(0, 0));
    }

    #[test]
    fn ignores_pages_beyond_the_bitmap() {
        let log = DirtyLog::new(SharedRegion::zeroed(1));
        assert!(!log.mark(7 * LOG_PAGE, 2 * LOG_PAGE));
        assert_eq!(bits(&log), vec![0x80]);
        assert!(!log.mark(u64::MAX - 10, 100));
    }
}
