//! Per-shard event counters: every push outcome and every close reason is counted here.
//!
//! A shard increments plain integers (no atomics on the connection path); the shard driver
//! copies them into [`Published`] atomics once per tick for the metrics surface. Each counter
//! is declared once, in the table below, with everything `/api/stats` and `/metrics` show of
//! it: its name, its metric family and labels, and its help.

use std::sync::atomic::{AtomicU64, Ordering};

use tether_proto::{CloseCode, PushStatus, RefuseReason, UpstreamStatus};

use crate::histogram::PublishedHistogram;

/// Where `/metrics` shows a counter: a family (`tether_<family>_total`), the labels it adds
/// besides `shard`, and the family's help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Metric {
    /// Family name, without `tether_` and `_total`.
    pub family: &'static str,
    /// The family's `# HELP`.
    pub help: &'static str,
    /// Labels besides `shard`, in the order they are written.
    pub labels: &'static [(&'static str, &'static str)],
}

/// A family several counters share, told apart by their labels.
struct Family {
    /// Family name, without `tether_` and `_total`.
    name: &'static str,
    /// Its `# HELP`.
    help: &'static str,
}

const LOGINS: Family = Family {
    name: "logins",
    help: "Successful logins by kind",
};
const HANDOVERS: Family = Family {
    name: "handovers",
    help: "Connections moved to their home shard, by direction",
};
const CLOSES: Family = Family {
    name: "closes",
    help: "Connections closed by reason",
};
const PUSH_RESULTS: Family = Family {
    name: "push_results",
    help: "Push outcomes, counted where decided (acked follows delivered)",
};
const UPSTREAM_RESULTS: Family = Family {
    name: "upstream_results",
    help: "Upstream messages' results, counted on the client's shard as they are written",
};
const MESH_REFUSALS: Family = Family {
    name: "mesh_refusals",
    help: "Messages refused because a shard's mesh channel was full",
};
const IO_BYTES: Family = Family {
    name: "io_bytes",
    help: "Socket bytes by direction",
};

/// Declares every counter once, a row each:
///
/// `Variant => "name" [as "family"] [in FAMILY { label = "value", .. }], "help";`
///
/// `name` is the counter's key in `/api/stats`. On `/metrics` a counter is its own family,
/// named `name` (or `family` after `as`) and described by `help`; or, after `in`, one of
/// the families above with its labels, `help` then only documenting the variant.
macro_rules! counters {
    (@metric $name:literal, $help:literal) => {
        Metric { family: $name, help: $help, labels: &[] }
    };
    (@metric $name:literal, $help:literal, as $family:literal) => {
        Metric { family: $family, help: $help, labels: &[] }
    };
    (@metric $name:literal, $help:literal, in $family:ident { $($label:ident = $value:literal),+ }) => {
        Metric {
            family: $family.name,
            help: $family.help,
            labels: &[$((stringify!($label), $value)),+],
        }
    };
    ($(
        $variant:ident => $name:literal
            $(as $as:literal)?
            $(in $family:ident { $($label:ident = $value:literal),+ })?,
            $help:literal;
    )*) => {
        /// What a shard counts.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(usize)]
        pub enum Counter { $(#[doc = $help] $variant,)* }

        impl Counter {
            /// Every counter, in declaration order.
            pub const ALL: &'static [Counter] = &[$(Counter::$variant,)*];

            /// Its key in `/api/stats`.
            pub const fn name(self) -> &'static str {
                match self { $(Counter::$variant => $name,)* }
            }

            /// Where `/metrics` shows it.
            pub const fn metric(self) -> Metric {
                match self {
                    $(Counter::$variant => counters!(
                        @metric $name, $help
                        $(, as $as)?
                        $(, in $family { $($label = $value),+ })?
                    ),)*
                }
            }
        }
    };
}

counters! {
    Accepted => "accepted", "Connections accepted";
    RefusedAtAccept => "accept_refused", "Connections closed at accept (max_connections or draining)";
    RefusedDescriptors => "refused_descriptors", "connections refused through the reserve descriptor: the process was out of descriptors";
    RefusedRingTable => "refused_ring_table", "connections refused with a back-off because the shard's io_uring file table (its direct descriptors: one per connection) was full, at accept or when moving to their home shard";
    RefusedAcceptRate => "refused_accept_rate", "connections refused: shard-wide accept rate (limits.accept_rate)";
    RefusedAddressAcceptRate => "refused_address_accept_rate", "connections refused: accept rate of their address";
    RefusedAddressConnections => "refused_address_connections", "connections refused: concurrent connections of their address";
    RefusedLoginRate => "refused_login_rate", "logins refused: shard-wide login rate (limits.login_rate)";
    RefusedAddressLoginRate => "refused_address_login_rate", "logins refused: login rate of their address";
    RefusedBanned => "refused_banned", "failing logins of a banned (address, user) pair, told to stay away for the rest of the ban (a valid token passes a ban)";
    LoginBans => "login_bans", "(address, user) pairs banned after too many failed logins";
    AdmissionUntracked => "admission_untracked", "connections admitted without per-address caps: the address table was full";
    AcceptErrors => "accept_errors", "Failed accepts (EMFILE, ENFILE, ENOBUFS, ...)";
    AcceptPauses => "accept_pauses", "times accepting paused after a failed accept";
    ProxyHeaders => "proxy_headers", "PROXY protocol v2 headers read";
    TlsHandshakes => "tls_handshakes", "TLS handshakes completed";
    TlsHandshakeFailures => "tls_handshake_failures", "TLS handshakes failed and closed with an alert: not TLS (plaintext on the TLS port), a malformed or truncated ClientHello, no common version, suite or ALPN protocol, a server name no certificate is valid for, more than 32 KiB of handshake; also counted in close_protocol";
    TlsHandshakesDeferred => "tls_handshakes_deferred", "TLS handshake steps put off to the next batch: the shard's tls.handshakes_per_batch was spent";
    WsUpgrades => "ws_upgrades", "WebSocket upgrades answered 101";
    WsUpgradesRefused => "ws_upgrades_refused", "WebSocket upgrades refused with an HTTP error (not an upgrade, another path, an Origin not allowed, a version other than 13, a head over 4 KiB); also counted in close_protocol";
    WsProtocolErrors => "ws_protocol_errors", "WebSocket connections closed for frames no client may send: text (1003), unmasked, reserved bits, fragmented control frames (1002), a close reason not UTF-8 (1007), a message over the limit (1009); also counted in close_protocol";
    TlsRecordErrors => "tls_record_errors", "TLS connections closed after the handshake: a record that did not authenticate or parse, a fatal alert from the peer, a message out of place; also counted in close_protocol";
    LoggedIn => "logged_in" in LOGINS { kind = "client" }, "client main connections registered";
    LoggedInBackend => "logged_in_backend" in LOGINS { kind = "backend" }, "backend connections accepted";
    LoggedInProbe => "logged_in_probe" in LOGINS { kind = "probe" }, "probe connections accepted";
    HandoverOut => "handover_out" in HANDOVERS { direction = "out" }, "connections sent to their home shard";
    HandoverIn => "handover_in" in HANDOVERS { direction = "in" }, "connections adopted from another shard";
    Replaced => "kicked_replaced" in CLOSES { reason = "replaced" }, "main connections kicked by a new login of the same device";
    Closed => "closed" as "connections_closed", "Connections closed, any reason";
    CloseIdle => "close_idle_timeout" in CLOSES { reason = "idle_timeout" }, "closed: lease ran out";
    CloseLoginTimeout => "close_login_timeout" in CLOSES { reason = "login_timeout" }, "closed: no login in time";
    CloseAuth => "close_auth" in CLOSES { reason = "auth" }, "closed: login refused (token, version, not allowed)";
    CloseProtocol => "close_protocol" in CLOSES { reason = "protocol" }, "closed: malformed, unknown or oversized frame, or a frame out of place";
    ClosePeer => "close_by_peer" in CLOSES { reason = "by_peer" }, "closed: the peer sent Close or hung up";
    CloseSlowConsumer => "close_slow_consumer" in CLOSES { reason = "slow_consumer" }, "closed: outbound queue over its byte bound";
    CloseWriteTimeout => "close_write_timeout" in CLOSES { reason = "write_timeout" }, "closed: unsent bytes older than the write timeout";
    CloseOverloaded => "close_overloaded" in CLOSES { reason = "overloaded" }, "closed: overloaded (home shard's mesh channel full at handover, or refused by admission after accept: PROXY header address, login rate, ban)";
    CloseShutdown => "close_shutdown" in CLOSES { reason = "shutdown" }, "closed: server drain";
    CloseIoError => "close_io_error" in CLOSES { reason = "io_error" }, "closed: socket error";
    CloseDeadLink => "close_dead_link", "closed: the kernel gave up on unacknowledged data (TCP_USER_TIMEOUT, ETIMEDOUT); also counted in close_io_error";
    CloseProxyHeader => "close_proxy_header", "closed: missing or malformed PROXY protocol header";
    CloseBufferBudget => "close_buffer_budget", "closed with Overloaded: the shard's partial frames and outbound queues together passed max_buffered_bytes";
    CloseFrameRate => "close_frame_rate", "closed with ProtocolError: a client connection sent more than limits.client_frame_rate frames in one second; also counted in close_protocol";
    CloseLinger => "close_linger_expired", "finished connections cut because their last bytes did not leave within linger_ms";
    Paused => "fairness_paused", "connections paused for the rest of a batch (used their frame budget)";
    RecvNoBuffers => "recv_no_buffers", "receives ended because the shard's receive buffers ran out (re-armed, nothing lost)";
    PushIn => "push_in" as "pushes_routed", "Pushes and sends routed (backend, API and client)";
    PushDelivered => "push_delivered" in PUSH_RESULTS { outcome = "delivered" }, "pushes written or queued to at least one device";
    PushOffline => "push_offline" in PUSH_RESULTS { outcome = "offline" }, "pushes for a user with no connection";
    PushRefusedSlow => "push_refused_slow_consumer" in PUSH_RESULTS { outcome = "refused", reason = "slow_consumer" }, "pushes refused: every device's queue was full";
    PushRefusedOverloaded => "push_refused_overloaded" in PUSH_RESULTS { outcome = "refused", reason = "overloaded" }, "pushes refused: home shard's mesh channel full";
    PushRefusedTooLarge => "push_refused_too_large" in PUSH_RESULTS { outcome = "refused", reason = "too_large" }, "pushes refused: payload over max_frame";
    PushRefusedBadTarget => "push_refused_bad_target" in PUSH_RESULTS { outcome = "refused", reason = "bad_target" }, "pushes refused: target user id invalid";
    PushRefusedShutdown => "push_refused_shutting_down" in PUSH_RESULTS { outcome = "refused", reason = "shutting_down" }, "pushes refused: server draining";
    PushLostInFlight => "push_not_sent", "pushes whose bytes left for no device: every device connection closed first (answered Offline, SlowConsumer or ShuttingDown)";
    DeviceFrames => "device_push_frames" as "push_device_frames", "Push frames written or queued to devices";
    PushAcked => "push_acked" as "push_acks", "PushAck frames received from devices";
    AckResults => "push_ack_results" in PUSH_RESULTS { outcome = "acked" }, "Acked results sent to backends";
    AckUntracked => "push_ack_untracked" as "push_acks_untracked", "Pushes wanting an ack that were not tracked (table full)";
    ResultOrphaned => "result_orphaned" as "results_orphaned", "Results whose sender had gone";
    Pings => "pings" as "heartbeats", "Ping frames received";
    NetReports => "net_reports", "NetReport frames received";
    NetReportNotShared => "net_report_not_shared" in MESH_REFUSALS { what = "net_report" }, "reports not broadcast (a shard's channel was full)";
    ProbeFired => "probe_fired" as "probes_fired", "ProbeFire frames sent";
    MeshIn => "mesh_in" as "mesh_messages", "Mesh messages received";
    MeshRetry => "mesh_retry" as "mesh_result_retries", "Results parked because the origin's channel was full";
    ResultLostOverload => "result_lost_overload", "results not delivered: the origin's channel stayed full and the park was full";
    HandoverRefused => "handover_refused", "logins closed with Overloaded: the connection could not move to its home shard (its channel was full, or the socket could not leave this ring's file table)";
    AckNotRecipient => "push_ack_not_recipient", "PushAck frames for a push the connection was never sent (protocol error)";
    NetReportIgnored => "net_report_ignored", "NetReport frames not filed (from a probe or backend, or beyond one per connection)";
    WheelFired => "wheel_fired" as "wheel_expirations", "Timing-wheel entries fired (deadline checks)";
    Kicked => "kicked_by_api" in CLOSES { reason = "kicked" }, "connections kicked by the control plane";
    ControlIn => "control_in" as "control_requests", "Control-plane requests handled by shards";
    AuthReloads => "auth_reloads", "Token verifiers replaced by a reload";
    TokenRefreshed => "token_refreshed", "tokens refreshed in place on a live connection (Refresh taken)";
    TokenRefreshRefused => "token_refresh_refused", "Refresh frames refused (the token did not verify for the connection's identity); the connection closed";
    TokenEnded => "token_ended", "live connections closed with TokenExpired because their token ended (or its secret was withdrawn) without a refresh";
    TokenRevoked => "token_revoked", "connections given notice because a reload withdrew the secret that verified their token";
    ClusterEventDropped => "cluster_event_dropped", "Login or logout events not handed to the cluster thread (its channel was full); repaired by its next refresh pass";
    ClusterRefused => "cluster_refused", "Pushes refused Overloaded: the cluster thread's channel was full";
    ClusterLocalFirst => "cluster_pushes_local_first", "Pushes a cluster node delivered on the user's home shard without the directory or the cluster thread: the user had a local-only note (the directory named this node alone)";
    PushRefusedRateLimited => "push_refused_rate_limited" in PUSH_RESULTS { outcome = "refused", reason = "rate_limited" }, "pushes refused RateLimited: the backend connection had limits.backend_max_in_flight pushes waiting for their results";
    PushRefusedNotAllowed => "push_refused_not_allowed" in PUSH_RESULTS { outcome = "refused", reason = "not_allowed" }, "sends refused NotAllowed: [send] enabled is off, or a version-1 sender while [send] reveal_presence is off";
    SendAccepted => "send_accepted" in PUSH_RESULTS { outcome = "accepted" }, "sends answered Accepted at once ([send] reveal_presence off); their outcome is counted where it is decided";
    UpstreamIn => "upstream_in", "Upstream frames received from clients";
    UpstreamAccepted => "upstream_accepted" in UPSTREAM_RESULTS { outcome = "accepted" }, "upstream messages the backend accepted (counted on the client's shard)";
    UpstreamRejected => "upstream_rejected" in UPSTREAM_RESULTS { outcome = "refused", reason = "rejected" }, "upstream messages the backend refused (Rejected)";
    UpstreamNoBackend => "upstream_no_backend" in UPSTREAM_RESULTS { outcome = "refused", reason = "no_backend" }, "upstream messages refused NoBackend: no backend connected, webhook or NATS subscriber unreachable";
    UpstreamTimedOut => "upstream_timed_out" in UPSTREAM_RESULTS { outcome = "refused", reason = "timed_out" }, "upstream messages without the backend's answer in time, or whose backend connection ended first (TimedOut)";
    UpstreamRateLimited => "upstream_rate_limited" in UPSTREAM_RESULTS { outcome = "refused", reason = "rate_limited" }, "upstream messages refused RateLimited: the connection had upstream.max_in_flight_per_connection waiting";
    UpstreamTooLarge => "upstream_too_large" in UPSTREAM_RESULTS { outcome = "refused", reason = "too_large" }, "upstream messages refused TooLarge (upstream.max_payload)";
    UpstreamOverloaded => "upstream_overloaded" in UPSTREAM_RESULTS { outcome = "refused", reason = "overloaded" }, "upstream messages refused Overloaded: a channel or upstream.max_in_flight was full";
    UpstreamRefusedOther => "upstream_refused_other" in UPSTREAM_RESULTS { outcome = "refused", reason = "other" }, "upstream messages refused NotAllowed (sink off) or ShuttingDown (draining)";
    UpstreamToBackend => "upstream_to_backend", "UpstreamDeliver frames written to backend connections on this shard";
    UpstreamAnswerUnknown => "upstream_answer_unknown", "UpstreamAnswer frames for no message in flight (answered after its timeout); ignored";
    UpstreamAnswerNotOwner => "upstream_answer_not_owner", "UpstreamAnswer frames from a backend connection the message was not sent to (closed with ProtocolError)";
    UpstreamReplyDropped => "upstream_reply_dropped", "backend replies longer than upstream.max_reply_bytes, dropped (the status was passed on)";
    BytesIn => "bytes_in" in IO_BYTES { direction = "in" }, "bytes read";
    BytesOut => "bytes_out" in IO_BYTES { direction = "out" }, "bytes written";
}

/// Number of counters.
pub const COUNT: usize = Counter::ALL.len();

/// One shard's counters, plain integers owned by the shard.
#[derive(Clone, Debug)]
pub struct Counters {
    /// Indexed by `Counter as usize`.
    values: [u64; COUNT],
}

impl Default for Counters {
    fn default() -> Self {
        Counters { values: [0; COUNT] }
    }
}

impl Counters {
    /// Adds `n` to `c`.
    #[inline]
    pub fn add(&mut self, c: Counter, n: u64) {
        self.values[c as usize] += n;
    }

    /// Adds one to `c`.
    #[inline]
    pub fn inc(&mut self, c: Counter) {
        self.add(c, 1);
    }

    /// The value of `c`.
    pub fn get(&self, c: Counter) -> u64 {
        self.values[c as usize]
    }

    /// Counts a push outcome.
    pub fn outcome(&mut self, status: PushStatus) {
        self.inc(match status {
            PushStatus::Delivered(_) => Counter::PushDelivered,
            PushStatus::Offline => Counter::PushOffline,
            PushStatus::Acked => Counter::AckResults,
            PushStatus::Refused(RefuseReason::SlowConsumer) => Counter::PushRefusedSlow,
            PushStatus::Refused(RefuseReason::TooLarge) => Counter::PushRefusedTooLarge,
            PushStatus::Refused(RefuseReason::ShuttingDown) => Counter::PushRefusedShutdown,
            PushStatus::Refused(RefuseReason::BadTarget) => Counter::PushRefusedBadTarget,
            PushStatus::Refused(RefuseReason::NotAllowed) => Counter::PushRefusedNotAllowed,
            PushStatus::Refused(RefuseReason::RateLimited) => Counter::PushRefusedRateLimited,
            PushStatus::Refused(_) => Counter::PushRefusedOverloaded,
            PushStatus::Accepted => Counter::SendAccepted,
        });
    }

    /// Counts an upstream message's one result.
    pub fn upstream_outcome(&mut self, status: UpstreamStatus) {
        self.inc(match status {
            UpstreamStatus::Accepted => Counter::UpstreamAccepted,
            UpstreamStatus::Refused(r) => match r {
                RefuseReason::Rejected => Counter::UpstreamRejected,
                RefuseReason::NoBackend => Counter::UpstreamNoBackend,
                RefuseReason::TimedOut => Counter::UpstreamTimedOut,
                RefuseReason::RateLimited => Counter::UpstreamRateLimited,
                RefuseReason::TooLarge => Counter::UpstreamTooLarge,
                RefuseReason::Overloaded => Counter::UpstreamOverloaded,
                _ => Counter::UpstreamRefusedOther,
            },
        });
    }

    /// Counts a close by its code.
    pub fn close(&mut self, code: CloseCode, by_peer: bool) {
        self.inc(Counter::Closed);
        if by_peer {
            return self.inc(Counter::ClosePeer);
        }
        self.inc(match code {
            CloseCode::IdleTimeout => Counter::CloseIdle,
            CloseCode::LoginTimeout => Counter::CloseLoginTimeout,
            CloseCode::AuthFailed
            | CloseCode::TokenExpired
            | CloseCode::UnsupportedVersion
            | CloseCode::NotAllowed => Counter::CloseAuth,
            CloseCode::SlowConsumer => Counter::CloseSlowConsumer,
            CloseCode::WriteTimeout => Counter::CloseWriteTimeout,
            CloseCode::Overloaded => Counter::CloseOverloaded,
            CloseCode::ServerShutdown => Counter::CloseShutdown,
            CloseCode::InternalError => Counter::CloseIoError,
            CloseCode::Normal | CloseCode::Replaced | CloseCode::Kicked => return,
            _ => Counter::CloseProtocol,
        });
    }
}

/// A shard's counters as atomics, copied from [`Counters`] by the shard and read by the
/// metrics surface from another thread.
#[derive(Debug)]
pub struct Published {
    /// Indexed by `Counter as usize`.
    values: [AtomicU64; COUNT],
    /// Connections the shard holds right now.
    pub connections: AtomicU64,
    /// Users in the shard's index right now.
    pub users: AtomicU64,
    /// Connections by state right now: not logged in, client, probe, backend.
    pub by_state: [AtomicU64; 4],
    /// Ping handling times.
    pub ping: PublishedHistogram,
    /// Push delivery times on the home shard.
    pub push: PublishedHistogram,
    /// The ring's figures, in the order of [`RING_STATS`].
    pub ring: [AtomicU64; RING_STATS.len()],
    /// Bytes of receive buffers the shard lent its ring.
    pub recv_pool_bytes: AtomicU64,
    /// Slots of the ring's file table in use (connections' sockets, and sockets closing).
    pub ring_files: AtomicU64,
    /// Slots of the ring's file table.
    pub ring_files_capacity: AtomicU64,
    /// How long each wheel tick's work took.
    pub tick: PublishedHistogram,
}

/// Names and help of the ring figures in [`Published::ring`] (metric `tether_ring_<name>`).
pub const RING_STATS: [(&str, &str); 5] = [
    ("waits", "io_uring_enter calls that waited for completions (one per batch of work)"),
    ("submitted", "Requests handed to the kernel"),
    ("completions", "Completions reaped"),
    ("sq_full", "Times the submission queue was full before the batch ended (submitted early)"),
    ("cq_overflow", "Completions the kernel held back because the completion queue was full (the ring is too small; nothing is lost)"),
];

impl Default for Published {
    fn default() -> Self {
        Published {
            values: std::array::from_fn(|_| AtomicU64::new(0)),
            connections: AtomicU64::new(0),
            users: AtomicU64::new(0),
            by_state: std::array::from_fn(|_| AtomicU64::new(0)),
            ping: PublishedHistogram::default(),
            push: PublishedHistogram::default(),
            ring: std::array::from_fn(|_| AtomicU64::new(0)),
            recv_pool_bytes: AtomicU64::new(0),
            ring_files: AtomicU64::new(0),
            ring_files_capacity: AtomicU64::new(0),
            tick: PublishedHistogram::default(),
        }
    }
}

impl Published {
    /// Copies `c` in.
    pub fn store(&self, c: &Counters) {
        for (a, v) in self.values.iter().zip(c.values.iter()) {
            a.store(*v, Ordering::Relaxed);
        }
    }

    /// The published value of `c`.
    pub fn get(&self, c: Counter) -> u64 {
        self.values[c as usize].load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_counter_has_a_name_and_a_series_of_its_own() {
        for (i, a) in Counter::ALL.iter().enumerate() {
            for b in &Counter::ALL[i + 1..] {
                assert_ne!(a.name(), b.name(), "two counters named alike");
                let (ma, mb) = (a.metric(), b.metric());
                assert!(
                    ma.family != mb.family || ma.labels != mb.labels,
                    "{a:?} and {b:?} would add up in one series"
                );
                if ma.family == mb.family {
                    assert!(
                        !ma.labels.is_empty() && !mb.labels.is_empty() && ma.help == mb.help,
                        "{a:?} and {b:?} share a family: labels tell them apart, one help"
                    );
                }
            }
        }
    }
}
