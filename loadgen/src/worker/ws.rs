//! A WebSocket run's connections: the upgrade request when the connect (or, for wss://, the
//! start of TLS) is done, the check of the server's `101`, then every message sent framed and
//! masked, and the server's frames unwrapped in the receive buffer before the protocol's
//! decoder sees it. The bytes themselves come from and go to the socket or the TLS session as
//! in any other run; `crate::ws` holds the framing, this file only its use by the worker.

use bytes::{Buf, BytesMut};
use rand::Rng;

use super::Worker;
use crate::conn::State;
use crate::stats::hist;
use crate::ws::{self, Control, Unwrap, WsConn};

impl Worker {
    /// Whether `slot` sent its upgrade request and waits for the answer.
    pub(super) fn ws_upgrading(&self, slot: usize) -> bool {
        matches!(self.ws.get(slot), Some(WsConn::Upgrading(_)))
    }

    /// Writes `slot`'s upgrade request; the login follows the `101`.
    pub(super) fn send_upgrade(&mut self, slot: usize) {
        let nonce: [u8; 16] = self.rng.gen();
        let server = self.server_of(slot).to_string();
        let path = &self.job.ws.as_ref().expect("a WebSocket run").path;
        self.out.clear();
        ws::request(
            path,
            &server,
            &nonce,
            ws::subprotocol(self.job.protocol),
            &mut self.out,
        );
        self.ws[slot] = WsConn::Upgrading(nonce);
        self.write_out(slot);
    }

    /// Frames the encoded bytes of `self.out` as one masked binary message, in place of them.
    pub(super) fn frame_out(&mut self) {
        let mask: [u8; 4] = self.rng.gen();
        self.ws_out.clear();
        ws::frame(ws::op::BINARY, &self.out, mask, &mut self.ws_out);
        std::mem::swap(&mut self.out, &mut self.ws_out);
    }

    /// [`Worker::take_in`] of a WebSocket run: the upgrade's answer while it is awaited, then
    /// the server's frames, unwrapped in place; the data is delivered, then the control frames
    /// that came with it are handled.
    pub(super) fn take_in_ws(
        &mut self,
        slot: usize,
        gen: u32,
        buf: &mut BytesMut,
        mut start: usize,
        now: u64,
    ) -> bool {
        if let WsConn::Upgrading(nonce) = self.ws[slot] {
            // Nothing is delivered before the 101, so `buf` holds the answer alone.
            let Some(end) = ws::head_end(buf) else {
                if buf.len() > ws::MAX_HEAD {
                    self.fail(slot, ws::UpgradeError::TooLong.to_string());
                    return false;
                }
                return true;
            };
            let checked = ws::check_answer(&buf[..end], &nonce, ws::subprotocol(self.job.protocol));
            if let Err(e) = checked {
                self.fail(slot, e.to_string());
                return false;
            }
            buf.advance(end);
            start = 0;
            self.ws[slot] = WsConn::Open(Box::default());
            self.hists
                .record_ns(hist::UPGRADE, self.conns[slot].since_ns, now);
            self.conns[slot].since_ns = now;
            self.send_login(slot);
            if self.conns[slot].gen != gen || self.conns[slot].state == State::Free {
                return false;
            }
        }
        let WsConn::Open(unwrap) = &mut self.ws[slot] else {
            return false;
        };
        let fed = Unwrap::feed(unwrap, buf, start, &mut self.ws_controls);
        if let Err(e) = fed {
            self.ws_controls.clear();
            self.fail(slot, e.to_string());
            return false;
        }
        let alive = self.deliver(slot, gen, buf, now);
        let controls = std::mem::take(&mut self.ws_controls);
        let mut alive_after = alive;
        for control in &controls {
            if !alive_after {
                break;
            }
            alive_after = match control {
                Control::Ping(payload) => {
                    let mask: [u8; 4] = self.rng.gen();
                    self.out.clear();
                    ws::frame(ws::op::PONG, payload, mask, &mut self.out);
                    self.write_out(slot)
                }
                Control::Close(code) => {
                    self.fail(slot, format!("ws: closed by server with code {code}"));
                    false
                }
            };
        }
        self.ws_controls = controls;
        self.ws_controls.clear();
        alive_after
    }
}
