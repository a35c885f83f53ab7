//! PROXY protocol version 2: the header a load balancer (haproxy, AWS NLB, ...) puts before a
//! connection's first byte to say whose connection it is. Pure: it parses bytes.
//!
//! With `server.proxy_protocol = true` every connection must start with this header; the
//! source address it carries replaces the load balancer's address for the admission caps
//! (`admission.rs`). Layout (haproxy's `proxy-protocol.txt`, section 2.2):
//!
//! ```text
//! 0..12  signature  0D 0A 0D 0A 00 0D 0A 51 55 49 54 0A
//! 12     version (high nibble, 2) | command (low nibble: 0 LOCAL, 1 PROXY)
//! 13     family (high nibble: 0 UNSPEC, 1 INET, 2 INET6, 3 UNIX) | transport (low nibble)
//! 14..16 length of the rest, big endian
//! 16..   addresses: INET  src(4) dst(4) sport(2) dport(2)      = 12 bytes
//!                   INET6 src(16) dst(16) sport(2) dport(2)    = 36 bytes
//!                   UNIX  src(108) dst(108)                    = 216 bytes
//!        then TLVs (skipped)
//! ```
//!
//! A `LOCAL` command (the balancer's own health check) and the `UNSPEC`/`UNIX` families carry
//! no usable source: the connection keeps the address it was accepted from.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tether_proto::CloseCode;

/// The 12 bytes every version 2 header starts with.
pub const SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];

/// Largest whole header accepted (fixed part, addresses and TLVs). The longest address block
/// is 216 bytes (UNIX); the rest leaves room for the TLVs balancers send (ids, ALPN, TLS
/// details) without letting a peer make the server buffer 64 KiB before its first frame.
pub const MAX_HEADER: usize = 2048;

/// A parsed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Bytes the header takes; the connection's own bytes start after them.
    pub len: usize,
    /// The original client's address; `None` for `LOCAL`, `UNSPEC` and `UNIX`.
    pub source: Option<SocketAddr>,
}

/// Why a connection's first bytes are not a usable header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The bytes do not start with the version 2 signature.
    #[error("no PROXY protocol v2 signature")]
    Signature,
    /// A version other than 2.
    #[error("PROXY protocol version {0} (only 2 is supported)")]
    Version(u8),
    /// A command other than LOCAL or PROXY.
    #[error("PROXY protocol command {0}")]
    Command(u8),
    /// A family other than UNSPEC, INET, INET6 or UNIX.
    #[error("PROXY protocol address family {0}")]
    Family(u8),
    /// The length leaves no room for the family's addresses.
    #[error("PROXY protocol header too short for its addresses")]
    Short,
    /// The header is longer than [`MAX_HEADER`].
    #[error("PROXY protocol header of {0} bytes (limit {MAX_HEADER})")]
    TooLong(usize),
}

impl ProxyError {
    /// The close code of a connection whose header is refused.
    pub fn close_code(&self) -> CloseCode {
        CloseCode::ProtocolError
    }
}

/// Parses the header at the start of `buf`: `Ok(None)` while more bytes are needed (never
/// more than [`MAX_HEADER`]), the header once complete, or why the bytes cannot be one. A
/// wrong signature is refused as soon as the first differing byte arrives.
pub fn parse(buf: &[u8]) -> Result<Option<Header>, ProxyError> {
    let sig = buf.len().min(SIGNATURE.len());
    if buf[..sig] != SIGNATURE[..sig] {
        return Err(ProxyError::Signature);
    }
    if buf.len() < 16 {
        if let Some(&vc) = buf.get(12) {
            check_version_command(vc)?;
        }
        return Ok(None);
    }
    let (vc, fam) = (buf[12], buf[13]);
    check_version_command(vc)?;
    let rest = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = 16 + rest;
    if len > MAX_HEADER {
        return Err(ProxyError::TooLong(len));
    }
    let family = fam >> 4;
    let need = match family {
        0 => 0,
        1 => 12,
        2 => 36,
        3 => 216,
        f => return Err(ProxyError::Family(f)),
    };
    if rest < need {
        return Err(ProxyError::Short);
    }
    if buf.len() < len {
        return Ok(None);
    }
    let a = &buf[16..len];
    let source = match (vc & 0x0F, family) {
        (0, _) => None,
        (_, 1) => {
            let ip = Ipv4Addr::from(<[u8; 4]>::try_from(&a[0..4]).expect("4 bytes"));
            Some(SocketAddr::new(
                IpAddr::V4(ip),
                u16::from_be_bytes([a[8], a[9]]),
            ))
        }
        (_, 2) => {
            let ip = Ipv6Addr::from(<[u8; 16]>::try_from(&a[0..16]).expect("16 bytes"));
            Some(SocketAddr::new(
                IpAddr::V6(ip),
                u16::from_be_bytes([a[32], a[33]]),
            ))
        }
        _ => None,
    };
    Ok(Some(Header { len, source }))
}

/// Version 2 with command LOCAL (0) or PROXY (1).
fn check_version_command(vc: u8) -> Result<(), ProxyError> {
    if vc >> 4 != 2 {
        return Err(ProxyError::Version(vc >> 4));
    }
    if vc & 0x0F > 1 {
        return Err(ProxyError::Command(vc & 0x0F));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// PROXY TCP4 198.18.0.7:51234 → 198.18.1.2:7700, then a Ping frame.
    const V4: &[u8] = &[
        0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, // signature
        0x21, 0x11, 0x00, 0x0C, // v2 PROXY, INET STREAM, 12 bytes
        198, 18, 0, 7, 198, 18, 1, 2, // src, dst
        0xC8, 0x22, 0x1E, 0x14, // 51234, 7700
        0x03, 0x01, 0x00, // the connection's own bytes
    ];

    /// PROXY TCP6 [2001:db8::1]:443 → [2001:db8::2]:7700 with one TLV (type 0x04 NOOP).
    fn v6() -> Vec<u8> {
        let mut h = SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x21, 0x00, 36 + 5]);
        h.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        h.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        h.extend_from_slice(&[0x01, 0xBB, 0x1E, 0x14]);
        h.extend_from_slice(&[0x04, 0x00, 0x02, 0xAA, 0xBB]);
        h
    }

    #[test]
    fn tcp4_header_gives_the_source_and_its_length() {
        let h = parse(V4).unwrap().unwrap();
        assert_eq!(h.len, 28);
        assert_eq!(h.source, Some("198.18.0.7:51234".parse().unwrap()));
        assert_eq!(&V4[h.len..], &[0x03, 0x01, 0x00]);
    }

    #[test]
    fn tcp6_header_with_a_tlv() {
        let b = v6();
        let h = parse(&b).unwrap().unwrap();
        assert_eq!(h.len, b.len());
        assert_eq!(h.source, Some("[2001:db8::1]:443".parse().unwrap()));
    }

    #[test]
    fn local_command_carries_no_source() {
        let mut b = SIGNATURE.to_vec();
        b.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        assert_eq!(
            parse(&b).unwrap(),
            Some(Header {
                len: 16,
                source: None
            })
        );
        // LOCAL with addresses: skipped, still no source.
        let mut b = V4.to_vec();
        b[12] = 0x20;
        assert_eq!(parse(&b).unwrap().unwrap().source, None);
    }

    #[test]
    fn every_prefix_is_incomplete() {
        for n in 0..28 {
            assert_eq!(parse(&V4[..n]), Ok(None), "prefix of {n} bytes");
        }
    }

    #[test]
    fn refusals() {
        // A client speaking tether directly: Login's first byte.
        assert_eq!(parse(&[0x01, 0x20]), Err(ProxyError::Signature));
        // The version 1 text header.
        assert_eq!(parse(b"PROXY TCP4 "), Err(ProxyError::Signature));
        let with = |i: usize, v: u8| {
            let mut b = V4.to_vec();
            b[i] = v;
            parse(&b)
        };
        assert_eq!(with(12, 0x11), Err(ProxyError::Version(1)));
        assert_eq!(with(12, 0x22), Err(ProxyError::Command(2)));
        assert_eq!(with(13, 0x41), Err(ProxyError::Family(4)));
        assert_eq!(with(15, 11), Err(ProxyError::Short));
        assert_eq!(
            with(14, 0x08),
            Err(ProxyError::TooLong(16 + 0x080C)),
            "refused from the length alone"
        );
        // The version is checked as soon as its byte is here.
        assert_eq!(parse(&V4[..13]), Ok(None));
        let mut b = V4[..13].to_vec();
        b[12] = 0x31;
        assert_eq!(parse(&b), Err(ProxyError::Version(3)));
    }

    proptest! {
        #[test]
        fn arbitrary_input_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn arbitrary_input_after_the_signature_never_panics(
            rest in proptest::collection::vec(any::<u8>(), 0..600)
        ) {
            let mut b = SIGNATURE.to_vec();
            b.extend_from_slice(&rest);
            if let Ok(Some(h)) = parse(&b) {
                prop_assert!(h.len <= b.len() && h.len <= MAX_HEADER);
            }
        }
    }
}
