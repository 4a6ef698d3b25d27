//! The Received header sluice prepends to every accepted message (RFC 5321 §4.4, RFC 3848 protocol names).

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use super::session::TlsInfo;

pub struct ReceivedInfo<'a> {
    pub helo: &'a str,
    pub client_ip: std::net::IpAddr,
    pub hostname: &'a str,
    pub esmtp: bool,
    pub tls: Option<&'a TlsInfo>,
    pub auth_user: Option<&'a str>,
    pub queue_id: &'a str,
    /// Named in a `for` clause only when there is exactly one (naming many would disclose Bcc recipients).
    pub single_recipient: Option<&'a str>,
    pub date: DateTime<Utc>,
}

/// Renders the header, folded, with CRLF line endings. Everything the client chose (its HELO name and
/// its user name) is escaped as comment text so it cannot break out of the header.
pub fn render(info: &ReceivedInfo<'_>) -> String {
    let protocol = match (info.esmtp, info.tls.is_some(), info.auth_user.is_some()) {
        (false, _, _) => "SMTP",
        (true, false, false) => "ESMTP",
        (true, true, false) => "ESMTPS",
        (true, false, true) => "ESMTPA",
        (true, true, true) => "ESMTPSA",
    };
    let mut header = String::with_capacity(256);
    let _ = write!(
        header,
        "Received: from {} ([{}])\r\n\tby {} (sluice) with {} id {}",
        comment_text(info.helo),
        info.client_ip,
        info.hostname,
        protocol,
        info.queue_id
    );
    if let Some(tls) = info.tls {
        let _ = write!(header, "\r\n\t(using {} with cipher {})", tls.version, tls.cipher);
    }
    if let Some(user) = info.auth_user {
        let _ = write!(header, "\r\n\t(authenticated as {})", comment_text(user));
    }
    if let Some(rcpt) = info.single_recipient {
        let _ = write!(header, "\r\n\tfor <{}>", comment_text(rcpt));
    }
    let _ = write!(header, ";\r\n\t{}\r\n", info.date.to_rfc2822());
    header
}

/// Makes client-chosen text safe inside a header comment: control characters (CR and LF included) are
/// replaced, and the comment delimiters and backslash are quoted (RFC 5322 §3.2.2).
fn comment_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '(' | ')' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info<'a>(user: Option<&'a str>, tls: Option<&'a TlsInfo>) -> ReceivedInfo<'a> {
        ReceivedInfo {
            helo: "printer.lan",
            client_ip: "192.0.2.10".parse().unwrap(),
            hostname: "relay.test",
            esmtp: true,
            tls,
            auth_user: user,
            queue_id: "ABC",
            single_recipient: Some("a@example.com"),
            date: DateTime::from_timestamp(0, 0).unwrap(),
        }
    }

    #[test]
    fn plain_esmtp() {
        let h = render(&info(None, None));
        assert_eq!(
            h,
            "Received: from printer.lan ([192.0.2.10])\r\n\tby relay.test (sluice) with ESMTP id ABC\r\n\
             \tfor <a@example.com>;\r\n\tThu, 1 Jan 1970 00:00:00 +0000\r\n"
        );
    }

    #[test]
    fn tls_and_auth_with_hostile_user_name() {
        let tls = TlsInfo { version: "TLSv1.3".into(), cipher: "TLS13_AES_256_GCM_SHA384".into() };
        let h = render(&info(Some("evil)\r\nBcc: x@y (\\"), Some(&tls)));
        assert!(h.contains("with ESMTPSA id ABC"));
        assert!(h.contains("(using TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384)"));
        assert!(h.contains("(authenticated as evil\\)??Bcc: x@y \\(\\\\)"), "{h}");
        // Every line but the first is a continuation: nothing escaped into a header of its own.
        assert!(h.trim_end().split("\r\n").skip(1).all(|l| l.starts_with('\t')));
    }
}
