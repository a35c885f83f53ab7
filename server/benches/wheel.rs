//! The timing wheel at gateway scale: 10 million live entries.
//!
//! Reports time per insert, per cancel and per fired entry of `advance`, each measured against
//! a wheel that keeps 10 million entries live, in two configurations (see [`SCENARIOS`]), plus
//! the bytes each entry costs.
//!
//! Run: `cargo bench -p tether-server --bench wheel`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion};
use rand::{rngs::StdRng, Rng, SeedableRng};
use tether_server::core::wheel::{TimerId, Wheel};

/// Live entries the wheel holds while it is measured.
const ENTRIES: u32 = 10_000_000;
/// Virtual time between two advances in the advance benchmark (the server's tick
/// wakes once per tick, 100 ms by default).
const ADVANCE_STEP_MS: u64 = 100;

/// A measured configuration: tick length and how far ahead deadlines are spread (uniformly).
struct Scenario {
    /// Name in criterion's output.
    name: &'static str,
    /// Tick of the wheel.
    tick_ms: u64,
    /// Deadlines fall uniformly in `1..=spread_ms` ahead of the clock.
    spread_ms: u64,
}

/// The server's default (100 ms ticks, leases up to the default 30-minute maximum: entries
/// start in levels 1 and 2), and a worst case for cascading (1 ms ticks over 2.8 hours: most
/// entries start in level 3 and move down three times before they fire).
const SCENARIOS: [Scenario; 2] = [
    Scenario {
        name: "tick100ms_30min",
        tick_ms: 100,
        spread_ms: 1_800_000,
    },
    Scenario {
        name: "tick1ms_2.8h",
        tick_ms: 1,
        spread_ms: 10_000_000,
    },
];

/// A wheel holding `ENTRIES` entries with random deadlines, and their ids.
fn filled(rng: &mut StdRng, s: &Scenario, reserve: bool) -> (Wheel, Vec<TimerId>) {
    let mut wheel = Wheel::new(s.tick_ms, 0);
    if reserve {
        wheel.reserve(ENTRIES as usize);
    }
    let ids = (0..ENTRIES)
        .map(|key| wheel.insert(key, rng.gen_range(1..=s.spread_ms)))
        .collect();
    (wheel, ids)
}

/// Prints what an entry costs in memory, from the node size and from the arena's capacity.
fn report_bytes() {
    let mut rng = StdRng::seed_from_u64(1);
    println!(
        "wheel: size_of node = {} bytes per entry",
        Wheel::entry_bytes()
    );
    for reserve in [true, false] {
        let (wheel, _) = filled(&mut rng, &SCENARIOS[0], reserve);
        println!(
            "wheel: {} entries, arena {} bytes = {:.1} bytes per entry ({})",
            wheel.len(),
            wheel.heap_bytes(),
            wheel.heap_bytes() as f64 / f64::from(ENTRIES),
            if reserve {
                "reserved up front"
            } else {
                "grown by doubling"
            }
        );
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("wheel_10M");
    // Each advance sample runs a whole spread window (10 M fired entries), so few samples.
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    for s in &SCENARIOS {
        let mut rng = StdRng::seed_from_u64(2);
        let (mut wheel, mut ids) = filled(&mut rng, s, true);

        // Insert into the full wheel; the same entries are cancelled afterwards (not timed)
        // so the wheel stays at 10 M and the arena's free stack supplies the nodes.
        group.bench_function(BenchmarkId::new("insert", s.name), |b| {
            b.iter_custom(|iters| {
                let deadlines: Vec<u64> =
                    (0..iters).map(|_| rng.gen_range(1..=s.spread_ms)).collect();
                let mut new_ids = Vec::with_capacity(iters as usize);
                let start = Instant::now();
                for (i, &at) in deadlines.iter().enumerate() {
                    new_ids.push(wheel.insert(black_box(i as u32), black_box(at)));
                }
                let elapsed = start.elapsed();
                for id in new_ids {
                    wheel.cancel(id);
                }
                elapsed
            })
        });

        // Cancel random live entries (cache-cold, as when random connections close), then
        // put them back untimed.
        group.bench_function(BenchmarkId::new("cancel", s.name), |b| {
            b.iter_custom(|iters| {
                let picks: Vec<usize> = (0..iters).map(|_| rng.gen_range(0..ids.len())).collect();
                let start = Instant::now();
                for &p in &picks {
                    wheel.cancel(black_box(ids[p]));
                }
                let elapsed = start.elapsed();
                for &p in &picks {
                    ids[p] = wheel.insert(p as u32, rng.gen_range(1..=s.spread_ms));
                }
                elapsed
            })
        });
        drop(ids);

        // Advance the clock through one whole `spread_ms` window per sample, one advance
        // per 100 ms of virtual time as the server's tick does, so every cascade the
        // fired entries went through is inside the measured window (a shorter window is
        // dominated by whether a level-2 slot happened to move down in it). Each fired key is
        // re-inserted `spread_ms` ahead at random, untimed, as the server re-arms a
        // connection that heartbeated, so the wheel stays at 10 M. Reported per fired entry.
        let mut now = 0u64;
        let mut fired = Vec::new();
        group.bench_function(BenchmarkId::new("advance_per_fired", s.name), |b| {
            b.iter_custom(|iters| {
                let mut elapsed = Duration::ZERO;
                let mut count = 0usize;
                let end = now + s.spread_ms;
                while now < end {
                    now += ADVANCE_STEP_MS;
                    fired.clear();
                    let start = Instant::now();
                    wheel.advance(black_box(now), &mut fired);
                    elapsed += start.elapsed();
                    count += fired.len();
                    for &key in &fired {
                        wheel.insert(key, now + rng.gen_range(1..=s.spread_ms));
                    }
                }
                let per_entry = elapsed.as_secs_f64() / count.max(1) as f64;
                Duration::from_secs_f64(per_entry * iters as f64)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);

fn main() {
    report_bytes();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
