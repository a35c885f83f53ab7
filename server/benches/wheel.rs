//! The timing wheel at gateway scale: 10 million live entries.
//!
//! Reports time per insert, per cancel and per fired entry of `advance`, each measured against
//! a wheel that keeps about 10 million entries live, plus the bytes each entry costs.
//!
//! Run: `cargo bench -p tether-server --bench wheel`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion};
use rand::{rngs::StdRng, Rng, SeedableRng};
use tether_server::wheel::{TimerId, Wheel};

/// Live entries the wheel holds while it is measured.
const ENTRIES: u32 = 10_000_000;
/// Deadlines are spread uniformly over this many milliseconds ahead of the clock (with 1 ms
/// ticks about one entry per tick, and deadlines reaching the fourth level, so cascades are
/// part of what `advance` costs).
const SPREAD_MS: u64 = 10_000_000;
/// Tick of the measured wheel.
const TICK_MS: u64 = 1;

/// A wheel holding `ENTRIES` entries with random deadlines, and their ids.
fn filled(rng: &mut StdRng, reserve: bool) -> (Wheel, Vec<TimerId>) {
    let mut wheel = Wheel::new(TICK_MS, 0);
    if reserve {
        wheel.reserve(ENTRIES as usize);
    }
    let ids = (0..ENTRIES)
        .map(|key| wheel.insert(key, rng.gen_range(1..=SPREAD_MS)))
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
        let (wheel, _) = filled(&mut rng, reserve);
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
    let mut rng = StdRng::seed_from_u64(2);
    let (mut wheel, mut ids) = filled(&mut rng, true);
    let mut group = c.benchmark_group("wheel");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));

    // Insert into the full wheel; the same number of random entries is cancelled afterwards
    // (not timed) so the wheel stays at 10 M and the arena's free stack supplies the nodes.
    group.bench_function(BenchmarkId::new("insert", ENTRIES), |b| {
        b.iter_custom(|iters| {
            let now = 0;
            let deadlines: Vec<u64> = (0..iters)
                .map(|_| now + rng.gen_range(1..=SPREAD_MS))
                .collect();
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

    // Cancel random live entries (cache-cold, as when random connections close), then put
    // them back untimed.
    group.bench_function(BenchmarkId::new("cancel", ENTRIES), |b| {
        b.iter_custom(|iters| {
            let picks: Vec<usize> = (0..iters).map(|_| rng.gen_range(0..ids.len())).collect();
            let start = Instant::now();
            for &p in &picks {
                wheel.cancel(black_box(ids[p]));
            }
            let elapsed = start.elapsed();
            for &p in &picks {
                ids[p] = wheel.insert(p as u32, rng.gen_range(1..=SPREAD_MS));
            }
            elapsed
        })
    });
    drop(ids);

    // Advance the clock over about `iters` fired entries; each fired key is re-inserted
    // SPREAD_MS ahead (untimed), as the server re-arms a connection that heartbeated. The
    // time is scaled to exactly `iters` fired entries.
    let mut now = 0u64;
    let mut fired = Vec::new();
    group.bench_function(BenchmarkId::new("advance_per_fired", ENTRIES), |b| {
        b.iter_custom(|iters| {
            let entries_per_ms = f64::from(ENTRIES) / SPREAD_MS as f64;
            let step = ((iters as f64 / entries_per_ms).ceil() as u64).max(1);
            fired.clear();
            let start = Instant::now();
            wheel.advance(black_box(now + step), &mut fired);
            let elapsed = start.elapsed();
            now += step;
            for &key in &fired {
                wheel.insert(key, now + rng.gen_range(1..=SPREAD_MS));
            }
            let per_entry = elapsed.as_secs_f64() / fired.len().max(1) as f64;
            Duration::from_secs_f64(per_entry * iters as f64)
        })
    });
    group.finish();
}

criterion_group!(benches, bench);

fn main() {
    report_bytes();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
