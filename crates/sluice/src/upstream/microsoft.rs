//! Microsoft 365's replies and what to do about each: the reply table of the reference
//! (`shared/reference/microsoft-365.md` §4), in one place.
//!
//! Each [`Row`] matches a reply by its code, enhanced code (or a range of them) and, where the code alone
//! is ambiguous, a text pattern; it gives the [`Disposition`] (which [`super::classify`] returns for it,
//! so the classifier stays the one place deciding delivered / temporary / permanent) and an [`Action`]
//! (what the scheduler does besides: pause the mailbox, split, hold the route…). A reply no row matches
//! gets the generic SMTP rules.
//!
//! Rows are matched in order; the first match wins. The table is tested row by row against exosim
//! (`tests/m365_reply_table.rs`), with the exact replies of the reference injected as faults.

use std::time::Duration;

use smtp_wire::Reply;

use super::{Disposition, Outcome, TransportError};

/// What the scheduler does, besides recording the disposition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Retry on the retry schedule (exponential backoff), or honour the server's `Retry-After`.
    Retry,
    /// Too many connections for the mailbox: pause it briefly, then retry.
    BackOffMailbox,
    /// The 24 h recipient quota is used up: defer the mailbox's mail for the window, never bounce it.
    DeferWindow,
    /// Too many recipients in one transaction: send the rest in smaller batches.
    Split,
    /// Bounce that message or recipient (a DSN).
    Bounce,
    /// Configuration trouble (credentials, tenant switches, connector): hold the route's mail, queued and
    /// unbounced, with a loud error, until `hold_recheck` or a release.
    Hold,
}

/// How long a mailbox that hit the concurrent-connections limit is left alone.
pub const MAILBOX_BACKOFF: Duration = Duration::from_secs(15);
/// How long a mailbox over its 24 h recipient quota is deferred before the next try (the window slides,
/// so an hour frees some of it; Microsoft does not say when).
pub const QUOTA_DEFERRAL: Duration = Duration::from_secs(3600);

/// A reply pattern.
#[derive(Debug)]
pub struct Row {
    /// For logs and tests.
    pub name: &'static str,
    /// Reply code, if the row needs one.
    pub code: Option<u16>,
    /// Enhanced code class.subject and the detail range.
    pub enhanced: Option<(u8, u16, u16, u16)>,
    /// Case-insensitive text that must appear (after the enhanced code).
    pub text: Option<&'static str>,
    pub disposition: Disposition,
    pub action: Action,
}

const fn row(
    name: &'static str,
    code: Option<u16>,
    enhanced: Option<(u8, u16, u16, u16)>,
    text: Option<&'static str>,
    disposition: Disposition,
    action: Action,
) -> Row {
    Row { name, code, enhanced, text, disposition, action }
}

use Action::*;
use Disposition::{Permanent, Temporary};

/// The reference's table, most specific rows first.
pub static TABLE: &[Row] = &[
    // Throttling and limits: wait, never bounce.
    row("concurrent connections", Some(432), Some((4, 3, 2, 2)), None, Temporary, BackOffMailbox),
    row("sender thread limit", None, None, Some("sender thread limit exceeded"), Temporary, BackOffMailbox),
    row("submission quota", None, None, Some("SubmissionQuotaExceeded"), Temporary, DeferWindow),
    row("too many recipients (RCPT)", Some(452), Some((4, 5, 3, 3)), None, Temporary, Split),
    row("recipient limit (RecipLimit)", None, None, Some("RecipLimit"), Temporary, Split),
    row("too many recipients (5.5.3)", Some(550), Some((5, 5, 3, 3)), None, Temporary, Split),
    row("TLS 1.2 required", Some(421), Some((4, 7, 66, 66)), None, Temporary, Hold),
    row("throttling 4.7.500-699", None, Some((4, 7, 500, 699)), None, Temporary, Retry),
    row("throttling 4.7.850-899", None, Some((4, 7, 850, 899)), None, Temporary, Retry),
    // Configuration: hold the route and alert.
    // Exchange writes a class-5 enhanced code after a 4xx code here; a strict parser drops such a code, so
    // the text decides.
    row("STARTTLS required", Some(451), None, Some("STARTTLS is required"), Temporary, Hold),
    row("authentication mechanism", Some(504), Some((5, 7, 4, 4)), None, Temporary, Hold),
    row("authentication unsuccessful", Some(535), Some((5, 7, 3, 3)), None, Temporary, Hold),
    row("SMTP AUTH disabled", None, Some((5, 7, 139, 139)), None, Temporary, Hold),
    row("basic auth retired", None, Some((5, 7, 30, 30)), None, Temporary, Hold),
    row("client not authenticated", None, Some((5, 7, 57, 57)), None, Temporary, Hold),
    row("connector attribution", None, Some((5, 7, 64, 64)), None, Temporary, Hold),
    row("direct send refused", None, Some((5, 7, 68, 68)), None, Temporary, Hold),
    row("Sent Items full", None, None, Some("QuotaExceededException"), Temporary, Hold),
    row("account restricted (outbound spam)", None, None, Some("OutboundSpamException"), Temporary, Hold),
    row("account restricted (bad outbound sender)", None, Some((5, 1, 8, 8)), None, Temporary, Hold),
    row("banned sending IP", None, Some((5, 7, 606, 649)), None, Temporary, Hold),
    // This message or recipient only.
    row("SendAs denied (5.7.60)", None, Some((5, 7, 60, 60)), None, Permanent, Bounce),
    row("SendAs denied (5.2.252)", None, Some((5, 2, 252, 252)), None, Permanent, Bounce),
    row("unknown recipient", None, Some((5, 1, 1, 1)), None, Permanent, Bounce),
    row("unknown recipient (5.1.10)", None, Some((5, 1, 10, 10)), None, Permanent, Bounce),
    row("bad From header", None, Some((5, 7, 512, 512)), None, Permanent, Bounce),
    row("multiple From", None, Some((5, 1, 20, 20)), None, Permanent, Bounce),
];

impl Row {
    fn matches(&self, reply: &Reply) -> bool {
        if self.code.is_some_and(|c| c != reply.code) {
            return false;
        }
        if let Some((class, subject, lo, hi)) = self.enhanced {
            match reply.enhanced {
                Some(e) if e.class == class && e.subject == subject && (lo..=hi).contains(&e.detail) => {}
                _ => return false,
            }
        }
        if let Some(pattern) = self.text {
            let text = reply.text().to_ascii_lowercase();
            if !text.contains(&pattern.to_ascii_lowercase()) {
                return false;
            }
        }
        true
    }
}

/// The decision for one outcome, if Microsoft's table has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub row: &'static str,
    pub disposition: Disposition,
    pub action: Action,
}

fn reply_verdict(reply: &Reply) -> Option<Verdict> {
    TABLE.iter().find(|r| r.matches(reply)).map(|r| Verdict {
        row: r.name,
        disposition: r.disposition,
        action: r.action,
    })
}

/// Looks an outcome up: SMTP replies (to a command, or refusing the session), token errors, Graph statuses.
pub fn lookup(outcome: &Outcome) -> Option<Verdict> {
    match outcome {
        Outcome::Reply(reply) => reply_verdict(reply),
        // A refused session (greeting, STARTTLS, AUTH) never judges the message: always temporary, but its
        // action (hold on authentication trouble) still applies.
        Outcome::Transport(TransportError::Session(reply)) => {
            reply_verdict(reply).map(|v| Verdict { disposition: Temporary, ..v })
        }
        Outcome::Transport(TransportError::TokenRefused(_)) => {
            Some(Verdict { row: "token request refused (AADSTS)", disposition: Temporary, action: Hold })
        }
        Outcome::Transport(_) => None,
        Outcome::Http { status, reason, .. } => http_verdict(*status, reason),
    }
}

/// Graph's answers (reference §1e): `reason` starts with Graph's error code.
fn http_verdict(status: u16, reason: &str) -> Option<Verdict> {
    let v = |row, disposition, action| Some(Verdict { row, disposition, action });
    match status {
        429 | 503 => v("Graph throttling", Temporary, Retry),
        // Still 401 after a fresh token, or 403 without Mail.Send: the app's permissions, not the message.
        401 => v("Graph token refused", Temporary, Hold),
        403 if reason.contains("SendAsDenied") => v("Graph SendAs denied", Permanent, Bounce),
        403 => v("Graph access denied", Temporary, Hold),
        404 if reason.contains("ErrorInvalidUser") => v("Graph unknown mailbox", Temporary, Hold),
        // The large-message path: a draft or upload session that expired or vanished between steps, or a
        // chunk out of step. Our transfer failed, not the message: start again later.
        404 if reason.contains("ErrorItemNotFound") => v("Graph draft or upload session lost", Temporary, Retry),
        416 => v("Graph upload range refused", Temporary, Retry),
        _ => None,
    }
}

/// The action for an outcome (the table's, else [`Action::Retry`] for what is temporary and
/// [`Action::Bounce`] for what is permanent).
pub fn action(outcome: &Outcome) -> Action {
    lookup(outcome).map_or_else(
        || match super::classify(outcome) {
            Disposition::Permanent => Bounce,
            _ => Retry,
        },
        |v| v.action,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use smtp_wire::EnhancedCode;

    fn reply(code: u16, text: &str) -> Outcome {
        let (enhanced, rest) = match text.split_once(' ') {
            Some((e, rest)) if EnhancedCode::parse(e).is_some() => (EnhancedCode::parse(e), rest),
            _ => (None, text),
        };
        Outcome::Reply(Reply::new(code, enhanced, rest))
    }

    #[test]
    fn every_reference_reply_has_its_action() {
        let cases: &[(u16, &str, Disposition, Action)] = &[
            (
                432,
                "4.3.2 Concurrent connections limit exceeded. Visit https://aka.ms/concurrent_sending",
                Temporary,
                BackOffMailbox,
            ),
            (451, "4.7.500 Server busy. Please try again later from [127.0.0.1]. (S77719)", Temporary, Retry),
            (451, "4.7.650 The mail server has been temporarily rate limited", Temporary, Retry),
            (451, "4.7.860 throttled", Temporary, Retry),
            (452, "4.5.3 Too many recipients", Temporary, Split),
            (421, "4.7.66 TLS 1.0 and 1.1 are not supported.", Temporary, Hold),
            (451, "5.7.3 STARTTLS is required to send mail", Temporary, Hold),
            (504, "5.7.4 Unrecognized authentication type", Temporary, Hold),
            (535, "5.7.3 Authentication unsuccessful [HOST]", Temporary, Hold),
            (
                535,
                "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.",
                Temporary,
                Hold,
            ),
            (550, "5.7.30 Basic authentication is not supported for Client Submission.", Temporary, Hold),
            (530, "5.7.57 Client not authenticated to send mail.", Temporary, Hold),
            (550, "5.7.60 SMTP; Client does not have permissions to send as this sender", Permanent, Bounce),
            (554, "5.2.252 SendAsDenied; relay@contoso.com not allowed to send as ceo@contoso.com", Permanent, Bounce),
            (554, "5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException", Temporary, DeferWindow),
            (554, "5.2.2 mailbox full; STOREDRV.Submission.Exception:QuotaExceededException", Temporary, Hold),
            (554, "5.2.0 STOREDRV.Submission.Exception:OutboundSpamException", Temporary, Hold),
            (550, "5.1.8 Access denied, bad outbound sender", Temporary, Hold),
            (550, "5.7.606 Access denied, banned sending IP [127.0.0.1]", Temporary, Hold),
            (550, "5.7.64 TenantAttribution; Relay Access Denied", Temporary, Hold),
            (550, "5.7.68 TenantInboundAttribution; Direct Send not allowed for this organization", Temporary, Hold),
            (550, "5.5.3 RESOLVER.ADR.RecipLimit; too many recipients", Temporary, Split),
            (550, "5.1.1 User unknown", Permanent, Bounce),
            (
                550,
                "5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
                Permanent,
                Bounce,
            ),
            (
                550,
                "5.7.512 Message rejected as 'From' header is not RFC 5322 section 3.6.2 compliant",
                Permanent,
                Bounce,
            ),
            (550, "5.1.20 Multiple From addresses are not allowed without Sender address", Permanent, Bounce),
        ];
        for (code, text, disposition, act) in cases {
            let outcome = reply(*code, text);
            assert_eq!(super::super::classify(&outcome), *disposition, "{code} {text}");
            assert_eq!(action(&outcome), *act, "{code} {text}");
        }
        // Not Microsoft's: the generic rules.
        assert_eq!(action(&reply(550, "5.7.1 relaying denied")), Bounce);
        assert_eq!(action(&reply(451, "4.3.0 try later")), Retry);
    }

    #[test]
    fn a_refused_session_is_temporary_even_when_the_row_is_permanent() {
        let session = Outcome::Transport(TransportError::Session(Reply::with_code(550, 5, 7, 30, "Basic auth")));
        assert_eq!(super::super::classify(&session), Temporary);
        assert_eq!(action(&session), Hold);
    }
}
