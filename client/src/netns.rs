//! Entering a network namespace with the calling thread only.
//!
//! `setns(2)` with `CLONE_NEWNET` moves just the calling thread; sockets it creates afterwards
//! (and threads it spawns) live in the new namespace, while the rest of the process stays
//! where it was. This lets one test process hold a client inside a namespace behind a NAT.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The file `ip netns add NAME` creates for a named namespace.
pub fn named(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// Moves the calling thread into the network namespace at `path` (for example
/// [`named`]`("cli")` or `/proc/PID/ns/net`). Needs `CAP_SYS_ADMIN`.
pub fn enter(path: &Path) -> io::Result<()> {
    let ns = File::open(path)?;
    // SAFETY: setns(2) on a descriptor we own; it changes only this thread's namespace.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
