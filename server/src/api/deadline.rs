//! An HTTP connection's deadlines: a request head must be complete within `header_timeout_ms`
//! of the accept (or, on a keep-alive connection, of the head's first byte), a body within
//! `body_timeout_ms` of its head, and a connection may wait `idle_timeout_ms` for its next
//! request. Past a deadline the connection is dropped, which closes the socket.
//!
//! hyper 1.x has only a header-read timeout, runs it only with a `Timer` (none for glommio),
//! and restarts that same timer when a keep-alive connection goes idle, so it cannot give an
//! idle connection longer than a slow head. The four moments that matter are plain to see
//! from outside hyper: the socket's reads (`io.rs`), the service's call (the head is
//! complete), the end of the body read (`requests.rs`) and the service's answer.
//!
//! [`Phases`] is the state and decides: fed those moments with `now`, it holds the phase and
//! its deadline, and says which deadline passed. [`Deadlines`] shares it between the I/O, the
//! service and the [`Watch`], the future raced against the connection that fires when the
//! deadline passes. The watch keeps one glommio timer for the current deadline and arms a new
//! one only when the deadline moved (timers are data, as in the shards' wheel).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use glommio::timer::Timer;

use super::config::Timeouts;

/// Where a connection is in its request cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Waiting for a complete request head (from the accept, or from the first byte after an
    /// idle spell).
    Head,
    /// The head is in; its body is being read.
    Body,
    /// The request is being answered (a push may wait for its results or acknowledgement):
    /// no deadline here, every wait of a handler is bounded by the handler.
    Busy,
    /// The response was handed to hyper; waiting for the next request.
    Idle,
}

/// Which deadline passed (a label of `tether_api_timeouts_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expired {
    /// The head did not arrive in time.
    Header,
    /// The body did not arrive in time.
    Body,
    /// No request came in time.
    Idle,
}

impl Expired {
    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Expired::Header => "header",
            Expired::Body => "body",
            Expired::Idle => "idle",
        }
    }
}

/// The phase and its deadline. `on_*` calls in, [`Phases::expired`] out; no clock inside.
#[derive(Clone, Debug)]
pub(crate) struct Phases {
    /// The configured durations.
    timeouts: Timeouts,
    /// Where the connection is.
    phase: Phase,
    /// When the phase must have ended; `None` while busy.
    deadline: Option<Instant>,
}

impl Phases {
    /// A connection accepted at `now`: its first head is due `header` later.
    pub(crate) fn new(timeouts: Timeouts, now: Instant) -> Phases {
        Phases {
            timeouts,
            phase: Phase::Head,
            deadline: Some(now + timeouts.header),
        }
    }

    /// The current phase.
    #[cfg(test)]
    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    /// The current deadline.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Bytes arrived at `now`. After an idle spell they start the next head; otherwise they
    /// change nothing (a head that trickles in keeps the deadline of its first byte).
    pub(crate) fn on_bytes(&mut self, now: Instant) {
        if self.phase == Phase::Idle {
            self.phase = Phase::Head;
            self.deadline = Some(now + self.timeouts.header);
        }
    }

    /// A complete head reached the service at `now`; `has_body` when a body follows.
    pub(crate) fn on_head(&mut self, now: Instant, has_body: bool) {
        if has_body {
            self.phase = Phase::Body;
            self.deadline = Some(now + self.timeouts.body);
        } else {
            self.phase = Phase::Busy;
            self.deadline = None;
        }
    }

    /// The handler has read the whole body.
    pub(crate) fn on_body_read(&mut self) {
        if self.phase == Phase::Body {
            self.phase = Phase::Busy;
            self.deadline = None;
        }
    }

    /// The service answered at `now`: the connection waits for the next request. A body the
    /// handler did not read is hyper's to drain or to close on, within this deadline too.
    pub(crate) fn on_response(&mut self, now: Instant) {
        self.phase = Phase::Idle;
        self.deadline = Some(now + self.timeouts.idle);
    }

    /// Which deadline passed by `now`, if any.
    pub(crate) fn expired(&self, now: Instant) -> Option<Expired> {
        if self.deadline? > now {
            return None;
        }
        match self.phase {
            Phase::Head => Some(Expired::Header),
            Phase::Body => Some(Expired::Body),
            Phase::Idle => Some(Expired::Idle),
            Phase::Busy => None,
        }
    }
}

/// One connection's [`Phases`], shared by its I/O, its service and its [`Watch`] (all on the
/// connection's task).
#[derive(Debug)]
pub(crate) struct Deadlines {
    /// The state.
    phases: RefCell<Phases>,
    /// A copy of the phase, so a read checks it without borrowing.
    idle: Cell<bool>,
}

impl Deadlines {
    /// A connection accepted now.
    pub(crate) fn new(timeouts: Timeouts) -> Deadlines {
        Deadlines {
            phases: RefCell::new(Phases::new(timeouts, Instant::now())),
            idle: Cell::new(false),
        }
    }

    /// Bytes arrived (called by every read that returned some).
    pub(crate) fn on_bytes(&self) {
        if self.idle.get() {
            self.phases.borrow_mut().on_bytes(Instant::now());
            self.idle.set(false);
        }
    }

    /// See [`Phases::on_head`].
    pub(crate) fn on_head(&self, has_body: bool) {
        self.phases.borrow_mut().on_head(Instant::now(), has_body);
        self.idle.set(false);
    }

    /// See [`Phases::on_body_read`].
    pub(crate) fn on_body_read(&self) {
        self.phases.borrow_mut().on_body_read();
    }

    /// See [`Phases::on_response`].
    pub(crate) fn on_response(&self) {
        self.phases.borrow_mut().on_response(Instant::now());
        self.idle.set(true);
    }

    /// The future that fires when the current deadline passes.
    pub(crate) fn watch(&self) -> Watch<'_> {
        Watch {
            deadlines: self,
            armed: None,
        }
    }
}

/// Fires with the deadline that passed. It must be polled after the connection's future in
/// the same task (`futures_lite::future::or(conn, watch)` does): every change of phase happens
/// while the connection is polled, so the watch sees each new deadline at once, with no waker
/// of its own.
#[derive(Debug)]
pub(crate) struct Watch<'a> {
    /// The connection's state.
    deadlines: &'a Deadlines,
    /// The timer armed for this deadline.
    armed: Option<(Instant, Timer)>,
}

impl Future for Watch<'_> {
    type Output = Expired;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Expired> {
        loop {
            let now = Instant::now();
            let (expired, deadline) = {
                let p = self.deadlines.phases.borrow();
                (p.expired(now), p.deadline())
            };
            if let Some(e) = expired {
                return Poll::Ready(e);
            }
            let Some(at) = deadline else {
                self.armed = None;
                return Poll::Pending;
            };
            if self.armed.as_ref().map(|(t, _)| *t) != Some(at) {
                self.armed = Some((at, Timer::new(at.saturating_duration_since(now))));
            }
            let (_, timer) = self.armed.as_mut().expect("armed above");
            match Pin::new(timer).poll(cx) {
                // Check again; a timer that fired a hair early is re-armed for the rest.
                Poll::Ready(_) => self.armed = None,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn timeouts() -> Timeouts {
        Timeouts {
            header: Duration::from_secs(5),
            body: Duration::from_secs(10),
            idle: Duration::from_secs(60),
        }
    }

    #[test]
    fn a_head_is_due_from_the_accept_and_a_trickle_does_not_extend_it() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut p = Phases::new(timeouts(), t0);
        assert_eq!(p.deadline(), Some(s(5)));
        p.on_bytes(s(1));
        p.on_bytes(s(4));
        assert_eq!(p.expired(s(4)), None);
        assert_eq!(p.expired(s(5)), Some(Expired::Header));
    }

    #[test]
    fn a_body_is_due_from_its_head_and_busy_has_no_deadline() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut p = Phases::new(timeouts(), t0);
        p.on_head(s(1), true);
        assert_eq!(p.phase(), Phase::Body);
        assert_eq!(p.expired(s(10)), None);
        assert_eq!(p.expired(s(11)), Some(Expired::Body));
        p.on_body_read();
        assert_eq!(p.phase(), Phase::Busy);
        assert_eq!(p.expired(s(1_000)), None, "a push may wait for its ack");
        let mut q = Phases::new(timeouts(), t0);
        q.on_head(s(1), false);
        assert_eq!((q.phase(), q.deadline()), (Phase::Busy, None));
    }

    #[test]
    fn idle_lasts_until_the_next_byte_which_starts_a_head() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut p = Phases::new(timeouts(), t0);
        p.on_head(s(1), false);
        p.on_response(s(2));
        assert_eq!(p.expired(s(61)), None);
        assert_eq!(p.expired(s(62)), Some(Expired::Idle));
        p.on_bytes(s(30));
        assert_eq!(p.phase(), Phase::Head);
        assert_eq!(
            p.deadline(),
            Some(s(35)),
            "the next head gets header_timeout, not idle"
        );
        assert_eq!(p.expired(s(35)), Some(Expired::Header));
        // A response after an unread body: idle, not body.
        p.on_head(s(31), true);
        p.on_response(s(32));
        assert_eq!(p.expired(s(92)), Some(Expired::Idle));
    }
}
