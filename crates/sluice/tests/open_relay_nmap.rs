//! Open relay: nmap's `smtp-open-relay` script tries its 16 classic relay tricks (null sender,
//! `%` hack, `!` paths, source routes, quoted local parts, address literals) against sluice from a
//! client that is not in `allowed_networks`, and must report that every one of them failed. Then
//! clients bound to several loopback source addresses, some inside the allowed networks and some
//! not, each get the answer the policy gives them, and only the allowed ones' mail arrives.

mod common;

use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use common::*;

/// 127.0.0.2 alone, and 127.0.0.8 - 127.0.0.15.
const ALLOWED: &[&str] = &["127.0.0.2/32", "127.0.0.8/29"];

fn start() -> (Upstream, Sluice) {
    let up = Upstream::builder().start();
    let sluice = Sluice::builder().listener(Listener::plain().allow(ALLOWED)).upstream(UpstreamCfg::of(&up)).start();
    (up, sluice)
}

#[test]
fn nmap_smtp_open_relay_finds_no_relay() {
    let nmap = require_tool("nmap", &[], "nmap");
    let (up, sluice) = start();
    let port = sluice.port().to_string();
    // "+smtp-open-relay" runs the script whatever nmap thinks the port is: its port rule only looks at
    // ports 25/465/587 or a service already identified as SMTP, and our port is a random one.
    let out = run_command(
        Command::new(&nmap).args([
            "-n",
            "-Pn",
            "-sT",
            "-vv",
            "-p",
            &port,
            "--script",
            "+smtp-open-relay",
            "--script-args",
            "smtp-open-relay.domain=relay-target.test,smtp-open-relay.ip=127.0.0.1",
            "127.0.0.1",
        ]),
        None,
        Duration::from_secs(120),
    );
    assert!(out.success(), "nmap failed:\n{out}");
    assert!(out.stdout.contains(&format!("{port}/tcp open")), "nmap did not see the port open:\n{out}");
    assert!(
        out.stdout.contains("smtp-open-relay: Server doesn't seem to be an open relay, all tests failed"),
        "nmap's smtp-open-relay did not report 0 successful tests:\n{out}\n--- sluice log ---\n{}",
        sluice.log()
    );
    assert!(!out.stdout.contains("Server is an open relay"), "{out}");
    // The script really got as far as RCPT, and sluice refused and logged it.
    let log = sluice.log();
    assert!(log.contains("relay access denied"), "no relay refusal in sluice's log:\n{log}");
    assert!(log.contains("relay_denied=") && !log.contains("accepted=1"), "{log}");
    assert!(up.messages().is_empty(), "something reached the upstream: {:?}", up.messages());
}

#[test]
fn loopback_source_addresses_get_what_the_policy_says() {
    let (up, sluice) = start();
    let cases: &[(&str, bool)] = &[
        ("127.0.0.1", false),
        ("127.0.0.2", true),
        ("127.0.0.3", false),
        ("127.0.0.7", false),
        ("127.0.0.8", true),
        ("127.0.0.9", true),
        ("127.0.0.15", true),
        ("127.0.0.16", false),
    ];
    let mut expected_subjects = Vec::new();
    for &(source, allowed) in cases {
        let ip: IpAddr = source.parse().unwrap();
        let mut c = SmtpClient::connect_from(ip, sluice.port());
        c.read_reply().expect(220, None, "greeting");
        c.ehlo();
        c.cmd("MAIL FROM:<device@example.com>").expect(250, Some("2.1.0"), "MAIL");
        let rcpt = c.cmd("RCPT TO:<someone@example.org>");
        if allowed {
            rcpt.expect(250, None, &format!("RCPT from {source} (allowed)"));
            c.cmd("DATA").expect(354, None, "DATA");
            let subject = format!("from {source}");
            let reply = c.send_content(&message("device@example.com", "someone@example.org", &subject, "hi"));
            queued_id(&reply);
            expected_subjects.push(subject);
        } else {
            rcpt.expect(554, Some("5.7.1"), &format!("RCPT from {source} (not allowed)"));
            assert!(rcpt.text().contains("Relay access denied"), "{rcpt}");
            c.cmd("DATA").expect(554, None, "DATA without recipients");
        }
        c.quit();
    }
    let msgs = up.wait_for(DEADLINE, "the allowed clients' messages", |m| m.len() >= expected_subjects.len());
    let mut got: Vec<String> = msgs.iter().filter_map(|m| m.subject()).collect();
    got.sort();
    expected_subjects.sort();
    assert_eq!(got, expected_subjects);
    for m in &msgs {
        let subject = m.subject().unwrap();
        let source = subject.trim_start_matches("from ");
        let (received, _) = split_received(&m.data, "\r\n");
        let received = String::from_utf8_lossy(received);
        assert!(received.contains(&format!("[{source}]")), "Received header lacks the client {source}: {received}");
    }
}
