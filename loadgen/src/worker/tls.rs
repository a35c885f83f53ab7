//! A TLS run's connections: each slot's rustls session sits between its socket and the
//! worker's buffers. What a connection sends is handed to its session (which keeps it until the
//! handshake ends, then encrypts it) and the session's records are written until the socket
//! refuses more; the next writable edge writes the rest. What arrives is read through the
//! session and decoded as in a plaintext run. NATS starts TLS only after the server's
//! plaintext INFO line, as its clients do.

use std::io::{ErrorKind, Read, Write};

use bytes::BytesMut;

use super::Worker;
use crate::conn::State;
use crate::net;
use crate::stats::hist;
use crate::tls::{self, Fd};
use crate::wire::{nats, Protocol};

impl Worker {
    /// The connect of `slot` completed: starts its session, unless the protocol starts TLS
    /// later (NATS over TCP, after INFO; over wss:// TLS comes first). Whether the login (or
    /// the WebSocket upgrade) may be written now.
    pub(super) fn start_tls(&mut self, slot: usize) -> bool {
        (self.job.protocol != Protocol::Nats || self.job.ws.is_some()) && self.new_session(slot)
    }

    /// A new session for `slot`, its hello written; false when it failed (and the slot with
    /// it).
    fn new_session(&mut self, slot: usize) -> bool {
        let server = self.server_of(slot);
        let made = self
            .tls
            .as_ref()
            .expect("sessions exist in a TLS run only")
            .session(server);
        match made {
            Ok(session) => {
                self.sessions[slot] = Some(Box::new(session));
                self.flush_tls(slot)
            }
            Err(e) => {
                self.fail(slot, tls::error_kind(&e));
                false
            }
        }
    }

    /// Hands the encoded bytes of `self.out` to `slot`'s session and writes what the socket
    /// takes; false when the connection failed.
    pub(super) fn send_tls(&mut self, slot: usize) -> bool {
        let Some(session) = self.sessions[slot].as_deref_mut() else {
            self.fail(slot, "tls: a message before the TLS upgrade".into());
            return false;
        };
        if let Err(e) = session.writer().write_all(&self.out) {
            self.fail(slot, format!("tls: {e}"));
            return false;
        }
        self.flush_tls(slot)
    }

    /// Writes the session's records until the socket refuses more; false when it failed.
    pub(super) fn flush_tls(&mut self, slot: usize) -> bool {
        let fd = self.conns[slot].fd;
        let Some(session) = self.sessions[slot].as_deref_mut() else {
            return true;
        };
        while session.wants_write() {
            match session.write_tls(&mut Fd(fd)) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    self.fail(slot, net::errno_kind(&e));
                    return false;
                }
            }
        }
        true
    }

    /// Reads everything `slot`'s socket has through its session and handles each whole
    /// message; before a NATS connection's upgrade, its INFO line.
    pub(super) fn on_readable_tls(&mut self, slot: usize, now: u64) {
        if self.sessions[slot].is_none() {
            return self.on_nats_info(slot);
        }
        let (gen, fd) = (self.conns[slot].gen, self.conns[slot].fd);
        let (mut buf, from_scratch) = match self.conns[slot].partial.take() {
            Some(b) => (*b, false),
            None => (std::mem::take(&mut self.scratch), true),
        };
        // The session is gone once the connection ends.
        while let Some(session) = self.sessions[slot].as_deref_mut() {
            let handshaking = session.is_handshaking();
            let eof = match session.read_tls(&mut Fd(fd)) {
                Ok(n) => n == 0,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.fail(slot, net::errno_kind(&e));
                    break;
                }
            };
            let state = match session.process_new_packets() {
                Ok(state) => state,
                Err(e) => {
                    // The alert the session queued, if the socket takes it.
                    let _ = session.write_tls(&mut Fd(fd));
                    self.fail(slot, tls::error_kind(&e));
                    break;
                }
            };
            let len = buf.len();
            buf.resize(len + state.plaintext_bytes_to_read(), 0);
            let read = session.reader().read_exact(&mut buf[len..]);
            let done = handshaking && !session.is_handshaking();
            let alpn_ok = !done || self.tls.as_ref().is_some_and(|t| t.alpn_ok(session));
            if let Err(e) = read {
                self.fail(slot, format!("tls: {e}"));
                break;
            }
            if !alpn_ok {
                let name = self.tls.as_ref().map(|t| t.alpn_name()).unwrap_or_default();
                self.fail(
                    slot,
                    format!("tls: the server did not agree to ALPN {name:?}"),
                );
                break;
            }
            if done {
                let since = self.conns[slot].since_ns;
                self.hists.record_ns(hist::TLS_HANDSHAKE, since, now);
            }
            // The handshake's next flight, or anything else the session wants to send.
            if !self.flush_tls(slot) || !self.take_in(slot, gen, &mut buf, len, now) {
                break;
            }
            if eof || state.peer_has_closed() {
                self.fail(slot, self.eof_kind(slot));
                break;
            }
        }
        let alive = self.conns[slot].gen == gen && self.conns[slot].state != State::Free;
        if alive && !buf.is_empty() {
            self.conns[slot].partial = Some(Box::new(BytesMut::from(&buf[..])));
        }
        if from_scratch {
            buf.clear();
            self.scratch = buf;
        }
    }

    /// A NATS connection before its upgrade: waits for the server's INFO line, then starts
    /// TLS (if the server asks for it) and sends the login through it.
    fn on_nats_info(&mut self, slot: usize) {
        let fd = self.conns[slot].fd;
        let mut line = self.conns[slot]
            .partial
            .take()
            .map(|b| *b)
            .unwrap_or_default();
        let mut chunk = [0u8; 4096];
        loop {
            match net::read(fd, &mut chunk) {
                Ok(0) => return self.fail(slot, "closed by server without Close".into()),
                Ok(n) => line.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return self.fail(slot, net::errno_kind(&e)),
            }
        }
        let Some(eol) = line.windows(2).position(|w| w == b"\r\n") else {
            if line.len() > nats::MAX_CONTROL_LINE {
                return self.fail(slot, "nats: INFO line too long".into());
            }
            self.conns[slot].partial = Some(Box::new(line));
            return;
        };
        let info = match nats::decode(&mut line.split_to(eol + 2), usize::MAX) {
            Ok(Some(nats::ServerOp::Info(json))) => json,
            _ => return self.fail(slot, "nats: no INFO line before TLS".into()),
        };
        let tls_required = serde_json::from_str::<serde_json::Value>(&info)
            .is_ok_and(|v| v["tls_required"] == true);
        if !tls_required {
            return self.fail(
                slot,
                "nats: the server does not ask for TLS (no tls_required in its INFO)".into(),
            );
        }
        if self.new_session(slot) {
            self.send_login(slot);
        }
    }
}
