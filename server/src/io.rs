//! The few socket operations the shard state needs, as a trait.
//!
//! [`crate::state::ShardState`] decides everything about connections but performs no system
//! call itself: it asks an [`Io`] to read, write, watch and close descriptors. The server's
//! implementation is [`crate::ring::RingIo`] (direct non-blocking `recv`/`send`, polls on the
//! shard's io_uring); [`NullIo`] lets benchmarks and unit tests drive millions of simulated
//! connections without sockets.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::RawFd;

use bytes::BytesMut;

/// Socket operations on behalf of the shard state. Descriptors are plain integers here.
pub trait Io {
    /// Reads what is available from `fd` into `buf`'s spare capacity (at most `max` bytes)
    /// without blocking. `Ok(0)` is end of stream; `ErrorKind::WouldBlock` means nothing now.
    fn recv(&mut self, fd: RawFd, buf: &mut BytesMut, max: usize) -> io::Result<usize>;
    /// Writes as much of `buf` as the socket takes without blocking and returns how much.
    fn send(&mut self, fd: RawFd, buf: &[u8]) -> io::Result<usize>;
    /// Starts reporting readability of `fd` as connection `(key, gen)`.
    fn watch(&mut self, fd: RawFd, key: u32, gen: u32);
    /// Asks for one writability report of `fd` as connection `(key, gen)`.
    fn want_writable(&mut self, fd: RawFd, key: u32, gen: u32);
    /// Stops reporting `(key, gen)` but leaves `fd` open (it moves to another shard).
    /// `writable` says whether a writability report is still armed.
    fn unwatch(&mut self, key: u32, gen: u32, writable: bool);
    /// Stops reporting `(key, gen)` and closes `fd`.
    fn close(&mut self, fd: RawFd, key: u32, gen: u32, writable: bool);
}

/// An [`Io`] without sockets: reads find nothing, writes take everything, and what happened
/// is counted. For benchmarks of the shard state and for unit tests.
#[derive(Debug, Default)]
pub struct NullIo {
    /// Bytes "written" per descriptor, to check that frames went out.
    pub sent: HashMap<RawFd, BytesMut>,
    /// Whether to keep written bytes in `sent` (benchmarks turn it off).
    pub keep_sent: bool,
    /// Descriptors closed, in order.
    pub closed: Vec<RawFd>,
    /// Descriptors whose socket takes nothing (a reader that stopped reading).
    pub stalled: HashSet<RawFd>,
}

impl Io for NullIo {
    fn recv(&mut self, _fd: RawFd, _buf: &mut BytesMut, _max: usize) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }

    fn send(&mut self, fd: RawFd, buf: &[u8]) -> io::Result<usize> {
        if self.stalled.contains(&fd) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len();
        if self.keep_sent {
            self.sent
                .entry(fd)
                .or_default()
                .extend_from_slice(&buf[..n]);
        }
        Ok(n)
    }

    fn watch(&mut self, _fd: RawFd, _key: u32, _gen: u32) {}

    fn want_writable(&mut self, _fd: RawFd, _key: u32, _gen: u32) {}

    fn unwatch(&mut self, _key: u32, _gen: u32, _writable: bool) {}

    fn close(&mut self, fd: RawFd, _key: u32, _gen: u32, _writable: bool) {
        self.closed.push(fd);
    }
}
