//! What a caller sends: JSON bodies read within `[api] max_body_bytes`, query parameters, and
//! the request types with their checks (one or many users, a text or base64 payload, the ack
//! wait within `[api] max_ack_timeout_ms`, at most `[api] max_targets` users per request, a
//! close code, a user id a shard can hold). A request that fails a check is answered with an
//! [`ApiError`] before anything reaches a shard.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::CONTENT_LENGTH;
use hyper::{Request, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tether_proto::CloseCode;

use super::ctx::Ctx;
use super::deadline::Deadlines;
use super::push::Target;
use super::response::ApiError;

/// Bytes of an over-long streamed body read and dropped before answering 413.
const DRAIN_AFTER_LIMIT: usize = 256 * 1024;
/// Default wait for acknowledgements.
const DEFAULT_ACK_TIMEOUT_MS: u64 = 10_000;

/// Reads a JSON body of at most `[api] max_body_bytes`: a larger declared length is refused
/// before reading, and the read itself stops at the limit.
/// Tells `deadlines` when the body is in (the body deadline then ends).
pub(super) async fn read_json<T: DeserializeOwned>(
    ctx: &Ctx,
    req: Request<Incoming>,
    deadlines: &Deadlines,
) -> Result<T, ApiError> {
    let max = ctx.plane.cfg.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body over {max} bytes"),
        )
    };
    if let Some(len) = req.headers().get(CONTENT_LENGTH) {
        let len: u64 = len
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ApiError::bad("invalid Content-Length"))?;
        if len > max as u64 {
            return Err(too_large());
        }
    }
    // Read frame by frame up to the limit. Past it, keep reading (and dropping) a bounded
    // amount, so the 413 reaches a client still sending instead of a reset.
    let mut body = req.into_body();
    let mut buf = Vec::new();
    let mut over = false;
    let mut dropped = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::bad(format!("reading the body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if !over && buf.len() + data.len() <= max {
            buf.extend_from_slice(&data);
            continue;
        }
        over = true;
        dropped += data.len();
        if dropped > DRAIN_AFTER_LIMIT {
            break;
        }
    }
    deadlines.on_body_read();
    if over {
        return Err(too_large());
    }
    serde_json::from_slice(&buf).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_json",
            format!("invalid JSON body: {e}"),
        )
    })
}

/// The value of `name` in a query string, percent-decoded.
pub(super) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// `POST /api/push` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PushRequest {
    /// One target user.
    user: Option<String>,
    /// Several target users.
    users: Option<Vec<String>>,
    /// The payload as UTF-8 text.
    payload: Option<String>,
    /// The payload as base64 (standard alphabet, padded).
    payload_b64: Option<String>,
    /// Wait for a device's acknowledgement.
    #[serde(default)]
    want_ack: bool,
    /// How long to wait for it (default 10 s, at most `[api] max_ack_timeout_ms`).
    ack_timeout_ms: Option<u64>,
}

impl PushRequest {
    /// The users to push to, each with the payload, and the ack wait.
    pub(super) fn targets(
        self,
        ctx: &Ctx,
        budget: usize,
    ) -> Result<(Vec<Target>, Duration), ApiError> {
        let payload = match (self.payload, self.payload_b64) {
            (Some(text), None) => Bytes::from(text.into_bytes()),
            (None, Some(b64)) => Bytes::from(
                base64::engine::general_purpose::STANDARD
                    .decode(b64.as_bytes())
                    .map_err(|e| ApiError::bad(format!("payload_b64: {e}")))?,
            ),
            _ => return Err(ApiError::bad("give exactly one of payload and payload_b64")),
        };
        let users = match (self.user, self.users) {
            (Some(u), None) => vec![u],
            (None, Some(us)) if !us.is_empty() => us,
            _ => {
                return Err(ApiError::bad(
                    "give exactly one of user and users (non-empty)",
                ))
            }
        };
        if users.len() > budget {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_many_targets",
                format!(
                    "at most {} target users per request",
                    ctx.plane.cfg.max_targets
                ),
            ));
        }
        let max_ack = ctx.plane.cfg.max_ack_timeout_ms;
        let ack_ms = self.ack_timeout_ms.unwrap_or(DEFAULT_ACK_TIMEOUT_MS);
        if self.ack_timeout_ms.is_some() && !self.want_ack {
            return Err(ApiError::bad("ack_timeout_ms needs want_ack"));
        }
        if ack_ms == 0 || ack_ms > max_ack {
            return Err(ApiError::bad(format!(
                "ack_timeout_ms must be in 1..={max_ack}"
            )));
        }
        let targets = users
            .into_iter()
            .map(|user| Target {
                user,
                payload: payload.clone(),
                want_ack: self.want_ack,
            })
            .collect();
        let wait = if self.want_ack { ack_ms } else { 0 };
        Ok((targets, Duration::from_millis(wait)))
    }
}

/// `POST /api/batch` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BatchRequest {
    /// The pushes, each shaped like a `POST /api/push` body.
    pub(super) pushes: Vec<PushRequest>,
}

/// `POST /api/kick` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KickRequest {
    /// The user.
    pub(super) user: String,
    /// Only this device (default: every device).
    pub(super) device: Option<String>,
    /// Close code in the Kick frame (default 2009, Kicked).
    code: Option<u16>,
    /// Whether the client may reconnect (default false).
    #[serde(default)]
    pub(super) may_reconnect: bool,
}

impl KickRequest {
    /// The close code for the `Kick` frame: the one asked for, or `Kicked`.
    pub(super) fn close_code(&self) -> Result<CloseCode, ApiError> {
        match self.code {
            None => Ok(CloseCode::Kicked),
            Some(c @ 1000..=4999) => Ok(CloseCode::from_u16(c)),
            Some(c) => Err(ApiError::bad(format!(
                "code {c} is not a close code (1000..=4999)"
            ))),
        }
    }
}

/// A user id a shard can hold.
pub(super) fn check_user(user: &str) -> Result<(), ApiError> {
    if user.is_empty() || user.len() > tether_proto::limits::USER_MAX {
        return Err(ApiError::bad(format!(
            "user must be 1..={} bytes",
            tether_proto::limits::USER_MAX
        )));
    }
    Ok(())
}
