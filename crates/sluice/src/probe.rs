//! `sluice probe`: diagnostics that turn what the upstream (or our own listener) says into a fix.
//!
//! Upstream mode walks the path a delivery takes, one step at a time, printing each: the host's
//! addresses, the token (its claims, never the token), the SMTP conversation (`C:`/`S:`, AUTH payloads
//! redacted) with the TLS version, cipher suite and certificate chain, and optionally a test message.
//! Graph gets the token and a request that sends nothing. Every Microsoft reply or Entra error found on
//! the way is explained from the one table in [`crate::upstream::microsoft`] (what it means, how to fix
//! it), the same text the scheduler logs when it holds a route.
//!
//! Listener mode plays a device against our own listener: greeting, EHLO, STARTTLS when offered (TLS
//! details), whether AUTH is offered only after TLS, optionally AUTH and a test message, and why a
//! refusal happened (relay denied: which networks may relay).
//!
//! The SMTP client, TLS configuration and token client are the relay's own (`upstream::smtp`,
//! `config`, `oauth`): what the probe sees is what delivery would see. Everything goes to stdout; the
//! exit status is 0 only when every step worked, and the diagnosis is printed last.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use smtp_wire::{Reply, parse_reply};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::config::{Config, ListenerConfig, ListenerTls, Secret, UpstreamConfig, UpstreamKind};
use crate::oauth::{TokenSource, error_chain, http_client};
use crate::upstream::microsoft::{self, Diagnosis};
use crate::upstream::smtp::{Auth, SharedTranscript, SmtpConnection, TlsInfo, Transcript};
use crate::upstream::{Connection, Disposition, Envelope, Outcome, TransportError, Upstream, classify};

/// `sluice probe`'s command line.
#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    #[arg(long, short, env = "SLUICE_CONFIG")]
    pub config: Option<PathBuf>,
    /// `host[:port]` to probe instead of the configured upstream host.
    pub upstream: Option<String>,
    /// Probe our own listener instead (the configured ones, or this address), as a device would.
    #[arg(long, num_args = 0..=1, default_missing_value = "", value_name = "ADDRESS")]
    pub listener: Option<String>,
    /// Send a test message to this address.
    #[arg(long, value_name = "ADDRESS")]
    pub send_to: Option<String>,
    /// The test message's sender (default: the upstream mailbox, or probe@…).
    #[arg(long, value_name = "ADDRESS")]
    pub from: Option<String>,
    /// --listener: AUTH as this user; the password comes from $SLUICE_PROBE_PASSWORD or a prompt.
    #[arg(long)]
    pub user: Option<String>,
    /// --listener: trust anchors (PEM) for the listener's certificate, besides the system store.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// --listener: the name to verify the listener's certificate against (default: its IP address).
    #[arg(long)]
    pub tls_server_name: Option<String>,
}

/// Runs `sluice probe`: 0 when every step worked, 1 when one did not, 2 for a usage or configuration error.
pub fn run(args: ProbeArgs) -> ExitCode {
    let config = match &args.config {
        Some(path) => match crate::config::load(path) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("sluice probe: configuration error: {e}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sluice probe: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ok = if let Some(listener) = &args.listener {
        let address = match listener.as_str() {
            "" => None,
            text => match text.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(e) => {
                    eprintln!("sluice probe: --listener {text:?}: {e} (expected ip:port)");
                    return ExitCode::from(2);
                }
            },
        };
        let password = match &args.user {
            None => None,
            Some(user) => match std::env::var("SLUICE_PROBE_PASSWORD") {
                Ok(p) => Some(Secret::new(p)),
                Err(_) => match rpassword::prompt_password(format!("Password for {user}: ")) {
                    Ok(p) => Some(Secret::new(p)),
                    Err(e) => {
                        eprintln!("sluice probe: no password ($SLUICE_PROBE_PASSWORD unset, and no prompt: {e})");
                        return ExitCode::from(2);
                    }
                },
            },
        };
        let options = ListenerProbe {
            address,
            user: args.user.clone(),
            password,
            send_to: args.send_to.clone(),
            from: args.from.clone(),
            ca_file: args.ca_file.clone(),
            tls_server_name: args.tls_server_name.clone(),
        };
        runtime.block_on(probe_listeners(config.as_ref(), &options))
    } else {
        let config = match config {
            Some(c) => c,
            None => match crate::config::parse(crate::config::EMBEDDED_DEFAULT, std::path::Path::new(".")) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("sluice probe: {e}");
                    return ExitCode::from(2);
                }
            },
        };
        let options =
            UpstreamProbe { target: args.upstream.clone(), send_to: args.send_to.clone(), from: args.from.clone() };
        runtime.block_on(probe_upstream(&config, &options))
    };
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// What to probe upstream, and what to send.
#[derive(Debug, Default, Clone)]
pub struct UpstreamProbe {
    /// `host[:port]` to probe instead of the configured upstream host.
    pub target: Option<String>,
    /// Send a test message to this address.
    pub send_to: Option<String>,
    /// Its sender (default: the configured mailbox).
    pub from: Option<String>,
}

/// What to probe on our own listener.
#[derive(Debug, Default, Clone)]
pub struct ListenerProbe {
    /// The listener's address (default: every listener of the configuration).
    pub address: Option<SocketAddr>,
    /// AUTH as this user.
    pub user: Option<String>,
    /// The password for `user` (read by the caller from the environment or a prompt).
    pub password: Option<Secret>,
    pub send_to: Option<String>,
    pub from: Option<String>,
    /// Extra trust anchors (PEM) for the listener's certificate.
    pub ca_file: Option<std::path::PathBuf>,
    /// Name to verify the listener's certificate against (default: the address's IP).
    pub tls_server_name: Option<String>,
}

/// The findings of a probe: problems (each with its diagnosis) and warnings.
#[derive(Default)]
struct Report {
    problems: Vec<Problem>,
    warnings: Vec<String>,
}

struct Problem {
    what: String,
    meaning: Option<String>,
    fix: Option<String>,
}

impl Report {
    fn problem(&mut self, what: impl Into<String>, meaning: Option<String>, fix: Option<String>) {
        let what = what.into();
        println!("  !! {what}");
        self.problems.push(Problem { what, meaning, fix });
    }

    /// A problem Microsoft's table explains (or a plain one when it does not).
    fn diagnosed(&mut self, what: impl Into<String>, diagnosis: Option<&Diagnosis>, ctx: &Ctx) {
        match diagnosis {
            Some(d) => self.problem(
                format!("{} [{}]", what.into(), d.code),
                Some(d.meaning.to_owned()),
                Some(d.fix_for(ctx.mailbox.as_deref(), ctx.app_id.as_deref())),
            ),
            None => self.problem(what, None, None),
        }
    }

    fn warn(&mut self, text: impl Into<String>) {
        let text = text.into();
        println!("  warning: {text}");
        self.warnings.push(text);
    }

    /// Prints the verdict, diagnosis last; true when everything worked.
    fn finish(self) -> bool {
        println!();
        for w in &self.warnings {
            println!("WARNING: {w}");
        }
        if self.problems.is_empty() {
            println!("RESULT: OK, every step worked");
            return true;
        }
        println!("RESULT: FAILED");
        for p in &self.problems {
            println!("DIAGNOSIS: {}", p.what);
            if let Some(m) = &p.meaning {
                println!("  means: {m}");
            }
            if let Some(f) = &p.fix {
                println!("  fix:   {f}");
            }
        }
        false
    }
}

/// Values the fix texts are filled in with.
struct Ctx {
    kind: UpstreamKind,
    mailbox: Option<String>,
    app_id: Option<String>,
}

fn step(title: &str) {
    println!();
    println!("== {title}");
}

// -------------------------------------------------------------------------------------------------
// Upstream
// -------------------------------------------------------------------------------------------------

/// Probes the configured upstream; prints everything; true when every step worked.
pub async fn probe_upstream(config: &Config, options: &UpstreamProbe) -> bool {
    let mut upstream = config.upstream.clone();
    if let Some(target) = &options.target
        && let Err(e) = retarget(&mut upstream, target)
    {
        println!("sluice probe: {e}");
        return false;
    }
    let ctx = Ctx {
        kind: upstream.kind,
        mailbox: upstream.mailbox.clone(),
        app_id: upstream.oauth.as_ref().map(|o| o.client_id.clone()),
    };
    let mut report = Report::default();
    println!("Probing upstream {} (kind {}, tls {:?})", upstream.display_name(), upstream.kind.name(), upstream.tls);

    // The token first: without it there is nothing to authenticate with.
    let mut token = None;
    if let Some(oauth) = &upstream.oauth {
        step(&format!("Token from {} (client {}, scope {})", oauth.token_url, oauth.client_id, oauth.scope));
        let http = http_client(&upstream.https_tls, upstream.connect_timeout, upstream.command_timeout);
        let source = TokenSource::new(http, oauth.clone());
        match source.token().await {
            Ok(t) => {
                println!("  token obtained (not shown)");
                show_claims(&t, upstream.kind, &mut report);
                token = Some(t);
            }
            Err(e) => {
                let text = e.to_string();
                report.diagnosed(text.clone(), microsoft::explain_token_error(&text), &ctx);
                return report.finish();
            }
        }
    }

    if upstream.kind == UpstreamKind::M365Graph {
        probe_graph(&upstream, options, token.as_ref(), &ctx, &mut report).await;
        return report.finish();
    }

    step(&format!("Resolving {}", upstream.host));
    match tokio::net::lookup_host((upstream.host.as_str(), upstream.port)).await {
        Ok(addrs) => {
            let addrs: Vec<SocketAddr> = addrs.collect();
            for a in &addrs {
                println!("  {}", a.ip());
            }
            if addrs.is_empty() {
                report.problem(format!("{} has no address", upstream.host), None, None);
                return report.finish();
            }
        }
        Err(e) => {
            report.problem(
                format!("cannot resolve {}: {e}", upstream.host),
                Some("the name does not resolve from this machine".into()),
                Some("check `host` in [upstream] and this machine's DNS".into()),
            );
            return report.finish();
        }
    }

    step(&format!("SMTP session with {}", upstream.display_name()));
    let transcript: SharedTranscript = Arc::new(Mutex::new(Transcript::default()));
    let auth = match (&upstream.kind, &token, &upstream.credentials) {
        // As delivery does (`Upstream::connect_as`): XOAUTH2 whenever the kind has app tokens.
        (UpstreamKind::M365Oauth | UpstreamKind::M365Hve, Some(t), _) => {
            Auth::XOAuth2 { user: upstream.mailbox.as_deref().unwrap_or_default(), token: t.expose() }
        }
        (_, _, Some((user, password))) => Auth::Password { user, password: password.expose() },
        _ => Auth::None,
    };
    let connected = SmtpConnection::connect_traced(&upstream, auth, Some(transcript.clone())).await;
    let mut shown = print_transcript_from(&transcript, 0);
    let mut conn = match connected {
        Ok(conn) => conn,
        Err(e) => {
            explain_transport(&e, &upstream, &ctx, &mut report);
            return report.finish();
        }
    };
    let caps = conn.capabilities().clone();
    println!(
        "  session ready: {}; extensions after TLS: PIPELINING={} 8BITMIME={} SMTPUTF8={} SIZE={} AUTH={}",
        match auth {
            Auth::None => "no authentication".to_owned(),
            Auth::Password { user, .. } => format!("authenticated as {user} (LOGIN/PLAIN)"),
            Auth::XOAuth2 { user, .. } => format!("authenticated as {user} (XOAUTH2)"),
        },
        caps.pipelining,
        caps.eight_bit_mime,
        caps.smtputf8,
        caps.size.map_or("-".into(), |s| s.to_string()),
        if caps.auth.is_empty() { "-".into() } else { caps.auth.join(" ") }
    );

    if let Some(to) = &options.send_to {
        let from = sender(options, &upstream, config);
        step(&format!("Test message from {from} to {to}"));
        let body = test_message(&from, to, &config.hostname);
        let envelope = Envelope { sender: &from, recipients: vec![to.as_str()], eight_bit: false, smtputf8: false };
        let result = conn.send(&envelope, &body).await;
        shown = print_transcript_from(&transcript, shown);
        judge(result, &ctx, &mut report);
    }
    conn.quit().await;
    print_transcript_from(&transcript, shown);
    report.finish()
}

/// `host[:port]` given on the command line instead of the configured host.
fn retarget(upstream: &mut UpstreamConfig, target: &str) -> Result<(), String> {
    let (host, port) = match target.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || h.ends_with(']') => {
            (h.trim_matches(['[', ']']).to_owned(), p.parse().map_err(|_| format!("bad port in {target:?}"))?)
        }
        _ => (target.trim_matches(['[', ']']).to_owned(), upstream.port),
    };
    upstream.server_name =
        rustls_pki_types::ServerName::try_from(host.clone()).map_err(|e| format!("bad host {host:?}: {e}"))?;
    upstream.host = host;
    upstream.port = port;
    Ok(())
}

fn sender(options: &UpstreamProbe, upstream: &UpstreamConfig, config: &Config) -> String {
    options
        .from
        .clone()
        .or_else(|| upstream.mailbox.clone())
        .or_else(|| upstream.credentials.as_ref().map(|(u, _)| u.clone()).filter(|u| u.contains('@')))
        .unwrap_or_else(|| format!("postmaster@{}", config.hostname))
}

fn test_message(from: &str, to: &str, hostname: &str) -> Vec<u8> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let date = chrono::Utc::now().to_rfc2822();
    format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: sluice probe test message\r\nDate: {date}\r\n\
         Message-ID: <probe.{}.{}@{hostname}>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n\
         This is a test message sent by `sluice probe --send-to`.\r\n",
        now.as_secs(),
        now.subsec_nanos()
    )
    .into_bytes()
}

/// The verdicts of a test message.
fn judge(result: Result<Vec<Outcome>, TransportError>, ctx: &Ctx, report: &mut Report) {
    match result {
        Ok(outcomes) => {
            for o in outcomes {
                match classify(ctx.kind, &o) {
                    Disposition::Delivered => println!("  accepted: {}", o.describe()),
                    other => report.diagnosed(
                        format!("test message {other:?}: {}", o.describe()),
                        microsoft::explain(&o),
                        ctx,
                    ),
                }
            }
        }
        Err(e) => {
            let o = Outcome::Transport(e);
            report.diagnosed(format!("test message not sent: {}", o.describe()), microsoft::explain(&o), ctx);
        }
    }
}

/// A connection that failed: the reply (or error), what it means, how to fix it.
fn explain_transport(e: &TransportError, upstream: &UpstreamConfig, ctx: &Ctx, report: &mut Report) {
    let outcome = Outcome::Transport(e.clone());
    if let Some(d) = microsoft::explain(&outcome) {
        report.diagnosed(e.to_string(), Some(d), ctx);
        return;
    }
    let (meaning, fix) = match e {
        TransportError::Connect(_) => (
            "no TCP connection to the upstream",
            format!(
                "check host and port ({}), and that this machine may connect out to port {} (firewalls often block 25 \
                 and 587)",
                upstream.display_name(),
                upstream.port
            ),
        ),
        TransportError::Tls(text) if text.contains("STARTTLS") => {
            ("the upstream offers no STARTTLS", "check the port (587 for smtp.office365.com) or `tls`".to_owned())
        }
        TransportError::Tls(_) => (
            "the TLS handshake failed (often: the certificate does not match the name, or is not trusted)",
            format!(
                "check the name verified ({:?}: `tls_server_name`) and the trust anchors (system store, `ca_file`)",
                upstream.server_name
            ),
        ),
        TransportError::Timeout(_) => {
            ("the upstream did not answer in time", "check the network path and `command_timeout`".to_owned())
        }
        TransportError::Protocol(text) if text.contains("AUTH") => {
            ("the upstream does not offer the authentication sluice needs", "check `kind` and the port".to_owned())
        }
        _ => ("the session failed", "see the conversation above".to_owned()),
    };
    report.problem(e.to_string(), Some(meaning.into()), Some(fix));
}

/// Prints the transcript's lines from `from` on (and the TLS session once); returns how many are shown.
fn print_transcript_from(transcript: &SharedTranscript, from: usize) -> usize {
    let t = transcript.lock().expect("transcript lock");
    let starttls_at = t.lines.iter().position(|l| l == "C: STARTTLS");
    if from == 0
        && starttls_at.is_none()
        && let Some(tls) = &t.tls
    {
        // Implicit TLS: the handshake came before the greeting.
        print_tls(tls);
    }
    for (i, line) in t.lines.iter().enumerate().skip(from) {
        println!("  {line}");
        if starttls_at.is_some_and(|s| s + 1 == i)
            && let Some(tls) = &t.tls
        {
            print_tls(tls);
        }
    }
    t.lines.len()
}

fn print_tls(tls: &TlsInfo) {
    println!("  -- TLS established: {}, cipher suite {}", tls.version, tls.cipher_suite);
    for (i, der) in tls.chain.iter().enumerate() {
        print_certificate(i, der);
    }
}

fn print_certificate(index: usize, der: &[u8]) {
    use x509_parser::prelude::*;
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        println!("     certificate {index}: unreadable ({} bytes)", der.len());
        return;
    };
    println!("     certificate {index}: subject {}", cert.subject());
    println!("       issuer   {}", cert.issuer());
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push(format!("DNS:{d}")),
                GeneralName::IPAddress(ip) => match ip.len() {
                    4 => names.push(format!("IP:{}", std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]))),
                    16 => {
                        let b: [u8; 16] = (*ip).try_into().unwrap_or([0; 16]);
                        names.push(format!("IP:{}", std::net::Ipv6Addr::from(b)));
                    }
                    _ => {}
                },
                other => names.push(format!("{other:?}")),
            }
        }
    }
    if !names.is_empty() {
        println!("       SANs     {}", names.join(", "));
    }
    let validity = cert.validity();
    println!("       valid    {} to {}", validity.not_before, validity.not_after);
    if !validity.is_valid() {
        println!("       !! not valid now");
    }
}

/// Decodes the token's claims (a JWT payload) and prints the ones that matter; never the token.
fn show_claims(token: &Secret, kind: UpstreamKind, report: &mut Report) {
    let Some(claims) = jwt_claims(token.expose()) else {
        println!("  (the token is not a readable JWT: no claims to show)");
        return;
    };
    let get = |k: &str| claims.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let aud = get("aud").unwrap_or_default();
    let roles: Vec<String> = claims
        .get("roles")
        .and_then(|r| r.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    println!("  aud:   {aud}");
    println!("  roles: {}", if roles.is_empty() { "(none)".to_owned() } else { roles.join(" ") });
    if let Some(scp) = get("scp") {
        println!("  scp:   {scp}");
    }
    println!("  appid: {}", get("appid").or_else(|| get("azp")).unwrap_or_default());
    println!("  tid:   {}", get("tid").unwrap_or_default());
    if let Some(exp) = claims.get("exp").and_then(|e| e.as_u64()) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let when = chrono::DateTime::from_timestamp(exp as i64, 0).map(|d| d.to_rfc3339()).unwrap_or_default();
        if exp > now {
            println!("  exp:   {when} (in {} min)", (exp - now) / 60);
        } else {
            println!("  exp:   {when} (expired)");
            report.warn("the token is already expired (is this machine's clock right?)");
        }
    }
    let (role, resource) = match kind {
        UpstreamKind::M365Graph => ("Mail.Send", "graph.microsoft.com"),
        _ => ("SMTP.SendAsApp", "outlook.office"),
    };
    if !roles.iter().any(|r| r == role) {
        report.warn(format!(
            "the token's roles lack {role}: grant the app that application permission (with admin consent), or it \
             will be refused"
        ));
    }
    if !aud.contains(resource) && !aud.starts_with("00000002-0000-0ff1-ce00") && !aud.starts_with("00000003-0000") {
        report.warn(format!("the token's audience {aud:?} is not {resource}: check `scope`"));
    }
}

fn jwt_claims(token: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes).ok()?.as_object().cloned()
}

/// Graph: a request that sends nothing (a sendMail whose body is not base64: Graph checks the token,
/// the permission and the mailbox first, then refuses the body), or the test message.
async fn probe_graph(
    upstream: &UpstreamConfig,
    options: &UpstreamProbe,
    token: Option<&Secret>,
    ctx: &Ctx,
    report: &mut Report,
) {
    let (Some(graph), Some(token)) = (&upstream.graph, token) else {
        return;
    };
    step(&format!("Graph: POST {} with a body that is not a message (nothing is sent)", graph.send_mail_url));
    let http = http_client(&upstream.https_tls, upstream.connect_timeout, upstream.command_timeout);
    let response = http
        .post(&graph.send_mail_url)
        .bearer_auth(token.expose())
        .header(reqwest::header::CONTENT_TYPE, "text/plain")
        .body("!probe!")
        .send()
        .await;
    match response {
        Err(e) => {
            report.problem(
                format!("Graph unreachable: {}", error_chain(&e)),
                None,
                Some("check graph_url and this machine's HTTPS access".into()),
            );
            return;
        }
        Ok(r) => {
            let status = r.status().as_u16();
            let body = r.text().await.unwrap_or_default();
            let reason = crate::upstream::graph::graph_error(&body);
            println!("  HTTP {status} {reason}");
            if status == 400 && reason.contains("ErrorMimeContent") {
                println!("  token, Mail.Send permission and mailbox are fine (Graph only refused the probe's body)");
            } else {
                report.diagnosed(
                    format!("Graph answered HTTP {status} {reason}"),
                    microsoft::explain_http(status, &reason),
                    ctx,
                );
                return;
            }
        }
    }
    if let Some(to) = &options.send_to {
        let from = options.from.clone().or_else(|| upstream.mailbox.clone()).unwrap_or_default();
        step(&format!("Test message from {from} to {to} through Graph sendMail"));
        let body = test_message(&from, to, "sluice.probe");
        let envelope = Envelope { sender: &from, recipients: vec![to.as_str()], eight_bit: false, smtputf8: false };
        let result = match Upstream::new(upstream.clone()).connect().await {
            Ok(mut c @ Connection::Graph(_)) => c.send(&envelope, &body).await,
            Ok(_) => unreachable!("m365-graph connects to Graph"),
            Err(e) => Err(e),
        };
        judge(result, ctx, report);
    }
}

// -------------------------------------------------------------------------------------------------
// Our own listener
// -------------------------------------------------------------------------------------------------

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A device's side of an SMTP session, printing every line.
struct Device {
    stream: Box<dyn Stream>,
    buf: Vec<u8>,
}

const DEVICE_TIMEOUT: Duration = Duration::from_secs(30);

impl Device {
    async fn send(&mut self, line: &str, shown: Option<&str>) -> Result<Reply, String> {
        println!("  C: {}", shown.unwrap_or(line));
        let write = async {
            self.stream.write_all(line.as_bytes()).await?;
            self.stream.write_all(b"\r\n").await?;
            self.stream.flush().await
        };
        timeout(DEVICE_TIMEOUT, write).await.map_err(|_| "timed out writing".to_owned())?.map_err(|e| e.to_string())?;
        self.reply().await
    }

    async fn reply(&mut self) -> Result<Reply, String> {
        loop {
            if let Some((reply, used)) = parse_reply(&self.buf).map_err(|e| e.to_string())? {
                for l in String::from_utf8_lossy(&self.buf[..used]).split("\r\n").filter(|l| !l.is_empty()) {
                    println!("  S: {l}");
                }
                self.buf.drain(..used);
                return Ok(reply);
            }
            let mut chunk = [0u8; 4096];
            let n = timeout(DEVICE_TIMEOUT, self.stream.read(&mut chunk))
                .await
                .map_err(|_| "timed out waiting for a reply".to_owned())?
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("the listener closed the connection".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn extensions(reply: &Reply) -> Vec<String> {
    reply.lines.iter().skip(1).map(|l| l.to_ascii_uppercase()).collect()
}

fn offers(ext: &[String], keyword: &str) -> bool {
    ext.iter().any(|e| e.split_whitespace().next() == Some(keyword))
}

/// Probes our own listeners (the configured ones, or `options.address`); true when every step worked.
pub async fn probe_listeners(config: Option<&Config>, options: &ListenerProbe) -> bool {
    let mut report = Report::default();
    let targets: Vec<(SocketAddr, Option<&ListenerConfig>)> = match (options.address, config) {
        (Some(a), c) => vec![(a, c.and_then(|c| c.listeners.iter().find(|l| l.address == a)))],
        (None, Some(c)) => c.listeners.iter().map(|l| (l.address, Some(l))).collect(),
        (None, None) => vec![],
    };
    if targets.is_empty() {
        report.problem("no listener to probe: give an address or a configuration", None, None);
        return report.finish();
    }
    let tls = match crate::config::client_tls(options.ca_file.as_deref()) {
        Ok(t) => Arc::new(t),
        Err(e) => {
            report.problem(format!("TLS: {e}"), None, None);
            return report.finish();
        }
    };
    for (address, listener) in targets {
        probe_listener(address, listener, options, tls.clone(), &mut report).await;
    }
    report.finish()
}

async fn probe_listener(
    address: SocketAddr,
    listener: Option<&ListenerConfig>,
    options: &ListenerProbe,
    tls: Arc<rustls::ClientConfig>,
    report: &mut Report,
) {
    // The connection's local address is what the listener's policy sees (unless a proxy is in between).
    let implicit =
        listener.is_some_and(|l| l.tls == ListenerTls::Implicit) || (listener.is_none() && address.port() == 465);
    step(&format!("Listener {address}{}", if implicit { " (implicit TLS)" } else { "" }));
    let tcp = match timeout(DEVICE_TIMEOUT, TcpStream::connect(address)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            report.problem(
                format!("cannot connect to {address}: {e}"),
                Some("nothing listens there, or a firewall is in the way".into()),
                Some("is `sluice serve` running with this [[listener]] address?".into()),
            );
            return;
        }
        Err(_) => {
            report.problem(format!("connecting to {address} timed out"), None, None);
            return;
        }
    };
    let local = tcp.local_addr().ok();
    let server_name = options.tls_server_name.clone().unwrap_or_else(|| address.ip().to_string());
    let mut device = Device { stream: Box::new(tcp), buf: Vec::new() };
    let mut tls_active = false;
    if implicit {
        match handshake(device.stream, &tls, &server_name).await {
            Ok(s) => device.stream = s,
            Err(e) => {
                report.problem(e, None, Some(tls_fix()));
                return;
            }
        }
        tls_active = true;
    }
    if let Err(e) =
        listener_session(&mut device, &mut tls_active, listener, options, local, &tls, &server_name, report).await
    {
        report.problem(e, None, None);
    }
}

fn tls_fix() -> String {
    "give the CA that signed the listener's certificate with --ca-file, and the name in the certificate with \
     --tls-server-name"
        .into()
}

async fn handshake(
    stream: Box<dyn Stream>,
    tls: &Arc<rustls::ClientConfig>,
    name: &str,
) -> Result<Box<dyn Stream>, String> {
    let server_name = rustls_pki_types::ServerName::try_from(name.to_owned())
        .map_err(|e| format!("bad TLS server name {name:?}: {e}"))?;
    let connector = tokio_rustls::TlsConnector::from(tls.clone());
    match timeout(DEVICE_TIMEOUT, connector.connect(server_name, stream)).await {
        Err(_) => Err("the TLS handshake timed out".into()),
        Ok(Err(e)) => Err(format!("TLS handshake failed (verifying the certificate for {name:?}): {e}")),
        Ok(Ok(s)) => {
            print_tls(&crate::upstream::smtp::tls_info(s.get_ref().1));
            Ok(Box::new(s))
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn listener_session(
    device: &mut Device,
    tls_active: &mut bool,
    listener: Option<&ListenerConfig>,
    options: &ListenerProbe,
    local: Option<SocketAddr>,
    tls: &Arc<rustls::ClientConfig>,
    server_name: &str,
    report: &mut Report,
) -> Result<(), String> {
    let greeting = device.reply().await?;
    if !greeting.is_positive() {
        report.problem(format!("the listener refused the session: {greeting}"), None, None);
        return Ok(());
    }
    let ehlo = format!("EHLO {}", gethostname::gethostname().to_string_lossy());
    let reply = device.send(&ehlo, None).await?;
    let mut ext = extensions(&reply);
    if !*tls_active {
        if offers(&ext, "AUTH") {
            report.warn(
                "AUTH is offered before TLS: passwords would cross the network in clear text \
                 (insecure_allow_plaintext_auth)",
            );
        }
        if offers(&ext, "STARTTLS") {
            let r = device.send("STARTTLS", None).await?;
            if r.code != 220 {
                report.problem(format!("STARTTLS refused: {r}"), None, None);
                return Ok(());
            }
            let plain = std::mem::replace(&mut device.stream, Box::new(tokio::io::duplex(1).0));
            device.buf.clear();
            device.stream = match handshake(plain, tls, server_name).await {
                Ok(s) => s,
                Err(e) => {
                    report.problem(e, None, Some(tls_fix()));
                    return Ok(());
                }
            };
            *tls_active = true;
            ext = extensions(&device.send(&ehlo, None).await?);
        } else {
            println!("  (no STARTTLS offered: this listener is plain SMTP)");
        }
    }
    println!("  AUTH offered: {}", ext.iter().find(|e| e.starts_with("AUTH")).map_or("no", |a| a.as_str()));

    if let Some(user) = &options.user {
        if !offers(&ext, "AUTH") {
            report.problem(
                format!("AUTH is not offered{}", if *tls_active { "" } else { " (without TLS)" }),
                Some("the listener takes no passwords here".into()),
                Some(
                    "AUTH needs `auth = true`, at least one [[user]], and TLS on the listener (`tls = \"starttls\"` \
                     or \"implicit\" with cert_file/key_file)"
                        .into(),
                ),
            );
        } else {
            let password = options.password.as_ref().map(|p| p.expose()).unwrap_or_default();
            let plain = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
            let r = device.send(&format!("AUTH PLAIN {plain}"), Some("AUTH PLAIN <credentials redacted>")).await?;
            if r.code == 235 {
                println!("  authenticated as {user}");
            } else {
                let fix = match r.code {
                    535 => "check the user name and password; the [[user]]'s password_hash comes from `sluice passwd`",
                    421 => "too many failed AUTHs: the client or user is banned for a while ([limits] auth_ban_time)",
                    _ => "see the reply above",
                };
                report.problem(format!("AUTH refused: {r}"), None, Some(fix.into()));
                let _ = device.send("QUIT", None).await;
                return Ok(());
            }
        }
    }

    if let Some(to) = &options.send_to {
        let from = options.from.clone().unwrap_or_else(|| format!("probe@{}", server_name));
        let r = device.send(&format!("MAIL FROM:<{from}>"), None).await?;
        if !r.is_positive() {
            report.problem(format!("MAIL FROM refused: {r}"), None, Some(refusal_fix(&r, listener, local)));
            let _ = device.send("QUIT", None).await;
            return Ok(());
        }
        let r = device.send(&format!("RCPT TO:<{to}>"), None).await?;
        if !r.is_positive() {
            report.problem(format!("RCPT TO refused: {r}"), None, Some(refusal_fix(&r, listener, local)));
            let _ = device.send("QUIT", None).await;
            return Ok(());
        }
        let r = device.send("DATA", None).await?;
        if r.code != 354 {
            report.problem(format!("DATA refused: {r}"), None, None);
            let _ = device.send("QUIT", None).await;
            return Ok(());
        }
        let body = test_message(&from, to, "sluice.probe");
        let mut stuffed = Vec::new();
        smtp_wire::dot_stuff(&body, &mut stuffed);
        let stuffed = String::from_utf8_lossy(&stuffed);
        let r = device
            .send(stuffed.trim_end_matches("\r\n"), Some(&format!("<message content: {} bytes, then .>", body.len())))
            .await?;
        if r.is_positive() {
            println!("  queued: the relay took the message");
        } else {
            report.problem(format!("message refused: {r}"), None, Some(refusal_fix(&r, listener, local)));
        }
    }
    let _ = device.send("QUIT", None).await;
    Ok(())
}

/// Why our listener refused, in the admin's terms.
fn refusal_fix(reply: &Reply, listener: Option<&ListenerConfig>, local: Option<SocketAddr>) -> String {
    let enhanced = reply.enhanced.map(|e| (e.class, e.subject, e.detail));
    let me = local.map_or("this client".to_owned(), |a| a.ip().to_string());
    match (reply.code, enhanced) {
        (554, Some((5, 7, 1))) => {
            let networks = listener.map_or("(see the listener's allowed_networks)".to_owned(), |l| {
                if l.allowed_networks.is_empty() {
                    "none".to_owned()
                } else {
                    l.allowed_networks.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ")
                }
            });
            format!(
                "relay denied: {me} is neither in the listener's allowed_networks ({networks}) nor authenticated; add \
                 its network to allowed_networks, or AUTH (--user) over TLS"
            )
        }
        (550, Some((5, 7, 1))) => "the identity's rules refuse this sender or recipient domain \
             (allowed_senders / allowed_recipient_domains of its [[user]], [[network]] or [[certificate]])"
            .into(),
        (552, _) => "the message is over the listener's max_message_size".into(),
        (452, _) => "too many recipients for the listener's max_recipients".into(),
        (530, _) => "the listener requires more credentials (its `require` list)".into(),
        _ => "see the reply above".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_read_from_the_jwt_payload_only() {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let token = format!(
            "{}.{}.c2ln",
            b64.encode(r#"{"typ":"JWT"}"#),
            b64.encode(r#"{"aud":"https://outlook.office365.com","roles":["SMTP.SendAsApp"],"tid":"t"}"#)
        );
        let claims = jwt_claims(&token).unwrap();
        assert_eq!(claims["aud"], "https://outlook.office365.com");
        assert_eq!(claims["roles"][0], "SMTP.SendAsApp");
        assert!(jwt_claims("opaque-token").is_none());
        assert!(jwt_claims("a.!!!.c").is_none());
    }

    #[test]
    fn a_target_replaces_host_port_and_verified_name() {
        let config = crate::config::parse(
            "spool_dir = \"s\"\n[[listener]]\naddress = \"127.0.0.1:2525\"\n[upstream]\nhost = \"a.example\"\nport = 25\n",
            std::path::Path::new("."),
        )
        .unwrap();
        let mut up = config.upstream.clone();
        retarget(&mut up, "smtp.example.com:587").unwrap();
        assert_eq!((up.host.as_str(), up.port), ("smtp.example.com", 587));
        assert_eq!(
            format!("{:?}", up.server_name),
            format!("{:?}", rustls_pki_types::ServerName::try_from("smtp.example.com").unwrap())
        );
        retarget(&mut up, "other.example").unwrap();
        assert_eq!((up.host.as_str(), up.port), ("other.example", 587));
        retarget(&mut up, "[::1]:2526").unwrap();
        assert_eq!((up.host.as_str(), up.port), ("::1", 2526));
        assert!(retarget(&mut up, "host:notaport").is_err());
    }
}
