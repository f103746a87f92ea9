//! Reconnecting to a restarted back-end and resuming from the inflight
//! region (spec §7.12): the back-end resubmits what was in flight when its
//! predecessor died.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use vhost_proto::wire::InflightDesc;

use crate::ClientError;
use vhost_backend::OsError;

use super::{DriverRing, Frontend, GuestRam};

/// The inflight buffer a front-end got with GET_INFLIGHT_FD and keeps
/// across back-end restarts (the memfd outlives the back-end).
#[derive(Debug)]
pub struct Inflight {
    /// The buffer's description, as GET_INFLIGHT_FD gave it.
    pub desc: InflightDesc,
    /// The buffer.
    pub fd: OwnedFd,
}

impl Frontend {
    /// GET_INFLIGHT_FD for `num_queues` rings of `queue_size`, then
    /// SET_INFLIGHT_FD with it (needs INFLIGHT_SHMFD; before the rings
    /// start). `None` if the back-end has no buffer to give. Keep the result
    /// for [`resume_from_inflight`](Self::resume_from_inflight).
    pub fn setup_inflight(
        &mut self,
        num_queues: u16,
        queue_size: u16,
    ) -> Result<Option<Inflight>, ClientError> {
        let Some((desc, fd)) = self.get_inflight_fd(num_queues, queue_size)? else {
            return Ok(None);
        };
        self.set_inflight_fd(desc, fd.as_fd())?;
        Ok(Some(Inflight { desc, fd }))
    }

    /// On a new connection to a restarted back-end, after the features were
    /// negotiated again: SET_INFLIGHT_FD with the kept buffer, SET_MEM_TABLE
    /// with `ram`, then every ring restarted where the old back-end left it
    /// ([`DriverRing::resume_base`], [`start_ring_at`](Self::start_ring_at),
    /// which ends with a synchronisation). The back-end resubmits the
    /// requests the buffer records as in flight; their completions arrive on
    /// the rings as usual, and completions the old back-end published before
    /// it died are kept in the rings, not lost.
    pub fn resume_from_inflight(
        &mut self,
        inflight: &Inflight,
        ram: &GuestRam,
        rings: &mut [DriverRing],
    ) -> Result<(), ClientError> {
        self.set_inflight_fd(inflight.desc, inflight.fd.as_fd())?;
        self.set_mem_table(&ram.mem_table())?;
        for ring in rings.iter_mut() {
            let base = ring.resume_base()?;
            self.start_ring_at(ring, ram, base)?;
        }
        Ok(())
    }

    /// Connects to a back-end (re)starting on `path`, retrying for at most
    /// `timeout` while nothing listens there yet, runs `handshake` (the
    /// device's feature negotiation, SET_OWNER, ...) and
    /// [`resume_from_inflight`](Self::resume_from_inflight).
    pub fn reconnect(
        path: impl AsRef<Path>,
        timeout: Duration,
        handshake: impl FnOnce(&mut Frontend) -> Result<(), ClientError>,
        inflight: &Inflight,
        ram: &GuestRam,
        rings: &mut [DriverRing],
    ) -> Result<Frontend, ClientError> {
        let deadline = Instant::now().checked_add(timeout);
        let mut front = loop {
            match Frontend::connect(path.as_ref()) {
                Ok(f) => break f,
                Err(e)
                    if deadline.is_none_or(|d| Instant::now() < d)
                        && matches!(
                            e.kind(),
                            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                        ) =>
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(ClientError::Os(OsError::io("connect", e))),
            }
        };
        handshake(&mut front)?;
        front.resume_from_inflight(inflight, ram, rings)?;
        Ok(front)
    }
}
