//! A small plaintext metrics surface on a loopback port: one line per counter and shard.
//!
//! Served by one plain thread from the counters the shards publish (atomics copied once per
//! half second), so nothing here touches the connection path.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::counters::{Counter, Published};

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
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
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
