//! Pushes waiting for their results, by id: the first result (delivered, offline, refused),
//! then, for a delivered push that asked for one, its `Acked`.
//!
//! The HTTP API and the cluster thread both post pushes to a home shard under an id of their
//! own (the `id` of an `Origin::Api` or `Origin::Cluster`) and get the results back on a
//! channel of the mesh, in any order among pushes. A [`Waiters`] table matches them: the first
//! result goes to the receiver [`Waiters::wait`] returned, and the `Acked` to whatever the
//! caller keeps for it (`A`: the API a channel to its request, the cluster thread where the
//! acknowledgement goes next). It is plain data: the API keeps it in a `RefCell` on its one
//! thread, the cluster thread under a lock; neither the clock nor an executor is read here.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tether_proto::PushStatus;

/// How long a push may wait for its first result. A shard answers in the batch that routed
/// the push, or once its bytes left (bounded by the write timeout); only a shard that stopped
/// (the end of a drain) leaves a push unanswered.
pub(crate) const FIRST_RESULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Pushes waiting for their results, by id.
#[derive(Debug)]
pub(crate) struct Waiters<A> {
    /// The pushes, by id.
    waiting: HashMap<u64, Waiter<A>>,
    /// The next push's id.
    next_id: u64,
}

/// One waiting push.
#[derive(Debug)]
struct Waiter<A> {
    /// Receives the first result; `None` once it came.
    first: Option<flume::Sender<PushStatus>>,
    /// Where an `Acked` goes; `None` when the push did not ask for one.
    ack: Option<A>,
    /// When the push was posted ([`Waiters::sweep`]).
    since: Instant,
}

/// What [`Waiters::settle`] did with a result.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Settled<A> {
    /// Nobody waits for this id: the push gave up, or it is not one of ours (a late result).
    Unknown,
    /// Handed to the waiting push (a first result), or the push is done with.
    Taken,
    /// The `Acked` of a push that asked for one: where it goes.
    Acked(A),
}

impl<A> Default for Waiters<A> {
    fn default() -> Self {
        Waiters {
            waiting: HashMap::new(),
            next_id: 1,
        }
    }
}

impl<A> Waiters<A> {
    /// Registers a push posted `now` (`ack`: where its `Acked` goes, when it asks for one).
    /// Returns the push's id, to post it under, and the receiver of its first result.
    pub(crate) fn wait(
        &mut self,
        ack: Option<A>,
        now: Instant,
    ) -> (u64, flume::Receiver<PushStatus>) {
        let id = self.next_id;
        self.next_id += 1;
        let (first, rx) = flume::bounded(1);
        self.waiting.insert(
            id,
            Waiter {
                first: Some(first),
                ack,
                since: now,
            },
        );
        (id, rx)
    }

    /// A result for push `id`. The first goes to its receiver; the push stays only when it
    /// was delivered and waits for an `Acked`, which ends it.
    pub(crate) fn settle(&mut self, id: u64, status: PushStatus) -> Settled<A> {
        let Some(w) = self.waiting.get_mut(&id) else {
            return Settled::Unknown;
        };
        if status == PushStatus::Acked {
            return match self.waiting.remove(&id).and_then(|w| w.ack) {
                Some(ack) => Settled::Acked(ack),
                None => Settled::Taken,
            };
        }
        if let Some(tx) = w.first.take() {
            let _ = tx.try_send(status);
        }
        if !(matches!(status, PushStatus::Delivered(_)) && w.ack.is_some()) {
            self.waiting.remove(&id);
        }
        Settled::Taken
    }

    /// Forgets push `id` (its waiter gave up); a result that comes later is
    /// [`Settled::Unknown`].
    pub(crate) fn forget(&mut self, id: u64) {
        self.waiting.remove(&id);
    }

    /// Forgets the pushes that had their first result at least `max_wait` after they were
    /// posted and still wait for an `Acked`. A push still waiting for its first result stays:
    /// its waiter forgets it when it gives up.
    pub(crate) fn sweep(&mut self, now: Instant, max_wait: Duration) {
        self.waiting
            .retain(|_, w| w.first.is_some() || now.saturating_duration_since(w.since) < max_wait);
    }

    /// How many pushes wait.
    pub(crate) fn len(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use tether_proto::RefuseReason;

    use super::*;

    #[test]
    fn a_first_result_then_an_ack_for_a_push_that_asked() {
        let now = Instant::now();
        let mut w = Waiters::default();
        let (id, first) = w.wait(Some("to the sender"), now);
        assert_eq!(w.settle(id, PushStatus::Delivered(2)), Settled::Taken);
        assert_eq!(first.try_recv(), Ok(PushStatus::Delivered(2)));
        assert_eq!(w.len(), 1, "it waits for the ack");
        assert_eq!(
            w.settle(id, PushStatus::Acked),
            Settled::Acked("to the sender")
        );
        assert_eq!(w.len(), 0);
        assert_eq!(w.settle(id, PushStatus::Acked), Settled::Unknown, "late");
    }

    #[test]
    fn a_push_ends_with_its_first_result_unless_it_waits_for_an_ack() {
        let now = Instant::now();
        let mut w: Waiters<()> = Waiters::default();
        let (plain, first) = w.wait(None, now);
        assert_eq!(w.settle(plain, PushStatus::Delivered(1)), Settled::Taken);
        assert_eq!(first.try_recv(), Ok(PushStatus::Delivered(1)));
        let (offline, _) = w.wait(Some(()), now);
        assert_eq!(w.settle(offline, PushStatus::Offline), Settled::Taken);
        let refused = PushStatus::Refused(RefuseReason::SlowConsumer);
        let (slow, _) = w.wait(Some(()), now);
        assert_eq!(w.settle(slow, refused), Settled::Taken);
        assert_eq!(w.len(), 0, "nothing more comes for any of them");
        assert_ne!(plain, offline);
    }

    #[test]
    fn a_push_forgotten_or_swept_takes_no_result() {
        let now = Instant::now();
        let mut w = Waiters::default();
        let (gave_up, first) = w.wait(Some(()), now);
        w.forget(gave_up);
        assert_eq!(w.settle(gave_up, PushStatus::Offline), Settled::Unknown);
        assert!(first.try_recv().is_err());

        let (answered, _) = w.wait(Some(()), now);
        let (unanswered, _) = w.wait(Some(()), now);
        w.settle(answered, PushStatus::Delivered(1));
        let wait = Duration::from_secs(300);
        w.sweep(now + wait / 2, wait);
        assert_eq!(w.len(), 2, "nothing is old enough");
        w.sweep(now + wait, wait);
        assert_eq!(w.settle(answered, PushStatus::Acked), Settled::Unknown);
        assert_eq!(
            w.len(),
            1,
            "a push still waiting for its first result stays"
        );
        assert_eq!(
            w.settle(unanswered, PushStatus::Delivered(1)),
            Settled::Taken
        );
    }
}
