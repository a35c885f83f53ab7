//! The shard's index of logged-in users: user id → the keys of its main connections.
//!
//! Each user id is stored once, here; connections hold an `Rc<str>` to the same bytes. The map
//! value is two `u32`s. The first is the connection key of a user with one device (the common
//! case, no allocation), or, with the top bit set, the index of the user's list in a side slab.
//! The second is the user's *local-only note* in a cluster: the cluster epoch in which the
//! cluster thread found the directory naming this node alone for the user, or 0 for none (see
//! `cluster/local.rs`). The note costs no memory: the map's slot is 24 bytes with one `u32` or
//! two. It lives and dies with the user's entry, so a user who leaves takes it along.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use slab::Slab;

/// Top bit of a map value's connections: the rest is an index into `UserIndex::many`.
const MANY: u32 = 1 << 31;

/// No local-only note (cluster epochs start at 1).
const NO_NOTE: u32 = 0;

/// One user's slot in the index.
#[derive(Clone, Copy, Debug)]
struct Slot {
    /// A connection key, or `MANY | i` for the list `many[i]`.
    conns: u32,
    /// The cluster epoch of the user's local-only note, or [`NO_NOTE`].
    note: u32,
}

/// The cluster epoch (never 0): a user's local-only note holds only while it carries this
/// value. The cluster thread moves it on to void every note on every shard at once when it can
/// no longer vouch for them; a shard's core reads it for each push that could skip the
/// directory. The one piece of memory the core shares with another thread: one atomic load,
/// no lock, no system call.
#[derive(Clone, Debug)]
pub struct ClusterEpoch(Arc<AtomicU32>);

impl Default for ClusterEpoch {
    fn default() -> Self {
        Self(Arc::new(AtomicU32::new(1)))
    }
}

impl ClusterEpoch {
    /// The current epoch.
    pub fn current(&self) -> NonZeroU32 {
        NonZeroU32::new(self.0.load(Ordering::SeqCst)).unwrap_or(NonZeroU32::MIN)
    }

    /// Voids every note given so far: each later push of a cluster node takes the directory
    /// until the cluster thread notes its users again.
    pub fn void_all(&self) {
        let _ = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |e| {
                Some(e.wrapping_add(1).max(1))
            });
    }
}

/// User id → slab keys of the user's main connections on this shard.
#[derive(Debug, Default)]
pub struct UserIndex {
    /// The index itself; the key is the single stored copy of the user id.
    map: HashMap<Rc<str>, Slot>,
    /// Connection keys of users with two or more devices.
    many: Slab<Vec<u32>>,
}

impl UserIndex {
    /// Adds connection `key` (below 2^31) to `user` and returns the shared user id for the
    /// connection.
    pub fn insert(&mut self, user: &str, key: u32) -> Rc<str> {
        debug_assert!(key < MANY, "connection keys stay below 2^31");
        if let Some((name, slot)) = self.map.get_key_value(user) {
            let name = Rc::clone(name);
            let value = slot.conns;
            if value & MANY != 0 {
                self.many[(value & !MANY) as usize].push(key);
            } else {
                let list = self.many.insert(vec![value, key]) as u32;
                if let Some(slot) = self.map.get_mut(user) {
                    slot.conns = MANY | list;
                }
            }
            return name;
        }
        let name: Rc<str> = Rc::from(user);
        let slot = Slot {
            conns: key,
            note: NO_NOTE,
        };
        self.map.insert(Rc::clone(&name), slot);
        name
    }

    /// Removes connection `key` from `user`; the user disappears with its last connection.
    pub fn remove(&mut self, user: &str, key: u32) {
        let Some(&Slot { conns: value, .. }) = self.map.get(user) else {
            return;
        };
        if value & MANY == 0 {
            if value == key {
                self.map.remove(user);
            }
            return;
        }
        let list = (value & !MANY) as usize;
        self.many[list].retain(|k| *k != key);
        if let [last] = self.many[list][..] {
            self.many.remove(list);
            if let Some(slot) = self.map.get_mut(user) {
                slot.conns = last;
            }
        }
    }

    /// The main connections of `user` (empty when offline here).
    pub fn get(&self, user: &str) -> &[u32] {
        match self.map.get(user) {
            None => &[],
            Some(s) if s.conns & MANY != 0 => &self.many[(s.conns & !MANY) as usize],
            Some(s) => std::slice::from_ref(&s.conns),
        }
    }

    /// Notes that the directory named this node alone for `user` in cluster epoch `epoch`
    /// (`Some`), or drops the note (`None`). A user not here gets none: the note lives in the
    /// user's slot and would only outlive it as a lie.
    pub fn note_local_only(&mut self, user: &str, epoch: Option<NonZeroU32>) {
        if let Some(slot) = self.map.get_mut(user) {
            slot.note = epoch.map_or(NO_NOTE, NonZeroU32::get);
        }
    }

    /// Whether `user` is here with a local-only note of the current cluster epoch `epoch`.
    pub fn local_only(&self, user: &str, epoch: NonZeroU32) -> bool {
        self.map.get(user).is_some_and(|s| s.note == epoch.get())
    }

    /// Every user with at least one connection.
    pub fn names(&self) -> Vec<String> {
        self.map.keys().map(|u| u.to_string()).collect()
    }

    /// Number of users with at least one connection.
    pub fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_come_and_go() {
        let mut ix = UserIndex::default();
        let a = ix.insert("alice", 1);
        let b = ix.insert("alice", 7);
        assert!(Rc::ptr_eq(&a, &b), "the user id is stored once");
        ix.insert("alice", 9);
        ix.insert("bob", 2);
        assert_eq!(ix.get("alice"), &[1, 7, 9]);
        ix.remove("alice", 1);
        assert_eq!(ix.get("alice"), &[7, 9]);
        ix.remove("alice", 9);
        assert_eq!(ix.get("alice"), &[7]);
        assert!(ix.many.is_empty(), "a single device needs no list");
        ix.remove("alice", 3);
        assert_eq!(ix.get("alice"), &[7]);
        ix.remove("alice", 7);
        assert!(ix.get("alice").is_empty());
        assert_eq!(ix.get("bob"), &[2]);
        ix.remove("bob", 2);
        assert_eq!(ix.len(), 0);
    }

    #[test]
    fn a_local_only_note_holds_for_its_epoch_and_leaves_with_the_user() {
        let one = NonZeroU32::new(1).unwrap();
        let two = NonZeroU32::new(2).unwrap();
        let mut ix = UserIndex::default();
        ix.note_local_only("alice", Some(one));
        assert!(!ix.local_only("alice", one), "no note for a user not here");
        ix.insert("alice", 1);
        assert!(!ix.local_only("alice", one), "a new user has none");
        ix.note_local_only("alice", Some(one));
        assert!(ix.local_only("alice", one));
        assert!(
            !ix.local_only("alice", two),
            "an older epoch's note is void"
        );
        // A second device and its departure keep the note: it is about other nodes.
        ix.insert("alice", 2);
        ix.remove("alice", 1);
        assert!(ix.local_only("alice", one));
        ix.note_local_only("alice", None);
        assert!(!ix.local_only("alice", one));
        ix.note_local_only("alice", Some(one));
        ix.remove("alice", 2);
        ix.insert("alice", 3);
        assert!(!ix.local_only("alice", one), "the note left with the user");
        assert_eq!(
            std::mem::size_of::<(Rc<str>, Slot)>(),
            std::mem::size_of::<(Rc<str>, u32)>(),
            "the note costs the index no memory"
        );
    }
}
