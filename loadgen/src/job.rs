//! What the parent process tells a worker process, and what the worker reports back.
//!
//! The parent re-executes itself as `tether-loadgen worker`, writes one [`Job`] as a JSON line
//! on the worker's stdin, then [`Command`] lines as the run moves from phase to phase. The
//! worker writes [`WorkerMsg`] JSON lines on its stdout. stderr is left to the terminal.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::stats::{HistData, LoadCounters};
use crate::tls::TlsJob;
use crate::wire::Protocol;
use crate::ws::WsJob;

/// Which scenario a run plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Open and log in N connections, hold them, close.
    Connect,
    /// Hold N logged-in connections heartbeating.
    Idle,
    /// A backend pushes to random online users.
    Push,
    /// Users send messages to random other users.
    Send,
    /// Connections are closed and reopened at a rate.
    Churn,
    /// Clients send messages to the app's backend, a sink inside the loadgen.
    Upstream,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Connect => "connect",
            Scenario::Idle => "idle",
            Scenario::Push => "push",
            Scenario::Send => "send",
            Scenario::Churn => "churn",
            Scenario::Upstream => "upstream",
        }
    }
}

/// How the heartbeats of the idle scenario are timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// Every connection pings every interval, its first ping at a random point of the first
    /// interval: a steady trickle, as real clients behave.
    Spread,
    /// During the load phase every connection pings at once, then the worker waits for every
    /// answer before the next round; no pings otherwise. The server's cost per heartbeat when
    /// heartbeats come in bulk.
    Burst,
}

impl Shape {
    pub fn name(self) -> &'static str {
        match self {
            Shape::Spread => "spread",
            Shape::Burst => "burst",
        }
    }
}

/// One worker's share of a run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Job {
    /// Index of this worker, 0-based (used to make ids unique across workers).
    pub worker: u32,
    /// The scenario to play.
    pub scenario: Scenario,
    /// The protocol the server speaks.
    pub protocol: Protocol,
    /// How heartbeats are timed.
    pub shape: Shape,
    /// Burst shape: rounds of pings the load phase plays (it ends after them, or at its
    /// duration if that comes first).
    pub rounds: u32,
    /// Servers to spread connections over: user i connects to `servers[i % len]`.
    pub servers: Vec<SocketAddr>,
    /// Source addresses to bind (user i binds `sources[i % len]`); empty: the kernel chooses.
    pub sources: Vec<Ipv4Addr>,
    /// First user index this worker owns.
    pub first_user: u32,
    /// How many users (client connections) this worker owns.
    pub users: u32,
    /// Users in the whole run (targets of pushes and sends are drawn from all of them).
    pub total_users: u32,
    /// User ids are `{user_prefix}{index}`.
    pub user_prefix: String,
    /// Device id of every client connection.
    pub device: String,
    /// Secret that signs the client login tokens (one of the server's `auth.secrets`).
    pub secret: String,
    /// Secret that signs the backend login token (one of the server's
    /// `auth.backend_secrets`).
    pub backend_secret: String,
    /// Lifetime of minted tokens, seconds.
    pub token_ttl_s: u64,
    /// Service name of the backend connection (push scenario).
    pub backend_service: String,
    /// Upstream scenario: backend sink connections this worker holds (0 or more; the run's
    /// `--backends` are spread over the workers), named `{backend_service}-sink-{k}`.
    #[serde(default)]
    pub sinks: u32,
    /// This worker's share of the connect rate, connections per second.
    pub connect_rate: f64,
    /// Heartbeat interval and lease announced in every ping, milliseconds.
    pub interval_ms: u32,
    /// A connect or login not finished after this long is abandoned, milliseconds.
    pub connect_timeout_ms: u64,
    /// How long to wait for replies still in flight when the load phase ends, milliseconds.
    pub drain_ms: u64,
    /// This worker's share of the load rate (pushes, sends, upstream messages or churned
    /// connections per second).
    pub load_rate: f64,
    /// Size of push and send payloads in bytes (at least the 12-byte timestamp header).
    pub payload: usize,
    /// Speak TLS, with these roots and server name; `None`: plaintext.
    #[serde(default)]
    pub tls: Option<TlsJob>,
    /// Speak WebSocket (over TLS when `tls` is set) on this path; `None`: the protocol's
    /// bytes straight on the stream.
    #[serde(default)]
    pub ws: Option<WsJob>,
    /// Largest frame body accepted from the server.
    pub max_frame: usize,
    /// Most pushes or sends waiting for their result at once; past it the load is skipped
    /// and counted rather than queued without bound.
    pub max_inflight: usize,
    /// Reconnect client connections that end (see `--reconnect`).
    #[serde(default)]
    pub reconnect: bool,
}

/// Parent → worker, after the job.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Command {
    /// Start the scenario's load for this long, then report [`WorkerMsg::LoadDone`].
    Load { duration_ms: u64 },
    /// Close everything and report [`WorkerMsg::Final`].
    Stop,
}

/// Worker → parent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum WorkerMsg {
    /// Periodic, cumulative progress.
    Progress(Progress),
    /// Every connection of the ramp finished connecting, successfully or not.
    Ramped,
    /// The load phase ended; what happened during it.
    LoadDone(LoadCounters),
    /// Everything the worker measured.
    Final(Box<WorkerReport>),
}

/// Cumulative counts sent every few hundred milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Progress {
    /// Connection attempts started.
    pub attempted: u64,
    /// Connections logged in now.
    pub online: u64,
    /// Attempts and connections that ended in an error.
    pub failed: u64,
    /// Pongs received.
    pub pongs: u64,
    /// Pushes or sends received by clients, and upstream messages received by sinks.
    pub delivered: u64,
    /// CPU time (user + system) the worker used since the last report over the wall time, %
    /// of one core: near 100 the worker is the bottleneck.
    pub cpu_pct: f64,
}

/// Final report of one worker.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WorkerReport {
    /// Latency histograms by name, in microseconds.
    pub hists: BTreeMap<String, HistData>,
    /// Errors by kind.
    pub errors: BTreeMap<String, u64>,
    /// Outcomes and events by kind (push statuses, close codes received, ...).
    pub events: BTreeMap<String, u64>,
    /// Counts over the whole run.
    pub totals: LoadCounters,
    /// Most connections logged in at once.
    pub peak_online: u64,
    /// CPU time of the worker, user mode, microseconds.
    pub cpu_user_us: u64,
    /// CPU time of the worker, kernel mode, microseconds.
    pub cpu_system_us: u64,
    /// Wall time from job start to stop, microseconds.
    pub wall_us: u64,
    /// Highest CPU share of one core in any progress interval, %.
    pub max_cpu_pct: f64,
    /// The open-files soft limit the worker got.
    pub nofile: u64,
}
