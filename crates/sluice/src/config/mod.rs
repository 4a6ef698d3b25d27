//! Configuration in two phases: [`raw`] is what the admin wrote (serde, unknown keys rejected, documented
//! defaults); [`Config`] is what the server runs on (addresses parsed, certificates loaded, secrets read).
//!
//! Every error names the key, and for syntax errors the line, so `sluice check-config` can point at it.

pub mod raw;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use raw::RawConfig;
pub use raw::{ClientCertificate, Credential, ListenerTls, OAuthFlow, SenderRewrite, UpstreamKind, UpstreamTls};

use crate::policy::abuse::AbuseLimits;
use crate::policy::{CertificateRule, NetworkRule, Policy, Rules};
use crate::routing::{Route, RouteChoice, Routing};

use crate::scheduler::retry::RetryPolicy;
use crate::spool::MinFree;

/// The configuration compiled into the binary, used by `sluice serve` without `--config`: a relay on
/// 127.0.0.1:2525 for local clients, spooling to `./spool`, forwarding to a plain SMTP server on
/// 127.0.0.1:2526.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Syntax(String),
    #[error("{key}{}: {message}", line.map(|n| format!(" (line {n})")).unwrap_or_default())]
    Invalid { key: String, message: String, line: Option<usize> },
}

fn invalid(key: impl Into<String>, message: impl fmt::Display) -> ConfigError {
    ConfigError::Invalid { key: key.into(), message: message.to_string(), line: None }
}

/// Finds the line (1-based) where a key such as `listener[1].allowed_networks` or `upstream.tls` is set,
/// so errors found after parsing can point at the file like syntax errors do. Best effort: `None` when the
/// key is not written out (a missing key, or one set through an inline table).
fn locate(text: &str, key: &str) -> Option<usize> {
    // A table named in full (`upstreams.m365` for `[upstreams.m365]`).
    if let Some(n) = text.lines().position(|l| {
        let t = l.trim();
        t.starts_with('[') && t.trim_start_matches('[').split(']').next().is_some_and(|h| h.trim() == key)
    }) {
        return Some(n + 1);
    }
    let (table, field) = match key.rsplit_once('.') {
        Some((table, field)) => (Some(table), field),
        None if key.contains('[') || text.contains(&format!("[{key}]")) => (Some(key), ""),
        None => (None, key),
    };
    let (table_name, index) = match table {
        Some(t) => match t.split_once('[') {
            Some((name, rest)) => (Some(name), rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (Some(t), None),
        },
        None => (None, None),
    };
    let mut in_table = table_name.is_none();
    let mut seen = 0usize;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            let header = trimmed.trim_start_matches('[').split(']').next().unwrap_or("").trim();
            in_table = match (table_name, index) {
                (Some(name), Some(i)) if header == name => {
                    seen += 1;
                    seen == i + 1
                }
                (Some(name), None) => header == name,
                _ => false,
            };
            if in_table && field.is_empty() {
                return Some(n + 1);
            }
            continue;
        }
        if in_table && !field.is_empty() {
            let name = trimmed.split('=').next().unwrap_or("").trim();
            if name == field && trimmed.contains('=') {
                return Some(n + 1);
            }
        }
    }
    None
}

/// A secret read from a file or the environment. Its `Debug` never shows the value, so it cannot leak
/// into logs through a derived `Debug` of a containing struct.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value obtained at run time (an access token).
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

#[derive(Debug)]
pub struct Config {
    pub hostname: String,
    pub spool_dir: PathBuf,
    pub listeners: Vec<ListenerConfig>,
    pub users: Vec<UserConfig>,
    /// The upstream that takes mail no route matched (the default route's): `[upstream]` in a simple setup.
    pub upstream: UpstreamConfig,
    /// Every upstream, `[upstream]` (named "default") and `[upstreams.NAME]`.
    pub upstreams: Vec<UpstreamConfig>,
    /// `[[routes]]`: which upstream and mailbox each message goes through.
    pub routing: Routing,
    pub retry: RetryPolicy,
    /// Identity rules: per network, certificate and user.
    pub policy: Policy,
    pub abuse: AbuseLimits,
    pub admin: AdminConfig,
    /// `[spool] min_free_space`: below this much free space new mail is refused (452 4.3.1).
    pub min_free_space: MinFree,
    /// Things that work but that the admin should know about (printed by serve and check-config).
    pub warnings: Vec<String>,
}

/// The admin interface (see `crate::admin`).
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// None: turned off.
    pub listen: Option<SocketAddr>,
    /// From `token_file` or SLUICE_ADMIN_TOKEN; None: generated at start-up.
    pub token: Option<Secret>,
    /// Where `token` came from, when a file (told to `sluice` commands through the spool).
    pub token_file: Option<PathBuf>,
    pub public_metrics: bool,
}

#[derive(Clone)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    pub tls: ListenerTls,
    pub tls_config: Option<Arc<rustls::ServerConfig>>,
    /// OpenSSL instead of rustls, accepting TLS 1.0 and 1.1 too (`insecure_legacy_tls`).
    #[cfg(feature = "legacy-tls")]
    pub legacy_tls: Option<Arc<openssl::ssl::SslAcceptor>>,
    pub allowed_networks: Vec<IpNet>,
    pub auth: bool,
    pub insecure_allow_plaintext_auth: bool,
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub data_timeout: Duration,
    pub command_timeout: Duration,
    pub min_data_rate: u64,
    pub max_connections_per_client: usize,
    pub reject_bare_line_endings: bool,
    pub max_header_size: u64,
    pub max_received_headers: usize,
    pub greeting_delay: Duration,
    pub reject_unauth_pipelining: bool,
    /// Client certificates are requested (verified against `client_ca_file`).
    pub client_certificates: Option<ClientCertificate>,
    pub require: Vec<Credential>,
    pub proxy_protocol: bool,
    pub proxy_trusted_networks: Vec<IpNet>,
}

impl fmt::Debug for ListenerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenerConfig")
            .field("address", &self.address)
            .field("tls", &self.tls)
            .field("allowed_networks", &self.allowed_networks)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct UserConfig {
    pub name: String,
    pub password_hash: String,
}

#[derive(Clone)]
pub struct UpstreamConfig {
    pub kind: UpstreamKind,
    /// SMTP host (unused by `m365-graph`, which shows its Graph host here).
    pub host: String,
    pub port: u16,
    pub tls: UpstreamTls,
    /// TLS for SMTP (with the connector's client certificate, if any).
    pub tls_config: Arc<rustls::ClientConfig>,
    pub server_name: ServerName<'static>,
    /// User and password for AUTH PLAIN/LOGIN (`smtp` with a username, `m365-basic`).
    pub credentials: Option<(String, Secret)>,
    pub helo_name: String,
    pub connections: usize,
    pub max_messages_per_connection: usize,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub idle_timeout: Duration,
    /// The upstream's name: the key of `[upstreams.NAME]`, or "default" for `[upstream]`.
    pub name: String,
    /// The mailbox mail is sent as (Microsoft kinds that authenticate as a mailbox): the first of the pool.
    pub mailbox: Option<String>,
    /// The pool of mailboxes (one entry for `mailbox`; empty for kinds without a mailbox).
    pub mailboxes: Vec<String>,
    /// Connections one mailbox may have open at once (Exchange Online: 3).
    pub max_connections_per_mailbox: usize,
    /// App-only tokens (`m365-oauth`, `m365-graph`).
    pub oauth: Option<OAuthConfig>,
    /// Graph sendMail (`m365-graph`).
    pub graph: Option<GraphConfig>,
    /// TLS for HTTPS (token endpoint, Graph): the same trust anchors as SMTP, no client certificate.
    pub https_tls: Arc<rustls::ClientConfig>,
    /// How long a held route waits before it is tried again on its own.
    pub hold_recheck: Duration,
    pub sender_rewrite: SenderRewrite,
    pub shaping: Shaping,
}

/// Where and how app-only tokens are obtained (client credentials flow).
#[derive(Clone, Debug)]
pub struct OAuthConfig {
    pub token_url: String,
    pub client_id: String,
    pub scope: String,
    pub credential: OAuthCredential,
}

#[derive(Clone)]
pub enum OAuthCredential {
    Secret(Secret),
    /// A certificate registered on the app and its RSA key: the token request carries a signed JWT.
    Certificate {
        cert_der: Vec<u8>,
        /// PKCS#8 DER of the RSA private key.
        key_pkcs8: Arc<Vec<u8>>,
    },
    /// Delegated (`oauth_flow = "delegated"`): a public client; the refresh token of the user who signed in
    /// with `sluice login` is read from this file and replaced by the rotated one on each use.
    Delegated {
        refresh_token_file: PathBuf,
    },
}

impl fmt::Debug for OAuthCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OAuthCredential::Secret(_) => f.write_str("Secret([redacted])"),
            OAuthCredential::Certificate { .. } => f.write_str("Certificate([key redacted])"),
            OAuthCredential::Delegated { refresh_token_file } => {
                write!(f, "Delegated(refresh token in {})", refresh_token_file.display())
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct GraphConfig {
    /// `{graph_url}/v1.0/users/{mailbox}/sendMail` for the first mailbox of the pool.
    pub send_mail_url: String,
    /// `{graph_url}/v1.0/users`: each mailbox of a pool sends through `{users_url}/{mailbox}/sendMail`.
    pub users_url: String,
    /// `{graph_url}/v1.0/users/{mailbox}/messages` (drafts, for large messages).
    pub messages_url: String,
    pub save_to_sent_items: bool,
}

/// Per-mailbox limits (0 or `usize::MAX` = none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shaping {
    pub messages_per_minute: u32,
    pub recipients_per_day: u32,
    pub max_recipients_per_message: usize,
}

impl fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("username", &self.credentials.as_ref().map(|(user, _)| user))
            .field("mailboxes", &self.mailboxes)
            .field("oauth", &self.oauth)
            .finish_non_exhaustive()
    }
}

impl UpstreamConfig {
    /// "host:port" (or the Graph host), for logs and DSNs.
    pub fn display_name(&self) -> String {
        if self.kind == UpstreamKind::M365Graph {
            return self.host.clone();
        }
        format!("{}:{}", self.host, self.port)
    }
}

/// The spool directory a configuration names (the embedded default's without a file), read without
/// resolving the rest: the `sluice` commands that talk to a running relay need only this to find it, and
/// may run as a user who cannot read its keys.
pub fn spool_dir(path: Option<&Path>) -> Result<PathBuf, ConfigError> {
    #[derive(serde::Deserialize)]
    struct OnlySpool {
        spool_dir: PathBuf,
    }
    let (text, base) = match path {
        Some(path) => (
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?,
            path.parent().unwrap_or(Path::new(".")).to_owned(),
        ),
        None => (EMBEDDED_DEFAULT.to_owned(), PathBuf::from(".")),
    };
    let only: OnlySpool = toml::from_str(&text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
    Ok(base.join(only.spool_dir))
}

/// Reads and resolves a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, base)
}

/// Like [`load`], and also returns the file as a TOML table: what a configuration reload compares to
/// tell which sections changed.
pub fn load_table(path: &Path) -> Result<(Config, toml::Table), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let config = parse(&text, base)?;
    let table = toml::from_str(&text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
    Ok((config, table))
}

/// Parses configuration text; relative paths in it are taken relative to `base`.
pub fn parse(text: &str, base: &Path) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
    resolve(raw, base).map_err(|e| match e {
        ConfigError::Invalid { line: None, key, message } => {
            let line = locate(text, &key);
            ConfigError::Invalid { key, message, line }
        }
        other => other,
    })
}

fn resolve(raw: RawConfig, base: &Path) -> Result<Config, ConfigError> {
    let mut warnings = Vec::new();
    let hostname = match raw.hostname {
        Some(name) => name,
        None => gethostname::gethostname().to_string_lossy().into_owned(),
    };
    if hostname.is_empty() || hostname.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("hostname", format!("{hostname:?} is not a valid host name")));
    }
    if raw.listeners.is_empty() {
        return Err(invalid("listener", "at least one [[listener]] is required"));
    }
    let mut listeners = Vec::new();
    for (i, l) in raw.listeners.into_iter().enumerate() {
        let key = format!("listener[{i}]");
        let address: SocketAddr =
            l.address.parse().map_err(|e| invalid(format!("{key}.address"), format!("{:?}: {e}", l.address)))?;
        let allowed_networks = l
            .allowed_networks
            .iter()
            .map(|n| parse_network(n).map_err(|e| invalid(format!("{key}.allowed_networks"), e)))
            .collect::<Result<Vec<_>, _>>()?;
        let tls_config = match l.tls {
            ListenerTls::None => None,
            ListenerTls::Starttls | ListenerTls::Implicit => {
                let (Some(cert), Some(keyf)) = (&l.cert_file, &l.key_file) else {
                    return Err(invalid(
                        format!("{key}.cert_file"),
                        "tls = \"starttls\" or \"implicit\" needs cert_file and key_file",
                    ));
                };
                let client_ca = l.client_ca_file.as_ref().map(|f| base.join(f));
                Some(Arc::new(server_tls(
                    &base.join(cert),
                    &base.join(keyf),
                    client_ca.as_deref().map(|ca| (ca, l.client_certificate)),
                    &key,
                )?))
            }
        };
        if l.auth && l.insecure_allow_plaintext_auth {
            warnings.push(format!(
                "{key} ({address}): insecure_allow_plaintext_auth is set: passwords may cross the network unencrypted"
            ));
        }
        if l.auth && l.tls == ListenerTls::None && !l.insecure_allow_plaintext_auth {
            // Not an error: the listener still serves allowed networks. AUTH is simply never offered.
        }
        if l.max_connections == 0
            || l.max_recipients == 0
            || l.max_message_size == 0
            || l.max_connections_per_client == 0
        {
            return Err(invalid(
                &key,
                "max_connections, max_connections_per_client, max_recipients and max_message_size must be > 0",
            ));
        }
        if l.insecure_legacy_tls {
            if tls_config.is_none() {
                return Err(invalid(format!("{key}.insecure_legacy_tls"), "needs tls = \"starttls\" or \"implicit\""));
            }
            if l.client_ca_file.is_some() {
                return Err(invalid(
                    format!("{key}.insecure_legacy_tls"),
                    "client certificates are not supported on a legacy TLS listener",
                ));
            }
            if !cfg!(feature = "legacy-tls") {
                return Err(invalid(
                    format!("{key}.insecure_legacy_tls"),
                    "this sluice was built without the legacy-tls feature (cargo build --features legacy-tls)",
                ));
            }
            warnings.push(format!(
                "{key} ({address}): insecure_legacy_tls accepts TLS 1.0 and 1.1, which are broken; use it only for devices that can do nothing newer"
            ));
        }
        #[cfg(feature = "legacy-tls")]
        let legacy_tls = match (&l.cert_file, &l.key_file) {
            (Some(cert), Some(keyf)) if l.insecure_legacy_tls => {
                Some(Arc::new(legacy_tls_acceptor(&base.join(cert), &base.join(keyf), &key)?))
            }
            _ => None,
        };
        if l.client_ca_file.is_some() && tls_config.is_none() {
            return Err(invalid(
                format!("{key}.client_ca_file"),
                "client certificates need tls = \"starttls\" or \"implicit\"",
            ));
        }
        if l.require.contains(&Credential::Certificate) && l.client_ca_file.is_none() {
            return Err(invalid(format!("{key}.require"), "\"certificate\" needs client_ca_file"));
        }
        if l.require.contains(&Credential::Network) && allowed_networks.is_empty() {
            return Err(invalid(format!("{key}.require"), "\"network\" needs allowed_networks"));
        }
        let proxy_trusted_networks = l
            .proxy_trusted_networks
            .iter()
            .map(|n| parse_network(n).map_err(|e| invalid(format!("{key}.proxy_trusted_networks"), e)))
            .collect::<Result<Vec<_>, _>>()?;
        if l.proxy_protocol && proxy_trusted_networks.is_empty() {
            return Err(invalid(
                format!("{key}.proxy_trusted_networks"),
                "proxy_protocol needs the load balancers' addresses: a PROXY header from anyone else would let them choose their own address",
            ));
        }
        if let Some(everyone) = allowed_networks.iter().find(|n| n.prefix_len() == 0) {
            warnings.push(format!(
                "{key} ({address}): allowed_networks contains {everyone}: every client of that address family may relay"
            ));
        }
        listeners.push(ListenerConfig {
            address,
            tls: l.tls,
            tls_config,
            #[cfg(feature = "legacy-tls")]
            legacy_tls,
            allowed_networks,
            auth: l.auth,
            insecure_allow_plaintext_auth: l.insecure_allow_plaintext_auth,
            max_message_size: l.max_message_size,
            max_recipients: l.max_recipients,
            max_connections: l.max_connections,
            idle_timeout: l.idle_timeout,
            data_timeout: l.data_timeout,
            command_timeout: l.command_timeout,
            min_data_rate: l.min_data_rate,
            max_connections_per_client: l.max_connections_per_client,
            reject_bare_line_endings: l.reject_bare_line_endings,
            max_header_size: l.max_header_size,
            max_received_headers: l.max_received_headers,
            greeting_delay: l.greeting_delay,
            reject_unauth_pipelining: l.reject_unauth_pipelining,
            client_certificates: l.client_ca_file.as_ref().map(|_| l.client_certificate),
            require: l.require,
            proxy_protocol: l.proxy_protocol,
            proxy_trusted_networks,
        });
    }

    let mut users = Vec::new();
    let mut user_rules = std::collections::HashMap::new();
    for (i, u) in raw.users.into_iter().enumerate() {
        if let Err(e) = argon2::PasswordHash::new(&u.password_hash) {
            return Err(invalid(
                format!("user[{i}].password_hash"),
                format!("not an argon2 PHC string (use `sluice passwd`): {e}"),
            ));
        }
        if u.name.is_empty() {
            return Err(invalid(format!("user[{i}].name"), "must not be empty"));
        }
        if users.iter().any(|v: &UserConfig| v.name == u.name) {
            return Err(invalid(format!("user[{i}].name"), format!("duplicate user {:?}", u.name)));
        }
        let rules = Rules::new(&u.allowed_senders, &u.allowed_recipient_domains)
            .map_err(|e| invalid(format!("user[{i}]"), e))?;
        user_rules.insert(u.name.clone(), rules);
        users.push(UserConfig { name: u.name, password_hash: u.password_hash });
    }
    let mut networks = Vec::new();
    for (i, n) in raw.networks.into_iter().enumerate() {
        let network = parse_network(&n.address).map_err(|e| invalid(format!("network[{i}].address"), e))?;
        let rules = Rules::new(&n.allowed_senders, &n.allowed_recipient_domains)
            .map_err(|e| invalid(format!("network[{i}]"), e))?;
        networks.push(NetworkRule { network, name: n.name.unwrap_or_else(|| network.to_string()), rules });
    }
    let mut certificates = Vec::new();
    for (i, c) in raw.certificates.into_iter().enumerate() {
        if c.name.trim().is_empty() || c.identity.trim().is_empty() {
            return Err(invalid(format!("certificate[{i}]"), "name and identity must not be empty"));
        }
        let rules = Rules::new(&c.allowed_senders, &c.allowed_recipient_domains)
            .map_err(|e| invalid(format!("certificate[{i}]"), e))?;
        certificates.push(CertificateRule { name: c.name.to_lowercase(), identity: c.identity, rules });
    }
    let policy = Policy { networks, certificates, user_rules };
    let abuse = AbuseLimits {
        auth_failures_per_client: raw.limits.auth_failures_per_client.max(1),
        auth_failures_per_user: raw.limits.auth_failures_per_user.max(1),
        auth_failure_window: raw.limits.auth_failure_window,
        auth_ban_time: raw.limits.auth_ban_time,
    };

    let mut upstreams: Vec<UpstreamConfig> = Vec::new();
    let single = raw.upstream.is_some();
    if let Some(u) = raw.upstream {
        upstreams.push(resolve_upstream(DEFAULT_UPSTREAM, "upstream", u, base, &hostname, &mut warnings)?);
    }
    for (name, u) in raw.upstreams {
        let key = format!("upstreams.{name}");
        if name.is_empty() || name.contains(|c: char| c == '.' || c.is_whitespace() || c.is_control()) {
            return Err(invalid(key, format!("{name:?} is not a usable upstream name")));
        }
        if single && name == DEFAULT_UPSTREAM {
            return Err(invalid(key, "duplicate upstream name \"default\": [upstream] already is the default"));
        }
        upstreams.push(resolve_upstream(&name, &key, u, base, &hostname, &mut warnings)?);
    }
    if upstreams.is_empty() {
        return Err(invalid("upstream", "required: an [upstream], or one or more [upstreams.NAME]"));
    }
    let routing = resolve_routes(raw.routes, &upstreams, &mut warnings)?;
    let upstream = upstreams
        .iter()
        .find(|u| u.name == routing.fallback.upstream)
        .cloned()
        .expect("the fallback names a known upstream");

    let retry = RetryPolicy {
        initial_interval: raw.retry.initial_interval,
        max_interval: raw.retry.max_interval,
        max_age: raw.retry.max_age,
    };
    if retry.initial_interval.is_zero() || retry.max_interval < retry.initial_interval {
        return Err(invalid("retry", "need 0 < initial_interval <= max_interval"));
    }

    let min_free_space = match raw.spool.min_free_space {
        None => MinFree::DEFAULT,
        Some(raw::SizeOrShare::Bytes(bytes)) => MinFree::Bytes(bytes),
        Some(raw::SizeOrShare::Text(text)) => MinFree::parse(&text).map_err(|e| invalid("spool.min_free_space", e))?,
    };
    let admin = resolve_admin(raw.admin, base)?;
    let spool_dir = base.join(raw.spool_dir);
    Ok(Config {
        hostname,
        spool_dir,
        listeners,
        users,
        upstream,
        upstreams,
        routing,
        retry,
        policy,
        abuse,
        admin,
        min_free_space,
        warnings,
    })
}

/// The name `[upstream]` goes by, and the upstream that takes what no route matched.
pub const DEFAULT_UPSTREAM: &str = "default";

/// Compiles `[[routes]]`, checking every name against the upstreams and their pools.
fn resolve_routes(
    raw: Vec<raw::RawRoute>,
    upstreams: &[UpstreamConfig],
    warnings: &mut Vec<String>,
) -> Result<Routing, ConfigError> {
    let names = || upstreams.iter().map(|u| format!("{:?}", u.name)).collect::<Vec<_>>().join(", ");
    // Where unrouted mail goes (and routes that name no upstream): "default", or the only upstream.
    let implicit = upstreams
        .iter()
        .find(|u| u.name == DEFAULT_UPSTREAM)
        .or_else(|| (upstreams.len() == 1).then(|| &upstreams[0]))
        .map(|u| u.name.clone());
    let mut routes: Vec<Route> = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
        let key = format!("routes[{i}]");
        let name = match (&r.upstream, &implicit) {
            (Some(name), _) => name.clone(),
            (None, Some(name)) => name.clone(),
            (None, None) => {
                return Err(invalid(
                    format!("{key}.upstream"),
                    format!("required: there are several upstreams ({}) and none is named \"default\"", names()),
                ));
            }
        };
        let Some(upstream) = upstreams.iter().find(|u| u.name == name) else {
            return Err(invalid(
                format!("{key}.upstream"),
                format!("no upstream named {name:?} (there are {})", names()),
            ));
        };
        let mailbox = match &r.mailbox {
            None => None,
            Some(m) => match upstream.mailboxes.iter().find(|x| x.eq_ignore_ascii_case(m)) {
                Some(found) => Some(found.clone()),
                None if upstream.mailboxes.is_empty() => {
                    return Err(invalid(
                        format!("{key}.mailbox"),
                        format!("upstream {name:?} (kind = \"{}\") sends as no mailbox", upstream.kind.name()),
                    ));
                }
                None => {
                    return Err(invalid(
                        format!("{key}.mailbox"),
                        format!("{m:?} is not in the pool of upstream {name:?} ({})", upstream.mailboxes.join(", ")),
                    ));
                }
            },
        };
        if r.sender_rewrite == Some(SenderRewrite::Mailbox) && !upstream.kind.rewrites_sender() {
            return Err(invalid(
                format!("{key}.sender_rewrite"),
                format!("upstream {name:?} (kind = \"{}\") sends as no mailbox to rewrite to", upstream.kind.name()),
            ));
        }
        let senders = Rules::new(&r.senders, &[]).map_err(|e| invalid(format!("{key}.senders"), e))?;
        let networks = r
            .networks
            .iter()
            .map(|n| parse_network(n).map_err(|e| invalid(format!("{key}.networks"), e)))
            .collect::<Result<Vec<_>, _>>()?;
        if routes.iter().any(Route::is_default) {
            warnings.push(format!("{key}: comes after a route without conditions, so it never matches"));
        }
        routes.push(Route {
            senders,
            users: r.users,
            networks,
            choice: RouteChoice { upstream: name, mailbox, sender_rewrite: r.sender_rewrite },
        });
    }
    let fallback = match (routes.iter().find(|r| r.is_default()), implicit) {
        (Some(route), _) => route.choice.clone(),
        (None, Some(name)) => RouteChoice::to(&name),
        (None, None) => {
            return Err(invalid(
                "routes",
                format!(
                    "no default: add a [[routes]] without conditions, or name one of the upstreams ({}) \"default\"",
                    names()
                ),
            ));
        }
    };
    Ok(Routing { routes, fallback })
}

/// The environment variable that may hold the admin token instead of `admin.token_file`.
pub const ADMIN_TOKEN_ENV: &str = "SLUICE_ADMIN_TOKEN";

fn resolve_admin(raw: raw::RawAdmin, base: &Path) -> Result<AdminConfig, ConfigError> {
    if !raw.enabled {
        return Ok(AdminConfig { listen: None, token: None, token_file: None, public_metrics: false });
    }
    let listen: SocketAddr =
        raw.listen.parse().map_err(|e| invalid("admin.listen", format!("{:?}: {e}", raw.listen)))?;
    if !listen.ip().is_loopback() && !raw.insecure_allow_remote {
        return Err(invalid(
            "admin.listen",
            format!(
                "{listen} is not a loopback address; the admin interface controls the queue (set insecure_allow_remote to allow it)"
            ),
        ));
    }
    let token_file = raw.token_file.as_ref().map(|f| base.join(f));
    let token = match &raw.token_file {
        Some(file) => read_secret(Some(file), None, base, "admin.token_file", ADMIN_TOKEN_ENV)?,
        None => std::env::var(ADMIN_TOKEN_ENV).ok().filter(|t| !t.is_empty()).map(Secret),
    };
    if token.as_ref().is_some_and(|t| t.expose().len() < 16) {
        return Err(invalid("admin.token_file", "the admin token must be at least 16 characters"));
    }
    Ok(AdminConfig { listen: Some(listen), token, token_file, public_metrics: raw.public_metrics })
}

fn read_secret(
    file: Option<&PathBuf>,
    env: Option<&String>,
    base: &Path,
    file_key: &str,
    env_key: &str,
) -> Result<Option<Secret>, ConfigError> {
    match (file, env) {
        (Some(_), Some(_)) => Err(invalid(file_key, format!("set {file_key} or {env_key}, not both"))),
        (Some(file), None) => {
            let path = base.join(file);
            let text =
                std::fs::read_to_string(&path).map_err(|e| invalid(file_key, format!("{}: {e}", path.display())))?;
            Ok(Some(Secret(text.trim_end_matches(['\r', '\n']).to_owned())))
        }
        (None, Some(var)) => Ok(Some(Secret(
            std::env::var(var).map_err(|_| invalid(env_key, format!("environment variable {var} is not set")))?,
        ))),
        (None, None) => Ok(None),
    }
}

/// Microsoft's notice, shown by `serve` and `check-config` for `m365-basic`.
pub const BASIC_AUTH_RETIREMENT: &str = "upstream kind \"m365-basic\" uses SMTP AUTH basic authentication, which Microsoft \
is retiring for Exchange Online: disabled by default for existing tenants at the end of December 2026, final removal \
announced for the second half of 2027 (then: 550 5.7.30 Basic authentication is not supported for Client Submission). \
Move to kind = \"m365-oauth\", \"m365-graph\" or \"m365-connector\".";

const M365_SMTP_HOST: &str = "smtp.office365.com";
const M365_HVE_HOST: &str = "smtp-hve.office365.com";
/// check-config and serve say this for the kinds that reach the MX host without a mailbox (§1b, §1c).
pub const SPF_NOTICE: &str = "the tenant's SPF record (TXT on the sender domain) must include this relay's public IP address (ip4:…), or Exchange Online treats its mail as spoofed; a certificate-based connector (m365-connector with tls_client_cert_file) does not depend on the IP";
const OUTLOOK_SCOPE: &str = "https://outlook.office365.com/.default";
const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";
/// Delegated scopes (reference §2): the permission, and `offline_access` for a refresh token.
const OUTLOOK_DELEGATED_SCOPE: &str = "https://outlook.office.com/SMTP.Send offline_access";
const GRAPH_DELEGATED_SCOPE: &str = "https://graph.microsoft.com/Mail.Send offline_access";
const GRAPH_URL: &str = "https://graph.microsoft.com";

fn resolve_upstream(
    name: &str,
    p: &str,
    u: raw::RawUpstream,
    base: &Path,
    hostname: &str,
    warnings: &mut Vec<String>,
) -> Result<UpstreamConfig, ConfigError> {
    use UpstreamKind as K;
    let kind = u.kind;
    let kind_name = kind.name();
    let not_for = |key: &str, set: bool| -> Result<(), ConfigError> {
        if set { Err(invalid(format!("{p}.{key}"), format!("not used by kind = \"{kind_name}\""))) } else { Ok(()) }
    };
    let password = read_secret(
        u.password_file.as_ref(),
        u.password_env.as_ref(),
        base,
        &format!("{p}.password_file"),
        &format!("{p}.password_env"),
    )?;
    // m365-basic signs in as its mailbox; `username` is accepted there as another name for it.
    let mailbox = match kind {
        K::M365Basic => u.mailbox.clone().or_else(|| u.username.clone()),
        _ => u.mailbox.clone().or_else(|| u.mailboxes.first().cloned()),
    };
    // A pool: `mailboxes`, or the one `mailbox`.
    if u.mailbox.is_some() && !u.mailboxes.is_empty() {
        return Err(invalid(format!("{p}.mailboxes"), "set mailbox or mailboxes, not both"));
    }
    let mut mailboxes: Vec<String> = Vec::new();
    for m in &u.mailboxes {
        if !m.contains('@') {
            return Err(invalid(format!("{p}.mailboxes"), format!("{m:?} is not a mailbox address")));
        }
        if mailboxes.iter().any(|o| o.eq_ignore_ascii_case(m)) {
            return Err(invalid(format!("{p}.mailboxes"), format!("duplicate mailbox {m:?}")));
        }
        mailboxes.push(m.clone());
    }
    if !u.mailboxes.is_empty() && !matches!(kind, K::M365Oauth | K::M365Graph) {
        return Err(invalid(
            format!("{p}.mailboxes"),
            format!(
                "a pool of mailboxes needs app-only tokens (kind = \"m365-oauth\" or \"m365-graph\"), not kind = \"{kind_name}\""
            ),
        ));
    }
    if mailboxes.is_empty()
        && let Some(m) = &mailbox
    {
        mailboxes.push(m.clone());
    }
    let oauth_keys_set = u.client_id.is_some()
        || u.tenant.is_some()
        || u.client_secret_file.is_some()
        || u.client_secret_env.is_some()
        || u.client_certificate_file.is_some()
        || u.token_url.is_some();

    // Per kind: host, port, who we authenticate as.
    let (host, port) = match kind {
        K::Smtp | K::M365Connector | K::M365DirectSend => {
            let host = u.host.clone().ok_or_else(|| {
                invalid(
                    format!("{p}.host"),
                    if kind == K::Smtp {
                        "required".to_owned()
                    } else {
                        "required: the tenant's MX host, e.g. contoso-com.mail.protection.outlook.com".to_owned()
                    },
                )
            })?;
            (host, u.port.unwrap_or(if kind == K::Smtp { default_upstream_port() } else { 25 }))
        }
        K::M365Oauth | K::M365Basic => {
            (u.host.clone().unwrap_or_else(|| M365_SMTP_HOST.to_owned()), u.port.unwrap_or(default_upstream_port()))
        }
        K::M365Hve => {
            (u.host.clone().unwrap_or_else(|| M365_HVE_HOST.to_owned()), u.port.unwrap_or(default_upstream_port()))
        }
        K::M365Graph => {
            not_for("host", u.host.is_some())?;
            not_for("port", u.port.is_some())?;
            (String::new(), 443)
        }
    };
    let credentials = match kind {
        K::Smtp => match (u.username.clone(), password) {
            (Some(user), Some(pass)) => Some((user, pass)),
            (None, None) => None,
            (Some(_), None) => return Err(invalid(format!("{p}.username"), "needs password_file or password_env")),
            (None, Some(_)) => return Err(invalid(format!("{p}.username"), "a password is set but no username")),
        },
        K::M365Basic => {
            let user = mailbox.clone().or_else(|| u.username.clone()).ok_or_else(|| {
                invalid(format!("{p}.mailbox"), "required: the mailbox whose password sluice signs in with")
            })?;
            let pass = password.ok_or_else(|| invalid(format!("{p}.password_file"), "required (or password_env)"))?;
            warnings.push(BASIC_AUTH_RETIREMENT.to_owned());
            Some((user, pass))
        }
        // HVE: the HVE account's password (basic), or app tokens (XOAUTH2) when client_id is set.
        K::M365Hve if !oauth_keys_set => {
            let user = mailbox.clone().ok_or_else(|| {
                invalid(
                    format!("{p}.mailbox"),
                    "required: the HVE account (New-MailUser -HVEAccount) sluice signs in as",
                )
            })?;
            let pass = password.ok_or_else(|| {
                invalid(format!("{p}.password_file"), "required (or password_env, or client_id for OAuth)")
            })?;
            Some((user, pass))
        }
        K::M365Oauth | K::M365Graph | K::M365Connector | K::M365DirectSend | K::M365Hve => {
            not_for("username", u.username.is_some())?;
            not_for("password_file", password.is_some())?;
            None
        }
    };
    if matches!(kind, K::Smtp | K::M365Basic | K::M365Connector | K::M365DirectSend) {
        not_for("client_id", oauth_keys_set)?;
    }
    match kind {
        K::M365DirectSend => {
            warnings.push(
                "upstream kind \"m365-direct-send\": Microsoft accepts direct send only for the tenant's own \
                 recipients (external ones are refused), and tenants with RejectDirectSend refuse it \
                 (550 5.7.68); use m365-connector or a mailbox kind for external mail"
                    .to_owned(),
            );
            warnings.push(format!("upstream kind \"m365-direct-send\": {SPF_NOTICE}"));
        }
        K::M365Connector if u.tls_client_cert_file.is_none() => {
            warnings.push(format!("upstream kind \"m365-connector\" authorised by IP: {SPF_NOTICE}"));
        }
        K::M365Hve => warnings
            .push("upstream kind \"m365-hve\": High Volume Email is meant for recipients inside the tenant".to_owned()),
        _ => {}
    }
    if kind != K::M365Connector {
        not_for("tls_client_cert_file", u.tls_client_cert_file.is_some() || u.tls_client_key_file.is_some())?;
    }
    if kind != K::M365Graph {
        not_for("graph_url", u.graph_url.is_some())?;
    }
    if matches!(kind, K::M365Connector | K::M365DirectSend) {
        not_for("mailbox", mailbox.is_some())?;
    }
    if u.sender_rewrite == SenderRewrite::Mailbox && !kind.rewrites_sender() {
        not_for("sender_rewrite", true)?;
    }
    if credentials.is_some() && u.tls == UpstreamTls::None {
        return Err(invalid(
            format!("{p}.tls"),
            "AUTH would send the password unencrypted: use tls = \"starttls\" or \"implicit\"",
        ));
    }
    if matches!(kind, K::M365Oauth | K::M365Hve) && oauth_keys_set && u.tls == UpstreamTls::None {
        return Err(invalid(format!("{p}.tls"), "XOAUTH2 would send the token unencrypted: use tls = \"starttls\""));
    }
    if u.tls == UpstreamTls::None && kind != K::M365Graph {
        warnings.push(format!("upstream {host}:{port}: tls = \"none\": mail leaves sluice unencrypted"));
    }
    if u.connections == 0 || u.max_messages_per_connection == 0 {
        return Err(invalid(p, "connections and max_messages_per_connection must be > 0"));
    }

    let roots = root_store(u.ca_file.as_ref().map(|f| base.join(f)).as_deref(), p)?;
    let https_tls = Arc::new(client_tls_with(roots.clone(), None, p)?);

    let oauth = if matches!(kind, K::M365Oauth | K::M365Graph) || (kind == K::M365Hve && oauth_keys_set) {
        let mailbox_ok = mailbox.as_deref().is_some_and(|m| m.contains('@'));
        if !mailbox_ok {
            return Err(invalid(format!("{p}.mailbox"), "required: the mailbox address sluice sends as"));
        }
        let client_id = u.client_id.clone().ok_or_else(|| invalid(format!("{p}.client_id"), "required"))?;
        let token_url = match (&u.token_url, &u.tenant) {
            (Some(url), _) => url.clone(),
            (None, Some(tenant)) => format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token"),
            (None, None) => return Err(invalid(format!("{p}.tenant"), "required (or token_url)")),
        };
        if !token_url.starts_with("https://") {
            return Err(invalid(format!("{p}.token_url"), "must be an https:// URL (the request carries the secret)"));
        }
        let secret = read_secret(
            u.client_secret_file.as_ref(),
            u.client_secret_env.as_ref(),
            base,
            &format!("{p}.client_secret_file"),
            &format!("{p}.client_secret_env"),
        )?;
        let delegated = u.oauth_flow == OAuthFlow::Delegated;
        let credential = match (secret, &u.client_certificate_file, &u.client_key_file) {
            (None, None, None) if delegated => {
                let file = u.refresh_token_file.as_ref().ok_or_else(|| {
                    invalid(format!("{p}.refresh_token_file"), "required with oauth_flow = \"delegated\"")
                })?;
                OAuthCredential::Delegated { refresh_token_file: base.join(file) }
            }
            _ if delegated => {
                return Err(invalid(
                    format!("{p}.oauth_flow"),
                    "\"delegated\" signs in as a user through a public client: no client secret or certificate",
                ));
            }
            (Some(_), Some(_), _) => {
                return Err(invalid(
                    format!("{p}.client_certificate_file"),
                    "set a client secret or a certificate, not both",
                ));
            }
            (Some(secret), None, _) => OAuthCredential::Secret(secret),
            (None, Some(cert), Some(key)) => {
                let cert_key = format!("{p}.client_certificate_file");
                let cert_key = cert_key.as_str();
                let cert_path = base.join(cert);
                let cert_der = CertificateDer::pem_file_iter(&cert_path)
                    .and_then(|mut it| it.next().transpose())
                    .map_err(|e| invalid(cert_key, format!("{}: {e}", cert_path.display())))?
                    .ok_or_else(|| invalid(cert_key, format!("{}: no certificate", cert_path.display())))?;
                let key_path = base.join(key);
                let key_der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_file(&key_path).map_err(|e| {
                    invalid(
                        format!("{p}.client_key_file"),
                        format!("{}: {e} (a PKCS#8 RSA key is needed)", key_path.display()),
                    )
                })?;
                let key_pkcs8 = key_der.secret_pkcs8_der().to_vec();
                if ring::signature::RsaKeyPair::from_pkcs8(&key_pkcs8).is_err() {
                    return Err(invalid(
                        format!("{p}.client_key_file"),
                        "not an RSA key (Entra ID takes RSA certificates)",
                    ));
                }
                OAuthCredential::Certificate { cert_der: cert_der.to_vec(), key_pkcs8: Arc::new(key_pkcs8) }
            }
            (None, Some(_), None) => {
                return Err(invalid(format!("{p}.client_key_file"), "required with client_certificate_file"));
            }
            (None, None, _) => {
                return Err(invalid(
                    format!("{p}.client_secret_file"),
                    "required (or client_secret_env, or client_certificate_file + client_key_file)",
                ));
            }
        };
        let scope = u.scope.clone().unwrap_or_else(|| {
            match (kind, delegated) {
                (K::M365Graph, false) => GRAPH_SCOPE,
                (K::M365Graph, true) => GRAPH_DELEGATED_SCOPE,
                (_, false) => OUTLOOK_SCOPE,
                (_, true) => OUTLOOK_DELEGATED_SCOPE,
            }
            .to_owned()
        });
        Some(OAuthConfig { token_url, client_id, scope, credential })
    } else {
        not_for("scope", u.scope.is_some())?;
        not_for("oauth_flow", u.oauth_flow != OAuthFlow::App)?;
        None
    };
    if u.oauth_flow != OAuthFlow::Delegated && u.refresh_token_file.is_some() {
        return Err(invalid(format!("{p}.refresh_token_file"), "only with oauth_flow = \"delegated\""));
    }

    let graph = if kind == K::M365Graph {
        let base_url = u.graph_url.clone().unwrap_or_else(|| GRAPH_URL.to_owned());
        if !base_url.starts_with("https://") {
            return Err(invalid(format!("{p}.graph_url"), "must be an https:// URL"));
        }
        let user = mailbox.clone().unwrap_or_default();
        let users_url = format!("{}/v1.0/users", base_url.trim_end_matches('/'));
        if !u.save_to_sent_items {
            // Graph's MIME form of sendMail takes no parameters besides the message: Exchange saves the
            // copy. Say so rather than pretend.
            warnings.push(format!(
                "{p}.save_to_sent_items = false: neither Graph's MIME sendMail nor the send of a draft (large \
                 messages) takes a saveToSentItems parameter; Exchange Online keeps a copy in Sent Items anyway"
            ));
        }
        Some(GraphConfig {
            send_mail_url: format!("{users_url}/{user}/sendMail"),
            messages_url: format!("{users_url}/{user}/messages"),
            users_url,
            save_to_sent_items: u.save_to_sent_items,
        })
    } else {
        None
    };

    let client_cert = match (&u.tls_client_cert_file, &u.tls_client_key_file) {
        (Some(cert), Some(key)) => {
            let cert_path = base.join(cert);
            let chain = CertificateDer::pem_file_iter(&cert_path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| invalid(format!("{p}.tls_client_cert_file"), format!("{}: {e}", cert_path.display())))?;
            if chain.is_empty() {
                return Err(invalid(
                    format!("{p}.tls_client_cert_file"),
                    format!("{}: no certificate", cert_path.display()),
                ));
            }
            if chain.len() == 1 {
                warnings.push(format!(
                    "{p}.tls_client_cert_file holds one certificate: Exchange Online needs the full chain \
                     (leaf then intermediates), else 550 5.7.64 TenantAttribution"
                ));
            }
            let key_path = base.join(key);
            let key_der = PrivateKeyDer::from_pem_file(&key_path)
                .map_err(|e| invalid(format!("{p}.tls_client_key_file"), format!("{}: {e}", key_path.display())))?;
            Some((chain, key_der))
        }
        (None, None) => None,
        _ => {
            return Err(invalid(
                format!("{p}.tls_client_cert_file"),
                "set both tls_client_cert_file and tls_client_key_file",
            ));
        }
    };
    let tls_config = Arc::new(client_tls_with(roots, client_cert, p)?);

    let (server_name, display_host) = if kind == K::M365Graph {
        let url = &graph.as_ref().expect("graph kind").send_mail_url;
        let host = url.trim_start_matches("https://").split(['/', ':']).next().unwrap_or("").to_owned();
        (
            ServerName::try_from(host.clone())
                .map_err(|e| invalid(format!("{p}.graph_url"), format!("{host:?}: {e}")))?,
            host,
        )
    } else {
        let name = u.tls_server_name.clone().unwrap_or_else(|| host.clone());
        (
            ServerName::try_from(name.clone())
                .map_err(|e| invalid(format!("{p}.tls_server_name"), format!("{name:?}: {e}")))?,
            host,
        )
    };

    // Shaping: Exchange Online's per-mailbox limits for the Microsoft kinds; none for a generic smarthost.
    let m365_mailbox = kind.sends_as_mailbox();
    let max_connections = u.max_connections_per_mailbox.unwrap_or(if m365_mailbox { 3 } else { usize::MAX });
    if max_connections == 0 {
        return Err(invalid(format!("{p}.max_connections_per_mailbox"), "must be > 0"));
    }
    let shaping = Shaping {
        messages_per_minute: u.messages_per_minute.unwrap_or(if m365_mailbox { 30 } else { 0 }),
        recipients_per_day: u.recipients_per_day.unwrap_or(if m365_mailbox { 10_000 } else { 0 }),
        max_recipients_per_message: match u.max_recipients_per_message {
            Some(0) => return Err(invalid(format!("{p}.max_recipients_per_message"), "must be > 0")),
            Some(n) => n,
            None if kind.is_m365() => 500,
            None => usize::MAX,
        },
    };
    if u.hold_recheck.is_zero() {
        return Err(invalid(format!("{p}.hold_recheck"), "must be > 0"));
    }

    Ok(UpstreamConfig {
        kind,
        host: display_host,
        port,
        tls: u.tls,
        tls_config,
        server_name,
        credentials,
        helo_name: u.helo_name.unwrap_or_else(|| hostname.to_owned()),
        // Each mailbox of the pool takes at most max_connections_per_mailbox.
        connections: u.connections.min(max_connections.saturating_mul(mailboxes.len().max(1))),
        max_connections_per_mailbox: max_connections,
        max_messages_per_connection: u.max_messages_per_connection,
        connect_timeout: u.connect_timeout,
        command_timeout: u.command_timeout,
        idle_timeout: u.idle_timeout,
        mailbox,
        mailboxes,
        name: name.to_owned(),
        oauth,
        graph,
        https_tls,
        hold_recheck: u.hold_recheck,
        sender_rewrite: u.sender_rewrite,
        shaping,
    })
}

fn default_upstream_port() -> u16 {
    587
}

/// Accepts "10.0.0.0/8" and also a bare address ("192.0.2.7"), meaning that one host.
fn parse_network(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net);
    }
    text.parse::<std::net::IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{text:?} is neither a CIDR network nor an IP address"))
}

fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_tls(
    cert: &Path,
    key: &Path,
    client_ca: Option<(&Path, ClientCertificate)>,
    config_key: &str,
) -> Result<rustls::ServerConfig, ConfigError> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid(format!("{config_key}.cert_file"), format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(invalid(format!("{config_key}.cert_file"), format!("{}: no certificate", cert.display())));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| invalid(format!("{config_key}.key_file"), format!("{}: {e}", key.display())))?;
    // TLS 1.2 and 1.3 only: rustls does not implement older versions.
    let builder = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| invalid(config_key, e))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some((ca_file, mode)) => {
            let ca_key = format!("{config_key}.client_ca_file");
            let mut roots = rustls::RootCertStore::empty();
            let cas = CertificateDer::pem_file_iter(ca_file)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| invalid(&ca_key, format!("{}: {e}", ca_file.display())))?;
            for ca in cas {
                roots.add(ca).map_err(|e| invalid(&ca_key, format!("{}: {e}", ca_file.display())))?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crypto_provider());
            // Optional: a device without a certificate may still use its network or a password; one that
            // presents a certificate must present a valid one (expired or foreign ones fail the handshake).
            let verifier = match mode {
                ClientCertificate::Optional => verifier.allow_unauthenticated(),
                ClientCertificate::Required => verifier,
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| invalid(&ca_key, e))?)
        }
    };
    builder.with_single_cert(certs, key_der).map_err(|e| invalid(format!("{config_key}.key_file"), e))
}

/// An OpenSSL acceptor for TLS 1.0 to 1.3. OpenSSL 3 refuses TLS 1.0/1.1 at its default security
/// level, so the level is lowered for this acceptor alone.
#[cfg(feature = "legacy-tls")]
fn legacy_tls_acceptor(cert: &Path, key: &Path, config_key: &str) -> Result<openssl::ssl::SslAcceptor, ConfigError> {
    use openssl::ssl::{SslAcceptor, SslFiletype, SslMethod, SslOptions, SslVersion};
    let err = |what: &str, e: openssl::error::ErrorStack| invalid(format!("{config_key}.{what}"), e);
    let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).map_err(|e| err("tls", e))?;
    // Mozilla's "intermediate" profile switches the old versions off with options; switch them back on.
    builder.clear_options(SslOptions::NO_TLSV1 | SslOptions::NO_TLSV1_1);
    builder.set_security_level(0);
    builder.set_cipher_list("DEFAULT:@SECLEVEL=0").map_err(|e| err("tls", e))?;
    builder.set_min_proto_version(Some(SslVersion::TLS1)).map_err(|e| err("tls", e))?;
    builder.set_certificate_chain_file(cert).map_err(|e| err("cert_file", e))?;
    builder.set_private_key_file(key, SslFiletype::PEM).map_err(|e| err("key_file", e))?;
    builder.check_private_key().map_err(|e| err("key_file", e))?;
    Ok(builder.build())
}

fn root_store(ca_file: Option<&Path>, p: &str) -> Result<rustls::RootCertStore, ConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    // The system store may be missing or partly unreadable on minimal hosts; a CA file can stand in.
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| invalid(format!("{p}.ca_file"), format!("{}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(invalid(format!("{p}.ca_file"), format!("{}: no certificate", path.display())));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| invalid(format!("{p}.ca_file"), format!("{}: {e}", path.display())))?;
        }
    }
    Ok(roots)
}

/// A TLS client configuration as the upstream's (ring, TLS 1.2+, the system store plus `ca_file`), without
/// a client certificate: for `sluice probe --listener`, which plays a device.
pub fn client_tls(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, ConfigError> {
    client_tls_with(root_store(ca_file, "probe")?, None, "probe")
}

type ClientCert = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn client_tls_with(
    roots: rustls::RootCertStore,
    client_cert: Option<ClientCert>,
    p: &str,
) -> Result<rustls::ClientConfig, ConfigError> {
    let builder = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| invalid(format!("{p}.tls"), e))?
        .with_root_certificates(roots);
    match client_cert {
        None => Ok(builder.with_no_client_auth()),
        Some((chain, key)) => {
            builder.with_client_auth_cert(chain, key).map_err(|e| invalid(format!("{p}.tls_client_key_file"), e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal(extra: &str) -> String {
        format!(
            "spool_dir = \"spool\"\nhostname = \"relay.test\"\n[[listener]]\naddress = \"127.0.0.1:2525\"\n\
             allowed_networks = [\"127.0.0.0/8\", \"::1\"]\n[upstream]\nhost = \"127.0.0.1\"\nport = 2526\ntls = \"none\"\n{extra}"
        )
    }

    #[test]
    fn embedded_default_is_valid() {
        let config = parse(EMBEDDED_DEFAULT, Path::new(".")).expect("embedded default parses");
        assert_eq!(config.listeners.len(), 1);
        assert_eq!(config.upstream.tls, UpstreamTls::None);
    }

    #[test]
    fn defaults_are_documented_values() {
        let config = parse(&minimal(""), Path::new("/etc/sluice")).unwrap();
        let l = &config.listeners[0];
        assert_eq!(l.max_message_size, 35 * 1024 * 1024);
        assert_eq!(l.max_recipients, 100);
        assert_eq!(l.idle_timeout, Duration::from_secs(300));
        assert!(l.auth && !l.insecure_allow_plaintext_auth);
        assert_eq!(l.allowed_networks.len(), 2);
        assert_eq!(config.spool_dir, Path::new("/etc/sluice/spool"));
        assert_eq!(config.retry.max_age, Duration::from_secs(5 * 86400));
        assert_eq!(config.upstream.helo_name, "relay.test");
    }

    #[test]
    fn spool_min_free_space() {
        let config = parse(&minimal(""), Path::new(".")).unwrap();
        assert_eq!(config.min_free_space, MinFree::DEFAULT);
        let config = parse(&minimal("[spool]\nmin_free_space = \"2GiB\"\n"), Path::new(".")).unwrap();
        assert_eq!(config.min_free_space, MinFree::Bytes(2 << 30));
        let config = parse(&minimal("[spool]\nmin_free_space = 0\n"), Path::new(".")).unwrap();
        assert_eq!(config.min_free_space, MinFree::Bytes(0));
        let config = parse(&minimal("[spool]\nmin_free_space = \"5%\"\n"), Path::new(".")).unwrap();
        assert_eq!(config.min_free_space, MinFree::Percent(5.0));
        let err = parse(&minimal("[spool]\nmin_free_space = \"lots\"\n"), Path::new(".")).unwrap_err().to_string();
        assert!(err.contains("spool.min_free_space") && err.contains("line "), "{err}");
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let err = parse(&minimal("[retry]\nmax_agee = \"1d\"\n"), Path::new(".")).unwrap_err().to_string();
        assert!(err.contains("max_agee"), "{err}");
        assert!(err.contains("line 11"), "{err}");
    }

    #[test]
    fn bad_network_is_named_with_its_line() {
        let text = minimal("").replace("\"::1\"", "\"10.0.0.0/33\"");
        let err = parse(&text, Path::new(".")).unwrap_err().to_string();
        assert!(err.contains("listener[0].allowed_networks (line 5)"), "{err}");
        assert!(err.contains("10.0.0.0/33"), "{err}");
    }

    #[test]
    fn locate_finds_keys_in_repeated_tables() {
        let text =
            "a = 1\n[[listener]]\naddress = \"x\"\n[[listener]]\n# c\naddress = \"y\"\n[upstream]\ntls = \"none\"\n";
        assert_eq!(locate(text, "a"), Some(1));
        assert_eq!(locate(text, "listener[0].address"), Some(3));
        assert_eq!(locate(text, "listener[1].address"), Some(6));
        assert_eq!(locate(text, "listener[1]"), Some(4));
        assert_eq!(locate(text, "upstream.tls"), Some(8));
        assert_eq!(locate(text, "upstream.port"), None);
    }

    #[test]
    fn plaintext_upstream_auth_is_refused() {
        let text = minimal("").replace(
            "tls = \"none\"",
            "tls = \"none\"\nusername = \"u\"\npassword_env = \"SLUICE_TEST_SURELY_SET_PATH\"",
        );
        // SAFETY-free: PATH is always set in test environments; we only need *some* variable.
        let text = text.replace("SLUICE_TEST_SURELY_SET_PATH", "PATH");
        let err = parse(&text, Path::new(".")).unwrap_err().to_string();
        assert!(err.contains("upstream.tls"), "{err}");
    }

    fn m365(upstream: &str) -> Result<Config, ConfigError> {
        let text =
            format!("spool_dir = \"spool\"\n[[listener]]\naddress = \"127.0.0.1:2525\"\n[upstream]\n{upstream}\n");
        // PATH stands in for a secret in the environment: always set in tests.
        parse(&text, Path::new("."))
    }

    #[test]
    fn m365_kinds_resolve_with_microsofts_defaults() {
        let oauth = m365(
            "kind = \"m365-oauth\"\nmailbox = \"relay@contoso.com\"\ntenant = \"contoso.com\"\nclient_id = \"app\"\nclient_secret_env = \"PATH\"",
        )
        .unwrap()
        .upstream;
        assert_eq!((oauth.host.as_str(), oauth.port), ("smtp.office365.com", 587));
        let o = oauth.oauth.unwrap();
        assert_eq!(o.token_url, "https://login.microsoftonline.com/contoso.com/oauth2/v2.0/token");
        assert_eq!(o.scope, "https://outlook.office365.com/.default");
        assert_eq!(oauth.connections, 3, "at most 3 connections per mailbox");
        assert_eq!(oauth.shaping.messages_per_minute, 30);
        assert_eq!(oauth.shaping.recipients_per_day, 10_000);
        assert_eq!(oauth.shaping.max_recipients_per_message, 500);
        assert_eq!(oauth.hold_recheck, Duration::from_secs(300));

        let graph = m365(
            "kind = \"m365-graph\"\nmailbox = \"relay@contoso.com\"\ntenant = \"t\"\nclient_id = \"app\"\nclient_secret_env = \"PATH\"",
        )
        .unwrap()
        .upstream;
        assert_eq!(
            graph.graph.unwrap().send_mail_url,
            "https://graph.microsoft.com/v1.0/users/relay@contoso.com/sendMail"
        );
        assert_eq!(graph.oauth.unwrap().scope, "https://graph.microsoft.com/.default");

        let basic = m365("kind = \"m365-basic\"\nmailbox = \"scanner@contoso.com\"\npassword_env = \"PATH\"\n");
        assert!(basic.unwrap().warnings.iter().any(|w| w.contains("retiring")));

        let connector = m365("kind = \"m365-connector\"\nhost = \"contoso-com.mail.protection.outlook.com\"").unwrap();
        assert_eq!(connector.upstream.port, 25);
        assert_eq!(connector.upstream.shaping.messages_per_minute, 0, "connectors have no 30/min cap");
    }

    #[test]
    fn m365_mistakes_name_their_key() {
        let err = |u: &str| m365(u).unwrap_err().to_string();
        assert!(
            err("kind = \"m365-oauth\"\nmailbox = \"a@b.c\"\ntenant = \"t\"\nclient_secret_env = \"PATH\"")
                .contains("upstream.client_id")
        );
        assert!(
            err("kind = \"m365-oauth\"\nmailbox = \"a@b.c\"\ntenant = \"t\"\nclient_id = \"x\"")
                .contains("upstream.client_secret_file")
        );
        assert!(err("kind = \"m365-graph\"\nhost = \"x\"").contains("upstream.host"));
        assert!(err("kind = \"m365-connector\"").contains("upstream.host"));
        assert!(err("kind = \"smtp\"\nhost = \"x\"\nclient_id = \"y\"").contains("upstream.client_id"));
        assert!(err("kind = \"m365-oauth\"\nmailbox = \"a@b.c\"\ntoken_url = \"http://x\"\nclient_id = \"x\"\nclient_secret_env = \"PATH\"").contains("upstream.token_url"));
    }

    /// Two upstreams, a pool and routes; `routes` is appended.
    fn routed(routes: &str) -> Result<Config, ConfigError> {
        let text = format!(
            "spool_dir = \"spool\"\n[[listener]]\naddress = \"127.0.0.1:2525\"\n\
             [upstreams.m365]\nkind = \"m365-oauth\"\nmailboxes = [\"scanner@contoso.com\", \"alerts@contoso.com\"]\n\
             tenant = \"contoso.com\"\nclient_id = \"app\"\nclient_secret_env = \"PATH\"\n\
             [upstreams.smarthost]\nhost = \"127.0.0.1\"\nport = 2526\ntls = \"none\"\n{routes}"
        );
        parse(&text, Path::new("."))
    }

    #[test]
    fn routes_upstreams_and_pools_resolve() {
        let config = routed(
            "[[routes]]\nsenders = [\"*@scan.contoso.com\", \"contoso.com\"]\nusers = [\"erp\"]\n\
             networks = [\"10.1.0.0/16\"]\nupstream = \"m365\"\nmailbox = \"Alerts@contoso.com\"\n\
             sender_rewrite = \"rewrite\"\n[[routes]]\nupstream = \"smarthost\"\n",
        )
        .unwrap();
        assert_eq!(config.upstreams.len(), 2);
        let m365 = config.upstreams.iter().find(|u| u.name == "m365").unwrap();
        assert_eq!(m365.mailboxes, ["scanner@contoso.com", "alerts@contoso.com"]);
        assert_eq!(m365.mailbox.as_deref(), Some("scanner@contoso.com"));
        assert_eq!(m365.connections, 4, "2 mailboxes x 3 connections allow the default 4");
        assert_eq!(m365.max_connections_per_mailbox, 3);
        let first = &config.routing.routes[0].choice;
        assert_eq!(first.mailbox.as_deref(), Some("alerts@contoso.com"), "the pool's spelling");
        assert_eq!(first.sender_rewrite, Some(SenderRewrite::Mailbox));
        assert_eq!(config.routing.fallback.upstream, "smarthost", "the route without conditions");
        assert_eq!(config.upstream.name, "smarthost");
        // A single [upstream] is "default" and takes everything.
        let single = parse(&minimal(""), Path::new(".")).unwrap();
        assert_eq!(single.upstream.name, DEFAULT_UPSTREAM);
        assert_eq!(single.routing.fallback.upstream, DEFAULT_UPSTREAM);
    }

    #[test]
    fn route_mistakes_name_their_key_and_line() {
        let err = |routes: &str| routed(routes).unwrap_err().to_string();
        let e =
            err("[[routes]]\nupstream = \"smarthost\"\n[[routes]]\nsenders = [\"a.com\"]\nupstream = \"nowhere\"\n");
        assert!(e.contains("routes[1].upstream (line 18)") && e.contains("nowhere"), "{e}");
        let e = err("[[routes]]\nupstream = \"m365\"\nmailbox = \"printer@contoso.com\"\n");
        assert!(e.contains("routes[0].mailbox (line 16)") && e.contains("not in the pool"), "{e}");
        let e = err("[[routes]]\nupstream = \"smarthost\"\nmailbox = \"a@contoso.com\"\n");
        assert!(e.contains("routes[0].mailbox") && e.contains("sends as no mailbox"), "{e}");
        let e = err("[[routes]]\nupstream = \"smarthost\"\nsender_rewrite = \"rewrite\"\n");
        assert!(e.contains("routes[0].sender_rewrite"), "{e}");
        let e = err("[[routes]]\nsenders = [\"a b\"]\nupstream = \"m365\"\n");
        assert!(e.contains("routes[0].senders"), "{e}");
        let e = err("[[routes]]\nnetworks = [\"10.0.0.0/33\"]\nupstream = \"m365\"\n");
        assert!(e.contains("routes[0].networks"), "{e}");
        // Several upstreams, none "default", no route without conditions: where would the rest go?
        let e = err("[[routes]]\nsenders = [\"contoso.com\"]\nupstream = \"m365\"\n");
        assert!(e.contains("routes") && e.contains("no default"), "{e}");
        let e = err("[[routes]]\nsenders = [\"contoso.com\"]\n");
        assert!(e.contains("routes[0].upstream") && e.contains("none is named"), "{e}");
        // [upstream] is "default": an [upstreams.default] beside it is a duplicate.
        let e = parse(&minimal("[upstreams.default]\nhost = \"x\"\n"), Path::new(".")).unwrap_err().to_string();
        assert!(e.contains("upstreams.default (line 10)") && e.contains("duplicate"), "{e}");
        let e = routed("").unwrap_err().to_string();
        assert!(e.contains("no default"), "{e}");
    }

    #[test]
    fn pool_mistakes_name_their_key() {
        let err = |u: &str| m365(u).unwrap_err().to_string();
        let oauth = "kind = \"m365-oauth\"\ntenant = \"t\"\nclient_id = \"x\"\nclient_secret_env = \"PATH\"\n";
        let e = err(&format!("{oauth}mailboxes = [\"a@b.c\", \"A@b.c\"]"));
        assert!(e.contains("upstream.mailboxes") && e.contains("duplicate"), "{e}");
        let e = err(&format!("{oauth}mailbox = \"a@b.c\"\nmailboxes = [\"d@b.c\"]"));
        assert!(e.contains("upstream.mailboxes") && e.contains("not both"), "{e}");
        let e = err("kind = \"m365-basic\"\nmailboxes = [\"a@b.c\", \"d@b.c\"]\npassword_env = \"PATH\"");
        assert!(e.contains("upstream.mailboxes") && e.contains("m365-basic"), "{e}");
        let e = err(&format!("{oauth}mailboxes = [\"not-an-address\"]"));
        assert!(e.contains("upstream.mailboxes"), "{e}");
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s = Secret("hunter2".into());
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}

#[cfg(test)]
mod example_files {
    use super::*;

    /// Every example must at least be free of unknown keys and type errors, so docs cannot drift.
    #[test]
    fn examples_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).unwrap();
                if let Err(e) = toml::from_str::<RawConfig>(&text) {
                    panic!("{}: {e}", path.display());
                }
                seen += 1;
            }
        }
        assert!(seen >= 2, "examples/ should hold the documented examples");
    }

    #[test]
    fn local_sink_example_resolves() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/local-sink.toml");
        let config = load(&path).unwrap();
        assert_eq!(config.listeners[0].address.port(), 2525);
    }
}
