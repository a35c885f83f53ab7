//! Linux's own NAT in network namespaces: a client network, a router that masquerades, a
//! server network.
//!
//! ```text
//!  client ns                 router ns                      server ns
//!  198.18.0.2/24 ──veth── 198.18.0.1 | 198.18.1.1 ──veth── 198.18.1.2/24
//!                          MASQUERADE out of the server side
//!                          conntrack established timeout = T, tcp_loose = 0,
//!                          ctstate INVALID dropped
//! ```
//!
//! Once conntrack forgets an idle flow, a later segment of it matches no entry; with
//! `nf_conntrack_tcp_loose=0` a mid-stream segment cannot create one, so it is INVALID and
//! dropped, silently, in both directions. Names are unique per run and everything is deleted
//! in `Drop`, also when a test fails. Addresses come from 198.18.0.0/15 only.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

use crate::{listen_addr, server_binary, BACKEND_SECRET, SECRET};

/// The client's address in its namespace.
pub const CLIENT_IP: &str = "198.18.0.2";
/// The server's address in its namespace.
pub const SERVER_IP: &str = "198.18.1.2";

/// The three namespaces and the router's rules; deleted when dropped.
#[derive(Debug)]
pub struct KernelNat {
    /// Namespace of the client.
    client: String,
    /// Namespace of the router.
    router: String,
    /// Namespace of the server.
    server: String,
    /// Namespaces created so far (deleted in `Drop`, even after a failed setup).
    created: Vec<String>,
}

/// Why the kernel NAT cannot run on this machine, or `None` when it can: root, `ip`, and
/// `iptables` or `nft`.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (network namespaces and netfilter need it)".into());
    }
    if !runs("ip", &["-V"]) {
        return Some("`ip` (iproute2) not found".into());
    }
    if !runs("iptables", &["--version"]) && !runs("nft", &["--version"]) {
        return Some("neither `iptables` nor `nft` found".into());
    }
    None
}

fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `program args`; an error with its stderr when it fails.
fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl KernelNat {
    /// Creates the namespaces, links and rules, with a conntrack timeout of `timeout_s` seconds
    /// for established TCP flows. `Ok(Err(reason))` when namespaces cannot be created here at
    /// all (a container without the privilege): the caller skips.
    pub fn create(timeout_s: u32) -> anyhow::Result<Result<KernelNat, String>> {
        static RUN: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "tnat{}x{}",
            std::process::id(),
            RUN.fetch_add(1, Ordering::Relaxed)
        );
        let mut nat = KernelNat {
            client: format!("{tag}c"),
            router: format!("{tag}r"),
            server: format!("{tag}s"),
            created: Vec::new(),
        };
        if let Err(e) = run("ip", &["netns", "add", &nat.client]) {
            return Ok(Err(format!("cannot create a network namespace: {e}")));
        }
        nat.created.push(nat.client.clone());
        for ns in [nat.router.clone(), nat.server.clone()] {
            run("ip", &["netns", "add", &ns])?;
            nat.created.push(ns);
        }
        nat.wire()?;
        nat.firewall(timeout_s)?;
        Ok(Ok(nat))
    }

    /// The client's namespace name (`/run/netns/NAME`).
    pub fn client_ns(&self) -> &str {
        &self.client
    }

    /// The server's namespace name.
    pub fn server_ns(&self) -> &str {
        &self.server
    }

    /// Links and addresses. Interface names are local to their namespace (created directly
    /// there), so parallel runs do not collide.
    fn wire(&self) -> anyhow::Result<()> {
        let (c, r, s) = (&self.client, &self.router, &self.server);
        run(
            "ip",
            &[
                "link", "add", "v0", "netns", c, "type", "veth", "peer", "name", "cl", "netns", r,
            ],
        )?;
        run(
            "ip",
            &[
                "link", "add", "v0", "netns", s, "type", "veth", "peer", "name", "sv", "netns", r,
            ],
        )?;
        for (ns, dev, addr) in [
            (c, "v0", "198.18.0.2/24"),
            (r, "cl", "198.18.0.1/24"),
            (r, "sv", "198.18.1.1/24"),
            (s, "v0", "198.18.1.2/24"),
        ] {
            run("ip", &["-n", ns, "addr", "add", addr, "dev", dev])?;
            run("ip", &["-n", ns, "link", "set", dev, "up"])?;
        }
        for ns in [c, r, s] {
            run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        }
        // The server needs no route back: masquerading makes the router (on-link) the source.
        run(
            "ip",
            &["-n", c, "route", "add", "default", "via", "198.18.0.1"],
        )?;
        Ok(())
    }

    /// NAT, the INVALID drop and the conntrack settings in the router.
    fn firewall(&self, timeout_s: u32) -> anyhow::Result<()> {
        let r = self.router.as_str();
        if runs("iptables", &["--version"]) {
            let ipt = |rule: &[&str]| {
                let mut args = vec!["netns", "exec", r, "iptables"];
                args.extend_from_slice(rule);
                run("ip", &args)
            };
            ipt(&[
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                "sv",
                "-j",
                "MASQUERADE",
            ])?;
            // INPUT too: segments for a forgotten flow are addressed to the router itself, and
            // without the rule there the router's own stack would answer the server with a reset.
            for chain in ["FORWARD", "INPUT"] {
                ipt(&[
                    "-A",
                    chain,
                    "-m",
                    "conntrack",
                    "--ctstate",
                    "INVALID",
                    "-j",
                    "DROP",
                ])?;
            }
        } else {
            let script = "table ip tnat {\n\
                 chain post { type nat hook postrouting priority srcnat; oifname \"sv\" masquerade; }\n\
                 chain fwd { type filter hook forward priority filter; ct state invalid drop; }\n\
                 chain inp { type filter hook input priority filter; ct state invalid drop; }\n\
                 }\n";
            let path = std::env::temp_dir().join(format!("{r}.nft"));
            std::fs::write(&path, script)?;
            let file = path.to_string_lossy().into_owned();
            let result = run("ip", &["netns", "exec", r, "nft", "-f", &file]);
            let _ = std::fs::remove_file(&path);
            result?;
        }
        // The conntrack sysctls exist in a namespace once the rules above loaded conntrack.
        let timeout = timeout_s.to_string();
        for (key, value) in [
            ("net/ipv4/ip_forward", "1"),
            (
                "net/netfilter/nf_conntrack_tcp_timeout_established",
                timeout.as_str(),
            ),
            ("net/netfilter/nf_conntrack_tcp_loose", "0"),
        ] {
            let cmd = format!("echo {value} > /proc/sys/{key}");
            run("ip", &["netns", "exec", r, "sh", "-c", &cmd])?;
        }
        Ok(())
    }
}

impl Drop for KernelNat {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth ends, and with them their peers.
        for ns in self.created.drain(..).rev() {
            if let Err(e) = run("ip", &["netns", "del", &ns]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// The `tether` server running inside a namespace; killed when dropped.
#[derive(Debug)]
pub struct NsServer {
    /// `ip netns exec` replaced by the server (it execs), so this is the server process.
    child: Child,
    /// Where clients connect.
    pub addr: SocketAddr,
    /// Holds the configuration file and the log.
    dir: tempfile::TempDir,
}

impl NsServer {
    /// Starts the server in namespace `ns` listening on `ip` (a port the kernel picks).
    pub fn start(ns: &str, ip: &str) -> anyhow::Result<NsServer> {
        NsServer::start_with(ns, ip, "")
    }

    /// Like [`NsServer::start`], with `server_extra` (`key = value` lines) added to `[server]`.
    pub fn start_with(ns: &str, ip: &str, server_extra: &str) -> anyhow::Result<NsServer> {
        let bin = server_binary()?;
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("tether.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nshards = 1\npin = false\ntick_ms = 20\nstats_interval_ms = 0\n\
                 ring_entries = 256\n{server_extra}\n[auth]\nsecrets = [\"{SECRET}\"]\n\
                 backend_secrets = [\"{BACKEND_SECRET}\"]\n\
                 [session]\nmin_lease_ms = 100\ngrace_ms = 2000\n[api]\nlisten = \"127.0.0.1:0\"\n"
            ),
        )?;
        let log = std::fs::File::create(dir.path().join("server.log"))?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(bin)
            .arg("--config")
            .arg(&config)
            .arg("--listen")
            .arg(format!("{ip}:0"))
            .arg("--log")
            .arg("debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("starting the server in its namespace")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let addr = listen_addr(stdout);
        let mut server = NsServer {
            child,
            addr: "198.18.1.2:1".parse()?,
            dir,
        };
        let addr = addr
            .recv_timeout(Duration::from_secs(60))
            .map_err(|_| anyhow!("server did not report its address; log:\n{}", server.log()))?;
        server.addr = addr.parse()?;
        Ok(server)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for NsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- server log ----\n{}", self.log());
        }
    }
}
