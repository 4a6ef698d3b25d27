//! No open relay: a client outside `allowed_networks` that has not authenticated is refused
//! at RCPT with 554 5.7.1; AUTH is offered only under TLS (unless explicitly allowed in
//! plaintext), and after AUTH the same client may relay.

mod common;

use common::*;

const USER: &str = "scanner";
const PASS: &str = "correct horse battery staple";

fn upstream(pki: &Pki) -> Upstream {
    Upstream::builder().tls(pki).auth("relay", "pw").start()
}

#[test]
fn unauthenticated_client_outside_allowed_networks_is_denied_at_rcpt() {
    let pki = Pki::new();
    let up = upstream(&pki);
    let sluice = Sluice::builder()
        // 0: the listener under test; 127.0.0.1 is outside 10.0.0.0/8.
        .listener(Listener::plain().allow(&["10.0.0.0/8"]))
        // 1: a listener 127.0.0.1 may relay through, for the control message.
        .listener(Listener::plain().allow(&["127.0.0.0/8"]))
        .user(USER, PASS)
        .upstream(UpstreamCfg::of(&up))
        .start();

    let mut c = sluice.connect(0);
    let ehlo = c.ehlo();
    assert!(!ehlo.has_extension("AUTH"), "AUTH must not be offered over plaintext: {ehlo}");
    c.cmd("MAIL FROM:<alice@client.test>").expect(250, None, "MAIL FROM");
    c.cmd("RCPT TO:<victim@example.test>").expect(554, Some("5.7.1"), "RCPT TO from outside allowed_networks");
    let data = c.cmd("DATA");
    assert!(data.code >= 500, "DATA without any accepted recipient must fail, got {data}");
    // AUTH is not available here either.
    let auth = c.auth_plain(USER, PASS);
    assert!(auth.code >= 500, "AUTH over plaintext must be refused, got {auth}");
    c.cmd("RSET").expect(250, None, "RSET");
    c.quit();

    // smtplib sees the refusal too.
    let dir = tempdir();
    let file = write_file(dir.path(), "msg.eml", &message("alice@client.test", "victim@example.test", "denied", "x"));
    let port = sluice.port_of(0).to_string();
    let out = send_py(&[
        "--port",
        &port,
        "--from",
        "alice@client.test",
        "--to",
        "victim@example.test",
        "--file",
        file.to_str().unwrap(),
    ]);
    assert!(!out.success(), "send.py should fail:\n{out}");
    assert!(out.stderr.contains("554 5.7.1"), "send.py should report 554 5.7.1:\n{out}");

    // Control message through the allowed listener: once it has arrived, nothing else has.
    let control = message("alice@client.test", "friend@example.test", "control", "allowed");
    let mut c = sluice.connect(1);
    c.ehlo();
    queued_id(&c.send_mail("alice@client.test", &["friend@example.test"], &control));
    c.quit();
    let msgs = up.wait_for_messages(1, DEADLINE);
    let other: Vec<_> = msgs.iter().filter(|m| m.subject().as_deref() != Some("control")).collect();
    assert!(other.is_empty(), "denied mail reached the upstream: {other:?}");
    assert!(
        msgs.iter().all(|m| !m.rcpt_tos.iter().any(|r| r == "victim@example.test")),
        "a denied recipient reached the upstream"
    );
}

#[test]
fn starttls_offers_auth_and_authenticated_client_may_relay() {
    let pki = Pki::new();
    let up = upstream(&pki);
    let sluice = Sluice::builder()
        .pki(&pki)
        .listener(Listener::starttls().allow(&["10.0.0.0/8"]))
        .user(USER, PASS)
        .upstream(UpstreamCfg::of(&up))
        .start();

    let mut c = sluice.connect(0);
    let ehlo = c.ehlo();
    assert!(ehlo.has_extension("STARTTLS"), "STARTTLS must be offered: {ehlo}");
    assert!(!ehlo.has_extension("AUTH"), "AUTH must not be offered before STARTTLS: {ehlo}");
    c.starttls(sluice.client_tls());
    let ehlo = c.ehlo();
    assert!(!ehlo.has_extension("STARTTLS"), "STARTTLS must not be offered again under TLS: {ehlo}");
    let mechanisms = ehlo.extension("AUTH").unwrap_or_else(|| panic!("AUTH must be offered under TLS: {ehlo}"));
    assert!(
        mechanisms.iter().any(|m| m == "PLAIN") && mechanisms.iter().any(|m| m == "LOGIN"),
        "AUTH PLAIN and LOGIN must be offered: {ehlo}"
    );

    // Under TLS but not authenticated: still no relaying.
    c.cmd("MAIL FROM:<scanner@office.test>").expect(250, None, "MAIL FROM");
    c.cmd("RCPT TO:<ext@example.test>").expect(554, Some("5.7.1"), "RCPT before AUTH");
    c.cmd("RSET").expect(250, None, "RSET");

    let bad = c.auth_plain(USER, "wrong password");
    assert_eq!(bad.code, 535, "AUTH with a wrong password: {bad}");
    let unknown = c.auth_plain("nosuchuser", PASS);
    assert_eq!(unknown.code, 535, "AUTH as an unknown user: {unknown}");
    c.auth_plain(USER, PASS).expect(235, Some("2.7.0"), "AUTH PLAIN");
    assert_eq!(c.auth_plain(USER, PASS).code, 503, "a second AUTH in the same session");

    let sent = message("scanner@office.test", "ext@example.test", "after auth", TRICKY_BODY);
    queued_id(&c.send_mail("scanner@office.test", &["ext@example.test"], &sent));
    c.quit();

    // AUTH LOGIN works as well, on a fresh session.
    let mut c = sluice.connect(0);
    c.ehlo();
    c.starttls(sluice.client_tls());
    c.ehlo();
    c.auth_login(USER, PASS).expect(235, Some("2.7.0"), "AUTH LOGIN");
    c.quit();

    let msgs = up.wait_for_messages(1, DEADLINE);
    assert_eq!(msgs[0].rcpt_tos, ["ext@example.test"]);
    assert_bytes_eq(strip_received(&msgs[0].data), &sent, "content relayed after AUTH");
}

#[test]
fn insecure_allow_plaintext_auth_offers_auth_without_tls() {
    let pki = Pki::new();
    let up = upstream(&pki);
    let sluice = Sluice::builder()
        .listener(Listener::plain().allow(&["10.0.0.0/8"]).insecure_allow_plaintext_auth(true))
        .user(USER, PASS)
        .upstream(UpstreamCfg::of(&up))
        .start();

    let mut c = sluice.connect(0);
    let ehlo = c.ehlo();
    assert!(ehlo.has_extension("AUTH"), "insecure_allow_plaintext_auth = true must offer AUTH without TLS: {ehlo}");
    c.auth_login(USER, PASS).expect(235, Some("2.7.0"), "AUTH LOGIN over plaintext");
    let sent = message("scanner@office.test", "ext@example.test", "plaintext auth", "hello");
    queued_id(&c.send_mail("scanner@office.test", &["ext@example.test"], &sent));
    c.quit();

    // smtplib logs in over plaintext too.
    let dir = tempdir();
    let sent2 = message("scanner@office.test", "ext2@example.test", "plaintext auth smtplib", "hello");
    let file = write_file(dir.path(), "msg.eml", &sent2);
    let port = sluice.port().to_string();
    let auth = format!("{USER}:{PASS}");
    let out = send_py(&[
        "--port",
        &port,
        "--auth",
        &auth,
        "--from",
        "scanner@office.test",
        "--to",
        "ext2@example.test",
        "--file",
        file.to_str().unwrap(),
    ]);
    assert!(out.success(), "send.py with plaintext AUTH failed:\n{out}");

    let msgs = up.wait_for_messages(2, DEADLINE);
    for (subject, content) in [("plaintext auth", &sent), ("plaintext auth smtplib", &sent2)] {
        let m = msgs.iter().find(|m| m.subject().as_deref() == Some(subject)).expect(subject);
        assert_bytes_eq(strip_received(&m.data), content, subject);
    }
}

#[test]
fn auth_false_never_offers_auth_even_under_tls() {
    let pki = Pki::new();
    let up = upstream(&pki);
    let sluice = Sluice::builder()
        .pki(&pki)
        .listener(Listener::starttls().allow(&["10.0.0.0/8"]).auth(false))
        .user(USER, PASS)
        .upstream(UpstreamCfg::of(&up))
        .start();

    let mut c = sluice.connect(0);
    c.ehlo();
    c.starttls(sluice.client_tls());
    let ehlo = c.ehlo();
    assert!(!ehlo.has_extension("AUTH"), "auth = false must not offer AUTH: {ehlo}");
    let auth = c.auth_plain(USER, PASS);
    assert!(auth.code >= 500, "AUTH with auth = false must be refused, got {auth}");
    c.cmd("MAIL FROM:<scanner@office.test>").expect(250, None, "MAIL FROM");
    c.cmd("RCPT TO:<ext@example.test>").expect(554, Some("5.7.1"), "RCPT without AUTH");
    c.quit();
}
