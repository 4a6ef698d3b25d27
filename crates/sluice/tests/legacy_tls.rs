//! TLS versions on the listener, checked with OpenSSL's own client: a normal STARTTLS listener refuses
//! TLS 1.0 and accepts TLS 1.2; a listener with `insecure_legacy_tls` (built with the `legacy-tls`
//! feature; scripts/test.sh runs this file a second time with it) accepts TLS 1.0 and relays.

mod common;

use std::fs;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Pki, free_port, require_tool, run_command, wait_until};

struct Relay {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(pki: &Pki, legacy: bool) -> Relay {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = format!(
        "hostname = \"sluice.test\"\nspool_dir = \"spool\"\n[[listener]]\naddress = \"127.0.0.1:{port}\"\n\
         tls = \"starttls\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nallowed_networks = [\"127.0.0.0/8\"]\n\
         insecure_legacy_tls = {legacy}\n[upstream]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\n",
        pki.cert_file.display(),
        pki.key_file.display(),
        free_port()
    );
    let path = dir.path().join("sluice.toml");
    fs::write(&path, config).unwrap();
    let log = fs::File::create(dir.path().join("sluice.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--config"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn sluice");
    wait_until(Duration::from_secs(30), "sluice listening", || TcpStream::connect(("127.0.0.1", port)).ok());
    Relay { child, port, _dir: dir }
}

/// Runs `openssl s_client -starttls smtp` with the given protocol options and returns its output.
fn s_client(port: u16, protocol: &[&str]) -> String {
    let openssl = require_tool("openssl", &[], "openssl");
    let mut cmd = Command::new(openssl);
    cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-starttls", "smtp", "-brief"]);
    cmd.args(protocol);
    let out = run_command(&mut cmd, Some(b"EHLO legacy.test\r\nQUIT\r\n"), Duration::from_secs(30));
    format!("{}\n{}", out.stdout, out.stderr)
}

/// OpenSSL 3 disables TLS 1.0 at its default security level, on the client side too.
const TLS1: &[&str] = &["-tls1", "-cipher", "DEFAULT:@SECLEVEL=0"];

#[test]
fn default_listener_speaks_tls12_and_refuses_tls10() {
    let pki = Pki::new();
    let relay = start(&pki, false);
    let modern = s_client(relay.port, &["-tls1_2"]);
    assert!(modern.contains("Protocol version: TLSv1.2"), "TLS 1.2 handshake expected:\n{modern}");
    let old = s_client(relay.port, TLS1);
    assert!(!old.contains("Protocol version: TLSv1\n"), "TLS 1.0 must be refused:\n{old}");
    assert!(old.to_lowercase().contains("alert") || old.contains("error"), "a handshake failure expected:\n{old}");
}

#[cfg(feature = "legacy-tls")]
#[test]
fn legacy_listener_accepts_tls10() {
    let pki = Pki::new();
    let relay = start(&pki, true);
    let old = s_client(relay.port, TLS1);
    assert!(old.contains("Protocol version: TLSv1\n"), "TLS 1.0 handshake expected:\n{old}");
    assert!(old.contains("250"), "EHLO answered over TLS 1.0:\n{old}");
    let modern = s_client(relay.port, &["-tls1_3"]);
    assert!(modern.contains("Protocol version: TLSv1.3"), "TLS 1.3 still works:\n{modern}");
}

#[cfg(not(feature = "legacy-tls"))]
#[test]
fn legacy_option_without_the_feature_is_a_clear_config_error() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "spool_dir = \"spool\"\n[[listener]]\naddress = \"127.0.0.1:1\"\ntls = \"starttls\"\ncert_file = \"{}\"\n\
         key_file = \"{}\"\ninsecure_legacy_tls = true\n[upstream]\nhost = \"127.0.0.1\"\ntls = \"none\"\n",
        pki.cert_file.display(),
        pki.key_file.display()
    );
    let path = dir.path().join("sluice.toml");
    fs::write(&path, config).unwrap();
    let out = run_command(
        Command::new(env!("CARGO_BIN_EXE_sluice")).args(["check-config", "--config"]).arg(&path),
        None,
        Duration::from_secs(30),
    );
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("listener[0].insecure_legacy_tls") && out.stderr.contains("legacy-tls"), "{out}");
}
