//! The simulator's configuration: the TOML file as written (serde, unknown keys refused, every
//! default documented here) and its validation into a [`SimConfig`] the rest of the crate trusts
//! (addresses lower-cased, references between mailboxes and apps checked).
//!
//! The names follow the Exchange Online and Entra ID settings they stand for, so a reader can map
//! each one to the cmdlet or portal switch that sets it in a real tenant.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML did not parse or had unknown keys.
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
    /// A value is inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole simulator configuration.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// The tenant.
    pub tenant: TenantConfig,
    /// Where to listen. Defaults: loopback, ports chosen by the OS.
    #[serde(default)]
    pub listen: ListenConfig,
    /// Per-mailbox limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Licensed mailboxes.
    #[serde(default)]
    pub mailboxes: Vec<MailboxConfig>,
    /// App registrations (client credentials).
    #[serde(default)]
    pub apps: Vec<AppConfig>,
    /// Inbound connectors of type OnPremises (`New-InboundConnector`), for the MX endpoint.
    #[serde(default)]
    pub inbound_connectors: Vec<InboundConnectorConfig>,
    /// Which clock the simulator starts on: `"system"` (default) or `"manual"` (stands still
    /// until moved with `POST /clock/advance` or `RunningSim::advance`). Written at the top of
    /// the file, before the first table.
    #[serde(default)]
    pub clock: ClockMode,
}

/// See [`SimConfig::clock`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClockMode {
    /// The operating system's clock.
    #[default]
    System,
    /// A manual clock starting at the real time of start-up.
    Manual,
}

/// An OnPremises inbound connector: how Exchange Online recognises the organisation's own
/// mail servers (or relay) on the MX endpoint (reference §1b).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InboundConnectorConfig {
    /// `-Name`.
    pub name: String,
    /// `-Enabled` (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `-SenderIPAddresses`: IPv4/IPv6 addresses or CIDR ranges (`127.0.0.2`, `127.0.0.0/29`).
    #[serde(default)]
    pub sender_ip_addresses: Vec<String>,
    /// `-TlsSenderCertificateName`: a name the client certificate's CN or a SAN must hold;
    /// `*.contoso.com` matches one label under contoso.com.
    #[serde(default)]
    pub tls_sender_certificate_name: Option<String>,
    /// `-RequireTls`: mail through this connector must come over TLS.
    #[serde(default)]
    pub require_tls: bool,
}

/// The tenant and its organisation-wide switches.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// The tenant name as in `<name>.onmicrosoft.com` (used in AADSTS texts).
    pub name: String,
    /// The tenant (directory) id, a GUID.
    pub id: String,
    /// Accepted domains. `<name>.onmicrosoft.com` is always accepted too.
    pub domains: Vec<String>,
    /// `Set-TransportConfig -SmtpClientAuthenticationDisabled`. Default false here (the reference
    /// says tenants created after January 2020 have it disabled; a simulator that refuses by
    /// default would only confuse a first run, so the example sets it explicitly).
    #[serde(default)]
    pub smtp_auth_disabled: bool,
    /// Basic authentication (AUTH LOGIN) for client submission retired for this tenant:
    /// `550 5.7.30 Basic authentication is not supported for Client Submission.`
    #[serde(default)]
    pub basic_auth_disabled: bool,
    /// `Set-OrganizationConfig -SendFromAliasEnabled`: a mailbox may send from its proxy addresses.
    #[serde(default)]
    pub send_from_aliases: bool,
    /// Which reply refuses a sender the identity may not send as: `"5.7.60"` (default) or
    /// `"5.2.252"`. Both are seen in the wild; which one depends on where Exchange catches it.
    #[serde(default)]
    pub send_as_denied: SendAsDenied,
    /// The front-end host name used in the banner, EHLO and the `[HOST …]` suffix of errors.
    #[serde(default = "default_hostname")]
    pub hostname: String,
    /// The MX endpoint's host name (an Exchange Online Protection front end).
    #[serde(default = "default_mx_hostname")]
    pub mx_hostname: String,
    /// `Set-OrganizationConfig -RejectDirectSend`: anonymous mail on the MX endpoint whose
    /// MAIL FROM domain is an accepted domain gets `550 5.7.68` (reference §1c).
    #[serde(default)]
    pub reject_direct_send: bool,
}

fn default_mx_hostname() -> String {
    // The shape of an EOP front end (`…FT0nn.mail.protection.outlook.com`).
    "SIM0EUR01FT001.mail.protection.outlook.com".to_owned()
}

fn default_hostname() -> String {
    // The shape of a real front end (a CAS in a Microsoft datacenter).
    "SIM0P281CA0001.outlook.office365.com".to_owned()
}

/// See [`TenantConfig::send_as_denied`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum SendAsDenied {
    /// `550 5.7.60 SMTP; Client does not have permissions to send as this sender`
    #[default]
    #[serde(rename = "5.7.60")]
    Smtp5760,
    /// `554 5.2.252 SendAsDenied; …`
    #[serde(rename = "5.2.252")]
    Storedrv52252,
}

/// Listening addresses.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// The client submission endpoint (smtp.office365.com:587).
    #[serde(default = "loopback_any")]
    pub smtp: SocketAddr,
    /// The HTTPS endpoint: token, Graph, admin.
    #[serde(default = "loopback_any")]
    pub https: SocketAddr,
    /// The MX endpoint (`<tenant>-com.mail.protection.outlook.com:25`): connectors and direct send.
    #[serde(default = "loopback_any")]
    pub mx: SocketAddr,
}

fn loopback_any() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig { smtp: loopback_any(), https: loopback_any(), mx: loopback_any() }
    }
}

/// Limits, per mailbox unless said otherwise. Defaults are Exchange Online's.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Concurrent authenticated SMTP connections per mailbox (3).
    #[serde(default = "d_concurrent")]
    pub concurrent_connections: u32,
    /// Messages a minute per mailbox (30).
    #[serde(default = "d_per_minute")]
    pub messages_per_minute: u32,
    /// What happens over the per-minute rate: `"delay"` (default, what Microsoft documents) or
    /// `"reject"` (`451 4.7.500 Server busy…`).
    #[serde(default)]
    pub rate_limit_action: RateLimitAction,
    /// Recipients in a sliding 24 hours per mailbox (10,000).
    #[serde(default = "d_per_day")]
    pub recipients_per_day: u32,
    /// Recipients per message (500; a tenant can raise it to 1,000).
    #[serde(default = "d_per_message")]
    pub recipients_per_message: u32,
    /// How the recipients-per-message limit answers: `"rcpt"` (default: `452 4.5.3 Too many
    /// recipients` to each RCPT over it, the client sends the rest in another transaction) or
    /// `"data"` (all RCPTs get 250; the end of DATA gets `550 5.5.3 RESOLVER.ADR.RecipLimit`).
    #[serde(default)]
    pub recipient_limit_reply: RecipientLimitReply,
    /// MaxSendSize in octets (35 MB).
    #[serde(default = "d_size")]
    pub max_send_size: u64,
    /// Access-token lifetime in seconds (Entra gives 3599 for client credentials).
    #[serde(default = "d_token")]
    pub token_lifetime_secs: u64,
    /// Refresh-token lifetime in seconds (90 days, reference §2).
    #[serde(default = "d_refresh")]
    pub refresh_token_lifetime_secs: u64,
    /// Device-code lifetime in seconds (Entra answers `expires_in: 900`).
    #[serde(default = "d_device_code")]
    pub device_code_lifetime_secs: u64,
    /// Graph requests per mailbox per app in 10 minutes (10,000, reference §1e).
    #[serde(default = "d_graph_budget")]
    pub graph_requests_per_10_minutes: u32,
    /// An SMTP session idle this long (simulator clock) is closed with `451 4.7.0 Timeout
    /// waiting for client input`. Exchange's receive connectors default to 5 minutes
    /// (ConnectionInactivityTimeout); Exchange Online's value is not published.
    #[serde(default = "d_idle")]
    pub smtp_idle_timeout_secs: u64,
}

fn d_refresh() -> u64 {
    90 * 24 * 3600
}
fn d_device_code() -> u64 {
    900
}
fn d_graph_budget() -> u32 {
    10_000
}
fn d_idle() -> u64 {
    300
}

fn d_concurrent() -> u32 {
    3
}
fn d_per_minute() -> u32 {
    30
}
fn d_per_day() -> u32 {
    10_000
}
fn d_per_message() -> u32 {
    500
}
fn d_size() -> u64 {
    35 * 1024 * 1024
}
fn d_token() -> u64 {
    3599
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            concurrent_connections: d_concurrent(),
            messages_per_minute: d_per_minute(),
            rate_limit_action: RateLimitAction::default(),
            recipients_per_day: d_per_day(),
            recipients_per_message: d_per_message(),
            recipient_limit_reply: RecipientLimitReply::default(),
            max_send_size: d_size(),
            token_lifetime_secs: d_token(),
            refresh_token_lifetime_secs: d_refresh(),
            device_code_lifetime_secs: d_device_code(),
            graph_requests_per_10_minutes: d_graph_budget(),
            smtp_idle_timeout_secs: d_idle(),
        }
    }
}

/// See [`LimitsConfig::rate_limit_action`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitAction {
    /// Hold the end-of-DATA reply until the message fits in the rate.
    #[default]
    Delay,
    /// Answer `451 4.7.500 Server busy. Please try again later from [IP]. (S77719)`.
    Reject,
}

/// See [`LimitsConfig::recipient_limit_reply`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RecipientLimitReply {
    /// `452 4.5.3 Too many recipients` at RCPT.
    #[default]
    Rcpt,
    /// `550 5.5.3 RESOLVER.ADR.RecipLimit; too many recipients` at the end of DATA.
    Data,
}

/// A licensed user mailbox.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MailboxConfig {
    /// Primary SMTP address, also the UPN.
    pub address: String,
    /// Password for basic authentication; none = basic auth always fails for it.
    #[serde(default)]
    pub password: Option<String>,
    /// Proxy addresses.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// `Set-CASMailbox -SmtpClientAuthenticationDisabled`: `true`/`false` override the tenant,
    /// absent (`$null`) follows it, as in Exchange Online.
    #[serde(default)]
    pub smtp_auth_disabled: Option<bool>,
    /// Other addresses this mailbox's user has SendAs on (`Add-RecipientPermission -AccessRights
    /// SendAs` granted on those recipients).
    #[serde(default)]
    pub send_as: Vec<String>,
    /// This mailbox's MaxSendSize, overriding the limit.
    #[serde(default)]
    pub max_send_size: Option<u64>,
}

/// An app registration with a client secret, and what Exchange grants its service principal.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// Application (client) id.
    pub client_id: String,
    /// Display name (used in AADSTS texts).
    #[serde(default)]
    pub name: Option<String>,
    /// The client secret value.
    #[serde(default)]
    pub client_secret: Option<String>,
    /// Application permissions consented: `SMTP.SendAsApp` (Office 365 Exchange Online) and/or
    /// `Mail.Send` (Microsoft Graph). They go into the token's roles when it is issued.
    #[serde(default)]
    pub permissions: Vec<String>,
    /// `New-ServicePrincipal` was run in Exchange for this app (needed for SMTP).
    #[serde(default = "yes")]
    pub exchange_service_principal: bool,
    /// Mailboxes where `Add-MailboxPermission -AccessRights FullAccess` was granted to the app.
    #[serde(default)]
    pub full_access: Vec<String>,
    /// Recipients where `Add-RecipientPermission -AccessRights SendAs` was granted to the app.
    #[serde(default)]
    pub send_as: Vec<String>,
    /// Certificates uploaded as credentials (PEM text, RSA keys): a client assertion signed by
    /// one of their keys authenticates the app.
    #[serde(default)]
    pub certificates: Vec<String>,
    /// "Allow public client flows" in the app registration: the device-code flow needs it.
    #[serde(default)]
    pub public_client: bool,
}

fn yes() -> bool {
    true
}

impl SimConfig {
    /// Parses and validates a TOML document.
    pub fn from_toml_str(text: &str) -> Result<SimConfig, ConfigError> {
        let config: SimConfig = toml::from_str(text)?;
        config.validated()
    }

    /// Reads, parses and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<SimConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Self::from_toml_str(&text)
    }

    /// Checks references and normalises addresses (lower case: Exchange matches SMTP addresses
    /// case-insensitively, local part included).
    pub fn validated(mut self) -> Result<SimConfig, ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.tenant.domains.is_empty() {
            return invalid("tenant.domains must list at least one accepted domain".into());
        }
        for d in &mut self.tenant.domains {
            *d = d.to_ascii_lowercase();
        }
        let onms = format!("{}.onmicrosoft.com", self.tenant.name.to_ascii_lowercase());
        if !self.tenant.domains.contains(&onms) {
            self.tenant.domains.push(onms);
        }
        let mut seen = HashSet::new();
        for m in &mut self.mailboxes {
            m.address = m.address.to_ascii_lowercase();
            for a in m.aliases.iter_mut().chain(m.send_as.iter_mut()) {
                *a = a.to_ascii_lowercase();
            }
            for a in std::iter::once(&m.address).chain(&m.aliases) {
                let Some((_, domain)) = a.rsplit_once('@') else {
                    return invalid(format!("mailbox address {a:?} has no domain"));
                };
                if !self.tenant.domains.iter().any(|d| d == domain) {
                    return invalid(format!("mailbox address {a:?} is not in an accepted domain"));
                }
                if !seen.insert(a.clone()) {
                    return invalid(format!("address {a:?} is used twice"));
                }
            }
        }
        let mut ids = HashSet::new();
        for app in &mut self.apps {
            app.client_id = app.client_id.to_ascii_lowercase();
            if !ids.insert(app.client_id.clone()) {
                return invalid(format!("app {:?} is registered twice", app.client_id));
            }
            for a in app.full_access.iter_mut().chain(app.send_as.iter_mut()) {
                *a = a.to_ascii_lowercase();
            }
            for a in &app.full_access {
                if !self.mailboxes.iter().any(|m| &m.address == a) {
                    return invalid(format!(
                        "app {:?}: full_access names {a:?}, which is not a mailbox",
                        app.client_id
                    ));
                }
            }
        }
        for c in &self.inbound_connectors {
            for ip in &c.sender_ip_addresses {
                if crate::connectors::Cidr::parse(ip).is_none() {
                    return invalid(format!("connector {:?}: {ip:?} is not an IP address or CIDR range", c.name));
                }
            }
        }
        for app in &self.apps {
            for pem in &app.certificates {
                if let Err(e) = crate::assertion::RegisteredCert::from_pem(pem) {
                    return invalid(format!("app {:?}: certificate: {e}", app.client_id));
                }
            }
        }
        Ok(self)
    }
}
