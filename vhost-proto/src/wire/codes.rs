//! Request codes of the two code spaces (spec §5 front-end, §6 back-end).
//!
//! One line per request code, in spec order, so the table reads against the spec.

use core::fmt;

use super::error::UnknownCode;

macro_rules! request_codes {
    (
        $(#[$meta:meta])*
        $name:ident, $space:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal => $spec:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u32)]
        #[non_exhaustive]
        pub enum $name {
            $( $(#[$vmeta])* $variant = $value, )+
        }

        impl $name {
            /// Every code of this code space, in spec order.
            pub const ALL: &'static [$name] = &[ $( $name::$variant, )+ ];

            /// The spec's name of this request (e.g. `SET_MEM_TABLE`), for log lines.
            pub const fn name(self) -> &'static str {
                match self {
                    $( $name::$variant => $spec, )+
                }
            }

            /// The raw code carried in the header's `request` field.
            pub const fn raw(self) -> u32 {
                self as u32
            }
        }

        impl TryFrom<u32> for $name {
            type Error = UnknownCode;

            fn try_from(code: u32) -> Result<Self, UnknownCode> {
                match code {
                    $( $value => Ok($name::$variant), )+
                    _ => Err(UnknownCode { space: $space, code }),
                }
            }
        }

        impl From<$name> for u32 {
            fn from(code: $name) -> u32 {
                code as u32
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", self.name(), *self as u32)
            }
        }
    };
}

request_codes! {
    /// Codes of the requests the front-end sends on the main socket (spec §5, ids 1–44).
    FrontendReq, "front-end" {
        /// Read the back-end's virtio features (§5 id 1).
        GetFeatures = 1 => "GET_FEATURES",
        /// Set the negotiated virtio features (§5 id 2).
        SetFeatures = 2 => "SET_FEATURES",
        /// Mark the sender as owner (§5 id 3).
        SetOwner = 3 => "SET_OWNER",
        /// Deprecated reset (§5 id 4).
        ResetOwner = 4 => "RESET_OWNER",
        /// Replace the guest memory map (§5 id 5).
        SetMemTable = 5 => "SET_MEM_TABLE",
        /// Set up the dirty log (§5 id 6).
        SetLogBase = 6 => "SET_LOG_BASE",
        /// Log eventfd (§5 id 7).
        SetLogFd = 7 => "SET_LOG_FD",
        /// Queue size (§5 id 8).
        SetVringNum = 8 => "SET_VRING_NUM",
        /// Ring addresses (§5 id 9).
        SetVringAddr = 9 => "SET_VRING_ADDR",
        /// Ring position (§5 id 10).
        SetVringBase = 10 => "SET_VRING_BASE",
        /// Stop a ring and read its position (§5 id 11).
        GetVringBase = 11 => "GET_VRING_BASE",
        /// Kick eventfd (§5 id 12).
        SetVringKick = 12 => "SET_VRING_KICK",
        /// Call eventfd (§5 id 13).
        SetVringCall = 13 => "SET_VRING_CALL",
        /// Error eventfd (§5 id 14).
        SetVringErr = 14 => "SET_VRING_ERR",
        /// Read protocol features (§5 id 15).
        GetProtocolFeatures = 15 => "GET_PROTOCOL_FEATURES",
        /// Set protocol features (§5 id 16).
        SetProtocolFeatures = 16 => "SET_PROTOCOL_FEATURES",
        /// Maximum queue count (§5 id 17).
        GetQueueNum = 17 => "GET_QUEUE_NUM",
        /// Enable or disable a ring (§5 id 18).
        SetVringEnable = 18 => "SET_VRING_ENABLE",
        /// Broadcast a RARP (§5 id 19).
        SendRarp = 19 => "SEND_RARP",
        /// Host MTU (§5 id 20).
        NetSetMtu = 20 => "NET_SET_MTU",
        /// Install the back-end channel (§5 id 21).
        SetBackendReqFd = 21 => "SET_BACKEND_REQ_FD",
        /// IOTLB update or invalidation (§5 id 22).
        IotlbMsg = 22 => "IOTLB_MSG",
        /// Byte order of a legacy ring (§5 id 23).
        SetVringEndian = 23 => "SET_VRING_ENDIAN",
        /// Read device config space (§5 id 24).
        GetConfig = 24 => "GET_CONFIG",
        /// Write device config space (§5 id 25).
        SetConfig = 25 => "SET_CONFIG",
        /// Create a crypto session (§5 id 26).
        CreateCryptoSession = 26 => "CREATE_CRYPTO_SESSION",
        /// Close a crypto session (§5 id 27).
        CloseCryptoSession = 27 => "CLOSE_CRYPTO_SESSION",
        /// Open a userfaultfd (§5 id 28).
        PostcopyAdvise = 28 => "POSTCOPY_ADVISE",
        /// Switch to postcopy (§5 id 29).
        PostcopyListen = 29 => "POSTCOPY_LISTEN",
        /// End postcopy (§5 id 30).
        PostcopyEnd = 30 => "POSTCOPY_END",
        /// Ask for the inflight buffer (§5 id 31).
        GetInflightFd = 31 => "GET_INFLIGHT_FD",
        /// Hand the inflight buffer back (§5 id 32).
        SetInflightFd = 32 => "SET_INFLIGHT_FD",
        /// vhost-user-gpu socket (§5 id 33).
        GpuSetSocket = 33 => "GPU_SET_SOCKET",
        /// Reset the device (§5 id 34).
        ResetDevice = 34 => "RESET_DEVICE",
        /// In-band kick (§5 id 35).
        VringKick = 35 => "VRING_KICK",
        /// Maximum memory slots (§5 id 36).
        GetMaxMemSlots = 36 => "GET_MAX_MEM_SLOTS",
        /// Map one region (§5 id 37).
        AddMemReg = 37 => "ADD_MEM_REG",
        /// Unmap one region (§5 id 38).
        RemMemReg = 38 => "REM_MEM_REG",
        /// Set the device status (§5 id 39).
        SetStatus = 39 => "SET_STATUS",
        /// Read the device status (§5 id 40).
        GetStatus = 40 => "GET_STATUS",
        /// Fetch an exported object (§5 id 41).
        GetSharedObject = 41 => "GET_SHARED_OBJECT",
        /// Set up the state-transfer channel (§5 id 42).
        SetDeviceStateFd = 42 => "SET_DEVICE_STATE_FD",
        /// Did the state transfer succeed (§5 id 43).
        CheckDeviceState = 43 => "CHECK_DEVICE_STATE",
        /// Sizes of the shared memory regions (§5 id 44).
        GetShmemConfig = 44 => "GET_SHMEM_CONFIG",
    }
}

request_codes! {
    /// Codes of the requests the back-end sends on the back-end channel (spec §6, ids 1–10).
    BackendReq, "back-end" {
        /// IOTLB miss or access failure (§6 id 1).
        IotlbMsg = 1 => "BACKEND_IOTLB_MSG",
        /// Config space changed (§6 id 2).
        ConfigChangeMsg = 2 => "BACKEND_CONFIG_CHANGE_MSG",
        /// Map or drop a host notifier (§6 id 3).
        VringHostNotifierMsg = 3 => "BACKEND_VRING_HOST_NOTIFIER_MSG",
        /// In-band used-buffer interrupt (§6 id 4).
        VringCall = 4 => "BACKEND_VRING_CALL",
        /// In-band error signal (§6 id 5).
        VringErr = 5 => "BACKEND_VRING_ERR",
        /// Register as exporter of a UUID (§6 id 6).
        SharedObjectAdd = 6 => "BACKEND_SHARED_OBJECT_ADD",
        /// Unregister a UUID (§6 id 7).
        SharedObjectRemove = 7 => "BACKEND_SHARED_OBJECT_REMOVE",
        /// Look up a UUID (§6 id 8).
        SharedObjectLookup = 8 => "BACKEND_SHARED_OBJECT_LOOKUP",
        /// Map an fd into a shared memory region (§6 id 9).
        ShmemMap = 9 => "BACKEND_SHMEM_MAP",
        /// Unmap a range of a shared memory region (§6 id 10).
        ShmemUnmap = 10 => "BACKEND_SHMEM_UNMAP",
    }
}

/// A request code of either code space, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReqCode {
    /// A front-end request (spec §5).
    Frontend(FrontendReq),
    /// A back-end request (spec §6).
    Backend(BackendReq),
}

impl ReqCode {
    /// The raw header code.
    pub const fn raw(self) -> u32 {
        match self {
            ReqCode::Frontend(c) => c.raw(),
            ReqCode::Backend(c) => c.raw(),
        }
    }
}

impl fmt::Display for ReqCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReqCode::Frontend(c) => c.fmt(f),
            ReqCode::Backend(c) => c.fmt(f),
        }
    }
}

impl From<FrontendReq> for ReqCode {
    fn from(c: FrontendReq) -> Self {
        ReqCode::Frontend(c)
    }
}

impl From<BackendReq> for ReqCode {
    fn from(c: BackendReq) -> Self {
        ReqCode::Backend(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_dense_and_round_trip() {
        for (i, c) in FrontendReq::ALL.iter().enumerate() {
            assert_eq!(c.raw(), i as u32 + 1);
            assert_eq!(FrontendReq::try_from(c.raw()), Ok(*c));
        }
        assert_eq!(FrontendReq::ALL.len(), 44);
        for (i, c) in BackendReq::ALL.iter().enumerate() {
            assert_eq!(c.raw(), i as u32 + 1);
            assert_eq!(BackendReq::try_from(c.raw()), Ok(*c));
        }
        assert_eq!(BackendReq::ALL.len(), 10);
        assert_eq!(FrontendReq::SetVringKick.raw(), 12);
        assert_eq!(BackendReq::ShmemMap.raw(), 9);
        assert_eq!(
            FrontendReq::try_from(0),
            Err(UnknownCode {
                space: "front-end",
                code: 0
            })
        );
        assert!(FrontendReq::try_from(45).is_err());
        assert!(BackendReq::try_from(11).is_err());
        assert!(BackendReq::try_from(u32::MAX).is_err());
    }
}
