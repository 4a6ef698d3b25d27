//! Graph's path for messages too large for one `sendMail` request (reference §1e: requests over about
//! 4 MB get 413; messages of 3–150 MB go through a draft).
//!
//! 1. The message's large attachments are taken out of its MIME ([`split_attachments`]): the top-level
//!    `multipart/mixed` parts that are attachments, largest first, until the rest fits in a request.
//! 2. The rest becomes a draft: `POST /users/{mailbox}/messages` with the MIME base64-encoded
//!    (`Content-Type: text/plain`), the same form as the small path's `sendMail`, so headers, the
//!    envelope's `Bcc:` and the body's structure are kept as they are.
//! 3. Each attachment gets an upload session (`…/messages/{id}/attachments/createUploadSession`) and is
//!    PUT in chunks of at most 4 MB with `Content-Range`, to the session's URL (which carries its own
//!    token: no Authorization header).
//! 4. `POST …/messages/{id}/send`: `202 Accepted` is the delivery.
//!
//! Every answer goes through the classifier as an [`Outcome::Http`], its reason naming the step. Only
//! the answer to the send can say "delivered"; a failure before it returns that step's outcome, and the
//! draft is deleted (best effort) so no half-built message is left in the mailbox for the next attempt
//! to duplicate. Sending a draft always keeps a copy in Sent Items: Graph has no parameter for it there.

use base64::Engine as _;
use tracing::{debug, warn};

use super::graph::{Answer, GraphSender, SEND_MAIL_LIMIT};
use super::{Disposition, Outcome, TransportError, classify};
use crate::config::UpstreamKind;

/// Bytes per PUT: at most 4 MB each (reference §1e); a multiple of 320 KiB, as Microsoft's upload
/// sessions prefer.
pub const CHUNK: usize = 12 * 320 * 1024;

/// One attachment taken out of the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub name: String,
    pub content_type: String,
    pub data: Vec<u8>,
}

/// The message without its large attachments, and those attachments decoded.
#[derive(Debug)]
pub struct Split {
    pub rest: Vec<u8>,
    pub attachments: Vec<Attachment>,
}

/// Sends `mime` through a draft. `Err` when no verdict was had (transport trouble).
pub(super) async fn send_large(g: &GraphSender, mime: &[u8]) -> Result<Outcome, TransportError> {
    let split = split_attachments(mime, SEND_MAIL_LIMIT);
    debug!(
        size = mime.len(),
        draft = split.rest.len(),
        attachments = split.attachments.len(),
        "Graph: large message goes through a draft and upload sessions"
    );
    let payload = base64::engine::general_purpose::STANDARD.encode(&split.rest);
    let messages_url = &g.config.messages_url;
    let answer =
        g.request(reqwest::Method::POST, messages_url, true, Some("text/plain"), &[], payload.as_bytes()).await?;
    if !answer.ok() {
        return Ok(answer.outcome("create draft"));
    }
    let id = serde_json::from_str::<serde_json::Value>(&answer.text)
        .ok()
        .and_then(|v| v.get("id").and_then(|id| id.as_str()).map(str::to_owned))
        .ok_or_else(|| TransportError::Protocol("Graph created a draft but named no id".into()))?;
    let draft_url = format!("{messages_url}/{}", percent_encode(&id));
    let result = upload_and_send(g, &draft_url, &split.attachments).await;
    if !matches!(&result, Ok(o) if classify(UpstreamKind::M365Graph, o) == Disposition::Delivered) {
        // Nothing was sent: remove the draft so the next attempt starts clean.
        match g.request(reqwest::Method::DELETE, &draft_url, true, None, &[], b"").await {
            Ok(a) if a.ok() || a.status == 404 => {}
            Ok(a) => {
                warn!(status = a.status, "Graph: could not delete the unsent draft; it stays in the mailbox's Drafts")
            }
            Err(e) => warn!(error = %e, "Graph: could not delete the unsent draft; it stays in the mailbox's Drafts"),
        }
    }
    result
}

async fn upload_and_send(
    g: &GraphSender,
    draft_url: &str,
    attachments: &[Attachment],
) -> Result<Outcome, TransportError> {
    for a in attachments {
        let item = serde_json::json!({
            "AttachmentItem": {
                "attachmentType": "file",
                "name": a.name,
                "size": a.data.len(),
                "contentType": a.content_type,
            }
        });
        let url = format!("{draft_url}/attachments/createUploadSession");
        let answer: Answer = g
            .request(reqwest::Method::POST, &url, true, Some("application/json"), &[], item.to_string().as_bytes())
            .await?;
        if !answer.ok() {
            return Ok(answer.outcome("createUploadSession"));
        }
        let upload_url = serde_json::from_str::<serde_json::Value>(&answer.text)
            .ok()
            .and_then(|v| v.get("uploadUrl").and_then(|u| u.as_str()).map(str::to_owned))
            .ok_or_else(|| TransportError::Protocol("Graph opened an upload session without an uploadUrl".into()))?;
        let total = a.data.len();
        for (i, chunk) in a.data.chunks(CHUNK).enumerate() {
            let start = i * CHUNK;
            let range = format!("bytes {start}-{}/{total}", start + chunk.len() - 1);
            let answer = g
                .request(
                    reqwest::Method::PUT,
                    &upload_url,
                    false,
                    Some("application/octet-stream"),
                    &[(reqwest::header::CONTENT_RANGE, range)],
                    chunk,
                )
                .await?;
            if !answer.ok() {
                return Ok(answer.outcome("attachment upload"));
            }
        }
    }
    let answer = g.request(reqwest::Method::POST, &format!("{draft_url}/send"), true, None, &[], b"").await?;
    Ok(answer.outcome("send draft"))
}

/// Takes attachments out of a top-level `multipart/mixed` message, largest first, until the rest is at
/// most `limit` bytes (or no attachment is left to take). Attachments are parts with
/// `Content-Disposition: attachment`, or a name and a non-text type; base64, 7bit, 8bit and binary
/// parts are decoded, quoted-printable ones stay in the message. Any other message is left whole.
pub fn split_attachments(message: &[u8], limit: usize) -> Split {
    let whole = || Split { rest: message.to_vec(), attachments: Vec::new() };
    let Some(body_start) = find(message, b"\r\n\r\n").map(|p| p + 4) else {
        return whole();
    };
    let headers = super::graph::headers(message);
    let content_type = header(&headers, "content-type").unwrap_or_default();
    if !media_type(&content_type).eq_ignore_ascii_case("multipart/mixed") {
        return whole();
    }
    let Some(boundary) = param(&content_type, "boundary") else {
        return whole();
    };
    let delimiter = format!("--{boundary}");
    // Delimiter lines: (start of line, end of line with its CRLF).
    let mut delimiters = Vec::new();
    let mut pos = body_start;
    while pos < message.len() {
        let end = find(&message[pos..], b"\r\n").map_or(message.len(), |p| pos + p + 2);
        let line = &message[pos..end];
        let trimmed = line.strip_suffix(b"\r\n").unwrap_or(line);
        let trimmed = trimmed.trim_ascii_end();
        if trimmed == delimiter.as_bytes() || trimmed == format!("{delimiter}--").as_bytes() {
            delimiters.push((pos, end));
        }
        pos = end;
    }
    // Candidate parts: (range to cut, attachment).
    let mut candidates: Vec<((usize, usize), Attachment)> = Vec::new();
    for pair in delimiters.windows(2) {
        let ((open, content_start), (next, _)) = (pair[0], pair[1]);
        // The CRLF before a delimiter belongs to the delimiter.
        let content_end = if next >= 2 && &message[next - 2..next] == b"\r\n" { next - 2 } else { next };
        if content_end <= content_start {
            continue;
        }
        if let Some(attachment) = attachment(&message[content_start..content_end], candidates.len()) {
            candidates.push(((open, next), attachment));
        }
    }
    // Keep at least one part in the message.
    if candidates.len() + 1 >= delimiters.len() && !candidates.is_empty() {
        candidates.sort_by_key(|((a, b), _)| b - a);
        candidates.remove(0);
    }
    candidates.sort_by_key(|((a, b), _)| std::cmp::Reverse(b - a));
    let mut size = message.len();
    let mut cut = Vec::new();
    let mut attachments = Vec::new();
    for (range, attachment) in candidates {
        if size <= limit {
            break;
        }
        size -= range.1 - range.0;
        cut.push(range);
        attachments.push(attachment);
    }
    cut.sort();
    let mut rest = Vec::with_capacity(size);
    let mut from = 0;
    for (a, b) in cut {
        rest.extend_from_slice(&message[from..a]);
        from = b;
    }
    rest.extend_from_slice(&message[from..]);
    Split { rest, attachments }
}

/// A part as an attachment, if it is one we can decode.
fn attachment(part: &[u8], n: usize) -> Option<Attachment> {
    let header_end = find(part, b"\r\n\r\n")?;
    let headers = super::graph::headers(part);
    let content_type = header(&headers, "content-type").unwrap_or_else(|| "text/plain".into());
    let disposition = header(&headers, "content-disposition").unwrap_or_default();
    let media = media_type(&content_type).to_ascii_lowercase();
    let name = param(&disposition, "filename").or_else(|| param(&content_type, "name"));
    let is_attachment = media_type(&disposition).eq_ignore_ascii_case("attachment")
        || (disposition.is_empty()
            && name.is_some()
            && !media.starts_with("text/")
            && !media.starts_with("multipart/")
            && !media.starts_with("message/"));
    if !is_attachment || media.starts_with("multipart/") {
        return None;
    }
    let content = &part[header_end + 4..];
    let encoding = header(&headers, "content-transfer-encoding").unwrap_or_default().to_ascii_lowercase();
    let data = match encoding.trim() {
        "base64" => {
            let compact: Vec<u8> = content.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
            base64::engine::general_purpose::STANDARD.decode(compact).ok()?
        }
        "" | "7bit" | "8bit" | "binary" => content.to_vec(),
        _ => return None,
    };
    if data.is_empty() {
        return None;
    }
    Some(Attachment { name: name.unwrap_or_else(|| format!("attachment-{}", n + 1)), content_type: media, data })
}

fn header(headers: &[(String, String)], name: &str) -> Option<String> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

fn media_type(value: &str) -> &str {
    value.split(';').next().unwrap_or("").trim()
}

/// A parameter of a structured header value (`boundary`, `name`, `filename`), unquoted.
fn param(value: &str, name: &str) -> Option<String> {
    value.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim().trim_matches('"').to_owned())
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Percent-encodes everything but RFC 3986's unreserved characters (for ids in a URL path).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(attachment: &[u8]) -> Vec<u8> {
        let encoded = base64::engine::general_purpose::STANDARD.encode(attachment);
        let mut m = b"From: <relay@contoso.com>\r\nTo: <alice@contoso.com>\r\nSubject: scan\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\npreamble\r\n--b1\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n\
--b1\r\nContent-Type: application/pdf; name=\"scan.pdf\"\r\nContent-Disposition: attachment; filename=\"scan.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\r\n"
            .to_vec();
        for line in encoded.as_bytes().chunks(76) {
            m.extend_from_slice(line);
            m.extend_from_slice(b"\r\n");
        }
        m.extend_from_slice(b"--b1--\r\n");
        m
    }

    #[test]
    fn large_attachment_is_taken_out_and_decoded() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let split = split_attachments(&message(&data), 1000);
        assert_eq!(split.attachments.len(), 1);
        assert_eq!(split.attachments[0].name, "scan.pdf");
        assert_eq!(split.attachments[0].content_type, "application/pdf");
        assert_eq!(split.attachments[0].data, data);
        let rest = String::from_utf8(split.rest).unwrap();
        assert!(rest.contains("--b1\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n--b1--\r\n"), "{rest}");
        assert!(!rest.contains("scan.pdf"));
    }

    #[test]
    fn small_messages_and_single_parts_stay_whole() {
        let m = message(b"tiny");
        let split = split_attachments(&m, 1 << 20);
        assert!(split.attachments.is_empty());
        assert_eq!(split.rest, m);
        let plain = b"Subject: x\r\n\r\nbody\r\n".to_vec();
        assert_eq!(split_attachments(&plain, 1).rest, plain);
    }

    #[test]
    fn ids_are_encoded_for_the_path() {
        assert_eq!(percent_encode("AAMk+a/b="), "AAMk%2Ba%2Fb%3D");
    }
}
