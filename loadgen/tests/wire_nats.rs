//! The NATS encoder and decoder against the examples of the NATS client protocol document,
//! including every split of each server operation over two reads.

use bytes::{BufMut, Bytes, BytesMut};
use tether_loadgen::wire::nats::{self, DecodeError, ServerOp};

/// Decodes `bytes` fed in two reads split at every offset, and byte by byte: each prefix is
/// incomplete (nothing consumed), the whole is one operation with nothing left over.
fn decode_every_split(bytes: &[u8]) -> ServerOp {
    let whole = {
        let mut buf = BytesMut::from(bytes);
        let op = nats::decode(&mut buf, 1 << 20)
            .unwrap()
            .expect("a whole operation");
        assert!(buf.is_empty(), "left over: {buf:?}");
        op
    };
    for split in 0..bytes.len() {
        let mut buf = BytesMut::from(&bytes[..split]);
        assert_eq!(
            nats::decode(&mut buf, 1 << 20).unwrap(),
            None,
            "split {split}"
        );
        assert_eq!(
            buf.len(),
            split,
            "an incomplete operation must not be consumed"
        );
        buf.extend_from_slice(&bytes[split..]);
        assert_eq!(
            nats::decode(&mut buf, 1 << 20).unwrap(),
            Some(whole.clone())
        );
        assert!(buf.is_empty());
    }
    let mut buf = BytesMut::new();
    for (i, &b) in bytes.iter().enumerate() {
        buf.put_u8(b);
        let got = nats::decode(&mut buf, 1 << 20).unwrap();
        assert_eq!(got.is_some(), i + 1 == bytes.len(), "byte {i}");
    }
    whole
}

#[test]
fn ping_and_pong() {
    assert_eq!(decode_every_split(b"PING\r\n"), ServerOp::Ping);
    assert_eq!(decode_every_split(b"PONG\r\n"), ServerOp::Pong);
    // Operation names are case-insensitive.
    assert_eq!(decode_every_split(b"ping\r\n"), ServerOp::Ping);
    let mut out = BytesMut::new();
    nats::ping(&mut out);
    nats::pong(&mut out);
    assert_eq!(&out[..], b"PING\r\nPONG\r\n");
}

#[test]
fn msg_examples() {
    // "MSG FOO.BAR 9 11\r\nHello World\r\n"
    assert_eq!(
        decode_every_split(b"MSG FOO.BAR 9 11\r\nHello World\r\n"),
        ServerOp::Msg {
            subject: "FOO.BAR".into(),
            sid: "9".into(),
            reply_to: None,
            payload: Bytes::from_static(b"Hello World"),
        }
    );
    // With a reply subject: "MSG FOO.BAR 9 GREETING.34 11\r\nHello World\r\n"
    assert_eq!(
        decode_every_split(b"MSG FOO.BAR 9 GREETING.34 11\r\nHello World\r\n"),
        ServerOp::Msg {
            subject: "FOO.BAR".into(),
            sid: "9".into(),
            reply_to: Some("GREETING.34".into()),
            payload: Bytes::from_static(b"Hello World"),
        }
    );
    // A payload may hold CR LF and any byte; only the byte count delimits it.
    let mut raw = b"MSG u1 1 6\r\n".to_vec();
    raw.extend_from_slice(&[0, 13, 10, 255, 13, 10]);
    raw.extend_from_slice(b"\r\n");
    assert!(matches!(
        decode_every_split(&raw),
        ServerOp::Msg { ref payload, .. } if payload[..] == [0, 13, 10, 255, 13, 10]
    ));
    // An empty payload.
    assert!(matches!(
        decode_every_split(b"MSG a 1 0\r\n\r\n"),
        ServerOp::Msg { ref payload, .. } if payload.is_empty()
    ));
}

#[test]
fn ok_err_and_info() {
    assert_eq!(decode_every_split(b"+OK\r\n"), ServerOp::Ok);
    assert_eq!(
        decode_every_split(b"-ERR 'Unknown Protocol Operation'\r\n"),
        ServerOp::Err("Unknown Protocol Operation".into())
    );
    let info = br#"INFO {"server_id":"Zk0GQ3JBSrg3oyxCRRlE09","version":"2.0.0","proto":1,"go":"go1.11.10","host":"0.0.0.0","port":4222,"max_payload":1048576,"client_id":2392}"#;
    let mut line = info.to_vec();
    line.extend_from_slice(b"\r\n");
    match decode_every_split(&line) {
        ServerOp::Info(json) => {
            let v: serde_json::Value = serde_json::from_str(&json).unwrap();
            assert_eq!(v["max_payload"], 1_048_576);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn client_operations() {
    let mut out = BytesMut::new();
    nats::sub("FOO", "1", &mut out);
    assert_eq!(&out[..], b"SUB FOO 1\r\n");
    out.clear();
    nats::publish("FOO", b"Hello NATS!", &mut out);
    assert_eq!(&out[..], b"PUB FOO 11\r\nHello NATS!\r\n");
    out.clear();
    nats::connect("u1", &mut out);
    let text = std::str::from_utf8(&out).unwrap();
    let json = text
        .strip_prefix("CONNECT ")
        .and_then(|t| t.strip_suffix("\r\n"))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(v["verbose"], false);
    assert_eq!(v["pedantic"], false);
    assert_eq!(v["name"], "u1");
}

#[test]
fn bad_input_is_refused() {
    let mut buf = BytesMut::from(&b"HELLO\r\n"[..]);
    assert!(matches!(
        nats::decode(&mut buf, 1024),
        Err(DecodeError::UnknownOp(_))
    ));
    // A payload over the limit is refused from the control line, before it arrives.
    let mut buf = BytesMut::from(&b"MSG a 1 5000\r\n"[..]);
    assert_eq!(
        nats::decode(&mut buf, 1024),
        Err(DecodeError::Oversized {
            len: 5000,
            max: 1024
        })
    );
    // The payload must be followed by CR LF.
    let mut buf = BytesMut::from(&b"MSG a 1 2\r\nhiXY"[..]);
    assert!(nats::decode(&mut buf, 1024).is_err());
    let mut buf = BytesMut::from(&b"MSG a\r\n"[..]);
    assert!(nats::decode(&mut buf, 1024).is_err());
    // A control line that never ends.
    let mut buf = BytesMut::from(&vec![b'I'; nats::MAX_CONTROL_LINE + 1][..]);
    assert!(matches!(
        nats::decode(&mut buf, 1024),
        Err(DecodeError::LineTooLong(_))
    ));
}

#[test]
fn several_operations_in_one_read() {
    let mut buf = BytesMut::from(&b"INFO {}\r\nPONG\r\nMSG u1 1 2\r\nhi\r\nPING\r\n"[..]);
    assert!(matches!(
        nats::decode(&mut buf, 1024).unwrap(),
        Some(ServerOp::Info(_))
    ));
    assert_eq!(nats::decode(&mut buf, 1024).unwrap(), Some(ServerOp::Pong));
    assert!(matches!(
        nats::decode(&mut buf, 1024).unwrap(),
        Some(ServerOp::Msg { .. })
    ));
    assert_eq!(nats::decode(&mut buf, 1024).unwrap(), Some(ServerOp::Ping));
    assert_eq!(nats::decode(&mut buf, 1024).unwrap(), None);
}
