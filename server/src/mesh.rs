//! The mesh: bounded channels between shards, each paired with the receiving shard's eventfd.
//!
//! A shard sends by pushing into the target's `crossbeam-channel` and then writing the
//! target's eventfd (once per batch). The target's ring watches that eventfd with a multishot
//! poll, so the one wait of the target shard covers both socket readiness and mesh messages:
//! nobody spins. A full channel is reported to the sender, who refuses the push with `Overloaded`.

use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use tether_proto::token::Verifier;

use crate::cluster::msg::ClusterMsg;
pub use crate::core::msg::{Origin, RoutedPush, SendFrom};
use crate::core::msg::{Post, ShardMsg, Undelivered};
use crate::core::{ClusterEpoch, Transfer};
use crate::driver::nudge::Nudges;

/// A logged-in connection moving to its home shard.
#[derive(Debug)]
pub struct Handover {
    /// The socket; the sending shard has no request armed on it.
    pub fd: OwnedFd,
    /// Its session and what it brings along.
    pub transfer: Box<Transfer>,
    /// Its layers (TLS, WebSocket), when it came through their listener (open: the login
    /// came through them).
    pub layers: Option<Box<crate::layers::Layers>>,
}

/// A message on the mesh.
#[derive(Debug)]
pub enum MeshMsg {
    /// A connection moving to its home shard (the driver adopts it: it carries a socket).
    Handover(Handover),
    /// A request of the control plane (HTTP API, cluster thread); the driver answers it on
    /// the channel inside, from what the core tells it.
    Control(Box<crate::control::Control>),
    /// Anything for the core itself.
    Shard(ShardMsg),
}

/// Everything shards share to reach each other: one channel sender and one eventfd per shard.
#[derive(Debug)]
pub struct MeshShared {
    /// `senders[i]` feeds shard i.
    senders: Vec<Sender<MeshMsg>>,
    /// `eventfds[i]` wakes shard i (registered with its ring).
    eventfds: Vec<OwnedFd>,
    /// What ends each shard's gathering sleep early.
    nudges: Nudges,
    /// Where shards send the results of pushes with an [`Origin::Api`], once the
    /// control plane runs (unbounded: the API bounds its own pushes in flight).
    api_results: OnceLock<flume::Sender<crate::control::ApiResult>>,
    /// The cluster thread's inbox and where shards send the results of pushes with an
    /// [`Origin::Cluster`]; set only when the node joins a cluster.
    cluster: OnceLock<ClusterPort>,
    /// The `tether-upstream` thread's inbox, when `[upstream] sink` is `webhook` or `nats`
    /// (bounded; a shard never waits on it).
    upstream: OnceLock<flume::Sender<crate::upstream::UpstreamJob>>,
    /// Set by a shard whose login or logout event did not fit in the cluster channel: the
    /// cluster thread then re-reads every shard's users at its next refresh pass.
    cluster_resync: std::sync::atomic::AtomicBool,
    /// The cluster epoch: a user's local-only note on its home shard holds only while it
    /// carries this value (`cluster/local.rs`, [`ClusterEpoch`]); every shard's core holds a
    /// copy of the handle.
    cluster_epoch: ClusterEpoch,
    /// The token verifier a reload gave every shard.
    auth: AuthSlot,
}

/// The token verifier (and TLS configuration) of the last reload, for every shard at once. A reload writes it in one
/// step, which cannot fail, and wakes every shard; each shard takes it at its next batch. So a
/// reload reaches every shard or, refused before this step, none: never some of them, as a
/// message per shard on channels that may be full could. A shard reads one integer per batch;
/// the lock is taken only when a reload happened.
#[derive(Debug, Default)]
struct AuthSlot {
    /// Reloads so far; a shard compares it with the last one it took.
    generation: AtomicU64,
    /// The newest verifier and TLS configuration (`None` until the first reload).
    verifier: Mutex<Option<Reloaded>>,
}

/// What a reload gives every shard.
#[derive(Clone, Debug)]
pub struct Reloaded {
    /// Token verification.
    pub verifier: Verifier,
    /// The TLS listener's certificates, when it runs.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// The shards' way to the cluster thread (see `cluster/`).
#[derive(Debug)]
pub struct ClusterPort {
    /// Logins, logouts and pushes to fan out (bounded; a shard never waits on it).
    pub inbox: flume::Sender<ClusterMsg>,
    /// Results of pushes with an [`Origin::Cluster`] (unbounded: the cluster thread
    /// bounds its own pushes in flight by `queue_capacity`).
    pub results: flume::Sender<crate::control::ApiResult>,
}

impl MeshShared {
    /// Creates the channels and eventfds of `n` shards; returns the shared half and the
    /// receivers (one per shard, in order).
    pub fn new(
        n: usize,
        capacity: usize,
    ) -> std::io::Result<(Arc<MeshShared>, Vec<Receiver<MeshMsg>>)> {
        let mut senders = Vec::with_capacity(n);
        let mut receivers = Vec::with_capacity(n);
        let mut eventfds = Vec::with_capacity(n);
        for _ in 0..n {
            let (tx, rx) = crossbeam_channel::bounded(capacity);
            senders.push(tx);
            receivers.push(rx);
            eventfds.push(eventfd()?);
        }
        let shared = MeshShared {
            senders,
            eventfds,
            nudges: Nudges::new(n),
            api_results: OnceLock::new(),
            cluster: OnceLock::new(),
            upstream: OnceLock::new(),
            cluster_resync: std::sync::atomic::AtomicBool::new(false),
            cluster_epoch: ClusterEpoch::default(),
            auth: AuthSlot::default(),
        };
        Ok((Arc::new(shared), receivers))
    }

    /// Number of shards.
    pub fn len(&self) -> usize {
        self.senders.len()
    }

    /// Whether there are no shards (never, for a running server).
    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }

    /// The eventfd of shard `i`.
    pub fn eventfd(&self, i: usize) -> RawFd {
        self.eventfds[i].as_raw_fd()
    }

    /// Queues `msg` for shard `to` from outside the shards (the control plane) and wakes it;
    /// gives it back when that shard's channel is full.
    pub fn post(&self, to: usize, msg: MeshMsg) -> Result<(), MeshMsg> {
        match self.senders[to].try_send(msg) {
            Ok(()) => {
                self.wake(to);
                Ok(())
            }
            Err(TrySendError::Full(m)) | Err(TrySendError::Disconnected(m)) => Err(m),
        }
    }

    /// Messages waiting in shard `i`'s channel.
    pub fn depth(&self, i: usize) -> usize {
        self.senders[i].len()
    }

    /// Connects the API result channel (once; later calls are ignored).
    pub fn set_api_results(&self, tx: flume::Sender<crate::control::ApiResult>) {
        let _ = self.api_results.set(tx);
    }

    /// Sends the result of an API push to the control plane without blocking; false when
    /// nobody listens (the result is then orphaned).
    pub fn api_result(&self, result: crate::control::ApiResult) -> bool {
        self.api_results
            .get()
            .is_some_and(|tx| tx.send(result).is_ok())
    }

    /// Connects the cluster thread (once; later calls are ignored).
    pub fn set_cluster(&self, port: ClusterPort) {
        let _ = self.cluster.set(port);
    }

    /// The cluster thread's inbox, when this node joins a cluster.
    pub fn cluster(&self) -> Option<&flume::Sender<ClusterMsg>> {
        self.cluster.get().map(|p| &p.inbox)
    }

    /// Sends the result of a push with a cluster origin to the cluster thread without
    /// blocking; false when nobody listens.
    pub fn cluster_result(&self, result: crate::control::ApiResult) -> bool {
        self.cluster
            .get()
            .is_some_and(|p| p.results.send(result).is_ok())
    }

    /// Connects the `tether-upstream` thread (once; later calls are ignored).
    pub fn set_upstream(&self, tx: flume::Sender<crate::upstream::UpstreamJob>) {
        let _ = self.upstream.set(tx);
    }

    /// The `tether-upstream` thread's inbox, when the sink is a webhook or NATS.
    pub fn upstream(&self) -> Option<&flume::Sender<crate::upstream::UpstreamJob>> {
        self.upstream.get()
    }

    /// Asks the cluster thread to re-read every shard's users (an event was dropped).
    pub fn request_resync(&self) {
        self.cluster_resync
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether a re-read was asked for since the last call.
    pub fn take_resync(&self) -> bool {
        self.cluster_resync
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    /// The cluster epoch's handle (a shard's core reads it; the cluster thread moves it on).
    pub fn cluster_epoch_handle(&self) -> &ClusterEpoch {
        &self.cluster_epoch
    }

    /// The current cluster epoch.
    pub fn cluster_epoch(&self) -> NonZeroU32 {
        self.cluster_epoch.current()
    }

    /// Voids every local-only note on every shard at once: from now on each push of a cluster
    /// node takes the directory until the cluster thread notes its users again.
    pub fn void_local_only(&self) {
        self.cluster_epoch.void_all();
    }

    /// Gives every shard what a reload read and wakes them. Cannot fail.
    pub fn publish_auth(&self, reloaded: Reloaded) {
        let mut slot = self.auth.verifier.lock().unwrap_or_else(|e| e.into_inner());
        *slot = Some(reloaded);
        self.auth.generation.fetch_add(1, Ordering::Release);
        drop(slot);
        for i in 0..self.len() {
            self.wake(i);
        }
    }

    /// What the newest reload read and its generation, when it is newer than `seen`.
    pub fn auth_since(&self, seen: u64) -> Option<(u64, Reloaded)> {
        if self.auth.generation.load(Ordering::Acquire) == seen {
            return None;
        }
        let slot = self.auth.verifier.lock().unwrap_or_else(|e| e.into_inner());
        let generation = self.auth.generation.load(Ordering::Acquire);
        slot.clone().map(|v| (generation, v))
    }

    /// Who ends shard `i`'s gathering sleep, and how (`nudge.rs`).
    pub fn nudges(&self) -> &Nudges {
        &self.nudges
    }

    /// Wakes shard `i`: its doorbell, and a signal when it is gathering (`nudge.rs`).
    pub fn wake(&self, i: usize) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd this struct owns. A full
        // counter (EAGAIN) already means "wake up", so the result is ignored.
        unsafe {
            libc::write(self.eventfds[i].as_raw_fd(), (&one as *const u64).cast(), 8);
        }
        self.nudges.nudge(i);
    }
}

/// One shard's view of the mesh: senders to every shard, its own inbox, and which shards to
/// wake at the end of the current batch.
#[derive(Debug)]
pub struct MeshPort {
    /// This shard's index.
    me: usize,
    /// Channels and eventfds of all shards.
    shared: Arc<MeshShared>,
    /// Messages for this shard.
    inbox: Receiver<MeshMsg>,
    /// `dirty[i]`: a message went to shard i since the last [`MeshPort::wake_dirty`].
    dirty: Vec<bool>,
}

impl MeshPort {
    /// Shard `me`'s port.
    pub fn new(me: usize, shared: Arc<MeshShared>, inbox: Receiver<MeshMsg>) -> MeshPort {
        let dirty = vec![false; shared.len()];
        MeshPort {
            me,
            shared,
            inbox,
            dirty,
        }
    }

    /// Queues `msg` for shard `to` (woken by [`MeshPort::wake_dirty`]); gives it back when
    /// that shard's channel is full.
    pub fn send(&mut self, to: usize, msg: MeshMsg) -> Result<(), MeshMsg> {
        match self.shared.senders[to].try_send(msg) {
            Ok(()) => {
                self.dirty[to] = true;
                Ok(())
            }
            Err(TrySendError::Full(m)) | Err(TrySendError::Disconnected(m)) => Err(m),
        }
    }

    /// Posts what a core asked for, without waiting; gives it back, with why, when the
    /// receiver's channel is full or nobody receives.
    pub fn post(&mut self, post: Post) -> Result<(), (Post, Undelivered)> {
        let shared = Arc::clone(&self.shared);
        match post {
            Post::Shard { to, msg, parked } => match self.send(to, MeshMsg::Shard(msg)) {
                Ok(()) => Ok(()),
                Err(MeshMsg::Shard(msg)) => {
                    Err((Post::Shard { to, msg, parked }, Undelivered::Full))
                }
                Err(_) => unreachable!("the mesh gives back what it was given"),
            },
            Post::ApiResult(r) => match shared.api_results.get() {
                Some(tx) if tx.send(r).is_ok() => Ok(()),
                _ => Err((Post::ApiResult(r), Undelivered::Closed)),
            },
            Post::ClusterResult(r) => match shared.cluster.get() {
                Some(p) if p.results.send(r).is_ok() => Ok(()),
                _ => Err((Post::ClusterResult(r), Undelivered::Closed)),
            },
            Post::Cluster(event) => {
                let Some(port) = shared.cluster.get() else {
                    return Err((Post::Cluster(event), Undelivered::Closed));
                };
                match port.inbox.try_send(ClusterMsg::Event(event)) {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        let why = match e {
                            flume::TrySendError::Full(_) => Undelivered::Full,
                            flume::TrySendError::Disconnected(_) => Undelivered::Closed,
                        };
                        let msg = e.into_inner();
                        let event = msg.into_event().expect("the event just converted");
                        Err((Post::Cluster(event), why))
                    }
                }
            }
            Post::ClusterResync => {
                shared.request_resync();
                Ok(())
            }
            Post::Upstream(job) => {
                let Some(tx) = shared.upstream.get() else {
                    return Err((Post::Upstream(job), Undelivered::Closed));
                };
                match tx.try_send(*job) {
                    Ok(()) => Ok(()),
                    Err(flume::TrySendError::Full(job)) => {
                        Err((Post::Upstream(Box::new(job)), Undelivered::Full))
                    }
                    Err(flume::TrySendError::Disconnected(job)) => {
                        Err((Post::Upstream(Box::new(job)), Undelivered::Closed))
                    }
                }
            }
        }
    }

    /// Makes this shard's next wait return at once (more work is waiting for it).
    pub fn wake_self(&self) {
        self.shared.wake(self.me);
    }

    /// Whether a message is waiting for this shard.
    pub fn has_mail(&self) -> bool {
        !self.inbox.is_empty()
    }

    /// The next message for this shard, if any.
    pub fn recv(&self) -> Option<MeshMsg> {
        self.inbox.try_recv().ok()
    }

    /// Writes the eventfd of every shard sent to since the last call.
    pub fn wake_dirty(&mut self) {
        for (i, d) in self.dirty.iter_mut().enumerate() {
            if std::mem::take(d) {
                self.shared.wake(i);
            }
        }
    }

    /// The shared half (for the shard driver to find its eventfd).
    pub fn shared(&self) -> &Arc<MeshShared> {
        &self.shared
    }
}

/// A non-blocking eventfd: the receiving shard's ring polls it and the shard drains it when
/// the poll fires. Writers never block (the counter cannot come near overflow).
fn eventfd() -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall; the returned descriptor is checked and then owned.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
}
