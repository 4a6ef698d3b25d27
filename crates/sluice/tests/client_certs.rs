//! TLS client certificates as a relay credential, from a client outside `allowed_networks` and
//! without AUTH: a valid certificate whose name a `[[certificate]]` rule maps relays (within that
//! identity's sender and recipient rules); no certificate, or a valid one no rule maps, is refused
//! at RCPT (554 5.7.1); an expired one, or one from another CA, fails the handshake; a listener with
//! `client_certificate = "required"` refuses a TLS session without one; and `require =
//! ["certificate", "auth"]` needs both.

mod common;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA for device certificates.
struct ClientCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl ClientCa {
    fn new(name: &str) -> ClientCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&key).unwrap();
        ClientCa { pem: cert.pem(), issuer: Issuer::new(params, key) }
    }

    /// A client certificate for `name` (subject CN and DNS SAN); `expired`: valid only in 2020.
    fn issue(&self, name: &str, expired: bool) -> Identity {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 12, 31);
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Identity { chain: vec![cert.der().clone()], key: key.serialize_der() }
    }
}

struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: Vec<u8>,
}

/// A rustls client trusting the server's test CA, presenting `identity` if given.
fn client(pki: &Pki, identity: Option<&Identity>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(pki.ca_der.clone())).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match identity {
        None => builder.with_no_client_auth(),
        Some(id) => builder
            .with_client_auth_cert(id.chain.clone(), PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key.clone())))
            .unwrap(),
    })
}

struct World {
    _dir: tempfile::TempDir,
    pki: Pki,
    ca: ClientCa,
    up: Upstream,
    sluice: Sluice,
}

const OPTIONAL: usize = 0;
const REQUIRED: usize = 1;
const CERT_AND_AUTH: usize = 2;

fn start() -> World {
    let dir = tempdir();
    let ca = ClientCa::new("device CA");
    let ca_file: PathBuf = write_file(dir.path(), "client-ca.pem", ca.pem.as_bytes());
    let ca_path = ca_file.display().to_string();
    let pki = Pki::new();
    let up = Upstream::builder().start();
    // The client (127.0.0.1) is in none of these listeners' allowed networks.
    let listener = || Listener::starttls().allow(&["192.0.2.0/24"]).set("client_ca_file", ca_path.as_str());
    let sluice = Sluice::builder()
        .pki(&pki)
        .listener(listener())
        .listener(listener().set("client_certificate", "required"))
        .listener(listener().set("require", vec!["certificate", "auth"]))
        .user("scanner", "scanner-password")
        .toml(
            "[[certificate]]\nname = \"*.printers.example.lan\"\nidentity = \"printers\"\n\
             allowed_senders = [\"scan*@example.com\"]\nallowed_recipient_domains = [\"example.com\"]\n",
        )
        .upstream(UpstreamCfg::of(&up))
        .start();
    World { _dir: dir, pki, ca, up, sluice }
}

/// Plain connection, EHLO, STARTTLS, then the handshake presenting `identity`: the client after
/// TLS EHLO, or the error that ended the TLS session. With TLS 1.3 the server checks the client's
/// certificate after the client has finished its side of the handshake, so a refusal may only
/// show at the first read.
fn tls_session(w: &World, listener: usize, identity: Option<&Identity>) -> io::Result<SmtpClient> {
    let mut c = w.sluice.connect(listener);
    c.ehlo();
    c.cmd("STARTTLS").expect(220, None, "STARTTLS");
    c.tls_handshake(client(&w.pki, identity))?;
    c.send_raw(b"EHLO client.test\r\n");
    let reply = c.try_read_reply()?;
    assert_eq!(reply.code, 250, "EHLO under TLS: {reply}");
    Ok(c)
}

/// The TLS session must fail, with sluice's alert `alert` (as rustls names it).
#[track_caller]
fn expect_handshake_failure(w: &World, listener: usize, identity: Option<&Identity>, alert: &str, what: &str) {
    match tls_session(w, listener, identity) {
        Ok(_) => panic!("{what}: the TLS session was established"),
        Err(e) => assert!(e.to_string().contains(alert), "{what}: expected the alert {alert}, got: {e}"),
    }
}

#[test]
fn valid_mapped_certificate_relays_within_its_rules() {
    let w = start();
    let printer = w.ca.issue("scanner1.printers.example.lan", false);
    let mut c = tls_session(&w, OPTIONAL, Some(&printer)).expect("TLS with a valid certificate");
    // The identity's sender rules hold.
    let r = c.cmd("MAIL FROM:<boss@example.com>");
    r.expect(550, Some("5.7.1"), "a sender outside the certificate identity's rules");
    assert!(r.text().contains("certificate printers"), "the refusal names the identity: {r}");
    c.cmd("MAIL FROM:<scan1@example.com>").expect(250, None, "an allowed sender");
    let r = c.cmd("RCPT TO:<someone@elsewhere.test>");
    r.expect(550, Some("5.7.1"), "a recipient domain outside the identity's rules");
    c.cmd("RCPT TO:<boss@example.com>").expect(250, None, "RCPT with a mapped certificate");
    c.cmd("DATA").expect(354, None, "DATA");
    queued_id(&c.send_content(&message("scan1@example.com", "boss@example.com", "scan", "a scan")));
    c.quit();
    let msgs = w.up.wait_for_messages(1, DEADLINE);
    assert_eq!(
        (msgs[0].mail_from.as_str(), msgs[0].rcpt_tos.as_slice()),
        ("scan1@example.com", &["boss@example.com".to_string()][..])
    );

    // Also on the listener where a certificate is required.
    let mut c = tls_session(&w, REQUIRED, Some(&printer)).expect("TLS with a valid certificate (required)");
    c.cmd("MAIL FROM:<scan2@example.com>").expect(250, None, "MAIL");
    c.cmd("RCPT TO:<boss@example.com>").expect(250, None, "RCPT with a required, mapped certificate");
    c.quit();
}

#[test]
fn missing_or_unmapped_certificate_is_denied_at_rcpt() {
    let w = start();
    let laptop = w.ca.issue("laptop.example.lan", false);
    for (identity, what) in [(None, "no certificate"), (Some(&laptop), "a valid certificate no rule maps")] {
        let mut c = tls_session(&w, OPTIONAL, identity).unwrap_or_else(|e| panic!("{what}: TLS failed: {e}"));
        c.cmd("MAIL FROM:<scan1@example.com>").expect(250, None, what);
        let r = c.cmd("RCPT TO:<boss@example.com>");
        r.expect(554, Some("5.7.1"), what);
        assert!(r.text().contains("Relay access denied"), "{what}: {r}");
        c.quit();
    }
    assert!(w.sluice.log().contains("matches no [[certificate]] rule"), "{}", w.sluice.log());
    assert!(w.up.messages().is_empty());
}

#[test]
fn expired_foreign_or_absent_certificates_fail_the_handshake() {
    let w = start();
    let expired = w.ca.issue("scanner1.printers.example.lan", true);
    expect_handshake_failure(&w, OPTIONAL, Some(&expired), "CertificateExpired", "an expired certificate");
    let foreign = ClientCa::new("someone else's CA").issue("scanner1.printers.example.lan", false);
    expect_handshake_failure(&w, OPTIONAL, Some(&foreign), "UnknownCA", "a certificate from another CA");
    expect_handshake_failure(&w, REQUIRED, None, "CertificateRequired", "no certificate where one is required");
    let what = "an expired certificate where one is required";
    expect_handshake_failure(&w, REQUIRED, Some(&expired), "CertificateExpired", what);
    // Each refusal is logged with its reason.
    wait_until(DEADLINE, "four logged handshake failures", || {
        let log = w.sluice.log();
        let failures = log.lines().filter(|l| l.contains("TLS handshake") && l.contains("error=")).count();
        (failures == 4).then_some(())
    });
    assert!(w.sluice.log().contains("certificate expired"), "{}", w.sluice.log());
    assert!(w.up.messages().is_empty());
}

#[test]
fn required_certificate_and_auth_need_both() {
    let w = start();
    let printer = w.ca.issue("scanner1.printers.example.lan", false);

    // Certificate only.
    let mut c = tls_session(&w, CERT_AND_AUTH, Some(&printer)).expect("TLS");
    c.cmd("MAIL FROM:<scan1@example.com>").expect(250, None, "MAIL");
    c.cmd("RCPT TO:<boss@example.com>").expect(554, Some("5.7.1"), "certificate without AUTH");
    c.quit();

    // AUTH only.
    let mut c = tls_session(&w, CERT_AND_AUTH, None).expect("TLS");
    c.auth_plain("scanner", "scanner-password").expect(235, None, "AUTH");
    c.cmd("MAIL FROM:<scan1@example.com>").expect(250, None, "MAIL");
    c.cmd("RCPT TO:<boss@example.com>").expect(554, Some("5.7.1"), "AUTH without a certificate");
    c.quit();

    // Both.
    let mut c = tls_session(&w, CERT_AND_AUTH, Some(&printer)).expect("TLS");
    c.auth_plain("scanner", "scanner-password").expect(235, None, "AUTH");
    c.cmd("MAIL FROM:<scan1@example.com>").expect(250, None, "MAIL");
    c.cmd("RCPT TO:<boss@example.com>").expect(250, None, "certificate and AUTH");
    c.cmd("DATA").expect(354, None, "DATA");
    queued_id(&c.send_content(&message("scan1@example.com", "boss@example.com", "both", "hello")));
    c.quit();
    let msgs = w.up.wait_for_messages(1, DEADLINE);
    assert_eq!(msgs[0].subject().as_deref(), Some("both"));
}
