//! The physical floor of a heartbeat: an edge-triggered epoll server that does nothing but
//! frame tether's bytes and answer them with canned bytes. No tokens, no sessions, no timers,
//! no routing: what is left is what the kernel costs (accept, epoll, read, write on loopback)
//! plus one length-prefix scan per frame. Compared with a real server on the same table, it
//! shows how far that server is from what the machine alone costs.
//!
//! It speaks just enough of tether's framing for `tether-loadgen --protocol tether` to get
//! through: a Login frame (any token) is answered with one canned LoginOk, every Ping with one
//! canned Pong, and every other frame is skipped unread (so pushes go nowhere: a floor, not a
//! server). Per connection it keeps only the bytes of an incomplete frame, in a vector indexed
//! by file descriptor (an empty `Vec`, no allocation, nearly always).
//!
//! Threads: one per CPU by default (as tether runs one shard per CPU), each with its own epoll
//! and its own `SO_REUSEPORT` listener on the same address, so the kernel spreads connections
//! over them; `--threads 1` gives a single loop.
//!
//! ```sh
//! cargo run --release -p tether-loadgen --example echo_floor -- 127.0.0.1:7802 [--threads N]
//! tether-loadgen idle -n 15000 --server 127.0.0.1:7802 --server-pid $(pgrep -f echo_floor)
//! ```

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};

use bytes::BytesMut;
use socket2::{Domain, Socket, Type};
use tether_loadgen::epoll::{self, Epoll};
use tether_loadgen::net;
use tether_proto::codec::peek_header;
use tether_proto::{encode, kind, Frame, LoginOk, Pong, DEFAULT_MAX_FRAME};

/// Epoll token of the listener.
const LISTENER: u64 = u64::MAX;

/// The two answers, encoded once.
struct Canned {
    login_ok: Vec<u8>,
    pong: Vec<u8>,
}

fn canned() -> anyhow::Result<Canned> {
    let mut login_ok = BytesMut::new();
    encode(
        &Frame::LoginOk(LoginOk {
            session_id: 1,
            server_epoch: 0,
            min_lease_ms: 1,
            max_lease_ms: 3_600_000,
            lease_multiplier_pct: 150,
            grace_ms: 1000,
            prior_ms: 0,
            max_frame: 65_536,
        }),
        &mut login_ok,
    )?;
    let mut pong = BytesMut::new();
    encode(
        &Frame::Pong(Pong {
            deadline_ms: 3_600_000,
        }),
        &mut pong,
    )?;
    Ok(Canned {
        login_ok: login_ok.to_vec(),
        pong: pong.to_vec(),
    })
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut addr: SocketAddr = "127.0.0.1:7802".parse()?;
    let mut threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--threads" => {
                threads = args
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--threads needs a number"))?
                    .parse()?;
                anyhow::ensure!(threads > 0, "--threads must be positive");
            }
            other => addr = other.parse()?,
        }
    }
    let nofile = net::raise_nofile()?;
    let canned = std::sync::Arc::new(canned()?);
    let mut handles = Vec::new();
    for _ in 0..threads {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(4096)?;
        let canned = canned.clone();
        handles.push(std::thread::spawn(move || serve(socket, &canned)));
    }
    println!("echo_floor listening on {addr} ({threads} thread(s), open files: {nofile})");
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("a thread panicked"))??;
    }
    Ok(())
}

/// One thread's loop: accept, then for each readable connection read until EAGAIN (the
/// registration is edge-triggered) and answer every whole Login and Ping frame.
fn serve(listener: Socket, canned: &Canned) -> anyhow::Result<()> {
    let ep = Epoll::new()?;
    ep.add(listener.as_raw_fd(), LISTENER, epoll::READ)?;
    // Bytes of an incomplete frame, by file descriptor.
    let mut partial: Vec<Vec<u8>> = Vec::new();
    let (mut raw, mut events) = (Vec::with_capacity(1024), Vec::new());
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::with_capacity(4096);
    loop {
        ep.wait(&mut raw, &mut events, -1)?;
        for ev in events.iter().copied() {
            if ev.token == LISTENER {
                accept_all(&listener, &ep, &mut partial);
                continue;
            }
            let fd = ev.token as RawFd;
            let mut pending = std::mem::take(&mut partial[fd as usize]);
            let mut closed = false;
            out.clear();
            loop {
                match net::read(fd, &mut buf) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => {
                        let data: &[u8] = if pending.is_empty() {
                            &buf[..n]
                        } else {
                            pending.extend_from_slice(&buf[..n]);
                            &pending
                        };
                        let used = match answer(data, canned, &mut out) {
                            Some(used) => used,
                            None => {
                                closed = true;
                                break;
                            }
                        };
                        let rest = data[used..].to_vec();
                        pending = rest;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
            if !out.is_empty() && net::write(fd, &out).map_or(true, |n| n < out.len()) {
                // A floor keeps no output queue: a peer that does not read is dropped.
                closed = true;
            }
            if closed {
                net::close(fd);
            } else {
                partial[fd as usize] = pending;
            }
        }
    }
}

fn accept_all(listener: &Socket, ep: &Epoll, partial: &mut Vec<Vec<u8>>) {
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                let prepared = s.set_nonblocking(true).and_then(|_| s.set_nodelay(true));
                if prepared.is_err() {
                    continue;
                }
                let fd = s.into_raw_fd();
                if fd as usize >= partial.len() {
                    partial.resize_with(fd as usize + 1, Vec::new);
                }
                if ep.add(fd, fd as u64, epoll::READ).is_err() {
                    net::close(fd);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("accept: {e}");
                return;
            }
        }
    }
}

/// Appends the answer of every whole frame at the front of `data` to `out`; returns how many
/// bytes those frames took, or `None` when the bytes are not tether frames.
fn answer(data: &[u8], canned: &Canned, out: &mut Vec<u8>) -> Option<usize> {
    let mut at = 0;
    while let Some(header) = peek_header(&data[at..], DEFAULT_MAX_FRAME).ok()? {
        if data.len() - at < header.frame_len() {
            break;
        }
        match header.kind {
            kind::LOGIN => out.extend_from_slice(&canned.login_ok),
            kind::PING => out.extend_from_slice(&canned.pong),
            _ => {}
        }
        at += header.frame_len();
    }
    Some(at)
}
