//! Failed-login bans: per source address *and* the user a login names, and only ever applied
//! to logins that fail. Pure: no clock (every call takes `now` in monotonic milliseconds).
//!
//! **Why not per address.** A mobile carrier puts hundreds to thousands of subscribers behind
//! one public IPv4 address. A ban per address lets any one of them (or a broken app build on
//! one phone) lock out everyone behind it by sending bad tokens. Tokens are HMAC-SHA256 with a
//! secret of 16 bytes or more: guessing one is hopeless, so the ban is not what stops a guesser
//! (the login rates in `admission.rs` bound what trying costs). What a ban is for is a client
//! stuck in a loop of failing logins: it should be told to stay away for a while.
//!
//! **What was chosen.** Failures are counted per (address, user named in the `Login`); after
//! `failed_logins` of them within `failed_login_window_ms` that pair is banned for `ban_ms`.
//! During a ban a login of the pair is still verified, and:
//!
//! - with a valid token it is admitted as usual (and the pair's record is forgotten): a ban
//!   can never keep out someone who holds a valid token, so nobody can ban anyone else out;
//! - with a failing token it is refused with the back-off window of the rest of the ban
//!   (`GoAway{Overloaded}`) instead of its reason, so the looping client stays away.
//!
//! Someone behind the same address who names another user's id can therefore only make *that
//! user's* failing logins (an expired token, say) back off for `ban_ms` instead of hearing
//! `TokenExpired`: the cost falls on one user, at one address, and only while that user's own
//! token fails. Accepts are never refused for a ban. A flooder rotating user ids is never
//! banned; the per-address and shard-wide login rates bound it.
//!
//! The table is bounded (`max_addresses` records per shard). When it is full, a record whose
//! window and ban are over goes first, then one that is not banned, then the oldest under the
//! hand: a ban may end early under a flood of distinct pairs, it never starts by mistake.

use indexmap::IndexMap;

/// An (address, user) pair, hashed with the shard's seed (see `Admission::pair`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PairKey(pub u64);

/// The failures of one pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Record {
    /// Failed logins in the current window.
    failures: u32,
    /// Start of the current window.
    since: u64,
    /// Banned until then (0 = not banned).
    banned_until: u64,
}

/// Records looked at by one eviction sweep.
const SWEEP: usize = 32;

/// The failed-login records of one shard. See the [module documentation](self).
#[derive(Debug)]
pub struct Bans {
    /// Failures within the window that start a ban; 0 = never ban.
    limit: u32,
    /// The window failures are counted in.
    window_ms: u64,
    /// How long a ban lasts.
    ban_ms: u64,
    /// Most records kept.
    capacity: usize,
    /// Records by pair.
    table: IndexMap<PairKey, Record>,
    /// Where the eviction sweep looks next.
    hand: usize,
}

impl Bans {
    /// Bans after `limit` failures within `window_ms`, for `ban_ms`, keeping at most
    /// `capacity` records.
    pub fn new(limit: u32, window_ms: u64, ban_ms: u64, capacity: usize) -> Bans {
        Bans {
            limit,
            window_ms,
            ban_ms,
            capacity: capacity.max(1),
            table: IndexMap::new(),
            hand: 0,
        }
    }

    /// Records kept now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no record is kept.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Milliseconds left of `pair`'s ban, if it is banned now.
    pub fn banned_for(&self, pair: PairKey, now: u64) -> Option<u64> {
        let r = self.table.get(&pair)?;
        (r.banned_until > now).then(|| r.banned_until - now)
    }

    /// A login of `pair` failed. Returns whether this failure started a ban.
    pub fn on_failed(&mut self, pair: PairKey, now: u64) -> bool {
        if self.limit == 0 {
            return false;
        }
        if !self.table.contains_key(&pair) {
            if self.table.len() >= self.capacity {
                self.evict(now);
            }
            self.table.insert(
                pair,
                Record {
                    failures: 0,
                    since: now,
                    banned_until: 0,
                },
            );
        }
        let (limit, window, ban) = (self.limit, self.window_ms, self.ban_ms);
        let r = self.table.get_mut(&pair).expect("inserted above");
        if r.banned_until > now {
            return false;
        }
        if now.saturating_sub(r.since) >= window {
            r.failures = 0;
            r.since = now;
        }
        r.failures += 1;
        if r.failures >= limit {
            r.banned_until = now.saturating_add(ban);
            r.failures = 0;
            r.since = now;
            return true;
        }
        false
    }

    /// A login of `pair` succeeded: its failures and ban are forgotten.
    pub fn on_success(&mut self, pair: PairKey) {
        if !self.table.is_empty() {
            self.table.swap_remove(&pair);
        }
    }

    /// Frees one record (see the module documentation for the order).
    fn evict(&mut self, now: u64) {
        let len = self.table.len();
        let window = self.window_ms;
        let mut unbanned = None;
        for step in 0..SWEEP.min(len) {
            let i = (self.hand + step) % len;
            let (_, r) = self.table.get_index(i).expect("index below len");
            if r.banned_until <= now {
                if now.saturating_sub(r.since) >= window {
                    return self.remove_at(i);
                }
                unbanned.get_or_insert(i);
            }
        }
        self.remove_at(unbanned.unwrap_or(self.hand % len));
    }

    /// Removes record `i` (the last takes its place) and moves the hand past it.
    fn remove_at(&mut self, i: usize) {
        self.table.swap_remove_index(i);
        self.hand = (i + 1) % self.table.len().max(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_of_one_pair_ban_that_pair_only() {
        let mut b = Bans::new(3, 10_000, 60_000, 16);
        let (mallory, alice) = (PairKey(1), PairKey(2));
        assert!(!b.on_failed(mallory, 0));
        assert!(!b.on_failed(mallory, 1));
        assert!(b.on_failed(mallory, 2), "the third failure bans");
        assert_eq!(b.banned_for(mallory, 10), Some(60_000 + 2 - 10));
        assert_eq!(b.banned_for(alice, 10), None);
        // Failures during the ban do not extend it; it ends.
        assert!(!b.on_failed(mallory, 20));
        assert_eq!(b.banned_for(mallory, 60_002), None);
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up_and_a_success_forgets() {
        let mut b = Bans::new(3, 10_000, 60_000, 16);
        let p = PairKey(7);
        assert!(!b.on_failed(p, 0));
        assert!(!b.on_failed(p, 1));
        assert!(!b.on_failed(p, 20_000));
        assert!(!b.on_failed(p, 20_001));
        b.on_success(p);
        assert!(b.is_empty());
        assert!(!b.on_failed(p, 20_002), "the count started over");
        assert!(!b.on_failed(p, 20_003));
        assert!(b.on_failed(p, 20_004));
        b.on_success(p);
        assert_eq!(b.banned_for(p, 20_005), None, "a valid login ends the ban");
    }

    #[test]
    fn a_full_table_forgets_stale_records_first_and_never_bans_by_mistake() {
        let mut b = Bans::new(2, 1_000, 60_000, 4);
        // Two banned pairs, two with a failure in the window.
        for p in 0..2 {
            b.on_failed(PairKey(p), 0);
            assert!(b.on_failed(PairKey(p), 0));
        }
        b.on_failed(PairKey(2), 0);
        b.on_failed(PairKey(3), 5_000);
        assert_eq!(b.len(), 4);
        // At 5 s pair 2's window is over: it goes first; the bans stay.
        b.on_failed(PairKey(4), 5_000);
        assert_eq!(b.len(), 4);
        assert!(b.banned_for(PairKey(0), 5_000).is_some());
        assert!(b.banned_for(PairKey(1), 5_000).is_some());
        // A flood of new pairs evicts what it must, and bans none of them.
        for p in 100..200 {
            assert!(!b.on_failed(PairKey(p), 5_001));
        }
        assert_eq!(b.len(), 4);
        assert!((100..200).all(|p| b.banned_for(PairKey(p), 5_001).is_none()));
    }

    #[test]
    fn a_limit_of_zero_never_bans() {
        let mut b = Bans::new(0, 1_000, 60_000, 4);
        for now in 0..100 {
            assert!(!b.on_failed(PairKey(1), now));
        }
        assert!(b.is_empty());
    }
}
