//! One connection's TLS, sans IO: ciphertext in, plaintext and ciphertext out.
//!
//! Two phases. **Handshake**: rustls's unbuffered server connection, fed from the bytes the
//! ring received and answering with the records to send. **Open**: once rustls reports the
//! handshake done, its traffic keys are taken out (`dangerous_into_kernel_connection`, the
//! path made for kernel TLS) and the handshake's state is dropped; the shard protects records
//! itself ([`record`](super::record)) and keeps rustls's small [`KernelConnection`] only to
//! derive new keys when the peer sends a `KeyUpdate`. An idle open connection holds its keys,
//! that key-schedule state and no buffer.

use std::sync::Arc;

use rustls::kernel::KernelConnection;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError};
use rustls::{ServerConfig, SupportedCipherSuite};

use super::record::{
    self, Keys, RecordError, ALERT, APPLICATION_DATA, CHANGE_CIPHER_SPEC, HANDSHAKE,
};

/// Most ciphertext held for a handshake that is not done (a ClientHello with large key shares
/// and the client's second flight fit many times over).
pub const MAX_HANDSHAKE_INPUT: usize = 32 * 1024;

/// Handshake message type of `KeyUpdate` (RFC 8446 §4.6.3).
const KEY_UPDATE: u8 = 24;
/// Alert descriptions this side sends or reads.
mod alert {
    /// The peer is done sending.
    pub const CLOSE_NOTIFY: u8 = 0;
    /// A message that has no place here.
    pub const UNEXPECTED_MESSAGE: u8 = 10;
    /// A record that did not authenticate.
    pub const BAD_RECORD_MAC: u8 = 20;
    /// A record over the protocol's length.
    pub const RECORD_OVERFLOW: u8 = 22;
    /// A message that could not be parsed.
    pub const DECODE_ERROR: u8 = 50;
    /// The peer cancels the handshake or a write; a warning, not an error.
    pub const USER_CANCELED: u8 = 90;
}

/// Why a connection's TLS failed. The connection is closed; any alert for the peer was already
/// appended to the output.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The handshake failed (rustls's reason: a bad ClientHello, no common version or suite,
    /// an unknown server name, no common ALPN protocol, ...).
    #[error("handshake: {0}")]
    Handshake(rustls::Error),
    /// A record after the handshake could not be read.
    #[error("record: {0}")]
    Record(#[from] RecordError),
    /// The peer sent a fatal alert.
    #[error("peer sent alert {0}")]
    Alert(u8),
    /// The peer sent a message that has no place after the handshake.
    #[error("unexpected message after the handshake")]
    Unexpected,
    /// More handshake bytes than [`MAX_HANDSHAKE_INPUT`].
    #[error("handshake too large")]
    TooLarge,
    /// Application data to send before the handshake is done.
    #[error("handshake not done")]
    NotOpen,
    /// The TLS code panicked on this connection's bytes (a bug, contained).
    #[error("internal error in the TLS layer")]
    Panicked,
}

/// What a call to [`TlsConn::receive`] brought besides bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Nothing else.
    Continue,
    /// The handshake finished in this call.
    Opened,
    /// The peer sent `close_notify`: the end of its stream.
    PeerClosed,
}

/// The handshake phase.
struct Handshake {
    /// rustls's state machine.
    conn: UnbufferedServerConnection,
    /// Ciphertext not yet consumed by rustls.
    input: Vec<u8>,
}

/// The open phase.
struct Open {
    /// Keys of records from the peer.
    rx: Keys,
    /// Keys of records to the peer.
    tx: Keys,
    /// Records `tx` may protect before its keys are replaced (the suite's confidentiality
    /// limit).
    tx_limit: u64,
    /// rustls's key schedule, for `KeyUpdate`.
    kernel: KernelConnection<ServerConnectionData>,
    /// The start of a record whose end has not arrived (no allocation while empty).
    partial: Vec<u8>,
}

/// Where a connection's TLS is.
enum State {
    /// Handshaking.
    Handshake(Box<Handshake>),
    /// Open.
    Open(Box<Open>),
    /// Failed or closed: nothing more is read or written.
    Done,
}

/// One connection's TLS. See the [module documentation](self).
pub struct TlsConn {
    /// The phase.
    state: State,
}

impl std::fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let phase = match self.state {
            State::Handshake(_) => "handshake",
            State::Open(_) => "open",
            State::Done => "done",
        };
        f.debug_struct("TlsConn").field("phase", &phase).finish()
    }
}

impl TlsConn {
    /// A connection about to receive its ClientHello.
    pub fn new(config: Arc<ServerConfig>) -> Result<TlsConn, rustls::Error> {
        Ok(TlsConn {
            state: State::Handshake(Box::new(Handshake {
                conn: UnbufferedServerConnection::new(config)?,
                input: Vec::new(),
            })),
        })
    }

    /// Whether the handshake is still going on.
    pub fn is_handshaking(&self) -> bool {
        matches!(self.state, State::Handshake(_))
    }

    /// Whether the handshake is done and records flow.
    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Open(_))
    }

    /// Keeps handshake bytes to be processed later ([`TlsConn::receive`] with no new bytes),
    /// when the shard's handshake budget for this batch is spent.
    pub fn stash(&mut self, data: &[u8]) -> Result<(), TlsError> {
        match &mut self.state {
            State::Handshake(hs) => {
                if hs.input.len() + data.len() > MAX_HANDSHAKE_INPUT {
                    self.state = State::Done;
                    return Err(TlsError::TooLarge);
                }
                hs.input.extend_from_slice(data);
                Ok(())
            }
            _ => Err(TlsError::NotOpen),
        }
    }

    /// Feeds ciphertext the peer sent: its plaintext is appended to `plain`, records to send
    /// (handshake flights, `KeyUpdate`s, alerts) to `wire`. `scratch` is the caller's reusable
    /// buffer. On an error the connection is done, and `wire` may hold an alert for the peer.
    pub fn receive(
        &mut self,
        data: &[u8],
        plain: &mut Vec<u8>,
        wire: &mut Vec<u8>,
        scratch: &mut Vec<u8>,
    ) -> Result<Progress, TlsError> {
        // A panic in the TLS code, fed bytes from anyone, must not take the shard down: it
        // ends this connection like any other failure.
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match &mut self.state {
                State::Handshake(_) => self.handshake(data, plain, wire, scratch),
                State::Open(open) => open.receive(data, plain, wire, scratch),
                State::Done => Ok(Progress::Continue),
            }))
            .unwrap_or(Err(TlsError::Panicked));
        if result.is_err() || result.as_ref().is_ok_and(|p| *p == Progress::PeerClosed) {
            self.state = State::Done;
        }
        result
    }

    /// Protects `plain` as application data records appended to `wire`.
    pub fn encrypt(&mut self, plain: &[u8], wire: &mut Vec<u8>) -> Result<(), TlsError> {
        let State::Open(open) = &mut self.state else {
            return Err(TlsError::NotOpen);
        };
        if open.tx.seq() >= open.tx_limit {
            open.update_tx(wire)?;
        }
        open.tx.seal(APPLICATION_DATA, plain, wire)?;
        Ok(())
    }

    /// The handshake phase of [`TlsConn::receive`].
    fn handshake(
        &mut self,
        data: &[u8],
        plain: &mut Vec<u8>,
        wire: &mut Vec<u8>,
        scratch: &mut Vec<u8>,
    ) -> Result<Progress, TlsError> {
        self.stash(data)?;
        let State::Handshake(hs) = &mut self.state else {
            return Err(TlsError::NotOpen);
        };
        loop {
            let status = hs.conn.process_tls_records(&mut hs.input);
            let discard = status.discard;
            let mut step = Step::More;
            match status.state {
                Err(e) => step = Step::Failed(e),
                Ok(ConnectionState::EncodeTlsData(mut enc)) => {
                    if let Err(e) = encode(wire, |out| enc.encode(out)) {
                        step = Step::Failed(e);
                    }
                }
                Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                Ok(ConnectionState::ReadTraffic(mut r)) => {
                    while let Some(rec) = r.next_record() {
                        match rec {
                            Ok(rec) => plain.extend_from_slice(rec.payload),
                            Err(e) => {
                                step = Step::Failed(e);
                                break;
                            }
                        }
                    }
                }
                Ok(ConnectionState::BlockedHandshake) => step = Step::Blocked,
                Ok(ConnectionState::WriteTraffic(_)) => step = Step::Done,
                Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => step = Step::Closed,
                Ok(_) => step = Step::Failed(rustls::Error::General("early data".into())),
            }
            hs.input.drain(..discard);
            match step {
                Step::More => {}
                Step::Blocked => {
                    if hs.input.is_empty() {
                        hs.input = Vec::new();
                    }
                    return Ok(Progress::Continue);
                }
                Step::Closed => return Ok(Progress::PeerClosed),
                Step::Failed(e) => {
                    // rustls queued the alert that says why: hand it to the peer. (It is
                    // called with the rest of the same buffer, as its API asks.)
                    // Records queued before the failure (a ServerHello, a compatibility
                    // ChangeCipherSpec) come first; the alert is the first record of another
                    // type (plaintext, or protected with the handshake's keys), and no
                    // call may follow it (rustls would read the bad bytes again).
                    for _ in 0..8 {
                        match hs.conn.process_tls_records(&mut hs.input).state {
                            Ok(ConnectionState::EncodeTlsData(mut enc)) => {
                                let at = wire.len();
                                let _ = encode(wire, |out| enc.encode(out));
                                if !matches!(wire.get(at), Some(&(HANDSHAKE | CHANGE_CIPHER_SPEC)))
                                {
                                    break;
                                }
                            }
                            Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                            _ => break,
                        }
                    }
                    return Err(TlsError::Handshake(e));
                }
                Step::Done => break,
            }
        }
        let State::Handshake(hs) = std::mem::replace(&mut self.state, State::Done) else {
            return Err(TlsError::NotOpen);
        };
        let Handshake { conn, input } = *hs;
        let (secrets, kernel) = conn
            .dangerous_into_kernel_connection()
            .map_err(TlsError::Handshake)?;
        let keys = |(seq, s): &(u64, rustls::ConnectionTrafficSecrets)| {
            Keys::new(*seq, s).ok_or_else(|| {
                TlsError::Handshake(rustls::Error::General("unsupported cipher suite".into()))
            })
        };
        let tx_limit = match kernel.negotiated_cipher_suite() {
            SupportedCipherSuite::Tls13(s) => s.common.confidentiality_limit,
            #[allow(unreachable_patterns)]
            _ => u64::MAX,
        };
        let mut open = Box::new(Open {
            rx: keys(&secrets.rx)?,
            tx: keys(&secrets.tx)?,
            tx_limit,
            kernel,
            partial: Vec::new(),
        });
        drop(secrets);
        let progress = open.receive(&input, plain, wire, scratch)?;
        self.state = State::Open(open);
        Ok(match progress {
            Progress::Continue | Progress::Opened => Progress::Opened,
            Progress::PeerClosed => Progress::PeerClosed,
        })
    }
}

/// What one handshake step calls for.
enum Step {
    /// Call rustls again.
    More,
    /// It needs more bytes from the peer.
    Blocked,
    /// The handshake is done.
    Done,
    /// The peer closed.
    Closed,
    /// It failed.
    Failed(rustls::Error),
}

/// Appends what `f` encodes to `wire`, growing the space it needs.
fn encode(
    wire: &mut Vec<u8>,
    mut f: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) -> Result<(), rustls::Error> {
    let at = wire.len();
    let mut room = 2048;
    loop {
        wire.resize(at + room, 0);
        match f(&mut wire[at..]) {
            Ok(n) => {
                wire.truncate(at + n);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(s)) if s.required_size > room => {
                room = s.required_size;
            }
            Err(e) => {
                wire.truncate(at);
                return Err(rustls::Error::General(format!("encode: {e}")));
            }
        }
    }
}

impl Open {
    /// Reads every whole record of `partial` + `data`; keeps the start of an incomplete one.
    fn receive(
        &mut self,
        data: &[u8],
        plain: &mut Vec<u8>,
        wire: &mut Vec<u8>,
        scratch: &mut Vec<u8>,
    ) -> Result<Progress, TlsError> {
        // Work in the caller's scratch unless a record is already half here.
        let mut buf = if self.partial.is_empty() {
            scratch.clear();
            scratch.extend_from_slice(data);
            std::mem::take(scratch)
        } else {
            let mut p = std::mem::take(&mut self.partial);
            p.extend_from_slice(data);
            p
        };
        let result = self.records(&mut buf, plain, wire);
        let used = match result {
            Ok((used, _)) => used,
            Err(_) => buf.len(),
        };
        if used < buf.len() {
            self.partial = buf[used..].to_vec();
        }
        buf.clear();
        if scratch.capacity() < buf.capacity() {
            *scratch = buf;
        }
        if let Err(e) = &result {
            let desc = match e {
                TlsError::Record(RecordError::BadMac) => Some(alert::BAD_RECORD_MAC),
                TlsError::Record(RecordError::Overflow) => Some(alert::RECORD_OVERFLOW),
                TlsError::Record(RecordError::Header | RecordError::Empty) => {
                    Some(alert::DECODE_ERROR)
                }
                TlsError::Unexpected => Some(alert::UNEXPECTED_MESSAGE),
                _ => None,
            };
            if let Some(desc) = desc {
                let _ = self.tx.seal(ALERT, &[2, desc], wire);
            }
        }
        result.map(|(_, p)| p)
    }

    /// The records at the start of `buf`: how many bytes they took, and whether the peer
    /// closed.
    fn records(
        &mut self,
        buf: &mut [u8],
        plain: &mut Vec<u8>,
        wire: &mut Vec<u8>,
    ) -> Result<(usize, Progress), TlsError> {
        let mut at = 0;
        while let Some(len) = record::record_len(&buf[at..])? {
            if buf.len() - at < len {
                break;
            }
            let (kind, payload) = self.rx.open(&mut buf[at..at + len])?;
            at += len;
            match kind {
                APPLICATION_DATA => plain.extend_from_slice(payload),
                ALERT => match payload {
                    [_, alert::CLOSE_NOTIFY] => return Ok((at, Progress::PeerClosed)),
                    [_, alert::USER_CANCELED] => {}
                    [_, desc] => return Err(TlsError::Alert(*desc)),
                    _ => return Err(RecordError::Header.into()),
                },
                HANDSHAKE => {
                    let payload = payload.to_vec();
                    self.post_handshake(&payload, wire)?;
                }
                _ => return Err(TlsError::Unexpected),
            }
        }
        Ok((at, Progress::Continue))
    }

    /// Handshake messages after the handshake: only `KeyUpdate`, alone at the end of its
    /// record (RFC 8446 §5.1: a message that changes keys must end the record).
    fn post_handshake(&mut self, msg: &[u8], wire: &mut Vec<u8>) -> Result<(), TlsError> {
        let [KEY_UPDATE, 0, 0, 1, request] = *msg else {
            return Err(TlsError::Unexpected);
        };
        let (seq, secrets) = self
            .kernel
            .update_rx_secret()
            .map_err(TlsError::Handshake)?;
        self.rx = Keys::new(seq, &secrets).ok_or(TlsError::Unexpected)?;
        match request {
            0 => Ok(()),
            1 => self.update_tx(wire),
            _ => Err(TlsError::Unexpected),
        }
    }

    /// Sends a `KeyUpdate` (not asking for one back) and switches to the next sending keys.
    fn update_tx(&mut self, wire: &mut Vec<u8>) -> Result<(), TlsError> {
        self.tx.seal(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0], wire)?;
        let (seq, secrets) = self
            .kernel
            .update_tx_secret()
            .map_err(TlsError::Handshake)?;
        self.tx = Keys::new(seq, &secrets).ok_or(TlsError::Unexpected)?;
        Ok(())
    }
}
