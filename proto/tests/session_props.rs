//! Whatever a peer sends, in whatever order and timing, the server session neither panics nor
//! breaks its own invariants.

use bytes::Bytes;
use proptest::prelude::*;
use tether_proto::session::{Accept, Event, ServerSession, SessionConfig};
use tether_proto::token::{Authenticate, Grant, KeyId, Principal};
use tether_proto::{
    login_flags, BackendPush, Close, CloseCode, Frame, Login, NetReport, Ping, Probe, PushAck,
    Send, PROTOCOL_VERSION,
};

/// Token "c" → client, "b" → backend, anything else refused.
struct Auth;

impl Authenticate for Auth {
    fn authenticate(&self, login: &Login, _now_unix: u64) -> Result<Grant, CloseCode> {
        match login.token.as_str() {
            "c" => Ok(grant(Principal::Client)),
            "b" => Ok(grant(Principal::Backend)),
            _ => Err(CloseCode::AuthFailed),
        }
    }
}

#[derive(Clone, Debug)]
enum Input {
    Frame(u64, Frame),
    Timeout(u64),
    Push,
    Kick,
    GoAway,
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (0u8..3, any::<bool>(), any::<u32>(), "[a-z]{0,3}").prop_map(|(t, probe, hb, key)| {
            Frame::Login(Login {
                version: PROTOCOL_VERSION,
                flags: if probe { login_flags::PROBE } else { 0 },
                user: "u".into(),
                device: "d".into(),
                token: ["c", "b", "x"][t as usize].into(),
                heartbeat_ms: hb,
                network_key: key,
            })
        }),
        any::<u32>().prop_map(|lease_ms| Frame::Ping(Ping { lease_ms })),
        any::<u32>().prop_map(|delay_ms| Frame::Probe(Probe { delay_ms })),
        any::<u64>().prop_map(|id| Frame::PushAck(PushAck { id })),
        any::<u32>().prop_map(|learned_ms| Frame::NetReport(NetReport { learned_ms })),
        Just(Frame::Send(Send {
            to: "v".into(),
            client_id: 1,
            payload: Bytes::new()
        })),
        Just(Frame::BackendPush(BackendPush {
            id: 1,
            flags: 0,
            user: "v".into(),
            payload: Bytes::new()
        })),
        Just(Frame::ProbeFire),
        Just(Frame::Close(Close {
            code: CloseCode::Normal,
            text: String::new()
        })),
    ]
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        4 => (0u64..700_000, frame()).prop_map(|(dt, f)| Input::Frame(dt, f)),
        2 => (0u64..3_000_000).prop_map(Input::Timeout),
        1 => Just(Input::Push),
        1 => Just(Input::Kick),
        1 => Just(Input::GoAway),
    ]
}

proptest! {
    #[test]
    fn any_input_sequence_keeps_the_invariants(inputs in prop::collection::vec(input(), 0..40)) {
        let cfg = SessionConfig { max_lease_ms: 600_000, ..SessionConfig::default() };
        let mut s = ServerSession::new(&cfg, 0);
        let mut now = 0u64;
        let mut closed_events = 0;
        for input in inputs {
            let timed_out = matches!(input, Input::Timeout(_));
            match input {
                Input::Frame(dt, f) => {
                    now += dt;
                    s.handle_frame(&cfg, now, 0, f, &Auth);
                }
                Input::Timeout(dt) => {
                    now += dt;
                    s.handle_timeout(&cfg, now);
                }
                // Driver commands may be refused, never panic.
                Input::Push => { let _ = s.push(1, Bytes::new()); }
                Input::Kick => { let _ = s.kick(CloseCode::Kicked, false, 0); }
                Input::GoAway => { let _ = s.go_away(CloseCode::ServerShutdown, true, 1_000); }
            }
            while let Some(ev) = s.poll_event() {
                if let Event::LoggedIn { .. } = ev {
                    s.accept(&cfg, now, Accept { session_id: 1, server_epoch: 1, prior_ms: 0 })
                        .expect("a LoggedIn session accepts");
                }
                if let Event::Closed { .. } = ev {
                    closed_events += 1;
                }
            }
            let mut after_close = false;
            while let Some(f) = s.poll_transmit() {
                prop_assert!(!after_close, "nothing after Close/Kick");
                after_close = matches!(f, Frame::Close(_) | Frame::Kick(_));
            }
            // Closed exactly when there is no deadline; after a timeout the next deadline is
            // in the future (a timer wheel never spins on a session).
            prop_assert_eq!(s.poll_timeout().is_none(), s.close_code().is_some());
            if timed_out {
                prop_assert!(s.poll_timeout().map_or(true, |t| t > now));
            }
            prop_assert_eq!(closed_events, u32::from(s.close_code().is_some()));
            if s.close_code().is_some() {
                prop_assert!(s.is_finished());
            }
        }
    }
}

/// A grant for `principal` whose token never expires, by no secret.
fn grant(principal: Principal) -> Grant {
    Grant {
        principal,
        expiry_unix: u64::MAX,
        key: KeyId::NONE,
    }
}
