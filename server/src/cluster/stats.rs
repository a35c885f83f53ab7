//! [`ClusterStats`]: the cluster thread's figures.

use std::sync::atomic::{AtomicU64, Ordering};

use tether_proto::{PushStatus, RefuseReason};

crate::figures::figures! {
    /// The cluster thread's figures, read by `/metrics` and `/api/stats`.
    pub struct ClusterStats;
    connected: gauge => "1 while connected to NATS";
    users: gauge => "users with a main connection on this node (as the directory knows them)";
    disconnects => "times the NATS connection was lost";
    reconnects => "times the NATS connection came back (the node then re-registers its users)";
    pushes => "pushes fanned out by this node";
    push_delivered => "fanned-out pushes delivered to at least one device";
    push_offline => "fanned-out pushes that found no device on any node";
    push_refused => "fanned-out pushes refused (a node decided: slow consumer, too large, ...)";
    push_timed_out => "fanned-out pushes answered TimedOut (a node holding the user did not answer)";
    push_unavailable => "fanned-out pushes answered ClusterUnavailable (not local, NATS unreachable)";
    forwards => "requests sent to other nodes (push, kick, presence, replace)";
    forward_gone => "requests to a node nobody listens for (a stale directory entry)";
    forward_timed_out => "requests to another node that timed out";
    forward_failed => "requests that failed (NATS unreachable or a malformed reply)";
    served => "requests served for other nodes";
    served_malformed => "requests from other nodes that were malformed (answered with an error)";
    directory_reads => "directory lookups";
    directory_writes => "directory entries written (logins, logouts, refreshes)";
    directory_errors => "directory reads or writes that failed";
    refresh_passes => "refresh passes over this node's users";
    results_lost => "results that could not be handed to their sender (its shard's channel stayed full, or it had gone)";
    refused_unsigned => "requests from the node's subject refused: no signature (not from a node of the fleet)";
    refused_bad_mac => "requests refused: the signature is not the cluster secret's for this request to this node (forged, altered, or another secret)";
    refused_stale => "requests refused: their timestamp is further than cluster.max_clock_skew_ms from this node's clock";
    refused_replay => "requests refused: seen before within the window (a replay)";
    replies_refused => "replies from other nodes refused: not signed for the request they answer";
    directory_invalid => "directory entries read with something not valid (bad signature, node id, expiry, or too many nodes): ignored for routing, repaired by the next write";
    overloaded => "work refused because cluster.max_in_flight tasks were running (pushes refused Overloaded, kicks and presence questions answered empty, login writes left to the refresh pass, logout writes left to expiry)";
    served_overloaded => "requests from other nodes refused because cluster.max_served_in_flight were being served";
    local_only_noted => "local-only notes given to home shards: the directory named this node alone for a user, so its pushes skip the directory (cluster_pushes_local_first)";
    local_only_dropped => "local-only notes taken away: another node joined the user's entry (replace or joined), this node left it, or a write found another node or failed";
    local_only_voided => "times every local-only note was voided at once (a NATS connection event other than a connect, a notice not taken in by a shard, a notice refused for want of a permit, refresh passes fallen behind); the next writes note again";
}

impl ClusterStats {
    /// Adds one to a figure.
    pub(super) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a fanned-out push's result.
    pub(super) fn outcome(&self, status: PushStatus) {
        Self::inc(match status {
            PushStatus::Delivered(_) | PushStatus::Acked | PushStatus::Accepted => {
                &self.push_delivered
            }
            PushStatus::Offline => &self.push_offline,
            PushStatus::Refused(RefuseReason::TimedOut) => &self.push_timed_out,
            PushStatus::Refused(RefuseReason::ClusterUnavailable) => &self.push_unavailable,
            PushStatus::Refused(_) => &self.push_refused,
        });
    }
}
