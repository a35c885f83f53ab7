//! The C boundary under bad input: null pointers, bad strings, bad JSON, a too-small options
//! struct, bytes that are not the protocol. Each ends in its error code and a sentence, never
//! a crash; and the machine level runs a whole login against the server's own session code.

use std::ffi::{c_char, CStr, CString};
use std::ptr;

use bytes::BytesMut;
use proptest::prelude::*;
use tether_proto::{codec, Frame, LoginOk, Push};
use tether_sdk::connection::tether_connection_stop;
use tether_sdk::event::{TETHER_EVENT_ONLINE, TETHER_EVENT_PUSH};
use tether_sdk::machine::*;
use tether_sdk::*;

fn options(user: &CStr, device: &CStr, token: &CStr) -> TetherOptions {
    TetherOptions {
        size: std::mem::size_of::<TetherOptions>(),
        user: user.as_ptr(),
        device: device.as_ptr(),
        token: token.as_ptr(),
        network_key: ptr::null(),
        heartbeat_json: ptr::null(),
        memory_json: ptr::null(),
        nat_hint_ms: 0,
        foreground: true,
        seed: 1,
    }
}

fn last_error() -> String {
    // SAFETY: the library returns a NUL-terminated string valid until the next failing call.
    unsafe { CStr::from_ptr(tether_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// A machine for alice, or the error code and sentence.
fn new_machine(opts: &TetherOptions) -> Result<*mut TetherMachine, (i32, String)> {
    let mut m = ptr::null_mut();
    // SAFETY: valid options and out pointer.
    let rc = unsafe { tether_machine_new(opts, &mut m) };
    if rc == TETHER_OK {
        Ok(m)
    } else {
        Err((rc, last_error()))
    }
}

#[test]
fn bad_options_are_refused_with_a_code_and_a_sentence() {
    let (alice, phone, token) = (c"alice", c"phone", c"token");
    let good = options(alice, phone, token);

    let mut o = options(alice, phone, token);
    o.user = ptr::null();
    assert_eq!(
        new_machine(&o).unwrap_err(),
        (
            TETHER_ERR_ARGUMENT,
            "options.user is required (NULL)".into()
        )
    );

    let bad_utf8 = [0xffu8, 0xfe, 0];
    o = options(alice, phone, token);
    o.device = bad_utf8.as_ptr().cast::<c_char>();
    let (code, why) = new_machine(&o).unwrap_err();
    assert_eq!(code, TETHER_ERR_ARGUMENT);
    assert!(why.contains("options.device is not UTF-8"), "{why}");

    let long = CString::new("u".repeat(129)).unwrap();
    o = options(&long, phone, token);
    let (code, why) = new_machine(&o).unwrap_err();
    assert_eq!(code, TETHER_ERR_ARGUMENT);
    assert!(why.contains("options.user must be 1..=128 bytes"), "{why}");

    o = options(alice, phone, token);
    o.size = 8;
    let (code, why) = new_machine(&o).unwrap_err();
    assert_eq!(code, TETHER_ERR_ARGUMENT);
    assert!(why.contains("sizeof(TetherOptions)"), "{why}");

    for (json, expect) in [
        ("{", "options.heartbeat_json"),
        ("[1]", "must be a JSON object"),
        (r#"{"no_such_field": 1}"#, "no_such_field"),
        (r#"{"min_interval_ms": 0}"#, "heartbeat parameters"),
    ] {
        let j = CString::new(json).unwrap();
        o = options(alice, phone, token);
        o.heartbeat_json = j.as_ptr();
        let (code, why) = new_machine(&o).unwrap_err();
        assert_eq!(code, TETHER_ERR_CONFIG, "{json}: {why}");
        assert!(why.contains(expect), "{json}: {why}");
    }

    let memory = c"not json";
    o = options(alice, phone, token);
    o.memory_json = memory.as_ptr();
    assert_eq!(new_machine(&o).unwrap_err().0, TETHER_ERR_CONFIG);

    // SAFETY: null options and null out pointers are refused, not read.
    unsafe {
        let mut m = ptr::null_mut();
        assert_eq!(tether_machine_new(ptr::null(), &mut m), TETHER_ERR_ARGUMENT);
        assert_eq!(
            tether_machine_new(&good, ptr::null_mut()),
            TETHER_ERR_ARGUMENT
        );
        assert!(m.is_null());
        // A null machine is refused by every call, and freeing null does nothing.
        assert_eq!(
            tether_machine_network_up(ptr::null_mut(), 0, ptr::null()),
            TETHER_ERR_ARGUMENT
        );
        assert_eq!(
            tether_machine_ack(ptr::null_mut(), 0, 1),
            TETHER_ERR_ARGUMENT
        );
        let mut a = std::mem::zeroed::<TetherAction>();
        assert_eq!(
            tether_machine_poll_action(ptr::null_mut(), &mut a),
            TETHER_ERR_ARGUMENT
        );
        tether_machine_free(ptr::null_mut());
        assert_eq!(tether_connection_stop(ptr::null_mut()), TETHER_OK);
    }

    let m = new_machine(&good).unwrap();
    // SAFETY: a live machine; null data with a length is refused.
    unsafe {
        assert_eq!(
            tether_machine_received(m, 0, 1, ptr::null(), 5),
            TETHER_ERR_ARGUMENT
        );
        assert_eq!(
            tether_machine_upstream(m, 0, 1, b"x".as_ptr(), 1),
            TETHER_ERR_STATE,
            "not logged in yet"
        );
        assert!(last_error().contains("not logged in"));
        let mut at = 0u64;
        assert_eq!(
            tether_machine_next_timeout(m, ptr::null_mut()),
            TETHER_ERR_ARGUMENT
        );
        assert!(tether_machine_next_timeout(m, &mut at) >= 0);
        tether_machine_free(m);
    }
}

/// The machine up to its first `CONNECT`, connected: returns the connection id and the bytes
/// of the `Login` it wrote.
fn connect(m: *mut TetherMachine) -> (u32, Vec<u8>) {
    let mut a = TetherAction {
        kind: 0,
        conn: 0,
        probe: false,
        data: ptr::null(),
        len: 0,
    };
    // SAFETY: a live machine and valid out pointers; `data` is read before the next poll.
    unsafe {
        assert_eq!(tether_machine_network_up(m, 0, c"wifi".as_ptr()), TETHER_OK);
        let mut at = 0;
        if tether_machine_next_timeout(m, &mut at) == 1 {
            assert_eq!(tether_machine_handle_timeout(m, at), TETHER_OK);
        }
        assert_eq!(tether_machine_poll_action(m, &mut a), 1);
        assert_eq!(a.kind, TETHER_ACTION_CONNECT);
        assert!(!a.probe);
        let conn = a.conn;
        assert_eq!(tether_machine_connected(m, at, conn), TETHER_OK);
        assert_eq!(tether_machine_poll_action(m, &mut a), 1);
        assert_eq!((a.kind, a.conn), (TETHER_ACTION_SEND, conn));
        let login = std::slice::from_raw_parts(a.data, a.len).to_vec();
        (conn, login)
    }
}

#[test]
fn the_machine_logs_in_hands_over_a_push_and_refuses_bytes_that_are_not_the_protocol() {
    let good = options(c"alice", c"phone", c"token");
    let m = new_machine(&good).unwrap();
    let (conn, login) = connect(m);
    let mut buf = BytesMut::from(&login[..]);
    match codec::decode_version(&mut buf, 65_536, 2).unwrap() {
        Some(Frame::Login(l)) => {
            assert_eq!((l.user.as_str(), l.device.as_str()), ("alice", "phone"));
            assert_eq!(l.version, 2);
        }
        other => panic!("{other:?}"),
    }
    // The server's answers, split at every byte: the machine reassembles them.
    let mut wire = BytesMut::new();
    codec::encode(
        &Frame::LoginOk(LoginOk {
            session_id: 9,
            server_epoch: 77,
            min_lease_ms: 1_000,
            max_lease_ms: 1_800_000,
            lease_multiplier_pct: 150,
            grace_ms: 10_000,
            prior_ms: 0,
            max_frame: 65_536,
        }),
        &mut wire,
    )
    .unwrap();
    codec::encode(
        &Frame::Push(Push {
            id: 5,
            payload: bytes::Bytes::from_static(b"hi"),
        }),
        &mut wire,
    )
    .unwrap();
    let mut e = std::mem::MaybeUninit::<TetherEvent>::uninit();
    // SAFETY: a live machine; each byte is a valid one-byte buffer; events are read at once.
    unsafe {
        for b in wire.iter() {
            assert_eq!(tether_machine_received(m, 10, conn, b, 1), TETHER_OK);
        }
        let mut kinds = Vec::new();
        while tether_machine_poll_event(m, e.as_mut_ptr()) == 1 {
            let ev = e.assume_init_ref();
            kinds.push(ev.kind);
            if ev.kind == TETHER_EVENT_ONLINE {
                assert_eq!((ev.id, ev.value), (9, 77));
            }
            if ev.kind == TETHER_EVENT_PUSH {
                assert_eq!(ev.id, 5);
                assert_eq!(std::slice::from_raw_parts(ev.data, ev.len), b"hi");
            }
        }
        assert!(kinds.contains(&TETHER_EVENT_ONLINE), "{kinds:?}");
        assert!(kinds.contains(&TETHER_EVENT_PUSH), "{kinds:?}");
        // Online now: an ack and an upstream message become bytes to write.
        assert_eq!(tether_machine_ack(m, 11, 5), TETHER_OK);
        assert_eq!(
            tether_machine_upstream(m, 11, 1, b"up".as_ptr(), 2),
            TETHER_OK
        );
        let big = vec![0u8; 70_000];
        assert_eq!(
            tether_machine_upstream(m, 11, 2, big.as_ptr(), big.len()),
            TETHER_ERR_TOO_LARGE
        );
        // An unknown frame type on a version-2 connection is not the protocol: refused,
        // the connection forgotten, later bytes for it ignored.
        let garbage = [0u8, 0, 0, 1, 0x3f];
        assert_eq!(
            tether_machine_received(m, 12, conn, garbage.as_ptr(), garbage.len()),
            TETHER_ERR_PROTOCOL
        );
        assert!(last_error().contains("close it"), "{}", last_error());
        assert_eq!(
            tether_machine_received(m, 12, conn, garbage.as_ptr(), garbage.len()),
            TETHER_OK
        );
        // The memory can be saved, and read back by a new machine.
        let need = tether_machine_memory_len(m);
        assert!(need > 1);
        let mut small = [0 as c_char; 1];
        assert_eq!(
            tether_machine_memory(m, small.as_mut_ptr(), 1),
            i64::from(TETHER_ERR_BUFFER)
        );
        let mut out = vec![0 as c_char; need as usize];
        assert_eq!(
            tether_machine_memory(m, out.as_mut_ptr(), out.len()),
            need - 1
        );
        let mut again = options(c"alice", c"phone", c"token");
        again.memory_json = out.as_ptr();
        tether_machine_free(new_machine(&again).unwrap());
        tether_machine_free(m);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever a server sends, the machine answers with a status, never a crash.
    #[test]
    fn any_bytes_from_the_server_end_in_a_status(chunks in proptest::collection::vec(
        proptest::collection::vec(any::<u8>(), 0..64), 0..8)) {
        let good = options(c"alice", c"phone", c"token");
        let m = new_machine(&good).unwrap();
        let (conn, _) = connect(m);
        let mut e = std::mem::MaybeUninit::<TetherEvent>::uninit();
        let mut a = std::mem::MaybeUninit::<TetherAction>::uninit();
        // SAFETY: a live machine and valid buffers.
        unsafe {
            for c in &chunks {
                let rc = tether_machine_received(m, 5, conn, c.as_ptr(), c.len());
                prop_assert!(rc == TETHER_OK || rc == TETHER_ERR_PROTOCOL, "{rc}");
                while tether_machine_poll_event(m, e.as_mut_ptr()) == 1 {}
                while tether_machine_poll_action(m, a.as_mut_ptr()) == 1 {}
            }
            tether_machine_free(m);
        }
    }
}
