//! The client heartbeat machine against a hand-played server, on a virtual clock.

use tether_proto::heartbeat::{
    Action, Client, ClientEvent, ConnId, Credentials, HeartbeatConfig, Learned, NetMemory,
};
use tether_proto::{
    login_flags, Close, CloseCode, Frame, GoAway, LoginOk, Pong, Probe, PROTOCOL_VERSION,
};

fn creds() -> Credentials {
    Credentials {
        user: "alice".into(),
        device: "phone".into(),
        token: "t".into(),
    }
}

fn login_ok(prior_ms: u32) -> Frame {
    Frame::LoginOk(LoginOk {
        session_id: 1,
        server_epoch: 1,
        min_lease_ms: 1_000,
        max_lease_ms: 1_800_000,
        lease_multiplier_pct: 150,
        grace_ms: 10_000,
        prior_ms,
        max_frame: 65_536,
    })
}

fn pong() -> Frame {
    Frame::Pong(Pong { deadline_ms: 1 })
}

/// The client plus a virtual clock.
struct Harness {
    c: Client,
    now: u64,
}

impl Harness {
    fn new(memory: NetMemory) -> Self {
        Harness {
            c: Client::new(HeartbeatConfig::default(), creds(), memory, 7),
            now: 0,
        }
    }

    fn actions(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.c.poll_action()).collect()
    }

    fn events(&mut self) -> Vec<ClientEvent> {
        std::iter::from_fn(|| self.c.poll_event()).collect()
    }

    /// Jumps to the client's next deadline and fires it.
    fn step(&mut self) -> Vec<Action> {
        let t = self.c.poll_timeout().expect("a deadline");
        assert!(t >= self.now, "deadline in the past");
        self.now = t;
        self.c.handle_timeout(t);
        self.actions()
    }

    /// Network up on `key`, main connection connected and logged in; returns its id and the
    /// actions that followed the login.
    fn online(&mut self, key: &str, prior_ms: u32) -> (ConnId, Vec<Action>) {
        self.c.network_up(self.now, key);
        let conn = loop {
            if let Some(Action::Connect { conn, probe: false }) = self.step().first() {
                break *conn;
            }
        };
        self.c.connected(self.now, conn);
        let login = self.actions();
        let [Action::Send {
            frame: Frame::Login(l),
            ..
        }] = &login[..]
        else {
            panic!("expected a login: {login:?}")
        };
        assert_eq!(l.version, PROTOCOL_VERSION);
        assert_eq!(l.network_key, key);
        assert_eq!(l.flags & login_flags::PROBE, 0);
        self.now += 100;
        self.c.handle_frame(self.now, conn, login_ok(prior_ms));
        assert!(self
            .events()
            .iter()
            .any(|e| matches!(e, ClientEvent::Online { .. })));
        (conn, self.actions())
    }
}

fn is_ping(a: &Action, on: ConnId) -> bool {
    matches!(a, Action::Send { conn, frame: Frame::Ping(_) } if *conn == on)
}

#[test]
fn a_missed_pong_gets_one_fast_retry_then_the_link_is_declared_dead() {
    let mut h = Harness::new(NetMemory::default());
    h.c.set_foreground(h.now, true);
    let (main, _) = h.online("wifi", 0);
    assert_eq!(
        h.c.interval_ms(),
        30_000,
        "foreground: short fixed interval"
    );

    // A healthy exchange measures the round trip.
    let a = h.step();
    assert!(is_ping(&a[0], main), "{a:?}");
    h.now += 80;
    h.c.handle_frame(h.now, main, pong());

    // Now the path goes silent.
    let a = h.step();
    assert!(is_ping(&a[0], main));
    let sent = h.now;
    let a = h.step();
    assert!(is_ping(&a[0], main), "one fast retry: {a:?}");
    let retry_after = h.now - sent;
    assert!(
        retry_after <= 2_000,
        "RTT-based, not an interval: {retry_after} ms"
    );
    let a = h.step();
    assert!(a.contains(&Action::Close { conn: main }), "{a:?}");
    let dead_after = h.now - sent;
    assert!(dead_after <= 4_000, "dead after {dead_after} ms");
    assert!(h.events().contains(&ClientEvent::Offline));
    assert_eq!(h.c.dead_links(), 1);
    // Five missed heartbeats would have taken 5 × 30 s; a reconnect is already scheduled.
    let a = h.step();
    assert!(
        matches!(a[..], [Action::Connect { probe: false, .. }]),
        "{a:?}"
    );
    assert!(h.now - sent < 8_000);
}

#[test]
fn a_pong_that_answers_the_retry_keeps_the_connection() {
    let mut h = Harness::new(NetMemory::default());
    h.c.set_foreground(h.now, true);
    let (main, _) = h.online("wifi", 0);
    h.step(); // ping
    let a = h.step(); // retry
    assert!(is_ping(&a[0], main));
    h.now += 100;
    h.c.handle_frame(h.now, main, pong());
    let a = h.step();
    assert!(
        is_ping(&a[0], main),
        "the next regular ping, no reconnect: {a:?}"
    );
    assert_eq!(h.c.dead_links(), 0);
    assert!(h.c.is_online());
}

#[test]
fn go_away_reconnects_within_the_window_and_not_before() {
    let mut h = Harness::new(NetMemory::default());
    h.c.set_foreground(h.now, true);
    assert_eq!(h.c.max_frame(), None);
    let (main, _) = h.online("wifi", 0);
    assert_eq!(
        h.c.max_frame(),
        Some(65_536),
        "LoginOk tells the frame limit"
    );
    let told = h.now;
    h.c.handle_frame(
        h.now,
        main,
        Frame::GoAway(GoAway {
            reason: CloseCode::ServerShutdown,
            may_reconnect: true,
            window_ms: 20_000,
        }),
    );
    // The server closes first: the client still waits for its slot in the window.
    h.now += 500;
    h.c.handle_frame(
        h.now,
        main,
        Frame::Close(Close {
            code: CloseCode::ServerShutdown,
            text: String::new(),
        }),
    );
    let a = h.actions();
    assert!(a.contains(&Action::Close { conn: main }));
    let a = h.step();
    assert!(
        matches!(a[..], [Action::Connect { probe: false, .. }]),
        "{a:?}"
    );
    assert!(h.now < told + 20_000, "within the window: {}", h.now - told);
    // Different seeds pick different slots: the reconnects of many clients spread out.
    let mut slots = std::collections::HashSet::new();
    for seed in 0..20 {
        let mut c = Client::new(
            HeartbeatConfig::default(),
            creds(),
            NetMemory::default(),
            seed,
        );
        c.set_foreground(0, true);
        let mut h = Harness { c, now: 0 };
        let (main, _) = h.online("wifi", 0);
        let told = h.now;
        h.c.handle_frame(
            h.now,
            main,
            Frame::GoAway(GoAway {
                reason: CloseCode::ServerShutdown,
                may_reconnect: true,
                window_ms: 20_000,
            }),
        );
        let t = h.c.poll_timeout().unwrap();
        assert!(t < told + 20_000);
        slots.insert(t - told);
    }
    assert!(slots.len() > 10, "{slots:?}");
}

#[test]
fn a_go_away_moment_is_used_once_and_never_replaces_a_later_backoff() {
    let mut h = Harness::new(NetMemory::default());
    let (main, _) = h.online("wifi", 0);
    h.c.handle_frame(
        h.now,
        main,
        Frame::GoAway(GoAway {
            reason: CloseCode::ServerShutdown,
            may_reconnect: true,
            window_ms: 30_000,
        }),
    );
    let moment = h.c.poll_timeout().unwrap();
    // The network changes before the moment: the reconnect still waits for it.
    h.c.network_up(h.now, "cell");
    assert!(h.actions().contains(&Action::Close { conn: main }));
    assert!(h.c.poll_timeout().unwrap() >= moment);
    let a = h.step();
    assert!(
        matches!(a[..], [Action::Connect { probe: false, .. }]),
        "{a:?}"
    );
    // That connection never comes up. Its failure gets a backoff delay, not the GoAway's
    // moment (long gone): a handled deadline is never followed by one at the same instant.
    let failed_at = h.step();
    assert!(
        failed_at.iter().any(|a| matches!(a, Action::Close { .. })),
        "{failed_at:?}"
    );
    let next = h.c.poll_timeout().unwrap();
    assert!(next > h.now, "woken again at {next} after {}", h.now);
}

#[test]
fn a_back_off_refusal_before_login_reconnects_at_a_random_moment_of_its_window() {
    let mut moments = std::collections::HashSet::new();
    for seed in 0..20 {
        let c = Client::new(
            HeartbeatConfig::default(),
            creds(),
            NetMemory::default(),
            seed,
        );
        let mut h = Harness { c, now: 0 };
        h.c.network_up(h.now, "wifi");
        let conn = loop {
            if let Some(Action::Connect { conn, probe: false }) = h.step().first() {
                break *conn;
            }
        };
        h.c.connected(h.now, conn);
        h.actions();
        // The server is over a limit: GoAway { Overloaded, window } before LoginOk, then EOF.
        h.now += 5;
        let refused_at = h.now;
        h.c.handle_frame(
            h.now,
            conn,
            Frame::GoAway(GoAway {
                reason: CloseCode::Overloaded,
                may_reconnect: true,
                window_ms: 60_000,
            }),
        );
        assert_eq!(h.actions(), vec![Action::Close { conn }]);
        h.c.disconnected(h.now, conn);
        assert!(h.actions().is_empty());
        let at = h.c.poll_timeout().unwrap();
        assert!(at >= refused_at && at < refused_at + 60_000, "{at}");
        let a = h.step();
        assert!(
            matches!(a[..], [Action::Connect { probe: false, .. }]),
            "{a:?}"
        );
        moments.insert(at - refused_at);
    }
    assert!(moments.len() > 10, "spread over the window: {moments:?}");
}

#[test]
fn a_refusal_that_forbids_reconnecting_stops_the_client() {
    let mut h = Harness::new(NetMemory::default());
    h.c.network_up(h.now, "wifi");
    let conn = loop {
        if let Some(Action::Connect { conn, probe: false }) = h.step().first() {
            break *conn;
        }
    };
    h.c.connected(h.now, conn);
    h.actions();
    h.c.handle_frame(
        h.now,
        conn,
        Frame::GoAway(GoAway {
            reason: CloseCode::Overloaded,
            may_reconnect: false,
            window_ms: 0,
        }),
    );
    assert!(h
        .events()
        .iter()
        .any(|e| matches!(e, ClientEvent::Stopped { .. })));
    assert_eq!(h.c.poll_timeout(), None);
}

#[test]
fn a_do_not_reconnect_close_stops_the_client() {
    let mut h = Harness::new(NetMemory::default());
    h.c.network_up(0, "");
    let conn = loop {
        if let Some(Action::Connect { conn, .. }) = h.step().first() {
            break *conn;
        }
    };
    h.c.connected(h.now, conn);
    h.actions();
    h.c.handle_frame(
        h.now,
        conn,
        Frame::Close(Close {
            code: CloseCode::AuthFailed,
            text: String::new(),
        }),
    );
    assert_eq!(h.actions(), vec![Action::Close { conn }]);
    assert!(h.events().contains(&ClientEvent::Stopped {
        code: CloseCode::AuthFailed
    }));
    assert_eq!(h.c.poll_timeout(), None, "nothing more to do");
    h.c.restart(h.now, creds());
    assert!(matches!(h.step()[..], [Action::Connect { .. }]));
}

#[test]
fn a_network_change_reconnects_quickly_and_switches_what_was_learned() {
    let mut memory = NetMemory::default();
    memory.put(
        "cell",
        Learned {
            verified_ms: 600_000,
            failed_ms: 610_000,
        },
    );
    let mut h = Harness::new(memory);
    let (main, _) = h.online("wifi", 0);
    assert_eq!(
        h.c.interval_ms(),
        45_000,
        "nothing known on wifi: the safe interval"
    );
    let changed = h.now;
    h.c.network_up(h.now, "cell");
    assert!(h.actions().contains(&Action::Close { conn: main }));
    let a = h.step();
    assert!(matches!(a[..], [Action::Connect { probe: false, .. }]));
    assert!(h.now - changed < 2_000, "jittered, but quick");
    // The remembered bounds apply at once: 600 s − 2 % margin − (no lateness yet).
    assert_eq!(h.c.interval_ms(), 588_000);
    // Network down: everything closes and nothing reconnects.
    h.c.network_down(h.now);
    assert_eq!(h.c.poll_timeout(), None);
}

#[test]
fn background_learning_probes_on_separate_connections() {
    let mut h = Harness::new(NetMemory::default());
    let (main, after_login) = h.online("wifi", 0);
    let probes: Vec<ConnId> = after_login
        .iter()
        .filter_map(|a| match a {
            Action::Connect { conn, probe: true } => Some(*conn),
            _ => None,
        })
        .collect();
    assert_eq!(probes.len(), 4, "{after_login:?}");
    assert!(!probes.contains(&main));
    // Play the first probe through: login with the PROBE flag, then Probe { delay }.
    let p = probes[0];
    h.c.connected(h.now, p);
    let a = h.actions();
    let [Action::Send {
        frame: Frame::Login(l),
        ..
    }] = &a[..]
    else {
        panic!("{a:?}")
    };
    assert_ne!(l.flags & login_flags::PROBE, 0);
    h.c.handle_frame(h.now, p, login_ok(0));
    let a = h.actions();
    let [Action::Send {
        conn,
        frame: Frame::Probe(Probe { delay_ms }),
    }] = a[..]
    else {
        panic!("{a:?}")
    };
    assert_eq!(conn, p);
    assert_eq!(delay_ms, 67_500, "45 s × 1.5");
    h.now += u64::from(delay_ms) + 50;
    h.c.handle_frame(h.now, p, Frame::ProbeFire);
    assert!(h.actions().contains(&Action::Close { conn: p }));
    assert_eq!(h.c.learner().verified_ms(), 67_500);
    assert_eq!(h.c.interval_ms(), 67_500 - 1_350);
    assert!(h.events().contains(&ClientEvent::IntervalChanged {
        interval_ms: 66_150
    }));
    // Persistable.
    let json = serde_json::to_string(h.c.memory()).unwrap();
    let mut back: NetMemory = serde_json::from_str(&json).unwrap();
    assert_eq!(back.get("wifi").unwrap().verified_ms, 67_500);
}

#[test]
fn a_converged_network_reports_and_does_not_probe() {
    let mut memory = NetMemory::default();
    memory.put(
        "wifi",
        Learned {
            verified_ms: 300_000,
            failed_ms: 305_000,
        },
    );
    let mut h = Harness::new(memory);
    let (main, after_login) = h.online("wifi", 0);
    assert!(
        !after_login
            .iter()
            .any(|a| matches!(a, Action::Connect { probe: true, .. })),
        "{after_login:?}"
    );
    assert!(after_login.iter().any(|a| matches!(a,
        Action::Send { conn, frame: Frame::NetReport(r) } if *conn == main && r.learned_ms == 300_000)));
}

#[test]
fn a_server_prior_is_verified_by_probes_before_the_main_connection_uses_it() {
    let mut h = Harness::new(NetMemory::default());
    let (_, after_login) = h.online("wifi", 600_000);
    assert_eq!(h.c.interval_ms(), 45_000, "not trusted blindly");
    let probes = after_login
        .iter()
        .filter(|a| matches!(a, Action::Connect { probe: true, .. }))
        .count();
    assert_eq!(probes, 4, "around the prior: 0.8× to 1.1×");
}
