//! The access token expires in the middle of a burst (the simulator's clock jumps past its lifetime while
//! sluice still holds it): the refused XOAUTH2 (`535 5.7.3`) makes sluice fetch a fresh token and try
//! again; no message fails, and no message is bounced or even deferred.

mod m365;

use std::time::Duration;

use m365::*;
use sluice::upstream::Disposition;

#[tokio::test]
async fn no_message_fails_when_the_token_expires_mid_burst() {
    // A manual clock: the simulator's time moves only when the test says so.
    let mut world = start(
        &tenant("clock = \"manual\"", "[limits]\ntoken_lifetime_secs = 3599\n"),
        |sim, dir| upstream("m365-oauth", sim, dir),
        // Few messages per connection: the burst needs new connections, hence authentications.
        "max_messages_per_connection = 2\nconnections = 3\n",
    )
    .await;

    let send = async |world: &World, range: std::ops::Range<usize>| {
        for i in range {
            let subject = format!("burst {i}");
            world.submit(MAILBOX, &["alice@contoso.com"], &message(MAILBOX, "alice@contoso.com", &subject)).await;
        }
    };
    send(&world, 0..6).await;
    let first = world.next_events(6).await;
    assert!(first.iter().all(|e| e.disposition == Disposition::Delivered), "{first:?}");

    // Two hours later for Exchange: every token issued so far has expired; sluice's cache (counting real
    // time) still thinks its token is fresh.
    world.sim.advance(Duration::from_secs(2 * 3600));
    send(&world, 6..14).await;
    let second = world.next_events(8).await;
    assert!(
        second.iter().all(|e| e.disposition == Disposition::Delivered),
        "a message was not delivered after the token expired: {second:?}"
    );
    let stored = world.wait_messages(14).await;
    assert_eq!(stored.len(), 14);
    assert!(stored.iter().all(|m| m.identity == format!("app:{CLIENT_ID}")));
    assert!(world.scheduler.hold_status().is_none(), "an expired token must not hold the route");
    assert_eq!(world.scheduler.waiting(), 0);
    world.stop().await;
}

#[tokio::test]
async fn graph_refreshes_an_expired_token_without_failing_a_message() {
    let mut world = start(&tenant("clock = \"manual\"", ""), |sim, dir| upstream("m365-graph", sim, dir), "").await;
    for i in 0..3 {
        let subject = format!("before {i}");
        world.submit(MAILBOX, &["alice@contoso.com"], &message(MAILBOX, "alice@contoso.com", &subject)).await;
    }
    assert!(world.next_events(3).await.iter().all(|e| e.disposition == Disposition::Delivered));
    // Graph now answers 401 InvalidAuthenticationToken (expired) to the cached token.
    world.sim.advance(Duration::from_secs(2 * 3600));
    for i in 0..3 {
        let subject = format!("after {i}");
        world.submit(MAILBOX, &["alice@contoso.com"], &message(MAILBOX, "alice@contoso.com", &subject)).await;
    }
    let after = world.next_events(3).await;
    assert!(after.iter().all(|e| e.disposition == Disposition::Delivered), "{after:?}");
    assert_eq!(world.wait_messages(6).await.len(), 6);
    assert!(world.scheduler.hold_status().is_none());
    world.stop().await;
}

#[tokio::test]
async fn a_token_is_refreshed_before_it_expires() {
    // Tokens live 2 s here; sluice refreshes at 80% of that, so after 1.7 s it must hold a new one
    // without any refusal having happened.
    let sim = exosim::Simulator::start(
        exosim::SimConfig::from_toml_str(&tenant("", "[limits]\ntoken_lifetime_secs = 2\n")).unwrap(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), sim.ca_cert_pem()).unwrap();
    std::fs::write(dir.path().join("client-secret"), CLIENT_SECRET).unwrap();
    let text = format!(
        "spool_dir = \"spool\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream]\nkind = \"m365-oauth\"\nmailbox = \"{MAILBOX}\"\nclient_id = \"{CLIENT_ID}\"\n\
         client_secret_file = \"client-secret\"\ntoken_url = \"{}\"\nca_file = \"ca.pem\"\n",
        sim.token_url()
    );
    let config = sluice::config::parse(&text, dir.path()).unwrap();
    let oauth = config.upstream.oauth.clone().unwrap();
    let http = sluice::oauth::http_client(&config.upstream.https_tls, Duration::from_secs(10), Duration::from_secs(10));
    let source = sluice::oauth::TokenSource::new(http, oauth);
    let first = source.token().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let second = source.token().await.unwrap();
    assert_ne!(first.expose(), second.expose(), "the token should have been refreshed at 80% of its life");
    // Both were accepted by the simulator as SMTP tokens for the app.
    assert!(!second.expose().is_empty());
    // The Debug of a token never shows it.
    assert!(!format!("{second:?}").contains(second.expose()));
}
