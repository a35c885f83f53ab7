//! `sink = "webhook"`: an HTTP/1.1 POST per message to `upstream.webhook_url`.
//!
//! **Request.** `POST <webhook_url>`, the body is the message's payload as the client sent it,
//! `Content-Type: application/octet-stream`, the sender in `Tether-User`, `Tether-Device`,
//! `Tether-Session` and `Tether-Client-Id` (see `headers.rs`), and
//! `Authorization: Bearer <upstream.webhook_secret>` when the secret is set.
//!
//! **Answer.**
//!
//! | webhook answers                          | the client gets                            |
//! |------------------------------------------|--------------------------------------------|
//! | 2xx                                      | `Accepted`, the body as the reply          |
//! | 429                                      | `Refused(RateLimited)`, no reply           |
//! | other 4xx                                | `Refused(Rejected)`, the body as the reply |
//! | 503                                      | `Refused(Overloaded)`, no reply            |
//! | other 5xx                                | `Refused(TimedOut)`, no reply              |
//! | 1xx, 3xx (redirects are not followed)    | `Refused(NoBackend)`                       |
//! | connect refused, DNS, connect timeout    | `Refused(NoBackend)` (not sent)            |
//! | connection broken after sending          | `Refused(TimedOut)`                        |
//! | no answer within `timeout_ms`            | `Refused(TimedOut)`                        |
//! | no request slot free within `timeout_ms` | `Refused(Overloaded)` (not sent)           |
//!
//! A reply is read up to `max_reply_bytes`; a longer one (by its `Content-Length` or as it
//! arrives) is not read further and is dropped: the client gets the status alone.
//!
//! **Why a 5xx other than 503 is `TimedOut`.** Every refusal but `Rejected` and `TimedOut`
//! tells the client its message was not processed, so it may send it again as new. A 500, 502
//! or 504 promises nothing of the kind: the backend (or a proxy in front of it) failed
//! somewhere while handling the request, perhaps after acting on it. `TimedOut` is the one
//! status that means "may or may not have been processed": the client resends with the same
//! `client_id` and the backend can tell a repeat. 503 is the exception because it says the
//! server did not take the request on ("Service Unavailable", usually with `Retry-After`),
//! which is what `Overloaded` tells the client.
//!
//! **Connections.** At most `webhook_concurrency` requests at once (a semaphore); hyper's pool
//! keeps up to as many keep-alive connections and reuses them. An idle connection is closed
//! after [`POOL_IDLE`], shorter than common servers' keep-alive timeouts (Node.js: 5 s), so a
//! request is rarely written to a connection the server is closing at that moment.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tether_proto::RefuseReason;
use tokio::sync::Semaphore;
use tokio::time::{timeout_at, Instant};

use super::{headers, Answer, UpstreamConfig, UpstreamJob, UpstreamStats};

/// How long an idle keep-alive connection stays in the pool.
pub(crate) const POOL_IDLE: Duration = Duration::from_secs(4);
/// Longest wait for a TCP connection; a webhook that cannot be reached in this time is
/// `NoBackend` (the message was not sent). Half the message timeout when that is shorter.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The webhook client: the pool, the request slots and what every request carries.
pub(crate) struct Webhook {
    /// hyper's pooled HTTP/1.1 client.
    client: Client<HttpConnector, Full<Bytes>>,
    /// `upstream.webhook_url`.
    uri: Uri,
    /// `Bearer <secret>`, marked sensitive so it is never printed; `None` without a secret.
    authorization: Option<HeaderValue>,
    /// The four sender header names, parsed once.
    names: [HeaderName; 4],
    /// Requests at once: `webhook_concurrency` permits.
    slots: Semaphore,
    /// `upstream.max_reply_bytes`.
    max_reply: usize,
}

/// What a webhook status means for the message (see the table in the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Accepted; the body is the reply.
    Accept,
    /// Rejected; the body is the reply.
    Reject,
    /// Refused for this reason, without a reply.
    Refuse(RefuseReason),
}

/// The [`Verdict`] for a webhook's status.
pub(crate) fn verdict(status: StatusCode) -> Verdict {
    match status.as_u16() {
        200..=299 => Verdict::Accept,
        429 => Verdict::Refuse(RefuseReason::RateLimited),
        400..=499 => Verdict::Reject,
        503 => Verdict::Refuse(RefuseReason::Overloaded),
        500..=599 => Verdict::Refuse(RefuseReason::TimedOut),
        _ => Verdict::Refuse(RefuseReason::NoBackend),
    }
}

impl Webhook {
    /// The client for `cfg` (sink `webhook`, validated). Fails on a URL or secret that cannot
    /// be sent (the error never shows the secret).
    pub(crate) fn new(cfg: &UpstreamConfig) -> std::io::Result<Webhook> {
        let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
        let uri: Uri = cfg
            .webhook_url
            .parse()
            .map_err(|e| invalid(format!("upstream.webhook_url: {e}")))?;
        let authorization = if cfg.webhook_secret.is_empty() {
            None
        } else {
            let mut v =
                HeaderValue::try_from(format!("Bearer {}", cfg.webhook_secret)).map_err(|_| {
                    invalid("upstream.webhook_secret is not a valid header value".into())
                })?;
            v.set_sensitive(true);
            Some(v)
        };
        let name = |n: &str| {
            HeaderName::from_bytes(n.as_bytes()).map_err(|e| invalid(format!("header {n}: {e}")))
        };
        let names = [
            name(headers::USER)?,
            name(headers::DEVICE)?,
            name(headers::SESSION)?,
            name(headers::CLIENT_ID)?,
        ];
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector
            .set_connect_timeout(Some(CONNECT_TIMEOUT.min(
                Duration::from_millis(cfg.timeout_ms / 2).max(Duration::from_millis(1)),
            )));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(cfg.webhook_concurrency)
            .pool_timer(TokioTimer::new())
            // The wire then shows the names as documented (they are case-insensitive anyway).
            .http1_title_case_headers(true)
            .build(connector);
        Ok(Webhook {
            client,
            uri,
            authorization,
            names,
            slots: Semaphore::new(cfg.webhook_concurrency),
            max_reply: cfg.max_reply_bytes,
        })
    }

    /// Posts `job` and reads the answer, all before `deadline`.
    pub(crate) async fn deliver(
        &self,
        job: &UpstreamJob,
        deadline: Instant,
        stats: &UpstreamStats,
    ) -> Answer {
        let Ok(Ok(_slot)) = timeout_at(deadline, self.slots.acquire()).await else {
            return Answer::failed(
                RefuseReason::Overloaded,
                "no webhook request slot was free before the timeout",
            );
        };
        UpstreamStats::inc(&stats.sent);
        let response = match timeout_at(deadline, self.client.request(self.request(job))).await {
            Err(_) => return Answer::refused(RefuseReason::TimedOut),
            Ok(Err(e)) if e.is_connect() => {
                return Answer::failed(RefuseReason::NoBackend, chain(&e));
            }
            // Written, perhaps read and acted on, then the connection broke.
            Ok(Err(e)) => return Answer::failed(RefuseReason::TimedOut, chain(&e)),
            Ok(Ok(r)) => r,
        };
        let status = response.status();
        // Read even a body that is not a reply, so the connection can be reused.
        let (reply, reply_lost) = read_reply(response.into_body(), self.max_reply, deadline).await;
        match verdict(status) {
            Verdict::Accept | Verdict::Reject => Answer::Answered {
                accepted: verdict(status) == Verdict::Accept,
                reply,
                reply_lost,
            },
            Verdict::Refuse(RefuseReason::RateLimited) => {
                Answer::refused(RefuseReason::RateLimited)
            }
            Verdict::Refuse(reason) => {
                Answer::failed(reason, format_args!("webhook answered {status}"))
            }
        }
    }

    /// The request for `job`.
    fn request(&self, job: &UpstreamJob) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(job.payload.clone()));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.uri.clone();
        let h = req.headers_mut();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        for (name, (_, value)) in self.names.iter().zip(headers::of(job)) {
            // Always valid: percent-encoded or decimal, visible ASCII only.
            if let Ok(v) = HeaderValue::try_from(value) {
                h.insert(name.clone(), v);
            }
        }
        if let Some(auth) = &self.authorization {
            h.insert(AUTHORIZATION, auth.clone());
        }
        req
    }
}

/// Reads a body of at most `max` bytes before `deadline`. Returns what was read and whether
/// the reply is lost: longer than `max` (by its length or as it came; reading stops there),
/// cut off, or too slow. A lost reply is returned empty.
async fn read_reply(mut body: Incoming, max: usize, deadline: Instant) -> (Bytes, bool) {
    if body.size_hint().lower() > max as u64 {
        return (Bytes::new(), true);
    }
    let mut buf = BytesMut::new();
    loop {
        match timeout_at(deadline, body.frame()).await {
            Ok(None) => return (buf.freeze(), false),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if buf.len() + data.len() > max {
                        return (Bytes::new(), true);
                    }
                    buf.extend_from_slice(&data);
                }
            }
            Ok(Some(Err(_))) | Err(_) => return (Bytes::new(), true),
        }
    }
}

/// An error and its causes on one line ("client error (Connect): tcp connect error:
/// Connection refused").
fn chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        line.push_str(": ");
        line.push_str(&s.to_string());
        source = s.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_as_documented() {
        let v = |code: u16| verdict(StatusCode::from_u16(code).unwrap());
        assert_eq!(v(200), Verdict::Accept);
        assert_eq!(v(204), Verdict::Accept);
        assert_eq!(v(400), Verdict::Reject);
        assert_eq!(v(403), Verdict::Reject);
        assert_eq!(v(409), Verdict::Reject);
        assert_eq!(v(429), Verdict::Refuse(RefuseReason::RateLimited));
        assert_eq!(v(500), Verdict::Refuse(RefuseReason::TimedOut));
        assert_eq!(v(502), Verdict::Refuse(RefuseReason::TimedOut));
        assert_eq!(v(503), Verdict::Refuse(RefuseReason::Overloaded));
        assert_eq!(v(504), Verdict::Refuse(RefuseReason::TimedOut));
        assert_eq!(v(301), Verdict::Refuse(RefuseReason::NoBackend));
        assert_eq!(v(101), Verdict::Refuse(RefuseReason::NoBackend));
    }
}
