//! Queue control: `sluice queue` (the real binary) against a running `sluice serve`, through its admin
//! interface. Listing with each filter, show, retry, hold and release, delete, bounce, flush, an admin
//! hold across a restart, and the errors (unknown id, no token).
//!
//! Mail is kept waiting without any timing: the upstream refuses one recipient (451), or is not running
//! at all, and the retry interval is an hour, so a message moves only when the test asks it to.

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

/// Runs `sluice queue ARGS --config …` (the options after the subcommand, as an admin would type them).
fn queue(sluice: &Sluice, args: &[&str]) -> CmdOutput {
    run_command(
        Command::new(sluice_bin()).arg("queue").args(args).arg("--config").arg(&sluice.config_path),
        None,
        DEADLINE,
    )
}

/// `sluice queue ARGS`, which must succeed.
#[track_caller]
fn queue_ok(sluice: &Sluice, args: &[&str]) -> String {
    let out = queue(sluice, args);
    assert!(out.success(), "sluice queue {args:?}:\n{out}");
    out.stdout
}

/// The ids `sluice queue list --json FILTERS` prints, sorted.
#[track_caller]
fn listed(sluice: &Sluice, filters: &[&str]) -> Vec<String> {
    let mut args = vec!["list", "--json"];
    args.extend_from_slice(filters);
    let list: Vec<Value> = serde_json::from_str(&queue_ok(sluice, &args)).expect("list --json is JSON");
    let mut ids: Vec<String> = list.iter().map(|m| m["id"].as_str().unwrap().to_owned()).collect();
    ids.sort();
    ids
}

/// The message `id` as `list --json` shows it, if it is queued.
fn entry(sluice: &Sluice, id: &str) -> Option<Value> {
    let list: Vec<Value> = serde_json::from_str(&queue_ok(sluice, &["list", "--json"])).unwrap();
    list.into_iter().find(|m| m["id"] == id)
}

/// Waits until message `id` has been attempted at least `n` times.
fn wait_attempts(sluice: &Sluice, id: &str, n: u64) -> Value {
    wait_until(DEADLINE, &format!("{id} attempted {n} time(s)"), || {
        entry(sluice, id).filter(|m| m["attempts"].as_u64().unwrap_or(0) >= n)
    })
}

fn send(sluice: &Sluice, from: &str, to: &[&str], subject: &str) -> String {
    let mut c = sluice.connect(0);
    c.ehlo();
    let id = queued_id(&c.send_mail(from, to, &message(from, to[0], subject, "queue control test")));
    c.quit();
    id
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

fn start(upstream: UpstreamCfg) -> Sluice {
    Sluice::builder()
        .listener(Listener::plain().allow(&["127.0.0.0/8"]))
        .upstream(upstream)
        // Deferred mail waits an hour: only the admin's commands make it move during a test.
        .retry("1h", "1h", "5d")
        .start()
}

#[test]
fn list_filters_show_summary_retry_and_bounce() {
    let up = Upstream::builder().tempfail_rcpt("slow@example.test").start();
    let sluice = start(UpstreamCfg::of(&up));
    let a = send(&sluice, "alice@client.test", &["slow@example.test"], "from alice");
    let b = send(&sluice, "bob@other.test", &["slow@example.test", "fast@example.test"], "from bob");
    wait_attempts(&sluice, &a, 1);
    wait_attempts(&sluice, &b, 1);
    up.wait_for_messages(1, DEADLINE); // fast@ got its copy

    // mailq-like text: a block per message, each recipient with its last reply, then a summary.
    let text = queue_ok(&sluice, &["list"]);
    assert!(text.contains(&a) && text.contains(&b), "{text}");
    assert!(text.contains("DEFERRED"), "{text}");
    assert!(text.contains("slow@example.test  pending  (451 4.2.0"), "{text}");
    assert!(text.contains("fast@example.test  delivered"), "{text}");
    assert!(text.contains("in 2 messages (0 queued, 2 deferred"), "{text}");

    // Each filter.
    let both = sorted(vec![a.clone(), b.clone()]);
    // `[upstream]` is the upstream named "default".
    let upstream = "default".to_owned();
    assert_eq!(listed(&sluice, &[]), both);
    assert_eq!(listed(&sluice, &["--sender", "alice"]), [a.as_str()]);
    assert_eq!(listed(&sluice, &["--sender", "*@OTHER.test"]), [b.as_str()], "glob, case-insensitive");
    assert_eq!(listed(&sluice, &["--sender", "*@other"]), Vec::<String>::new(), "a glob matches the whole address");
    assert_eq!(listed(&sluice, &["--recipient", "fast@"]), [b.as_str()]);
    assert_eq!(listed(&sluice, &["--recipient", "slow@example.test"]), both);
    assert_eq!(listed(&sluice, &["--upstream", &upstream]), both);
    assert_eq!(listed(&sluice, &["--upstream", "office365"]), Vec::<String>::new());
    assert_eq!(listed(&sluice, &["--older-than", "1h"]), Vec::<String>::new());
    assert_eq!(listed(&sluice, &["--newer-than", "1h"]), both);
    assert_eq!(listed(&sluice, &["--older-than", "0s", "--newer-than", "1d"]), both);
    assert_eq!(listed(&sluice, &["--state", "deferred"]), both);
    assert_eq!(listed(&sluice, &["--state", "queued"]), Vec::<String>::new());
    queue_ok(&sluice, &["hold", &a, "--reason", "looks odd"]);
    assert_eq!(listed(&sluice, &["--state", "held"]), [a.as_str()]);
    assert_eq!(listed(&sluice, &["--state", "deferred", "--sender", "bob"]), [b.as_str()]);
    let bad = queue(&sluice, &["list", "--state", "lost"]);
    assert!(!bad.success() && bad.stderr.contains("route-held"), "{bad}");

    // show: the envelope, per-recipient states and the headers read from the spool.
    let shown = queue_ok(&sluice, &["show", &b]);
    assert!(shown.contains("Subject: from bob"), "{shown}");
    assert!(shown.contains("from bob@other.test") && shown.contains("fast@example.test  delivered"), "{shown}");
    let detail: Value = serde_json::from_str(&queue_ok(&sluice, &["show", &b, "--json"])).unwrap();
    assert_eq!(detail["state"], "deferred");
    assert!(detail["headers"].as_str().unwrap().contains("Message-ID: <from-bob@client.test>"), "{detail}");
    let held: Value = serde_json::from_str(&queue_ok(&sluice, &["show", &a, "--json"])).unwrap();
    assert_eq!(held["hold"]["reason"], "looks odd");
    assert_eq!(held["next_attempt_ms"], Value::Null);

    // summary: counts by state and by age.
    let summary = queue_ok(&sluice, &["summary"]);
    assert!(summary.contains("2 messages") && summary.contains("2 recipients pending"), "{summary}");
    assert!(summary.contains("queued 0, deferred 1, held 1, active 0, route-held 0"), "{summary}");
    assert!(summary.contains("<5m 2, <1h 0, <1d 0, older 0"), "{summary}");
    let summary: Value = serde_json::from_str(&queue_ok(&sluice, &["summary", "--json"])).unwrap();
    assert_eq!(summary["queue"]["messages"], 2);
    assert_eq!(summary["route_holds"], serde_json::json!([]));

    // retry: due now instead of in an hour (slow@ is refused again, so it is attempted a second time).
    let out = queue_ok(&sluice, &["retry", &b]);
    assert!(out.contains("due now"), "{out}");
    wait_attempts(&sluice, &b, 2);

    // bounce: a DSN to the sender for the pending recipient, then the message is gone.
    let out = queue_ok(&sluice, &["bounce", &b, "--reason", "recipient left"]);
    assert!(out.contains("bounced") && out.contains("DSN"), "{out}");
    let msgs = up.wait_for(DEADLINE, "the DSN to bob", |m| m.iter().any(|r| r.mail_from.is_empty()));
    let dsn = msgs.iter().find(|r| r.mail_from.is_empty()).unwrap();
    assert_eq!(dsn.rcpt_tos, ["bob@other.test"]);
    let text = String::from_utf8_lossy(&dsn.data);
    assert!(text.contains("deleted by the administrator (recipient left)"), "{text}");
    assert!(text.contains("Final-Recipient: rfc822; slow@example.test"), "{text}");
    assert!(!text.contains("Final-Recipient: rfc822; fast@example.test"), "delivered recipients are not bounced");
    assert!(text.contains("Subject: from bob"), "the original headers are quoted: {text}");
    wait_until(DEADLINE, "the DSN delivered and the bounced message gone", || {
        (listed(&sluice, &[]) == [a.as_str()]).then_some(())
    });
    assert!(sluice.log().contains("message bounced by the administrator"));
}

#[test]
fn hold_retry_release_delete_and_flush() {
    // Nobody listens on the upstream's port yet: every attempt fails and the mail is deferred.
    let up_port = free_port();
    let sluice = start(UpstreamCfg::plain(up_port));
    let held = send(&sluice, "alice@client.test", &["bob@example.test"], "held one");
    let deleted = send(&sluice, "alice@client.test", &["bob@example.test"], "deleted one");
    let flushed = send(&sluice, "alice@client.test", &["bob@example.test"], "flushed one");
    for id in [&held, &deleted, &flushed] {
        wait_attempts(&sluice, id, 1);
    }

    queue_ok(&sluice, &["hold", &held]);
    let again = queue(&sluice, &["hold", &held]);
    assert!(!again.success() && again.stderr.contains("already held"), "{again}");
    // A held message is not made due by retry, alone or with --all.
    let retry = queue(&sluice, &["retry", &held]);
    assert!(!retry.success(), "{retry}");
    assert!(retry.stderr.contains("held") && retry.stderr.contains("release"), "{retry}");
    assert!(retry.stderr.contains("409"), "{retry}");

    let out = queue_ok(&sluice, &["delete", &deleted, "--reason", "sent by mistake"]);
    assert!(out.contains("deleted"), "{out}");
    let gone = queue(&sluice, &["show", &deleted]);
    assert!(!gone.success() && gone.stderr.contains(&format!("no message {deleted}")), "{gone}");
    assert!(!sluice.spool_dir.join(format!("queue/{deleted}.msg")).exists(), "removed from the spool");
    let log = sluice.log();
    assert!(log.contains("message deleted by the administrator") && log.contains("sent by mistake"), "{log}");

    // The upstream comes up. Without a flush the deferred message would wait its hour.
    let up = Upstream::builder().port(up_port).start();
    let out = queue_ok(&sluice, &["flush"]);
    assert!(out.contains("1 deferred message(s) due now"), "the held one is not flushed: {out}");
    let msgs = up.wait_for_messages(1, DEADLINE);
    assert_eq!(msgs[0].subject().as_deref(), Some("flushed one"));
    let all = queue_ok(&sluice, &["retry", "--all"]);
    assert!(all.contains("0 message(s) due now"), "held mail is left alone by retry --all: {all}");
    assert_eq!(listed(&sluice, &[]), [held.as_str()]);
    assert_eq!(entry(&sluice, &held).unwrap()["state"], "held");

    // Released, it goes at once.
    queue_ok(&sluice, &["release", &held]);
    let msgs = up.wait_for_messages(2, DEADLINE);
    assert_eq!(msgs[1].subject().as_deref(), Some("held one"));
    wait_until(DEADLINE, "an empty queue", || listed(&sluice, &[]).is_empty().then_some(()));
    assert_eq!(queue_ok(&sluice, &["list"]), "Mail queue is empty\n");
    // The deleted message is in neither the queue nor the spool: it can never be delivered.
    let subjects: Vec<_> = up.messages().iter().map(|m| m.subject().unwrap_or_default()).collect();
    assert_eq!(subjects, ["flushed one", "held one"]);
    let not_held = queue(&sluice, &["release", &held]);
    assert!(!not_held.success() && not_held.stderr.contains("no message"), "{not_held}");
}

#[test]
fn an_admin_hold_survives_a_restart_and_errors_are_clear() {
    let up_port = free_port();
    let mut sluice = start(UpstreamCfg::plain(up_port));
    let held = send(&sluice, "alice@client.test", &["bob@example.test"], "held over a restart");
    wait_attempts(&sluice, &held, 1);
    queue_ok(&sluice, &["hold", &held, "--reason", "ask finance first"]);

    sluice.restart();
    let up = Upstream::builder().port(up_port).start();
    let after = send(&sluice, "alice@client.test", &["bob@example.test"], "sent after the restart");
    let msgs = up.wait_for_messages(1, DEADLINE);
    assert_eq!(msgs[0].subject().as_deref(), Some("sent after the restart"));
    wait_until(DEADLINE, "the later message gone from the queue", || entry(&sluice, &after).is_none().then_some(()));
    let still = entry(&sluice, &held).expect("the held message is still queued after the restart");
    assert_eq!(still["state"], "held");
    assert_eq!(still["hold"]["reason"], "ask finance first");
    assert_eq!(up.count(), 1, "the held message was not delivered");

    queue_ok(&sluice, &["release", &held]);
    let msgs = up.wait_for_messages(2, DEADLINE);
    assert_eq!(msgs[1].subject().as_deref(), Some("held over a restart"));

    // An unknown id: a clear sentence and exit status 1, whatever the action.
    for action in ["show", "retry", "hold", "release", "delete", "bounce"] {
        let out = queue(&sluice, &[action, "00000000DEADBEEF"]);
        assert_eq!(out.status.code(), Some(1), "{action}: {out}");
        assert!(out.stderr.contains("no message 00000000DEADBEEF in the queue"), "{action}: {out}");
    }

    // Without the right token: refused, by the CLI and by the API.
    let out = run_command(
        Command::new(sluice_bin())
            .args(["queue", "list", "--config"])
            .arg(&sluice.config_path)
            .env("SLUICE_ADMIN_TOKEN", "not-the-token-not-the-token"),
        None,
        DEADLINE,
    );
    assert_eq!(out.status.code(), Some(1), "{out}");
    assert!(out.stderr.contains("refused the token"), "{out}");
    let discovery: Value =
        serde_json::from_slice(&std::fs::read(sluice.spool_dir.join("admin.json")).unwrap()).unwrap();
    let url = discovery["url"].as_str().unwrap();
    let curl = require_tool("curl", &[], "curl");
    for (method, path) in [("GET", "/api/queue"), ("POST", "/api/queue/flush"), ("DELETE", "/api/queue/X")] {
        let out = run_command(
            Command::new(&curl)
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", method])
                .arg(format!("{url}{path}")),
            None,
            DEADLINE,
        );
        assert_eq!(out.stdout.trim(), "401", "{method} {path} without a token: {out}");
    }
}
