//! Microsoft Graph `POST /v1.0/users/{upn}/sendMail` (reference §1e): a bearer token for Graph
//! with the `Mail.Send` role, a JSON message or a base64 MIME body (`Content-Type:
//! text/plain`), `202 Accepted` with an empty body on success.
//!
//! Errors are Graph's `{"error":{"code","message"}}` objects. The reference names 400
//! `ErrorMimeContentInvalidBase64String`, 413 above about 4 MB and 429 with `Retry-After`; the
//! other codes and all messages are Graph's as far as we know (not in the reference).
//! Throttling: 4 concurrent requests per mailbox and app (reference §1e) answer 429, and so
//! does the 10,000-requests-per-10-minutes budget (every Graph request counts, on the simulator
//! clock). The large-message path (draft, upload session, send) is in `graph_large.rs`. A fault at step `graph-send-mail`
//! replies with its code as the HTTP status and its text as the error code.

use std::sync::Arc;

use base64::Engine;
use hyper::StatusCode;
use serde_json::{Value, json};

use super::{Resp, json};
use crate::directory::{Identity, MAIL_SEND};
use crate::faults::{Action, Step};
use crate::sim::Shared;
use crate::store::{StoredMessage, SubmitPath, epoch_secs};
use crate::tokens::{Audience, Subject, TokenError, random_hex};

/// "about 4 MB" (reference §1e): Graph's request size limit.
pub(super) const MAX_REQUEST: usize = 4 * 1024 * 1024;
/// Concurrent requests per mailbox per app.
const MAX_CONCURRENT: u32 = 4;
/// Seconds a throttled client is told to wait.
const RETRY_AFTER: &str = "30";

pub(super) fn error(status: StatusCode, code: &str, message: &str) -> Resp {
    json(status, &json!({"error": {"code": code, "message": message}}))
}

fn throttled(message: &str) -> Resp {
    let mut r = error(StatusCode::TOO_MANY_REQUESTS, "ApplicationThrottled", message);
    r.headers_mut().insert(hyper::header::RETRY_AFTER, hyper::header::HeaderValue::from_static(RETRY_AFTER));
    r
}

/// Holds one of the 4 request slots of a (app, mailbox) pair.
struct Slot {
    shared: Arc<Shared>,
    key: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut u) = self.shared.usage.lock() {
            u.disconnect(&self.key);
        }
    }
}

pub(super) async fn send_mail(
    shared: Arc<Shared>,
    peer: std::net::SocketAddr,
    upn: &str,
    authorization: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> Resp {
    let (identity_name, mailbox) = match authorize(&shared, upn, authorization, MAIL_SEND) {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let dir = shared.dir();
    let _slot = {
        let key = format!("graph:{identity_name}:{mailbox}");
        let mut usage = shared.usage.lock().expect("usage lock");
        if !usage.try_connect(&key, MAX_CONCURRENT) {
            return throttled("Application is over its MailboxConcurrency limit.");
        }
        Slot { shared: shared.clone(), key }
    };
    match shared.fault(Step::GraphSendMail, Some(&mailbox)) {
        Some(Action::Reply { code, text, .. }) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return if status == StatusCode::TOO_MANY_REQUESTS {
                throttled(&text)
            } else {
                error(status, &text, &text)
            };
        }
        Some(Action::Delay { ms }) => {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        // HTTP has no "close without answer" we can do from a handler; answer 503 as a
        // front end that lost its back end does.
        Some(Action::Disconnect) => {
            return error(StatusCode::SERVICE_UNAVAILABLE, "ServiceNotAvailable", "Service unavailable.");
        }
        None => {}
    }
    if body.len() > MAX_REQUEST {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestBodyTooLarge",
            "The maximum request length supported is 4MB.",
        );
    }
    let ct = content_type.to_ascii_lowercase();
    let (raw, save, rcpts) = if ct.starts_with("text/plain") {
        let compact: Vec<u8> = body.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(compact) else {
            return error(
                StatusCode::BAD_REQUEST,
                "ErrorMimeContentInvalidBase64String",
                "Invalid base64 string for MIME content.",
            );
        };
        let headers = crate::smtp::parse_headers(&raw);
        let mut rcpts = Vec::new();
        for h in ["to", "cc", "bcc"] {
            rcpts.extend(crate::smtp::header_addresses(&headers, h).unwrap_or_default());
        }
        (raw, true, rcpts)
    } else if ct.starts_with("application/json") {
        match from_json(body) {
            Ok(v) => v,
            Err(resp) => return resp,
        }
    } else {
        return error(
            StatusCode::BAD_REQUEST,
            "RequestBodyRead",
            "Cannot read the request body: unsupported content type.",
        );
    };
    if rcpts.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "ErrorInvalidRecipients",
            "At least one recipient isn't valid., Recipient is missing.",
        );
    }
    // SendAs (reference §6): `from`/`sender` must be the mailbox or one it may send as.
    let headers = crate::smtp::parse_headers(&raw);
    let claimed: Vec<String> = ["from", "sender"]
        .iter()
        .flat_map(|h| crate::smtp::header_addresses(&headers, h).unwrap_or_default())
        .collect();
    let as_mailbox = Identity::User { mailbox: mailbox.clone(), basic: false };
    if claimed.iter().any(|a| !dir.may_send_as(&as_mailbox, a)) {
        return error(
            StatusCode::FORBIDDEN,
            "ErrorSendAsDenied",
            "The user account which was used to submit this request does not have the right to send mail on behalf of the specified sending account., Cannot submit message.",
        );
    }
    let message_id = crate::smtp::parse_headers(&raw)
        .into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("message-id"))
        .map(|(_, v)| v)
        .unwrap_or_else(|| format!("<{}@exosim.graph>", random_hex(16)));
    shared.store(StoredMessage {
        seq: 0,
        message_id,
        accepted_at: epoch_secs(shared.now()),
        path: SubmitPath::Graph,
        identity: identity_name,
        mailbox: mailbox.clone(),
        mail_from: mailbox,
        rcpt_to: rcpts,
        client_ip: peer.ip().to_string(),
        tls: true,
        saved_to_sent_items: save,
        raw,
    });
    let mut r = json(StatusCode::ACCEPTED, &Value::Null);
    *r.body_mut() = http_body_util::Full::new(hyper::body::Bytes::new());
    r.headers_mut().remove(hyper::header::CONTENT_TYPE);
    r
}

/// A JSON sendMail body → (MIME we store, saveToSentItems, recipients).
#[allow(clippy::result_large_err)]
fn from_json(body: &[u8]) -> Result<(Vec<u8>, bool, Vec<String>), Resp> {
    let bad = |m: &str| error(StatusCode::BAD_REQUEST, "ErrorInvalidRequest", m);
    let v: Value = serde_json::from_slice(body).map_err(|_| bad("Invalid JSON body."))?;
    let msg = v.get("message").ok_or_else(|| bad("Empty Payload, JSON content expected."))?;
    let save = v.get("saveToSentItems").and_then(Value::as_bool).unwrap_or(true);
    let (mime, _, rcpts) = mime_from_message(msg)?;
    Ok((mime, save, rcpts))
}

/// A Graph message resource → (MIME we store, true, recipients).
#[allow(clippy::result_large_err)]
pub(super) fn mime_from_message(msg: &Value) -> Result<(Vec<u8>, bool, Vec<String>), Resp> {
    let list = |k: &str| -> Vec<String> {
        msg.get(k)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|r| r.pointer("/emailAddress/address")?.as_str())
                    .map(str::to_ascii_lowercase)
                    .collect()
            })
            .unwrap_or_default()
    };
    let (to, cc, bcc) = (list("toRecipients"), list("ccRecipients"), list("bccRecipients"));
    let subject = msg.get("subject").and_then(Value::as_str).unwrap_or("");
    let content = msg.pointer("/body/content").and_then(Value::as_str).unwrap_or("");
    let html = msg.pointer("/body/contentType").and_then(Value::as_str).is_some_and(|t| t.eq_ignore_ascii_case("html"));
    let mut mime = String::new();
    if let Some(from) = msg.pointer("/from/emailAddress/address").and_then(Value::as_str) {
        mime.push_str(&format!("From: {from}\r\n"));
    }
    if !to.is_empty() {
        mime.push_str(&format!("To: {}\r\n", to.join(", ")));
    }
    if !cc.is_empty() {
        mime.push_str(&format!("Cc: {}\r\n", cc.join(", ")));
    }
    mime.push_str(&format!("Subject: {subject}\r\nMIME-Version: 1.0\r\n"));
    mime.push_str(&format!(
        "Content-Type: text/{}; charset=utf-8\r\n\r\n{content}\r\n",
        if html { "html" } else { "plain" }
    ));
    let rcpts = to.into_iter().chain(cc).chain(bcc).collect();
    Ok((mime.into_bytes(), true, rcpts))
}

/// Checks the bearer token for Graph, the user and the permission (an application role, or
/// a delegated scope for the signed-in user's own mailbox), then the request budget; returns
/// (identity as stored, mailbox). (The error is the finished response: boxing it would only
/// move the allocation.)
#[allow(clippy::result_large_err)]
pub(super) fn authorize(
    shared: &Shared,
    upn: &str,
    authorization: Option<&str>,
    permission: &str,
) -> Result<(String, String), Resp> {
    let Some(token) = authorization.and_then(|a| a.strip_prefix("Bearer ")) else {
        return Err(error(StatusCode::UNAUTHORIZED, "InvalidAuthenticationToken", "Access token is empty."));
    };
    let subject = {
        let tokens = shared.tokens.lock().expect("tokens lock");
        match tokens.verify(token.trim(), Audience::Graph, shared.now()) {
            Ok(g) => g.subject.clone(),
            Err(TokenError::Expired) => {
                return Err(error(
                    StatusCode::UNAUTHORIZED,
                    "InvalidAuthenticationToken",
                    "Lifetime validation failed, the token is expired.",
                ));
            }
            Err(TokenError::WrongAudience) => {
                return Err(error(
                    StatusCode::UNAUTHORIZED,
                    "InvalidAuthenticationToken",
                    "Access token validation failure. Invalid audience.",
                ));
            }
            Err(TokenError::Unknown) => {
                return Err(error(
                    StatusCode::UNAUTHORIZED,
                    "InvalidAuthenticationToken",
                    "IDX14100: JWT is not well formed.",
                ));
            }
        }
    };
    let dir = shared.dir();
    let Some(mailbox) = dir.mailbox(upn).map(|m| m.address.clone()) else {
        return Err(error(
            StatusCode::NOT_FOUND,
            "ErrorInvalidUser",
            &format!("The requested user '{upn}' is invalid."),
        ));
    };
    let identity_name = match &subject {
        Subject::App { client_id, roles } => {
            if !roles.iter().any(|r| r == permission) {
                return Err(error(
                    StatusCode::FORBIDDEN,
                    "ErrorAccessDenied",
                    "Access is denied. Check credentials and try again.",
                ));
            }
            format!("app:{client_id}")
        }
        Subject::User { upn: user, scopes, .. } => {
            if *user != mailbox || !scopes.iter().any(|s| s.eq_ignore_ascii_case(permission)) {
                return Err(error(
                    StatusCode::FORBIDDEN,
                    "ErrorAccessDenied",
                    "Access is denied. Check credentials and try again.",
                ));
            }
            user.clone()
        }
    };
    budget(shared, &identity_name, &mailbox)?;
    Ok((identity_name, mailbox))
}

/// The 10,000 requests per 10 minutes per mailbox per app (reference §1e): over it, 429 with
/// `Retry-After` the seconds until the oldest counted request leaves the window.
#[allow(clippy::result_large_err)]
fn budget(shared: &Shared, identity: &str, mailbox: &str) -> Result<(), Resp> {
    let limit = shared.dir().config.limits.graph_requests_per_10_minutes;
    let now = shared.now();
    let mut graph = shared.graph.lock().expect("graph lock");
    let seen = graph.requests.entry(format!("{identity}:{mailbox}")).or_default();
    while seen.front().is_some_and(|&t| now.duration_since(t).unwrap_or_default() >= crate::drafts::BUDGET_WINDOW) {
        seen.pop_front();
    }
    if seen.len() as u64 >= u64::from(limit) {
        let oldest = seen.front().copied().unwrap_or(now);
        let wait = (oldest + crate::drafts::BUDGET_WINDOW).duration_since(now).unwrap_or_default();
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        // GUESS: the message text; the code and header are Graph's.
        let mut r = error(
            StatusCode::TOO_MANY_REQUESTS,
            "ApplicationThrottled",
            "Application is over its MailboxRequests limit.",
        );
        if let Ok(v) = hyper::header::HeaderValue::from_str(&secs.max(1).to_string()) {
            r.headers_mut().insert(hyper::header::RETRY_AFTER, v);
        }
        return Err(r);
    }
    seen.push_back(now);
    Ok(())
}
