//! The directory bucket on JetStream: created (or found) on first use; a user's entry read
//! and checked (`directory.rs`); the other live nodes it names looked up for a push, a kick
//! or a presence question; and this node's part of it written by compare-and-set.
//!
//! A write that adds this node where it was not live, or a login's, first tells the other
//! nodes the entry names and waits for their answers (`local.rs`, rule 2); a write that takes
//! this node out first takes its note away (rule 3); and every write tells the user's home
//! shard what it found (`notes.rs`).

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use tracing::{debug, warn};

use super::directory::{self, Bounds, Entry};
use super::local::Ticket;
use super::node::{unix_ms, Node};
use super::peers::join_all;
use super::stats::ClusterStats;
use super::wire::Request;

/// Tries of one directory write when other nodes write the same entry meanwhile.
const WRITE_TRIES: usize = 5;

/// Why a user's directory entry is written.
#[derive(Clone, Copy, Debug)]
pub(super) enum Why<'a> {
    /// A main connection of the user with this device registered here: an older connection
    /// of the same device on another node is replaced.
    Login(&'a str),
    /// The refresh pass (an entry that named this node alone is written without a read).
    Refresh,
    /// The user left, or the list of users was rebuilt.
    Update,
}

impl Node {
    /// The directory bucket, created on first use (or found, when another node created it).
    async fn store(&self) -> Result<kv::Store, ()> {
        let mut store = self.store.lock().await;
        if let Some(s) = store.as_ref() {
            return Ok(s.clone());
        }
        if !self.connected() {
            return Err(());
        }
        // The bucket's stream, as a KV bucket is laid out (`KV_<bucket>` over `$KV.<bucket>.>`,
        // one value per key, direct gets). Created as a stream rather than through
        // `create_key_value`, whose account query nats-server 2.9 answers in a shape the
        // client does not parse.
        let bucket = &self.cfg.bucket;
        let config = jetstream::stream::Config {
            name: format!("KV_{bucket}"),
            description: Some("tether: user -> nodes holding its devices".into()),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age: Duration::from_millis(self.cfg.directory_ttl_ms),
            storage: jetstream::stream::StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: jetstream::stream::DiscardPolicy::New,
            num_replicas: 1,
            ..Default::default()
        };
        let wait = self.forward_timeout();
        let created = match tokio::time::timeout(wait, self.js.get_or_create_stream(config)).await {
            Ok(Ok(_)) => match tokio::time::timeout(wait, self.js.get_key_value(bucket)).await {
                Ok(Ok(s)) => Some(s),
                Ok(Err(e)) => {
                    warn!(error = %e, %bucket, "cluster: directory bucket unavailable");
                    None
                }
                Err(_) => None,
            },
            Ok(Err(e)) => {
                warn!(error = %e, %bucket, "cluster: directory bucket cannot be created");
                None
            }
            Err(_) => None,
        };
        let Some(s) = created else {
            ClusterStats::inc(&self.stats.directory_errors);
            return Err(());
        };
        *store = Some(s.clone());
        Ok(s)
    }

    /// The bounds a directory entry read now is checked against.
    fn bounds(&self) -> Bounds {
        Bounds {
            now_ms: unix_ms(),
            max_ahead_ms: self
                .cfg
                .directory_ttl_ms
                .saturating_add(self.cfg.max_clock_skew_ms),
            max_nodes: self.cfg.directory_max_nodes,
        }
    }

    /// The user's entry as far as it is valid (see `directory.rs`), its revision (`None`: no
    /// entry yet), and whether anything stored was not valid (the next write repairs it).
    async fn read(&self, store: &kv::Store, key: &str) -> Result<(Entry, Option<u64>, bool), ()> {
        ClusterStats::inc(&self.stats.directory_reads);
        match tokio::time::timeout(self.forward_timeout(), store.entry(key)).await {
            Ok(Ok(Some(e))) => {
                let (mut entry, mut bad) = if e.operation == kv::Operation::Put {
                    match Entry::decode(&e.value, key, &self.keys) {
                        Some(entry) => (entry, false),
                        None => (Entry::default(), true),
                    }
                } else {
                    (Entry::default(), false)
                };
                bad |= entry.sanitize(self.bounds(), &self.cfg.node_id) > 0;
                if bad {
                    ClusterStats::inc(&self.stats.directory_invalid);
                }
                Ok((entry, Some(e.revision), bad))
            }
            Ok(Ok(None)) => Ok((Entry::default(), None, false)),
            Ok(Err(e)) => {
                debug!(error = %e, "cluster: directory read failed");
                ClusterStats::inc(&self.stats.directory_errors);
                Err(())
            }
            Err(_) => {
                ClusterStats::inc(&self.stats.directory_errors);
                Err(())
            }
        }
    }

    /// The other live nodes the directory names for `user`.
    pub(super) async fn lookup(&self, user: &str) -> Result<Vec<String>, ()> {
        if !self.connected() {
            return Err(());
        }
        let store = self.store().await?;
        let (entry, _, _) = self.read(&store, &directory::key(user)).await?;
        let me = &self.cfg.node_id;
        Ok(entry
            .live_others(me, unix_ms())
            .map(str::to_string)
            .collect())
    }

    /// Writes whether this node holds `user` now (present with a fresh expiry, or absent),
    /// with compare-and-set against other nodes writing the same entry, and tells the user's
    /// home shard what the write found (`local.rs`). A login, or a write that adds this node
    /// where it was not live, first tells every other live node the entry names (rule 2); a
    /// write that takes this node out first takes its note away (rule 3). Each attempt reads
    /// and tells again: a base another write changed is never trusted.
    pub(super) async fn write(&self, user: &str, why: Why<'_>) -> Result<(), ()> {
        let ticket = self.locals().ticket(user, self.mesh.cluster_epoch());
        let written = self.try_write(user, why, ticket).await;
        if written.is_err() {
            // This node's part may go unrefreshed: its note is not vouched for (rule 4).
            let mut locals = self.locals();
            let tell = locals.wrote(user, ticket, None);
            self.tell(&mut locals, user, tell, None);
        }
        written
    }

    /// [`Node::write`] without its failure's consequence.
    async fn try_write(&self, user: &str, why: Why<'_>, ticket: Ticket) -> Result<(), ()> {
        if !self.connected() {
            // The refresh pass after the reconnect writes it.
            return Err(());
        }
        let store = self.store().await?;
        let key = directory::key(user);
        let me = self.cfg.node_id.as_str();
        let wait = self.forward_timeout();
        if matches!(why, Why::Refresh) {
            // The entry named only this node when this node last wrote it: unless someone
            // wrote since (the revision no longer matches), the fresh value is just this node.
            let sole = self.locals().sole_revision(user);
            if let Some(rev) = sole {
                let now = unix_ms();
                let mut entry = Entry::default();
                entry.set(me, true, now.saturating_add(self.cfg.directory_ttl_ms), now);
                let value = Bytes::from(entry.encode(&key, &self.keys));
                if let Ok(Ok(new)) =
                    tokio::time::timeout(wait, store.update(&key, value, rev)).await
                {
                    ClusterStats::inc(&self.stats.directory_writes);
                    self.wrote(user, ticket, Some(new));
                    return Ok(());
                }
            }
        }
        let mut replaced = Vec::new();
        let mut dropped = false;
        for _ in 0..WRITE_TRIES {
            let (mut entry, revision, bad) = self.read(&store, &key).await?;
            let present = self.locals().contains(user);
            let now = unix_ms();
            let others: Vec<String> = entry.live_others(me, now).map(str::to_string).collect();
            let joining = present && !entry.holds(me, now);
            let leaving = !present && entry.nodes.contains_key(me);
            let expiry = now.saturating_add(self.cfg.directory_ttl_ms);
            // A stored value that was not valid is rewritten from what was.
            let changed = entry.set(me, present, expiry, now) || bad;
            entry.sanitize(self.bounds(), me);
            if !changed || (revision.is_none() && entry.nodes.is_empty()) {
                return Ok(());
            }
            if (joining || matches!(why, Why::Login(_))) && !others.is_empty() {
                self.tell_others(user, &others, why, &mut replaced).await;
            }
            if leaving && !dropped {
                self.not_alone(user).await;
                dropped = true;
            }
            let sole = present && entry.nodes.len() == 1;
            let value = Bytes::from(entry.encode(&key, &self.keys));
            let written = match revision {
                Some(rev) => tokio::time::timeout(wait, store.update(&key, value, rev))
                    .await
                    .map(|r| r.ok()),
                None => tokio::time::timeout(wait, store.create(&key, value))
                    .await
                    .map(|r| r.ok()),
            };
            match written {
                Ok(Some(new)) => {
                    ClusterStats::inc(&self.stats.directory_writes);
                    self.wrote(user, ticket, sole.then_some(new));
                    return Ok(());
                }
                // Another node wrote the entry since it was read: read it again.
                Ok(None) => continue,
                Err(_) => break,
            }
        }
        ClusterStats::inc(&self.stats.directory_errors);
        Err(())
    }

    /// Notes this node's write of `user`'s entry (`sole`: its revision, when it named this
    /// node alone) and tells the home shard what follows from it.
    fn wrote(&self, user: &str, ticket: Ticket, sole: Option<u64>) {
        let mut locals = self.locals();
        let tell = locals.wrote(user, ticket, sole);
        self.tell(&mut locals, user, tell, None);
    }

    /// Tells every other live node the user's entry names that this node is about to write
    /// itself in (rule 2 of `local.rs`), and waits for their answers, each bounded by the
    /// forward timeout: a login's `replace` (an older connection of the same device there is
    /// kicked), once per node, else `joined`. Either takes that node's note of the user away.
    async fn tell_others(
        &self,
        user: &str,
        others: &[String],
        why: Why<'_>,
        replaced: &mut Vec<String>,
    ) {
        let replace = match why {
            Why::Login(device) => Some(
                Request::Replace {
                    user: user.to_string(),
                    device: device.to_string(),
                }
                .encode(),
            ),
            Why::Refresh | Why::Update => None,
        };
        let joined = Request::Joined {
            user: user.to_string(),
        }
        .encode();
        let asks: Vec<_> = others
            .iter()
            .map(|n| match &replace {
                Some(r) if !replaced.contains(n) => {
                    replaced.push(n.clone());
                    self.ask(n, r.clone())
                }
                _ => self.ask(n, joined.clone()),
            })
            .collect();
        let answers = join_all(asks).await;
        for (node, answer) in others.iter().zip(answers) {
            if let Err(e) = answer {
                debug!(%node, error = e.name(), "cluster: replace or joined not answered");
            }
        }
    }
}
