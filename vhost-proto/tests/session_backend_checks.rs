//! `backend::Connection` refuses at the request what could only fail later: ring areas
//! outside the memory table, packed bases beyond the ring, layout features changed under a
//! running ring, regions removed under a running ring, and the per-session limits.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use vhost_proto::backend::{Connection, DeviceDescription, Event};
use vhost_proto::session::{RingPosition, Rule};
use vhost_proto::wire::*;

type Q = FrontendRequest<i32>;

const USER: u64 = 0x7000_0000;

fn region(gpa: u64, size: u64, user: u64) -> MemoryRegion {
    MemoryRegion {
        guest_phys_addr: gpa,
        memory_size: size,
        user_addr: user,
        mmap_offset: 0,
        xen: None,
    }
}

struct T {
    conn: Connection<i32>,
    fd: i32,
}

/// What one request did: its reply payloads and the rules of its rejections.
#[derive(Debug, Default)]
struct Outcome {
    replies: Vec<Vec<u8>>,
    rejected: Vec<Rule>,
    started: Vec<u16>,
}

impl Outcome {
    fn acked(&self) -> bool {
        self.replies == [0u64.to_ne_bytes().to_vec()] && self.rejected.is_empty()
    }
    fn nacked(&self, rule: &Rule) -> bool {
        self.replies == [1u64.to_ne_bytes().to_vec()] && self.rejected == [rule.clone()]
    }
}

impl T {
    fn new(virtio: VirtioFeatures, protocol: ProtocolFeatures, desc: DeviceDescription) -> T {
        let mut t = T {
            conn: Connection::new(desc),
            fd: 100,
        };
        t.req(Q::GetFeatures);
        t.req(Q::GetProtocolFeatures);
        t.req(Q::SetProtocolFeatures { features: protocol });
        t.req(Q::SetFeatures { features: virtio });
        t
    }

    fn basic(virtio: VirtioFeatures, protocol: ProtocolFeatures) -> T {
        let offered = VirtioFeatures::VERSION_1
            | VirtioFeatures::RING_PACKED
            | VirtioFeatures::EVENT_IDX
            | VirtioFeatures::LOG_ALL
            | VirtioFeatures::ACCESS_PLATFORM;
        let all = ProtocolFeatures::REPLY_ACK
            | ProtocolFeatures::CONFIGURE_MEM_SLOTS
            | ProtocolFeatures::GPA_ADDRESSES
            | ProtocolFeatures::INFLIGHT_SHMFD
            | ProtocolFeatures::MQ;
        let desc = DeviceDescription::new(offered, all, 2).with_max_queue_size(256);
        T::new(
            virtio | VirtioFeatures::VERSION_1 | VirtioFeatures::PROTOCOL_FEATURES,
            protocol | ProtocolFeatures::REPLY_ACK,
            desc,
        )
    }

    /// Sends one request with NEED_REPLY and answers every event yes.
    fn req(&mut self, r: Q) -> Outcome {
        self.fd += 1;
        let e = r.encode(true, &DecodeContext::default()).unwrap();
        self.conn.handle_input(&e.bytes, e.fds).unwrap();
        let mut out = Outcome::default();
        loop {
            while let Some(t) = self.conn.poll_transmit() {
                out.replies.push(t.bytes[12..].to_vec());
            }
            let Some(e) = self.conn.poll_event() else {
                break;
            };
            let c = &mut self.conn;
            match e {
                Event::Rejected { rejection } => out.rejected.push(rejection.rule),
                Event::MemoryTable { answer, .. } | Event::MemoryRegionAdded { answer, .. } => {
                    c.answer_memory(answer, Ok(())).unwrap()
                }
                Event::RingStarted { config, answer } => {
                    out.started.push(config.index);
                    c.answer_ring_started(answer, Ok(())).unwrap()
                }
                Event::RingStopped { answer, .. } => c
                    .answer_ring_stopped(answer, RingPosition::default())
                    .unwrap(),
                Event::MemoryRegionRemoved { answer, .. }
                | Event::RingConfigChanged { answer, .. }
                | Event::KickChanged { answer, .. }
                | Event::CallChanged { answer, .. } => c.ack(answer, Ok(())).unwrap(),
                Event::InflightGet { answer, .. } => {
                    c.answer_inflight(answer, Ok((4096, 0, 7))).unwrap()
                }
                Event::FeaturesSet { .. } | Event::ProtocolFeaturesSet { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        out
    }

    fn mem(&mut self, regions: &[MemoryRegion]) -> Outcome {
        let regions = regions
            .iter()
            .map(|&region| RegionFd { region, fd: 3 })
            .collect();
        self.req(Q::SetMemTable { regions })
    }

    fn addr(&mut self, index: u32, desc: u64, avail: u64, used: u64) -> Outcome {
        self.req(Q::SetVringAddr {
            addr: VringAddr {
                index,
                flags: VringAddrFlags::empty(),
                desc,
                avail,
                used,
                log: 0,
            },
        })
    }

    fn kick(&mut self, index: u8) -> Outcome {
        let fd = self.fd;
        self.req(Q::SetVringKick {
            index,
            fd: Some(fd),
        })
    }
}

/// Split ring of 256: desc 4096 bytes, avail 518, used 2054 (virtqueue.md).
#[test]
fn split_areas_must_lie_in_one_region() {
    let mut t = T::basic(VirtioFeatures::empty(), ProtocolFeatures::empty());
    // Two adjacent regions: contiguous in both spaces, but an area may not span them.
    assert!(
        t.mem(&[
            region(0, 0x1000, USER),
            region(0x1000, 0x1000, USER + 0x1000)
        ])
        .acked()
    );
    // No size yet: only the start addresses are checked.
    assert!(t.addr(0, USER, USER + 0x1000, USER + 0x1800).acked());
    assert!(t.req(Q::SetVringNum { index: 0, num: 256 }).acked());
    // With the size: used (2054 bytes at +0x1800) crosses the end of the second region.
    let o = t.addr(0, USER, USER + 0x1000, USER + 0x1800);
    assert!(
        o.nacked(&Rule::RingAreaOutside {
            index: 0,
            area: "used",
            addr: USER + 0x1800,
            size: 2054,
        }),
        "{o:?}"
    );
    // desc spanning the two regions.
    let o = t.addr(0, USER + 0x800, USER + 0x1000, USER + 0x1200);
    assert!(
        o.nacked(&Rule::RingAreaOutside {
            index: 0,
            area: "desc",
            addr: USER + 0x800,
            size: 4096,
        }),
        "{o:?}"
    );
    // Fits: desc fills region 0, avail and used in region 1.
    assert!(t.addr(0, USER, USER + 0x1000, USER + 0x1400).acked());
    let o = t.kick(0);
    assert!(o.acked() && o.started == [0], "{o:?}");
}

/// The size can grow after SET_VRING_ADDR, and the table can change: the start checks again.
#[test]
fn ring_start_checks_the_final_size_and_table() {
    let mut t = T::basic(VirtioFeatures::empty(), ProtocolFeatures::empty());
    assert!(t.mem(&[region(0, 0x2000, USER)]).acked());
    assert!(t.req(Q::SetVringNum { index: 0, num: 4 }).acked());
    assert!(t.addr(0, USER, USER + 0x1000, USER + 0x1800).acked());
    assert!(t.req(Q::SetVringNum { index: 0, num: 256 }).acked());
    let o = t.kick(0);
    let rule = Rule::RingAreaOutside {
        index: 0,
        area: "used",
        addr: 0x1800,
        size: 2054,
    };
    assert!(o.nacked(&rule) && o.started.is_empty(), "{o:?}");
    assert!(!t.conn.ring(0).unwrap().started());
    assert!(
        t.conn.ring(0).unwrap().kick().is_none(),
        "a refused kick stores nothing"
    );
    // A smaller table: the stored (guest-physical) areas are checked against it.
    assert!(t.req(Q::SetVringNum { index: 0, num: 4 }).acked());
    assert!(t.mem(&[region(0, 0x1000, USER)]).acked());
    let o = t.kick(0);
    assert!(o.nacked(&Rule::RingAreaOutside {
        index: 0,
        area: "avail",
        addr: 0x1000,
        size: 14,
    }));
    assert!(t.mem(&[region(0, 0x2000, USER)]).acked());
    assert!(t.kick(0).acked());
}

/// GPA_ADDRESSES: ring addresses are guest-physical, accepted without a table, but a ring
/// cannot start without one.
#[test]
fn gpa_addresses_and_no_memory_table() {
    let mut t = T::basic(VirtioFeatures::empty(), ProtocolFeatures::GPA_ADDRESSES);
    assert!(t.req(Q::SetVringNum { index: 0, num: 256 }).acked());
    assert!(t.addr(0, 0x10000, 0x11000, 0x12000).acked());
    assert!(t.kick(0).nacked(&Rule::NoMemoryTable { index: 0 }));
    assert!(t.mem(&[region(0x10000, 0x1000, 0x10000)]).acked());
    assert!(
        t.addr(0, 0x10000, 0x11000, 0x12000)
            .nacked(&Rule::RingAreaOutside {
                index: 0,
                area: "avail",
                addr: 0x11000,
                size: 518,
            })
    );
    assert!(t.mem(&[region(0x10000, 0x4000, 0x10000)]).acked());
    assert!(t.addr(0, 0x10000, 0x11000, 0x12000).acked());
    assert!(t.kick(0).acked());
}

/// IOMMU_PLATFORM: the addresses are IOVAs, not checked against the table.
#[test]
fn iova_rings_are_not_checked() {
    let mut t = T::basic(VirtioFeatures::ACCESS_PLATFORM, ProtocolFeatures::empty());
    assert!(t.mem(&[region(0, 0x1000, USER)]).acked());
    assert!(t.req(Q::SetVringNum { index: 0, num: 256 }).acked());
    assert!(t.addr(0, 0xdead_0000, 0xdead_1000, 0xdead_2000).acked());
    assert!(t.kick(0).acked());
}

/// Packed: the 15-bit avail and used indexes must be below the size (spec §3.4).
#[test]
fn packed_base_within_the_ring() {
    let mut t = T::basic(VirtioFeatures::RING_PACKED, ProtocolFeatures::empty());
    assert!(t.mem(&[region(0, 0x2000, USER)]).acked());
    // Before the size is known the base is taken as is...
    assert!(
        t.req(Q::SetVringBase {
            index: 0,
            base: VringBase(100 | 1 << 15)
        })
        .acked()
    );
    assert!(t.req(Q::SetVringNum { index: 0, num: 64 }).acked());
    assert!(t.addr(0, USER, USER + 0x1000, USER + 0x1100).acked());
    // ... and refused at the start (a zero used half reads as used = avail, as DPDK's
    // front-end sends it).
    let rule = Rule::PackedBaseOutOfRange {
        index: 0,
        avail: 100,
        used: 100,
        size: 64,
    };
    let o = t.kick(0);
    assert!(o.nacked(&rule), "{o:?}");
    // Once the size is known SET_VRING_BASE itself is refused.
    let o = t.req(Q::SetVringBase {
        index: 0,
        base: VringBase(3 | 64 << 16),
    });
    assert!(o.nacked(&Rule::PackedBaseOutOfRange {
        index: 0,
        avail: 3,
        used: 64,
        size: 64,
    }));
    assert!(
        t.req(Q::SetVringBase {
            index: 0,
            base: VringBase(63 | 1 << 15 | 63 << 16)
        })
        .acked()
    );
    assert!(t.kick(0).acked());
}

/// The ring layout bits cannot change under a running ring; LOG_ALL can (migration).
#[test]
fn features_under_running_rings() {
    let mut t = T::basic(VirtioFeatures::empty(), ProtocolFeatures::empty());
    assert!(t.mem(&[region(0, 0x4000, USER)]).acked());
    assert!(t.req(Q::SetVringNum { index: 1, num: 256 }).acked());
    assert!(t.addr(1, USER, USER + 0x1000, USER + 0x2000).acked());
    assert!(t.kick(1).acked());
    let base = VirtioFeatures::VERSION_1 | VirtioFeatures::PROTOCOL_FEATURES;
    assert!(
        t.req(Q::SetFeatures {
            features: base | VirtioFeatures::LOG_ALL
        })
        .acked()
    );
    let o = t.req(Q::SetFeatures {
        features: base | VirtioFeatures::EVENT_IDX | VirtioFeatures::LOG_ALL,
    });
    assert!(o.nacked(&Rule::RingFeaturesChanged {
        changed: VirtioFeatures::EVENT_IDX,
        index: 1,
    }));
    assert!(t.req(Q::SetFeatures { features: base }).acked());
    assert_eq!(t.conn.negotiated().features, base);
    // Stopped: anything goes.
    assert_eq!(t.req(Q::GetVringBase { index: 1 }).replies.len(), 1);
    assert!(
        t.req(Q::SetFeatures {
            features: base | VirtioFeatures::RING_PACKED
        })
        .acked()
    );
}

/// REM_MEM_REG of a region a started ring lives in is refused; SET_MEM_TABLE may replace
/// the table under it (the runner parks the ring).
#[test]
fn memory_removed_under_a_running_ring() {
    let mut t = T::basic(
        VirtioFeatures::empty(),
        ProtocolFeatures::CONFIGURE_MEM_SLOTS,
    );
    let a = region(0, 0x4000, USER);
    let b = region(0x10000, 0x1000, USER + 0x10000);
    assert!(t.mem(&[a, b]).acked());
    assert!(t.req(Q::SetVringNum { index: 0, num: 256 }).acked());
    assert!(t.addr(0, USER, USER + 0x1000, USER + 0x2000).acked());
    assert!(t.kick(0).acked());
    let o = t.req(Q::RemMemReg { region: a });
    assert!(o.nacked(&Rule::RegionInUse {
        gpa: 0,
        size: 0x4000,
        index: 0,
    }));
    assert!(t.req(Q::RemMemReg { region: b }).acked());
    assert!(t.mem(&[b]).acked(), "SET_MEM_TABLE is the runner's to park");
    assert!(t.conn.ring(0).unwrap().started());
}

#[test]
fn memory_limit() {
    let offered = VirtioFeatures::VERSION_1;
    let p = ProtocolFeatures::REPLY_ACK | ProtocolFeatures::CONFIGURE_MEM_SLOTS;
    let desc = DeviceDescription::new(offered, p, 1).with_max_memory(0x3000);
    assert_eq!(
        DeviceDescription::new(offered, p, 1).max_memory,
        vhost_proto::backend::DEFAULT_MAX_MEMORY
    );
    let mut t = T::new(offered | VirtioFeatures::PROTOCOL_FEATURES, p, desc);
    let o = t.mem(&[
        region(0, 0x2000, USER),
        region(0x2000, 0x2000, USER + 0x2000),
    ]);
    assert!(o.nacked(&Rule::MemoryLimit {
        total: 0x4000,
        max: 0x3000
    }));
    assert!(t.mem(&[region(0, 0x2000, USER)]).acked());
    assert!(
        t.req(Q::AddMemReg {
            region: RegionFd {
                region: region(0x2000, 0x1000, USER + 0x2000),
                fd: 4
            }
        })
        .acked()
    );
    let o = t.req(Q::AddMemReg {
        region: RegionFd {
            region: region(0x3000, 0x1000, USER + 0x3000),
            fd: 5,
        },
    });
    assert!(o.nacked(&Rule::MemoryLimit {
        total: 0x4000,
        max: 0x3000
    }));
    assert_eq!(t.conn.memory().total_size(), 0x3000);
}

#[test]
fn inflight_limits() {
    let offered = VirtioFeatures::VERSION_1;
    let p = ProtocolFeatures::REPLY_ACK | ProtocolFeatures::INFLIGHT_SHMFD;
    let desc = DeviceDescription::new(offered, p, 2)
        .with_max_queue_size(256)
        .with_max_inflight(2 * 4160);
    let mut t = T::new(offered | VirtioFeatures::PROTOCOL_FEATURES, p, desc);
    let get = |t: &mut T, num_queues, queue_size| {
        t.req(Q::GetInflightFd {
            desc: InflightDesc {
                num_queues,
                queue_size,
                ..Default::default()
            },
        })
    };
    let fail = vec![0u8; 24];
    for (nq, qs, rule) in [
        (
            3,
            256,
            Rule::InflightQueues {
                num_queues: 3,
                queues: 2,
            },
        ),
        (
            0,
            256,
            Rule::InflightQueues {
                num_queues: 0,
                queues: 2,
            },
        ),
        (
            2,
            0,
            Rule::InflightQueueSize {
                queue_size: 0,
                max: 256,
            },
        ),
        (
            2,
            512,
            Rule::InflightQueueSize {
                queue_size: 512,
                max: 256,
            },
        ),
    ] {
        let o = get(&mut t, nq, qs);
        assert_eq!((o.replies, o.rejected), (vec![fail.clone()], vec![rule]));
    }
    // 16·256 + 16 rounded up to 64: 4160 bytes a queue: two fit.
    let o = get(&mut t, 2, 256);
    assert!(o.rejected.is_empty() && o.replies[0] != fail, "{o:?}");
    let desc = DeviceDescription::new(offered, p, 2)
        .with_max_queue_size(256)
        .with_max_inflight(2 * 4160 - 1);
    let mut t = T::new(offered | VirtioFeatures::PROTOCOL_FEATURES, p, desc);
    let o = get(&mut t, 2, 256);
    assert_eq!(
        o.rejected,
        vec![Rule::InflightLimit {
            size: 2 * 4160,
            max: 2 * 4160 - 1
        }]
    );
}
