//! Reloading without a restart: on SIGHUP the binary re-reads its configuration and hands the
//! running server new token secrets and API keys (and sets its own log filter); connections
//! stay.
//!
//! Shards get the new verifier as a [`Control::Auth`] mesh message, handled between batches
//! like any other message: a login checked after it uses the new secrets. API keys are swapped
//! in the control plane's [`ApiKeys`].

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tether_proto::token::{KeyRing, Secret, Verifier};
use tracing::{info, warn};

use crate::api::ApiKeys;
use crate::control::Control;
use crate::mesh::{MeshMsg, MeshShared};

/// How long a reload keeps trying a shard whose channel is full.
const POST_PATIENCE: Duration = Duration::from_secs(2);

/// Why a reload was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("auth.secrets must list one or two secrets")]
    SecretCount,
    #[error("auth secret: {0}")]
    Secret(#[from] tether_proto::token::SecretError),
    #[error("the server is not running yet")]
    NotRunning,
    #[error("shard {0} did not take the new secrets (channel full)")]
    Busy(usize),
}

/// A handle on a running server's reloadable parts. Cloneable; give a clone to
/// [`crate::server::run_with`] and keep one to call [`Reloader::apply`].
#[derive(Clone, Debug, Default)]
pub struct Reloader {
    /// The mesh, once the server runs.
    mesh: Arc<OnceLock<Arc<MeshShared>>>,
    /// The control plane's API keys.
    keys: ApiKeys,
}

impl Reloader {
    /// The API key set the control plane checks.
    pub fn keys(&self) -> &ApiKeys {
        &self.keys
    }

    /// Called by the server once its mesh exists.
    pub(crate) fn attach(&self, mesh: Arc<MeshShared>) {
        let _ = self.mesh.set(mesh);
    }

    /// Gives every shard a verifier for `auth`'s client and backend secrets (newest first)
    /// and its token lifetime, and the control plane the API `keys`.
    pub fn apply(
        &self,
        auth: &crate::config::AuthConfig,
        keys: &[crate::api::ApiKey],
    ) -> Result<(), ReloadError> {
        let parsed = parse_secrets(&auth.secrets)?;
        let backend = parse_secrets(&auth.backend_secrets)?;
        let mesh = self.mesh.get().ok_or(ReloadError::NotRunning)?;
        self.keys.replace(keys);
        for shard in 0..mesh.len() {
            let verifier = Verifier::new(
                KeyRing::new(&parsed[0], parsed.get(1)),
                KeyRing::new(&backend[0], backend.get(1)),
            )
            .with_max_lifetime_s(auth.max_token_lifetime_s);
            let mut msg = MeshMsg::Control(Box::new(Control::Auth(Box::new(verifier))));
            let until = Instant::now() + POST_PATIENCE;
            loop {
                match mesh.post(shard, msg) {
                    Ok(()) => break,
                    Err(_) if Instant::now() >= until => return Err(ReloadError::Busy(shard)),
                    Err(back) => {
                        msg = back;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
        }
        info!(
            shards = mesh.len(),
            secrets = parsed.len(),
            api_keys = keys.len(),
            "secrets and API keys reloaded"
        );
        Ok(())
    }

    /// Calls `reload` on every SIGHUP, from a thread of its own; `reload` re-reads the
    /// configuration and calls [`Reloader::apply`]. Its errors are logged and the running
    /// configuration stays.
    pub fn on_sighup<F>(reload: F) -> std::io::Result<()>
    where
        F: Fn() -> anyhow::Result<()> + std::marker::Send + 'static,
    {
        let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])?;
        std::thread::Builder::new()
            .name("tether-reload".into())
            .spawn(move || {
                for _ in signals.forever() {
                    info!("SIGHUP: reloading secrets, API keys and the log filter");
                    if let Err(e) = reload() {
                        warn!(error = %format!("{e:#}"), "reload failed; keeping the running configuration");
                    }
                }
            })?;
        Ok(())
    }
}

/// The secrets as token secrets (one or two, each long enough).
pub fn parse_secrets(secrets: &[String]) -> Result<Vec<Secret>, ReloadError> {
    if secrets.is_empty() || secrets.len() > 2 {
        return Err(ReloadError::SecretCount);
    }
    Ok(secrets
        .iter()
        .map(|s| Secret::new(s.as_bytes().to_vec()))
        .collect::<Result<Vec<_>, _>>()?)
}
