//! `sluice probe`: the real binary against the Exchange Online simulator (exosim, in this process) and
//! against a running `sluice serve`. Each test checks the exit status, that the output names what went
//! wrong and how to fix it, and that no secret (client secret, token, password) is ever printed.

mod common;
mod m365;

use std::path::Path;
use std::process::Command;

use m365::{CLIENT_ID, CLIENT_SECRET, MAILBOX, TENANT_ID, tenant, upstream};

/// What one `sluice probe` run printed.
struct Probe {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Probe {
    fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// Asserts nothing secret is in the output: the client secret, the password, a token (every JWT
    /// starts with a base64url `{"` = `eyJ`), an XOAUTH2 payload.
    fn assert_no_secret(&self, secrets: &[&str]) {
        let all = self.all();
        for s in secrets {
            assert!(!all.contains(s), "secret {s:?} in the output:\n{all}");
        }
        assert!(!all.contains("eyJ"), "a token in the output:\n{all}");
        assert!(!all.contains("auth=Bearer") && !all.contains("dXNlcj1"), "an XOAUTH2 payload in the output:\n{all}");
    }

    /// The verdict part: everything from `RESULT:` on.
    fn verdict(&self) -> &str {
        let at = self.stdout.find("RESULT:").unwrap_or_else(|| panic!("no RESULT line:\n{}", self.all()));
        &self.stdout[at..]
    }
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}", self.code, self.stdout, self.stderr)
    }
}

/// Runs `sluice probe ARGS` without blocking the runtime the simulator runs on.
async fn probe(args: &[&str], env: &[(&str, &str)]) -> Probe {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let output = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.arg("probe").args(&args).env_remove("SLUICE_CONFIG").env_remove("SLUICE_PROBE_PASSWORD");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(std::process::Stdio::null());
        cmd.output().expect("run sluice probe")
    })
    .await
    .unwrap();
    Probe {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The simulator with the test tenant, and a sluice configuration for `kind` against it in `dir`.
async fn sim_and_config(kind: &str, dir: &Path) -> exosim::RunningSim {
    let sim_config = exosim::SimConfig::from_toml_str(&tenant("", "")).expect("tenant config");
    let sim = exosim::Simulator::start(sim_config).await.expect("simulator starts");
    std::fs::write(dir.join("ca.pem"), sim.ca_cert_pem()).unwrap();
    let up = upstream(kind, &sim, dir);
    let name = if kind == "m365-graph" { "" } else { "tls_server_name = \"localhost\"\n" };
    let config = format!(
        "hostname = \"sluice.test\"\nspool_dir = \"spool\"\n\n[[listener]]\naddress = \"127.0.0.1:2525\"\n\
         allowed_networks = [\"127.0.0.0/8\"]\n\n[upstream]\n{up}ca_file = \"ca.pem\"\n{name}"
    );
    std::fs::write(dir.join("sluice.toml"), config).unwrap();
    sim
}

fn config_arg(dir: &Path) -> String {
    dir.join("sluice.toml").display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_oauth_upstream_shows_tls_and_claims_and_sends() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim_and_config("m365-oauth", dir.path()).await;
    let config = config_arg(dir.path());
    let out = probe(&["-c", &config, "--send-to", "alice@contoso.com"], &[]).await;
    assert_eq!(out.code, Some(0), "{out}");
    let s = &out.stdout;
    // The token's claims, decoded.
    assert!(s.contains("aud:   https://outlook.office365.com"), "{out}");
    assert!(s.contains("roles: SMTP.SendAsApp"), "{out}");
    assert!(s.contains(&format!("appid: {CLIENT_ID}")), "{out}");
    assert!(s.contains(&format!("tid:   {TENANT_ID}")), "{out}");
    assert!(s.contains("exp:   "), "{out}");
    // Resolution, the conversation, TLS and the certificate.
    assert!(s.contains("== Resolving 127.0.0.1") && s.contains("  127.0.0.1\n"), "{out}");
    assert!(
        s.contains("C: STARTTLS\n  S: 220 2.0.0 SMTP server ready\n  -- TLS established: TLSv1_"),
        "TLS details right after STARTTLS: {out}"
    );
    assert!(s.contains("TLS established: TLSv1_3") || s.contains("TLS established: TLSv1_2"), "{out}");
    assert!(s.contains("cipher suite TLS"), "{out}");
    assert!(s.contains("certificate 0: subject") && s.contains("SANs") && s.contains("DNS:localhost"), "{out}");
    assert!(s.contains("C: AUTH XOAUTH2 <token redacted>"), "{out}");
    assert!(s.contains("S: 235 2.7.0 Authentication successful"), "{out}");
    // The test message.
    assert!(s.contains("<message content:"), "{out}");
    assert!(s.contains("accepted: 250"), "{out}");
    assert!(out.verdict().starts_with("RESULT: OK"), "{out}");
    out.assert_no_secret(&[CLIENT_SECRET]);
    let messages = sim.messages();
    assert_eq!(messages.len(), 1, "the test message reached the simulator");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_auth_disabled_for_the_mailbox_is_explained_with_the_powershell_fix() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim_and_config("m365-oauth", dir.path()).await;
    sim.update_config(|c| {
        let m = c.mailboxes.iter_mut().find(|m| m.address == MAILBOX).unwrap();
        m.smtp_auth_disabled = Some(true);
    })
    .unwrap();
    let out = probe(&["-c", &config_arg(dir.path())], &[]).await;
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stdout.contains("S: 535 5.7.139"), "the refusal is in the conversation: {out}");
    let verdict = out.verdict();
    assert!(verdict.starts_with("RESULT: FAILED"), "{out}");
    assert!(verdict.contains("[5.7.139]"), "{out}");
    assert!(
        verdict.contains(&format!("Set-CASMailbox -Identity {MAILBOX} -SmtpClientAuthenticationDisabled $false")),
        "the fix names the mailbox: {out}"
    );
    assert!(verdict.contains("Set-TransportConfig -SmtpClientAuthenticationDisabled $false"), "{out}");
    out.assert_no_secret(&[CLIENT_SECRET]);
    assert!(sim.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_client_secret_is_explained_as_aadsts7000215() {
    let dir = tempfile::tempdir().unwrap();
    let _sim = sim_and_config("m365-oauth", dir.path()).await;
    std::fs::write(dir.path().join("client-secret"), "not-the-secret").unwrap();
    let out = probe(&["-c", &config_arg(dir.path())], &[]).await;
    assert_eq!(out.code, Some(1), "{out}");
    let verdict = out.verdict();
    assert!(verdict.contains("AADSTS7000215"), "{out}");
    assert!(verdict.contains("invalid client secret"), "{out}");
    assert!(verdict.contains("Certificates & secrets"), "{out}");
    assert!(verdict.contains(CLIENT_ID), "the fix names the app: {out}");
    // It stopped at the token: no SMTP session was attempted.
    assert!(!out.stdout.contains("C: EHLO"), "{out}");
    out.assert_no_secret(&["not-the-secret", CLIENT_SECRET]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_as_refusal_with_send_to_names_add_recipientpermission() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim_and_config("m365-oauth", dir.path()).await;
    let out =
        probe(&["-c", &config_arg(dir.path()), "--send-to", "alice@contoso.com", "--from", "ceo@contoso.com"], &[])
            .await;
    assert_eq!(out.code, Some(1), "{out}");
    // AUTH worked; the refusal came at the end of the message.
    assert!(out.stdout.contains("S: 235"), "{out}");
    assert!(out.stdout.contains("C: MAIL FROM:<ceo@contoso.com>"), "{out}");
    let verdict = out.verdict();
    assert!(verdict.contains("5.7.60"), "{out}");
    assert!(verdict.contains("SendAs"), "{out}");
    assert!(verdict.contains(&format!("Add-RecipientPermission -Identity <sender> -Trustee {MAILBOX}")), "{out}");
    assert!(verdict.contains("sender_rewrite"), "{out}");
    out.assert_no_secret(&[CLIENT_SECRET]);
    assert!(sim.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_upstream_checks_token_and_permission_without_sending() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim_and_config("m365-graph", dir.path()).await;
    let out = probe(&["-c", &config_arg(dir.path())], &[]).await;
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("aud:   https://graph.microsoft.com"), "{out}");
    assert!(out.stdout.contains("roles: Mail.Send"), "{out}");
    assert!(out.stdout.contains("HTTP 400 ErrorMimeContentInvalidBase64String"), "{out}");
    out.assert_no_secret(&[CLIENT_SECRET]);
    assert!(sim.messages().is_empty(), "the probe request sends nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_probe_plays_a_device_against_a_running_sluice() {
    use common::{Listener, Pki, Sluice, UpstreamCfg};
    let pki = Pki::new();
    // The upstream is never reached: the probe only needs the relay to queue.
    let sluice = Sluice::builder()
        .pki(&pki)
        .listener(Listener::starttls())
        .user("printer", "Printer-Pass-1")
        .upstream(UpstreamCfg::plain(common::free_port()))
        .start();
    let address = format!("127.0.0.1:{}", sluice.port());
    let ca = pki.ca_file.display().to_string();

    // Authenticated over STARTTLS: the message is queued.
    let out = probe(
        &["--listener", &address, "--ca-file", &ca, "--user", "printer", "--send-to", "you@example.com"],
        &[("SLUICE_PROBE_PASSWORD", "Printer-Pass-1")],
    )
    .await;
    assert_eq!(out.code, Some(0), "{out}");
    let s = &out.stdout;
    let before_tls = &s[..s.find("C: STARTTLS").unwrap_or_else(|| panic!("no STARTTLS: {out}"))];
    assert!(!before_tls.contains("AUTH"), "AUTH is not offered before TLS: {out}");
    assert!(s.contains("TLS established: TLSv1_"), "{out}");
    assert!(s.contains("AUTH offered: AUTH"), "{out}");
    assert!(s.contains("C: AUTH PLAIN <credentials redacted>") && s.contains("S: 235"), "{out}");
    assert!(s.contains("queued: the relay took the message"), "{out}");
    assert!(out.verdict().starts_with("RESULT: OK"), "{out}");
    out.assert_no_secret(&["Printer-Pass-1", "AHByaW50ZXIAUHJpbnRlci1QYXNzLTE="]);

    // Without AUTH, from a network that may not relay: refused, and the fix names the allowed networks
    // (read from the configuration).
    let config = sluice.config_path.display().to_string();
    let out = probe(&["-c", &config, "--listener", "--ca-file", &ca, "--send-to", "you@example.com"], &[]).await;
    assert_eq!(out.code, Some(1), "{out}");
    let verdict = out.verdict();
    assert!(verdict.contains("554 5.7.1"), "{out}");
    assert!(verdict.contains("allowed_networks (none)"), "{out}");
    assert!(verdict.contains("127.0.0.1 is neither"), "{out}");

    // A wrong password: refused, and said so.
    let out =
        probe(&["--listener", &address, "--ca-file", &ca, "--user", "printer"], &[("SLUICE_PROBE_PASSWORD", "wrong")])
            .await;
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.verdict().contains("AUTH refused: 535"), "{out}");
    assert!(out.verdict().contains("sluice passwd"), "{out}");
    out.assert_no_secret(&["wrong\n"]);
}
