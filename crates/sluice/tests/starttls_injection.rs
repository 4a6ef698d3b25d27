//! STARTTLS command injection (CVE-2011-0411 and its kind): commands sent in the same segment as
//! STARTTLS, before the TLS handshake, must be thrown away, not executed inside the TLS session
//! where they would pass for something the encrypted client said. And the session starts afresh
//! under TLS (RFC 3207 §4.2): EHLO again before anything else.

mod common;

use common::*;

fn start() -> (Pki, Upstream, Sluice) {
    let pki = Pki::new();
    let up = Upstream::builder().start();
    let sluice = Sluice::builder()
        .pki(&pki)
        .listener(Listener::starttls().allow(&["127.0.0.0/8"]))
        .upstream(UpstreamCfg::of(&up))
        .start();
    (pki, up, sluice)
}

/// EHLO, then `STARTTLS\r\n` + `injected` in one write, then the handshake.
fn starttls_with(sluice: &Sluice, injected: &[u8]) -> SmtpClient {
    let mut c = sluice.connect(0);
    assert!(c.ehlo().has_extension("STARTTLS"));
    let mut segment = b"STARTTLS\r\n".to_vec();
    segment.extend_from_slice(injected);
    c.send_raw(&segment);
    c.read_reply().expect(220, None, "STARTTLS");
    // Fails if sluice answered the injected command in plaintext after its 220.
    c.tls_handshake(sluice.client_tls()).expect("TLS handshake");
    c
}

#[test]
fn rset_sent_with_starttls_is_not_executed() {
    let (_pki, _up, sluice) = start();
    let mut c = starttls_with(&sluice, b"RSET\r\n");
    // The first reply on the TLS stream must answer the first command sent on it.
    let reply = c.cmd("EHLO client.test");
    assert_eq!(reply.code, 250, "{reply}");
    assert!(
        reply.lines.len() > 1 && reply.lines[0].starts_with(SLUICE_HOSTNAME),
        "the first reply under TLS is not the EHLO reply (an injected command's?): {reply}"
    );
    assert!(!reply.has_extension("STARTTLS"), "STARTTLS offered again under TLS: {reply}");
    c.cmd("NOOP").expect(250, None, "NOOP, in step");
    c.quit();
    wait_until(DEADLINE, "the session logged as TLS", || sluice.log().contains("TLSv1.3").then_some(()));
}

#[test]
fn injected_mail_is_not_carried_into_the_tls_session() {
    let (_pki, up, sluice) = start();
    let mut c = starttls_with(&sluice, b"MAIL FROM:<injected@evil.test>\r\nRCPT TO:<victim@evil.test>\r\n");
    c.ehlo();
    // Had the injected MAIL been executed, this one would be a nested MAIL (503).
    c.cmd("MAIL FROM:<real@example.com>").expect(250, Some("2.1.0"), "MAIL under TLS");
    c.cmd("RCPT TO:<rcpt@example.com>").expect(250, None, "RCPT under TLS");
    c.cmd("DATA").expect(354, None, "DATA");
    queued_id(&c.send_content(&message("real@example.com", "rcpt@example.com", "after tls", "hello")));
    c.quit();
    let msgs = up.wait_for_messages(1, DEADLINE);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].mail_from, "real@example.com");
    assert_eq!(msgs[0].rcpt_tos, ["rcpt@example.com"]);
}

#[test]
fn ehlo_must_be_repeated_after_tls() {
    let (_pki, _up, sluice) = start();
    let mut c = sluice.connect(0);
    c.ehlo();
    // A transaction opened before STARTTLS is forgotten too.
    c.cmd("MAIL FROM:<before@example.com>").expect(250, None, "MAIL before STARTTLS");
    c.starttls(sluice.client_tls());
    c.cmd("MAIL FROM:<a@example.com>").expect(503, Some("5.5.1"), "MAIL under TLS before EHLO");
    c.cmd("RCPT TO:<b@example.com>").expect(503, Some("5.5.1"), "RCPT: the pre-TLS transaction is gone");
    c.ehlo();
    c.cmd("MAIL FROM:<a@example.com>").expect(250, None, "MAIL after EHLO under TLS");
    c.cmd("STARTTLS").expect(503, Some("5.5.1"), "STARTTLS twice");
    c.quit();
}
