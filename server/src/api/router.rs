//! The way into every request: the key, route, scope and method checks, then the route's
//! handler. JSON in and out; every error is a 4xx/5xx with `{"error": "...", "code": "..."}`
//! ([`response`](super::response)).
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
//!
//! The handlers live by what they do: [`batch`](super::batch) (push, batch),
//! [`user`](super::user) (kick, presence), [`stats`](super::stats) and
//! [`probes`](super::probes) (healthz, readyz, metrics); what a request may carry is checked in
//! [`requests`](super::requests). Drain is a single call and is answered here.

use std::convert::Infallible;
use std::rc::Rc;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use super::batch::{batch, push};
use super::ctx::{Ctx, Surface};
use super::deadline::Deadlines;
use super::probes::{healthz, metrics, readyz};
use super::requests::{query_param, read_json, BatchRequest, KickRequest, PushRequest};
use super::response::{json_response, ApiError, Body};
use super::route::Route;
use super::stats::stats;
use super::user::{kick, presence};

/// Serves one request; never fails (errors become responses).
pub(super) async fn handle(
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

/// Checks the key, the route, the scope and the method, in that order, then reads the
/// request's input and calls the route's handler.
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
        Route::Healthz => Ok(healthz()),
        Route::Readyz => Ok(readyz(ctx)),
        Route::Metrics => Ok(metrics(ctx)),
        Route::Push => {
            let body: PushRequest = read_json(ctx, req, deadlines).await?;
            push(ctx, body).await
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
