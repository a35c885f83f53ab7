//! Who logs in where: the flags every command shares (server, credentials, heartbeat), the
//! driver they start, and the lines every command prints about the connection's life.

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tether_client::{
    netns, preset, Driver, Options, Report, Role, Status, Tls, TlsFailure, TokenSource,
};
use tether_proto::heartbeat::{ClientEvent, Credentials, HeartbeatConfig};
use tether_proto::token::{Minter, Secret};
use tether_proto::{CloseCode, PROTOCOL_V2};

/// The backend-token secret of the server's embedded default configuration, which the server
/// accepts on loopback only.
const DEV_BACKEND_SECRET: &str = "tether-dev-backend-secret-not-for-production";

/// Default lifetime of a minted token: well inside the server's maximum token lifetime (30
/// days by default), so a server clock a little behind this one does not refuse it.
const TOKEN_LIFETIME_S: &str = "604800";

/// Where and as whom a command logs in (`L`: [`ClientLogin`] or [`BackendLogin`]), and how it
/// heartbeats.
#[derive(clap::Args, Debug)]
pub struct Peer<L: clap::Args> {
    #[command(flatten)]
    pub connect: Connect,
    #[command(flatten)]
    pub login: L,
    #[command(flatten)]
    heartbeat: Heartbeat,
}

/// Where to connect, and from where.
#[derive(clap::Args, Debug)]
pub struct Connect {
    /// The server's address.
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub server: SocketAddr,
    /// Local address to connect from.
    #[arg(long)]
    bind: Option<IpAddr>,
    /// Enter this named network namespace (`ip netns add NAME`) before connecting; the same as
    /// running under `ip netns exec NAME`.
    #[arg(long, value_name = "NAME")]
    netns: Option<String>,
    /// Speak TLS 1.3 to the server's TLS listener (its `[tls] listen` address, ALPN
    /// "tether"), trusting the certificates of --ca.
    #[arg(long, requires = "ca")]
    tls: bool,
    /// PEM file of the CA the server's certificate must chain to (or of a self-signed server
    /// certificate itself). With --tls.
    #[arg(long, value_name = "FILE", requires = "tls")]
    ca: Option<PathBuf>,
    /// The name the server's certificate must be valid for, a DNS name or an IP address
    /// (default: the IP address of --server). With --tls.
    #[arg(long, value_name = "NAME", requires = "tls")]
    server_name: Option<String>,
    /// Seed of the client's jitter (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
}

/// Heartbeat parameters.
#[derive(clap::Args, Debug)]
struct Heartbeat {
    /// Scale all heartbeat intervals for a NAT timeout of roughly this many milliseconds
    /// (e.g. 5000 on a seconds-scale test NAT). Without it, the phone defaults (minutes) apply.
    #[arg(long, value_name = "MS")]
    nat_hint: Option<u32>,
    /// Heartbeat parameters as TOML (`HeartbeatConfig` fields), over the defaults or the
    /// `--nat-hint` scale.
    #[arg(long, value_name = "FILE")]
    heartbeat: Option<PathBuf>,
}

/// A user's login, with a client token.
#[derive(clap::Args, Debug)]
pub struct ClientLogin {
    /// User id to log in as.
    #[arg(long)]
    user: String,
    /// Device id (default: the command's name; two connections of one user and device
    /// replace each other).
    #[arg(long)]
    device: Option<String>,
    /// The server's client-token secret, one of its `auth.secrets` (a token is minted from it
    /// for USER/DEVICE).
    #[arg(long, required_unless_present = "token")]
    secret: Option<String>,
    /// A client token for USER/DEVICE minted elsewhere, instead of --secret. It is not renewed:
    /// the server closes the connection with TokenExpired when it ends.
    #[arg(long, conflicts_with = "secret")]
    token: Option<String>,
    /// Lifetime of the tokens minted from --secret, seconds. When the server gives notice
    /// that one ends (TokenNotice), a new one is minted and sent as a Refresh. Keep it above
    /// the server's session.token_notice_s (300 s by default): a shorter token gets no notice
    /// and the connection ends with it (the client then logs in again with a new one).
    #[arg(long, value_name = "SECONDS", default_value = TOKEN_LIFETIME_S)]
    token_ttl: u64,
}

/// A backend service's login, with a backend token.
#[derive(clap::Args, Debug)]
pub struct BackendLogin {
    /// The service name: the backend token's service and the login's user.
    #[arg(long, default_value = "chat")]
    service: String,
    /// The server's backend-token secret, one of its `auth.backend_secrets` (a backend token
    /// is minted from it for SERVICE). The default is the embedded configuration's development
    /// secret.
    #[arg(long, alias = "backend-secret", default_value = DEV_BACKEND_SECRET)]
    secret: String,
    /// A backend token for SERVICE minted elsewhere, instead of --secret. It is not renewed.
    #[arg(long, conflicts_with = "secret")]
    token: Option<String>,
    /// Lifetime of the tokens minted from --secret, seconds; renewed like a client's.
    #[arg(long, value_name = "SECONDS", default_value = TOKEN_LIFETIME_S)]
    token_ttl: u64,
}

/// `tether-client token`: who the token is for.
#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    /// User id.
    #[arg(long)]
    user: String,
    /// Device id.
    #[arg(long)]
    device: String,
    /// The server's client-token secret, one of its `auth.secrets`.
    #[arg(long)]
    secret: String,
    /// Lifetime, seconds.
    #[arg(long, value_name = "SECONDS", default_value = TOKEN_LIFETIME_S)]
    ttl: u64,
}

/// Prints a client token for `args`.
pub fn print_token(args: &TokenArgs) -> anyhow::Result<()> {
    let token = Minter::new(&secret_of(&args.secret)?)
        .client(&args.user, &args.device, expiry(args.ttl)?)
        .context("minting a client token")?;
    println!("{token}");
    Ok(())
}

impl ClientLogin {
    /// The credentials, with `device` unless --device names another.
    pub fn credentials(&self, device: &str) -> anyhow::Result<Credentials> {
        let device = self.device.as_deref().unwrap_or(device);
        let token = match (&self.token, &self.secret) {
            (Some(token), _) => token.clone(),
            (None, Some(secret)) => Minter::new(&secret_of(secret)?)
                .client(&self.user, device, expiry(self.token_ttl)?)
                .context("minting a client token")?,
            (None, None) => anyhow::bail!("--secret or --token is needed"),
        };
        Ok(Credentials {
            user: self.user.clone(),
            device: device.to_owned(),
            token,
        })
    }

    /// Mints a new token for each `TokenNotice`, when tokens come from --secret.
    pub fn token_source(&self, device: &str) -> anyhow::Result<Option<TokenSource>> {
        let Some(secret) = &self.secret else {
            return Ok(None);
        };
        let minter = Minter::new(&secret_of(secret)?);
        let (user, device) = (
            self.user.clone(),
            self.device.as_deref().unwrap_or(device).to_owned(),
        );
        let ttl = self.token_ttl;
        Ok(Some(Box::new(move || {
            minter.client(&user, &device, expiry(ttl).ok()?).ok()
        })))
    }
}

impl BackendLogin {
    /// The credentials: the service as the user, no device.
    pub fn credentials(&self) -> anyhow::Result<Credentials> {
        let token = match &self.token {
            Some(token) => token.clone(),
            None => Minter::new(&secret_of(&self.secret)?)
                .backend(&self.service, expiry(self.token_ttl)?)
                .context("minting a backend token")?,
        };
        Ok(Credentials {
            user: self.service.clone(),
            device: String::new(),
            token,
        })
    }

    /// Mints a new backend token for each `TokenNotice`, unless --token gave one.
    pub fn token_source(&self) -> anyhow::Result<Option<TokenSource>> {
        if self.token.is_some() {
            return Ok(None);
        }
        let minter = Minter::new(&secret_of(&self.secret)?);
        let (service, ttl) = (self.service.clone(), self.token_ttl);
        Ok(Some(Box::new(move || {
            minter.backend(&service, expiry(ttl).ok()?).ok()
        })))
    }
}

fn secret_of(text: &str) -> anyhow::Result<Secret> {
    Secret::new(text.as_bytes()).context("--secret")
}

fn expiry(ttl_s: u64) -> anyhow::Result<u64> {
    Ok(SystemTime::now()
        .duration_since(UNIX_EPOCH)?
        .as_secs()
        .saturating_add(ttl_s))
}

impl Connect {
    /// The TLS settings of --tls, --ca and --server-name; `None` for plaintext.
    fn tls(&self) -> anyhow::Result<Option<Tls>> {
        if !self.tls {
            return Ok(None);
        }
        let ca = self.ca.as_ref().context("--tls needs --ca")?;
        let mut tls = Tls::with_ca_file(ca)?;
        if let Some(name) = &self.server_name {
            tls = tls.server_name(name)?;
        }
        Ok(Some(tls))
    }
}

impl<L: clap::Args> Peer<L> {
    /// A driver for `credentials` as `role` (in the network namespace --netns names, if
    /// any). `network_key`: what the learned interval is kept under ("" for none).
    pub fn start(
        &self,
        credentials: Credentials,
        network_key: String,
        role: Role,
    ) -> anyhow::Result<Driver> {
        let (connect, heartbeat) = (&self.connect, &self.heartbeat);
        let tls = connect.tls()?;
        if let Some(name) = &connect.netns {
            netns::enter(&netns::named(name)).with_context(|| format!("entering netns {name}"))?;
        }
        let mut config = heartbeat
            .nat_hint
            .map_or_else(HeartbeatConfig::default, preset::scaled);
        if let Some(path) = &heartbeat.heartbeat {
            config = merge(&config, path)?;
        }
        let seed = match connect.seed {
            Some(seed) => seed,
            None => SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64,
        };
        let opts = Options {
            server: connect.server,
            bind: connect.bind,
            credentials,
            network_key,
            heartbeat: config,
            seed,
            max_frame: 1 << 20,
            tls,
        };
        Ok(Driver::with_role(opts, role)?)
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

/// The end of a run of `secs` seconds from now; without it, practically never.
pub fn until(secs: Option<u64>) -> Instant {
    Instant::now() + Duration::from_secs(secs.unwrap_or(100 * 365 * 24 * 3600))
}

/// Prints what `report` says about the main connection's life, if anything: the version
/// fallback on stderr, anything else on `out`. Why the run ends, once it must: the server said
/// not to come back, or TLS failed (a certificate or a server that will not do).
pub fn tell_life(report: &Report, status: &Status, out: &mut dyn Write) -> Option<Early> {
    // A terminal or pipe that is gone leaves nothing to tell.
    let _ = match report {
        Report::VersionFallback { from, to } => {
            eprintln!(
                "the server does not speak protocol version {from} (it closed the login with \
                 UnsupportedVersion): logging in again with version {to}"
            );
            Ok(())
        }
        Report::Event(ClientEvent::Online { session_id, .. }) => writeln!(
            out,
            "online: session {session_id}, protocol version {}",
            status.version
        ),
        Report::Event(ClientEvent::Offline) => writeln!(out, "main connection lost"),
        Report::Event(ClientEvent::Stopped { code }) => {
            let _ = writeln!(out, "stopped by the server: {code:?}");
            return Some(Early::Stopped(*code));
        }
        Report::TlsFailed(failure) => return Some(Early::Tls(failure.clone())),
        Report::TokenWanted { expires_in_ms, got } => writeln!(
            out,
            "token ends in {expires_in_ms} ms: {}",
            if *got {
                "sent a new one"
            } else {
                "no new token"
            }
        ),
        Report::Event(ClientEvent::Received(tether_proto::Frame::Refreshed)) => {
            writeln!(out, "token refreshed")
        }
        _ => Ok(()),
    };
    None
}

/// Why a command stops early.
#[derive(Clone, Debug)]
pub enum Early {
    /// The server speaks version 1 only (for `upstream` and `backend`, which need version 2).
    VersionOne,
    /// The server closed the connection for good.
    Stopped(CloseCode),
    /// A connection's TLS failed.
    Tls(TlsFailure),
}

impl Early {
    /// Prints what `report` says about the main connection's life on stderr; why the run ends
    /// when it does.
    pub fn of(report: &Report, status: &Status) -> Option<Early> {
        if let Some(early) = tell_life(report, status, &mut io::stderr()) {
            return Some(early);
        }
        match report {
            Report::Event(ClientEvent::Online { .. }) if status.version < PROTOCOL_V2 => {
                Some(Early::VersionOne)
            }
            _ => None,
        }
    }

    /// The error to exit with, for a server at `server`.
    pub fn error(self, server: SocketAddr) -> anyhow::Error {
        match self {
            Early::VersionOne => anyhow::anyhow!(
                "the server at {server} speaks protocol version 1 only: upstream messages need \
                 version 2"
            ),
            Early::Stopped(code) => anyhow::anyhow!("stopped by the server ({code:?})"),
            Early::Tls(failure) => anyhow::anyhow!("TLS with {server}: {failure}"),
        }
    }
}
