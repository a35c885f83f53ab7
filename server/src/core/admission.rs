//! Admission: whether a new connection or a login may proceed, per shard and per source
//! address. Pure: no sockets, no clock (every call takes `now` in monotonic milliseconds).
//!
//! The shard asks [`Admission::on_accept`] for every accepted socket and
//! [`Admission::on_login`] for every `Login` frame before its token is checked, and tells it
//! [`Admission::on_close`]. A refusal carries the back-off window the client is told (see
//! `overload.rs`) and a reason the shard counts.
//!
//! Failed logins are counted per (address, user the login names), not per address, and a ban
//! only ever refuses logins whose token fails: [`Admission::ban`], [`Admission::on_login_failed`]
//! and [`Admission::on_login_ok`]; `bans.rs` explains why.
//!
//! Caps per source address are kept in a table bounded by `max_addresses`. When the table is
//! full, a new address evicts one with no open connection among the next few entries after a
//! rotating hand (a clock sweep); if those all hold connections, the new address is not
//! tracked: its connection is admitted against the shard-wide caps only (counted as
//! `admission_untracked`). An attacker therefore needs more addresses than the table holds,
//! each with live connections, to slip past the per-address caps, and the shard-wide caps
//! still hold then.
//!
//! Addresses are keyed by a 32-bit seeded hash of the IPv4 address or of the IPv6 /64 prefix
//! (one IPv6 host usually owns a whole /64). The hash keeps the key in four bytes of the
//! connection's slab entry; two addresses colliding share their counts, which only makes the
//! caps stricter for those two, and the seed is random per process so a peer cannot aim for
//! a collision.

use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;

use indexmap::IndexMap;
use serde::Deserialize;

use crate::core::bans::{Bans, PairKey};

use crate::counters::Counter;

/// The key of a source address. [`AddrKey::UNKNOWN`] means "not tracked": calls with it
/// check the shard-wide caps only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct AddrKey(pub u32);

impl AddrKey {
    /// No address (getpeername failed, or the address is not tracked).
    pub const UNKNOWN: AddrKey = AddrKey(0);
}

/// `[limits]`: see `default.toml` for each key's reason and default. Rates are per second,
/// bursts in events; 0 turns a limit off. Server-wide values; each shard enforces its share
/// (see [`LimitsConfig::per_shard`]).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Concurrent connections from one address.
    pub per_address_connections: u32,
    /// New connections per second, whole server.
    pub accept_rate: u32,
    /// Burst of new connections, whole server.
    pub accept_burst: u32,
    /// New connections per second from one address.
    pub per_address_accept_rate: u32,
    /// Burst of new connections from one address.
    pub per_address_accept_burst: u32,
    /// Login attempts per second, whole server.
    pub login_rate: u32,
    /// Burst of login attempts, whole server.
    pub login_burst: u32,
    /// Login attempts per second from one address.
    pub per_address_login_rate: u32,
    /// Burst of login attempts from one address.
    pub per_address_login_burst: u32,
    /// Failed logins of one (address, user) pair within `failed_login_window_ms` that start
    /// a ban of that pair (see `bans.rs`).
    pub failed_logins: u32,
    /// The window failed logins are counted in.
    pub failed_login_window_ms: u64,
    /// How long a banned pair's failing logins are told to stay away.
    pub ban_ms: u64,
    /// Addresses each shard tracks (and (address, user) pairs with failed logins).
    pub max_addresses: usize,
    /// The back-off window sent with a refusal (clients reconnect at a random point in it).
    pub backoff_window_ms: u32,
    /// How long a shard stops accepting after the process ran out of descriptors.
    pub accept_pause_ms: u64,
    /// Frames one client (or probe, or not yet logged-in) connection may send per second;
    /// past it the connection is closed with `ProtocolError`. Backends are exempt.
    pub client_frame_rate: u32,
    /// Pushes one backend connection may have waiting for their results; past it a push is
    /// refused `RateLimited` at once. 0 turns it off.
    pub backend_max_in_flight: u32,
}

impl LimitsConfig {
    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_addresses == 0 {
            return Err("limits.max_addresses must be > 0".into());
        }
        if self.failed_logins > 0 && (self.failed_login_window_ms == 0 || self.ban_ms == 0) {
            return Err(
                "limits.failed_login_window_ms and limits.ban_ms must be > 0 when \
                 limits.failed_logins is set"
                    .into(),
            );
        }
        if self.failed_login_window_ms > 86_400_000 || self.ban_ms > 86_400_000 {
            // Added to the clock: bounded, so the sum cannot wrap.
            return Err(
                "limits.failed_login_window_ms and limits.ban_ms must be at most 86400000 \
                 (a day)"
                    .into(),
            );
        }
        if self.accept_pause_ms == 0 || self.accept_pause_ms > 60_000 {
            return Err("limits.accept_pause_ms must be in 1..=60000".into());
        }
        if self.client_frame_rate > u32::from(u16::MAX) {
            return Err(format!(
                "limits.client_frame_rate must be at most {} (0 turns it off)",
                u16::MAX
            ));
        }
        for (rate, burst, name) in [
            (self.accept_rate, self.accept_burst, "accept"),
            (
                self.per_address_accept_rate,
                self.per_address_accept_burst,
                "per_address_accept",
            ),
            (self.login_rate, self.login_burst, "login"),
            (
                self.per_address_login_rate,
                self.per_address_login_burst,
                "per_address_login",
            ),
        ] {
            if rate > 0 && burst == 0 {
                return Err(format!(
                    "limits.{name}_burst must be > 0 when the rate is set"
                ));
            }
        }
        Ok(())
    }

    /// One shard's share of the server-wide caps: counts and rates divided by `shards`,
    /// rounded up (the kernel spreads connections, also those of one address, over the
    /// shards by a hash of the 4-tuple). Bans, windows and the table size are per shard as
    /// given.
    pub fn per_shard(&self, shards: usize) -> LimitsConfig {
        let n = shards.max(1) as u32;
        let share = |v: u32| if v == 0 { 0 } else { v.div_ceil(n).max(1) };
        LimitsConfig {
            per_address_connections: share(self.per_address_connections),
            accept_rate: share(self.accept_rate),
            accept_burst: share(self.accept_burst),
            per_address_accept_rate: share(self.per_address_accept_rate),
            per_address_accept_burst: share(self.per_address_accept_burst),
            login_rate: share(self.login_rate),
            login_burst: share(self.login_burst),
            per_address_login_rate: share(self.per_address_login_rate),
            per_address_login_burst: share(self.per_address_login_burst),
            failed_logins: share(self.failed_logins),
            ..self.clone()
        }
    }

    /// Every limit off (benchmarks, unit tests of other parts).
    pub fn unlimited() -> LimitsConfig {
        LimitsConfig {
            per_address_connections: 0,
            accept_rate: 0,
            accept_burst: 0,
            per_address_accept_rate: 0,
            per_address_accept_burst: 0,
            login_rate: 0,
            login_burst: 0,
            per_address_login_rate: 0,
            per_address_login_burst: 0,
            failed_logins: 0,
            failed_login_window_ms: 0,
            ban_ms: 0,
            max_addresses: 1,
            backoff_window_ms: 10_000,
            accept_pause_ms: 100,
            client_frame_rate: 0,
            backend_max_in_flight: 0,
        }
    }
}

/// Why a connection or login was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The shard holds `max_connections`.
    Full,
    /// The process is out of descriptors (EMFILE/ENFILE); refused through the reserve.
    Descriptors,
    /// Shard-wide accept rate.
    AcceptRate,
    /// Accept rate of the address.
    AddressAcceptRate,
    /// Concurrent connections of the address.
    AddressConnections,
    /// Shard-wide login rate.
    LoginRate,
    /// Login rate of the address.
    AddressLoginRate,
    /// The login's token failed, and its (address, user) pair failed too many logins before:
    /// it is told to stay away for the rest of the ban.
    Banned,
}

impl Reason {
    /// The counter of refusals for this reason.
    pub fn counter(self) -> Counter {
        match self {
            Reason::Full => Counter::RefusedAtAccept,
            Reason::Descriptors => Counter::RefusedDescriptors,
            Reason::AcceptRate => Counter::RefusedAcceptRate,
            Reason::AddressAcceptRate => Counter::RefusedAddressAcceptRate,
            Reason::AddressConnections => Counter::RefusedAddressConnections,
            Reason::LoginRate => Counter::RefusedLoginRate,
            Reason::AddressLoginRate => Counter::RefusedAddressLoginRate,
            Reason::Banned => Counter::RefusedBanned,
        }
    }
}

/// A refusal: why, and the back-off window to tell the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Why.
    pub reason: Reason,
    /// Reconnect after a random delay in `0..window_ms`.
    pub window_ms: u32,
}

/// A token bucket in thousandths of a token, refilled from elapsed milliseconds (a rate of
/// `r` per second adds `r` thousandths per millisecond).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Bucket {
    /// Thousandths of a token available.
    milli: u64,
    /// When `milli` was last refilled.
    at: u64,
}

impl Bucket {
    /// A full bucket.
    fn full(burst: u32, now: u64) -> Bucket {
        Bucket {
            milli: u64::from(burst) * 1000,
            at: now,
        }
    }

    /// Takes one token if there is one. A rate of 0 is no limit.
    fn take(&mut self, rate: u32, burst: u32, now: u64) -> bool {
        if rate == 0 {
            return true;
        }
        let cap = u64::from(burst) * 1000;
        let elapsed = now.saturating_sub(self.at);
        self.milli = self
            .milli
            .saturating_add(elapsed.saturating_mul(u64::from(rate)))
            .min(cap);
        self.at = self.at.max(now);
        if self.milli >= 1000 {
            self.milli -= 1000;
            true
        } else {
            false
        }
    }

    /// Milliseconds until a token is available again (at least 1).
    fn wait_ms(&self, rate: u32) -> u64 {
        if rate == 0 {
            return 1;
        }
        (1000u64.saturating_sub(self.milli))
            .div_ceil(u64::from(rate))
            .max(1)
    }

    /// Gives a token back (the request it was taken for was refused by a later check).
    fn refund(&mut self, burst: u32) {
        self.milli = (self.milli + 1000).min(u64::from(burst) * 1000);
    }
}

/// What the shard knows about one source address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    /// Open connections from the address on this shard.
    conns: u32,
    /// Accept rate of the address.
    accepts: Bucket,
    /// Login rate of the address.
    logins: Bucket,
}

/// One shard's admission state. See the [module documentation](self).
#[derive(Debug)]
pub struct Admission {
    /// The shard's share of the limits.
    cfg: LimitsConfig,
    /// Turns addresses into keys; the same seed on every shard (connections move between
    /// shards with their key).
    hasher: RandomState,
    /// Shard-wide accept rate.
    accepts: Bucket,
    /// Shard-wide login rate.
    logins: Bucket,
    /// Per-address state, bounded by `cfg.max_addresses`.
    table: IndexMap<AddrKey, Entry>,
    /// Where the eviction sweep looks next.
    hand: usize,
    /// Failed logins and bans per (address, user).
    bans: Bans,
    /// Connections admitted without a table entry because the table was full.
    pub untracked: u64,
}

impl Default for Admission {
    /// Admits everything.
    fn default() -> Admission {
        Admission::new(LimitsConfig::unlimited(), RandomState::new(), 0)
    }
}

/// Entries the eviction sweep looks at before giving up.
const SWEEP: usize = 32;

impl Admission {
    /// Admission with the shard's share of the limits, keys hashed with `hasher`, buckets
    /// full at `now`.
    pub fn new(cfg: LimitsConfig, hasher: RandomState, now: u64) -> Admission {
        Admission {
            accepts: Bucket::full(cfg.accept_burst, now),
            logins: Bucket::full(cfg.login_burst, now),
            table: IndexMap::new(),
            hand: 0,
            bans: Bans::new(
                cfg.failed_logins,
                cfg.failed_login_window_ms,
                cfg.ban_ms,
                cfg.max_addresses,
            ),
            untracked: 0,
            hasher,
            cfg,
        }
    }

    /// The key of `ip`: its IPv4 address (also when written as IPv4-mapped IPv6) or its
    /// IPv6 /64 prefix, hashed to 32 bits; never [`AddrKey::UNKNOWN`].
    pub fn key(&self, ip: IpAddr) -> AddrKey {
        let h = match ip.to_canonical() {
            IpAddr::V4(v4) => self.hasher.hash_one((4u8, v4.to_bits())),
            IpAddr::V6(v6) => self.hasher.hash_one((6u8, (v6.to_bits() >> 64) as u64)),
        };
        AddrKey((h as u32).max(1))
    }

    /// A refusal for `reason` with the configured back-off window (for refusals decided
    /// elsewhere: a full shard, no descriptors).
    pub fn refusal(&self, reason: Reason) -> Refusal {
        refusal(reason, 0, &self.cfg)
    }

    /// The configured back-off window.
    pub fn backoff_window_ms(&self) -> u32 {
        self.cfg.backoff_window_ms
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.table.len()
    }

    /// A new connection from `addr`: admitted (counted as open until [`Admission::on_close`])
    /// or refused.
    pub fn on_accept(&mut self, addr: AddrKey, now: u64) -> Result<(), Refusal> {
        let cfg = self.cfg.clone();
        if let Some(entry) = self.entry(addr, now) {
            if cfg.per_address_connections > 0 && entry.conns >= cfg.per_address_connections {
                return Err(refusal(Reason::AddressConnections, 0, &cfg));
            }
            if !entry.accepts.take(
                cfg.per_address_accept_rate,
                cfg.per_address_accept_burst,
                now,
            ) {
                let wait = entry.accepts.wait_ms(cfg.per_address_accept_rate);
                return Err(refusal(Reason::AddressAcceptRate, wait, &cfg));
            }
        }
        if !self.accepts.take(cfg.accept_rate, cfg.accept_burst, now) {
            if let Some(entry) = self.table.get_mut(&addr) {
                entry.accepts.refund(cfg.per_address_accept_burst);
            }
            let wait = self.accepts.wait_ms(cfg.accept_rate);
            return Err(refusal(Reason::AcceptRate, wait, &cfg));
        }
        if let Some(entry) = self.table.get_mut(&addr) {
            entry.conns += 1;
        }
        Ok(())
    }

    /// A connection from `addr` admitted on another shard moved here (its user's home): it
    /// counts as open here from now on. Never refused: it is already logged in.
    pub fn on_adopt(&mut self, addr: AddrKey, now: u64) {
        if let Some(entry) = self.entry(addr, now) {
            entry.conns += 1;
        }
    }

    /// A connection from `addr` closed or moved to another shard.
    pub fn on_close(&mut self, addr: AddrKey) {
        if let Some(entry) = self.table.get_mut(&addr) {
            entry.conns = entry.conns.saturating_sub(1);
        }
    }

    /// A `Login` frame arrived from `addr`, before its token is checked.
    pub fn on_login(&mut self, addr: AddrKey, now: u64) -> Result<(), Refusal> {
        let cfg = self.cfg.clone();
        if let Some(entry) = self.table.get_mut(&addr) {
            if !entry
                .logins
                .take(cfg.per_address_login_rate, cfg.per_address_login_burst, now)
            {
                let wait = entry.logins.wait_ms(cfg.per_address_login_rate);
                return Err(refusal(Reason::AddressLoginRate, wait, &cfg));
            }
        }
        if !self.logins.take(cfg.login_rate, cfg.login_burst, now) {
            if let Some(entry) = self.table.get_mut(&addr) {
                entry.logins.refund(cfg.per_address_login_burst);
            }
            let wait = self.logins.wait_ms(cfg.login_rate);
            return Err(refusal(Reason::LoginRate, wait, &cfg));
        }
        Ok(())
    }

    /// The pair of `addr` and the user a `Login` names, for the calls below; `None` for an
    /// unknown address.
    pub fn pair(&self, addr: AddrKey, user: &str) -> Option<PairKey> {
        (addr != AddrKey::UNKNOWN).then(|| PairKey(self.hasher.hash_one((addr.0, user))))
    }

    /// The refusal for a failing login of `pair` while it is banned (the rest of the ban as
    /// the window); `None` when it is not banned. A login of a banned pair whose token is
    /// valid is admitted as any other.
    pub fn ban(&self, pair: PairKey, now: u64) -> Option<Refusal> {
        let left = self.bans.banned_for(pair, now)?;
        Some(refusal(Reason::Banned, left, &self.cfg))
    }

    /// A login of `pair` was refused (bad token, expired token, wrong version). Enough of them
    /// within the window ban the pair for `ban_ms`; returns whether this one did.
    pub fn on_login_failed(&mut self, pair: PairKey, now: u64) -> bool {
        self.bans.on_failed(pair, now)
    }

    /// A login of `pair` succeeded: its failures are forgotten.
    pub fn on_login_ok(&mut self, pair: PairKey) {
        self.bans.on_success(pair);
    }

    /// The entry of `addr`, created (evicting another when the table is full) if needed;
    /// `None` for an unknown or untracked address.
    fn entry(&mut self, addr: AddrKey, now: u64) -> Option<&mut Entry> {
        if addr == AddrKey::UNKNOWN {
            return None;
        }
        if !self.table.contains_key(&addr) {
            if self.table.len() >= self.cfg.max_addresses && !self.evict() {
                self.untracked += 1;
                return None;
            }
            let entry = Entry {
                conns: 0,
                accepts: Bucket::full(self.cfg.per_address_accept_burst, now),
                logins: Bucket::full(self.cfg.per_address_login_burst, now),
            };
            self.table.insert(addr, entry);
        }
        self.table.get_mut(&addr)
    }

    /// Frees one slot: the first entry after the hand, among the next [`SWEEP`], that has no
    /// open connection. False when all of them hold connections.
    fn evict(&mut self) -> bool {
        let len = self.table.len();
        for step in 0..SWEEP.min(len) {
            let i = (self.hand + step) % len;
            let (_, e) = self.table.get_index(i).expect("index below len");
            if e.conns == 0 {
                return self.remove_at(i);
            }
        }
        self.hand = (self.hand + SWEEP) % len.max(1);
        false
    }

    /// Removes entry `i` (the last entry takes its place) and moves the hand past it.
    fn remove_at(&mut self, i: usize) -> bool {
        self.table.swap_remove_index(i);
        self.hand = (i + 1) % self.table.len().max(1);
        true
    }
}

/// A refusal for `reason`, with the configured window or `wait_ms` if longer (a ban or a
/// rate needs at least that long to let the client in).
fn refusal(reason: Reason, wait_ms: u64, cfg: &LimitsConfig) -> Refusal {
    let wait = u32::try_from(wait_ms).unwrap_or(u32::MAX);
    Refusal {
        reason,
        window_ms: cfg.backoff_window_ms.max(wait),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn limits() -> LimitsConfig {
        LimitsConfig {
            per_address_connections: 3,
            accept_rate: 100,
            accept_burst: 100,
            per_address_accept_rate: 10,
            per_address_accept_burst: 5,
            login_rate: 100,
            login_burst: 100,
            per_address_login_rate: 2,
            per_address_login_burst: 2,
            failed_logins: 3,
            failed_login_window_ms: 10_000,
            ban_ms: 60_000,
            max_addresses: 4,
            backoff_window_ms: 1_000,
            accept_pause_ms: 100,
            client_frame_rate: 0,
            backend_max_in_flight: 0,
        }
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(198, 18, 0, n))
    }

    #[test]
    fn bucket_refills_at_its_rate_and_caps_at_its_burst() {
        let mut b = Bucket::full(2, 0);
        assert!(b.take(10, 2, 0));
        assert!(b.take(10, 2, 0));
        assert!(!b.take(10, 2, 0));
        assert_eq!(b.wait_ms(10), 100);
        assert!(!b.take(10, 2, 99));
        assert!(b.take(10, 2, 100));
        // A long pause refills to the burst, not beyond.
        assert!(b.take(10, 2, 1_000_000));
        assert!(b.take(10, 2, 1_000_000));
        assert!(!b.take(10, 2, 1_000_000));
        // Rate 0 is no limit.
        assert!(Bucket::default().take(0, 0, 0));
    }

    #[test]
    fn concurrent_connections_of_one_address_are_capped_and_freed_on_close() {
        let mut a = Admission::new(limits(), RandomState::new(), 0);
        let k = a.key(ip(1));
        for _ in 0..3 {
            a.on_accept(k, 0).unwrap();
        }
        let r = a.on_accept(k, 0).unwrap_err();
        assert_eq!(r.reason, Reason::AddressConnections);
        assert_eq!(r.window_ms, 1_000);
        // Another address is not affected.
        a.on_accept(a.key(ip(2)), 0).unwrap();
        a.on_close(k);
        a.on_accept(k, 0).unwrap();
    }

    #[test]
    fn accept_rate_of_one_address_refuses_then_recovers() {
        let mut cfg = limits();
        cfg.per_address_connections = 0;
        let mut a = Admission::new(cfg, RandomState::new(), 0);
        let k = a.key(ip(1));
        for _ in 0..5 {
            a.on_accept(k, 0).unwrap();
        }
        let r = a.on_accept(k, 0).unwrap_err();
        assert_eq!(r.reason, Reason::AddressAcceptRate);
        assert!(r.window_ms >= 100, "{r:?}");
        a.on_accept(k, 100).unwrap();
    }

    #[test]
    fn shard_wide_accept_rate_applies_to_unknown_addresses_too() {
        let mut cfg = limits();
        cfg.accept_rate = 1;
        cfg.accept_burst = 2;
        let mut a = Admission::new(cfg, RandomState::new(), 0);
        a.on_accept(AddrKey::UNKNOWN, 0).unwrap();
        a.on_accept(a.key(ip(1)), 0).unwrap();
        let r = a.on_accept(a.key(ip(2)), 0).unwrap_err();
        assert_eq!(r.reason, Reason::AcceptRate);
        // The refused address's own token was given back.
        a.on_accept(a.key(ip(2)), 1_000).unwrap();
    }

    #[test]
    fn login_rate_per_address_refuses_then_recovers() {
        let mut a = Admission::new(limits(), RandomState::new(), 0);
        let k = a.key(ip(1));
        a.on_accept(k, 0).unwrap();
        a.on_login(k, 0).unwrap();
        a.on_login(k, 0).unwrap();
        let r = a.on_login(k, 0).unwrap_err();
        assert_eq!(r.reason, Reason::AddressLoginRate);
        a.on_login(k, 500).unwrap();
    }

    #[test]
    fn failed_logins_ban_the_address_and_user_not_the_address() {
        let mut a = Admission::new(limits(), RandomState::new(), 0);
        let k = a.key(ip(1));
        a.on_accept(k, 0).unwrap();
        let mallory = a.pair(k, "mallory").unwrap();
        let alice = a.pair(k, "alice").unwrap();
        assert_ne!(mallory, alice);
        assert_eq!(a.pair(AddrKey::UNKNOWN, "mallory"), None);
        assert!(!a.on_login_failed(mallory, 0));
        assert!(!a.on_login_failed(mallory, 1));
        assert!(a.on_login_failed(mallory, 2), "third failure bans");
        let r = a.ban(mallory, 10).unwrap();
        assert_eq!(r.reason, Reason::Banned);
        assert_eq!(r.window_ms, 60_000 + 2 - 10);
        // The address is not banned: its accepts, its logins and its other users go on.
        a.on_accept(k, 10).unwrap();
        a.on_login(k, 10).unwrap();
        assert_eq!(a.ban(alice, 10), None);
        // The same user from another address is not banned either.
        assert_eq!(a.ban(a.pair(a.key(ip(2)), "mallory").unwrap(), 10), None);
        // A valid login of the pair ends its ban; so does time.
        a.on_login_ok(mallory);
        assert_eq!(a.ban(mallory, 11), None);
        for now in 20..23 {
            a.on_login_failed(mallory, now);
        }
        assert!(a.ban(mallory, 60_021).is_some());
        assert_eq!(a.ban(mallory, 60_022), None);
    }

    #[test]
    fn full_table_evicts_an_address_without_connections_or_stops_tracking() {
        let mut a = Admission::new(limits(), RandomState::new(), 0);
        // Four addresses with a connection each fill the table.
        for n in 1..=4 {
            a.on_accept(a.key(ip(n)), 0).unwrap();
        }
        assert_eq!(a.tracked(), 4);
        // A fifth is admitted untracked: no slot can be freed.
        let k5 = a.key(ip(5));
        for _ in 0..10 {
            a.on_accept(k5, 0).unwrap();
        }
        assert_eq!(a.untracked, 10);
        assert_eq!(a.tracked(), 4);
        // Once one address has no connection, its slot goes to the new address.
        a.on_close(a.key(ip(2)));
        a.on_accept(k5, 0).unwrap();
        assert_eq!(a.tracked(), 4);
        assert_eq!(a.untracked, 10);
        for _ in 0..2 {
            a.on_accept(k5, 0).unwrap();
        }
        assert_eq!(
            a.on_accept(k5, 0).unwrap_err().reason,
            Reason::AddressConnections
        );
    }

    #[test]
    fn adopted_connections_count_and_close_frees_them() {
        let mut a = Admission::new(limits(), RandomState::new(), 0);
        let k = a.key(ip(1));
        for _ in 0..3 {
            a.on_adopt(k, 0);
        }
        assert_eq!(
            a.on_accept(k, 0).unwrap_err().reason,
            Reason::AddressConnections
        );
        a.on_close(k);
        a.on_accept(k, 0).unwrap();
    }

    #[test]
    fn keys_group_ipv6_by_slash_64_and_mapped_ipv4_with_ipv4() {
        let a = Admission::default();
        let v6 = |s: &str| IpAddr::V6(s.parse::<Ipv6Addr>().unwrap());
        assert_eq!(
            a.key(v6("2001:db8:1:2::1")),
            a.key(v6("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(a.key(v6("2001:db8:1:2::1")), a.key(v6("2001:db8:1:3::1")));
        assert_eq!(a.key(v6("::ffff:198.18.0.1")), a.key(ip(1)));
        assert_ne!(a.key(ip(1)), AddrKey::UNKNOWN);
        // The same seed gives the same keys on every shard.
        let seed = RandomState::new();
        let (x, y) = (
            Admission::new(limits(), seed.clone(), 0),
            Admission::new(limits(), seed, 0),
        );
        assert_eq!(x.key(ip(7)), y.key(ip(7)));
    }

    #[test]
    fn shares_round_up_and_keep_zero_as_off() {
        let mut cfg = limits();
        cfg.accept_rate = 0;
        let s = cfg.per_shard(2);
        assert_eq!(s.per_address_connections, 2);
        assert_eq!(s.accept_rate, 0);
        assert_eq!(s.per_address_login_rate, 1);
        assert_eq!(s.max_addresses, 4);
        assert_eq!(s.ban_ms, 60_000);
    }

    #[test]
    fn unlimited_admits_everything() {
        let mut a = Admission::default();
        for n in 0..1000u32 {
            let k = AddrKey(n % 7);
            a.on_accept(k, 0).unwrap();
            a.on_login(k, 0).unwrap();
            assert!(!a.on_login_failed(a.pair(AddrKey(n % 7 + 1), "u").unwrap(), 0));
        }
    }
}
