//! `tether`: parse the command line and configuration, then hand over to `tether_server::run`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tether_server::config::{Config, DEFAULT_TOML};

/// tether: a long-connection gateway for IM and push clients.
#[derive(Parser, Debug)]
#[command(name = "tether", version)]
struct Cli {
    /// Configuration file (TOML), merged over the embedded default.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Override server.listen (e.g. 127.0.0.1:7700; port 0 picks a free port).
    #[arg(long, global = true)]
    listen: Option<std::net::SocketAddr>,
    /// Override server.shards (0 = one per online CPU).
    #[arg(long, global = true)]
    shards: Option<usize>,
    /// Override server.metrics_listen (serves /metrics, /healthz, /readyz).
    #[arg(long, global = true)]
    metrics_listen: Option<String>,
    /// Override server.drain_ms.
    #[arg(long, global = true)]
    drain_ms: Option<u64>,
    /// Log filter (tracing-subscriber EnvFilter syntax); RUST_LOG wins when set.
    #[arg(long, global = true, default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server (the default).
    Run,
    /// Print the embedded default configuration.
    Config,
    /// Check the host's limits and kernel settings against the configuration.
    Check(tether_server::check::CheckArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Config) = cli.command {
        print!("{DEFAULT_TOML}");
        return Ok(());
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let config = load(&cli)?;
    match &cli.command {
        None | Some(Command::Run) => {
            tether_server::run(config, tether_server::Shutdown::on_signals()?)?;
        }
        Some(Command::Check(args)) => {
            let code = tether_server::check::run(args, &config)?;
            std::process::exit(code);
        }
        Some(Command::Config) => unreachable!("handled above"),
    }
    Ok(())
}

/// The configuration: embedded default, then `--config`, then flags; validated.
fn load(cli: &Cli) -> anyhow::Result<Config> {
    let mut config = match &cli.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(listen) = cli.listen {
        config.server.listen = listen;
    }
    if let Some(shards) = cli.shards {
        config.server.shards = shards;
    }
    if let Some(m) = &cli.metrics_listen {
        config.server.metrics_listen = m.clone();
    }
    if let Some(d) = cli.drain_ms {
        config.server.drain_ms = d;
    }
    config.validate().context("refusing to start")?;
    Ok(config)
}
