//! The MQTT 3.1.1 encoder and decoder against byte sequences from the OASIS specification
//! (section numbers and figures of MQTT Version 3.1.1, 29 October 2014), including every split
//! of each server packet over two reads.

use bytes::{BufMut, Bytes, BytesMut};
use tether_loadgen::wire::mqtt::{self, DecodeError, Packet};

/// A whole packet: first byte, remaining length, then `body`.
fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_u8(first);
    mqtt::put_remaining_length(body.len(), &mut out).unwrap();
    out.put_slice(body);
    out.to_vec()
}

/// Decodes `bytes` fed in two reads split at every offset, and byte by byte: each prefix is
/// incomplete (nothing consumed), the whole is one packet with nothing left over.
fn decode_every_split(bytes: &[u8]) -> Packet {
    let whole = {
        let mut buf = BytesMut::from(bytes);
        let p = mqtt::decode(&mut buf, 1 << 20)
            .unwrap()
            .expect("a whole packet");
        assert!(buf.is_empty(), "left over: {buf:?}");
        p
    };
    for split in 0..bytes.len() {
        let mut buf = BytesMut::from(&bytes[..split]);
        assert_eq!(
            mqtt::decode(&mut buf, 1 << 20).unwrap(),
            None,
            "split {split}"
        );
        assert_eq!(
            buf.len(),
            split,
            "an incomplete packet must not be consumed"
        );
        buf.extend_from_slice(&bytes[split..]);
        assert_eq!(
            mqtt::decode(&mut buf, 1 << 20).unwrap(),
            Some(whole.clone())
        );
        assert!(buf.is_empty());
    }
    let mut buf = BytesMut::new();
    for (i, &b) in bytes.iter().enumerate() {
        buf.put_u8(b);
        let got = mqtt::decode(&mut buf, 1 << 20).unwrap();
        assert_eq!(got.is_some(), i + 1 == bytes.len(), "byte {i}");
        if let Some(p) = got {
            assert_eq!(p, whole);
        }
    }
    whole
}

#[test]
fn remaining_length_examples_of_table_2_4() {
    // Table 2.4 - Size of Remaining Length field: the bounds of each encoded length.
    let table: [(usize, &[u8]); 8] = [
        (0, &[0x00]),
        (127, &[0x7f]),
        (128, &[0x80, 0x01]),
        (16_383, &[0xff, 0x7f]),
        (16_384, &[0x80, 0x80, 0x01]),
        (2_097_151, &[0xff, 0xff, 0x7f]),
        (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
        (268_435_455, &[0xff, 0xff, 0xff, 0x7f]),
    ];
    for (value, bytes) in table {
        let mut out = BytesMut::new();
        mqtt::put_remaining_length(value, &mut out).unwrap();
        assert_eq!(&out[..], bytes, "{value}");
        assert_eq!(
            mqtt::read_remaining_length(bytes).unwrap(),
            Some((value, bytes.len()))
        );
        for cut in 0..bytes.len() {
            assert_eq!(mqtt::read_remaining_length(&bytes[..cut]).unwrap(), None);
        }
    }
    // The example of §2.2.3: 64 is one byte 0x40, 321 is two bytes 0xC1 0x02.
    assert_eq!(mqtt::read_remaining_length(&[0x40]).unwrap(), Some((64, 1)));
    assert_eq!(
        mqtt::read_remaining_length(&[0xc1, 0x02]).unwrap(),
        Some((321, 2))
    );
    // A fifth byte is malformed; more than the maximum cannot be encoded.
    assert_eq!(
        mqtt::read_remaining_length(&[0xff, 0xff, 0xff, 0xff, 0x01]),
        Err(DecodeError::LengthOverflow)
    );
    assert!(mqtt::put_remaining_length(268_435_456, &mut BytesMut::new()).is_err());
}

#[test]
fn connect_matches_figure_3_6_variable_header() {
    // Figure 3.6 - Variable header non normative example: protocol name "MQTT", level 4,
    // connect flags, keep alive 10 s. Our flags are clean session only (0x02) and the payload
    // is the client id.
    let mut out = BytesMut::new();
    mqtt::connect("u1", 10, &mut out).unwrap();
    let body = [
        0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name
        0x04, // protocol level 4 (3.1.1)
        0x02, // clean session
        0x00, 0x0a, // keep alive 10
        0x00, 0x02, b'u', b'1', // client identifier
    ];
    assert_eq!(&out[..], &packet(0x10, &body)[..]);
}

#[test]
fn connack_accepted_and_refused() {
    // §3.2: 20 02, acknowledge flags, return code.
    assert_eq!(
        decode_every_split(&[0x20, 0x02, 0x00, 0x00]),
        Packet::ConnAck {
            session_present: false,
            return_code: 0
        }
    );
    assert_eq!(
        decode_every_split(&[0x20, 0x02, 0x01, 0x05]),
        Packet::ConnAck {
            session_present: true,
            return_code: 5
        }
    );
    // Reserved acknowledge-flag bits and a wrong length are malformed.
    let mut bad = BytesMut::from(&[0x20, 0x02, 0x02, 0x00][..]);
    assert!(mqtt::decode(&mut bad, 1024).is_err());
    let mut bad = BytesMut::from(&[0x20, 0x01, 0x00][..]);
    assert!(mqtt::decode(&mut bad, 1024).is_err());
}

#[test]
fn subscribe_matches_figures_3_21_and_3_22() {
    // Figure 3.21: packet identifier 10; Figure 3.22: "a/b" QoS 1, "c/d" QoS 2. Fixed header
    // 0x82 (§3.8.1: flags 0010).
    let mut out = BytesMut::new();
    mqtt::subscribe(10, &[("a/b", 1), ("c/d", 2)], &mut out).unwrap();
    let body = [
        0x00, 0x0a, // packet identifier
        0x00, 0x03, b'a', b'/', b'b', 0x01, // topic filter, QoS 1
        0x00, 0x03, b'c', b'/', b'd', 0x02, // topic filter, QoS 2
    ];
    assert_eq!(&out[..], &packet(0x82, &body)[..]);
    assert!(mqtt::subscribe(1, &[("x", 3)], &mut BytesMut::new()).is_err());
}

#[test]
fn suback_matches_figures_3_25_and_3_26() {
    // Figure 3.25: packet identifier 10; Figure 3.26: return codes 0, 1, 2 and 128 (failure).
    let bytes = packet(0x90, &[0x00, 0x0a, 0x00, 0x01, 0x02, 0x80]);
    assert_eq!(
        decode_every_split(&bytes),
        Packet::SubAck {
            packet_id: 10,
            return_codes: vec![0, 1, 2, 0x80]
        }
    );
}

#[test]
fn publish_matches_figure_3_11() {
    // Figure 3.11: topic name "a/b", packet identifier 10 (so QoS 1), then the payload.
    let body = [0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0a, b'h', b'i'];
    let bytes = packet(0x32, &body);
    let mut out = BytesMut::new();
    mqtt::publish("a/b", 1, 10, b"hi", &mut out).unwrap();
    assert_eq!(&out[..], &bytes[..]);
    assert_eq!(
        decode_every_split(&bytes),
        Packet::Publish {
            qos: 1,
            retain: false,
            dup: false,
            topic: "a/b".into(),
            packet_id: Some(10),
            payload: Bytes::from_static(b"hi"),
        }
    );
    // QoS 0, as the loadgen publishes: no packet identifier.
    let mut out = BytesMut::new();
    mqtt::publish("a/b", 0, 10, b"hi", &mut out).unwrap();
    let qos0 = packet(0x30, &[0x00, 0x03, b'a', b'/', b'b', b'h', b'i']);
    assert_eq!(&out[..], &qos0[..]);
    assert!(matches!(
        decode_every_split(&qos0),
        Packet::Publish { qos: 0, packet_id: None, ref payload, .. } if &payload[..] == b"hi"
    ));
    // Retain and DUP flags are read from the fixed header; QoS 3 is malformed.
    assert!(matches!(
        decode_every_split(&packet(0x39, &[0x00, 0x01, b't'])),
        Packet::Publish { retain: true, dup: true, ref payload, .. } if payload.is_empty()
    ));
    let mut bad = BytesMut::from(&packet(0x36, &[0x00, 0x01, b't'])[..]);
    assert!(mqtt::decode(&mut bad, 1024).is_err());
}

#[test]
fn pingreq_and_pingresp() {
    // §3.12 and §3.13: C0 00 and D0 00.
    let mut out = BytesMut::new();
    mqtt::pingreq(&mut out);
    assert_eq!(&out[..], &[0xc0, 0x00]);
    assert_eq!(decode_every_split(&[0xd0, 0x00]), Packet::PingResp);
    // Reserved flags must be zero.
    let mut bad = BytesMut::from(&[0xd1, 0x00][..]);
    assert!(matches!(
        mqtt::decode(&mut bad, 1024),
        Err(DecodeError::BadFlags { kind: 13, flags: 1 })
    ));
}

#[test]
fn several_packets_in_one_read_and_the_limit() {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&[0x20, 0x02, 0x00, 0x00]);
    buf.extend_from_slice(&packet(0x90, &[0x00, 0x01, 0x00]));
    buf.extend_from_slice(&[0xd0, 0x00]);
    assert!(matches!(
        mqtt::decode(&mut buf, 1024).unwrap(),
        Some(Packet::ConnAck { .. })
    ));
    assert!(matches!(
        mqtt::decode(&mut buf, 1024).unwrap(),
        Some(Packet::SubAck { packet_id: 1, .. })
    ));
    assert_eq!(
        mqtt::decode(&mut buf, 1024).unwrap(),
        Some(Packet::PingResp)
    );
    assert_eq!(mqtt::decode(&mut buf, 1024).unwrap(), None);
    // A length over the limit is refused from the header alone, before the body arrives.
    let mut big = BytesMut::from(&[0x30, 0x80, 0x80, 0x01][..]);
    assert_eq!(
        mqtt::decode(&mut big, 1024),
        Err(DecodeError::Oversized {
            len: 16_384,
            max: 1024
        })
    );
}
