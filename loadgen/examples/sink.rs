//! A minimal single-threaded epoll server that logs every client in without checking its token
//! and answers pings: the cheapest possible peer, to measure the loadgen's own capacity (how
//! many connections and heartbeats per second it drives before it warns about saturation).
//!
//! ```sh
//! cargo run --release -p tether-loadgen --example sink -- 127.0.0.1:7801
//! tether-loadgen idle -n 15000 --server 127.0.0.1:7801 --interval 1s --duration 20s
//! ```
//! One sink holds at most its open-files limit of connections; start several on different ports
//! and pass them all to `--server` for more.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};

use bytes::{BufMut, BytesMut};
use tether_loadgen::epoll::{self, Epoll};
use tether_loadgen::net;
use tether_proto::{decode, encode, Frame, LoginOk, Pong, PushResult, PushStatus};

/// Epoll token of the listener.
const LISTENER: u64 = u64::MAX;

fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7801".into());
    let nofile = net::raise_nofile()?;
    let listener = TcpListener::bind(&addr)?;
    listener.set_nonblocking(true)?;
    println!(
        "sink listening on {} (open files: {nofile})",
        listener.local_addr()?
    );
    let ep = Epoll::new()?;
    ep.add(listener.as_raw_fd(), LISTENER, epoll::READ)?;
    // fd → bytes of an incomplete frame.
    let mut conns: HashMap<RawFd, BytesMut> = HashMap::new();
    let (mut raw, mut events) = (Vec::with_capacity(1024), Vec::new());
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut out = BytesMut::with_capacity(1024);
    loop {
        ep.wait(&mut raw, &mut events, -1)?;
        for ev in events.iter().copied() {
            if ev.token == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((s, _)) => {
                            s.set_nonblocking(true)?;
                            let fd = s.into_raw_fd();
                            ep.add(fd, fd as u64, epoll::READ)?;
                            conns.insert(fd, BytesMut::new());
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => {
                            eprintln!("accept: {e}");
                            break;
                        }
                    }
                }
                continue;
            }
            let fd = ev.token as RawFd;
            let Some(partial) = conns.get_mut(&fd) else {
                continue;
            };
            buf.clear();
            buf.extend_from_slice(partial);
            let mut closed = false;
            loop {
                buf.reserve(16 * 1024);
                let spare = buf.chunk_mut();
                // SAFETY: read() writes only into the spare capacity and reports how much.
                let dst =
                    unsafe { std::slice::from_raw_parts_mut(spare.as_mut_ptr(), spare.len()) };
                match net::read(fd, dst) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    // SAFETY: `n` bytes were just written.
                    Ok(n) => unsafe { buf.advance_mut(n) },
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
            out.clear();
            while let Ok(Some(frame)) = decode(&mut buf, tether_proto::DEFAULT_MAX_FRAME) {
                let reply = match frame {
                    Frame::Login(_) => Frame::LoginOk(LoginOk {
                        session_id: fd as u64,
                        server_epoch: 0,
                        min_lease_ms: 1,
                        max_lease_ms: 3_600_000,
                        lease_multiplier_pct: 150,
                        grace_ms: 1000,
                        prior_ms: 0,
                        max_frame: tether_proto::DEFAULT_MAX_FRAME as u32,
                    }),
                    Frame::Ping(p) => Frame::Pong(Pong {
                        deadline_ms: p.lease_ms,
                    }),
                    Frame::BackendPush(p) => Frame::PushResult(PushResult {
                        id: p.id,
                        status: PushStatus::Offline,
                    }),
                    _ => continue,
                };
                encode(&reply, &mut out)?;
            }
            if !out.is_empty() && net::write(fd, &out).is_err() {
                closed = true;
            }
            if closed {
                conns.remove(&fd);
                net::close(fd);
            } else {
                partial.clear();
                partial.extend_from_slice(&buf);
            }
        }
    }
}
