//! Arbitrary bytes through the path a TLS connection's received bytes take in a shard: into a
//! fresh connection (the handshake: rustls), or into one whose handshake with a real client is
//! done (the shard's own record layer), in pieces of any size. The first input byte chooses
//! the phase and the piece size.
//!
//! Checks, beyond "does not panic": once a call failed, the connection takes bytes without a
//! word and yields nothing more;
//! an open connection never yields plaintext from bytes its peer did not protect (the fuzzer
//! does not know the keys, so any plaintext at all is a forgery that got through).

#![no_main]

use std::io::Write;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use tether_server::tls::{TlsConfig, TlsConn};

/// The server's configuration (a certificate made once) and a client's that trusts it.
fn configs() -> &'static (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    static CONFIGS: OnceLock<(Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>)> =
        OnceLock::new();
    CONFIGS.get_or_init(|| {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let dir = std::env::temp_dir().join(format!("tether-fuzz-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
        let server = TlsConfig {
            listen: "127.0.0.1:0".into(),
            certificate: cert.display().to_string(),
            key: key.display().to_string(),
            sni: Vec::new(),
            alpn: vec!["tether".into()],
            handshakes_per_batch: 32,
        }
        .server_config()
        .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ck.cert.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (server, Arc::new(client))
    })
}

/// A server connection whose handshake with a rustls client is done.
fn open() -> TlsConn {
    let (server, client) = configs();
    let mut conn = TlsConn::new(Arc::clone(server)).unwrap();
    let mut c =
        rustls::ClientConnection::new(Arc::clone(client), "localhost".try_into().unwrap())
            .unwrap();
    let (mut plain, mut scratch) = (Vec::new(), Vec::new());
    for _ in 0..4 {
        let mut out = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut out).unwrap();
        }
        let mut back = Vec::new();
        conn.receive(&out, &mut plain, &mut back, &mut scratch).unwrap();
        let mut r = &back[..];
        while !r.is_empty() {
            c.read_tls(&mut r).unwrap();
            c.process_new_packets().unwrap();
        }
    }
    assert!(conn.is_open());
    let _ = c.writer().flush();
    conn
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, data)) = data.split_first() else {
        return;
    };
    let opened = first & 1 == 1;
    let piece = usize::from(first >> 1).max(1);
    let mut conn = if opened {
        open()
    } else {
        TlsConn::new(Arc::clone(&configs().0)).unwrap()
    };
    let (mut plain, mut wire, mut scratch) = (Vec::new(), Vec::new(), Vec::new());
    let mut failed = false;
    for chunk in data.chunks(piece) {
        let before = (plain.len(), wire.len());
        let result = conn.receive(chunk, &mut plain, &mut wire, &mut scratch);
        if failed {
            assert!(result.is_ok(), "a failed connection failed again");
            assert_eq!((plain.len(), wire.len()), before, "output from a failed connection");
        }
        failed |= result.is_err();
    }
    if opened {
        assert!(plain.is_empty(), "forged records were accepted: {plain:?}");
    }
});
