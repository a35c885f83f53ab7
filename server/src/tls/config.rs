//! `[tls]`: the TLS listener's address, certificates and policy, and the rustls
//! [`ServerConfig`] built from them (at start and on every SIGHUP).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Deserialize;

/// The ALPN protocol id of tether's protocol.
pub const ALPN: &[u8] = b"tether";

/// One certificate chain and its key, as PEM files.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CertFiles {
    /// The chain, leaf first.
    pub certificate: PathBuf,
    /// The leaf's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// `[tls]`: see `default.toml` for each key's meaning.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The TLS listener's address ("" = off).
    pub listen: String,
    /// The default certificate chain (PEM).
    pub certificate: String,
    /// Its private key (PEM).
    pub key: String,
    /// More certificates, chosen by the server name a client asks for.
    pub sni: Vec<CertFiles>,
    /// ALPN protocols offered.
    pub alpn: Vec<String>,
    /// Handshakes a shard advances per batch.
    pub handshakes_per_batch: u32,
}

/// Why the TLS configuration cannot be used. Names files, never their contents.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// A key is missing or wrong.
    #[error("tls: {0}")]
    Invalid(String),
    /// A file could not be read or parsed.
    #[error("tls: {what} {path}: {reason}")]
    File {
        /// "certificate" or "key".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl TlsConfig {
    /// Whether the TLS listener is on.
    pub fn enabled(&self) -> bool {
        !self.listen.is_empty()
    }

    /// The listener's address.
    pub fn address(&self) -> Result<std::net::SocketAddr, TlsConfigError> {
        self.listen.parse().map_err(|_| {
            TlsConfigError::Invalid(format!("listen: {:?} is not an address", self.listen))
        })
    }

    /// Checks what can be checked without reading files.
    pub fn validate(&self) -> Result<(), TlsConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        self.address()?;
        if self.certificate.is_empty() || self.key.is_empty() {
            return Err(TlsConfigError::Invalid(
                "listen is set: certificate and key are required".into(),
            ));
        }
        if self.alpn.iter().any(|p| p.is_empty() || p.len() > 255) {
            return Err(TlsConfigError::Invalid(
                "alpn: every protocol id is 1 to 255 bytes".into(),
            ));
        }
        if !(1..=4096).contains(&self.handshakes_per_batch) {
            return Err(TlsConfigError::Invalid(
                "handshakes_per_batch: 1 to 4096".into(),
            ));
        }
        Ok(())
    }

    /// Reads the certificates and keys and builds the rustls configuration: TLS 1.3 only, no
    /// session tickets (nothing per client is stored server-side, and no 0-RTT data is
    /// accepted), keys extractable for the shard's own record layer.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsConfigError> {
        self.validate()?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let default = CertFiles {
            certificate: self.certificate.clone().into(),
            key: self.key.clone().into(),
        };
        let mut keys = Vec::with_capacity(1 + self.sni.len());
        for files in std::iter::once(&default).chain(&self.sni) {
            keys.push(Arc::new(load(files, &provider)?));
        }
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsConfigError::Invalid(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(BySni { keys }));
        config.alpn_protocols = self.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        config.send_tls13_tickets = 0;
        config.max_early_data_size = 0;
        config.enable_secret_extraction = true;
        Ok(Arc::new(config))
    }
}

/// Reads one chain and key and checks that they belong together.
fn load(files: &CertFiles, provider: &CryptoProvider) -> Result<CertifiedKey, TlsConfigError> {
    let file_error = |what, path: &Path, reason: String| TlsConfigError::File {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(&files.certificate)
        .map_err(|e| file_error("certificate", &files.certificate, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error("certificate", &files.certificate, e.to_string()))?;
    if chain.is_empty() {
        return Err(file_error(
            "certificate",
            &files.certificate,
            "no CERTIFICATE block".into(),
        ));
    }
    webpki::EndEntityCert::try_from(&chain[0]).map_err(|e| {
        file_error(
            "certificate",
            &files.certificate,
            format!("the first certificate does not parse: {e}"),
        )
    })?;
    // The key's own parser error could quote key bytes: say only that it failed.
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        let reason = match e {
            rustls_pki_types::pem::Error::Io(e) => e.to_string(),
            rustls_pki_types::pem::Error::NoItemsFound => "no PRIVATE KEY block".into(),
            _ => "not a PEM private key".into(),
        };
        file_error("key", &files.key, reason)
    })?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        let reason = match e {
            rustls::Error::InconsistentKeys(_) => format!(
                "does not belong to the certificate {}",
                files.certificate.display()
            ),
            _ => "unsupported key type (RSA, ECDSA P-256/P-384 or Ed25519 expected)".into(),
        };
        file_error("key", &files.key, reason)
    })?;
    Ok(certified)
}

/// Chooses the certificate for a ClientHello: without a server name (a client that connects
/// by address), the default one; with one, the first certificate valid for that name; an
/// unknown name fails the handshake (rustls answers `access_denied`), so a scanner learns
/// nothing about which names are served.
#[derive(Debug)]
struct BySni {
    /// The default first, then `tls.sni` in order.
    keys: Vec<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else {
            return self.keys.first().cloned();
        };
        let name = ServerName::try_from(name).ok()?;
        self.keys
            .iter()
            .find(|k| {
                k.end_entity_cert()
                    .ok()
                    .and_then(|c| webpki::EndEntityCert::try_from(c).ok())
                    .is_some_and(|c| c.verify_is_valid_for_subject_name(&name).is_ok())
            })
            .cloned()
    }
}
