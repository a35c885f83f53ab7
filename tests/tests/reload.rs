//! SIGHUP rotates token secrets and API keys without dropping a connection; a broken reload
//! keeps the running configuration, all of it.

use serde_json::json;
use tether_proto::token::{Minter, Secret};
use tether_proto::{CloseCode, Frame, Login, Refresh, PROTOCOL_VERSION};
use tether_tests::http::{get, post};
use tether_tests::{eventually, expiry, Client, Server, Settings, SECRET};

const NEW_SECRET: &str = "rotated-integration-secret-77aa";
const OLD_KEY: &str = "old-api-key-0123456789";
const NEW_KEY: &str = "new-api-key-0123456789";

/// Logs `user` in with a token minted from `secret`; the first frame answered.
fn login_with(server: &Server, secret: &str, user: &str) -> (Client, Frame) {
    let minter = Minter::new(&Secret::new(secret.as_bytes().to_vec()).unwrap());
    let mut c = Client::connect(server.addr).unwrap();
    c.send(&Frame::Login(Login {
        version: PROTOCOL_VERSION,
        flags: 0,
        user: user.into(),
        device: "d".into(),
        token: minter.client(user, "d", expiry()).unwrap(),
        heartbeat_ms: 60_000,
        network_key: String::new(),
    }))
    .unwrap();
    let first = c.recv().unwrap();
    (c, first)
}

/// Waits until every shard has taken `n` verifier reloads (live counters from /api/stats).
fn wait_reloads(server: &Server, key: &str, n: u64) {
    let auth = format!("Bearer {key}");
    eventually(|| {
        let resp = get(server.api, "/api/stats", &[("authorization", &auth)]).unwrap();
        if resp.status != 200 {
            return Err(format!(
                "shards never reached {n} reloads: /api/stats answered {}",
                resp.status
            ));
        }
        let stats = resp.json();
        let reloads: Vec<_> = stats["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["counters"]["auth_reloads"].as_u64())
            .collect();
        if reloads.iter().all(|r| *r == Some(n)) {
            Ok(())
        } else {
            Err(format!(
                "shards never reached {n} reloads: they count {reloads:?}"
            ))
        }
    });
}

#[test]
fn sighup_rotates_secrets_and_api_keys_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::write(&secrets, format!("{SECRET}\n")).unwrap();
    let mut settings = Settings {
        secrets_file: Some(secrets.clone()),
        api_keys: vec![OLD_KEY.into()],
        ..Settings::default()
    };
    let server = Server::start(&settings).unwrap();
    let (mut early, ok) = login_with(&server, SECRET, "early");
    assert!(matches!(ok, Frame::LoginOk(_)), "{ok:?}");
    let (_, refused) = login_with(&server, NEW_SECRET, "too-soon");
    assert!(
        matches!(refused, Frame::Close(ref c) if c.code == CloseCode::AuthFailed),
        "{refused:?}"
    );

    // Rotation: the new secret first, the old one still accepted; a new API key.
    std::fs::write(&secrets, format!("{NEW_SECRET}\n{SECRET}\n")).unwrap();
    settings.api_keys = vec![NEW_KEY.into()];
    std::fs::write(server.config_path(), settings.toml()).unwrap();
    server.sighup();
    wait_reloads(&server, NEW_KEY, 1);
    let (_, ok) = login_with(&server, NEW_SECRET, "rotated");
    assert!(matches!(ok, Frame::LoginOk(_)), "{ok:?}");
    let (_, ok) = login_with(&server, SECRET, "still-old");
    assert!(matches!(ok, Frame::LoginOk(_)), "{ok:?}");
    let push = json!({"user": "early", "payload": "after reload"});
    let old = format!("Bearer {OLD_KEY}");
    assert_eq!(
        post(server.api, "/api/push", &[("authorization", &old)], &push)
            .unwrap()
            .status,
        401
    );
    let new = format!("Bearer {NEW_KEY}");
    let resp = post(server.api, "/api/push", &[("authorization", &new)], &push).unwrap();
    assert_eq!(resp.json()["results"][0]["outcome"], "delivered");
    match early.recv().unwrap() {
        Frame::Push(p) => assert_eq!(&p.payload[..], b"after reload"),
        other => panic!("the connection from before the reload got {other:?}"),
    }

    // The old secret retired: no login with it, and the connection it verified is told its
    // token ends (auth.revoked_grace_s), and stays by refreshing with a token of the new one.
    std::fs::write(&secrets, format!("{NEW_SECRET}\n")).unwrap();
    server.sighup();
    wait_reloads(&server, NEW_KEY, 2);
    let (_, refused) = login_with(&server, SECRET, "retired");
    assert!(
        matches!(refused, Frame::Close(ref c) if c.code == CloseCode::AuthFailed),
        "{refused:?}"
    );
    match early.recv().unwrap() {
        Frame::TokenNotice(_) => {}
        other => panic!("the connection of the retired secret got {other:?}"),
    }
    let minter = Minter::new(&Secret::new(NEW_SECRET.as_bytes().to_vec()).unwrap());
    early
        .send(&Frame::Refresh(Refresh {
            token: minter.client("early", "d", expiry()).unwrap(),
        }))
        .unwrap();
    assert_eq!(early.recv().unwrap(), Frame::Refreshed);

    // A broken reload (no secret left) changes nothing.
    std::fs::write(&secrets, "# nothing\n").unwrap();
    server.sighup();
    server.wait_log("reload failed");
    wait_reloads(&server, NEW_KEY, 2);
    let (_, ok) = login_with(&server, NEW_SECRET, "after-bad-reload");
    assert!(matches!(ok, Frame::LoginOk(_)), "{ok:?}");
    early
        .ping(60_000)
        .expect("the first connection survived every reload, refreshed once");
}

#[test]
fn a_reload_refused_for_any_part_changes_no_part() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::write(&secrets, format!("{SECRET}\n")).unwrap();
    let mut settings = Settings {
        secrets_file: Some(secrets.clone()),
        api_keys: vec![OLD_KEY.into()],
        ..Settings::default()
    };
    let server = Server::start(&settings).unwrap();
    // New secrets and keys that would be fine, beside a log filter that is not: the whole
    // reload is refused, the secrets and keys too.
    std::fs::write(&secrets, format!("{NEW_SECRET}\n")).unwrap();
    settings.api_keys = vec![NEW_KEY.into()];
    settings.extra = "[log]\nfilter = \"tether=notalevel\"\n".into();
    std::fs::write(server.config_path(), settings.toml()).unwrap();
    server.sighup();
    server.wait_log("reload failed");
    let (_, refused) = login_with(&server, NEW_SECRET, "new-secret");
    assert!(
        matches!(refused, Frame::Close(ref c) if c.code == CloseCode::AuthFailed),
        "the new secret was taken from a refused reload: {refused:?}"
    );
    let (_, ok) = login_with(&server, SECRET, "old-secret");
    assert!(matches!(ok, Frame::LoginOk(_)), "{ok:?}");
    let stats = |key: &str| {
        get(
            server.api,
            "/api/stats",
            &[("authorization", &format!("Bearer {key}"))],
        )
        .unwrap()
        .status
    };
    assert_eq!(stats(OLD_KEY), 200);
    assert_eq!(stats(NEW_KEY), 401);
    assert!(!server.log().contains("secrets and API keys reloaded"));
}
