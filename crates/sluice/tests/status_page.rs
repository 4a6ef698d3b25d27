//! The status page in a real browser: headless Chromium, driven by selenium (tests/peers/status_page.py),
//! signs in with the admin token, sees a held route (a wrong client secret: Entra refuses the token, see
//! m365_wrong_secret.rs) with its reason and the queue's counts, takes a screenshot, and clicks Release;
//! the hold is gone and the mail goes out.
//!
//! Needs the Debian packages `chromium` and `chromium-driver` and the pip package `selenium` (all
//! installed by scripts/test.sh). The screenshot is kept in the test's directory and, when
//! `SLUICE_SCREENSHOT_DIR` is set, copied there.

mod m365;

use std::path::{Path, PathBuf};
use std::process::Command;

use m365::*;
use sluice::upstream::Disposition;

/// A program the test needs, or a failure that says which package provides it.
fn require(path: &str, package: &str) -> PathBuf {
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "{} is missing: install the Debian package `{package}` (scripts/test.sh installs it)",
        path.display()
    );
    path
}

fn python() -> PathBuf {
    std::env::var_os("SLUICE_TEST_PYTHON").map_or_else(|| PathBuf::from("python3"), PathBuf::from)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_a_held_route_and_releases_it() {
    let chromium = require("/usr/bin/chromium", "chromium");
    let chromedriver = require("/usr/bin/chromedriver", "chromium-driver");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/peers/status_page.py");

    let mut world = start_with_wrong_secret(
        // Only the Release button may end this hold.
        "1h",
    )
    .await;
    for i in 0..2 {
        let subject = format!("held <{i}> & \"quoted\"");
        world.submit(MAILBOX, &["alice@contoso.com"], &message(MAILBOX, "alice@contoso.com", &subject)).await;
    }
    world
        .wait_until("the route to be held with both messages", |w| {
            w.scheduler.hold_status().is_some_and(|h| h.held_messages == 2)
        })
        .await;
    // The admin fixes the secret; the hold stays until released.
    world.fix_secret();

    let spool = world.dir.path().join("spool");
    let discovery: serde_json::Value =
        serde_json::from_slice(&std::fs::read(spool.join("admin.json")).expect("admin.json")).unwrap();
    let url = discovery["url"].as_str().unwrap().to_owned();
    let token = std::fs::read_to_string(spool.join("admin.token")).unwrap().trim().to_owned();
    // The same hold in the metrics: the route, the set-aside outcomes, the refused token requests.
    let scrape = {
        let (url, token) = (format!("{url}/metrics"), token.clone());
        let curl = tokio::task::spawn_blocking(move || {
            Command::new("curl").args(["-s", "-S", "-H", &format!("Authorization: Bearer {token}"), &url]).output()
        });
        let out = curl.await.unwrap().expect("curl runs (Debian package curl)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let value = |prefix: &str| -> f64 {
        scrape.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
    };
    assert_eq!(value("sluice_route_held{"), 1.0, "{scrape}");
    assert!(value("sluice_oauth_token_failures_total") >= 1.0, "{scrape}");
    assert_eq!(value("sluice_oauth_token_refreshes_total"), 0.0, "{scrape}");
    let held: f64 = scrape
        .lines()
        .filter(|l| {
            l.starts_with("sluice_deliveries_total{") && l.contains("result=\"held\",reply_class=\"transport\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    // The first message's attempt was set aside by the hold; the second may have arrived after the hold
    // began, and then waits with it without an attempt (so without an outcome to count).
    assert!(held >= 1.0, "the attempt that met the hold was set aside: {scrape}");
    assert_eq!(value("sluice_queue_messages{state=\"held\"}"), 2.0, "{scrape}");

    let screenshot = world.dir.path().join("status-page.png");
    let profile = world.dir.path().join("chromium-profile");
    std::fs::create_dir(&profile).unwrap();

    let mut cmd = Command::new(python());
    cmd.arg(&script)
        .args(["--url", &url, "--token", &token, "--held", "2"])
        .arg("--screenshot")
        .arg(&screenshot)
        .arg("--user-data-dir")
        .arg(&profile)
        .arg("--chromium")
        .arg(&chromium)
        .arg("--chromedriver")
        .arg(&chromedriver);
    // The relay runs in this process: the browser is driven from a blocking thread.
    let out = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().expect("python3 runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the browser session failed (needs pip package selenium, Debian chromium and chromium-driver):\n\
         --- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    );
    assert!(stdout.contains("held route shown: 2 messages") && stdout.contains("released"), "{stdout}");

    let png = std::fs::read(&screenshot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1000, "a PNG screenshot");
    if let Some(dir) = std::env::var_os("SLUICE_SCREENSHOT_DIR") {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(&screenshot, Path::new(&dir).join("status-page-held.png")).unwrap();
    }

    // The click released the hold: the mail goes out.
    assert!(world.scheduler.hold_status().is_none(), "the hold is gone");
    let events = world.next_events(2).await;
    assert!(events.iter().all(|e| e.disposition == Disposition::Delivered), "{events:?}");
    assert_eq!(world.wait_messages(2).await.len(), 2);
    world.stop().await;
}
