//! What every route answers: a JSON body with its status, and, when a request fails, an
//! [`ApiError`], which becomes a 4xx or 5xx whose body is `{"error": "...", "code": "..."}`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde_json::{json, Value};

/// A response body.
pub(super) type Body = Full<Bytes>;

/// An error answered to the caller.
#[derive(Debug)]
pub(super) struct ApiError {
    /// HTTP status.
    status: StatusCode,
    /// Stable machine-readable code.
    code: &'static str,
    /// Human-readable explanation.
    message: String,
}

impl ApiError {
    pub(super) fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// A 400 `bad_request`.
    pub(super) fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// The same error with its message prefixed by the part of the request it is about
    /// (`pushes[2]: ...`).
    pub(super) fn at(mut self, part: &str) -> ApiError {
        self.message = format!("{part}: {}", self.message);
        self
    }

    /// The error as the response the caller gets.
    pub(super) fn response(&self) -> Response<Body> {
        json_response(
            self.status,
            &json!({"error": self.message, "code": self.code}),
        )
    }
}

/// A JSON response.
pub(super) fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    body.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}
