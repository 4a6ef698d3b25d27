//! A held route seen and released from the command line, as an admin would after fixing the cause:
//! `sluice queue summary` names the hold, `list --state route-held` shows what it set aside, and
//! `sluice queue release-route` lifts it (an unknown upstream is refused); the mail then goes out.

mod m365;

use std::path::Path;
use std::process::{Command, Output};

use m365::*;
use sluice::upstream::Disposition;

/// Runs `sluice queue ARGS --config <the world's config>` on a blocking thread (the relay runs in
/// this process).
async fn queue(config: &Path, args: &[&str]) -> (Output, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.arg("queue").args(args).arg("--config").arg(config);
    let out = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().expect("sluice runs");
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    (out, stdout, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_route_is_listed_and_released_from_the_command_line() {
    let mut world = start_with_wrong_secret(
        // Only the admin may end this hold.
        "1h",
    )
    .await;
    for i in 0..2 {
        world
            .submit(MAILBOX, &["alice@contoso.com"], &message(MAILBOX, "alice@contoso.com", &format!("held {i}")))
            .await;
    }
    world
        .wait_until("the route to be held with both messages", |w| {
            w.scheduler.hold_status().is_some_and(|h| h.held_messages == 2)
        })
        .await;
    let config = world.dir.path().join("sluice.toml");

    let (out, stdout, stderr) = queue(&config, &["summary"]).await;
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("route held") && stdout.contains("AADSTS7000215"), "{stdout}");
    let (out, stdout, stderr) = queue(&config, &["list", "--state", "route-held", "--json"]).await;
    assert!(out.status.success(), "{stdout}{stderr}");
    let listed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{stdout}");

    // The admin fixes the secret, then releases the hold.
    world.fix_secret();
    let (out, _, stderr) = queue(&config, &["release-route", "no-such-upstream"]).await;
    assert!(!out.status.success());
    assert!(stderr.contains("no upstream named \"no-such-upstream\""), "{stderr}");
    assert!(world.scheduler.hold_status().is_some(), "a refused release changes nothing");
    let (out, stdout, stderr) = queue(&config, &["release-route", "default"]).await;
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("released"), "{stdout}");

    let events = world.next_events(2).await;
    assert!(events.iter().all(|e| e.disposition == Disposition::Delivered), "{events:?}");
    assert_eq!(world.wait_messages(2).await.len(), 2);
    world.stop().await;
}
