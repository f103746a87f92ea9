//! A table of malformed inputs: each asserts the specific typed error (and its class), that
//! the decoder never panics, never buffers more than the cap, stays poisoned after a fatal
//! error and keeps working after a rejected message.
#![allow(clippy::unwrap_used)]

use vhost_proto::wire::rules::{
    backend_request_fds, backend_request_size, frontend_request_fds, frontend_request_size,
};
use vhost_proto::wire::*;

type H = u32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    FrontendReq,
    BackendReq,
    FrontendRep,
    BackendRep,
}

enum Expect {
    /// The first error must satisfy the predicate and have this class.
    Error(Box<dyn Fn(&DecodeError) -> bool>, bool),
    /// No error and no message: the input is an incomplete message.
    Incomplete,
}

struct Case {
    name: String,
    kind: Kind,
    ctx: DecodeContext,
    chunks: Vec<(Vec<u8>, usize)>,
    expect: Expect,
}

fn frame(code: u32, flags: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&code.to_ne_bytes());
    v.extend_from_slice(&flags.to_ne_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_ne_bytes());
    v.extend_from_slice(payload);
    v
}

fn header_only(code: u32, flags: u32, size: u32) -> Vec<u8> {
    let mut v = Vec::new();
    for x in [code, flags, size] {
        v.extend_from_slice(&x.to_ne_bytes());
    }
    v
}

fn u64p(v: u64) -> Vec<u8> {
    v.to_ne_bytes().to_vec()
}

fn u32s(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_ne_bytes()).collect()
}

fn u64s(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_ne_bytes()).collect()
}

/// A memory table payload (32-byte regions).
fn mem_table(num: u32, regions: &[[u64; 4]]) -> Vec<u8> {
    let mut v = u32s(&[num, 0]);
    for r in regions {
        v.extend(u64s(r));
    }
    v
}

fn single_region(r: [u64; 4]) -> Vec<u8> {
    let mut v = u64p(0);
    v.extend(u64s(&r));
    v
}

const GOOD: [u64; 4] = [0, 0x1000, 0x1000, 0];

struct Table {
    cases: Vec<Case>,
}

impl Table {
    fn add(
        &mut self,
        name: impl Into<String>,
        kind: Kind,
        ctx: DecodeContext,
        chunks: Vec<(Vec<u8>, usize)>,
        fatal: bool,
        check: impl Fn(&DecodeError) -> bool + 'static,
    ) {
        self.cases.push(Case {
            name: name.into(),
            kind,
            ctx,
            chunks,
            expect: Expect::Error(Box::new(check), fatal),
        });
    }

    fn req(
        &mut self,
        name: impl Into<String>,
        bytes: Vec<u8>,
        fds: usize,
        fatal: bool,
        check: impl Fn(&DecodeError) -> bool + 'static,
    ) {
        self.add(
            name,
            Kind::FrontendReq,
            DecodeContext::default(),
            vec![(bytes, fds)],
            fatal,
            check,
        );
    }

    fn breq(
        &mut self,
        name: impl Into<String>,
        bytes: Vec<u8>,
        fds: usize,
        fatal: bool,
        check: impl Fn(&DecodeError) -> bool + 'static,
    ) {
        self.add(
            name,
            Kind::BackendReq,
            DecodeContext::default(),
            vec![(bytes, fds)],
            fatal,
            check,
        );
    }
}

fn is_payload_size(e: &DecodeError) -> bool {
    matches!(e, DecodeError::PayloadSize { .. })
}

fn is_fd_count(e: &DecodeError) -> bool {
    matches!(e, DecodeError::FdCount { .. })
}

fn invalid(e: &DecodeError, f: impl Fn(&PayloadError) -> bool) -> bool {
    matches!(e, DecodeError::InvalidPayload { reason, .. } if f(reason))
}

fn build() -> Vec<Case> {
    let mut t = Table { cases: Vec::new() };
    let c = DecodeContext::default();
    use FrontendReq as F;

    // Truncated headers are incomplete, not errors (httparse style).
    for n in [1usize, 5, 11] {
        t.cases.push(Case {
            name: format!("truncated header {n} bytes"),
            kind: Kind::FrontendReq,
            ctx: c,
            chunks: vec![(frame(1, 1, &[])[..n].to_vec(), 0)],
            expect: Expect::Incomplete,
        });
    }
    t.cases.push(Case {
        name: "truncated body".into(),
        kind: Kind::FrontendReq,
        ctx: c,
        chunks: vec![(frame(2, 1, &u64p(1))[..15].to_vec(), 0)],
        expect: Expect::Incomplete,
    });

    // Wrong version, reserved bits, reply flags.
    for flags in [0u32, 2, 3, 0xa] {
        t.req(
            format!("version bits of {flags:#x}"),
            frame(1, flags, &[]),
            0,
            true,
            |e| matches!(e, DecodeError::BadVersion { code: 1, .. }),
        );
    }
    for bit in [4u32, 5, 8, 16, 31] {
        t.req(format!("reserved flag bit {bit}"), frame(1, 1 | 1 << bit, &[]), 0, true, move |e| {
            matches!(e, DecodeError::ReservedFlags { flags, .. } if *flags == 1 | 1 << bit)
        });
    }
    t.req("REPLY on a request", frame(3, 5, &[]), 0, true, |e| {
        matches!(e, DecodeError::ReplyFlagOnRequest { code: 3, .. })
    });
    t.breq(
        "REPLY on a back-end request",
        frame(2, 5, &[]),
        0,
        true,
        |e| matches!(e, DecodeError::ReplyFlagOnRequest { code: 2, .. }),
    );
    t.add(
        "reply without REPLY",
        Kind::FrontendRep,
        c,
        vec![(frame(1, 1, &u64p(0)), 0)],
        true,
        |e| matches!(e, DecodeError::BadReplyFlags { flags: 1, .. }),
    );
    // An echoed NEED_REPLY (0xd) is tolerated in replies (libvhost-user sends it; see
    // tests/peer_regressions.rs), but NEED_REPLY without REPLY is still not a reply.
    t.add(
        "reply with NEED_REPLY but no REPLY",
        Kind::FrontendRep,
        c,
        vec![(frame(1, 0x9, &u64p(0)), 0)],
        true,
        |e| matches!(e, DecodeError::BadReplyFlags { flags: 0x9, .. }),
    );
    t.add(
        "back-end reply with NEED_REPLY but no REPLY",
        Kind::BackendRep,
        c,
        vec![(frame(1, 0x9, &u64p(0)), 0)],
        true,
        |e| matches!(e, DecodeError::BadReplyFlags { flags: 0x9, .. }),
    );

    // Oversize: rejected from the header alone, nothing buffered.
    for size in [4109u32, 0x10000, u32::MAX] {
        t.req(format!("size {size:#x} over the cap"), header_only(25, 1, size), 0, true, move |e| {
            matches!(e, DecodeError::PayloadTooLarge { size: s, max: 4108, .. } if *s == size)
        });
    }
    t.req(
        "unknown code with oversize size",
        header_only(999, 1, 5000),
        0,
        true,
        |e| matches!(e, DecodeError::PayloadTooLarge { code: 999, .. }),
    );

    // Per-request payload size limits (spec §11), every code, both directions.
    for &r in FrontendReq::ALL {
        let lim = frontend_request_size(r, &c);
        if lim.max < MAX_PAYLOAD_SIZE {
            t.req(format!("{r} payload max+1"), header_only(r.raw(), 1, lim.max as u32 + 1), 0, true, move |e| {
                matches!(e, DecodeError::PayloadSize { request: ReqCode::Frontend(q), reply: false, .. } if *q == r)
            });
        }
        if lim.min > 0 {
            t.req(
                format!("{r} payload min-1"),
                frame(r.raw(), 1, &vec![0; lim.min - 1]),
                0,
                true,
                is_payload_size,
            );
        }
        let fl = frontend_request_fds(r, &c);
        t.req(
            format!("{r} with {} fds", fl.max + 1),
            frame(r.raw(), 1, &vec![0; lim.min]),
            fl.max + 1,
            true,
            move |e| matches!(e, DecodeError::FdCount { got, .. } if *got == fl.max + 1),
        );
    }
    for &r in BackendReq::ALL {
        let lim = backend_request_size(r);
        t.breq(
            format!("{r} payload max+1"),
            header_only(r.raw(), 1, lim.max as u32 + 1),
            0,
            true,
            is_payload_size,
        );
        let fl = backend_request_fds(r);
        t.breq(
            format!("{r} with {} fds", fl.max + 1),
            frame(r.raw(), 1, &vec![0; lim.min]),
            fl.max + 1,
            true,
            is_fd_count,
        );
    }
    t.add(
        "GET_FEATURES reply of 4 bytes",
        Kind::FrontendRep,
        c,
        vec![(frame(1, 5, &[0; 4]), 0)],
        true,
        is_payload_size,
    );
    t.add(
        "GET_VRING_BASE reply of 16 bytes",
        Kind::FrontendRep,
        c,
        vec![(frame(11, 5, &[0; 16]), 0)],
        true,
        is_payload_size,
    );
    t.add(
        "GET_SHMEM_CONFIG reply of 2048 bytes",
        Kind::FrontendRep,
        c,
        vec![(frame(44, 5, &[0; 2048]), 0)],
        true,
        is_payload_size,
    );
    t.add(
        "GET_INFLIGHT_FD reply of 20 bytes",
        Kind::FrontendRep,
        c,
        vec![(frame(31, 5, &[0; 20]), 0)],
        true,
        is_payload_size,
    );
    t.add(
        "POSTCOPY_ADVISE reply with payload",
        Kind::FrontendRep,
        c,
        vec![(frame(28, 5, &[0; 8]), 1)],
        true,
        is_payload_size,
    );
    t.add(
        "GET_SHARED_OBJECT reply of 8 bytes",
        Kind::FrontendRep,
        c,
        vec![(frame(41, 5, &[0; 8]), 0)],
        true,
        is_payload_size,
    );
    t.add(
        "back-end ack of 0 bytes",
        Kind::BackendRep,
        c,
        vec![(frame(2, 5, &[]), 0)],
        true,
        is_payload_size,
    );

    // Inflight exactly 24 (spec §3.13).
    for n in [20usize, 32] {
        t.req(
            format!("SET_INFLIGHT_FD of {n} bytes"),
            frame(32, 1, &vec![0; n]),
            1,
            true,
            is_payload_size,
        );
    }

    // Fd counts that depend on the payload (spec §5, §6, §9).
    t.req(
        "SET_MEM_TABLE 2 regions, 1 fd",
        frame(5, 1, &mem_table(2, &[GOOD, GOOD])),
        1,
        true,
        |e| {
            matches!(
                e,
                DecodeError::FdCount {
                    got: 1,
                    min: 2,
                    max: 2,
                    ..
                }
            )
        },
    );
    t.req(
        "SET_MEM_TABLE 1 region, 2 fds",
        frame(5, 1, &mem_table(1, &[GOOD])),
        2,
        true,
        |e| matches!(e, DecodeError::FdCount { got: 2, min: 1, .. }),
    );
    t.req(
        "SET_MEM_TABLE 9 fds",
        frame(5, 1, &mem_table(8, &[GOOD; 8])),
        9,
        true,
        |e| matches!(e, DecodeError::FdCount { got: 9, max: 8, .. }),
    );
    t.req(
        "ADD_MEM_REG without fd",
        frame(37, 1, &single_region(GOOD)),
        0,
        true,
        |e| {
            matches!(
                e,
                DecodeError::FdCount {
                    request: ReqCode::Frontend(FrontendReq::AddMemReg),
                    got: 0,
                    ..
                }
            )
        },
    );
    t.req(
        "REM_MEM_REG with 2 fds",
        frame(38, 1, &single_region(GOOD)),
        2,
        true,
        is_fd_count,
    );
    for (code, name) in [(12u32, "KICK"), (13, "CALL"), (14, "ERR")] {
        t.req(
            format!("SET_VRING_{name} fd bit clear, no fd"),
            frame(code, 1, &u64p(0)),
            0,
            true,
            |e| matches!(e, DecodeError::FdCount { got: 0, min: 1, .. }),
        );
        t.req(
            format!("SET_VRING_{name} no-fd bit, 1 fd"),
            frame(code, 1, &u64p(0x100)),
            1,
            true,
            |e| matches!(e, DecodeError::FdCount { got: 1, max: 0, .. }),
        );
        for bad in [0x200u64, 0x1_0000_0000, 1 << 63] {
            t.req(format!("SET_VRING_{name} reserved bits {bad:#x}"), frame(code, 9, &u64p(bad | 3)), 1, false, move |e| {
                matches!(e, DecodeError::InvalidPayload { need_reply: true, reason: PayloadError::VringIndexReserved { value }, .. } if *value == bad | 3)
            });
        }
    }
    let log = DecodeContext {
        log_shmfd: true,
        ..c
    };
    t.add(
        "SET_LOG_BASE with LOG_SHMFD, no fd",
        Kind::FrontendReq,
        log,
        vec![(frame(6, 1, &[0; 16]), 0)],
        true,
        is_fd_count,
    );
    t.req(
        "SET_LOG_BASE without LOG_SHMFD, 1 fd",
        frame(6, 1, &[0; 16]),
        1,
        true,
        is_fd_count,
    );
    t.req(
        "SET_LOG_FD without fd",
        frame(7, 1, &[]),
        0,
        true,
        is_fd_count,
    );
    t.req(
        "SET_BACKEND_REQ_FD without fd",
        frame(21, 1, &[]),
        0,
        true,
        is_fd_count,
    );
    t.req(
        "SET_INFLIGHT_FD without fd",
        frame(32, 1, &[0; 24]),
        0,
        true,
        is_fd_count,
    );
    t.req(
        "SET_DEVICE_STATE_FD without fd",
        frame(42, 1, &[0; 8]),
        0,
        true,
        is_fd_count,
    );
    t.breq(
        "SHMEM_MAP without fd",
        frame(9, 1, &[0; 40]),
        0,
        true,
        is_fd_count,
    );
    t.breq(
        "HOST_NOTIFIER no-fd bit with fd",
        frame(3, 1, &u64s(&[0x100, 0, 0])),
        1,
        true,
        is_fd_count,
    );
    t.breq(
        "HOST_NOTIFIER fd bit clear without fd",
        frame(3, 1, &u64s(&[1, 4096, 0])),
        0,
        true,
        is_fd_count,
    );
    t.add(
        "POSTCOPY_ADVISE reply without fd",
        Kind::FrontendRep,
        c,
        vec![(frame(28, 5, &[]), 0)],
        true,
        is_fd_count,
    );
    t.add(
        "GET_FEATURES reply with fd",
        Kind::FrontendRep,
        c,
        vec![(frame(1, 5, &u64p(0)), 1)],
        true,
        is_fd_count,
    );
    t.add(
        "device state reply fd bit clear, no fd",
        Kind::FrontendRep,
        c,
        vec![(frame(42, 5, &u64p(0)), 0)],
        true,
        is_fd_count,
    );
    t.add(
        "back-end ack with fd",
        Kind::BackendRep,
        c,
        vec![(frame(1, 5, &u64p(0)), 1)],
        true,
        is_fd_count,
    );

    // Fds arriving where no header begins (spec §1).
    let g = frame(1, 1, &[]);
    t.add(
        "fds with the second half of a header",
        Kind::FrontendReq,
        c,
        vec![(g[..6].to_vec(), 0), (g[6..].to_vec(), 1)],
        true,
        |e| matches!(e, DecodeError::FdsWithoutHeader { count: 1 }),
    );
    let s = frame(2, 1, &u64p(0));
    t.add(
        "fds with a body tail",
        Kind::FrontendReq,
        c,
        vec![(s[..14].to_vec(), 0), (s[14..].to_vec(), 3)],
        true,
        |e| matches!(e, DecodeError::FdsWithoutHeader { count: 3 }),
    );
    t.add(
        "fds with no bytes",
        Kind::FrontendReq,
        c,
        vec![(Vec::new(), 2)],
        true,
        |e| matches!(e, DecodeError::FdsWithoutHeader { count: 2 }),
    );

    // Memory regions (spec §3.6–3.8).
    for i in [0usize, 3, 7] {
        let mut regions = [GOOD; 8];
        regions[i][1] = 0;
        t.req(format!("SET_MEM_TABLE region {i} of size 0"), frame(5, 9, &mem_table(8, &regions)), 8, false, move |e| {
            matches!(e, DecodeError::InvalidPayload { need_reply: true, reason: PayloadError::ZeroSizeRegion { region }, .. } if *region == i)
        });
    }
    for (field, idx) in [
        ("guest_phys_addr", 0usize),
        ("user_addr", 2),
        ("mmap_offset", 3),
    ] {
        let mut r = GOOD;
        r[idx] = u64::MAX - 0x10;
        t.req(
            format!("SET_MEM_TABLE {field} + size overflows"),
            frame(5, 1, &mem_table(1, &[r])),
            1,
            false,
            move |e| {
                invalid(
                    e,
                    |p| matches!(p, PayloadError::RangeOverflow { field: f, .. } if *f == field),
                )
            },
        );
        t.req(
            format!("ADD_MEM_REG {field} + size overflows"),
            frame(37, 1, &single_region(r)),
            1,
            false,
            move |e| {
                invalid(
                    e,
                    |p| matches!(p, PayloadError::RangeOverflow { field: f, .. } if *f == field),
                )
            },
        );
    }
    let mut zero = GOOD;
    zero[1] = 0;
    t.req(
        "ADD_MEM_REG size 0",
        frame(37, 1, &single_region(zero)),
        1,
        false,
        |e| {
            invalid(e, |p| {
                matches!(p, PayloadError::ZeroSizeRegion { region: 0 })
            })
        },
    );
    t.req(
        "REM_MEM_REG size 0",
        frame(38, 1, &single_region(zero)),
        0,
        false,
        |e| invalid(e, |p| matches!(p, PayloadError::ZeroSizeRegion { .. })),
    );
    for n in [9u32, 100, u32::MAX] {
        t.req(
            format!("SET_MEM_TABLE num_regions {n}"),
            frame(5, 1, &mem_table(n, &[GOOD; 8])),
            8,
            false,
            move |e| {
                invalid(
                    e,
                    |p| matches!(p, PayloadError::TooManyRegions { count, max: 8 } if *count == n),
                )
            },
        );
    }
    t.req(
        "SET_MEM_TABLE 2 regions declared, 1 sent",
        frame(5, 1, &mem_table(2, &[GOOD])),
        2,
        false,
        |e| {
            invalid(e, |p| {
                matches!(
                    p,
                    PayloadError::RegionCountMismatch {
                        num_regions: 2,
                        expected: 72,
                        size: 40
                    }
                )
            })
        },
    );
    t.req(
        "SET_MEM_TABLE 1 region declared, 2 sent",
        frame(5, 1, &mem_table(1, &[GOOD, GOOD])),
        1,
        false,
        |e| {
            invalid(e, |p| {
                matches!(p, PayloadError::RegionCountMismatch { num_regions: 1, .. })
            })
        },
    );
    t.req(
        "SET_MEM_TABLE trailing partial region",
        frame(5, 1, &[mem_table(1, &[GOOD]), vec![0; 4]].concat()),
        1,
        false,
        |e| invalid(e, |p| matches!(p, PayloadError::RegionCountMismatch { .. })),
    );
    let xen = DecodeContext {
        xen_mmap: true,
        ..c
    };
    t.add(
        "ADD_MEM_REG 40 bytes under XEN_MMAP",
        Kind::FrontendReq,
        xen,
        vec![(frame(37, 1, &single_region(GOOD)), 1)],
        true,
        |e| {
            matches!(
                e,
                DecodeError::PayloadSize {
                    min: 48,
                    max: 48,
                    ..
                }
            )
        },
    );
    t.add(
        "SET_MEM_TABLE 32-byte regions under XEN_MMAP",
        Kind::FrontendReq,
        xen,
        vec![(frame(5, 1, &mem_table(1, &[GOOD])), 1)],
        false,
        |e| {
            invalid(e, |p| {
                matches!(p, PayloadError::RegionCountMismatch { expected: 48, .. })
            })
        },
    );
    t.add(
        "postcopy SET_MEM_TABLE reply zero region",
        Kind::FrontendRep,
        DecodeContext {
            postcopy: true,
            ..c
        },
        vec![(frame(5, 5, &mem_table(1, &[zero])), 0)],
        false,
        |e| invalid(e, |p| matches!(p, PayloadError::ZeroSizeRegion { .. })),
    );

    // Unknown codes (spec §9): rejectable for requests, fatal for replies.
    for code in [0u32, 45, 46, 1000, u32::MAX] {
        t.req(format!("unknown front-end code {code}"), frame(code, 9, &[1, 2, 3]), 2, false, move |e| {
            matches!(e, DecodeError::UnknownRequest { code: k, need_reply: true, size: 3 } if *k == code)
        });
    }
    for code in [0u32, 11, 12] {
        t.breq(format!("unknown back-end code {code}"), frame(code, 1, &[]), 0, false, move |e| {
            matches!(e, DecodeError::UnknownRequest { code: k, need_reply: false, .. } if *k == code)
        });
    }
    t.add(
        "reply with unknown code",
        Kind::FrontendRep,
        c,
        vec![(frame(45, 5, &u64p(0)), 0)],
        true,
        |e| matches!(e, DecodeError::UnknownReply { code: 45 }),
    );
    t.add(
        "back-end reply with unknown code",
        Kind::BackendRep,
        c,
        vec![(frame(11, 5, &u64p(0)), 0)],
        true,
        |e| matches!(e, DecodeError::UnknownReply { code: 11 }),
    );

    // Config (spec §3.11).
    for code in [24u32, 25] {
        t.req(
            format!("{code}: config size 8 with 4 data bytes"),
            frame(code, 9, &[u32s(&[0, 8, 0]), vec![0; 4]].concat()),
            0,
            false,
            |e| {
                invalid(e, |p| {
                    matches!(
                        p,
                        PayloadError::ConfigSizeMismatch {
                            declared: 8,
                            actual: 4
                        }
                    )
                })
            },
        );
        t.req(
            format!("{code}: config size 0 with 4 data bytes"),
            frame(code, 1, &[u32s(&[0, 0, 0]), vec![0; 4]].concat()),
            0,
            false,
            |e| {
                invalid(e, |p| {
                    matches!(
                        p,
                        PayloadError::ConfigSizeMismatch {
                            declared: 0,
                            actual: 4
                        }
                    )
                })
            },
        );
        t.req(
            format!("{code}: config offset+size past 4096"),
            frame(code, 1, &[u32s(&[4094, 4, 1]), vec![0; 4]].concat()),
            0,
            false,
            |e| {
                invalid(e, |p| {
                    matches!(
                        p,
                        PayloadError::ConfigRange {
                            offset: 4094,
                            size: 4
                        }
                    )
                })
            },
        );
        t.req(
            format!("{code}: config offset overflows"),
            frame(code, 1, &[u32s(&[u32::MAX, 4, 0]), vec![0; 4]].concat()),
            0,
            false,
            |e| invalid(e, |p| matches!(p, PayloadError::ConfigRange { .. })),
        );
    }
    t.add(
        "GET_CONFIG reply size mismatch",
        Kind::FrontendRep,
        c,
        vec![(frame(24, 5, &[u32s(&[0, 9, 0]), vec![0; 8]].concat()), 0)],
        false,
        |e| {
            invalid(e, |p| {
                matches!(
                    p,
                    PayloadError::ConfigSizeMismatch {
                        declared: 9,
                        actual: 8
                    }
                )
            })
        },
    );

    // Defined values.
    let mut iotlb = vec![0u8; 32];
    for kind in [0u8, 5, 255] {
        iotlb[25] = kind;
        t.req(format!("IOTLB type {kind}"), frame(22, 9, &iotlb), 0, false, move |e| {
            invalid(e, |p| matches!(p, PayloadError::InvalidValue { field: "iotlb type", value } if *value == u64::from(kind)))
        });
        t.breq(
            format!("back-end IOTLB type {kind}"),
            frame(1, 1, &iotlb),
            0,
            false,
            |e| invalid(e, |p| matches!(p, PayloadError::InvalidValue { .. })),
        );
    }
    t.req(
        "SET_VRING_ENABLE num 2",
        frame(18, 1, &u32s(&[0, 2])),
        0,
        false,
        |e| {
            invalid(e, |p| {
                matches!(
                    p,
                    PayloadError::InvalidValue {
                        field: "vring enable",
                        value: 2
                    }
                )
            })
        },
    );
    t.req(
        "SET_VRING_ENDIAN num 2",
        frame(23, 1, &u32s(&[0, 2])),
        0,
        false,
        |e| {
            invalid(e, |p| {
                matches!(
                    p,
                    PayloadError::InvalidValue {
                        field: "vring endian",
                        value: 2
                    }
                )
            })
        },
    );
    t.req(
        "SET_STATUS 0x100",
        frame(39, 1, &u64p(0x100)),
        0,
        false,
        |e| {
            invalid(e, |p| {
                matches!(
                    p,
                    PayloadError::InvalidValue {
                        field: "device status",
                        value: 0x100
                    }
                )
            })
        },
    );
    t.req(
        "SET_DEVICE_STATE_FD direction 2",
        frame(42, 1, &u32s(&[2, 0])),
        1,
        false,
        |e| {
            invalid(e, |p| {
                matches!(
                    p,
                    PayloadError::InvalidValue {
                        field: "transfer direction",
                        value: 2
                    }
                )
            })
        },
    );
    t.req(
        "SET_DEVICE_STATE_FD phase 1",
        frame(42, 1, &u32s(&[0, 1])),
        1,
        false,
        |e| {
            invalid(e, |p| {
                matches!(
                    p,
                    PayloadError::InvalidValue {
                        field: "migration phase",
                        value: 1
                    }
                )
            })
        },
    );
    t.breq(
        "HOST_NOTIFIER reserved bits",
        frame(3, 1, &u64s(&[0x200, 0, 0])),
        0,
        false,
        |e| {
            invalid(e, |p| {
                matches!(p, PayloadError::VringIndexReserved { value: 0x200 })
            })
        },
    );
    t.breq(
        "HOST_NOTIFIER offset+size overflows",
        frame(3, 1, &u64s(&[0x100, 2, u64::MAX])),
        0,
        false,
        |e| invalid(e, |p| matches!(p, PayloadError::RangeOverflow { .. })),
    );
    let mut map = vec![0u8; 40];
    map[16..24].copy_from_slice(&u64::MAX.to_ne_bytes());
    map[24..32].copy_from_slice(&2u64.to_ne_bytes());
    t.breq(
        "SHMEM_MAP shm_offset+len overflows",
        frame(9, 9, &map),
        1,
        false,
        |e| {
            matches!(
                e,
                DecodeError::InvalidPayload {
                    need_reply: true,
                    reason: PayloadError::RangeOverflow {
                        field: "shm_offset",
                        ..
                    },
                    ..
                }
            )
        },
    );
    t.breq(
        "SHMEM_UNMAP shm_offset+len overflows",
        frame(10, 1, &map),
        0,
        false,
        |e| invalid(e, |p| matches!(p, PayloadError::RangeOverflow { .. })),
    );
    let mut shm = vec![0u8; 2056];
    shm[..4].copy_from_slice(&257u32.to_ne_bytes());
    t.add(
        "SHMEM config nregions 257",
        Kind::FrontendRep,
        c,
        vec![(frame(44, 5, &shm), 0)],
        false,
        |e| {
            invalid(e, |p| {
                matches!(
                    p,
                    PayloadError::InvalidValue {
                        field: "shmem nregions",
                        value: 257
                    }
                )
            })
        },
    );
    t.add(
        "device state reply error with fd",
        Kind::FrontendRep,
        c,
        vec![(frame(42, 5, &u64p(1)), 1)],
        false,
        |e| invalid(e, |p| matches!(p, PayloadError::ErrorWithFd { status: 1 })),
    );
    t.add(
        "device state reply reserved bits",
        Kind::FrontendRep,
        c,
        vec![(frame(42, 5, &u64p(0x1_0100)), 0)],
        false,
        |e| {
            invalid(e, |p| {
                matches!(
                    p,
                    PayloadError::InvalidValue {
                        field: "device state reply",
                        ..
                    }
                )
            })
        },
    );
    t.add(
        "lookup reply failure with fd",
        Kind::BackendRep,
        c,
        vec![(frame(8, 5, &u64p(1)), 1)],
        false,
        |e| invalid(e, |p| matches!(p, PayloadError::ErrorWithFd { status: 1 })),
    );
    let _ = F::GetFeatures;
    t.cases
}

/// Feeds the chunks; returns the first error (or None) and checks the invariants.
fn run<M>(case: &Case) -> (Option<DecodeError>, Decoder<M>)
where
    M: WireMessage<Handle = H> + std::fmt::Debug,
{
    let mut d = Decoder::<M>::new(case.ctx);
    let mut next = 100u32;
    for (bytes, nfds) in &case.chunks {
        let fds: Vec<H> = (0..*nfds as u32).map(|i| next + i).collect();
        next += *nfds as u32;
        let mut input = Input::new(bytes, fds);
        // Every case is a single malformed message: it must not decode.
        let r = d.decode(&mut input);
        assert!(
            d.buffered_capacity() <= MAX_PAYLOAD_SIZE,
            "{}: buffer over the cap",
            case.name
        );
        match r {
            Ok(None) => assert!(input.remaining().is_empty(), "{}", case.name),
            Ok(Some(m)) => panic!("{}: decoded {m:?}", case.name),
            Err(e) => return (Some(e), d),
        }
    }
    (None, d)
}

fn check<M>(case: &Case)
where
    M: WireMessage<Handle = H> + std::fmt::Debug,
{
    let (err, mut d) = run::<M>(case);
    match (&case.expect, err) {
        (Expect::Incomplete, None) => assert!(!d.is_idle(), "{}", case.name),
        (Expect::Incomplete, Some(e)) => panic!("{}: unexpected error {e}", case.name),
        (Expect::Error(_, _), None) => panic!("{}: no error", case.name),
        (Expect::Error(pred, fatal), Some(e)) => {
            assert!(pred(&e), "{}: wrong error {e:?}", case.name);
            assert_eq!(e.is_fatal(), *fatal, "{}: class of {e:?}", case.name);
            assert_eq!(d.is_poisoned(), *fatal, "{}", case.name);
            if *fatal {
                assert!(d.buffered_capacity() <= 0x1000 + 12);
                let mut more = Input::new(&[1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0][..], vec![]);
                assert!(
                    matches!(d.decode(&mut more), Err(DecodeError::Poisoned)),
                    "{}",
                    case.name
                );
            } else {
                let ErrorClass::Rejected { .. } = e.class() else {
                    panic!("{}", case.name)
                };
                assert!(
                    d.is_idle(),
                    "{}: rejected message not fully consumed",
                    case.name
                );
            }
        }
    }
}

#[test]
fn malformed_table() {
    let cases = build();
    assert!(cases.len() >= 100, "only {} cases", cases.len());
    for case in &cases {
        match case.kind {
            Kind::FrontendReq => check::<FrontendRequest<H>>(case),
            Kind::BackendReq => check::<BackendRequest<H>>(case),
            Kind::FrontendRep => check::<FrontendReply<H>>(case),
            Kind::BackendRep => check::<BackendReply<H>>(case),
        }
    }
    eprintln!("{} malformed cases", cases.len());
}

/// After a rejected message the decoder continues with the next one in the same chunk.
#[test]
fn rejected_then_valid() {
    let ctx = DecodeContext::default();
    let mut stream = frame(77, 9, &[0; 5]);
    stream.extend(frame(18, 1, &u32s(&[0, 7])));
    stream.extend(frame(1, 1, &[]));
    // The read's fds belong to its last header: an unknown request, which drops them.
    stream.extend(frame(78, 1, &[0; 3]));
    let mut d = FrontendRequestDecoder::<H>::new(ctx);
    let mut input = Input::new(&stream, vec![1, 2]);
    let e = d.decode(&mut input).unwrap_err();
    assert_eq!(
        e.class(),
        ErrorClass::Rejected {
            code: 77,
            need_reply: true
        }
    );
    let e = d.decode(&mut input).unwrap_err();
    assert_eq!(
        e.class(),
        ErrorClass::Rejected {
            code: 18,
            need_reply: false
        }
    );
    let m = d.decode(&mut input).unwrap().unwrap();
    assert_eq!(m.message, FrontendRequest::GetFeatures);
    let e = d.decode(&mut input).unwrap_err();
    assert_eq!(
        e.class(),
        ErrorClass::Rejected {
            code: 78,
            need_reply: false
        }
    );
    assert_eq!(d.decode(&mut input).unwrap(), None);
    assert!(input.is_empty());
}

/// REM_MEM_REG's stray fd is dropped, not an error (spec §5 id 38).
#[test]
fn rem_mem_reg_drops_stray_fd() {
    let mut d = FrontendRequestDecoder::<H>::new(DecodeContext::default());
    let bytes = frame(38, 1, &single_region(GOOD));
    let mut input = Input::new(&bytes, vec![5]);
    let m = d.decode(&mut input).unwrap().unwrap();
    assert!(matches!(m.message, FrontendRequest::RemMemReg { .. }));
}

/// The body buffer is sized by the header, never by a peer's claim beyond the cap.
#[test]
fn buffer_is_bounded_by_the_largest_message() {
    let mut d = FrontendRequestDecoder::<H>::new(DecodeContext::default());
    let mut cfg = u32s(&[0, 4096, 0]);
    cfg.extend(vec![0; 4096]);
    let bytes = frame(25, 1, &cfg);
    for b in bytes.chunks(7) {
        let mut input = Input::new(b, vec![]);
        while d.decode(&mut input).unwrap().is_some() {}
        assert!(d.buffered_capacity() <= MAX_PAYLOAD_SIZE);
    }
    assert!(d.is_idle());
}
