//! Kicks and presence questions: this node's home shard of the user is asked and, at the same
//! time, every other node the directory names; the counts come back per node ([`Fanned`]).
//! Another node's kick or presence question is answered with the home shard's count alone
//! (`serve.rs`).

use super::msg::Fanned;
use super::node::{Node, SHARD_ANSWER};
use super::peers::join_all;
use super::wire::{Reply, Request};
use crate::control::{Control, Kick};
use crate::mesh::MeshMsg;
use crate::routing::shard_for;

impl Node {
    /// This node's count and every other node's, for a kick or presence question.
    pub(super) async fn fan_count(
        &self,
        user: &str,
        local: impl std::future::Future<Output = Option<u32>>,
        req: Request,
    ) -> Fanned {
        let remote = async {
            let Ok(nodes) = self.lookup(user).await else {
                return (false, Vec::new());
            };
            let bytes = req.encode();
            let answers = join_all(nodes.iter().map(|n| self.ask(n, bytes.clone()))).await;
            let counts = nodes
                .into_iter()
                .zip(answers)
                .map(|(n, a)| {
                    let count = match a {
                        Ok(Reply::Count { n }) => Ok(n),
                        Ok(_) => Err("unavailable"),
                        Err(e) => Err(e.name()),
                    };
                    (n, count)
                })
                .collect();
            (true, counts)
        };
        let (local, (directory, nodes)) = tokio::join!(local, remote);
        Fanned {
            local,
            nodes,
            directory,
        }
    }

    /// Kicks on this node's home shard of the user.
    pub(super) async fn local_kick(&self, kick: Kick) -> Option<u32> {
        let (reply, rx) = flume::bounded(1);
        let home = shard_for(&kick.user, self.mesh.len());
        let msg = Control::Kick { kick, reply };
        self.ask_shard(home, msg, rx).await
    }

    /// Devices of `user` on this node.
    pub(super) async fn local_presence(&self, user: &str) -> Option<u32> {
        let (reply, rx) = flume::bounded(1);
        let msg = Control::Presence {
            user: user.to_string(),
            reply,
        };
        let home = shard_for(user, self.mesh.len());
        self.ask_shard(home, msg, rx).await.map(|p| p.devices)
    }

    /// Posts `msg` to shard `home` and waits for its answer.
    async fn ask_shard<T>(&self, home: usize, msg: Control, rx: flume::Receiver<T>) -> Option<T> {
        self.mesh.post(home, MeshMsg::Control(Box::new(msg))).ok()?;
        tokio::time::timeout(SHARD_ANSWER, rx.recv_async())
            .await
            .ok()?
            .ok()
    }
}
