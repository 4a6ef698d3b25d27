//! Relaying with real peers: Python's smtplib and swaks as clients; aiosmtpd (STARTTLS and
//! AUTH required) and Postfix's smtp-sink as upstreams. The upstream must receive the
//! client's content byte for byte after sluice's one Received: header, and the envelope.

mod common;

use common::*;

const UP_USER: &str = "relay";
const UP_PASS: &str = "upstream-s3cret";

fn tls_auth_upstream(pki: &Pki) -> Upstream {
    Upstream::builder().tls(pki).auth(UP_USER, UP_PASS).start()
}

#[track_caller]
fn assert_relayed(got: &Received, from: &str, to: &[&str], sent: &[u8]) {
    assert_eq!(got.mail_from, from, "envelope sender at the upstream");
    assert_eq!(got.rcpt_tos, to, "envelope recipients at the upstream");
    assert!(got.tls, "sluice must deliver under STARTTLS to an upstream that offers it");
    assert_eq!(got.auth_login.as_deref(), Some(UP_USER), "sluice must AUTH upstream as the configured user");
    let (received, rest) = split_received(&got.data, "\r\n");
    let received = String::from_utf8_lossy(received);
    assert!(
        received.contains(SLUICE_HOSTNAME),
        "sluice's Received: header should name its hostname {SLUICE_HOSTNAME}: {received}"
    );
    assert_bytes_eq(rest, sent, "content at the upstream after sluice's Received: header");
}

#[test]
fn smtplib_from_allowed_network_relays_to_aiosmtpd_with_starttls_and_auth() {
    let pki = Pki::new();
    let up = tls_auth_upstream(&pki);
    let sluice =
        Sluice::builder().listener(Listener::plain().allow(&["127.0.0.0/8"])).upstream(UpstreamCfg::of(&up)).start();

    let dir = tempdir();
    let sent = message("alice@client.test", "bob@example.test", "smtplib plain relay", TRICKY_BODY);
    let file = write_file(dir.path(), "msg.eml", &sent);
    let port = sluice.port().to_string();
    let out = send_py(&[
        "--port",
        &port,
        "--from",
        "alice@client.test",
        "--to",
        "bob@example.test",
        "--to",
        "Carol.Second@Example.TEST",
        "--file",
        file.to_str().unwrap(),
    ]);
    assert!(out.success(), "send.py through sluice failed:\n{out}");
    assert!(out.stdout.trim_end().starts_with("250 2.0.0 Ok: queued as "), "final reply to DATA: {:?}", out.stdout);

    let msgs = up.wait_for_messages(1, DEADLINE);
    assert_eq!(msgs.len(), 1, "exactly one upstream transaction for one message with two recipients");
    assert_relayed(&msgs[0], "alice@client.test", &["bob@example.test", "Carol.Second@Example.TEST"], &sent);
}

#[test]
fn swaks_starttls_auth_from_outside_allowed_networks_relays() {
    let pki = Pki::new();
    let up = tls_auth_upstream(&pki);
    let sluice = Sluice::builder()
        .pki(&pki)
        .listener(Listener::starttls().allow(&["10.0.0.0/8"]))
        .user("scanner", "scanner-pw")
        .upstream(UpstreamCfg::of(&up))
        .start();
    let server = format!("127.0.0.1:{}", sluice.port());
    let dir = tempdir();
    let ca = pki.ca_file.to_str().unwrap().to_string();

    // swaks sends the file's bytes (it must contain no %TOKEN%s and no bare LFs), then CRLF,
    // then the end-of-data line: so the file has no final line ending and the content sent
    // is the file plus CRLF.
    for (i, mech) in ["PLAIN", "LOGIN"].iter().enumerate() {
        let subject = format!("swaks AUTH {mech}");
        let mut body = message("scanner@office.test", "ext@example.test", &subject, TRICKY_BODY);
        body.truncate(body.len() - 2);
        let file = write_file(dir.path(), &format!("swaks-{mech}.eml"), &body);
        let out = swaks(&[
            "--server",
            &server,
            "--ehlo",
            "scanner.office.test",
            "--from",
            "scanner@office.test",
            "--to",
            "ext@example.test,second@example.test",
            "--tls",
            "--tls-verify",
            "--tls-ca-path",
            &ca,
            "--auth",
            mech,
            "--auth-user",
            "scanner",
            "--auth-password",
            "scanner-pw",
            "--data",
            &format!("@{}", file.display()),
            "--timeout",
            "30",
        ]);
        assert!(out.success(), "swaks (AUTH {mech}) through sluice failed:\n{out}");
        assert!(out.stdout.contains("250 2.0.0 Ok: queued as "), "swaks did not see 'queued as':\n{out}");

        let msgs = up.wait_for_messages(i + 1, DEADLINE);
        let got =
            msgs.iter().find(|m| m.subject().as_deref() == Some(subject.as_str())).expect("the message swaks sent");
        let mut sent = body.clone();
        sent.extend_from_slice(b"\r\n");
        assert_relayed(got, "scanner@office.test", &["ext@example.test", "second@example.test"], &sent);
    }
}

#[test]
fn smtplib_over_implicit_tls_with_auth_relays_and_password_env_works() {
    let pki = Pki::new();
    let up = tls_auth_upstream(&pki);
    let mut upstream = UpstreamCfg::of(&up);
    upstream.password_via_env = true; // password_env = "VAR" instead of password_file
    let sluice = Sluice::builder()
        .pki(&pki)
        .listener(Listener::implicit())
        .user("scanner", "scanner-pw")
        .upstream(upstream)
        .start();
    assert!(sluice.config_text().contains("password_env"), "{}", sluice.config_text());

    let dir = tempdir();
    let sent = message("scanner@office.test", "ext@example.test", "implicit TLS", TRICKY_BODY);
    let file = write_file(dir.path(), "msg.eml", &sent);
    let port = sluice.port().to_string();
    let out = send_py(&[
        "--port",
        &port,
        "--tls",
        "--cafile",
        pki.ca_file.to_str().unwrap(),
        "--auth",
        "scanner:scanner-pw",
        "--from",
        "scanner@office.test",
        "--to",
        "ext@example.test",
        "--file",
        file.to_str().unwrap(),
    ]);
    assert!(out.success(), "send.py over implicit TLS failed:\n{out}");
    let msgs = up.wait_for_messages(1, DEADLINE);
    assert_relayed(&msgs[0], "scanner@office.test", &["ext@example.test"], &sent);
}

#[test]
fn smtplib_relays_to_postfix_smtp_sink_without_tls() {
    let sink = SmtpSink::start();
    let sluice = Sluice::builder()
        .listener(Listener::plain().allow(&["127.0.0.0/8"]))
        .upstream(UpstreamCfg::plain(sink.port))
        .start();

    let dir = tempdir();
    let sent = message("alice@client.test", "bob@example.test", "to smtp-sink", TRICKY_BODY);
    let file = write_file(dir.path(), "msg.eml", &sent);
    let port = sluice.port().to_string();
    let out = send_py(&[
        "--port",
        &port,
        "--from",
        "alice@client.test",
        "--to",
        "bob@example.test",
        "--to",
        "dave@example.test",
        "--file",
        file.to_str().unwrap(),
    ]);
    assert!(out.success(), "send.py through sluice failed:\n{out}");

    let msgs = sink.wait_for_messages(1, DEADLINE);
    assert_eq!(msgs.len(), 1, "one transaction at smtp-sink");
    let got = &msgs[0];
    assert_eq!(got.mail_from, "alice@client.test");
    assert_eq!(got.rcpt_tos, ["bob@example.test", "dave@example.test"]);
    // smtp-sink stores lines with LF endings: compare with the sent message likewise.
    let (_, rest) = split_received(&got.data, "\n");
    let sent_lf: Vec<u8> = String::from_utf8(sent).unwrap().replace("\r\n", "\n").into_bytes();
    assert_bytes_eq(rest, &sent_lf, "content at smtp-sink after sluice's Received: header (LF-normalised)");
}
