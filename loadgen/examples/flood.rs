//! A hostile client: logs in and then writes frames that cost the server work and answer
//! nothing (empty `NetReport`s, or `Ping`s) as fast as the socket takes them, for a bounded
//! time. Used beside `tether-loadgen idle` to measure what a flood does to the other clients'
//! ping latency (tests/scripts/flood.sh).
//!
//! ```sh
//! cargo run --release -p tether-loadgen --example flood -- 127.0.0.1:7700 \
//!     --connections 2 --seconds 30 [--shards 2] [--frame netreport|ping] [--secret S]
//! ```
//!
//! With `--shards S` (the server's shard count), connection i is a user whose home is shard
//! i % S (read from its LoginOk), so a flood reaches every shard.
//!
//! Each flooding connection has a thread that writes 64 KiB of pre-encoded frames per call
//! and a thread that reads and discards whatever the server sends (Pongs, a Close), so the
//! flood is limited by how fast the server reads, not by its answers piling up. At the end it
//! prints the frames written per connection and why each connection ended.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use bytes::BytesMut;
use tether_loadgen::cli::DEV_SECRET;
use tether_proto::token::{Minter, Secret};
use tether_proto::{
    decode, encode, Frame, Login, NetReport, Ping, DEFAULT_MAX_FRAME, PROTOCOL_VERSION,
};

struct Args {
    server: SocketAddr,
    connections: usize,
    seconds: u64,
    ping: bool,
    secret: String,
    shards: u64,
}

fn args() -> anyhow::Result<Args> {
    let mut it = std::env::args().skip(1);
    let server = it
        .next()
        .context("usage: flood ADDR [--connections N] [--seconds S] [--frame netreport|ping] [--secret S]")?
        .parse()
        .context("ADDR")?;
    let mut a = Args {
        server,
        connections: 1,
        seconds: 10,
        ping: false,
        secret: DEV_SECRET.to_string(),
        shards: 0,
    };
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--connections" => a.connections = value.parse()?,
            "--seconds" => a.seconds = value.parse()?,
            "--frame" => {
                a.ping = match value.as_str() {
                    "ping" => true,
                    "netreport" => false,
                    other => bail!("--frame {other}: netreport or ping"),
                }
            }
            "--secret" => a.secret = value,
            "--shards" => a.shards = value.parse()?,
            other => bail!("unknown option {other}"),
        }
    }
    anyhow::ensure!(
        (1..=1000).contains(&a.connections),
        "--connections 1..=1000"
    );
    anyhow::ensure!((1..=3600).contains(&a.seconds), "--seconds 1..=3600");
    Ok(a)
}

/// Connects and logs in as `user`; returns the stream and its shard once LoginOk arrived.
fn login(a: &Args, user: &str) -> anyhow::Result<(TcpStream, u64)> {
    let mut s = TcpStream::connect(a.server)?;
    let expiry = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 3600;
    let token =
        Minter::new(&Secret::new(a.secret.as_bytes().to_vec())?).client(user, "flood", expiry)?;
    let mut out = BytesMut::new();
    encode(
        &Frame::Login(Login {
            version: PROTOCOL_VERSION,
            flags: 0,
            user: user.into(),
            device: "flood".into(),
            token,
            heartbeat_ms: 60_000,
            network_key: "flood-net".into(),
        }),
        &mut out,
    )?;
    s.write_all(&out)?;
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(frame) = decode(&mut buf, DEFAULT_MAX_FRAME)? {
            match frame {
                Frame::LoginOk(ok) => return Ok((s, ok.session_id >> 48)),
                other => bail!("login answered with {other:?}"),
            }
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            bail!("closed before LoginOk");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Logs in flooding connection `i`: with `--shards`, as the first user whose home is shard
/// `i % shards`.
fn pick(a: &Args, i: usize) -> anyhow::Result<(TcpStream, u64)> {
    for attempt in 0..256 {
        let user = format!("flooder{i}-{attempt}");
        let (s, shard) = login(a, &user).with_context(|| format!("flooder {i}"))?;
        if a.shards == 0 || shard == i as u64 % a.shards {
            return Ok((s, shard));
        }
    }
    bail!(
        "no user of 256 tried has shard {} as its home",
        i as u64 % a.shards
    )
}

fn main() -> anyhow::Result<()> {
    let a = args()?;
    let mut frame = BytesMut::new();
    if a.ping {
        encode(&Frame::Ping(Ping { lease_ms: 60_000 }), &mut frame)?;
    } else {
        encode(&Frame::NetReport(NetReport { learned_ms: 0 }), &mut frame)?;
    }
    let per_write = (64 * 1024 / frame.len()).max(1);
    let batch: Vec<u8> = frame
        .iter()
        .copied()
        .cycle()
        .take(per_write * frame.len())
        .collect();
    let until = Instant::now() + Duration::from_secs(a.seconds);
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for i in 0..a.connections {
        let (s, shard) = pick(&a, i)?;
        println!("flooder{i}: on shard {shard}");
        let mut reader = s.try_clone()?;
        let stop_r = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut sink = [0u8; 16 * 1024];
            while !stop_r.load(Ordering::Relaxed) {
                match reader.read(&mut sink) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        });
        let batch = batch.clone();
        let frame_len = frame.len();
        let begun = Instant::now();
        writers.push(std::thread::spawn(move || {
            let mut s = s;
            let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
            // Plain writes with an offset into the batch, so a write cut short by the
            // timeout never leaves half a frame behind.
            let (mut writes, mut off) = (0u64, 0usize);
            let why = loop {
                if Instant::now() >= until {
                    break "time up".to_string();
                }
                match s.write(&batch[off..]) {
                    Ok(0) => break "the server stopped reading".to_string(),
                    Ok(n) => {
                        off += n;
                        if off == batch.len() {
                            off = 0;
                            writes += 1;
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock
                                | std::io::ErrorKind::TimedOut
                                | std::io::ErrorKind::Interrupted
                        ) => {}
                    Err(e) => break format!("write failed: {e}"),
                }
            };
            let frames = writes * per_write as u64 + (off / frame_len) as u64;
            (frames, why, begun.elapsed())
        }));
    }
    let started = Instant::now();
    let mut total = 0u64;
    for (i, w) in writers.into_iter().enumerate() {
        let (frames, why, took) = w.join().expect("writer thread");
        println!(
            "flooder{i}: {frames} frames written in {:.2} s, ended: {why}",
            took.as_secs_f64()
        );
        total += frames;
    }
    stop.store(true, Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    // Written means taken by the kernel: a flooder closed at once still filled its socket
    // buffers, so a rate over a short run says nothing about the server.
    if secs >= 1.0 {
        println!(
            "{} connections wrote {total} frames in {secs:.1} s ({:.0} per second)",
            a.connections,
            total as f64 / secs
        );
    } else {
        println!(
            "{} connections wrote {total} frames (into their socket buffers) and ended within {secs:.2} s",
            a.connections
        );
    }
    Ok(())
}
