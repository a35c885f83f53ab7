//! TLS 1.3 record protection after the handshake (RFC 8446 §5): what the kernel's TLS does
//! where it has one, here in the shard.
//!
//! rustls runs the handshake and hands over the traffic keys ([`Keys::new`]); from then on a
//! connection keeps only its two keys, two IVs and two sequence numbers. The AEAD key schedule
//! (AES round keys, GHASH tables: ~560 B per direction in ring) is built for each record and
//! dropped with it, so an idle connection keeps 44 bytes of key material per direction, not a
//! kilobyte. Everything here is pure: bytes in, bytes out.

use ring::aead;
use zeroize::Zeroize;

/// A record header: content type, legacy version, length.
pub const HEADER: usize = 5;
/// The AEAD tag every supported suite appends.
pub const TAG: usize = 16;
/// Largest plaintext in one record (RFC 8446 §5.1).
pub const MAX_PLAINTEXT: usize = 1 << 14;
/// Largest protected record body (RFC 8446 §5.2).
pub const MAX_BODY: usize = MAX_PLAINTEXT + 256;
/// Largest whole record.
pub const MAX_RECORD: usize = HEADER + MAX_BODY;

/// Content types.
pub const CHANGE_CIPHER_SPEC: u8 = 20;
/// An alert.
pub const ALERT: u8 = 21;
/// A handshake message (after the handshake: `KeyUpdate`, `NewSessionTicket`).
pub const HANDSHAKE: u8 = 22;
/// Application data: the tether stream.
pub const APPLICATION_DATA: u8 = 23;

/// Why a record could not be read or written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// A header that no TLS 1.3 peer sends after the handshake.
    #[error("malformed record header")]
    Header,
    /// A record longer than the protocol allows.
    #[error("record too long")]
    Overflow,
    /// Authentication failed: tampered, truncated or not meant for these keys.
    #[error("record did not authenticate")]
    BadMac,
    /// A protected record without a content type.
    #[error("record without a content type")]
    Empty,
    /// The sequence number would wrap.
    #[error("record sequence exhausted")]
    Exhausted,
}

/// One direction's traffic keys and its record counter.
pub struct Keys {
    /// The AEAD.
    alg: &'static aead::Algorithm,
    /// The key (the first `alg.key_len()` bytes).
    key: [u8; 32],
    /// The per-connection IV.
    iv: [u8; aead::NONCE_LEN],
    /// The next record's sequence number.
    seq: u64,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        self.key.zeroize();
        self.iv.zeroize();
    }
}

impl Keys {
    /// The keys rustls extracted for one direction, starting at record `seq`.
    pub fn new(seq: u64, secrets: &rustls::ConnectionTrafficSecrets) -> Option<Keys> {
        use rustls::ConnectionTrafficSecrets as S;
        let (alg, key, iv) = match secrets {
            S::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            S::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            S::Chacha20Poly1305 { key, iv } => (&aead::CHACHA20_POLY1305, key, iv),
            _ => return None,
        };
        let (key, iv) = (key.as_ref(), iv.as_ref());
        if key.len() != alg.key_len() || iv.len() != aead::NONCE_LEN {
            return None;
        }
        let mut k = Keys {
            alg,
            key: [0; 32],
            iv: [0; aead::NONCE_LEN],
            seq,
        };
        k.key[..key.len()].copy_from_slice(key);
        k.iv.copy_from_slice(iv);
        Some(k)
    }

    /// Records protected with these keys so far (the next one's sequence number).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// This record's AEAD key and nonce; advances the sequence number.
    fn next(&mut self) -> Result<(aead::LessSafeKey, aead::Nonce), RecordError> {
        let seq = self.seq;
        self.seq = seq.checked_add(1).ok_or(RecordError::Exhausted)?;
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
            *n ^= s;
        }
        let unbound = aead::UnboundKey::new(self.alg, &self.key[..self.alg.key_len()])
            .map_err(|_| RecordError::BadMac)?;
        Ok((
            aead::LessSafeKey::new(unbound),
            aead::Nonce::assume_unique_for_key(nonce),
        ))
    }

    /// Appends `plain` to `out` as records of content type `kind`, at most
    /// [`MAX_PLAINTEXT`] bytes each.
    pub fn seal(&mut self, kind: u8, plain: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        for chunk in plain.chunks(MAX_PLAINTEXT) {
            self.seal_one(kind, chunk, out)?;
        }
        if plain.is_empty() {
            self.seal_one(kind, plain, out)?;
        }
        Ok(())
    }

    /// Appends one record.
    fn seal_one(&mut self, kind: u8, plain: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        let (key, nonce) = self.next()?;
        let body = plain.len() + 1 + TAG;
        let at = out.len();
        out.reserve(HEADER + body);
        out.extend_from_slice(&[APPLICATION_DATA, 3, 3]);
        out.extend_from_slice(&(body as u16).to_be_bytes());
        out.extend_from_slice(plain);
        out.push(kind);
        let (header, inner) = out[at..].split_at_mut(HEADER);
        let tag = key
            .seal_in_place_separate_tag(nonce, aead::Aad::from(&*header), inner)
            .map_err(|_| RecordError::BadMac)?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Opens the whole record `record` (header included) in place: its content type and
    /// plaintext.
    pub fn open<'a>(&mut self, record: &'a mut [u8]) -> Result<(u8, &'a [u8]), RecordError> {
        let len = record_len(record)?.ok_or(RecordError::Header)?;
        if len != record.len() {
            return Err(RecordError::Header);
        }
        let (key, nonce) = self.next()?;
        let (header, body) = record.split_at_mut(HEADER);
        let inner = key
            .open_in_place(nonce, aead::Aad::from(&*header), body)
            .map_err(|_| RecordError::BadMac)?;
        // The content type is the last byte that is not padding.
        let end = inner
            .iter()
            .rposition(|&b| b != 0)
            .ok_or(RecordError::Empty)?;
        if end > MAX_PLAINTEXT {
            return Err(RecordError::Overflow);
        }
        Ok((inner[end], &inner[..end]))
    }
}

/// The length of the whole record at the start of `buf`: `None` while its header is
/// incomplete. A header no TLS 1.3 peer sends after the handshake is an error, so garbage is
/// refused after five bytes instead of being buffered.
pub fn record_len(buf: &[u8]) -> Result<Option<usize>, RecordError> {
    let Some(header) = buf.get(..HEADER) else {
        return Ok(None);
    };
    if header[0] != APPLICATION_DATA || header[1] != 3 || header[2] != 3 {
        return Err(RecordError::Header);
    }
    let body = usize::from(u16::from_be_bytes([header[3], header[4]]));
    if body > MAX_BODY {
        return Err(RecordError::Overflow);
    }
    if body < TAG + 1 {
        return Err(RecordError::Header);
    }
    Ok(Some(HEADER + body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rustls::crypto::cipher::{AeadKey, Iv};
    use rustls::ConnectionTrafficSecrets as S;

    fn pair(which: u8) -> (Keys, Keys) {
        let secrets = || {
            let key = AeadKey::from([7u8; 32]);
            let iv = Iv::from([9u8; 12]);
            match which % 2 {
                0 => S::Aes256Gcm { key, iv },
                _ => S::Chacha20Poly1305 { key, iv },
            }
        };
        (
            Keys::new(0, &secrets()).expect("keys"),
            Keys::new(0, &secrets()).expect("keys"),
        )
    }

    #[test]
    fn a_record_round_trips_and_counts() {
        let (mut tx, mut rx) = pair(0);
        let mut out = Vec::new();
        tx.seal(APPLICATION_DATA, b"ping", &mut out).unwrap();
        assert_eq!(out.len(), HEADER + 4 + 1 + TAG);
        let (kind, plain) = rx.open(&mut out).unwrap();
        assert_eq!((kind, plain), (APPLICATION_DATA, &b"ping"[..]));
        assert_eq!((tx.seq(), rx.seq()), (1, 1));
    }

    #[test]
    fn a_replayed_or_reordered_record_does_not_authenticate() {
        let (mut tx, mut rx) = pair(1);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        tx.seal(APPLICATION_DATA, b"first", &mut a).unwrap();
        tx.seal(APPLICATION_DATA, b"second", &mut b).unwrap();
        assert_eq!(rx.open(&mut b.clone()), Err(RecordError::BadMac));
        let (mut rx2, _) = pair(1);
        // A fresh receiver opens the first, then refuses the first again (a replay).
        rx2.open(&mut a.clone()).unwrap();
        assert_eq!(rx2.open(&mut a), Err(RecordError::BadMac));
    }

    #[test]
    fn headers_no_peer_sends_are_refused_at_once() {
        assert_eq!(record_len(&[23, 3]), Ok(None));
        assert_eq!(record_len(&[22, 3, 3, 0, 40]), Err(RecordError::Header));
        assert_eq!(record_len(b"GET / HTTP/1.1"), Err(RecordError::Header));
        assert_eq!(
            record_len(&[23, 3, 3, 0x48, 0x01]),
            Err(RecordError::Overflow)
        );
        assert_eq!(record_len(&[23, 3, 3, 0, 3]), Err(RecordError::Header));
        assert_eq!(record_len(&[23, 3, 3, 0, 17]), Ok(Some(22)));
    }

    #[test]
    fn long_plaintext_is_split_into_records() {
        let (mut tx, mut rx) = pair(0);
        let plain = vec![5u8; MAX_PLAINTEXT * 2 + 10];
        let mut out = Vec::new();
        tx.seal(APPLICATION_DATA, &plain, &mut out).unwrap();
        let mut got = Vec::new();
        let mut rest = &mut out[..];
        while !rest.is_empty() {
            let n = record_len(rest).unwrap().unwrap();
            let (record, tail) = rest.split_at_mut(n);
            got.extend_from_slice(rx.open(record).unwrap().1);
            rest = tail;
        }
        assert_eq!(got, plain);
        assert_eq!(rx.seq(), 3);
    }

    proptest! {
        /// Any change to a sealed record is refused, never accepted as other bytes.
        #[test]
        fn a_flipped_byte_never_authenticates(
            plain in proptest::collection::vec(any::<u8>(), 0..200),
            at in any::<prop::sample::Index>(),
            bit in 0u8..8,
            which in 0u8..2,
        ) {
            let (mut tx, mut rx) = pair(which);
            let mut out = Vec::new();
            tx.seal(APPLICATION_DATA, &plain, &mut out).unwrap();
            let i = at.index(out.len());
            out[i] ^= 1 << bit;
            let r = rx.open(&mut out);
            prop_assert!(r.is_err(), "a changed record opened: {:?}", r);
        }

        /// Arbitrary bytes given as a record are refused without a panic.
        #[test]
        fn garbage_is_refused(mut bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let (_, mut rx) = pair(0);
            let _ = record_len(&bytes);
            prop_assert!(rx.open(&mut bytes).is_err());
        }
    }
}
