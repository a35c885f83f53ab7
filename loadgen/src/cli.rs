//! Command line: one subcommand per scenario, each bounded by a count and a duration.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::job::{Scenario, Shape};
use crate::tls::{Tls, TlsJob};
use crate::wire::Protocol;
use crate::ws::WsJob;

/// The development secret of the server's embedded default configuration
/// (server/src/default.toml); a server with another secret needs `--secret`.
pub const DEV_SECRET: &str = "tether-dev-secret-not-for-production";
/// The development backend secret of the same configuration; a server with another one needs
/// `--backend-secret`.
pub const DEV_BACKEND_SECRET: &str = "tether-dev-backend-secret-not-for-production";

/// Connection-density benchmark for the tether gateway.
#[derive(Debug, Parser)]
#[command(name = "tether-loadgen", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Open N connections at a target rate and log them in: connect and login latency.
    Connect {
        #[command(flatten)]
        common: Common,
        /// Keep the connections open this long after the ramp before closing them.
        #[arg(long, value_parser = parse_duration, default_value = "0s")]
        hold: Duration,
    },
    /// Hold N logged-in connections heartbeating: ping RTT and the server's footprint.
    Idle {
        #[command(flatten)]
        common: Common,
        /// How long to hold the connections after the ramp (with `--shape burst`: at most this
        /// long).
        #[arg(long, value_parser = parse_duration, default_value = "60s")]
        duration: Duration,
        /// `spread`: each connection pings every `--interval` at its own random phase;
        /// `burst`: every connection pings at once, the answers are awaited, `--rounds` times.
        #[arg(long, value_enum, default_value = "spread")]
        shape: Shape,
        /// Rounds of the burst shape.
        #[arg(long, default_value_t = 20)]
        rounds: u32,
    },
    /// A backend pushes to random online users: end-to-end push latency.
    Push {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        load: Load,
    },
    /// Users send messages to random other users through the gateway (across shards).
    Send {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        load: Load,
    },
    /// Clients send messages to the app's backend through the gateway (tether's Upstream, a
    /// QoS 0 publish to `up/<user>` with MQTT, a PUB to `up.<user>` with NATS), taken by a
    /// backend sink inside the loadgen: messages per second, end-to-end and result latency,
    /// refusals by reason, per-connection order at the sink, server CPU per message.
    Upstream {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        load: Load,
        /// Backend sink connections (tether: logged in with the UPSTREAM flag, the server
        /// spreads users over them; NATS: queue subscribers of `up.*`; MQTT: one subscriber of
        /// `up/#`, so 1 only).
        #[arg(long, default_value_t = 1)]
        backends: u32,
    },
    /// Connections close and reconnect at a rate: leaks and the cost of accept and login.
    Churn {
        #[command(flatten)]
        common: Common,
        /// How long to churn after the ramp.
        #[arg(long, value_parser = parse_duration, default_value = "30s")]
        duration: Duration,
        /// Connections closed and reopened per second (whole run).
        #[arg(long, default_value_t = 100.0)]
        churn_rate: f64,
    },
    /// Internal: one worker process (reads its job on stdin).
    #[command(hide = true)]
    Worker,
}

/// Options every scenario has.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Server addresses, comma-separated or repeated; connections are spread over them.
    #[arg(
        long,
        short = 's',
        value_delimiter = ',',
        default_value = "127.0.0.1:7700"
    )]
    pub server: Vec<String>,
    /// Client connections to open.
    #[arg(long = "connections", short = 'n', default_value_t = 1000)]
    pub connections: u32,
    /// Connections opened per second during the ramp (whole run).
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Heartbeat interval; every ping announces it as its lease.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub interval: Duration,
    /// The server's protocol: tether, MQTT 3.1.1 (client id and topic = user, PINGREQ as the
    /// heartbeat, pushes published at QoS 0) or NATS (subject = user, PING as the heartbeat).
    #[arg(long, value_enum, default_value = "tether")]
    pub protocol: Protocol,
    /// What carries the protocol: `tcp` (its bytes from the first one) or `ws`: an HTTP/1.1
    /// upgrade to WebSocket on --ws-path, then the protocol's bytes in masked binary messages
    /// (tether's `[websocket] listen`, mosquitto's `protocol websockets`, nats-server's
    /// `websocket { }`). The upgrade has a latency of its own (`upgrade`, from the connect, or
    /// with --tls from the start of the handshake, to the 101); the login latency then runs
    /// from the Login sent after the 101.
    #[arg(long, value_enum, default_value = "tcp")]
    pub transport: Transport,
    /// The path of the WebSocket upgrade. With --transport ws.
    #[arg(long, value_name = "PATH", default_value = "/tether")]
    pub ws_path: String,
    /// Speak TLS 1.3 to the servers, trusting --ca: tether's TLS listener (`[tls] listen`,
    /// ALPN "tether"), an MQTT TLS listener, or NATS upgrading after the server's INFO (its
    /// `tls { }` block). The login latency then includes the handshake, which also has a
    /// latency of its own (`tls_handshake`).
    #[arg(long, requires = "ca")]
    pub tls: bool,
    /// PEM file of the CA the servers' certificates chain to (or of a self-signed server
    /// certificate itself). With --tls.
    #[arg(long, value_name = "FILE", requires = "tls")]
    pub ca: Option<PathBuf>,
    /// The name the servers' certificates must be valid for, a DNS name or an IP address
    /// (default: each server's IP address). With --tls.
    #[arg(long, value_name = "NAME", requires = "tls")]
    pub server_name: Option<String>,
    /// Secret of the client tokens; must be one of the server's `auth.secrets`.
    #[arg(long, default_value = DEV_SECRET)]
    pub secret: String,
    /// Secret of the backend token (push scenario); must be one of the server's
    /// `auth.backend_secrets`.
    #[arg(long, default_value = DEV_BACKEND_SECRET)]
    pub backend_secret: String,
    /// Sample this process's memory and CPU (the server's pid) and the kernel's socket memory.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// A shell command to run for the load phase alone, a profiler for instance: started by
    /// `sh -c` as the phase begins (with SERVER_PID set when --server-pid is), sent SIGINT as
    /// it ends, and waited for. Its output goes to stderr.
    #[arg(long, value_name = "CMD")]
    pub during_load: Option<String>,
    /// Source addresses to spread connections over (127.0.0.2, .3, ..., then 127.0.1.2, ...);
    /// 0 lets the kernel choose. Only used when every server is a loopback address.
    #[arg(long, default_value_t = 250)]
    pub sources: usize,
    /// Most connections one worker process holds (the open-files hard limit caps it).
    #[arg(long, default_value_t = 15_000)]
    pub per_worker: u32,
    /// A connect or login not done within this time counts as a timeout.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub connect_timeout: Duration,
    /// Wait after the ramp (and after closing) before sampling the server, so it settles.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub settle: Duration,
    /// User ids are PREFIX0, PREFIX1, ...
    #[arg(long, default_value = "u")]
    pub user_prefix: String,
    /// Print the report as JSON on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Write .hgrm percentile files, SVG charts and report.json into this directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
    /// Reconnect client connections that end, as an app would: a logged-in connection that
    /// gets a `GoAway` stays until a random moment inside its window, then moves to a new
    /// connection (`moved: ...`); a refused or lost one comes back at a random moment of the
    /// `GoAway`'s window, otherwise after a jittered back-off from 0.5 s doubling to 30 s
    /// (`lost: ...`); a `GoAway` that forbids reconnecting is obeyed. These are counted as
    /// events, not errors, and the report gives the reconnect latency (the `GoAway` or the
    /// loss to the next login).
    #[arg(long)]
    pub reconnect: bool,
}

/// What carries the protocol's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// A TCP stream (with --tls, TLS over it).
    Tcp,
    /// WebSocket (with --tls, wss://).
    Ws,
}

/// Options of the scenarios that generate messages.
#[derive(Debug, Clone, Args)]
pub struct Load {
    /// How long to generate messages after the ramp.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub duration: Duration,
    /// Messages per second (whole run: with `upstream`, each of the `-n` clients sends
    /// msg-rate / n per second).
    #[arg(long = "msg-rate", default_value_t = 1000.0)]
    pub msg_rate: f64,
    /// Payload size in bytes (at least 13: the timestamp header; 21 for upstream, which adds
    /// the sender's sequence number).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Most messages waiting for their result at once, per worker.
    #[arg(long, default_value_t = 10_000)]
    pub max_inflight: usize,
}

/// What the parent runs: the scenario and its bounds, resolved from the command line.
#[derive(Debug, Clone)]
pub struct Plan {
    pub scenario: Scenario,
    pub common: Common,
    /// Servers, resolved.
    pub servers: Vec<SocketAddr>,
    /// Length of the load phase (hold time for connect).
    pub load_for: Duration,
    /// Load actions per second, whole run.
    pub load_rate: f64,
    /// Payload size.
    pub payload: usize,
    /// In-flight bound per worker.
    pub max_inflight: usize,
    /// How heartbeats are timed (idle scenario; spread otherwise).
    pub shape: Shape,
    /// Rounds of the burst shape.
    pub rounds: u32,
    /// Backend sink connections of the upstream scenario (0 otherwise).
    pub backends: u32,
    /// TLS settings for the workers, when the run speaks TLS.
    pub tls: Option<TlsJob>,
    /// WebSocket settings for the workers, when the run speaks WebSocket.
    pub ws: Option<WsJob>,
}

impl Plan {
    /// The plan of a scenario subcommand; `None` for the hidden worker subcommand.
    pub fn from_cmd(cmd: Cmd) -> anyhow::Result<Option<Plan>> {
        let (mut shape, mut rounds, mut backends) = (Shape::Spread, 0, 0);
        let (scenario, common, load_for, load_rate, payload, max_inflight) = match cmd {
            Cmd::Worker => return Ok(None),
            Cmd::Connect { common, hold } => (Scenario::Connect, common, hold, 0.0, 0, 0),
            Cmd::Idle {
                common,
                duration,
                shape: s,
                rounds: r,
            } => {
                (shape, rounds) = (s, r);
                (Scenario::Idle, common, duration, 0.0, 0, 0)
            }
            Cmd::Push { common, load } => (
                Scenario::Push,
                common,
                load.duration,
                load.msg_rate,
                load.payload,
                load.max_inflight,
            ),
            Cmd::Send { common, load } => (
                Scenario::Send,
                common,
                load.duration,
                load.msg_rate,
                load.payload,
                load.max_inflight,
            ),
            Cmd::Upstream {
                common,
                load,
                backends: b,
            } => {
                backends = b;
                (
                    Scenario::Upstream,
                    common,
                    load.duration,
                    load.msg_rate,
                    load.payload,
                    load.max_inflight,
                )
            }
            Cmd::Churn {
                common,
                duration,
                churn_rate,
            } => (Scenario::Churn, common, duration, churn_rate, 0, 0),
        };
        let mut servers = Vec::new();
        for s in &common.server {
            let addr = s
                .to_socket_addrs()
                .map_err(|e| anyhow::anyhow!("server address {s:?}: {e}"))?
                .find(SocketAddr::is_ipv4)
                .ok_or_else(|| anyhow::anyhow!("server address {s:?} has no IPv4 address"))?;
            servers.push(addr);
        }
        anyhow::ensure!(!servers.is_empty(), "at least one --server is needed");
        anyhow::ensure!(common.rate > 0.0, "--rate must be positive");
        anyhow::ensure!(common.per_worker > 0, "--per-worker must be positive");
        anyhow::ensure!(
            common.interval >= Duration::from_millis(1) && common.interval.as_millis() < (1 << 28),
            "--interval must be between 1ms and about 74 hours"
        );
        anyhow::ensure!(
            load_rate >= 0.0,
            "the message or churn rate must not be negative"
        );
        anyhow::ensure!(
            scenario != Scenario::Send || common.protocol == Protocol::Tether,
            "the send scenario needs tether: MQTT and NATS peers have no user-to-user send"
        );
        anyhow::ensure!(
            shape == Shape::Spread || rounds > 0,
            "--rounds must be positive"
        );
        if scenario == Scenario::Upstream {
            anyhow::ensure!(backends > 0, "--backends must be positive");
            anyhow::ensure!(
                backends == 1 || common.protocol != Protocol::Mqtt,
                "with MQTT the upstream sink is one subscriber of up/#: several would each get \
                 every message (--backends 1)"
            );
        }
        let ws = (common.transport == Transport::Ws).then(|| WsJob {
            path: common.ws_path.clone(),
        });
        anyhow::ensure!(
            ws.is_some() || common.ws_path == "/tether",
            "--ws-path needs --transport ws"
        );
        anyhow::ensure!(
            common.ws_path.starts_with('/') && !common.ws_path.contains(char::is_whitespace),
            "--ws-path must start with / and hold no spaces"
        );
        let tls = match (&common.tls, &common.ca) {
            (true, Some(ca)) => {
                let ca = std::fs::canonicalize(ca)
                    .map_err(|e| anyhow::anyhow!("--ca {}: {e}", ca.display()))?;
                let job = TlsJob {
                    ca: ca.to_string_lossy().into_owned(),
                    server_name: common.server_name.clone(),
                };
                // Read the CA now, so a bad file fails the run before any worker starts.
                Tls::new(&job, common.protocol, ws.is_some())?;
                Some(job)
            }
            _ => None,
        };
        Ok(Some(Plan {
            scenario,
            common,
            servers,
            load_for,
            load_rate,
            payload,
            max_inflight,
            shape,
            rounds,
            backends,
            tls,
            ws,
        }))
    }
}

/// Parses `250ms`, `10s`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 500ms, 10s, 2m or 1h"))?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} (use ms, s, m or h)"
            ))
        }
    };
    let secs = value * scale;
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn server_list_and_bounds() {
        let cli = Cli::try_parse_from([
            "tether-loadgen",
            "idle",
            "-n",
            "19000",
            "--duration",
            "60s",
            "--interval",
            "10s",
            "--server",
            "127.0.0.1:7700,127.0.0.1:7701",
            "--server-pid",
            "42",
        ])
        .unwrap();
        let plan = Plan::from_cmd(cli.command).unwrap().unwrap();
        assert_eq!(plan.scenario, Scenario::Idle);
        assert_eq!(plan.servers.len(), 2);
        assert_eq!(plan.common.connections, 19_000);
        assert_eq!(plan.common.server_pid, Some(42));
        assert_eq!(plan.load_for, Duration::from_secs(60));
        assert_eq!(plan.common.interval, Duration::from_secs(10));
    }

    #[test]
    fn push_options() {
        let cli = Cli::try_parse_from([
            "tether-loadgen",
            "push",
            "-n",
            "10",
            "--msg-rate",
            "50",
            "--duration",
            "2s",
        ])
        .unwrap();
        let plan = Plan::from_cmd(cli.command).unwrap().unwrap();
        assert_eq!(plan.scenario, Scenario::Push);
        assert_eq!(plan.load_rate, 50.0);
        assert_eq!(plan.common.protocol, Protocol::Tether);
        assert!(Plan::from_cmd(Cmd::Worker).unwrap().is_none());
    }

    #[test]
    fn upstream_options() {
        let cli = Cli::try_parse_from([
            "tether-loadgen",
            "upstream",
            "-n",
            "1000",
            "--msg-rate",
            "2000",
            "--backends",
            "3",
        ])
        .unwrap();
        let plan = Plan::from_cmd(cli.command).unwrap().unwrap();
        assert_eq!(plan.scenario, Scenario::Upstream);
        assert_eq!(plan.load_rate, 2000.0);
        assert_eq!(plan.backends, 3);
        let cli = Cli::try_parse_from(["tether-loadgen", "upstream"]).unwrap();
        assert_eq!(Plan::from_cmd(cli.command).unwrap().unwrap().backends, 1);
        for bad in [
            &["--backends", "0"][..],
            &["--backends", "2", "--protocol", "mqtt"][..],
        ] {
            let cli =
                Cli::try_parse_from(["tether-loadgen", "upstream"].iter().chain(bad)).unwrap();
            assert!(Plan::from_cmd(cli.command).is_err(), "{bad:?}");
        }
        let cli = Cli::try_parse_from([
            "tether-loadgen",
            "upstream",
            "--backends",
            "2",
            "--protocol",
            "nats",
        ])
        .unwrap();
        assert!(Plan::from_cmd(cli.command).is_ok());
    }

    #[test]
    fn tls_needs_a_readable_ca() {
        assert!(Cli::try_parse_from(["tether-loadgen", "idle", "--tls"]).is_err());
        assert!(Cli::try_parse_from(["tether-loadgen", "idle", "--ca", "x.pem"]).is_err());
        let cli = Cli::try_parse_from([
            "tether-loadgen",
            "idle",
            "--tls",
            "--ca",
            "/nonexistent/ca.pem",
        ])
        .unwrap();
        let err = Plan::from_cmd(cli.command).unwrap_err().to_string();
        assert!(err.contains("--ca /nonexistent/ca.pem"), "{err}");
        let cli = Cli::try_parse_from(["tether-loadgen", "idle"]).unwrap();
        assert!(Plan::from_cmd(cli.command).unwrap().unwrap().tls.is_none());
    }

    #[test]
    fn protocol_and_burst_shape() {
        let cli = Cli::try_parse_from([
            "tether-loadgen",
            "idle",
            "--protocol",
            "mqtt",
            "--shape",
            "burst",
            "--rounds",
            "5",
        ])
        .unwrap();
        let plan = Plan::from_cmd(cli.command).unwrap().unwrap();
        assert_eq!(plan.common.protocol, Protocol::Mqtt);
        assert_eq!(plan.shape, Shape::Burst);
        assert_eq!(plan.rounds, 5);
        let cli = Cli::try_parse_from(["tether-loadgen", "send", "--protocol", "nats"]).unwrap();
        assert!(Plan::from_cmd(cli.command).is_err());
        let cli = Cli::try_parse_from([
            "tether-loadgen",
            "idle",
            "--shape",
            "burst",
            "--rounds",
            "0",
        ])
        .unwrap();
        assert!(Plan::from_cmd(cli.command).is_err());
    }
}
