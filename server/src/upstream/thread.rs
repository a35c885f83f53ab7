//! The `tether-upstream` thread: takes the shards' webhook and NATS messages, keeps each
//! connection's messages in order, sends them with a timeout, and hands every message's one
//! result back to its client's shard.
//!
//! One current-thread tokio runtime. Its loop, in this order of preference:
//!
//! 1. a message's delivery ended: make its [`Outcome`], count it, post it to the client's shard;
//! 2. every 10 ms while some results wait: post them again;
//! 3. a new message: through the [`Sequencer`] (refused `Overloaded` when it is full), and
//!    started when its connection has nothing in flight;
//! 4. once a second: stop if nobody else holds the mesh (the server is gone).
//!
//! **Exactly one result per message.** Every message taken is answered: a delivery that ends
//! (even by a panic, answered `TimedOut`), or a refusal. A result whose shard's channel is full
//! is kept and posted again every 10 ms, never dropped; only when the thread stops are the
//! results it still holds counted as lost. A message keeps its place in the sequencer until its
//! result is on its shard's channel, so the results waiting are bounded by
//! `upstream.max_in_flight` (and while that many wait, no new message is taken: the shards'
//! channel fills and they refuse `Overloaded` themselves).
//!
//! **Timeout.** A message's `upstream.timeout_ms` starts when the sequencer lets it go (its
//! connection's earlier message has its result); what happens inside it is the sink's:
//! `webhook.rs` and `nats.rs` say which refusal a deadline gives at each step.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tether_proto::RefuseReason;
use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{error, info, warn};

use super::nats::Nats;
use super::webhook::Webhook;
use super::{
    Answer, ConnKey, Outcome, Sequencer, Sink, UpstreamConfig, UpstreamJob, UpstreamOrigin,
    UpstreamStats,
};
use crate::core::ShardMsg;
use crate::mesh::{MeshMsg, MeshShared};
use crate::ratelog::RateLog;

/// How often results whose shard's channel was full are posted again.
const RETRY_EVERY: Duration = Duration::from_millis(10);
/// How often the thread looks whether the server is gone.
const ORPHAN_CHECK: Duration = Duration::from_secs(1);
/// Shortest time between two log lines about failing deliveries.
const LOG_EVERY_MS: u64 = 10_000;

/// Starts the `tether-upstream` thread for `cfg` (sink `webhook` or `nats`; NATS over
/// `nats`, the cluster's servers and credentials) and connects it to the shards' mesh. Returns at once;
/// NATS is reached in the background. Fails when the runtime or the thread cannot start, or
/// for a sink other than webhook or NATS, or a webhook URL or secret that cannot be sent.
pub fn spawn(
    cfg: UpstreamConfig,
    nats: crate::cluster::NatsServers,
    mesh: Arc<MeshShared>,
) -> std::io::Result<Arc<UpstreamStats>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let webhook = match cfg.sink {
        Sink::Webhook => Some(Webhook::new(&cfg)?),
        Sink::Nats => None,
        Sink::Off | Sink::Backends => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the upstream thread serves sink webhook or nats only",
            ))
        }
    };
    let (tx, rx) = flume::bounded(cfg.max_in_flight);
    let stats = Arc::new(UpstreamStats::default());
    let thread_stats = Arc::clone(&stats);
    let thread_mesh = Arc::clone(&mesh);
    std::thread::Builder::new()
        .name("tether-upstream".into())
        .spawn(move || {
            runtime.block_on(async move {
                let backend = match webhook {
                    Some(w) => Backend::Webhook(Box::new(w)),
                    None => Backend::nats(nats, &cfg, &thread_stats).await,
                };
                Runner::new(cfg, thread_mesh, thread_stats, backend)
                    .run(rx)
                    .await;
            });
        })?;
    // Only once the thread runs: a message is never queued where nobody will answer it.
    mesh.set_upstream(tx);
    Ok(stats)
}

/// Where messages go.
enum Backend {
    /// An HTTP POST each.
    Webhook(Box<Webhook>),
    /// A NATS request each.
    Nats(Nats),
    /// The NATS client could not start: every message is refused `NoBackend`.
    None,
}

impl Backend {
    /// The NATS client for `urls` (connecting in the background), or [`Backend::None`] when
    /// the client cannot use them.
    async fn nats(
        servers: crate::cluster::NatsServers,
        cfg: &UpstreamConfig,
        stats: &Arc<UpstreamStats>,
    ) -> Backend {
        match Nats::connect(servers, cfg.nats_subject.clone(), Arc::clone(stats)).await {
            Ok(n) => Backend::Nats(n),
            Err(e) => {
                error!(error = %e, "upstream: the NATS client could not start; every message is refused NoBackend");
                Backend::None
            }
        }
    }

    /// Delivers `job` and reads its answer, before `deadline`.
    async fn deliver(&self, job: &UpstreamJob, deadline: Instant, stats: &UpstreamStats) -> Answer {
        match self {
            Backend::Webhook(w) => w.deliver(job, deadline, stats).await,
            Backend::Nats(n) => n.deliver(job, deadline, stats).await,
            Backend::None => Answer::refused(RefuseReason::NoBackend),
        }
    }
}

/// A result whose shard's channel was full, waiting to be posted again.
struct Parked {
    /// The shard.
    shard: usize,
    /// The `MeshMsg::UpstreamResult`.
    msg: MeshMsg,
    /// The connection whose place in the sequencer it holds (`None`: a message refused before
    /// the sequencer took it).
    conn: Option<ConnKey>,
}

/// The thread's state.
struct Runner {
    /// `[upstream]`.
    cfg: UpstreamConfig,
    /// The shards.
    mesh: Arc<MeshShared>,
    /// Figures.
    stats: Arc<UpstreamStats>,
    /// The sink (shared with the delivery tasks).
    backend: Arc<Backend>,
    /// One message in flight per connection, the rest waiting in order.
    seq: Sequencer,
    /// Deliveries under way.
    tasks: JoinSet<Answer>,
    /// Each delivery's message: its result's address (which names its connection).
    running: HashMap<Id, UpstreamOrigin>,
    /// Results waiting for room in their shard's channel, oldest first.
    parked: VecDeque<Parked>,
    /// Failing deliveries are logged at most once per [`LOG_EVERY_MS`].
    log: RateLog,
    /// The thread's start, the clock of `log`.
    epoch: Instant,
}

impl Runner {
    fn new(
        cfg: UpstreamConfig,
        mesh: Arc<MeshShared>,
        stats: Arc<UpstreamStats>,
        backend: Backend,
    ) -> Runner {
        Runner {
            seq: Sequencer::new(cfg.max_in_flight),
            cfg,
            mesh,
            stats,
            backend: Arc::new(backend),
            tasks: JoinSet::new(),
            running: HashMap::new(),
            parked: VecDeque::new(),
            log: RateLog::new(LOG_EVERY_MS),
            epoch: Instant::now(),
        }
    }

    /// Serves `jobs` until the server is gone (or every sender is, and nothing is held).
    async fn run(mut self, jobs: flume::Receiver<UpstreamJob>) {
        let mut retry = tokio::time::interval(RETRY_EVERY);
        retry.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut orphan = tokio::time::interval(ORPHAN_CHECK);
        orphan.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut open = true;
        loop {
            let take = open && self.parked.len() < self.cfg.max_in_flight;
            tokio::select! {
                biased;
                Some(done) = self.tasks.join_next_with_id() => self.finish(done),
                _ = retry.tick(), if !self.parked.is_empty() => self.retry(),
                job = jobs.recv_async(), if take => match job {
                    Ok(job) => self.admit(job),
                    Err(_) => open = false,
                },
                _ = orphan.tick() => {
                    if Arc::strong_count(&self.mesh) == 1 {
                        self.stop("the server is gone");
                        return;
                    }
                    if !open && self.seq.held() == 0 && self.parked.is_empty() {
                        return;
                    }
                }
            }
            self.gauges();
        }
    }

    /// A new message from a shard.
    fn admit(&mut self, job: UpstreamJob) {
        match self.seq.admit(job) {
            Ok(Some(job)) => self.start(job),
            Ok(None) => {}
            Err(job) => {
                let outcome = Outcome::refused(RefuseReason::Overloaded);
                self.stats.outcome(outcome.status);
                self.post(job.origin, None, outcome);
            }
        }
    }

    /// Sends `job` (its connection has nothing else in flight).
    fn start(&mut self, job: UpstreamJob) {
        let deadline = Instant::now() + Duration::from_millis(self.cfg.timeout_ms);
        let origin = job.origin;
        let backend = Arc::clone(&self.backend);
        let stats = Arc::clone(&self.stats);
        let handle = self
            .tasks
            .spawn(async move { backend.deliver(&job, deadline, &stats).await });
        self.running.insert(handle.id(), origin);
    }

    /// A delivery ended.
    fn finish(&mut self, done: Result<(Id, Answer), JoinError>) {
        let (id, answer) = match done {
            Ok(pair) => pair,
            Err(e) => {
                // A panic inside the client: the request may have gone out.
                error!(error = %e, "upstream: a delivery failed");
                (e.id(), Answer::refused(RefuseReason::TimedOut))
            }
        };
        let Some(origin) = self.running.remove(&id) else {
            return;
        };
        let outcome = self.outcome(answer);
        self.stats.outcome(outcome.status);
        self.post(origin, Some(origin.conn), outcome);
    }

    /// What the client is told of `answer`.
    fn outcome(&mut self, answer: Answer) -> Outcome {
        match answer {
            Answer::Answered {
                accepted,
                reply,
                reply_lost,
            } => {
                let (outcome, too_long) =
                    Outcome::answered(accepted, reply, self.cfg.max_reply_bytes);
                if too_long || reply_lost {
                    UpstreamStats::inc(&self.stats.reply_dropped);
                }
                outcome
            }
            Answer::Refused { reason, why } => {
                if let Some(why) = why {
                    let now = self.epoch.elapsed().as_millis() as u64;
                    if let Some(suppressed) = self.log.hit(now) {
                        warn!(%why, ?reason, suppressed, "upstream: delivery failed");
                    }
                }
                Outcome::refused(reason)
            }
        }
    }

    /// Posts a result to its client's shard, or parks it when that shard's channel is full.
    /// `conn`: the connection whose place in the sequencer it holds, released once posted.
    fn post(&mut self, origin: UpstreamOrigin, conn: Option<ConnKey>, outcome: Outcome) {
        let shard = usize::from(origin.conn.shard);
        if shard >= self.mesh.len() {
            // Never from a shard of this server; answered nowhere, counted.
            UpstreamStats::inc(&self.stats.results_lost);
            self.release(conn);
            return;
        }
        let msg = MeshMsg::Shard(ShardMsg::UpstreamResult {
            origin,
            outcome: Box::new(outcome),
        });
        match self.mesh.post(shard, msg) {
            Ok(()) => self.release(conn),
            Err(msg) => {
                UpstreamStats::inc(&self.stats.results_retried);
                self.parked.push_back(Parked { shard, msg, conn });
            }
        }
    }

    /// A connection's result is on its way: its next message may go.
    fn release(&mut self, conn: Option<ConnKey>) {
        if let Some(next) = conn.and_then(|c| self.seq.done(c)) {
            self.start(next);
        }
    }

    /// Posts the parked results again, oldest first; a shard found full keeps the rest of its
    /// results parked, in order.
    fn retry(&mut self) {
        let mut full = vec![false; self.mesh.len()];
        for _ in 0..self.parked.len() {
            let Some(p) = self.parked.pop_front() else {
                break;
            };
            if full[p.shard] {
                self.parked.push_back(p);
                continue;
            }
            match self.mesh.post(p.shard, p.msg) {
                Ok(()) => self.release(p.conn),
                Err(msg) => {
                    full[p.shard] = true;
                    self.parked.push_back(Parked { msg, ..p });
                }
            }
        }
    }

    /// Levels for `/metrics`.
    fn gauges(&self) {
        let in_flight = self.tasks.len() as u64;
        self.stats.in_flight.store(in_flight, Ordering::Relaxed);
        let parked_held = self.parked.iter().filter(|p| p.conn.is_some()).count() as u64;
        let waiting = (self.seq.held() as u64).saturating_sub(in_flight + parked_held);
        self.stats.waiting.store(waiting, Ordering::Relaxed);
    }

    /// The thread stops: every result it still holds is counted lost.
    fn stop(&mut self, why: &str) {
        let unheld = self.parked.iter().filter(|p| p.conn.is_none()).count();
        let lost = (self.seq.held() + unheld) as u64;
        self.stats.results_lost.fetch_add(lost, Ordering::Relaxed);
        self.tasks.abort_all();
        info!(why, lost, "upstream: thread stopping");
    }
}
