//! Ending a shard's gathering sleep early (`ring.rs`, "Gathering"): while a shard gathers,
//! its ring wakes it only for `batch_target` completions or at the end of `batch_wait_us`,
//! and a mesh doorbell is no exception on Linux 6.18 (every completion source is a lazy
//! wake). A message for a gathering shard must not wait that long, so whoever posts it sends
//! the shard's thread a signal, [`signal`], whose handler does nothing: it only makes the
//! shard's `io_uring_enter` return (`EINTR`).
//!
//! Without races: a shard thread blocks the signal ([`Nudges::enter`]) and unblocks it only
//! inside its gathering waits, through `io_uring_enter`'s signal mask, as `pselect` does; so a
//! signal sent just before the wait stays pending and ends the wait as it begins. A shard marks
//! itself gathering before it looks at its inbox a last time; a sender posts its message first
//! and then takes the mark ([`Nudges::nudge`]). Either the shard sees the message, or the
//! sender sees the mark and signals. Only the sender that takes the mark signals, so a burst
//! of messages costs one signal per sleep.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Once;

/// The signal: the first real-time signal glibc leaves free, plus one (nothing else in the
/// process uses it).
pub fn signal() -> libc::c_int {
    libc::SIGRTMIN() + 1
}

/// Installs the signal's handler, a function that does nothing, without `SA_RESTART` (an
/// interrupted wait must return). Once per process; later calls return the first result.
pub fn install() -> io::Result<()> {
    static ONCE: Once = Once::new();
    static RESULT: AtomicI32 = AtomicI32::new(0);
    extern "C" fn nothing(_: libc::c_int) {}
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction with a handler that touches nothing is a valid argument.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = nothing as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(signal(), &sa, std::ptr::null_mut()) != 0 {
                let e = io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::EINVAL);
                RESULT.store(e, Ordering::SeqCst);
            }
        }
    });
    match RESULT.load(Ordering::SeqCst) {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// One shard's part: its thread, and whether it is gathering now.
#[derive(Debug, Default)]
struct Sleeper {
    /// The shard thread's id (0 until [`Nudges::enter`]).
    tid: AtomicI32,
    /// Set by the shard before a gathering wait; taken by the first sender that signals.
    gathering: AtomicBool,
}

/// Every shard's sleeper.
#[derive(Debug)]
pub struct Nudges {
    sleepers: Vec<Sleeper>,
}

impl Nudges {
    /// For `n` shards.
    pub fn new(n: usize) -> Nudges {
        Nudges {
            sleepers: (0..n).map(|_| Sleeper::default()).collect(),
        }
    }

    /// Called on shard `i`'s own thread before its first wait: records the thread and blocks
    /// the signal there; returns the mask its gathering waits use (the thread's own, with the
    /// signal unblocked).
    pub fn enter(&self, i: usize) -> io::Result<libc::sigset_t> {
        install()?;
        // SAFETY: plain sigset and gettid calls on this thread's own state.
        unsafe {
            let mut block: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut block);
            libc::sigaddset(&mut block, signal());
            let mut old: libc::sigset_t = std::mem::zeroed();
            let r = libc::pthread_sigmask(libc::SIG_BLOCK, &block, &mut old);
            if r != 0 {
                return Err(io::Error::from_raw_os_error(r));
            }
            libc::sigdelset(&mut old, signal());
            self.sleepers[i].tid.store(libc::gettid(), Ordering::SeqCst);
            Ok(old)
        }
    }

    /// Shard `i` is about to gather: from now on a sender signals it. The shard looks at its
    /// inbox after this, and gathers only if it is empty.
    pub fn gathering(&self, i: usize) {
        self.sleepers[i].gathering.store(true, Ordering::SeqCst);
    }

    /// Shard `i` woke (or chose not to gather).
    pub fn awake(&self, i: usize) {
        self.sleepers[i].gathering.store(false, Ordering::SeqCst);
    }

    /// A message was posted for shard `i`: signals it if it is gathering (and nobody signalled
    /// it for this sleep yet).
    pub fn nudge(&self, i: usize) {
        let s = &self.sleepers[i];
        if !s.gathering.swap(false, Ordering::SeqCst) {
            return;
        }
        let tid = s.tid.load(Ordering::SeqCst);
        if tid > 0 {
            // SAFETY: tgkill to a thread of this process; a thread that has ended makes it
            // fail with ESRCH, which is harmless.
            unsafe {
                libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, signal());
            }
        }
    }
}
