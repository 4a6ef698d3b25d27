//! Microsoft Graph `sendMail` (reference §1e): `POST {graph}/v1.0/users/{mailbox}/sendMail` with the whole
//! MIME message base64-encoded as `text/plain`; `202 Accepted` means Exchange took it.
//!
//! Graph's MIME send takes its recipients from the message's To, Cc and Bcc headers, not from an
//! envelope. sluice's envelope is the truth, so envelope recipients the headers do not name (the Bcc
//! recipients of the original submission, which a client never writes into the message) are added in a
//! `Bcc:` header, as Microsoft documents for MIME sends; Exchange removes it before delivery.
//!
//! Messages over [`SEND_MAIL_LIMIT`] go through a draft and attachment upload sessions instead
//! (`graph_large.rs`), with the same MIME.
//!
//! Every HTTP answer becomes an [`Outcome::Http`] for every recipient and goes through the one classifier.
//! `Retry-After` (429, 503) travels with it to the scheduler.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use tracing::{info, warn};

use super::{Envelope, Outcome, TransportError};
use crate::config::GraphConfig;
use crate::oauth::{TokenSource, error_chain};

/// Messages larger than this (after the envelope's `Bcc:` is added) go through a draft: their base64
/// would be over Graph's request limit of about 4 MB (reference §1e: larger messages, 3–150 MB, take the
/// draft and upload-session path).
pub const SEND_MAIL_LIMIT: usize = 3 * 1024 * 1024;

pub struct GraphSender {
    pub(super) http: reqwest::Client,
    pub(super) config: GraphConfig,
    pub(super) tokens: Arc<TokenSource>,
    pub transactions: usize,
}

/// Graph's answer to one request.
pub(super) struct Answer {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub text: String,
}

impl Answer {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The answer as an outcome for the classifier; `step` names the request in the reason.
    pub fn outcome(&self, step: &str) -> Outcome {
        let reason = if self.ok() { "Accepted".to_owned() } else { format!("{step}: {}", graph_error(&self.text)) };
        Outcome::Http { status: self.status, reason, retry_after: self.retry_after }
    }
}

impl GraphSender {
    pub fn new(http: reqwest::Client, config: GraphConfig, tokens: Arc<TokenSource>) -> GraphSender {
        GraphSender { http, config, tokens, transactions: 0 }
    }

    pub async fn send(&mut self, envelope: &Envelope<'_>, body: &[u8]) -> Result<Vec<Outcome>, TransportError> {
        self.transactions += 1;
        let n = envelope.recipients.len();
        let mime = with_envelope_bcc(body, &envelope.recipients);
        let extra = header_recipients(body)
            .into_iter()
            .filter(|h| !envelope.recipients.iter().any(|r| r.eq_ignore_ascii_case(h)))
            .count();
        if extra > 0 {
            // Graph sends to every header recipient: ones outside this envelope (delivered before, or meant
            // for another route) get it too. Nothing in the MIME API prevents that; say it.
            warn!(
                extra,
                "Graph sendMail: the message's headers name recipients outside its envelope; Graph sends to them too"
            );
        }
        if mime.len() > SEND_MAIL_LIMIT {
            let outcome = super::graph_large::send_large(self, &mime).await?;
            return Ok(vec![outcome; n]);
        }
        let payload = base64::engine::general_purpose::STANDARD.encode(&mime);
        let answer = self
            .request(
                reqwest::Method::POST,
                &self.config.send_mail_url,
                true,
                Some("text/plain"),
                &[],
                payload.as_bytes(),
            )
            .await?;
        Ok(vec![answer.outcome("sendMail"); n])
    }

    /// One Graph request. With `authorize`, it carries the cached token; a 401 drops that token and the
    /// request is made once more with a fresh one before its answer is judged (an expired or revoked
    /// token). Transport trouble is an error; every HTTP answer is returned.
    pub(super) async fn request(
        &self,
        method: reqwest::Method,
        url: &str,
        authorize: bool,
        content_type: Option<&str>,
        headers: &[(reqwest::header::HeaderName, String)],
        body: &[u8],
    ) -> Result<Answer, TransportError> {
        let mut retried = false;
        loop {
            let mut builder = self.http.request(method.clone(), url);
            let token = if authorize {
                let token = self.tokens.token().await?;
                builder = builder.bearer_auth(token.expose());
                Some(token)
            } else {
                None
            };
            if let Some(ct) = content_type {
                builder = builder.header(reqwest::header::CONTENT_TYPE, ct);
            }
            for (name, value) in headers {
                builder = builder.header(name, value);
            }
            let response = builder.body(body.to_vec()).send().await.map_err(|e| {
                if e.is_connect() {
                    TransportError::Connect(error_chain(&e))
                } else if e.is_timeout() {
                    TransportError::Timeout("a Graph request")
                } else {
                    TransportError::Io(error_chain(&e))
                }
            })?;
            let status = response.status().as_u16();
            let header =
                |name| response.headers().get(name).and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok());
            let retry_after = header(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let text = response.text().await.unwrap_or_default();
            if status == 401
                && !retried
                && let Some(token) = &token
            {
                info!("Graph refused the token; fetching a new one and trying once more");
                self.tokens.invalidate(token).await;
                retried = true;
                continue;
            }
            return Ok(Answer { status, retry_after, text });
        }
    }
}

/// "code: message" from Graph's `{"error":{"code","message"}}`, or the start of the body.
pub(crate) fn graph_error(body: &str) -> String {
    let parsed: Option<(String, String)> = serde_json::from_str::<serde_json::Value>(body).ok().and_then(|v| {
        let e = v.get("error")?;
        Some((e.get("code")?.as_str()?.to_owned(), e.get("message").and_then(|m| m.as_str()).unwrap_or("").to_owned()))
    });
    match parsed {
        Some((code, message)) => format!("{code}: {message}"),
        None => body.chars().take(200).collect(),
    }
}

/// The header section (up to the first empty line), unfolded into (name, value) pairs.
pub(super) fn headers(message: &[u8]) -> Vec<(String, String)> {
    let end = message.windows(4).position(|w| w == b"\r\n\r\n").map_or(message.len(), |p| p + 2);
    let text = String::from_utf8_lossy(&message[..end]);
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            out.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    out
}

/// Addresses in an address-list header value: those in angle brackets, else bare `local@domain` items.
fn addresses(value: &str) -> Vec<String> {
    let mut found = Vec::new();
    for item in split_list(value) {
        let item = item.trim();
        if let (Some(open), Some(close)) = (item.rfind('<'), item.rfind('>'))
            && open < close
        {
            found.push(item[open + 1..close].trim().to_owned());
        } else if item.contains('@') {
            found.push(item.trim_matches('"').to_owned());
        }
    }
    found
}

/// Splits an address list at commas that are not inside quotes or angle brackets.
fn split_list(value: &str) -> Vec<&str> {
    let (mut parts, mut start, mut quoted, mut angle) = (Vec::new(), 0, false, false);
    for (i, c) in value.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ',' if !quoted && !angle => {
                parts.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&value[start..]);
    parts
}

/// Every address the To, Cc and Bcc headers name.
pub fn header_recipients(message: &[u8]) -> Vec<String> {
    headers(message)
        .into_iter()
        .filter(|(name, _)| matches!(name.as_str(), "to" | "cc" | "bcc"))
        .flat_map(|(_, value)| addresses(&value))
        .collect()
}

/// The message with a `Bcc:` header first for the envelope recipients its headers do not name.
pub fn with_envelope_bcc(message: &[u8], recipients: &[&str]) -> Vec<u8> {
    let named = header_recipients(message);
    let missing: Vec<&str> =
        recipients.iter().copied().filter(|r| !named.iter().any(|n| n.eq_ignore_ascii_case(r))).collect();
    if missing.is_empty() {
        return message.to_vec();
    }
    let mut out = Vec::with_capacity(message.len() + 16 + missing.iter().map(|m| m.len() + 4).sum::<usize>());
    out.extend_from_slice(b"Bcc: ");
    for (i, address) in missing.iter().enumerate() {
        if i > 0 {
            // One address a line keeps the header within line limits however many there are.
            out.extend_from_slice(b",\r\n ");
        }
        out.push(b'<');
        out.extend_from_slice(address.as_bytes());
        out.push(b'>');
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(message);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"From: Scanner <scanner@contoso.com>\r\nTo: \"Doe, Alice\" <alice@contoso.com>,\r\n bob@fabrikam.example\r\nCc: carol@contoso.com\r\nSubject: x\r\n\r\nTo: not-a-header@x.example\r\n";

    #[test]
    fn header_recipients_follow_folding_and_quotes() {
        assert_eq!(header_recipients(MSG), ["alice@contoso.com", "bob@fabrikam.example", "carol@contoso.com"]);
    }

    #[test]
    fn bcc_only_envelope_recipients_are_added() {
        let out = with_envelope_bcc(MSG, &["alice@contoso.com", "hidden@contoso.com", "Carol@Contoso.com"]);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("Bcc: <hidden@contoso.com>\r\nFrom:"), "{text}");
        assert_eq!(with_envelope_bcc(MSG, &["alice@contoso.com"]), MSG);
    }

    #[test]
    fn graph_errors_are_readable() {
        assert_eq!(
            graph_error(r#"{"error":{"code":"ErrorSendAsDenied","message":"no right"}}"#),
            "ErrorSendAsDenied: no right"
        );
    }
}
