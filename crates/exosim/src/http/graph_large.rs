//! Graph's path for large messages (reference §1e, 3–150 MB): create a draft
//! (`POST /v1.0/users/{upn}/messages`, Mail.ReadWrite), open an upload session per attachment
//! (`…/messages/{id}/attachments/createUploadSession`, Mail.ReadWrite), PUT the bytes in chunks
//! of at most 4 MB with `Content-Range` to the session's `uploadUrl` (which carries its own
//! token; no Authorization header), then send the draft (`…/messages/{id}/send`, Mail.Send,
//! `202 Accepted`). A draft may also be created from MIME, and deleted (`DELETE …/messages/{id}`).
//! A fault at step `graph-upload-chunk` answers a chunk PUT with its code as the status.
//!
//! Reply shapes follow Microsoft's documentation: 201 with the draft or the upload session,
//! 200 with `NextExpectedRanges` after each chunk but the last, 201 with a `Location` and no
//! body after the last. Refusals of bad ranges are GUESSES (416, as OneDrive-style upload
//! sessions answer).

use std::time::Duration;

use base64::Engine;
use hyper::StatusCode;
use serde_json::{Value, json};

use super::graph::{authorize, error};
use super::{Resp, json};
use crate::directory::MAIL_SEND;
use crate::drafts::{Attachment, Draft, Upload};
use crate::faults::{Action, Step};
use crate::sim::Shared;
use crate::store::{StoredMessage, SubmitPath, epoch_secs};
use crate::tokens::random_hex;

/// Mail.ReadWrite: drafts and attachments.
const MAIL_READ_WRITE: &str = "Mail.ReadWrite";
/// At most 4 MB per PUT.
const MAX_CHUNK: u64 = 4 * 1024 * 1024;
/// The largest attachment an upload session takes (150 MB).
const MAX_ATTACHMENT: u64 = 150 * 1024 * 1024;
/// How long an upload session lives (GUESS; Microsoft says only that it expires).
const SESSION_LIFETIME: Duration = Duration::from_secs(15 * 60);

fn empty(status: StatusCode) -> Resp {
    let mut r = json(status, &Value::Null);
    *r.body_mut() = http_body_util::Full::new(hyper::body::Bytes::new());
    r.headers_mut().remove(hyper::header::CONTENT_TYPE);
    r
}

fn not_found() -> Resp {
    error(StatusCode::NOT_FOUND, "ErrorItemNotFound", "The specified object was not found in the store.")
}

/// `POST /v1.0/users/{upn}/messages`: a draft from a Graph message resource (JSON), or from a
/// MIME message (`Content-Type: text/plain`, the MIME base64-encoded, as Graph's create-message
/// documents). The request limit of about 4 MB applies as to every Graph request.
pub(super) fn create_draft(
    shared: &Shared,
    upn: &str,
    authorization: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> Resp {
    let (_, mailbox) = match authorize(shared, upn, authorization, MAIL_READ_WRITE) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if body.len() > super::graph::MAX_REQUEST {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestBodyTooLarge",
            "The maximum request length supported is 4MB.",
        );
    }
    let id = format!("AAMkA{}", random_hex(24));
    let (message, mime, mut resource) = if content_type.to_ascii_lowercase().starts_with("text/plain") {
        let compact: Vec<u8> = body.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(compact) else {
            return error(
                StatusCode::BAD_REQUEST,
                "ErrorMimeContentInvalidBase64String",
                "Invalid base64 string for MIME content.",
            );
        };
        let headers = crate::smtp::parse_headers(&raw);
        let subject = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("subject")).map(|(_, v)| v.clone());
        (Value::Null, Some(raw), json!({"subject": subject}))
    } else {
        let Ok(message @ Value::Object(_)) = serde_json::from_slice::<Value>(body) else {
            return error(StatusCode::BAD_REQUEST, "ErrorInvalidRequest", "Invalid JSON body.");
        };
        (message.clone(), None, message)
    };
    resource["@odata.context"] =
        json!(format!("https://graph.microsoft.com/v1.0/$metadata#users('{mailbox}')/messages/$entity"));
    resource["id"] = json!(id);
    resource["isDraft"] = json!(true);
    resource["hasAttachments"] = json!(false);
    shared
        .graph
        .lock()
        .expect("graph lock")
        .drafts
        .insert(id, Draft { mailbox, message, mime, attachments: Vec::new() });
    json(StatusCode::CREATED, &resource)
}

/// `DELETE /v1.0/users/{upn}/messages/{id}`: `204 No Content`; the draft's upload sessions go with it.
pub(super) fn delete_draft(shared: &Shared, upn: &str, draft_id: &str, authorization: Option<&str>) -> Resp {
    let (_, mailbox) = match authorize(shared, upn, authorization, MAIL_READ_WRITE) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let mut graph = shared.graph.lock().expect("graph lock");
    if graph.drafts.get(draft_id).is_none_or(|d| d.mailbox != mailbox) {
        return not_found();
    }
    graph.drafts.remove(draft_id);
    graph.uploads.retain(|_, u| u.draft_id != draft_id);
    empty(StatusCode::NO_CONTENT)
}

/// `POST …/messages/{id}/attachments/createUploadSession`.
pub(super) fn create_upload_session(
    shared: &Shared,
    base: &str,
    upn: &str,
    draft_id: &str,
    authorization: Option<&str>,
    body: &[u8],
) -> Resp {
    let (_, mailbox) = match authorize(shared, upn, authorization, MAIL_READ_WRITE) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let v: Value = serde_json::from_slice(body).unwrap_or_default();
    let item = &v["AttachmentItem"];
    let (Some(name), Some(size)) = (item["name"].as_str(), item["size"].as_u64()) else {
        return error(StatusCode::BAD_REQUEST, "ErrorInvalidRequest", "AttachmentItem with name and size is required.");
    };
    if item["attachmentType"].as_str().is_some_and(|t| !t.eq_ignore_ascii_case("file")) {
        return error(StatusCode::BAD_REQUEST, "ErrorInvalidRequest", "Only file attachments can be uploaded.");
    }
    if size == 0 || size > MAX_ATTACHMENT {
        return error(
            StatusCode::BAD_REQUEST,
            "ErrorAttachmentSizeLimitExceeded",
            "The attachment size must be between 1 byte and 150 MB.",
        );
    }
    let mut graph = shared.graph.lock().expect("graph lock");
    if graph.drafts.get(draft_id).is_none_or(|d| d.mailbox != mailbox) {
        return not_found();
    }
    let session = random_hex(16);
    let authtoken = random_hex(24);
    let expires_at = shared.now() + SESSION_LIFETIME;
    graph.uploads.insert(
        session.clone(),
        Upload {
            draft_id: draft_id.to_owned(),
            authtoken: authtoken.clone(),
            name: name.to_owned(),
            content_type: item["contentType"].as_str().unwrap_or("application/octet-stream").to_owned(),
            size,
            data: Vec::new(),
            expires_at,
        },
    );
    json(
        StatusCode::CREATED,
        &json!({
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#microsoft.graph.uploadSession",
            "uploadUrl": format!("{base}/upload/{session}?authtoken={authtoken}"),
            "expirationDateTime": iso(expires_at),
            "nextExpectedRanges": ["0-"],
        }),
    )
}

fn iso(t: std::time::SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// `bytes a-b/total`.
fn content_range(h: &str) -> Option<(u64, u64, u64)> {
    let rest = h.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?, total.trim().parse().ok()?))
}

/// `PUT /upload/{session}?authtoken=…`: one chunk.
pub(super) fn put_chunk(
    shared: &Shared,
    base: &str,
    session: &str,
    query: Option<&str>,
    range: Option<&str>,
    body: &[u8],
) -> Resp {
    let token = query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "authtoken").map(|(_, v)| v.into_owned())
    });
    let now = shared.now();
    let mut graph = shared.graph.lock().expect("graph lock");
    let graph = &mut *graph;
    let Some(upload) = graph.uploads.get_mut(session) else {
        return not_found();
    };
    if token.as_deref() != Some(upload.authtoken.as_str()) {
        return error(StatusCode::UNAUTHORIZED, "InvalidAuthenticationToken", "Access token validation failure.");
    }
    if now >= upload.expires_at {
        graph.uploads.remove(session);
        return not_found();
    }
    let mailbox = graph.drafts.get(&upload.draft_id).map(|d| d.mailbox.clone());
    match shared.fault(Step::GraphUploadChunk, mailbox.as_deref()) {
        Some(Action::Reply { code, text, .. }) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return error(status, &text, &text);
        }
        Some(Action::Disconnect) => {
            return error(StatusCode::SERVICE_UNAVAILABLE, "ServiceNotAvailable", "Service unavailable.");
        }
        // A delay cannot be waited for under the lock; it is not offered for this step.
        Some(Action::Delay { .. }) | None => {}
    }
    let Some(upload) = graph.uploads.get_mut(session) else {
        return not_found();
    };
    let Some((start, end, total)) = range.and_then(content_range) else {
        return error(StatusCode::BAD_REQUEST, "InvalidRequest", "The Content-Range header is missing or malformed.");
    };
    let len = body.len() as u64;
    if len > MAX_CHUNK {
        // GUESS: the status for a chunk over 4 MB.
        return error(StatusCode::PAYLOAD_TOO_LARGE, "RequestBodyTooLarge", "The maximum chunk size is 4MB.");
    }
    let received = upload.data.len() as u64;
    if total != upload.size || start != received || end < start || end - start + 1 != len || end >= total {
        let mut r = error(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "InvalidRange",
            "The uploaded fragment overlaps with data that has already been received or does not match the session.",
        );
        r.headers_mut()
            .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
        return r;
    }
    upload.data.extend_from_slice(body);
    if end + 1 < total {
        return json(
            StatusCode::OK,
            &json!({
                "@odata.context": "https://outlook.office.com/api/v2.0/$metadata#Microsoft.OutlookServices.UploadSession",
                "ExpirationDateTime": iso(upload.expires_at),
                "NextExpectedRanges": [format!("{}", end + 1)],
            }),
        );
    }
    let Some(done) = graph.uploads.remove(session) else {
        return not_found();
    };
    let attachment_id = format!("AAMkA{}", random_hex(16));
    let Some(draft) = graph.drafts.get_mut(&done.draft_id) else {
        return not_found();
    };
    draft.attachments.push(Attachment { name: done.name, content_type: done.content_type, data: done.data });
    let mut r = empty(StatusCode::CREATED);
    let location =
        format!("{base}/v1.0/users/{}/messages/{}/attachments/{attachment_id}", draft.mailbox, done.draft_id);
    if let Ok(v) = hyper::header::HeaderValue::from_str(&location) {
        r.headers_mut().insert(hyper::header::LOCATION, v);
    }
    r
}

/// `POST …/messages/{id}/send`.
pub(super) fn send_draft(
    shared: &Shared,
    peer: std::net::SocketAddr,
    upn: &str,
    draft_id: &str,
    authorization: Option<&str>,
) -> Resp {
    let (identity, mailbox) = match authorize(shared, upn, authorization, MAIL_SEND) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let draft = {
        let mut graph = shared.graph.lock().expect("graph lock");
        match graph.drafts.get(draft_id) {
            Some(d) if d.mailbox == mailbox => graph.drafts.remove(draft_id),
            _ => None,
        }
    };
    let Some(draft) = draft else {
        return not_found();
    };
    let (mime, rcpts) = match draft.mime {
        Some(mime) => {
            let headers = crate::smtp::parse_headers(&mime);
            let mut rcpts = Vec::new();
            for h in ["to", "cc", "bcc"] {
                rcpts.extend(crate::smtp::header_addresses(&headers, h).unwrap_or_default());
            }
            (mime, rcpts)
        }
        None => match super::graph::mime_from_message(&draft.message) {
            Ok((mime, _, rcpts)) => (mime, rcpts),
            Err(r) => return r,
        },
    };
    if rcpts.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "ErrorInvalidRecipients",
            "At least one recipient isn't valid., Recipient is missing.",
        );
    }
    let raw = with_attachments(mime, &draft.attachments);
    if raw.len() as u64 > shared.dir().max_send_size(&mailbox) {
        // GUESS: Graph's code for a message over MaxSendSize.
        return error(
            StatusCode::BAD_REQUEST,
            "ErrorMessageSizeExceeded",
            "The message exceeds the maximum supported size.",
        );
    }
    shared.store(StoredMessage {
        seq: 0,
        message_id: format!("<{}@exosim.graph>", random_hex(16)),
        accepted_at: epoch_secs(shared.now()),
        path: SubmitPath::Graph,
        identity,
        mailbox: mailbox.clone(),
        mail_from: mailbox,
        rcpt_to: rcpts,
        client_ip: peer.ip().to_string(),
        tls: true,
        // A sent draft always lands in Sent Items.
        saved_to_sent_items: true,
        raw,
    });
    empty(StatusCode::ACCEPTED)
}

/// The draft's MIME with its attachments as a multipart/mixed message.
fn with_attachments(mime: Vec<u8>, attachments: &[Attachment]) -> Vec<u8> {
    if attachments.is_empty() {
        return mime;
    }
    let text = String::from_utf8_lossy(&mime).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut body_type = "text/plain; charset=utf-8".to_owned();
    let mut out = String::new();
    for line in head.split("\r\n") {
        match line.strip_prefix("Content-Type: ") {
            Some(t) => body_type = t.to_owned(),
            None => {
                out.push_str(line);
                out.push_str("\r\n");
            }
        }
    }
    let boundary = format!("exosim-{}", random_hex(8));
    out.push_str(&format!("Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n"));
    out.push_str(&format!("--{boundary}\r\nContent-Type: {body_type}\r\n\r\n{body}\r\n"));
    let engine = base64::engine::general_purpose::STANDARD;
    for a in attachments {
        out.push_str(&format!(
            "--{boundary}\r\nContent-Type: {}; name=\"{}\"\r\nContent-Disposition: attachment; filename=\"{}\"\r\nContent-Transfer-Encoding: base64\r\n\r\n",
            a.content_type, a.name, a.name
        ));
        let encoded = engine.encode(&a.data);
        for chunk in encoded.as_bytes().chunks(76) {
            out.push_str(&String::from_utf8_lossy(chunk));
            out.push_str("\r\n");
        }
    }
    out.push_str(&format!("--{boundary}--\r\n"));
    out.into_bytes()
}
