//! The golden vectors of `docs/protocol.md`, checked against the codec and the token minter.
//!
//! The spec's tables are the test table: each row's id names a value built by [`frame`],
//! [`invalid`] or [`token`] below (the only code that calls the API under test), and the row's
//! bytes are what encoding must produce and decoding must accept. A row whose id is unknown, a
//! value with no row, or a frame type without any row fails the test.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use bytes::{Bytes, BytesMut};
use tether_proto::token::{Minter, Secret};
use tether_proto::*;

const SPEC: &str = include_str!("../../docs/protocol.md");

/// One row of a golden table: its cells, trimmed and without backticks.
struct Row {
    /// Line number in the spec, for error messages.
    line: usize,
    /// The cells, left to right.
    cells: Vec<String>,
}

/// The rows of the table that follows `<!-- golden:NAME -->` in the spec.
fn table(name: &str) -> Vec<Row> {
    let marker = format!("<!-- golden:{name} -->");
    let mut lines = SPEC
        .lines()
        .enumerate()
        .skip_while(|(_, l)| l.trim() != marker);
    assert!(lines.next().is_some(), "docs/protocol.md has no {marker}");
    let rows: Vec<Row> = lines
        .skip_while(|(_, l)| l.trim().is_empty())
        .take_while(|(_, l)| l.trim_start().starts_with('|'))
        .skip(2) // header and separator
        .map(|(i, l)| Row {
            line: i + 1,
            cells: l
                .trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().trim_matches('`').to_string())
                .collect(),
        })
        .collect();
    assert!(!rows.is_empty(), "the table after {marker} has no rows");
    rows
}

fn hex(cell: &str, line: usize) -> Vec<u8> {
    cell.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap_or_else(|_| panic!("line {line}: bad hex {b:?}")))
        .collect()
}

/// Fails unless the table's ids are exactly `known`, each once.
fn check_ids(name: &str, rows: &[Row], known: &[&str]) {
    let mut seen = BTreeSet::new();
    for row in rows {
        assert!(
            known.contains(&row.cells[0].as_str()),
            "line {}: unknown id {:?}",
            row.line,
            row.cells[0]
        );
        assert!(
            seen.insert(row.cells[0].clone()),
            "line {}: id {:?} twice",
            row.line,
            row.cells[0]
        );
    }
    for id in known {
        assert!(seen.contains(*id), "golden:{name} has no row for {id:?}");
    }
}

const FRAME_IDS: &[&str] = &[
    "login",
    "login-probe",
    "login-ok",
    "ping-zero",
    "ping",
    "ping-max",
    "pong",
    "push",
    "push-empty",
    "push-ack",
    "send",
    "send-result-delivered",
    "send-result-offline",
    "send-result-refused",
    "send-result-refused-unknown",
    "kick",
    "go-away",
    "go-away-back-off",
    "close",
    "close-unknown-code",
    "probe",
    "probe-fire",
    "net-report",
    "backend-push",
    "push-result-delivered",
    "push-result-acked",
    "push-result-shutting-down",
];

/// The value of each `golden:frames` row.
fn frame(id: &str) -> Frame {
    match id {
        "login" => Frame::Login(Login {
            version: PROTOCOL_V1,
            flags: 0,
            user: "alice".into(),
            device: "phone".into(),
            token: "t0k".into(),
            heartbeat_ms: 240_000,
            network_key: String::new(),
        }),
        "login-probe" => Frame::Login(Login {
            version: PROTOCOL_V1,
            flags: login_flags::PROBE,
            user: "alice".into(),
            device: "phone".into(),
            token: "t0k".into(),
            heartbeat_ms: 0,
            network_key: "wifi:5f3a".into(),
        }),
        "login-ok" => Frame::LoginOk(LoginOk {
            session_id: 42,
            server_epoch: 1_767_225_600_123,
            min_lease_ms: 30_000,
            max_lease_ms: 1_680_000,
            lease_multiplier_pct: 150,
            grace_ms: 10_000,
            prior_ms: 0,
            max_frame: 65_536,
        }),
        "ping-zero" => Frame::Ping(Ping { lease_ms: 0 }),
        "ping" => Frame::Ping(Ping { lease_ms: 240_000 }),
        "ping-max" => Frame::Ping(Ping {
            lease_ms: limits::HEARTBEAT_MS_MAX,
        }),
        "pong" => Frame::Pong(Pong {
            deadline_ms: 370_000,
        }),
        "push" => Frame::Push(Push {
            id: 1,
            payload: Bytes::from_static(b"hi"),
        }),
        "push-empty" => Frame::Push(Push {
            id: 1 << 40,
            payload: Bytes::new(),
        }),
        "push-ack" => Frame::PushAck(PushAck { id: 1 }),
        "send" => Frame::Send(Send {
            to: "bob".into(),
            client_id: 7,
            payload: Bytes::from_static(b"yo"),
        }),
        "send-result-delivered" => Frame::SendResult(SendResult {
            client_id: 7,
            status: PushStatus::Delivered(2),
        }),
        "send-result-offline" => Frame::SendResult(SendResult {
            client_id: 7,
            status: PushStatus::Offline,
        }),
        "send-result-refused" => Frame::SendResult(SendResult {
            client_id: 7,
            status: PushStatus::Refused(RefuseReason::SlowConsumer),
        }),
        "send-result-refused-unknown" => Frame::SendResult(SendResult {
            client_id: 7,
            status: PushStatus::Refused(RefuseReason::Other(200)),
        }),
        "kick" => Frame::Kick(Kick {
            reason: CloseCode::Replaced,
            may_reconnect: false,
            jitter_ms: 0,
        }),
        "go-away" => Frame::GoAway(GoAway {
            reason: CloseCode::ServerShutdown,
            may_reconnect: true,
            window_ms: 30_000,
        }),
        "go-away-back-off" => Frame::GoAway(GoAway {
            reason: CloseCode::Overloaded,
            may_reconnect: true,
            window_ms: 30_000,
        }),
        "close" => Frame::Close(Close {
            code: CloseCode::ProtocolError,
            text: "bad frame".into(),
        }),
        "close-unknown-code" => Frame::Close(Close {
            code: CloseCode::Other(1500),
            text: String::new(),
        }),
        "probe" => Frame::Probe(Probe { delay_ms: 300_000 }),
        "probe-fire" => Frame::ProbeFire,
        "net-report" => Frame::NetReport(NetReport {
            learned_ms: 285_000,
        }),
        "backend-push" => Frame::BackendPush(BackendPush {
            id: 9,
            flags: push_flags::WANT_ACK,
            user: "alice".into(),
            payload: Bytes::from_static(b"hello"),
        }),
        "push-result-delivered" => Frame::PushResult(PushResult {
            id: 9,
            status: PushStatus::Delivered(1),
        }),
        "push-result-acked" => Frame::PushResult(PushResult {
            id: 9,
            status: PushStatus::Acked,
        }),
        "push-result-shutting-down" => Frame::PushResult(PushResult {
            id: 9,
            status: PushStatus::Refused(RefuseReason::ShuttingDown),
        }),
        other => panic!("no value for golden frame {other:?}"),
    }
}

/// The spec's readable form of a frame: its message struct's `Debug`.
fn describe(frame: &Frame) -> String {
    match frame {
        Frame::Login(m) => format!("{m:?}"),
        Frame::LoginOk(m) => format!("{m:?}"),
        Frame::Ping(m) => format!("{m:?}"),
        Frame::Pong(m) => format!("{m:?}"),
        Frame::Push(m) => format!("{m:?}"),
        Frame::PushAck(m) => format!("{m:?}"),
        Frame::Send(m) => format!("{m:?}"),
        Frame::SendResult(m) => format!("{m:?}"),
        Frame::Kick(m) => format!("{m:?}"),
        Frame::GoAway(m) => format!("{m:?}"),
        Frame::Close(m) => format!("{m:?}"),
        Frame::Probe(m) => format!("{m:?}"),
        Frame::ProbeFire => "ProbeFire".into(),
        Frame::NetReport(m) => format!("{m:?}"),
        Frame::BackendPush(m) => format!("{m:?}"),
        Frame::PushResult(m) => format!("{m:?}"),
        Frame::Upstream(m) => format!("{m:?}"),
        Frame::UpstreamResult(m) => format!("{m:?}"),
        Frame::UpstreamDeliver(m) => format!("{m:?}"),
        Frame::UpstreamAnswer(m) => format!("{m:?}"),
        Frame::Message(m) => format!("{m:?}"),
        Frame::TokenNotice(m) => format!("{m:?}"),
        Frame::Refresh(m) => format!("{m:?}"),
        Frame::Refreshed => "Refreshed".into(),
        Frame::Ignored { kind } => format!("Ignored {{ kind: {kind} }}"),
    }
}

const FRAME_V2_IDS: &[&str] = &[
    "login-v2",
    "login-backend-upstream",
    "upstream",
    "upstream-result-accepted",
    "upstream-result-rejected",
    "upstream-result-no-backend",
    "upstream-deliver",
    "upstream-answer",
    "upstream-answer-rejected",
    "message",
    "send-result-accepted",
    "token-notice",
    "refresh",
    "refreshed",
];

/// The value of each `golden:frames-v2` row.
fn frame_v2(id: &str) -> Frame {
    match id {
        "login-v2" => Frame::Login(Login {
            version: PROTOCOL_V2,
            flags: 0,
            user: "alice".into(),
            device: "phone".into(),
            token: "t0k".into(),
            heartbeat_ms: 240_000,
            network_key: String::new(),
        }),
        "login-backend-upstream" => Frame::Login(Login {
            version: PROTOCOL_V2,
            flags: login_flags::UPSTREAM,
            user: "chat".into(),
            device: String::new(),
            token: "t0k".into(),
            heartbeat_ms: 60_000,
            network_key: String::new(),
        }),
        "upstream" => Frame::Upstream(Upstream {
            client_id: 7,
            flags: 0,
            payload: Bytes::from_static(b"hi bob"),
        }),
        "upstream-result-accepted" => Frame::UpstreamResult(UpstreamResult {
            client_id: 7,
            status: UpstreamStatus::Accepted,
            reply: Bytes::from_static(b"seq=42"),
        }),
        "upstream-result-rejected" => Frame::UpstreamResult(UpstreamResult {
            client_id: 7,
            status: UpstreamStatus::Refused(RefuseReason::Rejected),
            reply: Bytes::from_static(b"blocked"),
        }),
        "upstream-result-no-backend" => Frame::UpstreamResult(UpstreamResult {
            client_id: 8,
            status: UpstreamStatus::Refused(RefuseReason::NoBackend),
            reply: Bytes::new(),
        }),
        "upstream-deliver" => Frame::UpstreamDeliver(UpstreamDeliver {
            id: 1,
            user: "alice".into(),
            device: "phone".into(),
            session_id: 42,
            client_id: 7,
            payload: Bytes::from_static(b"hi bob"),
        }),
        "upstream-answer" => Frame::UpstreamAnswer(UpstreamAnswer {
            id: 1,
            accepted: true,
            reply: Bytes::from_static(b"seq=42"),
        }),
        "upstream-answer-rejected" => Frame::UpstreamAnswer(UpstreamAnswer {
            id: 1,
            accepted: false,
            reply: Bytes::from_static(b"blocked"),
        }),
        "message" => Frame::Message(Message {
            id: 3,
            from_user: "alice".into(),
            from_device: "phone".into(),
            payload: Bytes::from_static(b"yo"),
        }),
        "send-result-accepted" => Frame::SendResult(SendResult {
            client_id: 7,
            status: PushStatus::Accepted,
        }),
        "token-notice" => Frame::TokenNotice(TokenNotice {
            expires_in_ms: 300_000,
        }),
        "refresh" => Frame::Refresh(Refresh {
            token: "t0k".into(),
        }),
        "refreshed" => Frame::Refreshed,
        other => panic!("no value for golden v2 frame {other:?}"),
    }
}

#[test]
fn version_2_frames_encode_and_decode_exactly_as_the_spec_says() {
    let kinds = check_frame_table("frames-v2", FRAME_V2_IDS, frame_v2, PROTOCOL_V2);
    let new: BTreeSet<u8> = (0..=u8::MAX)
        .filter(|&k| codec::kind_since(k) == Some(PROTOCOL_V2))
        .collect();
    assert!(
        new.is_subset(&kinds),
        "every version-2 frame type needs a golden row"
    );
}

#[test]
fn every_version_1_vector_reads_the_same_in_version_2() {
    for row in table("frames") {
        let value = frame(&row.cells[0]);
        let mut input = BytesMut::from(&hex(&row.cells[2], row.line)[..]);
        assert_eq!(
            decode_version(&mut input, DEFAULT_MAX_FRAME, PROTOCOL_V2),
            Ok(Some(value)),
            "line {}",
            row.line
        );
    }
}

const VERSION_IDS: &[&str] = &[
    "trailing-field-v1",
    "trailing-field-v2",
    "extension-frame-v1",
    "extension-frame-v2",
    "upstream-in-v1",
    "message-in-v1",
    "accepted-status-in-v1",
    "login-v3-trailing",
    "upstream-status-unknown",
    "answer-not-bool",
    "reserved-type-v2",
    "accepted-push-result",
    "refresh-empty-token",
];

#[test]
fn growth_rules_decode_as_the_spec_says() {
    let rows = table("versions");
    check_ids("versions", &rows, VERSION_IDS);
    for row in &rows {
        let [_, version, bytes, expected] = &row.cells[..] else {
            panic!("line {}: expected 4 cells, got {:?}", row.line, row.cells)
        };
        let version: u8 = version.parse().expect("a version number");
        let input = hex(bytes, row.line);
        let mut buf = BytesMut::from(&input[..]);
        let got = match decode_version(&mut buf, DEFAULT_MAX_FRAME, version) {
            Ok(Some(f)) => {
                assert!(buf.is_empty(), "line {}: bytes left over", row.line);
                describe(&f)
            }
            Ok(None) => "incomplete".into(),
            Err(e) => error_name(&e),
        };
        assert_eq!(&got, expected, "line {}", row.line);
    }
}

fn error_name(e: &DecodeError) -> String {
    let variant = match e {
        DecodeError::Oversized { .. } => "Oversized",
        DecodeError::UnknownType(_) => "UnknownType",
        DecodeError::BadUtf8 => "BadUtf8",
        DecodeError::Malformed(_) => "Malformed",
    };
    format!("{variant} → {}", e.close_code().to_u16())
}

/// Checks every row of frame table `name` (ids exactly `ids`, values from `value`) against
/// the codec with the rules of `version`; returns the frame types the rows cover.
fn check_frame_table(
    name: &str,
    ids: &[&str],
    value: fn(&str) -> Frame,
    version: u8,
) -> BTreeSet<u8> {
    let rows = table(name);
    check_ids(name, &rows, ids);
    let mut kinds = BTreeSet::new();
    for row in &rows {
        let [id, shown, bytes] = &row.cells[..] else {
            panic!("line {}: expected 3 cells, got {:?}", row.line, row.cells)
        };
        let value = value(id);
        let bytes = hex(bytes, row.line);
        assert_eq!(shown, &describe(&value), "line {}: value column", row.line);
        let mut out = BytesMut::new();
        encode(&value, &mut out).unwrap_or_else(|e| panic!("line {}: {e}", row.line));
        assert_eq!(out[..], bytes[..], "line {}: encoding of {id}", row.line);
        let mut input = BytesMut::from(&bytes[..]);
        assert_eq!(
            decode_version(&mut input, DEFAULT_MAX_FRAME, version),
            Ok(Some(value)),
            "line {}",
            row.line
        );
        assert!(input.is_empty(), "line {}: bytes left over", row.line);
        kinds.insert(bytes[0]);
    }
    kinds
}

#[test]
fn frames_encode_and_decode_exactly_as_the_spec_says() {
    let kinds = check_frame_table("frames", FRAME_IDS, frame, PROTOCOL_V1);
    let all: BTreeSet<u8> = (0..=u8::MAX).filter(|&k| codec::is_known_kind(k)).collect();
    assert_eq!(kinds, all, "every frame type needs a golden row");
}

#[test]
fn the_back_off_refusal_is_the_spec_row_byte_for_byte() {
    let row = table("frames")
        .into_iter()
        .find(|r| r.cells[0] == "go-away-back-off")
        .expect("a go-away-back-off row");
    let bytes = hex(&row.cells[2], row.line);
    assert_eq!(
        session::back_off_frame(30_000)[..],
        bytes[..],
        "line {}",
        row.line
    );
}

#[test]
fn heartbeat_vectors_are_at_most_six_bytes() {
    for row in table("frames") {
        if row.cells[0].starts_with("ping") || row.cells[0].starts_with("pong") {
            assert!(hex(&row.cells[2], row.line).len() <= 6, "line {}", row.line);
        }
    }
}

const INVALID_IDS: &[&str] = &[
    "incomplete-header",
    "incomplete-body",
    "unknown-type",
    "oversized",
    "length-overflow",
    "varint-not-canonical",
    "ping-lease-too-large",
    "truncated-field",
    "trailing-bytes",
    "user-empty",
    "user-bad-utf8",
    "bool-not-0-or-1",
    "unknown-status",
    "delivered-zero",
];

/// What decoding each `golden:invalid` row must give, by name: `incomplete`, or the
/// [`DecodeError`] variant and the close code it maps to.
fn invalid(input: &[u8]) -> String {
    let mut buf = BytesMut::from(input);
    match decode(&mut buf, DEFAULT_MAX_FRAME) {
        Ok(None) => {
            assert_eq!(
                buf.len(),
                input.len(),
                "incomplete input must not be consumed"
            );
            "incomplete".into()
        }
        Ok(Some(f)) => panic!("decoded {f:?}"),
        Err(e) => error_name(&e),
    }
}

#[test]
fn invalid_inputs_are_refused_as_the_spec_says() {
    let rows = table("invalid");
    check_ids("invalid", &rows, INVALID_IDS);
    for row in &rows {
        let [_, bytes, expected] = &row.cells[..] else {
            panic!("line {}: expected 3 cells, got {:?}", row.line, row.cells)
        };
        assert_eq!(
            &invalid(&hex(bytes, row.line)),
            expected,
            "line {}",
            row.line
        );
    }
}

const TOKEN_IDS: &[&str] = &["client", "client-no-device", "backend"];

/// The token of each `golden:tokens` row, minted with the spec's example secret.
fn token(id: &str, secret: &str) -> String {
    let minter = Minter::new(&Secret::new(secret).expect("example secret is long enough"));
    match id {
        "client" => minter.client("alice", "phone", 1_767_225_600),
        "client-no-device" => minter.client("alice", "", 1_767_225_600),
        "backend" => minter.backend("billing", 1_767_225_600),
        other => panic!("no value for golden token {other:?}"),
    }
    .expect("example claims are within bounds")
}

#[test]
fn tokens_mint_exactly_as_the_spec_says() {
    let rows = table("tokens");
    check_ids("tokens", &rows, TOKEN_IDS);
    for row in &rows {
        let [id, secret, text] = &row.cells[..] else {
            panic!("line {}: expected 3 cells, got {:?}", row.line, row.cells)
        };
        assert_eq!(text, &token(id, secret), "line {}", row.line);
    }
}

/// The decoder fuzzer's seed corpus (`fuzz/corpus/decode/`) holds every golden frame and
/// invalid input, one file each, plus all version-1 golden frames as one stream. The fuzz
/// target reads its first byte as the protocol version to decode with (even: 1, odd: 2), so
/// each seed starts with one. After changing the tables, run this test with
/// `TETHER_BLESS_CORPUS=1` to rewrite those files.
#[test]
fn fuzz_seed_corpus_holds_the_golden_vectors() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/decode");
    let with_version = |v: u8, bytes: Vec<u8>| {
        let mut seed = vec![v - 1];
        seed.extend_from_slice(&bytes);
        seed
    };
    let mut seeds = Vec::new();
    let mut stream = Vec::new();
    for row in table("frames") {
        let bytes = hex(&row.cells[2], row.line);
        stream.extend_from_slice(&bytes);
        seeds.push((format!("frames-{}", row.cells[0]), with_version(1, bytes)));
    }
    seeds.push(("frames-all".to_string(), with_version(1, stream)));
    for row in table("frames-v2") {
        let bytes = hex(&row.cells[2], row.line);
        seeds.push((format!("v2-{}", row.cells[0]), with_version(2, bytes)));
    }
    for row in table("versions") {
        let version: u8 = row.cells[1].parse().expect("a version number");
        let bytes = hex(&row.cells[2], row.line);
        seeds.push((
            format!("versions-{}", row.cells[0]),
            with_version(version.min(2), bytes),
        ));
    }
    for row in table("invalid") {
        seeds.push((
            format!("invalid-{}", row.cells[0]),
            with_version(1, hex(&row.cells[1], row.line)),
        ));
    }
    let bless = std::env::var_os("TETHER_BLESS_CORPUS").is_some();
    // A seed whose row left the spec goes too (blessing removes it).
    for entry in fs::read_dir(&dir).expect("the corpus directory") {
        let path = entry.expect("a corpus entry").path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if !seeds.iter().any(|(seed, _)| *seed == name) {
            if bless {
                fs::remove_file(&path).expect("remove a stale seed");
            } else {
                panic!(
                    "{} is not a golden vector (rewrite the seeds with TETHER_BLESS_CORPUS=1)",
                    path.display()
                );
            }
        }
    }
    for (name, bytes) in seeds {
        let path = dir.join(name);
        if bless {
            fs::create_dir_all(&dir).expect("create the corpus directory");
            fs::write(&path, &bytes).expect("write a seed");
        } else {
            let on_disk = fs::read(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (rewrite the seeds with TETHER_BLESS_CORPUS=1)",
                    path.display()
                )
            });
            assert_eq!(on_disk, bytes, "{} differs from the spec", path.display());
        }
    }
}
