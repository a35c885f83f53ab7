//! A user-space TCP relay that behaves like a NAT with an idle timeout.
//!
//! Every accepted connection gets its own upstream connection, and bytes are copied both ways.
//! Once a flow has carried no byte in either direction for longer than the idle timeout, the
//! relay forgets it the way a NAT forgets a mapping: from then on nothing is forwarded in either
//! direction, and nothing is reset either. Both sockets stay open and whatever arrives is read
//! and discarded, so neither end learns anything until its own timers say so.
//!
//! One thread polls everything. Expiry is decided before any newly readable byte is
//! forwarded, with the time taken after `poll` returns: a byte that arrives after the timeout is
//! never forwarded, however late the thread runs (a late thread can only make the relay
//! stricter, by at most its lateness).

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;

/// Longest single wait, so the relay notices it should stop.
const MAX_WAIT: Duration = Duration::from_millis(100);

/// What the relay has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Flows accepted.
    pub flows: u64,
    /// Flows forgotten after being idle too long.
    pub blackholed: u64,
    /// Bytes forwarded (both directions).
    pub forwarded: u64,
    /// Bytes that arrived on a forgotten flow and were dropped.
    pub dropped: u64,
}

/// A running relay; stopped (and every socket closed) when dropped.
#[derive(Debug)]
pub struct NatRelay {
    /// Where clients connect.
    addr: SocketAddr,
    /// Tells the relay thread to stop.
    stop: Arc<AtomicBool>,
    /// Counters shared with the relay thread.
    stats: Arc<Mutex<RelayStats>>,
    /// The relay thread.
    thread: Option<JoinHandle<()>>,
}

impl NatRelay {
    /// Listens on 127.0.0.1 (a port the kernel picks) and relays to `upstream`, forgetting flows
    /// idle for longer than `idle_timeout`.
    pub fn start(upstream: SocketAddr, idle_timeout: Duration) -> anyhow::Result<NatRelay> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(RelayStats::default()));
        let mut relay = Relay {
            listener,
            upstream,
            idle_timeout,
            flows: Vec::new(),
            stop: stop.clone(),
            stats: stats.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("nat-relay".into())
            .spawn(move || relay.run())
            .context("starting the relay thread")?;
        Ok(NatRelay {
            addr,
            stop,
            stats,
            thread: Some(thread),
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The counters so far.
    pub fn stats(&self) -> RelayStats {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for NatRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One side of a flow.
#[derive(Debug)]
struct Side {
    /// The socket.
    stream: TcpStream,
    /// Whether this side may still send (no EOF or error read from it yet).
    readable: bool,
    /// Bytes read from the other side, waiting for this socket to accept them.
    pending: Vec<u8>,
}

/// One relayed connection: `sides[0]` faces the client, `sides[1]` the upstream server.
#[derive(Debug)]
struct Flow {
    /// Both ends.
    sides: [Side; 2],
    /// When a byte last went through, either way.
    last: Instant,
    /// The flow was forgotten: nothing is forwarded any more.
    dead: bool,
}

impl Flow {
    /// Whether the flow is over and its sockets can be closed.
    fn finished(&self) -> bool {
        self.sides
            .iter()
            .all(|s| !s.readable && s.pending.is_empty())
    }
}

/// The relay thread's state.
#[derive(Debug)]
struct Relay {
    /// Accepts clients (non-blocking).
    listener: TcpListener,
    /// Where flows go.
    upstream: SocketAddr,
    /// Idle time after which a flow is forgotten.
    idle_timeout: Duration,
    /// Open flows.
    flows: Vec<Flow>,
    /// Set by [`NatRelay`]'s drop.
    stop: Arc<AtomicBool>,
    /// Shared counters.
    stats: Arc<Mutex<RelayStats>>,
}

impl Relay {
    fn run(&mut self) {
        let mut fds: Vec<libc::pollfd> = Vec::new();
        while !self.stop.load(Ordering::Relaxed) {
            fds.clear();
            fds.push(libc::pollfd {
                fd: self.listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
            let now = Instant::now();
            let mut wait = MAX_WAIT;
            for flow in &self.flows {
                if !flow.dead {
                    let expiry = flow.last + self.idle_timeout;
                    wait =
                        wait.min(expiry.saturating_duration_since(now) + Duration::from_millis(1));
                }
                for side in &flow.sides {
                    let mut events = 0;
                    if side.readable {
                        events |= libc::POLLIN;
                    }
                    if !side.pending.is_empty() {
                        events |= libc::POLLOUT;
                    }
                    // A negative fd is skipped by poll: a side with nothing to wait for would
                    // otherwise report POLLHUP/POLLERR on every turn and spin the loop.
                    let fd = if events == 0 {
                        -1
                    } else {
                        side.stream.as_raw_fd()
                    };
                    fds.push(libc::pollfd {
                        fd,
                        events,
                        revents: 0,
                    });
                }
            }
            let wait_ms = wait.as_micros().div_ceil(1000) as libc::c_int;
            // SAFETY: `fds` is a valid, exclusively borrowed array of `fds.len()` pollfds.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };
            if n < 0 {
                continue; // EINTR; anything else would repeat and the stop flag ends the loop
            }
            // Expiry first: the clock is read after poll returned, so it is not earlier than the
            // arrival of anything now readable.
            let now = Instant::now();
            for flow in &mut self.flows {
                if !flow.dead && now.duration_since(flow.last) > self.idle_timeout {
                    flow.dead = true;
                    flow.sides.iter_mut().for_each(|s| s.pending.clear());
                    self.stats
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .blackholed += 1;
                }
            }
            for (i, flow) in self.flows.iter_mut().enumerate() {
                for s in 0..2 {
                    let revents = fds[1 + 2 * i + s].revents;
                    if revents != 0 {
                        Self::serve(flow, s, revents, now, &self.stats);
                    }
                }
            }
            self.flows.retain(|f| !f.finished());
            if fds[0].revents != 0 {
                self.accept();
            }
        }
    }

    /// Accepts every waiting client and connects it upstream.
    fn accept(&mut self) {
        loop {
            let client = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => return,
            };
            let Ok(server) = TcpStream::connect_timeout(&self.upstream, Duration::from_secs(10))
            else {
                continue; // dropping the client closes it, as a NAT whose upstream refuses
            };
            let sides = [client, server].map(|stream| {
                let _ = stream.set_nonblocking(true);
                let _ = stream.set_nodelay(true);
                Side {
                    stream,
                    readable: true,
                    pending: Vec::new(),
                }
            });
            self.flows.push(Flow {
                sides,
                last: Instant::now(),
                dead: false,
            });
            self.stats.lock().unwrap_or_else(|e| e.into_inner()).flows += 1;
        }
    }

    /// Side `s` of `flow` is ready with `revents`.
    fn serve(flow: &mut Flow, s: usize, revents: i16, now: Instant, stats: &Mutex<RelayStats>) {
        let other = 1 - s;
        if revents & libc::POLLOUT != 0 && !flow.dead && flush_and_fin(flow, s).is_err() {
            close_both(flow);
            return;
        }
        if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) == 0 || !flow.sides[s].readable
        {
            return;
        }
        let mut buf = [0u8; 16 * 1024];
        loop {
            match flow.sides[s].stream.read(&mut buf) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Ok(0) | Err(_) if flow.dead => {
                    // Keep the other end open: a NAT that forgot the flow forwards no FIN.
                    flow.sides[s].readable = false;
                    return;
                }
                Ok(0) => {
                    flow.sides[s].readable = false;
                    flow.last = now;
                    if flush_and_fin(flow, other).is_err() {
                        close_both(flow);
                    }
                    return;
                }
                Ok(n) if flow.dead => {
                    stats.lock().unwrap_or_else(|e| e.into_inner()).dropped += n as u64;
                }
                Ok(n) => {
                    flow.last = now;
                    flow.sides[other].pending.extend_from_slice(&buf[..n]);
                    stats.lock().unwrap_or_else(|e| e.into_inner()).forwarded += n as u64;
                    if flush_and_fin(flow, other).is_err() {
                        close_both(flow);
                        return;
                    }
                }
                Err(_) => {
                    // A reset on a live flow: pass the close on.
                    close_both(flow);
                    return;
                }
            }
        }
    }
}

/// Writes what is pending on `side` until the socket refuses more.
fn flush(side: &mut Side) -> io::Result<()> {
    while !side.pending.is_empty() {
        match side.stream.write(&side.pending) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => {
                side.pending.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Flushes side `to` of `flow`; once all is written and the other side sent its FIN, passes
/// the FIN on.
fn flush_and_fin(flow: &mut Flow, to: usize) -> io::Result<()> {
    flush(&mut flow.sides[to])?;
    if flow.sides[to].pending.is_empty() && !flow.sides[1 - to].readable {
        // An error here means the peer is gone already: nothing left to tell it.
        let _ = flow.sides[to].stream.shutdown(Shutdown::Write);
    }
    Ok(())
}

/// Marks both sides finished, so the flow is dropped and both sockets close.
fn close_both(flow: &mut Flow) {
    for side in &mut flow.sides {
        side.readable = false;
        side.pending.clear();
    }
}
