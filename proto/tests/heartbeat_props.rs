//! Whatever the network, the server and the app do, in whatever order, the client heartbeat
//! machine neither panics nor asks to be woken in a loop.

use proptest::prelude::*;
use tether_proto::heartbeat::{Action, Client, ConnId, Credentials, HeartbeatConfig, NetMemory};
use tether_proto::{Close, CloseCode, Frame, GoAway, Kick, LoginOk, Pong};

#[derive(Clone, Debug)]
enum Input {
    /// Jump to the client's deadline (or this far) and fire it.
    Wait(u64),
    /// The n-th connection the client asked for (modulo) connects.
    Connected(usize),
    /// ... closes.
    Disconnected(usize),
    /// ... receives this frame.
    Receive(usize, u8),
    NetworkUp(u8),
    NetworkDown,
    Foreground(bool),
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        6 => (0u64..4_000_000).prop_map(Input::Wait),
        3 => any::<usize>().prop_map(Input::Connected),
        1 => any::<usize>().prop_map(Input::Disconnected),
        5 => (any::<usize>(), 0u8..10).prop_map(|(c, f)| Input::Receive(c, f)),
        1 => (0u8..3).prop_map(Input::NetworkUp),
        1 => Just(Input::NetworkDown),
        1 => any::<bool>().prop_map(Input::Foreground),
    ]
}

fn frame(kind: u8) -> Frame {
    match kind {
        0 | 1 => Frame::LoginOk(LoginOk {
            session_id: 1,
            server_epoch: 1,
            min_lease_ms: 1_000,
            max_lease_ms: 1_800_000,
            lease_multiplier_pct: 150,
            grace_ms: 10_000,
            prior_ms: if kind == 1 { 300_000 } else { 0 },
            max_frame: 65_536,
        }),
        2 | 3 => Frame::Pong(Pong { deadline_ms: 1 }),
        4 => Frame::ProbeFire,
        5 | 8 => Frame::Close(Close {
            // 8: a code in the do-not-reconnect range.
            code: if kind == 5 {
                CloseCode::ServerShutdown
            } else {
                CloseCode::AuthFailed
            },
            text: String::new(),
        }),
        6 => Frame::Kick(Kick {
            reason: CloseCode::Kicked,
            may_reconnect: true,
            jitter_ms: 5_000,
        }),
        7 => Frame::GoAway(GoAway {
            reason: CloseCode::ServerShutdown,
            may_reconnect: true,
            window_ms: 30_000,
        }),
        _ => Frame::Push(tether_proto::Push {
            id: 1,
            payload: bytes::Bytes::new(),
        }),
    }
}

proptest! {
    #[test]
    fn any_input_sequence_keeps_time_moving(inputs in prop::collection::vec(input(), 0..80)) {
        let creds = Credentials { user: "u".into(), device: "d".into(), token: "t".into() };
        let cfg = HeartbeatConfig::default();
        let most = usize::from(cfg.parallel_probes);
        let mut c = Client::new(cfg, creds, NetMemory::default(), 9);
        let mut now = 0u64;
        let mut conns: Vec<ConnId> = Vec::new();
        c.network_up(now, "a");
        for input in inputs {
            let pick = |i: usize, conns: &[ConnId]| (!conns.is_empty()).then(|| conns[i % conns.len()]);
            match input {
                Input::Wait(max) => {
                    let Some(t) = c.poll_timeout() else { continue };
                    now = now.max(t.min(now + max));
                    let due = t <= now;
                    c.handle_timeout(now);
                    if due {
                        // A deadline that was due is handled: the next one is later.
                        prop_assert!(c.poll_timeout().map_or(true, |n| n > now),
                            "woken again at {:?} after {now}", c.poll_timeout());
                    }
                }
                Input::Connected(i) => if let Some(conn) = pick(i, &conns) { c.connected(now, conn) },
                Input::Disconnected(i) => if let Some(conn) = pick(i, &conns) { c.disconnected(now, conn) },
                Input::Receive(i, f) => if let Some(conn) = pick(i, &conns) { c.handle_frame(now, conn, frame(f)) },
                Input::NetworkUp(k) => c.network_up(now, ["a", "b", ""][k as usize]),
                Input::NetworkDown => c.network_down(now),
                Input::Foreground(f) => c.set_foreground(now, f),
            }
            while let Some(a) = c.poll_action() {
                if let Action::Connect { conn, .. } = a {
                    conns.push(conn);
                }
            }
            while c.poll_event().is_some() {}
            // Probes run in parallel, never more than the configuration allows.
            prop_assert!(c.probes_in_flight() <= most, "{} probes in flight", c.probes_in_flight());
        }
    }
}
