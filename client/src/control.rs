//! What an application asks of the driver: frames to send on the main connection, a moment to
//! be woken at, what the operating system told it ([`Input`]: network, visibility, a new
//! token), and a doorbell that other threads ring when they have work for it.
//!
//! The driver owns every socket and the clock; the application decides what to send in its
//! observer, which gets a [`Control`] with every report. A thread that reads input (a terminal,
//! a pipe) hands it over through a channel of its own and rings a [`Doorbell`]; the driver then
//! reports [`crate::Report::Wake`] and the observer drains the channel.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Instant;

use tether_proto::Frame;

/// The application's requests, handed to every call of the observer and carried out by the
/// driver once the observer returns.
#[derive(Debug, Default)]
pub struct Control {
    /// Frames for the main connection, in order, not yet handed to the machine.
    frames: VecDeque<Frame>,
    /// When to report [`crate::Report::Wake`]; `None`: not asked.
    wake_at: Option<Instant>,
    /// What the operating system told the app, for the machine, in order.
    inputs: VecDeque<Input>,
}

/// Something the operating system told the application, handed to the heartbeat machine:
/// the network's state and the app's visibility.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// The network is usable, with this key (an SSID hash, a carrier id; empty: none). A new
    /// key switches the learned state to that network's and reconnects.
    NetworkUp(String),
    /// The network is not usable: everything closes, nothing reconnects until `NetworkUp`.
    NetworkDown,
    /// The app came to the foreground (`true`: the fixed foreground interval, no probes) or
    /// went to the background (`false`: the learned interval).
    Foreground(bool),
    /// A new token (after a `TokenNotice`, or before [`Input::Restart`]): every later login
    /// uses it, and a logged-in version-2 main connection sends it at once as a `Refresh`.
    Token(String),
    /// Starts again after the machine stopped (`ClientEvent::Stopped`: a refused token, a
    /// kick for good); does nothing while it runs.
    Restart,
}

impl Control {
    /// Sends `frame` (`PushAck`, `Upstream`, `UpstreamAnswer`, ...) on the main connection:
    /// right after the observer returns when it is logged in, otherwise as soon as it is again,
    /// in the order given.
    pub fn send(&mut self, frame: Frame) {
        self.frames.push_back(frame);
    }

    /// Reports [`crate::Report::Wake`] at `at` (or right away when it has passed). Of several
    /// moments asked for, the earliest is kept; after the wake the observer asks again.
    pub fn wake_at(&mut self, at: Instant) {
        self.wake_at = Some(self.wake_at.map_or(at, |t| t.min(at)));
    }

    /// Hands `input` to the machine once the observer returns, after what was asked before it.
    pub fn input(&mut self, input: Input) {
        self.inputs.push_back(input);
    }

    /// The inputs given since the last call, in order.
    pub(crate) fn take_inputs(&mut self) -> impl Iterator<Item = Input> + '_ {
        self.inputs.drain(..)
    }

    /// The frames asked for since the last call, in order.
    pub(crate) fn take_frames(&mut self) -> impl Iterator<Item = Frame> + '_ {
        self.frames.drain(..)
    }

    /// The moment asked for, if any.
    pub(crate) fn wake_time(&self) -> Option<Instant> {
        self.wake_at
    }

    /// Forgets the moment asked for (it has come).
    pub(crate) fn woken(&mut self) {
        self.wake_at = None;
    }
}

/// Wakes a driver from another thread: the driver reports [`crate::Report::Wake`] soon after
/// [`ring`](Doorbell::ring). Rings that come before the driver looks count as one.
#[derive(Clone, Debug)]
pub struct Doorbell {
    /// The writing end of the driver's socket pair.
    tx: Arc<UnixStream>,
}

impl Doorbell {
    /// Wakes the driver. Never blocks; does nothing once the driver is gone.
    pub fn ring(&self) {
        let byte = [1u8];
        // SAFETY: a descriptor `self.tx` keeps open, and a one-byte buffer alive for the call.
        // MSG_NOSIGNAL: a driver that is gone makes this fail with EPIPE, not kill the process.
        // A full buffer (EAGAIN) means a ring is pending already. Either way there is nothing
        // to do about a failure.
        let _ = unsafe {
            libc::send(
                self.tx.as_raw_fd(),
                byte.as_ptr().cast(),
                byte.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
    }
}

/// The driver's end of the doorbell.
#[derive(Debug)]
pub(crate) struct Bell {
    /// The reading end, polled with the connections.
    rx: UnixStream,
    /// Kept to hand out more doorbells.
    tx: Arc<UnixStream>,
}

impl Bell {
    /// A new socket pair, both ends non-blocking.
    pub(crate) fn new() -> io::Result<Bell> {
        let (rx, tx) = UnixStream::pair()?;
        rx.set_nonblocking(true)?;
        tx.set_nonblocking(true)?;
        Ok(Bell {
            rx,
            tx: Arc::new(tx),
        })
    }

    /// A doorbell for another thread.
    pub(crate) fn doorbell(&self) -> Doorbell {
        Doorbell {
            tx: self.tx.clone(),
        }
    }

    /// The descriptor to poll for reading.
    pub(crate) fn fd(&self) -> RawFd {
        self.rx.as_raw_fd()
    }

    /// Reads every pending ring.
    pub(crate) fn drain(&mut self) {
        let mut buf = [0u8; 64];
        loop {
            match self.rx.read(&mut buf) {
                Ok(n) if n > 0 => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // Empty (WouldBlock), or the end cannot close while `tx` is held: nothing more.
                _ => return,
            }
        }
    }
}
