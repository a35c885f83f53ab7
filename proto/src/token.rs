//! Auth tokens: HMAC-SHA256 over the claims, in a compact text form.
//!
//! ```text
//! client:  c1.<expiry_unix>.<b64url(user)>.<b64url(device)>.<b64url(mac)>
//! backend: b1.<expiry_unix>.<b64url(service)>.<b64url(mac)>
//! mac = HMAC-SHA256(secret, "tether-token\0" ‖ everything before the last '.')
//! ```
//!
//! `b64url` is base64url without padding (RFC 4648 §5), `expiry_unix` decimal seconds since the
//! Unix epoch without leading zeros. The kind prefix is inside the MAC input, so a client token
//! can never verify as a backend token or the other way round, and the domain string keeps these
//! MACs apart from any other use of the same secret. A token is valid while
//! `now_unix < expiry_unix`.
//!
//! [`Minter`] makes tokens (loadgen, tests, a backend's login service). [`Verifier`] checks them
//! against a [`KeyRing`] per kind: client tokens against the client secrets, backend tokens
//! against the backend secrets, so whoever holds the client secret (the service that logs users
//! in) cannot mint a backend token and push to anyone. Each ring holds the current secret and,
//! during a rotation, the previous one, so a rotation does not log anyone out: tokens minted with
//! the old secret stay valid until they expire. The verifier also bounds how far in the future an
//! expiry may lie ([`DEFAULT_MAX_LIFETIME_S`]), so a leaked token cannot be good for decades.
//! Nothing here reads a clock: `now_unix` is always an argument.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::message::{limits, CloseCode, Login};

type HmacSha256 = Hmac<Sha256>;

/// Prefix of every MAC input: separates token MACs from other uses of the secret.
const DOMAIN: &[u8] = b"tether-token\0";
/// Kind prefix of a client token.
const CLIENT_PREFIX: &str = "c1";
/// Kind prefix of a backend token.
const BACKEND_PREFIX: &str = "b1";
/// Length of an HMAC-SHA256 tag.
const MAC_LEN: usize = 32;

/// The longest a token may still be valid, by default, when it is checked: 30 days. A token whose
/// expiry lies further ahead is refused ([`TokenError::TooLong`]).
pub const DEFAULT_MAX_LIFETIME_S: u64 = 30 * 24 * 3600;

/// Key material for minting and verifying tokens. At least [`Secret::MIN_LEN`] bytes; its
/// `Debug` output never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    /// The key bytes.
    bytes: Vec<u8>,
}

impl Secret {
    /// Shortest secret accepted (128 bits).
    pub const MIN_LEN: usize = 16;

    /// Wraps key bytes; refuses fewer than [`Secret::MIN_LEN`].
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Secret, SecretError> {
        let bytes = bytes.into();
        if bytes.len() < Self::MIN_LEN {
            return Err(SecretError::TooShort {
                len: bytes.len(),
                min: Self::MIN_LEN,
            });
        }
        Ok(Secret { bytes })
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.bytes).expect("HMAC takes keys of any length")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes, redacted)", self.bytes.len())
    }
}

/// Why bytes cannot be a [`Secret`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// Too few bytes to resist guessing.
    #[error("secret is {len} bytes; at least {min} are required")]
    TooShort {
        /// Length given.
        len: usize,
        /// Required minimum.
        min: usize,
    },
}

/// Why a token cannot be minted: a claim breaks the bounds of the [`Login`] it will travel with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MintError {
    /// A claim's length is outside its bounds.
    #[error("{field} is {len} bytes long; tokens allow {min}..={max}")]
    Field {
        /// Name of the claim.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
        /// Shortest allowed length.
        min: usize,
        /// Longest allowed length.
        max: usize,
    },
}

/// Why a token was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token of a known kind and shape.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The MAC matches neither the current nor the previous secret.
    #[error("token signature does not verify")]
    BadSignature,
    /// The token verified but its expiry has passed.
    #[error("token expired at {expiry_unix} (now {now_unix})")]
    Expired {
        /// The token's expiry.
        expiry_unix: u64,
        /// The time it was checked at.
        now_unix: u64,
    },
    /// A valid token of the other kind (client vs backend) than the one required.
    #[error("token is of the wrong kind")]
    WrongKind,
    /// A valid token for another user, device or service than the login claims.
    #[error("token does not match the login's identity")]
    Mismatch,
    /// The token verified but expires further ahead than the verifier allows: it was minted
    /// with a lifetime the server does not accept (or an expiry like 2^64 − 1).
    #[error(
        "token expires at {expiry_unix}, more than the allowed {max_lifetime_s} s after now          ({now_unix})"
    )]
    TooLong {
        /// The token's expiry.
        expiry_unix: u64,
        /// The time it was checked at.
        now_unix: u64,
        /// The verifier's bound.
        max_lifetime_s: u64,
    },
}

impl TokenError {
    /// The close code the server sends for this refusal. Both are "do not reconnect": the
    /// client needs a new token first.
    pub fn close_code(&self) -> CloseCode {
        match self {
            TokenError::Expired { .. } => CloseCode::TokenExpired,
            _ => CloseCode::AuthFailed,
        }
    }
}

/// What a valid client token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientClaims {
    /// The user the token was minted for.
    pub user: String,
    /// The device the token was minted for.
    pub device: String,
    /// Seconds since the Unix epoch at which the token stops being valid.
    pub expiry_unix: u64,
}

/// What a valid backend token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendClaims {
    /// Name of the backend service (sent as the login's `user`).
    pub service: String,
    /// Seconds since the Unix epoch at which the token stops being valid.
    pub expiry_unix: u64,
}

/// A verified token of either kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claims {
    /// A client (end-user device) token.
    Client(ClientClaims),
    /// A backend service token, allowed to send `BackendPush`.
    Backend(BackendClaims),
}

/// Who a successful login is. The identity itself is the login's `user` and `device`, which
/// authentication has checked against the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Principal {
    /// An end-user device: receives pushes, may `Send`.
    Client,
    /// A backend service: may `BackendPush`, receives `PushResult`.
    Backend,
}

/// Names the secret a token was verified with, so a server can end the connections a
/// withdrawn secret authenticated. Chosen by whoever builds the [`KeyRing`]s (a server keeps a
/// secret's id across reloads); [`KeyId::NONE`] for authenticators without secrets. Ids use 14
/// bits (1..=[`KeyId::MAX`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub u16);

impl KeyId {
    /// No secret: never withdrawn.
    pub const NONE: KeyId = KeyId(0);
    /// The largest id.
    pub const MAX: u16 = (1 << 14) - 1;
}

/// A successful authentication: who the peer is, until when, and by which secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Who the token says this is.
    pub principal: Principal,
    /// Seconds since the Unix epoch at which the token stops being valid (`u64::MAX`: never).
    pub expiry_unix: u64,
    /// The secret that verified the token.
    pub key: KeyId,
}

/// Decides whether a [`Login`] may proceed. The server's session state machine calls this once
/// per connection (and a server again for each `Refresh`); `now_unix` is wall-clock seconds
/// supplied by the caller.
pub trait Authenticate {
    /// What the login authenticates as, or the close code to refuse it with.
    fn authenticate(&self, login: &Login, now_unix: u64) -> Result<Grant, CloseCode>;
}

/// Makes tokens with one secret. The server verifies client tokens against its client secrets
/// and backend tokens against its backend secrets: mint each kind with a secret of its own
/// ring, or the server refuses it (`AuthFailed`).
#[derive(Clone)]
pub struct Minter {
    /// HMAC state keyed with the secret, cloned for every token.
    mac: HmacSha256,
}

impl fmt::Debug for Minter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Minter { .. }")
    }
}

fn check_claim(field: &'static str, s: &str, min: usize, max: usize) -> Result<(), MintError> {
    if s.len() < min || s.len() > max {
        return Err(MintError::Field {
            field,
            len: s.len(),
            min,
            max,
        });
    }
    Ok(())
}

impl Minter {
    /// A minter signing with `secret`.
    pub fn new(secret: &Secret) -> Minter {
        Minter { mac: secret.mac() }
    }

    /// A client token for `user` (1..=128 bytes) on `device` (0..=64 bytes), valid until
    /// `expiry_unix`.
    pub fn client(&self, user: &str, device: &str, expiry_unix: u64) -> Result<String, MintError> {
        check_claim("user", user, 1, limits::USER_MAX)?;
        check_claim("device", device, 0, limits::DEVICE_MAX)?;
        let signed = format!(
            "{CLIENT_PREFIX}.{expiry_unix}.{}.{}",
            URL_SAFE_NO_PAD.encode(user),
            URL_SAFE_NO_PAD.encode(device)
        );
        Ok(self.finish(signed))
    }

    /// A backend token for `service` (1..=128 bytes), valid until `expiry_unix`.
    pub fn backend(&self, service: &str, expiry_unix: u64) -> Result<String, MintError> {
        check_claim("service", service, 1, limits::USER_MAX)?;
        let signed = format!(
            "{BACKEND_PREFIX}.{expiry_unix}.{}",
            URL_SAFE_NO_PAD.encode(service)
        );
        Ok(self.finish(signed))
    }

    fn finish(&self, mut signed: String) -> String {
        let mut mac = self.mac.clone();
        mac.update(DOMAIN);
        mac.update(signed.as_bytes());
        let tag = mac.finalize().into_bytes();
        signed.push('.');
        URL_SAFE_NO_PAD.encode_string(tag, &mut signed);
        debug_assert!(signed.len() <= limits::TOKEN_MAX);
        signed
    }
}

/// Checks tokens against the current secret and, during a rotation, the previous one.
#[derive(Clone)]
pub struct Verifier {
    /// Secrets of client tokens (`c1`).
    client: KeyRing,
    /// Secrets of backend tokens (`b1`).
    backend: KeyRing,
    /// Longest time from now to a token's expiry that is accepted, seconds.
    max_lifetime_s: u64,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("client", &self.client)
            .field("backend", &self.backend)
            .field("max_lifetime_s", &self.max_lifetime_s)
            .finish()
    }
}

/// The secrets one kind of token is verified with: the current one and, during a rotation, the
/// previous one.
#[derive(Clone)]
pub struct KeyRing {
    /// HMAC state keyed with the secret new tokens are minted with, and its id.
    current: (HmacSha256, KeyId),
    /// HMAC state keyed with the secret being rotated out (its tokens stay valid until
    /// expiry), and its id.
    previous: Option<(HmacSha256, KeyId)>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("has_previous", &self.previous.is_some())
            .finish_non_exhaustive()
    }
}

impl KeyRing {
    /// Tokens signed with `current` or, if given, `previous`; their ids are [`KeyId::NONE`].
    pub fn new(current: &Secret, previous: Option<&Secret>) -> KeyRing {
        KeyRing {
            current: (current.mac(), KeyId::NONE),
            previous: previous.map(|p| (p.mac(), KeyId::NONE)),
        }
    }

    /// Tokens signed with `current` or, if given, `previous`, each secret with its id.
    pub fn with_ids(current: (&Secret, KeyId), previous: Option<(&Secret, KeyId)>) -> KeyRing {
        KeyRing {
            current: (current.0.mac(), current.1),
            previous: previous.map(|(p, id)| (p.mac(), id)),
        }
    }

    /// A ring from a newest-first list of one or two secrets (as configured); `None` for an
    /// empty list or more than two.
    pub fn from_list(secrets: &[Secret]) -> Option<KeyRing> {
        match secrets {
            [current] => Some(KeyRing::new(current, None)),
            [current, previous] => Some(KeyRing::new(current, Some(previous))),
            _ => None,
        }
    }

    /// The ids of the ring's secrets.
    pub fn ids(&self) -> impl Iterator<Item = KeyId> + '_ {
        std::iter::once(self.current.1).chain(self.previous.as_ref().map(|p| p.1))
    }

    /// The id of the ring's secret under which `tag` is the MAC of `signed`, if any.
    fn check(&self, signed: &str, tag: &[u8]) -> Option<KeyId> {
        let matches = |key: &HmacSha256| {
            let mut mac = key.clone();
            mac.update(DOMAIN);
            mac.update(signed.as_bytes());
            mac.verify_slice(tag).is_ok()
        };
        // Both secrets are tried whatever the first answer, so timing does not tell which
        // secret a token was signed with.
        let current = matches(&self.current.0);
        let previous = self.previous.as_ref().is_some_and(|p| matches(&p.0));
        if current {
            Some(self.current.1)
        } else if previous {
            self.previous.as_ref().map(|p| p.1)
        } else {
            None
        }
    }
}

impl Verifier {
    /// A verifier checking client tokens against `client` and backend tokens against
    /// `backend`, with the default maximum lifetime.
    pub fn new(client: KeyRing, backend: KeyRing) -> Verifier {
        Verifier {
            client,
            backend,
            max_lifetime_s: DEFAULT_MAX_LIFETIME_S,
        }
    }

    /// The same verifier, refusing tokens that expire more than `secs` after the time they are
    /// checked at.
    pub fn with_max_lifetime_s(mut self, secs: u64) -> Verifier {
        self.max_lifetime_s = secs;
        self
    }

    /// Verifies a token of either kind and returns its claims.
    ///
    /// Checks, in order: shape (`Malformed`), MAC under the secrets of the token's kind
    /// (`BadSignature`, constant time), expiry (`Expired`, valid while `now_unix <
    /// expiry_unix`), lifetime (`TooLong` when `expiry_unix - now_unix` exceeds the maximum).
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<Claims, TokenError> {
        self.verify_keyed(token, now_unix).map(|(claims, _)| claims)
    }

    /// The ids of every secret this verifier takes, client and backend.
    pub fn key_ids(&self) -> impl Iterator<Item = KeyId> + '_ {
        self.client.ids().chain(self.backend.ids())
    }

    /// [`Verifier::verify`], also naming the secret that verified the token.
    pub fn verify_keyed(&self, token: &str, now_unix: u64) -> Result<(Claims, KeyId), TokenError> {
        if token.len() > limits::TOKEN_MAX {
            return Err(TokenError::Malformed("longer than 512 bytes"));
        }
        let (signed, tag) = token
            .rsplit_once('.')
            .ok_or(TokenError::Malformed("no signature"))?;
        let is_client = signed.starts_with("c1.");
        if !is_client && !signed.starts_with("b1.") {
            return Err(TokenError::Malformed("unknown token kind"));
        }
        let tag = decode_b64(tag)?;
        if tag.len() != MAC_LEN {
            return Err(TokenError::Malformed("signature is not 32 bytes"));
        }
        let ring = if is_client {
            &self.client
        } else {
            &self.backend
        };
        let key = ring.check(signed, &tag).ok_or(TokenError::BadSignature)?;

        let mut parts = signed.split('.').skip(1);
        let expiry_unix = parse_expiry(parts.next())?;
        let claims = if is_client {
            let user = decode_claim(parts.next(), 1, limits::USER_MAX)?;
            let device = decode_claim(parts.next(), 0, limits::DEVICE_MAX)?;
            Claims::Client(ClientClaims {
                user,
                device,
                expiry_unix,
            })
        } else {
            let service = decode_claim(parts.next(), 1, limits::USER_MAX)?;
            Claims::Backend(BackendClaims {
                service,
                expiry_unix,
            })
        };
        if parts.next().is_some() {
            return Err(TokenError::Malformed("too many fields"));
        }
        if now_unix >= expiry_unix {
            return Err(TokenError::Expired {
                expiry_unix,
                now_unix,
            });
        }
        if expiry_unix - now_unix > self.max_lifetime_s {
            return Err(TokenError::TooLong {
                expiry_unix,
                now_unix,
                max_lifetime_s: self.max_lifetime_s,
            });
        }
        Ok((claims, key))
    }

    /// Verifies a client token for exactly this `user` and `device`.
    pub fn verify_client(
        &self,
        token: &str,
        user: &str,
        device: &str,
        now_unix: u64,
    ) -> Result<ClientClaims, TokenError> {
        match self.verify(token, now_unix)? {
            Claims::Client(c) if c.user == user && c.device == device => Ok(c),
            Claims::Client(_) => Err(TokenError::Mismatch),
            Claims::Backend(_) => Err(TokenError::WrongKind),
        }
    }

    /// Verifies a backend token for exactly this `service`.
    pub fn verify_backend(
        &self,
        token: &str,
        service: &str,
        now_unix: u64,
    ) -> Result<BackendClaims, TokenError> {
        match self.verify(token, now_unix)? {
            Claims::Backend(b) if b.service == service => Ok(b),
            Claims::Backend(_) => Err(TokenError::Mismatch),
            Claims::Client(_) => Err(TokenError::WrongKind),
        }
    }

    /// Checks a login's token against its identity: a client token must name the login's
    /// `user` and `device`; a backend token must name the login's `user` as its service (the
    /// login's `device` is not used).
    pub fn check_login(&self, login: &Login, now_unix: u64) -> Result<Grant, TokenError> {
        let (claims, key) = self.verify_keyed(&login.token, now_unix)?;
        let (principal, expiry_unix) = match claims {
            Claims::Client(c) if c.user == login.user && c.device == login.device => {
                (Principal::Client, c.expiry_unix)
            }
            Claims::Backend(b) if b.service == login.user => (Principal::Backend, b.expiry_unix),
            Claims::Client(_) | Claims::Backend(_) => return Err(TokenError::Mismatch),
        };
        Ok(Grant {
            principal,
            expiry_unix,
            key,
        })
    }
}

impl Authenticate for Verifier {
    fn authenticate(&self, login: &Login, now_unix: u64) -> Result<Grant, CloseCode> {
        self.check_login(login, now_unix)
            .map_err(|e| e.close_code())
    }
}

fn decode_b64(s: &str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| TokenError::Malformed("bad base64url"))
}

fn parse_expiry(part: Option<&str>) -> Result<u64, TokenError> {
    let s = part.ok_or(TokenError::Malformed("missing expiry"))?;
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if !canonical {
        return Err(TokenError::Malformed("expiry is not a decimal number"));
    }
    s.parse()
        .map_err(|_| TokenError::Malformed("expiry overflows u64"))
}

fn decode_claim(part: Option<&str>, min: usize, max: usize) -> Result<String, TokenError> {
    let bytes = decode_b64(part.ok_or(TokenError::Malformed("missing field"))?)?;
    if bytes.len() < min || bytes.len() > max {
        return Err(TokenError::Malformed("field length out of bounds"));
    }
    String::from_utf8(bytes).map_err(|_| TokenError::Malformed("field is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(fill: u8) -> Secret {
        Secret::new(vec![fill; 32]).unwrap()
    }

    /// Client tokens under secret `client`, backend tokens under secret `backend`.
    fn verifier(client: u8, backend: u8) -> Verifier {
        Verifier::new(
            KeyRing::new(&secret(client), None),
            KeyRing::new(&secret(backend), None),
        )
    }

    fn login(user: &str, device: &str, token: String) -> Login {
        Login {
            version: crate::message::PROTOCOL_VERSION,
            flags: 0,
            user: user.into(),
            device: device.into(),
            token,
            heartbeat_ms: 240_000,
            network_key: String::new(),
        }
    }

    #[test]
    fn client_token_verifies_for_its_identity_until_expiry() {
        let minter = Minter::new(&secret(1));
        let verifier = verifier(1, 9);
        let token = minter.client("alice", "phone", 1_000).unwrap();
        assert!(token.starts_with("c1.1000.YWxpY2U.cGhvbmU."), "{token}");
        let claims = verifier
            .verify_client(&token, "alice", "phone", 999)
            .unwrap();
        assert_eq!(claims.expiry_unix, 1_000);
        assert_eq!(
            verifier.verify_client(&token, "alice", "phone", 1_000),
            Err(TokenError::Expired {
                expiry_unix: 1_000,
                now_unix: 1_000
            })
        );
        assert_eq!(
            verifier.verify_client(&token, "alice", "tablet", 10),
            Err(TokenError::Mismatch)
        );
        assert_eq!(
            verifier.verify_client(&token, "bob", "phone", 10),
            Err(TokenError::Mismatch)
        );
        assert_eq!(
            verifier.verify_backend(&token, "alice", 10),
            Err(TokenError::WrongKind)
        );
    }

    #[test]
    fn kinds_cannot_be_confused() {
        let minter = Minter::new(&secret(1));
        // Even a verifier with one secret for both kinds keeps them apart.
        let verifier = verifier(1, 1);
        let backend = minter.backend("billing", 1_000).unwrap();
        assert!(backend.starts_with("b1.1000.YmlsbGluZw."), "{backend}");
        assert!(verifier.verify_backend(&backend, "billing", 10).is_ok());
        assert_eq!(
            verifier.verify_client(&backend, "billing", "", 10),
            Err(TokenError::WrongKind)
        );
        // Relabelling a token's kind breaks its MAC.
        let client = minter.client("billing", "", 1_000).unwrap();
        let relabelled = format!("b1{}", &client[2..]);
        assert!(matches!(
            verifier.verify(&relabelled, 10),
            Err(TokenError::BadSignature | TokenError::Malformed(_))
        ));
    }

    #[test]
    fn rotation_keeps_old_tokens_valid_and_drops_them_afterwards() {
        let old = Minter::new(&secret(1))
            .client("alice", "phone", 1_000)
            .unwrap();
        let new = Minter::new(&secret(2))
            .client("alice", "phone", 1_000)
            .unwrap();
        let backends = KeyRing::new(&secret(9), None);
        let rotating = Verifier::new(KeyRing::new(&secret(2), Some(&secret(1))), backends.clone());
        assert!(rotating.verify(&old, 10).is_ok());
        assert!(rotating.verify(&new, 10).is_ok());
        let rotated = Verifier::new(KeyRing::new(&secret(2), None), backends);
        assert_eq!(rotated.verify(&old, 10), Err(TokenError::BadSignature));
        assert!(rotated.verify(&new, 10).is_ok());
    }

    #[test]
    fn tampering_is_refused() {
        let minter = Minter::new(&secret(1));
        let verifier = verifier(1, 9);
        let token = minter.client("alice", "phone", 1_000).unwrap();
        let longer = token.replacen("c1.1000.", "c1.9000.", 1);
        assert_eq!(verifier.verify(&longer, 10), Err(TokenError::BadSignature));
        let mut flipped = token.clone().into_bytes();
        let last = flipped.len() - 2;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(verifier.verify(&flipped, 10), Err(TokenError::BadSignature));
        for bad in [
            "",
            "c1",
            "x1.1.YQ.YQ.AAAA",
            "c1.1000.YWxpY2U.cGhvbmU.!!",
            "c1.1000.YQ.YQ.AAAA",
        ] {
            assert!(
                matches!(verifier.verify(bad, 10), Err(TokenError::Malformed(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            verifier.verify(&"c".repeat(600), 10),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn authenticate_maps_to_close_codes() {
        let minter = Minter::new(&secret(1));
        let verifier = verifier(1, 9);
        let client = minter.client("alice", "phone", 1_000).unwrap();
        let backend = Minter::new(&secret(9)).backend("billing", 1_000).unwrap();
        assert_eq!(
            verifier
                .authenticate(&login("alice", "phone", client.clone()), 10)
                .map(|g| (g.principal, g.expiry_unix)),
            Ok((Principal::Client, 1_000))
        );
        assert_eq!(
            verifier
                .authenticate(&login("billing", "", backend.clone()), 10)
                .map(|g| g.principal),
            Ok(Principal::Backend)
        );
        assert_eq!(
            verifier.authenticate(&login("alice", "phone", client.clone()), 1_000),
            Err(CloseCode::TokenExpired)
        );
        assert_eq!(
            verifier.authenticate(&login("mallory", "phone", client), 10),
            Err(CloseCode::AuthFailed)
        );
        assert_eq!(
            verifier.authenticate(&login("alice", "phone", backend), 10),
            Err(CloseCode::AuthFailed)
        );
        assert_eq!(
            verifier.authenticate(&login("alice", "phone", "garbage".into()), 10),
            Err(CloseCode::AuthFailed)
        );
        let forever = minter.client("alice", "phone", u64::MAX).unwrap();
        assert_eq!(
            verifier.authenticate(&login("alice", "phone", forever), 10),
            Err(CloseCode::AuthFailed)
        );
    }

    #[test]
    fn the_client_secret_cannot_mint_backend_tokens() {
        let verifier = verifier(1, 9);
        let forged = Minter::new(&secret(1)).backend("billing", 1_000).unwrap();
        assert_eq!(
            verifier.verify_backend(&forged, "billing", 10),
            Err(TokenError::BadSignature)
        );
        // Nor the backend secret client tokens.
        let forged = Minter::new(&secret(9)).client("alice", "", 1_000).unwrap();
        assert_eq!(
            verifier.verify_client(&forged, "alice", "", 10),
            Err(TokenError::BadSignature)
        );
        // Backend secrets rotate like client secrets.
        let old = Minter::new(&secret(8)).backend("billing", 1_000).unwrap();
        let rotating = Verifier::new(
            KeyRing::new(&secret(1), None),
            KeyRing::from_list(&[secret(9), secret(8)]).unwrap(),
        );
        assert!(rotating.verify_backend(&old, "billing", 10).is_ok());
        assert!(KeyRing::from_list(&[]).is_none());
        assert!(KeyRing::from_list(&[secret(1), secret(2), secret(3)]).is_none());
    }

    #[test]
    fn a_token_may_not_expire_further_ahead_than_the_maximum_lifetime() {
        let minter = Minter::new(&secret(1));
        let now = 1_767_225_600;
        let v = verifier(1, 9);
        let max = DEFAULT_MAX_LIFETIME_S;
        let at_max = minter.client("alice", "", now + max).unwrap();
        assert!(v.verify(&at_max, now).is_ok());
        let beyond = minter.client("alice", "", now + max + 1).unwrap();
        assert_eq!(
            v.verify(&beyond, now),
            Err(TokenError::TooLong {
                expiry_unix: now + max + 1,
                now_unix: now,
                max_lifetime_s: max
            })
        );
        // The year 2^64 is refused; a token that was too long becomes fine as time passes.
        let forever = minter.client("alice", "", u64::MAX).unwrap();
        assert!(matches!(
            v.verify(&forever, now),
            Err(TokenError::TooLong { .. })
        ));
        assert!(v.verify(&beyond, now + 1).is_ok());
        let short = v.clone().with_max_lifetime_s(60);
        assert!(short.verify(&at_max, now).is_err());
        assert!(short.verify(&at_max, now + max - 60).is_ok());
    }

    #[test]
    fn secrets_are_long_enough_and_never_printed() {
        assert_eq!(
            Secret::new(&b"short"[..]).unwrap_err(),
            SecretError::TooShort { len: 5, min: 16 }
        );
        let s = Secret::new("0123456789abcdef-topsecret").unwrap();
        let shown = format!(
            "{s:?} {:?} {:?}",
            Minter::new(&s),
            Verifier::new(KeyRing::new(&s, Some(&s)), KeyRing::new(&s, None))
        );
        assert!(!shown.contains("topsecret"), "{shown}");
    }

    #[test]
    fn minting_refuses_claims_a_login_cannot_carry() {
        let minter = Minter::new(&secret(1));
        assert!(minter.client("", "phone", 1).is_err());
        assert!(minter.client(&"u".repeat(129), "", 1).is_err());
        assert!(minter.client("alice", &"d".repeat(65), 1).is_err());
        let longest = minter
            .client(&"u".repeat(128), &"d".repeat(64), u64::MAX)
            .unwrap();
        assert!(longest.len() <= limits::TOKEN_MAX);
        let lifelong = verifier(1, 9).with_max_lifetime_s(u64::MAX);
        assert!(lifelong.verify(&longest, 0).is_ok());
    }
}
