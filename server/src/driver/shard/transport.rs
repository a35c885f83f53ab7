//! The driver's side of a connection's layers (TLS, WebSocket; `layers.rs` is the sans-IO
//! part): the TLS and WebSocket listeners, received bytes up through the layers to the core,
//! the core's bytes down through them, the order of bytes on the wire, the handshake budget,
//! and what ends a layered connection.

use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::sync::Arc;

use bytes::Bytes;
use tracing::{debug, warn};

use super::files::Socket;
use super::layered::Transport;
use super::{InFlight, Shard};
use crate::core::{ConnId, Now};
use crate::counters::Counter;
use crate::driver::accept::{Arrival, Rearm};
use crate::driver::ring::{user_data, Completion, Tag, ACCEPT_TLS, ACCEPT_WS};
use crate::layers::{LayerError, Layers, WsRules};
use crate::overload;
use crate::tls::TlsConn;
use crate::ws::WsConn;

/// A shard's TLS listener and the state its handshakes share.
pub(super) struct TlsShard {
    /// The TLS listener while accepting (`None` without one: the budget then serves
    /// `wss://` alone).
    pub(super) listener: Option<OwnedFd>,
    /// Certificates and policy for new handshakes.
    pub(super) config: Arc<rustls::ServerConfig>,
    /// Handshake steps per batch.
    pub(super) per_batch: u32,
    /// Handshake steps left in this batch.
    pub(super) budget: u32,
    /// Connections whose handshake bytes wait for the next batch's budget.
    pub(super) deferred: Vec<ConnId>,
}

/// A shard's WebSocket listener.
pub(super) struct WsShard {
    /// The listener while accepting.
    pub(super) listener: Option<OwnedFd>,
    /// Path, origins, largest message.
    pub(super) rules: WsRules,
    /// `wss://`: the TLS configuration (ALPN `http/1.1`).
    pub(super) tls: Option<Arc<rustls::ServerConfig>>,
}

/// A WebSocket listener's TLS configuration: `[tls]`'s, with the ALPN browsers offer.
pub(crate) fn for_websocket(config: &Arc<rustls::ServerConfig>) -> Arc<rustls::ServerConfig> {
    let mut c = rustls::ServerConfig::clone(config);
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

/// Which listener an accept came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum From {
    /// `server.listen`.
    Plain,
    /// `tls.listen`.
    Tls,
    /// `websocket.listen`.
    Ws,
}

impl Shard {
    /// A multishot accept produced a socket (or an error).
    pub(super) fn on_accept(&mut self, c: Completion, now: Now) {
        let from = if c.user_data & ACCEPT_TLS != 0 {
            From::Tls
        } else if c.user_data & ACCEPT_WS != 0 {
            From::Ws
        } else {
            From::Plain
        };
        let listener = match from {
            From::Plain => self.listener.as_ref(),
            From::Tls => self.tls.as_ref().and_then(|t| t.listener.as_ref()),
            From::Ws => self.ws.as_ref().and_then(|w| w.listener.as_ref()),
        }
        .map(|l| l.as_raw_fd());
        let tether = from == From::Plain;
        let room = self.files.has_room();
        let gated = self.gate.on_completion(
            c.result,
            c.more(),
            listener,
            tether,
            room,
            self.core.admission(),
            now,
        );
        for &(counter, n) in &gated.counts {
            self.core.count(counter, n);
        }
        if let Some(arrival) = gated.arrival {
            self.admit(arrival, from, now);
        }
        self.execute(now);
        match (gated.rearm, listener) {
            (Rearm::Now, Some(l)) => self.ring.accept(l, accept_tag(from)),
            (Rearm::Pause, _) => self.ring.cancel_accept(),
            _ => {}
        }
    }

    /// A new socket from listener `from`: the core opens a connection for it (the socket is
    /// filed under it) or refuses it (the gate sends the back-off and closes it).
    fn admit(&mut self, arrival: Arrival, from: From, now: Now) {
        let id = match self.core.open_from(arrival.peer, arrival.proxy, now) {
            Ok(id) => id,
            Err(refusal) => return self.gate.refuse(arrival, refusal),
        };
        // SAFETY: the accept's new descriptor, handed over by the gate; nobody else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(arrival.fd) };
        match self.layers_for(from) {
            Ok(layers) => self.install(id, fd, layers.map(Transport::new), now),
            Err(e) => {
                warn!(shard = self.index, error = %e, "TLS connection could not start");
                self.install(id, fd, None, now);
                self.core.on_transport_failed(id);
            }
        }
    }

    /// The layers of a connection from listener `from`.
    fn layers_for(&self, from: From) -> Result<Option<Layers>, rustls::Error> {
        let tls = match from {
            From::Plain => return Ok(None),
            From::Tls => self.tls.as_ref().map(|t| Arc::clone(&t.config)),
            From::Ws => self.ws.as_ref().and_then(|w| w.tls.clone()),
        };
        Ok(Some(Layers {
            tls: tls.map(TlsConn::new).transpose()?,
            ws: (from == From::Ws).then(WsConn::new),
        }))
    }

    /// Arms the accept of every listener still open.
    pub(super) fn arm_accepts(&mut self) {
        if let Some(l) = &self.listener {
            self.ring.accept(l.as_raw_fd(), 0);
        }
        if let Some(l) = self.tls.as_ref().and_then(|t| t.listener.as_ref()) {
            self.ring.accept(l.as_raw_fd(), ACCEPT_TLS);
        }
        if let Some(l) = self.ws.as_ref().and_then(|w| w.listener.as_ref()) {
            self.ring.accept(l.as_raw_fd(), ACCEPT_WS);
        }
    }

    /// Sends the core's `bytes` down through `id`'s layers, after its bytes in flight. Before
    /// the layers carry the protocol (a handshake or upgrade not done) there is nobody to
    /// read them: the send fails.
    pub(super) fn send_layered(&mut self, id: ConnId, bytes: &[u8]) {
        let mut bufs = std::mem::take(&mut self.bufs);
        let wrapped = match self.transport(id) {
            Some(t) => t.layers.wrap(bytes, &mut bufs),
            None => Ok(()),
        };
        match wrapped {
            Ok(()) => self.send_down(id, &bufs.wire, Some(bytes.len())),
            Err(e) => {
                debug!(key = id.key, error = %e, "send refused by the connection's layers");
                self.feedback.push(super::Feedback::NotConnected(id));
            }
        }
        self.bufs = bufs;
    }

    /// Sends `wire` to layered connection `id`, or queues it behind its send in flight.
    /// `report`: the core's bytes among them.
    fn send_down(&mut self, id: ConnId, wire: &[u8], report: Option<usize>) {
        if wire.is_empty() && report.is_none() {
            return;
        }
        let Some(t) = self.transport(id) else {
            return;
        };
        if t.busy {
            t.queued.extend_from_slice(wire);
            if report.is_some() {
                t.queued_report = report;
            }
            return;
        }
        t.busy = true;
        // Bytes left for the connection's last word (a Close echo) go first.
        let bytes = if t.queued.is_empty() {
            Bytes::copy_from_slice(wire)
        } else {
            let mut all = std::mem::take(&mut t.queued);
            all.extend_from_slice(wire);
            Bytes::from(all)
        };
        self.start(id, InFlight::new(bytes, report));
    }

    /// Layered connection `id` received the bytes in `self.input`: up through its layers
    /// (a TLS handshake step within the batch's budget, else put off), the core gets what
    /// comes out on top, the socket what the layers answer.
    pub(super) fn layered_received(&mut self, id: ConnId, now: Now) {
        let handshaking = self.transport(id).is_some_and(|t| t.layers.handshaking());
        if handshaking {
            let Some(tls) = self.tls_budget() else {
                let input = std::mem::take(&mut self.input);
                let stashed = self.transport(id).map(|t| t.layers.stash(&input));
                self.input = input;
                self.core.count(Counter::TlsHandshakesDeferred, 1);
                match stashed {
                    Some(Ok(())) => self.defer(id),
                    Some(Err(e)) => self.layer_failed(id, &LayerError::Tls(e), &[], now),
                    None => {}
                }
                return;
            };
            *tls -= 1;
        }
        let (input, mut bufs) = (
            std::mem::take(&mut self.input),
            std::mem::take(&mut self.bufs),
        );
        let ws_rules = self.ws.as_ref().map(|w| w.rules.clone());
        let result = match self.transport(id) {
            Some(t) => t.layers.receive(&input, ws_rules.as_ref(), &mut bufs),
            None => Ok(Default::default()),
        };
        self.input = input;
        match result {
            Ok(got) if got.peer_closed => {
                // The answer to the peer's Close leaves with the connection's last word: the
                // core closes the descriptor before a queued send would be submitted.
                if let Some(t) = self.transport(id) {
                    t.queued.extend_from_slice(&bufs.wire);
                }
                if got.tls_opened {
                    self.core.count(Counter::TlsHandshakes, 1);
                }
                self.core.on_bytes(id, &bufs.plain, now);
                self.core.on_hangup(id, None, now);
            }
            Ok(got) => {
                self.send_down(id, &bufs.wire, None);
                if got.tls_opened {
                    self.core.count(Counter::TlsHandshakes, 1);
                }
                if got.ws_upgraded {
                    self.core.count(Counter::WsUpgrades, 1);
                }
                // Even with nothing for it (a handshake step): the core arms the next receive.
                self.core.on_bytes(id, &bufs.plain, now);
            }
            Err(e) => self.layer_failed(id, &e, &bufs.wire, now),
        }
        self.bufs = bufs;
    }

    /// The handshake budget left in this batch, when there is some. (Every shard with a TLS
    /// or `wss://` listener has one, shared by both.)
    fn tls_budget(&mut self) -> Option<&mut u32> {
        self.tls
            .as_mut()
            .filter(|t| t.budget > 0)
            .map(|t| &mut t.budget)
    }

    /// Puts `id`'s handshake off to the next batch.
    fn defer(&mut self, id: ConnId) {
        if let Some(t) = self.tls.as_mut() {
            t.deferred.push(id);
        }
    }

    /// `id`'s layers failed: their answer (`wire`: an alert, an HTTP refusal, a WebSocket
    /// Close) is written straight away and the connection ends; nothing more can be read from
    /// it or written to it.
    pub(super) fn layer_failed(&mut self, id: ConnId, e: &LayerError, wire: &[u8], now: Now) {
        debug!(key = id.key, error = %e, "connection's layers failed");
        let counter = match e {
            LayerError::Tls(_) if e.before_open() => Counter::TlsHandshakeFailures,
            LayerError::Tls(_) => Counter::TlsRecordErrors,
            LayerError::Ws(_) if e.before_open() => Counter::WsUpgradesRefused,
            LayerError::Ws(_) => Counter::WsProtocolErrors,
        };
        self.core.count(counter, 1);
        if let Some((d, _)) = self.take_file(id) {
            self.ring.cancel_recv(id);
            self.ring.cancel(user_data(Tag::Send, id));
            // Written just before the close, not queued behind the connection's sends.
            self.close_with(d, wire.to_vec());
        }
        self.core.on_transport_failed(id);
        self.execute(now);
    }

    /// A new batch: a fresh handshake budget, spent first on the handshakes put off by the
    /// last one.
    pub(super) fn resume_handshakes(&mut self, now: Now) {
        let Some(shared) = self.tls.as_mut() else {
            return;
        };
        shared.budget = shared.per_batch;
        if shared.deferred.is_empty() {
            return;
        }
        let waiting = std::mem::take(&mut shared.deferred);
        for (i, &id) in waiting.iter().enumerate() {
            if self.tls.as_ref().is_some_and(|t| t.budget == 0) {
                if let Some(t) = self.tls.as_mut() {
                    t.deferred.extend_from_slice(&waiting[i..]);
                }
                break;
            }
            self.input.clear();
            if self.transport(id).is_some() {
                self.layered_received(id, now);
                self.execute(now);
            }
        }
    }

    /// Whether handshakes wait for the next batch (which must then come at once).
    pub(super) fn handshakes_waiting(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| !t.deferred.is_empty())
    }

    /// Refuses a connection that could not move to its home shard with the core's `bytes`
    /// (its `Overloaded` close), through its layers when it has any, written to its socket
    /// just before it closes.
    pub(super) fn refuse(&mut self, socket: Socket, bytes: &[u8], layers: Option<Box<Layers>>) {
        let bytes = match layers {
            None => bytes.to_vec(),
            Some(mut layers) => {
                let mut bufs = std::mem::take(&mut self.bufs);
                let mut out = match layers.wrap(bytes, &mut bufs) {
                    Ok(()) => bufs.wire.clone(),
                    Err(_) => Vec::new(),
                };
                layers.close(&mut out);
                self.bufs = bufs;
                out
            }
        };
        match socket {
            Socket::Fd(fd) => overload::refuse(fd.into_raw_fd(), &bytes),
            Socket::Slot(d) => self.close_with(d, bytes),
        }
    }
}

/// The `user_data` bits of listener `from`'s accept.
fn accept_tag(from: From) -> u64 {
    match from {
        From::Plain => 0,
        From::Tls => ACCEPT_TLS,
        From::Ws => ACCEPT_WS,
    }
}
