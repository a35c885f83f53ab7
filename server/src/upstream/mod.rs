//! Upstream messages: a client's message to the app's backend, over the connection it already
//! has, answered by exactly one result.
//!
//! A client's main connection (protocol version 2) sends `Upstream { client_id, payload }`.
//! Its shard checks it (size, the connection's messages in flight, draining) and hands it to
//! the sink the operator chose in `[upstream] sink`:
//!
//! - `backends`: backend connections that logged in with the `UPSTREAM` flag. They may sit on
//!   any shard; every shard knows them all (each shard tells the others when its own list
//!   changes) and picks one per sender user by rendezvous hashing, so one user's messages go to
//!   one backend connection while the set is unchanged and several backends share the load.
//!   The shard holding the backend connection keeps the delivery in flight (`core/upstream.rs`)
//!   until the backend's `UpstreamAnswer`, its timeout, or the backend connection's end.
//! - `webhook`: an HTTP POST per message from the `tether-upstream` thread (`webhook.rs`).
//! - `nats`: a NATS request per message on `nats_subject`, answered by a backend in a queue
//!   group (`nats.rs`).
//!
//! The webhook and NATS sinks run on one thread, `tether-upstream`, off every shard's path:
//! shards reach it with a non-blocking send on a bounded channel ([`UpstreamJob`]; full: the
//! message is refused `Overloaded`), and it answers through the mesh
//! ([`crate::mesh::MeshMsg::UpstreamResult`]). It sends at most one message per client
//! connection at a time ([`Sequencer`]), so a connection's messages reach the backend in the
//! order they were sent.
//!
//! What a webhook or NATS backend receives and how its answer is read is written down once, in
//! `headers.rs` (the header names and their encoding), `webhook.rs` (the HTTP status mapping)
//! and `nats.rs` (the reply mapping).

mod config;
mod headers;
mod nats;
pub mod sequencer;
mod stats;
mod thread;
mod webhook;

#[cfg(test)]
mod tests;

use bytes::Bytes;
use tether_proto::RefuseReason;

pub use config::{SendConfig, Sink, UpstreamConfig};
pub use sequencer::Sequencer;
pub use stats::UpstreamStats;
pub use thread::spawn;

pub use crate::core::msg::{ConnKey, Outcome, UpstreamJob, UpstreamOrigin};

/// What a sink made of one message, before the thread turns it into its client's [`Outcome`].
#[derive(Debug)]
pub(crate) enum Answer {
    /// The backend answered.
    Answered {
        /// Whether it accepted the message (otherwise it rejected it).
        accepted: bool,
        /// Its reply, as read (the thread drops one longer than `max_reply_bytes`).
        reply: Bytes,
        /// The reply could not be read whole (too long by its announced length, cut off, or
        /// read past the deadline): the client gets the status alone, and it is counted.
        reply_lost: bool,
    },
    /// No answer that accepts or rejects: refused for `reason`.
    Refused {
        /// What the client is told.
        reason: RefuseReason,
        /// What went wrong, for a rate-limited log line (`None`: nothing worth a line).
        why: Option<String>,
    },
}

impl Answer {
    /// A refusal worth no log line.
    pub(crate) fn refused(reason: RefuseReason) -> Answer {
        Answer::Refused { reason, why: None }
    }

    /// A refusal with what went wrong.
    pub(crate) fn failed(reason: RefuseReason, why: impl std::fmt::Display) -> Answer {
        Answer::Refused {
            reason,
            why: Some(why.to_string()),
        }
    }
}
