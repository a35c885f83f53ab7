//! The shard's socket-free core: every decision about a shard's connections, and no system call.
//!
//! [`Core`] is fed what happened ([`Core::open`], [`Core::on_bytes`], [`Core::on_hangup`],
//! [`Core::on_sent`], [`Core::tick`], [`Core::on_mesh`], [`Core::adopt`], the control plane's
//! requests, [`Core::on_undelivered`]) and emits what must happen as [`Command`]s (send these
//! bytes, receive, close, hand over to shard *k*, post this message), which the shard's driver
//! (`shard.rs`) carries out on its io_uring and the mesh. It holds no file descriptor, channel
//! or clock: a connection is a [`ConnId`] (slab key and generation), the driver keeps the
//! descriptor that goes with it, and time comes in as [`Now`]. So the state benchmark
//! (`server/benches/state.rs`) and the server run the same code path, and the whole core, the
//! drain included, can be tested without sockets on a virtual clock (`server/tests/state.rs`;
//! `server/tests/sans_io.rs` keeps it so).
//!
//! Calling order, per input: call one `on_*` method, then drain [`Core::poll_command`] until
//! `None` and carry out each command in order before the next input. Carrying out a command
//! never calls back into the core: what could not be carried out (a [`Post`] whose receiver's
//! channel was full, a hand-over the home shard did not take, a send to a connection that is
//! gone) is reported afterwards, as an input of its own. After a batch of inputs call
//! [`Core::end_batch`].
//!
//! The parts, one job each:
//!
//! | file | job |
//! |---|---|
//! | `conns.rs` | the slab of connections and the timing wheel (connections and timers) |
//! | `input.rs` | bytes in: partial frames, decoding, hang-ups, receive re-arming |
//! | `events.rs` | a session's events: login, pushes, acks, reports, closes |
//! | `output.rs` | bytes out: the shard's encode arena, per-connection queues, `Send` and `Close` |
//! | `login.rs` | authenticated logins: registration, hand-over to the home shard, adoption, priors |
//! | `delivery.rs` | pushes: routing, fan-out, results and acknowledgements |
//! | `upstream.rs` | upstream messages: client to backend, in flight, results |
//! | `devices.rs` | device names of main connections, each stored once |
//! | `lifecycle.rs` | ticks, the drain's timeline, the end of a batch |
//! | `msg.rs` | what the core takes in and posts, as plain data |
//! | `admit.rs` | admission: caps per address, accept and login rates, PROXY headers |
//! | `control.rs` | control-plane requests (answered by return value), new secrets |

mod acks;
pub mod admission;
mod admit;
mod bans;
mod conn;
mod conns;
mod control;
mod delivery;
mod devices;
mod events;
mod input;
mod lifecycle;
mod login;
pub mod msg;
mod output;
pub mod sim;
mod tokens;
mod upstream;
mod users;
pub mod wheel;

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use tether_proto::heartbeat::{PriorConfig, PriorTable};
use tether_proto::session::{ServerSession, SessionConfig};
use tether_proto::token::Authenticate;
use tether_proto::Millis;

pub use conn::{flag, Conn, ConnExt, Kind, NOT_ARMED};
pub use conns::GEN_MASK;
pub use devices::{DeviceId, Devices};
pub use input::Refusal;
pub use msg::{ConnId, Post, ShardMsg, Undelivered};
pub use upstream::UpstreamRules;
pub use users::ClusterEpoch;

use crate::counters::Counters;
use crate::histogram::Histogram;
use acks::AckTable;
use conns::Conns;
use output::Outbound;
use users::UserIndex;

/// What the core asks its driver to do. Commands for one connection are carried out in the
/// order they were emitted.
#[derive(Debug)]
pub enum Command {
    /// Arm a receive on the connection's socket: a multishot one when `multishot` (logged in
    /// here), else a one-shot one (not logged in: the connection may still move). Report bytes
    /// with [`Core::on_bytes`], end of stream or errors with [`Core::on_hangup`], and a
    /// receive that ended otherwise (no buffer) with [`Core::on_recv_ended`].
    Recv {
        /// The connection.
        conn: ConnId,
        /// Multishot or one-shot.
        multishot: bool,
    },
    /// Write `bytes` to the socket, all of them (continue a short write), then report with
    /// [`Core::on_sent`]. At most one `Send` per connection is outstanding.
    Send {
        /// The connection.
        conn: ConnId,
        /// The encoded frames; the memory stays valid until the send completes.
        bytes: Bytes,
    },
    /// Stop receiving and close the socket. No `Send` is outstanding for it. The connection is
    /// gone from the core.
    Close {
        /// The connection.
        conn: ConnId,
    },
    /// Cancel the connection's receive: it used its share of the batch. A `Recv` follows when
    /// it may read again.
    Pause {
        /// The connection.
        conn: ConnId,
    },
    /// Like `Close`, but a `Send` is still outstanding: cancel it (its completion will be
    /// reported and ignored). The connection is gone from the core.
    Abort {
        /// The connection.
        conn: ConnId,
    },
    /// The connection logged in as a client whose home is shard `to`: send the socket there
    /// with `transfer`. No receive or send is armed for it. The connection is gone from this
    /// core; if the mesh refuses it, report [`Core::on_handover_refused`] and close it after
    /// writing the bytes that returns.
    HandOver {
        /// The connection.
        conn: ConnId,
        /// The home shard.
        to: usize,
        /// Its session and what it brings along.
        transfer: Box<Transfer>,
    },
    /// The connection's input is to be handled at once, never gathered with others
    /// (`server.batch_wait_us`): a backend, whose pushes carry their own latency and whose
    /// answers other peers wait for. While the shard holds one, its waits do not gather.
    /// Given once, at its login; it ends with the connection.
    Prompt {
        /// The connection.
        conn: ConnId,
    },
    /// Post a message to another shard or thread. When it cannot be posted, give it back
    /// with [`Core::on_undelivered`].
    Post(Post),
}

/// A logged-in connection's state on its way to its home shard (everything but the socket).
#[derive(Debug)]
pub struct Transfer {
    /// The session, authenticated and waiting for `accept`.
    pub session: ServerSession,
    /// The login's user id.
    pub user: String,
    /// The login's device id.
    pub device: String,
    /// The login's network key (to look up a prior for `LoginOk`).
    pub network_key: String,
    /// Bytes read after the `Login` frame, not yet decoded.
    pub rest: Bytes,
    /// The source address's admission key: the connection counts against it on its new shard.
    pub peer: crate::core::admission::AddrKey,
}

/// A shard's latency histograms, recorded with plain integers and published by the driver.
#[derive(Clone, Debug, Default)]
pub struct Latencies {
    /// Per Ping: the batch that read it, from its first completion to its last command (an
    /// upper bound on the time from the Ping's receive completion to its Pong being queued).
    pub ping: Histogram,
    /// Per push on its home shard: from routing to its result (every device's bytes handed to
    /// the socket, or failed).
    pub push: Histogram,
}

/// The clock as the shard sees it for one batch of work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Monotonic milliseconds (deadlines, the wheel).
    pub ms: Millis,
    /// Monotonic microseconds on the same clock as `ms` (latency histograms only).
    pub us: u64,
    /// Wall-clock seconds since the Unix epoch (token expiry only).
    pub unix: u64,
}

/// The settings a shard needs, taken from the server configuration.
#[derive(Clone, Debug)]
pub struct ShardConfig {
    /// The session rules (login deadline, leases).
    pub session: SessionConfig,
    /// Largest frame body read or written once logged in.
    pub max_frame: usize,
    /// Largest frame body read before login (a `Login` needs far less than `max_frame`; a
    /// connection that has proved nothing may not make the shard hold more).
    pub max_login_frame: usize,
    /// Most connections this shard holds.
    pub max_connections: usize,
    /// Bound on a connection's unsent bytes.
    pub max_queue_bytes: usize,
    /// Bound on the bytes of all partial frames and outbound queues of the shard together;
    /// a connection that would pass it is closed with `Overloaded`.
    pub max_buffered_bytes: usize,
    /// A connection whose unsent bytes made no progress for this long is closed.
    pub write_timeout_ms: u64,
    /// How long a finished connection may take to send its last frames before it is cut.
    pub linger_ms: u64,
    /// Timing-wheel granularity.
    pub tick_ms: u64,
    /// Sent in `LoginOk`; changes at every start.
    pub server_epoch: u64,
    /// Most pushes waiting for an acknowledgement at once.
    pub max_ack_waiting: usize,
    /// How long a push waits for its acknowledgement.
    pub ack_timeout_ms: u64,
    /// Most results parked for a full mesh channel; past it results are counted as lost to
    /// an overloaded mesh (never silently).
    pub max_retry: usize,
    /// When a reload withdraws a secret, its connections end this many seconds later unless
    /// they refresh their token (`auth.revoked_grace_s`).
    pub revoked_grace_s: u32,
    /// Parameters of the learned-interval prior table.
    pub priors: PriorConfig,
    /// Frames one connection may have handled per batch before it waits for the next one.
    pub frame_budget: u16,
    /// Frames a client connection may send per second before it is closed (0: no limit).
    pub client_frame_rate: u16,
    /// Pushes one backend connection may have waiting for their results; past it a push is
    /// refused `RateLimited` (0: no limit).
    pub backend_max_in_flight: u32,
    /// Where clients' upstream messages go and their bounds (`[upstream]`).
    pub upstream: UpstreamRules,
    /// What clients may send each other (`[send]`).
    pub send: crate::upstream::SendConfig,
    /// In a cluster, the cluster epoch its thread moves on (`None` for a lone node): pushes
    /// without a local-only note of the current epoch go to the cluster thread, which fans
    /// them out, and logins and logouts are told to it.
    pub cluster: Option<users::ClusterEpoch>,
}

/// Whether the connection a call was about still lives on this shard afterwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// It is still here.
    Alive,
    /// It was closed or moved to another shard.
    Gone,
}

/// One shard's core. See the [module documentation](self).
pub struct Core {
    /// Settings.
    cfg: ShardConfig,
    /// Checks login tokens.
    auth: Box<dyn Authenticate>,
    /// The secrets `auth` takes, once a reload named them (`None`: every connection's secret
    /// is in use): a connection handed over from a shard that had not yet taken the reload
    /// is checked against them when it arrives.
    live_keys: Option<Vec<tether_proto::token::KeyId>>,
    /// The connections and their timers.
    conns: Conns,
    /// Logged-in users → their main connections.
    users: UserIndex,
    /// Device names of the main connections.
    devices: Devices,
    /// Upstream backends of every shard, and deliveries to this shard's waiting for answers.
    upstream: upstream::UpstreamTable,
    /// What happened, counted.
    counters: Counters,
    /// Ping handling and push delivery times (see [`Latencies`]).
    latencies: Latencies,
    /// This shard's index.
    me: usize,
    /// How many shards the server runs.
    shards: usize,
    /// Pushes waiting for an acknowledgement.
    acks: AckTable,
    /// Learned heartbeat intervals per network, for `LoginOk.prior_ms`.
    priors: PriorTable,
    /// Results whose target channel was full, posted again after the batch (bounded).
    retry: VecDeque<(usize, ShardMsg)>,
    /// Encoded bytes and commands on their way to the driver.
    out: Outbound,
    /// The shard's read buffer: whole frames are decoded from it.
    rbuf: BytesMut,
    /// Keys of connections that did work in the current batch (their `work` is reset at its
    /// end).
    worked: Vec<u32>,
    /// Keys of connections that sent frames in the current one-second window of
    /// `client_frame_rate` (their `rate_work` is reset when it ends), and when it ends.
    rate_worked: Vec<u32>,
    rate_window_end: Millis,
    /// Connections paused for the rest of the batch.
    paused: Vec<ConnId>,
    /// Connections whose send was emitted in this batch ([`flag::FRESH`]).
    fresh: Vec<ConnId>,
    /// NetReports received this tick, shared with the other shards at the tick.
    reports: Vec<(tether_proto::heartbeat::NetworkId, u64, u32)>,
    /// Connection keys being fanned out to, reused between pushes.
    scratch: Vec<u32>,
    /// Keys the wheel fired, reused between ticks.
    fired: Vec<u32>,
    /// Pushes written to device connections whose bytes have not all left yet: their result
    /// is decided when the last send completes or fails.
    pending: std::collections::HashMap<u64, delivery::PendingPush>,
    /// Next server push id.
    next_push_id: u64,
    /// Next session id (the shard index is in the top 16 bits).
    next_session: u64,
    /// Set just before a connection is cut for being slow (queue overflow, write timeout,
    /// linger): its unsent pushes are then refused as `SlowConsumer`, not `Offline`.
    cut_slow: bool,
    /// Caps per source address, accept and login rates, bans (`admission.rs`).
    admission: crate::core::admission::Admission,
    /// The (address, user) pair of the `Login` being handled, while its session decides
    /// (see `admit.rs`).
    login_pair: Option<crate::core::bans::PairKey>,
    /// Bytes held in all connections' partial frames and outbound queues.
    buffered: usize,
    /// The time of the latest input, for decisions made where no `now` is passed in.
    clock: Now,
    /// Set by [`Core::begin_drain`]: every open session got its GoAway.
    draining: bool,
    /// Where the drain is (`lifecycle.rs`).
    drain: lifecycle::Drain,
    /// The ping counter at the last [`Core::record_batch`].
    pings_recorded: u64,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("shard", &self.me)
            .field("connections", &self.conns.len())
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

impl Core {
    /// An empty shard `me` of `shards` whose clock reads `now`.
    pub fn new(
        cfg: ShardConfig,
        auth: Box<dyn Authenticate>,
        me: usize,
        shards: usize,
        now: Millis,
    ) -> Core {
        let next_session = (me as u64) << 48;
        Core {
            conns: Conns::new(cfg.tick_ms, now),
            acks: AckTable::new(cfg.max_ack_waiting, cfg.ack_timeout_ms),
            priors: PriorTable::new(cfg.priors.clone()),
            cfg,
            auth,
            live_keys: None,
            users: UserIndex::default(),
            devices: Devices::default(),
            upstream: Default::default(),
            counters: Counters::default(),
            latencies: Latencies::default(),
            me,
            shards: shards.max(1),
            retry: VecDeque::new(),
            out: Outbound::default(),
            rbuf: BytesMut::new(),
            worked: Vec::new(),
            rate_worked: Vec::new(),
            rate_window_end: now + 1000,
            paused: Vec::new(),
            fresh: Vec::new(),
            reports: Vec::new(),
            scratch: Vec::new(),
            fired: Vec::new(),
            pending: std::collections::HashMap::new(),
            next_push_id: 1,
            next_session,
            cut_slow: false,
            buffered: 0,
            admission: Default::default(),
            login_pair: None,
            clock: Now {
                ms: now,
                us: now * 1000,
                unix: 0,
            },
            draining: false,
            drain: lifecycle::Drain::No,
            pings_recorded: 0,
        }
    }

    /// Pre-sizes the slab and the wheel for `n` connections (benchmarks, large deployments).
    pub fn reserve(&mut self, n: usize) {
        self.conns.reserve(n);
    }

    /// Bytes held in partial frames and outbound queues (the shard's buffer budget in use).
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Connections held (including those finishing their last send).
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Connections by state: not logged in, client, probe, backend.
    pub fn by_kind(&self) -> [usize; 4] {
        self.conns.kinds()
    }

    /// Users with at least one main connection here.
    pub fn users(&self) -> usize {
        self.users.len()
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The shard's latency histograms.
    pub fn latencies(&self) -> &Latencies {
        &self.latencies
    }

    /// Pings read since the last [`Core::record_batch`].
    pub fn batch_pings(&self) -> u64 {
        self.counters.get(crate::counters::Counter::Pings) - self.pings_recorded
    }

    /// Records a batch that took `us` microseconds from its first completion to its last
    /// command: every Ping it read ([`Core::batch_pings`]) waited at most that long for its
    /// Pong to be queued.
    pub fn record_batch(&mut self, us: u64) {
        let pings = self.batch_pings();
        self.latencies.ping.record(us, pings);
        self.pings_recorded += pings;
    }

    /// Whether [`Core::begin_drain`] was called.
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// When the wheel next needs a [`Core::tick`], if ever.
    pub fn next_expiry(&self) -> Option<Millis> {
        self.conns.next_expiry()
    }

    /// The next command for the driver, oldest first.
    pub fn poll_command(&mut self) -> Option<Command> {
        self.out.commands.pop_front()
    }

    /// Bytes of one connection's slab entry (the fixed per-connection cost in the shard).
    pub const fn conn_bytes() -> usize {
        std::mem::size_of::<Conn>()
    }

    /// Bytes of a connection's buffer extension, allocated only while a partial frame or
    /// unsent bytes wait (plus the buffers' contents).
    pub const fn ext_bytes() -> usize {
        std::mem::size_of::<ConnExt>()
    }
}
