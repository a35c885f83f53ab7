//! The driver: real sockets and a real clock around the sans-IO heartbeat [`Client`].
//!
//! One thread, one `poll(2)` loop. Each turn it carries out the machine's [`Action`]s (open a
//! non-blocking connection, write a frame, close), waits for socket readiness or the machine's
//! next deadline, then feeds back what happened: connects, frames, closes and timeouts. Every
//! socket is created by the thread that calls [`Driver::run`], so a thread that entered a
//! network namespace (`setns`) drives its client inside that namespace.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use tether_proto::heartbeat::{
    Action, Client, ClientEvent, ConnId, Credentials, HeartbeatConfig, HeartbeatConfigError,
    NetMemory,
};
use tether_proto::{Frame, Millis};

use crate::conn::Conn;
use crate::status::{Report, Status};

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
}

impl Driver {
    /// A driver with a fresh machine (nothing remembered).
    pub fn new(opts: Options) -> Result<Driver, DriverError> {
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
            status: Status::default(),
            learned_bounds: None,
            stop: false,
        })
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
        self.stop = false;
        if !self.started {
            self.started = true;
            let now = self.now();
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
            let mut wait = until
                .saturating_duration_since(Instant::now())
                .min(MAX_WAIT);
            if let Some(t) = self.client.poll_timeout() {
                wait = wait.min(Duration::from_millis(t.saturating_sub(now)));
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
        }
        self.refresh();
        Ok(self.status.clone())
    }

    /// Milliseconds on the machine's clock.
    fn now(&self) -> Millis {
        self.epoch.elapsed().as_millis() as Millis
    }

    /// Carries out every pending action and reports every pending event.
    fn pump(&mut self, observe: &mut impl FnMut(&Status, &Report) -> ControlFlow<()>) {
        loop {
            if let Some(action) = self.client.poll_action() {
                self.act(action);
            } else if let Some(event) = self.client.poll_event() {
                self.count(&event);
                self.tell(observe, Report::Event(event));
            } else {
                return;
            }
        }
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
                match Conn::connect(self.opts.server, self.opts.bind) {
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
            Action::Send { conn, frame } => {
                let Some(c) = self.conns.get_mut(&conn) else {
                    return;
                };
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

    /// Socket `id` is ready with `revents`.
    fn ready(
        &mut self,
        id: ConnId,
        revents: i16,
        observe: &mut impl FnMut(&Status, &Report) -> ControlFlow<()>,
    ) {
        let now = self.now();
        let Some(conn) = self.conns.get_mut(&id) else {
            return; // closed by an earlier action of this turn
        };
        if !conn.is_connected() {
            match conn.finish_connect() {
                Ok(()) => self.client.connected(now, id),
                Err(_) => self.fail(id),
            }
            self.pump(observe);
            return;
        }
        if revents & libc::POLLOUT != 0 && conn.flush().is_err() {
            self.fail(id);
            self.pump(observe);
            return;
        }
        if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) == 0 {
            return;
        }
        let open = conn.read();
        // Frames that arrived before a close still count.
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
        if !matches!(open, Ok(true)) {
            self.fail(id);
            self.pump(observe);
        }
    }

    /// Bookkeeping for a frame received on `id`, before the machine sees it.
    fn on_frame(
        &mut self,
        id: ConnId,
        frame: &Frame,
        observe: &mut impl FnMut(&Status, &Report) -> ControlFlow<()>,
    ) {
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
        self.status.interval_ms = self.client.interval_ms();
        (self.status.verified_ms, self.status.failed_ms) = bounds;
        self.status.converged = self.learned_bounds == Some(bounds);
        if !self.status.converged {
            self.status.pongs_converged = 0;
            self.status.max_gap_converged_ms = 0;
        }
        self.status.dead_links = self.client.dead_links();
    }

    fn tell(
        &mut self,
        observe: &mut impl FnMut(&Status, &Report) -> ControlFlow<()>,
        report: Report,
    ) {
        self.refresh();
        if observe(&self.status, &report).is_break() {
            self.stop = true;
        }
    }
}
