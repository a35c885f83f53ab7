//! The shard's index of logged-in users: user id → the keys of its main connections.
//!
//! Each user id is stored once, here; connections hold an `Rc<str>` to the same bytes. The map
//! value is one `u32`: the connection key of a user with one device (the common case, no
//! allocation), or, with the top bit set, the index of the user's list in a side slab.

use std::collections::HashMap;
use std::rc::Rc;

use slab::Slab;

/// Top bit of a map value: the rest is an index into `UserIndex::many`.
const MANY: u32 = 1 << 31;

/// User id → slab keys of the user's main connections on this shard.
#[derive(Debug, Default)]
pub struct UserIndex {
    /// The index itself; the key is the single stored copy of the user id. The value is a
    /// connection key, or `MANY | i` for the list `many[i]`.
    map: HashMap<Rc<str>, u32>,
    /// Connection keys of users with two or more devices.
    many: Slab<Vec<u32>>,
}

impl UserIndex {
    /// Adds connection `key` (below 2^31) to `user` and returns the shared user id for the
    /// connection.
    pub fn insert(&mut self, user: &str, key: u32) -> Rc<str> {
        debug_assert!(key < MANY, "connection keys stay below 2^31");
        if let Some((name, value)) = self.map.get_key_value(user) {
            let name = Rc::clone(name);
            let value = *value;
            if value & MANY != 0 {
                self.many[(value & !MANY) as usize].push(key);
            } else {
                let list = self.many.insert(vec![value, key]) as u32;
                self.map.insert(Rc::clone(&name), MANY | list);
            }
            return name;
        }
        let name: Rc<str> = Rc::from(user);
        self.map.insert(Rc::clone(&name), key);
        name
    }

    /// Removes connection `key` from `user`; the user disappears with its last connection.
    pub fn remove(&mut self, user: &str, key: u32) {
        let Some(&value) = self.map.get(user) else {
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
            if let Some(v) = self.map.get_mut(user) {
                *v = last;
            }
        }
    }

    /// The main connections of `user` (empty when offline here).
    pub fn get(&self, user: &str) -> &[u32] {
        match self.map.get(user) {
            None => &[],
            Some(v) if v & MANY != 0 => &self.many[(v & !MANY) as usize],
            Some(v) => std::slice::from_ref(v),
        }
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
}
