//! Limits and protocol discipline: message size (declared and actual), recipients per
//! message, command line length, VRFY, command order.

mod common;

use common::*;

const MAX_SIZE: u64 = 10_000;
const MAX_RCPTS: u64 = 3;

fn setup() -> (Pki, Upstream, Sluice) {
    let pki = Pki::new();
    let up = Upstream::builder().tls(&pki).auth("relay", "pw").start();
    let sluice = Sluice::builder()
        .listener(Listener::plain().allow(&["127.0.0.0/8"]).max_message_size(MAX_SIZE).max_recipients(MAX_RCPTS))
        .upstream(UpstreamCfg::of(&up))
        .start();
    (pki, up, sluice)
}

/// A message of about `size` bytes, in lines of 78 characters.
fn big_message(subject: &str, size: usize) -> Vec<u8> {
    let line = "x".repeat(76);
    let body: Vec<&str> = std::iter::repeat_n(line.as_str(), size / 78 + 1).collect();
    message("alice@client.test", "bob@example.test", subject, &body.join("\n"))
}

#[test]
fn declared_size_over_the_limit_is_refused_at_mail() {
    let (_pki, _up, sluice) = setup();
    let mut c = sluice.connect(0);
    let ehlo = c.ehlo();
    assert!(ehlo.has_extension("SIZE"), "EHLO should advertise SIZE: {ehlo}");
    c.cmd(&format!("MAIL FROM:<alice@client.test> SIZE={}", MAX_SIZE * 3)).expect(
        552,
        Some("5.3.4"),
        "MAIL with SIZE= over max_message_size",
    );
    // Under the limit is fine.
    c.cmd(&format!("MAIL FROM:<alice@client.test> SIZE={}", MAX_SIZE / 2)).expect(
        250,
        None,
        "MAIL with SIZE= under max_message_size",
    );
    c.quit();
}

#[test]
fn content_over_the_limit_is_refused_after_the_data_and_not_queued() {
    let (_pki, up, sluice) = setup();
    let mut c = sluice.connect(0);
    c.ehlo();
    let big = big_message("too big", MAX_SIZE as usize * 3);
    let reply = c.send_mail("alice@client.test", &["bob@example.test"], &big);
    reply.expect(552, Some("5.3.4"), "end of DATA over max_message_size");

    // The session goes on; a small message on it is relayed and is the only one.
    let small = message("alice@client.test", "bob@example.test", "small enough", "hi");
    queued_id(&c.send_mail("alice@client.test", &["bob@example.test"], &small));
    c.quit();
    let msgs = up.wait_for_messages(1, DEADLINE);
    let subjects: Vec<Option<String>> = msgs.iter().map(|m| m.subject()).collect();
    assert_eq!(subjects, [Some("small enough".to_string())], "only the small message is relayed");
    assert_bytes_eq(strip_received(&msgs[0].data), &small, "the small message");
}

#[test]
fn recipients_over_the_limit_get_452_and_the_rest_are_relayed() {
    let (_pki, up, sluice) = setup();
    let mut c = sluice.connect(0);
    c.ehlo();
    c.cmd("MAIL FROM:<alice@client.test>").expect(250, None, "MAIL FROM");
    let mut accepted = Vec::new();
    for i in 0..MAX_RCPTS {
        let r = format!("r{i}@example.test");
        c.cmd(&format!("RCPT TO:<{r}>")).expect(250, None, "RCPT within max_recipients");
        accepted.push(r);
    }
    c.cmd("RCPT TO:<one-too-many@example.test>").expect(452, Some("4.5.3"), "RCPT over max_recipients");
    c.cmd("DATA").expect(354, None, "DATA");
    let content = message("alice@client.test", "r0@example.test", "three recipients", "hi");
    queued_id(&c.send_content(&content));
    c.quit();

    let msgs = up.wait_for_messages(1, DEADLINE);
    let mut got: Vec<String> = msgs.iter().flat_map(|m| m.rcpt_tos.clone()).collect();
    got.sort();
    assert_eq!(got, accepted, "the accepted recipients, and only them, get the message");
}

#[test]
fn overlong_command_line_is_refused_and_the_session_stays_in_step() {
    let (_pki, _up, sluice) = setup();
    let mut c = sluice.connect(0);
    c.ehlo();
    // 600 octets including CRLF (the limit is 512).
    let line = format!("NOOP {}", "x".repeat(600 - 5 - 2));
    assert_eq!(line.len() + 2, 600);
    c.cmd(&line).expect(500, Some("5.5.2"), "600-octet command line");
    c.cmd("NOOP").expect(250, None, "NOOP after the overlong line");
    c.quit();
}

#[test]
fn vrfy_gets_252() {
    let (_pki, _up, sluice) = setup();
    let mut c = sluice.connect(0);
    c.ehlo();
    c.cmd("VRFY bob").expect(252, None, "VRFY");
    c.cmd("VRFY <bob@example.test>").expect(252, None, "VRFY");
    c.quit();
}

#[test]
fn commands_out_of_order_get_503() {
    let (_pki, _up, sluice) = setup();
    let mut c = sluice.connect(0);
    c.ehlo();
    c.cmd("RCPT TO:<bob@example.test>").expect(503, Some("5.5.1"), "RCPT before MAIL");
    c.cmd("DATA").expect(503, Some("5.5.1"), "DATA before MAIL");
    c.cmd("MAIL FROM:<alice@client.test>").expect(250, None, "MAIL FROM");
    // RFC 5321 3.3: without an accepted RCPT, DATA gets 503 (out of sequence) or 554 (no
    // valid recipients).
    let data = c.cmd("DATA");
    assert!(
        matches!(data.code, 503 | 554) && data.enhanced() == Some("5.5.1"),
        "DATA before RCPT: expected 503 or 554 with 5.5.1, got {data}"
    );
    c.cmd("MAIL FROM:<alice@client.test>").expect(503, Some("5.5.1"), "nested MAIL");
    c.quit();
}
