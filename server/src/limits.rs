//! Process limits: the open-files limit, and how many connections it lets each shard hold.
//!
//! Connections are not descriptors of the process: each lives in its shard ring's file table
//! (direct descriptors, `shard/files.rs`), and each table is sized at start. The kernel refuses
//! a table larger than the process's open-files limit, so that limit caps every shard's table
//! on its own, not the process's sum: S shards hold up to S times the limit. The process's own
//! table keeps listeners, rings, eventfds, HTTP connections and sockets being set up.

use tracing::{info, warn};

use crate::driver::ring::MAX_FILES;

/// What the open-files limit is after [`raise_nofile`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NofileLimit {
    /// Soft limit now in force (the number of descriptors this process may open, and the
    /// largest file table a ring may register).
    pub soft: u64,
    /// Hard limit (the ceiling an unprivileged process can raise the soft limit to).
    pub hard: u64,
}

/// Raises the soft open-files limit to the hard limit and logs the result.
pub fn raise_nofile() -> std::io::Result<NofileLimit> {
    let (soft0, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    if soft0 < hard {
        rlimit::setrlimit(rlimit::Resource::NOFILE, hard, hard)?;
    }
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    info!(
        before = soft0,
        soft, hard, "open-files limit raised to the hard limit"
    );
    Ok(NofileLimit { soft, hard })
}

/// Slots of each shard ring's file table: the shard's share of `max_connections` (`per_shard`)
/// and an eighth more for sockets being closed or moved while new ones arrive, at most the
/// open-files limit (the kernel refuses more) and the kernel's own cap per ring.
pub fn ring_files(per_shard: usize, nofile: NofileLimit) -> u32 {
    let want = per_shard as u64 + per_shard as u64 / 8 + 64;
    want.min(nofile.soft).min(u64::from(MAX_FILES)) as u32
}

/// Warns when the shards' file tables together hold fewer connections than
/// `max_connections`: the open-files limit caps each of them.
pub fn warn_capacity(max_connections: usize, shards: usize, files: u32, nofile: NofileLimit) {
    let holds = shards as u64 * u64::from(files);
    if (max_connections as u64) > holds {
        warn!(
            max_connections,
            shards,
            per_shard = files,
            open_files = nofile.soft,
            "the shards' io_uring file tables hold fewer connections than server.max_connections: \
             each holds at most the open-files limit; raise the limit or run more shards"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(soft: u64) -> NofileLimit {
        NofileLimit { soft, hard: soft }
    }

    #[test]
    fn a_table_holds_the_shards_share_and_headroom_within_the_limit() {
        assert_eq!(ring_files(1_000, limit(1_048_576)), 1_189);
        // This box: 20,000 descriptors, max_connections 1 M over 7 shards.
        assert_eq!(ring_files(142_858, limit(20_000)), 20_000);
        // The kernel registers at most 2^20 slots per ring.
        assert_eq!(ring_files(5_000_000, limit(10_485_760)), MAX_FILES);
    }
}
