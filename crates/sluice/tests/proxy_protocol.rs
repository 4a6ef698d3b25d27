//! PROXY protocol: behind a load balancer (here: 127.0.0.1, the only trusted one), the client
//! address named in a v1 or v2 header is what the relay policy and the Received header see. A
//! header from anyone else is refused (it would let a client choose its own address), and so is a
//! trusted connection that sends no header.

mod common;

use std::net::{IpAddr, Ipv4Addr};

use common::*;

const V2_SIGNATURE: [u8; 12] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A];

fn start() -> (Upstream, Sluice) {
    let up = Upstream::builder().start();
    let sluice = Sluice::builder()
        .listener(
            Listener::plain()
                .allow(&["192.0.2.0/24"])
                .set("proxy_protocol", true)
                .set("proxy_trusted_networks", vec!["127.0.0.1/32"]),
        )
        .upstream(UpstreamCfg::of(&up))
        .start();
    (up, sluice)
}

fn v1(client: &str) -> Vec<u8> {
    format!("PROXY TCP4 {client} 127.0.0.1 40000 25\r\n").into_bytes()
}

fn v2(client: Ipv4Addr) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0x00, 12]); // version 2, PROXY; TCP over IPv4; 12 address bytes
    h.extend_from_slice(&client.octets());
    h.extend_from_slice(&Ipv4Addr::LOCALHOST.octets());
    h.extend_from_slice(&40001u16.to_be_bytes());
    h.extend_from_slice(&25u16.to_be_bytes());
    h
}

/// Connects from `source`, sends `header`, and reads the greeting.
fn through_proxy(source: &str, port: u16, header: &[u8]) -> SmtpClient {
    let mut c = SmtpClient::connect_from(source.parse::<IpAddr>().unwrap(), port);
    c.send_raw(header);
    c
}

fn relay(c: &mut SmtpClient, subject: &str) {
    c.read_reply().expect(220, None, "greeting behind the proxy");
    c.ehlo();
    queued_id(&c.send_mail(
        "dev@example.com",
        &["rcpt@example.com"],
        &message("dev@example.com", "rcpt@example.com", subject, "hi"),
    ));
}

#[test]
fn the_client_named_by_the_header_drives_the_policy() {
    let (up, sluice) = start();
    let port = sluice.port();

    let mut c = through_proxy("127.0.0.1", port, &v1("192.0.2.7"));
    relay(&mut c, "via v1");
    c.quit();

    let mut c = through_proxy("127.0.0.1", port, &v2(Ipv4Addr::new(192, 0, 2, 8)));
    relay(&mut c, "via v2");
    c.quit();

    // A client outside allowed_networks, as the header says, is refused.
    let mut c = through_proxy("127.0.0.1", port, &v1("198.51.100.1"));
    c.read_reply().expect(220, None, "greeting");
    c.ehlo();
    c.cmd("MAIL FROM:<dev@example.com>").expect(250, None, "MAIL");
    c.cmd("RCPT TO:<rcpt@example.com>").expect(554, Some("5.7.1"), "RCPT from 198.51.100.1");
    c.quit();

    let msgs = up.wait_for_messages(2, DEADLINE);
    for (subject, client) in [("via v1", "192.0.2.7"), ("via v2", "192.0.2.8")] {
        let m = msgs.iter().find(|m| m.subject().as_deref() == Some(subject)).expect(subject);
        let (received, _) = split_received(&m.data, "\r\n");
        let received = String::from_utf8_lossy(received);
        assert!(received.contains(&format!("([{client}])")), "{subject}: Received header: {received}");
        assert!(!received.contains("127.0.0.1"), "{subject}: the proxy's address in Received: {received}");
    }
    assert_eq!(msgs.len(), 2);
}

#[test]
fn headers_from_untrusted_peers_and_missing_headers_are_refused() {
    let (up, sluice) = start();
    let port = sluice.port();

    // 127.0.0.2 is not a trusted load balancer: its claim to be 192.0.2.7 is not believed.
    let mut c = through_proxy("127.0.0.2", port, &v1("192.0.2.7"));
    let r = c.try_read_reply();
    assert!(r.is_err(), "an untrusted peer's PROXY header got a reply: {r:?}");
    let mut c = through_proxy("127.0.0.2", port, &v2(Ipv4Addr::new(192, 0, 2, 7)));
    let r = c.try_read_reply();
    assert!(r.is_err(), "an untrusted peer's v2 header got a reply: {r:?}");

    // A trusted peer must send the header first.
    let mut c = through_proxy("127.0.0.1", port, b"EHLO no-header.example\r\n");
    let r = c.try_read_reply();
    assert!(r.is_err(), "a connection without a PROXY header got a reply: {r:?}");

    let log = sluice.log();
    assert!(log.contains("peer is not in proxy_trusted_networks"), "{log}");
    assert!(log.contains("not a PROXY protocol header"), "{log}");
    assert!(up.messages().is_empty());
}
