//! The control plane: an HTTP API (hyper 1.x) and `/metrics` on a glommio executor of their
//! own, beside the shards.
//!
//! Shards run a blocking loop in their own io_uring and never yield to glommio; the control
//! plane is the opposite, many small async tasks (one per HTTP connection, one per request,
//! the result dispatcher), which is what glommio's executor is for. It reaches the shards only
//! through the mesh: a request becomes a [`Control`](crate::control::Control) message posted
//! to the right shard (a user's home `shard_for(user, n)`), and the shard answers on a channel
//! the message carries, or, for pushes, on the API result channel. Nothing here runs on a
//! shard's thread or takes a lock a shard takes.
//!
//! Routes: see [`router`]. Listeners: `[api] listen` (everything, guarded by `[api] keys` and
//! their scopes) and `server.metrics_listen` (only `/metrics`, `/healthz`, `/readyz`, no key).
//!
//! Nobody can lock the API out: each listener has its own connection cap and a cap per source
//! address ([`caps`]), every connection has a deadline for its head, its body and its idle
//! spells ([`deadline`]), and the metrics listener's tasks run in a glommio task queue with a
//! tenth of the API's shares, so a flood of scrapes slows scrapes, not pushes.

mod batch;
mod caps;
pub mod config;
mod ctx;
mod deadline;
mod io;
mod keys;
mod plane;
mod probes;
mod push;
mod reach;
mod requests;
mod response;
mod route;
mod router;
mod scope;
mod stats;
mod user;

use std::net::TcpListener as StdListener;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::net::{TcpListener, TcpStream};
use glommio::{Latency, LocalExecutorBuilder, Placement, Shares};
use hyper::body::Body as _;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use tracing::{debug, warn};

pub use config::{ApiConfig, ApiKey};
pub use keys::ApiKeys;
pub use plane::ControlPlane;
#[cfg(test)]
pub(crate) use scope::{Scope, Scopes};

use crate::prom::ApiMetrics;
use caps::Caps;
use ctx::{Ctx, Pending, Surface};
use deadline::Deadlines;

/// Pause after an accept error such as EMFILE before the next accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Accept errors are logged at most this often.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);
/// Scheduler shares of the API's task queue (accepts, connections, the result dispatcher).
const API_SHARES: usize = 1000;
/// Scheduler shares of the metrics listener's task queue: when both have work, the API gets
/// ten times the CPU.
const METRICS_SHARES: usize = 100;
/// While the API's queue has work, other queues yield to it this often.
const API_LATENCY: Duration = Duration::from_millis(10);

/// Starts the control plane on a thread of its own; returns at once. The thread lives until
/// the process exits.
pub fn spawn(plane: ControlPlane) -> std::io::Result<()> {
    LocalExecutorBuilder::new(Placement::Unbound)
        .name("tether-api")
        .spawn(move || serve(plane))
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(())
}

/// Runs the listeners and the result dispatcher: the API's in one task queue, the metrics
/// listener's in another with fewer shares.
async fn serve(mut plane: ControlPlane) {
    let api = plane.api.take();
    let metrics = plane.metrics.take();
    let results = plane.results.clone();
    let per_address = plane.cfg.max_connections_per_address;
    let api_caps = Caps::new(plane.cfg.max_connections, per_address);
    let metrics_caps = Caps::new(plane.cfg.metrics_max_connections, per_address);
    let ctx = Rc::new(Ctx {
        pending: Pending::default(),
        metrics: ApiMetrics::default(),
        plane,
    });
    let ex = glommio::executor();
    let api_queue = ex.create_task_queue(
        Shares::Static(API_SHARES),
        Latency::Matters(API_LATENCY),
        "api",
    );
    let metrics_queue = ex.create_task_queue(
        Shares::Static(METRICS_SHARES),
        Latency::NotImportant,
        "metrics",
    );
    let in_queue = "the queue was created on this executor";
    let dispatcher = glommio::spawn_local_into(push::dispatch(Rc::clone(&ctx), results), api_queue)
        .expect(in_queue);
    let mut tasks = Vec::new();
    let listeners = [
        (api, Surface::Api, api_caps, api_queue),
        (metrics, Surface::Metrics, metrics_caps, metrics_queue),
    ];
    for (listener, surface, caps, queue) in listeners {
        if let Some(l) = listener {
            // Connection tasks spawned by the loop run in the loop's queue.
            let task = accept_loop(Rc::clone(&ctx), l, surface, caps);
            tasks.push(glommio::spawn_local_into(task, queue).expect(in_queue));
        }
    }
    for t in tasks {
        t.await;
    }
    dispatcher.await;
}

/// Accepts HTTP connections on `listener` forever. A connection over one of `caps` is closed
/// at once and counted; on an accept error (EMFILE, ENFILE, …) the loop pauses briefly and
/// logs at a bounded rate instead of spinning.
async fn accept_loop(ctx: Rc<Ctx>, listener: StdListener, surface: Surface, caps: Rc<Caps>) {
    // SAFETY: the descriptor comes from a std listener we own and give up here.
    let listener = unsafe { TcpListener::from_raw_fd(listener.into_raw_fd()) };
    let mut last_log: Option<Instant> = None;
    let mut suppressed = 0u64;
    let open = ctx
        .metrics
        .connections
        .get_or_create(&vec![("listener".into(), surface.label().into())])
        .clone();
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                ctx.metrics.accept_errors.inc();
                if due(last_log, ACCEPT_LOG_EVERY) {
                    warn!(error = %e, suppressed, ?surface, "HTTP accept failed; backing off");
                    last_log = Some(Instant::now());
                    suppressed = 0;
                } else {
                    suppressed += 1;
                }
                glommio::timer::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let admitted = match stream.peer_addr() {
            Ok(peer) => caps.admit(peer.ip()),
            // Gone already (reset before the accept): nothing to serve.
            Err(_) => continue,
        };
        let slot = match admitted {
            Ok(slot) => slot,
            Err(why) => {
                debug!(
                    ?surface,
                    reason = why.label(),
                    "HTTP connection cap reached; closing a new connection"
                );
                ctx.metrics
                    .refused
                    .get_or_create(&vec![
                        ("listener".into(), surface.label().into()),
                        ("reason".into(), why.label().into()),
                    ])
                    .inc();
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        open.set(caps.open() as i64);
        let (ctx, open, caps) = (Rc::clone(&ctx), open.clone(), Rc::clone(&caps));
        glommio::spawn_local(async move {
            serve_connection(&ctx, stream, surface).await;
            drop(slot);
            open.set(caps.open() as i64);
        })
        .detach();
    }
}

/// Serves one HTTP connection until it ends or one of its deadlines passes (then it is
/// dropped, which closes the socket, and counted).
async fn serve_connection(ctx: &Rc<Ctx>, stream: TcpStream, surface: Surface) {
    let deadlines = Rc::new(Deadlines::new(ctx.plane.cfg.timeouts()));
    let (svc_ctx, svc_deadlines) = (Rc::clone(ctx), Rc::clone(&deadlines));
    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let ctx = Rc::clone(&svc_ctx);
        let deadlines = Rc::clone(&svc_deadlines);
        deadlines.on_head(!req.body().is_end_stream());
        async move {
            let resp = router::handle(ctx, req, surface, &deadlines).await;
            deadlines.on_response();
            resp
        }
    });
    let io = io::HyperStream {
        stream,
        deadlines: Rc::clone(&deadlines),
    };
    // No hyper timer: `deadlines` bounds the head, the body and idle spells.
    let conn = http1::Builder::new()
        .header_read_timeout(None)
        .serve_connection(io, service);
    // The watch is polled after the connection, in this task (see `Watch`).
    let served = async { Ok(conn.await) };
    let watch = async { Err(deadlines.watch().await) };
    match futures_lite::future::or(served, watch).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(error = %e, "HTTP connection ended with an error"),
        Err(expired) => {
            debug!(
                ?surface,
                kind = expired.label(),
                "HTTP connection deadline passed; closing"
            );
            ctx.metrics
                .timeouts
                .get_or_create(&vec![
                    ("listener".into(), surface.label().into()),
                    ("kind".into(), expired.label().into()),
                ])
                .inc();
        }
    }
}

/// True when `last` is unset or `every` passed since it.
fn due(last: Option<Instant>, every: Duration) -> bool {
    last.map_or(true, |t| t.elapsed() >= every)
}
