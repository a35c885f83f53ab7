//! A handshake flood next to bystanders, for RELIABILITY.md: 100 open connections of the
//! listener under test ping one after another (their round trip measured) while flooders open
//! connections to it as fast as they can, finish the handshake (TLS) or the upgrade
//! (WebSocket) and hang up, and others send half a ClientHello or half an upgrade request and
//! stall. Reported per phase: the bystanders' round trips (p50, p99, max), handshakes per
//! second, TLS handshakes put off by `tls.handshakes_per_batch`, and failures. Bounded: about
//! 25 s.
//!
//! `cargo run --release -p tether-tests --example handshake_flood -- [tls|ws] [FLOODERS]
//! [SECONDS]` (defaults tls, 4 and 10). Per-address admission caps are off, so the flood
//! reaches the handshake path (with them on, one address is held to 200 connections per
//! second).

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tether_tests::http::get;
use tether_tests::tls::{client_config, connect, handshake, Cert};
use tether_tests::ws;
use tether_tests::{Client, Server, Settings};

const OPEN_LIMITS: &str = "per_address_accept_rate = 0\nper_address_accept_burst = 0\n\
     per_address_login_rate = 0\nper_address_login_burst = 0\naccept_rate = 0\naccept_burst = 0\n\
     login_rate = 0\nlogin_burst = 0\nper_address_connections = 0\n";

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let websocket = match args.next().as_deref() {
        None | Some("tls") => false,
        Some("ws") => true,
        Some(other) => anyhow::bail!("tls or ws, not {other}"),
    };
    let flooders: usize = args.next().map_or(Ok(4), |a| a.parse())?;
    let seconds: u64 = args.next().map_or(Ok(10), |a| a.parse())?;
    let dir = tempfile::tempdir()?;
    let cert = Cert::new(dir.path(), "server", &[])?;
    let server = Server::start(&Settings {
        extra: format!("{}[websocket]\nlisten = \"127.0.0.1:0\"\n", cert.section()),
        limits: OPEN_LIMITS.into(),
        log: "info",
        ..Settings::default()
    })?;
    let tls = server.tls.expect("a TLS listener");
    let ws_addr = server.websocket.expect("a WebSocket listener");
    let mut bystanders: Vec<Client> = (0..100)
        .map(|i| {
            let c = if websocket {
                ws::connect(ws_addr)?
            } else {
                connect(tls, &cert)?
            };
            Ok(c.log_in(&format!("bystander-{i}"), "d")?.0)
        })
        .collect::<anyhow::Result<_>>()?;
    let what = if websocket {
        "WebSocket upgrade"
    } else {
        "TLS handshake"
    };
    println!("# {what} flood next to 100 bystanders ({flooders} flooders, {seconds} s)");
    println!("| phase | bystander pings | round trip p50 | p99 | max | handshakes/s | deferred | failed |");
    println!("|---|---|---|---|---|---|---|---|");
    let quiet = measure(
        &server,
        &mut bystanders,
        Duration::from_secs(seconds / 2),
        None,
    )?;
    print_row("quiet", &quiet);
    // The flood: full handshakes in a loop, and stalled half ClientHellos.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for f in 0..flooders {
        let (stop, done, der) = (Arc::clone(&stop), Arc::clone(&done), cert.der.clone());
        threads.push(std::thread::spawn(move || {
            let config = client_config(&der, &[b"tether"]);
            let mut stalled = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if websocket {
                    if f % 2 == 1 && stalled.len() < 500 {
                        // Half an upgrade request, then silence until the login deadline.
                        if let Ok(mut s) = TcpStream::connect(ws_addr) {
                            let _ = s.write_all(b"GET /tether HTTP/1.1\r\nHost: x\r\n");
                            stalled.push(s);
                        }
                    }
                    if ws::connect(ws_addr).is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    continue;
                }
                if f % 2 == 1 && stalled.len() < 500 {
                    // Half a ClientHello, then silence until the login deadline.
                    let mut c = rustls::ClientConnection::new(
                        Arc::clone(&config),
                        "localhost".try_into().expect("a name"),
                    )
                    .expect("a client");
                    let mut hello = Vec::new();
                    let _ = c.write_tls(&mut hello);
                    if let Ok(mut s) = TcpStream::connect(tls) {
                        let _ = s.write_all(&hello[..hello.len() / 2]);
                        stalled.push(s);
                    }
                }
                if handshake(tls, "localhost", Arc::clone(&config)).is_ok() {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let flood = measure(
        &server,
        &mut bystanders,
        Duration::from_secs(seconds),
        Some(&done),
    )?;
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    print_row("flood", &flood);
    let after = measure(
        &server,
        &mut bystanders,
        Duration::from_secs(seconds / 2),
        None,
    )?;
    print_row("after", &after);
    Ok(())
}

/// One phase's figures.
struct Phase {
    pings: usize,
    rtts: Vec<Duration>,
    handshakes_per_s: f64,
    deferred: u64,
    failed: u64,
}

/// Pings the bystanders in turn for `period`.
fn measure(
    server: &Server,
    bystanders: &mut [Client],
    period: Duration,
    done: Option<&AtomicU64>,
) -> anyhow::Result<Phase> {
    let before = counters(server)?;
    let done_before = done.map_or(0, |d| d.load(Ordering::Relaxed));
    let start = Instant::now();
    let mut rtts = Vec::new();
    while start.elapsed() < period {
        for b in bystanders.iter_mut() {
            let t = Instant::now();
            b.ping(60_000)?;
            rtts.push(t.elapsed());
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let after = counters(server)?;
    let done_now = done.map_or(0, |d| d.load(Ordering::Relaxed));
    rtts.sort();
    Ok(Phase {
        pings: rtts.len(),
        rtts,
        handshakes_per_s: (done_now - done_before) as f64 / elapsed,
        deferred: after.0 - before.0,
        failed: after.1 - before.1,
    })
}

/// (tls_handshakes_deferred, tls_handshake_failures) summed over shards.
fn counters(server: &Server) -> anyhow::Result<(u64, u64)> {
    // The shards publish twice a second.
    std::thread::sleep(Duration::from_millis(600));
    let s = get(server.api, "/api/stats", &[])?.json();
    let sum = |name: &str| -> u64 {
        s["shards"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|sh| sh["counters"][name].as_u64().unwrap_or(0))
                    .sum()
            })
            .unwrap_or(0)
    };
    Ok((
        sum("tls_handshakes_deferred"),
        sum("tls_handshake_failures"),
    ))
}

fn print_row(name: &str, p: &Phase) {
    let q = |f: f64| p.rtts[((p.rtts.len() as f64 * f) as usize).min(p.rtts.len() - 1)];
    println!(
        "| {name} | {} | {:.0} µs | {:.0} µs | {:.1} ms | {:.0} | {} | {} |",
        p.pings,
        q(0.5).as_secs_f64() * 1e6,
        q(0.99).as_secs_f64() * 1e6,
        p.rtts.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        p.handshakes_per_s,
        p.deferred,
        p.failed
    );
}
