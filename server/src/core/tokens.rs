//! Tokens on live connections: a peer's `Refresh` checked against the identity it logged in
//! with, and the connections of a secret a reload withdrew.
//!
//! When a token ends is the session's business (`ServerSession` closes with `TokenExpired`,
//! after a `TokenNotice` for version 2); the shard supplies what the session cannot know:
//! the connection's user and device for a refresh, and which secrets are still configured.

use tether_proto::token::{KeyId, Principal};
use tether_proto::{CloseCode, Login, Refresh};
use tracing::debug;

use super::conn::{flag, Kind};
use super::{ConnId, Core, Now};
use crate::counters::Counter;

impl Core {
    /// A peer sent a new token (`Event::Refresh`): taken when it verifies for the same user
    /// and device (a backend: the same service) and kind of peer; otherwise the connection
    /// closes with the verifier's code (`AuthFailed`, `TokenExpired`).
    pub(super) fn on_refresh(&mut self, id: ConnId, refresh: Refresh, now: Now) {
        let Some(conn) = self.conns.get(id) else {
            return;
        };
        let principal = match conn.kind {
            Kind::Client => Principal::Client,
            Kind::Backend => Principal::Backend,
            // The session refuses a probe's Refresh, and none comes before login.
            Kind::Probe | Kind::Pending => return,
        };
        let login = Login {
            version: conn.session.version(),
            flags: 0,
            user: conn.user.as_deref().unwrap_or_default().to_string(),
            device: match principal {
                Principal::Client => self.devices.name(conn.device).to_string(),
                Principal::Backend => String::new(),
            },
            token: refresh.token,
            heartbeat_ms: 0,
            network_key: String::new(),
        };
        let verdict = match self.auth.authenticate(&login, now.unix) {
            Ok(grant) if grant.principal == principal => Ok(grant),
            // A client token on a backend's connection or the other way round.
            Ok(_) => Err(CloseCode::AuthFailed),
            Err(code) => Err(code),
        };
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        match verdict {
            Ok(grant) => {
                if conn
                    .session
                    .refreshed(&self.cfg.session, now.ms, now.unix, grant)
                    .is_ok()
                {
                    self.counters.inc(Counter::TokenRefreshed);
                }
            }
            Err(code) => {
                debug!(key = id.key, code = code.to_u16(), "refresh refused");
                self.counters.inc(Counter::TokenRefreshRefused);
                let _ = conn.session.close(code);
            }
        }
    }

    /// A reload left `live_keys` as the secrets in use: every connection whose token one of
    /// the others verified ends `auth.revoked_grace_s` from now unless it refreshes (a
    /// version-2 peer is told). Connections of secrets still in use are untouched. Returns how
    /// many connections were given notice.
    pub(super) fn revoke_withdrawn(&mut self, now: Now) -> u64 {
        let mut revoked = 0;
        for id in self.conns.ids() {
            revoked += u64::from(self.revoke_if_withdrawn(id, now));
        }
        revoked
    }

    /// Gives connection `id` notice if the secret that verified its token is no longer in
    /// use (a reload, or a hand-over from a shard that had not taken the reload yet); whether
    /// it did.
    pub(super) fn revoke_if_withdrawn(&mut self, id: ConnId, now: Now) -> bool {
        let Some(live) = &self.live_keys else {
            return false;
        };
        let Some(conn) = self.conns.get_mut(id) else {
            return false;
        };
        let key = conn.session.token_key();
        if conn.flags & flag::CLOSING != 0 || key == KeyId::NONE || live.contains(&key) {
            return false;
        }
        let before = conn.session.token_end(&self.cfg.session);
        conn.session
            .revoke(&self.cfg.session, now.ms, self.cfg.revoked_grace_s);
        if conn.session.token_end(&self.cfg.session) == before {
            return false;
        }
        self.counters.inc(Counter::TokenRevoked);
        // Sends a notice that is due now and moves the wheel entry earlier.
        self.drive(id, now, None);
        true
    }
}
