//! `sluice demo`: sluice in front of a simulated Microsoft 365, on this machine, in one command.
//!
//! It starts the Exchange Online simulator (`exosim`) and a relay configured against it (submission with
//! STARTTLS and a mailbox password, as a printer's relay would use), then plays three devices through a
//! real SMTP conversation each: a scanner on the LAN, an application with SMTP AUTH, and a device that
//! sends as someone its mailbox may not send as, which Microsoft refuses at the end of DATA and sluice
//! turns into a bounce. It prints what happened to each message and keeps both running for the user to
//! try with their own client, until Ctrl-C.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use smtp_wire::{Reply, parse_reply};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::scheduler::{DeliveryEvent, Scheduler};
use crate::upstream::Disposition;

/// The demo tenant: one licensed mailbox for the relay, and a CEO nobody may impersonate.
const TENANT: &str = r#"
[tenant]
name = "contoso"
id = "6babcaad-604b-40ac-a9d7-9fd97c0b779f"
domains = ["contoso.com"]

[listen]
smtp = "127.0.0.1:0"
https = "127.0.0.1:0"

[[mailboxes]]
address = "scanner@contoso.com"
password = "Scan-2-Mail!"

[[mailboxes]]
address = "ceo@contoso.com"
password = "not-for-printers"
"#;

const MAILBOX: &str = "scanner@contoso.com";
const MAILBOX_PASSWORD: &str = "Scan-2-Mail!";
const APP_USER: &str = "erp";
const APP_PASSWORD: &str = "demo-password";

pub struct DemoOptions {
    /// Port of the LAN listener (no AUTH, for 127.0.0.0/8); 0 picks a free one.
    pub lan_port: u16,
    /// Port of the submission listener (STARTTLS + AUTH); 0 picks a free one.
    pub submission_port: u16,
    /// Exit once the three messages are settled instead of running until Ctrl-C.
    pub once: bool,
}

/// One scripted device.
struct Device {
    title: &'static str,
    port: u16,
    starttls_and_auth: bool,
    from: &'static str,
    to: &'static str,
    subject: &'static str,
}

pub async fn run(options: DemoOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("sluice-demo-").tempdir().context("cannot create a directory")?;
    let sim_config = exosim::SimConfig::from_toml_str(TENANT).map_err(|e| anyhow::anyhow!("demo tenant: {e}"))?;
    let sim = exosim::Simulator::start(sim_config).await.map_err(|e| anyhow::anyhow!("simulator: {e}"))?;

    let lan_port = pick_port(options.lan_port)?;
    let submission_port = pick_port(options.submission_port)?;
    let relay_ca = write_demo_files(dir.path(), &sim)?;
    let config_text = relay_config(sim.smtp_addr(), lan_port, submission_port)?;
    std::fs::write(dir.path().join("sluice.toml"), &config_text)?;
    let config = crate::config::load(&dir.path().join("sluice.toml")).context("demo relay configuration")?;

    println!("sluice demo: a relay in front of a simulated Microsoft 365 tenant (contoso.com)\n");
    println!("  Microsoft 365 (simulated)  SMTP submission {} (STARTTLS, AUTH LOGIN XOAUTH2)", sim.smtp_addr());
    println!("  sluice, LAN listener       127.0.0.1:{lan_port} (no AUTH for 127.0.0.0/8)");
    println!(
        "  sluice, submission         127.0.0.1:{submission_port} (STARTTLS, AUTH as {APP_USER} / {APP_PASSWORD})"
    );
    println!("  sluice forwards as mailbox {MAILBOX} (SMTP AUTH with the mailbox password, over TLS 1.2+)\n");

    let relay_stop = CancellationToken::new();
    let (scheduler_tx, scheduler_rx) = tokio::sync::oneshot::channel::<Scheduler>();
    let relay = {
        let stop = relay_stop.clone();
        tokio::spawn(async move {
            crate::server::run_with(config, stop, move |scheduler| {
                let _ = scheduler_tx.send(scheduler.clone());
            })
            .await
        })
    };
    let scheduler = match scheduler_rx.await {
        Ok(scheduler) => scheduler,
        Err(_) => {
            let result = relay.await.context("relay task")?;
            result?;
            bail!("the relay stopped before it was ready");
        }
    };
    let mut events = scheduler.subscribe();

    let devices = [
        Device {
            title: "1. A scanner on the LAN (allowed network, no password)",
            port: lan_port,
            starttls_and_auth: false,
            from: MAILBOX,
            to: "alice@contoso.com",
            subject: "Scan from the 3rd floor copier",
        },
        Device {
            title: "2. An ERP application (STARTTLS and SMTP AUTH to sluice)",
            port: submission_port,
            starttls_and_auth: true,
            from: MAILBOX,
            to: "orders@fabrikam.example",
            subject: "Invoice 2026-1142",
        },
        Device {
            title: "3. A device that sends as the CEO (the mailbox has no SendAs right)",
            port: lan_port,
            starttls_and_auth: false,
            from: "ceo@contoso.com",
            to: "bob@contoso.com",
            subject: "Quarterly numbers",
        },
    ];
    let mut queued = Vec::new();
    for device in &devices {
        println!("{}", device.title);
        match converse(device, &relay_ca).await {
            Ok(id) => queued.push((device, id)),
            Err(e) => println!("   the conversation failed: {e:#}"),
        }
        println!();
    }

    println!("What happened to each message:");
    let mut pending: Vec<(&Device, String)> = queued;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !pending.is_empty() {
        let event = match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) => {
                for (device, id) in &pending {
                    println!("   {id} ({}): still queued after 60 s", device.to);
                }
                break;
            }
            Ok(Err(RecvError::Lagged(_))) => continue,
            Ok(Err(RecvError::Closed)) => break,
            Ok(Ok(event)) => event,
        };
        if let Some(i) = pending.iter().position(|(_, id)| *id == event.queue_id) {
            if event.disposition == Disposition::Temporary {
                println!("   {} ({}): deferred, will retry: {}", event.queue_id, event.recipient, event.reply);
                continue;
            }
            print_outcome(&event);
            pending.remove(i);
        }
    }
    println!();
    for message in sim.messages() {
        println!(
            "   Microsoft 365 (simulated) holds message {}: from <{}> to {:?}, sent by {} over {:?}",
            message.seq, message.mail_from, message.rcpt_to, message.identity, message.path
        );
    }

    if !options.once {
        println!("\nBoth keep running. Try it yourself, for example:");
        println!("   swaks --server 127.0.0.1:{lan_port} --from {MAILBOX} --to you@contoso.com");
        println!(
            "   swaks --server 127.0.0.1:{submission_port} --tls --auth-user {APP_USER} --auth-password {APP_PASSWORD} \\\n         --from {MAILBOX} --to you@contoso.com   (add --tls-verify off: the demo's certificate is self-made)"
        );
        println!("Press Ctrl-C to stop.");
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                event = events.recv() => match event {
                    Ok(event) => print_outcome(&event),
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => break,
                },
            }
        }
    }
    relay_stop.cancel();
    relay.await.context("relay task")??;
    sim.shutdown().await;
    Ok(())
}

fn print_outcome(event: &DeliveryEvent) {
    match event.disposition {
        Disposition::Delivered => {
            println!("   {} to {}: delivered to Microsoft 365: {}", event.queue_id, event.recipient, event.reply)
        }
        Disposition::Temporary => {
            println!("   {} to {}: deferred, will retry: {}", event.queue_id, event.recipient, event.reply)
        }
        Disposition::Permanent => {
            println!("   {} to {}: refused by Microsoft 365: {}", event.queue_id, event.recipient, event.reply);
            match &event.bounce_id {
                Some(bounce) => {
                    println!("      → sluice bounced it to <{}> (DSN queued as {bounce})", event.sender)
                }
                None => println!("      → no bounce (the sender is the null sender)"),
            }
        }
    }
}

fn pick_port(port: u16) -> anyhow::Result<u16> {
    if port != 0 {
        return Ok(port);
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Writes the simulator's CA (for the relay's upstream trust), the mailbox password, and a certificate
/// for the relay's own STARTTLS listener. Returns the relay CA's PEM for the demo clients.
fn write_demo_files(dir: &Path, sim: &exosim::RunningSim) -> anyhow::Result<String> {
    std::fs::write(dir.join("exosim-ca.pem"), sim.ca_cert_pem())?;
    std::fs::write(dir.join("mailbox.secret"), MAILBOX_PASSWORD)?;
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    params.distinguished_name.push(rcgen::DnType::CommonName, "sluice demo");
    let cert = params.self_signed(&key)?;
    std::fs::write(dir.join("relay.pem"), cert.pem())?;
    std::fs::write(dir.join("relay.key"), key.serialize_pem())?;
    Ok(cert.pem())
}

fn relay_config(sim: SocketAddr, lan_port: u16, submission_port: u16) -> anyhow::Result<String> {
    let hash = crate::policy::users::hash_password(APP_PASSWORD).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut text = String::new();
    write!(
        text,
        r#"hostname = "sluice.demo"
spool_dir = "spool"

[[listener]]
address = "127.0.0.1:{lan_port}"
allowed_networks = ["127.0.0.0/8"]

[[listener]]
address = "127.0.0.1:{submission_port}"
tls = "starttls"
cert_file = "relay.pem"
key_file = "relay.key"

[[user]]
name = "{APP_USER}"
password_hash = "{hash}"

[upstream]
host = "{ip}"
port = {port}
tls = "starttls"
ca_file = "exosim-ca.pem"
tls_server_name = "localhost"
username = "{MAILBOX}"
password_file = "mailbox.secret"
connections = 2

[retry]
initial_interval = "10s"
max_interval = "1m"
"#,
        ip = sim.ip(),
        port = sim.port(),
    )?;
    Ok(text)
}

/// Plays one device: an SMTP conversation with sluice, printed as it goes. Returns the queue id.
async fn converse(device: &Device, relay_ca_pem: &str) -> anyhow::Result<String> {
    let tcp = TcpStream::connect(("127.0.0.1", device.port)).await?;
    let mut talk = Talk { stream: Box::new(tcp), buf: Vec::new() };
    talk.expect(None, 220).await?;
    talk.expect(Some("EHLO device.lan"), 250).await?;
    if device.starttls_and_auth {
        talk.expect(Some("STARTTLS"), 220).await?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(relay_ca_pem.as_bytes()) {
            roots.add(cert?)?;
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let plain = std::mem::replace(&mut talk.stream, Box::new(tokio::io::duplex(1).0));
        let tls = connector.connect(rustls_pki_types::ServerName::try_from("localhost")?, plain).await?;
        println!("   (TLS established)");
        talk.stream = Box::new(tls);
        talk.expect(Some("EHLO device.lan"), 250).await?;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{APP_USER}\0{APP_PASSWORD}"));
        talk.send_shown(&format!("AUTH PLAIN {token}"), "AUTH PLAIN <credentials>").await?;
        talk.expect_reply(235).await?;
    }
    talk.expect(Some(&format!("MAIL FROM:<{}>", device.from)), 250).await?;
    talk.expect(Some(&format!("RCPT TO:<{}>", device.to)), 250).await?;
    talk.expect(Some("DATA"), 354).await?;
    let body = format!(
        "From: <{}>\r\nTo: <{}>\r\nSubject: {}\r\nDate: {}\r\nMessage-ID: <{}@device.lan>\r\n\r\n\
         Sent through sluice by `sluice demo`.\r\n.\r\n",
        device.from,
        device.to,
        device.subject,
        chrono::Utc::now().to_rfc2822(),
        crate::spool::Spool::new_id()
    );
    println!("   C: (message: Subject: {})", device.subject);
    talk.stream.write_all(body.as_bytes()).await?;
    let reply = talk.expect_reply(250).await?;
    talk.expect(Some("QUIT"), 221).await?;
    let text = reply.text();
    Ok(text.rsplit(' ').next().unwrap_or_default().to_owned())
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

struct Talk {
    stream: Box<dyn Stream>,
    buf: Vec<u8>,
}

impl Talk {
    async fn send_shown(&mut self, line: &str, shown: &str) -> anyhow::Result<()> {
        println!("   C: {shown}");
        self.stream.write_all(format!("{line}\r\n").as_bytes()).await?;
        Ok(())
    }

    async fn expect(&mut self, line: Option<&str>, code: u16) -> anyhow::Result<Reply> {
        if let Some(line) = line {
            self.send_shown(line, line).await?;
        }
        self.expect_reply(code).await
    }

    async fn expect_reply(&mut self, code: u16) -> anyhow::Result<Reply> {
        let reply = loop {
            if let Some((reply, used)) = parse_reply(&self.buf).map_err(|e| anyhow::anyhow!("{e}"))? {
                self.buf.drain(..used);
                break reply;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(30), self.stream.read(&mut chunk)).await??;
            if n == 0 {
                bail!("connection closed");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let shown = String::from_utf8_lossy(&reply.to_bytes()).trim_end().replace("\r\n", "\r\n      ");
        println!("   S: {shown}");
        if reply.code != code {
            bail!("expected {code}, got {}", reply.code);
        }
        Ok(reply)
    }
}
