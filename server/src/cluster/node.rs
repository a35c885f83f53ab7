//! The cluster thread's work: the NATS connection, the node's subject, the directory writes
//! and refresh passes, and the fan-out of pushes, kicks and presence questions.
//!
//! Everything here runs on one current-thread tokio runtime. Shards are reached only through
//! the mesh ([`MeshShared::post`]), and their answers come back on the mesh's cluster result
//! channel (pushes) or on a channel the request carries (kick, presence, users).
//!
//! **Bounded work.** Every task this thread spawns holds a permit: this node's own work (a
//! push fanned out, a kick, a presence question, a login's or logout's directory write) one of
//! `max_in_flight`, a request served for another node one of `max_served_in_flight`. Permits
//! are taken with `try_acquire` where the work arrives: past the bound a push is refused
//! `Overloaded` at once, another node's push is answered `Overloaded` and its other requests
//! with an error, and nothing waits in an unbounded line.
//!
//! **Signed messages.** Requests go out signed and replies are checked (`seal.rs`); requests
//! that come in are checked before anything else is done with them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::connection::State;
use async_nats::jetstream::{self, kv};
use base64::Engine as _;
use bytes::Bytes;
use futures_lite::StreamExt;
use tether_proto::{limits, CloseCode, PushStatus, RefuseReason};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::directory::{self, Bounds, Entry};
use super::link::NatsServers;
use super::local::{Locals, Tell, Ticket};
use super::seal::{self, Guard, Keys, Refusal, Stamp, Tag};
use super::wire::{combine, Part, Reply, Request};
use super::{ClusterConfig, ClusterMsg, ClusterStats, Fanned};
use crate::control::{ApiResult, Control, Kick};
use crate::core::ShardMsg;
use crate::mesh::{MeshMsg, MeshShared, Origin, OriginKind, RoutedPush, SendFrom};
use crate::ratelog::RateLog;
use crate::results::{Settled, Waiters, FIRST_RESULT_TIMEOUT};
use crate::routing::shard_for;

/// How long a push that asked for an acknowledgement keeps waiting for one.
const ACK_WAIT: Duration = Duration::from_secs(5 * 60);
/// How long a kick, presence or users question waits for a local shard.
const SHARD_ANSWER: Duration = Duration::from_secs(5);
/// Tries of one directory write when other nodes write the same entry meanwhile.
const WRITE_TRIES: usize = 5;
/// Tries, 10 ms apart, to hand a result to a shard whose channel is full.
const RESULT_TRIES: usize = 200;
/// Shortest time between two log lines about refused requests, ms.
const REFUSAL_LOG_MS: u64 = 10_000;
/// Replies go only to subjects under this prefix, where NATS clients (every node's included)
/// take replies. A request's reply subject is not signed: a node that answered anywhere could
/// be made to publish, with its own NATS permissions, on any subject (a directory key among
/// them).
const INBOX: &str = "_INBOX.";

/// Where the acknowledgement of a push posted to a shard goes.
#[derive(Clone, Debug)]
enum AckTo {
    /// A push this node fans out: its job.
    Job(u64),
    /// A push another node forwarded here: back to that node, naming its job.
    Remote { node: String, job: u64 },
}

/// A fanned-out push that asked for an acknowledgement.
struct AckWait {
    /// The sender, once its first result (delivered) went out.
    origin: Option<Origin>,
    /// An acknowledgement came before the first result went out.
    early: bool,
    /// When the push started.
    since: Instant,
}

/// The cluster thread's state.
struct Node {
    /// `[cluster]`.
    cfg: ClusterConfig,
    /// This node's subject.
    subject: String,
    /// The shards.
    mesh: Arc<MeshShared>,
    /// Figures.
    stats: Arc<ClusterStats>,
    /// The NATS connection (reconnects by itself).
    client: async_nats::Client,
    /// JetStream on it.
    js: jetstream::Context,
    /// The directory bucket, once created or found.
    store: tokio::sync::Mutex<Option<kv::Store>>,
    /// Pushes posted to this node's shards, by their cluster origin id (those never
    /// acknowledged are swept after [`ACK_WAIT`]).
    waiting: Mutex<Waiters<AckTo>>,
    /// Fanned-out pushes waiting for an acknowledgement, by job.
    acks: Mutex<HashMap<u64, AckWait>>,
    /// Users with a main connection on this node, with what the directory said of them (a
    /// refresh of an entry that named this node alone writes without reading first; a home
    /// shard is told when the directory names this node alone: `local.rs`). Every decision
    /// about a note is posted to the shard while this lock is held, so shards take them in
    /// the order they were made.
    locals: Mutex<Locals>,
    /// When the last refresh pass that completed began (`watch_refresh`).
    pass_started: Mutex<Instant>,
    /// `local_only_noted` when notes were last voided: none was given since when it has not
    /// moved.
    noted_at_void: AtomicU64,
    /// Ids of jobs (the pushes this node fans out).
    next_id: AtomicU64,
    /// Wakes the refresh loop at once (after a reconnect).
    refresh_now: Notify,
    /// The cluster secrets: requests and directory entries are signed with them.
    keys: Keys,
    /// Checks requests from other nodes (signature, window, replays).
    guard: Mutex<Guard>,
    /// Sequence number of the requests this node sends.
    seq: AtomicU64,
    /// Permits for this node's own tasks (`max_in_flight`).
    own: Arc<Semaphore>,
    /// Permits for requests served for other nodes (`max_served_in_flight`).
    served: Arc<Semaphore>,
    /// Refused results whose shard's channel was full, handed over again by one task.
    late: flume::Sender<(Origin, PushStatus)>,
    /// Rate of the log lines about refused requests.
    refusal_log: Mutex<RateLog>,
}

/// Runs the cluster thread until the process exits.
pub(super) async fn run(
    cfg: ClusterConfig,
    mesh: Arc<MeshShared>,
    stats: Arc<ClusterStats>,
    inbox: flume::Receiver<ClusterMsg>,
    results: flume::Receiver<ApiResult>,
) {
    let refresh_now = Arc::new(Notify::new());
    let events_stats = Arc::clone(&stats);
    let events_refresh = Arc::clone(&refresh_now);
    let events_mesh = Arc::clone(&mesh);
    let Some(keys) = Keys::new(&cfg.secrets) else {
        warn!("cluster: cluster.secrets unusable; running alone");
        return;
    };
    let servers = NatsServers::of(&cfg);
    let options = match servers.options() {
        Ok(o) => o,
        Err(e) => {
            warn!(error = %e, "cluster: NATS options unusable; running alone");
            return;
        }
    };
    let options = options
        .name(format!("tether-{}", cfg.node_id))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(Duration::from_millis(cfg.forward_timeout_ms)))
        // Back in at most a second once NATS is there again.
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((attempts as u64 * 100).min(1000))
        })
        .event_callback(move |event| {
            let stats = Arc::clone(&events_stats);
            let refresh = Arc::clone(&events_refresh);
            if !matches!(event, async_nats::Event::Connected) {
                // Notices from other nodes may have been lost (a dropped connection, a slow
                // consumer, a server error): no note can be vouched for any more.
                events_mesh.void_local_only();
                ClusterStats::inc(&stats.local_only_voided);
            }
            async move {
                match event {
                    async_nats::Event::Connected => {
                        stats.connected.store(1, Ordering::Relaxed);
                        ClusterStats::inc(&stats.reconnects);
                        info!("cluster: connected to NATS; re-registering this node's users");
                        refresh.notify_one();
                    }
                    async_nats::Event::Disconnected => {
                        stats.connected.store(0, Ordering::Relaxed);
                        ClusterStats::inc(&stats.disconnects);
                        warn!(
                            "cluster: NATS connection lost; local delivery only until it is back"
                        );
                    }
                    other => debug!(event = %other, "cluster: NATS event"),
                }
            }
        });
    let client = match options.connect(servers.urls.clone()).await {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "cluster: NATS client could not start; running alone");
            return;
        }
    };
    let js = jetstream::new(client.clone());
    let subject = cfg.subject(&cfg.node_id);
    info!(node = %cfg.node_id, %subject, urls = ?servers.urls_for_log(), "cluster: joining");
    let guard = Guard::new(
        keys.clone(),
        &cfg.node_id,
        cfg.max_clock_skew_ms,
        cfg.replay_cache,
    );
    let (late, late_rx) = flume::unbounded();
    let node = Arc::new(Node {
        subject,
        mesh,
        stats,
        client,
        js,
        store: tokio::sync::Mutex::new(None),
        waiting: Mutex::new(Waiters::default()),
        acks: Mutex::new(HashMap::new()),
        locals: Mutex::new(Locals::new(cfg.local_first)),
        pass_started: Mutex::new(Instant::now()),
        noted_at_void: AtomicU64::new(0),
        next_id: AtomicU64::new(1),
        refresh_now: Notify::new(),
        keys,
        guard: Mutex::new(guard),
        seq: AtomicU64::new(1),
        own: Arc::new(Semaphore::new(cfg.max_in_flight)),
        served: Arc::new(Semaphore::new(cfg.max_served_in_flight)),
        late,
        refusal_log: Mutex::new(RateLog::new(REFUSAL_LOG_MS)),
        cfg,
    });
    // The connect callback's notify is a separate handle: forward it.
    let forward = Arc::clone(&node);
    tokio::spawn(async move {
        loop {
            refresh_now.notified().await;
            forward.refresh_now.notify_one();
        }
    });
    tokio::spawn(Arc::clone(&node).dispatch(results));
    tokio::spawn(Arc::clone(&node).answer_late(late_rx));
    tokio::spawn(Arc::clone(&node).serve());
    tokio::spawn(Arc::clone(&node).refresh_loop());
    tokio::spawn(Arc::clone(&node).watch_refresh());
    while let Ok(msg) = inbox.recv_async().await {
        node.handle(msg);
    }
}

/// Milliseconds since the Unix epoch.
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whether a user id is one a shard accepts.
fn valid_user(user: &str) -> bool {
    !user.is_empty() && user.len() <= limits::USER_MAX
}

/// Why a user's directory entry is written.
#[derive(Clone, Copy, Debug)]
enum Why<'a> {
    /// A main connection of the user with this device registered here: an older connection
    /// of the same device on another node is replaced.
    Login(&'a str),
    /// The refresh pass (an entry that named this node alone is written without a read).
    Refresh,
    /// The user left, or the list of users was rebuilt.
    Update,
}

/// Why a request to another node has no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AskError {
    /// Nobody listens on its subject.
    Gone,
    /// No answer in time.
    TimedOut,
    /// NATS unreachable, or a malformed answer.
    Failed,
}

impl AskError {
    fn name(self) -> &'static str {
        match self {
            AskError::Gone => "gone",
            AskError::TimedOut => "timed_out",
            AskError::Failed => "unavailable",
        }
    }
}

impl Node {
    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    fn forward_timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.forward_timeout_ms)
    }

    /// A permit for one of this node's own tasks, or `None` (counted) past `max_in_flight`.
    fn permit(&self) -> Option<OwnedSemaphorePermit> {
        let p = Arc::clone(&self.own).try_acquire_owned().ok();
        if p.is_none() {
            ClusterStats::inc(&self.stats.overloaded);
        }
        p
    }

    /// One message from a shard or the API, in arrival order: the local user list changes
    /// here, so a logout and a new login of the same user keep their order. Each task it
    /// starts holds a permit; without one the work is refused now and counted: a push
    /// `Overloaded`, a kick or presence question answered with nothing found, a login's
    /// directory write left to the next refresh pass (and its `replace` not sent), a logout's
    /// not written (this node's part of the entry expires by itself; pushes forwarded here
    /// meanwhile find the user offline).
    fn handle(self: &Arc<Self>, msg: ClusterMsg) {
        match msg {
            ClusterMsg::Login { user, device } => {
                let mut locals = self.locals();
                locals.arrive(&user);
                self.stats
                    .users
                    .store(locals.len() as u64, Ordering::Relaxed);
                drop(locals);
                if let Some(permit) = self.permit() {
                    let node = Arc::clone(self);
                    tokio::spawn(async move {
                        let _ = node.write(&user, Why::Login(&device)).await;
                        drop(permit);
                    });
                }
            }
            ClusterMsg::Logout { user } => {
                let mut locals = self.locals();
                locals.leave(&user);
                self.stats
                    .users
                    .store(locals.len() as u64, Ordering::Relaxed);
                // A note given for this stay may still be on its way to the shard, which may
                // hold the user again already: this takes it away behind it.
                self.tell(&mut locals, &user, Tell::NotAlone, None);
                drop(locals);
                if let Some(permit) = self.permit() {
                    let node = Arc::clone(self);
                    tokio::spawn(async move {
                        let _ = node.write(&user, Why::Update).await;
                        drop(permit);
                    });
                }
            }
            ClusterMsg::Push {
                origin,
                user,
                payload,
                want_ack,
                sender,
            } => {
                let Some(permit) = self.permit() else {
                    ClusterStats::inc(&self.stats.pushes);
                    let status = PushStatus::Refused(RefuseReason::Overloaded);
                    self.stats.outcome(status);
                    return self.answer_now(origin, status);
                };
                let node = Arc::clone(self);
                tokio::spawn(async move {
                    node.push(origin, user, payload, want_ack, sender).await;
                    drop(permit);
                });
            }
            ClusterMsg::Kick { kick, reply } => {
                let Some(permit) = self.permit() else {
                    let _ = reply.try_send(Fanned::default());
                    return;
                };
                let node = Arc::clone(self);
                tokio::spawn(async move {
                    let local = node.local_kick(kick.clone());
                    let req = Request::Kick(kick.clone());
                    let fanned = node.fan_count(&kick.user, local, req).await;
                    let _ = reply.try_send(fanned);
                    drop(permit);
                });
            }
            ClusterMsg::Presence { user, reply } => {
                let Some(permit) = self.permit() else {
                    let _ = reply.try_send(Fanned::default());
                    return;
                };
                let node = Arc::clone(self);
                tokio::spawn(async move {
                    let local = node.local_presence(&user);
                    let req = Request::Presence { user: user.clone() };
                    let fanned = node.fan_count(&user, local, req).await;
                    let _ = reply.try_send(fanned);
                    drop(permit);
                });
            }
        }
    }

    /// Locks the local users.
    fn locals(&self) -> std::sync::MutexGuard<'_, Locals> {
        self.locals.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells `user`'s home shard what `locals` decided, while the caller holds `locals` (so
    /// the shard takes the decisions in the order they were made); `done` hears when the shard
    /// took it in. A word the shard cannot take voids every note.
    fn tell(&self, locals: &mut Locals, user: &str, tell: Tell, done: Option<flume::Sender<()>>) {
        let epoch = match tell {
            Tell::Nothing => return,
            Tell::LocalOnly(e) => Some(e),
            Tell::NotAlone => None,
        };
        let msg = Control::LocalOnly {
            user: user.to_string(),
            epoch,
            done,
        };
        let home = shard_for(user, self.mesh.len());
        if self
            .mesh
            .post(home, MeshMsg::Control(Box::new(msg)))
            .is_err()
        {
            match epoch {
                // Not noted after all: the next write tries again.
                Some(_) => locals.unnote(user),
                None => self.void_notes(),
            }
            return;
        }
        ClusterStats::inc(match epoch {
            Some(_) => &self.stats.local_only_noted,
            None => &self.stats.local_only_dropped,
        });
    }

    /// Takes `user`'s note away ([`Locals::not_alone`]) and waits until its home shard has
    /// taken that in; a shard that does not take it in time gets every note voided instead.
    async fn not_alone(&self, user: &str) {
        let (done, taken) = flume::bounded(1);
        {
            let mut locals = self.locals();
            locals.not_alone(user);
            self.tell(&mut locals, user, Tell::NotAlone, Some(done));
        }
        if !matches!(
            tokio::time::timeout(SHARD_ANSWER, taken.recv_async()).await,
            Ok(Ok(()))
        ) {
            self.void_notes();
        }
    }

    /// Voids every local-only note on every shard (the next refresh pass notes again).
    fn void_notes(&self) {
        let noted = self.stats.local_only_noted.load(Ordering::Relaxed);
        self.noted_at_void.store(noted, Ordering::Relaxed);
        self.mesh.void_local_only();
        ClusterStats::inc(&self.stats.local_only_voided);
    }

    /// Tells every other live node the user's entry names that this node is about to write
    /// itself in (rule 2 of `local.rs`), and waits for their answers, each bounded by the
    /// forward timeout: a login's `replace` (an older connection of the same device there is
    /// kicked), once per node, else `joined`. Either takes that node's note of the user away.
    async fn tell_others(
        &self,
        user: &str,
        others: &[String],
        why: Why<'_>,
        replaced: &mut Vec<String>,
    ) {
        let replace = match why {
            Why::Login(device) => Some(
                Request::Replace {
                    user: user.to_string(),
                    device: device.to_string(),
                }
                .encode(),
            ),
            Why::Refresh | Why::Update => None,
        };
        let joined = Request::Joined {
            user: user.to_string(),
        }
        .encode();
        let asks: Vec<_> = others
            .iter()
            .map(|n| match &replace {
                Some(r) if !replaced.contains(n) => {
                    replaced.push(n.clone());
                    self.ask(n, r.clone())
                }
                _ => self.ask(n, joined.clone()),
            })
            .collect();
        let answers = join_all(asks).await;
        for (node, answer) in others.iter().zip(answers) {
            if let Err(e) = answer {
                debug!(%node, error = e.name(), "cluster: replace or joined not answered");
            }
        }
    }

    // ---- the directory ----

    /// The directory bucket, created on first use (or found, when another node created it).
    async fn store(&self) -> Result<kv::Store, ()> {
        let mut store = self.store.lock().await;
        if let Some(s) = store.as_ref() {
            return Ok(s.clone());
        }
        if !self.connected() {
            return Err(());
        }
        // The bucket's stream, as a KV bucket is laid out (`KV_<bucket>` over `$KV.<bucket>.>`,
        // one value per key, direct gets). Created as a stream rather than through
        // `create_key_value`, whose account query nats-server 2.9 answers in a shape the
        // client does not parse.
        let bucket = &self.cfg.bucket;
        let config = jetstream::stream::Config {
            name: format!("KV_{bucket}"),
            description: Some("tether: user -> nodes holding its devices".into()),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age: Duration::from_millis(self.cfg.directory_ttl_ms),
            storage: jetstream::stream::StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: jetstream::stream::DiscardPolicy::New,
            num_replicas: 1,
            ..Default::default()
        };
        let wait = self.forward_timeout();
        let created = match tokio::time::timeout(wait, self.js.get_or_create_stream(config)).await {
            Ok(Ok(_)) => match tokio::time::timeout(wait, self.js.get_key_value(bucket)).await {
                Ok(Ok(s)) => Some(s),
                Ok(Err(e)) => {
                    warn!(error = %e, %bucket, "cluster: directory bucket unavailable");
                    None
                }
                Err(_) => None,
            },
            Ok(Err(e)) => {
                warn!(error = %e, %bucket, "cluster: directory bucket cannot be created");
                None
            }
            Err(_) => None,
        };
        let Some(s) = created else {
            ClusterStats::inc(&self.stats.directory_errors);
            return Err(());
        };
        *store = Some(s.clone());
        Ok(s)
    }

    /// The bounds a directory entry read now is checked against.
    fn bounds(&self) -> Bounds {
        Bounds {
            now_ms: unix_ms(),
            max_ahead_ms: self
                .cfg
                .directory_ttl_ms
                .saturating_add(self.cfg.max_clock_skew_ms),
            max_nodes: self.cfg.directory_max_nodes,
        }
    }

    /// The user's entry as far as it is valid (see `directory.rs`), its revision (`None`: no
    /// entry yet), and whether anything stored was not valid (the next write repairs it).
    async fn read(&self, store: &kv::Store, key: &str) -> Result<(Entry, Option<u64>, bool), ()> {
        ClusterStats::inc(&self.stats.directory_reads);
        match tokio::time::timeout(self.forward_timeout(), store.entry(key)).await {
            Ok(Ok(Some(e))) => {
                let (mut entry, mut bad) = if e.operation == kv::Operation::Put {
                    match Entry::decode(&e.value, key, &self.keys) {
                        Some(entry) => (entry, false),
                        None => (Entry::default(), true),
                    }
                } else {
                    (Entry::default(), false)
                };
                bad |= entry.sanitize(self.bounds(), &self.cfg.node_id) > 0;
                if bad {
                    ClusterStats::inc(&self.stats.directory_invalid);
                }
                Ok((entry, Some(e.revision), bad))
            }
            Ok(Ok(None)) => Ok((Entry::default(), None, false)),
            Ok(Err(e)) => {
                debug!(error = %e, "cluster: directory read failed");
                ClusterStats::inc(&self.stats.directory_errors);
                Err(())
            }
            Err(_) => {
                ClusterStats::inc(&self.stats.directory_errors);
                Err(())
            }
        }
    }

    /// The other live nodes the directory names for `user`.
    async fn lookup(&self, user: &str) -> Result<Vec<String>, ()> {
        if !self.connected() {
            return Err(());
        }
        let store = self.store().await?;
        let (entry, _, _) = self.read(&store, &directory::key(user)).await?;
        let me = &self.cfg.node_id;
        Ok(entry
            .live_others(me, unix_ms())
            .map(str::to_string)
            .collect())
    }

    /// Writes whether this node holds `user` now (present with a fresh expiry, or absent),
    /// with compare-and-set against other nodes writing the same entry, and tells the user's
    /// home shard what the write found (`local.rs`). A login, or a write that adds this node
    /// where it was not live, first tells every other live node the entry names (rule 2); a
    /// write that takes this node out first takes its note away (rule 3). Each attempt reads
    /// and tells again: a base another write changed is never trusted.
    async fn write(&self, user: &str, why: Why<'_>) -> Result<(), ()> {
        let ticket = self.locals().ticket(user, self.mesh.cluster_epoch());
        let written = self.try_write(user, why, ticket).await;
        if written.is_err() {
            // This node's part may go unrefreshed: its note is not vouched for (rule 4).
            let mut locals = self.locals();
            let tell = locals.wrote(user, ticket, None);
            self.tell(&mut locals, user, tell, None);
        }
        written
    }

    /// [`Node::write`] without its failure's consequence.
    async fn try_write(&self, user: &str, why: Why<'_>, ticket: Ticket) -> Result<(), ()> {
        if !self.connected() {
            // The refresh pass after the reconnect writes it.
            return Err(());
        }
        let store = self.store().await?;
        let key = directory::key(user);
        let me = self.cfg.node_id.as_str();
        let wait = self.forward_timeout();
        if matches!(why, Why::Refresh) {
            // The entry named only this node when this node last wrote it: unless someone
            // wrote since (the revision no longer matches), the fresh value is just this node.
            let sole = self.locals().sole_revision(user);
            if let Some(rev) = sole {
                let now = unix_ms();
                let mut entry = Entry::default();
                entry.set(me, true, now.saturating_add(self.cfg.directory_ttl_ms), now);
                let value = Bytes::from(entry.encode(&key, &self.keys));
                if let Ok(Ok(new)) =
                    tokio::time::timeout(wait, store.update(&key, value, rev)).await
                {
                    ClusterStats::inc(&self.stats.directory_writes);
                    self.wrote(user, ticket, Some(new));
                    return Ok(());
                }
            }
        }
        let mut replaced = Vec::new();
        let mut dropped = false;
        for _ in 0..WRITE_TRIES {
            let (mut entry, revision, bad) = self.read(&store, &key).await?;
            let present = self.locals().contains(user);
            let now = unix_ms();
            let others: Vec<String> = entry.live_others(me, now).map(str::to_string).collect();
            let joining = present && !entry.holds(me, now);
            let leaving = !present && entry.nodes.contains_key(me);
            let expiry = now.saturating_add(self.cfg.directory_ttl_ms);
            // A stored value that was not valid is rewritten from what was.
            let changed = entry.set(me, present, expiry, now) || bad;
            entry.sanitize(self.bounds(), me);
            if !changed || (revision.is_none() && entry.nodes.is_empty()) {
                return Ok(());
            }
            if (joining || matches!(why, Why::Login(_))) && !others.is_empty() {
                self.tell_others(user, &others, why, &mut replaced).await;
            }
            if leaving && !dropped {
                self.not_alone(user).await;
                dropped = true;
            }
            let sole = present && entry.nodes.len() == 1;
            let value = Bytes::from(entry.encode(&key, &self.keys));
            let written = match revision {
                Some(rev) => tokio::time::timeout(wait, store.update(&key, value, rev))
                    .await
                    .map(|r| r.ok()),
                None => tokio::time::timeout(wait, store.create(&key, value))
                    .await
                    .map(|r| r.ok()),
            };
            match written {
                Ok(Some(new)) => {
                    ClusterStats::inc(&self.stats.directory_writes);
                    self.wrote(user, ticket, sole.then_some(new));
                    return Ok(());
                }
                // Another node wrote the entry since it was read: read it again.
                Ok(None) => continue,
                Err(_) => break,
            }
        }
        ClusterStats::inc(&self.stats.directory_errors);
        Err(())
    }

    /// Notes this node's write of `user`'s entry (`sole`: its revision, when it named this
    /// node alone) and tells the home shard what follows from it.
    fn wrote(&self, user: &str, ticket: Ticket, sole: Option<u64>) {
        let mut locals = self.locals();
        let tell = locals.wrote(user, ticket, sole);
        self.tell(&mut locals, user, tell, None);
    }

    /// Rewrites every local user's entry once per `refresh_ms` (and at once after a
    /// reconnect); sweeps acknowledgement waits that ran out.
    async fn refresh_loop(self: Arc<Self>) {
        let period = Duration::from_millis(self.cfg.refresh_ms);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = self.refresh_now.notified() => {}
            }
            self.sweep();
            if self.mesh.take_resync() {
                self.resync().await;
            }
            if !self.connected() {
                continue;
            }
            let started = Instant::now();
            let users = self.locals().names();
            let mut writes = JoinSet::new();
            for user in users {
                while writes.len() >= self.cfg.refresh_concurrency {
                    writes.join_next().await;
                }
                let node = Arc::clone(&self);
                writes.spawn(async move {
                    let _ = node.write(&user, Why::Refresh).await;
                });
            }
            while writes.join_next().await.is_some() {}
            *self.pass_started.lock().unwrap_or_else(|e| e.into_inner()) = started;
            ClusterStats::inc(&self.stats.refresh_passes);
        }
    }

    /// Voids every note while the last refresh pass that completed began more than 5/8 of
    /// the TTL ago (looked at every 1/16 of it, and only when a note was given since the last
    /// void). A note stands on this node's part of the entry being live, so that a node
    /// joining asks this one (`local.rs`, rule 2): every noted user was written since that
    /// pass began (a failed write drops its note), so its part is live until that start plus
    /// the TTL. When passes fall behind, no note outlives 11/16 of the TTL after the write
    /// behind it, which leaves the rest to clocks that disagree.
    async fn watch_refresh(self: Arc<Self>) {
        let ttl = Duration::from_millis(self.cfg.directory_ttl_ms);
        loop {
            tokio::time::sleep(ttl / 16).await;
            let since = self
                .pass_started
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .elapsed();
            let noted = self.stats.local_only_noted.load(Ordering::Relaxed);
            if since > ttl * 5 / 8 && noted != self.noted_at_void.load(Ordering::Relaxed) {
                self.void_notes();
            }
        }
    }

    /// Rebuilds the local user list from the shards (a login or logout event was dropped).
    async fn resync(&self) {
        let mut users = HashSet::new();
        for shard in 0..self.mesh.len() {
            let (reply, rx) = flume::bounded(1);
            let msg = MeshMsg::Control(Box::new(Control::Users { reply }));
            if self.mesh.post(shard, msg).is_err() {
                self.mesh.request_resync();
                return;
            }
            match tokio::time::timeout(SHARD_ANSWER, rx.recv_async()).await {
                Ok(Ok(list)) => users.extend(list),
                _ => {
                    self.mesh.request_resync();
                    return;
                }
            }
        }
        let gone = {
            let mut locals = self.locals();
            let gone = locals.rebuild(&users);
            self.stats
                .users
                .store(locals.len() as u64, Ordering::Relaxed);
            gone
        };
        for user in gone {
            let _ = self.write(&user, Why::Update).await;
        }
    }

    /// Drops acknowledgement waits older than [`ACK_WAIT`].
    fn sweep(&self) {
        let now = Instant::now();
        self.acks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, w| now.saturating_duration_since(w.since) < ACK_WAIT);
        self.waiting().sweep(now, ACK_WAIT);
    }

    /// Locks the pushes posted to this node's shards.
    fn waiting(&self) -> std::sync::MutexGuard<'_, Waiters<AckTo>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ---- pushes ----

    /// Fans a push out: this node's home shard and every other node the directory names, at
    /// once; then one result to the sender.
    async fn push(
        self: Arc<Self>,
        origin: Origin,
        user: String,
        payload: Bytes,
        want_ack: bool,
        sender: Option<Box<SendFrom>>,
    ) {
        ClusterStats::inc(&self.stats.pushes);
        let job = self.next_id();
        if want_ack {
            self.acks.lock().unwrap_or_else(|e| e.into_inner()).insert(
                job,
                AckWait {
                    origin: None,
                    early: false,
                    since: Instant::now(),
                },
            );
        }
        let status = if valid_user(&user) {
            let remote = self.remote_push(&user, &payload, want_ack, job, sender.as_deref());
            let ack = want_ack.then_some(AckTo::Job(job));
            let local = self.local_push(&user, payload.clone(), ack, sender.clone());
            let (local, mut parts) = tokio::join!(local, remote);
            parts.push(local);
            combine(&parts)
        } else {
            PushStatus::Refused(RefuseReason::BadTarget)
        };
        self.stats.outcome(status);
        self.answer(origin, status).await;
        if !want_ack {
            return;
        }
        let acked_early = {
            let mut acks = self.acks.lock().unwrap_or_else(|e| e.into_inner());
            match (status, acks.get_mut(&job)) {
                (PushStatus::Delivered(_), Some(w)) if w.early => {
                    acks.remove(&job);
                    true
                }
                (PushStatus::Delivered(_), Some(w)) => {
                    w.origin = Some(origin);
                    false
                }
                _ => {
                    acks.remove(&job);
                    false
                }
            }
        };
        if acked_early {
            self.answer(origin, PushStatus::Acked).await;
        }
    }

    /// This node's part: the push goes to the user's home shard with a cluster origin (`ack`:
    /// where its acknowledgement goes, when it asks for one).
    async fn local_push(
        &self,
        user: &str,
        payload: Bytes,
        ack: Option<AckTo>,
        sender: Option<Box<SendFrom>>,
    ) -> Part {
        let want_ack = ack.is_some();
        let (id, first) = self.waiting().wait(ack, Instant::now());
        let origin = Origin {
            shard: u16::MAX,
            kind: OriginKind::Cluster,
            key: 0,
            gen: 0,
            id,
        };
        let home = shard_for(user, self.mesh.len());
        let msg = MeshMsg::Control(Box::new(Control::Push(RoutedPush {
            origin,
            user: user.to_string(),
            payload,
            want_ack,
            from: sender,
        })));
        if self.mesh.post(home, msg).is_err() {
            self.waiting().forget(id);
            return Part::Status(PushStatus::Refused(RefuseReason::Overloaded));
        }
        match tokio::time::timeout(FIRST_RESULT_TIMEOUT, first.recv_async()).await {
            Ok(Ok(status)) => Part::Status(status),
            _ => {
                self.waiting().forget(id);
                Part::TimedOut
            }
        }
    }

    /// The other nodes' parts, asked in parallel.
    async fn remote_push(
        &self,
        user: &str,
        payload: &[u8],
        want_ack: bool,
        job: u64,
        sender: Option<&SendFrom>,
    ) -> Vec<Part> {
        let Ok(nodes) = self.lookup(user).await else {
            return vec![Part::Unavailable];
        };
        if nodes.is_empty() {
            return Vec::new();
        }
        let req = Request::push(user, payload, want_ack, &self.cfg.node_id, job, sender).encode();
        let asks = nodes.iter().map(|n| self.ask(n, req.clone()));
        let answers = join_all(asks).await;
        answers
            .into_iter()
            .map(|a| match a {
                Ok(reply) => match reply.to_status() {
                    Some(PushStatus::Acked) | None => {
                        ClusterStats::inc(&self.stats.forward_failed);
                        Part::Unavailable
                    }
                    Some(s) => Part::Status(s),
                },
                Err(AskError::Gone) => Part::Gone,
                Err(AskError::TimedOut) => Part::TimedOut,
                Err(AskError::Failed) => Part::Unavailable,
            })
            .collect()
    }

    /// Hands a result to the push's sender: the API's result channel, or the sender's shard.
    async fn answer(&self, origin: Origin, status: PushStatus) {
        match origin.kind {
            OriginKind::Api => {
                if !self.mesh.api_result(ApiResult {
                    id: origin.id,
                    status,
                }) {
                    ClusterStats::inc(&self.stats.results_lost);
                }
            }
            // The sender was told Accepted already; the outcome was counted where decided.
            OriginKind::Untold => {}
            // Upstream messages never take the cluster's push path.
            OriginKind::Upstream => ClusterStats::inc(&self.stats.results_lost),
            OriginKind::Backend | OriginKind::Send => {
                let mut msg = MeshMsg::Shard(ShardMsg::Result { origin, status });
                for _ in 0..RESULT_TRIES {
                    match self.mesh.post(usize::from(origin.shard), msg) {
                        Ok(()) => return,
                        Err(back) => msg = back,
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                ClusterStats::inc(&self.stats.results_lost);
            }
            OriginKind::Cluster => ClusterStats::inc(&self.stats.results_lost),
        }
    }

    /// Hands a refusal decided in [`Node::handle`] to the push's sender without a task: one
    /// try now, and a shard whose channel is full gets it from [`Node::answer_late`].
    fn answer_now(&self, origin: Origin, status: PushStatus) {
        match origin.kind {
            OriginKind::Backend | OriginKind::Send => {
                let msg = MeshMsg::Shard(ShardMsg::Result { origin, status });
                if self.mesh.post(usize::from(origin.shard), msg).is_err() {
                    let _ = self.late.send((origin, status));
                }
            }
            OriginKind::Api | OriginKind::Untold | OriginKind::Upstream | OriginKind::Cluster => {
                if self.late.send((origin, status)).is_err() {
                    ClusterStats::inc(&self.stats.results_lost);
                }
            }
        }
    }

    /// Refusals whose sender's shard had a full channel, handed over one after another (only
    /// an origin and a status each: no payload waits here).
    async fn answer_late(self: Arc<Self>, late: flume::Receiver<(Origin, PushStatus)>) {
        while let Ok((origin, status)) = late.recv_async().await {
            self.answer(origin, status).await;
        }
    }

    /// Results of pushes posted to this node's shards, to whoever waits for them.
    async fn dispatch(self: Arc<Self>, results: flume::Receiver<ApiResult>) {
        while let Ok(ApiResult { id, status }) = results.recv_async().await {
            let settled = self.waiting().settle(id, status);
            let Settled::Acked(ack) = settled else {
                continue;
            };
            match ack {
                AckTo::Job(job) => self.acked(job).await,
                AckTo::Remote { node, job } => {
                    let req = Request::Acked { job }.encode();
                    let subject = self.cfg.subject(&node);
                    let (headers, _) = self.sign(&node, &req);
                    ClusterStats::inc(&self.stats.forwards);
                    let sent = self
                        .client
                        .publish_with_headers(subject, headers, req.into());
                    if sent.await.is_err() {
                        ClusterStats::inc(&self.stats.forward_failed);
                    }
                }
            }
        }
    }

    /// A device acknowledged a push this node fanned out.
    async fn acked(&self, job: u64) {
        let origin = {
            let mut acks = self.acks.lock().unwrap_or_else(|e| e.into_inner());
            let Some(w) = acks.get_mut(&job) else {
                return;
            };
            match w.origin {
                Some(o) => {
                    acks.remove(&job);
                    o
                }
                None => {
                    w.early = true;
                    return;
                }
            }
        };
        self.answer(origin, PushStatus::Acked).await;
    }

    // ---- kick and presence ----

    /// Kicks on this node's home shard of the user.
    async fn local_kick(&self, kick: Kick) -> Option<u32> {
        let (reply, rx) = flume::bounded(1);
        let home = shard_for(&kick.user, self.mesh.len());
        self.ask_shard(home, Control::Kick { kick, reply }, rx)
            .await
    }

    /// Devices of `user` on this node.
    async fn local_presence(&self, user: &str) -> Option<u32> {
        let (reply, rx) = flume::bounded(1);
        let msg = Control::Presence {
            user: user.to_string(),
            reply,
        };
        let home = shard_for(user, self.mesh.len());
        self.ask_shard(home, msg, rx).await.map(|p| p.devices)
    }

    /// Posts `msg` to shard `home` and waits for its answer.
    async fn ask_shard<T>(&self, home: usize, msg: Control, rx: flume::Receiver<T>) -> Option<T> {
        self.mesh.post(home, MeshMsg::Control(Box::new(msg))).ok()?;
        tokio::time::timeout(SHARD_ANSWER, rx.recv_async())
            .await
            .ok()?
            .ok()
    }

    /// This node's count and every other node's, for a kick or presence question.
    async fn fan_count(
        &self,
        user: &str,
        local: impl std::future::Future<Output = Option<u32>>,
        req: Request,
    ) -> Fanned {
        let remote = async {
            let Ok(nodes) = self.lookup(user).await else {
                return (false, Vec::new());
            };
            let bytes = req.encode();
            let answers = join_all(nodes.iter().map(|n| self.ask(n, bytes.clone()))).await;
            let counts = nodes
                .into_iter()
                .zip(answers)
                .map(|(n, a)| {
                    let count = match a {
                        Ok(Reply::Count { n }) => Ok(n),
                        Ok(_) => Err("unavailable"),
                        Err(e) => Err(e.name()),
                    };
                    (n, count)
                })
                .collect();
            (true, counts)
        };
        let (local, (directory, nodes)) = tokio::join!(local, remote);
        Fanned {
            local,
            nodes,
            directory,
        }
    }

    // ---- talking to other nodes ----

    /// Signs a request to `node`: its headers and MAC.
    fn sign(&self, node: &str, body: &[u8]) -> (async_nats::HeaderMap, Tag) {
        let stamp = Stamp {
            from: self.cfg.node_id.clone(),
            time_ms: unix_ms(),
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
        };
        seal::sign_request(&self.keys, &stamp, node, body)
    }

    /// Sends a signed request to `node` and waits for its reply, which must be signed for it.
    async fn ask(&self, node: &str, req: Vec<u8>) -> Result<Reply, AskError> {
        if !self.connected() {
            ClusterStats::inc(&self.stats.forward_failed);
            return Err(AskError::Failed);
        }
        ClusterStats::inc(&self.stats.forwards);
        let subject = self.cfg.subject(node);
        let (headers, tag) = self.sign(node, &req);
        let sent = self
            .client
            .request_with_headers(subject, headers, req.into());
        let err = match tokio::time::timeout(self.forward_timeout(), sent).await {
            Ok(Ok(msg))
                if !seal::check_reply(&self.keys, &tag, msg.headers.as_ref(), &msg.payload) =>
            {
                ClusterStats::inc(&self.stats.replies_refused);
                self.log_refusal(node, "reply not signed for its request");
                AskError::Failed
            }
            Ok(Ok(msg)) => match Reply::decode(&msg.payload) {
                Ok(Reply::Error { message }) => {
                    debug!(%node, %message, "cluster: node answered an error");
                    AskError::Failed
                }
                Ok(reply) => return Ok(reply),
                Err(_) => AskError::Failed,
            },
            Ok(Err(e)) => match e.kind() {
                async_nats::RequestErrorKind::NoResponders => AskError::Gone,
                async_nats::RequestErrorKind::TimedOut => AskError::TimedOut,
                async_nats::RequestErrorKind::Other => AskError::Failed,
            },
            Err(_) => AskError::TimedOut,
        };
        ClusterStats::inc(match err {
            AskError::Gone => &self.stats.forward_gone,
            AskError::TimedOut => &self.stats.forward_timed_out,
            AskError::Failed => &self.stats.forward_failed,
        });
        Err(err)
    }

    /// A warning about a refused message, at most one per [`REFUSAL_LOG_MS`].
    fn log_refusal(&self, node: &str, why: &str) {
        let mut log = self.refusal_log.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(suppressed) = log.hit(unix_ms()) {
            warn!(
                %node,
                why,
                suppressed,
                "cluster: refused a message (is cluster.secrets the same on every node, and \
                 are their clocks within cluster.max_clock_skew_ms?)"
            );
        }
    }

    /// Serves this node's subject: every request is checked (`seal.rs`) and, with a permit,
    /// carried out in a task of its own.
    async fn serve(self: Arc<Self>) {
        let mut sub = loop {
            match self.client.subscribe(self.subject.clone()).await {
                Ok(s) => break s,
                Err(e) => {
                    warn!(error = %e, "cluster: cannot subscribe; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        while let Some(msg) = sub.next().await {
            ClusterStats::inc(&self.stats.served);
            let checked = self.guard.lock().unwrap_or_else(|e| e.into_inner()).check(
                msg.headers.as_ref(),
                &msg.payload,
                unix_ms(),
            );
            let (stamp, tag) = match checked {
                Ok(ok) => ok,
                Err(why) => {
                    self.refused(&msg, why).await;
                    continue;
                }
            };
            let req = Request::decode(&msg.payload);
            let Ok(permit) = Arc::clone(&self.served).try_acquire_owned() else {
                ClusterStats::inc(&self.stats.served_overloaded);
                if matches!(req, Ok(Request::Replace { .. } | Request::Joined { .. })) {
                    // A node joins a user's entry and this one cannot take its note away
                    // now: none is vouched for (`local.rs`, rule 5).
                    self.void_notes();
                }
                let reply = match req {
                    Ok(Request::Push { .. }) => {
                        Reply::status(PushStatus::Refused(RefuseReason::Overloaded))
                    }
                    _ => Reply::Error {
                        message: "overloaded".into(),
                    },
                };
                self.reply(&msg, &tag, reply).await;
                continue;
            };
            let node = Arc::clone(&self);
            tokio::spawn(async move {
                node.serve_one(msg, req, stamp, tag).await;
                drop(permit);
            });
        }
        warn!("cluster: the node's subscription ended");
    }

    /// A request that failed its check: counted, logged now and then, and answered with an
    /// unsigned error when it asks for a reply in an inbox (the sender, if it is a node with
    /// another secret, fails at once instead of waiting for its timeout). Nothing of it is
    /// carried out.
    async fn refused(&self, msg: &async_nats::Message, why: Refusal) {
        ClusterStats::inc(match why {
            Refusal::Unsigned => &self.stats.refused_unsigned,
            Refusal::BadMac => &self.stats.refused_bad_mac,
            Refusal::Stale => &self.stats.refused_stale,
            Refusal::Replay => &self.stats.refused_replay,
        });
        let claimed = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(seal::H_NODE))
            .map(|v| v.as_str())
            .filter(|n| ClusterConfig::valid_node(n))
            .unwrap_or("?");
        self.log_refusal(claimed, why.name());
        if let Some(to) = msg.reply.clone().filter(|r| r.starts_with(INBOX)) {
            let reply = Reply::Error {
                message: format!("refused: {}", why.name()),
            };
            let _ = self.client.publish(to, reply.encode().into()).await;
        }
    }

    /// Answers a request whose MAC is `tag`, signed for it, in its inbox.
    async fn reply(&self, msg: &async_nats::Message, tag: &Tag, reply: Reply) {
        if let Some(to) = msg.reply.clone().filter(|r| r.starts_with(INBOX)) {
            let body = reply.encode();
            let headers = seal::sign_reply(&self.keys, tag, &body);
            let _ = self
                .client
                .publish_with_headers(to, headers, body.into())
                .await;
        }
    }

    /// Carries out one checked request from another node and answers it (when it asks for an
    /// answer).
    async fn serve_one(
        self: Arc<Self>,
        msg: async_nats::Message,
        req: Result<Request, String>,
        stamp: Stamp,
        tag: Tag,
    ) {
        let reply = match req {
            Err(message) => {
                ClusterStats::inc(&self.stats.served_malformed);
                Reply::Error { message }
            }
            Ok(req) => match self.carry_out(req, &stamp.from).await {
                Some(r) => r,
                None => return,
            },
        };
        self.reply(&msg, &tag, reply).await;
    }

    /// One request from node `sender`; `None` when it needs no answer.
    async fn carry_out(&self, req: Request, sender: &str) -> Option<Reply> {
        let bad = |message: &str| {
            ClusterStats::inc(&self.stats.served_malformed);
            Some(Reply::Error {
                message: message.to_string(),
            })
        };
        match req {
            Request::Push {
                user,
                payload,
                want_ack,
                from,
                job,
                sender: send_from,
            } => {
                if from != sender {
                    // Acknowledgements go back to the signer, and nowhere else.
                    return bad("push from one node naming another");
                }
                if !valid_user(&user) {
                    return Some(Reply::status(PushStatus::Refused(RefuseReason::BadTarget)));
                }
                let Ok(payload) = base64::engine::general_purpose::STANDARD.decode(payload) else {
                    return bad("payload is not base64");
                };
                let ack = want_ack.then_some(AckTo::Remote { node: from, job });
                let payload = Bytes::from(payload);
                let part = self
                    .local_push(&user, payload, ack, send_from.map(Box::new))
                    .await;
                Some(Reply::status(match part {
                    Part::Status(s) => s,
                    _ => PushStatus::Refused(RefuseReason::TimedOut),
                }))
            }
            Request::Acked { job } => {
                self.acked(job).await;
                None
            }
            Request::Kick(kick) => match self.local_kick(kick).await {
                Some(n) => Some(Reply::Count { n }),
                None => bad("shard did not answer"),
            },
            Request::Replace { user, device } => {
                // The sender is about to write itself into the user's entry.
                self.not_alone(&user).await;
                let kick = Kick {
                    user,
                    device: Some(device),
                    code: CloseCode::Replaced,
                    may_reconnect: false,
                };
                match self.local_kick(kick).await {
                    Some(n) => Some(Reply::Count { n }),
                    None => bad("shard did not answer"),
                }
            }
            Request::Joined { user } => {
                self.not_alone(&user).await;
                Some(Reply::Count { n: 0 })
            }
            Request::Presence { user } => match self.local_presence(&user).await {
                Some(n) => Some(Reply::Count { n }),
                None => bad("shard did not answer"),
            },
        }
    }
}

/// Awaits every future, concurrently, and returns their outputs in order.
async fn join_all<F: std::future::Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in pinned.iter_mut().zip(out.iter_mut()) {
            if slot.is_some() {
                continue;
            }
            match f.as_mut().poll(cx) {
                std::task::Poll::Ready(v) => *slot = Some(v),
                std::task::Poll::Pending => pending = true,
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}
