//! Arbitrary bytes through the path a WebSocket connection's received bytes take in a shard:
//! into a fresh connection (the upgrade's request head), or into one already upgraded (the
//! frame decoder), in pieces of any size. The first input byte chooses the phase and the piece
//! size.
//!
//! Checks, beyond "does not panic": once a call failed, the connection takes bytes without a
//! word and yields nothing more; a connection never yields more tether bytes than it was given.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_server::ws::{Rules, WsConn};

/// An upgrade request the server answers with 101.
const REQUEST: &[u8] = b"GET /tether HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    let Some((&first, data)) = data.split_first() else {
        return;
    };
    let rules = Rules {
        path: "/tether".into(),
        allowed_origins: vec!["https://app.example".into()],
    };
    let upgraded = first & 1 == 1;
    let piece = usize::from(first >> 1).max(1);
    let mut ws = WsConn::new();
    let (mut plain, mut wire) = (Vec::new(), Vec::new());
    if upgraded {
        ws.receive(REQUEST, &rules, 4096, &mut plain, &mut wire)
            .expect("the upgrade is answered");
        assert!(ws.is_open());
        wire.clear();
    }
    let mut failed = false;
    for chunk in data.chunks(piece) {
        let before = (plain.len(), wire.len());
        let result = ws.receive(chunk, &rules, 4096, &mut plain, &mut wire);
        if failed {
            assert!(result.is_ok(), "a failed connection failed again");
            assert_eq!((plain.len(), wire.len()), before, "output from a failed connection");
        }
        failed |= result.is_err();
    }
    assert!(plain.len() <= data.len(), "more bytes out than in");
});
