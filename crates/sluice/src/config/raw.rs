//! The configuration file as written by the admin: serde types with documented defaults.
//!
//! Nothing here touches the file system beyond what serde sees; `resolve` (in `mod.rs`) turns this into
//! the runtime [`super::Config`] (networks parsed, certificates loaded, secrets read).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Name used in the greeting, EHLO, Received headers and DSNs. Default: the system host name.
    pub hostname: Option<String>,
    /// Where accepted messages are kept until delivered or bounced.
    pub spool_dir: PathBuf,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<RawListener>,
    #[serde(default, rename = "user")]
    pub users: Vec<RawUser>,
    /// Sender and recipient rules for clients identified by their network.
    #[serde(default, rename = "network")]
    pub networks: Vec<RawNetwork>,
    /// TLS client certificates that identify a device.
    #[serde(default, rename = "certificate")]
    pub certificates: Vec<RawCertificate>,
    #[serde(default)]
    pub limits: RawLimits,
    /// The single upstream of a simple setup; named "default" when `[upstreams.*]` are used too.
    pub upstream: Option<RawUpstream>,
    /// Named upstreams (`[upstreams.m365]`), same keys as `[upstream]`.
    #[serde(default)]
    pub upstreams: std::collections::BTreeMap<String, RawUpstream>,
    /// Which upstream and mailbox each message goes through (first match wins).
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub retry: RawRetry,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub spool: RawSpool,
}

/// The admin interface: loopback HTTP with a bearer token, serving the queue API that `sluice queue`
/// uses, the status page, Prometheus metrics and health checks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Turn the admin interface off (the `sluice queue` commands then cannot reach this relay).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Where it listens. Port 0 picks a free port; `sluice` commands find it through the spool directory.
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// Allow a listen address other than loopback (put TLS and a firewall in front of it).
    #[serde(default)]
    pub insecure_allow_remote: bool,
    /// File holding the bearer token (or set SLUICE_ADMIN_TOKEN). Without either, a token is generated at
    /// each start into `<spool_dir>/admin.token`, readable by the owner only.
    pub token_file: Option<PathBuf>,
    /// Serve /metrics without the token (for a Prometheus on the same host that has no token).
    #[serde(default)]
    pub public_metrics: bool,
}

impl Default for RawAdmin {
    fn default() -> RawAdmin {
        RawAdmin {
            enabled: true,
            listen: default_admin_listen(),
            insecure_allow_remote: false,
            token_file: None,
            public_metrics: false,
        }
    }
}

fn default_admin_listen() -> String {
    "127.0.0.1:0".into()
}

/// One `[[routes]]` entry. Conditions AND together, the values of one condition OR; a route without
/// conditions matches everything (the default route).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Envelope senders: "user@example.com", "example.com" (the domain), "*@scan.example.com",
    /// "*.example.com" (subdomains), "scan*@example.com", "<>".
    #[serde(default)]
    pub senders: Vec<String>,
    /// Authenticated (SMTP AUTH) user names.
    #[serde(default)]
    pub users: Vec<String>,
    /// Client networks (CIDR or single addresses).
    #[serde(default)]
    pub networks: Vec<String>,
    /// The upstream's name. Default: the default upstream.
    pub upstream: Option<String>,
    /// Pin one mailbox of the upstream's pool. Default: the least used mailbox with room.
    pub mailbox: Option<String>,
    /// "keep" or "rewrite" (alias "mailbox"). Default: the upstream's `sender_rewrite`.
    pub sender_rewrite: Option<SenderRewrite>,
}

/// `[spool]`: how the spool guards its filesystem.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSpool {
    /// Free space to keep on the spool's filesystem: below it new mail gets 452 4.3.1. A size
    /// (`"1GiB"`, `"500MB"`, a number of bytes; `0` turns the check off) or a share (`"5%"`).
    /// Default: 100 MiB.
    pub min_free_space: Option<SizeOrShare>,
}

/// A size written as a number of bytes or as text (`"1GiB"`, `"5%"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SizeOrShare {
    Bytes(u64),
    Text(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerTls {
    /// Plain SMTP; STARTTLS not offered.
    None,
    /// STARTTLS offered (and required before AUTH unless the insecure option is set).
    Starttls,
    /// TLS from the first byte (port 465, "SMTPS").
    Implicit,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub address: String,
    #[serde(default = "default_listener_tls")]
    pub tls: ListenerTls,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Clients whose address is in one of these may relay without authenticating.
    #[serde(default)]
    pub allowed_networks: Vec<String>,
    /// Offer AUTH PLAIN and LOGIN (only once TLS is active, unless the option below is set).
    #[serde(default = "yes")]
    pub auth: bool,
    /// Offer AUTH on a connection without TLS. Passwords then cross the network in clear text.
    #[serde(default)]
    pub insecure_allow_plaintext_auth: bool,
    #[serde(default = "default_max_message_size")]
    pub max_message_size: u64,
    #[serde(default = "default_max_recipients")]
    pub max_recipients: usize,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    #[serde(default = "default_data_timeout", with = "humantime_serde")]
    pub data_timeout: Duration,
    /// A command line, once begun, must be complete within this (a byte-at-a-time client is cut off).
    #[serde(default = "default_command_timeout_in", with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Message content must arrive at least this fast (bytes per second, averaged after the first 10 s
    /// of DATA). 0 turns the check off.
    #[serde(default = "default_min_data_rate")]
    pub min_data_rate: u64,
    /// Concurrent sessions from one client address.
    #[serde(default = "default_max_connections_per_client")]
    pub max_connections_per_client: usize,
    /// Refuse content with bare LF or bare CR line endings (550 5.5.2) instead of normalising them.
    #[serde(default)]
    pub reject_bare_line_endings: bool,
    /// Largest header section accepted (bytes).
    #[serde(default = "default_max_header_size")]
    pub max_header_size: u64,
    /// More Received headers than this means a mail loop (554 5.4.6).
    #[serde(default = "default_max_received_headers")]
    pub max_received_headers: usize,
    /// Hang up on a client that sends a command together with the ones after it before we offered
    /// PIPELINING (RFC 2920: EHLO ends a group), the way spam bots do.
    #[serde(default = "yes")]
    pub reject_unauth_pipelining: bool,
    /// Wait this long before the greeting; a client that talks first is a bot and is disconnected.
    #[serde(default, with = "humantime_serde")]
    pub greeting_delay: Duration,
    /// Also accept TLS 1.0 and 1.1 on this listener, for devices that know nothing newer. Uses OpenSSL
    /// (sluice must be built with the `legacy-tls` feature); other listeners stay TLS 1.2+.
    #[serde(default)]
    pub insecure_legacy_tls: bool,
    /// PEM file of the CA(s) whose client certificates identify devices (see [[certificate]]).
    pub client_ca_file: Option<PathBuf>,
    /// With `client_ca_file`: "optional" (default) or "required" (no certificate, no TLS session).
    #[serde(default)]
    pub client_certificate: ClientCertificate,
    /// What a client must have to relay: any one of "network", "auth", "certificate" by default, or,
    /// when listed here, all of those listed.
    #[serde(default)]
    pub require: Vec<Credential>,
    /// Expect a PROXY protocol (v1 or v2) header first, from the load balancers in `proxy_trusted_networks`.
    #[serde(default)]
    pub proxy_protocol: bool,
    #[serde(default)]
    pub proxy_trusted_networks: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClientCertificate {
    #[default]
    Optional,
    Required,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Credential {
    Network,
    Auth,
    Certificate,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    pub address: String,
    /// Name in logs. Default: the network.
    pub name: Option<String>,
    /// Envelope senders this identity may use: "user@example.com", "@example.com" or "example.com"
    /// (the whole domain), "*.example.com" (subdomains), "scan*@example.com", "<>" (null sender).
    /// Empty: any.
    #[serde(default)]
    pub allowed_senders: Vec<String>,
    /// Recipient domains this identity may send to ("example.com", "*.example.com"). Empty: any.
    #[serde(default)]
    pub allowed_recipient_domains: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    /// Matched against the certificate's subject CN and DNS/email SAN names; "*.example.lan" allowed.
    pub name: String,
    /// The identity the certificate maps to (logs, Received header).
    pub identity: String,
    /// Envelope senders this identity may use: "user@example.com", "@example.com" or "example.com"
    /// (the whole domain), "*.example.com" (subdomains), "scan*@example.com", "<>" (null sender).
    /// Empty: any.
    #[serde(default)]
    pub allowed_senders: Vec<String>,
    /// Recipient domains this identity may send to ("example.com", "*.example.com"). Empty: any.
    #[serde(default)]
    pub allowed_recipient_domains: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Failed AUTH attempts from one client address within `auth_failure_window` before it is banned.
    #[serde(default = "default_auth_failures_per_client")]
    pub auth_failures_per_client: u32,
    /// Failed AUTH attempts for one user name (from anywhere) before that name is locked.
    #[serde(default = "default_auth_failures_per_user")]
    pub auth_failures_per_user: u32,
    #[serde(default = "default_auth_failure_window", with = "humantime_serde")]
    pub auth_failure_window: Duration,
    #[serde(default = "default_auth_ban_time", with = "humantime_serde")]
    pub auth_ban_time: Duration,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            auth_failures_per_client: default_auth_failures_per_client(),
            auth_failures_per_user: default_auth_failures_per_user(),
            auth_failure_window: default_auth_failure_window(),
            auth_ban_time: default_auth_ban_time(),
        }
    }
}

fn default_command_timeout_in() -> Duration {
    Duration::from_secs(60)
}
/// Far below any real device (even a 9600-baud line does 960 B/s) and far above a byte-at-a-time attack.
fn default_min_data_rate() -> u64 {
    100
}
/// Postfix's smtpd_client_connection_count_limit.
fn default_max_connections_per_client() -> usize {
    50
}
/// Postfix's header_size_limit.
fn default_max_header_size() -> u64 {
    102_400
}
/// Postfix's hopcount_limit.
fn default_max_received_headers() -> usize {
    50
}
fn default_auth_failures_per_client() -> u32 {
    5
}
fn default_auth_failures_per_user() -> u32 {
    10
}
fn default_auth_failure_window() -> Duration {
    Duration::from_secs(600)
}
fn default_auth_ban_time() -> Duration {
    Duration::from_secs(900)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUser {
    pub name: String,
    /// An argon2 PHC string, as printed by `sluice passwd`.
    pub password_hash: String,
    /// Envelope senders this identity may use: "user@example.com", "@example.com" or "example.com"
    /// (the whole domain), "*.example.com" (subdomains), "scan*@example.com", "<>" (null sender).
    /// Empty: any.
    #[serde(default)]
    pub allowed_senders: Vec<String>,
    /// Recipient domains this identity may send to ("example.com", "*.example.com"). Empty: any.
    #[serde(default)]
    pub allowed_recipient_domains: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamTls {
    /// STARTTLS is required; a server that does not offer it gets no mail.
    Starttls,
    /// TLS from the first byte (port 465).
    Implicit,
    /// No TLS at all (a local sink or a trusted LAN smarthost).
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamKind {
    /// Any SMTP smarthost.
    #[default]
    Smtp,
    /// Microsoft 365 SMTP AUTH client submission (smtp.office365.com:587) with XOAUTH2 and app-only
    /// tokens from the client credentials flow.
    M365Oauth,
    /// Microsoft 365 SMTP AUTH client submission with the mailbox's password (basic authentication,
    /// which Microsoft is retiring).
    M365Basic,
    /// Microsoft Graph `sendMail` with the MIME message, app-only token.
    M365Graph,
    /// Relay through an inbound connector to the tenant's MX host (port 25), authorised by a TLS client
    /// certificate or by the relay's source IP address.
    M365Connector,
    /// Direct send (reference §1c): the tenant's MX host on port 25, STARTTLS, no authentication; only to
    /// the tenant's own recipients.
    M365DirectSend,
    /// High Volume Email (reference §1d): smtp-hve.office365.com:587, STARTTLS, with the HVE account's
    /// password (basic) or XOAUTH2 app tokens; meant for internal recipients.
    M365Hve,
}

impl UpstreamKind {
    /// One of the Microsoft 365 kinds, where the Microsoft reply table's actions (hold, pause, split) and
    /// the per-mailbox shaping apply.
    pub fn is_m365(self) -> bool {
        !matches!(self, UpstreamKind::Smtp)
    }

    /// Signs in as a mailbox (or the HVE account) and sends as it: Microsoft then refuses a sender the
    /// mailbox may not send as, and limits the rates per mailbox.
    pub fn sends_as_mailbox(self) -> bool {
        matches!(
            self,
            UpstreamKind::M365Oauth | UpstreamKind::M365Basic | UpstreamKind::M365Graph | UpstreamKind::M365Hve
        )
    }

    /// `sender_rewrite = "mailbox"` applies: the kinds that send as a mailbox, but HVE, whose account
    /// is a mail user with no mailbox to rewrite to.
    pub fn rewrites_sender(self) -> bool {
        self.sends_as_mailbox() && self != UpstreamKind::M365Hve
    }

    pub fn name(self) -> &'static str {
        match self {
            UpstreamKind::Smtp => "smtp",
            UpstreamKind::M365Oauth => "m365-oauth",
            UpstreamKind::M365Basic => "m365-basic",
            UpstreamKind::M365Graph => "m365-graph",
            UpstreamKind::M365Connector => "m365-connector",
            UpstreamKind::M365DirectSend => "m365-direct-send",
            UpstreamKind::M365Hve => "m365-hve",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OAuthFlow {
    /// App-only tokens (client credentials with a secret or a certificate).
    #[default]
    App,
    /// Delegated tokens of a signed-in user (device code flow once, then the refresh token grant).
    Delegated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SenderRewrite {
    #[default]
    Keep,
    /// Rewrite envelope sender and From to the mailbox (`"rewrite"` is accepted as another name).
    #[serde(alias = "rewrite")]
    Mailbox,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    #[serde(default)]
    pub kind: UpstreamKind,
    /// Required for `smtp` and `m365-connector` (the tenant's MX host); `smtp.office365.com` for
    /// `m365-oauth` and `m365-basic`; unused by `m365-graph`.
    pub host: Option<String>,
    /// Default: 587, or 25 for `m365-connector`.
    pub port: Option<u16>,
    #[serde(default = "default_upstream_tls")]
    pub tls: UpstreamTls,
    /// Extra trust anchors (PEM) besides the system store, for a private CA.
    pub ca_file: Option<PathBuf>,
    /// Name to verify the server certificate against, when `host` is an address. Default: `host`.
    pub tls_server_name: Option<String>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    /// Name sent in EHLO. Default: `hostname`.
    pub helo_name: Option<String>,
    /// Parallel connections to the upstream.
    #[serde(default = "default_upstream_connections")]
    pub connections: usize,
    /// Messages sent over one connection before it is closed and a fresh one opened.
    #[serde(default = "default_messages_per_connection")]
    pub max_messages_per_connection: usize,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(default = "default_command_timeout", with = "humantime_serde")]
    pub command_timeout: Duration,
    /// How long an idle upstream connection is kept open for the next message.
    #[serde(default = "default_upstream_idle", with = "humantime_serde")]
    pub idle_timeout: Duration,

    // --- Microsoft 365 kinds ---
    /// The mailbox sluice sends as (`m365-oauth`, `m365-basic`, `m365-graph`): the XOAUTH2 user, the
    /// basic-auth user name, the Graph user.
    pub mailbox: Option<String>,
    /// A pool of mailboxes (`m365-oauth`, `m365-graph`), each with its own rates, connection limit and
    /// pause; instead of `mailbox`.
    #[serde(default)]
    pub mailboxes: Vec<String>,
    /// Tenant id (GUID) or a verified domain; builds the default `token_url`.
    pub tenant: Option<String>,
    /// Application (client) id of the app registration.
    pub client_id: Option<String>,
    /// The client secret, from a file or the environment.
    pub client_secret_file: Option<PathBuf>,
    pub client_secret_env: Option<String>,
    /// Certificate credential instead of a secret: PEM certificate registered on the app, and its RSA
    /// private key (PKCS#8 PEM). A signed client assertion (RS256) is sent instead of a secret.
    pub client_certificate_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    /// Default: `https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token`.
    pub token_url: Option<String>,
    /// `"app"` (client credentials, the default) or `"delegated"`: a user signed in once with
    /// `sluice login` (device code flow); its refresh token is kept in `refresh_token_file`.
    #[serde(default)]
    pub oauth_flow: OAuthFlow,
    /// `oauth_flow = "delegated"`: where the refresh token is kept (mode 0600, rewritten on each use).
    pub refresh_token_file: Option<PathBuf>,
    /// Default: `https://outlook.office365.com/.default` (SMTP), `https://graph.microsoft.com/.default` (Graph).
    pub scope: Option<String>,
    /// Default: `https://graph.microsoft.com`.
    pub graph_url: Option<String>,
    /// Graph: keep a copy in the mailbox's Sent Items.
    #[serde(default = "yes")]
    pub save_to_sent_items: bool,
    /// `m365-connector`: TLS client certificate (PEM, the full chain: leaf first, then intermediates)
    /// and its key, for a certificate-authorised inbound connector. Absent: IP-authorised connector.
    pub tls_client_cert_file: Option<PathBuf>,
    pub tls_client_key_file: Option<PathBuf>,
    /// When the envelope sender is not the mailbox (`m365-oauth`, `m365-basic`, `m365-graph`): "keep" it
    /// (the mailbox has SendAs), or rewrite envelope sender and From to the "mailbox", keeping the
    /// original in Reply-To.
    #[serde(default)]
    pub sender_rewrite: SenderRewrite,
    /// A held route (configuration trouble: authentication refused, SMTP AUTH disabled, …) is tried
    /// again after this long, or at once by `release_hold`.
    #[serde(default = "default_hold_recheck", with = "humantime_serde")]
    pub hold_recheck: Duration,
    /// Shaping per mailbox (Microsoft 365 kinds; defaults from Exchange Online's limits).
    pub max_connections_per_mailbox: Option<usize>,
    /// Messages a minute per mailbox; 0 = no limit. Default 30 (none for `m365-connector`).
    pub messages_per_minute: Option<u32>,
    /// Recipients in a sliding 24 hours per mailbox; 0 = no limit. Default 10,000 (none for `m365-connector`).
    pub recipients_per_day: Option<u32>,
    /// Larger envelopes are sent in several transactions. Default 500 (Microsoft kinds), unlimited for `smtp`.
    pub max_recipients_per_message: Option<usize>,
}

fn default_hold_recheck() -> Duration {
    Duration::from_secs(300)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    #[serde(default = "default_initial_interval", with = "humantime_serde")]
    pub initial_interval: Duration,
    #[serde(default = "default_max_interval", with = "humantime_serde")]
    pub max_interval: Duration,
    #[serde(default = "default_max_age", with = "humantime_serde")]
    pub max_age: Duration,
}

impl Default for RawRetry {
    fn default() -> Self {
        RawRetry {
            initial_interval: default_initial_interval(),
            max_interval: default_max_interval(),
            max_age: default_max_age(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_listener_tls() -> ListenerTls {
    ListenerTls::None
}
/// Microsoft 365's default maximum message size.
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 35 * 1024 * 1024;
fn default_max_message_size() -> u64 {
    DEFAULT_MAX_MESSAGE_SIZE
}
/// RFC 5321 §4.5.3.1.8: servers must accept at least 100 recipients.
fn default_max_recipients() -> usize {
    100
}
fn default_max_connections() -> usize {
    200
}
/// RFC 5321 §4.5.3.2.7: a server should wait at least 5 minutes for the next command.
fn default_idle_timeout() -> Duration {
    Duration::from_secs(300)
}
/// RFC 5321 §4.5.3.2.5 gives the client 3 minutes per data block; we give the same back.
fn default_data_timeout() -> Duration {
    Duration::from_secs(180)
}
fn default_upstream_tls() -> UpstreamTls {
    UpstreamTls::Starttls
}
fn default_upstream_connections() -> usize {
    4
}
fn default_messages_per_connection() -> usize {
    100
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_command_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_upstream_idle() -> Duration {
    Duration::from_secs(10)
}
fn default_initial_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_max_interval() -> Duration {
    Duration::from_secs(3600)
}
fn default_max_age() -> Duration {
    Duration::from_secs(5 * 24 * 3600)
}
