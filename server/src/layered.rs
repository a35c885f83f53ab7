//! Where the configuration comes from, in order (later wins): the embedded `default.toml`, the
//! `--config` file, then `TETHER_*` environment variables; secrets may also come from a file.
//! Merged by `figment`; unknown keys are refused wherever they come from.
//!
//! Environment variables name a key as `TETHER_SECTION__KEY` (two underscores between the
//! section and the key), e.g. `TETHER_SERVER__LISTEN=0.0.0.0:7700`. Values are TOML-like
//! (`2`, `true`, `[1, 2]`, or a plain string). Three lists also take a comma-separated form,
//! because they are usually injected one by one:
//! `TETHER_AUTH__SECRETS=s1,s2` and `TETHER_API_KEYS=k1,k2` (or `TETHER_API__KEYS`); so does
//! `TETHER_CLUSTER__NATS_URLS=nats://n1:4222,nats://n2:4222`. API keys given as a plain list
//! grant every scope; `TETHER_API_KEYS` also takes the file's TOML array, tables and all
//! (`[{key = "...", scopes = ["push"]}, "..."]`).
//! `[auth] secrets_file` names a file with one secret per line (blank lines and `#` comments
//! ignored) that replaces `auth.secrets`; `[cluster] secrets_file` likewise, and the
//! `[cluster] nats_*_file` keys each name a file holding one NATS credential.
//!
//! Secret values from the environment (`TETHER_CLUSTER__SECRETS`,
//! `TETHER_CLUSTER__NATS_PASSWORD`, `TETHER_CLUSTER__NATS_TOKEN`,
//! `TETHER_CLUSTER__NATS_NKEY_SEED`) are taken as strings as they are, never parsed as TOML
//! values: a secret of digits stays what it is, and no type error can print it.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::Figment;

use crate::config::{Config, ConfigError, DEFAULT_TOML};

/// Keys whose environment value may be a comma-separated list (after `TETHER_`, lower case).
const LIST_VARS: &[(&str, &str)] = &[
    ("auth__secrets", "auth.secrets"),
    ("api__keys", "api.keys"),
    ("api_keys", "api.keys"),
    ("cluster__nats_urls", "cluster.nats_urls"),
    ("cluster__secrets", "cluster.secrets"),
];

/// Keys whose environment value is a secret string, taken as it is (after `TETHER_`, lower
/// case).
const SECRET_VARS: &[(&str, &str)] = &[
    ("cluster__nats_password", "cluster.nats_password"),
    ("cluster__nats_token", "cluster.nats_token"),
    ("cluster__nats_nkey_seed", "cluster.nats_nkey_seed"),
];

/// Loads the configuration: default, then `file` (which must exist when given), then the
/// process environment, then `auth.secrets_file`. Not validated (the caller applies its
/// command-line overrides first).
pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
    let mut fig = Figment::from(Toml::string(DEFAULT_TOML));
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError::Read {
                path: path.display().to_string(),
                source: std::io::ErrorKind::NotFound.into(),
            });
        }
        fig = fig.merge(Toml::file_exact(path));
    }
    let ignored: Vec<&str> = LIST_VARS
        .iter()
        .chain(SECRET_VARS)
        .map(|(var, _)| *var)
        .collect();
    fig = fig.merge(
        Env::prefixed("TETHER_")
            .filter(|k| k.as_str().contains("__"))
            .ignore(&ignored)
            .split("__"),
    );
    for (var, key) in LIST_VARS {
        if let Ok(value) = std::env::var(format!("TETHER_{}", var.to_ascii_uppercase())) {
            fig = match (*key, toml_array(&value)) {
                // Keys with scopes are tables: taken as they are, checked by validate().
                ("api.keys", Some(array)) => fig.merge((*key, array)),
                _ => fig.merge((*key, list(&value))),
            };
        }
    }
    for (var, key) in SECRET_VARS {
        if let Ok(value) = std::env::var(format!("TETHER_{}", var.to_ascii_uppercase())) {
            fig = fig.merge((*key, value));
        }
    }
    let mut config: Config = fig
        .extract()
        .map_err(|e| ConfigError::Invalid(flatten(e)))?;
    if !config.auth.secrets_file.as_os_str().is_empty() {
        config.auth.secrets = read_secrets(&config.auth.secrets_file)?;
    }
    config.cluster.load_files().map_err(ConfigError::Invalid)?;
    Ok(config)
}

/// `value` as a TOML array (`["a", {key = "b"}]`), when it is one.
fn toml_array(value: &str) -> Option<toml::Value> {
    let parsed = toml::from_str::<toml::Table>(&format!("v = {}", value.trim())).ok()?;
    parsed.get("v").filter(|v| v.is_array()).cloned()
}

/// `a,b , c` → `["a", "b", "c"]`; also takes a TOML-style `["a", "b"]`.
fn list(value: &str) -> Vec<String> {
    let v = value.trim();
    if let Ok(parsed) = toml::from_str::<toml::Table>(&format!("v = {v}")) {
        if let Some(toml::Value::Array(items)) = parsed.get("v") {
            let strings: Option<Vec<String>> = items
                .iter()
                .map(|i| i.as_str().map(str::to_string))
                .collect();
            if let Some(s) = strings {
                return s;
            }
        }
    }
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Reads a secrets file: one secret per line; blank lines and `#` comments skipped.
pub fn read_secrets(path: &PathBuf) -> Result<Vec<String>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

/// Every error figment found, on one line.
fn flatten(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Tests that set `TETHER_*` variables take turns (the environment is per process).
    static ENV: Mutex<()> = Mutex::new(());

    /// Runs `f` with `vars` set, and removes them afterwards.
    fn with_env<T>(vars: &[(&str, &str)], f: impl FnOnce() -> T) -> T {
        let _turn = ENV.lock().unwrap_or_else(|e| e.into_inner());
        for (k, v) in vars {
            std::env::set_var(k, v);
        }
        let out = f();
        for (k, _) in vars {
            std::env::remove_var(k);
        }
        out
    }

    /// A file in a fresh directory holding `text`.
    fn file(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn environment_overrides_file_overrides_default() {
        let dir = tempfile::tempdir().unwrap();
        let t = file(&dir, "t.toml", "[server]\nshards = 3\ntick_ms = 50\n");
        let vars = [
            ("TETHER_SERVER__TICK_MS", "25"),
            ("TETHER_SERVER__LISTEN", "127.0.0.1:7000"),
            (
                "TETHER_API_KEYS",
                "key-one-0123456789abc, key-two-0123456789abc",
            ),
            ("TETHER_AUTH__SECRETS", "env-secret-0123456789abcdef"),
            ("TETHER_UNRELATED", "ignored: no section"),
            (
                "TETHER_CLUSTER__NATS_URLS",
                "nats://127.0.0.1:4222, nats://127.0.0.1:4223",
            ),
            ("TETHER_CLUSTER__NODE_ID", "edge-7"),
            (
                "TETHER_CLUSTER__SECRETS",
                "cluster-secret-0123456789, cluster-secret-old-012345",
            ),
            ("TETHER_CLUSTER__NATS_USER", "tether"),
            ("TETHER_CLUSTER__NATS_PASSWORD", "0012345678901234567890"),
        ];
        let c = with_env(&vars, || load(Some(&t))).unwrap();
        assert_eq!(c.server.shards, 3, "from the file");
        assert_eq!(c.server.tick_ms, 25, "the environment wins");
        assert_eq!(c.server.listen.port(), 7000);
        assert_eq!(c.server.drain_ms, Config::default().server.drain_ms);
        assert_eq!(
            c.api.keys,
            vec![
                crate::api::ApiKey::from("key-one-0123456789abc"),
                crate::api::ApiKey::from("key-two-0123456789abc")
            ]
        );
        assert_eq!(c.auth.secrets, vec!["env-secret-0123456789abcdef"]);
        assert_eq!(
            c.cluster.nats_urls,
            vec!["nats://127.0.0.1:4222", "nats://127.0.0.1:4223"]
        );
        assert_eq!(c.cluster.node_id, "edge-7");
        assert_eq!(c.cluster.secrets.len(), 2);
        assert_eq!(
            c.cluster.nats_password.expose(),
            "0012345678901234567890",
            "a secret of digits is taken as it is, not as a number"
        );
        c.validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_refused_from_every_source() {
        let dir = tempfile::tempdir().unwrap();
        let bad = file(&dir, "bad.toml", "[server]\nshardz = 3\n");
        assert!(with_env(&[], || load(Some(&bad))).is_err());
        let ok = file(&dir, "ok.toml", "");
        let e = with_env(&[("TETHER_SERVER__SHARDZ", "3")], || load(Some(&ok)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("shardz"), "{e}");
        assert!(with_env(&[], || load(Some(Path::new("/nonexistent/tether.toml")))).is_err());
    }

    #[test]
    fn secrets_file_replaces_the_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = file(
            &dir,
            "secrets",
            "# newest first\nfile-secret-0123456789abcd\n\nold-secret-0123456789abcde\n",
        );
        let path = secrets.display().to_string();
        let c = with_env(&[("TETHER_AUTH__SECRETS_FILE", &path)], || load(None)).unwrap();
        assert_eq!(
            c.auth.secrets,
            vec!["file-secret-0123456789abcd", "old-secret-0123456789abcde"]
        );
    }

    #[test]
    fn cluster_secrets_never_show_in_errors() {
        let secret = "pw-do-not-print-0123456789";
        let dir = tempfile::tempdir().unwrap();
        let vars = [
            (
                "TETHER_CLUSTER__NATS_URLS",
                "nats://tether:pw-do-not-print-0123456789@127.0.0.1:4222",
            ),
            ("TETHER_CLUSTER__NODE_ID", "edge-7"),
            ("TETHER_CLUSTER__SECRETS", secret),
            ("TETHER_CLUSTER__NATS_TOKEN", secret),
            ("TETHER_CLUSTER__NATS_NKEY_SEED", secret),
        ];
        let c = with_env(&vars, || load(None)).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(!e.contains("do-not-print"), "{e}");
        let c = &c.cluster;
        let shown = format!("{:?} {:?} {:?}", c.secrets, c.nats_token, c.nats_nkey_seed);
        assert!(!shown.contains("do-not-print"), "{shown}");
        // A wrong type in a file: figment's error must not echo the value either.
        let bad = file(
            &dir,
            "bad.toml",
            "[cluster]\nnats_password = { v = \"pw-do-not-print-0123456789\" }\n",
        );
        let e = with_env(&[], || load(Some(&bad))).unwrap_err().to_string();
        assert!(!e.contains("do-not-print"), "{e}");
        let e = with_env(
            &[("TETHER_CLUSTER__NATS_TOKEN_FILE", "/nonexistent/t")],
            || load(None),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("cluster.nats_token_file"), "{e}");
    }

    #[test]
    fn api_keys_from_the_environment_are_plain_or_scoped() {
        use crate::api::{ApiKey, Scope, Scopes};
        let c = with_env(
            &[(
                "TETHER_API_KEYS",
                "env-key-one-0123456789, env-key-two-0123456789",
            )],
            || load(None),
        )
        .unwrap();
        assert!(c.api.keys.iter().all(|k| k.scopes() == Ok(Scopes::ALL)));
        let c = with_env(
            &[(
                "TETHER_API__KEYS",
                r#"[{ key = "env-push-key-0123456789", scopes = ["push"] }, "env-all-key-0123456789"]"#,
            )],
            || load(None),
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.api.keys[0].secret(), "env-push-key-0123456789");
        let push = c.api.keys[0].scopes().unwrap();
        assert!(push.contains(Scope::Push) && !push.contains(Scope::Admin));
        assert_eq!(c.api.keys[1], ApiKey::from("env-all-key-0123456789"));
        let bad = with_env(
            &[(
                "TETHER_API_KEYS",
                r#"[{ key = "env-push-key-0123456789", scopes = ["root"] }]"#,
            )],
            || load(None),
        )
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
        assert!(!bad.contains("env-push"), "{bad}");
    }

    #[test]
    fn lists_take_commas_or_toml() {
        assert_eq!(list("a, b,,c "), vec!["a", "b", "c"]);
        assert_eq!(list(r#"["x,y", "z"]"#), vec!["x,y", "z"]);
        assert!(list("").is_empty());
    }
}
