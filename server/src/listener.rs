//! Listening sockets (one per shard, `SO_REUSEPORT`) and the options of accepted sockets.
//!
//! Each shard accepts on its own listener with a multishot accept on its own ring, so the
//! kernel spreads new connections over the shards and accepting costs no glommio task.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use socket2::{Domain, SockRef, Socket, TcpKeepalive, Type};

use crate::config::KeepaliveConfig;

/// Accept-queue length asked of `listen()`: the `net.core.somaxconn` that tuning.md sets, so the
/// kernel's cap (the smaller of the two) is the sysctl and a reconnect wave after a restart is
/// not cut short by a smaller built-in number.
const LISTEN_BACKLOG: i32 = 65535;

/// Why the listeners could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Another process already serves the address; joining its `SO_REUSEPORT` group would
    /// silently split new connections between the two.
    #[error(
        "another process is already listening on {0}: refusing to start a second server there \
         (new connections would be split between the two). For a rolling restart, start the new \
         server with --takeover (server.takeover = true), then stop the old one with SIGTERM"
    )]
    InUse(SocketAddr),
    /// Any other failure.
    #[error("listen on {0}: {1}")]
    Io(SocketAddr, std::io::Error),
}

/// Opens `n` listeners on `addr` with `SO_REUSEPORT`. With port 0 the first picks a free port
/// and the others bind the same one. Returns them and the bound address.
///
/// Unless `takeover`, first makes sure no other process listens on `addr`: a probe socket
/// without `SO_REUSEPORT` (but with `SO_REUSEADDR`, so connections of an earlier run in
/// `TIME_WAIT` do not count) binds it and is closed again; `EADDRINUSE` means a listener is
/// there.
pub fn bind_all(
    addr: SocketAddr,
    n: usize,
    takeover: bool,
) -> Result<(Vec<OwnedFd>, SocketAddr), BindError> {
    if !takeover && addr.port() != 0 {
        probe_free(addr)?;
    }
    bind_group(addr, n).map_err(|e| BindError::Io(addr, e))
}

/// Fails with [`BindError::InUse`] when a process listens on `addr`.
fn probe_free(addr: SocketAddr) -> Result<(), BindError> {
    let io = |e| BindError::Io(addr, e);
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(io)?;
    probe.set_reuse_address(true).map_err(io)?;
    match probe.bind(&addr.into()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(BindError::InUse(addr)),
        Err(e) => Err(io(e)),
    }
}

/// The `SO_REUSEPORT` group of `n` listeners.
fn bind_group(addr: SocketAddr, n: usize) -> std::io::Result<(Vec<OwnedFd>, SocketAddr)> {
    let mut addr = addr;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(LISTEN_BACKLOG)?;
        if addr.port() == 0 {
            addr = socket
                .local_addr()?
                .as_socket()
                .ok_or_else(|| std::io::Error::other("listener has no inet address"))?;
        }
        out.push(OwnedFd::from(socket));
    }
    Ok((out, addr))
}

/// The source address of an accepted socket (`getpeername`: the ring's multishot accept
/// returns only the descriptor, no address).
pub fn peer_ip(fd: RawFd) -> Option<IpAddr> {
    // SAFETY: `fd` is an open socket owned by the caller for the duration of this call.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    SockRef::from(&fd)
        .peer_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .map(|a| a.ip())
}

/// Sets the options of a freshly accepted socket: no Nagle delay (pushes and pongs are small
/// and latency-bound), `TCP_USER_TIMEOUT` when `user_timeout_ms > 0` (unacknowledged data
/// older than that fails the socket with `ETIMEDOUT`: a NAT that forgot the flow makes a dead
/// link the server then closes, instead of 15 minutes of retransmissions) and, when
/// configured, TCP keepalive as a backstop.
pub fn configure(
    fd: RawFd,
    keepalive: &KeepaliveConfig,
    user_timeout_ms: u32,
) -> std::io::Result<()> {
    // SAFETY: `fd` is an open socket owned by the caller for the duration of this call.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let sock = SockRef::from(&fd);
    sock.set_nodelay(true)?;
    if user_timeout_ms > 0 {
        sock.set_tcp_user_timeout(Some(Duration::from_millis(u64::from(user_timeout_ms))))?;
    }
    if keepalive.enabled {
        let ka = TcpKeepalive::new()
            .with_time(Duration::from_secs(u64::from(keepalive.idle_s)))
            .with_interval(Duration::from_secs(u64::from(keepalive.interval_s)))
            .with_retries(keepalive.count);
        sock.set_tcp_keepalive(&ka)?;
    }
    let _ = fd.as_raw_fd();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_group_on_a_served_address_is_refused_unless_taking_over() {
        let (first, addr) = bind_all("127.0.0.1:0".parse().unwrap(), 2, false).unwrap();
        match bind_all(addr, 2, false) {
            Err(BindError::InUse(a)) => assert_eq!(a, addr),
            other => panic!("expected InUse, got {other:?}"),
        }
        let msg = BindError::InUse(addr).to_string();
        assert!(
            msg.contains(&addr.to_string()) && msg.contains("--takeover"),
            "{msg}"
        );
        let (second, addr2) = bind_all(addr, 2, true).unwrap();
        assert_eq!(addr2, addr);
        drop((first, second));
        // Free again: a plain start works.
        bind_all(addr, 1, false).unwrap();
    }
}
