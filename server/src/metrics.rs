//! A small plaintext metrics surface on a loopback port: one line per counter and shard.
//!
//! Served by one plain thread from the counters the shards publish (atomics copied once per
//! half second), so nothing here touches the connection path. A failing accept (the process
//! out of descriptors) backs off, doubling up to a second, and is logged at a bounded rate;
//! a client gets a short write timeout, so a reader that stalls cannot hold the thread.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::warn;

use crate::counters::{Counter, Published};
use crate::ratelog::RateLog;

/// First pause after a failed accept; doubled while accepts keep failing.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest pause after a failed accept.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Renders every shard's counters as `tether_<name>{shard="i"} <value>` lines.
pub fn render(shards: &[Arc<Published>]) -> String {
    let mut out = String::new();
    for (i, p) in shards.iter().enumerate() {
        out.push_str(&format!(
            "tether_connections{{shard=\"{i}\"}} {}\n",
            p.connections.load(Ordering::Relaxed)
        ));
        out.push_str(&format!(
            "tether_users{{shard=\"{i}\"}} {}\n",
            p.users.load(Ordering::Relaxed)
        ));
        for c in Counter::ALL {
            out.push_str(&format!(
                "tether_{}{{shard=\"{i}\"}} {}\n",
                c.name(),
                p.get(*c)
            ));
        }
    }
    out
}

/// Serves [`render`] to every connection on `addr` (an HTTP/1.0 response, so `curl` works),
/// from a background thread. Returns the bound address.
pub fn serve(addr: SocketAddr, shards: Vec<Arc<Published>>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("tether-metrics".into())
        .spawn(move || {
            let start = Instant::now();
            let mut log = RateLog::new(10_000);
            let mut backoff = BACKOFF_MIN;
            for stream in listener.incoming() {
                let mut stream = match stream {
                    Ok(s) => s,
                    Err(e) => {
                        if let Some(suppressed) = log.hit(start.elapsed().as_millis() as u64) {
                            warn!(error = %e, suppressed, "metrics accept failed; backing off");
                        }
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                };
                backoff = BACKOFF_MIN;
                let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
                let body = render(&shards);
                let _ = write!(
                    stream,
                    "HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{}",
                    body.len(),
                    body
                );
            }
        })?;
    Ok(bound)
}
