//! The driver: real sockets and a real clock around the sans-IO heartbeat [`Client`].
//!
//! One thread, one `poll(2)` loop. Each turn it carries out the machine's [`Action`]s (open a
//! non-blocking connection, write a frame, close), waits for socket readiness, the machine's
//! next deadline, the application's wake time or its doorbell, then feeds back what happened:
//! connects, frames, closes and timeouts. Every socket is created by the thread that calls
//! [`Driver::run`], so a thread that entered a network namespace (`setns`) drives its client
//! inside that namespace.
//!
//! # Protocol version
//!
//! Logins ask for [`PROTOCOL_VERSION`] (2) and each connection decodes the server's frames
//! with the rules of the version its login asked for. A server that does not speak it closes
//! the login with `UnsupportedVersion` (2007); the driver then logs in once more with version 1
//! ([`Report::VersionFallback`]) and stays there. The machine builds the `Login` frames; the
//! driver sets their version and its [`Role`]'s flags as it writes them.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use tether_proto::heartbeat::{
    Action, Client, ClientEvent, ConnId, Credentials, HeartbeatConfig, HeartbeatConfigError,
    NetMemory,
};
use tether_proto::{CloseCode, Frame, Millis, PROTOCOL_V1, PROTOCOL_VERSION};

use crate::conn::{Conn, ConnError};
use crate::control::{Bell, Control, Doorbell, Input};
use crate::role::Role;
use crate::status::{Report, Status};
use crate::tls::Tls;

/// Longest single wait of the loop, so `until` is honoured even when nothing happens.
const MAX_WAIT: Duration = Duration::from_millis(250);

/// What the driver needs to know.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where the server listens.
    pub server: SocketAddr,
    /// Local address every connection binds to; `None` lets the kernel choose.
    pub bind: Option<IpAddr>,
    /// Who logs in.
    pub credentials: Credentials,
    /// The network key the machine learns under (empty: none, nothing is remembered).
    pub network_key: String,
    /// Heartbeat parameters.
    pub heartbeat: HeartbeatConfig,
    /// Seeds the machine's jitter, so a run can be repeated.
    pub seed: u64,
    /// Largest frame body accepted from the server.
    pub max_frame: usize,
    /// Speak TLS to the server (its TLS listener), or plaintext when `None`.
    pub tls: Option<Tls>,
}

/// Why the driver stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The heartbeat parameters cannot work.
    #[error("heartbeat config: {0}")]
    Config(#[from] HeartbeatConfigError),
    /// `poll(2)` itself failed.
    #[error("poll: {0}")]
    Poll(#[source] io::Error),
    /// The doorbell's socket pair could not be made.
    #[error("doorbell: {0}")]
    Doorbell(#[source] io::Error),
}

/// Runs a heartbeat [`Client`] over TCP.
#[derive(Debug)]
pub struct Driver {
    /// Parameters.
    opts: Options,
    /// The sans-IO machine.
    client: Client,
    /// Open connections by the machine's id.
    conns: HashMap<ConnId, Conn>,
    /// The main connection, while one is open.
    main: Option<ConnId>,
    /// When the main connection last sent or received anything.
    main_traffic_at: Millis,
    /// Idle gap before the main connection's outstanding ping.
    ping_gap_ms: Option<u32>,
    /// Time zero of the machine's clock.
    epoch: Instant,
    /// Whether `network_up` was reported.
    started: bool,
    /// Counters and learned state.
    status: Status,
    /// Bounds at the last `Learned` event, to tell whether learning is still converged.
    learned_bounds: Option<(u32, u32)>,
    /// The observer asked to stop.
    stop: bool,
    /// What kind of peer logs in.
    role: Role,
    /// The protocol version logins ask for: [`PROTOCOL_VERSION`], or version 1 once a server
    /// refused it.
    version: u8,
    /// The application's requests, handed to the observer.
    control: Control,
    /// Application frames waiting for the main connection to be logged in.
    unsent: VecDeque<Frame>,
    /// The doorbell's reading end, once one was handed out.
    bell: Option<Bell>,
    /// The application's token callback, when it gave one.
    token_source: Option<Source>,
    /// A login was retried with a new token after `TokenExpired` and has not come online
    /// since: another `TokenExpired` stops the machine instead of asking again, so a source
    /// that only has expired tokens cannot make the driver loop.
    renewing: bool,
}

/// The token callback; its `Debug` shows nothing of it.
struct Source(TokenSource);

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSource")
    }
}

/// Where the driver gets a new token when the current one ends: the application's callback
/// (it may fetch one from its login service, or mint one). `None`: no token now; the
/// connection then closes when its token ends, and the machine stops with `TokenExpired`.
pub type TokenSource = Box<dyn FnMut() -> Option<String>>;

/// The observer of [`Driver::run_app`].
pub trait Observer: FnMut(&mut Control, &Status, &Report) -> ControlFlow<()> {}

impl<F: FnMut(&mut Control, &Status, &Report) -> ControlFlow<()>> Observer for F {}

impl Driver {
    /// A driver with a fresh machine (nothing remembered) for a [`Role::Learner`] client.
    pub fn new(opts: Options) -> Result<Driver, DriverError> {
        Driver::with_role(opts, Role::Learner)
    }

    /// A driver with a fresh machine (nothing remembered) for a peer of kind `role`.
    pub fn with_role(opts: Options, role: Role) -> Result<Driver, DriverError> {
        opts.heartbeat.validate()?;
        let client = Client::new(
            opts.heartbeat.clone(),
            opts.credentials.clone(),
            NetMemory::default(),
            opts.seed,
        );
        Ok(Driver {
            opts,
            client,
            conns: HashMap::new(),
            main: None,
            main_traffic_at: 0,
            ping_gap_ms: None,
            epoch: Instant::now(),
            started: false,
            status: Status {
                version: PROTOCOL_VERSION,
                ..Status::default()
            },
            learned_bounds: None,
            stop: false,
            role,
            version: PROTOCOL_VERSION,
            control: Control::default(),
            unsent: VecDeque::new(),
            bell: None,
            token_source: None,
            renewing: false,
        })
    }

    /// Starts the machine from what was learned about networks before (`NetMemory`, which an
    /// app persists between runs), instead of from nothing. Before the first `run`.
    pub fn with_memory(mut self, memory: NetMemory) -> Driver {
        self.client = Client::new(
            self.opts.heartbeat.clone(),
            self.opts.credentials.clone(),
            memory,
            self.opts.seed,
        );
        self
    }

    /// Sets the callback that gives a new token when the server says the connection's token
    /// ends (`TokenNotice`, version 2): the driver sends it as a `Refresh`, and later logins
    /// use it. When a login is refused with `TokenExpired` (a version-1 server, or a token
    /// that ran out while offline) the driver asks once more and logs in again with the
    /// answer. Each call is reported as [`Report::TokenWanted`].
    pub fn set_token_source(&mut self, source: impl FnMut() -> Option<String> + 'static) {
        self.token_source = Some(Source(Box::new(source)));
    }

    /// A doorbell for another thread: each ring makes the driver report [`Report::Wake`].
    pub fn doorbell(&mut self) -> Result<Doorbell, DriverError> {
        if self.bell.is_none() {
            self.bell = Some(Bell::new().map_err(DriverError::Doorbell)?);
        }
        Ok(self.bell.as_ref().expect("made above").doorbell())
    }

    /// The machine, for inspection.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Counters and learned state so far.
    pub fn status(&self) -> &Status {
        &self.status
    }

    /// Drives the machine until `until` or until `observe` breaks; `observe` sees every report
    /// with the status after it. Returns the final status. Connections stay open, so `run` may
    /// be called again to continue.
    pub fn run(
        &mut self,
        until: Instant,
        mut observe: impl FnMut(&Status, &Report) -> ControlFlow<()>,
    ) -> Result<Status, DriverError> {
        self.run_app(until, |_: &mut Control, s: &Status, r: &Report| {
            observe(s, r)
        })
    }

    /// [`run`](Self::run) for an application that also sends frames and sets timers: its
    /// observer gets a [`Control`] with every report, and the driver carries out what it asked
    /// for once it returns.
    pub fn run_app(
        &mut self,
        until: Instant,
        mut observe: impl Observer,
    ) -> Result<Status, DriverError> {
        self.stop = false;
        if !self.started {
            self.started = true;
            let now = self.now();
            if self.role.foreground() {
                self.client.set_foreground(now, true);
            }
            self.client.network_up(now, &self.opts.network_key);
        }
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let mut ids: Vec<ConnId> = Vec::new();
        loop {
            self.pump(&mut observe);
            if self.stop || Instant::now() >= until {
                break;
            }
            let now = self.now();
            if self.client.poll_timeout().is_some_and(|t| now >= t) {
                self.client.handle_timeout(now);
                continue;
            }
            if self
                .control
                .wake_time()
                .is_some_and(|t| Instant::now() >= t)
            {
                self.control.woken();
                self.tell(&mut observe, Report::Wake);
                continue;
            }
            fds.clear();
            ids.clear();
            for (&id, conn) in &self.conns {
                fds.push(libc::pollfd {
                    fd: conn.fd(),
                    events: conn.interest(),
                    revents: 0,
                });
                ids.push(id);
            }
            if let Some(bell) = &self.bell {
                fds.push(libc::pollfd {
                    fd: bell.fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            let mut wait = until
                .saturating_duration_since(Instant::now())
                .min(MAX_WAIT);
            if let Some(t) = self.client.poll_timeout() {
                wait = wait.min(Duration::from_millis(t.saturating_sub(now)));
            }
            if let Some(t) = self.control.wake_time() {
                wait = wait.min(t.saturating_duration_since(Instant::now()));
            }
            // Round up: waking a millisecond early would only spin once more.
            let wait_ms = wait.as_micros().div_ceil(1000) as libc::c_int;
            // SAFETY: `fds` is a valid, exclusively borrowed array of `fds.len()` pollfds.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(DriverError::Poll(e));
            }
            for (pfd, &id) in fds.iter().zip(&ids) {
                if pfd.revents != 0 {
                    self.ready(id, pfd.revents, &mut observe);
                }
            }
            // The bell's entry, when there is one, follows the connections'.
            if fds.get(ids.len()).is_some_and(|pfd| pfd.revents != 0) {
                if let Some(bell) = &mut self.bell {
                    bell.drain();
                }
                self.tell(&mut observe, Report::Wake);
            }
        }
        self.refresh();
        Ok(self.status.clone())
    }

    /// Milliseconds on the machine's clock.
    fn now(&self) -> Millis {
        self.epoch.elapsed().as_millis() as Millis
    }

    /// Carries out every pending action and reports every pending event.
    fn pump(&mut self, observe: &mut impl Observer) {
        loop {
            if let Some(action) = self.client.poll_action() {
                self.act(action);
            } else if let Some(event) = self.client.poll_event() {
                if let ClientEvent::Stopped {
                    code: CloseCode::UnsupportedVersion,
                } = event
                {
                    if self.version > PROTOCOL_V1 {
                        self.fall_back(observe);
                        continue;
                    }
                }
                if let ClientEvent::Stopped {
                    code: CloseCode::TokenExpired,
                } = event
                {
                    if self.renew_after_expiry(observe) {
                        continue;
                    }
                }
                let notice = match &event {
                    ClientEvent::Received(Frame::TokenNotice(n)) => Some(n.expires_in_ms),
                    _ => None,
                };
                if notice.is_some() {
                    self.status.token_notices += 1;
                }
                if let ClientEvent::Received(Frame::Refreshed) = &event {
                    self.status.token_refreshes += 1;
                }
                self.count(&event);
                self.tell(observe, Report::Event(event));
                if let Some(expires_in_ms) = notice {
                    self.refresh_token(expires_in_ms, observe);
                }
            } else {
                return;
            }
        }
    }

    /// The server gave notice that the token ends in `expires_in_ms`: asks the token source
    /// for a new one and sends it as a `Refresh` on the main connection.
    fn refresh_token(&mut self, expires_in_ms: u32, observe: &mut impl Observer) {
        let Some(source) = self.token_source.as_mut() else {
            return;
        };
        let token = (source.0)();
        let got = token.is_some();
        if let Some(token) = token {
            self.client.set_token(token.clone());
            self.opts.credentials.token = token.clone();
            let now = self.now();
            self.client
                .send(now, Frame::Refresh(tether_proto::Refresh { token }));
        }
        self.tell(observe, Report::TokenWanted { expires_in_ms, got });
    }

    /// A login or connection ended with `TokenExpired`: with a new token from the source,
    /// starts again. Whether it did.
    fn renew_after_expiry(&mut self, observe: &mut impl Observer) -> bool {
        if self.renewing {
            return false;
        }
        let Some(source) = self.token_source.as_mut() else {
            return false;
        };
        let token = (source.0)();
        let got = token.is_some();
        if let Some(token) = token {
            self.renewing = true;
            self.opts.credentials.token = token;
            let now = self.now();
            self.client.restart(now, self.opts.credentials.clone());
        }
        self.tell(
            observe,
            Report::TokenWanted {
                expires_in_ms: 0,
                got,
            },
        );
        got
    }

    /// The server refused the login's version: log in again, once, with version 1.
    fn fall_back(&mut self, observe: &mut impl Observer) {
        let from = self.version;
        self.version = PROTOCOL_V1;
        self.status.version = PROTOCOL_V1;
        let now = self.now();
        self.client.restart(now, self.opts.credentials.clone());
        self.tell(
            observe,
            Report::VersionFallback {
                from,
                to: PROTOCOL_V1,
            },
        );
    }

    fn act(&mut self, action: Action) {
        let now = self.now();
        match action {
            Action::Connect { conn, probe } => {
                if probe {
                    self.status.probes += 1;
                } else {
                    self.status.main_connects += 1;
                    self.main = Some(conn);
                    self.ping_gap_ms = None;
                    self.main_traffic_at = now;
                }
                let tls = self.opts.tls.as_ref();
                match Conn::connect(self.opts.server, self.opts.bind, self.version, tls) {
                    Ok(c) => {
                        let connected = c.is_connected();
                        self.conns.insert(conn, c);
                        if connected {
                            self.client.connected(now, conn);
                        }
                    }
                    Err(_) => {
                        self.status.io_errors += 1;
                        self.client.disconnected(now, conn);
                    }
                }
            }
            Action::Send { conn, mut frame } => {
                let Some(c) = self.conns.get_mut(&conn) else {
                    return;
                };
                if let Frame::Login(login) = &mut frame {
                    login.version = self.version;
                    if self.main == Some(conn) {
                        login.flags |= self.role.login_flags();
                    }
                }
                if self.main == Some(conn) {
                    if let Frame::Ping(_) = frame {
                        self.status.pings += 1;
                        let gap = now.saturating_sub(self.main_traffic_at);
                        self.ping_gap_ms = Some(u32::try_from(gap).unwrap_or(u32::MAX));
                    }
                    self.main_traffic_at = now;
                }
                if c.send(&frame).is_err() {
                    self.fail(conn);
                }
            }
            Action::Close { conn } => {
                // Dropping the socket closes it.
                self.conns.remove(&conn);
                if self.main == Some(conn) {
                    self.main = None;
                }
            }
        }
    }

    /// `conn` broke: forget it and tell the machine.
    fn fail(&mut self, conn: ConnId) {
        if self.conns.remove(&conn).is_some() {
            self.status.io_errors += 1;
            if self.main == Some(conn) {
                self.main = None;
            }
            let now = self.now();
            self.client.disconnected(now, conn);
        }
    }

    /// `conn` broke with `error`: a TLS failure is reported (it names its cause and will not
    /// go away by itself), then the connection is forgotten as any other.
    fn broke(&mut self, conn: ConnId, error: ConnError, observe: &mut impl Observer) {
        self.fail(conn);
        if let ConnError::Tls(failure) = error {
            self.status.tls_failures += 1;
            self.tell(observe, Report::TlsFailed(failure));
        }
        self.pump(observe);
    }

    /// Socket `id` is ready with `revents`.
    fn ready(&mut self, id: ConnId, revents: i16, observe: &mut impl Observer) {
        let now = self.now();
        let Some(conn) = self.conns.get_mut(&id) else {
            return; // closed by an earlier action of this turn
        };
        let read = if !conn.is_connected() {
            match conn.establish() {
                Ok(false) => return,
                Ok(true) => {
                    self.client.connected(now, id);
                    self.pump(observe);
                    // A TLS server's first records may have come with the end of the handshake.
                    Ok(true)
                }
                Err(e) => return self.broke(id, e, observe),
            }
        } else {
            if revents & libc::POLLOUT != 0 {
                if let Err(e) = conn.flush() {
                    return self.broke(id, e, observe);
                }
            }
            if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) == 0 {
                return;
            }
            conn.read()
        };
        // Frames that arrived before a close or an error still count.
        loop {
            let Some(conn) = self.conns.get_mut(&id) else {
                return; // the machine closed it after an earlier frame
            };
            match conn.next_frame(self.opts.max_frame) {
                Ok(Some(frame)) => {
                    self.on_frame(id, &frame, observe);
                    self.client.handle_frame(now, id, frame);
                    self.pump(observe);
                }
                Ok(None) => break,
                Err(_) => {
                    // Undecodable input: the connection is unusable.
                    self.fail(id);
                    self.pump(observe);
                    return;
                }
            }
        }
        match read {
            Ok(true) => {}
            Ok(false) => {
                self.fail(id);
                self.pump(observe);
            }
            Err(e) => self.broke(id, e, observe),
        }
    }

    /// Bookkeeping for a frame received on `id`, before the machine sees it.
    fn on_frame(&mut self, id: ConnId, frame: &Frame, observe: &mut impl Observer) {
        if self.main != Some(id) {
            return;
        }
        self.main_traffic_at = self.now();
        if let (Frame::Pong(_), Some(gap_ms)) = (frame, self.ping_gap_ms.take()) {
            self.status.pongs += 1;
            self.refresh();
            if self.status.converged {
                let max = &mut self.status.max_gap_converged_ms;
                *max = (*max).max(gap_ms);
                self.status.pongs_converged += 1;
            }
            self.tell(observe, Report::Pong { gap_ms });
        }
    }

    fn count(&mut self, event: &ClientEvent) {
        match event {
            ClientEvent::Online { .. } => self.renewing = false,
            ClientEvent::Offline => self.status.main_losses += 1,
            ClientEvent::Learned {
                verified_ms,
                failed_ms,
            } => {
                self.learned_bounds = Some((*verified_ms, *failed_ms));
                self.status.pongs_converged = 0;
                self.status.max_gap_converged_ms = 0;
            }
            _ => {}
        }
    }

    /// Refreshes the status from the machine.
    fn refresh(&mut self) {
        let learner = self.client.learner();
        let bounds = (learner.verified_ms(), learner.failed_ms());
        self.status.elapsed_ms = self.now();
        self.status.online = self.client.is_online();
        self.status.max_frame = self.client.max_frame().unwrap_or(0);
        self.status.interval_ms = self.client.interval_ms();
        (self.status.verified_ms, self.status.failed_ms) = bounds;
        self.status.converged = self.learned_bounds == Some(bounds);
        if !self.status.converged {
            self.status.pongs_converged = 0;
            self.status.max_gap_converged_ms = 0;
        }
        self.status.dead_links = self.client.dead_links();
    }

    /// Hands what the operating system told the app to the machine.
    fn apply(&mut self, input: Input) {
        let now = self.now();
        match input {
            Input::NetworkUp(key) => {
                self.client.network_up(now, &key);
                self.opts.network_key = key;
            }
            Input::NetworkDown => self.client.network_down(now),
            Input::Foreground(on) => self.client.set_foreground(now, on),
            Input::Token(token) => {
                self.client.set_token(token.clone());
                self.opts.credentials.token = token.clone();
                if self.client.is_online() && self.version > PROTOCOL_V1 {
                    self.client
                        .send(now, Frame::Refresh(tether_proto::Refresh { token }));
                }
            }
            Input::Restart => self.client.restart(now, self.opts.credentials.clone()),
        }
    }

    /// Shows `report` to the observer, then hands the frames it asked for to the machine.
    fn tell(&mut self, observe: &mut impl Observer, report: Report) {
        self.refresh();
        if observe(&mut self.control, &self.status, &report).is_break() {
            self.stop = true;
        }
        let inputs: Vec<Input> = self.control.take_inputs().collect();
        for input in inputs {
            self.apply(input);
        }
        self.unsent.extend(self.control.take_frames());
        // While the main connection is not logged in, frames wait for `Online`.
        if self.client.is_online() {
            let now = self.now();
            for frame in self.unsent.drain(..) {
                let sent = self.client.send(now, frame);
                debug_assert!(sent, "the machine is online");
            }
        }
    }
}
