//! Configuration reload on SIGHUP, on a real `sluice serve`: the file is edited and the signal sent.
//! New sessions get the new settings (a user added can AUTH, a network removed is refused with
//! 554 5.7.1, a listener added answers, one removed is closed), sessions already open keep theirs, a
//! bad file is refused with its key and line logged and the running configuration kept, an upstream
//! change is logged as needing a restart. Under load, a dozen reloads fail no session and lose no
//! message. A new certificate is served after a reload (checked with openssl s_client and rustls).

mod common;

use std::fs;
use std::net::TcpStream;
use std::process::Command;
use std::thread::sleep;
use std::time::Duration;

use common::faults::*;
use common::*;

const RELOADED: &str = "configuration reloaded:";
const REFUSED: &str = "configuration reload refused";

/// Rewrites sluice's configuration file through `edit`.
fn edit_config(sluice: &Sluice, edit: impl FnOnce(&mut toml::Table)) {
    let mut table: toml::Table = toml::from_str(&sluice.config_text()).expect("the harness's config parses");
    edit(&mut table);
    fs::write(&sluice.config_path, toml::to_string(&table).unwrap()).unwrap();
}

fn listener(table: &mut toml::Table, i: usize) -> &mut toml::Table {
    table["listener"].as_array_mut().unwrap()[i].as_table_mut().unwrap()
}

/// Sends SIGHUP and waits for the log line saying how it went (`what`: applied or refused).
fn sighup(sluice: &Sluice, what: &str) -> String {
    let before = sluice.log().matches(what).count();
    send_signal(sluice.pid(), "HUP");
    wait_until(DEADLINE, &format!("the log to say {what:?}"), || {
        let log = sluice.log();
        (log.matches(what).count() > before).then_some(log)
    })
}

fn strs(items: &[&str]) -> toml::Value {
    toml::Value::Array(items.iter().map(|s| toml::Value::String(s.to_string())).collect())
}

fn user(name: &str, password: &str) -> toml::Value {
    let mut t = toml::Table::new();
    t.insert("name".into(), name.into());
    t.insert("password_hash".into(), argon2_hash(password).into());
    toml::Value::Table(t)
}

#[test]
fn sighup_applies_networks_users_and_listeners_and_refuses_a_bad_file() {
    let up = Upstream::builder().start();
    let sluice = Sluice::builder()
        .listener(Listener::plain().allow(&["127.0.0.0/8"]).insecure_allow_plaintext_auth(true))
        .user("alice", "first password")
        .upstream(UpstreamCfg::of(&up))
        .start();
    let msg = |subject: &str| message("dev@client.test", "bob@example.test", subject, "hello\n");

    // A session opened before the reload relays as the allowed network and keeps doing so after it.
    let mut before = sluice.connect(0);
    before.ehlo();
    queued_id(&before.send_mail("dev@client.test", &["bob@example.test"], &msg("network, before the reload")));

    // The network is replaced, a user added, a second listener added.
    let second_port = free_port();
    edit_config(&sluice, |t| {
        listener(t, 0).insert("allowed_networks".into(), strs(&["10.0.0.0/8"]));
        t["user"].as_array_mut().unwrap().push(user("bob", "second password"));
        let mut second = listener(t, 0).clone();
        second.insert("address".into(), format!("127.0.0.1:{second_port}").into());
        t["listener"].as_array_mut().unwrap().push(toml::Value::Table(second));
    });
    let log = sighup(&sluice, RELOADED);
    assert!(log.contains("SIGHUP received"), "{log}");

    // The old session still has the old settings.
    queued_id(&before.send_mail(
        "dev@client.test",
        &["bob@example.test"],
        &msg("network, old session after the reload"),
    ));
    before.quit();

    // New sessions: 127.0.0.1 is no longer an allowed network; the new user can AUTH, the old one still can.
    let mut c = sluice.connect(0);
    c.ehlo();
    c.cmd("MAIL FROM:<dev@client.test>").expect(250, None, "MAIL");
    c.cmd("RCPT TO:<bob@example.test>").expect(554, Some("5.7.1"), "RCPT from a network no longer allowed");
    c.cmd("RSET").expect(250, None, "RSET");
    c.auth_plain("bob", "second password").expect(235, Some("2.7.0"), "AUTH as the user added by the reload");
    queued_id(&c.send_mail("dev@client.test", &["bob@example.test"], &msg("bob, after the reload")));
    c.quit();
    let mut c = sluice.connect(0);
    c.ehlo();
    c.auth_plain("alice", "first password").expect(235, Some("2.7.0"), "AUTH as the user kept");
    c.quit();

    // The listener added answers.
    let mut second = SmtpClient::connect(second_port);
    second.read_reply().expect(220, None, "greeting on the listener added by the reload");
    second.ehlo();
    second.auth_plain("bob", "second password").expect(235, Some("2.7.0"), "AUTH on the new listener");
    second.quit();

    // A bad file: refused, with the key and the line, and nothing changes.
    edit_config(&sluice, |t| {
        listener(t, 0).insert("allowed_networks".into(), strs(&["127.0.0.0/8", "not-a-network"]));
    });
    let log = sighup(&sluice, REFUSED);
    let line = log.lines().rfind(|l| l.contains(REFUSED)).unwrap();
    assert!(
        line.contains("listener[0].allowed_networks") && line.contains("(line "),
        "the refusal names the key and the line: {line}"
    );
    let mut c = sluice.connect(0);
    c.ehlo();
    c.cmd("MAIL FROM:<dev@client.test>").expect(250, None, "MAIL");
    c.cmd("RCPT TO:<bob@example.test>").expect(554, Some("5.7.1"), "RCPT: the bad file did not allow 127.0.0.0/8");
    c.cmd("RSET").expect(250, None, "RSET");
    c.auth_plain("bob", "second password").expect(235, Some("2.7.0"), "AUTH: the running users are kept");
    c.quit();

    // The second listener removed, and the upstream changed: the listener closes; the upstream change
    // is logged as needing a restart and mail still goes to the running upstream.
    edit_config(&sluice, |t| {
        listener(t, 0).insert("allowed_networks".into(), strs(&["127.0.0.0/8"]));
        t["listener"].as_array_mut().unwrap().truncate(1);
        t["upstream"].as_table_mut().unwrap().insert("port".into(), toml::Value::Integer(free_port() as i64));
    });
    let log = sighup(&sluice, RELOADED);
    assert!(
        log.lines().any(|l| l.contains("needs a restart") && l.contains("upstream")),
        "an upstream change is logged as needing a restart:\n{log}"
    );
    wait_until(DEADLINE, "the removed listener to close", || {
        TcpStream::connect(("127.0.0.1", second_port)).is_err().then_some(())
    });
    let mut c = sluice.connect(0);
    c.ehlo();
    queued_id(&c.send_mail("dev@client.test", &["bob@example.test"], &msg("network again, running upstream")));
    c.quit();

    let msgs = up.wait_for_messages(4, DEADLINE);
    let subjects: Vec<String> = msgs.iter().filter_map(|m| m.subject()).collect();
    assert_eq!(subjects.len(), 4, "{subjects:?}");
    eprintln!(
        "reload: networks, users and listeners applied to new sessions; a bad file refused; 4 messages delivered"
    );
}

#[test]
fn a_dozen_reloads_under_load_fail_no_session_and_lose_no_message() {
    let up = Upstream::builder().start();
    let sluice =
        Sluice::builder().listener(Listener::plain().allow(&["127.0.0.0/8"])).upstream(UpstreamCfg::of(&up)).start();
    let mut options = LoadOptions::new("reload");
    options.threads = 4;
    options.per_connection = 10;
    options.max_recipients = 2;
    let load = LoadClient::start(sluice.port(), options);

    let reloads = 12;
    for i in 1..=reloads {
        let floor = load.acked() + 3;
        wait_until(DEADLINE, "the clients to get more messages acknowledged", || (load.acked() >= floor).then_some(()));
        // Something really changes each time: a limit, a user, the network list (always with 127/8).
        edit_config(&sluice, |t| {
            let l = listener(t, 0);
            l.insert("max_recipients".into(), toml::Value::Integer(50 + i));
            let networks: &[&str] = if i % 2 == 0 { &["127.0.0.0/8"] } else { &["127.0.0.0/8", "10.0.0.0/8"] };
            l.insert("allowed_networks".into(), strs(networks));
            t.insert("user".into(), toml::Value::Array(vec![user(&format!("user{i}"), "pw")]));
        });
        sighup(&sluice, RELOADED);
    }
    sleep(Duration::from_millis(500));
    let report = load.stop();
    assert!(report.acked.len() > reloads as usize, "the load went on: {} acknowledged", report.acked.len());
    assert!(report.refused.is_empty(), "no message refused during reloads: {:?}", report.refused);
    assert_eq!(report.broken, 0, "no session broken by a reload");
    wait_for_load_ids(report.acked.keys(), DEADLINE * 2, |seq| up.messages_after(seq));
    let log = sluice.log();
    assert!(log.matches(RELOADED).count() >= reloads as usize, "every SIGHUP reloaded");
    assert!(!log.contains(REFUSED) && !log.contains("panicked"), "{log}");
    eprintln!(
        "{reloads} reloads under load: {} messages acknowledged and delivered, none refused or broken",
        report.acked.len()
    );
}

/// `openssl s_client -starttls smtp`, verifying against `ca`: does the handshake verify?
fn s_client_verifies(port: u16, ca: &std::path::Path) -> (bool, String) {
    let openssl = require_tool("openssl", &[], "openssl");
    let out = run_command(
        Command::new(openssl)
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-starttls", "smtp", "-verify_return_error"])
            .arg("-CAfile")
            .arg(ca)
            .args(["-verify_hostname", "localhost", "-brief"]),
        Some(b"QUIT\r\n"),
        DEADLINE,
    );
    (out.success() && out.to_string().contains("Verification: OK"), out.to_string())
}

#[test]
fn a_new_certificate_is_served_after_a_reload() {
    let old_pki = Pki::new();
    let new_pki = Pki::new();
    let up = Upstream::builder().start();
    let sluice = Sluice::builder()
        .listener(Listener::starttls().allow(&["127.0.0.0/8"]))
        .pki(&old_pki)
        .upstream(UpstreamCfg::of(&up))
        .start();
    let port = sluice.port();
    let (ok, out) = s_client_verifies(port, &old_pki.ca_file);
    assert!(ok, "the first certificate verifies against its CA:\n{out}");

    // A session upgraded with the first certificate, kept open across the reload.
    let mut open = sluice.connect(0);
    open.ehlo();
    open.starttls(old_pki.client_config());

    edit_config(&sluice, |t| {
        let l = listener(t, 0);
        l.insert("cert_file".into(), new_pki.cert_file.display().to_string().into());
        l.insert("key_file".into(), new_pki.key_file.display().to_string().into());
    });
    sighup(&sluice, RELOADED);

    let (ok, out) = s_client_verifies(port, &new_pki.ca_file);
    assert!(ok, "after the reload the new certificate is served:\n{out}");
    let (ok, _) = s_client_verifies(port, &old_pki.ca_file);
    assert!(!ok, "after the reload the old certificate is no longer served");
    let mut c = sluice.connect(0);
    c.ehlo();
    c.starttls(new_pki.client_config());
    c.ehlo();
    queued_id(&c.send_mail(
        "dev@client.test",
        &["bob@example.test"],
        &message("dev@client.test", "bob@example.test", "new cert", "x\n"),
    ));
    c.quit();

    // The session opened before goes on over its TLS connection.
    open.ehlo();
    queued_id(&open.send_mail(
        "dev@client.test",
        &["bob@example.test"],
        &message("dev@client.test", "bob@example.test", "old cert", "x\n"),
    ));
    open.quit();
    up.wait_for_messages(2, DEADLINE);
    eprintln!("certificate swap: the new certificate served after SIGHUP, a session on the old one finished");
}

/// `sluice serve --pid-file` and `sluice reload --pid-file`: the same reload, by command.
#[test]
fn sluice_reload_signals_the_pid_in_the_pid_file() {
    let dir = tempdir();
    let pid_file = dir.path().join("sluice.pid");
    let up = Upstream::builder().start();
    // The harness runs `<wrapper> sluice serve --config FILE`; the wrapper adds --pid-file.
    let script = format!("exec \"$@\" --pid-file '{}'", pid_file.display());
    let mut sluice = Sluice::builder()
        .listener(Listener::plain().allow(&["127.0.0.0/8"]).insecure_allow_plaintext_auth(true))
        .upstream(UpstreamCfg::of(&up))
        .wrapper(&["sh", "-c", &script, "sh"])
        .start();
    let written = fs::read_to_string(&pid_file).expect("serve wrote its pid file");
    assert_eq!(written.trim(), sluice.pid().to_string());

    edit_config(&sluice, |t| {
        t.insert("user".into(), toml::Value::Array(vec![user("carol", "pw")]));
    });
    let before = sluice.log().matches(RELOADED).count();
    let out = run_command(Command::new(sluice_bin()).arg("reload").arg("--pid-file").arg(&pid_file), None, DEADLINE);
    assert!(out.success(), "sluice reload:\n{out}");
    wait_until(DEADLINE, "the reload", || (sluice.log().matches(RELOADED).count() > before).then_some(()));
    let mut c = sluice.connect(0);
    c.ehlo();
    c.auth_plain("carol", "pw").expect(235, Some("2.7.0"), "AUTH as the user added");
    c.quit();

    assert!(sluice.terminate().success());
    assert!(!pid_file.exists(), "the pid file is removed at exit");
    let out = run_command(Command::new(sluice_bin()).arg("reload").arg("--pid-file").arg(&pid_file), None, DEADLINE);
    assert!(!out.success(), "no pid file, no reload:\n{out}");
}

/// `sluice reload --config`: the same reload through the admin interface, with the outcome printed.
#[test]
fn sluice_reload_through_the_admin_interface_says_what_happened() {
    let up = Upstream::builder().start();
    let sluice =
        Sluice::builder().listener(Listener::plain().allow(&["127.0.0.0/8"])).upstream(UpstreamCfg::of(&up)).start();
    let reload = || {
        run_command(Command::new(sluice_bin()).arg("reload").arg("--config").arg(&sluice.config_path), None, DEADLINE)
    };

    edit_config(&sluice, |t| {
        listener(t, 0).insert("allowed_networks".into(), strs(&["10.0.0.0/8"]));
    });
    let out = reload();
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("configuration reloaded"), "{out}");
    assert!(out.stdout.contains("applied to new sessions"), "{out}");
    let mut c = sluice.connect(0);
    c.ehlo();
    c.cmd("MAIL FROM:<dev@client.test>").expect(250, None, "MAIL");
    c.cmd("RCPT TO:<bob@example.test>").expect(554, Some("5.7.1"), "RCPT from a network no longer allowed");
    c.quit();

    // A file that does not load: the command fails, names the key, and the old settings stay.
    edit_config(&sluice, |t| {
        listener(t, 0).insert("allowed_networks".into(), strs(&["not a network"]));
    });
    let out = reload();
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("reload refused") && out.stderr.contains("allowed_networks"), "{out}");
}
