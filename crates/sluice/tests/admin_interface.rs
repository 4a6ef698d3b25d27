//! The admin interface of a running relay: health checks open to all, everything else behind the token,
//! found by `sluice` commands through the spool directory. Driven with curl and the real binary.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn curl(args: &[&str]) -> CmdOutput {
    let curl = require_tool("curl", &[], "curl");
    run_command(Command::new(curl).args(["-s", "-S", "-w", "\n%{http_code}"]).args(args), None, Duration::from_secs(30))
}

/// (body, HTTP status) of a curl call.
fn curl_status(args: &[&str]) -> (String, u16) {
    let out = curl(args);
    assert!(out.success(), "{out}");
    let (body, code) = out.stdout.trim_end().rsplit_once('\n').unwrap_or(("", out.stdout.trim()));
    (body.trim().to_owned(), code.parse().unwrap_or_else(|_| panic!("status in {out}")))
}

#[test]
fn health_is_open_and_the_api_needs_the_token() {
    let up = Upstream::builder().start();
    let sluice =
        Sluice::builder().listener(Listener::plain().allow(&["127.0.0.0/8"])).upstream(UpstreamCfg::of(&up)).start();
    let discovery: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sluice.spool_dir.join("admin.json")).unwrap()).unwrap();
    let url = discovery["url"].as_str().unwrap().to_owned();
    let token_file = discovery["token_file"].as_str().unwrap().to_owned();
    let token = std::fs::read_to_string(&token_file).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(!sluice.log().contains(token.trim()), "the admin token must not be logged");

    assert_eq!(curl_status(&[&format!("{url}/healthz")]), ("ok".into(), 200));
    assert_eq!(curl_status(&[&format!("{url}/readyz")]), ("ready".into(), 200));
    let (_, code) = curl_status(&[&format!("{url}/api/status")]);
    assert_eq!(code, 401);
    let (_, code) = curl_status(&["-H", "Authorization: Bearer wrong-token-wrong-token", &format!("{url}/api/status")]);
    assert_eq!(code, 401);
    let (body, code) =
        curl_status(&["-H", &format!("Authorization: Bearer {}", token.trim()), &format!("{url}/api/status")]);
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["ready"], true);
    assert_eq!(status["queued"], 0);

    // A browser trades the token for a cookie once; the cookie then opens the API.
    let jar = sluice.spool_dir.parent().unwrap().join("cookies.txt");
    let jar = jar.to_str().unwrap();
    let (_, code) = curl_status(&["-c", jar, &format!("{url}/login?token={}", token.trim())]);
    assert_eq!(code, 303);
    let (_, code) = curl_status(&["-b", jar, &format!("{url}/api/status")]);
    assert_eq!(code, 200);

    // The command line finds the relay through its configuration's spool directory.
    let out = run_command(
        Command::new(sluice_bin()).arg("status").arg("--config").arg(&sluice.config_path),
        None,
        Duration::from_secs(30),
    );
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("ready") && out.stdout.contains("queued: 0"), "{out}");
}

#[test]
fn commands_say_clearly_when_no_relay_runs() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, "spool_dir = \"spool\"\n").unwrap();
    let out = run_command(
        Command::new(sluice_bin()).args(["status", "--config"]).arg(&config),
        None,
        Duration::from_secs(30),
    );
    assert!(!out.success());
    assert!(out.stderr.contains("is sluice running"), "{out}");
}

#[test]
fn a_remote_admin_address_is_refused_unless_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        "spool_dir = \"spool\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream]\nhost = \"127.0.0.1\"\nport = 25\n\n[admin]\nlisten = \"0.0.0.0:8025\"\n",
    )
    .unwrap();
    let out = run_command(
        Command::new(sluice_bin()).args(["check-config", "--config"]).arg(&config),
        None,
        Duration::from_secs(30),
    );
    assert!(!out.success());
    assert!(out.stderr.contains("admin.listen") && out.stderr.contains("loopback"), "{out}");
}
