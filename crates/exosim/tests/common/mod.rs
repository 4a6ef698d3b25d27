//! Helpers for exosim's tests: a base tenant, starting the simulator in-process on 127.0.0.1
//! port 0, and driving it with real clients (Python smtplib through `peers/smtp_peer.py`, curl).

#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;

use exosim::{RunningSim, SimConfig, Simulator};
use serde_json::Value;

pub const HOST: &str = "SIM0P281CA0001.outlook.office365.com";
pub const TENANT_ID: &str = "6babcaad-604b-40ac-a9d7-9fd97c0b779f";
pub const APP_ID: &str = "8f2e4c1a-5b3d-4e6f-9a7b-1c2d3e4f5a6b";
pub const APP_SECRET: &str = "exosim~relay-secret";

/// The tenant every test starts from; `extra` is appended (more mailboxes, apps, limits).
pub fn tenant(tenant_extra: &str, extra: &str) -> String {
    format!(
        r#"
[tenant]
name = "contoso"
id = "{TENANT_ID}"
domains = ["contoso.com", "fabrikam.com"]
hostname = "{HOST}"
{tenant_extra}

{extra}

[[mailboxes]]
address = "scanner@contoso.com"
password = "Scan-2-Mail!"
aliases = ["copier@contoso.com"]
send_as = ["reception@contoso.com"]

[[mailboxes]]
address = "reception@contoso.com"
password = "front-desk"

[[mailboxes]]
address = "relay@contoso.com"

[[mailboxes]]
address = "ceo@contoso.com"
password = "not-for-printers"

[[apps]]
client_id = "{APP_ID}"
name = "sluice relay"
client_secret = "{APP_SECRET}"
permissions = ["SMTP.SendAsApp", "Mail.Send"]
full_access = ["relay@contoso.com"]
send_as = ["scanner@contoso.com"]
"#
    )
}

/// A running simulator and the CA file its clients trust.
pub struct Sim {
    pub sim: RunningSim,
    pub ca: tempfile::NamedTempFile,
}

pub async fn start(toml: &str) -> Sim {
    let config = SimConfig::from_toml_str(toml).expect("test configuration");
    let sim = Simulator::start(config).await.expect("simulator starts");
    let mut ca = tempfile::NamedTempFile::new().expect("temp file");
    ca.write_all(sim.ca_cert_pem().as_bytes()).expect("write CA");
    Sim { sim, ca }
}

pub async fn start_default() -> Sim {
    start(&tenant("", "")).await
}

fn peer(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers").join(name)
}

impl Sim {
    /// Runs an smtplib script (see `peers/smtp_peer.py`) against the submission endpoint and
    /// returns one (code, text) per step.
    pub async fn smtp(&self, script: Value) -> Vec<(i64, String)> {
        self.peer_at(self.sim.smtp_addr(), script).await
    }

    /// The same against the MX endpoint.
    pub async fn mx(&self, script: Value) -> Vec<(i64, String)> {
        self.peer_at(self.sim.mx_addr(), script).await
    }

    async fn peer_at(&self, addr: std::net::SocketAddr, script: Value) -> Vec<(i64, String)> {
        let out = tokio::process::Command::new("python3")
            .arg(peer("smtp_peer.py"))
            .arg(addr.ip().to_string())
            .arg(addr.port().to_string())
            .arg(self.ca.path())
            .arg(script.to_string())
            .output()
            .await
            .expect("python3 runs");
        assert!(out.status.success(), "smtp_peer failed: {}", String::from_utf8_lossy(&out.stderr));
        let v: Vec<(i64, String)> = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("bad peer output {e}: {}", String::from_utf8_lossy(&out.stdout)));
        v
    }

    /// curl against the HTTPS endpoint, trusting the simulator's CA: (status, body).
    pub async fn curl(&self, method: &str, path: &str, args: &[&str]) -> (u16, String) {
        let url = format!("{}{path}", self.sim.https_base());
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(self.ca.path())
            .args(["-X", method, "-o", "-", "-w", "\n%{http_code}"])
            .args(args)
            .arg(&url)
            .output()
            .await
            .expect("curl runs");
        assert!(out.status.success(), "curl failed: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').expect("status line");
        (code.trim().parse().expect("status"), body.to_owned())
    }

    /// A client-credentials token through curl.
    pub async fn token(&self, scope: &str) -> String {
        let (status, body) = self
            .curl(
                "POST",
                &format!("/{TENANT_ID}/oauth2/v2.0/token"),
                &[
                    "--data-urlencode",
                    &format!("client_id={APP_ID}"),
                    "--data-urlencode",
                    &format!("client_secret={APP_SECRET}"),
                    "--data-urlencode",
                    &format!("scope={scope}"),
                    "--data-urlencode",
                    "grant_type=client_credentials",
                ],
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["access_token"].as_str().unwrap().to_owned()
    }
}

/// The steps that bring a session to "authenticated" with basic auth.
pub fn login(user: &str, password: &str) -> Vec<Value> {
    serde_json::from_value(serde_json::json!([
        ["connect"],
        ["ehlo"],
        ["starttls"],
        ["ehlo"],
        ["login", user, password]
    ]))
    .unwrap()
}

/// A minimal message from `from` to `to`.
pub fn message(from: &str, to: &str) -> String {
    format!("From: {from}\r\nTo: {to}\r\nSubject: test\r\nMessage-ID: <test-1@client.example>\r\n\r\nHello.\r\n")
}

/// Asserts that `got` is `code` and that its text starts with `text` and, for errors, ends
/// with Exchange Online's `[HOST time session]` suffix.
#[track_caller]
pub fn expect(got: &(i64, String), code: i64, text: &str) {
    expect_from(HOST, got, code, text)
}

/// [`expect`] for the MX endpoint's host name.
#[track_caller]
pub fn expect_mx(got: &(i64, String), code: i64, text: &str) {
    expect_from(MX_HOST, got, code, text)
}

pub const MX_HOST: &str = "SIM0EUR01FT001.mail.protection.outlook.com";

#[track_caller]
fn expect_from(host: &str, got: &(i64, String), code: i64, text: &str) {
    assert_eq!(got.0, code, "reply {got:?}, wanted {code} {text}");
    assert!(got.1.starts_with(text), "reply {got:?}, wanted text starting {text:?}");
    if code >= 400 {
        let suffix = &got.1[text.len()..];
        assert!(
            suffix.starts_with(&format!(" [{host} ")) && suffix.ends_with(']'),
            "error text without the [HOST time session] suffix: {got:?}"
        );
    }
}
