//! The server session state machine on a virtual clock.

use bytes::Bytes;
use tether_proto::heartbeat::NetworkId;
use tether_proto::session::{
    back_off_frame, Accept, ConfigError, Event, ServerSession, SessionConfig, SessionError,
    PIPELINE_MAX,
};
use tether_proto::token::{Authenticate, Grant, KeyId, Principal};
use tether_proto::{
    login_flags, BackendPush, Close, CloseCode, Frame, GoAway, Kick, Login, LoginOk, NetReport,
    Ping, Pong, Probe, Push, PushAck, PushResult, PushStatus, Refresh, Send, SendResult,
    TokenNotice, Upstream, UpstreamAnswer, UpstreamDeliver, UpstreamResult, UpstreamStatus,
    PROTOCOL_V1, PROTOCOL_V2, PROTOCOL_VERSION,
};

/// Accepts the token "client" as a client and "backend" as a backend; "old" expires at unix
/// second 1000.
struct TestAuth;

impl Authenticate for TestAuth {
    fn authenticate(&self, login: &Login, now_unix: u64) -> Result<Grant, CloseCode> {
        match login.token.as_str() {
            "client" => Ok(grant(Principal::Client)),
            "backend" => Ok(grant(Principal::Backend)),
            "old" if now_unix >= 1000 => Err(CloseCode::TokenExpired),
            "old" => Ok(grant(Principal::Client)),
            // "until:<unix>": a client token until then, by secret 7.
            t if t.starts_with("until:") => {
                let expiry_unix: u64 = t["until:".len()..].parse().unwrap();
                if now_unix >= expiry_unix {
                    return Err(CloseCode::TokenExpired);
                }
                Ok(Grant {
                    principal: Principal::Client,
                    expiry_unix,
                    key: KeyId(7),
                })
            }
            _ => Err(CloseCode::AuthFailed),
        }
    }
}

const UNIX: u64 = 500;

fn login(token: &str, flags: u8, heartbeat_ms: u32, network_key: &str) -> Frame {
    Frame::Login(Login {
        version: PROTOCOL_VERSION,
        flags,
        user: "alice".into(),
        device: "phone".into(),
        token: token.into(),
        heartbeat_ms,
        network_key: network_key.into(),
    })
}

fn cfg() -> SessionConfig {
    SessionConfig {
        login_timeout_ms: 10_000,
        min_lease_ms: 5_000,
        max_lease_ms: 600_000,
        lease_multiplier_pct: 150,
        grace_ms: 2_000,
        max_frame: 4_096,
        token_notice_s: 60,
    }
}

fn transmits(s: &mut ServerSession) -> Vec<Frame> {
    std::iter::from_fn(|| s.poll_transmit()).collect()
}

fn events(s: &mut ServerSession) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

fn accept() -> Accept {
    Accept {
        session_id: 7,
        server_epoch: 42,
        prior_ms: 270_000,
    }
}

/// A session logged in at `t` with the given login, accepted, outputs drained.
fn open(c: &SessionConfig, t: u64, frame: Frame) -> ServerSession {
    let mut s = ServerSession::new(c, t);
    s.handle_frame(c, t, UNIX, frame, &TestAuth);
    assert!(matches!(events(&mut s)[..], [Event::LoggedIn { .. }]));
    s.accept(c, t, accept()).unwrap();
    assert!(matches!(transmits(&mut s)[..], [Frame::LoginOk(_)]));
    s
}

fn assert_closed_by_server(s: &mut ServerSession, code: CloseCode) {
    let frames = transmits(s);
    assert_eq!(
        frames.last(),
        Some(&Frame::Close(Close {
            code,
            text: String::new()
        }))
    );
    assert_eq!(
        events(s).last(),
        Some(&Event::Closed {
            code,
            by_peer: false
        })
    );
    assert_eq!(s.poll_timeout(), None);
    assert!(s.is_finished());
}

#[test]
fn an_idle_session_is_small() {
    // The server keeps one per connection; see the type's documentation.
    assert!(std::mem::size_of::<ServerSession>() <= 48);
}

#[test]
fn login_then_accept_tells_the_client_the_lease_rules() {
    let c = cfg();
    let mut s = ServerSession::new(&c, 1_000);
    assert_eq!(s.poll_timeout(), Some(11_000));
    s.handle_frame(
        &c,
        3_000,
        UNIX,
        login("client", 0, 60_000, "wifi:home"),
        &TestAuth,
    );
    assert_eq!(
        events(&mut s),
        vec![Event::LoggedIn {
            principal: Principal::Client,
            user: "alice".into(),
            device: "phone".into(),
            network_key: "wifi:home".into(),
            probe: false,
            upstream: false,
        }]
    );
    // Nothing goes out before the driver accepts; the login deadline still holds.
    assert_eq!(s.poll_transmit(), None);
    assert_eq!(s.poll_timeout(), Some(11_000));
    assert!(!s.is_open());

    s.accept(&c, 4_000, accept()).unwrap();
    assert_eq!(
        transmits(&mut s),
        vec![Frame::LoginOk(LoginOk {
            session_id: 7,
            server_epoch: 42,
            min_lease_ms: 5_000,
            max_lease_ms: 600_000,
            lease_multiplier_pct: 150,
            grace_ms: 2_000,
            prior_ms: 270_000,
            max_frame: 4_096,
        })]
    );
    assert!(s.is_open());
    // Login's heartbeat_ms is the lease until the first ping: 60 s × 1.5 + 2 s.
    assert_eq!(s.poll_timeout(), Some(4_000 + 92_000));
    assert_eq!(
        s.accept(&c, 4_000, accept()),
        Err(SessionError::NotAwaitingAccept)
    );
}

#[test]
fn no_login_within_the_deadline_closes_without_reconnect() {
    let c = cfg();
    let mut s = ServerSession::new(&c, 0);
    s.handle_timeout(&c, 9_999);
    assert_eq!(s.poll_transmit(), None);
    assert_eq!(s.poll_event(), None);
    s.handle_timeout(&c, 10_000);
    assert_closed_by_server(&mut s, CloseCode::LoginTimeout);
    assert!(!CloseCode::LoginTimeout.may_reconnect());
}

#[test]
fn an_unaccepted_login_also_times_out() {
    let c = cfg();
    let mut s = ServerSession::new(&c, 0);
    s.handle_frame(&c, 100, UNIX, login("client", 0, 60_000, ""), &TestAuth);
    events(&mut s);
    s.handle_timeout(&c, 10_000);
    assert_closed_by_server(&mut s, CloseCode::LoginTimeout);
}

#[test]
fn the_first_frame_must_be_a_login() {
    let c = cfg();
    let mut s = ServerSession::new(&c, 0);
    s.handle_frame(&c, 5, UNIX, Frame::Ping(Ping { lease_ms: 1 }), &TestAuth);
    assert_closed_by_server(&mut s, CloseCode::LoginRequired);
    assert!(!CloseCode::LoginRequired.may_reconnect());
    // Later input is ignored.
    s.handle_frame(&c, 6, UNIX, login("client", 0, 1, ""), &TestAuth);
    assert_eq!(s.poll_event(), None);
}

#[test]
fn bad_logins_close_with_their_code() {
    let c = cfg();
    for (frame, unix, code) in [
        (login("nope", 0, 1, ""), UNIX, CloseCode::AuthFailed),
        (login("old", 0, 1, ""), 1_000, CloseCode::TokenExpired),
        (
            login("backend", login_flags::PROBE, 1, ""),
            UNIX,
            CloseCode::NotAllowed,
        ),
        (
            Frame::Login(Login {
                version: PROTOCOL_VERSION + 1,
                flags: 0,
                user: "u".into(),
                device: String::new(),
                token: "client".into(),
                heartbeat_ms: 1,
                network_key: String::new(),
            }),
            UNIX,
            CloseCode::UnsupportedVersion,
        ),
    ] {
        let mut s = ServerSession::new(&c, 0);
        s.handle_frame(&c, 1, unix, frame, &TestAuth);
        assert_closed_by_server(&mut s, code);
    }
    // The same token a second earlier is fine.
    let mut s = ServerSession::new(&c, 0);
    s.handle_frame(&c, 1, 999, login("old", 0, 1, ""), &TestAuth);
    assert!(matches!(events(&mut s)[..], [Event::LoggedIn { .. }]));
}

#[test]
fn frames_pipelined_behind_the_login_are_answered_after_login_ok() {
    let c = cfg();
    let mut s = ServerSession::new(&c, 0);
    s.handle_frame(&c, 1, UNIX, login("client", 0, 60_000, ""), &TestAuth);
    // The driver feeds the Ping that came in the same read before it accepts the login.
    s.handle_frame(
        &c,
        2,
        UNIX,
        Frame::Ping(Ping { lease_ms: 20_000 }),
        &TestAuth,
    );
    let ack = Frame::PushAck(PushAck { id: 5 });
    s.handle_frame(&c, 2, UNIX, ack, &TestAuth);
    assert!(matches!(events(&mut s)[..], [Event::LoggedIn { .. }]));
    assert_eq!(s.poll_transmit(), None, "nothing before LoginOk");
    s.accept(&c, 3, accept()).unwrap();
    let frames = transmits(&mut s);
    assert!(
        matches!(
            frames[..],
            [
                Frame::LoginOk(_),
                Frame::Pong(Pong {
                    deadline_ms: 32_000
                })
            ]
        ),
        "{frames:?}"
    );
    assert_eq!(events(&mut s), vec![Event::PushAck(PushAck { id: 5 })]);
    // The pipelined Ping's lease holds from the accept.
    assert_eq!(s.poll_timeout(), Some(3 + 32_000));
    assert!(s.is_open());
}

#[test]
fn a_pipelined_frame_out_of_place_closes_after_login_ok() {
    let c = cfg();
    let mut s = ServerSession::new(&c, 0);
    s.handle_frame(&c, 1, UNIX, login("client", 0, 60_000, ""), &TestAuth);
    s.handle_frame(&c, 2, UNIX, Frame::ProbeFire, &TestAuth);
    s.handle_frame(&c, 2, UNIX, Frame::Ping(Ping { lease_ms: 1 }), &TestAuth);
    assert!(matches!(events(&mut s)[..], [Event::LoggedIn { .. }]));
    s.accept(&c, 3, accept()).unwrap();
    let frames = transmits(&mut s);
    assert!(matches!(frames[0], Frame::LoginOk(_)), "{frames:?}");
    assert_eq!(frames.len(), 2, "no Pong after the close: {frames:?}");
    assert_eq!(
        frames[1],
        Frame::Close(Close {
            code: CloseCode::ProtocolError,
            text: String::new()
        })
    );
    assert_eq!(
        events(&mut s),
        vec![Event::Closed {
            code: CloseCode::ProtocolError,
            by_peer: false
        }]
    );
    assert!(s.is_finished());
}

#[test]
fn a_login_that_waits_holds_a_bounded_number_of_frames() {
    let c = cfg();
    let mut s = ServerSession::new(&c, 0);
    s.handle_frame(&c, 1, UNIX, login("client", 0, 60_000, ""), &TestAuth);
    for _ in 0..PIPELINE_MAX {
        s.handle_frame(&c, 2, UNIX, Frame::Ping(Ping { lease_ms: 1 }), &TestAuth);
    }
    assert!(s.close_code().is_none());
    s.handle_frame(&c, 2, UNIX, Frame::Ping(Ping { lease_ms: 1 }), &TestAuth);
    assert_eq!(s.close_code(), Some(CloseCode::Overloaded));
    assert!(matches!(s.poll_event(), Some(Event::LoggedIn { .. })));
    assert_eq!(
        s.accept(&c, 3, accept()),
        Err(SessionError::NotAwaitingAccept)
    );
    assert_closed_by_server(&mut s, CloseCode::Overloaded);
}

#[test]
fn the_back_off_refusal_is_a_go_away_overloaded_that_may_reconnect() {
    let mut bytes = bytes::BytesMut::from(&back_off_frame(30_000)[..]);
    assert_eq!(
        tether_proto::decode(&mut bytes, 64),
        Ok(Some(Frame::GoAway(GoAway {
            reason: CloseCode::Overloaded,
            may_reconnect: true,
            window_ms: 30_000,
        })))
    );
    assert!(bytes.is_empty());
}

#[test]
fn every_inbound_frame_moves_the_idle_deadline_by_the_clamped_lease() {
    let c = cfg();
    let mut s = open(&c, 0, login("client", 0, 60_000, ""));
    // Ping with a lease inside the bounds: 100 s × 1.5 + 2 s.
    s.handle_frame(
        &c,
        1_000,
        UNIX,
        Frame::Ping(Ping { lease_ms: 100_000 }),
        &TestAuth,
    );
    assert_eq!(
        transmits(&mut s),
        vec![Frame::Pong(Pong {
            deadline_ms: 152_000
        })]
    );
    assert_eq!(s.poll_timeout(), Some(153_000));
    // A non-ping frame keeps the ping's lease and restarts the window.
    s.handle_frame(
        &c,
        50_000,
        UNIX,
        Frame::PushAck(PushAck { id: 3 }),
        &TestAuth,
    );
    assert_eq!(events(&mut s), vec![Event::PushAck(PushAck { id: 3 })]);
    assert_eq!(s.poll_transmit(), None);
    assert_eq!(s.poll_timeout(), Some(202_000));
    // Below the minimum: raised to 5 s.
    s.handle_frame(
        &c,
        60_000,
        UNIX,
        Frame::Ping(Ping { lease_ms: 10 }),
        &TestAuth,
    );
    assert_eq!(
        transmits(&mut s),
        vec![Frame::Pong(Pong { deadline_ms: 9_500 })]
    );
    assert_eq!(s.poll_timeout(), Some(69_500));
    // Above the maximum: lowered to 600 s.
    s.handle_frame(
        &c,
        61_000,
        UNIX,
        Frame::Ping(Ping { lease_ms: u32::MAX }),
        &TestAuth,
    );
    assert_eq!(
        transmits(&mut s),
        vec![Frame::Pong(Pong {
            deadline_ms: 902_000
        })]
    );
    assert_eq!(s.poll_timeout(), Some(963_000));
    // A timer that fires early changes nothing.
    s.handle_timeout(&c, 962_999);
    assert!(s.is_open());
    assert_eq!(s.poll_transmit(), None);
    s.handle_timeout(&c, 963_000);
    assert_closed_by_server(&mut s, CloseCode::IdleTimeout);
    assert!(CloseCode::IdleTimeout.may_reconnect());
}

#[test]
fn client_frames_become_events_and_driver_frames_go_out_in_order() {
    let c = cfg();
    let mut s = open(&c, 0, login("client", 0, 60_000, "cell:1"));
    let send = Send {
        to: "bob".into(),
        client_id: 9,
        payload: Bytes::from_static(b"hi"),
    };
    s.handle_frame(&c, 10, UNIX, Frame::Send(send.clone()), &TestAuth);
    s.handle_frame(
        &c,
        11,
        UNIX,
        Frame::NetReport(NetReport {
            learned_ms: 300_000,
        }),
        &TestAuth,
    );
    assert_eq!(
        events(&mut s),
        vec![
            Event::Send(send),
            Event::NetReport {
                network: NetworkId::of("cell:1").unwrap(),
                learned_ms: 300_000
            }
        ]
    );
    let result = SendResult {
        client_id: 9,
        status: PushStatus::Delivered(2),
    };
    s.send_result(result).unwrap();
    s.push(1, Bytes::from_static(b"a")).unwrap();
    s.push(2, Bytes::from_static(b"b")).unwrap();
    assert_eq!(
        s.push_result(PushResult {
            id: 1,
            status: PushStatus::Offline
        }),
        Err(SessionError::WrongPeer)
    );
    s.go_away(CloseCode::ServerShutdown, true, 30_000).unwrap();
    assert_eq!(
        transmits(&mut s),
        vec![
            Frame::SendResult(result),
            Frame::Push(Push {
                id: 1,
                payload: Bytes::from_static(b"a")
            }),
            Frame::Push(Push {
                id: 2,
                payload: Bytes::from_static(b"b")
            }),
            Frame::GoAway(GoAway {
                reason: CloseCode::ServerShutdown,
                may_reconnect: true,
                window_ms: 30_000
            }),
        ]
    );
    // GoAway leaves the session open; a close afterwards flushes queued pushes first.
    assert!(s.is_open());
    s.push(3, Bytes::new()).unwrap();
    s.close(CloseCode::ServerShutdown).unwrap();
    assert_eq!(s.push(4, Bytes::new()), Err(SessionError::NotOpen));
    assert_eq!(
        transmits(&mut s),
        vec![
            Frame::Push(Push {
                id: 3,
                payload: Bytes::new()
            }),
            Frame::Close(Close {
                code: CloseCode::ServerShutdown,
                text: String::new()
            })
        ]
    );
    assert_eq!(
        events(&mut s),
        vec![Event::Closed {
            code: CloseCode::ServerShutdown,
            by_peer: false
        }]
    );
    assert!(s.is_finished());
    assert_eq!(s.close(CloseCode::Normal), Err(SessionError::NotOpen));
}

#[test]
fn a_report_without_a_network_key_is_dropped() {
    let c = cfg();
    let mut s = open(&c, 0, login("client", 0, 60_000, ""));
    s.handle_frame(
        &c,
        1,
        UNIX,
        Frame::NetReport(NetReport { learned_ms: 1 }),
        &TestAuth,
    );
    assert_eq!(s.poll_event(), None);
    assert!(s.is_open());
}

#[test]
fn kick_replaces_the_close_frame() {
    let c = cfg();
    let mut s = open(&c, 0, login("client", 0, 60_000, ""));
    s.kick(CloseCode::Replaced, false, 0).unwrap();
    assert_eq!(
        transmits(&mut s),
        vec![Frame::Kick(Kick {
            reason: CloseCode::Replaced,
            may_reconnect: false,
            jitter_ms: 0
        })]
    );
    assert_eq!(
        events(&mut s),
        vec![Event::Closed {
            code: CloseCode::Replaced,
            by_peer: false
        }]
    );
    assert!(s.is_finished());
    assert_eq!(
        s.kick(CloseCode::Kicked, false, 0),
        Err(SessionError::NotOpen)
    );
}

#[test]
fn a_peer_close_ends_the_session_without_a_reply() {
    let c = cfg();
    let mut s = open(&c, 0, login("client", 0, 60_000, ""));
    s.push(1, Bytes::new()).unwrap();
    s.handle_frame(
        &c,
        5,
        UNIX,
        Frame::Close(Close {
            code: CloseCode::Normal,
            text: "bye".into(),
        }),
        &TestAuth,
    );
    assert_eq!(s.poll_transmit(), None);
    assert_eq!(
        events(&mut s),
        vec![Event::Closed {
            code: CloseCode::Normal,
            by_peer: true
        }]
    );
    assert_eq!(s.poll_timeout(), None);
    assert!(s.is_finished());
}

#[test]
fn frames_the_peer_may_not_send_close_the_session() {
    let c = cfg();
    let bp = Frame::BackendPush(BackendPush {
        id: 1,
        flags: 0,
        user: "bob".into(),
        payload: Bytes::new(),
    });
    let cases = [
        (login("client", 0, 1, ""), bp.clone(), CloseCode::NotAllowed),
        (
            login("client", 0, 1, ""),
            Frame::Probe(Probe { delay_ms: 1 }),
            CloseCode::NotAllowed,
        ),
        (
            login("client", 0, 1, ""),
            login("client", 0, 1, ""),
            CloseCode::ProtocolError,
        ),
        (
            login("client", 0, 1, ""),
            Frame::Pong(Pong { deadline_ms: 1 }),
            CloseCode::ProtocolError,
        ),
        (
            login("client", 0, 1, ""),
            Frame::ProbeFire,
            CloseCode::ProtocolError,
        ),
        (
            login("backend", 0, 1, ""),
            Frame::Send(Send {
                to: "x".into(),
                client_id: 1,
                payload: Bytes::new(),
            }),
            CloseCode::NotAllowed,
        ),
        (
            login("backend", 0, 1, ""),
            Frame::PushAck(PushAck { id: 1 }),
            CloseCode::NotAllowed,
        ),
        (
            login("client", login_flags::PROBE, 1, ""),
            Frame::PushAck(PushAck { id: 1 }),
            CloseCode::NotAllowed,
        ),
        (
            login("client", login_flags::PROBE, 1, ""),
            Frame::Probe(Probe { delay_ms: 600_001 }),
            CloseCode::ProtocolError,
        ),
        // Priors come from main connections only: a probe may carry a network key, but
        // reports on it are refused rather than counted.
        (
            login("client", login_flags::PROBE, 1, "wifi:home"),
            Frame::NetReport(NetReport { learned_ms: 60_000 }),
            CloseCode::NotAllowed,
        ),
    ];
    for (first, second, code) in cases {
        let mut s = open(&c, 0, first);
        s.handle_frame(&c, 1, UNIX, second.clone(), &TestAuth);
        assert_eq!(s.close_code(), Some(code), "{second:?}");
        assert_closed_by_server(&mut s, code);
    }
}

#[test]
fn a_backend_pushes_and_gets_results() {
    let c = cfg();
    let mut s = open(&c, 0, login("backend", 0, 30_000, ""));
    let push = BackendPush {
        id: 5,
        flags: 0,
        user: "bob".into(),
        payload: Bytes::from_static(b"x"),
    };
    s.handle_frame(&c, 1, UNIX, Frame::BackendPush(push.clone()), &TestAuth);
    assert_eq!(events(&mut s), vec![Event::BackendPush(push)]);
    assert_eq!(s.push(1, Bytes::new()), Err(SessionError::WrongPeer));
    let result = PushResult {
        id: 5,
        status: PushStatus::Delivered(1),
    };
    s.push_result(result).unwrap();
    assert_eq!(transmits(&mut s), vec![Frame::PushResult(result)]);
}

#[test]
fn a_probe_fires_after_the_requested_silence_then_closes() {
    let c = cfg();
    let mut s = ServerSession::new(&c, 0);
    s.handle_frame(
        &c,
        1,
        UNIX,
        login("client", login_flags::PROBE, 1, "wifi:x"),
        &TestAuth,
    );
    assert!(matches!(
        events(&mut s)[..],
        [Event::LoggedIn { probe: true, .. }]
    ));
    assert!(s.is_probe());
    s.accept(&c, 2, accept()).unwrap();
    transmits(&mut s);
    assert_eq!(s.push(1, Bytes::new()), Err(SessionError::WrongPeer));

    s.handle_frame(
        &c,
        100,
        UNIX,
        Frame::Probe(Probe { delay_ms: 400_000 }),
        &TestAuth,
    );
    assert_eq!(s.poll_transmit(), None);
    assert_eq!(s.poll_timeout(), Some(400_100));
    // Anything from the client restarts the silence.
    s.handle_frame(
        &c,
        1_000,
        UNIX,
        Frame::Ping(Ping { lease_ms: 1 }),
        &TestAuth,
    );
    assert_eq!(
        transmits(&mut s),
        vec![Frame::Pong(Pong {
            deadline_ms: 400_000
        })]
    );
    assert_eq!(s.poll_timeout(), Some(401_000));
    s.handle_timeout(&c, 400_999);
    assert_eq!(s.poll_transmit(), None);
    s.handle_timeout(&c, 401_000);
    assert_eq!(s.poll_transmit(), Some(Frame::ProbeFire));
    assert_closed_by_server(&mut s, CloseCode::Normal);
}

#[test]
fn a_probe_delay_below_the_minimum_lease_is_kept_exactly() {
    // The minimum lease bounds how often an idle check runs on a long-lived connection; a
    // probe fires once and closes, and its measurement needs the delay it asked for.
    let c = cfg();
    assert!(c.min_lease_ms > 1_000);
    let mut s = open(&c, 0, login("client", login_flags::PROBE, 1, ""));
    let probe = Frame::Probe(Probe { delay_ms: 1_000 });
    s.handle_frame(&c, 10, UNIX, probe, &TestAuth);
    assert_eq!(s.poll_timeout(), Some(1_010));
    s.handle_timeout(&c, 1_010);
    assert_eq!(s.poll_transmit(), Some(Frame::ProbeFire));
    assert_closed_by_server(&mut s, CloseCode::Normal);
}

#[test]
fn config_validation() {
    assert_eq!(SessionConfig::default().validate(), Ok(()));
    assert_eq!(SessionConfig::default().login_timeout_ms, 10_000);
    let bad = |f: fn(&mut SessionConfig)| {
        let mut c = SessionConfig::default();
        f(&mut c);
        c.validate()
    };
    assert_eq!(
        bad(|c| c.login_timeout_ms = 0),
        Err(ConfigError::Zero("login_timeout_ms"))
    );
    assert_eq!(
        bad(|c| c.min_lease_ms = 0),
        Err(ConfigError::Zero("min_lease_ms"))
    );
    assert!(matches!(
        bad(|c| c.min_lease_ms = c.max_lease_ms + 1),
        Err(ConfigError::LeaseBounds { .. })
    ));
    assert_eq!(
        bad(|c| c.lease_multiplier_pct = 99),
        Err(ConfigError::Multiplier(99))
    );
    assert_eq!(
        bad(|c| c.max_frame = 0),
        Err(ConfigError::Zero("max_frame"))
    );
    let c = SessionConfig {
        max_lease_ms: u32::MAX,
        lease_multiplier_pct: 1000,
        ..SessionConfig::default()
    };
    assert_eq!(c.idle_window_ms(u32::MAX), u32::MAX);
}

fn login_v(version: u8, token: &str, flags: u8) -> Frame {
    Frame::Login(Login {
        version,
        flags,
        user: "alice".into(),
        device: "phone".into(),
        token: token.into(),
        heartbeat_ms: 60_000,
        network_key: String::new(),
    })
}

fn upstream(client_id: u64) -> Frame {
    Frame::Upstream(Upstream {
        client_id,
        flags: 0,
        payload: Bytes::from_static(b"hi"),
    })
}

#[test]
fn both_versions_log_in_and_the_session_remembers_which() {
    let c = cfg();
    for v in [PROTOCOL_V1, PROTOCOL_V2] {
        let s = open(&c, 0, login_v(v, "client", 0));
        assert_eq!(s.version(), v);
    }
    let mut s = ServerSession::new(&c, 0);
    s.handle_frame(&c, 0, UNIX, login_v(3, "client", 0), &TestAuth);
    assert_closed_by_server(&mut s, CloseCode::UnsupportedVersion);
    let mut s = ServerSession::new(&c, 0);
    s.handle_frame(&c, 0, UNIX, login_v(0, "client", 0), &TestAuth);
    assert_closed_by_server(&mut s, CloseCode::UnsupportedVersion);
}

#[test]
fn a_version_2_client_sends_upstream_messages_in_order() {
    let c = cfg();
    let mut s = open(&c, 0, login_v(PROTOCOL_V2, "client", 0));
    for id in 1..=3 {
        s.handle_frame(&c, 10, UNIX, upstream(id), &TestAuth);
    }
    let ids: Vec<u64> = events(&mut s)
        .into_iter()
        .map(|e| match e {
            Event::Upstream(u) => u.client_id,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(ids, [1, 2, 3]);
    let result = UpstreamResult {
        client_id: 1,
        status: UpstreamStatus::Accepted,
        reply: Bytes::from_static(b"seq=1"),
    };
    s.upstream_result(result.clone()).unwrap();
    assert_eq!(transmits(&mut s), [Frame::UpstreamResult(result)]);
    // A client gets no deliveries meant for backends.
    let deliver = UpstreamDeliver {
        id: 1,
        user: "bob".into(),
        device: String::new(),
        session_id: 1,
        client_id: 1,
        payload: Bytes::new(),
    };
    assert_eq!(s.upstream_deliver(deliver), Err(SessionError::WrongPeer));
}

#[test]
fn version_2_frames_on_a_version_1_session_are_unknown() {
    let c = cfg();
    let mut s = open(&c, 0, login_v(PROTOCOL_V1, "client", 0));
    let result = UpstreamResult {
        client_id: 1,
        status: UpstreamStatus::Accepted,
        reply: Bytes::new(),
    };
    assert_eq!(s.upstream_result(result), Err(SessionError::WrongPeer));
    let accepted = SendResult {
        client_id: 1,
        status: PushStatus::Accepted,
    };
    assert_eq!(s.send_result(accepted), Err(SessionError::WrongPeer));
    s.handle_frame(&c, 10, UNIX, upstream(1), &TestAuth);
    assert_closed_by_server(&mut s, CloseCode::UnknownFrame);
}

#[test]
fn upstream_is_for_main_client_connections_and_answers_for_backends() {
    let c = cfg();
    let mut probe = open(&c, 0, login_v(PROTOCOL_V2, "client", login_flags::PROBE));
    probe.handle_frame(&c, 10, UNIX, upstream(1), &TestAuth);
    assert_closed_by_server(&mut probe, CloseCode::NotAllowed);

    let mut backend = open(&c, 0, login_v(PROTOCOL_V2, "backend", 0));
    backend.handle_frame(&c, 10, UNIX, upstream(1), &TestAuth);
    assert_closed_by_server(&mut backend, CloseCode::NotAllowed);

    let answer = Frame::UpstreamAnswer(UpstreamAnswer {
        id: 4,
        accepted: true,
        reply: Bytes::new(),
    });
    let mut client = open(&c, 0, login_v(PROTOCOL_V2, "client", 0));
    client.handle_frame(&c, 10, UNIX, answer.clone(), &TestAuth);
    assert_closed_by_server(&mut client, CloseCode::NotAllowed);

    let mut s = ServerSession::new(&c, 0);
    s.handle_frame(
        &c,
        0,
        UNIX,
        login_v(PROTOCOL_V2, "backend", login_flags::UPSTREAM),
        &TestAuth,
    );
    assert!(matches!(
        events(&mut s)[..],
        [Event::LoggedIn { upstream: true, .. }]
    ));
    s.accept(&c, 0, accept()).unwrap();
    transmits(&mut s);
    s.handle_frame(&c, 10, UNIX, answer, &TestAuth);
    assert!(matches!(
        events(&mut s)[..],
        [Event::UpstreamAnswer(UpstreamAnswer { id: 4, .. })]
    ));
}

#[test]
fn the_upstream_flag_means_nothing_to_a_client_or_in_version_1() {
    let c = cfg();
    for (v, token) in [(PROTOCOL_V1, "backend"), (PROTOCOL_V2, "client")] {
        let mut s = ServerSession::new(&c, 0);
        s.handle_frame(
            &c,
            0,
            UNIX,
            login_v(v, token, login_flags::UPSTREAM),
            &TestAuth,
        );
        assert!(matches!(
            events(&mut s)[..],
            [Event::LoggedIn {
                upstream: false,
                ..
            }]
        ));
    }
}

#[test]
fn an_ignored_extension_frame_keeps_the_connection_alive() {
    let c = cfg();
    let mut s = open(&c, 0, login_v(PROTOCOL_V2, "client", 0));
    let before = s.poll_timeout().unwrap();
    s.handle_frame(&c, 30_000, UNIX, Frame::Ignored { kind: 0x40 }, &TestAuth);
    assert!(s.is_open());
    assert_eq!(s.poll_timeout(), Some(before + 30_000));
    assert!(events(&mut s).is_empty());
    assert!(transmits(&mut s).is_empty());
}

/// A grant for `principal` whose token never expires, by no secret.
fn grant(principal: Principal) -> Grant {
    Grant {
        principal,
        expiry_unix: u64::MAX,
        key: KeyId::NONE,
    }
}

// --- Token lifetime on a live connection ---

/// A version-`version` client session logged in at 0 (unix second 500) with a token that
/// ends at unix second `until`, a lease long enough that only the token can end it.
fn open_until(c: &SessionConfig, version: u8, until: u64) -> ServerSession {
    let Frame::Login(mut l) = login(&format!("until:{until}"), 0, 600_000, "") else {
        unreachable!()
    };
    l.version = version;
    open(c, 0, Frame::Login(l))
}

#[test]
fn a_version_2_session_is_told_before_its_token_ends_then_closed() {
    let c = cfg();
    let mut s = open_until(&c, PROTOCOL_V2, 600);
    assert_eq!(s.token_key(), KeyId(7));
    // 100 s of token, 60 s of notice: told at 40 s.
    assert_eq!(s.poll_timeout(), Some(40_000));
    s.handle_timeout(&c, 39_999);
    assert_eq!(transmits(&mut s), vec![]);
    s.handle_timeout(&c, 40_000);
    assert_eq!(
        transmits(&mut s),
        vec![Frame::TokenNotice(TokenNotice {
            expires_in_ms: 60_000
        })]
    );
    assert_eq!(s.poll_timeout(), Some(100_000));
    s.handle_timeout(&c, 99_999);
    assert!(s.is_open());
    s.handle_timeout(&c, 100_000);
    assert_closed_by_server(&mut s, CloseCode::TokenExpired);
}

#[test]
fn a_version_1_session_gets_no_notice_and_closes_when_its_token_ends() {
    let c = cfg();
    let mut s = open_until(&c, PROTOCOL_V1, 600);
    assert_eq!(s.poll_timeout(), Some(100_000));
    s.handle_timeout(&c, 100_000);
    assert_closed_by_server(&mut s, CloseCode::TokenExpired);
}

#[test]
fn a_refreshed_token_moves_the_end_and_is_acknowledged() {
    let c = cfg();
    let mut s = open_until(&c, PROTOCOL_V2, 600);
    s.handle_timeout(&c, 40_000);
    transmits(&mut s);
    s.handle_frame(
        &c,
        41_000,
        541,
        Frame::Refresh(Refresh {
            token: "until:1000".into(),
        }),
        &TestAuth,
    );
    let [Event::Refresh(r)] = &events(&mut s)[..] else {
        panic!("no Refresh event")
    };
    assert_eq!(r.token, "until:1000");
    let grant = TestAuth
        .authenticate(
            &Login {
                token: r.token.clone(),
                ..match login("", 0, 0, "") {
                    Frame::Login(l) => l,
                    _ => unreachable!(),
                }
            },
            541,
        )
        .unwrap();
    s.refreshed(&c, 41_000, 541, grant).unwrap();
    assert_eq!(transmits(&mut s), vec![Frame::Refreshed]);
    // Ends at unix 1000 = 500 s on the session clock; told 60 s before.
    assert_eq!(s.poll_timeout(), Some(440_000));
    s.handle_timeout(&c, 100_000);
    assert!(s.is_open(), "closed at the old token's end");
}

#[test]
fn a_login_with_little_time_left_is_told_right_after_login_ok() {
    let c = cfg();
    let mut s = ServerSession::new(&c, 0);
    let Frame::Login(mut l) = login("until:530", 0, 600_000, "") else {
        unreachable!()
    };
    l.version = PROTOCOL_V2;
    s.handle_frame(&c, 0, UNIX, Frame::Login(l), &TestAuth);
    events(&mut s);
    s.accept(&c, 0, accept()).unwrap();
    let frames = transmits(&mut s);
    assert!(matches!(frames[0], Frame::LoginOk(_)));
    assert_eq!(
        frames[1..],
        [Frame::TokenNotice(TokenNotice {
            expires_in_ms: 30_000
        })]
    );
    assert_eq!(s.poll_timeout(), Some(30_000));
}

#[test]
fn a_withdrawn_secret_shortens_the_token_and_tells_the_peer() {
    let c = cfg();
    let mut s = open_until(&c, PROTOCOL_V2, 3_000);
    s.revoke(&c, 10_000, 5);
    assert_eq!(
        transmits(&mut s),
        vec![Frame::TokenNotice(TokenNotice {
            expires_in_ms: 5_000
        })]
    );
    assert_eq!(s.poll_timeout(), Some(15_000));
    // A second withdrawal with a later end changes nothing.
    s.revoke(&c, 12_000, 60);
    assert_eq!(transmits(&mut s), vec![]);
    s.handle_timeout(&c, 15_000);
    assert_closed_by_server(&mut s, CloseCode::TokenExpired);
}

#[test]
fn token_frames_out_of_place_close_the_session() {
    let c = cfg();
    // A probe may not refresh.
    let mut probe = open(&c, 0, login("client", login_flags::PROBE, 60_000, ""));
    probe.handle_frame(
        &c,
        1,
        UNIX,
        Frame::Refresh(Refresh { token: "x".into() }),
        &TestAuth,
    );
    assert_closed_by_server(&mut probe, CloseCode::NotAllowed);
    // Only the server sends these.
    for frame in [
        Frame::TokenNotice(TokenNotice { expires_in_ms: 1 }),
        Frame::Refreshed,
    ] {
        let mut s = open_until(&c, PROTOCOL_V2, 600);
        s.handle_frame(&c, 1, UNIX, frame, &TestAuth);
        assert_closed_by_server(&mut s, CloseCode::ProtocolError);
    }
}

#[test]
fn a_probe_gets_no_notice_and_ends_with_its_token() {
    // A frame would break the silence a probe measures.
    let c = cfg();
    let mut s = ServerSession::new(&c, 0);
    s.handle_frame(
        &c,
        0,
        UNIX,
        login("until:530", login_flags::PROBE, 600_000, ""),
        &TestAuth,
    );
    events(&mut s);
    s.accept(&c, 0, accept()).unwrap();
    assert!(matches!(transmits(&mut s)[..], [Frame::LoginOk(_)]));
    s.revoke(&c, 1_000, 5);
    assert_eq!(transmits(&mut s), vec![]);
    assert_eq!(s.poll_timeout(), Some(6_000));
    s.handle_timeout(&c, 6_000);
    assert_closed_by_server(&mut s, CloseCode::TokenExpired);
}
