//! This node's users as the cluster thread knows them, and what it tells their home shards: a
//! **local-only note** when the directory names this node alone for a user, so that its pushes
//! skip the directory and the cluster thread (local-first), or that the note is gone. Pure:
//! the cluster thread keeps it under one lock, off the shards' path, and posts what it decides
//! to the user's home shard while it holds that lock (`notes.rs`), so the shard takes the
//! decisions in the order they were made.
//!
//! The directory stays the only source of truth; a note is a cached answer of one read, "no
//! other node", and the rules below keep it true. A note can only send a push *to* the
//! directory (by being absent), never past a node that holds a device:
//!
//! 1. **A note is given only after a write.** This node's compare-and-set write of the user's
//!    entry succeeded with this node present and no other live node in it; and nothing took a
//!    note of the user away since that write began (the user's generation, [`Ticket`]); and
//!    the cluster epoch has not moved since then either.
//! 2. **A node tells before it adds itself.** A node that writes itself into an entry where
//!    it was not live (or writes for a login) first asks every other live node the entry
//!    names, `replace` or `joined`, at every attempt of its compare-and-set, and waits for
//!    their answers. A node asked drops its note ([`Locals::not_alone`]: a new generation, so a
//!    write that began before cannot note it again) and waits until the home shard took that
//!    in before it answers.
//! 3. **A node drops its note before it removes itself** from an entry, and waits for the
//!    shard; and on every logout (a note of the user's previous stay may still be on its way
//!    to a shard that holds the user again).
//! 4. **A write that finds another node, or fails, drops the note** (a notice lost on the
//!    way; a part of the entry left unrefreshed).
//! 5. **Anything uncertain voids every note at once** by moving the cluster epoch on (a NATS
//!    connection event other than a connect, a notice not taken in, a notice refused for want
//!    of a permit, refresh passes fallen behind: `refresh.rs::watch_refresh`); the next refresh
//!    pass notes the users again.
//!
//! Why no device is missed (beyond what a directory read at the same moment would miss): say
//! node B writes itself into the user's entry from base revision r, and A holds a note from
//! its write W. If W came before r, W's entry (A alone) is in r's history and A is live in r:
//! A wrote a fresh expiry, and rule 5 voids its notes before its part can expire (clocks
//! agreeing within 5/16 of the TTL), so a part another writer pruned means A holds no note.
//! So B asked A after reading r, hence after W, and waited: A's ticket for W is outdated or,
//! if the note was given first, the shard took the drop after it. If W came after r, W read B
//! in the entry and gives no note (B's compare-and-set on r succeeded, so nothing came
//! between). A write retried after a failed compare-and-set reads and asks again, so a base
//! some other write changed is never trusted. What remains is what the directory itself
//! misses, a device whose node has not written the entry yet, and a notice that is lost
//! (NATS is trusted with availability) or answered after the asking node's
//! `forward_timeout_ms`: then the note lasts until A's next write of the entry finds B (rule
//! 4), at most `refresh_ms`.

use std::collections::HashMap;
use std::num::NonZeroU32;

/// One local user.
#[derive(Clone, Copy, Debug)]
struct Local {
    /// The revision of this node's last write of the entry, when it named this node alone (a
    /// refresh then writes without reading first).
    sole: Option<u64>,
    /// Changes when the user arrives and whenever its note is taken away: a write that began
    /// under another generation gives no note.
    gen: u64,
    /// The cluster epoch of the last note this thread gave the home shard, if it still stands.
    noted: Option<NonZeroU32>,
}

/// What a write of a user's entry may note when it ends: taken as it begins.
#[derive(Clone, Copy, Debug)]
pub struct Ticket {
    /// The user's generation then (`None`: not a local user).
    gen: Option<u64>,
    /// The cluster epoch then.
    epoch: NonZeroU32,
}

/// What the home shard is to be told after a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tell {
    /// Nothing new.
    Nothing,
    /// The directory names this node alone: note it, in this epoch.
    LocalOnly(NonZeroU32),
    /// Another node may hold a device: drop the note.
    NotAlone,
}

/// This node's users (with a main connection here, as the shards' events say).
#[derive(Debug, Default)]
pub struct Locals {
    /// User id → what this thread knows of it.
    users: HashMap<String, Local>,
    /// The next generation.
    next_gen: u64,
    /// Whether notes are given at all (`[cluster] local_first`).
    off: bool,
}

impl Locals {
    /// No users yet; `local_first` false: no note is ever given.
    pub fn new(local_first: bool) -> Locals {
        Locals {
            off: !local_first,
            ..Locals::default()
        }
    }

    fn next_gen(&mut self) -> u64 {
        self.next_gen += 1;
        self.next_gen
    }

    /// A main connection of `user` registered here (kept as it was when the user was here).
    pub fn arrive(&mut self, user: &str) {
        if !self.users.contains_key(user) {
            let gen = self.next_gen();
            let local = Local {
                sole: None,
                gen,
                noted: None,
            };
            self.users.insert(user.to_string(), local);
        }
    }

    /// The user's last main connection here left.
    pub fn leave(&mut self, user: &str) {
        self.users.remove(user);
    }

    /// Whether `user` is here.
    pub fn contains(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// Users here.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Every user here.
    pub fn names(&self) -> Vec<String> {
        self.users.keys().cloned().collect()
    }

    /// Keeps the users `here` names (with what is known of them: a note this thread gave
    /// may still stand on a shard, and a write that finds another node must take it away),
    /// adds those missing, and returns those gone.
    pub fn rebuild(&mut self, here: &std::collections::HashSet<String>) -> Vec<String> {
        let gone: Vec<String> = self
            .users
            .keys()
            .filter(|u| !here.contains(*u))
            .cloned()
            .collect();
        for u in &gone {
            self.users.remove(u);
        }
        for u in here {
            self.arrive(u);
        }
        gone
    }

    /// The revision of this node's last write of `user`'s entry, if it named this node alone.
    pub fn sole_revision(&self, user: &str) -> Option<u64> {
        self.users.get(user).and_then(|l| l.sole)
    }

    /// A write of `user`'s entry begins, in cluster epoch `epoch`.
    pub fn ticket(&self, user: &str, epoch: NonZeroU32) -> Ticket {
        Ticket {
            gen: self.users.get(user).map(|l| l.gen),
            epoch,
        }
    }

    /// This node's write of `user`'s entry succeeded; `sole`: its revision when the entry it
    /// wrote named this node (present) alone. Says what to tell the home shard.
    pub fn wrote(&mut self, user: &str, ticket: Ticket, sole: Option<u64>) -> Tell {
        let off = self.off;
        let Some(l) = self.users.get_mut(user) else {
            return Tell::Nothing;
        };
        l.sole = sole;
        match sole {
            Some(_) if off || ticket.gen != Some(l.gen) || l.noted == Some(ticket.epoch) => {
                Tell::Nothing
            }
            Some(_) => {
                l.noted = Some(ticket.epoch);
                Tell::LocalOnly(ticket.epoch)
            }
            None if l.noted.is_some() => {
                l.noted = None;
                Tell::NotAlone
            }
            None => Tell::Nothing,
        }
    }

    /// The note [`Locals::wrote`] asked for did not reach the home shard.
    pub fn unnote(&mut self, user: &str) {
        if let Some(l) = self.users.get_mut(user) {
            l.noted = None;
        }
    }

    /// Another node holds (or is about to hold) a device of `user`, or this node is about to
    /// take itself out of the entry: the note goes, and no write that began before gives it
    /// again. The home shard is always told (the user may be there before this thread knows).
    pub fn not_alone(&mut self, user: &str) {
        let gen = self.next_gen();
        if let Some(l) = self.users.get_mut(user) {
            l.gen = gen;
            l.sole = None;
            l.noted = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[test]
    fn a_sole_write_notes_once_per_epoch_and_another_node_takes_it_away() {
        let mut l = Locals::new(true);
        l.arrive("u");
        let t = l.ticket("u", epoch(1));
        assert_eq!(l.wrote("u", t, Some(7)), Tell::LocalOnly(epoch(1)));
        assert_eq!(l.sole_revision("u"), Some(7));
        // The next refresh writes alone again: nothing new to say.
        let t = l.ticket("u", epoch(1));
        assert_eq!(l.wrote("u", t, Some(8)), Tell::Nothing);
        // Every note was voided (epoch 2): the next sole write notes again.
        let t = l.ticket("u", epoch(2));
        assert_eq!(l.wrote("u", t, Some(9)), Tell::LocalOnly(epoch(2)));
        // A write that finds another node takes the note away.
        let t = l.ticket("u", epoch(2));
        assert_eq!(l.wrote("u", t, None), Tell::NotAlone);
        assert_eq!(l.sole_revision("u"), None);
        let t = l.ticket("u", epoch(2));
        assert_eq!(l.wrote("u", t, None), Tell::Nothing);
    }

    #[test]
    fn a_write_that_began_before_a_notice_gives_no_note() {
        let mut l = Locals::new(true);
        l.arrive("u");
        let t = l.ticket("u", epoch(1));
        // Node b said it joins while this write was on its way.
        l.not_alone("u");
        assert_eq!(l.wrote("u", t, Some(3)), Tell::Nothing);
        // The revision is kept for the refresh; only a later write may note.
        assert_eq!(l.sole_revision("u"), Some(3));
        let t = l.ticket("u", epoch(1));
        assert_eq!(l.wrote("u", t, Some(4)), Tell::LocalOnly(epoch(1)));
    }

    #[test]
    fn a_user_who_left_and_came_back_is_not_noted_by_an_older_write() {
        let mut l = Locals::new(true);
        l.arrive("u");
        let before = l.ticket("u", epoch(1));
        l.leave("u");
        assert_eq!(l.wrote("u", before, Some(3)), Tell::Nothing);
        l.arrive("u");
        assert_eq!(l.wrote("u", before, Some(3)), Tell::Nothing, "another stay");
        // A second device's arrival keeps the stay (and its note).
        let t = l.ticket("u", epoch(1));
        assert_eq!(l.wrote("u", t, Some(4)), Tell::LocalOnly(epoch(1)));
        l.arrive("u");
        let t = l.ticket("u", epoch(1));
        assert_eq!(l.wrote("u", t, Some(5)), Tell::Nothing);
        // Not a local user: nothing, whatever the write found.
        let t = l.ticket("nobody", epoch(1));
        assert_eq!(l.wrote("nobody", t, Some(1)), Tell::Nothing);
    }

    #[test]
    fn switched_off_no_note_is_ever_given() {
        let mut l = Locals::new(false);
        l.arrive("u");
        let t = l.ticket("u", epoch(1));
        assert_eq!(l.wrote("u", t, Some(1)), Tell::Nothing);
        assert_eq!(
            l.sole_revision("u"),
            Some(1),
            "the refresh still skips the read"
        );
    }

    #[test]
    fn a_rebuild_keeps_what_is_known_of_those_still_here() {
        let mut l = Locals::new(true);
        l.arrive("stays");
        l.arrive("goes");
        let t = l.ticket("stays", epoch(1));
        l.wrote("stays", t, Some(2));
        let here = ["stays".to_string(), "new".to_string()]
            .into_iter()
            .collect();
        assert_eq!(l.rebuild(&here), ["goes"]);
        assert_eq!(l.len(), 2);
        assert_eq!(l.sole_revision("stays"), Some(2));
        assert!(l.contains("new") && !l.contains("goes"));
        // The note given before the rebuild may stand: a write that finds another node still
        // takes it away.
        let t = l.ticket("stays", epoch(1));
        assert_eq!(l.wrote("stays", t, None), Tell::NotAlone);
    }
}
