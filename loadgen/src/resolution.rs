//! What the instruments behind the server figures can resolve, and how a figure below that is
//! written instead of a precise-looking number.
//!
//! - CPU time comes from /proc/PID/stat in clock ticks (10 ms at the usual 100 Hz): a delta of a
//!   few ticks is known to ±1 tick, so a per-heartbeat figure from it is mostly noise. Below
//!   [`MIN_CPU_TICKS`] the figure is withheld and the tick count is shown instead.
//! - The kernel's TCP buffer memory (`TCP: mem` of /proc/net/sockstat) is a global counter that
//!   each CPU updates in batches of up to 1 MiB (`SK_MEMORY_PCPU_RESERVE`, Linux 6.0 and later),
//!   so two readings can differ by up to 1 MiB per CPU with nothing changed. Idle sockets hold
//!   almost no buffers, so their growth is usually below that.
//! - RSS is counted in pages; a growth below one page, or a fall (the allocator returned
//!   memory), says nothing per connection.

use serde::Serialize;

/// Fewest clock ticks of CPU a per-unit CPU figure is computed from (±1 tick is ±10 % here).
pub const MIN_CPU_TICKS: u64 = 10;
/// Most TCP buffer memory one CPU holds back from the global counter.
pub const TCP_MEM_BATCH_PER_CPU: u64 = 1 << 20;

/// The granularity of each counter the server figures come from, on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Instruments {
    /// Page size: the unit of RSS and of sockstat's `mem`.
    pub page_bytes: u64,
    /// One clock tick of /proc/PID/stat CPU times, µs.
    pub cpu_tick_us: u64,
    /// How far sockstat's `TCP: mem` may lag the truth: one batch per CPU, bytes.
    pub tcp_mem_bytes: u64,
}

impl Instruments {
    /// This machine's.
    pub fn here() -> Instruments {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
        Instruments {
            page_bytes: crate::procfs::page_size(),
            cpu_tick_us: 1_000_000 / crate::procfs::clk_tck().max(1),
            tcp_mem_bytes: cpus * TCP_MEM_BATCH_PER_CPU,
        }
    }
}

/// A memory growth divided over `conns` connections, when the counter resolves it: `None` when
/// the growth is smaller than `resolution` or negative, or there are no connections.
pub fn bytes_per_conn(growth: i64, resolution: u64, conns: u64) -> Option<f64> {
    (conns > 0 && growth >= 0 && growth as u64 >= resolution).then(|| growth as f64 / conns as f64)
}

/// How [`bytes_per_conn`] is written: the figure, or why there is none.
pub fn bytes_per_conn_text(growth: i64, resolution: u64, conns: u64) -> String {
    match bytes_per_conn(growth, resolution, conns) {
        Some(v) => format!("{v:.1} B"),
        None if conns == 0 => "n/a (no connections)".into(),
        None => format!(
            "< resolution ({} / {conns} conns = {:.1} B; measured {:+} B)",
            size_text(resolution),
            resolution as f64 / conns as f64,
            growth
        ),
    }
}

/// CPU time divided over `units` (heartbeats, pushes, ...), when it spans at least
/// [`MIN_CPU_TICKS`] ticks.
pub fn cpu_per_unit(cpu_us: u64, tick_us: u64, units: u64) -> Option<f64> {
    (units > 0 && cpu_us / tick_us.max(1) >= MIN_CPU_TICKS).then(|| cpu_us as f64 / units as f64)
}

/// How [`cpu_per_unit`] is written: the figure, or the ticks it would rest on.
pub fn cpu_per_unit_text(cpu_us: u64, tick_us: u64, units: u64) -> String {
    match cpu_per_unit(cpu_us, tick_us, units) {
        Some(v) => format!("{v:.2} µs"),
        None if units == 0 => "n/a (none counted)".into(),
        None => {
            let ticks = cpu_us / tick_us.max(1);
            format!(
                "< resolution ({ticks} ticks of {} ms over {units}: at most {:.2} µs)",
                tick_us / 1000,
                ((ticks + 1) * tick_us) as f64 / units as f64
            )
        }
    }
}

fn size_text(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes % (1 << 20) == 0 {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1024 && bytes % 1024 == 0 {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_below_the_batch_is_not_a_figure() {
        // The old report's −55.2 B per connection: a fall of about 1 MiB over 19,000.
        let two_cpus = 2 << 20;
        assert_eq!(bytes_per_conn(-1_048_800, two_cpus, 19_000), None);
        assert_eq!(
            bytes_per_conn_text(-1_048_800, two_cpus, 19_000),
            "< resolution (2 MiB / 19000 conns = 110.4 B; measured -1048800 B)"
        );
        assert_eq!(bytes_per_conn(1_000_000, two_cpus, 19_000), None);
        assert_eq!(bytes_per_conn(19_000_000, two_cpus, 19_000), Some(1000.0));
        assert_eq!(bytes_per_conn_text(4_199_000, 4096, 19_000), "221.0 B");
        assert_eq!(bytes_per_conn(5, 4096, 0), None);
    }

    #[test]
    fn cpu_of_a_few_ticks_is_not_a_figure() {
        assert_eq!(cpu_per_unit(30_000, 10_000, 1_000), None);
        assert_eq!(
            cpu_per_unit_text(30_000, 10_000, 1_000),
            "< resolution (3 ticks of 10 ms over 1000: at most 40.00 µs)"
        );
        assert_eq!(cpu_per_unit(300_000, 10_000, 20_000), Some(15.0));
        assert_eq!(cpu_per_unit_text(300_000, 10_000, 20_000), "15.00 µs");
        assert_eq!(cpu_per_unit_text(300_000, 10_000, 0), "n/a (none counted)");
    }
}
