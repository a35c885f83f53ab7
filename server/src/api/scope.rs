//! What an API key may do: its scopes, as the configuration names them and as a set.
//!
//! A scope is what a key may do, not where it may do it: `push` covers `/api/push` and
//! `/api/batch`, `read` presence and stats, `admin` what acts on users or on the whole server
//! without being a push (kick, drain). The route table in `route.rs` names each route's scope.

/// One thing a key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// `POST /api/push`, `POST /api/batch`.
    Push,
    /// `GET /api/presence`, `GET /api/stats`.
    Read,
    /// `POST /api/kick`, `POST /api/drain`: acts on users or on everyone.
    Admin,
}

impl Scope {
    /// Every scope, in the order the documentation lists them.
    pub const ALL: [Scope; 3] = [Scope::Push, Scope::Read, Scope::Admin];

    /// The scope's name in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Push => "push",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }

    /// The scope named `name`, if any (exact, lower case).
    pub fn parse(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The scope's bit in [`Scopes`].
    fn bit(self) -> u8 {
        match self {
            Scope::Push => 1,
            Scope::Read => 2,
            Scope::Admin => 4,
        }
    }
}

/// A set of scopes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scopes(pub(super) u8);

impl Scopes {
    /// No scope: what a key whose scopes could not be read grants (fail closed).
    pub const NONE: Scopes = Scopes(0);
    /// Every scope: a plain-string key, `TETHER_API_KEYS`, or no key configured at all.
    pub const ALL: Scopes = Scopes(7);

    /// Whether `scope` is in the set.
    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Scopes {
        Scopes(iter.into_iter().fold(0, |acc, s| acc | s.bit()))
    }
}
