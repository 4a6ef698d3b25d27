//! A wrong client secret: Entra ID refuses the token (AADSTS7000215). The route is held — mail stays
//! queued, nothing is attempted further, nothing is bounced — with a clear reason; once the secret is
//! right and the hold released, the mail goes out.

mod m365;

use m365::*;
use sluice::upstream::Disposition;

#[tokio::test]
async fn wrong_secret_holds_the_route_and_bounces_nothing() {
    let mut world = start_with_wrong_secret(
        // A long recheck: only the release below may let the mail go.
        "1h",
    )
    .await;
    for i in 0..3 {
        let subject = format!("held {i}");
        world.submit(MAILBOX, &["alice@contoso.com"], &message(MAILBOX, "alice@contoso.com", &subject)).await;
    }
    world
        .wait_until("the route to be held with all three messages", |w| {
            w.scheduler.hold_status().is_some_and(|h| h.held_messages == 3) && w.scheduler.waiting() == 3
        })
        .await;
    let hold = world.scheduler.hold_status().unwrap();
    assert!(hold.reason.contains("AADSTS7000215"), "the reason should say why: {}", hold.reason);
    assert!(hold.reason.contains("invalid_client"), "{}", hold.reason);
    assert!(!hold.reason.contains(WRONG_SECRET), "the secret must not appear: {}", hold.reason);
    assert_eq!(world.scheduler.waiting(), 3, "held mail stays queued");
    assert!(world.sim.messages().is_empty());
    // No verdict was given on any recipient: no bounce, no event.
    assert!(world.events.try_recv().is_err(), "a held route must not judge its mail");
    let spool = world.dir.path().join("spool");
    let records = std::fs::read_dir(spool.join("queue")).map(|d| d.count()).unwrap_or(0);
    assert!(records >= 3, "the messages are still in the spool");

    // The admin fixes the secret, then releases the hold.
    world.fix_secret();
    assert!(world.scheduler.release_hold());
    let events = world.next_events(3).await;
    assert!(events.iter().all(|e| e.disposition == Disposition::Delivered), "{events:?}");
    assert_eq!(world.wait_messages(3).await.len(), 3);
    assert!(world.scheduler.hold_status().is_none());
    world.stop().await;
}

#[tokio::test]
async fn a_held_route_is_tried_again_after_hold_recheck() {
    let mut world = start_with_wrong_secret("1s").await;
    world.submit(MAILBOX, &["alice@contoso.com"], &message(MAILBOX, "alice@contoso.com", "recheck")).await;
    world.wait_until("the hold", |w| w.scheduler.hold_status().is_some()).await;
    // Fixed without anyone releasing the hold: the recheck finds the route working.
    world.fix_secret();
    let events = world.next_events(1).await;
    assert_eq!(events[0].disposition, Disposition::Delivered, "{events:?}");
    assert!(world.scheduler.hold_status().is_none());
    world.stop().await;
}
