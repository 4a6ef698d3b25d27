//! Delivery status notifications (RFC 3464): the bounce a sender gets when a recipient failed for good.
//!
//! A DSN is an ordinary message from the null sender `<>` to the original envelope sender, queued and
//! delivered like any other. Through an upstream that sends as a mailbox (`m365-oauth`, `m365-basic`,
//! `m365-graph`, `m365-hve`) Microsoft refuses the null sender and a `MAILER-DAEMON@` From (SendAsDenied):
//! there the From header is the mailbox ("Mail Delivery System") and the scheduler sends it with the
//! mailbox as envelope sender; the queued record keeps the null sender, so a DSN that fails is dropped. It carries the original headers only (`text/rfc822-headers`), not the body,
//! so bouncing a large scan does not send it back in full.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

/// One recipient that failed permanently.
#[derive(Debug, Clone)]
pub struct FailedRecipient {
    pub address: String,
    /// RFC 3463 status, e.g. "5.1.1".
    pub status: String,
    /// The upstream's reply, when an SMTP server gave the verdict (becomes `Diagnostic-Code: smtp; ...`).
    pub smtp_diagnostic: Option<String>,
    /// What happened, in words, for the human-readable part.
    pub explanation: String,
}

pub struct DsnInput<'a> {
    pub reporting_host: &'a str,
    /// The upstream that gave the verdict ("host:port"), if one did.
    pub remote_mta: Option<&'a str>,
    pub queue_id: &'a str,
    pub original_sender: &'a str,
    pub arrival: DateTime<Utc>,
    pub now: DateTime<Utc>,
    pub failed: &'a [FailedRecipient],
    /// The original message as queued; only its header section is quoted.
    pub original: &'a [u8],
    /// The mailbox to write as the From address, when the upstream sends as a mailbox (Microsoft refuses a
    /// `MAILER-DAEMON@` From there with SendAsDenied). `None`: `MAILER-DAEMON@{reporting_host}`.
    pub from_mailbox: Option<&'a str>,
}

/// Builds the DSN message (CRLF line endings, ready to spool).
pub fn build(input: &DsnInput<'_>) -> Vec<u8> {
    let boundary = format!("{}/{}", input.queue_id, input.reporting_host);
    let date = input.now.to_rfc2822();
    let mut out = String::with_capacity(2048);
    let from = match input.from_mailbox {
        Some(mailbox) => mailbox.to_owned(),
        None => format!("MAILER-DAEMON@{}", input.reporting_host),
    };
    let _ = write!(
        out,
        "From: Mail Delivery System <{from}>\r\n\
         To: <{to}>\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}.dsn@{host}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\
         \tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Description: Notification\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         This is the mail relay at {host}.\r\n\
         \r\n\
         Your message (queue id {id}) could not be delivered to the recipients\r\n\
         below. This is a permanent error; the relay will not try again.\r\n\
         \r\n",
        host = input.reporting_host,
        to = input.original_sender,
        id = input.queue_id,
    );
    for failed in input.failed {
        let _ = write!(out, "<{}>: {}\r\n", failed.address, one_line(&failed.explanation));
    }
    let _ = write!(
        out,
        "\r\n--{boundary}\r\n\
         Content-Description: Delivery report\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; {host}\r\n\
         X-Sluice-Queue-ID: {id}\r\n\
         Arrival-Date: {arrival}\r\n",
        host = input.reporting_host,
        id = input.queue_id,
        arrival = input.arrival.to_rfc2822(),
    );
    for failed in input.failed {
        let _ = write!(
            out,
            "\r\nFinal-Recipient: rfc822; {}\r\nAction: failed\r\nStatus: {}\r\n",
            failed.address, failed.status
        );
        if let Some(mta) = input.remote_mta {
            let host = mta.rsplit_once(':').map_or(mta, |(host, _)| host);
            let _ = write!(out, "Remote-MTA: dns; {host}\r\n");
        }
        if let Some(diagnostic) = &failed.smtp_diagnostic {
            let _ = write!(out, "Diagnostic-Code: smtp; {}\r\n", one_line(diagnostic));
        }
        let _ = write!(out, "Last-Attempt-Date: {date}\r\n");
    }
    let _ = write!(
        out,
        "\r\n--{boundary}\r\n\
         Content-Description: Undelivered Message Headers\r\n\
         Content-Type: text/rfc822-headers\r\n\
         \r\n"
    );
    let mut bytes = out.into_bytes();
    let headers = header_section(input.original);
    bytes.extend_from_slice(headers);
    if !headers.ends_with(b"\r\n") {
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    bytes
}

/// The status to report for a failed recipient: the enhanced code from the upstream's reply when it has
/// one, otherwise the generic code for the reply's class (RFC 3463).
pub fn status_from_reply(reply_text: &str) -> String {
    let mut parts = reply_text.splitn(3, ' ');
    let code = parts.next().unwrap_or("");
    if let Some(candidate) = parts.next()
        && smtp_wire::EnhancedCode::parse(candidate).is_some()
    {
        return candidate.to_owned();
    }
    match code.as_bytes().first() {
        Some(b'4') => "4.0.0".into(),
        _ => "5.0.0".into(),
    }
}

/// The header section of a message: everything before the first empty line.
fn header_section(message: &[u8]) -> &[u8] {
    let end = message.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 2).unwrap_or(message.len());
    &message[..end]
}

fn one_line(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsn_has_report_parts_and_headers_only() {
        let failed = [FailedRecipient {
            address: "nobody@example.com".into(),
            status: "5.1.1".into(),
            smtp_diagnostic: Some("550 5.1.1 User unknown".into()),
            explanation: "the upstream said: 550 5.1.1 User unknown".into(),
        }];
        let now = Utc::now();
        let dsn = build(&DsnInput {
            reporting_host: "relay.test",
            remote_mta: Some("smtp.test:587"),
            queue_id: "ABC",
            original_sender: "scanner@example.com",
            arrival: now,
            now,
            failed: &failed,
            original: b"Subject: scan\r\nFrom: scanner@example.com\r\n\r\nSECRET BODY\r\n",
            from_mailbox: None,
        });
        let text = String::from_utf8(dsn).unwrap();
        assert!(text.contains("Content-Type: multipart/report; report-type=delivery-status;"));
        assert!(text.contains("Content-Type: message/delivery-status\r\n"));
        assert!(text.contains("Final-Recipient: rfc822; nobody@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n"));
        assert!(text.contains("Remote-MTA: dns; smtp.test\r\n"));
        assert!(text.contains("Diagnostic-Code: smtp; 550 5.1.1 User unknown\r\n"));
        assert!(text.contains("Subject: scan\r\n"));
        assert!(!text.contains("SECRET BODY"));
        assert!(text.ends_with("--ABC/relay.test--\r\n"));
        assert!(!text.replace("\r\n", "").contains('\n'), "bare LF in DSN");
    }

    #[test]
    fn status_prefers_enhanced_code() {
        assert_eq!(status_from_reply("550 5.7.1 Nope"), "5.7.1");
        assert_eq!(status_from_reply("550 Nope"), "5.0.0");
        assert_eq!(status_from_reply("452 Full"), "4.0.0");
        assert_eq!(status_from_reply("connection refused"), "5.0.0");
    }
}
