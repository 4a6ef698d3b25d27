//! The sendmail entry from a shell script, as cron and old applications use it: `-t` recipients with Bcc
//! kept out of the headers, `-f`, `-F`, `-oi`; the binary invoked under the name `sendmail`; and a clear
//! temporary-failure exit (75) when sluice is not running.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn cron_style_script_submits_through_sluice() {
    let up = Upstream::builder().start();
    let sluice = Sluice::builder()
        .listener(Listener::plain().allow(&["127.0.0.0/8"]))
        .upstream(UpstreamCfg::of(&up))
        .retry("1s", "2s", "1h")
        .start();
    let dir = tempfile::tempdir().unwrap();
    // A `sendmail` on PATH that is sluice itself, as a package would install it.
    let link = dir.path().join("sendmail");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_sluice"), &link).unwrap();
    let script = format!(
        r#"set -eu
export PATH="{dir}:$PATH" SLUICE_SENDMAIL_SERVER=127.0.0.1:{port}
printf 'To: Ops <ops@example.test>\nBcc: audit@example.test\nSubject: nightly backup\n\nbackup ok\n.\nstill body with -oi\n' \
  | sendmail -oi -t -f cron@host.test -F "Cron Daemon"
printf 'Subject: second\n\nvia the subcommand\n' | "{bin}" sendmail -f cron@host.test admin@example.test
"#,
        dir = dir.path().display(),
        port = sluice.port(),
        bin = env!("CARGO_BIN_EXE_sluice"),
    );
    let out = run_command(Command::new("bash").arg("-c").arg(&script), None, Duration::from_secs(60));
    assert!(out.success(), "{out}");

    let msgs = up.wait_for_messages(2, Duration::from_secs(30));
    let first = msgs.iter().find(|m| m.subject().as_deref() == Some("nightly backup")).expect("first message");
    assert_eq!(first.mail_from, "cron@host.test");
    let mut rcpts = first.rcpt_tos.clone();
    rcpts.sort();
    assert_eq!(rcpts, ["audit@example.test", "ops@example.test"]);
    let text = String::from_utf8_lossy(&first.data);
    assert!(!text.contains("audit@example.test"), "Bcc must not reach the headers:\n{text}");
    assert!(text.contains("From: \"Cron Daemon\" <cron@host.test>\r\n"), "{text}");
    assert!(text.contains("\r\n.\r\nstill body with -oi\r\n"), "-oi keeps a lone dot as content:\n{text}");
    let second = msgs.iter().find(|m| m.subject().as_deref() == Some("second")).expect("second message");
    assert_eq!(second.rcpt_tos, ["admin@example.test"]);
}

#[test]
fn sluice_not_running_is_a_temporary_failure_with_a_clear_message() {
    let port = free_port();
    let out = run_command(
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["sendmail", "-f", "a@b.test", "c@d.test"])
            .env("SLUICE_SENDMAIL_SERVER", format!("127.0.0.1:{port}")),
        Some(b"Subject: x\n\ny\n"),
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(75), "{out}");
    assert!(out.stderr.contains("cannot connect to sluice") && out.stderr.contains("is it running"), "{out}");
}
