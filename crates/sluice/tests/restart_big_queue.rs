//! Restart with a big queue: with the upstream unreachable, N messages are queued (2,000 in CI;
//! `scripts/faults.sh` queues 100,000 through `SLUICE_FAULTS_QUEUE`); sluice is killed and
//! started again on that spool with the upstream up: all N are delivered, each once. Start-up
//! time (spawn to greeting: sluice scans the whole spool before it listens) and memory are
//! printed.
//!
//! While the queue fills, the upstream is a socket that accepts connections and never greets,
//! with a long command timeout: each delivery worker sits on one message and the rest simply
//! wait, so filling does not also rewrite every record once per retry.

mod common;

use std::collections::BTreeSet;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::faults::*;
use common::*;

#[test]
fn a_big_queue_survives_a_restart_and_is_delivered() {
    let n = knob("SLUICE_FAULTS_QUEUE", 2_000);
    let threads = 4u64;
    let blackhole = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let up_port = blackhole.local_addr().unwrap().port();
    let mut cfg = UpstreamCfg::plain(up_port);
    cfg.command_timeout = Some("1h".into());
    let mut sluice = Sluice::builder()
        .listener(Listener::plain().allow(&["127.0.0.0/8"]))
        .upstream(cfg)
        .retry("1s", "2s", "1h")
        // Up to ~1 ms of scanning per queued message in a debug build, and then some.
        .start_deadline(DEADLINE + Duration::from_millis(n))
        .start();

    let mut options = LoadOptions::new("big");
    options.threads = threads as usize;
    options.per_connection = 100;
    options.body_bytes = (500, 3_000);
    options.max_per_thread = Some(n.div_ceil(threads));
    let filling = Instant::now();
    let load = LoadClient::start(sluice.port(), options);
    let mut last_report = Instant::now();
    wait_until(Duration::from_secs(120) + Duration::from_millis(20 * n), "the queue to fill", || {
        if last_report.elapsed() > Duration::from_secs(30) {
            eprintln!("filling: {} of {n} queued", load.acked());
            last_report = Instant::now();
        }
        load.finished().then_some(())
    });
    let report = load.stop();
    let n = report.acked.len();
    assert!(
        report.refused.is_empty() && report.broken == 0,
        "every message should be accepted: {:?} refused, {} broken",
        report.refused,
        report.broken
    );
    let fill_secs = filling.elapsed().as_secs_f64();
    let rss_full = rss_kib(sluice.pid()).unwrap_or(0);

    sluice.kill9();
    let on_disk = check_spool(&sluice.spool_dir, "after the kill").ids;
    assert_eq!(on_disk.len(), n, "the spool holds every accepted message, whole");
    drop(blackhole);
    let up = Upstream::builder().port(up_port).start();
    sluice.restart();
    let start_up = sluice.last_start;
    let pid = sluice.pid();
    let rss_started = rss_kib(pid).unwrap_or(0);

    let delivering = Instant::now();
    let mut peak = 0;
    let mut last_report = Instant::now();
    // Generous: at least 20 messages a second (a loaded 2-core machine does ten times that).
    let deadline = Duration::from_secs(300) + Duration::from_millis(50 * n as u64);
    loop {
        peak = peak.max(rss_kib(pid).unwrap_or(0));
        let count = up.count();
        if count >= n {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(30) {
            eprintln!("delivering: {count} of {n} at the upstream");
            last_report = Instant::now();
        }
        assert!(
            delivering.elapsed() < deadline,
            "gave up after {deadline:?}: {count} of {n} messages at the upstream\n{}",
            up.log()
        );
        sleep(Duration::from_secs(1)); // listing a directory of 100,000 files is not free
    }
    let delivery_secs = delivering.elapsed().as_secs_f64();
    wait_for_empty_queue(&sluice.spool_dir, DEADLINE);
    let hwm = peak_rss_kib(pid).unwrap_or(0);
    let msgs = up.messages();
    let (copies, _) = tally(&report, &msgs);
    let lost: BTreeSet<&String> = report.acked.keys().filter(|id| !copies.contains_key(*id)).collect();
    let duplicates: usize = copies.values().map(|c| c - 1).sum();
    eprintln!(
        "restart with a big queue: {n} messages queued in {fill_secs:.1}s (sluice RSS {} while \
         holding them); restart: start-up (spawn to greeting, spool scan included) {:.2}s, RSS \
         {} just after start-up, peak {} (VmHWM); all delivered in {delivery_secs:.1}s ({:.0} \
         msg/s); {duplicates} duplicate(s), {} lost",
        mib(rss_full),
        start_up.as_secs_f64(),
        mib(rss_started),
        mib(hwm.max(peak)),
        n as f64 / delivery_secs,
        lost.len()
    );
    assert!(lost.is_empty(), "messages lost: {lost:?}");
    assert_eq!(duplicates, 0, "nothing was in flight: no duplicates");
}
