//! Embedding vhost-user back-ends in your own mio `Poll`, next to a source of your own.
//!
//! The loop below owns the `Poll` and the tokens: token 0 is a pipe of its own (here: a
//! "quit" message from the demo thread), token 1 the vhost-user listener, tokens from 2 up
//! the sessions. A front-end thread connects, negotiates, echoes a buffer through a ring
//! and asks the loop to quit through the pipe.
//!
//! Run: `cargo run -p vhost-io-mio --example embed` (also run by `cargo test`).

use std::error::Error;
use std::io::{Read, Write};
use std::sync::Arc;

use mio::unix::pipe;
use mio::{Events, Interest, Poll, Token};
use vhost_backend::echo::Echo;
use vhost_frontend::{DriverRing, Frontend, GuestRam};
use vhost_io_mio::{Listener, MAX_TOKEN_SPAN, Session, Status};
use vhost_proto::wire::{ProtocolFeatures, VirtioFeatures};
use vring::memory::GuestSlice;

const QUIT: Token = Token(0);
const LISTENER: Token = Token(1);
const FIRST_SESSION: usize = 2;

fn main() -> Result<(), Box<dyn Error>> {
    let dir = std::env::temp_dir().join(format!("vhost-mio-embed-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("echo.sock");

    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(128);
    // A source of our own, next to the back-end's.
    let (mut quit_tx, mut quit_rx) = pipe::new()?;
    poll.registry()
        .register(&mut quit_rx, QUIT, Interest::READABLE)?;
    let mut listener = Listener::bind(&path)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;

    let device = Arc::new(Echo::new(1));
    let mut sessions: Vec<Option<Session<Echo>>> = Vec::new();

    let front = {
        let path = path.clone();
        std::thread::spawn(move || -> Result<(), String> {
            let r = drive_a_frontend(&path).map_err(|e| e.to_string());
            quit_tx.write_all(b"q").map_err(|e| e.to_string())?;
            r
        })
    };

    'run: loop {
        poll.poll(&mut events, None)?;
        for event in &events {
            match event.token() {
                QUIT => {
                    let mut b = [0u8; 8];
                    let _ = quit_rx.read(&mut b);
                    break 'run;
                }
                // Edge-triggered: accept until there is nothing left.
                LISTENER => {
                    while let Some(mut s) = listener.accept_session(Arc::clone(&device))? {
                        let slot = sessions.iter().position(Option::is_none);
                        let slot = slot.unwrap_or_else(|| {
                            sessions.push(None);
                            sessions.len() - 1
                        });
                        // Each session uses the tokens after its own for its rings.
                        let token = Token(FIRST_SESSION + slot * MAX_TOKEN_SPAN);
                        poll.registry()
                            .register(&mut s, token, Interest::READABLE)?;
                        sessions[slot] = Some(s);
                        println!("session {slot}: connected");
                    }
                }
                token @ Token(t) => {
                    let slot = (t - FIRST_SESSION) / MAX_TOKEN_SPAN;
                    let Some(Some(session)) = sessions.get_mut(slot) else {
                        continue;
                    };
                    match session.ready(poll.registry(), token) {
                        Ok(Status::Open) => {}
                        Ok(Status::Closed) => {
                            println!("session {slot}: front-end hung up");
                            sessions[slot] = None;
                        }
                        Err(e) => {
                            println!("session {slot}: closed: {e}");
                            sessions[slot] = None;
                        }
                    }
                }
            }
        }
    }
    for s in sessions.into_iter().flatten() {
        s.close(poll.registry());
    }
    front.join().map_err(|_| "front-end thread panicked")??;
    println!("echoed {} request(s)", device.requests());
    drop(listener);
    std::fs::remove_dir(&dir)?;
    Ok(())
}

/// A front-end without a guest: negotiate, start ring 0, echo one buffer.
fn drive_a_frontend(path: &std::path::Path) -> Result<(), Box<dyn Error>> {
    let mut front = Frontend::connect(path)?;
    let ram = GuestRam::new(0, 1 << 20)?;
    let offered = front.get_features()?;
    let protocol = front.get_protocol_features()?;
    front.set_protocol_features(protocol & ProtocolFeatures::REPLY_ACK)?;
    front.set_owner()?;
    front
        .set_features(offered & (VirtioFeatures::VERSION_1 | VirtioFeatures::PROTOCOL_FEATURES))?;
    front.set_mem_table(&[(ram.region(), ram.fd())])?;
    let (mut ring, _) = DriverRing::split(&ram, 0, 0, 64, vring::RingFeatures::default())?;
    front.start_ring(&ring, &ram)?;

    let (out, inn) = (0x8_0000, 0x9_0000);
    GuestSlice::new(ram.memory(), out, 5)?.write_at(0, b"hello")?;
    let id = ring.add(&[(out, 5)], &[(inn, 5)])?;
    ring.kick()?;
    let used = ring.collect(1, std::time::Duration::from_secs(5))?;
    let mut back = [0u8; 5];
    GuestSlice::new(ram.memory(), inn, 5)?.read_at(0, &mut back)?;
    if used != vec![(id, 5)] || &back != b"hello" {
        return Err(format!("bad echo: {used:?} {back:?}").into());
    }
    println!("front-end: echoed {:?}", std::str::from_utf8(&back)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn example_runs() {
        super::main().unwrap();
    }
}
