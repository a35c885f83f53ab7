//! TLS for the integration tests: certificates made on the spot, the `[tls]` section that
//! serves them, and clients of the TLS listener.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::{CertificateDer, ServerName};
pub use rustls::ClientConnection;

use crate::{Client, PATIENCE};

/// A certificate and its key, written as PEM files.
#[derive(Clone, Debug)]
pub struct Cert {
    /// The certificate's file.
    pub cert: PathBuf,
    /// The key's file.
    pub key: PathBuf,
    /// The certificate itself: clients trust it as their root.
    pub der: CertificateDer<'static>,
}

impl Cert {
    /// A self-signed certificate for `localhost` and 127.0.0.1 (and `names`), written to
    /// `dir/stem.pem` and `dir/stem.key`.
    pub fn new(dir: &Path, stem: &str, names: &[&str]) -> anyhow::Result<Cert> {
        let mut all = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        all.extend(names.iter().map(|n| n.to_string()));
        let ck = rcgen::generate_simple_self_signed(all)?;
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, ck.cert.pem())?;
        std::fs::write(&key, ck.key_pair.serialize_pem())?;
        Ok(Cert {
            cert,
            key,
            der: CertificateDer::from(ck.cert.der().to_vec()),
        })
    }

    /// The `[tls]` section of a server that serves this certificate on a port the kernel
    /// picks.
    pub fn section(&self) -> String {
        format!(
            "[tls]\nlisten = \"127.0.0.1:0\"\ncertificate = {:?}\nkey = {:?}\n",
            self.cert.display().to_string(),
            self.key.display().to_string()
        )
    }

    /// Writes this certificate and key over `other`'s files (a renewal in place).
    pub fn install_over(&self, other: &Cert) -> anyhow::Result<()> {
        std::fs::copy(&self.cert, &other.cert)?;
        std::fs::copy(&self.key, &other.key)?;
        Ok(())
    }
}

/// A client configuration that trusts `root` and offers ALPN `alpn`.
pub fn client_config(root: &CertificateDer<'static>, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).expect("a root certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Connects to the TLS listener `addr` as `name` (a host name, or an address for no SNI) with
/// `config` and finishes the handshake.
pub fn handshake(
    addr: SocketAddr,
    name: &str,
    config: Arc<rustls::ClientConfig>,
) -> anyhow::Result<Client> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(PATIENCE))?;
    let name = ServerName::try_from(name.to_string()).context("server name")?;
    let mut conn = ClientConnection::new(config, name)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut stream).context("TLS handshake")?;
    }
    Client::with_tls(stream, conn)
}

/// Connects to the TLS listener `addr` trusting `cert`, by address (no SNI).
pub fn connect(addr: SocketAddr, cert: &Cert) -> anyhow::Result<Client> {
    handshake(addr, "127.0.0.1", client_config(&cert.der, &[b"tether"]))
}
