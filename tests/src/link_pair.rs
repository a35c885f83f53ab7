//! Two network namespaces joined by one veth pair, whose client end can be cut: from then on
//! every segment between them is lost silently, as when a NAT forgets a flow or a phone drops
//! off the network. Addresses come from 198.18.0.0/15; names are unique per run and the
//! namespaces are deleted in `Drop`.
//!
//! ```text
//!  client ns  198.19.0.1/24 ──veth── 198.19.0.2/24  server ns
//! ```

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context};

/// The client's address.
pub const CLIENT_IP: &str = "198.19.0.1";
/// The server's address.
pub const SERVER_IP: &str = "198.19.0.2";

/// The two namespaces; deleted when dropped.
#[derive(Debug)]
pub struct LinkPair {
    /// Namespace of the client.
    client: String,
    /// Namespace of the server.
    server: String,
    /// Namespaces created so far (deleted in `Drop`, even after a failed setup).
    created: Vec<String>,
}

/// Why namespaces cannot be used here (not root, no `ip`), or `None`.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (network namespaces need it)".into());
    }
    let ip = Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !ip.is_ok_and(|s| s.success()) {
        return Some("`ip` (iproute2) not found".into());
    }
    None
}

/// Runs `ip args`; an error with its stderr when it fails.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl LinkPair {
    /// Creates the namespaces and the link. `Ok(Err(reason))` when namespaces cannot be
    /// created here at all (a container without the privilege): the caller skips.
    pub fn create() -> anyhow::Result<Result<LinkPair, String>> {
        static RUN: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "tlnk{}x{}",
            std::process::id(),
            RUN.fetch_add(1, Ordering::Relaxed)
        );
        let mut pair = LinkPair {
            client: format!("{tag}c"),
            server: format!("{tag}s"),
            created: Vec::new(),
        };
        if let Err(e) = ip(&["netns", "add", &pair.client]) {
            return Ok(Err(format!("cannot create a network namespace: {e}")));
        }
        pair.created.push(pair.client.clone());
        ip(&["netns", "add", &pair.server])?;
        pair.created.push(pair.server.clone());
        let (c, s) = (pair.client.as_str(), pair.server.as_str());
        ip(&[
            "link", "add", "v0", "netns", c, "type", "veth", "peer", "name", "v0", "netns", s,
        ])?;
        for (ns, addr) in [(c, "198.19.0.1/24"), (s, "198.19.0.2/24")] {
            ip(&["-n", ns, "addr", "add", addr, "dev", "v0"])?;
            ip(&["-n", ns, "link", "set", "v0", "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(Ok(pair))
    }

    /// The client's namespace name (`/run/netns/NAME`).
    pub fn client_ns(&self) -> &str {
        &self.client
    }

    /// The server's namespace name.
    pub fn server_ns(&self) -> &str {
        &self.server
    }

    /// Cuts the link: the client's end goes down, nothing passes any more and neither side
    /// is told.
    pub fn cut(&self) -> anyhow::Result<()> {
        ip(&["-n", &self.client, "link", "set", "v0", "down"])
    }
}

impl Drop for LinkPair {
    fn drop(&mut self) {
        for ns in self.created.drain(..).rev() {
            if let Err(e) = ip(&["netns", "del", &ns]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}
