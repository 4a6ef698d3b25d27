//! Large messages through Graph (reference §1e): over about 3 MB they go as a draft whose attachments
//! are uploaded in chunks, then sent. A 20 MB attachment arrives intact, with the envelope's Bcc
//! recipient; a failure in the middle of the upload is retried later, without a duplicate and without
//! a draft left behind.

mod m365;

use base64::Engine as _;
use exosim::{Fault, Step, SubmitPath};
use m365::*;
use sluice::upstream::Disposition;

/// 20 MB of bytes that are not all alike (a broken chunk order would show).
fn attachment() -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..20 * 1024 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn large_message(data: &[u8]) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(data);
    let mut m = format!(
        "From: <{MAILBOX}>\r\nTo: <alice@contoso.com>\r\nSubject: big scan\r\nMessage-ID: <big@sluice.test>\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\n\
         Content-Type: text/plain\r\n\r\nThe scan is attached.\r\n--b1\r\nContent-Type: application/pdf; name=\"scan.pdf\"\r\n\
         Content-Disposition: attachment; filename=\"scan.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    );
    for line in encoded.as_bytes().chunks(76) {
        m.push_str(std::str::from_utf8(line).unwrap());
        m.push_str("\r\n");
    }
    m.push_str("--b1--\r\n");
    m
}

/// The test tenant, its app also holding Mail.ReadWrite (drafts and attachments, reference §1e).
fn tenant_rw() -> String {
    tenant("", "").replace("\"Mail.Send\"]", "\"Mail.Send\", \"Mail.ReadWrite\"]")
}

/// The attachment named `name` in a stored message, decoded.
fn stored_attachment(raw: &[u8], name: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(raw);
    let start = text.find(&format!("filename=\"{name}\"")).expect("attachment in the stored message");
    let body = start + text[start..].find("\r\n\r\n").unwrap() + 4;
    let end = body + text[body..].find("\r\n--").unwrap();
    let compact: String = text[body..end].split_whitespace().collect();
    base64::engine::general_purpose::STANDARD.decode(compact).unwrap()
}

#[tokio::test]
async fn a_20_mb_attachment_goes_through_an_upload_session_intact() {
    let mut world = start(&tenant_rw(), |sim, dir| upstream("m365-graph", sim, dir), "").await;
    let data = attachment();
    let reply = world.submit(MAILBOX, &["alice@contoso.com", "hidden@contoso.com"], &large_message(&data)).await;
    assert!(reply.starts_with("250"), "{reply}");
    let events = world.next_events(2).await;
    assert!(events.iter().all(|e| e.disposition == Disposition::Delivered), "{events:?}");
    let stored = world.wait_messages(1).await.remove(0);
    assert_eq!(stored.path, SubmitPath::Graph);
    // The envelope, not only the headers: the Bcc-only recipient is there too.
    assert_eq!(stored.rcpt_to, ["alice@contoso.com", "hidden@contoso.com"]);
    assert!(String::from_utf8_lossy(&stored.raw).contains("Subject: big scan"));
    assert!(stored_attachment(&stored.raw, "scan.pdf") == data, "the attachment changed on the way");
    assert_eq!(world.sim.drafts(), 0);
    world.stop().await;
}

#[tokio::test]
async fn a_failure_mid_upload_is_retried_without_a_duplicate() {
    let mut world = start(&tenant_rw(), |sim, dir| upstream("m365-graph", sim, dir), "").await;
    // The third chunk fails once, as a busy service would (the first two pass).
    world.sim.inject(Fault::delay(Step::GraphUploadChunk, 0).times(2));
    world.sim.inject(Fault::reply(Step::GraphUploadChunk, 503, "ServiceNotAvailable"));
    let data = attachment();
    let reply = world.submit(MAILBOX, &["alice@contoso.com"], &large_message(&data)).await;
    assert!(reply.starts_with("250"), "{reply}");
    let first = world.next_events(1).await.remove(0);
    assert_eq!(first.disposition, Disposition::Temporary, "{first:?}");
    assert!(first.reply.contains("503") && first.reply.contains("upload"), "{}", first.reply);
    // The failed attempt left no draft behind for anyone to send.
    assert_eq!(world.sim.drafts(), 0);
    assert!(world.sim.messages().is_empty());
    let second = world.next_events(1).await.remove(0);
    assert_eq!(second.disposition, Disposition::Delivered, "{second:?}");
    let messages = world.wait_messages(1).await;
    assert_eq!(messages.len(), 1, "delivered twice");
    assert!(stored_attachment(&messages[0].raw, "scan.pdf") == data);
    assert_eq!(world.sim.drafts(), 0);
    world.stop().await;
}
