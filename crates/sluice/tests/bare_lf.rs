//! Bare LFs in DATA, including the `\n.\n` sequence (the SMTP smuggling pattern): only
//! `\r\n.\r\n` ends the data; the lone "." stays content; the message is relayed with CRLF
//! line endings; the session stays in step.

mod common;

use common::*;

#[test]
fn bare_lf_and_lf_dot_lf_do_not_end_data_and_are_relayed_as_crlf() {
    let pki = Pki::new();
    let up = Upstream::builder().tls(&pki).auth("relay", "pw").start();
    let sluice =
        Sluice::builder().listener(Listener::plain().allow(&["127.0.0.0/8"])).upstream(UpstreamCfg::of(&up)).start();

    let mut c = sluice.connect(0);
    c.ehlo();
    c.cmd("MAIL FROM:<alice@client.test>").expect(250, None, "MAIL FROM");
    c.cmd("RCPT TO:<bob@example.test>").expect(250, None, "RCPT TO");
    c.cmd("DATA").expect(354, None, "DATA");
    // After "\n.\n" comes what would be a second transaction if "\n.\n" ended the data.
    c.send_raw(
        b"Subject: bare lf\nFrom: <alice@client.test>\n\nline one\n.\n\
          MAIL FROM:<mallory@client.test>\nRCPT TO:<victim@example.test>\nDATA\n\
          Subject: smuggled\n\nsmuggled body\r\n.\r\n",
    );
    let reply = c.read_reply();
    queued_id(&reply);
    // The next replies must answer the next commands: no reply belongs to smuggled commands.
    c.cmd("VRFY bob").expect(252, None, "VRFY after the message (reply stream in step)");
    c.cmd("NOOP").expect(250, None, "NOOP after the message");
    c.quit();

    let msgs = up.wait_for_messages(1, DEADLINE);
    assert_eq!(msgs.len(), 1, "exactly one message reaches the upstream: {msgs:?}");
    let m = &msgs[0];
    assert_eq!(m.mail_from, "alice@client.test");
    assert_eq!(m.rcpt_tos, ["bob@example.test"]);
    let expected: &[u8] = b"Subject: bare lf\r\nFrom: <alice@client.test>\r\n\r\nline one\r\n.\r\n\
          MAIL FROM:<mallory@client.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\n\
          Subject: smuggled\r\n\r\nsmuggled body\r\n";
    let content = strip_received(&m.data);
    assert!(
        content.windows(2).all(|w| w[1] != b'\n' || w[0] == b'\r') && !content.starts_with(b"\n"),
        "the relayed content has a bare LF:\n{}",
        show(content)
    );
    assert_bytes_eq(content, expected, "bare LFs become CRLF, the lone '.' line stays content");
}

#[test]
fn bare_cr_lf_dot_sequences_in_content_keep_the_session_in_step() {
    // Variants of the end-of-data sequence that are not "\r\n.\r\n" must not end DATA either.
    let pki = Pki::new();
    let up = Upstream::builder().tls(&pki).auth("relay", "pw").start();
    let sluice =
        Sluice::builder().listener(Listener::plain().allow(&["127.0.0.0/8"])).upstream(UpstreamCfg::of(&up)).start();

    let mut c = sluice.connect(0);
    c.ehlo();
    c.cmd("MAIL FROM:<alice@client.test>").expect(250, None, "MAIL FROM");
    c.cmd("RCPT TO:<bob@example.test>").expect(250, None, "RCPT TO");
    c.cmd("DATA").expect(354, None, "DATA");
    c.send_raw(b"Subject: variants\r\n\r\na\r\n.\nb\n.\r\nc\r\n");
    c.send_raw(b"RSET\r\n");
    c.send_raw(b"d\r\n.\r\n");
    let reply = c.read_reply();
    queued_id(&reply);
    c.cmd("VRFY bob").expect(252, None, "VRFY after the message (reply stream in step)");
    c.quit();

    let msgs = up.wait_for_messages(1, DEADLINE);
    assert_eq!(msgs.len(), 1, "exactly one message reaches the upstream");
    let content = strip_received(&msgs[0].data);
    let text = String::from_utf8_lossy(content);
    for needle in ["a\r\n", "b\r\n", "c\r\n", "RSET\r\n", "d\r\n"] {
        assert!(text.contains(needle), "{needle:?} must be in the relayed content:\n{}", show(content));
    }
    assert!(!text.contains("\r\r"), "no doubled CR:\n{}", show(content));
}
