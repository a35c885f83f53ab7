//! The shard's index of logged-in users: user id → the keys of its main connections.
//!
//! Each user id is stored once, here; connections hold an `Rc<str>` to the same bytes. A user
//! with one device costs no allocation beyond the id itself.

use std::collections::HashMap;
use std::rc::Rc;

/// The connections of one user. Most users have one device, so that case is inline.
#[derive(Clone, Debug)]
enum Devices {
    /// One connection (slab key).
    One(u32),
    /// Two or more connections (slab keys).
    Many(Vec<u32>),
}

/// User id → slab keys of the user's main connections on this shard.
#[derive(Debug, Default)]
pub struct UserIndex {
    /// The index itself; the key is the single stored copy of the user id.
    map: HashMap<Rc<str>, Devices>,
}

impl UserIndex {
    /// Adds connection `key` to `user` and returns the shared user id for the connection.
    pub fn insert(&mut self, user: &str, key: u32) -> Rc<str> {
        if let Some((name, devices)) = self.map.get_key_value_mut(user) {
            match devices {
                Devices::One(k) => *devices = Devices::Many(vec![*k, key]),
                Devices::Many(v) => v.push(key),
            }
            return name;
        }
        let name: Rc<str> = Rc::from(user);
        self.map.insert(Rc::clone(&name), Devices::One(key));
        name
    }

    /// Removes connection `key` from `user`; the user disappears with its last connection.
    pub fn remove(&mut self, user: &str, key: u32) {
        let Some(devices) = self.map.get_mut(user) else {
            return;
        };
        match devices {
            Devices::One(k) if *k == key => {
                self.map.remove(user);
            }
            Devices::One(_) => {}
            Devices::Many(v) => {
                v.retain(|k| *k != key);
                if v.len() == 1 {
                    *devices = Devices::One(v[0]);
                }
            }
        }
    }

    /// The main connections of `user` (empty when offline here).
    pub fn get(&self, user: &str) -> &[u32] {
        match self.map.get(user) {
            None => &[],
            Some(Devices::One(k)) => std::slice::from_ref(k),
            Some(Devices::Many(v)) => v,
        }
    }

    /// Number of users with at least one connection.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no user is connected.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// `HashMap::get_key_value_mut` is not stable; this is the same with one extra lookup only on
/// the (rare) second-device path.
trait GetKeyValueMut {
    fn get_key_value_mut(&mut self, user: &str) -> Option<(Rc<str>, &mut Devices)>;
}

impl GetKeyValueMut for HashMap<Rc<str>, Devices> {
    fn get_key_value_mut(&mut self, user: &str) -> Option<(Rc<str>, &mut Devices)> {
        let name = Rc::clone(self.get_key_value(user)?.0);
        self.get_mut(user).map(|d| (name, d))
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
        assert_eq!(ix.get("alice"), &[1, 7]);
        ix.remove("alice", 1);
        assert_eq!(ix.get("alice"), &[7]);
        ix.remove("alice", 9);
        assert_eq!(ix.get("alice"), &[7]);
        ix.remove("alice", 7);
        assert!(ix.get("alice").is_empty());
        assert!(ix.is_empty());
    }
}
