//! Where mail leaves sluice: the transports that hand a queued message to the next hop, and the one
//! function ([`classify::classify`]) that turns whatever happened into delivered / temporary / permanent.

pub mod classify;
pub mod smtp;

use smtp_wire::Reply;

pub use classify::{Disposition, Outcome, classify};

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
