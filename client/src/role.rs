//! What kind of peer the driver logs in as: it decides the login's flags and whether the
//! heartbeat machine learns the network with probe connections.

use tether_proto::login_flags;

/// The kind of peer a [`crate::Driver`] runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Role {
    /// A client in the background: the machine learns the network's NAT timeout with probe
    /// connections and stretches its interval to it (`tether-client watch`).
    #[default]
    Learner,
    /// A client in the foreground: the fixed foreground interval, no probe connections, as an
    /// app a person is using (`tether-client upstream`).
    Foreground,
    /// A backend service that receives clients' upstream messages: its login carries the
    /// [`login_flags::UPSTREAM`] flag (version 2 only), and like a foreground client it keeps
    /// a fixed interval without probes (the server refuses a backend's probe connection).
    /// Its credentials hold a backend token and the service name as the user.
    UpstreamBackend,
}

impl Role {
    /// Whether the machine runs in the foreground (fixed interval, no probes).
    pub(crate) fn foreground(self) -> bool {
        match self {
            Role::Learner => false,
            Role::Foreground | Role::UpstreamBackend => true,
        }
    }

    /// Flags the main connection's `Login` carries beside the machine's own.
    pub(crate) fn login_flags(self) -> u8 {
        match self {
            Role::Learner | Role::Foreground => 0,
            Role::UpstreamBackend => login_flags::UPSTREAM,
        }
    }
}
