//! Device ids of a shard's main connections, each name stored once.
//!
//! A connection keeps a 4-byte [`DeviceId`] instead of its device's name. The name is needed
//! to tell a backend who sent an upstream message or a client's `Send`, and to find the
//! connection a re-login of the same device replaces (an exact match: two names never share an
//! id). Most apps name devices by kind ("phone", "desktop", "web"), so a shard holds a handful
//! of names for millions of connections; an app that names each device uniquely pays for the
//! name once per connection, as it would anyway.

use std::collections::HashMap;
use std::rc::Rc;

/// A device name's id on this shard; [`DeviceId::NONE`] for a connection without one (backends,
/// probes, connections not logged in).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DeviceId(pub u32);

impl DeviceId {
    /// No device.
    pub const NONE: DeviceId = DeviceId(0);
}

/// The interned names, counted by the connections that hold them.
#[derive(Debug, Default)]
pub struct Devices {
    /// Name → id.
    ids: HashMap<Rc<str>, u32>,
    /// `slots[id - 1]`: the name and how many connections hold it; `None` when free.
    slots: Vec<Option<(Rc<str>, u32)>>,
    /// Free slots, reused first.
    free: Vec<u32>,
}

impl Devices {
    /// The id of `name`, held once more.
    pub fn hold(&mut self, name: &str) -> DeviceId {
        if let Some(&id) = self.ids.get(name) {
            if let Some((_, count)) = &mut self.slots[id as usize - 1] {
                *count += 1;
            }
            return DeviceId(id);
        }
        let name: Rc<str> = Rc::from(name);
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id as usize - 1] = Some((Rc::clone(&name), 1));
                id
            }
            None => {
                self.slots.push(Some((Rc::clone(&name), 1)));
                self.slots.len() as u32
            }
        };
        self.ids.insert(name, id);
        DeviceId(id)
    }

    /// A connection holding `id` let it go.
    pub fn release(&mut self, id: DeviceId) {
        let Some(slot) =
            id.0.checked_sub(1)
                .and_then(|i| self.slots.get_mut(i as usize))
        else {
            return;
        };
        let Some((name, count)) = slot else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            self.ids.remove(&**name);
            *slot = None;
            self.free.push(id.0);
        }
    }

    /// The name of `id` ("" for none).
    pub fn name(&self, id: DeviceId) -> &str {
        id.0.checked_sub(1)
            .and_then(|i| self.slots.get(i as usize))
            .and_then(|s| s.as_ref())
            .map_or("", |(name, _)| name)
    }

    /// The id `name` has if any connection holds it.
    pub fn find(&self, name: &str) -> Option<DeviceId> {
        self.ids.get(name).map(|&id| DeviceId(id))
    }

    /// Distinct names held.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether no name is held.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_shared_counted_and_freed() {
        let mut d = Devices::default();
        let a = d.hold("phone");
        let b = d.hold("phone");
        let c = d.hold("desktop");
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(d.name(a), "phone");
        assert_eq!(d.name(DeviceId::NONE), "");
        d.release(a);
        assert_eq!(d.find("phone"), Some(a), "still held once");
        d.release(b);
        assert_eq!(d.find("phone"), None);
        assert_eq!(d.len(), 1);
        let e = d.hold("web");
        assert_eq!(e, a, "the free slot is reused");
        assert_eq!(d.name(e), "web");
        d.release(DeviceId::NONE);
        d.release(DeviceId(99));
    }
}
