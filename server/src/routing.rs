//! Which shard is a user's home.
//!
//! Every logged-in client connection lives on its user's home shard, so a push for a user is
//! handled by exactly one shard and reaches it in at most one mesh hop.

/// The home shard of `user` among `n` shards: FNV-1a (64-bit) of the user id's bytes, modulo
/// `n`. Pure and stable: the same user maps to the same shard on every shard and every run with
/// the same shard count (it is not a security boundary; a user cannot choose another's shard
/// without choosing another id).
pub fn shard_for(user: &str, n: usize) -> usize {
    debug_assert!(n > 0);
    let h = fnv1a64(user.as_bytes());
    // Fold the high bits in: FNV's low bits alone are weak for small moduli.
    ((h ^ (h >> 32)) % n as u64) as usize
}

/// FNV-1a, 64-bit: a stable, fast hash of short ids (user ids for routing, device ids to
/// recognise a re-login of the same device).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_in_range() {
        for n in 1..8 {
            for u in ["a", "alice", "bob", "user-123456"] {
                let s = shard_for(u, n);
                assert!(s < n);
                assert_eq!(s, shard_for(u, n));
            }
        }
    }

    #[test]
    fn spreads_users() {
        let n = 4;
        let mut count = [0usize; 4];
        for i in 0..10_000 {
            count[shard_for(&format!("user-{i}"), n)] += 1;
        }
        for c in count {
            assert!((2_000..3_000).contains(&c), "uneven spread: {count:?}");
        }
    }
}
