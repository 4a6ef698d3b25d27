//! Every SMTP reply the simulator gives, word for word, in one place.
//!
//! The texts come from `shared/reference/microsoft-365.md` (sections 4 and 5). Where the reference
//! is silent, the text is what Exchange Online (and Exchange Server, which shares the SMTP stack)
//! says as far as we know, marked "not in the reference" below. Keeping them together makes the
//! table tests and a review against the reference one read.
//!
//! Exchange Online ends error texts with `[HOST yyyy-mm-ddThh:mm:ss.fffZ 08DC…]` (reference §5):
//! the front end's name, the time and the session id. [`Ctx::err`] adds that suffix.

use std::time::SystemTime;

use chrono::{DateTime, Utc};
use smtp_wire::{EnhancedCode, Reply};

/// What every reply of one connection needs: the host, the session id and the time.
#[derive(Clone, Debug)]
pub struct Ctx {
    /// Front-end host name.
    pub host: String,
    /// 16 upper-case hex digits, like `08DE2A6028D26C22`.
    pub session_id: String,
}

fn utc(t: SystemTime) -> DateTime<Utc> {
    DateTime::<Utc>::from(t)
}

impl Ctx {
    /// An error reply with the `[HOST time session]` suffix.
    pub fn err(&self, now: SystemTime, code: u16, enh: (u8, u16, u16), text: &str) -> Reply {
        let stamp = utc(now).format("%Y-%m-%dT%H:%M:%S%.3fZ");
        Reply::enhanced(code, enh, format!("{text} [{} {stamp} {}]", self.host, self.session_id))
    }

    /// `220 HOST Microsoft ESMTP MAIL Service ready at Sun, 23 Nov 2025 11:12:20 +0000 [ID]`
    pub fn banner(&self, now: SystemTime) -> Reply {
        let date = utc(now).format("%a, %d %b %Y %H:%M:%S %z");
        Reply::new(
            220,
            None,
            format!("{} Microsoft ESMTP MAIL Service ready at {date} [{}]", self.host, self.session_id),
        )
    }

    /// The EHLO reply (reference §5). Before TLS STARTTLS is offered and no AUTH; after TLS,
    /// `AUTH LOGIN XOAUTH2` stands where STARTTLS was.
    pub fn ehlo(&self, client_ip: &str, tls: bool) -> Reply {
        let mut lines = vec![
            format!("{} Hello [{client_ip}]", self.host),
            // 150 MB: the organisation maximum, not the mailbox's MaxSendSize (reference §4, §5).
            "SIZE 157286400".to_owned(),
            "PIPELINING".to_owned(),
            "DSN".to_owned(),
            "ENHANCEDSTATUSCODES".to_owned(),
        ];
        lines.push(if tls { "AUTH LOGIN XOAUTH2".to_owned() } else { "STARTTLS".to_owned() });
        lines.extend(["8BITMIME", "BINARYMIME", "CHUNKING", "SMTPUTF8"].iter().map(|s| (*s).to_owned()));
        Reply::multiline(250, None, lines)
    }

    /// The MX endpoint's EHLO reply: "same extensions, no AUTH" (reference §5); STARTTLS is
    /// offered before TLS and nothing stands in its place after.
    pub fn ehlo_mx(&self, client_ip: &str, tls: bool) -> Reply {
        let mut lines = vec![
            format!("{} Hello [{client_ip}]", self.host),
            "SIZE 157286400".to_owned(),
            "PIPELINING".to_owned(),
            "DSN".to_owned(),
            "ENHANCEDSTATUSCODES".to_owned(),
        ];
        if !tls {
            lines.push("STARTTLS".to_owned());
        }
        lines.extend(["8BITMIME", "BINARYMIME", "CHUNKING", "SMTPUTF8"].iter().map(|s| (*s).to_owned()));
        Reply::multiline(250, None, lines)
    }

    /// The MX endpoint's end-of-data reply. Not in the reference: Exchange Online Protection's
    /// inbound answer, `250 2.6.0 <message-id> [InternalId=…, Hostname=…] N bytes in T, R
    /// KB/sec Queued mail for delivery` (the timing figures are made up, not measured).
    pub fn queued_mx(&self, message_id: &str, internal_id: u64, size: u64) -> Reply {
        Reply::enhanced(
            250,
            (2, 6, 0),
            format!(
                "{message_id} [InternalId={internal_id}, Hostname={}] {size} bytes in 0.010, {:.3} KB/sec Queued mail for delivery",
                mailbox_server(&self.host).to_ascii_uppercase(),
                size as f64 / 1024.0 / 0.010
            ),
        )
    }

    /// HELO: one line. Not in the reference; Exchange answers `250 HOST Hello [IP]`.
    pub fn helo(&self, client_ip: &str) -> Reply {
        Reply::new(250, None, format!("{} Hello [{client_ip}]", self.host))
    }

    /// `250 2.0.0 OK <message-id> [Hostname=….PROD.OUTLOOK.COM]` (reference §5). The hostname is
    /// the mailbox server's, in upper case.
    pub fn queued(&self, message_id: &str) -> Reply {
        Reply::enhanced(
            250,
            (2, 0, 0),
            format!("OK {message_id} [Hostname={}]", mailbox_server(&self.host).to_ascii_uppercase()),
        )
    }
}

/// The back-end (mailbox server) name that Exchange puts in `[Hostname=…]`: the front end's
/// first label with the `CA` (client access) role letters turned into `MB`, in the
/// `PROD.OUTLOOK.COM` namespace.
pub(crate) fn mailbox_server(front_end: &str) -> String {
    let first = front_end.split('.').next().unwrap_or(front_end);
    format!("{}.namprd00.prod.outlook.com", first.replace("CA", "MB"))
}

/// Replies without the error suffix.
pub mod ok {
    use smtp_wire::Reply;

    /// `220 2.0.0 SMTP server ready` (reference §5).
    pub fn starttls() -> Reply {
        Reply::enhanced(220, (2, 0, 0), "SMTP server ready")
    }
    /// `235 2.7.0 Authentication successful` (reference §2).
    pub fn auth() -> Reply {
        Reply::enhanced(235, (2, 7, 0), "Authentication successful")
    }
    /// `250 2.1.0 Sender OK` (reference §5).
    pub fn mail() -> Reply {
        Reply::enhanced(250, (2, 1, 0), "Sender OK")
    }
    /// `250 2.1.5 Recipient OK` (reference §5).
    pub fn rcpt() -> Reply {
        Reply::enhanced(250, (2, 1, 5), "Recipient OK")
    }
    /// `354 Start mail input; end with <CRLF>.<CRLF>` (reference §5).
    pub fn data() -> Reply {
        Reply::new(354, None, "Start mail input; end with <CRLF>.<CRLF>")
    }
    /// `221 2.0.0 Service closing transmission channel` (reference §5).
    pub fn quit() -> Reply {
        Reply::enhanced(221, (2, 0, 0), "Service closing transmission channel")
    }
    /// Not in the reference; Exchange's RSET answer.
    pub fn rset() -> Reply {
        Reply::enhanced(250, (2, 0, 0), "Resetting")
    }
    /// Not in the reference; Exchange's NOOP answer.
    pub fn noop() -> Reply {
        Reply::enhanced(250, (2, 0, 0), "OK")
    }
    /// Not in the reference; Exchange's VRFY answer (it never verifies).
    pub fn vrfy() -> Reply {
        Reply::enhanced(252, (2, 1, 5), "Cannot VRFY user")
    }
    /// `334 VXNlcm5hbWU6` ("Username:") for AUTH LOGIN.
    pub fn login_user() -> Reply {
        Reply::new(334, None, "VXNlcm5hbWU6")
    }
    /// `334 UGFzc3dvcmQ6` ("Password:") for AUTH LOGIN.
    pub fn login_password() -> Reply {
        Reply::new(334, None, "UGFzc3dvcmQ6")
    }
    /// `334 ` (empty challenge) for AUTH XOAUTH2 without initial response (reference §2).
    pub fn xoauth2_go_ahead() -> Reply {
        Reply::new(334, None, "")
    }
    /// `250 2.6.0 BDAT chunk received` (not in the reference) for a non-final BDAT chunk.
    pub fn bdat_chunk(size: u64) -> Reply {
        Reply::enhanced(250, (2, 0, 0), format!("{size} octets received"))
    }
}

/// Error texts (the suffix is added by [`Ctx::err`]). Each is `(code, enhanced, text)`.
pub mod text {
    /// An error reply's parts.
    pub type E = (u16, (u8, u16, u16), &'static str);

    /// Reference §4: MAIL before STARTTLS.
    pub const STARTTLS_REQUIRED: E = (451, (5, 7, 3), "STARTTLS is required to send mail");
    /// Reference §5: a command before the (post-TLS) EHLO.
    pub const SEND_HELLO_FIRST: E = (503, (5, 5, 2), "Send hello first");
    /// Reference §4: AUTH PLAIN (and anything but LOGIN/XOAUTH2, and any AUTH before TLS).
    pub const UNRECOGNIZED_AUTH: E = (504, (5, 7, 4), "Unrecognized authentication type");
    /// Reference §4: MAIL without AUTH.
    pub const NOT_AUTHENTICATED: E = (530, (5, 7, 57), "Client not authenticated to send mail.");
    /// Reference §2/§4: bad credentials or token. The reference writes `[HOST]`; the suffix is it.
    pub const AUTH_UNSUCCESSFUL: E = (535, (5, 7, 3), "Authentication unsuccessful");
    /// Reference §4, SMTP AUTH disabled for the tenant.
    pub const SMTP_AUTH_DISABLED_TENANT: E = (
        535,
        (5, 7, 139),
        "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information.",
    );
    /// Not in the reference word for word: the mailbox-level variant of 5.7.139, as Exchange
    /// Online words it when `Set-CASMailbox -SmtpClientAuthenticationDisabled $true` decides.
    pub const SMTP_AUTH_DISABLED_MAILBOX: E = (
        535,
        (5, 7, 139),
        "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox. Visit https://aka.ms/smtp_auth_disabled for more information.",
    );
    /// Reference §3/§4: basic authentication retired.
    pub const BASIC_AUTH_RETIRED: E = (550, (5, 7, 30), "Basic authentication is not supported for Client Submission.");
    /// Reference §4: more than 3 connections for one mailbox. The text after "exceeded" is
    /// Exchange Online's pointer to its documentation (not in the reference).
    pub const CONCURRENT_CONNECTIONS: E = (
        432,
        (4, 3, 2),
        "Concurrent connections limit exceeded. Visit https://aka.ms/concurrent_sending for more information.",
    );
    /// Reference §4: sending as an address the identity has no SendAs on.
    pub const SEND_AS_DENIED_5760: E =
        (550, (5, 7, 60), "SMTP; Client does not have permissions to send as this sender");
    /// Reference §4: the 24-hour recipient quota.
    pub const SUBMISSION_QUOTA: E = (554, (5, 2, 0), "STOREDRV.Submission.Exception:SubmissionQuotaExceededException");
    /// Reference §4: recipients over the per-message limit, at RCPT.
    pub const TOO_MANY_RECIPIENTS: E = (452, (4, 5, 3), "Too many recipients");
    /// Reference §4: recipients over the per-message limit, at the end of DATA.
    pub const RECIP_LIMIT: E = (550, (5, 5, 3), "RESOLVER.ADR.RecipLimit; too many recipients");
    /// Reference §4: multiple From addresses.
    pub const MULTIPLE_FROM: E = (550, (5, 1, 20), "Multiple From addresses are not allowed without Sender address");
    /// Reference §4 names the code and "RFC 5322 section 3.6.2 compliant"; the rest of the text
    /// is Exchange Online's.
    pub const BAD_FROM: E = (
        550,
        (5, 7, 512),
        "Access denied, message must be RFC 5322 section 3.6.2 compliant and include a valid From address",
    );
    /// Not in the reference: a message over MaxSendSize (SIZE= at MAIL, or the content itself).
    pub const TOO_BIG: E = (552, (5, 3, 4), "Message size exceeds fixed maximum message size");
    /// Not in the reference: Exchange's sequence errors.
    pub const NEED_MAIL: E = (503, (5, 5, 2), "Need mail command");
    /// Not in the reference.
    pub const NEED_RCPT: E = (503, (5, 5, 2), "Need rcpt command");
    /// Not in the reference.
    pub const SENDER_ALREADY: E = (503, (5, 5, 2), "Sender already specified");
    /// Not in the reference.
    pub const ALREADY_AUTHENTICATED: E = (503, (5, 5, 2), "Already authenticated");
    /// Not in the reference: unknown verbs, and STARTTLS once TLS is up (it is no longer offered).
    pub const UNRECOGNIZED: E = (500, (5, 3, 3), "Unrecognized command");
    /// Not in the reference.
    pub const BAD_BASE64: E = (501, (5, 5, 2), "Cannot Base64-decode Client responses");
    /// Not in the reference.
    pub const AUTH_CANCELLED: E = (501, (5, 0, 0), "Authentication cancelled");
    /// Not in the reference.
    pub const LINE_TOO_LONG: E = (500, (5, 5, 6), "Line too long");
    /// Not in the reference: a bad reverse-path.
    pub const BAD_SENDER: E = (501, (5, 1, 7), "Invalid address");
    /// Not in the reference: a bad forward-path.
    pub const BAD_RECIPIENT: E = (501, (5, 1, 3), "Invalid address");
    /// Not in the reference: BDAT and DATA mixed, or DATA after BDAT.
    pub const BAD_SEQUENCE: E = (503, (5, 5, 1), "Bad sequence of commands");
    /// Reference §1b/§4: relay through the MX endpoint by a server no connector matches (IP or
    /// certificate), or failing the Nov 2023 accepted-domain rule.
    pub const TENANT_ATTRIBUTION: E = (550, (5, 7, 64), "TenantAttribution; Relay Access Denied");
    /// Anonymous relay to a domain outside the tenant (the usual Exchange Online text; the
    /// reference only says direct send reaches internal recipients only).
    pub const RELAY_NON_ACCEPTED: E = (550, (5, 7, 54), "SMTP; Unable to relay recipient in non-accepted domain");
    /// Reference §1c/§4: RejectDirectSend.
    pub const DIRECT_SEND_REJECTED: E = (
        550,
        (5, 7, 68),
        "TenantInboundAttribution; Direct Send not allowed for this organization from unauthorized sources",
    );
    /// Not in the reference: an unknown recipient in an accepted domain, refused at RCPT by
    /// Directory-Based Edge Blocking (on by default), as Exchange Online Protection words it.
    pub const DBEB_REJECTED: E = (550, (5, 4, 1), "Recipient address rejected: Access denied. AS(201806281)");
    /// Not in the reference: an idle session closed (Exchange's text).
    pub const IDLE_TIMEOUT: E = (451, (4, 7, 0), "Timeout waiting for client input");
    /// Not in the reference: unknown MAIL/RCPT parameters.
    pub const BAD_PARAMETER: E = (501, (5, 5, 4), "Invalid arguments");
}

/// `451 4.7.500 Server busy. Please try again later from [IP]. (S77719)` (reference §4). Built
/// by hand because the IP is in the middle.
pub fn server_busy(ctx: &Ctx, now: SystemTime, ip: &str) -> Reply {
    ctx.err(now, 451, (4, 7, 500), &format!("Server busy. Please try again later from [{ip}]. (S77719)"))
}

/// `554 5.2.252 SendAsDenied; …` (reference §4; the rest of the text is the shape Exchange Online
/// gives: who may not send as whom, then the store driver exception).
pub fn send_as_denied_52252(ctx: &Ctx, now: SystemTime, who: &str, sender: &str) -> Reply {
    ctx.err(
        now,
        554,
        (5, 2, 252),
        &format!(
            "SendAsDenied; {who} not allowed to send as {sender}; STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied; Failed to process message due to a permanent exception with message Cannot submit message."
        ),
    )
}

/// Convenience: an [`text::E`] through [`Ctx::err`].
pub fn e(ctx: &Ctx, now: SystemTime, e: text::E) -> Reply {
    ctx.err(now, e.0, e.1, e.2)
}

/// A reply scripted by fault injection: the code and the raw text (which may start with an
/// enhanced code); no suffix is added, the script says exactly what is sent.
pub fn scripted(code: u16, text: &str) -> Reply {
    let (enh, rest) = match text.split_once(' ') {
        Some((first, rest)) => match EnhancedCode::parse(first) {
            Some(e) => (Some(e), rest),
            None => (None, text),
        },
        None => match EnhancedCode::parse(text) {
            Some(e) => (Some(e), ""),
            None => (None, text),
        },
    };
    Reply::new(code, enh, rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn ctx() -> Ctx {
        Ctx { host: "SY5P282CA0097.outlook.office365.com".into(), session_id: "08DE2A6028D26C22".into() }
    }

    #[test]
    fn banner_has_reference_shape() {
        let t = UNIX_EPOCH + Duration::from_secs(1_763_896_340);
        let b = String::from_utf8(ctx().banner(t).to_bytes()).unwrap();
        assert_eq!(
            b,
            "220 SY5P282CA0097.outlook.office365.com Microsoft ESMTP MAIL Service ready at Sun, 23 Nov 2025 11:12:20 +0000 [08DE2A6028D26C22]\r\n"
        );
    }

    #[test]
    fn errors_end_with_host_time_session() {
        let t = UNIX_EPOCH + Duration::from_millis(1_763_896_340_123);
        let r = String::from_utf8(e(&ctx(), t, text::AUTH_UNSUCCESSFUL).to_bytes()).unwrap();
        assert_eq!(
            r,
            "535 5.7.3 Authentication unsuccessful [SY5P282CA0097.outlook.office365.com 2025-11-23T11:12:20.123Z 08DE2A6028D26C22]\r\n"
        );
    }

    #[test]
    fn scripted_keeps_text() {
        let r = scripted(451, "4.7.500 Server busy");
        assert_eq!(r.to_bytes(), b"451 4.7.500 Server busy\r\n");
        assert_eq!(scripted(421, "bye").to_bytes(), b"421 bye\r\n");
    }
}
