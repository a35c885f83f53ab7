//! API keys: SHA-256 digests of the configured keys, compared in constant time, swappable on
//! reload.

use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The current set of bearer keys. Cloning shares the set; [`ApiKeys::replace`] swaps it for
/// every clone (a SIGHUP reload).
#[derive(Clone, Debug, Default)]
pub struct ApiKeys {
    /// Digests of the keys; empty = no key needed.
    digests: Arc<RwLock<Vec<[u8; 32]>>>,
}

impl ApiKeys {
    /// A set holding `keys`.
    pub fn new(keys: &[String]) -> ApiKeys {
        let k = ApiKeys::default();
        k.replace(keys);
        k
    }

    /// Replaces the set.
    pub fn replace(&self, keys: &[String]) {
        let digests = keys.iter().map(|k| digest(k.trim().as_bytes())).collect();
        *self.digests.write().unwrap_or_else(|e| e.into_inner()) = digests;
    }

    /// Whether a key is needed.
    pub fn required(&self) -> bool {
        !self
            .digests
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// Whether an `Authorization` header value grants access: always when no key is
    /// configured, otherwise `Bearer KEY` with one of the keys. Every key is compared, in
    /// constant time, whatever matches.
    pub fn allows(&self, authorization: Option<&[u8]>) -> bool {
        let digests = self.digests.read().unwrap_or_else(|e| e.into_inner());
        if digests.is_empty() {
            return true;
        }
        let Some(token) = authorization.and_then(bearer) else {
            return false;
        };
        let presented = digest(token);
        let mut ok = subtle::Choice::from(0);
        for d in digests.iter() {
            ok |= d.ct_eq(&presented);
        }
        ok.into()
    }
}

/// The token of a `Bearer TOKEN` header value.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at(value.iter().position(|b| *b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// SHA-256 of `key` (equal lengths for the comparison).
fn digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_keys_are_checked_and_swappable() {
        let keys = ApiKeys::new(&[]);
        assert!(keys.allows(None), "no keys configured: open");
        keys.replace(&[
            "first-key-0123456789".into(),
            "second-key-0123456789".into(),
        ]);
        assert!(!keys.allows(None));
        assert!(!keys.allows(Some(b"Bearer wrong-key-0123456789")));
        assert!(!keys.allows(Some(b"Basic first-key-0123456789")));
        assert!(!keys.allows(Some(b"Bearer")));
        assert!(keys.allows(Some(b"Bearer first-key-0123456789")));
        assert!(keys.allows(Some(b"bearer  second-key-0123456789 ")));
        let clone = keys.clone();
        keys.replace(&["third-key-0123456789".into()]);
        assert!(!clone.allows(Some(b"Bearer first-key-0123456789")));
        assert!(clone.allows(Some(b"Bearer third-key-0123456789")));
    }
}
