//! One message, two recipients, the upstream refuses one of them: the other gets the
//! message, and the sender gets a delivery status notification (RFC 3464) through the same
//! upstream, from the null sender.

mod common;

use common::*;

const SENDER: &str = "alice@client.test";
const GOOD: &str = "good@example.test";
const BAD: &str = "nobody@example.test";

/// A MIME part: its (unfolded, lower-cased) Content-Type and its body.
struct Part {
    content_type: String,
    body: Vec<u8>,
}

fn split_head_body(data: &[u8]) -> (&[u8], &[u8]) {
    if data.starts_with(b"\r\n") {
        return (&[], &data[2..]);
    }
    match data.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => (&data[..i + 2], &data[i + 4..]),
        None => (data, &[]),
    }
}

/// The boundary parameter of a Content-Type value (case of the value preserved).
fn boundary(content_type: &str) -> Option<String> {
    let lower = content_type.to_ascii_lowercase();
    let i = lower.find("boundary=")? + "boundary=".len();
    let rest = &content_type[i..];
    if let Some(q) = rest.strip_prefix('"') {
        Some(q[..q.find('"')?].to_string())
    } else {
        Some(rest.split(|c: char| c == ';' || c.is_whitespace()).next()?.to_string())
    }
}

/// The top-level Content-Type and the parts of a multipart message (one level deep).
fn mime_parts(data: &[u8]) -> (String, Vec<Part>) {
    let ct = header_value(data, "Content-Type").unwrap_or_default();
    let (_, body) = split_head_body(data);
    let Some(b) = boundary(&ct) else {
        return (ct, vec![]);
    };
    let text = String::from_utf8_lossy(body).into_owned();
    let delimiter = format!("--{b}");
    let mut parts = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in text.split("\r\n") {
        if line.trim_end() == delimiter || line.trim_end() == format!("{delimiter}--") {
            if let Some(lines) = current.take() {
                let raw = lines.join("\r\n");
                let part_ct = header_value(raw.as_bytes(), "Content-Type")
                    .unwrap_or_else(|| "text/plain".to_string())
                    .to_ascii_lowercase();
                let (_, part_body) = split_head_body(raw.as_bytes());
                parts.push(Part { content_type: part_ct, body: part_body.to_vec() });
            }
            if line.trim_end() != delimiter {
                break;
            }
            current = Some(Vec::new());
        } else if let Some(lines) = current.as_mut() {
            lines.push(line);
        }
    }
    (ct, parts)
}

/// The field groups of a message/delivery-status body: (lower-cased name, value) pairs,
/// continuation lines unfolded; groups are separated by blank lines.
fn dsn_groups(body: &[u8]) -> Vec<Vec<(String, String)>> {
    let text = String::from_utf8_lossy(body).replace("\r\n", "\n");
    let mut groups = Vec::new();
    for block in text.split("\n\n") {
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in block.lines() {
            if (line.starts_with(' ') || line.starts_with('\t')) && !fields.is_empty() {
                let last = fields.last_mut().unwrap();
                last.1.push(' ');
                last.1.push_str(line.trim());
            } else if let Some((n, v)) = line.split_once(':') {
                fields.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        if !fields.is_empty() {
            groups.push(fields);
        }
    }
    groups
}

fn field<'a>(group: &'a [(String, String)], name: &str) -> Option<&'a str> {
    group.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// "rfc822; <Addr@X>" -> "rfc822;addr@x"
fn normalise_recipient(v: &str) -> String {
    v.chars().filter(|c| !c.is_whitespace() && *c != '<' && *c != '>').collect::<String>().to_ascii_lowercase()
}

/// Checks that `msg` is a DSN to SENDER reporting `failed` (Action: failed) for `failed_rcpt`
/// and not for `not_failed`; returns the per-recipient fields of the failed recipient.
#[track_caller]
fn assert_dsn(msg: &Received, failed_rcpt: &str, not_failed: &str) -> Vec<(String, String)> {
    assert_eq!(msg.mail_from, "", "a DSN goes out from the null sender <>");
    assert_eq!(msg.rcpt_tos, [SENDER], "a DSN goes to the original envelope sender");
    let (ct, parts) = mime_parts(&msg.data);
    let ct_l = ct.to_ascii_lowercase().replace('"', "");
    assert!(
        ct_l.starts_with("multipart/report") && ct_l.contains("report-type=delivery-status"),
        "DSN Content-Type should be multipart/report; report-type=delivery-status, got {ct:?}\n{}",
        show(&msg.data)
    );
    let status_part = parts
        .iter()
        .find(|p| p.content_type.starts_with("message/delivery-status"))
        .unwrap_or_else(|| panic!("no message/delivery-status part in the DSN:\n{}", show(&msg.data)));
    let groups = dsn_groups(&status_part.body);
    let recipient_group = |addr: &str| {
        let want = format!("rfc822;{}", addr.to_ascii_lowercase());
        groups.iter().find(|g| field(g, "final-recipient").map(normalise_recipient).as_deref() == Some(want.as_str()))
    };
    let failed = recipient_group(failed_rcpt).unwrap_or_else(|| {
        panic!("the delivery-status part has no Final-Recipient: rfc822; {failed_rcpt}:\n{}", show(&status_part.body))
    });
    assert_eq!(
        field(failed, "action").map(|a| a.to_ascii_lowercase()),
        Some("failed".to_string()),
        "Action for {failed_rcpt}:\n{}",
        show(&status_part.body)
    );
    if let Some(g) = recipient_group(not_failed) {
        assert_ne!(
            field(g, "action").map(|a| a.to_ascii_lowercase()).as_deref(),
            Some("failed"),
            "{not_failed} was delivered and must not be reported as failed:\n{}",
            show(&status_part.body)
        );
    }
    failed.clone()
}

fn is_dsn(m: &Received) -> bool {
    m.mail_from.is_empty()
}

#[test]
fn rejected_recipient_is_bounced_and_the_other_delivered() {
    let pki = Pki::new();
    let up = Upstream::builder().tls(&pki).auth("relay", "pw").reject_rcpt(BAD).start();
    let sluice =
        Sluice::builder().listener(Listener::plain().allow(&["127.0.0.0/8"])).upstream(UpstreamCfg::of(&up)).start();

    let sent = message(SENDER, GOOD, "partially deliverable", "one of two recipients does not exist");
    let mut c = sluice.connect(0);
    c.ehlo();
    let reply = c.send_mail(SENDER, &[GOOD, BAD], &sent);
    queued_id(&reply);
    c.quit();

    let msgs = up.wait_for(DEADLINE, "the message for the good recipient and a DSN", |m| {
        m.iter().any(|m| m.mail_from == SENDER) && m.iter().any(is_dsn)
    });

    let delivered: Vec<&Received> = msgs.iter().filter(|m| m.mail_from == SENDER).collect();
    assert_eq!(delivered[0].rcpt_tos, [GOOD], "only the accepted recipient is in the delivered transaction");
    assert_bytes_eq(strip_received(&delivered[0].data), &sent, "content delivered to the good recipient");

    let dsn = msgs.iter().find(|m| is_dsn(m)).unwrap();
    let fields = assert_dsn(dsn, BAD, GOOD);
    let status = field(&fields, "status").unwrap_or_else(|| panic!("no Status: field for {BAD}: {fields:?}"));
    assert!(
        status.starts_with("5.1.1"),
        "Status for {BAD} should be 5.1.1 (from the upstream's 550 5.1.1), got {status:?}"
    );
    let diagnostic = field(&fields, "diagnostic-code").unwrap_or_default().to_ascii_lowercase();
    if !diagnostic.is_empty() {
        assert!(diagnostic.contains("550"), "Diagnostic-Code should carry the upstream's reply: {diagnostic:?}");
    }
}

#[test]
fn temporarily_failing_recipient_is_bounced_after_max_age() {
    let pki = Pki::new();
    let up = Upstream::builder().tls(&pki).auth("relay", "pw").tempfail_rcpt(BAD).start();
    let sluice = Sluice::builder()
        .listener(Listener::plain().allow(&["127.0.0.0/8"]))
        .upstream(UpstreamCfg::of(&up))
        .retry("1s", "1s", "3s")
        .start();

    let sent = message(SENDER, GOOD, "one recipient keeps failing temporarily", "451 until max_age");
    let mut c = sluice.connect(0);
    c.ehlo();
    queued_id(&c.send_mail(SENDER, &[GOOD, BAD], &sent));
    c.quit();

    let msgs = up.wait_for(DEADLINE, "a DSN once max_age has passed", |m| m.iter().any(is_dsn));
    let dsn = msgs.iter().find(|m| is_dsn(m)).unwrap();
    assert_dsn(dsn, BAD, GOOD);

    let to_good: Vec<&Received> = msgs.iter().filter(|m| m.mail_from == SENDER).collect();
    assert_eq!(
        to_good.len(),
        1,
        "the good recipient got the message exactly once: retries are for the failed recipient only"
    );
    assert_eq!(to_good[0].rcpt_tos, [GOOD]);
    assert_bytes_eq(strip_received(&to_good[0].data), &sent, "content delivered to the good recipient");
}
