//! A vhost-user front-end on tokio: `AsyncFd` over the socket, driving the sans-IO
//! `vhost_proto::frontend::Connection` directly: handshake, one echo through a split ring
//! and GET_VRING_BASE against an in-process echo back-end on a socketpair; exits 0. The
//! core gates requests, validates replies and keeps the deadlines; this file moves bytes.
//!
//! `cargo run -p vhost-io-mio --example tokio_frontend` (`cargo test` runs it too).

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use vhost_backend::echo::Echo;
use vhost_backend::os::socket::{recv_with_fds, send_with_fds};
use vhost_frontend::{DriverRing, GuestRam};
use vhost_proto::frontend::{Connection, Event, Reply, RequestId};
use vhost_proto::session::ApiError;
use vhost_proto::wire::{ProtocolFeatures, RegionFd, VirtioFeatures, VringBase};

type Error = Box<dyn std::error::Error>;

/// An `AsyncFd` over a value that owns its fd.
fn async_fd<T: AsRawFd>(owner: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: `T` is a `UnixStream` or an `OwnedFd`: it owns its fd, which stays open and
    // is the same fd until the `AsyncFd` drops it.
    Ok(unsafe { AsyncFd::register(owner) }?)
}

/// The socket and the protocol core.
struct Front {
    sock: AsyncFd<UnixStream>,
    conn: Connection<OwnedFd>,
}

impl Front {
    /// Writes every queued message as the socket accepts it (fds with the first byte).
    async fn flush(&mut self) -> Result<(), Error> {
        while let Some(t) = self.conn.poll_transmit() {
            let fds: Vec<_> = t.fds.iter().map(AsFd::as_fd).collect();
            let mut sent = 0;
            while sent < t.bytes.len() {
                let mut guard = self.sock.writable().await?;
                let (rest, fds) = (&t.bytes[sent..], if sent == 0 { &fds[..] } else { &[] });
                if let Ok(n) = guard.try_io(|s| send_with_fds(s.get_ref(), rest, fds)) {
                    sent += n?;
                }
            }
        }
        Ok(())
    }

    /// Queues a request through one of the core's typed helpers and waits for its
    /// completion: the typed reply (`Reply::Ack` for an acked request, or one that has
    /// nothing to wait for). The wait ends at the core's reply deadline.
    async fn call(
        &mut self,
        request: impl FnOnce(&mut Connection<OwnedFd>, Instant) -> Result<RequestId, ApiError>,
    ) -> Result<Reply<OwnedFd>, Error> {
        let id = request(&mut self.conn, Instant::now())?;
        self.flush().await?;
        loop {
            while let Some(event) = self.conn.poll_event() {
                if let Event::ConnectionLost { error } = event {
                    return Err(error.into());
                }
                if event.id() == Some(id) {
                    return match event.into_reply() {
                        Ok((_, reply)) => Ok(reply),
                        Err(other) => Err(format!("request failed: {other:?}").into()),
                    };
                }
            }
            if self.conn.is_idle() {
                return Ok(Reply::Ack);
            }
            let readable = self.sock.readable();
            let mut guard = match self.conn.poll_timeout() {
                None => readable.await?,
                Some(due) => match tokio::time::timeout_at(due.into(), readable).await {
                    Ok(guard) => guard?,
                    Err(_) => {
                        // Overdue: the core reports ReplyTimeout, then ConnectionLost.
                        self.conn.handle_timeout(Instant::now());
                        continue;
                    }
                },
            };
            let (mut buf, mut fds) = ([0u8; 4096], Vec::new());
            let room = self.conn.input_room().min(buf.len());
            match guard.try_io(|s| recv_with_fds(s.get_ref(), &mut buf[..room], &mut fds)) {
                Ok(Ok(0)) => return Err("the back-end hung up".into()),
                Ok(n) => self.conn.handle_input(&buf[..n?], fds)?,
                Err(_would_block) => {}
            }
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    // The back-end: the mio runner serving an echo device, in its own thread.
    let (ours, theirs) = UnixStream::pair()?;
    let backend = vhost_io_mio::Server::new(Echo::new(1))?.spawn()?;
    backend.handle().add(theirs)?;
    ours.set_nonblocking(true)?;
    let mut f = Front {
        sock: async_fd(ours)?,
        conn: Connection::new(),
    };

    // Negotiation.
    let Reply::Features(offer) = f.call(|c, now| c.get_features(now)).await? else {
        return Err("no features".into());
    };
    let features = VirtioFeatures::VERSION_1 | VirtioFeatures::PROTOCOL_FEATURES;
    if !offer.contains(features) {
        return Err(format!("the back-end offers {offer:?}").into());
    }
    let Reply::ProtocolFeatures(p) = f.call(|c, now| c.get_protocol_features(now)).await? else {
        return Err("no protocol features".into());
    };
    let p = p & ProtocolFeatures::REPLY_ACK; // every request is acked from here on
    f.call(|c, now| c.set_protocol_features(now, p)).await?;
    f.call(|c, now| c.set_owner(now)).await?;
    f.call(|c, now| c.set_features(now, features)).await?;

    // Guest memory and one split ring in it.
    let ram = GuestRam::new(0, 1 << 20)?;
    let regions = ram
        .mem_table()
        .into_iter()
        .map(|(region, fd)| {
            Ok(RegionFd {
                region,
                fd: fd.try_clone_to_owned()?,
            })
        })
        .collect::<io::Result<Vec<_>>>()?;
    f.call(|c, now| c.set_mem_table(now, regions)).await?;
    let mut ring = DriverRing::new(&ram, 0, 64, VirtioFeatures::VERSION_1)?;
    let addr = ram
        .vring_addr(0, ring.config())
        .ok_or("ring outside memory")?;
    let (size, base) = (ring.size(), ring.base());
    f.call(|c, now| c.set_vring_num(now, 0, size)).await?;
    f.call(|c, now| c.set_vring_base(now, 0, base)).await?;
    f.call(|c, now| c.set_vring_addr(now, 0, addr)).await?;
    // The call fd before the kick (QEMU sends it at device init), then the start.
    let call = ring.call_fd().try_clone_to_owned()?;
    f.call(|c, now| c.set_vring_call(now, 0, Some(call)))
        .await?;
    let kick = ring.kick_fd().try_clone_to_owned()?;
    f.call(|c, now| c.set_vring_kick(now, 0, Some(kick)))
        .await?;
    f.call(|c, now| c.set_vring_enable(now, 0, true)).await?;

    // One echo: the call eventfd is an AsyncFd too.
    let call = async_fd(ring.call_fd().try_clone_to_owned()?)?;
    let (out, inn) = (ram.alloc(16, 8)?, ram.alloc(16, 8)?);
    ram.write(out, b"hello from tokio")?;
    ring.enable_interrupts();
    ring.add(&[(out, 16)], &[(inn, 16)])?;
    ring.kick()?;
    let (_, len) = loop {
        if let Some(used) = ring.pop_used()? {
            break used;
        }
        if ring.enable_interrupts() {
            continue; // completed while we re-armed
        }
        let mut guard = tokio::time::timeout(Duration::from_secs(5), call.readable()).await??;
        let _ = guard.try_io(|fd| Ok(rustix::io::read(fd.get_ref(), &mut [0u8; 8])?));
    };
    let mut back = [0u8; 16];
    ram.read(inn, &mut back)?;
    if len != 16 || &back != b"hello from tokio" {
        return Err(format!("echo came back as {len} bytes: {back:?}").into());
    }

    // Stop the ring: its position is the one buffer.
    let Reply::VringBase { base, .. } = f.call(|c, now| c.get_vring_base(now, 0)).await? else {
        return Err("no ring base".into());
    };
    if base != VringBase::split(1) {
        return Err(format!("ring stopped at {base:?}").into());
    }
    drop(f); // the back-end sees the hang-up and ends
    backend.stop()?;
    println!("tokio front-end: handshake, echo and GET_VRING_BASE done");
    Ok(())
}

#[test]
fn example_runs() {
    main().unwrap();
}
