//! The one clock every process of a run shares.
//!
//! `CLOCK_MONOTONIC` is system-wide on one Linux box, so a timestamp taken in the backend's
//! worker process and compared in the receiving client's worker process gives a true
//! end-to-end latency. Every time in the loadgen is nanoseconds on this clock.

/// Nanoseconds since an arbitrary, system-wide origin (boot).
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    debug_assert_eq!(rc, 0);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_goes_back() {
        let a = now_ns();
        let b = now_ns();
        assert!(b >= a);
        assert!(a > 0);
    }
}
