//! Connection caps of one HTTP listener: at most `limit` open connections, at most
//! `per_source` of them from one source. Each listener has its own [`Caps`], so sockets held
//! open on the metrics listener (which needs no key) never take the API's places, and one host
//! cannot take all of either.
//!
//! A source is an IPv4 address or an IPv6 /64 (one IPv6 host usually owns a whole /64, as in
//! the shards' admission); an IPv4-mapped IPv6 address counts as its IPv4 address.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;

/// Where connections come from, as far as the caps are concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Source {
    /// An IPv4 address.
    V4(u32),
    /// The upper 64 bits of an IPv6 address.
    V6(u64),
}

impl Source {
    fn of(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source::V4(v4.to_bits()),
            IpAddr::V6(v6) => Source::V6((v6.to_bits() >> 64) as u64),
        }
    }
}

/// Why a connection was refused (a label of `tether_api_connections_refused_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The listener holds `limit` connections.
    Listener,
    /// The source holds `per_source` connections on this listener.
    Address,
}

impl Refused {
    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Refused::Listener => "listener",
            Refused::Address => "address",
        }
    }
}

/// One listener's caps and what they count.
#[derive(Debug)]
pub(crate) struct Caps {
    /// Most open connections.
    limit: usize,
    /// Most open connections from one source.
    per_source: usize,
    /// Open connections.
    open: Cell<usize>,
    /// Open connections by source (sources with none are removed, so the map holds at most
    /// `limit` entries).
    by_source: RefCell<HashMap<Source, usize>>,
}

/// An admitted connection's place; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct Slot {
    /// The caps it counts against.
    caps: Rc<Caps>,
    /// Its source.
    source: Source,
}

impl Caps {
    /// Caps of `limit` connections, `per_source` from one source.
    pub(crate) fn new(limit: usize, per_source: usize) -> Rc<Caps> {
        Rc::new(Caps {
            limit,
            per_source,
            open: Cell::new(0),
            by_source: RefCell::new(HashMap::new()),
        })
    }

    /// Takes a place for a connection from `ip`, or says which cap is reached.
    pub(crate) fn admit(self: &Rc<Self>, ip: IpAddr) -> Result<Slot, Refused> {
        if self.open.get() >= self.limit {
            return Err(Refused::Listener);
        }
        let source = Source::of(ip);
        let mut by_source = self.by_source.borrow_mut();
        let n = by_source.entry(source).or_insert(0);
        if *n >= self.per_source {
            return Err(Refused::Address);
        }
        *n += 1;
        self.open.set(self.open.get() + 1);
        Ok(Slot {
            caps: Rc::clone(self),
            source,
        })
    }

    /// Open connections.
    pub(crate) fn open(&self) -> usize {
        self.open.get()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let caps = &self.caps;
        caps.open.set(caps.open.get() - 1);
        let mut by_source = caps.by_source.borrow_mut();
        if let Some(n) = by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                by_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn v4(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(198, 18, 0, n))
    }

    #[test]
    fn a_source_and_the_listener_each_have_a_cap() {
        let caps = Caps::new(5, 2);
        let a1 = caps.admit(v4(1)).unwrap();
        let _a2 = caps.admit(v4(1)).unwrap();
        assert_eq!(caps.admit(v4(1)).unwrap_err(), Refused::Address);
        let _b = caps.admit(v4(2)).unwrap();
        let _c1 = caps.admit(v4(3)).unwrap();
        let _c2 = caps.admit(v4(3)).unwrap();
        assert_eq!(caps.open(), 5);
        assert_eq!(caps.admit(v4(4)).unwrap_err(), Refused::Listener);
        drop(a1);
        assert_eq!(caps.open(), 4);
        let _a3 = caps.admit(v4(1)).expect("a freed place is free again");
        assert_eq!(caps.admit(v4(4)).unwrap_err(), Refused::Listener);
    }

    #[test]
    fn ipv6_counts_by_slash_64_and_mapped_ipv4_as_ipv4() {
        let caps = Caps::new(100, 1);
        let v6 = |s: &str| IpAddr::V6(s.parse::<Ipv6Addr>().unwrap());
        let _x = caps.admit(v6("2001:db8:1:2::1")).unwrap();
        assert_eq!(
            caps.admit(v6("2001:db8:1:2:ffff::9")).unwrap_err(),
            Refused::Address
        );
        let _y = caps.admit(v6("2001:db8:1:3::1")).unwrap();
        let _z = caps.admit(v4(7)).unwrap();
        assert_eq!(
            caps.admit(v6("::ffff:198.18.0.7")).unwrap_err(),
            Refused::Address
        );
    }

    #[test]
    fn freed_sources_leave_the_map() {
        let caps = Caps::new(10, 10);
        let slots: Vec<Slot> = (0..10).map(|i| caps.admit(v4(i)).unwrap()).collect();
        assert_eq!(caps.by_source.borrow().len(), 10);
        drop(slots);
        assert!(caps.by_source.borrow().is_empty());
        assert_eq!(caps.open(), 0);
    }
}
