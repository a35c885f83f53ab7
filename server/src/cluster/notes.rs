//! Local-only notes, as home shards are told of them (`local.rs` decides them). A decision
//! is posted to the user's home shard while the local users' lock is held, so a shard takes
//! decisions in the order they were made; a note taken away because another node joins the
//! user's entry is waited for until the shard took that in; and when a note can no longer be
//! vouched for, every note is voided at once by moving the cluster epoch on.

use std::sync::atomic::Ordering;

use super::local::{Locals, Tell};
use super::node::{Node, SHARD_ANSWER};
use super::stats::ClusterStats;
use crate::control::Control;
use crate::mesh::MeshMsg;
use crate::routing::shard_for;

impl Node {
    /// Locks the local users.
    pub(super) fn locals(&self) -> std::sync::MutexGuard<'_, Locals> {
        self.locals.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells `user`'s home shard what `locals` decided, while the caller holds `locals` (so
    /// the shard takes the decisions in the order they were made); `done` hears when the shard
    /// took it in. A word the shard cannot take voids every note.
    pub(super) fn tell(
        &self,
        locals: &mut Locals,
        user: &str,
        tell: Tell,
        done: Option<flume::Sender<()>>,
    ) {
        let epoch = match tell {
            Tell::Nothing => return,
            Tell::LocalOnly(e) => Some(e),
            Tell::NotAlone => None,
        };
        let msg = Control::LocalOnly {
            user: user.to_string(),
            epoch,
            done,
        };
        let home = shard_for(user, self.mesh.len());
        if self
            .mesh
            .post(home, MeshMsg::Control(Box::new(msg)))
            .is_err()
        {
            match epoch {
                // Not noted after all: the next write tries again.
                Some(_) => locals.unnote(user),
                None => self.void_notes(),
            }
            return;
        }
        ClusterStats::inc(match epoch {
            Some(_) => &self.stats.local_only_noted,
            None => &self.stats.local_only_dropped,
        });
    }

    /// Takes `user`'s note away ([`Locals::not_alone`]) and waits until its home shard has
    /// taken that in; a shard that does not take it in time gets every note voided instead.
    pub(super) async fn not_alone(&self, user: &str) {
        let (done, taken) = flume::bounded(1);
        {
            let mut locals = self.locals();
            locals.not_alone(user);
            self.tell(&mut locals, user, Tell::NotAlone, Some(done));
        }
        if !matches!(
            tokio::time::timeout(SHARD_ANSWER, taken.recv_async()).await,
            Ok(Ok(()))
        ) {
            self.void_notes();
        }
    }

    /// Voids every local-only note on every shard (the next refresh pass notes again).
    pub(super) fn void_notes(&self) {
        let noted = self.stats.local_only_noted.load(Ordering::Relaxed);
        self.noted_at_void.store(noted, Ordering::Relaxed);
        self.mesh.void_local_only();
        ClusterStats::inc(&self.stats.local_only_voided);
    }
}
