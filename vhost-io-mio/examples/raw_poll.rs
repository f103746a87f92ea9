//! The sans-IO promise: a vhost-user back-end driven from a hand-written `poll(2)` loop,
//! with `vhost-proto` alone — no binding crate on the back-end side.
//!
//! The whole contract is three calls: `handle_input` (bytes and fds in), `poll_transmit`
//! (bytes and fds to write) and `poll_event` (what the device must do, with a typed answer
//! token when the front-end waits for an answer). A demo front-end (the std binding's
//! client) talks to it from another thread.
//!
//! Run: `cargo run -p vhost-io-mio --example raw_poll` (also run by `cargo test`).

use std::error::Error;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use rustix::event::{PollFd, PollFlags, poll};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, recvmsg, sendmsg,
};
use vhost_proto::backend::{Connection, DeviceDescription, Event, Refused, Transmit};
use vhost_proto::wire::{HEADER_SIZE, ProtocolFeatures, VirtioFeatures};

/// A device with a 4-byte config space and no queues worth serving.
fn description() -> DeviceDescription {
    let protocol = ProtocolFeatures::REPLY_ACK | ProtocolFeatures::CONFIG;
    DeviceDescription::new(VirtioFeatures::VERSION_1, protocol, 1).with_config_size(4)
}

fn serve(sock: &UnixStream) -> Result<(), Box<dyn Error>> {
    let mut conn = Connection::<OwnedFd>::new(description());
    let mut buf = vec![0u8; 8192];
    loop {
        // 1. Do what the session asks: write its transmits, act on its events.
        while let Some(t) = conn.poll_transmit() {
            send(sock, &t)?;
        }
        if let Some(event) = conn.poll_event() {
            device(&mut conn, event)?;
            continue;
        }
        // 2. Wait for input (a real loop polls its other fds and timers here too).
        poll(&mut [PollFd::new(sock, PollFlags::IN)], None)?;
        // 3. Feed it: one message per turn, so each read's fds belong to its header.
        let Some((len, fds)) = recv_message(sock, &mut buf)? else {
            return Ok(()); // the front-end hung up
        };
        conn.handle_input(&buf[..len], fds)?;
    }
}

/// The device: answer what needs an answer, refuse the rest (the session NACKs for us).
fn device(conn: &mut Connection<OwnedFd>, event: Event<OwnedFd>) -> Result<(), Box<dyn Error>> {
    println!("back-end: {event:?}");
    match event {
        Event::ConfigRead {
            offset,
            size,
            answer,
            ..
        } => {
            let config = *b"demo";
            let range = (offset as usize)..(offset as usize + size as usize);
            match config.get(range) {
                Some(bytes) => conn.answer_config(answer, Ok(bytes))?,
                None => conn.answer_config(answer, Err(Refused::because("out of range")))?,
            }
        }
        Event::Status { answer, .. } => conn.ack(answer, Ok(()))?,
        Event::ConnectionLost { error } => return Err(error.into()),
        other => conn.refuse(other)?,
    }
    Ok(())
}

/// One `sendmsg`: the bytes, with the fds on the first byte.
fn send(sock: &UnixStream, t: &Transmit<OwnedFd>) -> Result<(), Box<dyn Error>> {
    let fds: Vec<BorrowedFd<'_>> = t.fds.iter().map(AsFd::as_fd).collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    control.push(SendAncillaryMessage::ScmRights(&fds));
    let mut sent = sendmsg(
        sock,
        &[IoSlice::new(&t.bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    while sent < t.bytes.len() {
        let rest = [IoSlice::new(&t.bytes[sent..])];
        sent += sendmsg(sock, &rest, &mut Default::default(), SendFlags::NOSIGNAL)?;
    }
    Ok(())
}

/// A message's length in the buffer and its fds.
type Message = (usize, Vec<OwnedFd>);

/// Reads one whole message (header, then `size` bytes of payload) into `buf`, with the
/// fds that came with its header; `None` at end of stream.
fn recv_message(sock: &UnixStream, buf: &mut [u8]) -> Result<Option<Message>, Box<dyn Error>> {
    let mut fds = Vec::new();
    if !recv_exact(sock, &mut buf[..HEADER_SIZE], &mut fds)? {
        return Ok(None);
    }
    let size = u32::from_ne_bytes(buf[8..12].try_into()?) as usize;
    // The session checks `size` against the request's rule; we only bound our buffer.
    let end = HEADER_SIZE + size.min(buf.len() - HEADER_SIZE);
    if !recv_exact(sock, &mut buf[HEADER_SIZE..end], &mut fds)? {
        return Ok(None);
    }
    Ok(Some((end, fds)))
}

fn recv_exact(
    sock: &UnixStream,
    mut buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> std::io::Result<bool> {
    while !buf.is_empty() {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(32))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let msg = recvmsg(
            sock,
            &mut [IoSliceMut::new(buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )?;
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = m {
                fds.extend(received);
            }
        }
        if msg.bytes == 0 {
            return Ok(false);
        }
        buf = &mut buf[msg.bytes..];
    }
    Ok(true)
}

fn main() -> Result<(), Box<dyn Error>> {
    let (ours, theirs) = UnixStream::pair()?;
    let front = std::thread::spawn(move || -> Result<(), String> {
        use vhost_frontend::{Frontend, GuestRam};
        let mut f = Frontend::from_stream(theirs).map_err(|e| e.to_string())?;
        let features = f.get_features().map_err(|e| e.to_string())?;
        let protocol = f.get_protocol_features().map_err(|e| e.to_string())?;
        f.set_protocol_features(protocol)
            .map_err(|e| e.to_string())?;
        f.set_owner().map_err(|e| e.to_string())?;
        f.set_features(features).map_err(|e| e.to_string())?;
        let config = f.get_config(0, 4).map_err(|e| e.to_string())?;
        // An invalid request: the session NACKs it alone, and goes on.
        let bad_size = f.set_vring_num(0, 1000).is_err();
        // A memory table: this device maps no memory, it refuses (a NACK too).
        let ram = GuestRam::new(0, 1 << 20).map_err(|e| e.to_string())?;
        let no_memory = f.set_mem_table(&[(ram.region(), ram.fd())]).is_err();
        let shown = String::from_utf8_lossy(&config);
        println!("front-end: config {shown:?}, refused: {bad_size} {no_memory}");
        if config != b"demo" || !bad_size || !no_memory {
            return Err("unexpected answers".into());
        }
        Ok(())
    });
    serve(&ours)?;
    front.join().map_err(|_| "front-end panicked")??;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn example_runs() {
        super::main().unwrap();
    }
}
