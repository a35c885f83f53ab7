//! A driver without sockets: carries out a [`Core`]'s commands in memory, for tests and the
//! state benchmark. Sends complete at once (all bytes taken) unless the connection is
//! stalled, which models a peer that stopped reading.

use std::collections::{HashMap, HashSet};

use bytes::BytesMut;

use super::{Command, ConnId, Core, Now, Post, Undelivered};

/// See the [module documentation](self).
#[derive(Debug, Default)]
pub struct SimDriver {
    /// Bytes "written" per connection, when `keep_sent`.
    pub sent: HashMap<ConnId, BytesMut>,
    /// Whether to keep written bytes (benchmarks turn it off).
    pub keep_sent: bool,
    /// Connections closed (or aborted), in order.
    pub closed: Vec<ConnId>,
    /// Connections whose sends do not complete.
    pub stalled: HashSet<ConnId>,
    /// Sends that did not complete yet (stalled connections), by connection: byte count.
    pub outstanding: HashMap<ConnId, usize>,
    /// Connections handed over to another shard.
    pub handed_over: Vec<(ConnId, usize)>,
    /// Sends carried out.
    pub sends: u64,
    /// Posts to other shards and threads, in order.
    pub posted: Vec<Post>,
    /// Model full channels: every post is given back as undelivered.
    pub refuse_posts: bool,
}

impl SimDriver {
    /// Carries out every command of `core`, reporting completed sends back, until it has
    /// nothing more to do.
    pub fn run(&mut self, core: &mut Core, now: Now) {
        let mut done = Vec::new();
        let mut undelivered = Vec::new();
        loop {
            while let Some(cmd) = core.poll_command() {
                match cmd {
                    Command::Recv { .. } | Command::Pause { .. } | Command::Prompt { .. } => {}
                    Command::Send { conn, bytes } => {
                        self.sends += 1;
                        if self.stalled.contains(&conn) {
                            self.outstanding.insert(conn, bytes.len());
                            continue;
                        }
                        if self.keep_sent {
                            self.sent.entry(conn).or_default().extend_from_slice(&bytes);
                        }
                        done.push((conn, bytes.len()));
                    }
                    Command::Close { conn } | Command::Abort { conn } => {
                        self.outstanding.remove(&conn);
                        self.closed.push(conn);
                    }
                    Command::HandOver { conn, to, .. } => self.handed_over.push((conn, to)),
                    Command::Post(post) if self.refuse_posts => undelivered.push(post),
                    Command::Post(post) => self.posted.push(post),
                }
            }
            if done.is_empty() && undelivered.is_empty() {
                return;
            }
            for post in undelivered.drain(..) {
                core.on_undelivered(post, Undelivered::Full, now);
            }
            for (conn, n) in done.drain(..) {
                core.on_sent(conn, Ok(n), now);
            }
        }
    }
}
