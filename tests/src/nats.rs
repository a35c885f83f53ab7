//! A real `nats-server` with JetStream on loopback, for the cluster tests.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The `[cluster] secrets` of test nodes (every node of a test fleet has the same).
pub const CLUSTER_SECRET: &str = "test-cluster-secret-0123456789";

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
    /// Extra command-line arguments (e.g. `--user`, `--pass`).
    args: Vec<String>,
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
        Nats::start_with(&[])
    }

    /// Starts `nats-server -js` with extra arguments (e.g. `--user U --pass P`).
    pub fn start_with(args: &[&str]) -> anyhow::Result<Nats> {
        let port = free_port()?;
        let mut nats = Nats {
            child: None,
            port,
            monitor: free_port()?,
            store: tempfile::tempdir()?,
            args: args.iter().map(|a| a.to_string()).collect(),
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
        let child = spawn(self.port, self.monitor, self.store.path(), &self.args)?;
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

/// `nats-server -js -a 127.0.0.1 -p PORT -m MONITOR -sd STORE ARGS`, quiet.
fn spawn(port: u16, monitor: u16, store: &Path, args: &[String]) -> anyhow::Result<Child> {
    Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string()])
        .args(["-m", &monitor.to_string(), "-sd"])
        .arg(store)
        .args(args)
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

/// A NATS client spoken by hand over a TCP socket, as anyone who can reach the server could:
/// publishes what it likes (unsigned, with made-up headers, or a captured message again) and
/// sees what the server delivers to its subscriptions.
pub struct RawNats {
    /// Reads the server's lines and payloads.
    reader: std::io::BufReader<TcpStream>,
    /// Writes commands.
    writer: TcpStream,
}

/// A message the server delivered to a [`RawNats`] subscription.
#[derive(Clone, Debug)]
pub struct RawMsg {
    /// Its subject.
    pub subject: String,
    /// Where a reply goes, if it asks for one.
    pub reply: Option<String>,
    /// The header block as sent (`NATS/1.0\r\n...\r\n\r\n`), empty without headers.
    pub headers: Vec<u8>,
    /// The payload.
    pub payload: Vec<u8>,
}

impl RawNats {
    /// Connects to the server on 127.0.0.1:`port` and says hello (with header support).
    pub fn connect(port: u16) -> anyhow::Result<RawNats> {
        use std::io::BufRead;
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut reader = std::io::BufReader::new(stream.try_clone()?);
        let mut info = String::new();
        reader.read_line(&mut info)?;
        if !info.starts_with("INFO ") {
            bail!("expected INFO, got {info:?}");
        }
        let mut raw = RawNats {
            reader,
            writer: stream,
        };
        raw.write(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"no_responders\":true,\"protocol\":1}\r\n")?;
        raw.flush()?;
        Ok(raw)
    }

    fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        use std::io::Write;
        self.writer.write_all(bytes)?;
        Ok(())
    }

    /// Subscribes to `subject`.
    pub fn subscribe(&mut self, subject: &str, sid: u32) -> anyhow::Result<()> {
        self.write(format!("SUB {subject} {sid}\r\n").as_bytes())?;
        self.flush()
    }

    /// Publishes `payload` on `subject` with a header block (`headers`, possibly empty).
    pub fn publish(&mut self, subject: &str, headers: &[u8], payload: &[u8]) -> anyhow::Result<()> {
        let mut cmd = if headers.is_empty() {
            format!("PUB {subject} {}\r\n", payload.len()).into_bytes()
        } else {
            let total = headers.len() + payload.len();
            format!("HPUB {subject} {} {total}\r\n", headers.len()).into_bytes()
        };
        cmd.extend_from_slice(headers);
        cmd.extend_from_slice(payload);
        cmd.extend_from_slice(b"\r\n");
        self.write(&cmd)?;
        self.flush()
    }

    /// Waits until the server has handled everything sent so far (PING, PONG); messages
    /// delivered meanwhile are dropped.
    pub fn flush(&mut self) -> anyhow::Result<()> {
        self.write(b"PING\r\n")?;
        loop {
            if let Read::Pong = self.read()? {
                return Ok(());
            }
        }
    }

    /// The next message delivered whose payload contains `needle`, within `limit`.
    pub fn next_containing(&mut self, needle: &str, limit: Duration) -> anyhow::Result<RawMsg> {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if let Read::Msg(m) = self.read()? {
                if String::from_utf8_lossy(&m.payload).contains(needle) {
                    return Ok(m);
                }
            }
        }
        bail!("no message containing {needle:?} within {limit:?}")
    }

    /// Reads one thing the server sent; answers its PINGs.
    fn read(&mut self) -> anyhow::Result<Read> {
        use std::io::{BufRead, Read as _};
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            bail!("NATS closed the connection");
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.first().copied() {
            Some("PING") => {
                self.write(b"PONG\r\n")?;
                Ok(Read::Other)
            }
            Some("PONG") => Ok(Read::Pong),
            Some("-ERR") => bail!("NATS said {line:?}"),
            Some("MSG") | Some("HMSG") => {
                let hmsg = words[0] == "HMSG";
                // MSG subject sid [reply] total | HMSG subject sid [reply] hdr total
                let sizes = if hmsg { 2 } else { 1 };
                let reply = (words.len() == 4 + sizes).then(|| words[3].to_string());
                let total: usize = words[words.len() - 1].parse()?;
                let hdr: usize = if hmsg {
                    words[words.len() - 2].parse()?
                } else {
                    0
                };
                let mut body = vec![0; total + 2];
                self.reader.read_exact(&mut body)?;
                body.truncate(total);
                let payload = body.split_off(hdr);
                Ok(Read::Msg(RawMsg {
                    subject: words[1].to_string(),
                    reply,
                    headers: body,
                    payload,
                }))
            }
            _ => Ok(Read::Other),
        }
    }
}

/// One thing a [`RawNats`] read.
enum Read {
    /// A message of a subscription.
    Msg(RawMsg),
    /// The answer to our PING.
    Pong,
    /// Anything else (+OK, INFO, a PING answered).
    Other,
}
