//! Durability: what sluice answered 250 to is on disk. SIGKILL it with 20 messages queued
//! (upstream down), restart it on the same spool with the upstream up: all 20 arrive.
//! And SIGTERM ends it gracefully.

mod common;

use std::collections::BTreeMap;

use common::*;

const N: usize = 20;

#[test]
fn twenty_messages_survive_sigkill_and_are_delivered_after_restart() {
    let pki = Pki::new();
    let up_port = free_port(); // the upstream is down while the messages come in
    let mut sluice = Sluice::builder()
        .listener(Listener::plain().allow(&["127.0.0.0/8"]))
        .upstream(UpstreamCfg::starttls(up_port, &pki).auth("relay", "pw"))
        .retry("1s", "2s", "1h")
        .start();

    let mut sent = BTreeMap::new();
    let mut c = sluice.connect(0);
    c.ehlo();
    for i in 0..N {
        let subject = format!("durable message {i:02} id-{:08x}", 0x5eed_0000u32 + i as u32);
        let content =
            message("alice@client.test", "bob@example.test", &subject, &format!("message number {i}\n.\nend"));
        let reply = c.send_mail("alice@client.test", &["bob@example.test"], &content);
        queued_id(&reply);
        sent.insert(subject, content);
    }
    c.quit();

    sluice.kill9();
    let up = Upstream::builder().port(up_port).tls(&pki).auth("relay", "pw").start();
    sluice.restart();

    let msgs = up.wait_for(DEADLINE, "all 20 messages after the restart", |msgs| {
        let subjects: std::collections::BTreeSet<String> = msgs.iter().filter_map(|m| m.subject()).collect();
        sent.keys().all(|s| subjects.contains(s))
    });

    let mut copies: BTreeMap<String, usize> = BTreeMap::new();
    for m in &msgs {
        let subject = m.subject().unwrap_or_default();
        let expected = sent.get(&subject).unwrap_or_else(|| {
            panic!("the upstream got a message that was never sent: {subject:?}\n{}", show(&m.data))
        });
        assert_eq!(m.mail_from, "alice@client.test");
        assert_eq!(m.rcpt_tos, ["bob@example.test"]);
        assert_bytes_eq(strip_received(&m.data), expected, &format!("content of {subject:?}"));
        *copies.entry(subject).or_default() += 1;
    }
    let duplicates: usize = copies.values().map(|n| n - 1).sum();
    eprintln!("kill -9 and restart: {N} messages sent, {} delivered, {duplicates} duplicate(s)", msgs.len());
    assert_eq!(copies.len(), N, "every message was delivered");
}

#[test]
fn sigterm_exits_gracefully_and_queued_mail_survives_it() {
    let pki = Pki::new();
    let up_port = free_port();
    let mut sluice = Sluice::builder()
        .listener(Listener::plain().allow(&["127.0.0.0/8"]))
        .upstream(UpstreamCfg::starttls(up_port, &pki).auth("relay", "pw"))
        .retry("1s", "2s", "1h")
        .start();

    let content = message("alice@client.test", "bob@example.test", "queued across SIGTERM", "hello");
    let mut c = sluice.connect(0);
    c.ehlo();
    queued_id(&c.send_mail("alice@client.test", &["bob@example.test"], &content));
    c.quit();

    let status = sluice.terminate();
    assert!(status.success(), "sluice should exit 0 on SIGTERM, got {status}\n{}", tail(&sluice.log_path(), 40));

    let up = Upstream::builder().port(up_port).tls(&pki).auth("relay", "pw").start();
    sluice.restart();
    let msgs = up.wait_for_messages(1, DEADLINE);
    assert_bytes_eq(strip_received(&msgs[0].data), &content, "message queued before SIGTERM");
}
