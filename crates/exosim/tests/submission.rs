//! The client submission endpoint against the reference (§4, §5), driven by Python smtplib.

mod common;

use common::*;
use serde_json::json;

const EHLO_COMMON_HEAD: [&str; 4] = ["SIZE 157286400", "PIPELINING", "DSN", "ENHANCEDSTATUSCODES"];

fn ehlo_lines(tls: bool) -> String {
    let mut lines = vec![format!("{HOST} Hello [127.0.0.1]")];
    lines.extend(EHLO_COMMON_HEAD.iter().map(|s| s.to_string()));
    lines.push(if tls { "AUTH LOGIN XOAUTH2" } else { "STARTTLS" }.to_string());
    lines.extend(["8BITMIME", "BINARYMIME", "CHUNKING", "SMTPUTF8"].iter().map(|s| s.to_string()));
    lines.join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn banner_and_ehlo_lists_before_and_after_tls() {
    let s = start_default().await;
    let r = s.smtp(json!([["connect"], ["ehlo"], ["starttls"], ["ehlo"], ["quit"]])).await;
    // 220 HOST Microsoft ESMTP MAIL Service ready at <date> [<16 hex>]
    assert_eq!(r[0].0, 220);
    let banner = &r[0].1;
    assert!(banner.starts_with(&format!("{HOST} Microsoft ESMTP MAIL Service ready at ")), "{banner}");
    assert!(banner.contains(" +0000 [") && banner.ends_with(']'), "{banner}");
    let id = banner.rsplit_once('[').unwrap().1.trim_end_matches(']');
    assert_eq!(id.len(), 16);
    assert!(id.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase()));
    assert_eq!(r[1], (250, ehlo_lines(false)));
    assert_eq!(r[2], (220, "2.0.0 SMTP server ready".to_owned()));
    assert_eq!(r[3], (250, ehlo_lines(true)));
    assert_eq!(r[4], (221, "2.0.0 Service closing transmission channel".to_owned()));
}

/// One row per reference reply that needs no state beyond the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_refusals_table() {
    let s = start_default().await;
    let plain = json!([["connect"], ["ehlo"]]);
    let tls = json!([["connect"], ["ehlo"], ["starttls"]]);
    let tls_ehlo = json!([["connect"], ["ehlo"], ["starttls"], ["ehlo"]]);
    let authed =
        json!([["connect"], ["ehlo"], ["starttls"], ["ehlo"], ["login", "scanner@contoso.com", "Scan-2-Mail!"]]);
    // (setup, command, code, text)
    let table: Vec<(&serde_json::Value, &str, i64, &str)> = vec![
        (&plain, "MAIL FROM:<scanner@contoso.com>", 451, "5.7.3 STARTTLS is required to send mail"),
        (&plain, "AUTH LOGIN", 504, "5.7.4 Unrecognized authentication type"),
        (&tls, "MAIL FROM:<scanner@contoso.com>", 503, "5.5.2 Send hello first"),
        (&tls, "AUTH LOGIN", 503, "5.5.2 Send hello first"),
        (&tls, "RCPT TO:<a@example.com>", 503, "5.5.2 Send hello first"),
        (
            &tls_ehlo,
            "AUTH PLAIN AHNjYW5uZXJAY29udG9zby5jb20AU2Nhbi0yLU1haWwh",
            504,
            "5.7.4 Unrecognized authentication type",
        ),
        (&tls_ehlo, "AUTH CRAM-MD5", 504, "5.7.4 Unrecognized authentication type"),
        (&tls_ehlo, "MAIL FROM:<scanner@contoso.com>", 530, "5.7.57 Client not authenticated to send mail."),
        (&authed, "RCPT TO:<a@example.com>", 503, "5.5.2 Need mail command"),
        (&authed, "DATA", 503, "5.5.2 Need mail command"),
        (&authed, "FOO", 500, "5.3.3 Unrecognized command"),
        (&authed, "STARTTLS", 500, "5.3.3 Unrecognized command"),
    ];
    for (setup, command, code, text) in table {
        let mut script = setup.as_array().unwrap().clone();
        script.push(json!(["cmd", command]));
        let r = s.smtp(serde_json::Value::Array(script.clone())).await;
        let last = r.last().unwrap();
        assert!(r[..r.len() - 1].iter().all(|(c, _)| (200..400).contains(c)), "setup failed for {command}: {r:?}");
        expect(last, code, text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_success_and_bad_password() {
    let s = start_default().await;
    let mut script = login("scanner@contoso.com", "Scan-2-Mail!");
    script.push(json!(["quit"]));
    let r = s.smtp(json!(script)).await;
    assert_eq!(r[4], (235, "2.7.0 Authentication successful".to_owned()));

    for (user, password) in [
        ("scanner@contoso.com", "wrong"),
        ("nobody@contoso.com", "Scan-2-Mail!"),
        // The UPN, not a proxy address, is the user name.
        ("copier@contoso.com", "Scan-2-Mail!"),
        // A mailbox without a password (app-only).
        ("relay@contoso.com", ""),
    ] {
        let r = s.smtp(json!(login(user, password))).await;
        expect(&r[4], 535, "5.7.3 Authentication unsuccessful");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_retired_and_smtp_auth_disabled() {
    let s = start_default().await;
    s.sim.update_config(|c| c.tenant.basic_auth_disabled = true).unwrap();
    let r = s.smtp(json!(login("scanner@contoso.com", "Scan-2-Mail!"))).await;
    expect(&r[4], 550, "5.7.30 Basic authentication is not supported for Client Submission.");
    s.sim
        .update_config(|c| {
            c.tenant.basic_auth_disabled = false;
            c.tenant.smtp_auth_disabled = true;
        })
        .unwrap();
    let r = s.smtp(json!(login("scanner@contoso.com", "Scan-2-Mail!"))).await;
    expect(
        &r[4],
        535,
        "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information.",
    );
    // Set-CASMailbox -SmtpClientAuthenticationDisabled $false overrides the tenant.
    s.sim.update_config(|c| c.mailboxes[0].smtp_auth_disabled = Some(false)).unwrap();
    let r = s.smtp(json!(login("scanner@contoso.com", "Scan-2-Mail!"))).await;
    assert_eq!(r[4].0, 235);
    // ... and $true disables it for the mailbox in an enabled tenant.
    s.sim
        .update_config(|c| {
            c.tenant.smtp_auth_disabled = false;
            c.mailboxes[0].smtp_auth_disabled = Some(true);
        })
        .unwrap();
    let r = s.smtp(json!(login("scanner@contoso.com", "Scan-2-Mail!"))).await;
    expect(
        &r[4],
        535,
        "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox. Visit https://aka.ms/smtp_auth_disabled for more information.",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_message_is_kept_with_envelope_and_identity() {
    let s = start_default().await;
    let mut script = login("scanner@contoso.com", "Scan-2-Mail!");
    script.push(json!(["mail", "scanner@contoso.com"]));
    script.push(json!(["rcpt", "someone@example.net"]));
    script.push(json!(["rcpt", "ceo@contoso.com"]));
    script.push(json!(["data", message("Scanner <scanner@contoso.com>", "someone@example.net")]));
    script.push(json!(["quit"]));
    let r = s.smtp(json!(script)).await;
    assert_eq!(r[5], (250, "2.1.0 Sender OK".to_owned()));
    assert_eq!(r[6], (250, "2.1.5 Recipient OK".to_owned()));
    assert_eq!(r[8].0, 250);
    assert_eq!(r[8].1, "2.0.0 OK <test-1@client.example> [Hostname=SIM0P281MB0001.NAMPRD00.PROD.OUTLOOK.COM]");
    let m = s.sim.messages();
    assert_eq!(m.len(), 1);
    let m = &m[0];
    assert_eq!(m.path, exosim::SubmitPath::SmtpAuth);
    assert_eq!(m.identity, "scanner@contoso.com");
    assert_eq!(m.mail_from, "scanner@contoso.com");
    assert_eq!(m.rcpt_to, vec!["someone@example.net", "ceo@contoso.com"]);
    assert!(m.tls && m.saved_to_sent_items);
    assert!(String::from_utf8_lossy(&m.raw).contains("Subject: test\r\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_without_message_id_gets_one() {
    let s = start_default().await;
    let mut script = login("scanner@contoso.com", "Scan-2-Mail!");
    script.push(json!(["send", "scanner@contoso.com", ["x@example.net"], "From: scanner@contoso.com\r\n\r\nhi\r\n"]));
    let r = s.smtp(json!(script)).await;
    assert_eq!(r[5].0, 250);
    let id = s.sim.messages()[0].message_id.clone();
    assert!(id.starts_with('<') && id.ends_with("PROD.OUTLOOK.COM>"), "{id}");
    assert!(r[5].1.starts_with(&format!("2.0.0 OK {id} [Hostname=")), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bdat_chunks_are_accepted() {
    let s = start_default().await;
    // smtplib has no BDAT; send the chunks as raw commands (each chunk directly after its line).
    let body = "From: scanner@contoso.com\r\n\r\nchunked\r\n";
    let (a, b) = body.split_at(10);
    let mut script = login("scanner@contoso.com", "Scan-2-Mail!");
    script.push(json!(["mail", "scanner@contoso.com"]));
    script.push(json!(["rcpt", "x@example.net"]));
    script.push(json!(["raw", format!("BDAT {}\r\n{a}", a.len())]));
    script.push(json!(["raw", format!("BDAT {} LAST\r\n{b}", b.len())]));
    let r = s.smtp(json!(script)).await;
    assert_eq!(r[7].0, 250, "{r:?}");
    assert_eq!(r[8].0, 250, "{r:?}");
    assert!(r[8].1.starts_with("2.0.0 OK <"));
    assert_eq!(s.sim.messages()[0].raw, body.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_tls_handshake_is_refused() {
    let s = start_default().await;
    let r = s.smtp(json!([["connect"], ["ehlo"], ["starttls_legacy"]])).await;
    // The 220 to STARTTLS comes before the handshake; the handshake itself fails (rustls
    // has no TLS 1.0/1.1), so the client never gets to send a command over legacy TLS.
    assert!(r[2].0 < 0, "legacy TLS was accepted: {r:?}");
    assert!(s.sim.messages().is_empty());
}
