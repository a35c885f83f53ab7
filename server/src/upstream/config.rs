//! `[upstream]` and `[send]`: where clients' messages go and what clients may send each other.

use serde::Deserialize;

/// Where upstream messages go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sink {
    /// Refused with `NotAllowed`.
    Off,
    /// Backend connections that logged in with the `UPSTREAM` flag.
    Backends,
    /// An HTTP POST per message to `webhook_url`.
    Webhook,
    /// A NATS request per message on `nats_subject` (needs `[cluster] nats_urls`).
    Nats,
}

/// `[upstream]`: see `default.toml` for each key's meaning. Its `Debug` never shows
/// `webhook_secret`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Where messages go.
    pub sink: Sink,
    /// Largest payload of one message.
    pub max_payload: usize,
    /// Largest backend reply handed to the client.
    pub max_reply_bytes: usize,
    /// Messages of one client connection waiting for their result at once.
    pub max_in_flight_per_connection: u32,
    /// Messages waiting for a backend's answer at once, per shard holding backend connections
    /// (sink `backends`) or on the upstream thread (webhook, NATS).
    pub max_in_flight: usize,
    /// How long a message waits for the backend's answer before it is `TimedOut`.
    pub timeout_ms: u64,
    /// The webhook's URL (`http://host:port/path`; sink `webhook`).
    pub webhook_url: String,
    /// Requests to the webhook at once (and keep-alive connections kept).
    pub webhook_concurrency: usize,
    /// Sent as `Authorization: Bearer ...` with every webhook request, so the backend knows
    /// the request comes from tether. Empty: no header (loopback webhooks only).
    pub webhook_secret: String,
    /// The NATS subject messages are requested on (sink `nats`).
    pub nats_subject: String,
}

impl std::fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = if self.webhook_secret.is_empty() {
            "<none>"
        } else {
            "<redacted>"
        };
        f.debug_struct("UpstreamConfig")
            .field("sink", &self.sink)
            .field("max_payload", &self.max_payload)
            .field("max_reply_bytes", &self.max_reply_bytes)
            .field(
                "max_in_flight_per_connection",
                &self.max_in_flight_per_connection,
            )
            .field("max_in_flight", &self.max_in_flight)
            .field("timeout_ms", &self.timeout_ms)
            .field("webhook_url", &self.webhook_url)
            .field("webhook_concurrency", &self.webhook_concurrency)
            .field("webhook_secret", &secret)
            .field("nats_subject", &self.nats_subject)
            .finish()
    }
}

/// Bytes an `Upstream` or `UpstreamResult` body spends on its other fields, at most (a 10-byte
/// client id, flags or status and reason): what a payload or reply leaves of `server.max_frame`.
pub const FRAME_OVERHEAD: usize = 16;

impl UpstreamConfig {
    /// The largest payload taken: `max_payload`, but never more than fits in a frame.
    pub fn payload_limit(&self, max_frame: usize) -> usize {
        self.max_payload
            .min(max_frame.saturating_sub(FRAME_OVERHEAD))
    }

    /// The longest reply passed on: `max_reply_bytes`, but never more than fits in a frame.
    pub fn reply_limit(&self, max_frame: usize) -> usize {
        self.max_reply_bytes
            .min(max_frame.saturating_sub(FRAME_OVERHEAD))
    }

    /// Checks the section against the server's maximum frame size and whether a cluster is
    /// configured (the NATS sink uses its servers).
    pub fn validate(&self, max_frame: usize, cluster: bool) -> Result<(), String> {
        if self.max_payload == 0 {
            return Err("upstream.max_payload must be at least 1".into());
        }
        if max_frame <= FRAME_OVERHEAD {
            return Err(format!(
                "server.max_frame must be above {FRAME_OVERHEAD} bytes to carry upstream messages"
            ));
        }
        if self.max_in_flight_per_connection == 0 || self.max_in_flight_per_connection > 65_535 {
            return Err("upstream.max_in_flight_per_connection must be in 1..=65535".into());
        }
        if self.max_in_flight == 0 {
            return Err("upstream.max_in_flight must be > 0".into());
        }
        if self.timeout_ms == 0 || self.timeout_ms > 600_000 {
            return Err("upstream.timeout_ms must be in 1..=600000".into());
        }
        match self.sink {
            Sink::Webhook => {
                let url = self
                    .webhook_url
                    .parse::<hyper::Uri>()
                    .map_err(|e| format!("upstream.webhook_url: {e}"))?;
                if url.scheme_str() != Some("http") || url.host().is_none() {
                    return Err(
                        "upstream.webhook_url must be an http://host[:port]/path URL".into(),
                    );
                }
                if self.webhook_concurrency == 0 || self.webhook_concurrency > 4096 {
                    return Err("upstream.webhook_concurrency must be in 1..=4096".into());
                }
                let loopback = matches!(url.host(), Some("localhost"))
                    || url
                        .host()
                        .and_then(|h| h.trim_matches(['[', ']']).parse::<std::net::IpAddr>().ok())
                        .is_some_and(|ip| ip.is_loopback());
                // Whoever can reach the webhook and knows a guessable secret can pass for
                // tether; a placeholder is refused even on loopback (secrets.rs).
                let rule = if loopback {
                    crate::secrets::check_anywhere
                } else {
                    crate::secrets::check_exposed
                };
                rule(&self.webhook_secret).map_err(|w| {
                    format!(
                        "upstream.webhook_secret is {w}{}",
                        if loopback {
                            ""
                        } else {
                            " (upstream.webhook_url is not on a loopback address)"
                        }
                    )
                })?;
            }
            Sink::Nats => {
                if !cluster {
                    return Err("upstream.sink = \"nats\" needs [cluster] nats_urls".into());
                }
                let ok = !self.nats_subject.is_empty()
                    && self.nats_subject.split('.').all(|t| {
                        !t.is_empty()
                            && t.bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    });
                if !ok {
                    return Err(
                        "upstream.nats_subject must be dot-separated tokens of A-Z a-z 0-9 - _"
                            .into(),
                    );
                }
            }
            Sink::Off | Sink::Backends => {}
        }
        Ok(())
    }
}

/// `[send]`: client-to-client messages (`Send`). The default (both off) is the embedded
/// configuration's.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendConfig {
    /// Whether clients may send to other users at all (off: `Refused(NotAllowed)`).
    pub enabled: bool,
    /// Whether the sender learns how many devices got it (`Delivered(n)` / `Offline`);
    /// otherwise a version-2 sender gets `Accepted` and a version-1 sender `NotAllowed`.
    pub reveal_presence: bool,
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, DEFAULT_TOML};

    #[test]
    fn a_small_max_frame_bounds_payloads_and_replies_instead_of_refusing_to_start() {
        let mut cfg = Config::from_toml(DEFAULT_TOML).unwrap();
        cfg.server.max_frame = 1024;
        cfg.server.max_login_frame = 512;
        cfg.outbound.max_queue_bytes = 1 << 20;
        cfg.validate().unwrap();
        assert_eq!(cfg.upstream.payload_limit(1024), 1008);
        assert_eq!(cfg.upstream.reply_limit(1024), 1008);
        assert_eq!(cfg.upstream.payload_limit(65_536), 16_384);
        cfg.upstream.sink = super::Sink::Nats;
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("[cluster]"));
    }
}
