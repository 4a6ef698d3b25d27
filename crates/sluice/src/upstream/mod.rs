//! Where mail leaves sluice: the transports that hand a queued message to the next hop, and the one
//! function ([`classify::classify`]) that turns whatever happened into delivered / temporary / permanent.

pub mod classify;
pub mod graph;
pub mod graph_large;
pub mod microsoft;
pub mod rewrite;
pub mod smtp;

use std::sync::Arc;

use smtp_wire::Reply;

pub use classify::{Disposition, Outcome, classify};

use crate::config::{Secret, UpstreamConfig, UpstreamKind};
use crate::oauth::{TokenError, TokenSource};
use smtp::{Auth, SmtpConnection};

/// What a transport needs to know about a message besides its bytes.
#[derive(Debug, Clone)]
pub struct Envelope<'a> {
    /// Empty for the null reverse-path.
    pub sender: &'a str,
    pub recipients: Vec<&'a str>,
    pub eight_bit: bool,
    pub smtputf8: bool,
}

/// Trouble talking to the upstream, as opposed to a verdict on the message.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("TLS failure: {0}")]
    Tls(String),
    #[error("timed out waiting for the reply to {0}")]
    Timeout(&'static str),
    #[error("connection closed by the upstream")]
    Closed,
    #[error("I/O error: {0}")]
    Io(String),
    /// The upstream refused the session itself (greeting, EHLO, STARTTLS or AUTH).
    #[error("upstream refused the session: {0}")]
    Session(Reply),
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A cached connection turned out dead before the new transaction began: nothing was sent, so the
    /// message can go straight out again on a fresh connection.
    #[error("cached connection was no longer usable: {0}")]
    Stale(String),
    /// Entra ID refused to issue a token (AADSTS error): configuration, see `microsoft::lookup`.
    #[error("{0}")]
    TokenRefused(String),
    /// The token endpoint was unreachable or failing.
    #[error("{0}")]
    TokenUnavailable(String),
}

impl From<TokenError> for TransportError {
    fn from(err: TokenError) -> Self {
        match err {
            TokenError::Refused { .. } => TransportError::TokenRefused(err.to_string()),
            TokenError::Unavailable(_) => TransportError::TokenUnavailable(err.to_string()),
        }
    }
}

/// The upstream as the scheduler uses it: its configuration plus what lives as long as the process (the
/// shared token cache, the HTTPS client).
pub struct Upstream {
    config: UpstreamConfig,
    tokens: Option<Arc<TokenSource>>,
    http: Option<reqwest::Client>,
}

/// One open path to the upstream: an SMTP session, or a Graph sender (HTTP keeps its own pool).
pub enum Connection {
    Smtp(SmtpConnection),
    Graph(graph::GraphSender),
}

impl Connection {
    /// Messages handed over on this connection.
    pub fn transactions(&self) -> usize {
        match self {
            Connection::Smtp(c) => c.transactions,
            Connection::Graph(g) => g.transactions,
        }
    }

    /// Sends one message: a verdict per recipient, or an error when no verdict was had.
    pub async fn send(&mut self, envelope: &Envelope<'_>, body: &[u8]) -> Result<Vec<Outcome>, TransportError> {
        match self {
            Connection::Smtp(c) => c.send(envelope, body).await,
            Connection::Graph(g) => g.send(envelope, body).await,
        }
    }

    pub async fn quit(self) {
        match self {
            Connection::Smtp(c) => c.quit().await,
            Connection::Graph(_) => {}
        }
    }
}

impl Upstream {
    pub fn new(config: UpstreamConfig) -> Upstream {
        let http = (config.oauth.is_some() || config.graph.is_some())
            .then(|| crate::oauth::http_client(&config.https_tls, config.connect_timeout, config.command_timeout));
        let tokens = match (&config.oauth, &http) {
            (Some(oauth), Some(http)) => Some(Arc::new(TokenSource::new(http.clone(), oauth.clone()))),
            _ => None,
        };
        Upstream { config, tokens, http }
    }

    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    /// The token source's request counts, for kinds that use OAuth.
    pub fn token_stats(&self) -> Option<crate::oauth::TokenStats> {
        self.tokens.as_ref().map(|t| t.stats())
    }

    /// Opens a connection as the configured mailbox (the first of a pool).
    pub async fn connect(&self) -> Result<Connection, TransportError> {
        self.connect_as(self.config.mailbox.as_deref()).await
    }

    /// Opens a connection, authenticated as the kind requires, for `mailbox` of the pool (the XOAUTH2
    /// user, the Graph `/users/{mailbox}`; ignored by the kinds without a mailbox). With XOAUTH2, a token
    /// the server refuses (`535 5.7.3`) is dropped from the cache and the connection is tried once more
    /// with a fresh token: a token can be revoked or expire early, and one refusal must not hold the route.
    pub async fn connect_as(&self, mailbox: Option<&str>) -> Result<Connection, TransportError> {
        let config = &self.config;
        let mailbox = mailbox.or(config.mailbox.as_deref());
        match config.kind {
            UpstreamKind::M365Graph => {
                let tokens = self.tokens.clone().expect("m365-graph has OAuth configured");
                let http = self.http.clone().expect("m365-graph has an HTTP client");
                let mut graph = config.graph.clone().expect("m365-graph has a Graph configuration");
                if let Some(mailbox) = mailbox {
                    graph.send_mail_url = format!("{}/{mailbox}/sendMail", graph.users_url);
                    graph.messages_url = format!("{}/{mailbox}/messages", graph.users_url);
                }
                Ok(Connection::Graph(graph::GraphSender::new(http, graph, tokens)))
            }
            // m365-hve with client_id: XOAUTH2 like m365-oauth; with a password it takes the path below.
            UpstreamKind::M365Oauth | UpstreamKind::M365Hve if self.tokens.is_some() => {
                let tokens = self.tokens.as_ref().expect("checked");
                let user = mailbox.unwrap_or_default();
                let token = tokens.token().await?;
                match SmtpConnection::connect_with(config, Auth::XOAuth2 { user, token: token.expose() }).await {
                    Err(TransportError::Session(reply)) if is_auth_unsuccessful(&reply) => {
                        tracing::info!(mailbox = user, "XOAUTH2 refused; fetching a new token and trying once more");
                        tokens.invalidate(&token).await;
                        let fresh: Secret = tokens.token().await?;
                        let auth = Auth::XOAuth2 { user, token: fresh.expose() };
                        SmtpConnection::connect_with(config, auth).await.map(Connection::Smtp)
                    }
                    other => other.map(Connection::Smtp),
                }
            }
            _ => SmtpConnection::connect(config).await.map(Connection::Smtp),
        }
    }
}

/// `535 5.7.3 Authentication unsuccessful`: what Exchange says to a bad or expired token.
fn is_auth_unsuccessful(reply: &Reply) -> bool {
    reply.code == 535 && reply.enhanced.is_none_or(|e| e.class == 5 && e.subject == 7 && e.detail == 3)
}

impl From<std::io::Error> for TransportError {
    fn from(err: std::io::Error) -> Self {
        match err.kind() {
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::ConnectionAborted => TransportError::Closed,
            _ => TransportError::Io(err.to_string()),
        }
    }
}
