//! Process limits: the open-files limit bounds how many connections the server can hold.

use tracing::{info, warn};

/// What the open-files limit is after [`raise_nofile`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NofileLimit {
    /// Soft limit now in force (the number of descriptors this process may open).
    pub soft: u64,
    /// Hard limit (the ceiling an unprivileged process can raise the soft limit to).
    pub hard: u64,
}

/// Raises the soft open-files limit to the hard limit and logs the result; warns when
/// `max_connections` (plus a reserve for listeners, rings and eventfds) exceeds it.
pub fn raise_nofile(max_connections: usize, shards: usize) -> std::io::Result<NofileLimit> {
    let (soft0, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    if soft0 < hard {
        rlimit::setrlimit(rlimit::Resource::NOFILE, hard, hard)?;
    }
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    info!(
        before = soft0,
        soft, hard, "open-files limit raised to the hard limit"
    );
    let reserve = 16 + 8 * shards as u64;
    if max_connections as u64 + reserve > soft {
        warn!(
            max_connections,
            open_files = soft,
            "server.max_connections exceeds the open-files limit: accepts will fail before it is reached"
        );
    }
    Ok(NofileLimit { soft, hard })
}
