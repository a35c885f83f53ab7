//! API pushes: each target user's push goes to the user's home shard as a
//! [`Control::Push`] with an API origin (in a cluster too: the home shard decides whether the
//! directory is needed), and its outcome comes back on the API result channel.
//!
//! [`Pending`](super::ctx::Pending) holds the pushes waiting for their results, by the API's
//! push id (`results.rs`, the same table the cluster thread keeps for its own pushes). The
//! dispatcher task hands every [`ApiResult`] to it: the first result (delivered, offline,
//! refused) goes to the waiting request, then, for a delivered push that asked for one, the
//! `Acked`. A request that gives up (its ack timeout, or the client went away) removes its
//! entry; a result arriving later is counted as late.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::future;
use serde::Serialize;
use tether_proto::{PushStatus, RefuseReason};

use super::ctx::Ctx;
use crate::control::{ApiResult, Control};
use crate::mesh::{MeshMsg, Origin, RoutedPush};
use crate::results::{Settled, FIRST_RESULT_TIMEOUT};
use crate::routing::shard_for;

/// Removes a push's waiter when its request is done or dropped.
struct Registration<'a> {
    /// The plane (its pending table and in-flight gauge).
    ctx: &'a Ctx,
    /// The push.
    id: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.ctx.pending.borrow_mut().forget(self.id);
        self.ctx.metrics.in_flight.dec();
    }
}

/// Forwards results from the shards to the waiting requests (runs for the plane's life).
pub(crate) async fn dispatch(ctx: Rc<Ctx>, results: flume::Receiver<ApiResult>) {
    while let Ok(ApiResult { id, status }) = results.recv_async().await {
        let settled = ctx.pending.borrow_mut().settle(id, status);
        match settled {
            Settled::Unknown => {
                ctx.metrics.late_results.inc();
            }
            Settled::Taken => {}
            Settled::Acked(tx) => {
                let _ = tx.try_send(());
            }
        }
    }
}

/// One user's answer, as JSON.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub(crate) struct UserResult {
    /// The target user.
    pub user: String,
    /// `delivered`, `acked`, `offline`, `refused`, `timed_out` (a node of the cluster did not
    /// answer in time) or `unknown`.
    pub outcome: &'static str,
    /// Device connections the push was written or queued to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub devices: Option<u32>,
    /// Why it was refused (or why the outcome is unknown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// For a delivered push that asked for an ack: `timed_out` when none came in time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ack: Option<&'static str>,
}

impl UserResult {
    fn new(user: String, outcome: &'static str) -> UserResult {
        UserResult {
            user,
            outcome,
            devices: None,
            reason: None,
            ack: None,
        }
    }

    fn refused(user: String, reason: RefuseReason) -> UserResult {
        UserResult {
            reason: Some(reason_name(reason)),
            ..UserResult::new(user, "refused")
        }
    }
}

/// The JSON name of a refusal reason.
pub(crate) fn reason_name(r: RefuseReason) -> &'static str {
    r.name()
}

/// A push to start: one target user.
pub(crate) struct Target {
    /// The user.
    pub user: String,
    /// The application bytes.
    pub payload: Bytes,
    /// Whether to wait for a device's acknowledgement.
    pub want_ack: bool,
}

/// A started push: waiting for its results, or already answered.
enum Started<'a> {
    /// Answered without a shard (refused before routing).
    Done(UserResult),
    /// Posted to the home shard.
    Posted {
        user: String,
        want_ack: bool,
        first: flume::Receiver<PushStatus>,
        ack: Option<flume::Receiver<()>>,
        _reg: Registration<'a>,
    },
}

/// Pushes every target concurrently (all are posted before any is awaited) and answers one
/// result per target, in order. Acks are awaited until `ack_deadline`.
pub(crate) async fn push_all(
    ctx: &Ctx,
    targets: Vec<Target>,
    ack_wait: Duration,
) -> Vec<UserResult> {
    let started_at = Instant::now();
    let started: Vec<Started<'_>> = targets
        .into_iter()
        .map(|t| start(ctx, t, started_at))
        .collect();
    let result_deadline = Instant::now() + FIRST_RESULT_TIMEOUT;
    let ack_deadline = Instant::now() + ack_wait;
    let mut out = Vec::with_capacity(started.len());
    for s in started {
        let r = match s {
            Started::Done(r) => r,
            Started::Posted {
                user,
                want_ack,
                first,
                ack,
                _reg,
            } => {
                let r = finish(user, want_ack, first, ack, result_deadline, ack_deadline).await;
                drop(_reg);
                r
            }
        };
        ctx.metrics.pushes.get_or_create(&outcome_labels(&r)).inc();
        out.push(r);
    }
    ctx.metrics
        .push_seconds
        .observe(started_at.elapsed().as_secs_f64());
    out
}

/// Posts one push to its user's home shard (`now`: when the request's pushes started).
fn start(ctx: &Ctx, t: Target, now: Instant) -> Started<'_> {
    let plane = &ctx.plane;
    if plane.shutdown.is_triggered() {
        return Started::Done(UserResult::refused(t.user, RefuseReason::ShuttingDown));
    }
    if ctx.pending.borrow().len() >= plane.cfg.max_in_flight {
        return Started::Done(UserResult::refused(t.user, RefuseReason::Overloaded));
    }
    let (ack_tx, ack) = if t.want_ack {
        let (tx, rx) = flume::bounded(1);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let (id, first) = ctx.pending.borrow_mut().wait(ack_tx, now);
    ctx.metrics.in_flight.inc();
    let reg = Registration { ctx, id };
    let origin = Origin::Api { id };
    // In a cluster too: the home shard delivers at once when the user is there alone, and
    // otherwise hands the push to the cluster thread, which fans it out to every node holding
    // the user (this one included) and answers on the same result channel.
    let home = shard_for(&t.user, plane.mesh.len());
    let msg = MeshMsg::Control(Box::new(Control::Push(RoutedPush {
        origin,
        user: t.user.clone(),
        payload: t.payload,
        want_ack: t.want_ack,
        from: None,
    })));
    if plane.mesh.post(home, msg).is_err() {
        return Started::Done(UserResult::refused(t.user, RefuseReason::Overloaded));
    }
    Started::Posted {
        user: t.user,
        want_ack: t.want_ack,
        first,
        ack,
        _reg: reg,
    }
}

/// Waits for a posted push's results.
async fn finish(
    user: String,
    want_ack: bool,
    first: flume::Receiver<PushStatus>,
    ack: Option<flume::Receiver<()>>,
    result_deadline: Instant,
    ack_deadline: Instant,
) -> UserResult {
    let Some(status) = recv_until(&first, result_deadline).await else {
        return UserResult {
            reason: Some("no_result"),
            ..UserResult::new(user, "unknown")
        };
    };
    match status {
        PushStatus::Delivered(n) => {
            let mut r = UserResult {
                devices: Some(n),
                ..UserResult::new(user, "delivered")
            };
            if want_ack {
                let acked = match &ack {
                    Some(rx) => recv_until(rx, ack_deadline).await.is_some(),
                    None => false,
                };
                if acked {
                    r.outcome = "acked";
                } else {
                    r.ack = Some("timed_out");
                }
            }
            r
        }
        PushStatus::Offline => UserResult::new(user, "offline"),
        // A node holding the user did not answer in time: neither delivered nor refused.
        PushStatus::Refused(RefuseReason::TimedOut) => UserResult::new(user, "timed_out"),
        PushStatus::Refused(reason) => UserResult::refused(user, reason),
        // A shard sends Acked only after Delivered, on the same channel.
        PushStatus::Acked => UserResult {
            devices: None,
            ..UserResult::new(user, "acked")
        },
        // Answers only a client's Send, never a push.
        PushStatus::Accepted => UserResult::new(user, "accepted"),
    }
}

/// The next value of `rx` unless `deadline` passes first (or the sender is gone).
async fn recv_until<T>(rx: &flume::Receiver<T>, deadline: Instant) -> Option<T> {
    let wait = deadline.saturating_duration_since(Instant::now());
    future::or(async { rx.recv_async().await.ok() }, async {
        glommio::timer::sleep(wait).await;
        None
    })
    .await
}

/// Metric labels of one answer.
fn outcome_labels(r: &UserResult) -> crate::prom::Labels {
    let mut l = vec![("outcome".to_string(), r.outcome.to_string())];
    if let Some(reason) = r.reason {
        l.push(("reason".to_string(), reason.to_string()));
    }
    if let Some(ack) = r.ack {
        l.push(("ack".to_string(), ack.to_string()));
    }
    l
}
