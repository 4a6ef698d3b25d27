//! The one place that decides what an upstream outcome means for a recipient: delivered, try again later,
//! or give up. SMTP replies, transport errors and HTTP statuses all come through here, so retry, bounce and
//! logging follow a single rule set.

use smtp_wire::Reply;

use super::TransportError;
use crate::config::UpstreamKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Delivered,
    /// Keep the recipient queued and retry on the schedule.
    Temporary,
    /// Bounce the recipient now.
    Permanent,
}

/// What happened to one recipient in one attempt.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The upstream's SMTP reply that decided this recipient (to RCPT, or to the end of DATA).
    Reply(Reply),
    /// We did not get a verdict on the message: connection, TLS, authentication, timeout or protocol trouble.
    Transport(TransportError),
    /// An HTTP API's answer (status and a short reason: Graph's error code and message), for HTTP-based
    /// upstreams, with the server's `Retry-After` when it sent one.
    Http { status: u16, reason: String, retry_after: Option<std::time::Duration> },
}

impl Outcome {
    /// One line for logs, records and DSNs.
    pub fn describe(&self) -> String {
        match self {
            Outcome::Reply(reply) => reply.to_string(),
            Outcome::Transport(err) => err.to_string(),
            Outcome::Http { status, reason, .. } => format!("HTTP {status} {reason}"),
        }
    }

    /// The reply to quote as `Diagnostic-Code: smtp; ...` in a DSN, when the verdict came from an SMTP server.
    pub fn smtp_reply(&self) -> Option<&Reply> {
        match self {
            Outcome::Reply(reply) => Some(reply),
            _ => None,
        }
    }
}

/// The verdict on `outcome` from an upstream of `kind`.
pub fn classify(kind: UpstreamKind, outcome: &Outcome) -> Disposition {
    // Microsoft's replies first: their table says, e.g., that `554 5.2.0 …SubmissionQuotaExceeded` waits
    // for the quota window instead of bouncing. Some of its rows are temporary only because their action
    // (hold the route, split the envelope) comes with them, and actions run on the Microsoft kinds only:
    // from any other smarthost, a 5xx is permanent as RFC 5321 says.
    if kind.is_m365()
        && let Some(verdict) = super::microsoft::lookup(outcome)
    {
        return verdict.disposition;
    }
    generic(outcome)
}

/// The rules for any upstream, when no table of its own decides.
pub fn generic(outcome: &Outcome) -> Disposition {
    match outcome {
        Outcome::Reply(reply) => match reply.code {
            200..=299 => Disposition::Delivered,
            500..=599 => Disposition::Permanent,
            // 4xx, and anything unexpected (a 3xx where a final answer was due): no verdict, try again.
            _ => Disposition::Temporary,
        },
        // A failure to talk to the upstream says nothing about the message: it waits, and expires into a
        // bounce only after max_age. This includes TLS and AUTH failures, which an admin can fix.
        Outcome::Transport(_) => Disposition::Temporary,
        Outcome::Http { status, .. } => match status {
            200..=299 => Disposition::Delivered,
            // Throttling, timeouts, server trouble, and an expired or refused token.
            401 | 408 | 429 | 500..=599 => Disposition::Temporary,
            _ => Disposition::Permanent,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smtp_wire::EnhancedCode;

    fn reply(code: u16) -> Outcome {
        Outcome::Reply(Reply::new(code, Some(EnhancedCode::new((code / 100) as u8, 0, 0)), "x"))
    }

    #[test]
    fn smtp_reply_classes() {
        assert_eq!(classify(UpstreamKind::Smtp, &reply(250)), Disposition::Delivered);
        assert_eq!(classify(UpstreamKind::Smtp, &reply(251)), Disposition::Delivered);
        assert_eq!(classify(UpstreamKind::Smtp, &reply(421)), Disposition::Temporary);
        assert_eq!(classify(UpstreamKind::Smtp, &reply(451)), Disposition::Temporary);
        assert_eq!(classify(UpstreamKind::Smtp, &reply(354)), Disposition::Temporary);
        assert_eq!(classify(UpstreamKind::Smtp, &reply(550)), Disposition::Permanent);
        assert_eq!(classify(UpstreamKind::Smtp, &reply(554)), Disposition::Permanent);
    }

    #[test]
    fn transport_errors_are_temporary() {
        for err in [
            TransportError::Connect("refused".into()),
            TransportError::Tls("bad certificate".into()),
            TransportError::Timeout("DATA"),
            TransportError::Closed,
            TransportError::Session(Reply::new(535, None, "no")),
            TransportError::Protocol("garbage".into()),
        ] {
            assert_eq!(classify(UpstreamKind::Smtp, &Outcome::Transport(err)), Disposition::Temporary);
        }
    }

    #[test]
    fn http_statuses() {
        let http = |status| Outcome::Http { status, reason: String::new(), retry_after: None };
        assert_eq!(classify(UpstreamKind::Smtp, &http(202)), Disposition::Delivered);
        assert_eq!(classify(UpstreamKind::Smtp, &http(429)), Disposition::Temporary);
        assert_eq!(classify(UpstreamKind::Smtp, &http(503)), Disposition::Temporary);
        assert_eq!(classify(UpstreamKind::Smtp, &http(401)), Disposition::Temporary);
        assert_eq!(classify(UpstreamKind::Smtp, &http(400)), Disposition::Permanent);
        assert_eq!(classify(UpstreamKind::Smtp, &http(413)), Disposition::Permanent);
    }

    #[test]
    fn microsofts_table_speaks_only_for_microsoft() {
        let sender_rejected =
            Outcome::Reply(Reply::new(550, Some(EnhancedCode::new(5, 1, 8)), "Sender address rejected"));
        // From Exchange Online, 5.1.8 is a configuration matter: held, not bounced.
        assert_eq!(classify(UpstreamKind::M365Oauth, &sender_rejected), Disposition::Temporary);
        // From any other smarthost, a 550 is a 550.
        assert_eq!(classify(UpstreamKind::Smtp, &sender_rejected), Disposition::Permanent);
    }
}
