//! A real `nats-server` with JetStream on loopback, for the cluster tests.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A running `nats-server -js`; killed when dropped.
#[derive(Debug)]
pub struct Nats {
    /// The process, while it runs.
    child: Option<Child>,
    /// Its client port on 127.0.0.1.
    pub port: u16,
    /// Its monitoring port (`/varz`) on 127.0.0.1.
    pub monitor: u16,
    /// The JetStream store directory (kept across a restart).
    store: tempfile::TempDir,
}

/// Whether `nats-server` can be run here.
pub fn installed() -> bool {
    Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Nats {
    /// Starts `nats-server -js` on a free loopback port and waits until it accepts
    /// connections.
    pub fn start() -> anyhow::Result<Nats> {
        let port = free_port()?;
        let mut nats = Nats {
            child: None,
            port,
            monitor: free_port()?,
            store: tempfile::tempdir()?,
        };
        nats.restart()?;
        Ok(nats)
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server with SIGKILL (its store stays).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port and store, and waits until it accepts
    /// connections.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let child = spawn(self.port, self.monitor, self.store.path())?;
        self.child = Some(child);
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let until = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if Instant::now() > until {
                bail!("nats-server did not listen on {addr} within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Nats {
    /// Messages the server received from and sent to its clients so far (`/varz`).
    pub fn messages(&self) -> anyhow::Result<(u64, u64)> {
        let addr: SocketAddr = ([127, 0, 0, 1], self.monitor).into();
        let v = crate::http::get(addr, "/varz", &[])?.json();
        let field = |k: &str| v[k].as_u64().with_context(|| format!("/varz has no {k}"));
        Ok((field("in_msgs")?, field("out_msgs")?))
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `nats-server -js -a 127.0.0.1 -p PORT -m MONITOR -sd STORE`, quiet.
fn spawn(port: u16, monitor: u16, store: &Path) -> anyhow::Result<Child> {
    Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string()])
        .args(["-m", &monitor.to_string(), "-sd"])
        .arg(store)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nats-server")
}

/// A port the kernel just gave out on 127.0.0.1 (and took back).
fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}
