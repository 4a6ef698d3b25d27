//! The MX endpoint (reference §1b, §1c, §5): inbound connectors by source IP and by TLS client
//! certificate, direct send, RejectDirectSend, driven by Python's smtplib from 127.0.0.x source
//! addresses. Also the idle timeout and the admin clock call, which the MX endpoint shares with
//! submission.

mod common;

use std::io::Write;

use common::*;
use exosim::SubmitPath;
use serde_json::{Value, json};

const CONNECTORS: &str = r#"
[[inbound_connectors]]
name = "Printers by IP"
sender_ip_addresses = ["127.0.0.2/32"]

[[inbound_connectors]]
name = "Relay by certificate"
tls_sender_certificate_name = "*.contoso.com"

[[inbound_connectors]]
name = "Partner relay"
tls_sender_certificate_name = "relay.partner.example"

[[inbound_connectors]]
name = "TLS only"
sender_ip_addresses = ["127.0.0.3"]
require_tls = true

[[inbound_connectors]]
name = "Switched off"
enabled = false
sender_ip_addresses = ["127.0.0.4"]
"#;

async fn start_mx(tenant_extra: &str) -> Sim {
    start(&tenant(tenant_extra, CONNECTORS)).await
}

/// connect from `ip`, EHLO, MAIL, RCPT: the RCPT reply is `r[3]`.
fn rcpt_from(ip: &str, from: &str, to: &str) -> Value {
    json!([["connect_from", ip], ["ehlo"], ["mail", from], ["rcpt", to]])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn banner_ehlo_opportunistic_tls_and_no_auth() {
    let s = start_mx("").await;
    let r = s
        .mx(json!([
            ["connect"],
            ["ehlo"],
            ["cmd", "AUTH LOGIN"],
            ["starttls"],
            ["ehlo"],
            ["cmd", "AUTH XOAUTH2"],
            ["cmd", "STARTTLS"]
        ]))
        .await;
    assert_eq!(r[0].0, 220);
    assert!(r[0].1.starts_with(&format!("{MX_HOST} Microsoft ESMTP MAIL Service ready at ")), "{r:?}");
    let plain: Vec<&str> = r[1].1.lines().collect();
    assert_eq!(
        plain,
        [
            &format!("{MX_HOST} Hello [127.0.0.1]") as &str,
            "SIZE 157286400",
            "PIPELINING",
            "DSN",
            "ENHANCEDSTATUSCODES",
            "STARTTLS",
            "8BITMIME",
            "BINARYMIME",
            "CHUNKING",
            "SMTPUTF8"
        ]
    );
    expect_mx(&r[2], 504, "5.7.4 Unrecognized authentication type");
    assert_eq!(r[3], (220, "2.0.0 SMTP server ready".to_owned()));
    // After TLS: the same list without STARTTLS, and still no AUTH (reference §5).
    assert!(!r[4].1.contains("STARTTLS") && !r[4].1.contains("AUTH"), "{r:?}");
    assert_eq!(r[4].1.lines().count(), 9);
    expect_mx(&r[5], 504, "5.7.4 Unrecognized authentication type");
    expect_mx(&r[6], 500, "5.3.3 Unrecognized command");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_connectors_and_direct_send_table() {
    let s = start_mx("").await;
    // (source address, MAIL FROM, RCPT TO, code, text)
    let table: Vec<(&str, &str, &str, i64, &str)> = vec![
        // Direct send: anonymous, internal recipients only, no TLS needed.
        ("127.0.0.1", "printer@example.org", "reception@contoso.com", 250, "2.1.5 Recipient OK"),
        ("127.0.0.1", "scanner@contoso.com", "reception@contoso.com", 250, "2.1.5 Recipient OK"),
        ("127.0.0.1", "scanner@contoso.com", "copier@contoso.com", 250, "2.1.5 Recipient OK"),
        (
            "127.0.0.1",
            "printer@example.org",
            "x@example.net",
            550,
            "5.7.54 SMTP; Unable to relay recipient in non-accepted domain",
        ),
        // The sender claims the tenant, but no connector matches this server.
        ("127.0.0.1", "scanner@contoso.com", "x@example.net", 550, "5.7.64 TenantAttribution; Relay Access Denied"),
        (
            "127.0.0.1",
            "printer@example.org",
            "nobody@contoso.com",
            550,
            "5.4.1 Recipient address rejected: Access denied. AS(201806281)",
        ),
        // The connector by IP relays for an accepted MAIL FROM domain...
        ("127.0.0.2", "scanner@contoso.com", "x@example.net", 250, "2.1.5 Recipient OK"),
        ("127.0.0.2", "app@fabrikam.com", "x@example.net", 250, "2.1.5 Recipient OK"),
        // ...and since Nov 2023 not for anyone else's.
        ("127.0.0.2", "app@example.org", "x@example.net", 550, "5.7.64 TenantAttribution; Relay Access Denied"),
        ("127.0.0.2", "app@example.org", "reception@contoso.com", 250, "2.1.5 Recipient OK"),
        // A disabled connector matches nothing.
        ("127.0.0.4", "scanner@contoso.com", "x@example.net", 550, "5.7.64 TenantAttribution; Relay Access Denied"),
    ];
    for (ip, from, to, code, text) in table {
        let r = s.mx(rcpt_from(ip, from, to)).await;
        assert_eq!(r[2], (250, "2.1.0 Sender OK".to_owned()), "{ip} {from} {to}: {r:?}");
        if code == 250 {
            assert_eq!(r[3], (code, text.to_owned()), "{ip} {from} {to}");
        } else {
            expect_mx(&r[3], code, text);
        }
    }
    // A connector with RequireTls wants STARTTLS before MAIL.
    let r = s.mx(rcpt_from("127.0.0.3", "scanner@contoso.com", "x@example.net")).await;
    expect_mx(&r[2], 451, "5.7.3 STARTTLS is required to send mail");
    let r = s
        .mx(json!([
            ["connect_from", "127.0.0.3"],
            ["ehlo"],
            ["starttls"],
            ["ehlo"],
            ["mail", "scanner@contoso.com"],
            ["rcpt", "x@example.net"]
        ]))
        .await;
    assert_eq!(r[5].0, 250, "{r:?}");
    assert!(s.sim.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_stored_with_their_path() {
    let s = start_mx("").await;
    let send = |ip: &str, from: &str, to: &str| {
        json!([["connect_from", ip], ["ehlo"], ["send", from, [to], message(from, to)], ["quit"]])
    };
    let r = s.mx(send("127.0.0.1", "printer@example.org", "reception@contoso.com")).await;
    assert_eq!(r[2].0, 250, "{r:?}");
    assert!(r[2].1.starts_with("2.6.0 <test-1@client.example> [InternalId=1, Hostname="), "{r:?}");
    assert!(r[2].1.ends_with("Queued mail for delivery"), "{r:?}");
    let r = s.mx(send("127.0.0.2", "scanner@contoso.com", "x@example.net")).await;
    assert_eq!(r[2].0, 250, "{r:?}");
    let m = s.sim.messages();
    assert_eq!(m.len(), 2);
    assert_eq!((m[0].path, m[0].identity.as_str()), (SubmitPath::DirectSend, "anonymous"));
    assert_eq!((m[1].path, m[1].identity.as_str()), (SubmitPath::Connector, "connector:Printers by IP"));
    assert_eq!(m[1].client_ip, "127.0.0.2");
    assert_eq!(m[1].rcpt_to, vec!["x@example.net"]);
    // Relay and direct send are not saved to Sent Items (reference §1b), and have no 30/min cap.
    assert!(m.iter().all(|m| !m.saved_to_sent_items && !m.tls));
    let many = json!([
        ["connect_from", "127.0.0.2"],
        ["ehlo"],
        [
            "repeat",
            31,
            [["send", "scanner@contoso.com", ["x@example.net"], message("scanner@contoso.com", "x@example.net")]]
        ]
    ]);
    let r = s.mx(many).await;
    assert_eq!(r[2].0, 250, "{r:?}");
    assert_eq!(s.sim.messages().len(), 33);
    // A bad From header is refused on this path too (reference §6, "all paths").
    let r = s
        .mx(json!([
            ["connect_from", "127.0.0.2"],
            ["ehlo"],
            ["send", "scanner@contoso.com", ["x@example.net"], "From: a@contoso.com, b@contoso.com\r\n\r\nx\r\n"]
        ]))
        .await;
    expect_mx(&r[2], 550, "5.1.20 Multiple From addresses are not allowed without Sender address");
}

fn write(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_connectors_table() {
    let s = start_mx("").await;
    let ours = s.sim.issue_client_certificate(&["mail.contoso.com"]).unwrap();
    let partner = s.sim.issue_client_certificate(&["relay.partner.example"]).unwrap();
    let stranger = s.sim.issue_client_certificate(&["mx.stranger.example"]).unwrap();
    let (ours_chain, ours_leaf, ours_key) = (write(&ours.chain_pem), write(&ours.cert_pem), write(&ours.key_pem));
    let (partner_chain, partner_key) = (write(&partner.chain_pem), write(&partner.key_pem));
    let (stranger_chain, stranger_key) = (write(&stranger.chain_pem), write(&stranger.key_pem));
    let p = |f: &tempfile::NamedTempFile| f.path().display().to_string();
    // (certificate file, key file, MAIL FROM, RCPT TO, code, text)
    let table: Vec<(String, String, &str, &str, i64, &str)> = vec![
        // CN/SAN matches *.contoso.com, full chain, certificate domain accepted: relay for any sender.
        (p(&ours_chain), p(&ours_key), "app@example.org", "x@example.net", 250, "2.1.5 Recipient OK"),
        // The same certificate without its intermediate: no attribution.
        (
            p(&ours_leaf),
            p(&ours_key),
            "app@example.org",
            "x@example.net",
            550,
            "5.7.64 TenantAttribution; Relay Access Denied",
        ),
        (
            p(&ours_leaf),
            p(&ours_key),
            "scanner@contoso.com",
            "x@example.net",
            550,
            "5.7.64 TenantAttribution; Relay Access Denied",
        ),
        // Internal recipients still take the message (as direct send).
        (p(&ours_leaf), p(&ours_key), "app@example.org", "reception@contoso.com", 250, "2.1.5 Recipient OK"),
        // A connector for a certificate outside the tenant's domains: the Nov 2023 rule wants
        // an accepted MAIL FROM domain then.
        (
            p(&partner_chain),
            p(&partner_key),
            "app@example.org",
            "x@example.net",
            550,
            "5.7.64 TenantAttribution; Relay Access Denied",
        ),
        (p(&partner_chain), p(&partner_key), "app@contoso.com", "x@example.net", 250, "2.1.5 Recipient OK"),
        // A valid certificate no connector names.
        (
            p(&stranger_chain),
            p(&stranger_key),
            "app@example.org",
            "x@example.net",
            550,
            "5.7.64 TenantAttribution; Relay Access Denied",
        ),
    ];
    for (cert, key, from, to, code, text) in table {
        let r = s
            .mx(json!([["connect"], ["ehlo"], ["starttls_cert", cert, key], ["ehlo"], ["mail", from], ["rcpt", to]]))
            .await;
        assert_eq!(r[2].0, 220, "{r:?}");
        if code == 250 {
            assert_eq!(r[5], (code, text.to_owned()), "{cert} {from} {to}");
        } else {
            expect_mx(&r[5], code, text);
        }
    }
    let r = s
        .mx(json!([
            ["connect"],
            ["ehlo"],
            ["starttls_cert", p(&ours_chain), p(&ours_key)],
            ["ehlo"],
            ["send", "app@example.org", ["x@example.net"], message("app@example.org", "x@example.net")]
        ]))
        .await;
    assert_eq!(r[4].0, 250, "{r:?}");
    let m = s.sim.messages();
    assert_eq!(
        (m[0].path, m[0].identity.as_str(), m[0].tls),
        (SubmitPath::Connector, "connector:Relay by certificate", true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_direct_send() {
    let s = start_mx("reject_direct_send = true").await;
    let table: Vec<(&str, &str, &str, i64, &str)> = vec![
        (
            "127.0.0.1",
            "scanner@contoso.com",
            "reception@contoso.com",
            550,
            "5.7.68 TenantInboundAttribution; Direct Send not allowed for this organization from unauthorized sources",
        ),
        // Mail from the internet (a sender domain not the tenant's) is not direct send.
        ("127.0.0.1", "news@example.org", "reception@contoso.com", 250, "2.1.5 Recipient OK"),
        // Through a connector the same sender is authorised.
        ("127.0.0.2", "scanner@contoso.com", "reception@contoso.com", 250, "2.1.5 Recipient OK"),
    ];
    for (ip, from, to, code, text) in table {
        let r = s.mx(rcpt_from(ip, from, to)).await;
        if code == 250 {
            assert_eq!(r[3], (code, text.to_owned()), "{ip} {from} {to}");
        } else {
            expect_mx(&r[3], code, text);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_time_out_on_the_simulator_clock() {
    let s = start(&format!("clock = \"manual\"\n{}", tenant("", "[limits]\nsmtp_idle_timeout_secs = 300"))).await;
    let (status, body) = s.curl("GET", "/clock", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["manual"], true);
    let client = s.mx(json!([["connect"], ["ehlo"], ["read"]]));
    let driver = async {
        // The session has answered EHLO and waits for the next command.
        s.sim.wait_for_stats(|st| st.smtp_commands == 1 && st.smtp_idle_sessions == 1).await;
        let (status, body) = s
            .curl("POST", "/clock/advance", &["-H", "Content-Type: application/json", "-d", r#"{"seconds": 299}"#])
            .await;
        assert_eq!(status, 200, "{body}");
        // Still waiting: 299 s is not 300.
        assert_eq!(s.sim.stats().smtp_idle_sessions, 1);
        let (status, _) = s.curl("POST", "/clock/advance", &["-d", r#"{"seconds": 1}"#]).await;
        assert_eq!(status, 200);
    };
    let (r, ()) = tokio::join!(client, driver);
    expect_mx(&r[2], 451, "4.7.0 Timeout waiting for client input");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_advance_is_refused_on_the_system_clock() {
    let s = start_default().await;
    let (status, body) = s.curl("POST", "/clock/advance", &["-d", r#"{"seconds": 10}"#]).await;
    assert_eq!(status, 409, "{body}");
    let s = start(&format!("clock = \"manual\"\n{}", tenant("", ""))).await;
    let before = s.sim.now();
    let (status, _) = s.curl("POST", "/clock/advance", &["-d", r#"{"seconds": -1}"#]).await;
    assert_eq!(status, 400);
    let (status, _) = s.curl("POST", "/clock/advance", &["-d", r#"{"seconds": 3600}"#]).await;
    assert_eq!(status, 200);
    assert_eq!(s.sim.now().duration_since(before).unwrap().as_secs(), 3600);
}
