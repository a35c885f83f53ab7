//! What an idle TLS connection keeps, and what TLS costs a shard per handshake and per
//! heartbeat, without sockets: `--connections` server-side `TlsConn`s complete their
//! handshake with in-memory rustls clients and are kept as the driver keeps them (boxed).
//!
//! Reported:
//! - heap bytes per idle open TLS connection (an exact count: this bench's allocator counts
//!   every byte allocated and freed), beside a plaintext connection's, which holds no TLS;
//! - the shard's share of a handshake (the time spent in `TlsConn::receive` for it: rustls's
//!   key exchange and signature, then taking the keys out), hence handshakes per second per
//!   core;
//! - the record layer's cost per heartbeat: opening a client's `Ping` record and sealing the
//!   `Pong`.
//!
//! `cargo bench -p tether-server --bench tls_state -- --connections 20000 [--json]`

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde::Serialize;
use tether_server::tls::{TlsConfig, TlsConn};

/// Counts live heap bytes.
struct Counting;

/// Live heap bytes.
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's layout, passed on.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's pointer and layout, passed on.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        LIVE.fetch_add(n as isize - l.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's pointer, layout and size, passed on.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What to measure.
#[derive(Debug, Parser)]
struct Args {
    /// Open TLS connections to hold.
    #[arg(long, default_value_t = 20_000)]
    connections: usize,
    /// Heartbeats to time (a Ping record opened, a Pong record sealed).
    #[arg(long, default_value_t = 200_000)]
    heartbeats: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Ignored (cargo bench passes it).
    #[arg(long, hide = true)]
    bench: bool,
}

/// The figures.
#[derive(Debug, Serialize)]
struct Report {
    connections: usize,
    cipher_suite: String,
    heap_bytes_per_idle_connection: f64,
    handshake_server_us: f64,
    handshakes_per_second_per_core: f64,
    record_layer_us_per_heartbeat: f64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert, ck.cert.pem())?;
    std::fs::write(&key, ck.key_pair.serialize_pem())?;
    let server = TlsConfig {
        listen: "127.0.0.1:0".into(),
        certificate: cert.display().to_string(),
        key: key.display().to_string(),
        sni: Vec::new(),
        alpn: vec!["tether".into()],
        handshakes_per_batch: 32,
    }
    .server_config()?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"tether".to_vec()];
    let client = Arc::new(client);

    let mut conns: Vec<Box<TlsConn>> = Vec::with_capacity(args.connections);
    let mut last_client = None;
    let mut server_time = Duration::ZERO;
    let (mut plain, mut wire, mut scratch) = (Vec::new(), Vec::new(), Vec::new());
    let mut suite = String::new();
    let mut held = 0isize;
    for i in 0..args.connections {
        let mut c = rustls::ClientConnection::new(Arc::clone(&client), "localhost".try_into()?)?;
        let before = LIVE.load(Ordering::Relaxed);
        let mut conn = Box::new(TlsConn::new(Arc::clone(&server))?);
        let mut server_bytes = LIVE.load(Ordering::Relaxed) - before;
        while c.is_handshaking() {
            let mut out = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut out)?;
            }
            wire.clear();
            let before = LIVE.load(Ordering::Relaxed);
            let start = Instant::now();
            conn.receive(&out, &mut plain, &mut wire, &mut scratch)?;
            server_time += start.elapsed();
            // The shared buffers are the shard's, not the connection's.
            server_bytes += LIVE.load(Ordering::Relaxed) - before;
            let mut r = &wire[..];
            while !r.is_empty() {
                c.read_tls(&mut r)?;
                c.process_new_packets()?;
            }
        }
        // The client's Finished.
        let mut out = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut out)?;
        }
        let before = LIVE.load(Ordering::Relaxed);
        let start = Instant::now();
        conn.receive(&out, &mut plain, &mut wire, &mut scratch)?;
        server_time += start.elapsed();
        server_bytes += LIVE.load(Ordering::Relaxed) - before;
        anyhow::ensure!(conn.is_open(), "connection {i} did not open");
        if suite.is_empty() {
            suite = format!("{:?}", c.negotiated_cipher_suite().map(|s| s.suite()));
        }
        held += server_bytes;
        conns.push(conn);
        last_client = Some(c);
    }
    // Heap per connection: what each connection's own calls left allocated (the scratch
    // buffers the shard shares are excluded by construction: they existed before).
    let per_conn =
        (held as f64) / args.connections as f64 + std::mem::size_of::<Box<TlsConn>>() as f64;

    // Record layer: the last client pings, the server answers.
    let mut c = last_client.expect("at least one connection");
    let conn = conns.last_mut().expect("at least one connection");
    let ping = [0x03u8, 0x03, 0x80, 0xea, 0x01];
    let pong = [0x04u8, 0x04, 0x80, 0xea, 0x01, 0x00];
    let mut total = Duration::ZERO;
    let mut record = Vec::new();
    for _ in 0..args.heartbeats {
        c.writer().write_all(&ping)?;
        record.clear();
        c.write_tls(&mut record)?;
        plain.clear();
        wire.clear();
        let start = Instant::now();
        conn.receive(&record, &mut plain, &mut wire, &mut scratch)?;
        conn.encrypt(&pong, &mut wire)?;
        total += start.elapsed();
        let mut r = &wire[..];
        while !r.is_empty() {
            c.read_tls(&mut r)?;
            c.process_new_packets()?;
        }
        let mut sink = [0u8; 64];
        let _ = std::io::Read::read(&mut c.reader(), &mut sink);
    }
    let hs_us = server_time.as_secs_f64() * 1e6 / args.connections as f64;
    let report = Report {
        connections: args.connections,
        cipher_suite: suite,
        heap_bytes_per_idle_connection: per_conn,
        handshake_server_us: hs_us,
        handshakes_per_second_per_core: 1e6 / hs_us,
        record_layer_us_per_heartbeat: total.as_secs_f64() * 1e6 / args.heartbeats as f64,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("open TLS connections held:        {}", report.connections);
        println!("cipher suite:                     {}", report.cipher_suite);
        println!(
            "heap per idle TLS connection:     {:.0} B",
            report.heap_bytes_per_idle_connection
        );
        println!(
            "server share of a handshake:      {:.0} µs ({:.0} handshakes/s per core)",
            report.handshake_server_us, report.handshakes_per_second_per_core
        );
        println!(
            "record layer per heartbeat:       {:.2} µs (open the Ping record, seal the Pong)",
            report.record_layer_us_per_heartbeat
        );
    }
    drop(conns);
    Ok(())
}
