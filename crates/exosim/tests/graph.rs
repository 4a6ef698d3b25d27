//! Graph sendMail (reference §1e), driven by curl with tokens from the token endpoint.

mod common;

use std::io::Write;

use base64::Engine;
use common::*;
use exosim::{Fault, Step};
use serde_json::{Value, json};

const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";

async fn send_mail(s: &Sim, token: &str, content_type: &str, body: &[u8]) -> (u16, String, String) {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(body).unwrap();
    let auth = format!("Authorization: Bearer {token}");
    let ct = format!("Content-Type: {content_type}");
    let data = format!("@{}", file.path().display());
    let headers = tempfile::NamedTempFile::new().unwrap();
    let headers_path = headers.path().display().to_string();
    let (status, body) = s
        .curl(
            "POST",
            "/v1.0/users/relay%40contoso.com/sendMail",
            &["-H", &auth, "-H", &ct, "--data-binary", &data, "-D", &headers_path],
        )
        .await;
    let headers = std::fs::read_to_string(headers.path()).unwrap();
    (status, body, headers)
}

fn mime(from: &str) -> Vec<u8> {
    let m = format!("From: {from}\r\nTo: x@example.net\r\nSubject: graph\r\n\r\nHello\r\n");
    base64::engine::general_purpose::STANDARD.encode(m).into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mime_and_json_bodies_are_accepted_with_202() {
    let s = start_default().await;
    let token = s.token(GRAPH_SCOPE).await;
    let (status, body, _) = send_mail(&s, &token, "text/plain", &mime("relay@contoso.com")).await;
    assert_eq!((status, body.as_str()), (202, ""));
    let json_body = json!({
        "message": {
            "subject": "hi",
            "body": {"contentType": "Text", "content": "hello"},
            "toRecipients": [{"emailAddress": {"address": "a@example.net"}}],
            "ccRecipients": [{"emailAddress": {"address": "b@example.net"}}]
        },
        "saveToSentItems": false
    });
    let (status, _, _) = send_mail(&s, &token, "application/json", json_body.to_string().as_bytes()).await;
    assert_eq!(status, 202);
    let m = s.sim.messages();
    assert_eq!(m.len(), 2);
    assert_eq!(m[0].path, exosim::SubmitPath::Graph);
    assert_eq!(m[0].identity, format!("app:{APP_ID}"));
    assert_eq!(m[0].rcpt_to, vec!["x@example.net"]);
    assert!(m[0].saved_to_sent_items);
    assert_eq!(m[1].rcpt_to, vec!["a@example.net", "b@example.net"]);
    assert!(!m[1].saved_to_sent_items);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_errors_table() {
    let s = start_default().await;
    let token = s.token(GRAPH_SCOPE).await;
    let smtp_token = s.token("https://outlook.office365.com/.default").await;
    let big = vec![b'A'; 4 * 1024 * 1024 + 4];
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (&token, "text/plain", b"not base64 !!".to_vec(), 400, "ErrorMimeContentInvalidBase64String"),
        (&token, "text/plain", big, 413, "RequestBodyTooLarge"),
        (&smtp_token, "text/plain", mime("relay@contoso.com"), 401, "InvalidAuthenticationToken"),
        (&token, "text/plain", mime("ceo@contoso.com"), 403, "ErrorSendAsDenied"),
    ];
    for (tok, ct, body, status, code) in cases {
        let (got, text, _) = send_mail(&s, tok, ct, &body).await;
        assert_eq!(got, status, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["code"], code, "{v}");
    }
    // Without the Mail.Send role in the token.
    s.sim.update_config(|c| c.apps[0].permissions = vec!["SMTP.SendAsApp".into()]).unwrap();
    let token = s.token(GRAPH_SCOPE).await;
    let (got, text, _) = send_mail(&s, &token, "text/plain", &mime("relay@contoso.com")).await;
    assert_eq!(got, 403, "{text}");
    assert!(s.sim.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_request_gets_429_with_retry_after() {
    let s = start_default().await;
    let token = s.token(GRAPH_SCOPE).await;
    s.sim.inject(Fault::reply(Step::GraphSendMail, 429, "Application is over its MailboxConcurrency limit."));
    let (status, body, headers) = send_mail(&s, &token, "text/plain", &mime("relay@contoso.com")).await;
    assert_eq!(status, 429, "{body}");
    assert!(headers.to_ascii_lowercase().contains("retry-after: 30"), "{headers}");
    let (status, _, _) = send_mail(&s, &token, "text/plain", &mime("relay@contoso.com")).await;
    assert_eq!(status, 202);
}
