//! Refusing a connection politely: the back-off frame, and the reserve descriptor that lets a
//! shard refuse connections even when the process has no descriptor left.
//!
//! A refused client reads one pre-login frame, `GoAway { Overloaded, may_reconnect: true,
//! window_ms }`, then end of stream: it reconnects at a random point in the window instead of
//! at once. When `accept` fails with `EMFILE`/`ENFILE` the waiting connections cannot even be
//! accepted to be refused; the shard then closes its [`Reserve`] (a descriptor opened on
//! `/dev/null` at start), accepts and refuses waiting connections with it, and opens the
//! reserve again.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use bytes::BytesMut;
use tether_proto::{codec, CloseCode, Frame, GoAway};

/// Encodes the back-off frame with a reconnect window of `window_ms` into `out`.
pub fn backoff(window_ms: u32, out: &mut BytesMut) {
    let frame = Frame::GoAway(GoAway {
        reason: CloseCode::Overloaded,
        may_reconnect: true,
        window_ms,
    });
    codec::encode(&frame, out).expect("a GoAway has no field to exceed a bound");
}

/// Writes `frame` to the fresh socket `fd` without blocking (a new socket's send buffer
/// takes a few bytes) and closes it. Takes ownership of `fd`.
pub fn refuse(fd: RawFd, frame: &[u8]) {
    // SAFETY: the caller hands over an open socket it owns; it is closed when `owned` drops.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `frame` is a live slice the kernel only reads.
    let _ = unsafe {
        libc::send(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    drop(owned);
}

/// Descriptors held in reserve for refusing connections when the process has none left.
///
/// One reserve serves every shard (behind a lock in [`crate::driver::accept::GateConfig`]): with one
/// per shard, two shards at `EMFILE` at once took each other's freed number, and the shard
/// left without a reserve could no longer answer the connections waiting on its listener. It
/// holds [`RESERVE_FDS`] descriptors and gives back one at a time, so a number taken by
/// another thread in that instant still leaves one; the missing ones are reopened whenever a
/// descriptor is free again.
#[derive(Debug)]
pub struct Reserve {
    /// The reserve descriptors (on `/dev/null`).
    fds: Vec<OwnedFd>,
}

/// Descriptors the reserve holds.
pub const RESERVE_FDS: usize = 2;

impl Reserve {
    /// Opens the reserve.
    pub fn open() -> Reserve {
        let mut r = Reserve { fds: Vec::new() };
        r.refill();
        r
    }

    /// Whether a reserve descriptor is held.
    #[cfg(test)]
    pub fn is_held(&self) -> bool {
        !self.fds.is_empty()
    }

    /// Whether every reserve descriptor is held.
    pub fn is_full(&self) -> bool {
        self.fds.len() >= RESERVE_FDS
    }

    /// Reopens the descriptors that are missing, as far as the process has any free; returns
    /// whether the reserve is whole again.
    pub fn refill(&mut self) -> bool {
        while self.fds.len() < RESERVE_FDS {
            match open_null() {
                Some(fd) => self.fds.push(fd),
                None => break,
            }
        }
        self.is_full()
    }

    /// Gives the reserve descriptor back to the process, accepts up to `max` connections
    /// waiting on `listener` and refuses each with `frame`, then takes the reserve again.
    /// Returns how many were refused. Without the reserve (another thread took the freed
    /// number) it still tries: a descriptor may have been freed meanwhile.
    pub fn refuse_waiting(&mut self, listener: RawFd, frame: &[u8], max: usize) -> usize {
        drop(self.fds.pop());
        let mut refused = 0;
        while refused < max {
            // SAFETY: accept4 on a listening socket with no address buffers.
            let fd = unsafe {
                libc::accept4(
                    listener,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                if std::io::Error::last_os_error().raw_os_error() == Some(libc::ECONNABORTED) {
                    continue;
                }
                break;
            }
            refuse(fd, frame);
            refused += 1;
        }
        self.refill();
        refused
    }
}

/// Whether the process can open one more descriptor now (it opens and closes one).
pub fn spare_descriptor() -> bool {
    open_null().is_some()
}

/// `/dev/null`, read-only, close-on-exec.
fn open_null() -> Option<OwnedFd> {
    std::fs::File::open("/dev/null").ok().map(OwnedFd::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_a_go_away_overloaded_with_the_window() {
        let mut out = BytesMut::new();
        backoff(30_000, &mut out);
        // The golden bytes of docs/protocol.md's `go-away` vector with code 1005 (ed 07).
        assert_eq!(&out[..], &[0x0a, 0x06, 0xed, 0x07, 0x01, 0xb0, 0xea, 0x01]);
        match codec::decode(&mut out, 64).unwrap() {
            Some(Frame::GoAway(g)) => {
                assert_eq!(g.reason, CloseCode::Overloaded);
                assert!(g.may_reconnect);
                assert_eq!(g.window_ms, 30_000);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_reserve_refuses_waiting_connections_and_is_taken_again() {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut clients: Vec<_> = (0..3)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        let mut frame = BytesMut::new();
        backoff(5_000, &mut frame);
        let mut reserve = Reserve::open();
        assert!(reserve.is_held());
        assert_eq!(reserve.refuse_waiting(listener.as_raw_fd(), &frame, 2), 2);
        assert!(reserve.is_held());
        for c in clients.iter_mut().take(2) {
            c.set_read_timeout(Some(std::time::Duration::from_secs(30)))
                .unwrap();
            let mut got = Vec::new();
            c.read_to_end(&mut got).unwrap();
            assert_eq!(got, &frame[..]);
        }
    }
}
