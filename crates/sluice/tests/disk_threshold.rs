//! The free-space threshold: the spool on an 8 MiB tmpfs (mounted by the test: it needs root, as CI
//! has) with `[spool] min_free_space = "4MiB"`. While the filesystem has less free than that, MAIL
//! gets `452 4.3.1`, and so does the end of DATA of a transaction opened before the disk filled up:
//! nothing is written. Once space is freed mail is accepted again. Entering and leaving the low state
//! are logged once each. What was accepted is delivered; what was refused never is.

mod common;

use std::fs;

use common::faults::*;
use common::*;

const LOW: &str = "spool filesystem is low on space";
const AGAIN: &str = "spool filesystem has space again";

#[test]
fn below_the_threshold_mail_and_data_get_452_and_nothing_is_written() {
    let fs_ = SmallFs::tmpfs("8m");
    let spool = fs_.path.join("spool");
    fs::create_dir(&spool).unwrap();
    let filler = fs_.path.join("filler");
    let up = Upstream::builder().start();
    let sluice = Sluice::builder()
        .listener(Listener::plain().allow(&["127.0.0.0/8"]))
        .upstream(UpstreamCfg::of(&up))
        .spool_dir(&spool)
        .toml("[spool]\nmin_free_space = \"4MiB\"")
        .start();
    let msg = |subject: &str| message("alice@client.test", "bob@example.test", subject, "a line of text\n");

    let mut a = sluice.connect(0);
    a.ehlo();
    queued_id(&a.send_mail("alice@client.test", &["bob@example.test"], &msg("before")));
    // A transaction opened while there is room; its DATA comes after the disk has filled up.
    a.cmd("MAIL FROM:<alice@client.test>").expect(250, None, "MAIL with room on the disk");
    a.cmd("RCPT TO:<bob@example.test>").expect(250, None, "RCPT");

    // Leave 2 MiB free: below the threshold, though a message would still fit.
    let full = fs_.fill(&filler);
    fs::OpenOptions::new().write(true).open(&filler).unwrap().set_len(full - 2 * 1024 * 1024).unwrap();

    // MAIL is refused once sluice has looked again (it caches the free space for a second).
    let mut b = sluice.connect(0);
    b.ehlo();
    let refused = wait_until(DEADLINE, "MAIL to be refused for want of space", || {
        let reply = b.cmd("MAIL FROM:<carol@client.test>");
        if reply.code == 250 {
            b.cmd("RSET").expect(250, None, "RSET");
            return None;
        }
        Some(reply)
    });
    refused.expect(452, Some("4.3.1"), "MAIL below the free-space threshold");
    b.cmd("NOOP").expect(250, None, "the session goes on after a 452");

    // The transaction opened before: its content is refused at the end of DATA, nothing written.
    a.cmd("DATA").expect(354, None, "DATA");
    a.send_content(&msg("refused at the end of DATA")).expect(452, Some("4.3.1"), "end of DATA below the threshold");
    assert!(tmp_files(&spool).is_empty(), "nothing may be written to tmp/: {:?}", tmp_files(&spool));
    a.cmd("MAIL FROM:<alice@client.test>").expect(452, Some("4.3.1"), "MAIL on the first session too");

    b.quit();

    // Space freed: accepted again (a new session per try: each 452 counts towards the error limit).
    fs::remove_file(&filler).unwrap();
    let mut b = wait_until(DEADLINE, "MAIL to be accepted again", || {
        let mut b = sluice.connect(0);
        b.ehlo();
        let reply = b.cmd("MAIL FROM:<carol@client.test>");
        if reply.code == 250 {
            return Some(b);
        }
        reply.expect(452, Some("4.3.1"), "MAIL while space is being freed");
        b.quit();
        None
    });
    b.cmd("RCPT TO:<bob@example.test>").expect(250, None, "RCPT after space was freed");
    b.cmd("DATA").expect(354, None, "DATA after space was freed");
    queued_id(&b.send_content(&msg("after")));
    b.quit();
    a.quit();

    let msgs = up.wait_for_messages(2, DEADLINE);
    wait_for_empty_queue(&spool, DEADLINE);
    let subjects: Vec<String> = msgs.iter().filter_map(|m| m.subject()).collect();
    assert_eq!(subjects.len(), 2, "{subjects:?}");
    assert!(subjects.contains(&"before".to_string()) && subjects.contains(&"after".to_string()), "{subjects:?}");

    let log = sluice.log();
    assert_eq!(log.matches(LOW).count(), 1, "entering the low state is logged once:\n{log}");
    assert_eq!(log.matches(AGAIN).count(), 1, "leaving it is logged once:\n{log}");
    eprintln!(
        "free-space threshold: MAIL and end of DATA refused with 452 4.3.1 below 4 MiB free; accepted again after"
    );
}
