//! The `tether` command: parse the command line and configuration, then hand over to
//! [`crate::run_with`]. The `tether` binary is this function alone, and so is the test suite's
//! copy of it (`tests/src/bin/tether-under-test.rs`), which cargo builds with the tests' own
//! features: no second build of the server for them.

use std::path::PathBuf;

use crate::config::{Config, DEFAULT_TOML};
use crate::reload::Reloader;
use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

/// tether: a long-connection gateway for IM and push clients.
#[derive(Parser, Debug)]
#[command(name = "tether", version)]
struct Cli {
    /// Configuration file (TOML), merged over the embedded default; TETHER_SECTION__KEY
    /// environment variables override it.
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
    /// Override api.listen ("" turns the HTTP API off).
    #[arg(long, global = true)]
    api_listen: Option<String>,
    /// Override server.drain_ms.
    #[arg(long, global = true)]
    drain_ms: Option<u64>,
    /// Start even though another server listens on the address (rolling restart: start the
    /// new one with --takeover, then SIGTERM the old one). Sets server.takeover.
    #[arg(long, global = true)]
    takeover: bool,
    /// Log filter (tracing-subscriber EnvFilter syntax), instead of log.filter; RUST_LOG wins
    /// when set. Either pins the filter: SIGHUP then leaves it alone.
    #[arg(long, global = true)]
    log: Option<String>,
    /// Log one JSON object per line (log.json). Named apart from `check --json`, which
    /// formats that command's findings.
    #[arg(long, global = true)]
    log_json: bool,
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
    Check(crate::check::CheckArgs),
}

/// Runs the `tether` command with the process's arguments.
pub fn main() -> anyhow::Result<()> {
    let cli = std::sync::Arc::new(Cli::parse());
    if let Some(Command::Config) = cli.command {
        print!("{DEFAULT_TOML}");
        return Ok(());
    }
    let config = load(&cli)?;
    let log = init_logging(&cli, &config)?;
    match &cli.command {
        None | Some(Command::Run) => {
            let reloader = Reloader::default();
            let handle = reloader.clone();
            let sources = std::sync::Arc::clone(&cli);
            let running_tls =
                config.tls.enabled() || (config.websocket.enabled() && config.websocket.tls);
            Reloader::on_sighup(move || {
                // All or nothing: whatever can fail comes before the first change.
                let fresh = load(&sources)?;
                let filter = log.prepare(&fresh.log.filter)?;
                // New certificates for the TLS and wss:// listeners when they run (their
                // addresses and whether they run are read at start only).
                let tls = if running_tls {
                    Some(fresh.tls.server_config()?)
                } else {
                    None
                };
                handle.apply(&fresh.auth, &fresh.api.keys, tls)?;
                log.install(filter);
                Ok(())
            })?;
            crate::run_with(config, crate::Shutdown::on_signals()?, reloader)?;
        }
        Some(Command::Check(args)) => {
            let code = crate::check::run(args, &config)?;
            std::process::exit(code);
        }
        Some(Command::Config) => unreachable!("handled above"),
    }
    Ok(())
}

/// The log filter, replaceable on SIGHUP unless `--log` or `RUST_LOG` pinned it.
struct LogFilter {
    /// Swaps the filter of the installed subscriber.
    handle: reload::Handle<EnvFilter, Registry>,
    /// Set when the command line or the environment chose the filter.
    pinned: bool,
}

impl LogFilter {
    /// The configuration's `filter`, ready to install; `None` when pinned.
    fn prepare(&self, filter: &str) -> anyhow::Result<Option<EnvFilter>> {
        if self.pinned {
            return Ok(None);
        }
        Ok(Some(EnvFilter::try_new(filter).context("log.filter")?))
    }

    /// Installs a prepared filter. Cannot fail while the subscriber is installed (it is for
    /// the life of the process).
    fn install(&self, filter: Option<EnvFilter>) {
        if let Some(f) = filter {
            let _ = self.handle.reload(f);
        }
    }
}

/// Installs the log subscriber: text or JSON on stderr, behind a reloadable filter.
fn init_logging(cli: &Cli, config: &Config) -> anyhow::Result<LogFilter> {
    use std::io::IsTerminal;
    let (filter, pinned) = match (EnvFilter::try_from_default_env(), &cli.log) {
        (Ok(f), _) => (f, true),
        (Err(_), Some(l)) => (EnvFilter::try_new(l).context("--log")?, true),
        (Err(_), None) => (
            EnvFilter::try_new(&config.log.filter).context("log.filter")?,
            false,
        ),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if cli.log_json || config.log.json {
        fmt.json().boxed()
    } else {
        fmt.with_ansi(std::io::stderr().is_terminal()).boxed()
    };
    tracing_subscriber::registry().with(filter).with(fmt).init();
    Ok(LogFilter { handle, pinned })
}

/// The configuration: embedded default, then `--config`, then `TETHER_*` variables, then
/// flags; validated.
fn load(cli: &Cli) -> anyhow::Result<Config> {
    let mut config = crate::layered::load(cli.config.as_deref())?;
    if let Some(listen) = cli.listen {
        config.server.listen = listen;
    }
    if let Some(shards) = cli.shards {
        config.server.shards = shards;
    }
    if let Some(m) = &cli.metrics_listen {
        config.server.metrics_listen = m.clone();
    }
    if cli.takeover {
        config.server.takeover = true;
    }
    if let Some(a) = &cli.api_listen {
        config.api.listen = a.clone();
    }
    if let Some(d) = cli.drain_ms {
        config.server.drain_ms = d;
    }
    config.validate().context("refusing to start")?;
    Ok(config)
}
