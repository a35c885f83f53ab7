//! One TCP connection of the driver: a non-blocking connect, a receive buffer that frames are
//! decoded from (with the rules of the protocol version its login asks for), and a send buffer
//! for what the kernel did not take yet.
//!
//! The socket is created by the thread that calls [`Conn::connect`], so it lives in that
//! thread's network namespace.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};

use bytes::BytesMut;
use socket2::{Domain, Protocol, Socket, Type};
use tether_proto::{codec, DecodeError, EncodeError, Frame};

/// Bytes read from the socket per `read` call.
const READ_CHUNK: usize = 16 * 1024;

/// One connection to the server.
#[derive(Debug)]
pub(crate) struct Conn {
    /// The non-blocking socket.
    socket: Socket,
    /// Whether the non-blocking connect completed; until then only writability is polled.
    connected: bool,
    /// Received bytes not yet decoded into frames.
    rbuf: BytesMut,
    /// Encoded frames the kernel has not accepted yet.
    wbuf: BytesMut,
    /// The protocol version of this connection's login: the server's frames follow its rules.
    version: u8,
}

impl Conn {
    /// Starts a non-blocking connect to `server`, from `bind` when given, for a login with
    /// protocol `version`.
    pub(crate) fn connect(
        server: SocketAddr,
        bind: Option<IpAddr>,
        version: u8,
    ) -> io::Result<Conn> {
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
            Err(e) => return Err(e),
        };
        Ok(Conn {
            socket,
            connected,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            version,
        })
    }

    /// The descriptor to poll.
    pub(crate) fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// Whether the connect completed.
    pub(crate) fn is_connected(&self) -> bool {
        self.connected
    }

    /// The `poll(2)` events this connection waits for.
    pub(crate) fn interest(&self) -> i16 {
        if !self.connected {
            libc::POLLOUT
        } else if self.wbuf.is_empty() {
            libc::POLLIN
        } else {
            libc::POLLIN | libc::POLLOUT
        }
    }

    /// The socket became writable (or failed) while connecting: did the connect succeed?
    pub(crate) fn finish_connect(&mut self) -> io::Result<()> {
        if let Some(e) = self.socket.take_error()? {
            return Err(e);
        }
        // Writable without a pending error but not connected cannot happen on Linux; checking
        // the peer makes the answer certain.
        self.socket.peer_addr()?;
        self.connected = true;
        self.flush()
    }

    /// Encodes `frame` behind whatever is queued and writes as much as the kernel takes.
    pub(crate) fn send(&mut self, frame: &Frame) -> Result<(), SendError> {
        codec::encode(frame, &mut self.wbuf)?;
        if self.connected {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes queued bytes until the kernel refuses more.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        while !self.wbuf.is_empty() {
            match self.socket.write(&self.wbuf) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    let _ = self.wbuf.split_to(n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads everything available. `Ok(false)` when the peer closed its side.
    pub(crate) fn read(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            match self.socket.read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => self.rbuf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The next complete frame received, if any. A version-2 connection skips extension frames
    /// ([`Frame::Ignored`]) and fields it does not know.
    pub(crate) fn next_frame(&mut self, max_frame: usize) -> Result<Option<Frame>, DecodeError> {
        codec::decode_version(&mut self.rbuf, max_frame, self.version)
    }
}

/// Why a frame could not be sent.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// The frame cannot be encoded (a field over its limit).
    #[error("encode: {0}")]
    Encode(#[from] EncodeError),
    /// The socket failed.
    #[error("write: {0}")]
    Io(#[from] io::Error),
}
