//! Each Microsoft 365 upstream kind delivers through the simulator, and the simulator's record shows the
//! path and the identity the mail came by.

mod m365;

use exosim::SubmitPath;
use m365::*;
use sluice::upstream::Disposition;

async fn deliver_one(kind: &str, from: &str, extra: &str) -> (World, exosim::StoredMessage) {
    let mut world = start(&tenant("", ""), |sim, dir| upstream(kind, sim, dir), extra).await;
    let reply = world.submit(from, &["alice@contoso.com"], &message(from, "alice@contoso.com", kind)).await;
    assert!(reply.starts_with("250"), "{reply}");
    let events = world.next_events(1).await;
    assert_eq!(events[0].disposition, Disposition::Delivered, "{:?}", events[0]);
    let stored = world.wait_messages(1).await.remove(0);
    assert_eq!(stored.rcpt_to, ["alice@contoso.com"]);
    assert!(stored.tls, "{kind}: the simulator saw no TLS");
    (world, stored)
}

#[tokio::test]
async fn oauth_submits_with_xoauth2_as_the_app() {
    let (world, stored) = deliver_one("m365-oauth", MAILBOX, "").await;
    assert_eq!(stored.path, SubmitPath::SmtpAuth);
    assert_eq!(stored.identity, format!("app:{CLIENT_ID}"));
    assert_eq!(stored.mailbox, MAILBOX);
    world.stop().await;
}

#[tokio::test]
async fn basic_submits_as_the_mailbox_and_warns() {
    let (world, stored) = deliver_one("m365-basic", BASIC_MAILBOX, "").await;
    assert_eq!(stored.path, SubmitPath::SmtpAuth);
    assert_eq!(stored.identity, BASIC_MAILBOX);
    // The retirement warning is part of the resolved configuration (printed by serve and check-config).
    let config = sluice::config::load(&world.dir.path().join("sluice.toml")).unwrap();
    assert!(config.warnings.iter().any(|w| w.contains("retiring") && w.contains("5.7.30")), "{:?}", config.warnings);
    world.stop().await;
}

#[tokio::test]
async fn graph_sends_the_mime_as_the_app() {
    let (world, stored) = deliver_one("m365-graph", MAILBOX, "").await;
    assert_eq!(stored.path, SubmitPath::Graph);
    assert_eq!(stored.identity, format!("app:{CLIENT_ID}"));
    assert!(String::from_utf8_lossy(&stored.raw).contains("Subject: m365-graph"));
    world.stop().await;
}

#[tokio::test]
async fn connector_relays_by_source_ip() {
    let (world, stored) = deliver_one("m365-connector", "printer@contoso.com", "").await;
    assert_eq!(stored.path, SubmitPath::Connector);
    assert_eq!(stored.identity, "connector:sluice relay by IP");
    world.stop().await;
}

#[tokio::test]
async fn connector_relays_by_client_certificate_with_its_full_chain() {
    // A tenant whose only connector is certificate-based: the IP alone would not do.
    let tenant_toml = tenant("", "").replace(
        "name = \"sluice relay by IP\"\nsender_ip_addresses = [\"127.0.0.1\"]",
        "name = \"sluice relay by certificate\"\ntls_sender_certificate_name = \"relay.contoso.com\"",
    );
    let mut world = start(
        &tenant_toml,
        |sim, dir| {
            let cert = sim.issue_client_certificate(&["relay.contoso.com"]).unwrap();
            std::fs::write(dir.join("chain.pem"), &cert.chain_pem).unwrap();
            std::fs::write(dir.join("key.pem"), &cert.key_pem).unwrap();
            format!(
                "{}tls_client_cert_file = \"chain.pem\"\ntls_client_key_file = \"key.pem\"\n",
                upstream("m365-connector", sim, dir)
            )
        },
        "",
    )
    .await;
    let from = "printer@contoso.com";
    world.submit(from, &["alice@contoso.com"], &message(from, "alice@contoso.com", "cert")).await;
    let events = world.next_events(1).await;
    assert_eq!(events[0].disposition, Disposition::Delivered, "{:?}", events[0]);
    let stored = world.wait_messages(1).await.remove(0);
    assert_eq!(stored.path, SubmitPath::Connector);
    assert_eq!(stored.identity, "connector:sluice relay by certificate");
    world.stop().await;
}

#[tokio::test]
async fn graph_respects_bcc_only_envelope_recipients() {
    let mut world = start(&tenant("", ""), |sim, dir| upstream("m365-graph", sim, dir), "").await;
    // The header names alice only; the envelope also has a Bcc recipient the headers never show.
    let body = message(MAILBOX, "alice@contoso.com", "bcc");
    world.submit(MAILBOX, &["alice@contoso.com", "hidden@fabrikam.example"], &body).await;
    let events = world.next_events(2).await;
    assert!(events.iter().all(|e| e.disposition == Disposition::Delivered), "{events:?}");
    let stored = world.wait_messages(1).await.remove(0);
    let mut rcpts = stored.rcpt_to.clone();
    rcpts.sort();
    assert_eq!(rcpts, ["alice@contoso.com", "hidden@fabrikam.example"]);
    world.stop().await;
}

#[tokio::test]
async fn oauth_with_a_certificate_credential() {
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let cert_pem = std::fs::read_to_string(data.join("app-credential.pem")).unwrap();
    // The app knows the certificate and has no secret.
    let tenant_toml = tenant("", "")
        .replace(&format!("client_secret = \"{CLIENT_SECRET}\""), &format!("certificates = [{:?}]", cert_pem));
    let mut world = start(
        &tenant_toml,
        |sim, dir| {
            upstream("m365-oauth", sim, dir).replace(
                "client_secret_file = \"client-secret\"",
                &format!(
                    "client_certificate_file = {:?}\nclient_key_file = {:?}",
                    data.join("app-credential.pem"),
                    data.join("app-credential.key")
                ),
            )
        },
        "",
    )
    .await;
    world.submit(MAILBOX, &["alice@contoso.com"], &message(MAILBOX, "alice@contoso.com", "cert")).await;
    let events = world.next_events(1).await;
    assert_eq!(events[0].disposition, Disposition::Delivered, "{:?}", events[0]);
    let stored = world.wait_messages(1).await.remove(0);
    assert_eq!(stored.identity, format!("app:{CLIENT_ID}"));
    world.stop().await;
}
