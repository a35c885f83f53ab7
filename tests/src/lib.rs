//! Helpers shared by the integration tests: start the real server, speak the protocol.
//!
//! [`Server::start`] runs the `tether` command (the test package's own build of it,
//! `tether-under-test`, see [`server_binary`]) with two shards on 127.0.0.1 and a port the kernel picks, and reads the
//! bound address from the line the server prints on stdout. [`Client`] is a blocking client
//! with generous timeouts, so the tests stay reliable on a loaded machine.

pub mod fleet;
pub mod http;
pub mod link_pair;
pub mod nat_kernel;
pub mod nat_learn;
pub mod nat_relay;
pub mod nats;
pub mod tls;
pub mod ws;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use bytes::{Bytes, BytesMut};
use tether_proto::token::{Minter, Secret};
use tether_proto::{codec, login_flags, Frame, Login, LoginOk, PROTOCOL_VERSION};

/// The client-token secret of test servers.
pub const SECRET: &str = "tether-integration-test-secret-4f1c";
/// The backend-token secret of test servers.
pub const BACKEND_SECRET: &str = "tether-integration-test-backend-secret-77a2";
/// How long a test waits for anything the server should do "at once".
pub const PATIENCE: Duration = Duration::from_secs(15);

/// Settings of a test server; rendered into its TOML configuration file.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Number of shards.
    pub shards: usize,
    /// `session.login_timeout_ms`.
    pub login_timeout_ms: u32,
    /// `session.min_lease_ms`.
    pub min_lease_ms: u32,
    /// `session.grace_ms`.
    pub grace_ms: u32,
    /// `server.max_frame`.
    pub max_frame: usize,
    /// `outbound.max_queue_bytes`.
    pub max_queue_bytes: usize,
    /// `outbound.write_timeout_ms`.
    pub write_timeout_ms: u64,
    /// `server.drain_ms`.
    pub drain_ms: u64,
    /// `server.listen`.
    pub listen: SocketAddr,
    /// `server.max_connections`.
    pub max_connections: usize,
    /// Extra `key = value` lines for `[server]`.
    pub server_extra: String,
    /// `key = value` lines for `[limits]` (the embedded defaults otherwise).
    pub limits: String,
    /// Extra command-line arguments.
    pub args: Vec<String>,
    /// The server's log filter (`--log`).
    pub log: &'static str,
    /// RLIMIT_NOFILE (soft and hard) of the server process; `None` leaves it alone.
    pub nofile: Option<u64>,
    /// `api.keys`.
    pub api_keys: Vec<String>,
    /// `api.max_body_bytes`.
    pub api_max_body_bytes: usize,
    /// Extra `key = value` lines for `[api]` (with `api_keys` empty they may set `keys`).
    pub api_extra: String,
    /// Whether to open `server.metrics_listen` (on a port the kernel picks).
    pub metrics_listener: bool,
    /// `auth.secrets_file` (replaces the test secret when set).
    pub secrets_file: Option<PathBuf>,
    /// Extra sections appended to the configuration (e.g. `[cluster]`).
    pub extra: String,
    /// Extra `key = value` lines for `[auth]`.
    pub auth_extra: String,
    /// Extra `key = value` lines for `[session]`.
    pub session_extra: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            shards: 2,
            login_timeout_ms: 10_000,
            min_lease_ms: 100,
            grace_ms: 2_000,
            max_frame: 65_536,
            max_queue_bytes: 262_144,
            write_timeout_ms: 10_000,
            drain_ms: 5_000,
            listen: "127.0.0.1:0".parse().expect("an address"),
            max_connections: 1_000_000,
            server_extra: String::new(),
            limits: String::new(),
            args: Vec::new(),
            log: "debug",
            nofile: None,
            api_keys: Vec::new(),
            api_max_body_bytes: 1 << 20,
            api_extra: String::new(),
            metrics_listener: false,
            secrets_file: None,
            extra: String::new(),
            auth_extra: String::new(),
            session_extra: String::new(),
        }
    }
}

impl Settings {
    /// The server's configuration file.
    pub fn toml(&self) -> String {
        format!(
            "[server]\nlisten = \"{}\"\nshards = {}\npin = false\ntick_ms = 20\n\
             max_frame = {}\ndrain_ms = {}\nstats_interval_ms = 0\nring_entries = 256\n\
             max_connections = {}\n{}\n\
             [auth]\nsecrets = [\"{SECRET}\"]\nbackend_secrets = [\"{BACKEND_SECRET}\"]\n{}\
             [session]\nlogin_timeout_ms = {}\nmin_lease_ms = {}\ngrace_ms = {}\n{}\
             [outbound]\nmax_queue_bytes = {}\nwrite_timeout_ms = {}\n[limits]\n{}\n\
             [api]\nlisten = \"127.0.0.1:0\"\n{}max_body_bytes = {}\n{}\n{}\n",
            self.listen,
            self.shards,
            self.max_frame,
            self.drain_ms,
            self.max_connections,
            self.server_extra,
            self.auth_extra,
            self.login_timeout_ms,
            self.min_lease_ms,
            self.grace_ms,
            self.session_extra,
            self.max_queue_bytes,
            self.write_timeout_ms,
            self.limits,
            if self.api_keys.is_empty() {
                String::new()
            } else {
                format!("keys = {:?}\n", self.api_keys)
            },
            self.api_max_body_bytes,
            self.api_extra,
            self.extra,
        )
        .replace(
            "stats_interval_ms = 0\n",
            if self.metrics_listener {
                "stats_interval_ms = 0\nmetrics_listen = \"127.0.0.1:0\"\n"
            } else {
                "stats_interval_ms = 0\n"
            },
        )
        .replace(
            "[auth]\n",
            &match &self.secrets_file {
                Some(f) => format!("[auth]\nsecrets_file = {:?}\n", f.display().to_string()),
                None => "[auth]\n".to_string(),
            },
        )
    }
}

/// The server binary of the same build profile as the running test: the test package's own
/// copy of the `tether` command, `target/<profile>/tether-under-test`. Cargo builds it, with
/// the features the tests resolve, before it runs an integration test, so it is fresh and no
/// second build of the server is needed. Examples (the figures programs) are run without that
/// guarantee: for them it is brought up to date once with `cargo build -p tether-tests --bin
/// tether-under-test`.
pub fn server_binary() -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Mutex<Option<PathBuf>>> = OnceLock::new();
    let exe = std::env::current_exe()?;
    let in_deps = exe.parent().is_some_and(|d| d.ends_with("deps"));
    if in_deps {
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .context("test executable has no profile directory")?;
        let bin = profile_dir.join("tether-under-test");
        if bin.exists() {
            return Ok(bin);
        }
    }
    built(
        &BUILT,
        "tether-under-test",
        &["-p", "tether-tests", "--bin", "tether-under-test"],
    )
}

/// The directory holding the SDK's libraries (`libtether_sdk.a`, `libtether_sdk.so`) of the
/// running test's build profile, brought up to date once per test process with
/// `cargo build -p tether-sdk --lib`.
pub fn sdk_library_dir() -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Mutex<Option<PathBuf>>> = OnceLock::new();
    let lib = built(&BUILT, "libtether_sdk.so", &["-p", "tether-sdk", "--lib"])?;
    Ok(lib
        .parent()
        .context("a library has a directory")?
        .to_path_buf())
}

/// `target/<profile>/<file>` for the running test's profile, after `cargo build <args>`
/// (once per test process; `cell` remembers it).
fn built(
    cell: &'static OnceLock<Mutex<Option<PathBuf>>>,
    file: &str,
    args: &[&str],
) -> anyhow::Result<PathBuf> {
    let mut guard = cell
        .get_or_init(|| Mutex::new(None))
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(p) = guard.as_ref() {
        return Ok(p.clone());
    }
    let exe = std::env::current_exe()?;
    let deps = exe.parent().context("test executable has no directory")?;
    // Test executables live in `deps/`, examples (the figures programs) in `examples/`.
    let profile_dir = if deps.ends_with("deps") || deps.ends_with("examples") {
        deps.parent().context("deps has no parent")?
    } else {
        deps
    };
    let path = profile_dir.join(file);
    // Build (a quick no-op when up to date) so a test never runs a stale artifact; when cargo
    // is not usable but the artifact is there, use that.
    if let Err(e) = build(profile_dir, args) {
        if !path.exists() {
            return Err(e);
        }
        eprintln!(
            "warning: could not rebuild {file} ({e:#}); using {}",
            path.display()
        );
    }
    if !path.exists() {
        bail!("{} missing after cargo build", path.display());
    }
    *guard = Some(path.clone());
    Ok(path)
}

/// Runs `cargo build <args>` for the profile of `profile_dir`.
fn build(profile_dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build").args(args);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    if let Some(target) = profile_dir.parent() {
        cmd.env("CARGO_TARGET_DIR", target);
    }
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build {} failed: {status}", args.join(" "));
    }
    Ok(())
}

/// A running server process; killed when dropped.
#[derive(Debug)]
pub struct Server {
    /// The process.
    child: Child,
    /// Where clients connect.
    pub addr: SocketAddr,
    /// The HTTP API.
    pub api: SocketAddr,
    /// The metrics-only listener, when [`Settings::metrics_listener`] is set.
    pub metrics: Option<SocketAddr>,
    /// The TLS listener, when the configuration has `[tls] listen`.
    pub tls: Option<SocketAddr>,
    /// The WebSocket listener, when the configuration has `[websocket] listen`.
    pub websocket: Option<SocketAddr>,
    /// Holds the configuration file and the server's log.
    dir: tempfile::TempDir,
}

/// A moment of a server's life and the CPU time it had used by then
/// ([`Server::cpu_mark`]).
#[derive(Clone, Copy, Debug)]
pub struct CpuMark {
    /// CPU time used (user + system).
    cpu: Duration,
    /// When.
    wall: Instant,
}

impl Server {
    /// Starts a server with `settings` and waits until it listens.
    pub fn start(settings: &Settings) -> anyhow::Result<Server> {
        let (mut server, addrs) = Server::spawn(settings)?;
        let addrs = addrs
            .recv_timeout(Duration::from_secs(60))
            .map_err(|_| anyhow!("server did not report its address; log:\n{}", server.log()))?;
        server.addr = addrs.addr.parse()?;
        server.api = addrs
            .api
            .context("server did not report its API address")?
            .parse()?;
        server.metrics = addrs.metrics.map(|m| m.parse()).transpose()?;
        server.tls = addrs.tls.map(|m| m.parse()).transpose()?;
        server.websocket = addrs.websocket.map(|m| m.parse()).transpose()?;
        Ok(server)
    }

    /// Runs a server with `settings` that is expected to refuse to start: waits for its exit
    /// (at most [`PATIENCE`] beyond start-up) and returns its status and log. An error when it
    /// starts listening instead.
    pub fn start_refused(settings: &Settings) -> anyhow::Result<(ExitStatus, String)> {
        let (mut server, addr) = Server::spawn(settings)?;
        let status = server.wait(Duration::from_secs(60) + PATIENCE);
        if let Ok(addrs) = addr.try_recv() {
            bail!(
                "the server started on {}; log:\n{}",
                addrs.addr,
                server.log()
            );
        }
        let status = status.context("the server neither started nor exited")?;
        Ok((status, server.log()))
    }

    /// Starts the process; the receiver yields its addresses once it listens.
    fn spawn(
        settings: &Settings,
    ) -> anyhow::Result<(Server, std::sync::mpsc::Receiver<Listening>)> {
        let bin = server_binary()?;
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("tether.toml");
        std::fs::write(&config, settings.toml())?;
        let log = std::fs::File::create(dir.path().join("server.log"))?;
        let mut cmd = Command::new(bin);
        cmd.arg("--config")
            .arg(&config)
            .arg("--log")
            .arg(settings.log)
            .args(&settings.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        if let Some(n) = settings.nofile {
            use std::os::unix::process::CommandExt;
            let limit = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            // SAFETY: setrlimit(2) is async-signal-safe and touches only the child.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().context("starting the server")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let addrs = listening(stdout);
        let server = Server {
            child,
            addr: "127.0.0.1:1".parse()?,
            api: "127.0.0.1:1".parse()?,
            metrics: None,
            tls: None,
            websocket: None,
            dir,
        };
        Ok((server, addrs))
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time the server used so far (user + system), from `/proc/PID/stat`.
    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        // Fields after the command name (which may hold spaces) start after its ')'.
        let rest = stat.rsplit_once(')').context("malformed stat")?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
        let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        // SAFETY: sysconf(3) has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Ok(Duration::from_millis(ticks * 1000 / hz))
    }

    /// Now, for [`Server::assert_idle_since`].
    pub fn cpu_mark(&self) -> CpuMark {
        CpuMark {
            cpu: self.cpu_time().unwrap(),
            wall: Instant::now(),
        }
    }

    /// Asserts the server used less than half a core since `mark`: it waited, it did not spin.
    pub fn assert_idle_since(&self, mark: CpuMark) {
        let cpu = self.cpu_time().unwrap() - mark.cpu;
        let wall = mark.wall.elapsed();
        assert!(
            cpu.as_secs_f64() < 0.5 * wall.as_secs_f64(),
            "server used {cpu:?} of CPU in {wall:?}"
        );
    }

    /// The descriptor numbers the server has open now (`/proc/PID/fd`).
    pub fn open_fds(&self) -> anyhow::Result<Vec<u32>> {
        let mut fds = Vec::new();
        for entry in std::fs::read_dir(format!("/proc/{}/fd", self.pid()))? {
            if let Some(n) = entry?.file_name().to_str().and_then(|s| s.parse().ok()) {
                fds.push(n);
            }
        }
        Ok(fds)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Waits until the log holds `what`; fails after [`PATIENCE`].
    pub fn wait_log(&self, what: &str) {
        let until = Instant::now() + PATIENCE;
        while !self.log().contains(what) {
            assert!(Instant::now() < until, "{what:?} never logged");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The configuration file the server was started with (a test may rewrite it and
    /// [`Server::sighup`]).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("tether.toml")
    }

    /// Sends SIGHUP (reload).
    pub fn sighup(&self) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGHUP) };
    }

    /// Kills the process with SIGKILL (no drain, no goodbye) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Connects and logs in as a client's main connection.
    pub fn client(&self, user: &str, device: &str) -> anyhow::Result<(Client, LoginOk)> {
        Client::login(self.addr, user, device, 0, 60_000)
    }

    /// Logs in as [`Server::client`] does, again every 100 ms while the server refuses (it
    /// frees room only once it has seen other connections close); fails after [`PATIENCE`].
    pub fn client_when_room(&self, user: &str, device: &str) -> (Client, LoginOk) {
        eventually(|| {
            self.client(user, device)
                .map_err(|e| format!("{user} never got in: {e:#}"))
        })
    }

    /// Counter `name` of `/api/stats`, summed over the shards.
    pub fn counter(&self, name: &str) -> u64 {
        let stats = http::get(self.api, "/api/stats", &[]).unwrap().json();
        stats["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["counters"][name].as_u64().unwrap_or(0))
            .sum()
    }

    /// Connects and logs in as a backend service.
    pub fn backend(&self, service: &str) -> anyhow::Result<Client> {
        Client::backend(self.addr, service)
    }

    /// Connects and logs in as a backend service that takes upstream messages (protocol
    /// version 2, login flag `UPSTREAM`).
    pub fn upstream_backend(&self, service: &str) -> anyhow::Result<Client> {
        Client::backend_with(self.addr, service, PROTOCOL_VERSION, login_flags::UPSTREAM)
    }
}

impl Client {
    /// Connects to `addr` and logs in as backend service `service`.
    pub fn backend(addr: SocketAddr, service: &str) -> anyhow::Result<Client> {
        Client::backend_with(addr, service, PROTOCOL_VERSION, 0)
    }

    /// Connects to `addr` and logs in as backend service `service` with protocol `version`
    /// and login `flags`.
    pub fn backend_with(
        addr: SocketAddr,
        service: &str,
        version: u8,
        flags: u8,
    ) -> anyhow::Result<Client> {
        let mut c = Client::connect(addr)?;
        let token = backend_minter().backend(service, expiry())?;
        c.send(&Frame::Login(Login {
            version,
            flags,
            user: service.into(),
            device: String::new(),
            token,
            heartbeat_ms: 60_000,
            network_key: String::new(),
        }))?;
        match c.recv()? {
            Frame::LoginOk(_) => Ok(c),
            other => bail!("backend login answered with {other:?}"),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- server log ----\n{}", self.log());
        }
    }
}

/// The client-token minter for [`SECRET`].
pub fn minter() -> Minter {
    Minter::new(&Secret::new(SECRET.as_bytes().to_vec()).expect("test secret is long enough"))
}

/// The backend-token minter for [`BACKEND_SECRET`].
pub fn backend_minter() -> Minter {
    Minter::new(
        &Secret::new(BACKEND_SECRET.as_bytes().to_vec()).expect("test secret is long enough"),
    )
}

/// A token expiry one hour from now.
pub fn expiry() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 3600
}

/// A blocking protocol client, over TCP or TLS.
#[derive(Debug)]
pub struct Client {
    /// The connection (under TLS when `tls` is set: then read and write through the client).
    pub stream: TcpStream,
    /// Received bytes not yet decoded.
    buf: BytesMut,
    /// The TLS session, for a client of the TLS listener ([`tls::connect`]).
    tls: Option<Box<tls::ClientConnection>>,
    /// WebSocket framing, for a client of the WebSocket listener ([`ws::connect`]).
    ws: Option<ws::Framing>,
}

impl Client {
    /// Connects without logging in.
    pub fn connect(addr: SocketAddr) -> anyhow::Result<Client> {
        let stream = TcpStream::connect(addr)?;
        Client::with_stream(stream)
    }

    /// Connects from source address `from` (any of 127.0.0.0/8 on loopback) without logging
    /// in.
    pub fn connect_from(addr: SocketAddr, from: std::net::IpAddr) -> anyhow::Result<Client> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )?;
        socket.bind(&SocketAddr::new(from, 0).into())?;
        socket.connect(&addr.into())?;
        Client::with_stream(socket.into())
    }

    /// Logs in as a client's main connection on an open connection.
    pub fn log_in(mut self, user: &str, device: &str) -> anyhow::Result<(Client, LoginOk)> {
        let token = minter().client(user, device, expiry())?;
        self.send(&Frame::Login(Login {
            version: PROTOCOL_VERSION,
            flags: 0,
            user: user.into(),
            device: device.into(),
            token,
            heartbeat_ms: 60_000,
            network_key: String::new(),
        }))?;
        match self.recv()? {
            Frame::LoginOk(ok) => Ok((self, ok)),
            other => bail!("login of {user}/{device} answered with {other:?}"),
        }
    }

    /// Wraps a connected stream with the test timeouts.
    pub fn with_stream(stream: TcpStream) -> anyhow::Result<Client> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(PATIENCE))?;
        Ok(Client {
            stream,
            buf: BytesMut::new(),
            tls: None,
            ws: None,
        })
    }

    /// Speaks WebSocket from now on (the upgrade was answered): frames are sent in masked
    /// binary messages and read out of the server's messages.
    pub fn with_ws(mut self, leftover: Vec<u8>) -> Client {
        self.ws = Some(ws::Framing::new(leftover));
        self
    }

    /// The WebSocket close code the server sent, once it did.
    pub fn ws_close_code(&self) -> Option<u16> {
        self.ws.as_ref().and_then(|w| w.close_code)
    }

    /// WebSocket Pong frames received so far.
    pub fn ws_pongs(&self) -> usize {
        self.ws.as_ref().map_or(0, |w| w.pongs)
    }

    /// Wraps a connected stream whose TLS handshake `conn` finished.
    pub fn with_tls(stream: TcpStream, conn: tls::ClientConnection) -> anyhow::Result<Client> {
        let mut c = Client::with_stream(stream)?;
        c.tls = Some(Box::new(conn));
        Ok(c)
    }

    /// Writes `bytes` (in a WebSocket message, then through TLS, when on).
    fn write_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let framed;
        let bytes = match &self.ws {
            Some(_) => {
                framed = ws::masked(0x2, bytes);
                &framed[..]
            }
            None => bytes,
        };
        self.write_raw(bytes)
    }

    /// Writes `bytes` as they are, below WebSocket (through TLS when on).
    pub fn write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match &mut self.tls {
            Some(conn) => rustls::Stream::new(&mut **conn, &mut self.stream).write_all(bytes),
            None => self.stream.write_all(bytes),
        }
    }

    /// Reads what arrives next (through TLS, out of WebSocket messages, when on); 0 at the end
    /// of the stream.
    fn read_bytes(&mut self, chunk: &mut [u8]) -> std::io::Result<usize> {
        if self.ws.is_none() {
            return self.read_raw(chunk);
        }
        loop {
            let ws = self.ws.as_mut().expect("checked");
            let n = ws.take(chunk);
            if n > 0 || ws.close_code.is_some() {
                return Ok(n);
            }
            let mut raw = [0u8; 16 * 1024];
            let got = self.read_raw(&mut raw)?;
            if got == 0 {
                return Ok(0);
            }
            self.ws.as_mut().expect("checked").push(&raw[..got]);
        }
    }

    /// Reads what arrives next below WebSocket into `chunk` (through TLS when on).
    pub fn read_exact_raw(&mut self, chunk: &mut [u8]) -> std::io::Result<usize> {
        self.read_raw(chunk)
    }

    /// Reads what arrives next, below WebSocket (through TLS when on).
    fn read_raw(&mut self, chunk: &mut [u8]) -> std::io::Result<usize> {
        match &mut self.tls {
            Some(conn) => match rustls::Stream::new(&mut **conn, &mut self.stream).read(chunk) {
                // A peer that closed without close_notify: the end of the stream here.
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(0),
                r => r,
            },
            None => self.stream.read(chunk),
        }
    }

    /// Connects and logs in as `user` on `device` with protocol `version`.
    pub fn login_version(
        addr: SocketAddr,
        user: &str,
        device: &str,
        version: u8,
    ) -> anyhow::Result<(Client, LoginOk)> {
        Client::login_with(addr, user, device, version, 0, 60_000)
    }

    /// Connects and logs in as `user` on `device` with login `flags`, promising a heartbeat
    /// every `heartbeat_ms`.
    pub fn login(
        addr: SocketAddr,
        user: &str,
        device: &str,
        flags: u8,
        heartbeat_ms: u32,
    ) -> anyhow::Result<(Client, LoginOk)> {
        Client::login_with(addr, user, device, PROTOCOL_VERSION, flags, heartbeat_ms)
    }

    fn login_with(
        addr: SocketAddr,
        user: &str,
        device: &str,
        version: u8,
        flags: u8,
        heartbeat_ms: u32,
    ) -> anyhow::Result<(Client, LoginOk)> {
        let mut c = Client::connect(addr)?;
        let token = minter().client(user, device, expiry())?;
        c.send(&Frame::Login(Login {
            version,
            flags,
            user: user.into(),
            device: device.into(),
            token,
            heartbeat_ms,
            network_key: String::new(),
        }))?;
        match c.recv()? {
            Frame::LoginOk(ok) => Ok((c, ok)),
            other => bail!("login of {user}/{device} answered with {other:?}"),
        }
    }

    /// Logs in a heartbeat probe connection.
    pub fn probe(addr: SocketAddr, user: &str, device: &str) -> anyhow::Result<Client> {
        Ok(Client::login(addr, user, device, login_flags::PROBE, 60_000)?.0)
    }

    /// A second handle on the same connection (e.g. one thread writes, one reads). Only call
    /// it before anything was received, so no buffered bytes are split between the two.
    pub fn try_clone(&self) -> anyhow::Result<Client> {
        assert!(self.buf.is_empty(), "clone a client before receiving on it");
        assert!(
            self.tls.is_none() && self.ws.is_none(),
            "a TLS or WebSocket client has one reader and writer"
        );
        Ok(Client {
            stream: self.stream.try_clone()?,
            buf: BytesMut::new(),
            tls: None,
            ws: None,
        })
    }

    /// Sends one frame.
    pub fn send(&mut self, frame: &Frame) -> anyhow::Result<()> {
        let mut out = BytesMut::new();
        codec::encode(frame, &mut out)?;
        self.write_bytes(&out)?;
        Ok(())
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.write_bytes(bytes)?;
        Ok(())
    }

    /// The next frame; an error on timeout, end of stream or undecodable input.
    pub fn recv(&mut self) -> anyhow::Result<Frame> {
        loop {
            if let Some(frame) = codec::decode_version(&mut self.buf, 1 << 24, PROTOCOL_VERSION)? {
                return Ok(frame);
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.read_bytes(&mut chunk).context("waiting for a frame")?;
            if n == 0 {
                bail!("connection closed by the server");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads until the server closes the connection; returns the frames received before.
    /// Fails if the connection is still open after [`PATIENCE`].
    pub fn until_closed(&mut self) -> anyhow::Result<Vec<Frame>> {
        let until = Instant::now() + PATIENCE;
        let mut frames = Vec::new();
        loop {
            while let Some(frame) = codec::decode_version(&mut self.buf, 1 << 24, PROTOCOL_VERSION)?
            {
                frames.push(frame);
            }
            if Instant::now() > until {
                bail!("still open after {PATIENCE:?}; got {frames:?}");
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.read_bytes(&mut chunk) {
                Ok(0) => return Ok(frames),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(frames),
                Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Whether the server refused this plain TCP connection: the back-off `GoAway(Overloaded)`
    /// came, then the end of the stream (anything else panics). False while the connection is
    /// open and silent, after a wait of 5 ms.
    pub fn refused(&mut self) -> bool {
        self.stream
            .set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        let mut first = [0u8; 64];
        let n = match self.stream.read(&mut first) {
            Ok(0) => panic!("closed without a back-off frame"),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                return false
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                panic!("reset without a back-off frame")
            }
            Err(e) => panic!("{e}"),
        };
        self.stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut answer = BytesMut::from(&first[..n]);
        let mut rest = Vec::new();
        self.stream.read_to_end(&mut rest).unwrap();
        answer.extend_from_slice(&rest);
        match codec::decode(&mut answer, 1 << 16) {
            Ok(Some(Frame::GoAway(g))) if g.reason == tether_proto::CloseCode::Overloaded => {}
            other => panic!("expected GoAway(Overloaded), got {other:?}"),
        }
        assert!(answer.is_empty(), "more after the GoAway: {answer:?}");
        true
    }

    /// Sends a Ping with `lease_ms` and returns the Pong's deadline.
    pub fn ping(&mut self, lease_ms: u32) -> anyhow::Result<u32> {
        self.send(&Frame::Ping(tether_proto::Ping { lease_ms }))?;
        loop {
            match self.recv()? {
                Frame::Pong(p) => return Ok(p.deadline_ms),
                Frame::Push(_) => continue,
                other => bail!("expected Pong, got {other:?}"),
            }
        }
    }
}

/// Calls `attempt` every 100 ms until it succeeds; after [`PATIENCE`], panics with its last
/// error.
pub fn eventually<T>(mut attempt: impl FnMut() -> Result<T, String>) -> T {
    let until = Instant::now() + PATIENCE;
    loop {
        match attempt() {
            Ok(done) => return done,
            Err(why) => assert!(Instant::now() < until, "{why}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A user id whose home is shard `shard` of `n`, starting the search at `prefix`-0.
pub fn user_on_shard(prefix: &str, shard: usize, n: usize) -> String {
    users_on_shard(prefix, shard, n)
        .next()
        .expect("some user maps to every shard")
}

/// The user ids `prefix`-0, `prefix`-1, ... whose home is shard `shard` of `n`.
pub fn users_on_shard(prefix: &str, shard: usize, n: usize) -> impl Iterator<Item = String> + '_ {
    (0..)
        .map(move |i| format!("{prefix}-{i}"))
        .filter(move |u| tether_server::routing::shard_for(u, n) == shard)
}

/// Reads the answers of `clients`, connected while the server has to refuse some, until
/// `want` of them were refused ([`Client::refused`]) or [`PATIENCE`] passed. The refused ones
/// are taken out of `clients`; returns how many they were.
pub fn take_refused(clients: &mut Vec<Client>, want: usize) -> usize {
    let mut refused = 0;
    let until = Instant::now() + PATIENCE;
    while refused < want && Instant::now() < until {
        clients.retain_mut(|c| {
            let gone = c.refused();
            refused += usize::from(gone);
            !gone
        });
    }
    refused
}

/// A payload of `len` bytes.
pub fn payload(len: usize) -> Bytes {
    Bytes::from(vec![0x5a; len])
}

/// Reads a starting server's stdout on a thread and yields the address of its
/// "listening on ADDR" line (the server prints it once its listeners are bound).
pub fn listen_addr(stdout: std::process::ChildStdout) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let addrs = listening(stdout);
    std::thread::spawn(move || {
        if let Ok(a) = addrs.recv() {
            let _ = tx.send(a.addr);
        }
    });
    rx
}

/// The addresses a server printed when it started.
#[derive(Debug)]
pub struct Listening {
    /// "listening on ADDR": the protocol listener.
    pub addr: String,
    /// "api listening on ADDR", if the API is on.
    pub api: Option<String>,
    /// "metrics listening on ADDR", if on.
    pub metrics: Option<String>,
    /// "tls listening on ADDR", if on.
    pub tls: Option<String>,
    /// "websocket listening on ADDR", if on.
    pub websocket: Option<String>,
}

/// Reads a starting server's stdout on a thread; yields its addresses once the
/// "listening on ADDR" line (printed last) arrives.
pub fn listening(stdout: std::process::ChildStdout) -> std::sync::mpsc::Receiver<Listening> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut api, mut metrics, mut tls, mut websocket) = (None, None, None, None);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(a) = line.strip_prefix("websocket listening on ") {
                websocket = Some(a.trim().to_string());
            } else if let Some(a) = line.strip_prefix("tls listening on ") {
                tls = Some(a.trim().to_string());
            } else if let Some(a) = line.strip_prefix("api listening on ") {
                api = Some(a.trim().to_string());
            } else if let Some(a) = line.strip_prefix("metrics listening on ") {
                metrics = Some(a.trim().to_string());
            } else if let Some(addr) = line.strip_prefix("listening on ") {
                let _ = tx.send(Listening {
                    addr: addr.trim().to_string(),
                    api: api.take(),
                    metrics: metrics.take(),
                    tls: tls.take(),
                    websocket: websocket.take(),
                });
            }
        }
    });
    rx
}
