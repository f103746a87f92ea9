//! The device trait: what a back-end device offers and how it serves its
//! queues.

use std::os::unix::net::UnixStream;

use vhost_proto::backend::{DeviceDescription, Refused};
use vhost_proto::wire::{ConfigFlags, DeviceStatus, ProtocolFeatures, VirtioFeatures};

use crate::os::eventfd::EventFd;

use super::channel::BackendChannel;
use super::queue::Queue;

/// A vhost-user back-end device served by runner (`vhost-io-std`'s `Server`, `vhost-io-mio`'s `Session`).
///
/// The trait is capability-oriented: [`description`](Self::description)
/// states what the device offers (features, protocol features, queue count,
/// config space size), and the device implements what it offers. Every other
/// method has a default that refuses cleanly (the session then NACKs the
/// request or sends the spec's failure reply, e.g. a zero-length GET_CONFIG
/// reply) or ignores a notification. The protocol state (features, rings,
/// memory table) stays in the session; the device never keeps a copy.
///
/// Methods take `&self`: queue workers run in their own threads (one per
/// started queue) while the session thread delivers control events, so a
/// device keeps its mutable state behind its own locks or atomics.
///
/// # Shape check: a virtio-blk back-end
///
/// ```
/// use std::sync::Mutex;
/// use vhost_backend::{Device, Queue};
/// use vhost_proto::backend::{DeviceDescription, Refused};
/// use vhost_proto::wire::{ProtocolFeatures, VirtioFeatures};
///
/// const VIRTIO_BLK_T_IN: u32 = 0;
/// const VIRTIO_BLK_T_OUT: u32 = 1;
/// const VIRTIO_BLK_T_FLUSH: u32 = 4;
///
/// struct Blk { image: Mutex<Vec<u8>>, queues: u16 }
///
/// impl Device for Blk {
///     fn description(&self) -> DeviceDescription {
///         DeviceDescription::new(
///             VirtioFeatures::VERSION_1 | VirtioFeatures::EVENT_IDX,
///             ProtocolFeatures::MQ | ProtocolFeatures::REPLY_ACK | ProtocolFeatures::CONFIG
///                 | ProtocolFeatures::INFLIGHT_SHMFD, // the server tracks inflight requests
///             self.queues,
///         )
///         .with_config_size(8) // capacity in sectors (u64)
///     }
///
///     fn process_queue(&self, q: &mut Queue) -> Result<(), vring::Error> {
///         while let Some(chain) = q.pop()? {
///             let mut hdr = [0u8; 16]; // type u32, reserved u32, sector u64
///             q.reader(&chain)?.read_exact(&mut hdr)?;
///             let kind = u32::from_le_bytes(hdr[0..4].try_into().unwrap());
///             let sector = u64::from_le_bytes(hdr[8..16].try_into().unwrap());
///             let mut reader = q.reader(&chain)?;
///             reader.skip(16)?;
///             let mut writer = q.writer(&chain)?;
///             let mut image = self.image.lock().unwrap();
///             let start = (sector as usize).saturating_mul(512);
///             let status: u8 = match kind {
///                 VIRTIO_BLK_T_IN => {
///                     // Data goes before the status byte: write all but the last byte.
///                     let data = image.get(start..).unwrap_or(&[]);
///                     let room = 512.min(data.len());
///                     writer.write(&data[..room])?;
///                     0
///                 }
///                 VIRTIO_BLK_T_OUT => {
///                     let mut buf = [0u8; 512];
///                     let n = reader.read(&mut buf)?;
///                     if let Some(dst) = image.get_mut(start..start + n) { dst.copy_from_slice(&buf[..n]); 0 } else { 1 }
///                 }
///                 VIRTIO_BLK_T_FLUSH => 0,
///                 _ => 2, // VIRTIO_BLK_S_UNSUPP
///             };
///             writer.write_all(&[status])?;
///             let len = writer.bytes_written();
///             q.add_used(&chain, len)?;
///         }
///         Ok(())
///     }
///
///     fn read_config(&self, offset: u32, data: &mut [u8]) -> Result<(), Refused> {
///         let capacity = (self.image.lock().unwrap().len() as u64 / 512).to_le_bytes();
///         let src = capacity.get(offset as usize..offset as usize + data.len())
///             .ok_or(Refused::because("outside config space"))?;
///         data.copy_from_slice(src);
///         Ok(())
///     }
/// }
/// # let _ = Blk { image: Mutex::new(vec![0; 4096]), queues: 1 }.description();
/// ```
///
/// # Shape check: a virtio-net back-end
///
/// RX/TX queue pairs: even queues receive, odd queues transmit. TX chains are
/// consumed on kicks (dropped while the ring is disabled, spec §7.2); RX
/// chains are filled when the device has packets, which it signals through
/// [`queue_wakeup`](Self::queue_wakeup) so the RX worker runs without a kick.
/// With MRG_RXBUF a packet spans several RX chains: the device pops chains
/// until the packet fits, writes `num_buffers` into the first header, and
/// completes them all before the worker publishes.
///
/// ```
/// use std::collections::VecDeque;
/// use std::sync::Mutex;
/// use vhost_backend::{Device, Queue};
/// use vhost_backend::os::eventfd::EventFd;
/// use vhost_proto::backend::DeviceDescription;
/// use vhost_proto::wire::{ProtocolFeatures, VirtioFeatures};
///
/// /// A loopback net device: what the guest transmits comes back on RX.
/// struct Loopback { pending: Mutex<VecDeque<Vec<u8>>>, rx_wake: EventFd }
///
/// impl Device for Loopback {
///     fn description(&self) -> DeviceDescription {
///         DeviceDescription::new(
///             VirtioFeatures::VERSION_1 | VirtioFeatures::from_bits_retain(1 << 15), // MRG_RXBUF
///             ProtocolFeatures::MQ | ProtocolFeatures::REPLY_ACK,
///             2,
///         )
///     }
///
///     fn process_queue(&self, q: &mut Queue) -> Result<(), vring::Error> {
///         if q.index() % 2 == 1 {
///             // TX: take every packet (12-byte virtio-net header first).
///             while let Some(chain) = q.pop()? {
///                 let mut pkt = vec![0u8; 65536];
///                 let n = q.reader(&chain)?.read(&mut pkt)?;
///                 pkt.truncate(n);
///                 if q.is_enabled() {
///                     self.pending.lock().unwrap().push_back(pkt);
///                     self.rx_wake.signal().ok();
///                 }
///                 q.add_used(&chain, 0)?;
///             }
///         } else if q.is_enabled() {
///             // RX: one packet per chain here; MRG_RXBUF would pop more chains per packet.
///             let mut pending = self.pending.lock().unwrap();
///             while !pending.is_empty() {
///                 let Some(chain) = q.pop()? else { break };
///                 let Some(pkt) = pending.pop_front() else { break };
///                 let mut w = q.writer(&chain)?;
///                 w.write(&pkt)?;
///                 let len = w.bytes_written();
///                 q.add_used(&chain, len)?;
///             }
///         }
///         Ok(())
///     }
///
///     fn queue_wakeup(&self, index: u16) -> Option<EventFd> {
///         (index % 2 == 0).then(|| self.rx_wake.try_clone().ok()).flatten()
///     }
/// }
/// # let d = Loopback { pending: Mutex::new(VecDeque::new()), rx_wake: EventFd::new(true).unwrap() };
/// # assert!(d.queue_wakeup(0).is_some());
/// ```
pub trait Device: Send + Sync + 'static {
    /// What the device offers. Read once per connection; the session answers
    /// GET_FEATURES, GET_PROTOCOL_FEATURES, GET_QUEUE_NUM and
    /// GET_MAX_MEM_SLOTS from it alone.
    fn description(&self) -> DeviceDescription;

    /// Serves the available chains of `queue`: pop, read, write, add_used.
    ///
    /// Called by the queue's worker thread when the ring starts, after each
    /// kick and after each [`queue_wakeup`](Self::queue_wakeup) signal; the
    /// worker publishes the used entries and signals the call eventfd
    /// afterwards. Chains popped here should be completed before returning:
    /// the worker may be stopped (GET_VRING_BASE, memory change) between two
    /// calls, and the position it reports covers every popped chain.
    ///
    /// An error (a malformed chain: guest memory is hostile) stops the ring:
    /// the worker signals the err eventfd, logs it and processes no more
    /// chains until the front-end restarts the ring.
    fn process_queue(&self, queue: &mut Queue) -> Result<(), vring::Error>;

    /// An eventfd that wakes queue `index`'s worker without a kick (e.g. a
    /// net device's RX queue when packets arrive). Asked for when the worker
    /// starts. Default: none.
    fn queue_wakeup(&self, index: u16) -> Option<EventFd> {
        let _ = index;
        None
    }

    /// Queue `index` started (its worker is about to run).
    fn queue_started(&self, index: u16) {
        let _ = index;
    }

    /// Queue `index` stopped (GET_VRING_BASE, reset or disconnect); its
    /// worker has exited.
    fn queue_stopped(&self, index: u16) {
        let _ = index;
    }

    /// SET_VRING_ENABLE changed queue `index`'s enabled flag (also readable
    /// with [`Queue::is_enabled`]).
    fn queue_enabled(&self, index: u16, enabled: bool) {
        let _ = (index, enabled);
    }

    /// SET_FEATURES acked these virtio features.
    fn features_acked(&self, features: VirtioFeatures) {
        let _ = features;
    }

    /// SET_PROTOCOL_FEATURES acked these protocol features.
    fn protocol_features_acked(&self, features: ProtocolFeatures) {
        let _ = features;
    }

    /// GET_CONFIG: fill `data` from config space at `offset` (the range is
    /// inside the description's `config_size`). Default: refused (the session
    /// sends a zero-length config, the spec's failure reply).
    fn read_config(&self, offset: u32, data: &mut [u8]) -> Result<(), Refused> {
        let _ = (offset, data);
        Err(Refused::because("device has no readable config space"))
    }

    /// SET_CONFIG: write `data` at `offset`; refuse writes to read-only fields
    /// unless `flags` says migration. Default: refused.
    fn write_config(&self, offset: u32, data: &[u8], flags: ConfigFlags) -> Result<(), Refused> {
        let _ = (offset, data, flags);
        Err(Refused::because("device config space is read-only"))
    }

    /// SET_STATUS: the virtio status byte (0 = reset). Default: accepted.
    fn set_status(&self, status: DeviceStatus) -> Result<(), Refused> {
        let _ = status;
        Ok(())
    }

    /// RESET_DEVICE: every queue has been stopped; return to the initial
    /// state. Default: nothing to reset.
    fn reset(&self) {}

    /// NET_SET_MTU. Default: refused.
    fn set_mtu(&self, mtu: u64) -> Result<(), Refused> {
        let _ = mtu;
        Err(Refused::because("MTU not supported"))
    }

    /// SEND_RARP. Default: refused.
    fn send_rarp(&self, mac: [u8; 6]) -> Result<(), Refused> {
        let _ = mac;
        Err(Refused::because("RARP not supported"))
    }

    /// SET_BACKEND_REQ_FD, as the std runner (`vhost-io-std`'s `Server`, `vhost-io-mio`'s `Session`) delivers
    /// it: the back-end → front-end channel, ready to send the ten back-end
    /// requests (gated by what was negotiated, refused while the device is
    /// suspended). A new SET_BACKEND_REQ_FD hands over a new channel.
    /// Default: passes the socket to [`backend_channel`](Self::backend_channel).
    fn backend_channel_opened(&self, channel: BackendChannel) {
        self.backend_channel(channel.into_stream());
    }

    /// SET_BACKEND_REQ_FD as a raw socket: what bindings that do not build a
    /// [`BackendChannel`] deliver (a device can wrap it with
    /// [`BackendChannel::new`]). Default: dropped (closed).
    fn backend_channel(&self, socket: UnixStream) {
        drop(socket);
    }

    /// The front-end disconnected (or the connection failed); every queue has
    /// stopped. Device state is kept for the next connection.
    fn disconnected(&self) {}
}
