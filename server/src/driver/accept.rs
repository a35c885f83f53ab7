//! What a shard does with each completion of its multishot accept: set the socket's options,
//! ask admission, refuse with a back-off frame, and, when accepting fails, refuse the waiting
//! connections through the reserve descriptor and pause instead of retrying in a loop.
//!
//! An accepted socket is a descriptor of the process until the driver moves it into its ring's
//! file table (`shard/files.rs`), so everything here works on it as on any socket. When that
//! table is full the connection is refused with the back-off too ([`AcceptGate::table_full`]).
//!
//! The driver (`shard.rs`) owns the ring and the listener; [`AcceptGate::on_completion`] tells
//! it what to do with the accept request ([`Rearm`]) and [`AcceptGate::resume`] when a pause
//! is over. Which errors pause is the pure function [`on_error`].
//!
//! The gate never holds the core: it reads the shard's [`Admission`] (refusal windows, address
//! keys) and returns what it decided ([`Gated`]). The driver then asks the core to open a
//! connection for the new socket ([`Core::open_from`](crate::core::Core::open_from)), adds the
//! gate's counts, and hands a socket the core refused back to [`AcceptGate::refuse`].

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use tracing::{debug, warn};

use crate::config::KeepaliveConfig;
use crate::core::admission::{AddrKey, Admission, Reason, Refusal};
use crate::core::Now;
use crate::counters::Counter;
use crate::listener;
use crate::overload::{self, Reserve};
use crate::ratelog::RateLog;

/// Most waiting connections refused through the reserve per failed accept.
const RESERVE_BATCH: usize = 128;
/// Smallest time between two log lines about failing accepts, per shard.
const LOG_PERIOD_MS: u64 = 10_000;

/// What the driver does with its accept request after a completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rearm {
    /// Nothing: the multishot accept is still armed, or was cancelled on purpose.
    Keep,
    /// The kernel ended the multishot accept: arm it again.
    Now,
    /// Stop accepting (cancel the request if the kernel did not end it) until
    /// [`AcceptGate::resume`] says so.
    Pause,
}

/// What the gate made of one accept completion; the driver carries it out.
#[derive(Debug)]
pub struct Gated {
    /// What to do with the accept request.
    pub rearm: Rearm,
    /// A new socket for the core to let in or refuse.
    pub arrival: Option<Arrival>,
    /// What to add to the shard's counters (refusals, accept errors, pauses).
    pub counts: Vec<(Counter, u64)>,
}

/// A new socket with its options set, waiting for the core's admission.
#[derive(Debug)]
pub struct Arrival {
    /// Its descriptor: the driver files it under the connection the core opens, or gives it
    /// back to [`AcceptGate::refuse`].
    pub fd: RawFd,
    /// Its peer's address key (the balancer's when `proxy`).
    pub peer: AddrKey,
    /// Its first bytes must be a PROXY protocol header.
    pub proxy: bool,
    /// Whether its listener's connections read tether frames from the first byte (else a
    /// refusal sends nothing).
    tether: bool,
}

/// What a failed accept calls for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorAction {
    /// Our own cancel: nothing.
    Ignore,
    /// A connection that went away before it was accepted, or an interrupted call: carry on.
    Retry,
    /// The process or the system is out of descriptors: refuse waiting connections through
    /// the reserve, then pause.
    OutOfDescriptors,
    /// Anything else (out of memory or buffers, ...): pause, since retrying at once fails
    /// again at once.
    Pause,
}

/// The action for an accept that failed with `errno`.
pub fn on_error(errno: i32) -> ErrorAction {
    match errno {
        libc::ECANCELED => ErrorAction::Ignore,
        libc::ECONNABORTED | libc::EINTR | libc::EAGAIN | libc::EPROTO => ErrorAction::Retry,
        libc::EMFILE | libc::ENFILE => ErrorAction::OutOfDescriptors,
        _ => ErrorAction::Pause,
    }
}

/// The settings of a shard's [`AcceptGate`] and admission.
#[derive(Clone, Debug)]
pub struct GateConfig {
    /// Keepalive settings of accepted sockets.
    pub keepalive: KeepaliveConfig,
    /// TCP_USER_TIMEOUT of accepted sockets (0 = kernel default).
    pub user_timeout_ms: u32,
    /// Connections start with a PROXY protocol header.
    pub proxy_protocol: bool,
    /// The shard's share of `[limits]`.
    pub limits: crate::core::admission::LimitsConfig,
    /// The address-key hasher, the same on every shard.
    pub hasher: std::hash::RandomState,
    /// The process's reserve descriptors, shared by the shards.
    pub reserve: Arc<Mutex<Reserve>>,
}

/// A shard's accept policy and the state it needs. See the [module documentation](self).
#[derive(Debug)]
pub struct AcceptGate {
    /// Keepalive settings of accepted sockets.
    keepalive: KeepaliveConfig,
    /// TCP_USER_TIMEOUT of accepted sockets (0 = kernel default).
    user_timeout_ms: u32,
    /// Connections start with a PROXY protocol header.
    proxy_protocol: bool,
    /// How long to stop accepting after a failed accept.
    pause_ms: u64,
    /// Accepting resumes then (monotonic ms), while paused.
    paused_until: Option<u64>,
    /// Descriptors given back to refuse connections when the process has none (shared by all
    /// shards, see [`Reserve`]).
    reserve: Arc<Mutex<Reserve>>,
    /// Bounds the log lines about failing accepts.
    log: RateLog,
    /// Bounds the log lines about a full file table.
    table_log: RateLog,
    /// Scratch for the back-off frame.
    frame: BytesMut,
    /// Whether the completion being handled comes from a listener whose connections read
    /// tether frames from the first byte (else refusals send nothing).
    tether: bool,
    /// The shard's index, for log lines.
    shard: usize,
}

impl AcceptGate {
    /// A gate for shard `shard`; opens its reserve descriptor.
    pub fn new(shard: usize, cfg: &GateConfig) -> AcceptGate {
        AcceptGate {
            keepalive: cfg.keepalive.clone(),
            user_timeout_ms: cfg.user_timeout_ms,
            proxy_protocol: cfg.proxy_protocol,
            pause_ms: cfg.limits.accept_pause_ms,
            paused_until: None,
            reserve: Arc::clone(&cfg.reserve),
            log: RateLog::new(LOG_PERIOD_MS),
            table_log: RateLog::new(LOG_PERIOD_MS),
            frame: BytesMut::new(),
            tether: true,
            shard,
        }
    }

    /// One completion of the multishot accept: `result` is a descriptor or `-errno`, `more`
    /// whether the request stays armed. `listener` is `None` once draining; `tether`: whether
    /// its connections speak tether from their first byte (not the TLS or WebSocket
    /// listener's, which cannot read a back-off frame before their handshake: they are refused
    /// by closing). `room`: whether the shard's file table has a free slot for the socket.
    /// `admission`: the shard's, for back-off windows and the peer's address key.
    #[allow(clippy::too_many_arguments)]
    pub fn on_completion(
        &mut self,
        result: i32,
        more: bool,
        listener: Option<RawFd>,
        tether: bool,
        room: bool,
        admission: &Admission,
        now: Now,
    ) -> Gated {
        self.tether = tether;
        let mut gated = Gated {
            rearm: if more { Rearm::Keep } else { Rearm::Now },
            arrival: None,
            counts: Vec::new(),
        };
        if result >= 0 {
            if self.took_the_reserve(result, admission) {
                gated.counts.push((Counter::RefusedDescriptors, 1));
                return gated;
            }
            if !room {
                gated.counts.push((self.table_full(now), 1));
                let window = admission.refusal(Reason::Descriptors).window_ms;
                backoff(&mut self.frame, self.tether, window);
                overload::refuse(result, &self.frame);
                return gated;
            }
            gated.arrival = Some(self.on_socket(result, admission));
            return gated;
        }
        let errno = -result;
        let action = on_error(errno);
        if action == ErrorAction::Ignore {
            gated.rearm = Rearm::Keep;
            return gated;
        }
        gated.counts.push((Counter::AcceptErrors, 1));
        if action == ErrorAction::Retry {
            return gated;
        }
        if action == ErrorAction::OutOfDescriptors && self.had_a_burst() {
            // The burst's own sockets filled the process's table before any reached the
            // ring's; they are in it now (handled before this completion) and their process
            // descriptors are closed: accept on at once.
            return gated;
        }
        let mut refused = 0;
        if action == ErrorAction::OutOfDescriptors {
            if let Some(l) = listener {
                let window = admission.refusal(Reason::Descriptors).window_ms;
                backoff(&mut self.frame, self.tether, window);
                // A poisoned lock only means another shard panicked while refusing; the
                // reserve itself is still sound.
                let mut reserve = self.reserve.lock().unwrap_or_else(|e| e.into_inner());
                refused = reserve.refuse_waiting(l, &self.frame, RESERVE_BATCH);
                gated
                    .counts
                    .push((Counter::RefusedDescriptors, refused as u64));
            }
        }
        gated.counts.push((Counter::AcceptPauses, 1));
        if let Some(suppressed) = self.log.hit(now.ms) {
            warn!(
                shard = self.shard,
                errno,
                error = %std::io::Error::from_raw_os_error(errno),
                refused,
                pause_ms = self.pause_ms,
                suppressed,
                "accept failed: refusing waiting connections with a back-off and pausing accepts"
            );
        }
        self.paused_until = Some(now.ms + self.pause_ms);
        gated.rearm = Rearm::Pause;
        gated
    }

    /// The core refused `arrival`: the back-off with the refusal's window (when its listener's
    /// connections can read one), then a close; `None`: a close without a word.
    pub fn refuse(&mut self, arrival: Arrival, refusal: Option<Refusal>) {
        match refusal {
            Some(refusal) => {
                backoff(&mut self.frame, arrival.tether, refusal.window_ms);
                overload::refuse(arrival.fd, &self.frame);
            }
            None => overload::refuse(arrival.fd, &[]),
        }
    }

    /// Whether a pause just ended at `now`: the driver arms the accept again.
    pub fn resume(&mut self, now: Now) -> bool {
        match self.paused_until {
            Some(until) if now.ms >= until => {
                self.paused_until = None;
                true
            }
            _ => false,
        }
    }

    /// Whether an `EMFILE` came from a burst of accepts rather than a process out of
    /// descriptors: every accepted socket passes through the process's table until the driver
    /// moves it into the ring's, and one wait of the ring may accept thousands at once. When
    /// the reserve is whole and the process has a descriptor to spare now, those sockets have
    /// left the process's table already.
    fn had_a_burst(&mut self) -> bool {
        let mut reserve = self.reserve.lock().unwrap_or_else(|e| e.into_inner());
        reserve.refill() && overload::spare_descriptor()
    }

    /// Keeps the reserve whole: when it is short (another shard gave a descriptor back to
    /// refuse connections, and this shard's accept, running in the kernel meanwhile, took that
    /// number), the accepted socket `fd` is refused with the back-off, which frees its number
    /// for the reserve again. Without this the reserve drains away and, out of descriptors,
    /// waiting connections are never answered. Returns whether `fd` was refused.
    fn took_the_reserve(&mut self, fd: RawFd, admission: &Admission) -> bool {
        let mut reserve = self.reserve.lock().unwrap_or_else(|e| e.into_inner());
        if reserve.is_full() || reserve.refill() {
            return false;
        }
        let window = admission.refusal(Reason::Descriptors).window_ms;
        backoff(&mut self.frame, self.tether, window);
        overload::refuse(fd, &self.frame);
        reserve.refill();
        true
    }

    /// A connection is refused because the shard's file table is full (at accept, or arriving
    /// from another shard): logged at most once per period; returns the counter the caller
    /// adds it to. Accepting goes on: every connection beyond the table hears the back-off at
    /// once, and the table frees slots as connections end.
    pub fn table_full(&mut self, now: Now) -> Counter {
        if let Some(suppressed) = self.table_log.hit(now.ms) {
            warn!(
                shard = self.shard,
                suppressed,
                "the shard's io_uring file table is full: refusing connections with a back-off \
                 (its size is the open-files limit or the shard's share of max_connections; \
                 more shards hold more)"
            );
        }
        Counter::RefusedRingTable
    }

    /// A new socket: its options, and who it comes from, for the core's admission.
    fn on_socket(&mut self, fd: RawFd, admission: &Admission) -> Arrival {
        if let Err(e) = listener::configure(fd, &self.keepalive, self.user_timeout_ms) {
            debug!(error = %e, "socket options failed");
        }
        Arrival {
            fd,
            peer: listener::peer_ip(fd).map_or(Default::default(), |ip| admission.key(ip)),
            proxy: self.proxy_protocol,
            tether: self.tether,
        }
    }
}

/// Puts the back-off frame with `window_ms` in `frame`: nothing when the listener's
/// connections (`tether` false: TLS, WebSocket) cannot read it before their handshake.
fn backoff(frame: &mut BytesMut, tether: bool, window_ms: u32) {
    frame.clear();
    if tether {
        overload::backoff(window_ms, frame);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_actions() {
        assert_eq!(on_error(libc::ECANCELED), ErrorAction::Ignore);
        assert_eq!(on_error(libc::ECONNABORTED), ErrorAction::Retry);
        assert_eq!(on_error(libc::EMFILE), ErrorAction::OutOfDescriptors);
        assert_eq!(on_error(libc::ENFILE), ErrorAction::OutOfDescriptors);
        assert_eq!(on_error(libc::ENOBUFS), ErrorAction::Pause);
        assert_eq!(on_error(libc::ENOMEM), ErrorAction::Pause);
    }
}
