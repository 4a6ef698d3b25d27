//! I/O errors on the spool, injected into the real binary with libfiu (Debian's fiu-utils):
//! sluice runs under `fiu-run -x` (libfiu's POSIX preload library wraps libc's fsync, open, ...)
//! and the test switches failure points on and off at run time with `fiu-ctrl`. A commit whose
//! fsync (of a file or of queue/) or open fails must answer 451 4.3.0, never 250, and leave
//! nothing half-queued; the session goes on; what was acknowledged is delivered, what was refused
//! never is.
//!
//! Failure points used: `posix/io/sync/fsync` (EIO) and `posix/io/oc/open`. Not `posix/io/rw/write`:
//! libfiu cannot aim it at the spool's files, and the same write(2) carries tokio's eventfd
//! wake-ups and the log lines, so enabling it breaks the whole process rather than a spool write.
//! Write errors are covered by the disk-full test (a real ENOSPC from the kernel).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::thread::sleep;
use std::time::Duration;

use common::faults::*;
use common::*;

const FSYNC: &str = "posix/io/sync/fsync";
const OPEN: &str = "posix/io/oc/open";

/// Runs one libfiu remote-control command in sluice.
fn fiu_ctrl(ctrl: &Path, pid: u32, command: &str) {
    let bin = require_tool("fiu-ctrl", &[], "fiu-utils");
    let out =
        run_command(Command::new(bin).arg("-f").arg(ctrl).arg("-c").arg(command).arg(pid.to_string()), None, DEADLINE);
    assert!(out.success(), "fiu-ctrl -c {command:?} failed:\n{out}");
}

/// sluice under `fiu-run -x`, remote control through `<dir>/fiu-ctrl-<pid>.{in,out}`.
fn sluice_under_fiu(ctrl: &Path, up_port: u16) -> Sluice {
    let fiu_run = require_tool("fiu-run", &[], "fiu-utils");
    Sluice::builder()
        .listener(Listener::plain().allow(&["127.0.0.0/8"]))
        .upstream(UpstreamCfg::plain(up_port))
        .retry("1s", "2s", "1h")
        .wrapper(&[fiu_run.as_os_str(), "-x".as_ref(), "-f".as_ref(), ctrl.as_os_str()])
        .start()
}

fn content(subject: &str) -> Vec<u8> {
    message("alice@client.test", "bob@example.test", subject, "a message\n.\nfor the fault tests")
}

/// The end-of-DATA reply for one message on an open session.
fn send(c: &mut SmtpClient, subject: &str) -> Reply {
    c.send_mail("alice@client.test", &["bob@example.test"], &content(subject))
}

#[test]
fn failing_fsync_or_open_answers_451_and_queues_nothing() {
    let dir = tempdir();
    let ctrl = dir.path().join("fiu-ctrl");
    let up_port = free_port(); // the upstream comes up at the end
    let sluice = sluice_under_fiu(&ctrl, up_port);
    let pid = sluice.pid();
    let mut c = sluice.connect(0);
    c.ehlo();

    let first = queued_id(&send(&mut c, "before the faults"));

    // Every fsync fails with EIO: the body's, the record's, queue/'s.
    fiu_ctrl(&ctrl, pid, &format!("enable name={FSYNC},failinfo=5"));
    for subject in ["refused fsync 1", "refused fsync 2"] {
        send(&mut c, subject).expect(451, Some("4.3.0"), subject);
    }
    c.cmd("NOOP").expect(250, None, "NOOP after a refused message");
    fiu_ctrl(&ctrl, pid, &format!("disable name={FSYNC}"));

    // Every open fails (EACCES): the temporary files cannot even be created. The errno is fixed:
    // left to libfiu it is drawn from open's list, which holds ENOSPC and EDQUOT (rightly 452).
    fiu_ctrl(&ctrl, pid, &format!("enable name={OPEN},failinfo=13"));
    send(&mut c, "refused open").expect(451, Some("4.3.0"), "refused open");
    fiu_ctrl(&ctrl, pid, &format!("disable name={OPEN}"));

    // Nothing half-queued: queue/ holds the first message only, whole. (Meanwhile the scheduler
    // has been failing to update that message's record: its temporary files must not linger.)
    let queued = check_spool_settled(&sluice.spool_dir, "after the faults");
    assert_eq!(queued, BTreeSet::from([first.clone()]), "queue/ after refusals");
    wait_until(DEADLINE, "tmp/ to be empty", || tmp_files(&sluice.spool_dir).is_empty().then_some(()));

    let last = queued_id(&send(&mut c, "after the faults"));
    c.quit();

    let up = Upstream::builder().port(up_port).start();
    let msgs = up.wait_for_messages(2, DEADLINE);
    sleep(Duration::from_secs(3)); // time for anything wrongly queued to show up too
    let subjects: Vec<String> = up.messages().iter().filter_map(|m| m.subject()).collect();
    assert_eq!(
        subjects.iter().collect::<BTreeSet<_>>(),
        BTreeSet::from([&"before the faults".to_string(), &"after the faults".to_string()]),
        "exactly the acknowledged messages are delivered ({} messages: {subjects:?})",
        msgs.len()
    );
    assert_eq!(subjects.len(), 2, "no duplicates: {subjects:?}");
    wait_for_empty_queue(&sluice.spool_dir, DEADLINE);
    let log = sluice.log();
    assert!(log.contains("Input/output error"), "the injected EIO reached sluice");
    assert!(!log.contains("panicked"), "sluice panicked:\n{log}");
    eprintln!("fsync/open failures: 3 messages refused with 451 4.3.0; {first} and {last} delivered");
}

#[test]
fn random_fsync_failures_never_yield_a_250_without_the_message() {
    let dir = tempdir();
    let ctrl = dir.path().join("fiu-ctrl");
    let up_port = free_port();
    let sluice = sluice_under_fiu(&ctrl, up_port);
    let pid = sluice.pid();
    let n = knob("SLUICE_FAULTS_FIU_MESSAGES", 40);

    // A third of all fsyncs fail, at any of the commit's three, and in record updates too.
    fiu_ctrl(&ctrl, pid, &format!("enable_random name={FSYNC},probability=0.3,failinfo=5"));
    let mut answers: BTreeMap<String, u16> = BTreeMap::new();
    let mut c = sluice.connect(0);
    c.ehlo();
    for i in 0..n {
        let subject = format!("random fault {i:03}");
        let reply = send(&mut c, &subject);
        match reply.code {
            250 => {
                queued_id(&reply);
            }
            451 => {
                reply.expect(451, Some("4.3.0"), &subject);
            }
            _ => panic!("{subject}: expected 250 or 451 4.3.0, got {reply}"),
        }
        answers.insert(subject, reply.code);
    }
    c.quit();
    fiu_ctrl(&ctrl, pid, &format!("disable name={FSYNC}"));
    let acked: BTreeSet<&String> = answers.iter().filter(|(_, code)| **code == 250).map(|(s, _)| s).collect();
    let refused = answers.len() - acked.len();
    assert!(
        !acked.is_empty() && refused > 0,
        "the random faults should refuse some messages and let others through: {answers:?}"
    );
    let queued = check_spool_settled(&sluice.spool_dir, "after random faults");
    assert_eq!(queued.len(), acked.len(), "one queue entry per 250");

    let up = Upstream::builder().port(up_port).start();
    up.wait_for_messages(acked.len(), DEADLINE);
    wait_for_empty_queue(&sluice.spool_dir, DEADLINE);
    let delivered: Vec<String> = up.messages().iter().filter_map(|m| m.subject()).collect();
    let unique: BTreeSet<&String> = delivered.iter().collect();
    assert_eq!(unique, acked, "delivered = acknowledged (refused ones must never be delivered)");
    assert_eq!(delivered.len(), unique.len(), "no duplicates");
    let tmp = tmp_files(&sluice.spool_dir);
    assert!(tmp.is_empty(), "tmp/ is empty once all is delivered: {tmp:?}");
    eprintln!(
        "random fsync failures (p=0.3): {n} messages, {} acknowledged and delivered once, {refused} refused with 451 4.3.0",
        acked.len()
    );
}

/// A full disk reported by fsync (ENOSPC, as some filesystems do only then: NFS, thin volumes, quotas)
/// answers 452 4.3.1 whichever fsync reported it, the message file's or the queue directory's (the
/// directory's is shared by concurrent commits and used to lose its errno, answering 451).
/// Half of all fsyncs fail, so about a quarter of the commits pass the file's fsync and then fail at
/// the directory's.
#[test]
fn enospc_from_any_fsync_answers_452_not_451() {
    let dir = tempdir();
    let ctrl = dir.path().join("fiu-ctrl");
    let up_port = free_port();
    let sluice = sluice_under_fiu(&ctrl, up_port);
    let pid = sluice.pid();
    let n = knob("SLUICE_FAULTS_FIU_MESSAGES", 40);

    fiu_ctrl(&ctrl, pid, &format!("enable_random name={FSYNC},probability=0.5,failinfo=28"));
    let mut c = sluice.connect(0);
    c.ehlo();
    let mut acked = BTreeSet::new();
    let mut refused = 0;
    for i in 0..n {
        let subject = format!("enospc {i:03}");
        let reply = send(&mut c, &subject);
        match reply.code {
            250 => {
                queued_id(&reply);
                acked.insert(subject);
            }
            452 => {
                reply.expect(452, Some("4.3.1"), &subject);
                refused += 1;
            }
            _ => panic!("{subject}: expected 250 or 452 4.3.1 (an fsync failed with ENOSPC), got {reply}"),
        }
    }
    c.quit();
    fiu_ctrl(&ctrl, pid, &format!("disable name={FSYNC}"));
    assert!(refused > 0 && !acked.is_empty(), "{refused} refused, {} acknowledged", acked.len());
    let queued = check_spool_settled(&sluice.spool_dir, "after ENOSPC from fsync");
    assert_eq!(queued.len(), acked.len(), "one queue entry per 250");

    let up = Upstream::builder().port(up_port).start();
    up.wait_for_messages(acked.len(), DEADLINE);
    wait_for_empty_queue(&sluice.spool_dir, DEADLINE);
    let delivered: BTreeSet<String> = up.messages().iter().filter_map(|m| m.subject()).collect();
    assert_eq!(delivered, acked, "delivered = acknowledged");
    eprintln!("ENOSPC from fsync: {n} messages, {} acknowledged, {refused} refused with 452 4.3.1", acked.len());
}
