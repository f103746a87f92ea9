//! The back-end channel served with real actions: [`FrontendChannel::serve`]
//! receives one back-end request, acts on it (a [`Mappings`] table for host
//! notifiers and shared memory, the user's [`ChannelHandler`] for IOTLB
//! misses and shared objects), answers it, and tells the VMM what happened
//! as a [`ChannelNotice`].

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use vhost_proto::backend::Refused;
use vhost_proto::frontend::{HostNotifier, MappingError, Mappings};
use vhost_proto::session::Rejection;
use vhost_proto::wire::{BackendReq, BackendRequest, IotlbMsg, IotlbType, ShmemMap, Uuid};

use vhost_backend::ChannelError;

use super::channel::{BackendMessage, FrontendChannel};

/// What the VMM provides to answer the back-end requests the channel cannot
/// answer alone. Every method has a default that refuses (NACK), so a
/// handler implements only what its device uses.
pub trait ChannelHandler {
    /// BACKEND_IOTLB_MSG with a MISS: translate `msg.iova` and send the
    /// IOTLB update on the main socket
    /// ([`Frontend::iotlb_msg`](super::Frontend::iotlb_msg)), then `Ok`.
    fn iotlb_miss(&mut self, msg: IotlbMsg) -> Result<(), Refused> {
        let _ = msg;
        Err(Refused::because("no IOMMU"))
    }

    /// BACKEND_IOTLB_MSG with an ACCESS_FAIL: the back-end could not use a
    /// translation. Default: noted and acked.
    fn iotlb_access_fail(&mut self, msg: IotlbMsg) -> Result<(), Refused> {
        let _ = msg;
        Ok(())
    }

    /// BACKEND_CONFIG_CHANGE_MSG: the device's config space changed; re-read
    /// it ([`Frontend::get_config`](super::Frontend::get_config)) and tell
    /// the guest. Default: acked (the VMM re-reads on the
    /// [`ChannelNotice::ConfigChanged`] it gets).
    fn config_changed(&mut self) -> Result<(), Refused> {
        Ok(())
    }

    /// BACKEND_SHARED_OBJECT_ADD.
    fn shared_object_add(&mut self, uuid: Uuid) -> Result<(), Refused> {
        let _ = uuid;
        Err(Refused::because("no shared objects"))
    }

    /// BACKEND_SHARED_OBJECT_REMOVE.
    fn shared_object_remove(&mut self, uuid: Uuid) -> Result<(), Refused> {
        let _ = uuid;
        Err(Refused::because("no shared objects"))
    }

    /// BACKEND_SHARED_OBJECT_LOOKUP: the object's dma-buf fd.
    fn shared_object_lookup(&mut self, uuid: Uuid) -> Result<OwnedFd, Refused> {
        let _ = uuid;
        Err(Refused::because("no shared objects"))
    }
}

/// A handler that refuses everything it is asked (the channel's own tables
/// still serve host notifiers and shared memory).
#[derive(Clone, Copy, Debug, Default)]
pub struct RefuseAll;

impl ChannelHandler for RefuseAll {}

/// What a served back-end request did, for the VMM.
#[derive(Debug)]
#[non_exhaustive]
pub enum ChannelNotice {
    /// BACKEND_CONFIG_CHANGE_MSG: re-read the config space.
    ConfigChanged,
    /// BACKEND_VRING_CALL: in-band used-buffer notification of a ring.
    VringCall {
        /// The ring.
        index: u16,
    },
    /// BACKEND_VRING_ERR: in-band error notification of a ring.
    VringErr {
        /// The ring.
        index: u16,
    },
    /// A host notifier area was recorded (replacing any earlier one): map
    /// `size` bytes of [`Mappings::notifier`] at `offset` as the ring's
    /// notify area.
    HostNotifierSet {
        /// The ring.
        index: u16,
        /// The area.
        area: HostNotifier,
    },
    /// The ring's host notifier was dropped (kick through the eventfd again).
    HostNotifierRemoved {
        /// The ring.
        index: u16,
    },
    /// A shared memory mapping was recorded.
    ShmemMapped {
        /// The mapping.
        map: ShmemMap,
    },
    /// A shared memory mapping was removed (its fd is closed).
    ShmemUnmapped {
        /// The mapping.
        map: ShmemMap,
    },
    /// BACKEND_IOTLB_MSG answered by the handler (`ok`: acked).
    Iotlb {
        /// The message.
        msg: IotlbMsg,
        /// Whether the handler resolved it.
        ok: bool,
    },
    /// A shared-object request answered by the handler.
    SharedObject {
        /// ADD, REMOVE or LOOKUP.
        request: BackendReq,
        /// The object.
        uuid: Uuid,
        /// Whether the handler did it.
        ok: bool,
    },
    /// A mapping request the tables refused (NACKed).
    MappingRefused {
        /// The request.
        request: BackendReq,
        /// Why.
        error: MappingError,
    },
    /// A ring index that names no ring (NACKed).
    BadIndex {
        /// The request.
        request: BackendReq,
        /// The index as sent.
        index: u32,
    },
    /// The session refused a request (gate or payload rule); it was NACKed
    /// already if it asked for a reply.
    Rejected {
        /// What and why.
        rejection: Rejection,
    },
}

impl FrontendChannel {
    /// The host-notifier and shared-memory records of this channel.
    pub fn mappings(&self) -> &Mappings<OwnedFd> {
        &self.mappings
    }

    /// The records, to set the ring count or shared memory sizes they are
    /// checked against ([`Mappings::set_queue_count`],
    /// [`Mappings::set_shmem_config`]) or to clear them.
    pub fn mappings_mut(&mut self) -> &mut Mappings<OwnedFd> {
        &mut self.mappings
    }

    fn ring_index(&self, index: u32) -> Option<u16> {
        let i = u16::try_from(index).ok()?;
        match self.queues {
            Some(q) if i >= q => None,
            _ => Some(i),
        }
    }

    /// Checks in-band ring indexes against `queues` rings from now on (and
    /// host notifiers, through the [`mappings`](Self::mappings)).
    pub fn set_queue_count(&mut self, queues: u16) {
        self.queues = Some(queues);
        self.mappings.set_queue_count(queues);
    }

    /// Waits at most `timeout` (`None`: forever) for the back-end's next
    /// request, acts on it, answers it, and says what happened; `Ok(None)`
    /// if nothing came in time.
    ///
    /// - CONFIG_CHANGE_MSG: [`ChannelHandler::config_changed`], then
    ///   [`ChannelNotice::ConfigChanged`].
    /// - VRING_HOST_NOTIFIER_MSG, SHMEM_MAP / UNMAP: recorded in
    ///   [`mappings`](Self::mappings); an overlapping map, an unmap of
    ///   something not mapped, a zero length or a bad ring index is NACKed
    ///   ([`ChannelNotice::MappingRefused`]).
    /// - IOTLB_MSG: [`ChannelHandler::iotlb_miss`] /
    ///   [`iotlb_access_fail`](ChannelHandler::iotlb_access_fail).
    /// - VRING_CALL / VRING_ERR: acked, delivered as
    ///   [`ChannelNotice::VringCall`] / [`ChannelNotice::VringErr`].
    /// - SHARED_OBJECT_ADD / REMOVE / LOOKUP: the handler.
    pub fn serve(
        &mut self,
        handler: &mut dyn ChannelHandler,
        timeout: Option<Duration>,
    ) -> Result<Option<ChannelNotice>, ChannelError> {
        let Some(msg) = self.recv(timeout)? else {
            return Ok(None);
        };
        let (request, answer) = match msg {
            BackendMessage::Rejected { rejection } => {
                return Ok(Some(ChannelNotice::Rejected { rejection }));
            }
            BackendMessage::SharedObjectLookup { uuid, answer } => {
                let r = handler.shared_object_lookup(uuid);
                let ok = r.is_ok();
                match r {
                    Ok(fd) => self.answer_lookup(answer, Ok(fd.as_fd()))?,
                    Err(e) => self.answer_lookup(answer, Err(e))?,
                }
                return Ok(Some(ChannelNotice::SharedObject {
                    request: BackendReq::SharedObjectLookup,
                    uuid,
                    ok,
                }));
            }
            BackendMessage::Request { request, answer } => (request, answer),
        };
        let code = request.code();
        let (result, notice) = match request {
            BackendRequest::ConfigChange => {
                (handler.config_changed(), ChannelNotice::ConfigChanged)
            }
            BackendRequest::VringCall { index } | BackendRequest::VringErr { index } => {
                match self.ring_index(index) {
                    Some(i) if code == BackendReq::VringCall => {
                        (Ok(()), ChannelNotice::VringCall { index: i })
                    }
                    Some(i) => (Ok(()), ChannelNotice::VringErr { index: i }),
                    None => (
                        Err(Refused::because("no such vring")),
                        ChannelNotice::BadIndex {
                            request: code,
                            index,
                        },
                    ),
                }
            }
            BackendRequest::VringHostNotifier {
                index,
                size,
                offset,
                fd,
            } => {
                let index = u16::from(index);
                let removing = fd.is_none();
                let area = HostNotifier { size, offset };
                match self.mappings.host_notifier(index, area, fd) {
                    Ok(_) if removing => (Ok(()), ChannelNotice::HostNotifierRemoved { index }),
                    Ok(_) => (Ok(()), ChannelNotice::HostNotifierSet { index, area }),
                    Err((error, _fd)) => refused(code, error),
                }
            }
            BackendRequest::ShmemMap { map, fd } => match self.mappings.shmem_map(map, fd) {
                Ok(()) => (Ok(()), ChannelNotice::ShmemMapped { map }),
                Err((error, _fd)) => refused(code, error),
            },
            BackendRequest::ShmemUnmap { map } => match self.mappings.shmem_unmap(&map) {
                Ok(_fd) => (Ok(()), ChannelNotice::ShmemUnmapped { map }),
                Err(error) => refused(code, error),
            },
            BackendRequest::IotlbMsg { msg } => {
                let r = match msg.kind {
                    IotlbType::Miss => handler.iotlb_miss(msg),
                    IotlbType::AccessFail => handler.iotlb_access_fail(msg),
                    _ => Err(Refused::because("IOTLB message type not sent by back-ends")),
                };
                let ok = r.is_ok();
                (r, ChannelNotice::Iotlb { msg, ok })
            }
            BackendRequest::SharedObjectAdd { uuid } => {
                let r = handler.shared_object_add(uuid);
                let ok = r.is_ok();
                (
                    r,
                    ChannelNotice::SharedObject {
                        request: code,
                        uuid,
                        ok,
                    },
                )
            }
            BackendRequest::SharedObjectRemove { uuid } => {
                let r = handler.shared_object_remove(uuid);
                let ok = r.is_ok();
                (
                    r,
                    ChannelNotice::SharedObject {
                        request: code,
                        uuid,
                        ok,
                    },
                )
            }
            // LOOKUP comes as its own message; a kind added later is refused.
            _ => (
                Err(Refused::because("not served")),
                ChannelNotice::BadIndex {
                    request: code,
                    index: 0,
                },
            ),
        };
        self.ack(answer, result)?;
        Ok(Some(notice))
    }
}

fn refused(request: BackendReq, error: MappingError) -> (Result<(), Refused>, ChannelNotice) {
    (
        Err(error.refused()),
        ChannelNotice::MappingRefused { request, error },
    )
}
