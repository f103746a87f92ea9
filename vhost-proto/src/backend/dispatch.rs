//! What the back-end connection does with each front-end request (spec §5, §7): answer it
//! alone, update state, or hand an event with an answer token to the device.

use crate::session::{AddressSpace, FatalError, RingFeatures, Rule};
use crate::wire::{
    FrontendReply, FrontendReq, FrontendRequest, IotlbType, ProtocolFeatures, Received,
    VirtioFeatures, VringAddr,
};

use super::connection::{AfterAck, Connection, PostcopyState, WaitKind, zero_shmem};
use super::event::{
    AckToken, ConfigToken, CryptoToken, DeviceStateToken, Event, InflightToken, MemoryToken,
    PostcopyAdviseToken, RingStartToken, RingStopToken, SharedObjectToken,
};
use super::memory::MemoryTable;
use super::ring::{NotifierSlot, RingAddresses, ring_areas};

type R = Result<(), FatalError>;

impl<H> Connection<H> {
    /// Checks a vring index against the queue count.
    fn ring_index(&self, index: u32) -> Result<u16, Rule> {
        match u16::try_from(index) {
            Ok(i) if usize::from(i) < self.rings.len() => Ok(i),
            _ => Err(Rule::IndexOutOfRange {
                index,
                queues: self.desc.queues,
            }),
        }
    }

    /// Ring `index` must exist and be stopped.
    fn stopped_ring(&self, index: u32) -> Result<u16, Rule> {
        let i = self.ring_index(index)?;
        match self.rings.get(usize::from(i)) {
            Some(r) if r.started => Err(Rule::RingStarted { index: i }),
            _ => Ok(i),
        }
    }

    fn ring_features(&self) -> RingFeatures {
        RingFeatures::from_features(self.neg.features)
    }

    /// Translates and checks SET_VRING_ADDR (spec §3.5, §7.10) for ring `index`: aligned
    /// areas, and with a memory table (user or GPA_ADDRESSES addresses, not IOVAs) each area
    /// inside one region, as far as the queue size is known.
    fn translate(&self, index: u16, a: &VringAddr) -> Result<RingAddresses, Rule> {
        let packed = self.neg.packed();
        let (avail_align, used_align) = if packed { (4, 4) } else { (2, 4) };
        for (area, addr, align) in [
            ("desc", a.desc, 16),
            ("avail", a.avail, avail_align),
            ("used", a.used, used_align),
        ] {
            if addr % align != 0 {
                return Err(Rule::Misaligned { area, addr, align });
            }
        }
        let iommu = self.neg.features.contains(VirtioFeatures::ACCESS_PLATFORM);
        let gpa = self.neg.has(ProtocolFeatures::GPA_ADDRESSES);
        if !iommu && !self.memory.is_empty() {
            // Refuse now what could only fail when the runner maps the ring (spec §7.10):
            // an area must lie in ONE region, in the address space the front-end used.
            let num = self.rings.get(usize::from(index)).and_then(|r| r.size);
            for (area, addr, size) in ring_areas(packed, num, a.desc, a.avail, a.used) {
                let inside = if gpa {
                    self.memory.contains_guest_range(addr, size)
                } else {
                    self.memory.user_range_to_guest(addr, size).is_some()
                };
                if !inside {
                    return Err(Rule::RingAreaOutside {
                        index,
                        area,
                        addr,
                        size,
                    });
                }
            }
        }
        let (space, desc, avail, used) = if iommu {
            (AddressSpace::Iova, a.desc, a.avail, a.used)
        } else if gpa {
            (AddressSpace::GuestPhysical, a.desc, a.avail, a.used)
        } else {
            let t = |area, addr| {
                self.memory
                    .user_to_guest(addr)
                    .ok_or(Rule::Untranslatable { area, addr })
            };
            (
                AddressSpace::GuestPhysical,
                t("desc", a.desc)?,
                t("avail", a.avail)?,
                t("used", a.used)?,
            )
        };
        Ok(RingAddresses {
            desc,
            avail,
            used,
            log: a.log,
            flags: a.flags,
            space,
        })
    }

    /// Checks that ring `i` can start (spec §7.2, §7.10): configured; unless its addresses
    /// are IOVAs, a memory table holds each area (at the final queue size) inside one region;
    /// a packed ring's base indexes are below the size.
    fn check_start(&self, i: u16) -> Result<(), Rule> {
        let not_configured = Rule::RingNotConfigured { index: i };
        let r = self
            .rings
            .get(usize::from(i))
            .ok_or(not_configured.clone())?;
        let (Some(size), Some(a)) = (r.size, r.addr) else {
            return Err(not_configured);
        };
        let packed = self.neg.packed();
        if packed {
            let pos = crate::session::RingPosition::from_base(r.base, true);
            if pos.next_avail >= size || pos.next_used >= size {
                return Err(Rule::PackedBaseOutOfRange {
                    index: i,
                    avail: pos.next_avail,
                    used: pos.next_used,
                    size,
                });
            }
        }
        if a.space == AddressSpace::Iova {
            // The device translates through its IOTLB; nothing to check here.
            return Ok(());
        }
        if self.memory.is_empty() {
            return Err(Rule::NoMemoryTable { index: i });
        }
        // The stored addresses are guest-physical (translated, or GPA_ADDRESSES).
        for (area, addr, size) in ring_areas(packed, Some(size), a.desc, a.avail, a.used) {
            if !self.memory.contains_guest_range(addr, size) {
                return Err(Rule::RingAreaOutside {
                    index: i,
                    area,
                    addr,
                    size,
                });
            }
        }
        Ok(())
    }

    /// The first started ring with a guest-physical area overlapping `gpa..gpa + len`.
    fn ring_in(&self, gpa: u64, len: u64) -> Option<u16> {
        let packed = self.neg.packed();
        let end = gpa.saturating_add(len);
        self.rings.iter().find_map(|r| {
            let a = r
                .addr
                .filter(|a| r.started && a.space == AddressSpace::GuestPhysical)?;
            ring_areas(packed, r.size, a.desc, a.avail, a.used)
                .iter()
                .any(|&(_, start, size)| start < end && gpa < start.saturating_add(size))
                .then_some(r.index)
        })
    }

    /// Starts ring `i` if it is configured (spec §7.2); the caller has set the kick. The
    /// kick's ack waits for the runner's answer.
    fn start_ring(&mut self, code: FrontendReq, need: bool, i: u16) -> Result<(), Rule> {
        let packed = self.neg.packed();
        let features = self.ring_features();
        let ring = self
            .rings
            .get_mut(usize::from(i))
            .ok_or(Rule::RingNotConfigured { index: i })?;
        let config = ring
            .config(packed, features)
            .ok_or(Rule::RingNotConfigured { index: i })?;
        ring.started = true;
        let answer = RingStartToken {
            ticket: self.issue(code, need, WaitKind::RingStart { index: i }),
        };
        self.events.push_back(Event::RingStarted { config, answer });
        Ok(())
    }

    fn ack_token(
        &mut self,
        code: FrontendReq,
        need: bool,
        always: bool,
        then: AfterAck,
    ) -> AckToken {
        AckToken {
            ticket: self.issue(code, need, WaitKind::Ack { always, then }),
        }
    }

    /// Handles one decoded request.
    pub(crate) fn dispatch(&mut self, msg: Received<FrontendRequest<H>>) -> R {
        let code = msg.code;
        let need = msg.need_reply();
        if let Err(rule) = self.neg.check_frontend(code) {
            return self.reject(code, need, rule);
        }
        match self.handle(code, need, msg.message) {
            Ok(()) => Ok(()),
            Err(Outcome::Reject(rule)) => self.reject(code, need, rule),
            Err(Outcome::Fatal(e)) => Err(e),
        }
    }

    fn handle(
        &mut self,
        code: FrontendReq,
        need: bool,
        req: FrontendRequest<H>,
    ) -> Result<(), Outcome> {
        use FrontendRequest as Q;
        match req {
            Q::GetFeatures => self.reply_u64(code, self.desc.features.bits())?,
            Q::SetFeatures { features } => {
                self.neg.check_features(features)?;
                // The ring layout cannot change under a running ring (spec §7.2); LOG_ALL
                // toggles under running rings during migration (spec §7.7) and stays allowed.
                let changed = (features ^ self.neg.features)
                    & (VirtioFeatures::RING_PACKED | VirtioFeatures::EVENT_IDX);
                if !changed.is_empty()
                    && let Some(r) = self.rings.iter().find(|r| r.started)
                {
                    return Err(Rule::RingFeaturesChanged {
                        changed,
                        index: r.index,
                    }
                    .into());
                }
                self.neg.features = features;
                if !features.contains(VirtioFeatures::PROTOCOL_FEATURES) {
                    // Spec §7.2: without bit 30 the rings behave as enabled from the start.
                    self.rings.iter_mut().for_each(|r| r.enabled = true);
                }
                self.events.push_back(Event::FeaturesSet { features });
                self.done(code, need);
            }
            Q::SetOwner => {
                self.owner = true;
                self.done(code, need);
            }
            // Deprecated (spec §5 id 4, §7.9): ignored, connection state kept.
            Q::ResetOwner => self.done(code, need),
            Q::SetMemTable { regions } => {
                let table: Vec<_> = regions.iter().map(|r| r.region).collect();
                MemoryTable::check_table(&table, self.desc.max_mem_slots, self.gpa_regions())?;
                self.check_memory_limit(MemoryTable::sum_sizes(&table))?;
                let postcopy = self.postcopy == PostcopyState::Listening;
                let answer = MemoryToken {
                    ticket: self.issue(
                        code,
                        need,
                        WaitKind::MemoryTable {
                            regions: table,
                            postcopy,
                        },
                    ),
                };
                self.events
                    .push_back(Event::MemoryTable { regions, answer });
            }
            Q::SetMemTablePostcopyAck { value } | Q::AddMemRegPostcopyAck { value } => {
                // The front-end's acknowledgement never gets a memory-table reply, even when
                // refused: only a NACK if it asked for one.
                let rule = if !self.postcopy_ack_pending {
                    Some(Rule::UnexpectedPostcopyAck)
                } else if value != 0 {
                    Some(Rule::Refused {
                        reason: Some("front-end reported a postcopy memory failure"),
                    })
                } else {
                    None
                };
                self.postcopy_ack_pending = false;
                if let Some(rule) = rule {
                    if need {
                        self.push_raw_u64(code.raw(), 1);
                    }
                    self.push_rejection(crate::session::Rejection::frontend(code, rule, need));
                    return Ok(());
                }
                self.events.push_back(Event::PostcopyMemoryReady);
                self.done(code, need);
            }
            Q::SetLogBase { log, fd } => {
                let Some(fd) = fd else {
                    return Err(Rule::ProtocolFeatureNotNegotiated {
                        feature: ProtocolFeatures::LOG_SHMFD,
                    }
                    .into());
                };
                let answer = self.ack_token(code, need, true, AfterAck::LogBase(log));
                self.events.push_back(Event::LogBase { log, fd, answer });
            }
            Q::SetLogFd { fd } => {
                self.log_fd = Some(fd);
                self.events.push_back(Event::LogFdChanged);
                self.done(code, need);
            }
            Q::SetVringNum { index, num } => {
                let i = self.stopped_ring(index)?;
                let max = self.desc.max_queue_size;
                let ok = num >= 1
                    && num <= u32::from(max)
                    && (self.neg.packed() || num.is_power_of_two());
                let size = u16::try_from(num)
                    .ok()
                    .filter(|_| ok)
                    .ok_or(Rule::QueueSize { num, max })?;
                if let Some(r) = self.rings.get_mut(usize::from(i)) {
                    r.size = Some(size);
                }
                self.done(code, need);
            }
            Q::SetVringAddr { addr } => {
                let i = self.ring_index(addr.index)?;
                let a = self.translate(i, &addr)?;
                let packed = self.neg.packed();
                let features = self.ring_features();
                let mut changed = None;
                if let Some(r) = self.rings.get_mut(usize::from(i)) {
                    r.addr = Some(a);
                    if r.started {
                        changed = r.config(packed, features);
                    }
                }
                match changed {
                    Some(config) => {
                        let answer =
                            self.ack_token(code, need, false, AfterAck::RingRebuilt { index: i });
                        self.events
                            .push_back(Event::RingConfigChanged { config, answer });
                    }
                    None => self.done(code, need),
                }
            }
            Q::SetVringBase { index, base } => {
                let i = self.stopped_ring(index)?;
                if !self.neg.packed() && base.split_has_reserved_bits() {
                    return Err(Rule::SplitBaseReserved { base: base.raw() }.into());
                }
                // A packed ring's indexes count slots (spec §3.4): refuse now what the start
                // would refuse (checked again there with the final size).
                if self.neg.packed()
                    && let Some(size) = self.rings.get(usize::from(i)).and_then(|r| r.size)
                {
                    let pos = crate::session::RingPosition::from_base(base, true);
                    if pos.next_avail >= size || pos.next_used >= size {
                        return Err(Rule::PackedBaseOutOfRange {
                            index: i,
                            avail: pos.next_avail,
                            used: pos.next_used,
                            size,
                        }
                        .into());
                    }
                }
                if let Some(r) = self.rings.get_mut(usize::from(i)) {
                    r.base = base;
                }
                self.done(code, need);
            }
            Q::GetVringBase { index } => {
                let i = match self.ring_index(index) {
                    Ok(i) => i,
                    Err(rule) => {
                        // Own reply even for a bad index, so the front-end is not left waiting.
                        self.reply(
                            code,
                            FrontendReply::VringBase {
                                index,
                                base: Default::default(),
                            },
                        )?;
                        self.push_rejection(crate::session::Rejection::frontend(code, rule, true));
                        return Ok(());
                    }
                };
                let Some(r) = self.rings.get_mut(usize::from(i)) else {
                    return Ok(());
                };
                if r.started {
                    r.started = false;
                    let answer = RingStopToken {
                        ticket: self.issue(code, need, WaitKind::RingStop { index: i }),
                    };
                    self.events
                        .push_back(Event::RingStopped { index: i, answer });
                } else {
                    let base = r.base;
                    self.reply(code, FrontendReply::VringBase { index, base })?;
                }
            }
            Q::SetVringKick { index, fd } => {
                let i = self.ring_index(index.into())?;
                let (started, configured) = self
                    .rings
                    .get(usize::from(i))
                    .map(|r| (r.started, r.size.is_some() && r.addr.is_some()))
                    .unwrap_or_default();
                if !started && !configured {
                    return Err(Rule::RingNotConfigured { index: i }.into());
                }
                if !started {
                    // Refused kicks change nothing: check before the notifier is stored.
                    self.check_start(i)?;
                }
                if started {
                    if let Some(r) = self.rings.get_mut(usize::from(i)) {
                        r.replace_notifier(NotifierSlot::Kick, Self::notifier(fd));
                    }
                    let answer =
                        self.ack_token(code, need, false, AfterAck::NotifierChanged { index: i });
                    self.events
                        .push_back(Event::KickChanged { index: i, answer });
                } else {
                    if let Some(r) = self.rings.get_mut(usize::from(i)) {
                        Self::set_notifier(&mut r.kick, fd);
                    }
                    self.start_ring(code, need, i)?;
                }
            }
            Q::SetVringCall { index, fd } | Q::SetVringErr { index, fd } => {
                let i = self.ring_index(index.into())?;
                let call = code == FrontendReq::SetVringCall;
                let slot = if call {
                    NotifierSlot::Call
                } else {
                    NotifierSlot::Err
                };
                if let Some(r) = self.rings.get_mut(usize::from(i)) {
                    r.replace_notifier(slot, Self::notifier(fd));
                }
                let answer =
                    self.ack_token(code, need, false, AfterAck::NotifierChanged { index: i });
                self.events.push_back(if call {
                    Event::CallChanged { index: i, answer }
                } else {
                    Event::ErrChanged { index: i, answer }
                });
            }
            Q::GetProtocolFeatures => self.reply_u64(code, self.desc.protocol_features.bits())?,
            Q::SetProtocolFeatures { features } => {
                self.neg.check_protocol_features(features)?;
                self.neg.protocol = features;
                self.events
                    .push_back(Event::ProtocolFeaturesSet { features });
                self.done(code, need);
            }
            Q::GetQueueNum => self.reply_u64(code, self.desc.queues.into())?,
            Q::SetVringEnable { index, enable } => {
                let i = self.ring_index(index)?;
                if let Some(r) = self.rings.get_mut(usize::from(i)) {
                    r.enabled = enable;
                }
                let answer = self.ack_token(code, need, false, AfterAck::Nothing);
                self.events.push_back(Event::RingEnabled {
                    index: i,
                    enabled: enable,
                    answer,
                });
            }
            Q::SendRarp { mac } => {
                let answer = self.ack_token(code, need, false, AfterAck::Nothing);
                self.events.push_back(Event::SendRarp { mac, answer });
            }
            Q::NetSetMtu { mtu } => {
                let answer = self.ack_token(code, need, false, AfterAck::Nothing);
                self.events.push_back(Event::SetMtu { mtu, answer });
            }
            Q::SetBackendReqFd { fd } => {
                let answer = self.ack_token(code, need, false, AfterAck::BackendChannel);
                self.events.push_back(Event::BackendChannel { fd, answer });
            }
            Q::IotlbMsg { msg } => {
                if !matches!(msg.kind, IotlbType::Update | IotlbType::Invalidate) {
                    return Err(Rule::IotlbType { kind: msg.kind }.into());
                }
                let answer = self.ack_token(code, need, true, AfterAck::Nothing);
                self.events.push_back(Event::Iotlb { msg, answer });
            }
            Q::SetVringEndian { index, endian } => {
                let i = self.stopped_ring(index)?;
                if let Some(r) = self.rings.get_mut(usize::from(i)) {
                    r.endian = Some(endian);
                }
                self.done(code, need);
            }
            Q::GetConfig {
                offset,
                size,
                flags,
            } => {
                self.config_range(offset, size)?;
                let answer = ConfigToken {
                    ticket: self.issue(
                        code,
                        need,
                        WaitKind::Config {
                            offset,
                            size,
                            flags,
                        },
                    ),
                };
                self.events.push_back(Event::ConfigRead {
                    offset,
                    size,
                    flags,
                    answer,
                });
            }
            Q::SetConfig {
                offset,
                flags,
                data,
            } => {
                self.config_range(offset, u32::try_from(data.len()).unwrap_or(u32::MAX))?;
                let answer = self.ack_token(code, need, false, AfterAck::Nothing);
                self.events.push_back(Event::ConfigWrite {
                    offset,
                    flags,
                    data,
                    answer,
                });
            }
            Q::CreateCryptoSession { session } => {
                let answer = CryptoToken {
                    ticket: self.issue(
                        code,
                        need,
                        WaitKind::Crypto {
                            session: session.clone(),
                        },
                    ),
                };
                self.events
                    .push_back(Event::CryptoSessionCreate { session, answer });
            }
            Q::CloseCryptoSession { session_id } => {
                let answer = self.ack_token(code, need, false, AfterAck::Nothing);
                self.events
                    .push_back(Event::CryptoSessionClose { session_id, answer });
            }
            Q::PostcopyAdvise => {
                if self.postcopy != PostcopyState::Off {
                    return Err(Rule::PostcopyOrder {
                        state: "already advised",
                    }
                    .into());
                }
                let answer = PostcopyAdviseToken {
                    ticket: self.issue(code, need, WaitKind::PostcopyAdvise),
                };
                self.events.push_back(Event::PostcopyAdvise { answer });
            }
            Q::PostcopyListen => {
                if self.postcopy != PostcopyState::Advised {
                    return Err(Rule::PostcopyOrder {
                        state: "not advised",
                    }
                    .into());
                }
                let answer = self.ack_token(code, need, false, AfterAck::PostcopyListen);
                self.events.push_back(Event::PostcopyListen { answer });
            }
            Q::PostcopyEnd => {
                if self.postcopy == PostcopyState::Off {
                    return Err(Rule::PostcopyOrder {
                        state: "not advised",
                    }
                    .into());
                }
                let answer = self.ack_token(code, need, true, AfterAck::PostcopyEnd);
                self.events.push_back(Event::PostcopyEnd { answer });
            }
            Q::GetInflightFd { desc } => {
                let (num_queues, queue_size) = (desc.num_queues, desc.queue_size);
                self.check_inflight(num_queues, queue_size)?;
                let answer = InflightToken {
                    ticket: self.issue(
                        code,
                        need,
                        WaitKind::Inflight {
                            num_queues,
                            queue_size,
                        },
                    ),
                };
                let packed = self.neg.packed();
                self.events.push_back(Event::InflightGet {
                    num_queues,
                    queue_size,
                    packed,
                    answer,
                });
            }
            Q::SetInflightFd { desc, fd } => {
                let answer = self.ack_token(code, need, false, AfterAck::Inflight);
                self.events
                    .push_back(Event::InflightSet { desc, fd, answer });
            }
            Q::GpuSetSocket { fd } => {
                let answer = self.ack_token(code, need, false, AfterAck::Nothing);
                self.events.push_back(Event::GpuSocket { fd, answer });
            }
            Q::ResetDevice => {
                // Spec §7.9: disable and stop every ring, reset device state, keep ownership.
                self.rings.iter_mut().for_each(|r| r.reset());
                self.status = crate::wire::DeviceStatus::empty();
                self.neg.features = VirtioFeatures::empty();
                self.inflight = false;
                self.transfer = None;
                self.log = None;
                let answer = self.ack_token(code, need, false, AfterAck::Nothing);
                self.events.push_back(Event::Reset { answer });
            }
            Q::VringKick { index } => {
                let i = self.ring_index(index)?;
                if self.rings.get(usize::from(i)).is_some_and(|r| r.started) {
                    self.events.push_back(Event::RingKicked { index: i });
                    self.done(code, need);
                } else {
                    self.check_start(i)?;
                    self.start_ring(code, need, i)?;
                }
            }
            Q::GetMaxMemSlots => self.reply_u64(code, self.desc.max_mem_slots.into())?,
            Q::AddMemReg { region } => {
                self.memory.check_add(
                    &region.region,
                    self.desc.max_mem_slots,
                    self.gpa_regions(),
                )?;
                self.check_memory_limit(
                    self.memory
                        .total_size()
                        .saturating_add(region.region.memory_size),
                )?;
                let postcopy = self.postcopy == PostcopyState::Listening;
                let answer = MemoryToken {
                    ticket: self.issue(
                        code,
                        need,
                        WaitKind::MemoryAdd {
                            region: region.region,
                            postcopy,
                        },
                    ),
                };
                self.events
                    .push_back(Event::MemoryRegionAdded { region, answer });
            }
            Q::RemMemReg { region } => {
                let i = self.memory.find(&region)?;
                let stored = self.memory.regions().get(i).copied().unwrap_or(region);
                // A started ring's memory cannot go away under it (spec §7.10): stop the
                // ring first. (SET_MEM_TABLE may replace the table under running rings; the
                // runner parks those whose areas the new table lacks.)
                if let Some(index) = self.ring_in(stored.guest_phys_addr, stored.memory_size) {
                    return Err(Rule::RegionInUse {
                        gpa: stored.guest_phys_addr,
                        size: stored.memory_size,
                        index,
                    }
                    .into());
                }
                let answer = self.ack_token(code, need, false, AfterAck::RemoveRegion(stored));
                self.events.push_back(Event::MemoryRegionRemoved {
                    region: stored,
                    answer,
                });
            }
            Q::SetStatus { status } => {
                let answer = self.ack_token(code, need, false, AfterAck::Status(status));
                self.events.push_back(Event::Status { status, answer });
            }
            Q::GetStatus => self.reply_u64(code, self.status.bits().into())?,
            Q::GetSharedObject { uuid } => {
                let answer = SharedObjectToken {
                    ticket: self.issue(code, need, WaitKind::SharedObject),
                };
                self.events
                    .push_back(Event::SharedObjectGet { uuid, answer });
            }
            Q::SetDeviceStateFd {
                direction,
                phase,
                fd,
            } => {
                if !self.is_suspended() {
                    return Err(Rule::NotSuspended.into());
                }
                let answer = DeviceStateToken {
                    ticket: self.issue(code, need, WaitKind::DeviceState { direction }),
                };
                self.events.push_back(Event::DeviceStateTransfer {
                    direction,
                    phase,
                    fd,
                    answer,
                });
            }
            Q::CheckDeviceState => {
                if self.transfer.is_none() {
                    return Err(Rule::NoTransfer.into());
                }
                let answer = self.ack_token(code, need, true, AfterAck::CheckState);
                self.events.push_back(Event::DeviceStateCheck { answer });
            }
            Q::GetShmemConfig => {
                let config = self
                    .desc
                    .shmem
                    .clone()
                    .unwrap_or_else(|| Box::new(zero_shmem()));
                self.reply(code, FrontendReply::ShmemConfig { config })?
            }
        }
        Ok(())
    }

    /// GPA_ADDRESSES without IOMMU_PLATFORM: region user addresses must equal guest ones.
    /// Replies to a request whose answer is one u64 (the GET_* requests).
    fn reply_u64(&mut self, code: FrontendReq, value: u64) -> Result<(), FatalError> {
        self.reply(code, FrontendReply::U64 { value })
    }

    fn gpa_regions(&self) -> bool {
        self.neg.has(ProtocolFeatures::GPA_ADDRESSES)
            && !self.neg.features.contains(VirtioFeatures::ACCESS_PLATFORM)
    }

    /// SET_MEM_TABLE / ADD_MEM_REG: the table would hold `total` bytes.
    fn check_memory_limit(&self, total: u64) -> Result<(), Rule> {
        let max = self.desc.max_memory;
        if total > max {
            return Err(Rule::MemoryLimit { total, max });
        }
        Ok(())
    }

    /// GET_INFLIGHT_FD (spec §7.12): at most the device's queues, a queue size in
    /// 1..=max_queue_size, and a buffer within `max_inflight`.
    fn check_inflight(&self, num_queues: u16, queue_size: u16) -> Result<(), Rule> {
        let queues = self.desc.queues;
        if num_queues == 0 || num_queues > queues {
            return Err(Rule::InflightQueues { num_queues, queues });
        }
        let max = self.desc.max_queue_size;
        if queue_size == 0 || queue_size > max {
            return Err(Rule::InflightQueueSize { queue_size, max });
        }
        let size = inflight_size(self.neg.packed(), num_queues, queue_size);
        if size > self.desc.max_inflight {
            return Err(Rule::InflightLimit {
                size,
                max: self.desc.max_inflight,
            });
        }
        Ok(())
    }

    fn config_range(&self, offset: u32, size: u32) -> Result<(), Rule> {
        let config_size = self.desc.config_size;
        match offset.checked_add(size) {
            Some(end) if size > 0 && end <= config_size => Ok(()),
            _ => Err(Rule::ConfigRange {
                offset,
                size,
                config_size,
            }),
        }
    }
}

/// The size of an inflight buffer for `num_queues` queues of `queue_size` entries (spec
/// §7.12, DPDK's strides rounded up): per queue a 16-byte (split) or 32-byte (packed)
/// header and a 16- or 32-byte record per entry, aligned to 64 bytes; saturating. An upper
/// bound of what libvhost-user, DPDK and our runners allocate.
pub(crate) fn inflight_size(packed: bool, num_queues: u16, queue_size: u16) -> u64 {
    let per_desc: u64 = if packed { 32 } else { 16 };
    let queue = u64::from(queue_size)
        .saturating_mul(per_desc)
        .saturating_add(per_desc)
        .div_ceil(64)
        .saturating_mul(64);
    queue.saturating_mul(u64::from(num_queues))
}

/// Why a request handler stopped early.
enum Outcome {
    Reject(Rule),
    Fatal(FatalError),
}

impl From<Rule> for Outcome {
    fn from(r: Rule) -> Self {
        Outcome::Reject(r)
    }
}

impl From<FatalError> for Outcome {
    fn from(e: FatalError) -> Self {
        Outcome::Fatal(e)
    }
}
