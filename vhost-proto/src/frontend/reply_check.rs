//! Checks a back-end reply against the request it answers, as strictly as requests are
//! checked (spec §5 reply column): a hostile back-end gets a fatal error, never a panic.

use crate::session::FatalError;
use crate::wire::{FrontendReply, FrontendReq};

/// What the front-end remembers about the request whose reply it waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Detail {
    None,
    VringIndex(u32),
    Config { offset: u32, size: u32 },
}

fn bad(request: FrontendReq, reason: &'static str) -> FatalError {
    FatalError::BadReply {
        request: request.into(),
        reason,
    }
}

/// Validates a reply body against its request.
pub(crate) fn check<H>(
    request: FrontendReq,
    detail: Detail,
    reply: &FrontendReply<H>,
) -> Result<(), FatalError> {
    use FrontendReply as P;
    use FrontendReq as C;
    match (request, reply) {
        (C::GetVringBase, P::VringBase { index, .. }) => match detail {
            Detail::VringIndex(i) if i == *index => Ok(()),
            _ => Err(bad(request, "vring base reply names another ring")),
        },
        (C::GetConfig, P::Empty) => Ok(()),
        (C::GetConfig, P::Config { offset, data, .. }) => match detail {
            Detail::Config { offset: o, size } if o == *offset && size as usize == data.len() => {
                Ok(())
            }
            _ => Err(bad(request, "config reply with another offset or size")),
        },
        (C::GetInflightFd, P::InflightFd { desc, fd }) => {
            if desc.mmap_size != 0 && fd.is_none() {
                Err(bad(request, "inflight buffer without fd"))
            } else if desc.mmap_size == 0 && fd.is_some() {
                Err(bad(request, "fd for an empty inflight buffer"))
            } else {
                Ok(())
            }
        }
        (C::GetShmemConfig, P::ShmemConfig { config }) => {
            let used = config.memory_sizes.iter().filter(|s| **s != 0).count();
            if used == config.nregions as usize {
                Ok(())
            } else {
                Err(bad(
                    request,
                    "shmem nregions does not count the non-zero sizes",
                ))
            }
        }
        (C::GetStatus, P::U64 { value }) if *value > 0xff => {
            Err(bad(request, "status is not a byte"))
        }
        (C::CreateCryptoSession, P::CryptoSession { .. })
        | (C::PostcopyAdvise, P::PostcopyAdvise { .. })
        | (C::SetMemTable, P::MemTable { .. })
        | (C::AddMemReg, P::AddMemReg { .. })
        | (C::GetSharedObject, P::SharedObject { .. })
        | (C::SetDeviceStateFd, P::DeviceStateFd { .. })
        | (C::SetLogBase, P::U64 { .. } | P::Empty) => Ok(()),
        (
            C::GetFeatures
            | C::GetProtocolFeatures
            | C::GetQueueNum
            | C::GetMaxMemSlots
            | C::GetStatus
            | C::IotlbMsg
            | C::PostcopyEnd
            | C::CheckDeviceState,
            P::U64 { .. },
        ) => Ok(()),
        _ => Err(bad(request, "wrong reply type")),
    }
}
