//! The shard's own io_uring: receives into a ring of provided buffers, sends, the multishot
//! accept, the mesh doorbell, and the one wait per batch.
//!
//! A logged-in connection has one multishot `RECV` armed, which selects its buffer from the
//! shard's provided-buffer ring ([`BufRing`]) only when bytes arrive: an idle connection owns
//! no buffer. Bytes reach the shard in completions, with no `recv` system call. Sends are
//! `SEND` requests queued during a batch and submitted by the same `io_uring_enter` that waits
//! for the next batch ([`RingIo::wait`]); that wait may gather completions for a bounded time
//! so that one wakeup serves many heartbeats (see "Gathering" below). A send nothing
//! waits for is *quiet* ([`RingIo::send_quiet`]): it is tried while that `io_uring_enter` runs
//! and posts a completion only when it fails, so a heartbeat's answer costs no second wakeup.
//!
//!
//! Connections are *direct descriptors* ([`Direct`]): slots of the ring's own file table
//! (io_uring's registered, or fixed, files), not numbers in the process's descriptor table. An
//! accepted socket passes through the process table only while it is being set up: the driver
//! installs it in a slot ([`RingIo::install`]) and closes the process descriptor. Every
//! request on it names the slot, so the kernel looks the socket up in the ring's table (no
//! `fdget` per request), and [`RingIo::close`] empties the slot. The table is sized at start
//! and can never exceed the open-files limit (`RLIMIT_NOFILE`) of the process, but it is
//! per ring: a process with S shards holds up to S times that limit in connections.
//!
//! **Gathering.** With deferred task running, a socket's readiness becomes work queued for the
//! shard's thread, and the kernel wakes a waiting thread only once as many items are queued as
//! it waits for (a *lazy* wake; on Linux 6.18 every completion source is lazy, exclusive polls
//! and futex waits included). With `server.batch_wait_us` > 0 and no backend connection on
//! the shard, the wait asks for `batch_target` completions and sleeps at most `batch_wait_us`:
//! the heartbeats of many client connections then share one wakeup, each waiting at most that
//! long. The one thing that ends such a sleep early is a signal: the mesh sends one to a
//! shard that gathers when a message arrives for it (`mesh.rs`), so pushes do not wait.
//!
//! `user_data` = tag ([`Tag`], 3 bits) | generation (29 bits) | slab key (32 bits), so a completion for
//! a connection that has since closed or moved is recognised and ignored. Requests on a slot
//! rather than a connection ([`Tag::File`]) carry the slot and what was asked of it instead.

use std::io;
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use io_uring::types::BufRingEntry;
use io_uring::{cqueue, opcode, squeue, types, IoUring, Probe};

use crate::core::{ConnId, GEN_MASK};

/// What a request is, in the top three bits (61 to 63) of its `user_data`. The eight kinds
/// fill the three bits, so every `user_data` has one ([`Tag::of`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Tag {
    /// A one-shot receive.
    Recv = 0,
    /// A multishot receive.
    RecvMulti = 1,
    /// A send.
    Send = 2,
    /// The multishot accept (its `user_data` also carries [`ACCEPT_TLS`] or [`ACCEPT_WS`]).
    Accept = 3,
    /// A completion nobody waits for (cancellations, a last word's write).
    Ignore = 4,
    /// The doorbell poll.
    Doorbell = 5,
    /// A quiet send ([`RingIo::send_quiet`]): only a failure completes it.
    Quiet = 6,
    /// A request on a slot of the file table ([`FileOp`]): its completion frees the slot or
    /// brings a descriptor out of it.
    File = 7,
}

impl Tag {
    /// Every tag, by its value.
    pub const ALL: [Tag; 8] = [
        Tag::Recv,
        Tag::RecvMulti,
        Tag::Send,
        Tag::Accept,
        Tag::Ignore,
        Tag::Doorbell,
        Tag::Quiet,
        Tag::File,
    ];

    /// The tag of `user_data`.
    pub fn of(user_data: u64) -> Tag {
        // Three bits index eight tags: never out of bounds.
        Tag::ALL[(user_data >> TAG_SHIFT) as usize]
    }

    /// The tag's bits in a `user_data`.
    const fn bits(self) -> u64 {
        (self as u64) << TAG_SHIFT
    }
}

/// Where the tag starts in a `user_data`.
const TAG_SHIFT: u32 = 61;
/// Set in the `user_data` of the TLS listener's accept (beside [`Tag::Accept`]).
pub const ACCEPT_TLS: u64 = 1;
/// Set in the `user_data` of the WebSocket listener's accept.
pub const ACCEPT_WS: u64 = 2;

/// The provided-buffer group of a shard's ring (one ring, one group).
const BGID: u16 = 0;
/// `IOU_PBUF_RING_INC` (kernel 6.12): buffers are consumed incrementally, so one large
/// buffer serves many small receives.
const PBUF_RING_INC: u16 = 2;
/// `IORING_CQE_F_BUF_MORE`: the buffer of this completion is not used up yet.
const CQE_F_BUF_MORE: u32 = 1 << 4;

/// `IORING_ENTER_GETEVENTS`.
const ENTER_GETEVENTS: u32 = 1;
/// `IORING_ENTER_EXT_ARG`: the argument is an [`GeteventsArg`].
const ENTER_EXT_ARG: u32 = 1 << 3;
/// The kernel's signal set: `_NSIG / 8` bytes.
const KERNEL_SIGSET_BYTES: u32 = 8;

/// `struct io_uring_getevents_arg`.
#[repr(C)]
struct GeteventsArg {
    sigmask: u64,
    sigmask_sz: u32,
    min_wait_usec: u32,
    ts: u64,
}

/// The largest file table the kernel registers for one ring (`IORING_MAX_FIXED_FILES`).
pub const MAX_FILES: u32 = 1 << 20;

/// A direct descriptor: a slot of the ring's file table. The process's descriptor table does
/// not hold it, so it costs none of the process's `RLIMIT_NOFILE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Direct(NonZeroU32);

impl Direct {
    /// Slot `index` of the table.
    pub fn new(index: u32) -> Direct {
        Direct(NonZeroU32::MIN.saturating_add(index))
    }

    /// The slot's index in the table.
    pub fn index(self) -> u32 {
        self.0.get() - 1
    }

    fn fixed(self) -> types::Fixed {
        types::Fixed(self.index())
    }
}

/// What a [`Tag::File`] request did to its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileOp {
    /// Emptied it ([`RingIo::close`], [`RingIo::close_after`]): the slot is free once this
    /// completes.
    Close,
    /// Installed its socket in the process's table ([`RingIo::bring_out`]): the result is the
    /// new descriptor.
    BringOut,
}

/// Packs a request on slot `d` into `user_data`.
fn file_data(op: FileOp, d: Direct) -> u64 {
    let op = match op {
        FileOp::Close => 0,
        FileOp::BringOut => 1,
    };
    Tag::File.bits() | (op << 32) | u64::from(d.index())
}

/// Unpacks the `user_data` of a [`Tag::File`] completion.
pub fn unpack_file(ud: u64) -> (FileOp, Direct) {
    let op = if (ud >> 32) & 1 == 0 {
        FileOp::Close
    } else {
        FileOp::BringOut
    };
    (op, Direct::new(ud as u32))
}

/// Packs a tag and a connection into `user_data`.
pub fn user_data(tag: Tag, id: ConnId) -> u64 {
    tag.bits() | (u64::from(id.gen & GEN_MASK) << 32) | u64::from(id.key)
}

/// Unpacks `user_data` into (tag, connection).
pub fn unpack(ud: u64) -> (Tag, ConnId) {
    (
        Tag::of(ud),
        ConnId {
            key: ud as u32,
            gen: ((ud >> 32) as u32) & GEN_MASK,
        },
    )
}

/// One completion, copied out of the ring so the shard can act on it while queueing more.
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    /// The request's `user_data`.
    pub user_data: u64,
    /// The result (a byte count, a descriptor, an event mask, or `-errno`).
    pub result: i32,
    /// The completion's flags (buffer id, more, buffer-more).
    pub flags: u32,
}

impl Completion {
    /// Whether a multishot request stays armed after this completion.
    pub fn more(&self) -> bool {
        cqueue::more(self.flags)
    }
}

/// How the shard's wait gathers completions.
#[derive(Clone, Copy, Debug)]
pub struct WaitPolicy {
    /// Sleep at most this long for `batch_target` completions, unless something that wakes
    /// at once comes first (0: return at the first completion). See "Gathering" above.
    pub batch_wait: Duration,
    /// Return as soon as this many completions are there.
    pub batch_target: u32,
}

/// The shard's ring.
pub struct RingIo {
    /// The ring.
    ring: IoUring,
    /// Receive buffers lent to the kernel.
    bufs: BufRing,
    /// The wait policy.
    policy: WaitPolicy,
    /// Slots of the file table.
    files: u32,
    /// What the ring did, for `/metrics`.
    stats: RingStats,
}

/// What a shard's ring did since it started (plain integers; published with the counters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingStats {
    /// `io_uring_enter` calls that waited for completions (one per batch).
    pub waits: u64,
    /// Requests handed to the kernel.
    pub submitted: u64,
    /// Completions reaped.
    pub completions: u64,
    /// Times the submission queue was full and had to be submitted early (or, with the
    /// kernel's completion queue full too, deferred).
    pub sq_full: u64,
    /// Completions the kernel could not post at once because the completion queue was full
    /// (its overflow counter; nothing is lost, but the queue is too small).
    pub cq_overflow: u64,
}

impl std::fmt::Debug for RingIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingIo")
            .field("buffers", &self.bufs.count)
            .field("buffer_bytes", &self.bufs.size)
            .field("incremental", &self.bufs.incremental)
            .finish_non_exhaustive()
    }
}

impl RingIo {
    /// A ring with `entries` submission slots, a receive pool of about `pool_bytes` and a file
    /// table of `files` direct descriptors (at most the process's open-files limit and
    /// [`MAX_FILES`]: the kernel refuses a larger table).
    pub fn new(
        entries: u32,
        pool_bytes: usize,
        files: u32,
        policy: WaitPolicy,
    ) -> io::Result<RingIo> {
        // Deferred task running (6.1+): completion work runs when the shard enters the ring
        // to wait, on its own thread, instead of interrupting it; measured 4 % less CPU per
        // heartbeat in the spread shape (BENCHMARKS.md). Older kernels get a plain ring.
        let ring = IoUring::builder()
            .setup_clamp()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(entries)
            .or_else(|_| IoUring::builder().setup_clamp().build(entries))?;
        // A connection that logs in on another shard leaves this ring's table through
        // IORING_OP_FIXED_FD_INSTALL (Linux 6.8): without it no connection could move.
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        if !probe.is_supported(opcode::FixedFdInstall::CODE) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the kernel has no IORING_OP_FIXED_FD_INSTALL (Linux 6.8 or later is needed)",
            ));
        }
        ring.submitter().register_files_sparse(files).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("registering a table of {files} direct descriptors: {e}"),
            )
        })?;
        let bufs = BufRing::new(&ring, pool_bytes)?;
        Ok(RingIo {
            ring,
            bufs,
            policy,
            files,
            stats: RingStats::default(),
        })
    }

    /// Slots of the file table.
    pub fn files(&self) -> u32 {
        self.files
    }

    /// Puts the socket `fd` in the empty slot `d`, at once (one `io_uring_register` call). The
    /// slot holds its own reference: the caller closes `fd` afterwards.
    pub fn install(&mut self, d: Direct, fd: RawFd) -> io::Result<()> {
        match self
            .ring
            .submitter()
            .register_files_update(d.index(), &[fd])?
        {
            1 => Ok(()),
            _ => Err(io::Error::other("the file table took no descriptor")),
        }
    }

    /// Empties slot `d` (its completion, [`FileOp::Close`], says the slot is free again).
    /// Requests still armed on the socket hold their own reference to it until they end.
    pub fn close(&mut self, d: Direct) {
        let sqe = opcode::Close::new(d.fixed())
            .build()
            .user_data(file_data(FileOp::Close, d));
        self.push(sqe);
    }

    /// Writes `len` bytes at `ptr` to slot `d` once, without waiting for room (a connection's
    /// last word: an alert, a WebSocket Close, a refusal), then empties the slot whatever the
    /// write did. Only the close completes ([`FileOp::Close`]); a failed write posts a
    /// completion nobody waits for.
    ///
    /// # Safety
    /// The memory must stay valid and unchanged until the close's completion is reaped.
    pub unsafe fn close_after(&mut self, d: Direct, ptr: *const u8, len: u32) {
        let send = opcode::Send::new(d.fixed(), ptr, len)
            .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
            .build()
            .flags(squeue::Flags::IO_HARDLINK | squeue::Flags::SKIP_SUCCESS)
            .user_data(Tag::Ignore.bits());
        let close = opcode::Close::new(d.fixed())
            .build()
            .user_data(file_data(FileOp::Close, d));
        // A link must not be cut by a full submission queue between its two entries.
        self.room_for(2);
        self.push(send);
        self.push(close);
    }

    /// Installs the socket of slot `d` in the process's descriptor table (close-on-exec); the
    /// completion ([`FileOp::BringOut`]) carries the new descriptor or `-errno`. The slot keeps
    /// its reference until [`RingIo::close`].
    pub fn bring_out(&mut self, d: Direct) {
        let sqe = opcode::FixedFdInstall::new(d.fixed(), 0)
            .build()
            .user_data(file_data(FileOp::BringOut, d));
        self.push(sqe);
    }

    /// The receive pool: (buffers, bytes each, consumed incrementally).
    pub fn pool(&self) -> (usize, usize, bool) {
        (self.bufs.count, self.bufs.size, self.bufs.incremental)
    }

    /// Arms a multishot poll on the shard's doorbell eventfd.
    pub fn watch_doorbell(&mut self, efd: RawFd) {
        let sqe = opcode::PollAdd::new(types::Fd(efd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(Tag::Doorbell.bits());
        self.push(sqe);
    }

    /// Arms a multishot accept on `listener`; `which` (0, [`ACCEPT_TLS`] or [`ACCEPT_WS`])
    /// is set in its completions' `user_data` beside [`Tag::Accept`], to tell the listeners
    /// apart.
    pub fn accept(&mut self, listener: RawFd, which: u64) {
        let sqe = opcode::AcceptMulti::new(types::Fd(listener))
            .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
            .build()
            .user_data(Tag::Accept.bits() | which);
        self.push(sqe);
    }

    /// Cancels the multishot accepts.
    pub fn cancel_accept(&mut self) {
        self.cancel(Tag::Accept.bits());
        self.cancel(Tag::Accept.bits() | ACCEPT_TLS);
        self.cancel(Tag::Accept.bits() | ACCEPT_WS);
    }

    /// Arms a receive on slot `d` for connection `id`: multishot, or one-shot.
    pub fn recv(&mut self, d: Direct, id: ConnId, multishot: bool) {
        let sqe = if multishot {
            opcode::RecvMulti::new(d.fixed(), BGID)
                .build()
                .user_data(user_data(Tag::RecvMulti, id))
        } else {
            opcode::Recv::new(d.fixed(), std::ptr::null_mut(), 0)
                .buf_group(BGID)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT)
                .user_data(user_data(Tag::Recv, id))
        };
        self.push(sqe);
    }

    /// Queues a send of `len` bytes at `ptr` to slot `d`.
    ///
    /// # Safety
    /// The memory must stay valid and unchanged until the send's completion is reaped.
    pub unsafe fn send(&mut self, d: Direct, ptr: *const u8, len: u32, ud: u64) {
        let sqe = opcode::Send::new(d.fixed(), ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(ud);
        self.push(sqe);
    }

    /// Queues a quiet send of `len` bytes at `ptr` to slot `d`: tried once, in full, while the
    /// `io_uring_enter` that submits it runs (`MSG_DONTWAIT`, so it never waits for the socket;
    /// `MSG_WAITALL`, so a short write is a failure), and posting a completion only when it
    /// failed (`IOSQE_CQE_SKIP_SUCCESS`). A send that succeeds wakes nobody: once
    /// [`RingIo::quiet_settled`] says so after a submission, every quiet send queued before it
    /// without a completion was written whole. A failure completes with `-EAGAIN` (the socket
    /// was full: nothing was written) or the bytes written before the error, or `-errno`.
    ///
    /// # Safety
    /// The memory must stay valid and unchanged until the submission that takes it returns,
    /// or, after a failure, until its completion is reaped.
    pub unsafe fn send_quiet(&mut self, d: Direct, ptr: *const u8, len: u32, ud: u64) {
        let sqe = opcode::Send::new(d.fixed(), ptr, len)
            .flags(libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT | libc::MSG_WAITALL)
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS)
            .user_data(ud);
        self.push(sqe);
    }

    /// Whether every request queued so far was taken by the kernel and every failure it
    /// produced is in the completion queue: nothing waits in the submission queue and no
    /// completion waits in the kernel's overflow list. Then quiet sends queued before the last
    /// submission without a failure completion were written whole.
    pub fn quiet_settled(&mut self) -> bool {
        let mut sq = self.ring.submission();
        sq.sync();
        sq.is_empty() && !sq.cq_overflow()
    }

    /// Cancels the request with `user_data` `target` (its completion still arrives).
    pub fn cancel(&mut self, target: u64) {
        let sqe = opcode::AsyncCancel::new(target)
            .build()
            .user_data(Tag::Ignore.bits());
        self.push(sqe);
    }

    /// Cancels every receive of connection `id`.
    pub fn cancel_recv(&mut self, id: ConnId) {
        self.cancel(user_data(Tag::Recv, id));
        self.cancel(user_data(Tag::RecvMulti, id));
    }

    /// Submits what was queued and blocks until completions are there or `timeout` has
    /// passed. With `gather`, the signal mask of a gathering wait (and `batch_wait` > 0, and
    /// a `timeout` > 0: nothing is waiting to be handled), it sleeps at most `batch_wait` and
    /// returns early only for `batch_target` completions or a signal that mask lets through
    /// (see "Gathering" above).
    pub fn wait(&mut self, timeout: Duration, gather: Option<&libc::sigset_t>) -> io::Result<()> {
        let gather = gather.filter(|_| self.gathers() && !timeout.is_zero());
        let (want, timeout) = if gather.is_some() {
            (
                self.policy.batch_target.max(1) as usize,
                timeout.min(self.policy.batch_wait),
            )
        } else {
            (1, timeout)
        };
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        self.stats.waits += 1;
        let done = match gather {
            Some(mask) => {
                // The kernel's signal set is `_NSIG / 8` bytes, not libc's `sigset_t`, so the
                // argument is built here (`io_uring_getevents_arg`).
                let arg = GeteventsArg {
                    sigmask: std::ptr::from_ref(mask) as u64,
                    sigmask_sz: KERNEL_SIGSET_BYTES,
                    min_wait_usec: 0,
                    ts: std::ptr::from_ref(&ts) as u64,
                };
                let queued = self.ring.submission().len() as u32;
                // SAFETY: `arg` and what it points to live until the call returns.
                unsafe {
                    self.ring.submitter().enter(
                        queued,
                        want as u32,
                        ENTER_GETEVENTS | ENTER_EXT_ARG,
                        Some(&arg),
                    )
                }
            }
            None => self.ring.submitter().submit_with_args(want, &args),
        };
        match done {
            Ok(n) => {
                self.stats.submitted += n as u64;
                Ok(())
            }
            Err(e) if busy(&e) || matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) => {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Whether the policy gathers at all (`batch_wait` > 0).
    pub fn gathers(&self) -> bool {
        !self.policy.batch_wait.is_zero()
    }

    /// Submits what was queued without waiting (none when nothing is queued).
    pub fn submit(&mut self) -> io::Result<()> {
        if self.ring.submission().is_empty() {
            return Ok(());
        }
        match self.ring.submit() {
            Ok(n) => {
                self.stats.submitted += n as u64;
                Ok(())
            }
            Err(e) if busy(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// What the ring did so far.
    pub fn stats(&mut self) -> RingStats {
        self.stats.cq_overflow = u64::from(self.ring.completion().overflow());
        self.stats
    }

    /// Moves the posted completions into `out`.
    pub fn completions(&mut self, out: &mut Vec<Completion>) {
        let before = out.len();
        for cqe in self.ring.completion() {
            out.push(Completion {
                user_data: cqe.user_data(),
                result: cqe.result(),
                flags: cqe.flags(),
            });
        }
        self.stats.completions += (out.len() - before) as u64;
    }

    /// The bytes a receive completion carries (empty when it carries no buffer). Call
    /// [`RingIo::recycle`] with the same completion once they are handled.
    pub fn received(&self, c: &Completion) -> &[u8] {
        match cqueue::buffer_select(c.flags) {
            Some(bid) if c.result > 0 => self.bufs.slice(bid, c.result as usize),
            _ => &[],
        }
    }

    /// Gives the buffer of a receive completion back to the kernel (when it is used up).
    pub fn recycle(&mut self, c: &Completion) {
        if let Some(bid) = cqueue::buffer_select(c.flags) {
            let used = c.result.max(0) as usize;
            self.bufs.consumed(bid, used, c.flags & CQE_F_BUF_MORE != 0);
        }
    }

    /// Makes room for `n` entries in the submission queue (submitting what waits there), so
    /// that linked entries are queued together.
    fn room_for(&mut self, n: usize) {
        let free = {
            let sq = self.ring.submission();
            sq.capacity() - sq.len()
        };
        if free < n {
            match self.ring.submit() {
                Ok(k) => self.stats.submitted += k as u64,
                Err(e) if busy(&e) => {
                    if let Ok(k) = self.ring.submit_and_wait(0) {
                        self.stats.submitted += k as u64;
                    }
                }
                Err(e) => tracing::error!(error = %e, "io_uring submit failed"),
            }
        }
    }

    /// Queues `sqe`. When the submission queue is full, submits first; when the kernel is busy
    /// (its completion queue is full), the caller must reap completions before anything more
    /// is submitted, so the entry is kept and pushed once there is room.
    fn push(&mut self, sqe: squeue::Entry) {
        for _ in 0..3 {
            // SAFETY: every request queued here either points to no user memory (polls,
            // receives into provided buffers, cancels, accept) or to memory the caller keeps
            // valid until the completion (`send`'s contract).
            if unsafe { self.ring.submission().push(&sqe) }.is_ok() {
                return;
            }
            self.stats.sq_full += 1;
            match self.ring.submit() {
                Ok(n) => self.stats.submitted += n as u64,
                Err(e) if busy(&e) => {
                    // Completions are waiting to be reaped; the kernel takes no more until
                    // they are. Entering with a wait lets it flush its overflow list.
                    if let Ok(n) = self.ring.submit_and_wait(0) {
                        self.stats.submitted += n as u64;
                    }
                }
                Err(e) => tracing::error!(error = %e, "io_uring submit failed"),
            }
        }
        // Still no room: the queue is as large as configured and the kernel is behind. Keep
        // the entry in a growing side queue rather than lose it or spin.
        self.ring.submission().sync();
        tracing::warn!("io_uring submission queue full; entry deferred");
        let mut attempts = 0u32;
        // SAFETY: as above.
        while unsafe { self.ring.submission().push(&sqe) }.is_err() {
            attempts += 1;
            if let Ok(n) = self.ring.submit_and_wait(1) {
                self.stats.submitted += n as u64;
            }
            if attempts > 1000 {
                tracing::error!("io_uring submission queue stuck; request dropped");
                return;
            }
        }
    }
}

/// Whether a submit error only means "reap completions, then try again".
fn busy(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBUSY) | Some(libc::EAGAIN) | Some(libc::EINTR)
    )
}

/// The shard's provided-buffer ring: receive buffers the kernel picks from when bytes arrive.
///
/// With incremental consumption (kernel 6.12+) a buffer serves many receives, each taking the
/// bytes after the previous one; the buffer returns to the ring once the kernel reports it used
/// up. Without it, every receive takes a whole buffer, so the pool holds many small ones.
/// The pool is allocated and touched once at start: it is a fixed cost per shard, not per
/// connection.
struct BufRing {
    /// The ring of buffer descriptors shared with the kernel (page-aligned).
    entries: *mut BufRingEntry,
    /// Bytes of the descriptor mapping.
    entries_len: usize,
    /// The buffers, `count * size` bytes.
    memory: Box<[u8]>,
    /// Number of buffers (a power of two).
    count: usize,
    /// Bytes per buffer.
    size: usize,
    /// Where the next receive into each buffer starts (incremental mode).
    offsets: Vec<u32>,
    /// Our copy of the ring's tail.
    tail: u16,
    /// Whether the kernel consumes buffers incrementally.
    incremental: bool,
}

impl BufRing {
    /// Maps, fills and registers the pool with `ring`.
    fn new(ring: &IoUring, pool_bytes: usize) -> io::Result<BufRing> {
        // Incremental: few large buffers. Otherwise: many 2 KiB ones.
        for (incremental, size) in [(true, 64 * 1024), (false, 2048)] {
            let count = (pool_bytes / size).clamp(8, 32768).next_power_of_two();
            let entries_len = count * std::mem::size_of::<BufRingEntry>();
            // SAFETY: an anonymous private mapping; checked below.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    entries_len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                    -1,
                    0,
                )
            };
            if ptr == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            let mut memory = vec![0u8; count * size].into_boxed_slice();
            // Touch every page now so the pool is resident from the start.
            for page in memory.chunks_mut(4096) {
                page[0] = 1;
            }
            let mut bufs = BufRing {
                entries: ptr.cast(),
                entries_len,
                memory,
                count,
                size,
                offsets: vec![0; count],
                tail: 0,
                incremental,
            };
            let flags = if incremental { PBUF_RING_INC } else { 0 };
            // SAFETY: the mapping is page-aligned, `count` entries long, and lives as long as
            // `bufs`, which unregisters it... by dropping the ring first (the shard drops its
            // `RingIo` as a whole; see `Drop`).
            let reg = unsafe {
                ring.submitter()
                    .register_buf_ring_with_flags(ptr as u64, count as u16, BGID, flags)
            };
            match reg {
                Ok(()) => {
                    for bid in 0..count {
                        bufs.give(bid as u16);
                    }
                    bufs.publish();
                    return Ok(bufs);
                }
                Err(e) if incremental && e.raw_os_error() == Some(libc::EINVAL) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other(
            "no provided-buffer ring could be registered",
        ))
    }

    /// The `len` bytes a completion put into buffer `bid`.
    fn slice(&self, bid: u16, len: usize) -> &[u8] {
        let start = usize::from(bid) * self.size + self.offsets[usize::from(bid)] as usize;
        let end = (start + len).min((usize::from(bid) + 1) * self.size);
        &self.memory[start..end]
    }

    /// A completion took `used` bytes of buffer `bid`; `more` when the kernel keeps filling it.
    fn consumed(&mut self, bid: u16, used: usize, more: bool) {
        let i = usize::from(bid);
        if self.incremental && more {
            self.offsets[i] += used as u32;
            return;
        }
        self.offsets[i] = 0;
        self.give(bid);
        self.publish();
    }

    /// Writes buffer `bid` at the ring's tail (published by [`BufRing::publish`]).
    fn give(&mut self, bid: u16) {
        let mask = self.count - 1;
        // SAFETY: the slot index is masked into the mapping; the kernel reads descriptors only
        // up to the published tail, and this slot is past it.
        let entry = unsafe { &mut *self.entries.add(usize::from(self.tail) & mask) };
        let addr = self.memory.as_ptr() as u64 + (usize::from(bid) * self.size) as u64;
        entry.set_addr(addr);
        entry.set_len(self.size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the buffers given so far visible to the kernel.
    fn publish(&self) {
        // SAFETY: the tail field lives in the first descriptor of the mapping; the kernel
        // reads it with acquire ordering.
        unsafe {
            let tail = BufRingEntry::tail(self.entries) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`; the ring that used it is dropped before (field
        // order in `RingIo`), so the kernel no longer reads it.
        unsafe { libc::munmap(self.entries.cast(), self.entries_len) };
    }
}

impl AsRawFd for RingIo {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected pair of non-blocking stream sockets.
    fn pair() -> (RawFd, RawFd) {
        let mut fds = [0; 2];
        // SAFETY: a two-element array for socketpair(2) to fill.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(r, 0, "socketpair: {}", io::Error::last_os_error());
        (fds[0], fds[1])
    }

    fn ring() -> RingIo {
        let policy = WaitPolicy {
            batch_wait: Duration::ZERO,
            batch_target: 1,
        };
        RingIo::new(64, 64 * 1024, 16, policy).expect("an io_uring")
    }

    /// Reads what `fd` holds now (non-blocking), and whether it reached end of stream.
    fn drain(fd: RawFd) -> (Vec<u8>, bool) {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: a valid buffer for read(2).
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            match n {
                0 => return (all, true),
                n if n < 0 => return (all, false),
                n => all.extend_from_slice(&buf[..n as usize]),
            }
        }
    }

    /// Waits until `n` completions are there (a linked close runs in the wait after).
    fn reap(ring: &mut RingIo, n: usize) -> Vec<Completion> {
        let mut out = Vec::new();
        for _ in 0..50 {
            ring.wait(Duration::from_millis(20), None).unwrap();
            ring.completions(&mut out);
            if out.len() >= n {
                break;
            }
        }
        out
    }

    /// A ring that gathers for `window`.
    fn gathering(window: Duration) -> RingIo {
        let policy = WaitPolicy {
            batch_wait: window,
            batch_target: 64,
        };
        RingIo::new(64, 64 * 1024, 16, policy).expect("an io_uring")
    }

    /// The signal mask of a thread that blocks nothing.
    fn no_signal() -> libc::sigset_t {
        // SAFETY: an empty set.
        unsafe {
            let mut m: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut m);
            m
        }
    }

    /// Writes `bytes` to `fd` after `after`, from another thread.
    fn write_later(
        fd: RawFd,
        bytes: &'static [u8],
        after: Duration,
    ) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            std::thread::sleep(after);
            // SAFETY: `fd` stays open until the test joins this thread.
            let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
            assert_eq!(n, bytes.len() as isize);
        })
    }

    /// A slot with a multishot receive armed, and the socket's other end.
    fn receiving(ring: &mut RingIo) -> (Direct, RawFd) {
        let (a, b) = pair();
        let d = Direct::new(2);
        ring.install(d, a).unwrap();
        // SAFETY: the slot holds its own reference.
        unsafe { libc::close(a) };
        ring.recv(d, ConnId { key: 2, gen: 1 }, true);
        ring.submit().unwrap();
        (d, b)
    }

    #[test]
    fn a_gathering_wait_lets_a_socket_input_wait_for_the_window() {
        let window = Duration::from_millis(300);
        let mut ring = gathering(window);
        let (_d, b) = receiving(&mut ring);
        let writer = write_later(b, b"ping", Duration::from_millis(10));
        let start = std::time::Instant::now();
        ring.wait(Duration::from_secs(10), Some(&no_signal()))
            .unwrap();
        let slept = start.elapsed();
        writer.join().unwrap();
        // The lower bound cannot be missed by a slow machine: only a wake-up ends it early.
        assert!(
            slept >= window - Duration::from_millis(20),
            "woke after {slept:?}"
        );
        let mut out = Vec::new();
        ring.completions(&mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(ring.received(&out[0]), b"ping");
    }

    #[test]
    fn a_signal_ends_a_gathering_wait_and_one_sent_before_it_ends_the_next() {
        let window = Duration::from_secs(20);
        let mut ring = gathering(window);
        let nudges = std::sync::Arc::new(crate::driver::nudge::Nudges::new(1));
        let mask = nudges.enter(0).unwrap();
        let (_d, b) = receiving(&mut ring);

        // Sent during the wait.
        nudges.gathering(0);
        let n = std::sync::Arc::clone(&nudges);
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            n.nudge(0);
        });
        let start = std::time::Instant::now();
        ring.wait(Duration::from_secs(60), Some(&mask)).unwrap();
        sender.join().unwrap();
        assert!(
            start.elapsed() < window / 2,
            "the signal did not end the wait"
        );

        // Sent after the mark and before the wait began: pending, it ends the wait at once.
        nudges.gathering(0);
        nudges.nudge(0);
        let start = std::time::Instant::now();
        ring.wait(Duration::from_secs(60), Some(&mask)).unwrap();
        assert!(start.elapsed() < window / 2, "the pending signal was lost");

        // Without the mark nobody signals: the socket's input waits for the window.
        nudges.awake(0);
        nudges.nudge(0);
        let mut ring = gathering(Duration::from_millis(200));
        let (_d2, b2) = receiving(&mut ring);
        let writer = write_later(b2, b"ping", Duration::from_millis(5));
        let start = std::time::Instant::now();
        ring.wait(Duration::from_secs(60), Some(&mask)).unwrap();
        writer.join().unwrap();
        assert!(
            start.elapsed() >= Duration::from_millis(180),
            "woke after {:?}",
            start.elapsed()
        );
        // SAFETY: made above.
        unsafe {
            libc::close(b);
            libc::close(b2);
        }
    }

    #[test]
    fn a_slot_keeps_the_socket_after_its_process_descriptor_closes_until_closed() {
        let mut ring = ring();
        let (a, b) = pair();
        let d = Direct::new(3);
        ring.install(d, a).unwrap();
        // SAFETY: `a` was made above; the slot holds its own reference.
        unsafe { libc::close(a) };
        let bytes = b"hello".to_vec();
        // SAFETY: `bytes` outlives the completion reaped below.
        unsafe { ring.send(d, bytes.as_ptr(), 5, Tag::Send.bits() | 1) };
        let out = reap(&mut ring, 1);
        assert_eq!((out[0].user_data, out[0].result), (Tag::Send.bits() | 1, 5));
        assert_eq!(drain(b), (b"hello".to_vec(), false));
        ring.close(d);
        let out = reap(&mut ring, 1);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(Tag::of(out[0].user_data), Tag::File);
        assert_eq!(unpack_file(out[0].user_data), (FileOp::Close, d));
        assert_eq!(out[0].result, 0);
        assert_eq!(
            drain(b),
            (Vec::new(), true),
            "the slot held the last reference"
        );
        // The slot takes another socket.
        let (c, e) = pair();
        ring.install(d, c).unwrap();
        // SAFETY: descriptors made above.
        unsafe {
            libc::close(b);
            libc::close(c);
            libc::close(e);
        }
    }

    #[test]
    fn a_last_word_is_written_before_its_slot_closes() {
        let mut ring = ring();
        let (a, b) = pair();
        let d = Direct::new(0);
        ring.install(d, a).unwrap();
        // SAFETY: as above.
        unsafe { libc::close(a) };
        let bytes = b"goodbye".to_vec();
        // SAFETY: `bytes` outlives the completion reaped below.
        unsafe { ring.close_after(d, bytes.as_ptr(), bytes.len() as u32) };
        let out = reap(&mut ring, 1);
        assert_eq!(out.len(), 1, "only the close completes: {out:?}");
        assert_eq!(unpack_file(out[0].user_data), (FileOp::Close, d));
        assert_eq!(drain(b), (b"goodbye".to_vec(), true));
        // SAFETY: made above.
        unsafe { libc::close(b) };
    }

    #[test]
    fn bringing_a_slot_out_gives_a_process_descriptor_of_the_same_socket() {
        let mut ring = ring();
        let (a, b) = pair();
        let d = Direct::new(15);
        ring.install(d, a).unwrap();
        // SAFETY: as above.
        unsafe { libc::close(a) };
        ring.bring_out(d);
        let out = reap(&mut ring, 1);
        assert_eq!(unpack_file(out[0].user_data), (FileOp::BringOut, d));
        let fd = out[0].result;
        assert!(fd >= 0, "{out:?}");
        ring.close(d);
        let out = reap(&mut ring, 1);
        assert_eq!(unpack_file(out[0].user_data), (FileOp::Close, d));
        // SAFETY: a valid buffer for write(2) on the descriptor just brought out.
        let n = unsafe { libc::write(fd, b"moved".as_ptr().cast(), 5) };
        assert_eq!(n, 5);
        assert_eq!(
            drain(b),
            (b"moved".to_vec(), false),
            "still open: the new descriptor"
        );
        // SAFETY: made above.
        unsafe {
            libc::close(fd);
            libc::close(b);
        }
    }

    #[test]
    fn a_quiet_send_that_succeeds_posts_no_completion() {
        let mut ring = ring();
        let (a, b) = pair();
        let da = Direct::new(0);
        ring.install(da, a).unwrap();
        let bytes = b"pong!".to_vec();
        // SAFETY: `bytes` outlives the submission below.
        unsafe { ring.send_quiet(da, bytes.as_ptr(), 5, Tag::Quiet.bits() | 7) };
        assert!(!ring.quiet_settled(), "queued, not yet submitted");
        ring.wait(Duration::from_millis(50), None).unwrap();
        assert!(ring.quiet_settled());
        let mut out = Vec::new();
        ring.completions(&mut out);
        assert!(out.is_empty(), "{out:?}");
        let mut got = [0u8; 16];
        // SAFETY: a 16-byte buffer for read(2).
        let n = unsafe { libc::read(b, got.as_mut_ptr().cast(), got.len()) };
        assert_eq!(&got[..n as usize], b"pong!");
        // SAFETY: descriptors made above.
        unsafe {
            libc::close(a);
            libc::close(b);
        }
    }

    #[test]
    fn a_quiet_send_to_a_full_socket_fails_at_once_and_writes_nothing_unreported() {
        let mut ring = ring();
        let (a, b) = pair();
        // Fill `a` until the kernel takes no more.
        let chunk = [0u8; 4096];
        let mut filled = 0usize;
        loop {
            // SAFETY: a valid buffer for send(2).
            let n = unsafe { libc::send(a, chunk.as_ptr().cast(), chunk.len(), 0) };
            if n <= 0 {
                break;
            }
            filled += n as usize;
        }
        let da = Direct::new(1);
        ring.install(da, a).unwrap();
        let bytes = vec![7u8; 64 * 1024];
        // SAFETY: `bytes` outlives the completion reaped below.
        unsafe {
            ring.send_quiet(
                da,
                bytes.as_ptr(),
                bytes.len() as u32,
                Tag::Quiet.bits() | 9,
            )
        };
        ring.wait(Duration::from_millis(50), None).unwrap();
        assert!(ring.quiet_settled());
        let mut out = Vec::new();
        ring.completions(&mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].user_data, Tag::Quiet.bits() | 9);
        // Nothing written (EAGAIN), or the part written before the socket filled: never a
        // silent short write.
        assert!(
            out[0].result == -libc::EAGAIN
                || (out[0].result > 0 && (out[0].result as usize) < bytes.len()),
            "{out:?}"
        );
        // The reader gets the filler, then exactly what the completion says was written.
        let written = out[0].result.max(0) as usize;
        let mut total = 0usize;
        let mut buf = vec![0u8; 65536];
        loop {
            // SAFETY: a valid buffer for read(2).
            let n = unsafe { libc::read(b, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            total += n as usize;
        }
        assert_eq!(total, filled + written);
        // SAFETY: descriptors made above.
        unsafe {
            libc::close(a);
            libc::close(b);
        }
    }

    #[test]
    fn user_data_round_trips() {
        for (tag, key, gen) in [
            (Tag::Recv, 0, 1),
            (Tag::Send, u32::MAX, GEN_MASK),
            (Tag::RecvMulti, 7, 0),
            (Tag::Doorbell, 3, 5),
        ] {
            let id = ConnId { key, gen };
            assert_eq!(unpack(user_data(tag, id)), (tag, id));
        }
        // Every tag, at the extremes of the other bits; the layout is the one on the wire
        // of every request in flight, so it is pinned too.
        for (i, tag) in Tag::ALL.into_iter().enumerate() {
            assert_eq!(tag as usize, i);
            assert_eq!(tag.bits(), (i as u64) << 61);
            for (key, gen) in [(0, 0), (u32::MAX, GEN_MASK), (12345, 678)] {
                let id = ConnId { key, gen };
                let ud = user_data(tag, id);
                assert_eq!(ud >> 61, i as u64);
                assert_eq!(Tag::of(ud), tag);
                assert_eq!(unpack(ud), (tag, id));
            }
            assert_eq!(Tag::of(tag.bits() | u64::from(u32::MAX)), tag);
        }
        for which in [0, ACCEPT_TLS, ACCEPT_WS] {
            assert_eq!(Tag::of(Tag::Accept.bits() | which), Tag::Accept);
        }
        for (op, index) in [(FileOp::Close, 0), (FileOp::BringOut, MAX_FILES - 1)] {
            let ud = file_data(op, Direct::new(index));
            assert_eq!(Tag::of(ud), Tag::File);
            assert_eq!(unpack_file(ud), (op, Direct::new(index)));
        }
    }
}
