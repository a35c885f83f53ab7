//! No secret reaches the log: token secrets, backend secrets, API keys, the webhook's secret and
//! tokens, through logins that work and fail, API calls with right and wrong keys, upstream
//! messages to a webhook, reloads that work and fail, and configurations refused at start. The
//! server logs at `debug`, its most talkative level in a release build.

use serde_json::json;
use tether_proto::token::{Minter, Secret};
use tether_proto::{Frame, Login, Upstream, PROTOCOL_V2, PROTOCOL_VERSION};
use tether_tests::http::{get, post};
use tether_tests::{
    backend_minter, expiry, minter, Client, Server, Settings, BACKEND_SECRET, SECRET,
};

const OLD_KEY: &str = "QZXold-api-key-0123456789";
const NEW_KEY: &str = "QZXnew-api-key-0123456789";
const WRONG_KEY: &str = "QZXwrong-api-key-0123456789";
const NEW_SECRET: &str = "QZXrotated-secret-0123456789";
const HOOK_SECRET: &str = "QZXwebhook-secret-0123456789";
const FORGED: &str = "QZXforged-token-0123456789";
const PLACEHOLDER: &str = "replace-with-QZX-0123456789";

/// Panics naming the first of `secrets` found in `log`.
fn assert_absent(log: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(!log.contains(s), "{s:?} is in the log:\n{log}");
    }
    // Every test secret here starts so: a piece of one (a prefix shown "to help") counts too.
    assert!(
        !log.contains("QZX"),
        "a piece of a secret is in the log:\n{log}"
    );
}

/// Sends a login with `token` and returns the first answer.
fn login(server: &Server, user: &str, token: String) -> Frame {
    let mut c = Client::connect(server.addr).unwrap();
    c.send(&Frame::Login(Login {
        version: PROTOCOL_VERSION,
        flags: 0,
        user: user.into(),
        device: "d".into(),
        token,
        heartbeat_ms: 60_000,
        network_key: String::new(),
    }))
    .unwrap();
    c.recv().unwrap()
}

#[test]
fn a_running_server_logs_no_secret_and_no_token() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::write(&secrets, format!("{SECRET}\n")).unwrap();
    let mut settings = Settings {
        secrets_file: Some(secrets.clone()),
        api_keys: vec![OLD_KEY.into()],
        // A webhook nobody answers: each message fails and is logged.
        extra: format!(
            "[upstream]\nsink = \"webhook\"\nwebhook_url = \"http://127.0.0.1:9/up\"\n\
             webhook_secret = \"{HOOK_SECRET}\"\ntimeout_ms = 2000\n"
        ),
        ..Settings::default()
    };
    let server = Server::start(&settings).unwrap();
    let mut tokens = Vec::new();

    // Logins: a good one, a forged token, a token signed with a secret the server lacks, a
    // backend.
    let good = minter().client("ann", "d", expiry()).unwrap();
    tokens.push(good.clone());
    assert!(matches!(login(&server, "ann", good), Frame::LoginOk(_)));
    assert!(matches!(
        login(&server, "ann", FORGED.into()),
        Frame::Close(_)
    ));
    let foreign = Minter::new(&Secret::new(NEW_SECRET.as_bytes().to_vec()).unwrap())
        .client("ann", "d", expiry())
        .unwrap();
    tokens.push(foreign.clone());
    assert!(matches!(login(&server, "ann", foreign), Frame::Close(_)));
    tokens.push(backend_minter().backend("svc", expiry()).unwrap());
    server.backend("svc").unwrap();

    // An upstream message to the webhook, which fails.
    let (mut c, _) = Client::login_version(server.addr, "bob", "d", PROTOCOL_V2).unwrap();
    c.send(&Frame::Upstream(Upstream {
        client_id: 1,
        flags: 0,
        payload: bytes::Bytes::from_static(b"hello"),
    }))
    .unwrap();
    assert!(matches!(c.recv().unwrap(), Frame::UpstreamResult(_)));

    // The API with a wrong key and the right one.
    let push = json!({"user": "ann", "payload": "x"});
    let bearer = |k: &str| format!("Bearer {k}");
    let wrong = post(
        server.api,
        "/api/push",
        &[("authorization", &bearer(WRONG_KEY))],
        &push,
    )
    .unwrap();
    assert_eq!(wrong.status, 401);
    let stats = get(
        server.api,
        "/api/stats",
        &[("authorization", &bearer(OLD_KEY))],
    )
    .unwrap();
    assert_eq!(stats.status, 200);

    // A reload that works, and one refused for a placeholder.
    std::fs::write(&secrets, format!("{NEW_SECRET}\n{SECRET}\n")).unwrap();
    settings.api_keys = vec![NEW_KEY.into()];
    std::fs::write(server.config_path(), settings.toml()).unwrap();
    server.sighup();
    server.wait_log("secrets and API keys reloaded");
    std::fs::write(&secrets, format!("{PLACEHOLDER}\n")).unwrap();
    server.sighup();
    server.wait_log("reload failed");
    assert!(server
        .log()
        .contains("auth.secrets[0] is a template placeholder"));

    let mut hidden = vec![
        SECRET,
        BACKEND_SECRET,
        OLD_KEY,
        NEW_KEY,
        WRONG_KEY,
        NEW_SECRET,
        HOOK_SECRET,
        FORGED,
        PLACEHOLDER,
    ];
    hidden.extend(tokens.iter().map(String::as_str));
    assert_absent(&server.log(), &hidden);
}

#[test]
fn a_refused_configuration_does_not_show_its_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short");
    std::fs::write(&short, "QZXshort\n").unwrap();
    let cases = [
        // A secret of digits where a string belongs: the type error must not show it.
        Settings {
            extra: "[upstream]\nwebhook_secret = 8723498723409823740\n".into(),
            ..Settings::default()
        },
        // A line that is not TOML: its text must not be shown.
        Settings {
            extra: "[upstream]\nwebhook_secret = \"QZXunterminated-0123456789\n".into(),
            ..Settings::default()
        },
        // A short secret on a public listener, a placeholder on loopback.
        Settings {
            listen: "0.0.0.0:0".parse().unwrap(),
            secrets_file: Some(short.clone()),
            ..Settings::default()
        },
        Settings {
            api_keys: vec![PLACEHOLDER.into()],
            ..Settings::default()
        },
    ];
    for settings in &cases {
        let (status, log) = Server::start_refused(settings).unwrap();
        assert!(!status.success(), "{log}");
        assert!(log.contains("invalid configuration"), "{log}");
        assert_absent(&log, &["8723498723409823740", PLACEHOLDER]);
    }
}
