//! Routes, several upstreams and mailbox pools, against the Exchange Online simulator.
//!
//! Each route leads to a different upstream, and the simulator's record of each message (its path:
//! SMTP AUTH, Graph or connector; the identity and the mailbox it acted for) proves which way it went:
//! by sender (address, domain, wildcard), by AUTH user, by client network, and the default route. A
//! pool of two mailboxes shares 64 messages, each mailbox within 30 a minute of the simulator's clock.
//! A message spooled for an upstream that a new configuration no longer has goes by the default route.

mod m365;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use exosim::{Clock as _, SubmitPath};
use m365::*;
use sluice::upstream::Disposition;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// (client address, AUTH user and password, sender, subject).
type Case = (&'static str, Option<(&'static str, &'static str)>, &'static str, &'static str);

const ALERTS: &str = "alerts@contoso.com";
const ERP_PASSWORD: &str = "erp-pw-1";

/// The test tenant with a second mailbox (alerts@) the app may also send as.
fn pool_tenant(top: &str, extra: &str) -> String {
    tenant(top, &format!("[[mailboxes]]\naddress = \"{ALERTS}\"\n\n{extra}"))
        .replace(&format!("full_access = [\"{MAILBOX}\"]"), &format!("full_access = [\"{MAILBOX}\", \"{ALERTS}\"]"))
}

/// A listener for 127.0.0.0/8 that also takes AUTH without TLS (the test client is local), and the
/// user "erp".
fn listener(port: u16) -> String {
    format!(
        "[[listener]]\naddress = \"127.0.0.1:{port}\"\nallowed_networks = [\"127.0.0.0/8\"]\nmax_recipients = 2000\n\
         insecure_allow_plaintext_auth = true\n\n[[user]]\nname = \"erp\"\npassword_hash = \"{}\"\n\n",
        argon2_hash(ERP_PASSWORD)
    )
}

fn argon2_hash(password: &str) -> String {
    use argon2::{Algorithm, Argon2, Params, PasswordHasher, Version};
    let params = Params::new(4096, 1, 1, None).expect("argon2 params");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params).hash_password(password.as_bytes()).unwrap().to_string()
}

/// The pool: app-only XOAUTH2 as relay@ or alerts@.
fn pool_upstream(name: &str, sim: &exosim::RunningSim, dir: &Path, extra: &str) -> String {
    named_upstream(name, "m365-oauth", sim, dir, extra)
        .replace(&format!("mailbox = \"{MAILBOX}\""), &format!("mailboxes = [\"{MAILBOX}\", \"{ALERTS}\"]"))
}

/// Submits from `source` (a loopback address), optionally after AUTH PLAIN; returns the final reply.
async fn submit_from(port: u16, source: &str, auth: Option<(&str, &str)>, from: &str, to: &str, body: &str) -> String {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let stream = socket.connect(format!("127.0.0.1:{port}").parse().unwrap()).await.expect("connect to sluice");
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut exchange = async |line: String, code: &str| -> String {
        if !line.is_empty() {
            w.write_all(line.as_bytes()).await.unwrap();
        }
        let mut all = String::new();
        loop {
            let mut l = String::new();
            let n = tokio::time::timeout(DEADLINE, r.read_line(&mut l)).await.expect("reply in time").unwrap();
            assert!(n > 0, "sluice closed the connection");
            all.push_str(&l);
            if l.as_bytes().get(3) != Some(&b'-') {
                break;
            }
        }
        assert!(all.starts_with(code), "{line:?} → {all}");
        all
    };
    exchange(String::new(), "220").await;
    exchange("EHLO client.test\r\n".into(), "250").await;
    if let Some((user, password)) = auth {
        let plain = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        exchange(format!("AUTH PLAIN {plain}\r\n"), "235").await;
    }
    exchange(format!("MAIL FROM:<{from}>\r\n"), "250").await;
    exchange(format!("RCPT TO:<{to}>\r\n"), "250").await;
    exchange("DATA\r\n".into(), "354").await;
    let mut data = body.replace("\r\n.", "\r\n..");
    data.push_str(".\r\n");
    let last = exchange(data, "250").await;
    let _ = w.write_all(b"QUIT\r\n").await;
    last
}

fn subject_of(m: &exosim::StoredMessage) -> String {
    let raw = String::from_utf8_lossy(&m.raw).into_owned();
    raw.lines().find_map(|l| l.strip_prefix("Subject: ")).unwrap_or_default().to_owned()
}

#[tokio::test]
async fn each_route_takes_its_upstream_and_mailbox() {
    let mut world = start_with(&pool_tenant("", ""), |sim, dir, port| {
        format!(
            "{}{}{}{}{}\
             [[routes]]\nsenders = [\"*@scan.contoso.com\"]\nupstream = \"pool\"\nmailbox = \"{ALERTS}\"\n\
             sender_rewrite = \"rewrite\"\n\n\
             [[routes]]\nsenders = [\"printer@contoso.com\", \"ops.contoso.com\"]\nupstream = \"graph\"\n\
             sender_rewrite = \"rewrite\"\n\n\
             [[routes]]\nusers = [\"erp\"]\nupstream = \"pool\"\nmailbox = \"{MAILBOX}\"\nsender_rewrite = \"rewrite\"\n\n\
             [[routes]]\nnetworks = [\"127.0.0.2/32\"]\nupstream = \"connector\"\n\n\
             [[routes]]\nupstream = \"basic\"\nsender_rewrite = \"rewrite\"\n",
            listener(port),
            pool_upstream("pool", sim, dir, ""),
            named_upstream("graph", "m365-graph", sim, dir, ""),
            named_upstream("connector", "m365-connector", sim, dir, ""),
            named_upstream("basic", "m365-basic", sim, dir, ""),
        )
    })
    .await;
    let port = world.port;
    let cases: [Case; 6] = [
        ("127.0.0.1", None, "floor3@scan.contoso.com", "wildcard"),
        ("127.0.0.1", None, "printer@contoso.com", "address"),
        ("127.0.0.1", None, "backup@ops.contoso.com", "domain"),
        ("127.0.0.1", Some(("erp", ERP_PASSWORD)), "erp@contoso.com", "auth-user"),
        ("127.0.0.2", None, "ups@contoso.com", "network"),
        ("127.0.0.1", None, "someone@contoso.com", "default"),
    ];
    for (source, auth, from, subject) in cases {
        let body = message(from, "alice@contoso.com", subject);
        submit_from(port, source, auth, from, "alice@contoso.com", &body).await;
    }
    let events = world.next_events(cases.len()).await;
    for e in &events {
        assert_eq!(e.disposition, Disposition::Delivered, "{e:?}");
    }
    let upstream_of = |from: &str| events.iter().find(|e| e.sender == from).map(|e| e.upstream.clone()).unwrap();
    assert_eq!(upstream_of("floor3@scan.contoso.com"), "pool");
    assert_eq!(upstream_of("printer@contoso.com"), "graph");
    assert_eq!(upstream_of("backup@ops.contoso.com"), "graph");
    assert_eq!(upstream_of("erp@contoso.com"), "pool");
    assert_eq!(upstream_of("ups@contoso.com"), "connector");
    assert_eq!(upstream_of("someone@contoso.com"), "basic");

    let stored = world.wait_messages(cases.len()).await;
    let find = |subject: &str| stored.iter().find(|m| subject_of(m) == subject).unwrap_or_else(|| panic!("{subject}"));
    let app = format!("app:{CLIENT_ID}");
    // Wildcard sender → the pool, pinned to alerts@, rewritten to it.
    let m = find("wildcard");
    assert_eq!(
        (m.path, m.identity.as_str(), m.mailbox.as_str(), m.mail_from.as_str()),
        (SubmitPath::SmtpAuth, app.as_str(), ALERTS, ALERTS)
    );
    assert!(String::from_utf8_lossy(&m.raw).contains("Reply-To: <floor3@scan.contoso.com>"));
    // Exact address and domain → Graph, as relay@.
    for subject in ["address", "domain"] {
        let m = find(subject);
        assert_eq!((m.path, m.mailbox.as_str()), (SubmitPath::Graph, MAILBOX), "{subject}: {m:?}");
    }
    // The AUTH user → the pool, pinned to relay@.
    let m = find("auth-user");
    assert_eq!(
        (m.path, m.identity.as_str(), m.mailbox.as_str(), m.mail_from.as_str()),
        (SubmitPath::SmtpAuth, app.as_str(), MAILBOX, MAILBOX)
    );
    // The client network → the connector, sender untouched.
    let m = find("network");
    assert_eq!((m.path, m.mail_from.as_str()), (SubmitPath::Connector, "ups@contoso.com"), "{m:?}");
    // Everything else → the default route: basic auth as scanner@.
    let m = find("default");
    assert_eq!(
        (m.path, m.identity.as_str(), m.mail_from.as_str()),
        (SubmitPath::SmtpAuth, BASIC_MAILBOX, BASIC_MAILBOX),
        "{m:?}"
    );
    let event = events.iter().find(|e| e.sender == "floor3@scan.contoso.com").unwrap();
    assert_eq!(event.mailbox.as_deref(), Some(ALERTS));
    assert_eq!(world.scheduler.upstreams().len(), 4);
    world.stop().await;
}

const MESSAGES: usize = 64;
const PER_MINUTE: usize = 30;

#[tokio::test]
async fn a_pool_of_two_mailboxes_shares_the_mail_each_within_its_rate() {
    let mut world = start_with(
        // Over the rate or the connection limit the simulator refuses, so an oversend would show.
        &pool_tenant("clock = \"manual\"", "[limits]\nrate_limit_action = \"reject\"\n"),
        |sim, dir, port| {
            // Six workers: three connections for each mailbox, no more.
            format!(
                "{}{}",
                listener(port),
                pool_upstream("pool", sim, dir, "connections = 6\nsender_rewrite = \"mailbox\"\n")
            )
        },
    )
    .await;
    let clock = world.sim.manual_clock();
    world.scheduler.set_shaping_clock(Arc::new(move || clock.now()));

    for i in 0..MESSAGES {
        let subject = format!("pooled {i}");
        world
            .submit(
                "app@contoso.com",
                &["alice@contoso.com"],
                &message("app@contoso.com", "alice@contoso.com", &subject),
            )
            .await;
    }
    let mut delivered = 0;
    let mut used = std::collections::HashMap::new();
    while delivered < MESSAGES {
        // Two mailboxes: 60 this minute, then the clock must move.
        let expected = (delivered + 2 * PER_MINUTE).min(MESSAGES);
        for event in world.next_events(expected - delivered).await {
            assert_eq!(event.disposition, Disposition::Delivered, "nothing may be deferred or bounced: {event:?}");
            assert_eq!(event.upstream, "pool");
            *used.entry(event.mailbox.clone().unwrap()).or_insert(0) += 1;
        }
        delivered = expected;
        assert_eq!(world.sim.messages().len(), delivered, "nothing more within the same simulated minute");
        world.sim.advance(Duration::from_secs(61));
    }
    assert_eq!(used.len(), 2, "both mailboxes used: {used:?}");

    let stored = world.wait_messages(MESSAGES).await;
    let mut subjects: Vec<String> = stored.iter().map(subject_of).collect();
    subjects.sort();
    subjects.dedup();
    assert_eq!(subjects.len(), MESSAGES, "none lost, none duplicated");
    for mailbox in [MAILBOX, ALERTS] {
        let mine: Vec<_> = stored.iter().filter(|m| m.mailbox == mailbox).collect();
        assert!(!mine.is_empty(), "{mailbox} sent nothing");
        assert_eq!(used[mailbox], mine.len());
        for m in &mine {
            assert_eq!(m.mail_from, mailbox, "rewritten to the mailbox that sent it");
            let in_window =
                mine.iter().filter(|o| o.accepted_at >= m.accepted_at && o.accepted_at < m.accepted_at + 60.0).count();
            assert!(in_window <= PER_MINUTE, "{mailbox}: {in_window} messages within a minute of {}", m.accepted_at);
        }
    }
    assert_eq!(world.scheduler.waiting(), 0);
    world.stop().await;
}

#[tokio::test]
async fn a_spooled_message_whose_upstream_was_removed_goes_by_the_default_route() {
    // First sluice: routes scanner mail to "old", a smarthost that is not listening: it stays queued.
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let world = start_with(&tenant("", ""), |sim, dir, port| {
        format!(
            "{}{}[upstreams.old]\nhost = \"127.0.0.1\"\nport = {closed_port}\ntls = \"none\"\n\n\
             [[routes]]\nsenders = [\"{MAILBOX}\"]\nupstream = \"old\"\n\n[[routes]]\nupstream = \"m365\"\n",
            listener(port),
            named_upstream("m365", "m365-oauth", sim, dir, ""),
        )
    })
    .await;
    world.submit(MAILBOX, &["alice@contoso.com"], &message(MAILBOX, "alice@contoso.com", "stranded")).await;
    world.wait_until("an attempt on the old route", |w| w.scheduler.waiting() == 1).await;
    assert!(world.sim.messages().is_empty());

    // Second sluice, same spool: "old" is gone from the configuration.
    let mut world = world
        .restart_with(|sim, dir, port| {
            format!("{}{}", listener(port), named_upstream("m365", "m365-oauth", sim, dir, ""))
        })
        .await;
    let events = world.next_events(1).await;
    assert_eq!(events[0].disposition, Disposition::Delivered, "{events:?}");
    assert_eq!(events[0].upstream, "m365");
    let stored = world.wait_messages(1).await;
    assert_eq!(subject_of(&stored[0]), "stranded");
    assert_eq!(stored[0].path, SubmitPath::SmtpAuth);
    world.wait_until("an empty queue", |w| w.scheduler.waiting() == 0).await;
    world.stop().await;
}
