//! Shared helpers for sluice's end-to-end tests with real peers.
//!
//! Every test builds its own world: a [`Pki`] (test CA + server certificate), an upstream
//! ([`Upstream`]: `tests/peers/upstream.py`, aiosmtpd; or [`SmtpSink`]: Postfix's
//! `smtp-sink`), and a [`Sluice`] process started from a [`SluiceBuilder`], each in its own
//! temporary directory, on 127.0.0.1, on ports picked free. Every process is stopped on
//! Drop; when a test panics, the logs of the processes it started are printed.
//!
//! Waits poll with generous deadlines ([`DEADLINE`]); no test asserts on elapsed time.

#![allow(dead_code)] // each test binary uses its own subset of these helpers

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use tempfile::TempDir;

/// Helpers of the fault tests: a load client, a misbehaving upstream, spool checks, /proc figures.
pub mod faults;

/// How long any wait for a peer (start-up, delivery, a reply) may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);
/// Socket read/write timeout of the raw client.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);

/// The hostname every test configures for sluice.
pub const SLUICE_HOSTNAME: &str = "sluice.test";

// ---------------------------------------------------------------------------------------------
// Paths, tools, processes
// ---------------------------------------------------------------------------------------------

/// The repository's root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repository root")
}

/// `tests/peers/<name>` at the repository root.
pub fn peer_script(name: &str) -> PathBuf {
    let p = repo_root().join("tests/peers").join(name);
    assert!(p.is_file(), "test peer {} is missing", p.display());
    p
}

/// The sluice binary under test.
pub fn sluice_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sluice"))
}

/// Looks `name` up on PATH and then in `extra_dirs`.
pub fn find_tool(name: &str, extra_dirs: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).chain(extra_dirs.iter().map(PathBuf::from)).map(|dir| dir.join(name)).find(
        |candidate| {
            fs::metadata(candidate).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
        },
    )
}

/// Like [`find_tool`], but a missing tool fails the test with the package to install.
pub fn require_tool(name: &str, extra_dirs: &[&str], package: &str) -> PathBuf {
    find_tool(name, extra_dirs).unwrap_or_else(|| {
        panic!(
            "required test tool `{name}` was not found on PATH{}: install the Debian package \
             `{package}` (`.ci/run` installs every test dependency)",
            if extra_dirs.is_empty() { String::new() } else { format!(" nor in {extra_dirs:?}") }
        )
    })
}

/// The Python interpreter for the peers: `$SLUICE_TEST_PYTHON`, else `python3` on PATH.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("SLUICE_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    require_tool("python3", &[], "python3 (plus the PyPI package aiosmtpd: pip install aiosmtpd)")
}

fn euid() -> u32 {
    fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX)
}

/// Sends a signal (e.g. "TERM", "KILL") to a process, through the shell's `kill` builtin.
pub fn send_signal(pid: u32, signal: &str) {
    let _ = Command::new("sh")
        .args(["-c", "kill -s \"$1\" \"$2\" 2>/dev/null", "sh", signal, &pid.to_string()])
        .stdin(Stdio::null())
        .status();
}

/// Waits up to `deadline` for `child` to exit.
pub fn wait_with_deadline(child: &mut Child, deadline: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + deadline;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < end => sleep(POLL),
            _ => return None,
        }
    }
}

/// SIGTERM, then SIGKILL if the process has not exited within `grace`.
fn terminate(child: &mut Child, grace: Duration) -> ExitStatus {
    if let Ok(Some(status)) = child.try_wait() {
        return status;
    }
    send_signal(child.id(), "TERM");
    if let Some(status) = wait_with_deadline(child, grace) {
        return status;
    }
    let _ = child.kill();
    child.wait().expect("wait for killed child")
}

/// The last `lines` lines of a log file (for failure reports).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Polls `f` until it returns `Some`, or panics with `what` after `deadline`.
pub fn wait_until<T>(deadline: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= end {
            panic!("gave up after {deadline:?} waiting for {what}");
        }
        sleep(POLL);
    }
}

/// What a finished command printed.
#[derive(Debug)]
pub struct CmdOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

impl fmt::Display for CmdOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "exit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}", self.status, self.stdout, self.stderr)
    }
}

/// Runs a command with stdin from `stdin` (or /dev/null), output captured, killed after
/// `deadline`.
pub fn run_command(cmd: &mut Command, stdin: Option<&[u8]>, deadline: Duration) -> CmdOutput {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    cmd.stdout(fs::File::create(&out_path).unwrap()).stderr(fs::File::create(&err_path).unwrap());
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input).expect("write to child's stdin");
        drop(pipe);
    }
    let status = match wait_with_deadline(&mut child, deadline) {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish within {deadline:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                tail(&out_path, 50),
                tail(&err_path, 50)
            );
        }
    };
    CmdOutput {
        status,
        stdout: String::from_utf8_lossy(&fs::read(&out_path).unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&fs::read(&err_path).unwrap_or_default()).into_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------------------------

static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A TCP port on 127.0.0.1 that nothing listened on a moment ago, never the same twice in one
/// test binary.
pub fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        if HANDED_OUT.lock().unwrap().insert(port) {
            return port;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// PKI
// ---------------------------------------------------------------------------------------------

/// A test CA and a server certificate for `localhost` and `127.0.0.1`, as PEM files.
pub struct Pki {
    _dir: TempDir,
    /// The CA certificate (trust anchor for clients and for sluice's `ca_file`).
    pub ca_file: PathBuf,
    /// The server certificate chain (leaf, then the CA).
    pub cert_file: PathBuf,
    /// The server's private key (PKCS#8).
    pub key_file: PathBuf,
    pub ca_der: Vec<u8>,
}

impl Pki {
    pub fn new() -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
            KeyUsagePurpose,
        };
        let dir = tempfile::Builder::new().prefix("sluice-pki-").tempdir().expect("tempdir");

        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.distinguished_name.push(DnType::CommonName, "sluice test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign CA");
        let issuer = Issuer::new(ca_params, ca_key);

        let key = KeyPair::generate().expect("server key");
        let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "localhost");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &issuer).expect("sign server certificate");

        let ca_file = dir.path().join("ca.pem");
        let cert_file = dir.path().join("cert.pem");
        let key_file = dir.path().join("key.pem");
        fs::write(&ca_file, ca_cert.pem()).unwrap();
        fs::write(&cert_file, format!("{}{}", cert.pem(), ca_cert.pem())).unwrap();
        fs::write(&key_file, key.serialize_pem()).unwrap();
        Pki { ca_der: ca_cert.der().to_vec(), _dir: dir, ca_file, cert_file, key_file }
    }

    /// A rustls client configuration trusting only this CA.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(rustls::pki_types::CertificateDer::from(self.ca_der.clone())).expect("add test CA");
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }
}

// ---------------------------------------------------------------------------------------------
// Passwords
// ---------------------------------------------------------------------------------------------

/// An argon2id PHC hash of `password`, as `sluice passwd` would print (with cheap parameters,
/// so that debug builds verify it quickly).
pub fn argon2_hash(password: &str) -> String {
    use argon2::{Algorithm, Argon2, Params, PasswordHasher, Version};
    let params = Params::new(4096, 1, 1, None).expect("argon2 params");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes())
        .expect("argon2 hash")
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------------

/// A small RFC 5322 message with CRLF line endings.
pub fn message(from: &str, to: &str, subject: &str, body: &str) -> Vec<u8> {
    let mut m = format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nDate: Mon, 23 Nov 2026 12:00:00 +0000\r\n\
         Message-ID: <{}@client.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n",
        subject.replace(|c: char| !c.is_ascii_alphanumeric(), "-")
    );
    for line in body.lines() {
        m.push_str(line);
        m.push_str("\r\n");
    }
    m.into_bytes()
}

/// A body that exercises transparency: lines that start with dots, a lone dot, trailing
/// whitespace, an empty line, a long line, 8-bit-free punctuation.
pub const TRICKY_BODY: &str = "Hello,\n\n.leading dot\n..two dots\n.\n \ntrailing space \n\ttab\nFrom the start of a line\n\
    a line of 200 characters: 0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678\n\
    -- \nthe end";

/// Splits off the first header field of `data` if it is a `Received:` field (unfolding
/// continuation lines) and returns (field, rest). `eol` is "\r\n" for SMTP content and "\n"
/// for smtp-sink dumps. Panics with a readable message otherwise.
pub fn split_received<'a>(data: &'a [u8], eol: &str) -> (&'a [u8], &'a [u8]) {
    assert!(
        data.len() >= 9 && data[..9].eq_ignore_ascii_case(b"Received:"),
        "the delivered message does not start with a Received: header:\n{}",
        show(&data[..data.len().min(600)])
    );
    let mut pos = 0;
    loop {
        let nl = data[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or_else(|| panic!("unterminated Received: header:\n{}", show(data)));
        let line_end = pos + nl + 1;
        if eol == "\r\n" {
            assert!(
                nl > 0 && data[pos + nl - 1] == b'\r',
                "the Received: header has a line not ended by CRLF:\n{}",
                show(&data[..line_end])
            );
        }
        pos = line_end;
        match data.get(pos) {
            Some(b' ') | Some(b'\t') => continue, // folded continuation line
            _ => break,
        }
    }
    (&data[..pos], &data[pos..])
}

/// The content after sluice's `Received:` header (see [`split_received`]).
pub fn strip_received(data: &[u8]) -> &[u8] {
    split_received(data, "\r\n").1
}

/// Renders bytes for an assertion message: escaped, one line per line.
pub fn show(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    s.split_inclusive('\n').map(|l| format!("  |{}", l.escape_debug())).collect::<Vec<_>>().join("\n")
}

/// Asserts byte equality and shows the first difference readably.
#[track_caller]
pub fn assert_bytes_eq(actual: &[u8], expected: &[u8], what: &str) {
    if actual == expected {
        return;
    }
    let first = actual.iter().zip(expected).position(|(a, b)| a != b).unwrap_or(actual.len().min(expected.len()));
    let from = first.saturating_sub(80);
    panic!(
        "{what}: content differs at byte {first} (actual {} bytes, expected {} bytes)\n\
         --- actual from byte {from} ---\n{}\n--- expected from byte {from} ---\n{}",
        actual.len(),
        expected.len(),
        show(&actual[from.min(actual.len())..actual.len().min(first + 200)]),
        show(&expected[from.min(expected.len())..expected.len().min(first + 200)]),
    );
}

/// The (unfolded) value of the first header field `name` in `data`'s header section.
pub fn header_value(data: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(data);
    let header_end = text.find("\r\n\r\n").or_else(|| text.find("\n\n")).unwrap_or(text.len());
    let mut fields: Vec<String> = Vec::new();
    for line in text[..header_end].lines() {
        if (line.starts_with(' ') || line.starts_with('\t')) && !fields.is_empty() {
            let last = fields.last_mut().unwrap();
            last.push(' ');
            last.push_str(line.trim());
        } else {
            fields.push(line.trim_end().to_string());
        }
    }
    fields.into_iter().find_map(|f| {
        let (n, v) = f.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

// ---------------------------------------------------------------------------------------------
// Upstream: tests/peers/upstream.py (aiosmtpd)
// ---------------------------------------------------------------------------------------------

/// One message as the upstream received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Sequence number at the upstream (1, 2, ...).
    pub seq: u64,
    /// Envelope sender; "" for the null sender `<>`.
    pub mail_from: String,
    pub rcpt_tos: Vec<String>,
    /// The content exactly as received (dot-unstuffed), CRLF line endings.
    pub data: Vec<u8>,
    /// Whether the session was under STARTTLS.
    pub tls: bool,
    /// The user the session authenticated as, if any.
    pub auth_login: Option<String>,
    pub mail_options: Vec<String>,
}

impl Received {
    pub fn subject(&self) -> Option<String> {
        header_value(&self.data, "Subject")
    }
}

/// The messages an upstream peer (upstream.py, faulty_upstream.py) wrote to `out`, in order of arrival.
pub fn read_received(out: &Path) -> Vec<Received> {
    read_received_after(out, 0)
}

/// Like [`read_received`], but only the messages numbered above `after`.
pub fn read_received_after(out: &Path, after: u64) -> Vec<Received> {
    let mut found: Vec<(u64, PathBuf)> = fs::read_dir(out)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    let seq = name.strip_suffix(".json")?.parse::<u64>().ok()?;
                    (seq > after).then(|| (seq, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
        .into_iter()
        .map(|(seq, path)| {
            let v: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).expect("upstream json");
            let strings = |key: &str| -> Vec<String> {
                v[key]
                    .as_array()
                    .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
                    .unwrap_or_default()
            };
            Received {
                seq,
                mail_from: v["mail_from"].as_str().unwrap_or_default().to_string(),
                rcpt_tos: strings("rcpt_tos"),
                data: B64.decode(v["data_b64"].as_str().unwrap_or_default()).expect("base64"),
                tls: v["tls"].as_bool().unwrap_or(false),
                auth_login: v["auth_login"].as_str().map(String::from),
                mail_options: strings("mail_options"),
            }
        })
        .collect()
}

/// How many messages an upstream peer wrote to `out`.
pub fn count_received(out: &Path) -> usize {
    fs::read_dir(out)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_suffix(".json"))
                        .is_some_and(|n| n.parse::<u64>().is_ok())
                })
                .count()
        })
        .unwrap_or(0)
}

#[derive(Default)]
pub struct UpstreamBuilder {
    port: Option<u16>,
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
    auth: Option<(String, String)>,
    reject: Vec<String>,
    tempfail: Vec<String>,
}

impl UpstreamBuilder {
    /// Listen on this port (default: a free one).
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }
    /// Offer STARTTLS with the PKI's server certificate and require it before MAIL.
    pub fn tls(mut self, pki: &Pki) -> Self {
        self.tls = Some((pki.cert_file.clone(), pki.key_file.clone(), pki.ca_file.clone()));
        self
    }
    /// Require AUTH (PLAIN/LOGIN) as this user.
    pub fn auth(mut self, user: &str, password: &str) -> Self {
        self.auth = Some((user.to_string(), password.to_string()));
        self
    }
    /// Answer RCPT TO this address with 550 5.1.1.
    pub fn reject_rcpt(mut self, addr: &str) -> Self {
        self.reject.push(addr.to_string());
        self
    }
    /// Answer RCPT TO this address with 451 4.2.0.
    pub fn tempfail_rcpt(mut self, addr: &str) -> Self {
        self.tempfail.push(addr.to_string());
        self
    }

    pub fn start(self) -> Upstream {
        let dir = tempfile::Builder::new().prefix("sluice-upstream-").tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let port_file = dir.path().join("port");
        let log = dir.path().join("upstream.log");
        let mut cmd = Command::new(python());
        cmd.arg("-u").arg(peer_script("upstream.py"));
        cmd.arg("--port-file").arg(&port_file).arg("--out").arg(&out);
        if let Some(port) = self.port {
            cmd.arg("--port").arg(port.to_string());
        }
        if let Some((cert, key, _)) = &self.tls {
            cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
        }
        if let Some((user, password)) = &self.auth {
            cmd.arg("--auth").arg(format!("{user}:{password}"));
        }
        for a in &self.reject {
            cmd.arg("--reject-rcpt").arg(a);
        }
        for a in &self.tempfail {
            cmd.arg("--tempfail-rcpt").arg(a);
        }
        cmd.stdin(Stdio::null())
            .stdout(fs::File::create(dir.path().join("upstream.stdout")).unwrap())
            .stderr(fs::File::create(&log).unwrap());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let port = wait_until(DEADLINE, "upstream.py to listen", || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("upstream.py exited ({status}) before listening:\n{}", tail(&log, 40));
            }
            fs::read_to_string(&port_file).ok().and_then(|s| s.trim().parse::<u16>().ok())
        });
        Upstream { child: Some(child), port, out, log, ca_file: self.tls.map(|t| t.2), auth: self.auth, _dir: dir }
    }
}

/// A running `tests/peers/upstream.py`. Killed (SIGTERM) on Drop.
pub struct Upstream {
    child: Option<Child>,
    pub port: u16,
    out: PathBuf,
    log: PathBuf,
    /// The CA that signed its certificate, when it offers STARTTLS.
    pub ca_file: Option<PathBuf>,
    pub auth: Option<(String, String)>,
    _dir: TempDir,
}

impl Upstream {
    pub fn builder() -> UpstreamBuilder {
        UpstreamBuilder::default()
    }

    /// The messages received so far, in order of arrival.
    pub fn messages(&self) -> Vec<Received> {
        read_received(&self.out)
    }

    /// How many messages have arrived so far (cheaper than [`Upstream::messages`]).
    pub fn count(&self) -> usize {
        count_received(&self.out)
    }

    /// Waits until at least `n` messages have arrived and returns all of them.
    pub fn wait_for_messages(&self, n: usize, deadline: Duration) -> Vec<Received> {
        self.wait_for(deadline, &format!("{n} message(s) at the upstream"), |m| m.len() >= n)
    }

    /// Waits until `done` holds for the messages received so far and returns them.
    pub fn wait_for(&self, deadline: Duration, what: &str, mut done: impl FnMut(&[Received]) -> bool) -> Vec<Received> {
        let end = Instant::now() + deadline;
        loop {
            let msgs = self.messages();
            if done(&msgs) {
                return msgs;
            }
            if Instant::now() >= end {
                panic!(
                    "gave up after {deadline:?} waiting for {what}; the upstream has {} message(s): {:?}\n\
                     --- upstream log ---\n{}",
                    msgs.len(),
                    msgs.iter().map(|m| (m.seq, &m.mail_from, &m.rcpt_tos, m.subject())).collect::<Vec<_>>(),
                    tail(&self.log, 60)
                );
            }
            sleep(POLL);
        }
    }

    pub fn log(&self) -> String {
        tail(&self.log, 200)
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().map(|c| terminate(c, Duration::from_secs(10)))
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("--- upstream.py log (port {}) ---\n{}", self.port, tail(&self.log, 80));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Upstream: Postfix smtp-sink
// ---------------------------------------------------------------------------------------------

/// One message as captured by smtp-sink (its dump has LF line endings).
#[derive(Debug, Clone)]
pub struct SinkMessage {
    pub mail_from: String,
    pub rcpt_tos: Vec<String>,
    pub helo: Option<String>,
    /// The message as received, with every CRLF turned into LF by smtp-sink.
    pub data: Vec<u8>,
}

/// A running Postfix `smtp-sink` that dumps every transaction to a file. Killed on Drop.
pub struct SmtpSink {
    child: Child,
    pub port: u16,
    dump_dir: PathBuf,
    log: PathBuf,
    _dir: TempDir,
}

impl SmtpSink {
    pub fn start() -> SmtpSink {
        let bin = require_tool("smtp-sink", &["/usr/sbin", "/usr/lib/postfix/sbin"], "postfix");
        let dir = tempfile::Builder::new().prefix("sluice-sink-").tempdir().expect("tempdir");
        let dump_dir = dir.path().join("dump");
        fs::create_dir(&dump_dir).unwrap();
        let log = dir.path().join("smtp-sink.log");
        for _attempt in 0..5 {
            let port = free_port();
            let mut cmd = Command::new(&bin);
            if euid() == 0 {
                // smtp-sink insists on dropping privileges when started as root.
                cmd.args(["-u", "root"]);
            }
            cmd.args(["-4", "-h", "sink.test", "-d"])
                .arg(format!("{}/msg.", dump_dir.display()))
                .arg(format!("127.0.0.1:{port}"))
                .arg("100")
                .stdin(Stdio::null())
                .stdout(fs::File::create(&log).unwrap())
                .stderr(fs::OpenOptions::new().append(true).open(&log).unwrap());
            let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
            let ready = wait_until(DEADLINE, "smtp-sink to listen", || {
                if let Ok(Some(_)) = child.try_wait() {
                    return Some(false);
                }
                let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
                s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
                let mut buf = [0u8; 64];
                let n = s.read(&mut buf).ok()?;
                let _ = s.write_all(b"QUIT\r\n");
                Some(buf[..n].starts_with(b"220"))
            });
            if ready {
                return SmtpSink { child, port, dump_dir, log, _dir: dir };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("smtp-sink did not start:\n{}", tail(&log, 40));
    }

    /// The transactions whose dump file smtp-sink has finished writing.
    pub fn messages(&self) -> Vec<SinkMessage> {
        // List first, then look at what smtp-sink still has open: a file listed and not open
        // any more is complete (smtp-sink keeps the file open for the whole transaction).
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(&self.dump_dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| (e.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH), e.path()))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        let open: BTreeSet<PathBuf> = fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|rd| rd.filter_map(|e| e.ok()).filter_map(|e| fs::read_link(e.path()).ok()).collect())
            .unwrap_or_default();
        files
            .into_iter()
            .filter(|(_, p)| !open.contains(p))
            .map(|(_, p)| parse_sink_dump(&fs::read(&p).unwrap()))
            .collect()
    }

    pub fn wait_for_messages(&self, n: usize, deadline: Duration) -> Vec<SinkMessage> {
        let end = Instant::now() + deadline;
        loop {
            let msgs = self.messages();
            if msgs.len() >= n {
                return msgs;
            }
            if Instant::now() >= end {
                panic!(
                    "gave up after {deadline:?} waiting for {n} message(s) at smtp-sink; it has {}\n{}",
                    msgs.len(),
                    tail(&self.log, 40)
                );
            }
            sleep(POLL);
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- smtp-sink log (port {}) ---\n{}", self.port, tail(&self.log, 40));
        }
    }
}

fn angle_addr(args: &str) -> String {
    let a = args.trim();
    match (a.find('<'), a.find('>')) {
        (Some(i), Some(j)) if i < j => a[i + 1..j].to_string(),
        _ => a.split_whitespace().next().unwrap_or("").to_string(),
    }
}

/// Parses smtp-sink's dump format: X-Client-Addr, X-Client-Proto, X-Helo-Args, X-Mail-Args,
/// X-Rcpt-Args lines, a three-line Received: header of its own, the message, an empty line.
pub fn parse_sink_dump(dump: &[u8]) -> SinkMessage {
    let mut pos = 0;
    let mut msg = SinkMessage { mail_from: String::new(), rcpt_tos: vec![], helo: None, data: vec![] };
    let next_line = |pos: usize| -> (String, usize) {
        let end = dump[pos..].iter().position(|&b| b == b'\n').map(|i| pos + i + 1).unwrap_or(dump.len());
        (String::from_utf8_lossy(&dump[pos..end]).trim_end_matches('\n').to_string(), end)
    };
    loop {
        assert!(pos < dump.len(), "truncated smtp-sink dump:\n{}", show(dump));
        let (line, end) = next_line(pos);
        pos = end;
        if let Some(v) = line.strip_prefix("X-Helo-Args: ") {
            msg.helo = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("X-Mail-Args: ") {
            msg.mail_from = angle_addr(v);
        } else if let Some(v) = line.strip_prefix("X-Rcpt-Args: ") {
            msg.rcpt_tos.push(angle_addr(v));
        } else if line.starts_with("Received: ") {
            // smtp-sink's own Received: header, with its continuation lines.
            while matches!(dump.get(pos), Some(b'\t') | Some(b' ')) {
                pos = next_line(pos).1;
            }
            break;
        }
    }
    let mut data = dump[pos..].to_vec();
    // smtp-sink ends each dump with an empty line of its own.
    if data.ends_with(b"\n\n") {
        data.pop();
    }
    msg.data = data;
    msg
}

// ---------------------------------------------------------------------------------------------
// Sluice
// ---------------------------------------------------------------------------------------------

/// One `[[listener]]`.
#[derive(Clone, Debug)]
pub struct Listener {
    pub tls: &'static str,
    pub allowed_networks: Vec<String>,
    pub auth: Option<bool>,
    pub insecure_allow_plaintext_auth: Option<bool>,
    pub max_message_size: Option<u64>,
    pub max_recipients: Option<u64>,
    pub max_connections: Option<u64>,
    pub idle_timeout: Option<String>,
    pub data_timeout: Option<String>,
    /// Any other listener keys, written as given (see [`Listener::set`]).
    pub extra: Vec<(String, toml::Value)>,
    /// Assigned when sluice starts.
    pub port: u16,
}

impl Listener {
    fn new(tls: &'static str) -> Listener {
        Listener {
            tls,
            allowed_networks: vec![],
            auth: None,
            insecure_allow_plaintext_auth: None,
            max_message_size: None,
            max_recipients: None,
            max_connections: None,
            idle_timeout: None,
            data_timeout: None,
            extra: vec![],
            port: 0,
        }
    }
    /// Sets any other listener key, e.g. `.set("greeting_delay", "1s")` or
    /// `.set("require", vec!["certificate", "auth"])`.
    pub fn set(mut self, key: &str, value: impl Into<toml::Value>) -> Listener {
        self.extra.push((key.to_string(), value.into()));
        self
    }
    /// `proxy_protocol = true` was set: the harness's own probes send a PROXY header first.
    pub fn is_proxy(&self) -> bool {
        self.extra.iter().any(|(k, v)| k == "proxy_protocol" && v.as_bool() == Some(true))
    }
    /// `tls = "none"`.
    pub fn plain() -> Listener {
        Listener::new("none")
    }
    /// `tls = "starttls"` (the builder's PKI provides cert_file/key_file).
    pub fn starttls() -> Listener {
        Listener::new("starttls")
    }
    /// `tls = "implicit"`.
    pub fn implicit() -> Listener {
        Listener::new("implicit")
    }
    pub fn allow(mut self, networks: &[&str]) -> Listener {
        self.allowed_networks = networks.iter().map(|s| s.to_string()).collect();
        self
    }
    pub fn auth(mut self, on: bool) -> Listener {
        self.auth = Some(on);
        self
    }
    pub fn insecure_allow_plaintext_auth(mut self, on: bool) -> Listener {
        self.insecure_allow_plaintext_auth = Some(on);
        self
    }
    pub fn max_message_size(mut self, bytes: u64) -> Listener {
        self.max_message_size = Some(bytes);
        self
    }
    pub fn max_recipients(mut self, n: u64) -> Listener {
        self.max_recipients = Some(n);
        self
    }
}

/// The `[upstream]` table.
#[derive(Clone, Debug)]
pub struct UpstreamCfg {
    pub host: String,
    pub port: u16,
    /// "starttls" | "implicit" | "none"
    pub tls: &'static str,
    pub ca_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Pass the password through `password_env` instead of `password_file`.
    pub password_via_env: bool,
    pub connections: Option<u64>,
    pub connect_timeout: Option<String>,
    pub command_timeout: Option<String>,
    /// How long an idle upstream connection is kept open (sluice's default: 10s).
    pub idle_timeout: Option<String>,
}

impl UpstreamCfg {
    /// Plain SMTP (`tls = "none"`) to 127.0.0.1:`port`.
    pub fn plain(port: u16) -> UpstreamCfg {
        UpstreamCfg {
            host: "127.0.0.1".into(),
            port,
            tls: "none",
            ca_file: None,
            username: None,
            password: None,
            password_via_env: false,
            connections: None,
            connect_timeout: Some("5s".into()),
            command_timeout: Some("30s".into()),
            idle_timeout: None,
        }
    }
    /// STARTTLS, trusting the PKI's CA, to 127.0.0.1:`port`.
    pub fn starttls(port: u16, pki: &Pki) -> UpstreamCfg {
        UpstreamCfg { tls: "starttls", ca_file: Some(pki.ca_file.clone()), ..UpstreamCfg::plain(port) }
    }
    pub fn auth(mut self, user: &str, password: &str) -> UpstreamCfg {
        self.username = Some(user.into());
        self.password = Some(password.into());
        self
    }
    /// Everything a running [`Upstream`] needs: its port, STARTTLS with its CA, its AUTH.
    pub fn of(up: &Upstream) -> UpstreamCfg {
        let mut cfg = UpstreamCfg::plain(up.port);
        if let Some(ca) = &up.ca_file {
            cfg.tls = "starttls";
            cfg.ca_file = Some(ca.clone());
        }
        if let Some((u, p)) = &up.auth {
            cfg = cfg.auth(u, p);
        }
        cfg
    }
}

/// Builds a sluice configuration; [`SluiceBuilder::start`] runs `sluice serve` on it.
pub struct SluiceBuilder {
    listeners: Vec<Listener>,
    users: Vec<(String, String)>,
    upstream: Option<UpstreamCfg>,
    retry: (String, String, String),
    tls: Option<(PathBuf, PathBuf, Vec<u8>)>,
    client_tls: Option<Arc<rustls::ClientConfig>>,
    spool_dir: Option<PathBuf>,
    wrapper: Vec<std::ffi::OsString>,
    env: Vec<(String, String)>,
    start_deadline: Duration,
    extra_toml: Vec<String>,
}

impl SluiceBuilder {
    /// Keep the spool in this (existing) directory instead of one in sluice's own temporary
    /// directory: a small filesystem for the disk-full test, say.
    pub fn spool_dir(mut self, dir: &Path) -> Self {
        self.spool_dir = Some(dir.to_path_buf());
        self
    }
    /// Run `sluice serve` through this command, which must end by exec'ing its arguments (so the
    /// pid is sluice's): `fiu-run -x ...` for fault injection, say.
    pub fn wrapper<S: AsRef<std::ffi::OsStr>>(mut self, command: &[S]) -> Self {
        self.wrapper = command.iter().map(|a| a.as_ref().to_owned()).collect();
        self
    }
    /// How long a start may take before the test fails (default [`DEADLINE`]; a start scans the
    /// whole spool first, which takes a while with a very large queue).
    pub fn start_deadline(mut self, deadline: Duration) -> Self {
        self.start_deadline = deadline;
        self
    }
    /// An extra environment variable for sluice.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
    pub fn listener(mut self, l: Listener) -> Self {
        self.listeners.push(l);
        self
    }
    /// A `[[user]]`; the password is hashed here.
    pub fn user(mut self, name: &str, password: &str) -> Self {
        self.users.push((name.into(), argon2_hash(password)));
        self
    }
    /// TOML appended to the generated configuration as it is: `[[network]]`, `[[certificate]]`,
    /// `[limits]`, or `[[user]]` entries with sender rules.
    pub fn toml(mut self, text: &str) -> Self {
        self.extra_toml.push(text.to_string());
        self
    }
    pub fn upstream(mut self, cfg: UpstreamCfg) -> Self {
        self.upstream = Some(cfg);
        self
    }
    /// `[retry]`: initial_interval, max_interval, max_age (defaults here: 1s, 2s, 1h).
    pub fn retry(mut self, initial: &str, max: &str, max_age: &str) -> Self {
        self.retry = (initial.into(), max.into(), max_age.into());
        self
    }
    /// The certificate and key for STARTTLS/implicit listeners.
    pub fn pki(mut self, pki: &Pki) -> Self {
        self.tls = Some((pki.cert_file.clone(), pki.key_file.clone(), pki.ca_der.clone()));
        self.client_tls = Some(pki.client_config());
        self
    }

    pub fn start(self) -> Sluice {
        assert!(!self.listeners.is_empty(), "a sluice test needs at least one listener");
        let upstream = self.upstream.clone().expect("a sluice test needs an [upstream]");
        let dir = tempfile::Builder::new().prefix("sluice-test-").tempdir().expect("tempdir");
        let spool = match &self.spool_dir {
            Some(d) => d.clone(),
            None => {
                let spool = dir.path().join("spool");
                fs::create_dir(&spool).unwrap();
                spool
            }
        };
        let mut sluice = Sluice {
            last_start: Duration::ZERO,
            child: None,
            dir,
            config_path: PathBuf::new(),
            spool_dir: spool,
            listeners: self.listeners.clone(),
            builder: self,
            upstream,
            starts: 0,
        };
        for attempt in 0..4 {
            for l in &mut sluice.listeners {
                l.port = free_port();
            }
            sluice.write_config();
            match sluice.spawn_and_wait() {
                Ok(()) => return sluice,
                Err(log) if attempt < 3 && log.to_ascii_lowercase().contains("in use") => continue,
                Err(log) => panic!("sluice did not start:\n{log}"),
            }
        }
        unreachable!()
    }
}

/// A running `sluice serve`, with its own directory (config, spool, logs).
/// Stopped with SIGTERM on Drop; its log is printed when the test failed.
pub struct Sluice {
    child: Option<Child>,
    dir: TempDir,
    pub config_path: PathBuf,
    pub spool_dir: PathBuf,
    pub listeners: Vec<Listener>,
    builder: SluiceBuilder,
    upstream: UpstreamCfg,
    starts: u32,
    /// How long the last start took, from spawning the process to the greeting on every listener
    /// (spool recovery included: sluice listens only once it has scanned its spool).
    pub last_start: Duration,
}

impl Sluice {
    pub fn builder() -> SluiceBuilder {
        SluiceBuilder {
            listeners: vec![],
            users: vec![],
            upstream: None,
            retry: ("1s".into(), "2s".into(), "1h".into()),
            tls: None,
            client_tls: None,
            spool_dir: None,
            wrapper: Vec::new(),
            env: Vec::new(),
            start_deadline: DEADLINE,
            extra_toml: vec![],
        }
    }

    /// The port of the first listener.
    pub fn port(&self) -> u16 {
        self.listeners[0].port
    }

    /// The port of listener `i`.
    pub fn port_of(&self, i: usize) -> u16 {
        self.listeners[i].port
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("sluice.log")
    }

    /// The whole log of every run so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&fs::read(self.log_path()).unwrap_or_default()).into_owned()
    }

    /// The configuration text written for sluice.
    pub fn config_text(&self) -> String {
        fs::read_to_string(&self.config_path).unwrap()
    }

    /// A rustls client configuration trusting the test CA (the builder needs `.pki()`).
    pub fn client_tls(&self) -> Arc<rustls::ClientConfig> {
        self.builder.client_tls.clone().expect("SluiceBuilder::pki() was not called")
    }

    /// A raw client connected to listener `i` (implicit TLS when that listener is implicit),
    /// greeting already read and checked to be 220.
    pub fn connect(&self, i: usize) -> SmtpClient {
        let l = &self.listeners[i];
        let mut c = if l.tls == "implicit" {
            SmtpClient::connect_tls(l.port, self.client_tls())
        } else {
            SmtpClient::connect(l.port)
        };
        let g = c.read_reply();
        assert_eq!(g.code, 220, "greeting from sluice: {g}");
        c
    }

    fn write_config(&mut self) {
        use toml::{Table, Value};
        let b = &self.builder;
        let s = |v: &str| Value::String(v.to_string());
        let p = |v: &Path| Value::String(v.display().to_string());
        let mut root = Table::new();
        root.insert("hostname".into(), s(SLUICE_HOSTNAME));
        root.insert("spool_dir".into(), p(&self.spool_dir));

        let mut listeners = Vec::new();
        for l in &self.listeners {
            let mut t = Table::new();
            t.insert("address".into(), s(&format!("127.0.0.1:{}", l.port)));
            t.insert("tls".into(), s(l.tls));
            if l.tls != "none" {
                let (cert, key, _) = b.tls.as_ref().expect("a TLS listener needs SluiceBuilder::pki()");
                t.insert("cert_file".into(), p(cert));
                t.insert("key_file".into(), p(key));
            }
            t.insert("allowed_networks".into(), Value::Array(l.allowed_networks.iter().map(|n| s(n)).collect()));
            if let Some(v) = l.auth {
                t.insert("auth".into(), Value::Boolean(v));
            }
            if let Some(v) = l.insecure_allow_plaintext_auth {
                t.insert("insecure_allow_plaintext_auth".into(), Value::Boolean(v));
            }
            for (key, v) in [
                ("max_message_size", l.max_message_size),
                ("max_recipients", l.max_recipients),
                ("max_connections", l.max_connections),
            ] {
                if let Some(v) = v {
                    t.insert(key.into(), Value::Integer(v as i64));
                }
            }
            for (key, v) in [("idle_timeout", &l.idle_timeout), ("data_timeout", &l.data_timeout)] {
                if let Some(v) = v {
                    t.insert(key.into(), s(v));
                }
            }
            for (key, v) in &l.extra {
                t.insert(key.clone(), v.clone());
            }
            listeners.push(Value::Table(t));
        }
        root.insert("listener".into(), Value::Array(listeners));

        if !b.users.is_empty() {
            let users = b
                .users
                .iter()
                .map(|(name, hash)| {
                    let mut t = Table::new();
                    t.insert("name".into(), s(name));
                    t.insert("password_hash".into(), s(hash));
                    Value::Table(t)
                })
                .collect();
            root.insert("user".into(), Value::Array(users));
        }

        let u = &self.upstream;
        let mut t = Table::new();
        t.insert("host".into(), s(&u.host));
        t.insert("port".into(), Value::Integer(u.port as i64));
        t.insert("tls".into(), s(u.tls));
        if let Some(ca) = &u.ca_file {
            t.insert("ca_file".into(), p(ca));
        }
        if let Some(user) = &u.username {
            t.insert("username".into(), s(user));
        }
        if let Some(password) = &u.password {
            if u.password_via_env {
                t.insert("password_env".into(), s(UPSTREAM_PASSWORD_ENV));
            } else {
                let file = self.dir.path().join("upstream-password.txt");
                fs::write(&file, format!("{password}\n")).unwrap();
                fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
                t.insert("password_file".into(), p(&file));
            }
        }
        if let Some(n) = u.connections {
            t.insert("connections".into(), Value::Integer(n as i64));
        }
        if let Some(v) = &u.connect_timeout {
            t.insert("connect_timeout".into(), s(v));
        }
        if let Some(v) = &u.command_timeout {
            t.insert("command_timeout".into(), s(v));
        }
        if let Some(v) = &u.idle_timeout {
            t.insert("idle_timeout".into(), s(v));
        }
        root.insert("upstream".into(), Value::Table(t));

        let mut r = Table::new();
        r.insert("initial_interval".into(), s(&b.retry.0));
        r.insert("max_interval".into(), s(&b.retry.1));
        r.insert("max_age".into(), s(&b.retry.2));
        root.insert("retry".into(), Value::Table(r));

        let mut text = toml::to_string(&root).expect("serialize config");
        for extra in &b.extra_toml {
            text.push('\n');
            text.push_str(extra);
            text.push('\n');
        }
        self.config_path = self.dir.path().join("sluice.toml");
        fs::write(&self.config_path, text).unwrap();
    }

    /// Spawns `sluice serve` and waits until every listener greets with 220.
    /// Err(log) when the process exits first.
    fn spawn_and_wait(&mut self) -> Result<(), String> {
        self.starts += 1;
        let log_path = self.log_path();
        let mut log = fs::OpenOptions::new().create(true).append(true).open(&log_path).unwrap();
        writeln!(log, "===== test harness: start #{} of sluice serve =====", self.starts).unwrap();
        let mut cmd = match self.builder.wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(sluice_bin());
                cmd
            }
            None => Command::new(sluice_bin()),
        };
        cmd.arg("serve").arg("--config").arg(&self.config_path);
        for (key, value) in &self.builder.env {
            cmd.env(key, value);
        }
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info,sluice=debug,smtp_wire=debug");
        }
        if let Some(password) = &self.upstream.password {
            cmd.env(UPSTREAM_PASSWORD_ENV, password);
        }
        cmd.stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
        let spawned = Instant::now();
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let end = spawned + DEADLINE.max(self.builder.start_deadline);
        for i in 0..self.listeners.len() {
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!(
                        "sluice serve exited ({status}) before it was ready.\n--- config ---\n{}\n--- log ---\n{}",
                        self.config_text(),
                        tail(&log_path, 80)
                    ));
                }
                if self.greets(i) && owns_listener(child.id(), self.listeners[i].port) {
                    break;
                }
                if Instant::now() >= end {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "sluice serve did not greet with 220 on 127.0.0.1:{} within {:?}.\n--- config ---\n{}\n--- log ---\n{}",
                        self.listeners[i].port,
                        DEADLINE.max(self.builder.start_deadline),
                        self.config_text(),
                        tail(&log_path, 80)
                    ));
                }
                sleep(Duration::from_millis(20));
            }
        }
        self.last_start = spawned.elapsed();
        self.child = Some(child);
        Ok(())
    }

    fn greets(&self, i: usize) -> bool {
        let l = &self.listeners[i];
        let attempt = || -> io::Result<bool> {
            let mut c = if l.tls == "implicit" {
                SmtpClient::try_connect_tls(l.port, self.client_tls())?
            } else {
                SmtpClient::try_connect(l.port)?
            };
            c.set_timeout(Duration::from_secs(5));
            if l.is_proxy() {
                // A load balancer's health check: the connection's own address.
                c.write_all(b"PROXY UNKNOWN\r\n")?;
            }
            let g = c.try_read_reply()?;
            let _ = c.write_all(b"QUIT\r\n");
            Ok(g.code == 220)
        };
        attempt().unwrap_or(false)
    }

    /// The process id of the running sluice.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("sluice is not running").id()
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            send_signal(c.id(), "KILL");
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (up to 30 s, then SIGKILL); the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("sluice is not running");
        send_signal(c.id(), "TERM");
        match wait_with_deadline(&mut c, DEADLINE) {
            Some(status) => status,
            None => {
                let _ = c.kill();
                let _ = c.wait();
                panic!("sluice did not exit within {DEADLINE:?} of SIGTERM\n{}", tail(&self.log_path(), 60));
            }
        }
    }

    /// Starts sluice again on the same configuration and spool (after `kill9` or `terminate`;
    /// a running process is stopped with SIGTERM first).
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.terminate();
        }
        if let Err(log) = self.spawn_and_wait() {
            panic!("sluice did not restart:\n{log}");
        }
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, Duration::from_secs(10));
        }
        if std::thread::panicking() {
            eprintln!(
                "--- sluice config ---\n{}\n--- sluice log ({}) ---\n{}",
                fs::read_to_string(&self.config_path).unwrap_or_default(),
                self.log_path().display(),
                tail(&self.log_path(), 150)
            );
        }
    }
}

/// Whether process `pid` owns a socket listening on `port` (from /proc; where there is no /proc, assumed).
/// A start is complete when *this* sluice greets: another server that took the port while sluice was
/// down (another test suite on the same machine picks free ports too) must not pass for it.
fn owns_listener(pid: u32, port: u16) -> bool {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return true;
    };
    let sockets: BTreeSet<String> = fds
        .filter_map(|e| e.ok())
        .filter_map(|e| fs::read_link(e.path()).ok())
        .filter_map(|l| Some(l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.to_string()))
        .collect();
    let mut readable = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        readable = true;
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let listening_on_port = f.len() > 9
                && f[3] == "0A"
                && f[1].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok()) == Some(port);
            if listening_on_port && sockets.contains(f[9]) {
                return true;
            }
        }
    }
    !readable
}

/// The environment variable carrying the upstream password when `password_via_env` is set.
pub const UPSTREAM_PASSWORD_ENV: &str = "SLUICE_TEST_UPSTREAM_PASSWORD";

// ---------------------------------------------------------------------------------------------
// Raw SMTP client
// ---------------------------------------------------------------------------------------------

enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
    Closed,
}

impl Stream {
    fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Plain(s) => Some(s),
            Stream::Tls(s) => Some(&s.sock),
            Stream::Closed => None,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
            Stream::Closed => Ok(0),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
            Stream::Closed => Err(io::ErrorKind::NotConnected.into()),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
            Stream::Closed => Ok(()),
        }
    }
}

/// An SMTP reply: the code and the text of each line (after "NNN-" / "NNN ").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    /// All lines' text joined with newlines.
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }
    /// The enhanced status code at the start of the first line ("5.7.1"), if any.
    pub fn enhanced(&self) -> Option<&str> {
        let first = self.lines.first()?.split_whitespace().next()?;
        let parts: Vec<&str> = first.split('.').collect();
        (parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())))
            .then_some(first)
    }
    /// EHLO: whether a keyword is advertised (case-insensitive, first word of a line).
    pub fn has_extension(&self, keyword: &str) -> bool {
        self.extension(keyword).is_some()
    }
    /// EHLO: the parameters of an advertised keyword.
    pub fn extension(&self, keyword: &str) -> Option<Vec<String>> {
        self.lines.iter().skip(1).find_map(|l| {
            let mut words = l.split([' ', '=']);
            let kw = words.next()?;
            kw.eq_ignore_ascii_case(keyword).then(|| words.map(|w| w.to_ascii_uppercase()).collect())
        })
    }
    /// Panics unless the reply has this code (and, if given, this enhanced code).
    #[track_caller]
    pub fn expect(&self, code: u16, enhanced: Option<&str>, context: &str) -> &Reply {
        assert_eq!(self.code, code, "{context}: expected {code}, got: {self}");
        if let Some(e) = enhanced {
            assert_eq!(self.enhanced(), Some(e), "{context}: expected enhanced status {e}, got: {self}");
        }
        self
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, l) in self.lines.iter().enumerate() {
            if i > 0 {
                f.write_str(" / ")?;
            }
            write!(f, "{} {}", self.code, l)?;
        }
        Ok(())
    }
}

/// A blocking SMTP client with byte-level control, for precise protocol tests.
pub struct SmtpClient {
    stream: Stream,
    buf: Vec<u8>,
    pub port: u16,
}

impl SmtpClient {
    pub fn try_connect(port: u16) -> io::Result<SmtpClient> {
        let tcp = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(5))?;
        tcp.set_read_timeout(Some(IO_TIMEOUT))?;
        tcp.set_write_timeout(Some(IO_TIMEOUT))?;
        tcp.set_nodelay(true)?;
        Ok(SmtpClient { stream: Stream::Plain(tcp), buf: Vec::new(), port })
    }

    /// Connects to 127.0.0.1:`port` from the local address `source` (any 127.0.0.0/8 address works
    /// on Linux's loopback), the greeting not read.
    pub fn try_connect_from(source: std::net::IpAddr, port: u16) -> io::Result<SmtpClient> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()?;
        let tcp = rt.block_on(async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind((source, 0).into())?;
            tokio::time::timeout(Duration::from_secs(5), socket.connect(([127, 0, 0, 1], port).into()))
                .await
                .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??
                .into_std()
        })?;
        tcp.set_nonblocking(false)?;
        tcp.set_read_timeout(Some(IO_TIMEOUT))?;
        tcp.set_write_timeout(Some(IO_TIMEOUT))?;
        tcp.set_nodelay(true)?;
        Ok(SmtpClient { stream: Stream::Plain(tcp), buf: Vec::new(), port })
    }

    /// [`SmtpClient::try_connect_from`], panicking on error.
    pub fn connect_from(source: std::net::IpAddr, port: u16) -> SmtpClient {
        Self::try_connect_from(source, port)
            .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port} from {source}: {e}"))
    }

    /// Connects to 127.0.0.1:`port` (the greeting is not read).
    pub fn connect(port: u16) -> SmtpClient {
        Self::try_connect(port).unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"))
    }

    pub fn try_connect_tls(port: u16, config: Arc<rustls::ClientConfig>) -> io::Result<SmtpClient> {
        let mut c = Self::try_connect(port)?;
        c.upgrade_tls(config)?;
        Ok(c)
    }

    /// Connects with implicit TLS (the greeting is not read).
    pub fn connect_tls(port: u16, config: Arc<rustls::ClientConfig>) -> SmtpClient {
        Self::try_connect_tls(port, config).unwrap_or_else(|e| panic!("TLS connect to 127.0.0.1:{port}: {e}"))
    }

    pub fn set_timeout(&mut self, t: Duration) {
        if let Some(tcp) = self.stream.tcp() {
            let _ = tcp.set_read_timeout(Some(t));
            let _ = tcp.set_write_timeout(Some(t));
        }
    }

    fn upgrade_tls(&mut self, config: Arc<rustls::ClientConfig>) -> io::Result<()> {
        assert!(
            self.buf.is_empty(),
            "the server sent data after its STARTTLS reply, before the TLS handshake: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        let tcp = match std::mem::replace(&mut self.stream, Stream::Closed) {
            Stream::Plain(tcp) => tcp,
            _ => panic!("TLS is already on (or the connection is closed)"),
        };
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap().to_owned();
        let conn = rustls::ClientConnection::new(config, name).map_err(io::Error::other)?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        self.stream = Stream::Tls(Box::new(tls));
        Ok(())
    }

    /// The TLS handshake on this plain connection, after the caller's own STARTTLS got its 220
    /// (for tests that send STARTTLS together with other bytes). Fails if the server sent anything
    /// after its 220.
    pub fn tls_handshake(&mut self, config: Arc<rustls::ClientConfig>) -> io::Result<()> {
        self.upgrade_tls(config)
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    /// Writes bytes as they are.
    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Writes bytes as they are; panics on error.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.write_all(bytes).unwrap_or_else(|e| panic!("write to sluice: {e}"));
    }

    /// One line, without its line ending; Err on EOF or timeout.
    pub fn read_line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=i).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            let mut chunk = [0u8; 8192];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed by the server (pending: {:?})", String::from_utf8_lossy(&self.buf)),
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// One (possibly multi-line) reply; Err on EOF, timeout or a malformed reply.
    pub fn try_read_reply(&mut self) -> io::Result<Reply> {
        let mut lines = Vec::new();
        loop {
            let raw = self.read_line()?;
            let line = String::from_utf8_lossy(&raw).into_owned();
            let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("malformed reply line {line:?}"));
            if line.len() < 3 || !line.as_bytes()[..3].iter().all(u8::is_ascii_digit) {
                return Err(bad());
            }
            let code: u16 = line[..3].parse().unwrap();
            let sep = line.as_bytes().get(3).copied();
            if !matches!(sep, None | Some(b' ') | Some(b'-')) {
                return Err(bad());
            }
            lines.push(line.get(4..).unwrap_or("").to_string());
            if sep != Some(b'-') {
                return Ok(Reply { code, lines });
            }
        }
    }

    /// One reply; panics on EOF or timeout.
    #[track_caller]
    pub fn read_reply(&mut self) -> Reply {
        match self.try_read_reply() {
            Ok(r) => r,
            Err(e) => panic!("reading a reply from 127.0.0.1:{}: {e}", self.port),
        }
    }

    /// Sends `line` + CRLF and reads the reply.
    #[track_caller]
    pub fn cmd(&mut self, line: &str) -> Reply {
        self.send_raw(format!("{line}\r\n").as_bytes());
        self.read_reply()
    }

    #[track_caller]
    pub fn ehlo(&mut self) -> Reply {
        let r = self.cmd("EHLO client.test");
        r.expect(250, None, "EHLO");
        r
    }

    /// STARTTLS (expects 220) and the TLS handshake; then EHLO again is up to the caller.
    #[track_caller]
    pub fn starttls(&mut self, config: Arc<rustls::ClientConfig>) {
        self.cmd("STARTTLS").expect(220, None, "STARTTLS");
        self.upgrade_tls(config).unwrap_or_else(|e| panic!("TLS handshake after STARTTLS: {e}"));
    }

    /// AUTH PLAIN with an initial response; returns the final reply.
    #[track_caller]
    pub fn auth_plain(&mut self, user: &str, password: &str) -> Reply {
        let token = B64.encode(format!("\0{user}\0{password}"));
        self.cmd(&format!("AUTH PLAIN {token}"))
    }

    /// AUTH LOGIN, answering the two 334 challenges; returns the final reply.
    #[track_caller]
    pub fn auth_login(&mut self, user: &str, password: &str) -> Reply {
        let r = self.cmd("AUTH LOGIN");
        if r.code != 334 {
            return r;
        }
        let r = self.cmd(&B64.encode(user));
        if r.code != 334 {
            return r;
        }
        self.cmd(&B64.encode(password))
    }

    /// Sends `content` as DATA text (dot-stuffed, CRLF-terminated, then "." line) and reads
    /// the final reply. DATA itself must already have got 354.
    #[track_caller]
    pub fn send_content(&mut self, content: &[u8]) -> Reply {
        self.send_raw(&dot_stuff(content));
        self.read_reply()
    }

    /// MAIL, RCPT..., DATA, content; asserts 250/250/354 on the way, returns the final reply.
    #[track_caller]
    pub fn send_mail(&mut self, from: &str, to: &[&str], content: &[u8]) -> Reply {
        self.cmd(&format!("MAIL FROM:<{from}>")).expect(250, None, "MAIL FROM");
        for t in to {
            self.cmd(&format!("RCPT TO:<{t}>")).expect(250, None, &format!("RCPT TO:<{t}>"));
        }
        self.cmd("DATA").expect(354, None, "DATA");
        self.send_content(content)
    }

    /// QUIT, expecting 221.
    #[track_caller]
    pub fn quit(mut self) {
        self.cmd("QUIT").expect(221, None, "QUIT");
        if let Some(tcp) = self.stream.tcp() {
            let _ = tcp.shutdown(Shutdown::Both);
        }
    }
}

/// SMTP DATA transparency: CRLF line endings are assumed; a leading "." is doubled; the text
/// is terminated with CRLF if needed, then ".\r\n".
pub fn dot_stuff(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 64);
    let mut at_line_start = true;
    for &b in content {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// The queue id from "250 2.0.0 Ok: queued as <ID>", panicking on any other reply.
#[track_caller]
pub fn queued_id(reply: &Reply) -> String {
    assert_eq!(reply.code, 250, "end of DATA: {reply}");
    let text = reply.text();
    let id =
        text.split("queued as ").nth(1).unwrap_or_else(|| panic!("end of DATA reply lacks 'queued as <ID>': {reply}"));
    assert!(text.starts_with("2.0.0 Ok: queued as "), "end of DATA reply: {reply}");
    id.trim().to_string()
}

// ---------------------------------------------------------------------------------------------
// Client peers: tests/peers/send.py (smtplib) and swaks
// ---------------------------------------------------------------------------------------------

/// Runs `tests/peers/send.py` with these arguments (the message file among them).
pub fn send_py(args: &[&str]) -> CmdOutput {
    let mut cmd = Command::new(python());
    cmd.arg(peer_script("send.py")).args(args);
    run_command(&mut cmd, None, Duration::from_secs(120))
}

/// Runs swaks with these arguments.
pub fn swaks(args: &[&str]) -> CmdOutput {
    let bin = require_tool("swaks", &[], "swaks (and libnet-ssleay-perl for its TLS)");
    let mut cmd = Command::new(bin);
    cmd.args(args);
    run_command(&mut cmd, None, Duration::from_secs(120))
}

/// Writes bytes to a fresh file in `dir`.
pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, bytes).unwrap();
    p
}

/// A temporary directory for a test's own files.
pub fn tempdir() -> TempDir {
    tempfile::Builder::new().prefix("sluice-case-").tempdir().expect("tempdir")
}
