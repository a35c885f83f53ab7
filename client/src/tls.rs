//! TLS for the driver's connections: what a client trusts and which name it checks ([`Tls`]),
//! and why a handshake failed, in words a person can act on ([`TlsFailure`]).
//!
//! A tether TLS listener speaks TLS 1.3 and the application protocol `tether` (ALPN); after the
//! handshake the bytes are the same frames as on the plaintext port. The provider is *ring*.
//! A server that completes the handshake without choosing `tether` is refused: rustls lets a
//! client go on without ALPN, but then nothing says the port is a tether listener.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, InvalidDnsNameError, ServerName};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, ClientConnection, InvalidMessage,
    RootCertStore,
};

/// The ALPN protocol id of tether's TLS listener.
pub const ALPN: &[u8] = b"tether";

/// How the driver's connections speak TLS: a rustls configuration (TLS 1.3, ALPN `tether`) and
/// the name the server's certificate must carry. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Tls {
    /// Roots, versions, provider and ALPN, shared by every connection.
    config: Arc<ClientConfig>,
    /// The name checked against the certificate; `None`: the server address's IP.
    server_name: Option<ServerName<'static>>,
}

/// Why a [`Tls`] could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA file cannot be read or holds a malformed PEM section.
    #[error("CA file {path}: {source}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: pem::Error,
    },
    /// The CA file holds no certificate.
    #[error("CA file {0}: no CERTIFICATE in it")]
    NoCertificate(PathBuf),
    /// A certificate of the CA file is not one rustls can use as a root.
    #[error("CA file {path}: {source}")]
    BadRoot {
        /// The file.
        path: PathBuf,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
    /// The server name is neither a DNS name nor an IP address.
    #[error("server name {0:?}: {1}")]
    ServerName(String, #[source] InvalidDnsNameError),
}

impl Tls {
    /// TLS that trusts the certificates of the PEM file `ca` (one or more `CERTIFICATE`
    /// sections: a private CA, or a self-signed server certificate).
    pub fn with_ca_file(ca: impl AsRef<Path>) -> Result<Tls, TlsError> {
        let path = ca.as_ref();
        let mut roots = RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(path).map_err(|source| TlsError::CaFile {
            path: path.to_owned(),
            source,
        })?;
        for cert in certs {
            let cert = cert.map_err(|source| TlsError::CaFile {
                path: path.to_owned(),
                source,
            })?;
            roots.add(cert).map_err(|source| TlsError::BadRoot {
                path: path.to_owned(),
                source,
            })?;
        }
        if roots.is_empty() {
            return Err(TlsError::NoCertificate(path.to_owned()));
        }
        Ok(Tls::with_roots(roots))
    }

    /// TLS 1.3 with ALPN `tether`, trusting `roots`.
    pub fn with_roots(roots: RootCertStore) -> Tls {
        let config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .expect("ring supports TLS 1.3")
                .with_root_certificates(roots)
                .with_no_client_auth();
        Tls::with_config(config)
    }

    /// TLS with the caller's own configuration (other roots, a client certificate, TLS 1.2);
    /// its ALPN protocols are replaced by `tether`.
    pub fn with_config(mut config: ClientConfig) -> Tls {
        config.alpn_protocols = vec![ALPN.to_vec()];
        Tls {
            config: Arc::new(config),
            server_name: None,
        }
    }

    /// Checks the server's certificate for `name` (a DNS name or an IP address) instead of the
    /// IP address of the server it connects to.
    pub fn server_name(mut self, name: &str) -> Result<Tls, TlsError> {
        let parsed = ServerName::try_from(name.to_owned())
            .map_err(|e| TlsError::ServerName(name.to_owned(), e))?;
        self.server_name = Some(parsed);
        Ok(self)
    }

    /// A client session for a connection to `server`.
    pub(crate) fn session(&self, server: SocketAddr) -> Result<ClientConnection, rustls::Error> {
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(server.ip().into()));
        ClientConnection::new(self.config.clone(), name)
    }
}

/// Why a connection's TLS failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsFailure {
    /// The server's certificate does not chain to a trusted CA (`--ca`).
    UnknownCa,
    /// The certificate is not valid for the name checked (`--server-name`, or the server's IP
    /// address).
    NameMismatch,
    /// The certificate expired or is not valid yet.
    Expired,
    /// The server's certificate is a CA certificate (`basicConstraints` `CA:TRUE`, which
    /// `openssl req -x509` writes unless told otherwise): a server's own certificate must not
    /// be one, even a self-signed one.
    CaAsServerCertificate,
    /// The server's certificate is unusable for another reason (rustls's words).
    BadCertificate(String),
    /// The server does not speak the application protocol `tether`: it chose no ALPN
    /// protocol, another one, or refused the offer.
    NoAlpn,
    /// The server closed the connection during the handshake: not a TLS port, or one that
    /// gave up on this client.
    ClosedInHandshake,
    /// The server answered with bytes that are not TLS records: a plaintext port.
    NotTls,
    /// The server ended the handshake with this alert.
    Alert(String),
    /// Anything else rustls reported.
    Other(String),
}

impl From<&rustls::Error> for TlsFailure {
    fn from(e: &rustls::Error) -> TlsFailure {
        match e {
            rustls::Error::InvalidCertificate(c) => match c {
                // A bad signature: issued in the name of a trusted CA, but not by its key.
                CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                    TlsFailure::UnknownCa
                }
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => TlsFailure::NameMismatch,
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => TlsFailure::Expired,
                // webpki's own error, which rustls wraps without naming its type.
                CertificateError::Other(other)
                    if format!("{other:?}").contains("CaUsedAsEndEntity") =>
                {
                    TlsFailure::CaAsServerCertificate
                }
                other => TlsFailure::BadCertificate(format!("{other:?}")),
            },
            rustls::Error::NoApplicationProtocol
            | rustls::Error::AlertReceived(AlertDescription::NoApplicationProtocol) => {
                TlsFailure::NoAlpn
            }
            rustls::Error::InvalidMessage(InvalidMessage::InvalidContentType) => TlsFailure::NotTls,
            rustls::Error::AlertReceived(a) => TlsFailure::Alert(format!("{a:?}")),
            other => TlsFailure::Other(other.to_string()),
        }
    }
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsFailure::UnknownCa => f.write_str(
                "the server's certificate is not signed by a trusted CA (unknown issuer: see --ca)",
            ),
            TlsFailure::NameMismatch => f.write_str(
                "the server's certificate is not valid for the name checked (see --server-name)",
            ),
            TlsFailure::Expired => {
                f.write_str("the server's certificate has expired or is not valid yet")
            }
            TlsFailure::CaAsServerCertificate => f.write_str(
                "the server's certificate is a CA certificate (basicConstraints CA:TRUE); make \
                 it with basicConstraints CA:FALSE, or sign it with a separate CA",
            ),
            TlsFailure::BadCertificate(why) => write!(f, "bad server certificate: {why}"),
            TlsFailure::NoAlpn => f.write_str(
                "the server did not agree to the application protocol \"tether\" (ALPN)",
            ),
            TlsFailure::ClosedInHandshake => f.write_str(
                "the server closed the connection during the TLS handshake (is it a TLS port?)",
            ),
            TlsFailure::NotTls => f.write_str(
                "the server does not speak TLS here (is it the plaintext port rather than its \
                 [tls] listen port?)",
            ),
            TlsFailure::Alert(a) if a == "UnrecognisedName" || a == "AccessDenied" => write!(
                f,
                "the server refused the handshake: alert {a} (it may have no certificate for \
                 the name asked for: see --server-name)"
            ),
            TlsFailure::Alert(a) => write!(f, "the server refused the handshake: alert {a}"),
            TlsFailure::Other(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for TlsFailure {}
