//! Abuse limits and protocol hardening against a running sluice, over real sockets: failed AUTH
//! bans (by address) and locks (by user name); connections per client; a command line or message
//! trickled in a byte at a time; pipelining before EHLO's reply; talking before the greeting; NUL
//! bytes, invalid UTF-8 and over-long lines in commands; header limits and mail loops; and
//! addresses with `%`, `!`, source routes and quoted local parts, which are relayed as the final
//! address and never re-routed.

mod common;

use std::io;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn start(listener: Listener, extra_toml: &str) -> (Upstream, Sluice) {
    let up = Upstream::builder().start();
    let sluice = Sluice::builder()
        .listener(listener)
        .user("scanner", "right-password")
        .toml(extra_toml)
        .upstream(UpstreamCfg::of(&up))
        .start();
    (up, sluice)
}

fn greeted(source: &str, port: u16) -> SmtpClient {
    let mut c = SmtpClient::connect_from(ip(source), port);
    c.read_reply().expect(220, None, &format!("greeting for {source}"));
    c
}

/// The connection was closed by sluice: EOF (or a reset) at the next read.
#[track_caller]
fn expect_closed(c: &mut SmtpClient, what: &str) {
    match c.try_read_reply() {
        Ok(r) => panic!("{what}: expected the connection to be closed, got: {r}"),
        Err(e) => assert!(
            matches!(e.kind(), io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset),
            "{what}: expected EOF, got {e}"
        ),
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// Sends `bytes` one at a time, `gap` apart, until sluice answers; returns that reply. Nothing is
/// written once a reply has arrived, so no reset can swallow it.
fn trickle(c: &mut SmtpClient, bytes: &[u8], gap: Duration) -> Reply {
    c.set_timeout(gap);
    let end = Instant::now() + Duration::from_secs(60);
    for &b in bytes.iter().cycle() {
        match c.try_read_reply() {
            Ok(reply) => {
                c.set_timeout(IO_TIMEOUT);
                return reply;
            }
            Err(e) if is_timeout(&e) => {}
            Err(e) => panic!("reading while trickling: {e}"),
        }
        assert!(Instant::now() < end, "sluice did not cut off a client sending a byte every {gap:?}");
        c.send_raw(&[b]);
    }
    unreachable!()
}

#[test]
fn failed_auth_bans_the_address_and_locks_the_name() {
    let (_up, sluice) = start(
        Listener::plain().insecure_allow_plaintext_auth(true),
        "[limits]\nauth_failures_per_client = 3\nauth_failures_per_user = 4\n",
    );
    let port = sluice.port();
    let mut c = greeted("127.0.0.1", port);
    c.ehlo();
    for attempt in 1..=3 {
        c.auth_plain("scanner", "wrong-password").expect(535, Some("5.7.8"), &format!("wrong password #{attempt}"));
    }
    c.read_reply().expect(421, Some("4.7.0"), "after the third failure");
    expect_closed(&mut c, "banned client");

    // The next connection from that address is turned away at once.
    let mut c = SmtpClient::connect_from(ip("127.0.0.1"), port);
    let r = c.read_reply();
    r.expect(421, Some("4.7.0"), "a banned address connecting again");
    assert!(r.text().contains("too many failed authentication attempts"), "{r}");

    // Another address is not banned, and the name is not locked yet (3 failures of 4).
    let mut c = greeted("127.0.0.2", port);
    c.ehlo();
    c.auth_plain("scanner", "right-password").expect(235, None, "AUTH from another address");
    c.quit();

    // A fourth failure for the name, from yet another address, locks it: now even the right
    // password is refused, from anywhere.
    let mut c = greeted("127.0.0.3", port);
    c.ehlo();
    c.auth_plain("scanner", "wrong-password").expect(535, Some("5.7.8"), "fourth failure for the name");
    c.quit();
    let mut c = greeted("127.0.0.4", port);
    c.ehlo();
    c.auth_plain("scanner", "right-password").expect(535, Some("5.7.8"), "a locked name");
    c.quit();

    let log = sluice.log();
    assert!(log.matches("authentication failed").count() >= 5, "{log}");
    assert!(log.contains("connection refused"), "{log}");
}

#[test]
fn connections_per_client_are_limited() {
    let (_up, sluice) = start(Listener::plain().set("max_connections_per_client", 2), "");
    let port = sluice.port();
    // Retried: the harness's own start-up probe may still hold a slot for a moment.
    let take = || {
        wait_until(DEADLINE, "a connection slot", || {
            let mut c = SmtpClient::connect_from(ip("127.0.0.1"), port);
            (c.read_reply().code == 220).then_some(c)
        })
    };
    let first = take();
    let _second = take();
    let mut third = SmtpClient::connect_from(ip("127.0.0.1"), port);
    let r = third.read_reply();
    r.expect(421, Some("4.7.0"), "a third connection from one address");
    assert!(r.text().contains("too many connections from your address"), "{r}");
    expect_closed(&mut third, "the refused connection");

    // Other addresses have their own count.
    greeted("127.0.0.2", port).quit();

    // A slot comes free when a session ends.
    first.quit();
    let _again = take();
}

#[test]
fn command_line_trickled_byte_by_byte_is_cut_off() {
    let (_up, sluice) = start(Listener::plain().allow(&["127.0.0.0/8"]).set("command_timeout", "2s"), "");
    let mut c = sluice.connect(0);
    c.ehlo();
    let r = trickle(&mut c, b"MAIL FROM:<slow@example.com> SIZE=1000", Duration::from_millis(250));
    r.expect(421, Some("4.4.2"), "a command line that takes longer than command_timeout");
    expect_closed(&mut c, "after 421");
}

#[test]
fn auth_response_trickled_byte_by_byte_is_cut_off() {
    let (_up, sluice) = start(Listener::plain().insecure_allow_plaintext_auth(true).set("command_timeout", "2s"), "");
    let mut c = sluice.connect(0);
    c.ehlo();
    c.cmd("AUTH LOGIN").expect(334, None, "AUTH LOGIN");
    // The response to a SASL challenge is a line like any command line.
    let r = trickle(&mut c, b"c2Nhbm5lcg", Duration::from_millis(250));
    r.expect(421, Some("4.4.2"), "a SASL response that takes longer than command_timeout");
    expect_closed(&mut c, "after 421");
}

#[test]
fn message_trickled_byte_by_byte_is_cut_off_and_nothing_queued() {
    // 1000 B/s after the 10 s grace period; a byte every 250 ms is far below that.
    let (up, sluice) = start(Listener::plain().allow(&["127.0.0.0/8"]).set("min_data_rate", 1000), "");
    let mut c = sluice.connect(0);
    c.ehlo();
    c.cmd("MAIL FROM:<slow@example.com>").expect(250, None, "MAIL");
    c.cmd("RCPT TO:<rcpt@example.com>").expect(250, None, "RCPT");
    c.cmd("DATA").expect(354, None, "DATA");
    let r = trickle(&mut c, b"Subject: slow\r\n\r\nsl o w\r\n", Duration::from_millis(250));
    r.expect(421, Some("4.4.2"), "a message arriving below min_data_rate");
    assert!(r.text().contains("data rate too low"), "{r}");
    expect_closed(&mut c, "after 421");
    let queue = sluice.spool_dir.join("queue");
    assert_eq!(std::fs::read_dir(&queue).unwrap().count(), 0, "something was queued");
    assert!(sluice.log().contains("data rate too low; nothing queued"), "{}", sluice.log());
    assert!(up.messages().is_empty());
}

#[test]
fn pipelining_before_the_ehlo_reply_is_refused() {
    let (_up, sluice) = start(Listener::plain().allow(&["127.0.0.0/8"]), "");
    let mut c = sluice.connect(0);
    c.send_raw(b"EHLO bot.example\r\nMAIL FROM:<a@example.com>\r\n");
    c.read_reply().expect(554, Some("5.5.0"), "commands sent with EHLO, before its reply");
    expect_closed(&mut c, "after improper pipelining");

    // Once PIPELINING was offered, a group of commands is fine.
    let mut c = sluice.connect(0);
    c.ehlo();
    c.send_raw(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nNOOP\r\n");
    c.read_reply().expect(250, Some("2.1.0"), "pipelined MAIL");
    c.read_reply().expect(250, Some("2.1.5"), "pipelined RCPT");
    c.read_reply().expect(250, Some("2.0.0"), "pipelined NOOP");
    c.quit();
}

#[test]
fn talking_before_the_greeting_is_refused() {
    let (_up, sluice) = start(Listener::plain().allow(&["127.0.0.0/8"]).set("greeting_delay", "1s"), "");
    let mut c = SmtpClient::connect(sluice.port());
    c.send_raw(b"EHLO impatient.example\r\n");
    let r = c.read_reply();
    r.expect(554, Some("5.5.0"), "a client that talked before the greeting");
    expect_closed(&mut c, "after talking first");
    // A client that waits is greeted.
    let mut c = sluice.connect(0);
    c.ehlo();
    c.quit();
}

#[test]
fn bad_bytes_and_long_lines_in_commands() {
    let (_up, sluice) = start(Listener::plain().allow(&["127.0.0.0/8"]), "");
    let mut c = sluice.connect(0);
    c.ehlo();
    c.send_raw(b"MAIL FROM:<a\0b@example.com>\r\n");
    c.read_reply().expect(501, None, "NUL in a command");
    c.cmd("NOOP").expect(250, None, "the session goes on after NUL");
    c.send_raw(b"EHLO \xff\xfe.example\r\n");
    c.read_reply().expect(501, None, "invalid UTF-8 in a command");
    c.cmd("NOOP").expect(250, None, "the session goes on after invalid UTF-8");
    let long = format!("NOOP {}", "x".repeat(600));
    c.cmd(&long).expect(500, Some("5.5.2"), "a 605-byte command line");
    c.cmd("NOOP").expect(250, None, "the session goes on after a long line");
    // Out of order.
    c.cmd("RCPT TO:<b@example.com>").expect(503, Some("5.5.1"), "RCPT before MAIL");
    c.cmd("DATA").expect(503, Some("5.5.1"), "DATA before MAIL");
    c.cmd("MAIL FROM:<a@example.com>").expect(250, None, "MAIL");
    c.cmd("MAIL FROM:<a@example.com>").expect(503, Some("5.5.1"), "nested MAIL");
    c.quit();
}

#[test]
fn header_limits_and_mail_loops() {
    let (up, sluice) = start(
        Listener::plain().allow(&["127.0.0.0/8"]).set("max_received_headers", 3).set("max_header_size", 1024),
        "",
    );
    let mut c = sluice.connect(0);
    c.ehlo();
    let with_hops = |n: usize, subject: &str| {
        let mut m = String::new();
        for i in 0..n {
            m.push_str(&format!(
                "Received: from hop{i}.example by hop{}.example; Mon, 23 Nov 2026 12:00:00 +0000\r\n",
                i + 1
            ));
        }
        let mut m = m.into_bytes();
        m.extend_from_slice(&message("a@example.com", "b@example.com", subject, "hello"));
        m
    };
    let r = c.send_mail("a@example.com", &["b@example.com"], &with_hops(4, "looping"));
    r.expect(554, Some("5.4.6"), "4 Received headers with max_received_headers = 3");
    queued_id(&c.send_mail("a@example.com", &["b@example.com"], &with_hops(3, "three hops")));
    let mut big = String::new();
    for i in 0..15 {
        big.push_str(&format!("X-Filler-{i}: {}\r\n", "y".repeat(70)));
    }
    let mut big = big.into_bytes();
    big.extend_from_slice(&message("a@example.com", "b@example.com", "big header", "hello"));
    c.send_mail("a@example.com", &["b@example.com"], &big).expect(
        552,
        Some("5.3.4"),
        "a header section over 1024 bytes (no line over 1000)",
    );
    c.quit();
    let msgs = up.wait_for_messages(1, DEADLINE);
    assert_eq!(msgs[0].subject().as_deref(), Some("three hops"));
    let queue = sluice.spool_dir.join("queue");
    wait_until(DEADLINE, "the queue to empty", || (std::fs::read_dir(&queue).unwrap().count() == 0).then_some(()));
    assert_eq!(up.messages().len(), 1, "only the message within the limits was relayed");
}

#[test]
fn routing_syntax_is_never_rerouted() {
    let (up, sluice) = start(Listener::plain().allow(&["127.0.0.0/8"]), "");
    // (as written in RCPT, as the upstream must see it)
    let recipients = [
        ("user%other.example@relay.example", "user%other.example@relay.example"),
        ("host.example!user@relay.example", "host.example!user@relay.example"),
        ("@hop1.example,@hop2.example:final@dest.example", "final@dest.example"),
        ("\"john doe\"@example.com", "\"john doe\"@example.com"),
        ("\"user@inner.example\"@example.com", "\"user@inner.example\"@example.com"),
    ];
    let mut c = sluice.connect(0);
    c.ehlo();
    c.cmd("MAIL FROM:<@a.example,@b.example:sender@c.example>").expect(250, None, "MAIL with a source route");
    for (written, _) in recipients {
        c.cmd(&format!("RCPT TO:<{written}>")).expect(250, None, &format!("RCPT TO:<{written}>"));
    }
    // Invalid addresses are refused, not guessed at.
    for bad in ["user@@example.com", "user@example.com@evil.example", "@hop.example:", "\"unterminated@example.com"] {
        let r = c.cmd(&format!("RCPT TO:<{bad}>"));
        assert!(r.code == 501 || r.code == 553, "RCPT TO:<{bad}> must get 501 or 553, got: {r}");
    }
    c.cmd("DATA").expect(354, None, "DATA");
    queued_id(&c.send_content(&message("sender@c.example", "x@example.com", "routes", "hello")));
    c.quit();
    let msgs = up.wait_for_messages(1, DEADLINE);
    assert_eq!(msgs[0].mail_from, "sender@c.example");
    let want: Vec<&str> = recipients.iter().map(|(_, relayed)| *relayed).collect();
    assert_eq!(msgs[0].rcpt_tos, want, "the upstream's RCPTs");
}
