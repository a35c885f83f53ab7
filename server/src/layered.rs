//! Where the configuration comes from, in order (later wins): the embedded `default.toml`, the
//! `--config` file, then `TETHER_*` environment variables; secrets may also come from a file.
//! Merged by `figment`, here and nowhere else: [`load`] for the binary, [`from_toml`] (the
//! default and one TOML text, no environment) for tests and [`Config::default`]. Unknown keys
//! are refused wherever they come from.
//!
//! Environment variables name a key as `TETHER_SECTION__KEY` (two underscores between the
//! section and the key), e.g. `TETHER_SERVER__LISTEN=0.0.0.0:7700`. Values are TOML-like
//! (`2`, `true`, `[1, 2]`, or a plain string). Three lists also take a comma-separated form,
//! because they are usually injected one by one:
//! `TETHER_AUTH__SECRETS=s1,s2` and `TETHER_API_KEYS=k1,k2` (or `TETHER_API__KEYS`); so does
//! `TETHER_CLUSTER__NATS_URLS=nats://n1:4222,nats://n2:4222`, and
//! `TETHER_AUTH__BACKEND_SECRETS`. API keys given as a plain list grant every scope;
//! `TETHER_API_KEYS` also takes the file's TOML array, tables and all
//! (`[{key = "...", scopes = ["push"]}, "..."]`).
//! `[auth] secrets_file` names a file with one secret per line (blank lines and `#` comments
//! ignored) that replaces `auth.secrets`; `[cluster] secrets_file` likewise, and the
//! `[cluster] nats_*_file` keys each name a file holding one NATS credential.
//!
//! Secret values from the environment (`TETHER_UPSTREAM__WEBHOOK_SECRET`,
//! `TETHER_CLUSTER__NATS_PASSWORD`, `TETHER_CLUSTER__NATS_TOKEN`,
//! `TETHER_CLUSTER__NATS_NKEY_SEED`, and each item of the lists above) are taken as strings as
//! they are, never parsed as TOML values: a secret of digits stays what it is. No error shows a
//! value from any source: a type error names the key, the source and the kind of value it
//! found, and a TOML syntax error its line and column, never the line's text (a secret may be
//! on it).

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::Figment;

use crate::config::{Config, ConfigError, DEFAULT_TOML};

impl Default for Config {
    fn default() -> Config {
        Config::from_toml("").expect("the embedded default configuration is valid")
    }
}

impl Config {
    /// The default configuration with `text` (a TOML document, possibly empty) merged over it,
    /// by the same layering as the binary's (without the environment): see [`from_toml`].
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        from_toml(text)
    }
}

/// Keys whose environment value may be a comma-separated list (after `TETHER_`, lower case).
const LIST_VARS: &[(&str, &str)] = &[
    ("auth__secrets", "auth.secrets"),
    ("api__keys", "api.keys"),
    ("api_keys", "api.keys"),
    ("cluster__nats_urls", "cluster.nats_urls"),
    ("cluster__secrets", "cluster.secrets"),
    ("auth__backend_secrets", "auth.backend_secrets"),
];

/// Keys whose environment value is a secret string, taken as it is (after `TETHER_`, lower
/// case).
const SECRET_VARS: &[(&str, &str)] = &[
    ("cluster__nats_password", "cluster.nats_password"),
    ("cluster__nats_token", "cluster.nats_token"),
    ("cluster__nats_nkey_seed", "cluster.nats_nkey_seed"),
    ("upstream__webhook_secret", "upstream.webhook_secret"),
];

/// Loads the configuration: default, then `file` (which must exist when given), then the
/// process environment, then `auth.secrets_file` and the cluster's files. Not validated (the
/// caller applies its command-line overrides first).
pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
    let mut fig = Figment::from(Toml::string(DEFAULT_TOML));
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError::Read {
                path: path.display().to_string(),
                source: std::io::ErrorKind::NotFound.into(),
            });
        }
        fig = fig.merge(TomlText::file(path)?);
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
    let mut config = extract(fig)?;
    if !config.auth.secrets_file.as_os_str().is_empty() {
        config.auth.secrets = read_secrets(&config.auth.secrets_file)?;
    }
    config.cluster.load_files().map_err(ConfigError::Invalid)?;
    Ok(config)
}

/// The default configuration with `text` (a TOML document, possibly empty) merged over it, as
/// [`load`] merges a file, but without the environment and without reading the files its keys
/// name. Not validated.
pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
    extract(Figment::from(Toml::string(DEFAULT_TOML)).merge(TomlText::string(text)?))
}

/// The merged layers as a [`Config`]; errors as [`describe`] gives them.
fn extract(fig: Figment) -> Result<Config, ConfigError> {
    let mut config: Config = fig
        .extract()
        .map_err(|e| ConfigError::Invalid(describe(e)))?;
    // The limit the shards enforce is the one LoginOk announces (validated with the rest).
    config.session.max_frame = u32::try_from(config.server.max_frame).unwrap_or(u32::MAX);
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

/// A TOML layer (the `--config` file, or a text given as it is), checked as TOML before
/// figment sees it, so that a syntax error is reported by position only (the TOML parser's own
/// message quotes the line).
struct TomlText {
    /// Where it came from, for figment's error messages.
    metadata: figment::Metadata,
    /// The text.
    text: String,
}

impl TomlText {
    /// Reads and checks the file at `path`.
    fn file(path: &Path) -> Result<TomlText, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let metadata = figment::Metadata::from("TOML file", path);
        TomlText::checked(&path.display().to_string(), metadata, text)
    }

    /// Checks `text`, given as it is.
    fn string(text: &str) -> Result<TomlText, ConfigError> {
        let metadata = figment::Metadata::named("TOML text");
        TomlText::checked("TOML text", metadata, text.to_string())
    }

    /// `text` if it parses as TOML; otherwise an error naming `name` and the position.
    fn checked(
        name: &str,
        metadata: figment::Metadata,
        text: String,
    ) -> Result<TomlText, ConfigError> {
        if let Err(e) = text.parse::<toml::Table>() {
            let at = e.span().map_or(String::new(), |span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!(" at line {line}, column {column}")
            });
            return Err(ConfigError::Invalid(format!(
                "{name}: not valid TOML{at} (the line is not shown: it may hold a secret)"
            )));
        }
        Ok(TomlText { metadata, text })
    }
}

impl figment::Provider for TomlText {
    fn metadata(&self) -> figment::Metadata {
        self.metadata.clone()
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        Toml::string(&self.text).data()
    }
}

/// Every error figment found, on one line, without any value: the key, what was wrong, and
/// where the key came from.
fn describe(e: figment::Error) -> String {
    use figment::error::Kind;
    e.into_iter()
        .map(|e| {
            let what = match &e.kind {
                Kind::InvalidType(found, expected) => {
                    format!(
                        "invalid type: found {}, expected {expected}",
                        kind_of(found)
                    )
                }
                Kind::InvalidValue(found, expected) => {
                    format!("invalid value: a {}, expected {expected}", kind_of(found))
                }
                Kind::InvalidLength(n, expected) => {
                    format!("invalid length {n}, expected {expected}")
                }
                Kind::UnknownVariant(_, expected) => {
                    format!("unknown variant, expected one of {expected:?}")
                }
                Kind::UnknownField(field, expected) => {
                    format!("unknown field `{field}`, expected one of {expected:?}")
                }
                Kind::MissingField(field) => format!("missing field `{field}`"),
                Kind::DuplicateField(field) => format!("duplicate field `{field}`"),
                Kind::ISizeOutOfRange(_) | Kind::USizeOutOfRange(_) => {
                    "integer out of range".to_string()
                }
                Kind::Unsupported(found) => format!("unsupported type {}", kind_of(found)),
                Kind::UnsupportedKey(found, expected) => format!(
                    "unsupported key type {}, must be {expected}",
                    kind_of(found)
                ),
                // Messages of the deserializers tether uses (addresses, lists) carry no value;
                // TOML syntax errors never reach here (`TomlText`).
                Kind::Message(m) => m.clone(),
            };
            let key = match (&e.profile, &e.metadata) {
                (Some(profile), Some(md)) if !e.path.is_empty() => {
                    format!(" for key {:?}", md.interpolate(profile, &e.path))
                }
                _ if !e.path.is_empty() => format!(" for key {:?}", e.path.join(".")),
                _ => String::new(),
            };
            let source = match &e.metadata {
                Some(md) => match &md.source {
                    Some(src) => format!(" in {} {}", md.name, src),
                    None => format!(" in {}", md.name),
                },
                None => String::new(),
            };
            format!("{what}{key}{source}")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// What kind of value `a` is, without the value.
fn kind_of(a: &figment::error::Actual) -> &'static str {
    use figment::error::Actual;
    match a {
        Actual::Bool(_) => "a boolean",
        Actual::Unsigned(_) | Actual::Signed(_) => "an integer",
        Actual::Float(_) => "a float",
        Actual::Char(_) => "a character",
        Actual::Str(_) => "a string",
        Actual::Bytes(_) => "bytes",
        Actual::Unit => "unit",
        Actual::Option => "an option",
        Actual::Seq => "a list",
        Actual::Map => "a table",
        _ => "a value of another kind",
    }
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

    /// A value that must never appear in an error.
    const HIDDEN: &str = "QZXJVWK-hidden-0123456789";

    /// The error of loading and validating with `vars` and the file text `toml`.
    fn error_of(vars: &[(&str, &str)], toml: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let f = file(&dir, "t.toml", toml);
        with_env(vars, || load(Some(&f)))
            .and_then(|c| c.validate().map(|()| c))
            .expect_err("the configuration must be refused")
            .to_string()
    }

    #[test]
    fn no_error_shows_a_value() {
        let cases: &[(&[(&str, &str)], String)] = &[
            // A secret in a variable of another type, or of a list of another shape.
            (
                &[("TETHER_AUTH__MAX_TOKEN_LIFETIME_S", HIDDEN)],
                String::new(),
            ),
            (&[("TETHER_UPSTREAM__SINK", HIDDEN)], String::new()),
            (&[("TETHER_SERVER__LISTEN", HIDDEN)], String::new()),
            // The same in the file, and a file that is not TOML on the secret's line.
            (&[], format!("[auth]\nsecrets = \"{HIDDEN}\"\n")),
            (
                &[],
                format!("[auth]\nmax_token_lifetime_s = \"{HIDDEN}\"\n"),
            ),
            (&[], format!("[auth]\nsecrets = [\"{HIDDEN}\n")),
            (&[], format!("[auth]\nsecrets = [\"{HIDDEN}\" \"x\"]\n")),
            // Refused by validation: short, placeholder, on a public or proxied listener.
            (
                &[("TETHER_SERVER__LISTEN", "0.0.0.0:7700")],
                "[auth]\nsecrets = [\"QZXJVWK\"]\n".to_string(),
            ),
            (
                &[("TETHER_AUTH__BACKEND_SECRETS", "replace-with-QZXJVWK-0123")],
                String::new(),
            ),
            (
                &[
                    ("TETHER_SERVER__PROXY_PROTOCOL", "true"),
                    ("TETHER_AUTH__SECRETS", "QZXJVWKQZXJVWK"),
                ],
                String::new(),
            ),
            (&[("TETHER_API_KEYS", "QZXJVWK")], String::new()),
            (
                &[("TETHER_API_KEYS", "replace-with-QZXJVWK-key")],
                String::new(),
            ),
            (
                &[
                    ("TETHER_UPSTREAM__SINK", "webhook"),
                    ("TETHER_UPSTREAM__WEBHOOK_URL", "http://10.0.0.1:8080/up"),
                    ("TETHER_UPSTREAM__WEBHOOK_SECRET", "QZXJVWK"),
                ],
                String::new(),
            ),
        ];
        for (vars, toml) in cases {
            let e = error_of(vars, toml);
            assert!(!e.contains("QZX"), "{vars:?} {toml:?}: {e}");
        }
        // What the messages say instead.
        let e = error_of(&[("TETHER_AUTH__MAX_TOKEN_LIFETIME_S", HIDDEN)], "");
        assert!(
            e.contains("found a string") && e.contains("MAX_TOKEN_LIFETIME_S"),
            "{e}"
        );
        let e = error_of(&[], &format!("[auth]\nsecrets = [\"{HIDDEN}\n"));
        assert!(e.contains("line 2"), "{e}");
        let e = error_of(&[("TETHER_API_KEYS", "replace-with-QZXJVWK-key")], "");
        assert!(e.contains("api.keys[0] is a template placeholder"), "{e}");
    }

    #[test]
    fn secrets_from_the_environment_are_strings_as_given() {
        let vars = [
            (
                "TETHER_AUTH__BACKEND_SECRETS",
                "8723498723409823740, 2349872349872340987",
            ),
            ("TETHER_UPSTREAM__WEBHOOK_SECRET", "0012345678901234567890"),
        ];
        let c = with_env(&vars, || load(None)).unwrap();
        assert_eq!(
            c.auth.backend_secrets,
            vec!["8723498723409823740", "2349872349872340987"]
        );
        assert_eq!(c.upstream.webhook_secret, "0012345678901234567890");
        let shown = format!("{:?} {:?}", c.auth, c.upstream);
        assert!(
            !shown.contains("87234") && !shown.contains("00123"),
            "{shown}"
        );
    }

    /// The `replace-with-...` placeholders of `text`.
    fn placeholders(text: &str) -> Vec<&str> {
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .filter(|w| w.starts_with("replace-with"))
            .collect()
    }

    /// `deploy/tether.env` as the environment (quotes taken off as systemd does), its secrets
    /// file holding `secret`; with `fill`, each placeholder replaced by a value of its own
    /// made from it.
    fn deploy_template(secret: &str, fill: Option<&str>) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let secrets = file(&dir, "secrets", &format!("{secret}\n"));
        let mut n = 0;
        let mut vars: Vec<(String, String)> = Vec::new();
        for line in include_str!("../../deploy/tether.env").lines() {
            let Some((k, v)) = line.split_once('=').filter(|_| !line.starts_with('#')) else {
                continue;
            };
            let mut v = v.trim_matches('\'').to_string();
            if k == "TETHER_AUTH__SECRETS_FILE" {
                v = secrets.display().to_string();
            }
            if let Some(fill) = fill {
                for p in placeholders(&v.clone()) {
                    n += 1;
                    v = v.replacen(p, &format!("{fill}-{n}"), 1);
                }
            }
            vars.push((k.to_string(), v));
        }
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (&**k, &**v)).collect();
        with_env(&vars, || load(None)).and_then(|c| c.validate().map(|()| c))
    }

    #[test]
    fn the_deploy_templates_placeholders_are_refused() {
        let placeholders = placeholders(include_str!("../../deploy/tether.env"));
        assert!(placeholders.len() >= 5, "{placeholders:?}");
        // As shipped, with a real secret in the secrets file: refused for its placeholders;
        // with every placeholder filled in, taken.
        let real = "k3v9-Qe81-zzP0-aa71-91bc";
        let e = deploy_template(real, None).unwrap_err().to_string();
        assert!(e.contains("placeholder"), "{e}");
        let c = deploy_template(real, Some("b7Qx-22aP-Lm90-ZZ1q-7c0d")).unwrap();
        assert!(c.clients_exposed());
        // Each placeholder, wherever it is put, is refused (also the commented-out ones).
        for p in &placeholders {
            let e = deploy_template(p, Some("b7Qx-22aP-Lm90-ZZ1q-7c0d"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("placeholder") && !e.contains(p), "{p}: {e}");
            let e = with_env(&[("TETHER_API_KEYS", p)], || load(None))
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("api.keys[0] is a template placeholder"),
                "{p}: {e}"
            );
        }
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
    fn a_text_is_merged_as_a_file_is() {
        let dir = tempfile::tempdir().unwrap();
        let text =
            "[server]\nshards = 3\nmax_frame = 4096\n[api]\nkeys = [\"key-one-0123456789abc\"]\n";
        let from_file = with_env(&[], || load(Some(&file(&dir, "t.toml", text)))).unwrap();
        let from_text = from_toml(text).unwrap();
        assert_eq!(format!("{from_file:?}"), format!("{from_text:?}"));
        assert_eq!(from_text.server.shards, 3);
        assert_eq!(
            from_text.session.max_frame, 4096,
            "LoginOk announces the limit enforced"
        );
        // Refused as a file is: the key and the source named, the line never shown.
        let e = from_toml("[server]\nshardz = 3\n").unwrap_err().to_string();
        assert!(e.contains("shardz") && e.contains("TOML text"), "{e}");
        let e = from_toml(&format!("[auth]\nsecrets = [\"{HIDDEN}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && !e.contains("QZX"), "{e}");
    }

    #[test]
    fn lists_take_commas_or_toml() {
        assert_eq!(list("a, b,,c "), vec!["a", "b", "c"]);
        assert_eq!(list(r#"["x,y", "z"]"#), vec!["x,y", "z"]);
        assert!(list("").is_empty());
    }
}
