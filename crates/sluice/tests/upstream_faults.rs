//! Upstream faults: the smarthost drops the connection after the end of DATA before replying,
//! replies 421 (at the greeting, at MAIL), stalls longer than `upstream.command_timeout` (2s
//! here), resets the connection during STARTTLS, or answers 4xx for a while (10 s here, an hour in
//! real life; `SLUICE_FAULTS_TEMPFAIL_SECS`). In each case every message is retried and, once the
//! upstream behaves, delivered exactly once (the faulty upstream keeps nothing it did not answer
//! 250 to), and nothing is bounced.
//!
//! The upstream is `tests/peers/faulty_upstream.py`, with STARTTLS and PIPELINING like Microsoft
//! 365; each test checks that its fault really happened, more than once per message where it can.

mod common;

use std::collections::BTreeMap;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::faults::*;
use common::*;

const MESSAGES: usize = 3;

struct World {
    _pki: Pki,
    up: FaultyUpstream,
    sluice: Sluice,
    sent: BTreeMap<String, Vec<u8>>,
}

/// A faulty upstream already in `mode`, sluice in front of it with a 2s command timeout, and
/// [`MESSAGES`] messages accepted by sluice.
fn world(name: &str, mode: &str) -> World {
    let pki = Pki::new();
    let up = FaultyUpstream::start(Some(&pki), 5.0);
    up.set_mode(mode);
    let mut cfg = UpstreamCfg::of_faulty(&up);
    cfg.command_timeout = Some("2s".into());
    cfg.connect_timeout = Some("2s".into());
    let sluice = Sluice::builder()
        .listener(Listener::plain().allow(&["127.0.0.0/8"]))
        .upstream(cfg)
        .retry("1s", "2s", "1h")
        .start();
    let mut sent = BTreeMap::new();
    let mut c = sluice.connect(0);
    c.ehlo();
    for i in 0..MESSAGES {
        let subject = format!("{name} {i}");
        let content =
            message("alice@client.test", "bob@example.test", &subject, &format!("{TRICKY_BODY}\nmessage {i}"));
        queued_id(&c.send_mail("alice@client.test", &["bob@example.test"], &content));
        sent.insert(subject, content);
    }
    c.quit();
    World { _pki: pki, up, sluice, sent }
}

impl World {
    /// The upstream behaves again: every message arrives exactly once, intact, nothing bounces,
    /// and the queue empties.
    fn heal_and_check(self, faults: &[&str]) {
        let World { _pki, up, sluice, sent } = self;
        up.set_mode("none");
        let msgs = up
            .wait_for(Duration::from_secs(60), "every message after the upstream recovered", |m| m.len() >= sent.len());
        wait_for_empty_queue(&sluice.spool_dir, DEADLINE);
        sleep(Duration::from_millis(500)); // anything more (a duplicate, a bounce) shows up too
        let msgs = if up.count() > msgs.len() { up.messages() } else { msgs };
        let mut copies: BTreeMap<String, usize> = BTreeMap::new();
        for m in &msgs {
            assert!(!m.mail_from.is_empty(), "a bounce was sent:\n{}", show(&m.data));
            let subject = m.subject().unwrap_or_default();
            let expected = sent.get(&subject).unwrap_or_else(|| panic!("unexpected message {subject:?}"));
            assert_bytes_eq(strip_received(&m.data), expected, &subject);
            assert!(m.tls, "{subject} went out without TLS");
            *copies.entry(subject).or_default() += 1;
        }
        assert_eq!(copies.len(), sent.len(), "every message delivered");
        assert!(copies.values().all(|n| *n == 1), "each message exactly once: {copies:?}");
        let log = sluice.log();
        assert!(!log.contains("bounce queued"), "sluice bounced something");
        assert!(!log.contains("panicked"), "sluice panicked");
        let attempts = log.matches("delivery attempt").count();
        let summary: Vec<String> = faults.iter().map(|f| format!("{f} ×{}", up.faults(f))).collect();
        eprintln!(
            "{}: {} messages delivered once each after {attempts} delivery attempts, 0 bounces",
            summary.join(", "),
            sent.len()
        );
    }
}

#[test]
fn upstream_drops_the_connection_after_the_end_of_data() {
    let w = world("dropped", "drop-after-data");
    // Each message at least twice: the retries meet the fault too.
    w.up.wait_for_faults("drop-after-data", 2 * MESSAGES, DEADLINE);
    w.heal_and_check(&["drop-after-data"]);
}

#[test]
fn upstream_replies_421_at_the_greeting_and_at_mail() {
    let w = world("four-twenty-one", "421-greeting");
    w.up.wait_for_faults("421-greeting", 2, DEADLINE);
    w.up.set_mode("421-mail");
    w.up.wait_for_faults("421-mail", MESSAGES, DEADLINE);
    w.heal_and_check(&["421-greeting", "421-mail"]);
}

#[test]
fn upstream_stalls_longer_than_the_command_timeout() {
    // The upstream keeps silent for 5s; sluice gives up after 2s (upstream.command_timeout).
    let w = world("stalled", "stall-data");
    w.up.wait_for_faults("stall-data", MESSAGES + 1, Duration::from_secs(60));
    w.up.set_mode("stall-greeting");
    w.up.wait_for_faults("stall-greeting", 1, DEADLINE);
    w.heal_and_check(&["stall-data", "stall-greeting"]);
}

#[test]
fn upstream_resets_the_connection_during_starttls() {
    let w = world("reset", "reset-starttls");
    w.up.wait_for_faults("reset-starttls", 3, DEADLINE);
    w.heal_and_check(&["reset-starttls"]);
}

#[test]
fn upstream_answers_4xx_for_a_while() {
    let secs = knob("SLUICE_FAULTS_TEMPFAIL_SECS", 10);
    let w = world("deferred", "tempfail-data");
    let start = Instant::now();
    // First half: 451 after the whole message; second half: 451 at MAIL.
    sleep(Duration::from_secs(secs / 2));
    w.up.set_mode("tempfail-mail");
    sleep(Duration::from_secs(secs - secs / 2));
    assert!(
        w.up.faults("tempfail-data") >= MESSAGES && w.up.faults("tempfail-mail") >= MESSAGES,
        "every message should have met both 4xx replies within {:?} (data: {}, mail: {})",
        start.elapsed(),
        w.up.faults("tempfail-data"),
        w.up.faults("tempfail-mail")
    );
    w.heal_and_check(&["tempfail-data", "tempfail-mail"]);
}
