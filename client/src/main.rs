//! `tether-client watch`: run one heartbeat client against a server, print every push it
//! receives, and print its interval as it learns the network's NAT timeout.

use std::net::{IpAddr, SocketAddr};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use tether_client::{netns, preset, Driver, Options, Report, Status};
use tether_proto::heartbeat::{ClientEvent, Credentials, HeartbeatConfig};
use tether_proto::token::{Minter, Secret};
use tether_proto::Frame;

/// A tether client on real sockets.
#[derive(Parser, Debug)]
#[command(name = "tether-client", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Log in as USER, keep the connection alive, print every push received, and a line
    /// whenever the interval, the learned bounds, the probe count or the losses change.
    Watch(WatchArgs),
}

#[derive(clap::Args, Debug)]
struct WatchArgs {
    /// The server's address.
    #[arg(long, default_value = "127.0.0.1:7700")]
    server: SocketAddr,
    /// The server's client-token secret, one of its `auth.secrets` (a token is minted from it
    /// for USER/DEVICE).
    #[arg(long)]
    secret: String,
    /// User id to log in as.
    #[arg(long)]
    user: String,
    /// Device id.
    #[arg(long, default_value = "watch")]
    device: String,
    /// Network key the learned interval is kept under ("" for none).
    #[arg(long, default_value = "watch")]
    network_key: String,
    /// Scale all heartbeat intervals for a NAT timeout of roughly this many milliseconds
    /// (e.g. 5000 on a seconds-scale test NAT). Without it, the phone defaults (minutes) apply.
    #[arg(long, value_name = "MS")]
    nat_hint: Option<u32>,
    /// Heartbeat parameters as TOML (`HeartbeatConfig` fields), over the defaults or the
    /// `--nat-hint` scale.
    #[arg(long, value_name = "FILE")]
    heartbeat: Option<PathBuf>,
    /// Local address to connect from.
    #[arg(long)]
    bind: Option<IpAddr>,
    /// Enter this named network namespace (`ip netns add NAME`) before connecting; the same as
    /// running under `ip netns exec NAME`.
    #[arg(long, value_name = "NAME")]
    netns: Option<String>,
    /// Stop after this many seconds (default: run until interrupted).
    #[arg(long, value_name = "SECS")]
    duration: Option<u64>,
    /// Seed of the client's jitter (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Watch(args) => watch(args),
    }
}

fn watch(args: WatchArgs) -> anyhow::Result<()> {
    if let Some(name) = &args.netns {
        netns::enter(&netns::named(name)).with_context(|| format!("entering netns {name}"))?;
    }
    let mut heartbeat = args
        .nat_hint
        .map_or_else(HeartbeatConfig::default, preset::scaled);
    if let Some(path) = &args.heartbeat {
        heartbeat = merge(&heartbeat, path)?;
    }
    let unix = SystemTime::now().duration_since(UNIX_EPOCH)?;
    let secret = Secret::new(args.secret.into_bytes()).context("--secret")?;
    let token = Minter::new(&secret)
        // Well inside the server's maximum token lifetime (30 days by default), so a server
        // clock a little behind this one does not refuse it.
        .client(&args.user, &args.device, unix.as_secs() + 7 * 24 * 3600)
        .context("minting a token")?;
    let mut driver = Driver::new(Options {
        server: args.server,
        bind: args.bind,
        credentials: Credentials {
            user: args.user,
            device: args.device,
            token,
        },
        network_key: args.network_key,
        heartbeat,
        seed: args.seed.unwrap_or(unix.as_nanos() as u64),
        max_frame: 1 << 20,
    })?;
    let until = match args.duration {
        Some(s) => Instant::now() + Duration::from_secs(s),
        None => Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600),
    };
    println!("{}", Status::HEADER);
    let mut shown: Option<Status> = None;
    let status = driver.run(until, |s, report| {
        match report {
            Report::Event(ClientEvent::Stopped { code }) => {
                println!("stopped by the server: {code:?}");
                return ControlFlow::Break(());
            }
            Report::Event(ClientEvent::Offline) => println!("main connection lost"),
            Report::Event(ClientEvent::Received(Frame::Push(p))) => {
                println!("push {}: {}", p.id, shown_payload(&p.payload));
            }
            _ => {}
        }
        if shown.as_ref().map_or(true, |last| s.differs_visibly(last)) {
            println!("{s}");
            shown = Some(s.clone());
        }
        ControlFlow::Continue(())
    })?;
    println!("{status}");
    if !status.online && status.pongs == 0 && status.main_losses == 0 {
        bail!("never got online with {}", args.server);
    }
    Ok(())
}

/// A payload for a terminal: its text when it is printable UTF-8, otherwise hex.
fn shown_payload(payload: &[u8]) -> String {
    match std::str::from_utf8(payload) {
        Ok(text)
            if !text
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t') =>
        {
            format!("{text:?}")
        }
        _ => {
            let hex: String = payload.iter().map(|b| format!("{b:02x}")).collect();
            format!("{} bytes: {hex}", payload.len())
        }
    }
}

/// `base` with the fields of the TOML file at `path` replaced.
fn merge(base: &HeartbeatConfig, path: &PathBuf) -> anyhow::Result<HeartbeatConfig> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let mut table = toml::Table::try_from(base)?;
    let over: toml::Table = toml::from_str(&text).with_context(|| path.display().to_string())?;
    table.extend(over);
    let cfg: HeartbeatConfig = table.try_into().context("heartbeat parameters")?;
    cfg.validate()?;
    Ok(cfg)
}
