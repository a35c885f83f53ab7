//! Requests from other nodes, on this node's subject. Each is checked (`seal.rs`: signature,
//! clock window, replays) before anything else is done with it, then carried out in a task of
//! its own that holds one of `max_served_in_flight` permits: a push delivered on this node's
//! home shard, an acknowledgement of a push this node fanned out, a kick, a `replace` or
//! `joined` (the user's local-only note goes first), a presence question. Answers are signed
//! for their request and go only to inboxes.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures_lite::StreamExt;
use tether_proto::{CloseCode, PushStatus, RefuseReason};
use tracing::warn;

use super::config::ClusterConfig;
use super::node::AckTo;
use super::node::{unix_ms, valid_user, Node};
use super::seal::{self, Refusal, Stamp, Tag};
use super::stats::ClusterStats;
use super::wire::{Part, Reply, Request};
use crate::control::Kick;

/// Replies go only to subjects under this prefix, where NATS clients (every node's included)
/// take replies. A request's reply subject is not signed: a node that answered anywhere could
/// be made to publish, with its own NATS permissions, on any subject (a directory key among
/// them).
const INBOX: &str = "_INBOX.";

impl Node {
    /// Serves this node's subject: every request is checked (`seal.rs`) and, with a permit,
    /// carried out in a task of its own.
    pub(super) async fn serve(self: Arc<Self>) {
        let mut sub = loop {
            match self.client.subscribe(self.subject.clone()).await {
                Ok(s) => break s,
                Err(e) => {
                    warn!(error = %e, "cluster: cannot subscribe; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        while let Some(msg) = sub.next().await {
            ClusterStats::inc(&self.stats.served);
            let checked = self.guard.lock().unwrap_or_else(|e| e.into_inner()).check(
                msg.headers.as_ref(),
                &msg.payload,
                unix_ms(),
            );
            let (stamp, tag) = match checked {
                Ok(ok) => ok,
                Err(why) => {
                    self.refused(&msg, why).await;
                    continue;
                }
            };
            let req = Request::decode(&msg.payload);
            let Ok(permit) = Arc::clone(&self.served).try_acquire_owned() else {
                ClusterStats::inc(&self.stats.served_overloaded);
                if matches!(req, Ok(Request::Replace { .. } | Request::Joined { .. })) {
                    // A node joins a user's entry and this one cannot take its note away
                    // now: none is vouched for (`local.rs`, rule 5).
                    self.void_notes();
                }
                let reply = match req {
                    Ok(Request::Push { .. }) => {
                        Reply::status(PushStatus::Refused(RefuseReason::Overloaded))
                    }
                    _ => Reply::Error {
                        message: "overloaded".into(),
                    },
                };
                self.reply(&msg, &tag, reply).await;
                continue;
            };
            let node = Arc::clone(&self);
            tokio::spawn(async move {
                node.serve_one(msg, req, stamp, tag).await;
                drop(permit);
            });
        }
        warn!("cluster: the node's subscription ended");
    }

    /// A request that failed its check: counted, logged now and then, and answered with an
    /// unsigned error when it asks for a reply in an inbox (the sender, if it is a node with
    /// another secret, fails at once instead of waiting for its timeout). Nothing of it is
    /// carried out.
    async fn refused(&self, msg: &async_nats::Message, why: Refusal) {
        ClusterStats::inc(match why {
            Refusal::Unsigned => &self.stats.refused_unsigned,
            Refusal::BadMac => &self.stats.refused_bad_mac,
            Refusal::Stale => &self.stats.refused_stale,
            Refusal::Replay => &self.stats.refused_replay,
        });
        let claimed = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(seal::H_NODE))
            .map(|v| v.as_str())
            .filter(|n| ClusterConfig::valid_node(n))
            .unwrap_or("?");
        self.log_refusal(claimed, why.name());
        if let Some(to) = msg.reply.clone().filter(|r| r.starts_with(INBOX)) {
            let reply = Reply::Error {
                message: format!("refused: {}", why.name()),
            };
            let _ = self.client.publish(to, reply.encode().into()).await;
        }
    }

    /// Answers a request whose MAC is `tag`, signed for it, in its inbox.
    async fn reply(&self, msg: &async_nats::Message, tag: &Tag, reply: Reply) {
        if let Some(to) = msg.reply.clone().filter(|r| r.starts_with(INBOX)) {
            let body = reply.encode();
            let headers = seal::sign_reply(&self.keys, tag, &body);
            let _ = self
                .client
                .publish_with_headers(to, headers, body.into())
                .await;
        }
    }

    /// Carries out one checked request from another node and answers it (when it asks for an
    /// answer).
    async fn serve_one(
        self: Arc<Self>,
        msg: async_nats::Message,
        req: Result<Request, String>,
        stamp: Stamp,
        tag: Tag,
    ) {
        let reply = match req {
            Err(message) => {
                ClusterStats::inc(&self.stats.served_malformed);
                Reply::Error { message }
            }
            Ok(req) => match self.carry_out(req, &stamp.from).await {
                Some(r) => r,
                None => return,
            },
        };
        self.reply(&msg, &tag, reply).await;
    }

    /// One request from node `sender`; `None` when it needs no answer.
    async fn carry_out(&self, req: Request, sender: &str) -> Option<Reply> {
        let bad = |message: &str| {
            ClusterStats::inc(&self.stats.served_malformed);
            Some(Reply::Error {
                message: message.to_string(),
            })
        };
        match req {
            Request::Push {
                user,
                payload,
                want_ack,
                from,
                job,
                sender: send_from,
            } => {
                if from != sender {
                    // Acknowledgements go back to the signer, and nowhere else.
                    return bad("push from one node naming another");
                }
                if !valid_user(&user) {
                    return Some(Reply::status(PushStatus::Refused(RefuseReason::BadTarget)));
                }
                let Ok(payload) = base64::engine::general_purpose::STANDARD.decode(payload) else {
                    return bad("payload is not base64");
                };
                let ack = want_ack.then_some(AckTo::Remote { node: from, job });
                let payload = Bytes::from(payload);
                let part = self
                    .local_push(&user, payload, ack, send_from.map(Box::new))
                    .await;
                Some(Reply::status(match part {
                    Part::Status(s) => s,
                    _ => PushStatus::Refused(RefuseReason::TimedOut),
                }))
            }
            Request::Acked { job } => {
                self.acked(job).await;
                None
            }
            Request::Kick(kick) => match self.local_kick(kick).await {
                Some(n) => Some(Reply::Count { n }),
                None => bad("shard did not answer"),
            },
            Request::Replace { user, device } => {
                // The sender is about to write itself into the user's entry.
                self.not_alone(&user).await;
                let kick = Kick {
                    user,
                    device: Some(device),
                    code: CloseCode::Replaced,
                    may_reconnect: false,
                };
                match self.local_kick(kick).await {
                    Some(n) => Some(Reply::Count { n }),
                    None => bad("shard did not answer"),
                }
            }
            Request::Joined { user } => {
                self.not_alone(&user).await;
                Some(Reply::Count { n: 0 })
            }
            Request::Presence { user } => match self.local_presence(&user).await {
                Some(n) => Some(Reply::Count { n }),
                None => bad("shard did not answer"),
            },
        }
    }
}
