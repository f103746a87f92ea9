//! The device behind the `runtime_session` target: serves its queues like the echo device
//! but completes chains now or later, in an order the fuzz input picks, and keeps the
//! chains it holds in one pool shared by all its queues (so a chain can be completed on
//! the wrong queue, or after its ring restarted).

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use vhost_proto::backend::{DeviceDescription, Refused};
use vhost_proto::wire::{ConfigFlags, DeviceStatus, ProtocolFeatures, VirtioFeatures};

use crate::echo::echo_chain;
use crate::os::eventfd::EventFd;
use crate::{BackendChannel, Chain, Device, Queue, QueueError, QueueHandler, Source};

/// Most chains the pool holds; beyond it chains are completed at once.
pub const MAX_HELD: usize = 512;

/// A runtime bug this target found, now fixed: a chain completed on the wrong queue
/// (`Queue::complete` refuses it with `WrongQueue`) stayed in flight on its own ring for
/// ever, so every stop of that ring waited for ever. It now counts as dropped there. While
/// this is `true`, a run in which the device misroutes a completion does not check that
/// stops finish; it is `false`: every run checks them.
pub const WRONG_QUEUE_HANGS: bool = false;

/// The id of the handler's one source (its completion eventfd).
pub const SOURCE_ID: u32 = 7;

/// Handler policy bits (the input's policy byte).
pub mod policy {
    /// Bits 0–1: what `process` does with a popped chain: 0 complete it now, 1 hold it,
    /// 2 hold every other one, 3 hold it unless the pool has 4 or more.
    pub const MODE: u8 = 0b11;
    /// `quiesce` completes the queue's held chains (otherwise they wait for a completion
    /// op: a stop stays pending).
    pub const QUIESCE_COMPLETES: u8 = 1 << 2;
    /// Walk each chain's lengths before serving it.
    pub const LENGTHS: u8 = 1 << 3;
    /// A chain whose first readable byte is 0xEE breaks the ring (the handler returns an
    /// error after completing it).
    pub const ERROR_MAGIC: u8 = 1 << 4;
    /// A chain the handler cannot echo is completed with length 0 (otherwise it is
    /// dropped, as the echo device does, and the error breaks the ring).
    pub const COMPLETE_BROKEN: u8 = 1 << 5;
    /// `start_queue` refuses odd queues.
    pub const REFUSE_ODD: u8 = 1 << 6;
    /// `set_status`, `write_config`, `set_mtu` and `send_rarp` refuse.
    pub const REFUSE_CONTROL: u8 = 1 << 7;
}

/// What the harness and the handlers share.
#[derive(Debug, Default)]
pub struct Control {
    /// The policy byte ([`policy`]).
    pub policy: u8,
    /// Chains popped and not completed yet, of every queue.
    pub pool: Vec<Chain>,
    /// Completion script of the next `ready`: each byte picks a chain of the pool (bit 7
    /// set: any chain, `(b & 0x7f) % len`; clear: one of the queue's own, `b % n`).
    pub order: Vec<u8>,
    /// Complete every chain of the queue at the next `ready` (the end of a run).
    pub release: bool,
    /// The back-end channel the session handed over (kept until disconnect).
    pub channel: Option<BackendChannel>,
    /// A chain was completed on another queue than its own. The runtime consumes it
    /// without counting it on its own ring, which then never quiesces (see
    /// [`WRONG_QUEUE_HANGS`]).
    pub misrouted: bool,
    /// Toggles mode 2.
    flip: bool,
}

/// The fuzzed device: see the module docs.
#[derive(Debug)]
pub struct FuzzDevice {
    description: DeviceDescription,
    ctl: Arc<Mutex<Control>>,
    completed: AtomicU64,
    started: AtomicU64,
}

/// Locks `m`, ignoring poisoning (a handler panic is contained by the runtime; the pool
/// stays usable).
pub fn lock(m: &Mutex<Control>) -> MutexGuard<'_, Control> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The protocol features the header's first byte chooses from, bit by bit.
pub const PROTOCOL_CHOICES: [ProtocolFeatures; 8] = [
    ProtocolFeatures::REPLY_ACK,
    ProtocolFeatures::MQ,
    ProtocolFeatures::CONFIG,
    ProtocolFeatures::CONFIGURE_MEM_SLOTS,
    ProtocolFeatures::STATUS,
    ProtocolFeatures::RESET_DEVICE,
    ProtocolFeatures::INFLIGHT_SHMFD,
    ProtocolFeatures::INBAND_NOTIFICATIONS,
];

impl FuzzDevice {
    /// A device offering `protocol` (bits into [`PROTOCOL_CHOICES`]) and, from `device`:
    /// bits 0–1 queue count − 1, bit 2 EVENT_IDX, 3 INDIRECT_DESC, 4 RING_PACKED, 5
    /// IN_ORDER, 6 BACKEND_REQ (with BACKEND_SEND_FD).
    pub fn new(protocol: u8, device: u8, policy: u8) -> Self {
        let mut pf = ProtocolFeatures::empty();
        for (i, f) in PROTOCOL_CHOICES.iter().enumerate() {
            if protocol & (1 << i) != 0 {
                pf |= *f;
            }
        }
        if device & (1 << 6) != 0 {
            pf |= ProtocolFeatures::BACKEND_REQ | ProtocolFeatures::BACKEND_SEND_FD;
        }
        let mut vf = VirtioFeatures::VERSION_1;
        for (bit, f) in [
            (2, VirtioFeatures::EVENT_IDX),
            (3, VirtioFeatures::INDIRECT_DESC),
            (4, VirtioFeatures::RING_PACKED),
            (5, VirtioFeatures::IN_ORDER),
        ] {
            if device & (1 << bit) != 0 {
                vf |= f;
            }
        }
        let queues = u16::from(device & 3) + 1;
        let description = DeviceDescription::new(vf, pf, queues)
            .with_config_size(8)
            .with_max_queue_size(256);
        FuzzDevice {
            description,
            ctl: Arc::new(Mutex::new(Control {
                policy,
                ..Control::default()
            })),
            completed: AtomicU64::new(0),
            started: AtomicU64::new(0),
        }
    }

    /// What the harness shares with the handlers.
    pub fn control(&self) -> &Arc<Mutex<Control>> {
        &self.ctl
    }

    /// Chains completed so far.
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }

    /// Queues started so far.
    pub fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    fn refuse_control(&self) -> Result<(), Refused> {
        if lock(&self.ctl).policy & policy::REFUSE_CONTROL != 0 {
            Err(Refused::because("the fuzz device refuses"))
        } else {
            Ok(())
        }
    }
}

impl Device for FuzzDevice {
    fn description(&self) -> DeviceDescription {
        self.description.clone()
    }

    fn start_queue(self: Arc<Self>, queue: &Queue) -> Result<Box<dyn QueueHandler>, Refused> {
        if lock(&self.ctl).policy & policy::REFUSE_ODD != 0 && queue.index() % 2 == 1 {
            return Err(Refused::because("the fuzz device refuses odd queues"));
        }
        let wake = EventFd::new(true).map_err(|_| Refused::because("no eventfd"))?;
        self.started.fetch_add(1, Ordering::Relaxed);
        Ok(Box::new(FuzzQueue { dev: self, wake }))
    }

    fn read_config(&self, offset: u32, data: &mut [u8]) -> Result<(), Refused> {
        let bytes = crate::echo::CONFIG_MAGIC.to_le_bytes();
        let start = offset as usize;
        let src = bytes
            .get(start..start.saturating_add(data.len()))
            .ok_or(Refused::because("outside the config space"))?;
        data.copy_from_slice(src);
        Ok(())
    }

    fn write_config(&self, _: u32, _: &[u8], _: ConfigFlags) -> Result<(), Refused> {
        self.refuse_control()
    }

    fn set_status(&self, _: DeviceStatus) -> Result<(), Refused> {
        self.refuse_control()
    }

    fn set_mtu(&self, _: u64) -> Result<(), Refused> {
        self.refuse_control()
    }

    fn send_rarp(&self, _: [u8; 6]) -> Result<(), Refused> {
        self.refuse_control()
    }

    fn backend_channel_opened(&self, channel: BackendChannel) {
        lock(&self.ctl).channel = Some(channel);
    }

    fn disconnected(&self) {
        lock(&self.ctl).channel = None;
    }
}

/// One started queue of a [`FuzzDevice`].
#[derive(Debug)]
struct FuzzQueue {
    dev: Arc<FuzzDevice>,
    /// Its source (never signalled: the harness calls `ready` directly).
    wake: EventFd,
}

impl FuzzQueue {
    /// Serves `chain` now: echo, complete; the error the policy asks for.
    fn serve(&self, q: &mut Queue, chain: Chain, pol: u8) -> Result<(), QueueError> {
        if pol & policy::LENGTHS != 0 {
            q.lengths(&chain)?;
        }
        let magic = pol & policy::ERROR_MAGIC != 0 && {
            let mut b = [0u8; 1];
            matches!(q.reader(&chain).read(&mut b), Ok(1)) && b[0] == 0xee
        };
        let len = match echo_chain(q, &chain) {
            Ok(len) => len,
            Err(e) if pol & policy::COMPLETE_BROKEN != 0 => {
                q.complete(chain, 0)?;
                self.dev.completed.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
            // Dropped: the echo device's behaviour on a chain it cannot serve.
            Err(e) => return Err(e),
        };
        q.complete(chain, len)?;
        self.dev.completed.fetch_add(1, Ordering::Relaxed);
        if magic {
            return Err(QueueError::Device {
                queue: q.index(),
                reason: "magic byte".into(),
            });
        }
        Ok(())
    }

    /// Completes the chains the script picks (or all of the queue's).
    fn complete_held(&self, q: &mut Queue, all: bool) -> Result<(), QueueError> {
        loop {
            let (chain, pol) = {
                let mut ctl = lock(&self.dev.ctl);
                let pol = ctl.policy;
                let own: Vec<usize> = ctl
                    .pool
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.queue_index() == q.index())
                    .map(|(i, _)| i)
                    .collect();
                let pick = if all || ctl.release {
                    own.first().copied()
                } else if ctl.order.is_empty() {
                    None
                } else {
                    let b = ctl.order.remove(0);
                    if b & 0x80 != 0 {
                        (!ctl.pool.is_empty()).then(|| usize::from(b & 0x7f) % ctl.pool.len())
                    } else if own.is_empty() {
                        None
                    } else {
                        own.get(usize::from(b) % own.len()).copied()
                    }
                };
                match pick {
                    Some(i) if i < ctl.pool.len() => {
                        let chain = ctl.pool.swap_remove(i);
                        ctl.misrouted |= chain.queue_index() != q.index();
                        (chain, pol)
                    }
                    Some(_) => continue,
                    None if !all && !ctl.release && !ctl.order.is_empty() => continue,
                    None => return Ok(()),
                }
            };
            self.serve(q, chain, pol)?;
        }
    }
}

impl QueueHandler for FuzzQueue {
    fn process(&mut self, q: &mut Queue) -> Result<(), QueueError> {
        while let Some(chain) = q.pop()? {
            let (hold, pol) = {
                let mut ctl = lock(&self.dev.ctl);
                let room = ctl.pool.len() < MAX_HELD;
                let hold = match ctl.policy & policy::MODE {
                    0 => false,
                    1 => true,
                    2 => {
                        ctl.flip = !ctl.flip;
                        ctl.flip
                    }
                    _ => ctl.pool.len() < 4,
                };
                (hold && room, ctl.policy)
            };
            if hold {
                lock(&self.dev.ctl).pool.push(chain);
            } else {
                self.serve(q, chain, pol)?;
            }
        }
        Ok(())
    }

    fn sources(&self) -> Vec<Source> {
        vec![Source {
            fd: self.wake.read_fd().as_raw_fd(),
            id: SOURCE_ID,
        }]
    }

    fn ready(&mut self, q: &mut Queue, _: u32) -> Result<(), QueueError> {
        self.complete_held(q, false)?;
        self.process(q)
    }

    fn quiesce(&mut self, q: &mut Queue) -> Result<(), QueueError> {
        if lock(&self.dev.ctl).policy & policy::QUIESCE_COMPLETES != 0 {
            self.complete_held(q, true)?;
        }
        Ok(())
    }
}
