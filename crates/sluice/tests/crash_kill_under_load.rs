//! Kill under load: clients send continuously, each message with a unique id, and record which
//! ones got 250; sluice is SIGKILLed at random moments and restarted on the same spool each time.
//! Afterwards every acknowledged message has reached the upstream: a loss fails the test;
//! duplicates (a kill between the upstream's 250 and the spool update) are counted and reported.
//! After each kill the spool on disk is checked as recovery will find it: every record whole,
//! every body at its recorded size; and no restart reports a corrupt entry.
//!
//! CI runs 6 kills; `scripts/faults.sh` runs 20 (`SLUICE_FAULTS_KILLS`).
//!
//! A message found missing gets its whole story printed (its queue id from the 250, its files, every
//! log line naming it) before the test fails.

mod common;

use std::fs;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::faults::*;
use common::*;

#[test]
fn acknowledged_mail_survives_sigkill_at_random_moments() {
    let kills = knob("SLUICE_FAULTS_KILLS", 6);
    let mut rng = Rng::new("kill under load");
    let up = Upstream::builder().start();
    let mut sluice = Sluice::builder()
        .listener(Listener::plain().allow(&["127.0.0.0/8"]))
        .upstream(UpstreamCfg::of(&up))
        .retry("1s", "2s", "1h")
        .start();

    let mut options = LoadOptions::new("kill");
    options.threads = 4;
    options.max_recipients = 2;
    options.body_bytes = (300, 20_000);
    let load = LoadClient::start(sluice.port(), options);
    let started = Instant::now();

    for k in 1..=kills {
        // Let some messages through (and some deliveries start) before each kill.
        let floor = load.acked() + 5;
        wait_until(DEADLINE, "the clients to get more messages acknowledged", || (load.acked() >= floor).then_some(()));
        sleep(rng.millis(300, 2_500));
        sluice.kill9();
        // The spool as the next start will find it: no half record, no short body. A state file
        // without its message is a removal cut short, which recovery deletes.
        let found = check_spool(&sluice.spool_dir, &format!("after kill {k}"));
        eprintln!(
            "kill {k}/{kills} at {:.1}s: {} acknowledged so far, {} queued on disk",
            started.elapsed().as_secs_f64(),
            load.acked(),
            found.ids.len()
        );
        sleep(rng.millis(0, 500)); // clients find the port closed meanwhile
        sluice.restart();
    }
    sleep(Duration::from_secs(1));
    let report = load.stop();

    // Everything acknowledged arrives, whichever run of sluice delivers it.
    let deadline = Duration::from_secs(60) + Duration::from_millis(50 * report.acked.len() as u64);
    let (msgs, missing) = collect_load_ids(report.acked.keys(), deadline, |seq| up.messages_after(seq));
    if !missing.is_empty() {
        // Everything there is to know about the missing ones, then fail.
        let log = sluice.log();
        let mut story = String::new();
        for id in &missing {
            let queue_id = report.queue_ids.get(id).cloned().unwrap_or_default();
            story.push_str(&format!("--- {id}: queued as {queue_id}; files: "));
            for dir in ["queue", "tmp", "corrupt"] {
                for name in fs::read_dir(sluice.spool_dir.join(dir)).into_iter().flatten().flatten() {
                    let name = name.file_name().to_string_lossy().into_owned();
                    if !queue_id.is_empty() && name.contains(&queue_id) {
                        story.push_str(&format!("{dir}/{name} "));
                    }
                }
            }
            story.push('\n');
            for line in log.lines().filter(|l| !queue_id.is_empty() && l.contains(&queue_id)) {
                story.push_str(line);
                story.push('\n');
            }
        }
        for line in log.lines().filter(|l| {
            l.contains("test harness") || l.contains("listen") || l.contains("ERROR") || l.contains("panicked")
        }) {
            story.push_str(line);
            story.push('\n');
        }
        let bounces = msgs.iter().filter(|m| m.mail_from.is_empty()).count();
        panic!(
            "{} acknowledged message(s) never reached the upstream ({bounces} bounce(s) there; queue/ holds {} \
             file(s), corrupt/ {:?}):\n{story}",
            missing.len(),
            queue_files(&sluice.spool_dir).len(),
            corrupt_files(&sluice.spool_dir)
        );
    }
    // ... and nothing is left behind in the queue.
    wait_for_empty_queue(&sluice.spool_dir, Duration::from_secs(60));

    let (copies, unacked_delivered) = tally(&report, &msgs);
    let lost: Vec<&String> = report.acked.keys().filter(|id| !copies.contains_key(*id)).collect();
    let duplicates: usize = copies.values().map(|n| n - 1).sum();
    let log = sluice.log();
    eprintln!(
        "kill under load: {kills} SIGKILLs over {:.1}s; {} messages attempted, {} acknowledged \
         (250), {} refused {:?}, {} cut off by a kill; delivered: {} acknowledged, {duplicates} \
         duplicate(s), {unacked_delivered} unacknowledged ones delivered anyway, {} lost",
        started.elapsed().as_secs_f64(),
        report.attempted.len(),
        report.acked.len(),
        report.refused.values().sum::<u64>(),
        report.refused,
        report.broken,
        copies.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "acknowledged messages were lost: {lost:?}");
    let bounces: Vec<&Received> = msgs.iter().filter(|m| m.mail_from.is_empty()).collect();
    assert!(bounces.is_empty(), "sluice bounced {} message(s):\n{}", bounces.len(), show(&bounces[0].data));
    // No restart found anything to quarantine.
    let corrupt = corrupt_files(&sluice.spool_dir);
    assert!(corrupt.is_empty(), "a restart quarantined queue entries: {corrupt:?}");
    assert!(!log.contains("panicked"), "sluice panicked:\n{log}");
    assert!(report.acked.len() as u64 >= kills * 5, "the clients got too few messages through to prove anything");
}
