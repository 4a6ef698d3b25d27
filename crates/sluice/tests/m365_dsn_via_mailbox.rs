//! A bounce through a mailbox upstream (m365-oauth): Microsoft refuses the null sender and a
//! MAILER-DAEMON From there, so the DSN goes out as the mailbox ("Mail Delivery System") and reaches the
//! original sender, still an RFC 3464 report.

mod m365;

use exosim::{Fault, Step};
use m365::*;
use sluice::upstream::Disposition;

#[tokio::test]
async fn a_bounce_through_m365_oauth_reaches_the_sender() {
    let mut world = start(&tenant("", ""), |sim, dir| upstream("m365-oauth", sim, dir), "").await;
    // The first message is refused for good at the end of DATA.
    world.sim.inject(Fault::reply(Step::EndOfData, 550, "5.1.1 User unknown"));
    let from = MAILBOX;
    let reply = world.submit(from, &["gone@contoso.com"], &message(from, "gone@contoso.com", "bounce me")).await;
    assert!(reply.starts_with("250"), "{reply}");
    let failed = world.next_events(1).await.remove(0);
    assert_eq!(failed.disposition, Disposition::Permanent, "{failed:?}");
    assert!(failed.bounce_id.is_some(), "no DSN queued");
    let dsn = world.next_events(1).await.remove(0);
    assert_eq!(dsn.disposition, Disposition::Delivered, "the DSN was not delivered: {dsn:?}");
    let stored = world.wait_messages(1).await.remove(0);
    assert_eq!(stored.rcpt_to, [MAILBOX]);
    assert_eq!(stored.mail_from, MAILBOX);
    let raw = String::from_utf8_lossy(&stored.raw);
    assert!(raw.contains(&format!("From: Mail Delivery System <{MAILBOX}>\r\n")), "{raw}");
    assert!(raw.contains("Content-Type: multipart/report; report-type=delivery-status;"), "{raw}");
    assert!(raw.contains("Final-Recipient: rfc822; gone@contoso.com\r\nAction: failed\r\nStatus: 5.1.1\r\n"), "{raw}");
    world.stop().await;
}
