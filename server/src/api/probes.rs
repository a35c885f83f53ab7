//! The routes anyone may call, also served on the key-less metrics listener: `GET /healthz`,
//! `GET /readyz` and `GET /metrics`. None reaches a shard: readiness is two flags, and
//! `/metrics` renders what the shards already publish.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde_json::json;

use super::ctx::Ctx;
use super::response::{json_response, Body};

/// 200 while the process runs.
pub(super) fn healthz() -> Response<Body> {
    json_response(StatusCode::OK, &json!({"status": "alive"}))
}

/// 200 when every shard listens and the node is not draining, else 503 with why.
pub(super) fn readyz(ctx: &Ctx) -> Response<Body> {
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

/// The OpenMetrics exposition.
pub(super) fn metrics(ctx: &Ctx) -> Response<Body> {
    let text = crate::prom::render(
        &ctx.plane.published,
        &ctx.plane.mesh,
        &ctx.metrics,
        ctx.plane.cluster.as_ref().map(|(_, s)| s.as_ref()),
        ctx.plane.upstream.as_deref(),
        crate::prom::Status {
            ready: ctx.ready(),
            draining: ctx.plane.shutdown.is_triggered(),
            open_fds: crate::prom::open_fds(),
        },
    );
    let mut r = Response::new(Full::new(Bytes::from(text)));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(crate::prom::CONTENT_TYPE),
    );
    r
}
