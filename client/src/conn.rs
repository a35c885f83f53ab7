//! One TCP connection of the driver: a non-blocking connect, an optional TLS session, a
//! receive buffer that frames are decoded from (with the rules of the protocol version its
//! login asks for), and a send buffer for what the kernel did not take yet.
//!
//! With TLS, rustls sits between the socket and the two buffers (its buffered API): bytes read
//! from the socket go through the session into `rbuf`, and `wbuf` is handed to the session once
//! the handshake is done, whose records then go to the socket. The connection counts as
//! connected ([`Conn::is_connected`]) only after the handshake, with the ALPN protocol
//! `tether` agreed, so the machine's `Login` is never written before it.
//!
//! The socket is created by the thread that calls [`Conn::connect`], so it lives in that
//! thread's network namespace.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};

use bytes::{Buf, BytesMut};
use rustls::ClientConnection;
use socket2::{Domain, Protocol, Socket, Type};
use tether_proto::{codec, DecodeError, EncodeError, Frame};

use crate::tls::{Tls, TlsFailure, ALPN};

/// Bytes read from the socket per `read` call.
const READ_CHUNK: usize = 16 * 1024;

/// Where a connection is in its setup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// The non-blocking connect has not completed; only writability is polled.
    Connecting,
    /// TCP is up and the TLS handshake runs.
    Handshaking,
    /// Frames may flow.
    Open,
}

/// One connection to the server.
#[derive(Debug)]
pub(crate) struct Conn {
    /// The non-blocking socket.
    socket: Socket,
    /// How far the setup got.
    phase: Phase,
    /// The TLS session, when the driver speaks TLS (boxed: rustls's state is large and a
    /// plaintext connection should not carry its room).
    tls: Option<Box<ClientConnection>>,
    /// Received bytes (plaintext) not yet decoded into frames.
    rbuf: BytesMut,
    /// Encoded frames not yet taken by the kernel, or with TLS by the session.
    wbuf: BytesMut,
    /// The protocol version of this connection's login: the server's frames follow its rules.
    version: u8,
}

/// Why a connection cannot go on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The TLS session failed.
    #[error("TLS: {0}")]
    Tls(TlsFailure),
}

impl Conn {
    /// Starts a non-blocking connect to `server`, from `bind` when given, for a login with
    /// protocol `version`, over TLS when `tls` is given.
    pub(crate) fn connect(
        server: SocketAddr,
        bind: Option<IpAddr>,
        version: u8,
        tls: Option<&Tls>,
    ) -> Result<Conn, ConnError> {
        let session = match tls {
            Some(tls) => Some(Box::new(
                tls.session(server)
                    .map_err(|e| ConnError::Tls(TlsFailure::from(&e)))?,
            )),
            None => None,
        };
        let socket = Socket::new(
            Domain::for_address(server),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        socket.set_nonblocking(true)?;
        socket.set_nodelay(true)?;
        if let Some(ip) = bind {
            socket.bind(&SocketAddr::new(ip, 0).into())?;
        }
        let connected = match socket.connect(&server.into()) {
            Ok(()) => true,
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => false,
            Err(e) => return Err(e.into()),
        };
        let mut conn = Conn {
            socket,
            phase: Phase::Connecting,
            tls: session,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            version,
        };
        if connected {
            conn.tcp_up()?;
        }
        Ok(conn)
    }

    /// The descriptor to poll.
    pub(crate) fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// Whether frames may flow: the connect completed, and the TLS handshake if any.
    pub(crate) fn is_connected(&self) -> bool {
        self.phase == Phase::Open
    }

    /// The `poll(2)` events this connection waits for. During the handshake they are what the
    /// session wants: to read the server's flight, or to write its own.
    pub(crate) fn interest(&self) -> i16 {
        let tls_out = self.tls.as_ref().is_some_and(|t| t.wants_write());
        match self.phase {
            Phase::Connecting => libc::POLLOUT,
            Phase::Handshaking => {
                let reads = self.tls.as_ref().map_or(true, |t| t.wants_read());
                let mut events = if tls_out { libc::POLLOUT } else { 0 };
                if reads || events == 0 {
                    events |= libc::POLLIN;
                }
                events
            }
            Phase::Open if self.wbuf.is_empty() && !tls_out => libc::POLLIN,
            Phase::Open => libc::POLLIN | libc::POLLOUT,
        }
    }

    /// The socket is ready while the connection is not [connected](Self::is_connected) yet:
    /// moves the connect or the handshake on. `Ok(true)` once frames may flow (received bytes
    /// may then already wait in the receive buffer).
    pub(crate) fn establish(&mut self) -> Result<bool, ConnError> {
        match self.phase {
            Phase::Connecting => {
                if let Some(e) = self.socket.take_error()? {
                    return Err(e.into());
                }
                // Writable without a pending error but not connected cannot happen on Linux;
                // checking the peer makes the answer certain.
                self.socket.peer_addr()?;
                self.tcp_up()?;
            }
            Phase::Handshaking => {
                if !self.read()? {
                    return Err(ConnError::Tls(TlsFailure::ClosedInHandshake));
                }
                self.handshake_step()?;
            }
            Phase::Open => {}
        }
        Ok(self.phase == Phase::Open)
    }

    /// The connect completed: a plaintext connection is open, a TLS one sends its hello.
    fn tcp_up(&mut self) -> Result<(), ConnError> {
        self.phase = if self.tls.is_some() {
            Phase::Handshaking
        } else {
            Phase::Open
        };
        self.handshake_step()
    }

    /// Ends the handshake once the session says it is done (and the server chose `tether`),
    /// and writes what is queued.
    fn handshake_step(&mut self) -> Result<(), ConnError> {
        if self.phase == Phase::Handshaking {
            let tls = self.tls.as_ref().expect("only TLS connections handshake");
            if !tls.is_handshaking() {
                if tls.alpn_protocol() != Some(ALPN) {
                    return Err(ConnError::Tls(TlsFailure::NoAlpn));
                }
                self.phase = Phase::Open;
            }
        }
        self.flush()
    }

    /// Encodes `frame` behind whatever is queued and writes as much as the kernel takes.
    pub(crate) fn send(&mut self, frame: &Frame) -> Result<(), SendError> {
        codec::encode(frame, &mut self.wbuf)?;
        if self.phase == Phase::Open {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes queued bytes until the kernel refuses more. With TLS the session's own records
    /// (its handshake flight, alerts) go first, and queued frames are handed to it only once
    /// the handshake is done.
    pub(crate) fn flush(&mut self) -> Result<(), ConnError> {
        let Some(tls) = self.tls.as_mut() else {
            return Ok(write_all(&self.socket, &mut self.wbuf)?);
        };
        loop {
            while tls.wants_write() {
                match tls.write_tls(&mut &self.socket) {
                    Ok(0) => return Err(io::Error::from(ErrorKind::WriteZero).into()),
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if self.phase != Phase::Open || self.wbuf.is_empty() {
                return Ok(());
            }
            // The session takes what fits its buffer limit; having just emptied it, at least
            // one record's worth.
            let n = tls.writer().write(&self.wbuf)?;
            if n == 0 {
                return Ok(());
            }
            self.wbuf.advance(n);
        }
    }

    /// Reads everything available. `Ok(false)` when the peer closed its side.
    pub(crate) fn read(&mut self) -> Result<bool, ConnError> {
        match self.tls.as_mut() {
            None => Ok(read_plain(&self.socket, &mut self.rbuf)?),
            Some(tls) => {
                let open = read_tls(&self.socket, tls, &mut self.rbuf);
                if open.is_err() {
                    // Best effort: tell the server why (the session queued an alert).
                    let _ = tls.write_tls(&mut &self.socket);
                }
                open
            }
        }
    }

    /// The next complete frame received, if any. A version-2 connection skips extension frames
    /// ([`Frame::Ignored`]) and fields it does not know.
    pub(crate) fn next_frame(&mut self, max_frame: usize) -> Result<Option<Frame>, DecodeError> {
        codec::decode_version(&mut self.rbuf, max_frame, self.version)
    }
}

/// Writes `buf` to `socket` until the kernel refuses more, dropping what it took.
fn write_all(mut socket: &Socket, buf: &mut BytesMut) -> io::Result<()> {
    while !buf.is_empty() {
        match socket.write(buf) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => buf.advance(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads everything `socket` has into `rbuf`. `Ok(false)` at end of stream.
fn read_plain(mut socket: &Socket, rbuf: &mut BytesMut) -> io::Result<bool> {
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        match socket.read(&mut chunk) {
            Ok(0) => return Ok(false),
            Ok(n) => rbuf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Reads everything `socket` has through the session `tls`, its plaintext into `rbuf`.
/// `Ok(false)` at end of stream, or once the server's `close_notify` came.
fn read_tls(
    mut socket: &Socket,
    tls: &mut ClientConnection,
    rbuf: &mut BytesMut,
) -> Result<bool, ConnError> {
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        let eof = match tls.read_tls(&mut socket) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        let state = tls
            .process_new_packets()
            .map_err(|e| ConnError::Tls(TlsFailure::from(&e)))?;
        let mut left = state.plaintext_bytes_to_read();
        while left > 0 {
            let n = tls.reader().read(&mut chunk[..left.min(READ_CHUNK)])?;
            if n == 0 {
                break;
            }
            rbuf.extend_from_slice(&chunk[..n]);
            left -= n;
        }
        if eof || state.peer_has_closed() {
            return Ok(false);
        }
    }
}

/// Why a frame could not be sent.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// The frame cannot be encoded (a field over its limit).
    #[error("encode: {0}")]
    Encode(#[from] EncodeError),
    /// The connection failed.
    #[error("write: {0}")]
    Conn(#[from] ConnError),
}

#[cfg(test)]
mod tests;
