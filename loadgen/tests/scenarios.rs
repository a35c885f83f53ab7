//! Each scenario, small and bounded, against the fake server: the report must match what the
//! server saw.

mod common;

use std::process::Command;
use std::sync::atomic::Ordering;

use serde_json::Value;

use common::count;

/// Runs the loadgen binary with `args` plus the fake server's address and secret, and returns
/// its JSON report.
fn loadgen(server: &common::FakeServer, args: &[&str]) -> Value {
    common::run_loadgen(server.addr, args, &[])
}

fn no_errors(v: &Value) {
    assert_eq!(
        v["errors"],
        serde_json::json!({}),
        "errors: {}",
        v["errors"]
    );
}

#[test]
fn connect_logs_everyone_in_over_three_workers() {
    let server = common::start();
    let v = loadgen(
        &server,
        &[
            "connect",
            "-n",
            "60",
            "--rate",
            "500",
            "--per-worker",
            "25",
            "--sources",
            "5",
        ],
    );
    no_errors(&v);
    assert_eq!(v["workers"], 3);
    assert_eq!(v["online_after_ramp"], 60);
    assert_eq!(count(&v, "connect"), 60);
    assert_eq!(count(&v, "login"), 60);
    assert_eq!(server.counts.logins.load(Ordering::Relaxed), 60);
    let p = &v["latency_us"]["login"];
    assert!(p["p50"].as_u64().unwrap() <= p["max"].as_u64().unwrap());
}

#[test]
fn idle_pings_every_interval_and_samples_the_server() {
    let server = common::start();
    // The test process itself stands in for the server process being sampled.
    let pid = std::process::id().to_string();
    let v = loadgen(
        &server,
        &[
            "idle",
            "-n",
            "20",
            "--rate",
            "200",
            "--duration",
            "2s",
            "--interval",
            "200ms",
            "--server-pid",
            &pid,
        ],
    );
    no_errors(&v);
    // 20 connections pinging every 200 ms for 2 s: about 200 pongs; allow a loaded machine
    // to fall well short without failing, but some must have come back.
    let pongs = v["load"]["pongs"].as_u64().unwrap();
    assert!((40..=260).contains(&pongs), "pongs {pongs}");
    assert!(count(&v, "ping_rtt") >= pongs);
    assert!(server.counts.pings.load(Ordering::Relaxed) >= pongs);
    let s = &v["server"];
    let labels: Vec<&str> = s["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["label"].as_str().unwrap())
        .collect();
    assert_eq!(
        labels,
        ["before", "ramped", "load start", "load end", "after close"]
    );
    // A per-heartbeat CPU figure only when the CPU time spans enough clock ticks to mean it.
    let ticks =
        s["load_cpu_us"].as_u64().unwrap() / s["instruments"]["cpu_tick_us"].as_u64().unwrap();
    assert_eq!(
        s["cpu_us_per_heartbeat"].is_number(),
        ticks >= tether_loadgen::resolution::MIN_CPU_TICKS,
        "{s}"
    );
    assert!(s["rss_growth_bytes"].is_number());
}

#[test]
fn push_reaches_clients_and_every_result_comes_back() {
    let server = common::start();
    let v = loadgen(
        &server,
        &[
            "push",
            "-n",
            "30",
            "--rate",
            "300",
            "--duration",
            "1s",
            "--msg-rate",
            "100",
            "--per-worker",
            "15",
        ],
    );
    no_errors(&v);
    let sent = v["load"]["pushes_sent"].as_u64().unwrap();
    assert!(sent >= 20, "pushes sent {sent}");
    assert_eq!(v["load"]["push_results"].as_u64().unwrap(), sent);
    assert_eq!(server.counts.pushes.load(Ordering::Relaxed), sent);
    // Every target is online, so every push is delivered once and measured end to end.
    assert_eq!(v["events"]["push: delivered"].as_u64().unwrap(), sent);
    assert_eq!(count(&v, "push_e2e"), sent);
    assert_eq!(count(&v, "push_result"), sent);
}

#[test]
fn send_goes_user_to_user() {
    let server = common::start();
    let v = loadgen(
        &server,
        &[
            "send",
            "-n",
            "20",
            "--rate",
            "200",
            "--duration",
            "1s",
            "--msg-rate",
            "50",
        ],
    );
    no_errors(&v);
    let sent = v["load"]["sends_sent"].as_u64().unwrap();
    assert!(sent >= 10, "sends {sent}");
    assert_eq!(v["load"]["send_results"].as_u64().unwrap(), sent);
    assert_eq!(count(&v, "send_e2e"), sent);
    assert_eq!(server.counts.sends.load(Ordering::Relaxed), sent);
}

#[test]
fn churn_replaces_connections() {
    let server = common::start();
    let v = loadgen(
        &server,
        &[
            "churn",
            "-n",
            "20",
            "--rate",
            "200",
            "--duration",
            "1s",
            "--churn-rate",
            "20",
        ],
    );
    no_errors(&v);
    let churned = v["load"]["churned"].as_u64().unwrap();
    assert!(churned >= 5, "churned {churned}");
    assert_eq!(count(&v, "reconnect"), churned);
    assert_eq!(server.counts.logins.load(Ordering::Relaxed), 20 + churned);
    assert_eq!(v["online_after_load"], 20);
}

#[test]
fn reconnect_moves_on_goaway_and_comes_back_after_losses() {
    // Every connection is told to go after its second Ping; with --reconnect each one stays
    // until its moment in the 300 ms window, then logs in again, and the run ends with every
    // client online and nothing counted as an error.
    let server = common::start_with(2);
    let v = loadgen(
        &server,
        &[
            "idle",
            "-n",
            "10",
            "--rate",
            "200",
            "--interval",
            "200ms",
            "--duration",
            "3s",
            "--reconnect",
        ],
    );
    no_errors(&v);
    let moved = v["events"]["moved: server going away: 1001 ServerShutdown"]
        .as_u64()
        .unwrap_or(0);
    let go_aways = server.counts.go_aways.load(Ordering::Relaxed);
    assert!(moved >= 10, "moved {moved}: {v}");
    // A GoAway still on its way when the run stopped is not counted by the loadgen.
    assert!(
        moved <= go_aways && go_aways <= moved + 10,
        "{moved} of {go_aways}"
    );
    // Each move ends in a new login, except those the end of the run cut short (at most one
    // per client).
    let logins = server.counts.logins.load(Ordering::Relaxed);
    assert!(
        (moved..=10 + moved).contains(&logins),
        "{logins} logins for {moved} moves"
    );
    let relogins = count(&v, "reconnect");
    assert!(
        relogins + 10 >= moved && relogins <= moved,
        "{relogins} of {moved}"
    );
}

#[test]
fn wrong_secret_is_reported_as_auth_failures() {
    let server = common::start();
    let addr = server.addr.to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_tether-loadgen"))
        .args([
            "connect", "-n", "5", "--server", &addr, "--json", "--quiet", "--settle", "0s",
        ])
        .args(["--secret", "some-other-secret-of-enough-length"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["online_after_ramp"], 0);
    let errors = v["errors"].as_object().unwrap();
    let auth: u64 = errors
        .iter()
        .filter(|(k, _)| k.contains("2005"))
        .map(|(_, n)| n.as_u64().unwrap())
        .sum();
    assert_eq!(auth, 5, "errors: {errors:?}");
    assert_eq!(server.counts.refused_logins.load(Ordering::Relaxed), 5);
}

#[test]
fn refused_connections_are_counted() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(env!("CARGO_BIN_EXE_tether-loadgen"))
        .args(["connect", "-n", "4", "--json", "--quiet", "--settle", "0s"])
        .args(["--server", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["errors"]["connect: refused"], 4);
}

#[test]
fn writes_hgrm_svg_and_json_files() {
    let server = common::start();
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().to_str().unwrap().to_string();
    let v = loadgen(
        &server,
        &[
            "idle",
            "-n",
            "5",
            "--duration",
            "500ms",
            "--interval",
            "100ms",
            "--out",
            &out_dir,
        ],
    );
    no_errors(&v);
    for f in [
        "connect.hgrm",
        "login.hgrm",
        "ping_rtt.hgrm",
        "latency.svg",
        "ramp.svg",
        "report.json",
    ] {
        let text =
            std::fs::read_to_string(dir.path().join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(!text.is_empty(), "{f} is empty");
    }
    let hgrm = std::fs::read_to_string(dir.path().join("login.hgrm")).unwrap();
    assert!(hgrm.contains("Total count    =            5]"), "{hgrm}");
}

#[test]
fn burst_shape_plays_its_rounds_and_nothing_else() {
    let server = common::start();
    let v = loadgen(
        &server,
        &[
            "idle",
            "-n",
            "12",
            "--rate",
            "500",
            "--shape",
            "burst",
            "--rounds",
            "4",
            "--duration",
            "30s",
            "--interval",
            "600s",
        ],
    );
    no_errors(&v);
    assert_eq!(v["shape"], "burst");
    // Every round pings every connection once and waits for every answer; no spread pings.
    assert_eq!(v["load"]["pings"], 48);
    assert_eq!(v["load"]["pongs"], 48);
    assert_eq!(server.counts.pings.load(Ordering::Relaxed), 48);
    assert_eq!(count(&v, "burst_round"), 4);
    // The phase ends after its rounds, well before the 30 s bound.
    assert!(v["load_s"].as_f64().unwrap() < 10.0, "{}", v["load_s"]);
}

#[test]
fn upstream_reaches_the_backend_sinks_in_order_and_every_result_comes_back() {
    let server = common::start();
    let pid = std::process::id().to_string();
    // Two workers of 10 clients, one sink in each: a client's messages may go to the other
    // worker's sink, which the shared clock still times end to end.
    let v = loadgen(
        &server,
        &[
            "upstream",
            "-n",
            "20",
            "--rate",
            "400",
            "--duration",
            "1s",
            "--msg-rate",
            "100",
            "--per-worker",
            "10",
            "--backends",
            "2",
            "--server-pid",
            &pid,
        ],
    );
    no_errors(&v);
    assert_eq!(v["scenario"], "upstream");
    assert_eq!(v["workers"], 2);
    // Only the clients count as online: the sinks are backends.
    assert_eq!(v["online_after_ramp"], 20);
    let sent = v["load"]["upstream_sent"].as_u64().unwrap();
    assert!(sent >= 50, "upstream messages sent {sent}");
    assert_eq!(server.counts.upstreams.load(Ordering::Relaxed), sent);
    assert_eq!(server.counts.upstream_answers.load(Ordering::Relaxed), sent);
    // A sink may take another worker's last messages after its own load phase ended: the
    // whole run's count has them all.
    assert_eq!(v["totals"]["upstream_received"].as_u64().unwrap(), sent);
    assert_eq!(v["load"]["upstream_accepted"].as_u64().unwrap(), sent);
    assert_eq!(v["load"]["upstream_refused"], 0);
    assert_eq!(v["totals"]["upstream_out_of_order"], 0);
    assert_eq!(v["events"]["upstream: accepted"].as_u64().unwrap(), sent);
    assert_eq!(count(&v, "upstream_e2e"), sent);
    assert_eq!(count(&v, "upstream_result"), sent);
    assert!(v["throughput_per_s"]["upstream_accepted"].as_f64().unwrap() > 0.0);
    assert_eq!(v["latency_not_applicable"], serde_json::json!({}));
    // The per-message CPU figure is given whenever the CPU time resolves it.
    let s = &v["server"];
    let ticks =
        s["load_cpu_us"].as_u64().unwrap() / s["instruments"]["cpu_tick_us"].as_u64().unwrap();
    assert_eq!(
        s["cpu_us_per_upstream"].is_number(),
        ticks >= tether_loadgen::resolution::MIN_CPU_TICKS,
        "{s}"
    );
    // Every client sent about its share (round robin), none was left out.
    assert!(sent / 20 >= 2, "{sent} messages over 20 clients");
}

#[test]
fn upstream_order_check_counts_what_the_server_reorders() {
    // Every 5th message of each connection is held back and handed to the sink after the
    // connection's next one: each such swap must show as one message out of order.
    let server = common::start_opts(common::Options {
        reorder_upstream_every: 5,
        ..Default::default()
    });
    let v = loadgen(
        &server,
        &[
            "upstream",
            "-n",
            "4",
            "--rate",
            "100",
            "--duration",
            "2s",
            "--msg-rate",
            "100",
        ],
    );
    let reordered = server.counts.reordered.load(Ordering::Relaxed);
    assert!(reordered >= 3, "the fake server reordered {reordered}");
    assert_eq!(
        v["totals"]["upstream_out_of_order"].as_u64().unwrap(),
        reordered,
        "{v}"
    );
    let errors = v["errors"].as_object().unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let (kind, n) = errors.iter().next().unwrap();
    assert!(kind.contains("out of order"), "{kind}");
    assert_eq!(n.as_u64().unwrap(), reordered);
    // Reordered, not lost: every message still got its result.
    let sent = v["load"]["upstream_sent"].as_u64().unwrap();
    assert_eq!(v["load"]["upstream_accepted"].as_u64().unwrap(), sent);
}
