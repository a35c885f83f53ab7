//! A WebSocket client for the integration tests: the upgrade, masked binary messages out,
//! the server's messages read back into the tether stream.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use anyhow::{bail, Context};

use crate::{Client, PATIENCE};

/// The upgrade request for `path` from `origin` (none: not a browser).
pub fn request(path: &str, origin: Option<&str>) -> String {
    let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
    format!(
        "GET {path} HTTP/1.1\r\nHost: tether.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: tether\r\n{origin}\r\n"
    )
}

/// Sends `request` on a new connection to `addr` and reads the answer's head: its status
/// line and whatever came after the head.
pub fn upgrade(addr: SocketAddr, request: &str) -> anyhow::Result<(TcpStream, String, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(PATIENCE))?;
    stream.write_all(request.as_bytes())?;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream
            .read(&mut chunk)
            .context("reading the upgrade's answer")?;
        if n == 0 {
            bail!(
                "closed before answering: {:?}",
                String::from_utf8_lossy(&got)
            );
        }
        got.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&got[..end]).to_string();
    Ok((stream, head, got[end..].to_vec()))
}

/// Connects to the WebSocket listener `addr` (path `/tether`) and upgrades.
pub fn connect(addr: SocketAddr) -> anyhow::Result<Client> {
    let (stream, head, rest) = upgrade(addr, &request("/tether", None))?;
    if !head.starts_with("HTTP/1.1 101 ") {
        bail!("upgrade refused: {head}");
    }
    if !head.contains("Sec-WebSocket-Protocol: tether\r\n") {
        bail!("subprotocol not selected: {head}");
    }
    Ok(Client::with_stream(stream)?.with_ws(rest))
}

/// A client frame with `opcode` and `payload`, masked.
pub fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    tether_server::ws::frame::client_frame(
        true,
        opcode,
        payload,
        [0x37, 0xfa, 0x21, 0x3d],
        &mut out,
    );
    out
}

/// The server's frames read so far, and the tether bytes they carried.
#[derive(Debug, Default)]
pub struct Framing {
    /// Raw bytes not yet a whole frame.
    raw: Vec<u8>,
    /// Tether bytes not yet taken.
    data: Vec<u8>,
    /// The close code, once a Close frame came.
    pub close_code: Option<u16>,
    /// Pong frames received.
    pub pongs: usize,
}

impl Framing {
    /// Framing that starts with `raw` (bytes that came behind the upgrade's answer).
    pub fn new(raw: Vec<u8>) -> Framing {
        let mut f = Framing::default();
        f.push(&raw);
        f
    }

    /// Reads the server's frames in `bytes` (unmasked, as a server sends them).
    pub fn push(&mut self, bytes: &[u8]) {
        self.raw.extend_from_slice(bytes);
        loop {
            if self.raw.len() < 2 {
                return;
            }
            let (len, at) = match self.raw[1] & 0x7f {
                126 if self.raw.len() >= 4 => {
                    (u16::from_be_bytes([self.raw[2], self.raw[3]]) as usize, 4)
                }
                127 if self.raw.len() >= 10 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&self.raw[2..10]);
                    (u64::from_be_bytes(b) as usize, 10)
                }
                126 | 127 => return,
                n => (n as usize, 2),
            };
            assert_eq!(self.raw[1] & 0x80, 0, "a server frame must not be masked");
            if self.raw.len() < at + len {
                return;
            }
            let opcode = self.raw[0] & 0x0f;
            let payload = self.raw[at..at + len].to_vec();
            self.raw.drain(..at + len);
            match opcode {
                0x0 | 0x2 => self.data.extend_from_slice(&payload),
                0x8 => {
                    self.close_code = Some(if payload.len() >= 2 {
                        u16::from_be_bytes([payload[0], payload[1]])
                    } else {
                        1005
                    })
                }
                0xA => self.pongs += 1,
                _ => {}
            }
        }
    }

    /// Moves tether bytes into `out`; how many.
    pub fn take(&mut self, out: &mut [u8]) -> usize {
        let n = out.len().min(self.data.len());
        out[..n].copy_from_slice(&self.data[..n]);
        self.data.drain(..n);
        n
    }
}
