//! Per-ring state the back-end connection owns (spec §7.2).

use crate::session::{AddressSpace, RingConfig, RingFeatures, RingPosition};
use crate::wire::{VringAddrFlags, VringBase, VringEndian};

/// A kick, call or err notifier as the front-end set it (spec §3.1).
#[derive(Debug, Default, PartialEq, Eq)]
pub enum Notifier<H> {
    /// Never set.
    #[default]
    Unset,
    /// Set with the no-fd flag: poll (kick) / the front-end polls (call).
    NoFd,
    /// An eventfd.
    Fd(H),
}

impl<H> Notifier<H> {
    /// The handle, if an eventfd was set.
    pub fn handle(&self) -> Option<&H> {
        match self {
            Notifier::Fd(h) => Some(h),
            _ => None,
        }
    }
}

/// Ring addresses after translation (spec §3.5, §7.10).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RingAddresses {
    /// Descriptor table / ring.
    pub desc: u64,
    /// Available ring / driver area.
    pub avail: u64,
    /// Used ring / device area.
    pub used: u64,
    /// Dirty-log address of the used ring (guest-physical, untranslated).
    pub log: u64,
    /// SET_VRING_ADDR flags (`LOG`).
    pub flags: VringAddrFlags,
    /// Guest-physical or IOVA.
    pub space: AddressSpace,
}

/// The three areas of a ring whose areas start at `desc`, `avail`, `used`: name, start, size
/// in bytes (virtqueue.md: split desc 16·Q, avail 6 + 2·Q, used 6 + 8·Q; packed desc 16·Q,
/// driver and device event suppression areas 4 each). Without a queue size every area
/// counts 1 byte (only its start can be checked).
pub(crate) fn ring_areas(
    packed: bool,
    num: Option<u16>,
    desc: u64,
    avail: u64,
    used: u64,
) -> [(&'static str, u64, u64); 3] {
    let q = num.map(u64::from);
    // Q ≤ 65535: none of these can overflow, but a wrap would only shrink a range.
    let size = |per: u64, fixed: u64| {
        q.map_or(1, |q| {
            q.checked_mul(per)
                .and_then(|n| n.checked_add(fixed))
                .unwrap_or(u64::MAX)
        })
    };
    if packed {
        [
            ("desc", desc, size(16, 0)),
            ("driver", avail, q.map_or(1, |_| 4)),
            ("device", used, q.map_or(1, |_| 4)),
        ]
    } else {
        [
            ("desc", desc, size(16, 0)),
            ("avail", avail, size(2, 6)),
            ("used", used, size(8, 6)),
        ]
    }
}

/// One ring's state: stopped/started × disabled/enabled (spec §7.2), its configuration and
/// its notifiers. The connection owns it; read it through
/// [`Connection::ring`](super::Connection::ring).
#[derive(Debug)]
pub struct RingState<H> {
    pub(crate) index: u16,
    pub(crate) size: Option<u16>,
    pub(crate) addr: Option<RingAddresses>,
    pub(crate) base: VringBase,
    pub(crate) endian: Option<VringEndian>,
    pub(crate) enabled: bool,
    pub(crate) started: bool,
    pub(crate) kick: Notifier<H>,
    pub(crate) call: Notifier<H>,
    pub(crate) err: Notifier<H>,
    /// The notifier a change awaiting the runner's answer replaced: put back if the
    /// runner refuses the new one (a refused request changes nothing).
    pub(crate) replaced: Option<(NotifierSlot, Notifier<H>)>,
}

/// Which of a ring's notifiers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NotifierSlot {
    Kick,
    Call,
    Err,
}

impl<H> RingState<H> {
    pub(crate) fn new(index: u16) -> Self {
        RingState {
            index,
            size: None,
            addr: None,
            base: VringBase::default(),
            endian: None,
            enabled: false,
            started: false,
            kick: Notifier::Unset,
            call: Notifier::Unset,
            err: Notifier::Unset,
            replaced: None,
        }
    }

    /// Vring index.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// Queue size from SET_VRING_NUM.
    pub fn size(&self) -> Option<u16> {
        self.size
    }

    /// Translated addresses from SET_VRING_ADDR.
    pub fn addresses(&self) -> Option<&RingAddresses> {
        self.addr.as_ref()
    }

    /// The ring base as last set (SET_VRING_BASE) or reported at the last stop.
    pub fn base(&self) -> VringBase {
        self.base
    }

    /// SET_VRING_ENDIAN value, if any.
    pub fn endian(&self) -> Option<VringEndian> {
        self.endian
    }

    /// Whether the ring is enabled (SET_VRING_ENABLE, or SET_FEATURES without bit 30).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether the ring is started: a kick started it (true while its
    /// [`RingStarted`](super::Event::RingStarted) answer is outstanding), the device did not
    /// refuse that start or a rebuild on new addresses, and no GET_VRING_BASE came since.
    pub fn started(&self) -> bool {
        self.started
    }

    /// The kick eventfd, if one is set (a worker dups it to wait for kicks).
    pub fn kick(&self) -> Option<&H> {
        self.kick.handle()
    }

    /// The call eventfd, if one is set.
    pub fn call(&self) -> Option<&H> {
        self.call.handle()
    }

    /// The err eventfd, if one is set.
    pub fn err(&self) -> Option<&H> {
        self.err.handle()
    }

    /// The kick notifier with its no-fd state.
    pub fn kick_notifier(&self) -> &Notifier<H> {
        &self.kick
    }

    /// The call notifier with its no-fd state.
    pub fn call_notifier(&self) -> &Notifier<H> {
        &self.call
    }

    /// The err notifier with its no-fd state.
    pub fn err_notifier(&self) -> &Notifier<H> {
        &self.err
    }

    /// The full configuration, if size and addresses are set.
    pub fn config(&self, packed: bool, features: RingFeatures) -> Option<RingConfig> {
        let size = self.size?;
        let a = self.addr?;
        Some(RingConfig {
            index: self.index,
            size,
            packed,
            desc_table: a.desc,
            driver_area: a.avail,
            device_area: a.used,
            address_space: a.space,
            used_log: a.flags.contains(VringAddrFlags::LOG).then_some(a.log),
            features,
            position: RingPosition::from_base(self.base, packed),
            endian: self.endian,
        })
    }

    /// Back to the initial state (RESET_DEVICE): stopped, disabled, nothing set. Dropping
    /// the notifiers closes their fds.
    pub(crate) fn slot(&mut self, slot: NotifierSlot) -> &mut Notifier<H> {
        match slot {
            NotifierSlot::Kick => &mut self.kick,
            NotifierSlot::Call => &mut self.call,
            NotifierSlot::Err => &mut self.err,
        }
    }

    /// Stores `new` in `slot`, keeping the old notifier until the runner answers.
    pub(crate) fn replace_notifier(&mut self, slot: NotifierSlot, new: Notifier<H>) {
        let old = std::mem::replace(self.slot(slot), new);
        self.replaced = Some((slot, old));
    }

    /// The runner answered the change: drop the old notifier (accepted) or put it back.
    pub(crate) fn settle_notifier(&mut self, accepted: bool) {
        if let Some((slot, old)) = self.replaced.take()
            && !accepted
        {
            *self.slot(slot) = old;
        }
    }

    pub(crate) fn reset(&mut self) {
        *self = RingState::new(self.index);
    }
}
