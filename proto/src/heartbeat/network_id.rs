//! A compact, fixed-size identity for a client's network key.
//!
//! The network key a client sends in `Login` is an opaque string of up to 64 bytes (for example
//! a hash of the Wi-Fi SSID or the carrier). The server needs it again only for a `NetReport`,
//! possibly hours after login, so a connection keeps this 8-byte digest instead of the string.

use serde::{Deserialize, Serialize};

/// 64-bit FNV-1a digest of a non-empty network key.
///
/// Not a cryptographic hash: a client chooses its key freely anyway, so colliding with another
/// network's key gains nothing that sending that key would not. What protects the priors is the
/// aggregation in [`super::PriorTable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NetworkId(pub u64);

impl NetworkId {
    /// The id of `key`, or `None` for the empty key (the client named no network).
    pub fn of(key: &str) -> Option<NetworkId> {
        if key.is_empty() {
            return None;
        }
        const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        let mut h = OFFSET;
        for b in key.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(PRIME);
        }
        // 0 is kept free so a connection can store "no network" without an Option.
        Some(NetworkId(h.max(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_key_has_no_id_and_ids_are_stable() {
        assert_eq!(NetworkId::of(""), None);
        // FNV-1a 64 of "a" is a published test vector.
        assert_eq!(NetworkId::of("a"), Some(NetworkId(0xaf63_dc4c_8601_ec8c)));
        assert_ne!(NetworkId::of("wifi:home"), NetworkId::of("wifi:work"));
    }
}
