//! Helpers for the Microsoft 365 upstream scenarios: the Exchange Online simulator (exosim) and sluice
//! side by side in this process, on 127.0.0.1, each test with its own tenant, spool and ports.
//!
//! sluice runs through `server::run_with`, which hands over the scheduler: the tests read its delivery
//! events and its hold status. Mail goes in through sluice's listener with a small SMTP client. Waits
//! poll with a generous deadline; nothing asserts on elapsed time.

#![allow(dead_code)] // each scenario uses its own subset

use std::path::Path;
use std::time::Duration;

use sluice::scheduler::{DeliveryEvent, Scheduler};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

pub const DEADLINE: Duration = Duration::from_secs(60);

pub const TENANT_ID: &str = "6babcaad-604b-40ac-a9d7-9fd97c0b779f";
pub const CLIENT_ID: &str = "8f2e4c1a-5b3d-4e6f-9a7b-1c2d3e4f5a6b";
pub const CLIENT_SECRET: &str = "exosim~relay-secret";
pub const MAILBOX: &str = "relay@contoso.com";
pub const BASIC_MAILBOX: &str = "scanner@contoso.com";
pub const BASIC_PASSWORD: &str = "Scan-2-Mail!";

/// The test tenant: a mailbox the app may send as (OAuth, Graph), a mailbox with a password (basic),
/// an IP-authorised inbound connector for 127.0.0.1. `extra` is appended (e.g. `[limits]`).
pub fn tenant(top: &str, extra: &str) -> String {
    format!(
        r#"{top}
[tenant]
name = "contoso"
id = "{TENANT_ID}"
domains = ["contoso.com"]

[[mailboxes]]
address = "{MAILBOX}"

[[mailboxes]]
address = "{BASIC_MAILBOX}"
password = "{BASIC_PASSWORD}"

[[mailboxes]]
address = "alice@contoso.com"

[[apps]]
client_id = "{CLIENT_ID}"
name = "sluice relay"
client_secret = "{CLIENT_SECRET}"
permissions = ["SMTP.SendAsApp", "Mail.Send"]
full_access = ["{MAILBOX}"]

[[inbound_connectors]]
name = "sluice relay by IP"
sender_ip_addresses = ["127.0.0.1"]

{extra}
"#
    )
}

/// The `[upstream]` section for a kind, against `sim`; files it needs are written to `dir`.
pub fn upstream(kind: &str, sim: &exosim::RunningSim, dir: &Path) -> String {
    std::fs::write(dir.join("client-secret"), CLIENT_SECRET).unwrap();
    std::fs::write(dir.join("mailbox-password"), BASIC_PASSWORD).unwrap();
    let smtp = sim.smtp_addr();
    match kind {
        "m365-oauth" => format!(
            "kind = \"m365-oauth\"\nhost = \"{}\"\nport = {}\nmailbox = \"{MAILBOX}\"\nclient_id = \"{CLIENT_ID}\"\n\
             client_secret_file = \"client-secret\"\ntoken_url = \"{}\"\n",
            smtp.ip(),
            smtp.port(),
            sim.token_url()
        ),
        "m365-basic" => format!(
            "kind = \"m365-basic\"\nhost = \"{}\"\nport = {}\nmailbox = \"{BASIC_MAILBOX}\"\npassword_file = \"mailbox-password\"\n",
            smtp.ip(),
            smtp.port()
        ),
        "m365-graph" => format!(
            "kind = \"m365-graph\"\nmailbox = \"{MAILBOX}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret_file = \"client-secret\"\n\
             token_url = \"{}\"\ngraph_url = \"{}\"\n",
            sim.token_url(),
            sim.https_base()
        ),
        "m365-connector" => {
            let mx = sim.mx_addr();
            format!("kind = \"m365-connector\"\nhost = \"{}\"\nport = {}\n", mx.ip(), mx.port())
        }
        other => panic!("unknown kind {other}"),
    }
}

pub struct World {
    pub sim: exosim::RunningSim,
    pub scheduler: Scheduler,
    pub events: broadcast::Receiver<DeliveryEvent>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    stop: CancellationToken,
    relay: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Starts the simulator with `tenant_toml` and sluice with the `[upstream]` section `make_upstream`
/// writes (plus `upstream_extra` lines), retrying quickly.
pub async fn start(
    tenant_toml: &str,
    make_upstream: impl FnOnce(&exosim::RunningSim, &Path) -> String,
    upstream_extra: &str,
) -> World {
    // sluice's log lines, shown for a failing test.
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("sluice=debug").try_init();
    let sim_config = exosim::SimConfig::from_toml_str(tenant_toml).expect("tenant config");
    let sim = exosim::Simulator::start(sim_config).await.expect("simulator starts");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), sim.ca_cert_pem()).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let upstream = make_upstream(&sim, dir.path());
    let body = format!(
        "[[listener]]\naddress = \"127.0.0.1:{port}\"\nallowed_networks = [\"127.0.0.0/8\"]\nmax_recipients = 2000\n\n\
         [upstream]\n{upstream}ca_file = \"ca.pem\"\ntls_server_name = \"localhost\"\n{upstream_extra}\n"
    );
    // Graph has no SMTP server name to verify.
    let body =
        if upstream.contains("m365-graph") { body.replace("tls_server_name = \"localhost\"\n", "") } else { body };
    launch(sim, dir, port, &body).await
}

/// An `[upstreams.NAME]` section of `kind` against `sim` (its CA trusted), for route scenarios; `extra`
/// lines are added to it.
/// The secret sluice is given in [`start_with_wrong_secret`]: the tenant does not know it, so Entra
/// refuses the token (AADSTS7000215) and the route is held.
pub const WRONG_SECRET: &str = "not-the-secret";

/// sluice with an m365-oauth upstream whose client secret is wrong: its route holds at the first attempt.
/// `hold_recheck` is when the held route is tried again on its own (e.g. "1h": only a release helps).
pub async fn start_with_wrong_secret(hold_recheck: &str) -> World {
    start(
        &tenant("", ""),
        |sim, dir| {
            let section = upstream("m365-oauth", sim, dir);
            std::fs::write(dir.join("client-secret"), WRONG_SECRET).unwrap();
            section
        },
        &format!("hold_recheck = \"{hold_recheck}\"\n"),
    )
    .await
}

pub fn named_upstream(name: &str, kind: &str, sim: &exosim::RunningSim, dir: &Path, extra: &str) -> String {
    let mut section = format!("[upstreams.{name}]\n{}ca_file = \"ca.pem\"\n", upstream(kind, sim, dir));
    if kind != "m365-graph" {
        section.push_str("tls_server_name = \"localhost\"\n");
    }
    section.push_str(extra);
    section.push('\n');
    section
}

/// Starts the simulator and sluice with a whole configuration: `make_config` gets the simulator, the
/// directory and sluice's port, and writes everything after `hostname`, `spool_dir` and `[retry]`
/// (listeners, users, upstreams, routes).
pub async fn start_with(
    tenant_toml: &str,
    make_config: impl FnOnce(&exosim::RunningSim, &Path, u16) -> String,
) -> World {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("sluice=debug").try_init();
    let sim_config = exosim::SimConfig::from_toml_str(tenant_toml).expect("tenant config");
    let sim = exosim::Simulator::start(sim_config).await.expect("simulator starts");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), sim.ca_cert_pem()).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let body = make_config(&sim, dir.path(), port);
    launch(sim, dir, port, &body).await
}

async fn launch(sim: exosim::RunningSim, dir: tempfile::TempDir, port: u16, body: &str) -> World {
    let config_text = format!(
        "hostname = \"sluice.test\"\nspool_dir = \"spool\"\n\n[retry]\ninitial_interval = \"1s\"\nmax_interval = \"2s\"\n\n{body}\n"
    );
    std::fs::write(dir.path().join("sluice.toml"), &config_text).unwrap();
    let config = sluice::config::load(&dir.path().join("sluice.toml")).unwrap_or_else(|e| panic!("{e}\n{config_text}"));
    let stop = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let relay = {
        let stop = stop.clone();
        tokio::spawn(async move {
            sluice::server::run_with(config, stop, move |s| {
                let _ = tx.send(s.clone());
            })
            .await
        })
    };
    let scheduler = rx.await.expect("sluice started");
    let events = scheduler.subscribe();
    World { sim, scheduler, events, port, dir, stop, relay }
}

impl World {
    /// Stops sluice and starts it again on the same spool, simulator and port with another configuration
    /// (as [`start_with`] takes it).
    pub async fn restart_with(self, make_config: impl FnOnce(&exosim::RunningSim, &Path, u16) -> String) -> World {
        self.stop.cancel();
        let _ = self.relay.await;
        let body = make_config(&self.sim, self.dir.path(), self.port);
        launch(self.sim, self.dir, self.port, &body).await
    }

    /// Submits one message to sluice; returns the final reply line.
    pub async fn submit(&self, from: &str, to: &[&str], body: &str) -> String {
        submit(self.port, from, to, body).await
    }

    /// Waits for the next `n` delivery events.
    /// The admin's fix in the wrong-secret scenarios. The configuration is read at start-up, so the tenant
    /// learns the secret sluice has instead.
    pub fn fix_secret(&self) {
        self.sim.update_config(|c| c.apps[0].client_secret = Some(WRONG_SECRET.into())).unwrap();
    }

    pub async fn next_events(&mut self, n: usize) -> Vec<DeliveryEvent> {
        let mut out = Vec::new();
        while out.len() < n {
            match tokio::time::timeout(DEADLINE, self.events.recv()).await {
                Ok(Ok(e)) => out.push(e),
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
                other => panic!("no delivery event after {DEADLINE:?} ({} of {n}): {other:?}", out.len()),
            }
        }
        out
    }

    /// Waits until the simulator holds `n` messages.
    pub async fn wait_messages(&self, n: usize) -> Vec<exosim::StoredMessage> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let messages = self.sim.messages();
            if messages.len() >= n {
                return messages;
            }
            assert!(tokio::time::Instant::now() < deadline, "simulator has {} of {n} messages", messages.len());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `pred` holds, polling.
    pub async fn wait_until(&self, what: &str, mut pred: impl FnMut(&World) -> bool) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while !pred(self) {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.relay.await;
    }
}

/// A message with the headers Exchange wants.
pub fn message(from: &str, to: &str, subject: &str) -> String {
    format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nMessage-ID: <{}@sluice.test>\r\n\r\nHello.\r\n",
        subject.replace(' ', "-")
    )
}

/// A minimal SMTP client: EHLO, MAIL, RCPT…, DATA. Returns the reply to the end of DATA.
pub async fn submit(port: u16, from: &str, to: &[&str], body: &str) -> String {
    let stream = TcpStream::connect(("127.0.0.1", port)).await.expect("connect to sluice");
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    async fn reply(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(DEADLINE, r.read_line(&mut line)).await.expect("reply in time").unwrap();
            assert!(n > 0, "sluice closed the connection");
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all.trim_end().to_owned();
            }
        }
    }
    let mut expect = async |w: &mut tokio::net::tcp::OwnedWriteHalf, line: String, code: &str| {
        if !line.is_empty() {
            w.write_all(line.as_bytes()).await.unwrap();
        }
        let got = reply(&mut r).await;
        assert!(got.starts_with(code), "{line:?} → {got}");
        got
    };
    expect(&mut w, String::new(), "220").await;
    expect(&mut w, "EHLO client.test\r\n".into(), "250").await;
    expect(&mut w, format!("MAIL FROM:<{from}>\r\n"), "250").await;
    for rcpt in to {
        expect(&mut w, format!("RCPT TO:<{rcpt}>\r\n"), "250").await;
    }
    expect(&mut w, "DATA\r\n".into(), "354").await;
    let mut data = body.replace("\r\n.", "\r\n..");
    data.push_str(".\r\n");
    let last = expect(&mut w, data, "250").await;
    let _ = w.write_all(b"QUIT\r\n").await;
    last
}
