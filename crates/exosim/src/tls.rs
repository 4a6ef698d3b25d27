//! TLS material made at start-up: a private CA and a server certificate it signs for
//! `localhost`, `127.0.0.1` and `::1` (plus the configured front-end host name), and the rustls
//! server configuration built from them.
//!
//! No files are needed: tests and the demo hand [`TlsMaterial::ca_pem`] to their clients. The
//! server speaks TLS 1.2 and 1.3 only, like smtp.office365.com; rustls cannot speak TLS 1.0 or
//! 1.1 at all, so a legacy ClientHello fails the handshake with a `protocol_version` alert.
//! (Exchange Online instead completes a legacy handshake and answers the next command with
//! `421 4.7.66 TLS 1.0 and 1.1 are not supported…`; a client sees a refusal either way, but not
//! that reply text. We cannot produce it without a TLS 1.0 stack.)

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Why TLS material could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The CA and the server's configuration.
#[derive(Clone)]
pub struct TlsMaterial {
    /// The CA certificate, PEM: what clients must trust.
    pub ca_pem: String,
    /// The server configuration (TLS 1.2+).
    pub server: Arc<ServerConfig>,
    /// The same with ALPN `http/1.1`, for the HTTPS endpoint.
    pub https: Arc<ServerConfig>,
}

impl TlsMaterial {
    /// Makes a fresh CA and server certificate.
    pub fn generate(hostname: &str) -> Result<TlsMaterial, TlsError> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.distinguished_name.push(DnType::CommonName, "exosim test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
        if !hostname.is_empty() && !names.iter().any(|n| n == hostname) {
            names.push(hostname.to_owned());
        }
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, hostname);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;

        let chain = vec![cert.der().clone(), CertificateDer::from(ca_cert.der().to_vec())];
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let server = build(chain.clone(), key_der.clone_key(), vec![])?;
        let https = build(chain, key_der, vec![b"http/1.1".to_vec()])?;
        Ok(TlsMaterial { ca_pem: ca_cert.pem(), server, https })
    }
}

fn build(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    alpn: Vec<Vec<u8>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = alpn;
    Ok(Arc::new(config))
}
