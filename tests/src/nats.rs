//! A real `nats-server` with JetStream on loopback, for the cluster tests.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
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

    /// Starts `nats-server -js` with extra arguments (e.g. `--user U --pass P`), on ports it
    /// picks itself and tells in its log. (A port taken from the kernel and handed over could
    /// be handed to a test running beside this one too: the second server would fail to
    /// listen while the first answered for it.)
    pub fn start_with(args: &[&str]) -> anyhow::Result<Nats> {
        let mut nats = Nats {
            child: None,
            port: 0,
            monitor: 0,
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

    /// Starts the server again on the same ports and store (on ports it picks the first
    /// time), and waits until it accepts connections.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let (child, port, monitor) = spawn(self.port, self.monitor, self.store.path(), &self.args)?;
        self.child = Some(child);
        (self.port, self.monitor) = (port, monitor);
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

/// `nats-server -js -a 127.0.0.1 -p PORT -m MONITOR -sd STORE ARGS` (a port of 0: one the
/// server picks), and the ports it says it listens on. Its log is read to the end and dropped.
fn spawn(
    port: u16,
    monitor: u16,
    store: &Path,
    args: &[String],
) -> anyhow::Result<(Child, u16, u16)> {
    let arg = |p: u16| {
        if p == 0 {
            "-1".to_string()
        } else {
            p.to_string()
        }
    };
    let mut child = Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", &arg(port)])
        .args(["-m", &arg(monitor), "-sd"])
        .arg(store)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting nats-server")?;
    let stderr = child.stderr.take().context("piped stderr")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let after = |line: &str, what: &str| {
            line.split(what)
                .nth(1)
                .and_then(|p| p.trim().parse::<u16>().ok())
        };
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(p) = after(&line, "Listening for client connections on 127.0.0.1:") {
                let _ = tx.send((true, p));
            }
            if let Some(p) = after(&line, "Starting http monitor on 127.0.0.1:") {
                let _ = tx.send((false, p));
            }
        }
    });
    let (mut client, mut http) = (None, None);
    let until = Instant::now() + Duration::from_secs(30);
    while client.is_none() || http.is_none() {
        let left = until.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((true, p)) => client = Some(p),
            Ok((false, p)) => http = Some(p),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("nats-server did not say where it listens within 30 s");
            }
        }
    }
    Ok((child, client.unwrap_or(port), http.unwrap_or(monitor)))
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
