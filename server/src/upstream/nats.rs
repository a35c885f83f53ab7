//! `sink = "nats"`: a NATS request per message on `upstream.nats_subject`, over the cluster's
//! servers (`[cluster] nats_urls`, with the cluster's credentials and TLS) on a connection of
//! its own.
//!
//! **Request.** Subject `upstream.nats_subject`, the payload as the client sent it, headers
//! `Tether-User`, `Tether-Device`, `Tether-Session`, `Tether-Client-Id` (see `headers.rs`),
//! and a reply subject: backends subscribe in a queue group of their choosing (one of them gets
//! each message) and answer with `msg.respond`.
//!
//! **Answer.**
//!
//! | backend or NATS                                 | the client gets                       |
//! |-------------------------------------------------|---------------------------------------|
//! | a reply with header `Tether-Status: rejected`   | `Refused(Rejected)`, the body as the reply |
//! | any other reply                                 | `Accepted`, the body as the reply     |
//! | no subscriber ("no responders", at once)        | `Refused(NoBackend)`                  |
//! | NATS not connected                              | `Refused(NoBackend)` (not sent)       |
//! | no reply within `timeout_ms`                    | `Refused(TimedOut)`                   |
//!
//! The header's name and value are matched without regard to case. A reply longer than
//! `max_reply_bytes` is dropped: the client gets the status alone.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::{HeaderMap, Message, RequestErrorKind};
use tether_proto::RefuseReason;
use tokio::time::{timeout_at, Instant};
use tracing::{debug, info, warn};

use super::{headers, Answer, UpstreamJob, UpstreamStats};

/// How long past the message's deadline the client may take to give up on a request it could
/// not even publish (its own timer normally ends it at the deadline).
const GRACE: Duration = Duration::from_millis(100);

/// The NATS client and the subject.
pub(crate) struct Nats {
    /// Its own connection to the cluster's servers (reconnects by itself).
    client: async_nats::Client,
    /// `upstream.nats_subject`.
    subject: String,
}

impl Nats {
    /// Starts the client for `servers`; returns at once (NATS is reached in the background and
    /// reconnected to forever; until then messages are `NoBackend`). Fails only on URLs or
    /// credentials the client cannot use (the error names neither's value).
    pub(crate) async fn connect(
        servers: crate::cluster::NatsServers,
        subject: String,
        stats: Arc<UpstreamStats>,
    ) -> Result<Nats, String> {
        let options = servers
            .options()?
            .name("tether-upstream")
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(2))
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((attempts as u64 * 100).min(1000))
            })
            .event_callback(move |event| {
                let stats = Arc::clone(&stats);
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            stats.connected.store(1, Ordering::Relaxed);
                            info!("upstream: connected to NATS");
                        }
                        async_nats::Event::Disconnected => {
                            stats.connected.store(0, Ordering::Relaxed);
                            warn!("upstream: NATS connection lost; messages are refused NoBackend until it is back");
                        }
                        other => debug!(event = %other, "upstream: NATS event"),
                    }
                }
            });
        let client = options
            .connect(servers.urls.clone())
            .await
            .map_err(|e| format!("{e} ({:?})", servers.urls_for_log()))?;
        Ok(Nats { client, subject })
    }

    /// Requests `job` on the subject and waits for its reply until `deadline`.
    pub(crate) async fn deliver(
        &self,
        job: &UpstreamJob,
        deadline: Instant,
        stats: &UpstreamStats,
    ) -> Answer {
        if self.client.connection_state() != State::Connected {
            // Published now, it would wait in the client's buffer and time out: say at once
            // that it was not sent.
            return Answer::refused(RefuseReason::NoBackend);
        }
        let mut headers = HeaderMap::new();
        for (name, value) in headers::of(job) {
            headers.insert(name, value.as_str());
        }
        let request = async_nats::Request::new()
            .headers(headers)
            .payload(job.payload.clone())
            .timeout(Some(deadline.saturating_duration_since(Instant::now())));
        UpstreamStats::inc(&stats.sent);
        let sent = self.client.send_request(self.subject.clone(), request);
        match timeout_at(deadline + GRACE, sent).await {
            Err(_) => Answer::refused(RefuseReason::TimedOut),
            Ok(Ok(reply)) => Answer::Answered {
                accepted: !rejected(&reply),
                reply: reply.payload,
                reply_lost: false,
            },
            Ok(Err(e)) => match e.kind() {
                RequestErrorKind::NoResponders => Answer::refused(RefuseReason::NoBackend),
                RequestErrorKind::TimedOut => Answer::refused(RefuseReason::TimedOut),
                // The client could not publish it (closed or disconnected meanwhile).
                RequestErrorKind::Other => Answer::failed(RefuseReason::NoBackend, e),
            },
        }
    }
}

/// Whether a reply refuses the message: header `Tether-Status: rejected`.
fn rejected(reply: &Message) -> bool {
    reply.headers.as_ref().is_some_and(|h| {
        h.iter().any(|(name, values)| {
            AsRef::<str>::as_ref(name).eq_ignore_ascii_case(headers::STATUS)
                && values
                    .iter()
                    .any(|v| v.as_str().trim().eq_ignore_ascii_case("rejected"))
        })
    })
}
