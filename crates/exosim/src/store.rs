//! Inspection: every message the simulator accepted, with its envelope, the identity that sent
//! it, the path it came by and the raw MIME, for tests (library accessor) and for the HTTP API
//! (`GET /messages`).

use std::time::SystemTime;

use serde::Serialize;

/// How a message reached Exchange Online.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SubmitPath {
    /// SMTP AUTH client submission (smtp.office365.com).
    SmtpAuth,
    /// Microsoft Graph sendMail.
    Graph,
    /// Relay through an inbound connector (MX endpoint).
    Connector,
    /// Direct send (MX endpoint, anonymous).
    DirectSend,
}

/// One accepted message.
#[derive(Clone, Debug, Serialize)]
pub struct StoredMessage {
    /// Sequence number, from 1.
    pub seq: u64,
    /// The Message-ID Exchange reported (the header's, or one it made up).
    pub message_id: String,
    /// When it was accepted (simulator clock), seconds since the Unix epoch.
    pub accepted_at: f64,
    /// The path.
    pub path: SubmitPath,
    /// Who: the mailbox for a user, `app:<client id>` for an app.
    pub identity: String,
    /// The mailbox the identity acted for.
    pub mailbox: String,
    /// MAIL FROM (empty for the null sender).
    pub mail_from: String,
    /// RCPT TO, in order.
    pub rcpt_to: Vec<String>,
    /// The client's IP address.
    pub client_ip: String,
    /// The session ran over TLS.
    pub tls: bool,
    /// A copy went to Sent Items (SMTP AUTH and Graph by default; never for connectors).
    pub saved_to_sent_items: bool,
    /// The message as received (after dot-unstuffing). In JSON it is a (lossy) UTF-8 string,
    /// readable in a terminal; the library accessor has the exact bytes.
    #[serde(rename = "raw", serialize_with = "lossy")]
    pub raw: Vec<u8>,
}

fn lossy<S: serde::Serializer>(raw: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(raw))
}

/// Seconds since the epoch, for JSON.
pub fn epoch_secs(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}
