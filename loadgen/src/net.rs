//! Raw non-blocking client sockets: source-address spreading, connect, read, write.
//!
//! A worker holds up to ~15,000 sockets, so it uses raw file descriptors and an epoll loop
//! rather than std's blocking streams. `IP_BIND_ADDRESS_NO_PORT` lets the kernel pick the
//! source port at connect time, per (source, destination) pair, so every source address gives
//! a full ephemeral port range towards every server port.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::RawFd;

/// The source addresses `127.0.0.2, 127.0.0.3, ..., 127.0.0.254, 127.0.1.2, ...`: `count`
/// addresses of 127.0.0.0/8, skipping .0, .1 and .255 of every /24 (127.0.0.1 is what servers
/// usually listen on, and .0/.255 look like network/broadcast addresses to some tools).
pub fn loopback_sources(count: usize) -> Vec<Ipv4Addr> {
    let mut out = Vec::with_capacity(count);
    let mut third: u32 = 0;
    'outer: while third < 256 * 256 {
        for last in 2..=254u32 {
            if out.len() == count {
                break 'outer;
            }
            let hi = (third >> 8) as u8;
            let mid = (third & 0xff) as u8;
            out.push(Ipv4Addr::new(127, hi, mid, last as u8));
        }
        third += 1;
    }
    out
}

/// Raises this process's soft open-files limit to its hard limit; returns the new soft limit.
pub fn raise_nofile() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit to write into.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit; raising soft to hard needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

/// The hard open-files limit of this process (inherited by the workers it spawns).
pub fn nofile_hard() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit to write into.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    lim.rlim_max
}

fn sockaddr_in(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// Opens a non-blocking TCP socket, binds it to `source` (port chosen at connect) when given,
/// and starts connecting to `server`. Returns the fd; the connect completes (or fails) when the
/// socket becomes writable, see [`take_error`].
pub fn start_connect(server: SocketAddr, source: Option<Ipv4Addr>) -> io::Result<RawFd> {
    let SocketAddr::V4(server) = server else {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "only IPv4 servers are supported",
        ));
    };
    // SAFETY: plain syscall without pointers.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fail = |fd: RawFd| {
        let err = io::Error::last_os_error();
        close(fd);
        err
    };
    let one: libc::c_int = 1;
    // SAFETY: the option value points at a live c_int of the given size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(fail(fd));
    }
    if let Some(src) = source {
        // SAFETY: as above.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(fail(fd));
        }
        let sa = sockaddr_in(SocketAddrV4::new(src, 0));
        // SAFETY: `sa` is a valid sockaddr_in and its exact size is passed.
        let rc = unsafe {
            libc::bind(
                fd,
                &sa as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(fail(fd));
        }
    }
    let sa = sockaddr_in(server);
    // SAFETY: as for bind.
    let rc = unsafe {
        libc::connect(
            fd,
            &sa as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINPROGRESS) {
            close(fd);
            return Err(err);
        }
    }
    Ok(fd)
}

/// The pending error of a socket (`SO_ERROR`), cleared by reading it: after a non-blocking
/// connect, `None` means connected.
pub fn take_error(fd: RawFd) -> Option<io::Error> {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `err` and `len` are valid for writes of their sizes.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            &mut err as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    if rc != 0 {
        return Some(io::Error::last_os_error());
    }
    (err != 0).then(|| io::Error::from_raw_os_error(err))
}

/// Reads into `buf`; `Ok(0)` is end of stream, `WouldBlock` means nothing more for now.
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Writes as much of `buf` as the socket takes now (never raises SIGPIPE).
pub fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of its length.
    let n = unsafe {
        libc::send(
            fd,
            buf.as_ptr() as *const libc::c_void,
            buf.len(),
            libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Closes a socket this process owns.
pub fn close(fd: RawFd) {
    // SAFETY: callers pass fds they own and never use again.
    unsafe { libc::close(fd) };
}

/// Makes a file descriptor non-blocking (used for the worker's stdin command pipe).
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain fcntl calls on an fd the caller owns.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A short, stable name for an OS error, used as an error-count key.
pub fn errno_kind(err: &io::Error) -> String {
    match err.raw_os_error() {
        Some(libc::ECONNREFUSED) => "refused".into(),
        Some(libc::ECONNRESET) => "reset".into(),
        Some(libc::ETIMEDOUT) => "timed out (kernel)".into(),
        Some(libc::EADDRNOTAVAIL) => "no free source port".into(),
        Some(libc::EADDRINUSE) => "address in use".into(),
        Some(libc::EMFILE) | Some(libc::ENFILE) => "out of file descriptors".into(),
        Some(libc::ENETUNREACH) | Some(libc::EHOSTUNREACH) => "unreachable".into(),
        Some(libc::EPIPE) => "broken pipe".into(),
        Some(code) => format!("errno {code}"),
        None => err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_skip_reserved_last_octets() {
        let s = loopback_sources(300);
        assert_eq!(s.len(), 300);
        assert_eq!(s[0], Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(s[252], Ipv4Addr::new(127, 0, 0, 254));
        assert_eq!(s[253], Ipv4Addr::new(127, 0, 1, 2));
        assert!(s.iter().all(|a| a.octets()[3] >= 2 && a.octets()[3] <= 254));
        let mut uniq = s.clone();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), 300);
    }

    #[test]
    fn connect_to_listener_from_spread_source() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let fd = start_connect(addr, Some(Ipv4Addr::new(127, 0, 0, 9))).unwrap();
        let (_stream, peer) = listener.accept().unwrap();
        assert_eq!(peer.ip(), std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9)));
        close(fd);
    }

    #[test]
    fn refused_connect_reports_refused() {
        // Bind then drop a listener to find a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let fd = start_connect(SocketAddr::from(([127, 0, 0, 1], port)), None);
        let err = match fd {
            Err(e) => e,
            Ok(fd) => {
                // Wait for the connect to finish, then read its error.
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut pfd, 1, 10_000) };
                let e = take_error(fd).expect("connect to a closed port must fail");
                close(fd);
                e
            }
        };
        assert_eq!(errno_kind(&err), "refused");
    }
}
