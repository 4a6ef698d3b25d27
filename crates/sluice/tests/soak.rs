//! Soak: mixed load (sizes up to 60 KB, one to three recipients, several sessions) against an
//! upstream that flaps: well-behaved, stopped, 421, dropping connections, 4xx, stalling,
//! resetting STARTTLS, in random phases of a few seconds. Afterwards nothing acknowledged is
//! lost, and sluice's open files and memory are back where they were (flat).
//!
//! CI runs 15 s; `scripts/faults.sh` runs 30 minutes (`SLUICE_SOAK_SECS=1800`), where the memory
//! trend is checked quarter by quarter too.

mod common;

use std::collections::BTreeSet;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::faults::*;
use common::*;

/// Phases of the upstream, the well-behaved one listed more often.
const PHASES: &[&str] = &[
    "none",
    "none",
    "none",
    "down",
    "421-greeting",
    "421-mail",
    "drop-after-data",
    "tempfail-data",
    "tempfail-mail",
    "stall-data",
    "reset-starttls",
    "close",
];

struct Sample {
    at: f64,
    rss: u64,
    fds: usize,
}

#[test]
fn mixed_load_with_a_flapping_upstream_loses_nothing_and_stays_flat() {
    let secs = knob("SLUICE_SOAK_SECS", 15);
    let mut rng = Rng::new("soak");
    let pki = Pki::new();
    let mut up = FaultyUpstream::start(Some(&pki), 3.0);
    let mut cfg = UpstreamCfg::of_faulty(&up);
    cfg.command_timeout = Some("2s".into());
    cfg.connect_timeout = Some("2s".into());
    cfg.idle_timeout = Some("2s".into());
    let sluice = Sluice::builder()
        .listener(Listener::plain().allow(&["127.0.0.0/8"]))
        .upstream(cfg)
        .retry("1s", "2s", "1h")
        .start();
    let pid = sluice.pid();
    sleep(Duration::from_millis(500));
    let fds_idle = open_fds(pid).expect("fds");
    let fd_targets_idle = fd_targets(pid);
    let rss_idle = rss_kib(pid).expect("rss");

    let mut options = LoadOptions::new("soak");
    options.threads = 3;
    options.per_connection = 10;
    options.body_bytes = (200, 60_000);
    options.max_recipients = 3;
    options.pause = Duration::from_millis(60);
    let load = LoadClient::start(sluice.port(), options);

    let started = Instant::now();
    let end = started + Duration::from_secs(secs);
    let mut samples: Vec<Sample> = Vec::new();
    let mut phases = Vec::new();
    while Instant::now() < end {
        let phase = PHASES[rng.range(0, PHASES.len() as u64) as usize];
        if phase == "down" {
            up.stop();
        } else {
            if !up.is_running() {
                up.restart();
            }
            up.set_mode(phase);
        }
        phases.push(phase);
        let phase_end = (Instant::now() + rng.millis(700, 4_000)).min(end);
        while Instant::now() < phase_end {
            samples.push(Sample {
                at: started.elapsed().as_secs_f64(),
                rss: rss_kib(pid).unwrap_or(0),
                fds: open_fds(pid).unwrap_or(0),
            });
            sleep(Duration::from_millis(500));
        }
    }
    let report = load.stop();
    if !up.is_running() {
        up.restart();
    }
    up.set_mode("none");

    let n = report.acked.len();
    let msgs = wait_for_load_ids(
        report.acked.keys(),
        Duration::from_secs(120) + Duration::from_millis(50 * n as u64),
        |seq| up.messages_after(seq),
    );
    wait_for_empty_queue(&sluice.spool_dir, DEADLINE);
    // Idle again: upstream connections close after their 2s idle timeout, sessions are gone.
    let fds_end = wait_until(Duration::from_secs(30), "sluice's open files to return to their idle count", || {
        let fds = open_fds(pid).unwrap_or(usize::MAX);
        (fds <= fds_idle).then_some(fds)
    });
    let rss_end = rss_kib(pid).unwrap_or(0);
    if fds_end != fds_idle {
        eprintln!("open files when idle at the start: {fd_targets_idle:?}\nand at the end: {:?}", fd_targets(pid));
    }

    let (copies, unacked_delivered) = tally(&report, &msgs);
    let duplicates: usize = copies.values().map(|c| c - 1).sum();
    let bounces = msgs.iter().filter(|m| m.mail_from.is_empty()).count();
    let fds_max = samples.iter().map(|s| s.fds).max().unwrap_or(0);
    let rss_max = samples.iter().map(|s| s.rss).max().unwrap_or(0);
    let quarter = |q: usize| -> u64 {
        let span = secs as f64 / 4.0;
        let mut v: Vec<u64> =
            samples.iter().filter(|s| s.at >= span * q as f64 && s.at < span * (q + 1) as f64).map(|s| s.rss).collect();
        v.sort();
        v.get(v.len() / 2).copied().unwrap_or(0)
    };
    let quarters = [quarter(0), quarter(1), quarter(2), quarter(3)];
    eprintln!(
        "soak: {secs}s, {} upstream phases ({} distinct), {} messages attempted, {n} acknowledged, \
         refused {:?}; delivered: {} acknowledged ({} recipients' copies in {} upstream messages), \
         {duplicates} duplicate(s), {unacked_delivered} unacknowledged delivered anyway, \
         {bounces} bounce(s), 0 lost; open files {fds_idle} idle → max {fds_max} under load → \
         {fds_end} idle again; RSS {} idle → max {} → {} at the end; RSS median per quarter: {}",
        phases.len(),
        phases.iter().collect::<BTreeSet<_>>().len(),
        report.attempted.len(),
        report.refused,
        copies.len(),
        report.acked.values().map(Vec::len).sum::<usize>(),
        msgs.len(),
        mib(rss_idle),
        mib(rss_max),
        mib(rss_end),
        quarters.map(mib).join(", ")
    );
    assert_eq!(bounces, 0, "nothing should bounce");
    assert!(n > 0, "the load got nothing through");
    // Memory: no gross growth in a short run; in a long one, the last quarter no higher than the
    // second (the first is warm-up) by more than a quarter plus a little allocator slack.
    assert!(rss_end <= 3 * rss_idle + 64 * 1024, "RSS grew from {} to {}", mib(rss_idle), mib(rss_end));
    if secs >= 300 {
        assert!(
            quarters[3] <= quarters[1] + quarters[1] / 4 + 8 * 1024,
            "RSS keeps growing: medians per quarter {:?}",
            quarters.map(mib)
        );
    }
    let log = sluice.log();
    assert!(!log.contains("panicked"), "sluice panicked");
}
