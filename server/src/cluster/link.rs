//! How a node reaches NATS: the client's credentials and TLS from `[cluster]`, shared by the
//! cluster thread and the upstream NATS sink (each opens a connection of its own with them),
//! and server URLs as they may be logged.

use std::path::PathBuf;

use super::config::{redact_url, ClusterConfig, Hidden};

/// The NATS servers and how to authenticate to them.
#[derive(Clone, Debug, Default)]
pub struct NatsServers {
    /// Server URLs (never with credentials in them: refused at load).
    pub urls: Vec<String>,
    /// User name and password.
    user: Option<(String, Hidden)>,
    /// Token.
    token: Hidden,
    /// NKey seed.
    nkey: Hidden,
    /// A credentials file's contents (user JWT and NKey seed).
    credentials: Hidden,
    /// CA certificates (PEM).
    ca: PathBuf,
    /// Client certificate and key (PEM).
    cert: Option<(PathBuf, PathBuf)>,
    /// Refuse a connection without TLS.
    tls: bool,
}

impl NatsServers {
    /// The servers and credentials of `[cluster]` (validated).
    pub fn of(cfg: &ClusterConfig) -> NatsServers {
        let user =
            (!cfg.nats_user.is_empty()).then(|| (cfg.nats_user.clone(), cfg.nats_password.clone()));
        let cert = (!cfg.tls_cert_file.as_os_str().is_empty())
            .then(|| (cfg.tls_cert_file.clone(), cfg.tls_key_file.clone()));
        NatsServers {
            urls: cfg.nats_urls.clone(),
            user,
            token: cfg.nats_token.clone(),
            nkey: cfg.nats_nkey_seed.clone(),
            credentials: cfg.nats_credentials.clone(),
            ca: cfg.tls_ca_file.clone(),
            cert,
            tls: cfg.tls(),
        }
    }

    /// Servers that need no credentials (tests).
    pub fn plain(urls: Vec<String>) -> NatsServers {
        NatsServers {
            urls,
            ..NatsServers::default()
        }
    }

    /// The URLs as they may be logged.
    pub fn urls_for_log(&self) -> Vec<String> {
        self.urls.iter().map(|u| redact_url(u)).collect()
    }

    /// Client options with the credentials and TLS settings; the caller adds its name,
    /// timeouts and callbacks. The error names what could not be used, never its value.
    pub fn options(&self) -> Result<async_nats::ConnectOptions, String> {
        let mut o = async_nats::ConnectOptions::new();
        if let Some((user, password)) = &self.user {
            o = o.user_and_password(user.clone(), password.expose().to_string());
        }
        if !self.token.is_empty() {
            o = o.token(self.token.expose().to_string());
        }
        if !self.nkey.is_empty() {
            o = o.nkey(self.nkey.expose().to_string());
        }
        if !self.credentials.is_empty() {
            o = o
                .credentials(self.credentials.expose())
                .map_err(|_| "cluster.nats_credentials_file cannot be used".to_string())?;
        }
        if !self.ca.as_os_str().is_empty() {
            o = o.add_root_certificates(self.ca.clone());
        }
        if let Some((cert, key)) = &self.cert {
            o = o.add_client_certificate(cert.clone(), key.clone());
        }
        Ok(o.require_tls(self.tls))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_logged_without_credentials() {
        assert_eq!(
            redact_url("nats://tether:pw@10.0.0.5:4222"),
            "nats://***@10.0.0.5:4222"
        );
        assert_eq!(redact_url("tls://tok@h:4222"), "tls://***@h:4222");
        assert_eq!(redact_url("u:p/w@h:4222"), "***@h:4222");
        assert_eq!(redact_url("nats://u:a@b@h"), "nats://***@h");
        assert_eq!(redact_url("nats://h:4222"), "nats://h:4222");
        let s = NatsServers::plain(vec!["nats://a:b@h:1".into(), "nats://h:2".into()]);
        assert_eq!(s.urls_for_log(), ["nats://***@h:1", "nats://h:2"]);
    }

    #[test]
    fn options_carry_no_secret_in_their_debug() {
        let s = NatsServers {
            urls: vec!["nats://h:4222".into()],
            user: Some(("tether".into(), Hidden::new("pw-0123456789-secret"))),
            tls: true,
            ..NatsServers::default()
        };
        assert!(!format!("{s:?}").contains("pw-0123456789"));
        s.options().unwrap();
    }
}
