//! The push routes, `POST /api/push` and `POST /api/batch`. A request's users become
//! [`Target`](super::push::Target)s for [`push_all`], which posts each to its user's home shard
//! and waits for the results; the answer gives one result per user, in request order (a
//! batch's grouped per push).

use std::time::Duration;

use hyper::{Response, StatusCode};
use serde_json::{json, Value};

use super::ctx::Ctx;
use super::push::{push_all, UserResult};
use super::requests::{BatchRequest, PushRequest};
use super::response::{json_response, ApiError, Body};

/// Pushes to the users of one request; answers `{"results": [...]}`, one result per user in
/// request order.
pub(super) async fn push(ctx: &Ctx, body: PushRequest) -> Result<Response<Body>, ApiError> {
    let (targets, wait) = body.targets(ctx, ctx.plane.cfg.max_targets)?;
    let results = push_all(ctx, targets, wait).await;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "results": results }),
    ))
}

/// Runs every push of a batch concurrently; answers `{"results": [{"results": [...]}, ...]}`
/// in request order, or one error for the whole batch when any push is malformed.
pub(super) async fn batch(ctx: &Ctx, body: BatchRequest) -> Result<Response<Body>, ApiError> {
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
