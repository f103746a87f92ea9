//! The tokio example's approach (`vhost-io-mio/examples/tokio_frontend.rs`: `AsyncFd` over
//! the socket, driving the sans-IO `vhost_proto::frontend::Connection` directly) against
//! qemu-storage-daemon's vhost-user-blk export: handshake with REPLY_ACK, a split ring in
//! memfd guest memory, the call eventfd as an `AsyncFd` too; virtio-blk writes, a flush
//! and a read back of a few sectors; GET_VRING_BASE; the image on disk checked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use tests::blk::{self, SECTOR};
use tests::{Peer, TempDir};
use tokio::io::unix::AsyncFd;
use vhost_backend::os::socket::{recv_with_fds, send_with_fds};
use vhost_io_std::frontend::{DriverRing, GuestRam};
use vhost_proto::frontend::{Connection, Event, Reply, RequestId};
use vhost_proto::session::ApiError;
use vhost_proto::wire::{ConfigFlags, ProtocolFeatures, RegionFd, VirtioFeatures, VringBase};

type Error = Box<dyn std::error::Error>;

fn async_fd<T: AsRawFd>(owner: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: `T` is a `UnixStream` or an `OwnedFd`: it owns its fd, which stays open and
    // is the same fd until the `AsyncFd` drops it.
    Ok(unsafe { AsyncFd::register(owner) }?)
}

/// The socket and the protocol core (as in the example).
struct Front {
    sock: AsyncFd<UnixStream>,
    conn: Connection<OwnedFd>,
}

impl Front {
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

/// Waits for `n` used buffers on `ring`, sleeping on the call eventfd between them.
async fn collect(
    ring: &mut DriverRing,
    call: &AsyncFd<OwnedFd>,
    n: usize,
) -> Result<Vec<(u16, u32)>, Error> {
    let mut used = Vec::new();
    while used.len() < n {
        if let Some(u) = ring.pop_used()? {
            used.push(u);
            continue;
        }
        if ring.enable_interrupts() {
            continue;
        }
        let mut guard = tokio::time::timeout(Duration::from_secs(10), call.readable()).await??;
        let _ = guard.try_io(|fd| Ok(rustix::io::read(fd.get_ref(), &mut [0u8; 8])?));
    }
    Ok(used)
}

async fn drive(sock: &std::path::Path) -> Result<Vec<u8>, Error> {
    let s = UnixStream::connect(sock)?;
    s.set_nonblocking(true)?;
    let mut f = Front {
        sock: async_fd(s)?,
        conn: Connection::new(),
    };
    let Reply::Features(offer) = f.call(|c, now| c.get_features(now)).await? else {
        return Err("no features".into());
    };
    let flush = VirtioFeatures::from_bits_retain(blk::F_FLUSH);
    let features = VirtioFeatures::VERSION_1 | VirtioFeatures::PROTOCOL_FEATURES | flush;
    if !offer.contains(features) {
        return Err(format!("qsd offers {offer:?}").into());
    }
    let Reply::ProtocolFeatures(p) = f.call(|c, now| c.get_protocol_features(now)).await? else {
        return Err("no protocol features".into());
    };
    let p = p & (ProtocolFeatures::REPLY_ACK | ProtocolFeatures::CONFIG);
    f.call(|c, now| c.set_protocol_features(now, p)).await?;
    f.call(|c, now| c.set_owner(now)).await?;
    let Reply::Config { data, .. } = f
        .call(|c, now| c.get_config(now, 0, 60, ConfigFlags::Frontend))
        .await?
    else {
        return Err("no config".into());
    };
    if blk::capacity(&data) != Some((64 << 20) / SECTOR) {
        return Err(format!("capacity {:?}", blk::capacity(&data)).into());
    }
    f.call(|c, now| c.set_features(now, features)).await?;

    let ram = GuestRam::new(0, 4 << 20)?;
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
    let mut ring = DriverRing::new(&ram, 0, 64, features)?;
    let addr = ram
        .vring_addr(0, ring.config())
        .ok_or("ring outside memory")?;
    let (size, base) = (ring.size(), ring.base());
    f.call(|c, now| c.set_vring_num(now, 0, size)).await?;
    f.call(|c, now| c.set_vring_base(now, 0, base)).await?;
    f.call(|c, now| c.set_vring_addr(now, 0, addr)).await?;
    let call = ring.call_fd().try_clone_to_owned()?;
    f.call(|c, now| c.set_vring_call(now, 0, Some(call)))
        .await?;
    let kick = ring.kick_fd().try_clone_to_owned()?;
    f.call(|c, now| c.set_vring_kick(now, 0, Some(kick)))
        .await?;
    f.call(|c, now| c.set_vring_enable(now, 0, true)).await?;
    let call = async_fd(ring.call_fd().try_clone_to_owned()?)?;
    ring.enable_interrupts();

    // Write 8 sectors from sector 100 (two requests), flush, read them back.
    let (hdr, status, data) = (ram.alloc(64, 16)?, ram.alloc(8, 8)?, ram.alloc(8192, 512)?);
    let written = blk::pattern(3, 100, 4096);
    ram.write(data, &written)?;
    for (k, h) in [(0u64, hdr), (1, hdr + 16)] {
        ram.write(h, &blk::header(blk::T_OUT, 100 + 4 * k))?;
        ram.write(status + k, &[0xff])?;
        ring.add(&[(h, 16), (data + 2048 * k, 2048)], &[(status + k, 1)])?;
    }
    ram.write(hdr + 32, &blk::header(blk::T_FLUSH, 0))?;
    ram.write(status + 2, &[0xff])?;
    ring.kick()?;
    collect(&mut ring, &call, 2).await?;
    ring.add(&[(hdr + 32, 16)], &[(status + 2, 1)])?;
    ring.kick()?;
    collect(&mut ring, &call, 1).await?;
    ram.write(hdr + 48, &blk::header(blk::T_IN, 100))?;
    ram.write(status + 3, &[0xff])?;
    ring.add(&[(hdr + 48, 16)], &[(data + 4096, 4096), (status + 3, 1)])?;
    ring.kick()?;
    let used = collect(&mut ring, &call, 1).await?;
    if used[0].1 != 4097 {
        return Err(format!("read used length {}", used[0].1).into());
    }
    let mut st = [0u8; 4];
    ram.read(status, &mut st)?;
    if st != [blk::S_OK; 4] {
        return Err(format!("statuses {st:?}").into());
    }
    let mut back = vec![0u8; 4096];
    ram.read(data + 4096, &mut back)?;
    if back != written {
        return Err("read back differs".into());
    }
    let Reply::VringBase { base, .. } = f.call(|c, now| c.get_vring_base(now, 0)).await? else {
        return Err("no ring base".into());
    };
    if base != VringBase::split(4) {
        return Err(format!("ring stopped at {base:?}").into());
    }
    Ok(written)
}

#[test]
fn tokio_frontend_against_qsd() {
    let qsd = tests::require_peer!("qemu-storage-daemon");
    let qemu_img = tests::require_peer!("qemu-img");
    let started = Instant::now();
    let dir = TempDir::new("tokio_qsd").unwrap();
    let image = dir.join("disk.img");
    let sock = dir.join("vub.sock");
    let out = Command::new(&qemu_img)
        .args(["create", "-f", "raw"])
        .arg(&image)
        .arg("64M")
        .output()
        .unwrap();
    assert!(out.status.success(), "qemu-img: {out:?}");
    let mut cmd = Command::new(&qsd);
    cmd.arg("--blockdev")
        .arg(format!(
            "driver=file,node-name=file0,filename={}",
            image.display()
        ))
        .args(["--blockdev", "driver=raw,node-name=disk0,file=file0"])
        .arg("--export")
        .arg(format!(
            "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path={},writable=on,num-queues=1",
            sock.display()
        ));
    let mut peer = Peer::spawn("qemu-storage-daemon", cmd).unwrap();
    peer.wait_for_socket(&sock, tests::PEER_START_TIMEOUT)
        .unwrap();
    let pid = peer.pid();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let written = rt.block_on(drive(&sock)).unwrap();
    let (status, clean) = peer.interrupt(tests::PEER_STOP_TIMEOUT).unwrap();
    assert!(
        clean && status.success(),
        "qsd exit {status}:\n{}",
        peer.output()
    );
    let disk = std::fs::read(&image).unwrap();
    assert_eq!(&disk[100 * 512..108 * 512], &written[..]);
    drop(peer);
    tests::assert_clean(&[pid], dir.path());
    eprintln!("tokio_frontend_against_qsd: {:?}", started.elapsed());
}
