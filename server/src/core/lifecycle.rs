//! Time and the end of things: wheel ticks, the drain, the end of a batch.

use tether_proto::CloseCode;
use tracing::debug;

use super::conn::flag;
use super::msg::Post;
use super::{Command, Core, Flow, Now};
use crate::counters::Counter;

/// Where the drain is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Drain {
    /// Serving.
    No,
    /// GoAways sent; clients leave until this instant (monotonic ms).
    Leaving(u64),
    /// Remaining sessions got a Close; their last bytes may leave until this instant.
    Closing(u64),
    /// Nothing is left: the shard may stop.
    Done,
}

impl Core {
    /// Moves the clock: fires due deadlines (login, idle, probe, write, linger) and forgets
    /// stale acknowledgement waits.
    pub fn tick(&mut self, now: Now) {
        self.clock = now;
        if now.ms >= self.rate_window_end {
            self.rate_window_end = now.ms + 1000;
            for key in self.rate_worked.drain(..) {
                if self.conns.id_at(key).is_some() {
                    self.conns.at(key).rate_work = 0;
                }
            }
        }
        let mut fired = std::mem::take(&mut self.fired);
        self.conns.advance(now.ms, &mut fired);
        self.counters.add(Counter::WheelFired, fired.len() as u64);
        for key in fired.drain(..) {
            let Some(id) = self.conns.id_at(key) else {
                continue;
            };
            let write_timeout = self.cfg.write_timeout_ms;
            let conn = self.conns.at(key);
            if conn.flags & flag::CLOSING != 0 {
                let until = conn.ext.as_ref().map_or(0, |e| e.linger_until);
                if until <= now.ms {
                    debug!(key, "last bytes did not leave within linger_ms");
                    self.counters.inc(Counter::CloseLinger);
                    self.cut_slow = true;
                    self.teardown(id);
                } else {
                    self.conns.arm_by(key, until);
                }
                continue;
            }
            let stuck = conn.ext.as_ref().is_some_and(|e| {
                !e.out.is_empty() && e.out_since.saturating_add(write_timeout) <= now.ms
            });
            if stuck {
                debug!(key, "write timeout");
                self.counters.close(CloseCode::WriteTimeout, false);
                self.cut_slow = true;
                self.teardown(id);
                continue;
            }
            let was_open = conn.session.is_open();
            conn.session.handle_timeout(&self.cfg.session, now.ms);
            if was_open && conn.session.close_code() == Some(CloseCode::TokenExpired) {
                self.counters.inc(Counter::TokenEnded);
            }
            self.drive(id, now, None);
        }
        self.fired = fired;
        self.acks.expire(now.ms);
        self.upstream_tick(now);
        self.share_reports();
        self.drain_tick(now);
    }

    /// The drain's timeline, at each tick: clients leave within the window (or sooner, once
    /// every connection has gone and no result is parked); then the rest get a `Close` and
    /// `linger_ms` for their last bytes; then whatever is left is cut.
    fn drain_tick(&mut self, now: Now) {
        match self.drain {
            Drain::No | Drain::Done => {}
            Drain::Leaving(until) => {
                if self.drained() || now.ms >= until {
                    self.close_all(now);
                    self.drain = Drain::Closing(now.ms.saturating_add(self.cfg.linger_ms));
                    self.drain_tick(now);
                }
            }
            Drain::Closing(until) => {
                if self.conns.len() > 0 && now.ms >= until {
                    self.abort_all();
                }
                if self.conns.len() == 0 {
                    self.drain = Drain::Done;
                }
            }
        }
    }

    /// Whether the drain has ended: every connection is gone and the shard may stop.
    pub fn is_done(&self) -> bool {
        self.drain == Drain::Done
    }

    /// Starts the drain: every open session gets a GoAway with `window_ms` (clients reconnect
    /// at random within it), connections not yet logged in are closed, new ones are refused,
    /// and new pushes are refused with `ShuttingDown`. The ticks that follow end it
    /// ([`Core::is_done`]). A second call does nothing.
    pub fn begin_drain(&mut self, window_ms: u32, now: Now) {
        if self.draining {
            return;
        }
        self.clock = now;
        self.draining = true;
        self.drain = Drain::Leaving(now.ms.saturating_add(u64::from(window_ms)));
        for id in self.conns.ids() {
            let Some(conn) = self.conns.get_mut(id) else {
                continue;
            };
            if conn.flags & flag::CLOSING != 0 {
                continue;
            }
            if conn.session.is_open() {
                let _ = conn
                    .session
                    .go_away(CloseCode::ServerShutdown, true, window_ms);
            } else {
                let _ = conn.session.close(CloseCode::ServerShutdown);
            }
            self.drive(id, now, None);
        }
    }

    /// What is left of the drain's `GoAway` window at `now` (0 once it is over).
    pub(super) fn drain_window_left(&self, now: Now) -> u32 {
        match self.drain {
            Drain::Leaving(until) => until.saturating_sub(now.ms).min(u64::from(u32::MAX)) as u32,
            Drain::No | Drain::Closing(_) | Drain::Done => 0,
        }
    }

    /// Whether the drain has sent its `Close`s (or is over): a connection arriving now is
    /// refused rather than kept.
    pub(super) fn drain_closed(&self) -> bool {
        matches!(self.drain, Drain::Closing(_) | Drain::Done)
    }

    /// Whether the drain may end early: no connection left, no result parked.
    fn drained(&self) -> bool {
        self.conns.len() == 0 && self.retry.is_empty()
    }

    /// Ends every remaining session with a `Close` (end of the drain); each lingers at most
    /// `linger_ms` for its last bytes.
    fn close_all(&mut self, now: Now) {
        self.clock = now;
        for id in self.conns.ids() {
            let Some(conn) = self.conns.get_mut(id) else {
                continue;
            };
            if conn.flags & flag::CLOSING != 0 {
                continue;
            }
            let _ = conn.session.close(CloseCode::ServerShutdown);
            if self.drive(id, now, None) == Flow::Alive {
                self.teardown(id);
            }
        }
    }

    /// Cuts every connection at once, discarding what is unsent (the end of the last linger).
    fn abort_all(&mut self) {
        for id in self.conns.ids() {
            self.teardown(id);
        }
    }

    /// Ends a batch: connections paused for fairness handle what they kept, and parked results
    /// are posted again. Call after each batch.
    pub fn end_batch(&mut self, now: Now) {
        self.clock = now;
        self.end_batch_input(now);
        for id in std::mem::take(&mut self.fresh) {
            if let Some(conn) = self.conns.get_mut(id) {
                conn.flags &= !flag::FRESH;
            }
        }
        for (to, msg) in std::mem::take(&mut self.retry) {
            self.out.push(Command::Post(Post::Shard {
                to,
                msg,
                parked: true,
            }));
        }
    }
}
