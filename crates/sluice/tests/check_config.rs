//! `sluice check-config` and `sluice passwd`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

fn check_config(path: &Path) -> CmdOutput {
    let mut cmd = Command::new(sluice_bin());
    cmd.arg("check-config").arg("--config").arg(path);
    run_command(&mut cmd, None, Duration::from_secs(60))
}

/// A valid configuration using every documented key (with files that exist).
fn full_config(dir: &Path, pki: &Pki) -> String {
    let spool = dir.join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let secret = write_file(dir, "secret.txt", b"upstream password\n");
    format!(
        r#"hostname = "sluice.test"
spool_dir = "{spool}"

[[listener]]
address = "127.0.0.1:{p1}"
tls = "starttls"
cert_file = "{cert}"
key_file = "{key}"
allowed_networks = ["127.0.0.0/8", "10.0.0.0/8", "::1/128"]
auth = true
insecure_allow_plaintext_auth = false
max_message_size = 36700160
max_recipients = 100
max_connections = 100
idle_timeout = "5m"
data_timeout = "3m"

[[listener]]
address = "127.0.0.1:{p2}"
tls = "implicit"
cert_file = "{cert}"
key_file = "{key}"

[[listener]]
address = "127.0.0.1:{p3}"
tls = "none"
auth = false

[[user]]
name = "scanner"
password_hash = "{hash}"

[upstream]
host = "127.0.0.1"
port = 2526
tls = "starttls"
ca_file = "{ca}"
username = "relay"
password_file = "{secret}"
connections = 4
connect_timeout = "30s"
command_timeout = "5m"

[retry]
initial_interval = "1m"
max_interval = "1h"
max_age = "5d"
"#,
        spool = spool.display(),
        p1 = free_port(),
        p2 = free_port(),
        p3 = free_port(),
        cert = pki.cert_file.display(),
        key = pki.key_file.display(),
        ca = pki.ca_file.display(),
        hash = argon2_hash("scanner password"),
        secret = secret.display(),
    )
}

#[test]
fn full_valid_config_passes() {
    let dir = tempdir();
    let pki = Pki::new();
    let path = write_file(dir.path(), "sluice.toml", full_config(dir.path(), &pki).as_bytes());
    let out = check_config(&path);
    assert!(out.success(), "check-config rejected a valid configuration:\n{out}");
}

#[test]
fn minimal_config_passes() {
    let dir = tempdir();
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    let text = format!(
        "spool_dir = \"{}\"\n\n[[listener]]\naddress = \"127.0.0.1:{}\"\n\n[upstream]\nhost = \"127.0.0.1\"\nport = 2526\n",
        spool.display(),
        free_port()
    );
    let path = write_file(dir.path(), "sluice.toml", text.as_bytes());
    let out = check_config(&path);
    assert!(out.success(), "check-config rejected a minimal configuration (defaults for the rest):\n{text}\n{out}");
}

/// Whether `text` says "line N" (or "line: N"), case-insensitively, for this N.
fn mentions_line(text: &str, n: usize) -> bool {
    let lower = text.to_ascii_lowercase();
    lower.match_indices("line").any(|(i, _)| {
        let rest = lower[i + 4..].trim_start_matches([' ', ':']);
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        digits.parse::<usize>().ok() == Some(n)
    })
}

/// Puts `line` at line `at` (1-based) of the full configuration and checks that
/// check-config fails naming `key` and the line number.
#[track_caller]
fn assert_rejected_at(line: &str, after: &str, key: &str) {
    let dir = tempdir();
    let pki = Pki::new();
    let full = full_config(dir.path(), &pki);
    let mut lines: Vec<&str> = full.lines().collect();
    let idx = lines.iter().position(|l| *l == after).expect("anchor line") + 1;
    lines.insert(idx, line);
    let text = lines.join("\n") + "\n";
    let line_no = idx + 1;
    let path = write_file(dir.path(), "sluice.toml", text.as_bytes());
    let out = check_config(&path);
    assert!(!out.success(), "check-config accepted a config with {line:?} at line {line_no}:\n{out}");
    let all = format!("{}\n{}", out.stderr, out.stdout);
    assert!(all.contains(key), "the error should name {key:?}:\n{out}");
    assert!(mentions_line(&all, line_no), "the error should say 'line {line_no}':\n{out}");
}

#[test]
fn unknown_key_in_a_listener_is_rejected_with_key_and_line() {
    assert_rejected_at("max_mesage_size = 1000", "max_recipients = 100", "max_mesage_size");
}

#[test]
fn unknown_top_level_key_is_rejected_with_key_and_line() {
    assert_rejected_at("spool_directory = \"/tmp\"", "hostname = \"sluice.test\"", "spool_directory");
}

#[test]
fn unknown_key_in_upstream_is_rejected_with_key_and_line() {
    assert_rejected_at("starttls = true", "port = 2526", "starttls");
}

#[test]
fn bad_values_are_rejected() {
    let dir = tempdir();
    let pki = Pki::new();
    let full = full_config(dir.path(), &pki);
    for (from, to) in [
        ("tls = \"implicit\"", "tls = \"sometimes\""),
        ("idle_timeout = \"5m\"", "idle_timeout = \"five minutes\""),
        ("allowed_networks = [\"127.0.0.0/8\", \"10.0.0.0/8\", \"::1/128\"]", "allowed_networks = [\"127.0.0.0/33\"]"),
        ("max_recipients = 100", "max_recipients = \"many\""),
        ("spool_dir = ", "spool_dirx = "),
    ] {
        assert!(full.contains(from), "test bug: {from:?} not in the config");
        let text = full.replacen(from, to, 1);
        let path = write_file(dir.path(), "bad.toml", text.as_bytes());
        let out = check_config(&path);
        assert!(!out.success(), "check-config accepted {to:?}:\n{out}");
        assert!(!out.stderr.trim().is_empty(), "check-config failed silently for {to:?}");
    }
}

#[test]
fn missing_config_file_is_an_error() {
    let dir = tempdir();
    let out = check_config(&dir.path().join("nonexistent.toml"));
    assert!(!out.success(), "check-config accepted a missing file:\n{out}");
    assert!(out.stderr.contains("nonexistent.toml"), "the error should name the file:\n{out}");
}

#[test]
fn passwd_prints_an_argon2id_hash_that_verifies() {
    use argon2::{Argon2, PasswordHash, PasswordVerifier};
    let mut cmd = Command::new(sluice_bin());
    cmd.arg("passwd");
    let out = run_command(&mut cmd, Some(b"hunter2 with spaces\n"), Duration::from_secs(60));
    assert!(out.success(), "sluice passwd failed:\n{out}");
    let lines: Vec<&str> = out.stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "sluice passwd should print exactly one line (no prompt when stdin is not a TTY):\n{out}"
    );
    let hash = lines[0].trim();
    assert!(hash.starts_with("$argon2id$"), "not an argon2id PHC string: {hash:?}");
    let parsed = PasswordHash::new(hash).unwrap_or_else(|e| panic!("not a PHC string ({e}): {hash:?}"));
    assert!(
        Argon2::default().verify_password(b"hunter2 with spaces", &parsed).is_ok(),
        "the hash does not verify the password"
    );
    assert!(Argon2::default().verify_password(b"hunter2", &parsed).is_err(), "the hash verifies a wrong password");

    // Two runs salt differently.
    let again = run_command(&mut cmd, Some(b"hunter2 with spaces\n"), Duration::from_secs(60));
    assert!(again.success(), "{again}");
    assert_ne!(again.stdout.trim(), hash, "two hashes of one password should differ (random salt)");
}

#[test]
fn passwd_hash_works_for_auth_end_to_end() {
    let mut cmd = Command::new(sluice_bin());
    cmd.arg("passwd");
    let out = run_command(&mut cmd, Some(b"scanner-secret\n"), Duration::from_secs(60));
    assert!(out.success(), "sluice passwd failed:\n{out}");
    let hash = out.stdout.trim().to_string();

    let pki = Pki::new();
    let up = Upstream::builder().tls(&pki).auth("relay", "pw").start();
    let dir = tempdir();
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    // A hand-written config (not the builder's) with the hash from `sluice passwd`.
    let port = free_port();
    let secret = write_file(dir.path(), "secret.txt", b"pw\n");
    let text = format!(
        r#"hostname = "sluice.test"
spool_dir = "{spool}"

[[listener]]
address = "127.0.0.1:{port}"
tls = "none"
insecure_allow_plaintext_auth = true

[[user]]
name = "scanner"
password_hash = "{hash}"

[upstream]
host = "127.0.0.1"
port = {up_port}
ca_file = "{ca}"
username = "relay"
password_file = "{secret}"

[retry]
initial_interval = "1s"
max_interval = "2s"
"#,
        spool = spool.display(),
        up_port = up.port,
        ca = pki.ca_file.display(),
        secret = secret.display(),
    );
    let config = write_file(dir.path(), "sluice.toml", text.as_bytes());
    let checked = check_config(&config);
    assert!(checked.success(), "check-config rejected:\n{text}\n{checked}");

    let log = dir.path().join("sluice.log");
    let mut child = Command::new(sluice_bin())
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn sluice serve");
    struct KillOnDrop<'a>(&'a mut std::process::Child, &'a Path);
    impl Drop for KillOnDrop<'_> {
        fn drop(&mut self) {
            send_signal(self.0.id(), "TERM");
            if wait_with_deadline(self.0, Duration::from_secs(10)).is_none() {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
            if std::thread::panicking() {
                eprintln!("--- sluice log ---\n{}", tail(self.1, 80));
            }
        }
    }
    let guard = KillOnDrop(&mut child, &log);
    let mut c = wait_until(DEADLINE, "sluice to greet", || {
        if let Ok(Some(status)) = guard.0.try_wait() {
            panic!("sluice serve exited ({status}):\n{}", tail(&log, 40));
        }
        let mut c = SmtpClient::try_connect(port).ok()?;
        let g = c.try_read_reply().ok()?;
        (g.code == 220).then_some(c)
    });
    c.ehlo();
    let bad = c.auth_plain("scanner", "not the secret");
    assert_eq!(bad.code, 535, "wrong password: {bad}");
    c.auth_plain("scanner", "scanner-secret").expect(
        235,
        Some("2.7.0"),
        "AUTH with the password given to sluice passwd",
    );
    c.quit();
    drop(guard);
}

/// `examples/m365-routes.toml` (upstreams, a pool, routes) passes check-config once its files exist.
#[test]
fn the_routes_example_is_accepted() {
    let dir = tempdir();
    let pki = Pki::new();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/m365-routes.toml");
    let text = std::fs::read_to_string(example).unwrap();
    write_file(dir.path(), "client-secret", b"app secret\n");
    let text = text
        .replace("/etc/sluice/relay.pem", &pki.cert_file.display().to_string())
        .replace("/etc/sluice/relay.key", &pki.key_file.display().to_string())
        .replace("/etc/sluice/", &format!("{}/", dir.path().display()))
        .replace("/var/spool/sluice", &dir.path().join("spool").display().to_string());
    let path = write_file(dir.path(), "sluice.toml", text.as_bytes());
    let out = check_config(&path);
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("routes:   5 (no match: upstream smarthost)"), "{out}");
    assert!(out.stdout.contains("upstream m365: m365-oauth"), "{out}");
}

/// Route mistakes are named with their key and line by check-config too.
#[test]
fn a_route_to_an_unknown_upstream_is_rejected_with_key_and_line() {
    let dir = tempdir();
    let text = format!(
        "spool_dir = \"{}\"\n[[listener]]\naddress = \"127.0.0.1:{}\"\nallowed_networks = [\"127.0.0.0/8\"]\n\
         [upstreams.sink]\nhost = \"127.0.0.1\"\ntls = \"none\"\n[[routes]]\nsenders = [\"a.example\"]\nupstream = \"snk\"\n",
        dir.path().join("spool").display(),
        free_port()
    );
    let path = write_file(dir.path(), "sluice.toml", text.as_bytes());
    let out = check_config(&path);
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("routes[0].upstream") && mentions_line(&out.stderr, 10), "{out}");
    assert!(out.stderr.contains("\"snk\""), "{out}");
}
