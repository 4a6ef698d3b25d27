//! Order of writes: a kill test cannot see a missing fsync (the page cache survives a process
//! kill), so this one watches the system calls. strace is attached to a running sluice while it
//! accepts one message; before the "250 2.0.0 Ok: queued as <id>" is written to the client's
//! socket the trace must show, for every file of that message (whatever the spool's layout):
//! - written under tmp/, fsynced after its last write, and only then renamed into queue/
//!   (nothing of the message is created in queue/ directly);
//! - queue/ itself fsynced after the last of those renames, so the names survive a power loss.

mod common;

use std::fs;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::Duration;

use common::*;

/// One system call in the trace: where it started and where it returned (the same line unless
/// strace split it into "<unfinished ...>" and "<... resumed>"), its name, its text and result.
#[derive(Debug, Clone)]
struct Call {
    start: usize,
    end: usize,
    name: String,
    /// The arguments as strace printed them (fds decoded with -y).
    args: String,
    result: Option<i64>,
}

/// Parses `strace -f -y -o FILE` output (lines "PID name(args) = result", possibly split in two).
fn parse_trace(text: &str) -> Vec<Call> {
    let mut calls: Vec<Call> = Vec::new();
    let mut open: std::collections::HashMap<(String, String), usize> = Default::default();
    let result_of = |s: &str| -> Option<i64> {
        let (_, r) = s.rsplit_once(") = ")?;
        r.split_whitespace().next()?.parse().ok()
    };
    for (i, line) in text.lines().enumerate() {
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        if let Some(resumed) = rest.strip_prefix("<... ") {
            let name = resumed.split_whitespace().next().unwrap_or("").to_string();
            if let Some(idx) = open.remove(&(pid.to_string(), name)) {
                calls[idx].end = i;
                calls[idx].args.push_str(resumed);
                calls[idx].result = result_of(resumed);
            }
            continue;
        }
        let Some(paren) = rest.find('(') else {
            continue; // "+++ exited ..." and signal lines
        };
        let name = rest[..paren].to_string();
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let unfinished = rest.ends_with("<unfinished ...>");
        calls.push(Call {
            start: i,
            end: i,
            name: name.clone(),
            args: rest[paren..].to_string(),
            result: if unfinished { None } else { result_of(rest) },
        });
        if unfinished {
            open.insert((pid.to_string(), name), calls.len() - 1);
        }
    }
    calls
}

#[test]
fn fsync_rename_and_directory_fsync_come_before_the_250() {
    let strace = require_tool("strace", &[], "strace");
    // An upstream that accepts connections and never says a word: the delivery attempt that
    // follows the commit waits for a greeting, so nothing but the commit touches the spool while
    // strace watches.
    let blackhole = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut upstream = UpstreamCfg::plain(blackhole.local_addr().unwrap().port());
    upstream.command_timeout = Some("20s".into());
    let sluice = Sluice::builder()
        .listener(Listener::plain().allow(&["127.0.0.0/8"]))
        .upstream(upstream)
        .retry("1h", "1h", "5d")
        .start();
    let dir = tempdir();
    let trace_file = dir.path().join("trace.txt");
    let strace_err = dir.path().join("strace.err");

    // The client is connected and in the middle of the transaction before strace attaches, so
    // the trace holds just the end of DATA.
    let mut c = sluice.connect(0);
    c.ehlo();
    c.cmd("MAIL FROM:<alice@client.test>").expect(250, None, "MAIL");
    c.cmd("RCPT TO:<bob@example.test>").expect(250, None, "RCPT");
    c.cmd("DATA").expect(354, None, "DATA");

    let mut tracer = Command::new(&strace)
        .args(["-f", "-y", "-s", "256", "-e"])
        .arg("trace=openat,open,creat,write,pwrite64,writev,fsync,fdatasync,sync_file_range,rename,renameat,renameat2,sendto,sendmsg,close")
        .arg("-o")
        .arg(&trace_file)
        .arg("-p")
        .arg(sluice.pid().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&strace_err).unwrap())
        .spawn()
        .expect("start strace");
    // strace says "Process N attached" for the process's threads once it has them all.
    wait_until(DEADLINE, "strace to attach to sluice", || {
        if let Ok(Some(status)) = tracer.try_wait() {
            panic!(
                "strace exited ({status}) before attaching:\n{}",
                fs::read_to_string(&strace_err).unwrap_or_default()
            );
        }
        fs::read_to_string(&strace_err).unwrap_or_default().contains("attached").then_some(())
    });
    sleep(Duration::from_millis(300));

    let content = message("alice@client.test", "bob@example.test", "write order", "hello\n.\nbye");
    let reply = c.send_content(&content);
    let id = queued_id(&reply);
    c.quit();
    sleep(Duration::from_millis(300));
    drop(blackhole);
    send_signal(tracer.id(), "INT"); // strace detaches and exits; sluice goes on
    assert!(wait_with_deadline(&mut tracer, DEADLINE).is_some(), "strace did not exit");
    let text = fs::read_to_string(&trace_file).expect("strace output");
    let calls = parse_trace(&text);
    let show_trace = || {
        text.lines()
            .filter(|l| l.contains(&id) || l.contains("queue") || l.contains("250 "))
            .collect::<Vec<_>>()
            .join("\n")
    };

    let ok = |c: &Call| c.result.is_some_and(|r| r >= 0);
    let is_sync = |c: &Call| c.name == "fsync" || c.name == "fdatasync";
    let is_write = |c: &Call| matches!(c.name.as_str(), "write" | "writev" | "pwrite64");
    // The 250, written to the client's socket.
    let reply_call = calls
        .iter()
        .find(|c| {
            matches!(c.name.as_str(), "write" | "writev" | "sendto" | "sendmsg")
                && c.args.contains(&format!("250 2.0.0 Ok: queued as {id}"))
        })
        .cloned()
        .unwrap_or_else(|| panic!("no write of the 250 in the trace:\n{}", show_trace()));
    let before_250 = |c: &Call| ok(c) && c.end < reply_call.start;

    // The message's files enter queue/ by renames from tmp/ (whatever the spool's layout: one file
    // or several); each must be written and fsynced first.
    let renames: Vec<&Call> = calls
        .iter()
        .filter(|c| c.name.starts_with("rename") && before_250(c))
        .filter(|c| {
            let quoted: Vec<&str> = c.args.split('"').skip(1).step_by(2).collect();
            quoted.len() == 2 && quoted[0].contains("/tmp/") && quoted[1].contains("/queue/") && quoted[1].contains(&id)
        })
        .collect();
    assert!(
        !renames.is_empty(),
        "no rename of {id}'s files from tmp/ into queue/ completed before the 250:\n{}",
        show_trace()
    );
    // Nothing of the message may be created in queue/ directly (it would be visible half-written).
    if let Some(c) = calls.iter().find(|c| {
        c.name.starts_with("open") && c.args.contains("/queue/") && c.args.contains(&id) && c.args.contains("O_CREAT")
    }) {
        panic!("{id} was written in place in queue/ (trace line {}):\n{}", c.start + 1, show_trace());
    }
    let mut summary = Vec::new();
    for rename in &renames {
        let source = rename.args.split('"').nth(1).unwrap().to_string();
        let fd_path = format!("{source}>"); // how strace -y shows an fd open on that file
        let last_write = calls.iter().rfind(|c| is_write(c) && c.args.contains(&fd_path)).cloned();
        let Some(last_write) = last_write else {
            panic!("no write to {source} before its rename:\n{}", show_trace());
        };
        let sync = calls
            .iter()
            .find(|c| is_sync(c) && ok(c) && c.args.contains(&fd_path) && c.start > last_write.end)
            .cloned()
            .unwrap_or_else(|| panic!("{source} was not fsynced after its last write:\n{}", show_trace()));
        assert!(
            sync.end < rename.start,
            "{source}: its fsync (trace line {}) must be complete before its rename (line {}):\n{}",
            sync.end + 1,
            rename.start + 1,
            show_trace()
        );
        summary.push(format!(
            "{} written@{} fsynced@{} renamed@{}",
            source.rsplit('/').next().unwrap_or(&source),
            last_write.end + 1,
            sync.end + 1,
            rename.end + 1
        ));
    }
    // And queue/ itself fsynced after the last rename, before the 250 (by any thread: with a group
    // commit one directory fsync covers many renames; any fsync that starts after a rename has
    // completed makes it durable).
    let last_rename = renames.iter().map(|c| c.end).max().unwrap();
    let queue_sync = calls
        .iter()
        .find(|c| is_sync(c) && before_250(c) && c.args.contains("/queue>") && c.start > last_rename)
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "no fsync of queue/ between the last rename into it (trace line {}) and the 250 (line {}):\n{}",
                last_rename + 1,
                reply_call.start + 1,
                show_trace()
            )
        });
    eprintln!(
        "write order for {id}: {}; queue/ fsynced@{}; 250 written@{} (strace lines)",
        summary.join(", "),
        queue_sync.end + 1,
        reply_call.start + 1
    );
}
