//! A scanner sends as an address that is not a mailbox ("scanner3@"): Microsoft would refuse it at the
//! end of DATA (5.7.60, no SendAs). With `sender_rewrite = "mailbox"` sluice sends it as the mailbox and
//! keeps the scanner's address in Reply-To; Microsoft accepts it.

mod m365;

use m365::*;
use sluice::upstream::Disposition;

const SCANNER: &str = "scanner3@contoso.com";

fn scan() -> String {
    format!(
        "From: Scanner 3rd floor <{SCANNER}>\r\nTo: <alice@contoso.com>\r\nSubject: Scan\r\n\
         Message-ID: <scan-1@sluice.test>\r\n\r\nA scan.\r\n"
    )
}

#[tokio::test]
async fn a_scanner_sender_is_rewritten_to_the_mailbox_and_accepted() {
    let mut world =
        start(&tenant("", ""), |sim, dir| upstream("m365-oauth", sim, dir), "sender_rewrite = \"mailbox\"\n").await;
    world.submit(SCANNER, &["alice@contoso.com"], &scan()).await;
    let events = world.next_events(1).await;
    assert_eq!(events[0].disposition, Disposition::Delivered, "{events:?}");
    let stored = world.wait_messages(1).await.remove(0);
    assert_eq!(stored.mail_from, MAILBOX);
    let raw = String::from_utf8_lossy(&stored.raw);
    assert!(raw.contains(&format!("From: \"Scanner 3rd floor\" <{MAILBOX}>")), "{raw}");
    assert!(raw.contains(&format!("Reply-To: Scanner 3rd floor <{SCANNER}>")), "{raw}");
    world.stop().await;
}

#[tokio::test]
async fn without_the_rewrite_the_same_scan_is_refused_and_bounced() {
    let mut world = start(&tenant("", ""), |sim, dir| upstream("m365-oauth", sim, dir), "").await;
    world.submit(SCANNER, &["alice@contoso.com"], &scan()).await;
    let events = world.next_events(1).await;
    assert_eq!(events[0].disposition, Disposition::Permanent, "{events:?}");
    assert!(events[0].reply.contains("5.7.60") || events[0].reply.contains("5.2.252"), "{events:?}");
    world.stop().await;
}
