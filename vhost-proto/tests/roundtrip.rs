//! Property tests: encode → decode is the identity for every request and reply variant of
//! both code spaces, for arbitrary field values and arbitrary splits of the byte stream
//! (down to one byte at a time), with integer fd handles.
#![allow(clippy::unwrap_used)]

use proptest::collection::vec;
use proptest::prelude::*;
use vhost_proto::wire::*;

type H = u32;

fn ctx_strategy() -> impl Strategy<Value = DecodeContext> {
    (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(xen_mmap, log_shmfd, postcopy)| {
        DecodeContext {
            xen_mmap,
            log_shmfd,
            postcopy,
        }
    })
}

fn region(xen: bool) -> impl Strategy<Value = MemoryRegion> {
    (
        1u64..=(1 << 48),
        0u64..=(1 << 60),
        0u64..=(1 << 60),
        0u64..=(1 << 60),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(
            move |(memory_size, guest_phys_addr, user_addr, mmap_offset, f, domid)| MemoryRegion {
                guest_phys_addr,
                memory_size,
                user_addr,
                mmap_offset,
                xen: xen.then_some(XenRegion {
                    flags: XenMmapFlags::from_bits_retain(f),
                    domid,
                }),
            },
        )
}

fn fd() -> impl Strategy<Value = H> {
    any::<u32>()
}

fn vring_addr() -> impl Strategy<Value = VringAddr> {
    (
        any::<u32>(),
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(index, f, desc, used, avail, log)| VringAddr {
            index,
            flags: VringAddrFlags::from_bits_retain(f),
            desc,
            used,
            avail,
            log,
        })
}

fn iotlb() -> impl Strategy<Value = IotlbMsg> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u8>(),
        1u8..=4,
    )
        .prop_map(|(iova, size, uaddr, perm, kind)| IotlbMsg {
            iova,
            size,
            uaddr,
            perm: IotlbPerm::from_bits_retain(perm),
            kind: IotlbType::try_from(kind).unwrap(),
        })
}

fn inflight() -> impl Strategy<Value = InflightDesc> {
    (any::<u64>(), any::<u64>(), any::<u16>(), any::<u16>()).prop_map(
        |(mmap_size, mmap_offset, num_queues, queue_size)| InflightDesc {
            mmap_size,
            mmap_offset,
            num_queues,
            queue_size,
        },
    )
}

fn config_flags() -> impl Strategy<Value = ConfigFlags> {
    prop_oneof![Just(0u32), Just(1u32), any::<u32>()].prop_map(ConfigFlags::from)
}

/// (offset, data) with offset + len ≤ 4096.
fn config_data() -> impl Strategy<Value = (u32, Vec<u8>)> {
    (0u32..=4096).prop_flat_map(|offset| {
        (
            Just(offset),
            vec(any::<u8>(), 0..=(4096 - offset as usize).min(300)),
        )
    })
}

fn uuid() -> impl Strategy<Value = Uuid> {
    any::<[u8; 16]>().prop_map(Uuid)
}

fn crypto() -> impl Strategy<Value = Box<CryptoSession>> {
    (vec(any::<u8>(), 1072), any::<i64>()).prop_map(|(v, id)| {
        let mut b = [0u8; 1072];
        b.copy_from_slice(&v);
        b[1064..].copy_from_slice(&id.to_ne_bytes());
        Box::new(CryptoSession(b))
    })
}

fn shmem_map() -> impl Strategy<Value = ShmemMap> {
    (
        any::<u8>(),
        0u64..(1 << 62),
        0u64..(1 << 62),
        0u64..(1 << 62),
        any::<u64>(),
    )
        .prop_map(|(shmid, fd_offset, shm_offset, len, flags)| ShmemMap {
            shmid,
            fd_offset,
            shm_offset,
            len,
            flags: ShmemMapFlags::from_bits_retain(flags),
        })
}

fn frontend_request(ctx: DecodeContext) -> BoxedStrategy<FrontendRequest<H>> {
    use FrontendRequest as R;
    let x = ctx.xen_mmap;
    let min_regions = if ctx.postcopy { 1 } else { 0 };
    let log_fd = ctx.log_shmfd;
    let mut arms: Vec<BoxedStrategy<FrontendRequest<H>>> = vec![
        Just(R::GetFeatures).boxed(),
        any::<u64>()
            .prop_map(|v| R::SetFeatures {
                features: VirtioFeatures::from_bits_retain(v),
            })
            .boxed(),
        Just(R::SetOwner).boxed(),
        Just(R::ResetOwner).boxed(),
        vec((region(x), fd()), min_regions..=8)
            .prop_map(|v| R::SetMemTable {
                regions: v
                    .into_iter()
                    .map(|(region, fd)| RegionFd { region, fd })
                    .collect(),
            })
            .boxed(),
        (any::<u64>(), any::<u64>(), fd())
            .prop_map(move |(s, o, fd)| R::SetLogBase {
                log: LogDescription {
                    mmap_size: s,
                    mmap_offset: o,
                },
                fd: log_fd.then_some(fd),
            })
            .boxed(),
        fd().prop_map(|fd| R::SetLogFd { fd }).boxed(),
        any::<(u32, u32)>()
            .prop_map(|(index, num)| R::SetVringNum { index, num })
            .boxed(),
        vring_addr()
            .prop_map(|addr| R::SetVringAddr { addr })
            .boxed(),
        any::<(u32, u32)>()
            .prop_map(|(index, b)| R::SetVringBase {
                index,
                base: VringBase(b),
            })
            .boxed(),
        any::<u32>()
            .prop_map(|index| R::GetVringBase { index })
            .boxed(),
        (any::<u8>(), proptest::option::of(fd()))
            .prop_map(|(index, fd)| R::SetVringKick { index, fd })
            .boxed(),
        (any::<u8>(), proptest::option::of(fd()))
            .prop_map(|(index, fd)| R::SetVringCall { index, fd })
            .boxed(),
        (any::<u8>(), proptest::option::of(fd()))
            .prop_map(|(index, fd)| R::SetVringErr { index, fd })
            .boxed(),
        Just(R::GetProtocolFeatures).boxed(),
        any::<u64>()
            .prop_map(|v| R::SetProtocolFeatures {
                features: ProtocolFeatures::from_bits_retain(v),
            })
            .boxed(),
        Just(R::GetQueueNum).boxed(),
        (any::<u32>(), any::<bool>())
            .prop_map(|(index, enable)| R::SetVringEnable { index, enable })
            .boxed(),
        any::<[u8; 6]>().prop_map(|mac| R::SendRarp { mac }).boxed(),
        any::<u64>().prop_map(|mtu| R::NetSetMtu { mtu }).boxed(),
        fd().prop_map(|fd| R::SetBackendReqFd { fd }).boxed(),
        iotlb().prop_map(|msg| R::IotlbMsg { msg }).boxed(),
        (any::<u32>(), any::<bool>())
            .prop_map(|(index, b)| R::SetVringEndian {
                index,
                endian: if b {
                    VringEndian::Big
                } else {
                    VringEndian::Little
                },
            })
            .boxed(),
        ((0u32..=4096), config_flags())
            .prop_flat_map(|(offset, flags)| (Just(offset), 0..=(4096 - offset), Just(flags)))
            .prop_map(|(offset, size, flags)| R::GetConfig {
                offset,
                size,
                flags,
            })
            .boxed(),
        (config_data(), config_flags())
            .prop_map(|((offset, data), flags)| R::SetConfig {
                offset,
                flags,
                data,
            })
            .boxed(),
        crypto()
            .prop_map(|session| R::CreateCryptoSession { session })
            .boxed(),
        any::<u64>()
            .prop_map(|session_id| R::CloseCryptoSession { session_id })
            .boxed(),
        Just(R::PostcopyAdvise).boxed(),
        Just(R::PostcopyListen).boxed(),
        Just(R::PostcopyEnd).boxed(),
        inflight()
            .prop_map(|desc| R::GetInflightFd { desc })
            .boxed(),
        (inflight(), fd())
            .prop_map(|(desc, fd)| R::SetInflightFd { desc, fd })
            .boxed(),
        fd().prop_map(|fd| R::GpuSetSocket { fd }).boxed(),
        Just(R::ResetDevice).boxed(),
        any::<u32>()
            .prop_map(|index| R::VringKick { index })
            .boxed(),
        Just(R::GetMaxMemSlots).boxed(),
        (region(x), fd())
            .prop_map(|(region, fd)| R::AddMemReg {
                region: RegionFd { region, fd },
            })
            .boxed(),
        region(x).prop_map(|region| R::RemMemReg { region }).boxed(),
        any::<u8>()
            .prop_map(|s| R::SetStatus {
                status: DeviceStatus::from_bits_retain(s),
            })
            .boxed(),
        Just(R::GetStatus).boxed(),
        uuid().prop_map(|uuid| R::GetSharedObject { uuid }).boxed(),
        (any::<bool>(), fd())
            .prop_map(|(save, fd)| R::SetDeviceStateFd {
                direction: if save {
                    TransferDirection::Save
                } else {
                    TransferDirection::Load
                },
                phase: MigrationPhase::Stopped,
                fd,
            })
            .boxed(),
        Just(R::CheckDeviceState).boxed(),
        Just(R::GetShmemConfig).boxed(),
    ];
    if ctx.postcopy {
        arms.push(
            any::<u64>()
                .prop_map(|value| R::SetMemTablePostcopyAck { value })
                .boxed(),
        );
        arms.push(
            any::<u64>()
                .prop_map(|value| R::AddMemRegPostcopyAck { value })
                .boxed(),
        );
    }
    proptest::strategy::Union::new(arms).boxed()
}

fn backend_request() -> BoxedStrategy<BackendRequest<H>> {
    use BackendRequest as B;
    prop_oneof![
        iotlb().prop_map(|msg| B::IotlbMsg { msg }),
        Just(B::ConfigChange),
        (
            any::<u8>(),
            any::<u64>(),
            0u64..(1 << 63),
            proptest::option::of(fd())
        )
            .prop_map(|(index, size, offset, fd)| B::VringHostNotifier {
                index,
                size: size >> 1,
                offset,
                fd
            }),
        any::<u32>().prop_map(|index| B::VringCall { index }),
        any::<u32>().prop_map(|index| B::VringErr { index }),
        uuid().prop_map(|uuid| B::SharedObjectAdd { uuid }),
        uuid().prop_map(|uuid| B::SharedObjectRemove { uuid }),
        uuid().prop_map(|uuid| B::SharedObjectLookup { uuid }),
        (shmem_map(), fd()).prop_map(|(map, fd)| B::ShmemMap { map, fd }),
        shmem_map().prop_map(|map| B::ShmemUnmap { map }),
    ]
    .boxed()
}

/// Requests whose reply is a plain u64 under `ctx`.
fn u64_reply_reqs(ctx: DecodeContext) -> Vec<FrontendReq> {
    use FrontendReq as C;
    FrontendReq::ALL
        .iter()
        .copied()
        .filter(|r| {
            !matches!(
                r,
                C::GetVringBase
                    | C::GetConfig
                    | C::CreateCryptoSession
                    | C::PostcopyAdvise
                    | C::GetInflightFd
                    | C::GetSharedObject
                    | C::SetDeviceStateFd
                    | C::GetShmemConfig
            ) && (!ctx.postcopy || !matches!(r, C::SetMemTable | C::AddMemReg))
        })
        .collect()
}

fn frontend_reply(ctx: DecodeContext) -> BoxedStrategy<(FrontendReq, FrontendReply<H>)> {
    use FrontendReply as P;
    use FrontendReq as C;
    let x = ctx.xen_mmap;
    let mut arms: Vec<BoxedStrategy<(FrontendReq, FrontendReply<H>)>> = vec![
        (proptest::sample::select(u64_reply_reqs(ctx)), any::<u64>())
            .prop_map(|(r, value)| (r, P::U64 { value }))
            .boxed(),
        prop_oneof![Just(C::SetLogBase), Just(C::GetConfig)]
            .prop_map(|r| (r, P::Empty))
            .boxed(),
        any::<(u32, u32)>()
            .prop_map(|(index, b)| {
                (
                    C::GetVringBase,
                    P::VringBase {
                        index,
                        base: VringBase(b),
                    },
                )
            })
            .boxed(),
        (config_data(), config_flags())
            .prop_map(|((offset, data), flags)| {
                (
                    C::GetConfig,
                    P::Config {
                        offset,
                        flags,
                        data,
                    },
                )
            })
            .boxed(),
        crypto()
            .prop_map(|session| (C::CreateCryptoSession, P::CryptoSession { session }))
            .boxed(),
        fd().prop_map(|fd| (C::PostcopyAdvise, P::PostcopyAdvise { fd }))
            .boxed(),
        (inflight(), proptest::option::of(fd()))
            .prop_map(|(desc, fd)| (C::GetInflightFd, P::InflightFd { desc, fd }))
            .boxed(),
        (proptest::option::of(uuid()), proptest::option::of(fd()))
            .prop_map(|(uuid, fd)| (C::GetSharedObject, P::SharedObject { uuid, fd }))
            .boxed(),
        prop_oneof![
            fd().prop_map(|fd| (0u8, Some(fd))),
            any::<u8>().prop_map(|s| (s, None)),
        ]
        .prop_map(|(status, fd)| (C::SetDeviceStateFd, P::DeviceStateFd { status, fd }))
        .boxed(),
        ((0u32..=256), vec(any::<u64>(), 256))
            .prop_map(|(nregions, sizes)| {
                let mut memory_sizes = [0u64; 256];
                memory_sizes.copy_from_slice(&sizes);
                (
                    C::GetShmemConfig,
                    P::ShmemConfig {
                        config: Box::new(ShmemConfig {
                            nregions,
                            memory_sizes,
                        }),
                    },
                )
            })
            .boxed(),
    ];
    if ctx.postcopy {
        arms.push(
            vec(region(x), 0..=8)
                .prop_map(|regions| (C::SetMemTable, P::MemTable { regions }))
                .boxed(),
        );
        arms.push(
            region(x)
                .prop_map(|region| (C::AddMemReg, P::AddMemReg { region }))
                .boxed(),
        );
    }
    proptest::strategy::Union::new(arms).boxed()
}

fn backend_reply() -> BoxedStrategy<(BackendReq, BackendReply<H>)> {
    let acked: Vec<BackendReq> = BackendReq::ALL
        .iter()
        .copied()
        .filter(|r| *r != BackendReq::SharedObjectLookup)
        .collect();
    prop_oneof![
        (proptest::sample::select(acked), any::<u64>())
            .prop_map(|(r, value)| (r, BackendReply::U64 { value })),
        prop_oneof![
            fd().prop_map(|fd| (0u64, Some(fd))),
            any::<u64>().prop_map(|v| (v, None))
        ]
        .prop_map(|(value, fd)| (
            BackendReq::SharedObjectLookup,
            BackendReply::SharedObjectLookup { value, fd }
        )),
    ]
    .boxed()
}

/// How to cut the stream: random cut points, or every byte.
#[derive(Clone, Debug)]
enum Split {
    Cuts(Vec<usize>),
    ByteByByte,
}

fn split() -> impl Strategy<Value = Split> {
    prop_oneof![
        3 => vec(0usize..20_000, 0..12).prop_map(Split::Cuts),
        1 => Just(Split::ByteByByte),
    ]
}

/// Encodes `msgs`, cuts the stream (anywhere, and always right after a message with fds:
/// Linux ends a read after a segment that carries fds, but may merge the fd-less segments
/// before it), gives each read the fds of the message whose header begins in it, decodes it
/// and checks the result equals the input.
fn check_stream<M>(
    ctx: DecodeContext,
    msgs: Vec<(M::Code, bool, M)>,
    split: Split,
) -> Result<(), TestCaseError>
where
    M: WireMessage<Handle = H> + Clone + PartialEq + std::fmt::Debug,
{
    let mut stream = Vec::new();
    let mut fds_at: Vec<(usize, Vec<H>)> = Vec::new();
    let mut fd_ends = Vec::new();
    let mut expected = Vec::new();
    for (code, need_reply, m) in msgs {
        let enc = m
            .clone()
            .encode_message(code, need_reply, &ctx)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let flags = if M::IS_REPLY {
            HeaderFlags::reply()
        } else {
            HeaderFlags::request(need_reply)
        };
        expected.push(Received {
            code,
            flags,
            message: m,
        });
        let carries_fds = !enc.fds.is_empty();
        fds_at.push((stream.len(), enc.fds));
        stream.extend_from_slice(&enc.bytes);
        if carries_fds {
            fd_ends.push(stream.len());
        }
    }
    let mut cuts: Vec<usize> = match split {
        Split::Cuts(c) => c.into_iter().filter(|&c| c < stream.len()).collect(),
        Split::ByteByByte => (0..stream.len()).collect(),
    };
    cuts.extend(fd_ends);
    cuts.push(0);
    cuts.push(stream.len());
    cuts.sort_unstable();
    cuts.dedup();
    let mut decoder = Decoder::<M>::new(ctx);
    let mut got = Vec::new();
    let mut fds_iter = fds_at.into_iter().peekable();
    for w in cuts.windows(2) {
        let (a, b) = (w[0], w[1]);
        let mut fds = Vec::new();
        while let Some((at, _)) = fds_iter.peek() {
            if *at >= a && *at < b {
                let (_, f) = fds_iter.next().unwrap();
                // At most one message with fds begins in a read (it ends the read).
                prop_assert!(fds.is_empty() || f.is_empty());
                fds.extend(f);
            } else if *at < a {
                fds_iter.next();
            } else {
                break;
            }
        }
        let mut input = Input::new(&stream[a..b], fds);
        while let Some(m) = decoder
            .decode(&mut input)
            .map_err(|e| TestCaseError::fail(e.to_string()))?
        {
            got.push(m);
        }
        prop_assert!(decoder.buffered_capacity() <= MAX_PAYLOAD_SIZE);
    }
    prop_assert!(decoder.is_idle());
    prop_assert_eq!(got, expected);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn frontend_requests_round_trip(
        (ctx, msgs) in ctx_strategy().prop_flat_map(|ctx| (Just(ctx), vec((frontend_request(ctx), any::<bool>()), 1..8))),
        split in split(),
    ) {
        let msgs = msgs.into_iter().map(|(m, nr)| (m.code(), nr, m)).collect();
        check_stream::<FrontendRequest<H>>(ctx, msgs, split)?;
    }

    #[test]
    fn backend_requests_round_trip(
        ctx in ctx_strategy(),
        msgs in vec((backend_request(), any::<bool>()), 1..8),
        split in split(),
    ) {
        let msgs = msgs.into_iter().map(|(m, nr)| (m.code(), nr, m)).collect();
        check_stream::<BackendRequest<H>>(ctx, msgs, split)?;
    }

    #[test]
    fn frontend_replies_round_trip(
        (ctx, msgs) in ctx_strategy().prop_flat_map(|ctx| (Just(ctx), vec(frontend_reply(ctx), 1..8))),
        split in split(),
    ) {
        let msgs = msgs.into_iter().map(|(r, m)| (r, false, m)).collect();
        check_stream::<FrontendReply<H>>(ctx, msgs, split)?;
    }

    #[test]
    fn backend_replies_round_trip(
        ctx in ctx_strategy(),
        msgs in vec(backend_reply(), 1..8),
        split in split(),
    ) {
        let msgs = msgs.into_iter().map(|(r, m)| (r, false, m)).collect();
        check_stream::<BackendReply<H>>(ctx, msgs, split)?;
    }
}

/// Every front-end request code has at least one arm above: encode one of each and decode.
#[test]
fn every_code_is_generated() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let ctx = DecodeContext {
        postcopy: true,
        xen_mmap: true,
        log_shmfd: true,
    };
    let strat = frontend_request(ctx);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..5000 {
        seen.insert(strat.new_tree(&mut runner).unwrap().current().code());
    }
    assert_eq!(seen.len(), FrontendReq::ALL.len());
    let strat = backend_request();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..2000 {
        seen.insert(strat.new_tree(&mut runner).unwrap().current().code());
    }
    assert_eq!(seen.len(), BackendReq::ALL.len());
}
