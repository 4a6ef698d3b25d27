//! 100 messages to one mailbox: sluice sends no more than 30 in any simulated minute (the simulator's
//! manual clock, which sluice's shaper is given), none is lost, and none is refused for the rate: the
//! simulator would answer `451 4.7.500 Server busy` to the 31st, and no deferral may appear.

mod m365;

use std::sync::Arc;
use std::time::Duration;

use exosim::Clock as _;
use m365::*;
use sluice::upstream::Disposition;

const MESSAGES: usize = 100;
const PER_MINUTE: usize = 30;

#[tokio::test]
async fn hundred_messages_go_out_at_thirty_a_minute_and_none_is_lost() {
    let mut world = start(
        // Over the rate, the simulator refuses (instead of slowing down) so an oversend would show.
        &tenant("clock = \"manual\"", "[limits]\nrate_limit_action = \"reject\"\n"),
        |sim, dir| upstream("m365-oauth", sim, dir),
        "",
    )
    .await;
    let clock = world.sim.manual_clock();
    world.scheduler.set_shaping_clock(Arc::new(move || clock.now()));

    for i in 0..MESSAGES {
        let subject = format!("shaped {i}");
        world.submit(MAILBOX, &["alice@contoso.com"], &message(MAILBOX, "alice@contoso.com", &subject)).await;
    }

    let mut delivered = 0;
    while delivered < MESSAGES {
        // sluice sends what this minute allows, then waits for the clock.
        let expected = (delivered + PER_MINUTE).min(MESSAGES);
        for event in world.next_events(expected - delivered).await {
            assert_eq!(event.disposition, Disposition::Delivered, "nothing may be deferred or bounced: {event:?}");
        }
        delivered = expected;
        // Nothing more may arrive within the same simulated minute.
        assert_eq!(world.sim.messages().len(), delivered);
        world.sim.advance(Duration::from_secs(61));
    }

    let stored = world.wait_messages(MESSAGES).await;
    assert_eq!(stored.len(), MESSAGES, "none lost, none duplicated");
    let mut subjects: Vec<String> = stored
        .iter()
        .map(|m| {
            let raw = String::from_utf8_lossy(&m.raw).into_owned();
            raw.lines().find(|l| l.starts_with("Subject:")).unwrap().to_owned()
        })
        .collect();
    subjects.sort();
    subjects.dedup();
    assert_eq!(subjects.len(), MESSAGES);
    // No sliding minute of the simulator's clock holds more than 30.
    for m in &stored {
        let in_window =
            stored.iter().filter(|o| o.accepted_at >= m.accepted_at && o.accepted_at < m.accepted_at + 60.0).count();
        assert!(in_window <= PER_MINUTE, "{in_window} messages within a minute of {}", m.accepted_at);
    }
    assert_eq!(world.scheduler.waiting(), 0);
    world.stop().await;
}
