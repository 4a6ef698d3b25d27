//! Graph's large-message path (draft, createUploadSession, chunked PUT, send) and the request
//! budget per mailbox per app (reference §1e), driven by curl.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";
const MB4: usize = 4 * 1024 * 1024;

async fn call(s: &Sim, method: &str, path: &str, headers: &[String], body: &[u8]) -> (u16, String, String) {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(body).unwrap();
    let data = format!("@{}", file.path().display());
    let dump = tempfile::NamedTempFile::new().unwrap();
    let dump_path = dump.path().display().to_string();
    let mut args: Vec<&str> = vec!["--data-binary", &data, "-D", &dump_path];
    for h in headers {
        args.push("-H");
        args.push(h);
    }
    let (status, text) = s.curl(method, path, &args).await;
    (status, text, std::fs::read_to_string(dump.path()).unwrap().to_ascii_lowercase())
}

fn bearer(token: &str) -> Vec<String> {
    vec![format!("Authorization: Bearer {token}"), "Content-Type: application/json".to_owned()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draft_upload_session_chunks_and_send() {
    let s = start_default().await;
    let draft = json!({
        "subject": "scan.pdf",
        "body": {"contentType": "Text", "content": "Your scan."},
        "toRecipients": [{"emailAddress": {"address": "x@example.net"}}]
    })
    .to_string();
    // Drafts need Mail.ReadWrite; Mail.Send alone is not enough.
    let token = s.token(GRAPH_SCOPE).await;
    let (status, text, _) =
        call(&s, "POST", "/v1.0/users/relay@contoso.com/messages", &bearer(&token), draft.as_bytes()).await;
    assert_eq!(status, 403, "{text}");
    s.sim.update_config(|c| c.apps[0].permissions.push("Mail.ReadWrite".into())).unwrap();
    let token = s.token(GRAPH_SCOPE).await;
    let (status, text, _) =
        call(&s, "POST", "/v1.0/users/relay@contoso.com/messages", &bearer(&token), draft.as_bytes()).await;
    assert_eq!(status, 201, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    let id = v["id"].as_str().unwrap().to_owned();
    assert_eq!(v["isDraft"], true);

    let size = MB4 + 1000;
    let session = json!({"AttachmentItem": {"attachmentType": "file", "name": "scan.pdf", "size": size, "contentType": "application/pdf"}});
    let path = format!("/v1.0/users/relay@contoso.com/messages/{id}/attachments/createUploadSession");
    let (status, text, _) = call(&s, "POST", &path, &bearer(&token), session.to_string().as_bytes()).await;
    assert_eq!(status, 201, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["nextExpectedRanges"], json!(["0-"]));
    let upload = v["uploadUrl"].as_str().unwrap().strip_prefix(&s.sim.https_base()).unwrap().to_owned();
    let content: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let range = |a: usize, b: usize| vec![format!("Content-Range: bytes {a}-{b}/{size}")];
    // (first byte, last byte, status, what comes back)
    let next = format!("\"NextExpectedRanges\":[\"{MB4}\"]");
    let rows: Vec<(usize, usize, u16, &str)> = vec![
        (0, MB4 - 1, 200, &next),
        // The same range again, or a gap, does not fit the session.
        (0, 999, 416, "InvalidRange"),
        (MB4 + 10, size - 1, 416, "InvalidRange"),
        (MB4, size - 1, 201, ""),
    ];
    for (a, b, want, has) in rows {
        // The upload URL carries its own token: no Authorization header.
        let (status, text, headers) = call(&s, "PUT", &upload, &range(a, b), &content[a..=b]).await;
        assert_eq!(status, want, "{a}-{b}: {text}");
        assert!(text.contains(has), "{a}-{b}: {text}");
        if want == 201 {
            assert!(headers.contains("location: "), "{headers}");
        }
    }
    let (status, text, _) =
        call(&s, "POST", &format!("/v1.0/users/relay@contoso.com/messages/{id}/send"), &bearer(&token), b"").await;
    assert_eq!(status, 202, "{text}");
    assert_eq!(text, "");
    let m = s.sim.messages();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].path, exosim::SubmitPath::Graph);
    assert_eq!(m[0].rcpt_to, vec!["x@example.net"]);
    let raw = String::from_utf8_lossy(&m[0].raw);
    assert!(raw.contains("multipart/mixed") && raw.contains("filename=\"scan.pdf\""), "{}", &raw[..400]);
    // Sent once: the draft is gone.
    let (status, _, _) =
        call(&s, "POST", &format!("/v1.0/users/relay@contoso.com/messages/{id}/send"), &bearer(&token), b"").await;
    assert_eq!(status, 404);

    // A chunk over 4 MB is refused.
    let (_, text, _) =
        call(&s, "POST", "/v1.0/users/relay@contoso.com/messages", &bearer(&token), draft.as_bytes()).await;
    let id = serde_json::from_str::<Value>(&text).unwrap()["id"].as_str().unwrap().to_owned();
    let path = format!("/v1.0/users/relay@contoso.com/messages/{id}/attachments/createUploadSession");
    let (_, text, _) = call(&s, "POST", &path, &bearer(&token), session.to_string().as_bytes()).await;
    let upload = serde_json::from_str::<Value>(&text).unwrap()["uploadUrl"].as_str().unwrap().to_owned();
    let upload = upload.strip_prefix(&s.sim.https_base()).unwrap();
    let (status, text, _) = call(&s, "PUT", upload, &range(0, MB4), &content[..=MB4]).await;
    assert_eq!(status, 413, "{text}");
    // A forged upload token.
    let forged = format!("{}x", upload);
    let (status, _, _) = call(&s, "PUT", &forged, &range(0, 9), &content[..10]).await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_budget_per_mailbox_per_app() {
    // 10,000 in 10 minutes, lowered to keep the test short.
    let s = start(&tenant("", "[limits]\ngraph_requests_per_10_minutes = 3")).await;
    s.sim.manual_clock();
    let token = s.token(GRAPH_SCOPE).await;
    let mime = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        "From: relay@contoso.com\r\nTo: x@example.net\r\nSubject: b\r\n\r\nx\r\n",
    );
    let headers = vec![format!("Authorization: Bearer {token}"), "Content-Type: text/plain".to_owned()];
    for _ in 0..3 {
        let (status, text, _) =
            call(&s, "POST", "/v1.0/users/relay@contoso.com/sendMail", &headers, mime.as_bytes()).await;
        assert_eq!(status, 202, "{text}");
    }
    s.sim.advance(Duration::from_secs(100));
    let (status, text, h) = call(&s, "POST", "/v1.0/users/relay@contoso.com/sendMail", &headers, mime.as_bytes()).await;
    assert_eq!(status, 429, "{text}");
    assert!(h.contains("retry-after: 500"), "{h}");
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["error"]["code"], "ApplicationThrottled");
    // The budget is per mailbox: another mailbox of the same app is not throttled.
    let (status, _, _) = call(&s, "POST", "/v1.0/users/ceo@contoso.com/sendMail", &headers, mime.as_bytes()).await;
    assert_ne!(status, 429);
    s.sim.advance(Duration::from_secs(500));
    let (status, text, _) = call(&s, "POST", "/v1.0/users/relay@contoso.com/sendMail", &headers, mime.as_bytes()).await;
    assert_eq!(status, 202, "{text}");
}
