//! A hierarchical timing wheel holding millions of connection deadlines.
//!
//! Entries are `u32` slab keys with a deadline in [`Millis`]. Insert and cancel are O(1) and do
//! not allocate once the arena has grown to the working set; [`Wheel::advance`] costs amortised
//! O(1) per fired entry plus O(1) per occupied slot it passes (empty ticks are skipped through
//! per-level occupancy bitmaps, so a fine tick costs nothing while nothing is due).
//!
//! # How the server uses it
//!
//! A connection stores its own deadline (an integer) and the [`TimerId`] of its one wheel entry.
//! A heartbeat only moves the stored deadline later; it does **not** touch the wheel. When the
//! wheel fires a key, the shard compares the connection's stored deadline with the clock: if the
//! deadline has moved later the shard re-inserts the key at the stored deadline, otherwise the
//! lease really ran out and the connection is closed. So a connection that heartbeats every
//! interval costs one wheel operation per lease, not one per heartbeat. Closing a connection
//! cancels its entry (a stale id, one that already fired, is ignored).
//!
//! # Semantics
//!
//! Time is cut into ticks of `tick_ms`. An entry fires at the first [`Wheel::advance`] whose
//! `now` reaches its deadline rounded **up** to a tick boundary: never early, at most
//! `tick_ms - 1` late (exact with `tick_ms = 1`). An entry whose deadline is not after the `now`
//! of the latest advance (or of [`Wheel::new`]) fires on the next advance, whatever its `now`.
//! Entries due in the same tick fire in no particular order.
//!
//! # Layout
//!
//! Six levels of 64 slots; level `k` slot `s` holds the entries whose tick agrees with the
//! current tick above bit `6(k+1)` and has `s` in bits `6k..6k+6`, so level 0 spans 64 ticks and
//! the whole wheel 2^36 ticks (795 days at 1 ms). Later deadlines wait in an overflow list that
//! is re-bucketed only when the clock enters the 2^36-tick block of its earliest entry. When the
//! clock reaches the start of an occupied slot above level 0, its entries move down to finer
//! levels (each entry moves at most once per level).
//!
//! Every list is an intrusive circular doubly-linked list through one arena (`Vec<Node>`) of
//! 24-byte nodes linked by `u32` indices; the first nodes of the arena are the lists' sentinels,
//! so unlinking needs no knowledge of which list a node is in. Free nodes form a stack, so the
//! arena stops growing at the peak number of live entries. Each node carries a generation that
//! is bumped whenever the node is freed; a [`TimerId`] names a node and its generation, so
//! cancelling an id whose entry already fired or was cancelled does nothing.

use std::fmt;
use std::mem::size_of;
use std::num::NonZeroU32;

use tether_proto::Millis;

/// Bits of the tick consumed by one level: 64 slots per level, one `u64` occupancy bitmap.
const SLOT_BITS: u32 = 6;
/// Slots per level.
const SLOTS: usize = 1 << SLOT_BITS;
/// Levels of the wheel; together they span `2^(6 * LEVELS)` ticks.
const LEVELS: usize = 6;
/// log2 of the ticks spanned by the whole wheel.
const SPAN_BITS: u32 = SLOT_BITS * LEVELS as u32;
/// Sentinel index of the overflow list (deadlines beyond the wheel's span).
const OVERFLOW: u32 = (LEVELS * SLOTS) as u32;
/// Sentinel index of the list of entries already due when inserted.
const DUE: u32 = OVERFLOW + 1;
/// Number of sentinel nodes at the start of the arena.
const LISTS: u32 = DUE + 1;
/// "No node": ends the free stack and marks a free node's `prev`.
const NIL: u32 = u32::MAX;
/// Ticks are clamped here so block arithmetic cannot overflow; an entry beyond it never fires
/// (2^62 ticks is more than 10^8 years even at 1 ms).
const MAX_TICK: u64 = u64::MAX >> 2;

/// Names one entry of a [`Wheel`], returned by [`Wheel::insert`] and taken by
/// [`Wheel::cancel`]. Once the entry has fired or been cancelled the id is stale and
/// cancelling it again does nothing. 8 bytes, and `Option<TimerId>` too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimerId {
    /// Arena index of the entry's node; never 0 (index 0 is a sentinel), which gives
    /// `Option<TimerId>` a niche so a connection without a timer costs nothing extra.
    index: NonZeroU32,
    /// Generation of the node when the entry was inserted; a mismatch means the id is stale.
    gen: u32,
}

/// One arena node: a sentinel (list head) or an entry.
#[derive(Clone, Copy)]
struct Node {
    /// Next node in the circular list (or in the free stack when the node is free).
    next: u32,
    /// Previous node in the circular list, so unlinking is O(1); [`NIL`] when free.
    prev: u32,
    /// The slab key handed back when the entry fires.
    key: u32,
    /// Bumped each time the node is freed, so stale [`TimerId`]s are recognised.
    gen: u32,
    /// The tick at which the entry fires; needed to move it down a level.
    tick: u64,
}

/// A hierarchical timing wheel of `u32` keys. See the [module documentation](self).
pub struct Wheel {
    /// Sentinels (the first [`LISTS`] nodes) followed by entry nodes, live or free.
    nodes: Vec<Node>,
    /// Top of the stack of free entry nodes, [`NIL`] when empty.
    free: u32,
    /// Bit `s` of `occupied[k]` is set when level `k` slot `s` is non-empty: finds the next
    /// occupied slot in O(1) and lets advance skip empty ticks.
    occupied: [u64; LEVELS],
    /// Length of a tick in milliseconds.
    tick_ms: u64,
    /// Every tick up to and including this one has been processed.
    now_tick: u64,
    /// The `now` of the latest advance (or of construction); deadlines at or before it are due.
    now_ms: Millis,
    /// A lower bound of the ticks in the overflow list (`u64::MAX` when it is empty), so the
    /// overflow is re-bucketed only when the clock gets near its earliest entry.
    overflow_min: u64,
    /// Live entries.
    len: usize,
}

impl Wheel {
    /// Creates an empty wheel with ticks of `tick_ms` milliseconds whose clock reads `now`.
    ///
    /// # Panics
    ///
    /// If `tick_ms` is zero (the configuration is validated before a wheel is built).
    pub fn new(tick_ms: u64, now: Millis) -> Wheel {
        assert!(tick_ms > 0, "timing wheel tick must be at least 1 ms");
        let nodes = (0..LISTS)
            .map(|i| Node {
                next: i,
                prev: i,
                key: 0,
                gen: 0,
                tick: 0,
            })
            .collect();
        Wheel {
            nodes,
            free: NIL,
            occupied: [0; LEVELS],
            tick_ms,
            now_tick: (now / tick_ms).min(MAX_TICK),
            now_ms: now,
            overflow_min: u64::MAX,
            len: 0,
        }
    }

    /// Makes room for `additional` more live entries without growing the arena later (a shard
    /// reserves its maximum connections up front so the arena is one allocation).
    pub fn reserve(&mut self, additional: usize) {
        self.nodes.reserve(additional);
    }

    /// Schedules `key` to fire at `at`. O(1); allocates only when the arena grows past its
    /// largest size so far.
    ///
    /// # Panics
    ///
    /// If more than `u32::MAX - 388` entries would be live at once.
    pub fn insert(&mut self, key: u32, at: Millis) -> TimerId {
        let index = self.alloc(key);
        if at <= self.now_ms {
            self.nodes[index as usize].tick = self.now_tick;
            self.link(DUE, index);
        } else {
            // `at > now_ms >= now_tick * tick_ms`, so the rounded-up tick is after `now_tick`.
            let tick = at / self.tick_ms + u64::from(at % self.tick_ms != 0);
            self.nodes[index as usize].tick = tick.min(MAX_TICK + 1);
            self.place(index);
        }
        self.len += 1;
        TimerId {
            index: NonZeroU32::new(index).expect("entry nodes follow the sentinels"),
            gen: self.nodes[index as usize].gen,
        }
    }

    /// Removes the entry named by `id`. O(1). Does nothing if the entry already fired or was
    /// cancelled.
    pub fn cancel(&mut self, id: TimerId) {
        let index = id.index.get();
        let live = index >= LISTS
            && self
                .nodes
                .get(index as usize)
                .is_some_and(|n| n.gen == id.gen && n.prev != NIL);
        if !live {
            return;
        }
        self.unlink(index);
        self.release(index);
        self.len -= 1;
    }

    /// Moves the clock to `now` and appends to `fired` the key of every entry that is now due
    /// (see the module documentation for the rounding). A `now` earlier than the previous one
    /// is treated as the previous one.
    pub fn advance(&mut self, now: Millis, fired: &mut Vec<u32>) {
        let now = now.max(self.now_ms);
        self.now_ms = now;
        self.expire(DUE, fired);
        let target = (now / self.tick_ms).min(MAX_TICK);
        while let Some((list, tick)) = self.next_event() {
            if tick > target {
                break;
            }
            // Every list below `list` is empty and `tick` lies inside the blocks of all
            // higher levels, so moving the clock here keeps every other entry where it is.
            self.now_tick = tick;
            self.expire(list, fired);
        }
        // The next event is after `target`, so no entry changes level or slot.
        self.now_tick = self.now_tick.max(target);
    }

    /// When the next [`Wheel::advance`] may fire something: never later than the earliest
    /// deadline rounded up to its tick (exact when that entry is in the finest level), and
    /// always after the latest advance's `now` unless an entry is already due. `None` when the
    /// wheel is empty.
    pub fn next_expiry(&self) -> Option<Millis> {
        if self.nodes[DUE as usize].next != DUE {
            return Some(self.now_ms);
        }
        self.next_event()
            .map(|(_, tick)| tick.saturating_mul(self.tick_ms))
    }

    /// Number of live entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no entry is live.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of one arena node, the per-entry cost once the arena is sized.
    pub const fn entry_bytes() -> usize {
        size_of::<Node>()
    }

    /// Heap bytes held by the wheel (the arena's capacity, live and free nodes alike).
    pub fn heap_bytes(&self) -> usize {
        self.nodes.capacity() * size_of::<Node>()
    }

    /// Takes a node off the free stack, or grows the arena.
    fn alloc(&mut self, key: u32) -> u32 {
        let index = if self.free != NIL {
            let index = self.free;
            self.free = self.nodes[index as usize].next;
            index
        } else {
            let index = u32::try_from(self.nodes.len())
                .ok()
                .filter(|&i| i != NIL)
                .expect("timing wheel holds at most u32::MAX - 1 nodes");
            self.nodes.push(Node {
                next: NIL,
                prev: NIL,
                key: 0,
                gen: 0,
                tick: 0,
            });
            index
        };
        self.nodes[index as usize].key = key;
        index
    }

    /// Returns an unlinked node to the free stack and makes its ids stale.
    fn release(&mut self, index: u32) {
        let free = self.free;
        let node = &mut self.nodes[index as usize];
        node.gen = node.gen.wrapping_add(1);
        node.prev = NIL;
        node.next = free;
        self.free = index;
    }

    /// Puts a node whose tick is after `now_tick` into its level and slot, or the overflow.
    fn place(&mut self, index: u32) {
        let tick = self.nodes[index as usize].tick;
        debug_assert!(tick > self.now_tick);
        // The highest bit where the deadline differs from the clock picks the level; the
        // deadline is later, so its slot at that level is after the clock's.
        let top_bit = 63 - (tick ^ self.now_tick).leading_zeros();
        let level = (top_bit / SLOT_BITS) as usize;
        if level >= LEVELS {
            self.overflow_min = self.overflow_min.min(tick);
            self.link(OVERFLOW, index);
        } else {
            let slot = (tick >> (level as u32 * SLOT_BITS)) as usize & (SLOTS - 1);
            self.occupied[level] |= 1 << slot;
            self.link((level * SLOTS + slot) as u32, index);
        }
    }

    /// Pushes `index` at the front of the list whose sentinel is `list`.
    fn link(&mut self, list: u32, index: u32) {
        let first = self.nodes[list as usize].next;
        {
            let node = &mut self.nodes[index as usize];
            node.prev = list;
            node.next = first;
        }
        self.nodes[first as usize].prev = index;
        self.nodes[list as usize].next = index;
    }

    /// Takes `index` out of its list, clearing the slot's occupancy bit if it empties.
    fn unlink(&mut self, index: u32) {
        let Node { prev, next, .. } = self.nodes[index as usize];
        self.nodes[prev as usize].next = next;
        self.nodes[next as usize].prev = prev;
        // Only a sentinel can be its own neighbour on both sides: its list is now empty.
        if prev == next && prev < OVERFLOW {
            let level = prev as usize / SLOTS;
            self.occupied[level] &= !(1 << (prev as usize % SLOTS));
        }
    }

    /// The earliest list the clock must process and the tick at which it starts.
    fn next_event(&self) -> Option<(u32, u64)> {
        // Entries of level k are after every entry of the levels below it, so the lowest
        // occupied slot of the lowest occupied level comes first.
        for (level, &bits) in self.occupied.iter().enumerate() {
            if bits != 0 {
                let slot = u64::from(bits.trailing_zeros());
                let shift = level as u32 * SLOT_BITS;
                let block = self.now_tick >> (shift + SLOT_BITS) << (shift + SLOT_BITS);
                return Some((
                    (level * SLOTS) as u32 + slot as u32,
                    block + (slot << shift),
                ));
            }
        }
        if self.nodes[OVERFLOW as usize].next != OVERFLOW {
            let span_mask = (1u64 << SPAN_BITS) - 1;
            let next_block = (self.now_tick | span_mask) + 1;
            let min_block = self.overflow_min & !span_mask;
            return Some((OVERFLOW, next_block.max(min_block)));
        }
        None
    }

    /// Empties the list `list` at the current tick: due entries fire, later ones are placed
    /// again relative to the new clock (always at a lower level or back in the overflow).
    fn expire(&mut self, list: u32, fired: &mut Vec<u32>) {
        let mut cur = self.nodes[list as usize].next;
        if cur == list {
            return;
        }
        self.nodes[list as usize].next = list;
        self.nodes[list as usize].prev = list;
        if list < OVERFLOW {
            let level = list as usize / SLOTS;
            self.occupied[level] &= !(1 << (list as usize % SLOTS));
        } else if list == OVERFLOW {
            self.overflow_min = u64::MAX;
        }
        while cur != list {
            let Node {
                next, key, tick, ..
            } = self.nodes[cur as usize];
            if tick <= self.now_tick {
                fired.push(key);
                self.release(cur);
                self.len -= 1;
            } else {
                self.place(cur);
            }
            cur = next;
        }
    }
}

impl fmt::Debug for Wheel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wheel")
            .field("len", &self.len)
            .field("tick_ms", &self.tick_ms)
            .field("now_ms", &self.now_ms)
            .field("next_expiry", &self.next_expiry())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn fire(wheel: &mut Wheel, now: Millis) -> Vec<u32> {
        let mut fired = Vec::new();
        wheel.advance(now, &mut fired);
        fired.sort_unstable();
        fired
    }

    #[test]
    fn fires_at_its_deadline_and_not_before() {
        let mut wheel = Wheel::new(1, 0);
        wheel.insert(7, 100);
        // 100 ms is beyond the finest level (64 ticks): the hint is the start of its slot.
        assert_eq!(wheel.next_expiry(), Some(64));
        assert!(fire(&mut wheel, 64).is_empty());
        // Now it sits in the finest level and the hint is exact.
        assert_eq!(wheel.next_expiry(), Some(100));
        assert!(fire(&mut wheel, 99).is_empty());
        assert_eq!(fire(&mut wheel, 100), vec![7]);
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_expiry(), None);
    }

    #[test]
    fn deadlines_round_up_to_the_tick() {
        let mut wheel = Wheel::new(10, 0);
        wheel.insert(1, 105);
        wheel.insert(2, 110);
        assert_eq!(wheel.next_expiry(), Some(110));
        assert!(fire(&mut wheel, 109).is_empty());
        assert_eq!(fire(&mut wheel, 110), vec![1, 2]);
    }

    #[test]
    fn a_past_deadline_fires_on_the_next_advance() {
        let mut wheel = Wheel::new(10, 1_000);
        wheel.insert(3, 500);
        wheel.insert(4, 1_000);
        wheel.insert(5, 1_001);
        assert_eq!(wheel.next_expiry(), Some(1_000));
        assert_eq!(fire(&mut wheel, 1_000), vec![3, 4]);
        assert_eq!(wheel.next_expiry(), Some(1_010));
        assert_eq!(fire(&mut wheel, 1_010), vec![5]);
    }

    #[test]
    fn each_level_boundary_fires_exactly_on_time() {
        let deadlines = [
            1u64,
            63,
            64,
            65,
            4_095,
            4_096,
            4_097,
            262_143,
            262_144,
            (1 << 24) - 1,
            1 << 24,
            (1 << 30) + 17,
            (1 << 36) - 1,
            1 << 36,
            (1 << 36) + 1,
            (1 << 40) + 5,
            (1 << 45) + 3,
        ];
        let mut wheel = Wheel::new(1, 0);
        for (key, &at) in deadlines.iter().enumerate() {
            wheel.insert(key as u32, at);
        }
        for (key, &at) in deadlines.iter().enumerate() {
            assert!(fire(&mut wheel, at - 1).is_empty(), "early before {at}");
            assert_eq!(fire(&mut wheel, at), vec![key as u32], "at {at}");
        }
        assert!(wheel.is_empty());
    }

    #[test]
    fn following_next_expiry_reaches_a_far_deadline_in_few_steps() {
        let mut wheel = Wheel::new(1, 0);
        let at = (1 << 44) + 12_345;
        wheel.insert(9, at);
        let mut steps = 0;
        loop {
            let next = wheel.next_expiry().expect("entry is still pending");
            assert!(next <= at, "next expiry {next} is after the deadline {at}");
            steps += 1;
            if fire(&mut wheel, next) == vec![9] {
                break;
            }
            assert!(steps < 20, "too many wake-ups");
        }
        assert!(wheel.is_empty());
    }

    #[test]
    fn cancel_removes_and_a_stale_id_is_ignored() {
        let mut wheel = Wheel::new(1, 0);
        let first = wheel.insert(1, 50);
        wheel.cancel(first);
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_expiry(), None);
        // The node is reused for the same key; the old id must not touch the new entry.
        let second = wheel.insert(1, 60);
        assert_ne!(first, second);
        wheel.cancel(first);
        assert_eq!(wheel.len(), 1);
        assert_eq!(fire(&mut wheel, 60), vec![1]);
        // An id whose entry fired is stale too.
        wheel.cancel(second);
        let third = wheel.insert(2, 70);
        wheel.cancel(second);
        assert_eq!(fire(&mut wheel, 70), vec![2]);
        wheel.cancel(third);
        assert!(wheel.is_empty());
    }

    #[test]
    fn cancelling_one_of_several_keeps_the_slot_occupied() {
        let mut wheel = Wheel::new(1, 0);
        let a = wheel.insert(1, 5_000);
        wheel.insert(2, 5_000);
        wheel.cancel(a);
        assert_eq!(wheel.next_expiry().map(|t| t <= 5_000), Some(true));
        assert_eq!(fire(&mut wheel, 5_000), vec![2]);
    }

    #[test]
    fn a_clock_going_back_is_ignored() {
        let mut wheel = Wheel::new(1, 100);
        wheel.insert(1, 150);
        assert!(fire(&mut wheel, 140).is_empty());
        assert!(fire(&mut wheel, 20).is_empty());
        assert_eq!(fire(&mut wheel, 150), vec![1]);
    }

    #[test]
    fn heartbeats_rearm_only_when_an_entry_fires_early() {
        // One connection with a 30 s lease heartbeating every 10 s for 5 minutes, then silent.
        let lease = 30_000;
        let mut wheel = Wheel::new(10, 0);
        let mut deadline = lease;
        wheel.insert(42, deadline);
        let mut inserts = 1;
        let mut closed_at = None;
        let mut now = 0;
        while now < 600_000 && closed_at.is_none() {
            now += 1_000;
            if now <= 300_000 && now % 10_000 == 0 {
                deadline = now + lease;
            }
            for key in fire(&mut wheel, now) {
                assert_eq!(key, 42);
                if deadline > now {
                    wheel.insert(key, deadline);
                    inserts += 1;
                } else {
                    closed_at = Some(now);
                }
            }
        }
        assert_eq!(closed_at, Some(300_000 + lease));
        // 31 heartbeats, but only one wheel insert per lease period.
        assert!(inserts <= 12, "{inserts} inserts");
    }

    #[test]
    fn ids_are_small() {
        assert_eq!(size_of::<TimerId>(), 8);
        assert_eq!(size_of::<Option<TimerId>>(), 8);
        assert_eq!(Wheel::entry_bytes(), 24);
    }

    #[test]
    fn freed_nodes_are_reused() {
        let mut wheel = Wheel::new(1, 0);
        for round in 0..10u64 {
            for key in 0..1_000 {
                wheel.insert(key, round * 100 + 50);
            }
            assert_eq!(fire(&mut wheel, round * 100 + 50).len(), 1_000);
        }
        assert!(wheel.nodes.len() <= LISTS as usize + 1_000);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(i64),
        Cancel(usize),
        Advance(u64),
        /// Advance to what `next_expiry` says, as the server's tick does.
        ToNext,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (-300i64..300).prop_map(Op::Insert),
            3 => (0i64..200_000).prop_map(Op::Insert),
            1 => (0i64..(1 << 40)).prop_map(Op::Insert),
            2 => any::<usize>().prop_map(Op::Cancel),
            3 => (0u64..100).prop_map(Op::Advance),
            2 => (0u64..50_000).prop_map(Op::Advance),
            1 => (0u64..(1 << 39)).prop_map(Op::Advance),
            3 => Just(Op::ToNext),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn matches_a_sorted_model(
            tick in prop_oneof![Just(1u64), Just(3), Just(10), Just(1_000)],
            start in 0u64..1_000_000,
            ops in proptest::collection::vec(op(), 1..300),
        ) {
            let mut wheel = Wheel::new(tick, start);
            // The model: (time it fires, key) -> id, in firing order. Time 0 means "on the
            // next advance" (an entry inserted at or before the clock).
            let mut model: BTreeMap<(u64, u32), TimerId> = BTreeMap::new();
            // Ids that were cancelled or fired, cancelled again to check they are ignored.
            let mut stale: Vec<TimerId> = Vec::new();
            let mut now = start;
            let mut next_key = 0u32;
            for op in ops {
                match op {
                    Op::Insert(delta) => {
                        let at = now.saturating_add_signed(delta);
                        let id = wheel.insert(next_key, at);
                        let fire_at = if at > now { at.div_ceil(tick) * tick } else { 0 };
                        model.insert((fire_at, next_key), id);
                        next_key += 1;
                    }
                    Op::Cancel(pick) => {
                        if !stale.is_empty() && pick % 3 == 0 {
                            wheel.cancel(stale[pick % stale.len()]);
                        } else if !model.is_empty() {
                            let key = *model.keys().nth(pick % model.len()).expect("in range");
                            let id = model.remove(&key).expect("present");
                            wheel.cancel(id);
                            stale.push(id);
                        }
                    }
                    Op::Advance(_) | Op::ToNext => {
                        now = match op {
                            Op::Advance(delta) => now + delta,
                            _ => wheel.next_expiry().unwrap_or(now).max(now),
                        };
                        let mut fired = Vec::new();
                        wheel.advance(now, &mut fired);
                        fired.sort_unstable();
                        let later = model.split_off(&(now + 1, 0));
                        let mut expected: Vec<u32> = model.keys().map(|&(_, key)| key).collect();
                        expected.sort_unstable();
                        stale.extend(model.values().copied());
                        model = later;
                        prop_assert_eq!(fired, expected, "advance to {}", now);
                    }
                }
                prop_assert_eq!(wheel.len(), model.len());
                let earliest = model.keys().next().map(|&(t, _)| t.max(now));
                match (wheel.next_expiry(), earliest) {
                    (None, None) => {}
                    (Some(next), Some(earliest)) => {
                        prop_assert!(next <= earliest, "next {} after earliest {}", next, earliest);
                        if earliest > now {
                            prop_assert!(next > now, "next {} not after now {}", next, now);
                        }
                    }
                    (next, earliest) => prop_assert!(false, "next {:?} vs model {:?}", next, earliest),
                }
            }
            // Nothing is lost: far enough ahead, everything left fires.
            let end = model.keys().map(|&(t, _)| t).max().unwrap_or(now).max(now);
            let mut fired = Vec::new();
            wheel.advance(end, &mut fired);
            fired.sort_unstable();
            let mut expected: Vec<u32> = model.keys().map(|&(_, key)| key).collect();
            expected.sort_unstable();
            prop_assert_eq!(fired, expected);
            prop_assert!(wheel.is_empty());
            prop_assert_eq!(wheel.next_expiry(), None);
        }
    }
}
