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
        || match super::classify::generic(outcome) {
            Disposition::Permanent => Bounce,
            _ => Retry,
        },
        |v| v.action,
    )
}

// ---------------------------------------------------------------------------------------------------
// What each reply means and how an admin fixes it
// ---------------------------------------------------------------------------------------------------

/// What a Microsoft reply, Entra ID error or Graph status means, and how an admin fixes it. Used by
/// `sluice probe`, and by the scheduler's `ROUTE HELD` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Diagnosis {
    /// The code it is known by: `5.7.139`, `AADSTS7000215`, `Graph 403`.
    pub code: &'static str,
    /// What it means, in a sentence.
    pub meaning: &'static str,
    /// What to do. `<mailbox>` and `<app-id>` stand for the configured mailbox and client id; see
    /// [`Diagnosis::fix_for`].
    pub fix: &'static str,
}

impl Diagnosis {
    /// The fix with `<mailbox>` and `<app-id>` filled in where they are known.
    pub fn fix_for(&self, mailbox: Option<&str>, app_id: Option<&str>) -> String {
        let mut fix = self.fix.to_owned();
        if let Some(m) = mailbox {
            fix = fix.replace("<mailbox>", m);
        }
        if let Some(a) = app_id {
            fix = fix.replace("<app-id>", a);
        }
        fix
    }
}

/// How an explanation recognises what it explains.
#[derive(Debug)]
pub enum Key {
    /// A reply whose text contains this (case-insensitive).
    Text(&'static str),
    /// A reply with this reply code (if given) and an enhanced code class.subject.detail in a range.
    Enhanced(Option<u16>, u8, u16, u16, u16),
    /// Entra ID's `AADSTS<n>` in a token error.
    Aadsts(u32),
    /// A Graph HTTP status, and text its error must contain, if any.
    Graph(u16, Option<&'static str>),
}

const fn d(code: &'static str, meaning: &'static str, fix: &'static str) -> Diagnosis {
    Diagnosis { code, meaning, fix }
}

/// A 403 on the large-message path: sending works (Mail.Send), creating drafts does not.
const DRAFT_DENIED: &str =
    "the app may send as this mailbox but not create drafts in it, which messages over 3 MB need";
const DRAFT_FIX: &str = "give app <app-id> the Microsoft Graph application permission Mail.ReadWrite with admin consent \
(scoped like Mail.Send if you use RBAC for Applications); until then mail over 3 MB holds the route";

const SEND_AS_FIX: &str = "grant the right in Exchange Online PowerShell: `Add-RecipientPermission -Identity <sender> \
     -Trustee <mailbox> -AccessRights SendAs` (for an app-only token the trustee is the app's Exchange service \
     principal), or set `sender_rewrite = \"mailbox\"` in [upstream] so mail goes out as <mailbox> with the \
     original From kept in Reply-To";

/// The explanations, from the reference (`shared/reference/microsoft-365.md` §2-4) and Microsoft's
/// documentation of each code; first match wins, so text rows come before the codes they share.
pub static EXPLANATIONS: &[(Key, Diagnosis)] = &[
    // Texts that share a generic enhanced code (5.2.0, 5.7.3).
    (
        Key::Text("SubmissionQuotaExceeded"),
        d(
            "SubmissionQuotaExceeded",
            "the mailbox has sent to 10,000 recipients within 24 hours (a sliding window)",
            "nothing is lost: sluice defers the mailbox's mail until the window frees up (never a bounce). For more volume \
         spread mail over several mailboxes, or relay through an inbound connector (`kind = \"m365-connector\"`), \
         which has no per-mailbox quota",
        ),
    ),
    (
        Key::Text("QuotaExceededException"),
        d(
            "5.2.2 QuotaExceeded",
            "the sending mailbox is full (its Sent Items, where every SMTP AUTH message is saved)",
            "empty <mailbox>'s Sent Items or raise its quota (`Set-Mailbox -Identity <mailbox> -ProhibitSendQuota …`); \
         a connector (`m365-connector`) does not save to Sent Items",
        ),
    ),
    (
        Key::Text("OutboundSpamException"),
        d(
            "OutboundSpam",
            "Microsoft restricted the account for sending spam",
            "secure the account, then release it in the Microsoft Defender portal (Email & collaboration → Review → \
         Restricted entities); sluice holds the route until then",
        ),
    ),
    (
        Key::Text("sender thread limit exceeded"),
        d(
            "432 4.3.2",
            "more than 3 concurrent connections for the mailbox",
            "nothing to configure: sluice pauses the mailbox briefly and retries. Keep `connections` ≤ 3, and remember \
         other apps signing in as <mailbox> count too",
        ),
    ),
    (
        Key::Text("STARTTLS is required"),
        d(
            "5.7.3 STARTTLS required",
            "a command came before STARTTLS",
            "set `tls = \"starttls\"` in [upstream] (smtp.office365.com takes STARTTLS on 587 only)",
        ),
    ),
    (
        Key::Text("RecipLimit"),
        d(
            "5.5.3 RecipLimit",
            "more recipients in one message than the tenant allows (500 by default)",
            "nothing to configure: sluice splits the envelope (`max_recipients_per_message`, default 500)",
        ),
    ),
    // Replies by enhanced code.
    (
        Key::Enhanced(None, 5, 7, 139, 139),
        d(
            "5.7.139",
            "SMTP AUTH (authenticated client submission) is disabled for the mailbox or for the whole tenant",
            "in Exchange Online PowerShell (`Connect-ExchangeOnline`) enable it for the mailbox: `Set-CASMailbox -Identity \
         <mailbox> -SmtpClientAuthenticationDisabled $false`; or tenant-wide: `Set-TransportConfig \
         -SmtpClientAuthenticationDisabled $false` (a mailbox set to $true or $false overrides the tenant, $null \
         follows it; check with `Get-CASMailbox -Identity <mailbox> | Format-List SmtpClientAuthenticationDisabled`); \
         or send without SMTP AUTH: `kind = \"m365-graph\"` or `\"m365-connector\"`",
        ),
    ),
    (
        Key::Enhanced(Some(535), 5, 7, 3, 3),
        d(
            "535 5.7.3",
            "Exchange refused the credentials: a wrong password or an unusable token, or (OAuth) an app without the \
         SMTP.SendAsApp permission, without an Exchange service principal, or without FullAccess on the mailbox \
         (Exchange says the same for all of these)",
            "OAuth: in Entra ID give app <app-id> the application permission SMTP.SendAsApp of \"Office 365 Exchange \
         Online\" and grant admin consent; register it in Exchange: `New-ServicePrincipal -AppId <app-id> -ObjectId \
         <object id of the Enterprise application>`; let it use the mailbox: `Add-MailboxPermission -Identity <mailbox> \
         -User <service principal id> -AccessRights FullAccess`. The token's `roles` must list SMTP.SendAsApp and its \
         `aud` be https://outlook.office365.com. Basic (m365-basic): check the mailbox's password in password_file",
        ),
    ),
    (
        Key::Enhanced(None, 5, 7, 30, 30),
        d(
            "5.7.30",
            "basic authentication (a password) is retired for SMTP client submission in this tenant",
            "switch the upstream to OAuth: `kind = \"m365-oauth\"` (XOAUTH2 with an app registration; see \
         examples/m365-oauth.toml), or `m365-graph`, or an inbound connector (`m365-connector`)",
        ),
    ),
    (
        Key::Enhanced(None, 5, 7, 57, 57),
        d(
            "5.7.57",
            "mail was sent without authenticating first; smtp.office365.com only takes mail from authenticated clients",
            "configure authentication (`kind = \"m365-oauth\"` or `\"m365-basic\"` with its credentials); to relay \
         without a mailbox use the tenant's MX host with an inbound connector (`kind = \"m365-connector\"`)",
        ),
    ),
    (
        Key::Enhanced(Some(504), 5, 7, 4, 4),
        d(
            "504 5.7.4",
            "the authentication mechanism is not offered (Exchange offers LOGIN and XOAUTH2 only, and only after STARTTLS)",
            "use `tls = \"starttls\"` and `kind = \"m365-oauth\"` (XOAUTH2) or `\"m365-basic\"` (LOGIN)",
        ),
    ),
    (
        Key::Enhanced(None, 4, 7, 66, 66),
        d(
            "4.7.66",
            "the connection used TLS 1.0/1.1; smtp.office365.com requires TLS 1.2 or later",
            "sluice speaks TLS 1.2+ only, so something in between (a TLS-inspecting firewall or proxy) is downgrading: \
         exempt smtp.office365.com from inspection",
        ),
    ),
    (
        Key::Enhanced(None, 5, 7, 60, 60),
        d("5.7.60", "the authenticated mailbox has no SendAs right on the message's sender", SEND_AS_FIX),
    ),
    (
        Key::Enhanced(None, 5, 2, 252, 252),
        d("5.2.252 SendAsDenied", "the authenticated mailbox has no SendAs right on the message's sender", SEND_AS_FIX),
    ),
    (
        Key::Enhanced(None, 5, 7, 64, 64),
        d(
            "5.7.64 TenantAttribution",
            "no inbound connector recognised this relay (by its public IP or its TLS certificate)",
            "check the connector (`Get-InboundConnector | Format-List Name,Enabled,SenderIPAddresses,\
         TlsSenderCertificateName`): SenderIPAddresses must hold this relay's public IPv4 address, or \
         TlsSenderCertificateName a name in the certificate sluice presents (`tls_client_cert_file` with the full \
         chain); the MAIL FROM or certificate domain must be an accepted domain",
        ),
    ),
    (
        Key::Enhanced(None, 5, 7, 68, 68),
        d(
            "5.7.68 TenantInboundAttribution",
            "Direct Send is refused for the tenant (`Set-OrganizationConfig -RejectDirectSend $true`) and no connector \
         recognised this relay",
            "create an inbound connector for it: `New-InboundConnector -Name sluice -ConnectorType OnPremises \
         -SenderIPAddresses <public IP>` (or `-TlsSenderCertificateName` with a client certificate), or send with \
         SMTP AUTH (`m365-oauth`)",
        ),
    ),
    // Not in the reference's table: Microsoft's "traffic not accepted from this IP" for new tenants and
    // addresses of poor reputation.
    (
        Key::Enhanced(None, 5, 7, 708, 708),
        d(
            "5.7.708",
            "Exchange Online does not accept mail from this IP address (common for new tenants and for addresses \
         with a poor reputation)",
            "send through SMTP AUTH (`m365-oauth`) or Graph instead of a connector, or ask Microsoft support to \
         review the tenant's outbound restrictions",
        ),
    ),
    (
        Key::Enhanced(None, 5, 7, 606, 649),
        d(
            "5.7.606-649",
            "the sending IP address is banned by Microsoft",
            "ask for delisting (Microsoft's delist portal, https://sender.office.com) and find out why the address \
         was listed",
        ),
    ),
    (
        Key::Enhanced(None, 5, 1, 8, 8),
        d(
            "5.1.8",
            "the sender account is restricted (bad outbound sender)",
            "secure the account, then release it in the Microsoft Defender portal (Restricted entities)",
        ),
    ),
    (
        Key::Enhanced(Some(432), 4, 3, 2, 2),
        d(
            "432 4.3.2",
            "more than 3 concurrent connections for the mailbox",
            "nothing to configure: sluice pauses the mailbox briefly and retries. Keep `connections` ≤ 3, and remember \
         other apps signing in as <mailbox> count too",
        ),
    ),
    (
        Key::Enhanced(None, 4, 7, 500, 699),
        d(
            "4.7.500-699",
            "Exchange Online is throttling this sender (server busy)",
            "nothing to configure: sluice backs off and retries; if it lasts, lower `connections` and \
         `messages_per_minute`",
        ),
    ),
    (
        Key::Enhanced(None, 4, 7, 850, 899),
        d(
            "4.7.850-899",
            "Exchange Online is throttling this sender",
            "nothing to configure: sluice backs off and retries; if it lasts, lower `connections` and \
         `messages_per_minute`",
        ),
    ),
    (
        Key::Enhanced(Some(452), 4, 5, 3, 3),
        d(
            "452 4.5.3",
            "too many recipients in one transaction",
            "nothing to configure: sluice sends the rest in further transactions",
        ),
    ),
    (
        Key::Enhanced(None, 5, 1, 1, 1),
        d("5.1.1", "the recipient does not exist", "check the address; sluice bounces the message to its sender"),
    ),
    (
        Key::Enhanced(None, 5, 1, 10, 10),
        d("5.1.10", "the recipient does not exist", "check the address; sluice bounces the message to its sender"),
    ),
    (
        Key::Enhanced(None, 5, 7, 512, 512),
        d(
            "5.7.512",
            "the message's From header is not a valid RFC 5322 address",
            "fix the device's From setting (an address in angle brackets; an \"@\" in a display name quoted)",
        ),
    ),
    (
        Key::Enhanced(None, 5, 1, 20, 20),
        d("5.1.20", "several From addresses without a Sender header", "make the device send one From address"),
    ),
    // Entra ID (token endpoint).
    (
        Key::Aadsts(7000215),
        d(
            "AADSTS7000215",
            "invalid client secret: Entra ID does not know the secret sluice sent",
            "put the secret's Value (not its Secret ID) in client_secret_file / client_secret_env; if it is lost, \
         create a new one under App registrations → the app (<app-id>) → Certificates & secrets",
        ),
    ),
    (
        Key::Aadsts(7000222),
        d(
            "AADSTS7000222",
            "the client secret has expired",
            "create a new client secret under App registrations → the app (<app-id>) → Certificates & secrets, and \
         replace client_secret_file with its Value",
        ),
    ),
    (
        Key::Aadsts(700016),
        d(
            "AADSTS700016",
            "no application with this client id in the tenant",
            "check client_id (the app's \"Application (client) ID\" on its Overview page) and tenant: the app must be \
         registered, or consented to, in the tenant the token_url names",
        ),
    ),
    (
        Key::Aadsts(90002),
        d(
            "AADSTS90002",
            "the tenant was not found",
            "set `tenant` to the Directory (tenant) ID or a verified domain of the tenant (or fix token_url)",
        ),
    ),
    (
        Key::Aadsts(500011),
        d(
            "AADSTS500011",
            "the resource of the requested scope is not in the tenant (wrong scope, or the API was never consented)",
            "use scope https://outlook.office365.com/.default for SMTP (m365-oauth) and https://graph.microsoft.com/.default \
         for Graph, and grant admin consent to the app's API permissions",
        ),
    ),
    (
        Key::Aadsts(65001),
        d(
            "AADSTS65001",
            "admin consent was not granted to the app's permissions",
            "Entra ID → App registrations → the app (<app-id>) → API permissions → \"Grant admin consent\"",
        ),
    ),
    (
        Key::Aadsts(700027),
        d(
            "AADSTS700027",
            "the client assertion's certificate is not registered on the app, or its signature does not verify",
            "upload client_certificate_file's certificate to the app (<app-id>) under Certificates & secrets, and make \
         sure client_key_file is its key",
        ),
    ),
    (
        Key::Aadsts(700024),
        d("AADSTS700024", "the client assertion is outside its validity time", "check this machine's clock (NTP)"),
    ),
    (
        Key::Aadsts(1002012),
        d(
            "AADSTS1002012",
            "the scope is not valid for client credentials",
            "use one `<resource>/.default` scope (leave `scope` unset for the default)",
        ),
    ),
    // Graph.
    (
        Key::Graph(403, Some("SendAsDenied")),
        d("Graph 403 SendAsDenied", "the mailbox may not send as the message's sender", SEND_AS_FIX),
    ),
    (
        Key::Graph(401, None),
        d(
            "Graph 401",
            "Graph refused the token",
            "the token must be for https://graph.microsoft.com (scope https://graph.microsoft.com/.default) and carry \
         the application permission Mail.Send (`roles`); grant it with admin consent",
        ),
    ),
    // Before the generic 403: the large-message path (drafts, upload sessions) needs one more permission.
    (Key::Graph(403, Some("create draft")), d("Graph 403 on a draft", DRAFT_DENIED, DRAFT_FIX)),
    (Key::Graph(403, Some("createUploadSession")), d("Graph 403 on an upload session", DRAFT_DENIED, DRAFT_FIX)),
    (
        Key::Graph(403, None),
        d(
            "Graph 403",
            "the app may not send as this mailbox",
            "give app <app-id> the Microsoft Graph application permission Mail.Send with admin consent; if it is scoped \
         by RBAC for Applications (`New-ManagementRoleAssignment -App …`), include <mailbox> in the scope",
        ),
    ),
    (
        Key::Graph(404, Some("ErrorInvalidUser")),
        d(
            "Graph 404 ErrorInvalidUser",
            "the mailbox does not exist",
            "check `mailbox` in [upstream] (the user's UPN or primary SMTP address)",
        ),
    ),
    (
        Key::Graph(413, None),
        d(
            "Graph 413",
            "the request is over Graph's 4 MB limit",
            "sluice sends messages over 3 MB through a draft with their attachments uploaded separately; a message \
         that is large without attachments (a huge body, or attachments nested in another part) cannot go through \
         Graph: route such senders to m365-oauth",
        ),
    ),
    (
        Key::Graph(429, None),
        d(
            "Graph 429",
            "Graph is throttling the app for this mailbox",
            "nothing to configure: sluice waits for Retry-After; lower `connections` if it lasts",
        ),
    ),
];

impl Key {
    fn matches_reply(&self, reply: &Reply) -> bool {
        match *self {
            Key::Text(t) => reply.text().to_ascii_lowercase().contains(&t.to_ascii_lowercase()),
            Key::Enhanced(code, class, subject, lo, hi) => {
                code.is_none_or(|c| c == reply.code)
                    && reply
                        .enhanced
                        .is_some_and(|e| e.class == class && e.subject == subject && (lo..=hi).contains(&e.detail))
            }
            Key::Aadsts(_) | Key::Graph(..) => false,
        }
    }
}

/// The explanation of an SMTP reply.
pub fn explain_reply(reply: &Reply) -> Option<&'static Diagnosis> {
    EXPLANATIONS.iter().find(|(k, _)| k.matches_reply(reply)).map(|(_, d)| d)
}

/// The explanation of an Entra ID error text (one naming `AADSTS<n>`).
pub fn explain_token_error(text: &str) -> Option<&'static Diagnosis> {
    let start = text.find("AADSTS")? + "AADSTS".len();
    let digits: String = text[start..].chars().take_while(|c| c.is_ascii_digit()).collect();
    let n: u32 = digits.parse().ok()?;
    EXPLANATIONS.iter().find(|(k, _)| matches!(k, Key::Aadsts(a) if *a == n)).map(|(_, d)| d)
}

/// The explanation of a Graph answer.
pub fn explain_http(status: u16, reason: &str) -> Option<&'static Diagnosis> {
    EXPLANATIONS
        .iter()
        .find(|(k, _)| matches!(k, Key::Graph(s, t) if *s == status && t.is_none_or(|t| reason.contains(t))))
        .map(|(_, d)| d)
}

/// What an outcome means and how to fix it, when it is one of Microsoft's.
pub fn explain(outcome: &Outcome) -> Option<&'static Diagnosis> {
    match outcome {
        Outcome::Reply(reply) | Outcome::Transport(TransportError::Session(reply)) => explain_reply(reply),
        Outcome::Transport(TransportError::TokenRefused(text)) => explain_token_error(text),
        Outcome::Transport(_) => None,
        Outcome::Http { status, reason, .. } => explain_http(*status, reason),
    }
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
            assert_eq!(
                super::super::classify(crate::config::UpstreamKind::M365Oauth, &outcome),
                *disposition,
                "{code} {text}"
            );
            assert_eq!(action(&outcome), *act, "{code} {text}");
        }
        // Not Microsoft's: the generic rules.
        assert_eq!(action(&reply(550, "5.7.1 relaying denied")), Bounce);
        assert_eq!(action(&reply(451, "4.3.0 try later")), Retry);
    }

    #[test]
    fn a_refused_session_is_temporary_even_when_the_row_is_permanent() {
        let session = Outcome::Transport(TransportError::Session(Reply::with_code(550, 5, 7, 30, "Basic auth")));
        assert_eq!(super::super::classify(crate::config::UpstreamKind::M365Oauth, &session), Temporary);
        assert_eq!(action(&session), Hold);
    }

    #[test]
    fn every_configuration_reply_has_a_fix() {
        // Every reply the table holds the route for, and the token errors, must tell the admin what to do.
        let cases: &[(u16, &str, &str)] = &[
            (
                535,
                "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.",
                "Set-CASMailbox -Identity relay@contoso.com -SmtpClientAuthenticationDisabled $false",
            ),
            (535, "5.7.3 Authentication unsuccessful [HOST]", "New-ServicePrincipal -AppId app-1"),
            (550, "5.7.30 Basic authentication is not supported for Client Submission.", "m365-oauth"),
            (530, "5.7.57 Client not authenticated to send mail.", "m365-connector"),
            (550, "5.7.60 SMTP; Client does not have permissions to send as this sender", "Add-RecipientPermission"),
            (554, "5.2.252 SendAsDenied; a not allowed to send as b", "Add-RecipientPermission"),
            (550, "5.7.64 TenantAttribution; Relay Access Denied", "Get-InboundConnector"),
            (550, "5.7.68 TenantInboundAttribution; Direct Send not allowed", "New-InboundConnector"),
            (550, "5.7.708 Service unavailable. Access denied, traffic not accepted from this IP.", "m365-oauth"),
            (451, "4.7.500 Server busy. Please try again later from [127.0.0.1]. (S77719)", "backs off"),
            (432, "4.3.2 Concurrent connections limit exceeded.", "connections"),
            (554, "5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException", "defers"),
            (554, "5.2.2 mailbox full; STOREDRV.Submission.Exception:QuotaExceededException", "Sent Items"),
            (451, "5.7.3 STARTTLS is required to send mail", "starttls"),
        ];
        for (code, text, fix) in cases {
            let Outcome::Reply(r) = reply(*code, text) else { unreachable!() };
            let d = explain_reply(&r).unwrap_or_else(|| panic!("no explanation for {code} {text}"));
            let rendered = d.fix_for(Some("relay@contoso.com"), Some("app-1"));
            assert!(rendered.contains(fix), "{code} {text}: {rendered}");
        }
        // Every held-route row of the reply table has an explanation.
        for row in TABLE.iter().filter(|r| r.action == Hold) {
            assert!(
                EXPLANATIONS.iter().any(|(k, _)| match (k, row.enhanced, row.text) {
                    (Key::Text(t), _, Some(rt)) => t.eq_ignore_ascii_case(rt),
                    (Key::Enhanced(_, c, s, lo, hi), Some((rc, rs, rlo, rhi)), _) =>
                        (*c, *s) == (rc, rs) && *lo <= rlo && rhi <= *hi,
                    _ => false,
                }),
                "row {} has no explanation",
                row.name
            );
        }
        let token = |code: u32| {
            format!("token request refused (HTTP 401): invalid_client: AADSTS{code}: Something. Trace ID: x")
        };
        for (code, fix) in [
            (7000215, "Certificates & secrets"),
            (7000222, "new client secret"),
            (700016, "client_id"),
            (90002, "tenant"),
            (500011, "https://outlook.office365.com/.default"),
            (65001, "Grant admin consent"),
            (700027, "client_certificate_file"),
        ] {
            let outcome = Outcome::Transport(TransportError::TokenRefused(token(code)));
            let d = explain(&outcome).unwrap_or_else(|| panic!("no explanation for AADSTS{code}"));
            assert_eq!(d.code, format!("AADSTS{code}"));
            assert!(d.fix.contains(fix), "AADSTS{code}: {}", d.fix);
        }
        assert!(explain_token_error("AADSTS12345: unknown").is_none());
        assert_eq!(explain_http(403, "ErrorSendAsDenied: no").unwrap().code, "Graph 403 SendAsDenied");
        assert_eq!(explain_http(403, "ErrorAccessDenied: no").unwrap().code, "Graph 403");
        // A generic smarthost's replies are not Microsoft's to explain.
        let Outcome::Reply(r) = reply(550, "5.7.1 relaying denied") else { unreachable!() };
        assert!(explain_reply(&r).is_none());
    }
}
