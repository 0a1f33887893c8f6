//! Inbound TLS from PEM files, with ALPN for HTTP/2; outbound TLS (upstreams, trace
//! collectors) verified against the Mozilla root set.
use std::io::BufReader;
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use wasmgate_config::TlsConfig;

/// Builds the acceptor; errors name the file.
pub(crate) fn acceptor(cfg: &TlsConfig, http2: bool) -> std::io::Result<TlsAcceptor> {
    let bad = |path: &str, msg: String| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{path}: {msg}"))
    };
    let mut certs_reader =
        BufReader::new(std::fs::File::open(&cfg.cert).map_err(|e| bad(&cfg.cert, e.to_string()))?);
    let certs = rustls_pemfile::certs(&mut certs_reader)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&cfg.cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(bad(&cfg.cert, "no certificate found".into()));
    }
    let mut key_reader =
        BufReader::new(std::fs::File::open(&cfg.key).map_err(|e| bad(&cfg.key, e.to_string()))?);
    let key = rustls_pemfile::private_key(&mut key_reader)
        .map_err(|e| bad(&cfg.key, e.to_string()))?
        .ok_or_else(|| bad(&cfg.key, "no private key found".into()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad(&cfg.cert, e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| bad(&cfg.cert, e.to_string()))?;
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The client side: ring, safe protocol versions, the webpki (Mozilla) roots, no client
/// certificate. Upstream targets and trace collectors share it.
pub(crate) fn client_config() -> Result<rustls::ClientConfig, String> {
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(rustls::RootCertStore::from_iter(
        webpki_roots::TLS_SERVER_ROOTS.iter().cloned(),
    ))
    .with_no_client_auth())
}
