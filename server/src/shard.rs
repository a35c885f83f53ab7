//! One shard at run time: a pinned glommio executor driving a [`ShardState`] with the shard's
//! own io_uring.
//!
//! The shard is one loop on its pinned executor thread:
//!
//! 1. wait in one `io_uring_enter` on the shard's own ring ([`RingIo::wait`]) for socket
//!    readiness, accepts and the mesh doorbell (a multishot poll on the shard's eventfd, which
//!    other shards write after queueing a message), at most until the next wheel tick;
//! 2. handle every completion and every mesh message, and submit the new requests;
//! 3. when a tick is due: fire due deadlines, run the drain, publish the counters.
//!
//! The loop never puts the glommio executor to sleep: a glommio sleep and wake costs tens of
//! microseconds (a process-wide `membarrier` plus several ring calls), and with a wakeup per
//! heartbeat that measured as most of the server's CPU per heartbeat. Blocking in the shard's
//! own ring costs one system call. An idle shard wakes once per tick.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Receiver;
use tether_proto::token::Authenticate;
use tracing::{debug, info, warn};

use crate::config::KeepaliveConfig;
use crate::counters::{Counter, Published};
use crate::io::Io;
use crate::listener;
use crate::mesh::{MeshMsg, MeshPort, MeshShared};
use crate::ring::{unpack, Completion, RingIo, DOORBELL, TAG_ACCEPT, TAG_READ, TAG_WRITE};
use crate::state::{Now, ShardConfig, ShardState};

/// Everything a shard thread needs, built by [`crate::server::run`].
pub struct ShardArgs {
    /// The shard's index.
    pub index: usize,
    /// Session, limits and wheel settings.
    pub cfg: ShardConfig,
    /// Token verification.
    pub auth: Box<dyn Authenticate + std::marker::Send>,
    /// This shard's `SO_REUSEPORT` listener.
    pub listener: OwnedFd,
    /// The mesh (channels and eventfds of all shards).
    pub mesh: Arc<MeshShared>,
    /// This shard's inbox.
    pub inbox: Receiver<MeshMsg>,
    /// io_uring submission entries.
    pub ring_entries: u32,
    /// TCP keepalive settings for accepted sockets.
    pub keepalive: KeepaliveConfig,
    /// Set when the server must drain.
    pub stop: Arc<AtomicBool>,
    /// Where the counters are published for the metrics surface.
    pub published: Arc<Published>,
    /// Drain period.
    pub drain_ms: u64,
    /// Period of the counters log line (0 = off).
    pub stats_interval_ms: u64,
    /// The server's monotonic clock origin.
    pub epoch: Instant,
}

impl std::fmt::Debug for ShardArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardArgs")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

/// The shard's mutable parts, shared by its two tasks.
struct Shard {
    /// Connections, wheel, users, counters.
    state: ShardState,
    /// The shard's ring.
    ring: RingIo,
    /// The listener while accepting; `None` once draining.
    listener: Option<OwnedFd>,
    /// Completions copied out of the ring, reused between batches.
    completions: Vec<Completion>,
    /// Keepalive settings for accepted sockets.
    keepalive: KeepaliveConfig,
    /// The shard's index.
    index: usize,
    /// Clock origin.
    epoch: Instant,
    /// When the drain ends (monotonic ms), once it started.
    drain_until: Option<u64>,
    /// The shard's doorbell eventfd (owned by the mesh), drained when its poll fires.
    doorbell: std::os::fd::RawFd,
    /// Set when the shard has closed everything and its tasks should end.
    done: bool,
}

impl Shard {
    /// The clock now.
    fn now(&self) -> Now {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Now {
            ms: self.epoch.elapsed().as_millis() as u64,
            unix,
        }
    }

    /// Handles everything that is ready: completions, then mesh messages; then submits.
    fn batch(&mut self) {
        let now = self.now();
        let mut completions = std::mem::take(&mut self.completions);
        self.ring.completions(&mut completions);
        for c in completions.drain(..) {
            self.on_completion(c, now);
        }
        self.completions = completions;
        let mut budget = 4096;
        while budget > 0 {
            let Some(msg) = self.state.mesh_recv() else {
                break;
            };
            self.state.on_mesh(msg, now, &mut self.ring);
            budget -= 1;
        }
        if budget == 0 {
            // More messages are waiting: make sure the next wait returns at once.
            self.state.wake_self();
        }
        self.finish_batch();
    }

    /// Wakes other shards and submits the queued ring requests.
    fn finish_batch(&mut self) {
        self.state.end_batch();
        if let Err(e) = self.ring.submit() {
            warn!(shard = self.index, error = %e, "io_uring submit failed");
        }
    }

    /// Acts on one completion.
    fn on_completion(&mut self, c: Completion, now: Now) {
        let (tag, key, gen) = unpack(c.user_data);
        match tag {
            TAG_READ => {
                if c.result == -libc::ECANCELED || c.result == -libc::ENOENT {
                    return;
                }
                // Errors and hangups show up as a failed or empty recv.
                self.state.on_readable(key, gen, now, &mut self.ring);
                if !c.more {
                    // The kernel ended the multishot poll (e.g. completion queue overflow):
                    // arm it again if the connection is still here.
                    if let Some(fd) = self.state.fd_of(key, gen) {
                        self.ring.watch(fd, key, gen);
                    }
                }
            }
            TAG_WRITE if c.result != -libc::ECANCELED && c.result != -libc::ENOENT => {
                self.state.on_writable(key, gen, now, &mut self.ring);
            }
            TAG_ACCEPT => self.on_accept(c, now),
            _ if c.user_data == DOORBELL => {
                // Reset the counter so the next ring is a new wakeup; the messages themselves
                // are read from the channel after the completions.
                let mut count = 0u64;
                // SAFETY: an 8-byte read into a local from a non-blocking eventfd the mesh
                // keeps open; EAGAIN (already drained) is harmless.
                let _ = unsafe { libc::read(self.doorbell, (&mut count as *mut u64).cast(), 8) };
                if !c.more {
                    self.ring.watch_doorbell(self.doorbell);
                }
            }
            _ => {}
        }
    }

    /// A multishot accept produced a socket (or an error).
    fn on_accept(&mut self, c: Completion, now: Now) {
        if c.result >= 0 {
            let fd = c.result;
            if let Err(e) = listener::configure(fd, &self.keepalive) {
                debug!(error = %e, "socket options failed");
            }
            if let Err(fd) = self.state.open(fd, now, &mut self.ring) {
                // SAFETY: the accepted descriptor is ours and refused: close it.
                drop(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        } else if c.result != -libc::ECANCELED {
            self.state.counters.inc(Counter::AcceptErrors);
            warn!(shard = self.index, errno = -c.result, "accept failed");
        }
        if !c.more {
            if let Some(l) = &self.listener {
                self.ring.accept(l.as_raw_fd());
            }
        }
    }

    /// The work of one wheel tick, run by the shard's loop.
    fn tick(&mut self, stop: &AtomicBool, drain_ms: u64) {
        let now = self.now();
        self.state.tick(now, &mut self.ring);
        if stop.load(Ordering::Relaxed) && self.drain_until.is_none() {
            self.begin_drain(now, drain_ms);
        }
        if let Some(until) = self.drain_until {
            if self.state.connections() == 0 || now.ms >= until {
                self.state.close_all(now, &mut self.ring);
                self.done = true;
                info!(shard = self.index, "drained");
                self.state.wake_self();
            }
        }
        self.finish_batch();
    }

    /// Stops accepting and sends every client its GoAway.
    fn begin_drain(&mut self, now: Now, drain_ms: u64) {
        info!(
            shard = self.index,
            connections = self.state.connections(),
            drain_ms,
            "draining"
        );
        self.ring.cancel_accept();
        // The pending accept holds its own reference; closing our descriptor is safe.
        self.listener = None;
        let window = u32::try_from(drain_ms).unwrap_or(u32::MAX);
        self.state.begin_drain(window, now, &mut self.ring);
        self.drain_until = Some(now.ms + drain_ms);
    }
}

/// Runs shard `args.index` on the current thread until it has drained.
pub async fn run_shard(args: ShardArgs) -> std::io::Result<()> {
    let ShardArgs {
        index,
        cfg,
        auth,
        listener,
        mesh,
        inbox,
        ring_entries,
        keepalive,
        stop,
        published,
        drain_ms,
        stats_interval_ms,
        epoch,
    } = args;
    let tick_ms = cfg.tick_ms;
    let mut ring = RingIo::new(ring_entries)?;
    let doorbell = mesh.eventfd(index);
    ring.watch_doorbell(doorbell);
    ring.accept(listener.as_raw_fd());
    let port = MeshPort::new(index, mesh, inbox);
    let start_ms = epoch.elapsed().as_millis() as u64;
    let state = ShardState::new(cfg, auth, port, start_ms);
    let mut shard = Shard {
        state,
        ring,
        listener: Some(listener),
        completions: Vec::new(),
        keepalive,
        index,
        epoch,
        doorbell,
        drain_until: None,
        done: false,
    };
    shard.finish_batch();

    let tick = Duration::from_millis(tick_ms);
    let mut next_tick = Instant::now() + tick;
    let mut last_stats = Instant::now();
    let mut last_publish = Instant::now();
    while !shard.done {
        let wait = next_tick.saturating_duration_since(Instant::now());
        if let Err(e) = shard.ring.wait(wait) {
            warn!(shard = index, error = %e, "io_uring wait failed");
        }
        shard.batch();
        if Instant::now() >= next_tick {
            next_tick = Instant::now() + tick;
            shard.tick(&stop, drain_ms);
            if last_publish.elapsed() >= Duration::from_millis(500) || shard.done {
                last_publish = Instant::now();
                publish(&shard.state, &published);
            }
            if stats_interval_ms > 0
                && last_stats.elapsed() >= Duration::from_millis(stats_interval_ms)
            {
                last_stats = Instant::now();
                log_stats(index, &shard.state);
            }
        }
    }
    publish(&shard.state, &published);
    log_stats(index, &shard.state);
    Ok(())
}

/// Copies the shard's counters to the metrics surface.
fn publish(state: &ShardState, published: &Published) {
    published.store(state.counters());
    published
        .connections
        .store(state.connections() as u64, Ordering::Relaxed);
    published
        .users
        .store(state.users() as u64, Ordering::Relaxed);
}

/// Logs the shard's main counters.
fn log_stats(index: usize, state: &ShardState) {
    let c = state.counters();
    info!(
        shard = index,
        connections = state.connections(),
        users = state.users(),
        accepted = c.get(Counter::Accepted),
        pings = c.get(Counter::Pings),
        push_in = c.get(Counter::PushIn),
        delivered = c.get(Counter::PushDelivered),
        offline = c.get(Counter::PushOffline),
        refused_slow = c.get(Counter::PushRefusedSlow),
        refused_overloaded = c.get(Counter::PushRefusedOverloaded),
        acked = c.get(Counter::PushAcked),
        closed = c.get(Counter::Closed),
        "shard stats"
    );
}
