//! TLS material made at start-up: a private CA and a server certificate it signs for
//! `localhost`, `127.0.0.1` and `::1` (plus the configured front-end host names), and the rustls
//! server configurations built from them.
//!
//! The CA also stands for "a public certification authority" on the MX endpoint: an intermediate
//! CA under it issues client certificates for connector tests
//! ([`TlsMaterial::issue_client_certificate`]). The MX endpoint asks for a client certificate
//! but never fails the handshake over it: like Exchange Online it accepts the connection and
//! decides later (an incomplete chain or a name that matches no connector is answered with
//! `550 5.7.64` at RCPT, not with a TLS alert). [`TlsMaterial::check_client_chain`] is that
//! later check.
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
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use rustls::{DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};

/// Why TLS material could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built.
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] VerifierBuilderError),
}

/// A client certificate issued by the simulator's "public" CA (through its intermediate).
#[derive(Clone, Debug)]
pub struct ClientCertificate {
    /// The end-entity certificate alone (PEM): presenting only this is an incomplete chain.
    pub cert_pem: String,
    /// The end-entity certificate followed by the intermediate (PEM): the full chain.
    pub chain_pem: String,
    /// The private key (PKCS#8 PEM).
    pub key_pem: String,
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
    /// The MX endpoint's configuration: asks for (never requires) a client certificate.
    pub mx: Arc<ServerConfig>,
    /// The intermediate CA's certificate (PEM).
    pub intermediate_pem: String,
    intermediate: Arc<Issuer<'static, KeyPair>>,
    chain_verifier: Arc<dyn ClientCertVerifier>,
}

impl TlsMaterial {
    /// Makes a fresh CA and server certificate.
    pub fn generate(hostname: &str, mx_hostname: &str) -> Result<TlsMaterial, TlsError> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.distinguished_name.push(DnType::CommonName, "exosim test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let mut int_params = CertificateParams::new(Vec::<String>::new())?;
        int_params.distinguished_name.push(DnType::CommonName, "exosim public issuing CA");
        int_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        int_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let int_key = KeyPair::generate()?;
        let int_cert = int_params.signed_by(&int_key, &issuer)?;
        let intermediate = Arc::new(Issuer::new(int_params, int_key));

        let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
        for h in [hostname, mx_hostname] {
            if !h.is_empty() && !names.iter().any(|n| n == h) {
                names.push(h.to_owned());
            }
        }
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, hostname);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;

        let chain = vec![cert.der().clone(), CertificateDer::from(ca_cert.der().to_vec())];
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let server = build(chain.clone(), key_der.clone_key(), vec![], None)?;
        let https = build(chain.clone(), key_der.clone_key(), vec![b"http/1.1".to_vec()], None)?;

        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(ca_cert.der().to_vec()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain_verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
        let deferred = Arc::new(Deferred { inner: chain_verifier.clone() });
        let mx = build(chain, key_der, vec![], Some(deferred))?;
        Ok(TlsMaterial {
            ca_pem: ca_cert.pem(),
            server,
            https,
            mx,
            intermediate_pem: int_cert.pem(),
            intermediate,
            chain_verifier,
        })
    }

    /// Issues a client certificate for `names` (the first is also the subject CN), valid for
    /// client and server authentication, as a relay's public certificate would be.
    pub fn issue_client_certificate(&self, names: &[&str]) -> Result<ClientCertificate, TlsError> {
        let mut params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())?;
        if let Some(cn) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *cn);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.intermediate)?;
        let cert_pem = cert.pem();
        Ok(ClientCertificate {
            chain_pem: format!("{cert_pem}{}", self.intermediate_pem),
            cert_pem,
            key_pem: key.serialize_pem(),
        })
    }

    /// After the handshake: does the chain the client sent (`certs[0]` the end entity, then
    /// intermediates) lead to the trusted root? The root itself may be left out; intermediates
    /// may not (reference §1b: "the full chain must be presented").
    pub fn check_client_chain(&self, certs: &[CertificateDer<'_>]) -> bool {
        let Some((leaf, intermediates)) = certs.split_first() else {
            return false;
        };
        self.chain_verifier.verify_client_cert(leaf, intermediates, UnixTime::now()).is_ok()
    }
}

/// The subject CN and SAN DNS names of a certificate.
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> =
        cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).map(str::to_owned).collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push((*d).to_owned());
            }
        }
    }
    names
}

/// A client-certificate verifier that offers client authentication, accepts whatever the
/// client sends (or nothing), and leaves the judgement to the session; handshake signatures are
/// still checked, so a client cannot present a certificate whose key it does not hold.
#[derive(Debug)]
struct Deferred {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for Deferred {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: a client should then send its certificate whoever issued it.
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn build(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    alpn: Vec<Vec<u8>>,
    client_auth: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match client_auth {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = alpn;
    Ok(Arc::new(config))
}
