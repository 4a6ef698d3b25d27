//! The upstream is down when the message comes in: sluice still accepts it (250, it is on
//! disk), and delivers it by itself once the upstream is up, without the client retrying.

mod common;

use common::*;

#[test]
fn message_accepted_while_upstream_down_is_delivered_once_it_is_up() {
    let pki = Pki::new();
    // Nobody listens on this port yet: connections to it are refused.
    let up_port = free_port();
    let sluice = Sluice::builder()
        .listener(Listener::plain().allow(&["127.0.0.0/8"]))
        .upstream(UpstreamCfg::starttls(up_port, &pki).auth("relay", "pw"))
        .retry("1s", "2s", "1h")
        .start();

    let sent = message("alice@client.test", "bob@example.test", "queued while down", TRICKY_BODY);
    let mut c = sluice.connect(0);
    c.ehlo();
    let reply = c.send_mail("alice@client.test", &["bob@example.test"], &sent);
    let id = queued_id(&reply);
    assert!(!id.is_empty(), "queue id in {reply}");
    c.quit();

    // Only now does the upstream come up, on the configured port.
    let up = Upstream::builder().port(up_port).tls(&pki).auth("relay", "pw").start();
    let msgs = up.wait_for_messages(1, DEADLINE);
    let got = &msgs[0];
    assert_eq!(got.mail_from, "alice@client.test");
    assert_eq!(got.rcpt_tos, ["bob@example.test"]);
    assert_bytes_eq(strip_received(&got.data), &sent, "content delivered after the upstream came up");
}
