//! A minimal safe wrapper over Linux epoll: one instance per worker process.
//!
//! Registrations are edge-triggered; the 64-bit user data is the caller's token (slot index
//! and generation of a connection, or a reserved value for stdin).

use std::io;
use std::os::fd::RawFd;

/// Interest in readability, writability and the peer's half-close, edge-triggered.
pub const READ_WRITE: u32 =
    (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
/// Interest in readability only, edge-triggered.
pub const READ: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32;

/// An owned epoll file descriptor.
#[derive(Debug)]
pub struct Epoll {
    /// The epoll instance; closed on drop.
    fd: RawFd,
}

/// One readiness report.
#[derive(Clone, Copy, Debug)]
pub struct Event {
    /// Token given at registration.
    pub token: u64,
    /// Readable (or the peer closed: reading tells which).
    pub readable: bool,
    /// Writable (after a non-blocking connect: the connect finished, successfully or not).
    pub writable: bool,
    /// An error or hang-up is pending on the socket.
    pub error: bool,
    /// The peer closed its side (or both sides are closed): read until end of stream.
    pub hup: bool,
}

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: plain syscall without pointers.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll { fd })
    }

    /// Starts watching `fd` with `interest` ([`READ_WRITE`] or [`READ`]).
    pub fn add(&self, fd: RawFd, token: u64, interest: u32) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: interest,
            u64: token,
        };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call.
        let rc = unsafe { libc::epoll_ctl(self.fd, libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout_ms` (-1: forever) and appends the ready events to `out`.
    pub fn wait(
        &self,
        buf: &mut Vec<libc::epoll_event>,
        out: &mut Vec<Event>,
        timeout_ms: i32,
    ) -> io::Result<()> {
        out.clear();
        let cap = buf.capacity().max(1);
        buf.clear();
        // SAFETY: the kernel writes at most `cap` events into the vector's spare capacity, and
        // reports how many; only those are then marked initialised.
        let n = unsafe { libc::epoll_wait(self.fd, buf.as_mut_ptr(), cap as i32, timeout_ms) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(err);
        }
        // SAFETY: the first `n` entries were written by epoll_wait.
        unsafe { buf.set_len(n as usize) };
        for ev in buf.iter() {
            let bits = ev.events as i32;
            out.push(Event {
                token: ev.u64,
                readable: bits & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP) != 0,
                writable: bits & libc::EPOLLOUT != 0,
                error: bits & (libc::EPOLLERR | libc::EPOLLHUP) != 0,
                hup: bits & (libc::EPOLLRDHUP | libc::EPOLLHUP) != 0,
            });
        }
        Ok(())
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: `fd` is owned by this value and closed once.
        unsafe { libc::close(self.fd) };
    }
}
