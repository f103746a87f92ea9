//! Payload pieces shared by requests and replies: memory regions and tables (spec §3.6–3.8),
//! config payloads (spec §3.11) and the vring index word (spec §3.1).

use zerocopy::IntoBytes;

use super::context::DecodeContext;
use super::encode::Frame;
use super::error::{DecodeError, EncodeError, PayloadError};
use super::flags::ConfigFlags;
use super::layout::{
    ConfigHeaderRaw, MAX_CONFIG_SIZE, MAX_MEM_REGIONS, MemoryRegionRaw, MemoryTableHeaderRaw,
    SingleRegionHeaderRaw, VRING_IDX_MASK, VRING_NOFD_MASK, XenMemoryRegionRaw,
};
use super::types::MemoryRegion;

/// Splits the u64 of SET_VRING_KICK/CALL/ERR into index and no-fd bit (spec §3.1).
pub(crate) fn vring_index_word(value: u64) -> Result<(u8, bool), PayloadError> {
    if value & !(VRING_IDX_MASK | VRING_NOFD_MASK) != 0 {
        return Err(PayloadError::VringIndexReserved { value });
    }
    Ok(((value & VRING_IDX_MASK) as u8, value & VRING_NOFD_MASK != 0))
}

/// Builds the u64 of SET_VRING_KICK/CALL/ERR (spec §3.1).
pub(crate) fn make_vring_index_word(index: u8, has_fd: bool) -> u64 {
    u64::from(index) | if has_fd { 0 } else { VRING_NOFD_MASK }
}

/// Reads one memory region at the start of `bytes` in the context's layout.
pub(crate) fn read_region(
    f: &Frame,
    bytes: &[u8],
    ctx: &DecodeContext,
) -> Result<MemoryRegion, DecodeError> {
    if ctx.xen_mmap {
        f.read::<XenMemoryRegionRaw>(bytes)
            .map(MemoryRegion::from_xen_raw)
    } else {
        f.read::<MemoryRegionRaw>(bytes)
            .map(|r| MemoryRegion::from_raw(r, None))
    }
}

/// Appends one memory region in the context's layout.
pub(crate) fn write_region(
    out: &mut Vec<u8>,
    r: &MemoryRegion,
    ctx: &DecodeContext,
) -> Result<(), EncodeError> {
    match (&r.xen, ctx.xen_mmap) {
        (Some(x), true) => out.extend_from_slice(
            XenMemoryRegionRaw {
                region: r.to_raw(),
                xen_mmap_flags: x.flags.bits(),
                domid: x.domid,
            }
            .as_bytes(),
        ),
        (None, false) => out.extend_from_slice(r.to_raw().as_bytes()),
        (x, xen_mmap) => {
            return Err(EncodeError::XenMismatch {
                present: x.is_some(),
                xen_mmap,
            });
        }
    }
    Ok(())
}

/// Appends a memory table (spec §3.7): the count, then the regions in the context's layout.
pub(crate) fn write_mem_table<'a>(
    out: &mut Vec<u8>,
    regions: impl ExactSizeIterator<Item = &'a MemoryRegion>,
    ctx: &DecodeContext,
) -> Result<(), EncodeError> {
    let count = regions.len();
    if count > MAX_MEM_REGIONS {
        return Err(EncodeError::TooManyRegions { count });
    }
    let hdr = MemoryTableHeaderRaw {
        num_regions: count as u32,
        padding: 0,
    };
    out.extend_from_slice(hdr.as_bytes());
    for r in regions {
        write_region(out, r, ctx)?;
    }
    Ok(())
}

/// Reads a memory table (spec §3.7): the count, then that many regions, validated.
pub(crate) fn read_mem_table(
    f: &Frame,
    payload: &[u8],
    ctx: &DecodeContext,
) -> Result<Vec<MemoryRegion>, DecodeError> {
    let hdr: MemoryTableHeaderRaw = f.read(payload)?;
    let n = hdr.num_regions;
    if n as usize > MAX_MEM_REGIONS {
        return Err(f.invalid(PayloadError::TooManyRegions {
            count: n,
            max: MAX_MEM_REGIONS as u32,
        }));
    }
    let rs = ctx.region_size();
    let expected = size_of::<MemoryTableHeaderRaw>() + n as usize * rs;
    if payload.len() != expected {
        return Err(f.invalid(PayloadError::RegionCountMismatch {
            num_regions: n,
            expected: expected as u32,
            size: payload.len() as u32,
        }));
    }
    let body = payload
        .get(size_of::<MemoryTableHeaderRaw>()..)
        .unwrap_or_default();
    let mut regions = Vec::with_capacity(n as usize);
    for (i, chunk) in body.chunks_exact(rs).enumerate() {
        let r = read_region(f, chunk, ctx)?;
        r.validate(i).map_err(|e| f.invalid(e))?;
        regions.push(r);
    }
    Ok(regions)
}

/// Reads a single-region payload (spec §3.8), validated.
pub(crate) fn read_single_region(
    f: &Frame,
    payload: &[u8],
    ctx: &DecodeContext,
) -> Result<MemoryRegion, DecodeError> {
    let body = payload
        .get(size_of::<SingleRegionHeaderRaw>()..)
        .unwrap_or_default();
    let r = read_region(f, body, ctx)?;
    r.validate(0).map_err(|e| f.invalid(e))?;
    Ok(r)
}

/// Reads a config payload (spec §3.11): header, then exactly `size` data bytes within 4096.
pub(crate) fn read_config<'a>(
    f: &Frame,
    payload: &'a [u8],
) -> Result<(ConfigHeaderRaw, &'a [u8]), DecodeError> {
    let hdr: ConfigHeaderRaw = f.read(payload)?;
    let data = payload
        .get(size_of::<ConfigHeaderRaw>()..)
        .unwrap_or_default();
    if hdr.size as usize != data.len() {
        return Err(f.invalid(PayloadError::ConfigSizeMismatch {
            declared: hdr.size,
            actual: data.len() as u32,
        }));
    }
    match hdr.offset.checked_add(hdr.size) {
        Some(end) if end as usize <= MAX_CONFIG_SIZE => Ok((hdr, data)),
        _ => Err(f.invalid(PayloadError::ConfigRange {
            offset: hdr.offset,
            size: hdr.size,
        })),
    }
}

/// Appends a config payload.
pub(crate) fn write_config(
    out: &mut Vec<u8>,
    offset: u32,
    flags: ConfigFlags,
    data: &[u8],
) -> Result<(), EncodeError> {
    if data.len() > MAX_CONFIG_SIZE {
        return Err(EncodeError::ConfigTooLarge { len: data.len() });
    }
    let hdr = ConfigHeaderRaw {
        offset,
        size: data.len() as u32,
        flags: flags.into(),
    };
    out.extend_from_slice(hdr.as_bytes());
    out.extend_from_slice(data);
    Ok(())
}
