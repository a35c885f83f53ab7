//! The HTTP routes. JSON in and out; every error is a 4xx/5xx with
//! `{"error": "...", "code": "..."}`.
//!
//! | route | scope | what |
//! |---|---|---|
//! | `GET /healthz` | none | 200 while the process runs |
//! | `GET /readyz` | none | 200 when listening and not draining, else 503 |
//! | `GET /metrics` | none | OpenMetrics text |
//! | `POST /api/push` | push | push to one user or a list; one result per user |
//! | `POST /api/batch` | push | many pushes; one list of results per push |
//! | `POST /api/kick` | admin | kick a user (or one device) with a `Kick` frame |
//! | `GET /api/presence?user=U` | read | online, devices, home shard |
//! | `GET /api/stats` | read | live figures per shard |
//! | `POST /api/drain` | admin | start the drain, as SIGTERM does |
//!
//! `/api/*` needs `Authorization: Bearer KEY` when `[api] keys` is set (else 401
//! `unauthorized`), and the key must hold the route's scope (else 403 `forbidden`). The order
//! of the checks: key, route (404), scope, method (405), body.

use std::convert::Infallible;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use serde_json::{json, Value};

use super::deadline::Deadlines;
use super::push::{push_all, UserResult};
use super::reach::{post_shard, shard_answer, Answer, Reach};
use super::requests::{check_user, query_param, read_json, BatchRequest, KickRequest, PushRequest};
use super::response::{json_response, ApiError, Body};
use super::route::Route;
use super::{Ctx, Surface};
use crate::cluster::{ClusterMsg, Fanned};
use crate::control::{Control, ShardStats};
use crate::counters::Counter;
use crate::routing::shard_for;

/// Serves one request; never fails (errors become responses).
pub(crate) async fn handle(
    ctx: Rc<Ctx>,
    req: Request<Incoming>,
    surface: Surface,
    deadlines: &Deadlines,
) -> Result<Response<Body>, Infallible> {
    let route = Route::find(req.uri().path(), surface);
    let mut resp = match route_request(&ctx, req, surface, route, deadlines).await {
        Ok(r) => r,
        Err(e) => e.response(),
    };
    if resp.status() == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    ctx.metrics
        .requests
        .get_or_create(&vec![
            (
                "route".to_string(),
                route.map_or("other", Route::path).to_string(),
            ),
            ("status".to_string(), resp.status().as_u16().to_string()),
        ])
        .inc();
    Ok(resp)
}

async fn route_request(
    ctx: &Ctx,
    req: Request<Incoming>,
    surface: Surface,
    route: Option<Route>,
    deadlines: &Deadlines,
) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path();
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no route {path}"),
        )
    };
    // A key is checked first on every /api/ path of the API listener, known or not, so a
    // caller without a key learns nothing about the routes.
    let guarded = match route {
        Some(r) => r.scope().is_some(),
        None => surface == Surface::Api && path.starts_with("/api/"),
    };
    if guarded {
        let auth = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
        let Some(granted) = ctx.plane.keys.grant(auth) else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong API key (Authorization: Bearer KEY)",
            ));
        };
        let route = route.ok_or_else(not_found)?;
        if let Some(need) = route.scope() {
            if !granted.contains(need) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!(
                        "this API key lacks the {:?} scope that {} needs",
                        need.name(),
                        route.path()
                    ),
                ));
            }
        }
    }
    let route = route.ok_or_else(not_found)?;
    only(req.method(), &route.method())?;
    match route {
        Route::Healthz => Ok(json_response(StatusCode::OK, &json!({"status": "alive"}))),
        Route::Readyz => Ok(readyz(ctx)),
        Route::Metrics => Ok(metrics(ctx)),
        Route::Push => {
            let body: PushRequest = read_json(ctx, req, deadlines).await?;
            let (targets, wait) = body.targets(ctx, ctx.plane.cfg.max_targets)?;
            let results = push_all(ctx, targets, wait).await;
            Ok(json_response(
                StatusCode::OK,
                &json!({ "results": results }),
            ))
        }
        Route::Batch => {
            let body: BatchRequest = read_json(ctx, req, deadlines).await?;
            batch(ctx, body).await
        }
        Route::Kick => {
            let body: KickRequest = read_json(ctx, req, deadlines).await?;
            kick(ctx, body).await
        }
        Route::Presence => {
            let user = query_param(req.uri().query(), "user")
                .ok_or_else(|| ApiError::bad("missing query parameter user"))?;
            presence(ctx, user).await
        }
        Route::Stats => Ok(stats(ctx).await),
        Route::Drain => {
            tracing::info!("drain requested through the API");
            ctx.plane.shutdown.trigger();
            Ok(json_response(
                StatusCode::ACCEPTED,
                &json!({"draining": true}),
            ))
        }
    }
}

/// Refuses any method but `want`.
fn only(method: &Method, want: &Method) -> Result<(), ApiError> {
    if method == want {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("use {want}"),
    ))
}

/// Runs every push of a batch concurrently; answers `{"results": [{"results": [...]}, ...]}`
/// in request order, or one error for the whole batch when any push is malformed.
async fn batch(ctx: &Ctx, body: BatchRequest) -> Result<Response<Body>, ApiError> {
    if body.pushes.is_empty() {
        return Err(ApiError::bad("pushes is empty"));
    }
    let mut budget = ctx.plane.cfg.max_targets;
    let mut all = Vec::new();
    let mut sizes = Vec::new();
    let mut wait = Duration::ZERO;
    for (i, p) in body.pushes.into_iter().enumerate() {
        let (targets, w) = p
            .targets(ctx, budget)
            .map_err(|e| e.at(&format!("pushes[{i}]")))?;
        budget -= targets.len();
        wait = wait.max(w);
        sizes.push(targets.len());
        all.extend(targets);
    }
    // One shared ack deadline: the longest any push asked for (a push that did not ask for an
    // ack does not wait for one).
    let mut results = push_all(ctx, all, wait).await.into_iter();
    let grouped: Vec<Value> = sizes
        .into_iter()
        .map(|n| {
            let r: Vec<UserResult> = results.by_ref().take(n).collect();
            json!({ "results": r })
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({ "results": grouped }),
    ))
}

/// Kicks the user's connections (one device's, when given) on every node that holds them.
async fn kick(ctx: &Ctx, body: KickRequest) -> Result<Response<Body>, ApiError> {
    check_user(&body.user)?;
    let code = body.close_code()?;
    let answer = Reach::of(ctx)
        .ask(
            &body.user,
            |reply| ClusterMsg::Kick {
                user: body.user.clone(),
                device: body.device.clone(),
                code,
                may_reconnect: body.may_reconnect,
                reply,
            },
            |reply| Control::Kick {
                user: body.user.clone(),
                device: body.device.clone(),
                code,
                may_reconnect: body.may_reconnect,
                reply,
            },
        )
        .await?;
    let answer = match answer {
        Answer::Cluster(fanned) => json!({
            "user": body.user,
            "device": body.device,
            "code": code.to_u16(),
            "kicked": fanned.total(),
            "cluster": cluster_json(ctx, &fanned),
        }),
        Answer::Home(kicked) => json!({
            "user": body.user,
            "device": body.device,
            "code": code.to_u16(),
            "kicked": kicked,
        }),
    };
    Ok(json_response(StatusCode::OK, &answer))
}

/// Says whether the user is online, and on how many devices.
async fn presence(ctx: &Ctx, user: String) -> Result<Response<Body>, ApiError> {
    check_user(&user)?;
    let answer = Reach::of(ctx)
        .ask(
            &user,
            |reply| ClusterMsg::Presence {
                user: user.clone(),
                reply,
            },
            |reply| Control::Presence {
                user: user.clone(),
                reply,
            },
        )
        .await?;
    let answer = match answer {
        Answer::Cluster(fanned) => {
            let devices = fanned.total();
            json!({
                "user": user,
                "online": devices > 0,
                "devices": devices,
                "shard": shard_for(&user, ctx.plane.mesh.len()),
                "cluster": cluster_json(ctx, &fanned),
            })
        }
        Answer::Home(p) => json!({
            "user": user,
            "online": p.devices > 0,
            "devices": p.devices,
            "shard": p.shard,
        }),
    };
    Ok(json_response(StatusCode::OK, &answer))
}

/// Every node's part of a kick or presence answer.
fn cluster_json(ctx: &Ctx, fanned: &Fanned) -> Value {
    let me = ctx.plane.cluster.as_ref().map_or("", |(id, _)| id.as_str());
    let mut nodes = vec![match fanned.local {
        Some(n) => json!({"node": me, "count": n}),
        None => json!({"node": me, "error": "shard_unavailable"}),
    }];
    for (node, count) in &fanned.nodes {
        nodes.push(match count {
            Ok(n) => json!({"node": node, "count": n}),
            Err(e) => json!({"node": node, "error": e}),
        });
    }
    json!({
        "node": me,
        "directory": if fanned.directory { "ok" } else { "unavailable" },
        "nodes": nodes,
    })
}

/// One shard's figures as JSON.
#[derive(Debug, Serialize)]
struct ShardJson {
    shard: usize,
    connections: usize,
    users: usize,
    draining: bool,
    acks_waiting: usize,
    mesh_depth: usize,
    counters: serde_json::Map<String, Value>,
}

async fn stats(ctx: &Ctx) -> Response<Body> {
    let n = ctx.plane.mesh.len();
    let mut asked = Vec::with_capacity(n);
    for i in 0..n {
        let (reply, rx) = flume::bounded(1);
        let posted = post_shard(&ctx.plane.mesh, i, Control::Stats { reply }).is_ok();
        asked.push((i, posted.then_some(rx)));
    }
    let mut shards = Vec::with_capacity(n);
    let (mut connections, mut users) = (0, 0);
    for (i, rx) in asked {
        let answer = match rx {
            Some(rx) => shard_answer(&rx).await,
            None => None,
        };
        match answer {
            Some(s) => {
                connections += s.connections;
                users += s.users;
                shards.push(serde_json::to_value(shard_json(ctx, s)).unwrap_or(Value::Null));
            }
            None => shards.push(json!({"shard": i, "error": "no answer"})),
        }
    }
    let cluster = match &ctx.plane.cluster {
        Some((node, stats)) => {
            let mut figures: serde_json::Map<String, Value> = stats
                .all()
                .into_iter()
                .map(|(f, v)| (f.name.to_string(), Value::from(v.load(Ordering::Relaxed))))
                .collect();
            figures.insert("node".into(), Value::from(node.as_str()));
            Value::Object(figures)
        }
        None => Value::Null,
    };
    json_response(
        StatusCode::OK,
        &json!({
            "ready": ctx.ready(),
            "draining": ctx.plane.shutdown.is_triggered(),
            "connections": connections,
            "users": users,
            "shards": shards,
            "cluster": cluster,
        }),
    )
}

fn shard_json(ctx: &Ctx, s: ShardStats) -> ShardJson {
    let counters = Counter::ALL
        .iter()
        .map(|c| (c.name().to_string(), Value::from(s.counters.get(*c))))
        .collect();
    ShardJson {
        shard: s.shard,
        connections: s.connections,
        users: s.users,
        draining: s.draining,
        acks_waiting: s.acks_waiting,
        mesh_depth: ctx.plane.mesh.depth(s.shard),
        counters,
    }
}

fn readyz(ctx: &Ctx) -> Response<Body> {
    if ctx.ready() {
        return json_response(StatusCode::OK, &json!({"status": "ready"}));
    }
    let status = if ctx.plane.shutdown.is_triggered() {
        "draining"
    } else {
        "starting"
    };
    json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &json!({ "status": status }),
    )
}

fn metrics(ctx: &Ctx) -> Response<Body> {
    let text = crate::prom::render(
        &ctx.plane.published,
        &ctx.plane.mesh,
        &ctx.metrics,
        ctx.plane.cluster.as_ref().map(|(_, s)| s.as_ref()),
        ctx.plane.upstream.as_deref(),
        crate::prom::Status {
            ready: ctx.ready(),
            draining: ctx.plane.shutdown.is_triggered(),
        },
    );
    let mut r = Response::new(Full::new(Bytes::from(text)));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(crate::prom::CONTENT_TYPE),
    );
    r
}
