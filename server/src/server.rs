//! Starting and stopping the whole server: listeners, mesh, shard threads, signals, and the
//! control plane (HTTP API and metrics, see `api/`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use glommio::{LocalExecutorBuilder, Placement};
use tether_proto::token::Secret;
use tracing::info;

use crate::api::{ApiKeys, ControlPlane};
use crate::config::Config;
use crate::core::ShardConfig;
use crate::counters::Published;
use crate::driver::accept::GateConfig;
use crate::driver::ring::WaitPolicy;
use crate::driver::shard::{run_shard, ShardArgs, Startup};
use crate::mesh::MeshShared;
use crate::reload::Reloader;
pub use crate::shutdown::Shutdown;
use crate::{api, limits, listener};

/// Most pushes per shard waiting for an acknowledgement.
const MAX_ACK_WAITING: usize = 65_536;
/// How long a push waits for its acknowledgement.
const ACK_TIMEOUT_MS: u64 = 5 * 60 * 1000;

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("invalid configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("auth secret: {0}")]
    Secret(#[from] tether_proto::token::SecretError),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("shard {0}: {1}")]
    Shard(usize, String),
    #[error("{0}")]
    Listen(#[from] listener::BindError),
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsConfigError),
}

/// Runs the server until `shutdown` is triggered and every shard has drained.
pub fn run(config: Config, shutdown: Shutdown) -> Result<(), ServerError> {
    run_with(config, shutdown, Reloader::default())
}

/// [`run`], with `reloader` connected to the running server (secrets and API keys can then be
/// replaced through it).
pub fn run_with(config: Config, shutdown: Shutdown, reloader: Reloader) -> Result<(), ServerError> {
    config.validate()?;
    let n = config.shard_count();
    let nofile = limits::raise_nofile().map_err(|source| ServerError::Io {
        what: "open-files limit",
        source,
    })?;
    let secrets = |list: &[String]| -> Result<Vec<Secret>, ServerError> {
        let secrets = list
            .iter()
            .map(|s| Secret::new(s.as_bytes().to_vec()))
            .collect::<Result<Vec<_>, _>>()?;
        if secrets.is_empty() || secrets.len() > 2 {
            // validate() allows one or two secrets per list.
            return Err(
                crate::config::ConfigError::Invalid("one or two secrets per kind".into()).into(),
            );
        }
        Ok(secrets)
    };
    let verifier = reloader.verifier(
        &secrets(&config.auth.secrets)?,
        &secrets(&config.auth.backend_secrets)?,
        config.auth.max_token_lifetime_s,
    );
    let (listeners, addr) = listener::bind_all(config.server.listen, n, config.server.takeover)?;
    // The TLS listener: certificates read (and checked) before anything listens on it.
    let (tls_listeners, tls_addr) = if config.tls.enabled() {
        let server_config = config.tls.server_config()?;
        let (fds, a) = listener::bind_all(config.tls.address()?, n, config.server.takeover)?;
        let per_shard = fds
            .into_iter()
            .map(|fd| {
                Some(crate::driver::shard::TlsListener {
                    fd,
                    config: Arc::clone(&server_config),
                    handshakes_per_batch: config.tls.handshakes_per_batch,
                })
            })
            .collect();
        (per_shard, Some(a))
    } else {
        ((0..n).map(|_| None).collect::<Vec<_>>(), None)
    };
    let (mesh, inboxes) =
        MeshShared::new(n, config.server.mesh_capacity).map_err(|source| ServerError::Io {
            what: "mesh eventfd",
            source,
        })?;
    shutdown.attach(Arc::clone(&mesh));
    reloader.attach(Arc::clone(&mesh));
    reloader.keys().replace(&config.api.keys);
    let published: Vec<Arc<Published>> = (0..n).map(|_| Arc::new(Published::default())).collect();
    let ready = Arc::new(AtomicBool::new(false));
    // Joined before the shards start, so their first login already reaches the directory.
    let cluster = if config.cluster.enabled() {
        let stats =
            crate::cluster::spawn(config.cluster.clone(), Arc::clone(&mesh)).map_err(|source| {
                ServerError::Io {
                    what: "cluster thread",
                    source,
                }
            })?;
        Some(stats)
    } else {
        None
    };
    // Started before the shards too, so their first webhook or NATS message finds it.
    let upstream = match config.upstream.sink {
        crate::upstream::Sink::Webhook | crate::upstream::Sink::Nats => Some(
            crate::upstream::spawn(
                crate::upstream::UpstreamConfig {
                    // A reply the client's frame could not hold is dropped, like a long one.
                    max_reply_bytes: config.upstream.reply_limit(config.server.max_frame),
                    max_payload: config.upstream.payload_limit(config.server.max_frame),
                    ..config.upstream.clone()
                },
                crate::cluster::NatsServers::of(&config.cluster),
                Arc::clone(&mesh),
            )
            .map_err(|source| ServerError::Io {
                what: "upstream thread",
                source,
            })?,
        ),
        crate::upstream::Sink::Backends | crate::upstream::Sink::Off => None,
    };
    let (api_addr, metrics_addr) = start_control_plane(
        &config,
        reloader.keys().clone(),
        &mesh,
        &published,
        &shutdown,
        &ready,
        Threads { cluster, upstream },
    )?;
    let epoch = Instant::now();
    let server_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let per_shard = config.server.max_connections.div_ceil(n).max(1);
    // Each shard's sockets live in its ring's file table, which the open-files limit caps.
    let ring_files = limits::ring_files(per_shard, nofile);
    limits::warn_capacity(config.server.max_connections, n, ring_files, nofile);
    let gate = GateConfig {
        keepalive: config.keepalive.clone(),
        user_timeout_ms: config.server.tcp_user_timeout_ms,
        proxy_protocol: config.server.proxy_protocol,
        limits: config.limits.per_shard(n),
        // One seed for all shards: a connection keeps its address key when it moves.
        hasher: std::hash::RandomState::new(),
        reserve: std::sync::Arc::new(std::sync::Mutex::new(crate::overload::Reserve::open())),
    };
    let cpus = std::thread::available_parallelism().map_or(1, |c| c.get());
    info!(
        shards = n,
        %addr,
        open_files = nofile.soft,
        direct_descriptors_per_shard = ring_files,
        max_connections = config.server.max_connections,
        "starting"
    );
    let mut handles = Vec::with_capacity(n);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut go = Vec::with_capacity(n);
    // The WebSocket listener; with tls = true it speaks wss:// with [tls]'s certificates.
    let (ws_listeners, ws_addr) = if config.websocket.enabled() {
        let ws = &config.websocket;
        let addr = ws.address().map_err(crate::config::ConfigError::Invalid)?;
        let tls = if ws.tls {
            // The certificates are [tls]'s even when its own listener is off.
            let files = crate::tls::TlsConfig {
                listen: "127.0.0.1:0".into(),
                ..config.tls.clone()
            };
            Some((files.server_config()?, config.tls.handshakes_per_batch))
        } else {
            None
        };
        let rules = crate::layers::WsRules {
            rules: ws.rules(),
            // One message holds at least one whole frame of the largest size.
            max_message: config.server.max_frame as u64 + 16,
        };
        let (fds, a) = listener::bind_all(addr, n, config.server.takeover)?;
        let per_shard = fds
            .into_iter()
            .map(|fd| {
                Some(crate::driver::shard::WsListener {
                    fd,
                    rules: rules.clone(),
                    tls: tls.clone(),
                })
            })
            .collect();
        (per_shard, Some(a))
    } else {
        ((0..n).map(|_| None).collect::<Vec<_>>(), None)
    };
    let shard_listeners = listeners.into_iter().zip(tls_listeners).zip(ws_listeners);
    for (index, (((listener, tls), ws), inbox)) in shard_listeners.zip(inboxes).enumerate() {
        let (go_tx, go_rx) = std::sync::mpsc::channel();
        go.push(go_tx);
        let verifier = verifier.clone();
        let args = ShardArgs {
            index,
            cfg: ShardConfig {
                session: tether_proto::session::SessionConfig {
                    // LoginOk tells the client the largest frame it may send.
                    max_frame: u32::try_from(config.server.max_frame).unwrap_or(u32::MAX),
                    ..config.session.clone()
                },
                max_frame: config.server.max_frame,
                max_login_frame: config.server.max_login_frame,
                max_connections: per_shard,
                max_queue_bytes: config.outbound.max_queue_bytes,
                max_buffered_bytes: (config.outbound.max_buffered_bytes / n).max(1),
                write_timeout_ms: config.outbound.write_timeout_ms,
                linger_ms: config.outbound.linger_ms,
                max_retry: config.outbound.max_parked_results,
                revoked_grace_s: config.auth.revoked_grace_s,
                frame_budget: config.server.frame_budget,
                client_frame_rate: u16::try_from(config.limits.client_frame_rate)
                    .unwrap_or(u16::MAX),
                backend_max_in_flight: config.limits.backend_max_in_flight,
                tick_ms: config.server.tick_ms,
                server_epoch,
                max_ack_waiting: MAX_ACK_WAITING,
                ack_timeout_ms: ACK_TIMEOUT_MS,
                priors: config.prior_config(),
                upstream: crate::core::UpstreamRules::of(&config.upstream, config.server.max_frame),
                send: config.send.clone(),
                cluster: config
                    .cluster
                    .enabled()
                    .then(|| mesh.cluster_epoch_handle().clone()),
            },
            auth: Box::new(verifier),
            listener,
            tls,
            ws,
            mesh: Arc::clone(&mesh),
            inbox,
            ring_entries: config.server.ring_entries,
            ring_files,
            recv_pool_bytes: config.server.recv_pool_bytes,
            wait: WaitPolicy {
                batch_wait: Duration::from_micros(u64::from(config.server.batch_wait_us)),
                batch_target: config.server.batch_target,
            },
            gate: gate.clone(),
            stop: shutdown.flag(),
            published: Arc::clone(&published[index]),
            drain_ms: config.server.drain_ms,
            stats_interval_ms: config.server.stats_interval_ms,
            epoch,
            startup: Startup {
                ready: ready_tx.clone(),
                go: go_rx,
            },
        };
        let placement = if config.server.pin {
            Placement::Fixed(index % cpus)
        } else {
            Placement::Unbound
        };
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("tether-shard-{index}"))
            // The shard's glommio ring only carries the eventfd read and timers.
            .io_memory(64 << 10)
            .ring_depth(64)
            .spawn(move || run_shard(args))
            .map_err(|e| ServerError::Shard(index, e.to_string()))?;
        handles.push(handle);
    }
    // Every shard holds its descriptors before any accepts (see `Startup`).
    let mut setup = Ok(());
    for _ in 0..n {
        match ready_rx.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => setup = Err(e),
            Err(_) => setup = Err("a shard did not start within 60 s".to_string()),
        }
        if setup.is_err() {
            break;
        }
    }
    let started = setup.is_ok();
    for g in &go {
        let _ = g.send(started);
    }
    if let Err(e) = setup {
        drop(go);
        for handle in handles {
            let _ = handle.join();
        }
        return Err(ServerError::Shard(0, format!("start-up: {e}")));
    }
    ready.store(true, Ordering::SeqCst);
    // Tests and scripts read the bound addresses (port 0 picks one) from stdout; the
    // "listening on" line comes last, once everything listens.
    if let Some(a) = api_addr {
        println!("api listening on {a}");
    }
    if let Some(a) = metrics_addr {
        println!("metrics listening on {a}");
    }
    if let Some(a) = tls_addr {
        println!("tls listening on {a}");
    }
    if let Some(a) = ws_addr {
        println!("websocket listening on {a}");
    }
    println!("listening on {addr}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let mut failed = None;
    for (index, handle) in handles.into_iter().enumerate() {
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed = Some(ServerError::Shard(index, e.to_string())),
            Err(e) => failed = Some(ServerError::Shard(index, e.to_string())),
        }
    }
    match failed {
        Some(e) => Err(e),
        None => {
            info!("stopped");
            Ok(())
        }
    }
}

/// The figures of the threads beside the shards that run in this configuration.
struct Threads {
    /// `tether-cluster`, when the node joins a cluster.
    cluster: Option<Arc<crate::cluster::ClusterStats>>,
    /// `tether-upstream`, when `[upstream] sink` is `webhook` or `nats`.
    upstream: Option<Arc<crate::upstream::UpstreamStats>>,
}

/// Binds the API and metrics listeners (so a bad address fails the start) and starts the
/// control plane's executor. Returns the bound addresses.
fn start_control_plane(
    config: &Config,
    keys: ApiKeys,
    mesh: &Arc<MeshShared>,
    published: &[Arc<Published>],
    shutdown: &Shutdown,
    ready: &Arc<AtomicBool>,
    threads: Threads,
) -> Result<(Option<SocketAddr>, Option<SocketAddr>), ServerError> {
    let bind = |addr: SocketAddr, what: &'static str| {
        std::net::TcpListener::bind(addr).map_err(|source| ServerError::Io { what, source })
    };
    let api_addr = config.api.addr().map_err(invalid)?;
    let metrics_addr: Option<SocketAddr> = match config.server.metrics_listen.as_str() {
        "" => None,
        m => Some(
            m.parse()
                .map_err(|_| invalid(format!("server.metrics_listen: {m:?}")))?,
        ),
    };
    let api_listener = api_addr.map(|a| bind(a, "api listen")).transpose()?;
    let metrics_listener = metrics_addr
        .map(|a| bind(a, "metrics listen"))
        .transpose()?;
    let local = |l: &Option<std::net::TcpListener>| l.as_ref().and_then(|l| l.local_addr().ok());
    let bound = (local(&api_listener), local(&metrics_listener));
    let (tx, results) = flume::unbounded();
    mesh.set_api_results(tx);
    let plane = ControlPlane {
        api: api_listener,
        metrics: metrics_listener,
        cfg: config.api.clone(),
        keys,
        mesh: Arc::clone(mesh),
        results,
        published: published.to_vec(),
        shutdown: shutdown.clone(),
        ready: Arc::clone(ready),
        cluster: threads
            .cluster
            .map(|stats| (config.cluster.node_id.clone(), stats)),
        upstream: threads.upstream,
    };
    api::spawn(plane).map_err(|source| ServerError::Io {
        what: "control plane",
        source,
    })?;
    if let Some(a) = bound.0 {
        info!(addr = %a, "API listening");
    }
    if let Some(a) = bound.1 {
        info!(addr = %a, "metrics listening");
    }
    Ok(bound)
}

/// A configuration error found while starting.
fn invalid(msg: String) -> ServerError {
    ServerError::Config(crate::config::ConfigError::Invalid(msg))
}
