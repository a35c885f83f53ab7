//! Requests to other nodes. Each is signed for the node it goes to (`seal.rs`), sent on that
//! node's subject and bounded by `forward_timeout_ms`; its reply counts only when it is
//! signed for that very request. What does not come back is an [`AskError`], counted by
//! kind. Refused messages, either way, are logged at a bounded rate.

use std::sync::atomic::Ordering;

use tracing::{debug, warn};

use super::node::{unix_ms, Node};
use super::seal::{self, Stamp, Tag};
use super::stats::ClusterStats;
use super::wire::Reply;

/// Shortest time between two log lines about refused requests, ms.
pub(super) const REFUSAL_LOG_MS: u64 = 10_000;

/// Why a request to another node has no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum AskError {
    /// Nobody listens on its subject.
    Gone,
    /// No answer in time.
    TimedOut,
    /// NATS unreachable, or a malformed answer.
    Failed,
}

impl AskError {
    pub(super) fn name(self) -> &'static str {
        match self {
            AskError::Gone => "gone",
            AskError::TimedOut => "timed_out",
            AskError::Failed => "unavailable",
        }
    }
}

impl Node {
    /// Signs a request to `node`: its headers and MAC.
    pub(super) fn sign(&self, node: &str, body: &[u8]) -> (async_nats::HeaderMap, Tag) {
        let stamp = Stamp {
            from: self.cfg.node_id.clone(),
            time_ms: unix_ms(),
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
        };
        seal::sign_request(&self.keys, &stamp, node, body)
    }

    /// Sends a signed request to `node` and waits for its reply, which must be signed for it.
    pub(super) async fn ask(&self, node: &str, req: Vec<u8>) -> Result<Reply, AskError> {
        if !self.connected() {
            ClusterStats::inc(&self.stats.forward_failed);
            return Err(AskError::Failed);
        }
        ClusterStats::inc(&self.stats.forwards);
        let subject = self.cfg.subject(node);
        let (headers, tag) = self.sign(node, &req);
        let sent = self
            .client
            .request_with_headers(subject, headers, req.into());
        let err = match tokio::time::timeout(self.forward_timeout(), sent).await {
            Ok(Ok(msg))
                if !seal::check_reply(&self.keys, &tag, msg.headers.as_ref(), &msg.payload) =>
            {
                ClusterStats::inc(&self.stats.replies_refused);
                self.log_refusal(node, "reply not signed for its request");
                AskError::Failed
            }
            Ok(Ok(msg)) => match Reply::decode(&msg.payload) {
                Ok(Reply::Error { message }) => {
                    debug!(%node, %message, "cluster: node answered an error");
                    AskError::Failed
                }
                Ok(reply) => return Ok(reply),
                Err(_) => AskError::Failed,
            },
            Ok(Err(e)) => match e.kind() {
                async_nats::RequestErrorKind::NoResponders => AskError::Gone,
                async_nats::RequestErrorKind::TimedOut => AskError::TimedOut,
                async_nats::RequestErrorKind::Other => AskError::Failed,
            },
            Err(_) => AskError::TimedOut,
        };
        ClusterStats::inc(match err {
            AskError::Gone => &self.stats.forward_gone,
            AskError::TimedOut => &self.stats.forward_timed_out,
            AskError::Failed => &self.stats.forward_failed,
        });
        Err(err)
    }

    /// A warning about a refused message, at most one per [`REFUSAL_LOG_MS`].
    pub(super) fn log_refusal(&self, node: &str, why: &str) {
        let mut log = self.refusal_log.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(suppressed) = log.hit(unix_ms()) {
            warn!(
                %node,
                why,
                suppressed,
                "cluster: refused a message (is cluster.secrets the same on every node, and \
                 are their clocks within cluster.max_clock_skew_ms?)"
            );
        }
    }
}

/// Awaits every future, concurrently, and returns their outputs in order.
pub(super) async fn join_all<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in pinned.iter_mut().zip(out.iter_mut()) {
            if slot.is_some() {
                continue;
            }
            match f.as_mut().poll(cx) {
                std::task::Poll::Ready(v) => *slot = Some(v),
                std::task::Poll::Pending => pending = true,
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}
