//! Reloading without a restart: on SIGHUP the binary re-reads its configuration and hands the
//! running server new token secrets and API keys (and sets its own log filter); connections
//! stay.
//!
//! A reload is all or nothing. Everything that can fail (reading and validating the
//! configuration, parsing the secrets, the log filter) is done before anything changes; then
//! the API keys are swapped in the control plane's [`ApiKeys`] and the new verifier is
//! published to every shard at once through the mesh (`MeshShared::publish_auth`), two steps
//! that cannot fail. Each shard takes the verifier at its next batch: a login checked after
//! that uses the new secrets. A refused reload is logged and changes nothing.

use std::sync::{Arc, Mutex, OnceLock};

use tether_proto::token::{KeyId, KeyRing, Secret, Verifier};
use tracing::{info, warn};

use crate::api::ApiKeys;
use crate::mesh::MeshShared;

/// Why a reload was not applied (nothing changed).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("auth.secrets must list one or two secrets")]
    SecretCount,
    #[error("auth secret: {0}")]
    Secret(#[from] tether_proto::token::SecretError),
    #[error("the server is not running yet")]
    NotRunning,
}

/// A handle on a running server's reloadable parts. Cloneable; give a clone to
/// [`crate::server::run_with`] and keep one to call [`Reloader::apply`].
#[derive(Clone, Debug, Default)]
pub struct Reloader {
    /// The mesh, once the server runs.
    mesh: Arc<OnceLock<Arc<MeshShared>>>,
    /// The control plane's API keys.
    keys: ApiKeys,
    /// The ids of the token secrets in use.
    book: Arc<Mutex<KeyBook>>,
}

/// Numbers the token secrets, so a shard can tell which connections a withdrawn secret
/// authenticated: a secret keeps its id across reloads while it stays configured, a new one
/// gets the next id, and one that leaves is forgotten (its connections end after
/// `auth.revoked_grace_s`; if it comes back it is a new secret). Ids wrap after
/// [`KeyId::MAX`] new secrets; by then every connection of an old id has long refreshed or
/// ended.
#[derive(Debug, Default)]
struct KeyBook {
    /// The secrets of the running configuration, with their ids.
    known: Vec<(Secret, KeyId)>,
    /// The last id given.
    last: u16,
}

impl KeyBook {
    /// `secret`'s id: the one it had in `prior`, or the next one.
    fn id(&mut self, prior: &[(Secret, KeyId)], secret: &Secret) -> KeyId {
        if let Some((_, id)) = prior.iter().chain(&self.known).find(|(s, _)| s == secret) {
            return *id;
        }
        // After a wrap, an id a configured secret still has is skipped (at most four are).
        loop {
            self.last = if self.last >= KeyId::MAX {
                1
            } else {
                self.last + 1
            };
            let id = KeyId(self.last);
            if !prior.iter().chain(&self.known).any(|(_, used)| *used == id) {
                return id;
            }
        }
    }

    /// A verifier for these secrets (newest first, one or two of each kind), each with its id;
    /// the book now holds exactly these secrets.
    fn verifier(&mut self, client: &[Secret], backend: &[Secret], max_lifetime_s: u64) -> Verifier {
        let prior = std::mem::take(&mut self.known);
        let mut ring = |list: &[Secret]| {
            let ids: Vec<KeyId> = list
                .iter()
                .map(|s| {
                    let id = self.id(&prior, s);
                    self.known.push((s.clone(), id));
                    id
                })
                .collect();
            KeyRing::with_ids((&list[0], ids[0]), list.get(1).map(|p| (p, ids[1])))
        };
        let (client, backend) = (ring(client), ring(backend));
        Verifier::new(client, backend).with_max_lifetime_s(max_lifetime_s)
    }
}

impl Reloader {
    /// The API key set the control plane checks.
    pub fn keys(&self) -> &ApiKeys {
        &self.keys
    }

    /// A verifier for these token secrets (newest first, one or two of each kind, as
    /// validated), numbering each secret so connections can be traced to it.
    pub fn verifier(&self, client: &[Secret], backend: &[Secret], max_lifetime_s: u64) -> Verifier {
        let mut book = self.book.lock().unwrap_or_else(|e| e.into_inner());
        book.verifier(client, backend, max_lifetime_s)
    }

    /// Called by the server once its mesh exists.
    pub(crate) fn attach(&self, mesh: Arc<MeshShared>) {
        let _ = self.mesh.set(mesh);
    }

    /// Gives every shard a verifier for `auth`'s client and backend secrets (newest first)
    /// and its token lifetime, and the control plane the API `keys`: all of it, or on an error
    /// nothing.
    pub fn apply(
        &self,
        auth: &crate::config::AuthConfig,
        keys: &[crate::api::ApiKey],
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Result<(), ReloadError> {
        let client = parse_secrets(&auth.secrets)?;
        let backend = parse_secrets(&auth.backend_secrets)?;
        let mesh = self.mesh.get().ok_or(ReloadError::NotRunning)?;
        let verifier = self.verifier(&client, &backend, auth.max_token_lifetime_s);
        // Nothing below can fail.
        self.keys.replace(keys);
        let certificates = tls.is_some();
        mesh.publish_auth(crate::mesh::Reloaded { verifier, tls });
        info!(
            shards = mesh.len(),
            certificates,
            secrets = client.len(),
            backend_secrets = backend.len(),
            api_keys = keys.len(),
            "secrets and API keys reloaded"
        );
        Ok(())
    }

    /// Calls `reload` on every SIGHUP, from a thread of its own; `reload` re-reads the
    /// configuration and calls [`Reloader::apply`], changing nothing unless it succeeds. Its
    /// errors are logged (they name no secret) and the running configuration stays.
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

#[cfg(test)]
mod tests {
    use tether_proto::token::{Authenticate, Minter};
    use tether_proto::{Login, PROTOCOL_VERSION};

    use super::*;
    use crate::config::Config;
    use crate::mesh::MeshMsg;

    const NEW: &str = "reloaded-secret-0123456789";
    const UNIX: u64 = 1_700_000_000;

    /// Whether `v` takes a client token for `user` minted with `secret`.
    fn takes(v: &Verifier, secret: &str) -> bool {
        let minter = Minter::new(&Secret::new(secret.as_bytes().to_vec()).unwrap());
        let login = Login {
            version: PROTOCOL_VERSION,
            flags: 0,
            user: "ann".into(),
            device: "d".into(),
            token: minter.client("ann", "d", UNIX + 60).unwrap(),
            heartbeat_ms: 60_000,
            network_key: String::new(),
        };
        v.authenticate(&login, UNIX).is_ok()
    }

    #[test]
    fn a_secret_keeps_its_id_while_configured_and_a_new_one_never_takes_an_id_in_use() {
        let s = |n: u8| Secret::new(vec![n; 20]).unwrap();
        let ids = |v: &Verifier| v.key_ids().collect::<Vec<_>>();
        let mut book = KeyBook::default();
        let first = ids(&book.verifier(&[s(1)], &[s(9)], 60));
        assert_eq!(first, [KeyId(1), KeyId(2)]);
        // Rotation: the new secret gets a new id, the kept ones keep theirs.
        let rotated = ids(&book.verifier(&[s(3), s(1)], &[s(9)], 60));
        assert_eq!(rotated, [KeyId(3), KeyId(1), KeyId(2)]);
        // Near the wrap, ids still in use are skipped.
        book.last = KeyId::MAX - 1;
        let wrapped = ids(&book.verifier(&[s(4), s(3)], &[s(9)], 60));
        assert_eq!(wrapped, [KeyId(KeyId::MAX), KeyId(3), KeyId(2)]);
        // Wrapped: 1 is free (its secret left two reloads ago).
        let again = ids(&book.verifier(&[s(5), s(4)], &[s(9)], 60));
        assert_eq!(again, [KeyId(1), KeyId(KeyId::MAX), KeyId(2)]);
        // 2 is the backend secret's: skipped.
        let more = ids(&book.verifier(&[s(6), s(5)], &[s(9)], 60));
        assert_eq!(more, [KeyId(3), KeyId(1), KeyId(2)]);
    }

    #[test]
    fn a_reload_reaches_every_shard_even_one_whose_channel_is_full() {
        // Shard 1's channel is full and nobody drains it (a shard busy for seconds).
        let (mesh, _inboxes) = MeshShared::new(2, 1).unwrap();
        mesh.post(
            1,
            MeshMsg::Shard(crate::core::ShardMsg::NetReports(Arc::from([]))),
        )
        .unwrap();
        let reloader = Reloader::default();
        reloader.attach(Arc::clone(&mesh));
        let mut auth = Config::default().auth;
        auth.secrets = vec![NEW.into()];
        reloader
            .apply(&auth, &["api-key-0123456789abc".into()], None)
            .unwrap();
        for shard in 0..2 {
            let (generation, r) = mesh.auth_since(0).expect("every shard sees the reload");
            let v = r.verifier;
            assert_eq!(generation, 1, "shard {shard}");
            assert!(takes(&v, NEW), "shard {shard}");
        }
        assert!(reloader
            .keys()
            .grant(Some(b"Bearer api-key-0123456789abc"))
            .is_some());

        // A reload refused for its secrets changes neither the keys nor the verifier.
        let mut bad = auth.clone();
        bad.backend_secrets = vec![];
        reloader
            .apply(&bad, &["other-key-0123456789abc".into()], None)
            .unwrap_err();
        bad.secrets = vec!["short".into()];
        reloader
            .apply(&bad, &["other-key-0123456789abc".into()], None)
            .unwrap_err();
        assert!(mesh.auth_since(1).is_none());
        assert!(reloader
            .keys()
            .grant(Some(b"Bearer api-key-0123456789abc"))
            .is_some());
        assert!(reloader
            .keys()
            .grant(Some(b"Bearer other-key-0123456789abc"))
            .is_none());
    }
}
