//! What lies between a connection's socket and the core, sans IO: its TLS (the TLS listener,
//! `wss://`) and its WebSocket (the WebSocket listener), in that order. Received bytes go up
//! through them to the core; the core's bytes go down through them to the socket; what the
//! layers say by themselves (a handshake flight, a Pong, an alert) goes down from where it is
//! said.

use crate::tls::{self, TlsConn, TlsError};
use crate::ws::{self, Rules, WsConn, WsError};

/// A connection's layers.
#[derive(Debug, Default)]
pub struct Layers {
    /// TLS, outermost.
    pub tls: Option<TlsConn>,
    /// WebSocket, inside TLS when both.
    pub ws: Option<WsConn>,
}

/// The shard's reusable buffers for the layers' work.
#[derive(Debug, Default)]
pub struct Buffers {
    /// Bytes for the core.
    pub plain: Vec<u8>,
    /// Between the layers.
    pub mid: Vec<u8>,
    /// Bytes for the socket.
    pub wire: Vec<u8>,
    /// Scratch of the layers.
    pub scratch: Vec<u8>,
    /// What a layer says by itself before it goes down.
    pub said: Vec<u8>,
}

impl Buffers {
    /// Empties them all for one call.
    fn clear(&mut self) {
        self.plain.clear();
        self.mid.clear();
        self.wire.clear();
        self.said.clear();
    }
}

/// Why a connection's layers failed; the answer for the peer (an alert, an HTTP refusal, a
/// Close frame) is in [`Buffers::wire`].
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// Its TLS.
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// Its WebSocket.
    #[error("WebSocket: {0}")]
    Ws(#[from] WsError),
}

impl LayerError {
    /// Whether it failed before the connection could carry the protocol (a TLS handshake, a
    /// WebSocket upgrade).
    pub fn before_open(&self) -> bool {
        matches!(
            self,
            LayerError::Tls(TlsError::Handshake(_) | TlsError::TooLarge)
        ) || matches!(self, LayerError::Ws(WsError::Upgrade(_)))
    }
}

/// What one received piece did besides its bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Received {
    /// The TLS handshake finished.
    pub tls_opened: bool,
    /// The WebSocket upgrade was answered.
    pub ws_upgraded: bool,
    /// The peer ended its stream (TLS `close_notify`, WebSocket Close).
    pub peer_closed: bool,
}

/// How a WebSocket reads: its rules and its largest message.
#[derive(Clone, Debug)]
pub struct WsRules {
    /// Path and origins.
    pub rules: Rules,
    /// Largest message, in bytes.
    pub max_message: u64,
}

impl Layers {
    /// Whether its TLS handshake is still going on.
    pub fn handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(TlsConn::is_handshaking)
    }

    /// Keeps TLS handshake bytes for later (see [`TlsConn::stash`]).
    pub fn stash(&mut self, data: &[u8]) -> Result<(), TlsError> {
        match &mut self.tls {
            Some(t) => t.stash(data),
            None => Err(TlsError::NotOpen),
        }
    }

    /// Feeds what the socket received: bytes for the core to `bufs.plain`, bytes to send to
    /// `bufs.wire`.
    pub fn receive(
        &mut self,
        data: &[u8],
        ws_rules: Option<&WsRules>,
        bufs: &mut Buffers,
    ) -> Result<Received, LayerError> {
        bufs.clear();
        let mut got = Received::default();
        let inner: &[u8] = match &mut self.tls {
            Some(t) => {
                let p = t.receive(data, &mut bufs.mid, &mut bufs.wire, &mut bufs.scratch)?;
                got.tls_opened = p == tls::Progress::Opened;
                got.peer_closed = p == tls::Progress::PeerClosed;
                &bufs.mid
            }
            None => data,
        };
        let Some(ws) = &mut self.ws else {
            bufs.plain.extend_from_slice(inner);
            return Ok(got);
        };
        let Some(rules) = ws_rules else {
            return Err(WsError::NotOpen.into());
        };
        let result = ws.receive(
            inner,
            &rules.rules,
            rules.max_message,
            &mut bufs.plain,
            &mut bufs.said,
        );
        // Answers go down through TLS, also when the WebSocket failed.
        let said = std::mem::take(&mut bufs.said);
        let down = self.down(&said, &mut bufs.wire);
        bufs.said = said;
        let p = result?;
        down?;
        got.ws_upgraded = p == ws::Progress::Upgraded;
        got.peer_closed |= p == ws::Progress::PeerClosed;
        Ok(got)
    }

    /// The core's `bytes` on their way to the socket, appended to `bufs.wire` (cleared
    /// first).
    pub fn wrap(&mut self, bytes: &[u8], bufs: &mut Buffers) -> Result<(), LayerError> {
        bufs.clear();
        match &mut self.ws {
            Some(ws) => {
                ws.wrap(bytes, &mut bufs.mid)?;
                let mid = std::mem::take(&mut bufs.mid);
                let r = self.down(&mid, &mut bufs.wire);
                bufs.mid = mid;
                r
            }
            None => self.down(bytes, &mut bufs.wire),
        }
    }

    /// What the layers say when the server ends the connection (a WebSocket Close with the
    /// code of the tether frame that ended it), appended to `wire`.
    pub fn close(&mut self, wire: &mut Vec<u8>) {
        let mut said = Vec::new();
        if let Some(ws) = &mut self.ws {
            ws.close(&mut said);
        }
        if !said.is_empty() {
            let _ = self.down(&said, wire);
        }
    }

    /// `bytes` said above TLS, through it (as they are without TLS).
    fn down(&mut self, bytes: &[u8], wire: &mut Vec<u8>) -> Result<(), LayerError> {
        if bytes.is_empty() {
            return Ok(());
        }
        match &mut self.tls {
            Some(t) => Ok(t.encrypt(bytes, wire)?),
            None => {
                wire.extend_from_slice(bytes);
                Ok(())
            }
        }
    }
}
