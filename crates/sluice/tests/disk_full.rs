//! Disk full: the spool on a 2 MiB tmpfs (mounted by the test: it needs root, as CI has). With
//! the filesystem full sluice answers 452 4.3.1 at the end of DATA, never 250, and the session
//! goes on; with a little room left (room for a body but not its record, say) every answer is
//! 250 or 452 and the spool stays whole; what it already holds is still delivered; once space is
//! freed it accepts again. Nothing half-written is left: every record has its body at the right
//! size, no body lacks its record, and tmp/ ends empty.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::thread::sleep;
use std::time::Duration;

use common::faults::*;
use common::*;

fn content(subject: &str, size: usize) -> Vec<u8> {
    let mut body = String::new();
    let mut i = 0;
    while body.len() < size {
        body.push_str(&format!("{subject}: line {i} of the body\n"));
        i += 1;
    }
    message("alice@client.test", "bob@example.test", subject, &body)
}

#[test]
fn a_full_spool_answers_452_keeps_delivering_and_recovers() {
    let fs_ = SmallFs::tmpfs("2m");
    let spool = fs_.path.join("spool");
    fs::create_dir(&spool).unwrap();
    let filler = fs_.path.join("filler");
    let up_port = free_port(); // the upstream is down at first: what sluice holds stays queued
    let sluice = Sluice::builder()
        .listener(Listener::plain().allow(&["127.0.0.0/8"]))
        .upstream(UpstreamCfg::plain(up_port))
        .retry("1s", "2s", "1h")
        .spool_dir(&spool)
        // The free-space threshold off: this test is about what a real ENOSPC does (the threshold has
        // its own test, disk_threshold.rs).
        .toml("[spool]\nmin_free_space = 0")
        .start();

    let mut c = sluice.connect(0);
    c.ehlo();
    let mut held: BTreeSet<String> = BTreeSet::new();
    for i in 0..3 {
        let subject = format!("held {i}");
        queued_id(&c.send_mail("alice@client.test", &["bob@example.test"], &content(&subject, 3_000)));
        held.insert(subject);
    }

    // Full: every message is refused with 452 4.3.1, and the session stays usable.
    let filled = fs_.fill(&filler);
    for (i, size) in [100, 20_000].into_iter().enumerate() {
        let subject = format!("refused {i}");
        c.send_mail("alice@client.test", &["bob@example.test"], &content(&subject, size)).expect(
            452,
            Some("4.3.1"),
            &format!("{subject} on a full disk"),
        );
        c.cmd("NOOP").expect(250, None, "NOOP after a 452");
    }
    check_spool_settled(&spool, "after 452s on a full disk");

    // Nearly full: leave 1 to 8 pages; a 6 KiB message may fit whole, or its body may fit and
    // its record not. Whatever the answer, 250 or 452, the spool stays whole.
    let mut accepted_tight = 0;
    let mut refused_tight = 0;
    for pages in 1..=8u64 {
        let f = fs::OpenOptions::new().write(true).open(&filler).unwrap();
        f.set_len(filled.saturating_sub(pages * 4096)).unwrap();
        drop(f);
        let subject = format!("tight {pages}");
        let reply = c.send_mail("alice@client.test", &["bob@example.test"], &content(&subject, 6_000));
        match reply.code {
            250 => {
                queued_id(&reply);
                held.insert(subject.clone());
                accepted_tight += 1;
            }
            452 => {
                reply.expect(452, Some("4.3.1"), &subject);
                refused_tight += 1;
            }
            _ => panic!("{subject}: expected 250 or 452 4.3.1 with {pages} free page(s), got {reply}"),
        }
        check_spool_settled(&spool, &format!("after {subject}"));
        fs_.fill(&filler);
    }
    eprintln!("nearly full (1 to 8 free pages): {accepted_tight} accepted, {refused_tight} refused with 452");
    assert!(refused_tight > 0, "some of the tight cases must have been refused");

    // Still full, and still delivering what it holds.
    let up = Upstream::builder().port(up_port).start();
    let msgs = up.wait_for(DEADLINE, "the held messages, delivered from a full disk", |m| {
        let got: BTreeSet<String> = m.iter().filter_map(|m| m.subject()).collect();
        held.iter().all(|s| got.contains(s))
    });
    wait_for_empty_queue(&spool, DEADLINE);
    fs_.fill(&filler);
    c.send_mail("alice@client.test", &["bob@example.test"], &content("refused again", 1_000)).expect(
        452,
        Some("4.3.1"),
        "a full disk again",
    );

    // Space freed: accepted and delivered.
    fs::remove_file(&filler).unwrap();
    queued_id(&c.send_mail("alice@client.test", &["bob@example.test"], &content("after space was freed", 50_000)));
    c.quit();
    let expected = msgs.len() + 1;
    let msgs = up.wait_for_messages(expected, DEADLINE);
    wait_for_empty_queue(&spool, DEADLINE);
    sleep(Duration::from_millis(500));

    let subjects: Vec<String> = msgs.iter().filter_map(|m| m.subject()).collect();
    let unique: BTreeSet<&String> = subjects.iter().collect();
    assert_eq!(unique.len(), subjects.len(), "duplicates: {subjects:?}");
    assert!(subjects.iter().all(|s| !s.starts_with("refused")), "a refused message was delivered: {subjects:?}");
    let left = (queue_files(&spool), tmp_files(&spool), corrupt_files(&spool));
    assert!(
        left.0.is_empty() && left.1.is_empty() && left.2.is_empty(),
        "nothing may be left in the spool (queue/, tmp/, corrupt/): {left:?}"
    );
    let log = sluice.log();
    assert!(!log.contains("panicked"), "sluice panicked:\n{log}");
    eprintln!(
        "disk full: 2 messages refused with 452 4.3.1 on a full 2 MiB tmpfs; {} held messages \
         delivered while it was full; {} messages delivered in all, once each",
        held.len(),
        subjects.len()
    );
}
