//! The front-end's record of what the back-end asked it to map over the back-end channel
//! (spec §6): host notifier areas (BACKEND_VRING_HOST_NOTIFIER_MSG) and VIRTIO Shared
//! Memory mappings (BACKEND_SHMEM_MAP / UNMAP), checked before the VMM acts on them.
//!
//! Sans-IO like the rest of the crate: the table keeps the fd handles and the ranges; the
//! embedder maps them. A hostile back-end gets a [`MappingError`] (answered with a NACK),
//! never a panic.

use std::collections::BTreeMap;

use thiserror::Error;

use crate::backend::Refused;
use crate::wire::layout::SHMEM_MAX_REGIONS;
use crate::wire::{ShmemConfig, ShmemMap};

/// A host notifier area of one ring: `size` bytes at `offset` in its fd.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HostNotifier {
    /// Size of the area.
    pub size: u64,
    /// Offset in the fd.
    pub offset: u64,
}

/// Why a back-end mapping request was refused.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum MappingError {
    /// The ring index names no ring of the device (GET_QUEUE_NUM / the configured count).
    #[error("vring {index} does not exist ({queues} rings)")]
    BadIndex {
        /// The index.
        index: u16,
        /// How many rings there are.
        queues: u16,
    },
    /// A zero-length area or mapping.
    #[error("zero-length mapping")]
    Empty,
    /// The mapping overlaps one already in the same shared memory region.
    #[error(
        "shmem {shmid}: {offset:#x}+{len:#x} overlaps the mapping at {other_offset:#x}+{other_len:#x}"
    )]
    Overlap {
        /// The region.
        shmid: u8,
        /// Start of the new mapping.
        offset: u64,
        /// Its length.
        len: u64,
        /// Start of the existing mapping.
        other_offset: u64,
        /// Its length.
        other_len: u64,
    },
    /// The mapping does not fit its shared memory region (GET_SHMEM_CONFIG sizes).
    #[error("shmem {shmid}: {offset:#x}+{len:#x} is outside the region ({size:#x} bytes)")]
    OutsideRegion {
        /// The region.
        shmid: u8,
        /// Start.
        offset: u64,
        /// Length.
        len: u64,
        /// The region's size (0: no such region).
        size: u64,
    },
    /// UNMAP of a range that was not mapped (exactly) before.
    #[error("shmem {shmid}: nothing mapped at {offset:#x}+{len:#x}")]
    NotMapped {
        /// The region.
        shmid: u8,
        /// Start.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// `offset + len` overflows.
    #[error("range {offset:#x}+{len:#x} overflows")]
    Overflow {
        /// Start.
        offset: u64,
        /// Length.
        len: u64,
    },
}

impl MappingError {
    /// The refusal to answer the back-end with (a NACK).
    pub fn refused(&self) -> Refused {
        Refused::because(match self {
            MappingError::BadIndex { .. } => "no such vring",
            MappingError::Empty => "zero-length mapping",
            MappingError::Overlap { .. } => "overlapping shmem mapping",
            MappingError::OutsideRegion { .. } => "mapping outside its shmem region",
            MappingError::NotMapped { .. } => "unmap of a range not mapped",
            MappingError::Overflow { .. } => "range overflows",
        })
    }
}

/// Host notifier areas by ring, and shared-memory mappings by region, with their fds.
///
/// ```
/// use vhost_proto::frontend::{MappingError, Mappings};
/// use vhost_proto::wire::{ShmemMap, ShmemMapFlags};
///
/// let mut m = Mappings::<i32>::new();
/// let map = |shm_offset, len| ShmemMap { shmid: 0, fd_offset: 0, shm_offset, len, flags: ShmemMapFlags::WRITABLE };
/// m.shmem_map(map(0, 0x1000), 7).unwrap();
/// assert!(matches!(m.shmem_map(map(0x800, 0x1000), 8), Err((MappingError::Overlap { .. }, 8))));
/// assert!(matches!(m.shmem_unmap(&map(0x2000, 0x1000)), Err(MappingError::NotMapped { .. })));
/// assert_eq!(m.shmem_unmap(&map(0, 0x1000)), Ok(7));
/// ```
#[derive(Debug)]
pub struct Mappings<H> {
    queues: Option<u16>,
    region_sizes: Option<Box<[u64; SHMEM_MAX_REGIONS]>>,
    notifiers: BTreeMap<u16, (HostNotifier, H)>,
    /// By (shmid, shm_offset): the mapping and its fd.
    shmem: BTreeMap<(u8, u64), (ShmemMap, H)>,
}

impl<H> Default for Mappings<H> {
    fn default() -> Self {
        Self::new()
    }
}

fn end(offset: u64, len: u64) -> Result<u64, MappingError> {
    offset
        .checked_add(len)
        .ok_or(MappingError::Overflow { offset, len })
}

impl<H> Mappings<H> {
    /// An empty table that checks no ring count and no region sizes.
    pub fn new() -> Self {
        Mappings {
            queues: None,
            region_sizes: None,
            notifiers: BTreeMap::new(),
            shmem: BTreeMap::new(),
        }
    }

    /// Checks ring indexes against `queues` rings from now on.
    pub fn set_queue_count(&mut self, queues: u16) {
        self.queues = Some(queues);
    }

    /// Checks mappings against the region sizes of GET_SHMEM_CONFIG from now on.
    pub fn set_shmem_config(&mut self, config: &ShmemConfig) {
        self.region_sizes = Some(Box::new(config.memory_sizes));
    }

    fn check_index(&self, index: u16) -> Result<(), MappingError> {
        match self.queues {
            Some(queues) if index >= queues => Err(MappingError::BadIndex { index, queues }),
            _ => Ok(()),
        }
    }

    /// BACKEND_VRING_HOST_NOTIFIER_MSG: `Some(fd)` records ring `index`'s area (replacing
    /// and returning the earlier one), `None` removes it (returning it). A refused request
    /// gives its fd back with the error.
    #[allow(clippy::type_complexity)]
    pub fn host_notifier(
        &mut self,
        index: u16,
        area: HostNotifier,
        fd: Option<H>,
    ) -> Result<Option<(HostNotifier, H)>, (MappingError, Option<H>)> {
        if let Err(e) = self.check_index(index) {
            return Err((e, fd));
        }
        match fd {
            None => Ok(self.notifiers.remove(&index)),
            Some(fd) => {
                if area.size == 0 {
                    return Err((MappingError::Empty, Some(fd)));
                }
                if let Err(e) = end(area.offset, area.size) {
                    return Err((e, Some(fd)));
                }
                Ok(self.notifiers.insert(index, (area, fd)))
            }
        }
    }

    /// The host notifier area of ring `index`, if one is recorded.
    pub fn notifier(&self, index: u16) -> Option<&(HostNotifier, H)> {
        self.notifiers.get(&index)
    }

    /// BACKEND_SHMEM_MAP: records `map` with its fd unless it is empty, outside its region,
    /// or overlaps a mapping in the same region (the fd is given back with the error).
    pub fn shmem_map(&mut self, map: ShmemMap, fd: H) -> Result<(), (MappingError, H)> {
        match self.check_map(&map) {
            Ok(()) => {
                self.shmem.insert((map.shmid, map.shm_offset), (map, fd));
                Ok(())
            }
            Err(e) => Err((e, fd)),
        }
    }

    fn check_map(&self, map: &ShmemMap) -> Result<(), MappingError> {
        if map.len == 0 {
            return Err(MappingError::Empty);
        }
        end(map.fd_offset, map.len)?;
        let stop = end(map.shm_offset, map.len)?;
        if let Some(sizes) = &self.region_sizes {
            let size = sizes.get(usize::from(map.shmid)).copied().unwrap_or(0);
            if stop > size {
                return Err(MappingError::OutsideRegion {
                    shmid: map.shmid,
                    offset: map.shm_offset,
                    len: map.len,
                    size,
                });
            }
        }
        // Mappings in one region do not overlap: the one starting last before `stop` is the
        // only candidate.
        if let Some((_, (other, _))) = self
            .shmem
            .range((map.shmid, 0)..(map.shmid, stop))
            .next_back()
        {
            let other_end = other.shm_offset.saturating_add(other.len);
            if other_end > map.shm_offset {
                return Err(MappingError::Overlap {
                    shmid: map.shmid,
                    offset: map.shm_offset,
                    len: map.len,
                    other_offset: other.shm_offset,
                    other_len: other.len,
                });
            }
        }
        Ok(())
    }

    /// BACKEND_SHMEM_UNMAP: removes the mapping at exactly `map`'s region, offset and length
    /// and returns its fd.
    pub fn shmem_unmap(&mut self, map: &ShmemMap) -> Result<H, MappingError> {
        let key = (map.shmid, map.shm_offset);
        match self.shmem.get(&key) {
            Some((m, _)) if m.len == map.len => {
                self.shmem
                    .remove(&key)
                    .map(|(_, fd)| fd)
                    .ok_or(MappingError::NotMapped {
                        shmid: map.shmid,
                        offset: map.shm_offset,
                        len: map.len,
                    })
            }
            _ => Err(MappingError::NotMapped {
                shmid: map.shmid,
                offset: map.shm_offset,
                len: map.len,
            }),
        }
    }

    /// The recorded shared memory mappings, by region and offset.
    pub fn shmem_mappings(&self) -> impl Iterator<Item = &(ShmemMap, H)> {
        self.shmem.values()
    }

    /// Drops every record (the back-end reconnected or was reset); the fds are dropped.
    pub fn clear(&mut self) {
        self.notifiers.clear();
        self.shmem.clear();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::wire::ShmemMapFlags;
    use proptest::prelude::*;

    fn map(shmid: u8, shm_offset: u64, len: u64) -> ShmemMap {
        ShmemMap {
            shmid,
            fd_offset: 0,
            shm_offset,
            len,
            flags: ShmemMapFlags::empty(),
        }
    }

    #[test]
    fn notifiers_are_checked() {
        let mut m = Mappings::<i32>::new();
        m.set_queue_count(2);
        let a = HostNotifier {
            size: 0x1000,
            offset: 0,
        };
        assert_eq!(m.host_notifier(0, a, Some(1)), Ok(None));
        assert_eq!(m.host_notifier(0, a, Some(2)), Ok(Some((a, 1))));
        assert!(matches!(
            m.host_notifier(2, a, Some(3)),
            Err((
                MappingError::BadIndex {
                    index: 2,
                    queues: 2
                },
                Some(3)
            ))
        ));
        let empty = HostNotifier { size: 0, offset: 0 };
        assert!(matches!(
            m.host_notifier(1, empty, Some(4)),
            Err((MappingError::Empty, Some(4)))
        ));
        assert_eq!(m.host_notifier(0, a, None), Ok(Some((a, 2))));
        assert_eq!(m.host_notifier(0, a, None), Ok(None));
    }

    #[test]
    fn region_sizes_bound_mappings() {
        let mut m = Mappings::<i32>::new();
        let mut sizes = [0u64; SHMEM_MAX_REGIONS];
        sizes[1] = 0x4000;
        m.set_shmem_config(&ShmemConfig {
            nregions: 1,
            memory_sizes: sizes,
        });
        assert!(m.shmem_map(map(1, 0x3000, 0x1000), 1).is_ok());
        assert!(matches!(
            m.shmem_map(map(1, 0x3800, 0x1000), 2),
            Err((MappingError::OutsideRegion { .. }, 2))
        ));
        assert!(matches!(
            m.shmem_map(map(0, 0, 0x1000), 3),
            Err((MappingError::OutsideRegion { size: 0, .. }, 3))
        ));
        assert!(matches!(
            m.shmem_map(map(1, u64::MAX, 2), 4),
            Err((MappingError::Overflow { .. }, 4))
        ));
    }

    proptest! {
        /// Against a byte-set model: a map is accepted iff it overlaps nothing mapped in its
        /// region, an unmap iff it names an earlier mapping exactly.
        #[test]
        fn table_matches_model(ops in proptest::collection::vec((any::<bool>(), 0u8..2, 0u64..16, 0u64..6), 1..60)) {
            let mut m = Mappings::<u32>::new();
            let mut model: Vec<(u8, u64, u64)> = Vec::new();
            for (i, (is_map, shmid, off, len)) in ops.into_iter().enumerate() {
                let mp = map(shmid, off, len);
                if is_map {
                    let ok = len > 0 && !model.iter().any(|&(s, o, l)| s == shmid && o < off + len && off < o + l);
                    let r = m.shmem_map(mp, i as u32);
                    prop_assert_eq!(r.is_ok(), ok);
                    if ok { model.push((shmid, off, len)); }
                } else {
                    let pos = model.iter().position(|&(s, o, l)| s == shmid && o == off && l == len);
                    let r = m.shmem_unmap(&mp);
                    prop_assert_eq!(r.is_ok(), pos.is_some());
                    if let Some(p) = pos { model.remove(p); }
                }
            }
            prop_assert_eq!(m.shmem_mappings().count(), model.len());
        }
    }
}
