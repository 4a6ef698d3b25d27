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
    pub upstream: RawUpstream,
    #[serde(default)]
    pub retry: RawRetry,
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUser {
    pub name: String,
    /// An argon2 PHC string, as printed by `sluice passwd`.
    pub password_hash: String,
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
#[serde(rename_all = "lowercase")]
pub enum UpstreamKind {
    /// Any SMTP smarthost.
    #[default]
    Smtp,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    #[serde(default)]
    pub kind: UpstreamKind,
    pub host: String,
    #[serde(default = "default_upstream_port")]
    pub port: u16,
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
fn default_upstream_port() -> u16 {
    587
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
