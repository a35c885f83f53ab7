//! The shard's own io_uring: readiness polls for every connection, multishot accept, and the
//! direct non-blocking `recv`/`send` calls.
//!
//! A connection costs the ring one multishot `POLL_ADD` (POLLIN) armed once when it arrives on
//! the shard; no buffer is lent to the kernel while it is idle. When the poll reports input the
//! shard reads with a plain non-blocking `recv` into its single read buffer. Writes are plain
//! non-blocking `send`s from the shard's write buffer; only a socket that did not take
//! everything gets a one-shot `POLLOUT` poll. The shard's doorbell eventfd (written by other
//! shards after they queue a mesh message) is watched by a multishot poll on the same ring, so
//! the shard's glommio task waits for everything in one `io_uring_enter` on this ring
//! ([`RingIo::wait`]) instead of putting the glommio executor to sleep and waking it for every
//! heartbeat (a glommio sleep costs a process-wide memory barrier and several ring calls).
//!
//! `user_data` = tag (2 bits) | generation (30 bits) | slab key (32 bits), so a completion for
//! a connection that has since closed or moved is recognised and ignored.

use std::io;
use std::os::fd::RawFd;

use bytes::BytesMut;
use io_uring::{opcode, squeue, types, IoUring};

use crate::io::Io;

/// Tag of a readability completion.
pub const TAG_READ: u64 = 0;
/// Tag of a writability completion.
pub const TAG_WRITE: u64 = 1 << 62;
/// Tag of an accept completion.
pub const TAG_ACCEPT: u64 = 2 << 62;
/// Tag of completions nobody waits for (poll removals).
pub const TAG_IGNORE: u64 = 3 << 62;
/// `user_data` of the doorbell poll (tag [`TAG_IGNORE`], key 1).
pub const DOORBELL: u64 = TAG_IGNORE | 1;
/// Mask of the tag bits.
pub const TAG_MASK: u64 = 3 << 62;
/// Generations are 30 bits wide in `user_data`.
pub const GEN_MASK: u32 = (1 << 30) - 1;

/// Packs a tag, generation and key into `user_data`.
pub fn user_data(tag: u64, key: u32, gen: u32) -> u64 {
    tag | (u64::from(gen & GEN_MASK) << 32) | u64::from(key)
}

/// Unpacks `user_data` into (tag, key, generation).
pub fn unpack(ud: u64) -> (u64, u32, u32) {
    (ud & TAG_MASK, ud as u32, ((ud >> 32) as u32) & GEN_MASK)
}

/// One completion, copied out of the ring so the shard can act on it while submitting more.
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    /// The request's `user_data`.
    pub user_data: u64,
    /// The result (a descriptor, an event mask, or `-errno`).
    pub result: i32,
    /// Whether a multishot request stays armed after this completion.
    pub more: bool,
}

/// The shard's ring as an [`Io`].
pub struct RingIo {
    /// The ring.
    ring: IoUring,
}

impl std::fmt::Debug for RingIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RingIo { .. }")
    }
}

impl RingIo {
    /// A ring with `entries` submission slots (completion queue twice that; the kernel keeps
    /// overflowing completions rather than dropping them).
    pub fn new(entries: u32) -> io::Result<RingIo> {
        let ring = IoUring::builder().setup_clamp().build(entries)?;
        Ok(RingIo { ring })
    }

    /// Arms a multishot poll on the shard's doorbell eventfd; it completes with
    /// [`DOORBELL`] whenever another shard rings.
    pub fn watch_doorbell(&mut self, efd: RawFd) {
        let sqe = opcode::PollAdd::new(types::Fd(efd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(DOORBELL);
        self.push(sqe);
    }

    /// Submits what was queued and blocks until at least one completion is posted or
    /// `timeout` has passed.
    pub fn wait(&mut self, timeout: std::time::Duration) -> io::Result<()> {
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Arms a multishot accept on `listener`.
    pub fn accept(&mut self, listener: RawFd) {
        let sqe = opcode::AcceptMulti::new(types::Fd(listener))
            .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
            .build()
            .user_data(TAG_ACCEPT);
        self.push(sqe);
    }

    /// Cancels the multishot accept.
    pub fn cancel_accept(&mut self) {
        let sqe = opcode::AsyncCancel::new(TAG_ACCEPT)
            .build()
            .user_data(TAG_IGNORE);
        self.push(sqe);
    }

    /// Submits what was queued (one system call, no waiting; none when nothing is queued,
    /// which is the common case for a heartbeat).
    pub fn submit(&mut self) -> io::Result<()> {
        if self.ring.submission().is_empty() {
            return Ok(());
        }
        match self.ring.submit() {
            Ok(_) => Ok(()),
            Err(e)
                if e.raw_os_error() == Some(libc::EBUSY)
                    || e.kind() == io::ErrorKind::Interrupted =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Moves the posted completions into `out`.
    pub fn completions(&mut self, out: &mut Vec<Completion>) {
        for cqe in self.ring.completion() {
            out.push(Completion {
                user_data: cqe.user_data(),
                result: cqe.result(),
                more: io_uring::cqueue::more(cqe.flags()),
            });
        }
    }

    /// Queues `sqe`, submitting first when the submission queue is full.
    fn push(&mut self, sqe: squeue::Entry) {
        loop {
            // SAFETY: the requests queued here (polls, poll removals, accept, cancel) point to
            // no user memory; descriptors stay open until their poll is removed or they are
            // closed, which the kernel tolerates (the request holds its own file reference).
            if unsafe { self.ring.submission().push(&sqe) }.is_ok() {
                return;
            }
            if let Err(e) = self.ring.submit() {
                tracing::error!(error = %e, "io_uring submit failed");
            }
        }
    }

    /// Queues the removal of a poll.
    fn remove(&mut self, target: u64) {
        let sqe = opcode::PollRemove::new(target)
            .build()
            .user_data(TAG_IGNORE);
        self.push(sqe);
    }
}

impl Io for RingIo {
    fn recv(&mut self, fd: RawFd, buf: &mut BytesMut, max: usize) -> io::Result<usize> {
        let spare = buf.spare_capacity_mut();
        let len = spare.len().min(max);
        // SAFETY: reads at most `len` bytes into the buffer's spare capacity, which is
        // allocated and owned by `buf`; only the bytes the kernel wrote are then exposed.
        let n = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), len, libc::MSG_DONTWAIT) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        // SAFETY: the kernel initialised `n <= len` bytes of the spare capacity.
        unsafe { buf.set_len(buf.len() + n) };
        Ok(n)
    }

    fn send(&mut self, fd: RawFd, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: `buf` is a live slice; the kernel only reads it.
        let n = unsafe {
            libc::send(
                fd,
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn watch(&mut self, fd: RawFd, key: u32, gen: u32) {
        let events = (libc::POLLIN | libc::POLLRDHUP) as u32;
        let sqe = opcode::PollAdd::new(types::Fd(fd), events)
            .multi(true)
            .build()
            .user_data(user_data(TAG_READ, key, gen));
        self.push(sqe);
    }

    fn want_writable(&mut self, fd: RawFd, key: u32, gen: u32) {
        let sqe = opcode::PollAdd::new(types::Fd(fd), libc::POLLOUT as u32)
            .build()
            .user_data(user_data(TAG_WRITE, key, gen));
        self.push(sqe);
    }

    fn unwatch(&mut self, key: u32, gen: u32, writable: bool) {
        self.remove(user_data(TAG_READ, key, gen));
        if writable {
            self.remove(user_data(TAG_WRITE, key, gen));
        }
    }

    fn close(&mut self, fd: RawFd, key: u32, gen: u32, writable: bool) {
        self.unwatch(key, gen, writable);
        // SAFETY: the connection owned `fd` and is gone; nobody uses the number afterwards.
        // The polls being removed hold their own file references until they complete.
        unsafe { libc::close(fd) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips() {
        for (tag, key, gen) in [
            (TAG_READ, 0, 1),
            (TAG_WRITE, u32::MAX, GEN_MASK),
            (TAG_ACCEPT, 7, 0),
        ] {
            assert_eq!(unpack(user_data(tag, key, gen)), (tag, key, gen));
        }
    }
}
