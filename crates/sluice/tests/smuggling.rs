//! SMTP smuggling: each end-of-data look-alike (`\n.\n`, `\r.\r`, `\r\n\x00.\r\n`, ...) is sent
//! raw over a socket inside a message, followed by a would-be second transaction
//! (`MAIL FROM:<evil@x>`, `RCPT TO:<victim@y>`, `DATA`, a message) and only then the real
//! `\r\n.\r\n`. Exactly one message per sequence reaches the upstream (or none, where
//! `reject_bare_line_endings` refuses it with 550 5.5.2), with the would-be transaction as
//! content, never as commands; victim@y never receives anything; the reply stream stays in step.
//! What is relayed has CRLF line endings only (RFC 5321 §2.3.8), so no look-alike survives to
//! confuse a laxer server downstream either.

mod common;

use common::*;

/// (the look-alike, what the upstream must receive in its place when it is normalised).
/// Normalisation: bare LF and bare CR become CRLF, and a "." that starts a line followed by other
/// characters is dot-unstuffing (RFC 5321 §4.5.2: removed), as on any "." line.
const SEQUENCES: &[(&[u8], &[u8])] = &[
    (b"\n.\n", b"\r\n.\r\n"),
    (b"\n.\r\n", b"\r\n.\r\n"),
    (b"\r.\r", b"\r\n.\r\n"),
    (b"\r\n.\r", b"\r\n\r\n"),
    (b"\r\n.\n", b"\r\n.\r\n"),
    (b"\r\n.\r\r\n", b"\r\n\r\n\r\n"),
    (b"\r\r\n.\r\r\n", b"\r\n\r\n\r\n\r\n"),
    (b"\r\n\x00.\r\n", b"\r\n\x00.\r\n"),
];

const HEADER: &str = "From: <sender@example.com>\r\nTo: <rcpt@example.com>\r\n";
const SMUGGLED: &[u8] = b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\nDATA\r\n\
    From: <evil@x>\r\nTo: <victim@y>\r\nSubject: smuggled\r\n\r\nevil body";

fn has_bare_line_ending(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().any(|(i, &b)| {
        (b == b'\n' && (i == 0 || bytes[i - 1] != b'\r')) || (b == b'\r' && bytes.get(i + 1) != Some(&b'\n'))
    })
}

/// The content as sent, up to (not including) the real "\r\n.\r\n".
fn content(n: usize, seq: &[u8]) -> Vec<u8> {
    let mut c = format!("{HEADER}Subject: smuggling {n}\r\n\r\nfirst message body").into_bytes();
    c.extend_from_slice(seq);
    c.extend_from_slice(SMUGGLED);
    c
}

fn run(reject_bare: bool) {
    let up = Upstream::builder().start();
    let sluice = Sluice::builder()
        .listener(Listener::plain().allow(&["127.0.0.0/8"]).set("reject_bare_line_endings", reject_bare))
        .upstream(UpstreamCfg::of(&up))
        .start();

    let mut expected: Vec<(String, Vec<u8>)> = Vec::new();
    for (n, &(seq, normalised)) in SEQUENCES.iter().enumerate() {
        let what = format!("sequence {n} {:?}", String::from_utf8_lossy(seq));
        let mut c = sluice.connect(0);
        c.ehlo();
        c.cmd("MAIL FROM:<sender@example.com>").expect(250, None, &what);
        c.cmd("RCPT TO:<rcpt@example.com>").expect(250, None, &what);
        c.cmd("DATA").expect(354, None, &what);
        let mut wire = content(n, seq);
        wire.extend_from_slice(b"\r\n.\r\n");
        c.send_raw(&wire);
        let reply = c.read_reply();
        if reject_bare && has_bare_line_ending(seq) {
            reply.expect(550, Some("5.5.2"), &what);
        } else {
            queued_id(&reply);
            let mut want = format!("{HEADER}Subject: smuggling {n}\r\n\r\nfirst message body").into_bytes();
            want.extend_from_slice(normalised);
            want.extend_from_slice(SMUGGLED);
            want.extend_from_slice(b"\r\n");
            expected.push((format!("smuggling {n}"), want));
        }
        // Had the look-alike ended the data, the replies to the smuggled MAIL, RCPT, DATA and its
        // message would come next. The next reply must be HELP's.
        c.cmd("HELP").expect(214, None, &format!("{what}: the reply after the message"));
        c.quit();
    }

    // A last, ordinary message, so that the expected set is never empty.
    let mut c = sluice.connect(0);
    c.ehlo();
    queued_id(&c.send_mail(
        "sender@example.com",
        &["rcpt@example.com"],
        &message("sender@example.com", "rcpt@example.com", "canary", "the end"),
    ));
    c.quit();

    up.wait_for(DEADLINE, "every accepted message", |m| m.len() > expected.len());
    // Nothing else is queued or in flight: whatever reached the upstream is all there will be.
    let queue = sluice.spool_dir.join("queue");
    wait_until(DEADLINE, "sluice's queue to empty", || {
        (std::fs::read_dir(&queue).map(|d| d.count()).unwrap_or(1) == 0).then_some(())
    });
    let msgs = up.messages();
    assert_eq!(
        msgs.len(),
        expected.len() + 1,
        "one message per accepted sequence, plus the canary: {:?}",
        msgs.iter().map(|m| (m.subject(), &m.rcpt_tos)).collect::<Vec<_>>()
    );
    for m in &msgs {
        assert_eq!(m.mail_from, "sender@example.com", "a smuggled sender reached the upstream");
        assert_eq!(m.rcpt_tos, ["rcpt@example.com"], "a smuggled recipient reached the upstream");
        let body = strip_received(&m.data);
        assert!(!has_bare_line_ending(body), "bare CR or LF relayed upstream:\n{}", show(body));
    }
    for (subject, want) in &expected {
        let m = msgs
            .iter()
            .find(|m| m.subject().as_deref() == Some(subject.as_str()))
            .unwrap_or_else(|| panic!("{subject} did not arrive"));
        assert_bytes_eq(strip_received(&m.data), want, subject);
    }
}

#[test]
fn look_alikes_are_normalised_and_never_end_the_data() {
    run(false);
}

#[test]
fn look_alikes_with_bare_line_endings_are_rejected_when_configured() {
    run(true);
}
