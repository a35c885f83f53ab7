//! TLS for the load connections: one rustls client configuration per worker (TLS 1.3, *ring*,
//! the roots of `--ca`), and one session per connection that speaks TLS.
//!
//! Sessions live beside the connection slots, not in them (`conn::Conn` stays 64 bytes), and a
//! plaintext run has none: its path is the same as before TLS existed. How each protocol
//! starts TLS:
//!
//! | protocol | TLS | ALPN offered and required |
//! |---|---|---|
//! | tether | from the first byte (the server's `[tls] listen`) | `tether` |
//! | MQTT | from the first byte (mosquitto's `listener` with `certfile`/`keyfile`) | none |
//! | NATS | after the server's plaintext `INFO` line, as NATS clients do when it says `tls_required` (nats-server's `tls { }`) | none |
//! | any, over WebSocket (wss://) | from the first byte, then the upgrade | `http/1.1` (required of tether) |

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use serde::{Deserialize, Serialize};

use crate::net;
use crate::wire::Protocol;

/// tether's ALPN protocol id.
pub const TETHER_ALPN: &[u8] = b"tether";
/// The ALPN protocol of wss:// (tether's WebSocket listener with `tls = true` requires it).
pub const HTTP11_ALPN: &[u8] = b"http/1.1";

/// The TLS part of a job: what the worker builds its configuration from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TlsJob {
    /// PEM file of the CA (or self-signed certificate) the servers' certificates chain to.
    pub ca: String,
    /// The name checked against the certificates; `None`: each server's IP address.
    pub server_name: Option<String>,
}

/// A worker's TLS client side.
#[derive(Debug)]
pub struct Tls {
    /// Shared by every session.
    config: Arc<ClientConfig>,
    /// The name checked, when not the server's IP address.
    server_name: Option<ServerName<'static>>,
    /// The ALPN protocol a session must agree to, if any.
    alpn: Option<&'static [u8]>,
}

impl Tls {
    /// The configuration of `job` for `protocol`, under WebSocket when `ws`; reads the CA
    /// file.
    pub fn new(job: &TlsJob, protocol: Protocol, ws: bool) -> anyhow::Result<Tls> {
        let mut roots = RootCertStore::empty();
        let path = Path::new(&job.ca);
        for cert in
            CertificateDer::pem_file_iter(path).with_context(|| format!("--ca {}", job.ca))?
        {
            let cert = cert.with_context(|| format!("--ca {}", job.ca))?;
            roots
                .add(cert)
                .with_context(|| format!("--ca {}: a certificate rustls cannot use", job.ca))?;
        }
        anyhow::ensure!(!roots.is_empty(), "--ca {}: no CERTIFICATE in it", job.ca);
        let mut config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .context("TLS 1.3 with ring")?
                .with_root_certificates(roots)
                .with_no_client_auth();
        // wss:// offers http/1.1 to every server and requires it of tether's.
        let offered = if ws { HTTP11_ALPN } else { TETHER_ALPN };
        if ws || protocol == Protocol::Tether {
            config.alpn_protocols = vec![offered.to_vec()];
        }
        let alpn = (protocol == Protocol::Tether).then_some(offered);
        let server_name = match &job.server_name {
            Some(name) => Some(
                ServerName::try_from(name.clone())
                    .map_err(|e| anyhow::anyhow!("--server-name {name:?}: {e}"))?,
            ),
            None => None,
        };
        Ok(Tls {
            config: Arc::new(config),
            server_name,
            alpn,
        })
    }

    /// A new session for a connection to `server`. Its buffers have no limit, as a plaintext
    /// connection's `pending` bytes have none: what the socket does not take waits.
    pub fn session(&self, server: SocketAddr) -> Result<ClientConnection, rustls::Error> {
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(server.ip().into()));
        let mut session = ClientConnection::new(self.config.clone(), name)?;
        session.set_buffer_limit(None);
        Ok(session)
    }

    /// The ALPN protocol required, for error messages.
    pub fn alpn_name(&self) -> String {
        String::from_utf8_lossy(self.alpn.unwrap_or_default()).into_owned()
    }

    /// Whether a session that finished its handshake agreed to the ALPN protocol required.
    pub fn alpn_ok(&self, session: &ClientConnection) -> bool {
        self.alpn.is_none() || session.alpn_protocol() == self.alpn
    }
}

/// A short, stable error-count key for a TLS failure: the cause, not the details.
pub fn error_kind(e: &rustls::Error) -> String {
    use rustls::{AlertDescription, CertificateError, Error};
    let what = match e {
        Error::InvalidCertificate(CertificateError::UnknownIssuer)
        | Error::InvalidCertificate(CertificateError::BadSignature) => {
            "certificate not signed by --ca".to_string()
        }
        Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => "certificate not valid for the server name".to_string(),
        Error::InvalidCertificate(c) if format!("{c:?}").contains("CaUsedAsEndEntity") => {
            "the server's certificate is a CA certificate (CA:TRUE)".to_string()
        }
        Error::InvalidCertificate(c) => format!("bad certificate: {c:?}"),
        Error::AlertReceived(AlertDescription::NoApplicationProtocol) => {
            "the server refused the ALPN protocol".to_string()
        }
        Error::AlertReceived(a) => format!("alert {a:?}"),
        other => other.to_string(),
    };
    format!("tls: {what}")
}

/// A raw socket as rustls's `read_tls`/`write_tls` want it.
#[derive(Debug)]
pub struct Fd(pub RawFd);

impl io::Read for Fd {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        net::read(self.0, buf)
    }
}

impl io::Write for Fd {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        net::write(self.0, buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
