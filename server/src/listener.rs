//! Listening sockets (one per shard, `SO_REUSEPORT`) and the options of accepted sockets.
//!
//! Each shard accepts on its own listener with a multishot accept on its own ring, so the
//! kernel spreads new connections over the shards and accepting costs no glommio task.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use socket2::{Domain, SockRef, Socket, TcpKeepalive, Type};

use crate::config::KeepaliveConfig;

/// Accept-queue length asked of `listen()`: the `net.core.somaxconn` that tuning.md sets, so the
/// kernel's cap (the smaller of the two) is the sysctl and a reconnect wave after a restart is
/// not cut short by a smaller built-in number.
const LISTEN_BACKLOG: i32 = 65535;

/// Opens `n` listeners on `addr` with `SO_REUSEPORT`. With port 0 the first picks a free port
/// and the others bind the same one. Returns them and the bound address.
pub fn bind_all(addr: SocketAddr, n: usize) -> std::io::Result<(Vec<OwnedFd>, SocketAddr)> {
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

/// Sets the options of a freshly accepted socket: no Nagle delay (pushes and pongs are small
/// and latency-bound) and, when configured, TCP keepalive as a backstop.
pub fn configure(fd: RawFd, keepalive: &KeepaliveConfig) -> std::io::Result<()> {
    // SAFETY: `fd` is an open socket owned by the caller for the duration of this call.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let sock = SockRef::from(&fd);
    sock.set_nodelay(true)?;
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
