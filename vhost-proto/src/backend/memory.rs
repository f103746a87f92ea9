//! The back-end's model of guest memory: the regions the front-end mapped (spec §3.6, §3.7,
//! §5 ids 5, 37, 38, §7.10).

use crate::wire::MemoryRegion;

use crate::session::Rule;

/// The memory regions currently mapped, in the order they were added. Region fds are not
/// kept here: they are handed to the device in the memory events, which maps them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryTable {
    regions: Vec<MemoryRegion>,
}

fn overlaps(a_start: u64, a_len: u64, b_start: u64, b_len: u64) -> bool {
    // Regions are validated: start + len never overflows.
    a_start < b_start.saturating_add(b_len) && b_start < a_start.saturating_add(a_len)
}

impl MemoryTable {
    /// The regions.
    pub fn regions(&self) -> &[MemoryRegion] {
        &self.regions
    }

    /// Number of regions.
    pub fn len(&self) -> usize {
        self.regions.len()
    }

    /// Whether no region is mapped.
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// Checks that `r` overlaps none of `others` in guest-physical or user address space.
    fn check_disjoint<'a>(
        r: &MemoryRegion,
        others: impl IntoIterator<Item = &'a MemoryRegion>,
    ) -> Result<(), Rule> {
        for o in others {
            if overlaps(
                r.guest_phys_addr,
                r.memory_size,
                o.guest_phys_addr,
                o.memory_size,
            ) || overlaps(r.user_addr, r.memory_size, o.user_addr, o.memory_size)
            {
                return Err(Rule::RegionOverlap {
                    gpa: r.guest_phys_addr,
                    size: r.memory_size,
                });
            }
        }
        Ok(())
    }

    /// Checks a GPA_ADDRESSES region: its user address must equal its guest address.
    fn check_gpa(r: &MemoryRegion, gpa_addresses: bool) -> Result<(), Rule> {
        if gpa_addresses && r.user_addr != r.guest_phys_addr {
            return Err(Rule::GpaMismatch {
                gpa: r.guest_phys_addr,
                user: r.user_addr,
            });
        }
        Ok(())
    }

    /// Validates a whole new table (SET_MEM_TABLE): within `max_slots`, pairwise disjoint.
    pub fn check_table(
        regions: &[MemoryRegion],
        max_slots: u32,
        gpa_addresses: bool,
    ) -> Result<(), Rule> {
        if regions.len() > max_slots as usize {
            return Err(Rule::TooManyRegions {
                count: regions.len(),
                max: max_slots,
            });
        }
        for (i, r) in regions.iter().enumerate() {
            Self::check_gpa(r, gpa_addresses)?;
            Self::check_disjoint(r, regions.iter().take(i))?;
        }
        Ok(())
    }

    /// Validates one more region (ADD_MEM_REG): a free slot, disjoint from the others.
    pub fn check_add(
        &self,
        r: &MemoryRegion,
        max_slots: u32,
        gpa_addresses: bool,
    ) -> Result<(), Rule> {
        if self.regions.len() >= max_slots as usize {
            return Err(Rule::TooManyRegions {
                count: self.regions.len() + 1,
                max: max_slots,
            });
        }
        Self::check_gpa(r, gpa_addresses)?;
        Self::check_disjoint(r, &self.regions)
    }

    /// The index of the region REM_MEM_REG names: same guest address, user address and size;
    /// `mmap_offset` is ignored (spec §5 id 38).
    pub fn find(&self, r: &MemoryRegion) -> Result<usize, Rule> {
        self.regions
            .iter()
            .position(|o| {
                o.guest_phys_addr == r.guest_phys_addr
                    && o.user_addr == r.user_addr
                    && o.memory_size == r.memory_size
            })
            .ok_or(Rule::RegionNotFound {
                gpa: r.guest_phys_addr,
                size: r.memory_size,
            })
    }

    /// Replaces the table.
    pub(crate) fn replace(&mut self, regions: Vec<MemoryRegion>) {
        self.regions = regions;
    }

    /// Adds a region (checked with [`check_add`](Self::check_add)).
    pub(crate) fn add(&mut self, r: MemoryRegion) {
        self.regions.push(r);
    }

    /// Removes the region at `i`.
    pub(crate) fn remove(&mut self, i: usize) {
        if i < self.regions.len() {
            self.regions.remove(i);
        }
    }

    /// Translates a front-end user address to a guest-physical address through the region
    /// that contains it (spec §7.10).
    pub fn user_to_guest(&self, addr: u64) -> Option<u64> {
        self.regions.iter().find_map(|r| {
            let off = addr.checked_sub(r.user_addr)?;
            (off < r.memory_size).then(|| r.guest_phys_addr.saturating_add(off))
        })
    }

    /// Translates the user range `addr..addr + len` (`len` ≥ 1) to a guest-physical address,
    /// if one region holds all of it (spec §7.10). Checked arithmetic: a range that wraps is
    /// in no region.
    pub fn user_range_to_guest(&self, addr: u64, len: u64) -> Option<u64> {
        self.regions.iter().find_map(|r| {
            let off = addr.checked_sub(r.user_addr)?;
            let end = off.checked_add(len)?;
            (end <= r.memory_size).then(|| r.guest_phys_addr.checked_add(off))?
        })
    }

    /// Whether one region holds all of the guest-physical range `gpa..gpa + len`.
    pub fn contains_guest_range(&self, gpa: u64, len: u64) -> bool {
        self.regions.iter().any(|r| {
            gpa.checked_sub(r.guest_phys_addr)
                .and_then(|off| off.checked_add(len))
                .is_some_and(|end| end <= r.memory_size)
        })
    }

    /// Total bytes of all regions (saturating).
    pub fn total_size(&self) -> u64 {
        Self::sum_sizes(&self.regions)
    }

    /// Total bytes of `regions` (saturating).
    pub(crate) fn sum_sizes(regions: &[MemoryRegion]) -> u64 {
        regions
            .iter()
            .fold(0u64, |a, r| a.saturating_add(r.memory_size))
    }

    /// Whether a guest-physical address lies in some region.
    pub fn contains_guest(&self, gpa: u64) -> bool {
        self.regions.iter().any(|r| {
            gpa.checked_sub(r.guest_phys_addr)
                .is_some_and(|off| off < r.memory_size)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(gpa: u64, size: u64, user: u64) -> MemoryRegion {
        MemoryRegion {
            guest_phys_addr: gpa,
            memory_size: size,
            user_addr: user,
            mmap_offset: 0,
            xen: None,
        }
    }

    #[test]
    fn overlap_translate_remove() {
        let a = region(0, 0x1000, 0x7f00_0000);
        let b = region(0x1000, 0x1000, 0x7f00_1000);
        assert!(MemoryTable::check_table(&[a, b], 8, false).is_ok());
        assert!(
            MemoryTable::check_table(&[a, region(0x800, 0x1000, 0x9000_0000)], 8, false).is_err()
        );
        assert!(
            MemoryTable::check_table(&[a, region(0x8000, 0x1000, 0x7f00_0800)], 8, false).is_err()
        );
        assert!(MemoryTable::check_table(&[a, b], 1, false).is_err());
        assert!(MemoryTable::check_table(&[a], 8, true).is_err());
        let mut t = MemoryTable::default();
        t.replace(vec![a, b]);
        assert_eq!(t.user_to_guest(0x7f00_1010), Some(0x1010));
        assert_eq!(t.user_to_guest(0x7f00_2000), None);
        assert!(t.contains_guest(0x1fff) && !t.contains_guest(0x2000));
        assert_eq!(
            t.find(&MemoryRegion {
                mmap_offset: 99,
                ..b
            }),
            Ok(1)
        );
        assert!(t.find(&region(0x1000, 0x800, 0x7f00_1000)).is_err());
        assert!(t.check_add(&region(0x1800, 0x10, 0), 8, false).is_err());
        assert_eq!(t.user_range_to_guest(0x7f00_0ff0, 0x10), Some(0xff0));
        assert_eq!(
            t.user_range_to_guest(0x7f00_0ff0, 0x11),
            None,
            "spans two regions"
        );
        assert_eq!(t.user_range_to_guest(u64::MAX, 2), None);
        assert!(t.contains_guest_range(0x1000, 0x1000));
        assert!(!t.contains_guest_range(0x1001, 0x1000));
        assert!(!t.contains_guest_range(0xfff, 2), "spans two regions");
        assert!(!t.contains_guest_range(u64::MAX, 2));
        assert_eq!(t.total_size(), 0x2000);
        t.remove(0);
        assert_eq!(t.regions(), &[b]);
    }
}
