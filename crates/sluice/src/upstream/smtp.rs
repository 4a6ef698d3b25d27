//! An SMTP client for smarthosts: one [`SmtpConnection`] carries many messages (RSET between), pipelines
//! MAIL/RCPT/DATA when the server offers PIPELINING, and reports a verdict per recipient.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use smtp_wire::{Reply, parse_reply};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::{Envelope, Outcome, TransportError};
use crate::config::{UpstreamConfig, UpstreamTls};

/// No sane reply (even a long EHLO list) comes near this; a server that sends more is broken or hostile.
const MAX_REPLY_BYTES: usize = 64 * 1024;

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// What the server said it supports in its EHLO reply.
#[derive(Debug, Default, Clone)]
pub struct Capabilities {
    pub pipelining: bool,
    pub starttls: bool,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    /// SIZE limit; `Some(0)` means SIZE is supported without a stated limit.
    pub size: Option<u64>,
    pub auth: Vec<String>,
}

impl Capabilities {
    fn from_ehlo(reply: &Reply) -> Self {
        let mut caps = Capabilities::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => caps.pipelining = true,
                "STARTTLS" => caps.starttls = true,
                "8BITMIME" => caps.eight_bit_mime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "SIZE" => caps.size = Some(words.next().and_then(|w| w.parse().ok()).unwrap_or(0)),
                "AUTH" => caps.auth.extend(words.map(|w| w.to_ascii_uppercase())),
                _ => {}
            }
        }
        caps
    }
}

/// A record of one session, for `sluice probe`: each line sent (`C: `) and received (`S: `), with AUTH
/// payloads and message content replaced by a placeholder, and the TLS session's parameters. Shared, so
/// that it can be read after a connection attempt failed.
#[derive(Debug, Default)]
pub struct Transcript {
    pub lines: Vec<String>,
    pub tls: Option<TlsInfo>,
}

/// A transcript a connection writes to while the caller keeps a handle on it.
pub type SharedTranscript = Arc<Mutex<Transcript>>;

/// What was negotiated in a TLS handshake.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    /// `TLSv1_3`, `TLSv1_2`.
    pub version: String,
    /// `TLS13_AES_256_GCM_SHA384`…
    pub cipher_suite: String,
    /// The server's certificates (DER), leaf first.
    pub chain: Vec<Vec<u8>>,
}

pub struct SmtpConnection {
    stream: Box<dyn Stream>,
    buf: Vec<u8>,
    caps: Capabilities,
    command_timeout: Duration,
    transcript: Option<SharedTranscript>,
    /// Messages handed over on this connection (for the per-connection limit and for RSET between).
    pub transactions: usize,
}

/// Per-recipient verdicts of one transaction, in the envelope's recipient order.
pub type Verdicts = Vec<Outcome>;

impl SmtpConnection {
    /// Connects, reads the greeting, says EHLO, does TLS as configured and authenticates with the
    /// configured user and password, if any.
    pub async fn connect(config: &UpstreamConfig) -> Result<SmtpConnection, TransportError> {
        let auth = match &config.credentials {
            Some((user, password)) => Auth::Password { user, password: password.expose() },
            None => Auth::None,
        };
        Self::connect_with(config, auth).await
    }

    /// Like [`connect`](Self::connect), with the authentication given.
    pub async fn connect_with(config: &UpstreamConfig, auth: Auth<'_>) -> Result<SmtpConnection, TransportError> {
        Self::connect_traced(config, auth, None).await
    }

    /// Like [`connect_with`](Self::connect_with), recording the conversation in `transcript` (which the
    /// connection keeps writing to as long as it lives).
    pub async fn connect_traced(
        config: &UpstreamConfig,
        auth: Auth<'_>,
        transcript: Option<SharedTranscript>,
    ) -> Result<SmtpConnection, TransportError> {
        let address = (config.host.as_str(), config.port);
        let tcp = match timeout(config.connect_timeout, TcpStream::connect(address)).await {
            Err(_) => {
                return Err(TransportError::Connect(format!("timed out after {:?}", config.connect_timeout)));
            }
            Ok(Err(e)) => return Err(TransportError::Connect(e.to_string())),
            Ok(Ok(tcp)) => tcp,
        };
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Stream> = match config.tls {
            UpstreamTls::Implicit => Box::new(tls_handshake(config, tcp, transcript.as_ref()).await?),
            UpstreamTls::Starttls | UpstreamTls::None => Box::new(tcp),
        };
        let mut conn = SmtpConnection {
            stream,
            buf: Vec::with_capacity(4096),
            caps: Capabilities::default(),
            command_timeout: config.command_timeout,
            transcript: transcript.clone(),
            transactions: 0,
        };
        let greeting = conn.read_reply("the greeting").await?;
        if !greeting.is_positive() {
            return Err(TransportError::Session(greeting));
        }
        conn.ehlo(&config.helo_name).await?;

        if config.tls == UpstreamTls::Starttls {
            if !conn.caps.starttls {
                return Err(TransportError::Tls(
                    "the upstream does not offer STARTTLS, and TLS is required (upstream.tls)".into(),
                ));
            }
            let reply = conn.command(b"STARTTLS\r\n", "STARTTLS").await?;
            if !reply.is_positive() {
                return Err(TransportError::Session(reply));
            }
            // Anything the server sent before the handshake is not trustworthy; drop it (RFC 3207 §4.2).
            conn.buf.clear();
            let SmtpConnection { stream, .. } = conn;
            let tls = tls_handshake(config, stream, transcript.as_ref()).await?;
            conn = SmtpConnection {
                stream: Box::new(tls),
                buf: Vec::with_capacity(4096),
                caps: Capabilities::default(),
                command_timeout: config.command_timeout,
                transcript,
                transactions: 0,
            };
            conn.ehlo(&config.helo_name).await?;
        }

        match auth {
            Auth::None => {}
            Auth::Password { user, password } => conn.authenticate(user, password).await?,
            Auth::XOAuth2 { user, token } => conn.authenticate_xoauth2(user, token).await?,
        }
        Ok(conn)
    }

    /// SASL XOAUTH2 with the initial response on the AUTH line (Microsoft accepts it there, and it saves
    /// a round trip): `base64("user=" mailbox ^A "auth=Bearer " token ^A ^A)`. The line is long (a token
    /// is 1-3 KB); Exchange takes such lines. The token is never logged: errors carry only the reply.
    async fn authenticate_xoauth2(&mut self, user: &str, token: &str) -> Result<(), TransportError> {
        use base64::Engine as _;
        if !self.caps.auth.iter().any(|a| a == "XOAUTH2") {
            return Err(TransportError::Protocol(format!(
                "the upstream offers no AUTH XOAUTH2 (offers: {})",
                if self.caps.auth.is_empty() { "none".to_owned() } else { self.caps.auth.join(" ") }
            )));
        }
        let initial = base64::engine::general_purpose::STANDARD.encode(xoauth2_response(user, token));
        let line = format!("AUTH XOAUTH2 {initial}\r\n");
        let mut reply = self.command_shown(line.as_bytes(), "AUTH XOAUTH2 <token redacted>", "AUTH").await?;
        if reply.code == 334 {
            // RFC 7628 style failure: the server sent an error challenge; an empty response ends it with
            // the final (negative) reply.
            reply = self.command(b"\r\n", "AUTH").await?;
        }
        if reply.is_positive() { Ok(()) } else { Err(TransportError::Session(reply)) }
    }

    async fn ehlo(&mut self, helo_name: &str) -> Result<(), TransportError> {
        let reply = self.command(format!("EHLO {helo_name}\r\n").as_bytes(), "EHLO").await?;
        if reply.is_positive() {
            self.caps = Capabilities::from_ehlo(&reply);
            return Ok(());
        }
        if reply.code == 421 {
            // Closing (e.g. Microsoft's `421 4.7.66` for legacy TLS): a refusal, not a server without ESMTP.
            return Err(TransportError::Session(reply));
        }
        // An old server without ESMTP: fall back to HELO, with no extensions.
        let reply = self.command(format!("HELO {helo_name}\r\n").as_bytes(), "HELO").await?;
        if !reply.is_positive() {
            return Err(TransportError::Session(reply));
        }
        self.caps = Capabilities::default();
        Ok(())
    }

    async fn authenticate(&mut self, user: &str, password: &str) -> Result<(), TransportError> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let offers = |m: &str| self.caps.auth.iter().any(|a| a == m);
        let reply = if offers("PLAIN") {
            let token = b64.encode(format!("\0{user}\0{password}"));
            let line = format!("AUTH PLAIN {token}\r\n");
            self.command_shown(line.as_bytes(), "AUTH PLAIN <credentials redacted>", "AUTH").await?
        } else if offers("LOGIN") {
            let reply = self.command(b"AUTH LOGIN\r\n", "AUTH").await?;
            if reply.code != 334 {
                return Err(TransportError::Session(reply));
            }
            let line = format!("{}\r\n", b64.encode(user));
            let reply = self.command_shown(line.as_bytes(), "<user name redacted>", "AUTH").await?;
            if reply.code != 334 {
                return Err(TransportError::Session(reply));
            }
            let line = format!("{}\r\n", b64.encode(password));
            self.command_shown(line.as_bytes(), "<password redacted>", "AUTH").await?
        } else {
            return Err(TransportError::Protocol(format!(
                "credentials are configured but the upstream offers no AUTH PLAIN or LOGIN (offers: {})",
                if self.caps.auth.is_empty() { "none".to_owned() } else { self.caps.auth.join(" ") }
            )));
        };
        if reply.is_positive() { Ok(()) } else { Err(TransportError::Session(reply)) }
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// Sends one message. Returns a verdict per recipient, or an error when the connection failed before
    /// the server gave one (then every recipient is still undecided).
    pub async fn send(&mut self, envelope: &Envelope<'_>, body: &[u8]) -> Result<Verdicts, TransportError> {
        let n = envelope.recipients.len();
        if envelope.smtputf8 && !self.caps.smtputf8 {
            let reply =
                Reply::with_code(553, 5, 6, 7, "the upstream does not support SMTPUTF8, needed for this envelope");
            return Ok(vec![Outcome::Reply(reply); n]);
        }
        if let Some(limit) = self.caps.size
            && limit > 0
            && body.len() as u64 > limit
        {
            let reply =
                Reply::with_code(552, 5, 3, 4, format!("message size exceeds the upstream's limit of {limit} bytes"));
            return Ok(vec![Outcome::Reply(reply); n]);
        }

        let mut mail = format!("MAIL FROM:<{}>", envelope.sender);
        if self.caps.size.is_some() {
            mail.push_str(&format!(" SIZE={}", body.len()));
        }
        if envelope.eight_bit && self.caps.eight_bit_mime {
            mail.push_str(" BODY=8BITMIME");
        }
        if envelope.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        mail.push_str("\r\n");

        let reset_first = self.transactions > 0;
        self.transactions += 1;
        let mut commands = Vec::with_capacity(64 + 40 * n);
        if reset_first {
            commands.extend_from_slice(b"RSET\r\n");
        }
        commands.extend_from_slice(mail.as_bytes());
        let pipelined = self.caps.pipelining;

        let mut verdicts: Vec<Option<Outcome>> = vec![None; n];
        if pipelined {
            for rcpt in &envelope.recipients {
                commands.extend_from_slice(format!("RCPT TO:<{rcpt}>\r\n").as_bytes());
            }
            commands.extend_from_slice(b"DATA\r\n");
            self.write_opening(&commands, reset_first).await?;
            if reset_first {
                self.expect_reset().await?;
            }
            let mail_reply = self.read_reply("MAIL FROM").await?;
            let mut accepted = 0;
            for verdict in verdicts.iter_mut() {
                let reply = self.read_reply("RCPT TO").await?;
                if reply.is_positive() {
                    accepted += 1;
                } else {
                    *verdict = Some(Outcome::Reply(reply));
                }
            }
            let data_reply = self.read_reply("DATA").await?;
            if !mail_reply.is_positive() {
                // The RCPT and DATA replies only echo the MAIL failure; the MAIL reply is the verdict.
                if data_reply.code == 354 {
                    self.write(b".\r\n").await?;
                    self.read_reply("end of data").await?;
                }
                return Ok(vec![Outcome::Reply(mail_reply); n]);
            }
            if data_reply.code != 354 {
                return Ok(fill(verdicts, Outcome::Reply(data_reply)));
            }
            if accepted == 0 {
                // A server that says 354 with no recipient accepted: end the empty transaction.
                self.write(b".\r\n").await?;
                self.read_reply("end of data").await?;
                return Ok(fill(verdicts, Outcome::Reply(data_reply)));
            }
        } else {
            self.write_opening(&commands, reset_first).await?;
            if reset_first {
                self.expect_reset().await?;
            }
            let mail_reply = self.read_reply("MAIL FROM").await?;
            if !mail_reply.is_positive() {
                return Ok(vec![Outcome::Reply(mail_reply); n]);
            }
            let mut accepted = 0;
            for (rcpt, verdict) in envelope.recipients.iter().zip(verdicts.iter_mut()) {
                let reply = self.command(format!("RCPT TO:<{rcpt}>\r\n").as_bytes(), "RCPT TO").await?;
                if reply.is_positive() {
                    accepted += 1;
                } else {
                    *verdict = Some(Outcome::Reply(reply));
                }
            }
            if accepted == 0 {
                return Ok(verdicts.into_iter().map(|v| v.expect("every recipient was refused")).collect());
            }
            let data_reply = self.command(b"DATA\r\n", "DATA").await?;
            if data_reply.code != 354 {
                return Ok(fill(verdicts, Outcome::Reply(data_reply)));
            }
        }

        let mut payload = Vec::with_capacity(body.len() + body.len() / 64 + 8);
        smtp_wire::dot_stuff(body, &mut payload);
        self.record_shown(&format!("<message content: {} bytes, then .>", body.len()));
        self.write_unrecorded(&payload).await?;
        let final_reply = self.read_reply("end of data").await?;
        Ok(fill(verdicts, Outcome::Reply(final_reply)))
    }

    /// Writes the first commands of a transaction. On a reused connection a failure here means the server
    /// went away while the connection sat idle: nothing of this message reached it.
    async fn write_opening(&mut self, commands: &[u8], reused: bool) -> Result<(), TransportError> {
        match self.write(commands).await {
            Err(e) if reused => Err(TransportError::Stale(e.to_string())),
            other => other,
        }
    }

    async fn expect_reset(&mut self) -> Result<(), TransportError> {
        match self.read_reply("RSET").await {
            Ok(reply) if reply.is_positive() => Ok(()),
            Ok(reply) => Err(TransportError::Stale(reply.to_string())),
            Err(e) => Err(TransportError::Stale(e.to_string())),
        }
    }

    /// Says QUIT and closes, without caring much whether the server answers.
    pub async fn quit(mut self) {
        if self.write(b"QUIT\r\n").await.is_ok() {
            let _ = timeout(Duration::from_secs(5), self.read_reply("QUIT")).await;
        }
        let _ = self.stream.shutdown().await;
    }

    async fn command(&mut self, line: &[u8], what: &'static str) -> Result<Reply, TransportError> {
        self.write(line).await?;
        self.read_reply(what).await
    }

    /// A command whose line is a secret: the transcript shows `shown` instead.
    async fn command_shown(&mut self, line: &[u8], shown: &str, what: &'static str) -> Result<Reply, TransportError> {
        self.record_shown(shown);
        self.write_unrecorded(line).await?;
        self.read_reply(what).await
    }

    fn record(&self, prefix: &str, bytes: &[u8]) {
        if let Some(t) = &self.transcript {
            let text = String::from_utf8_lossy(bytes);
            let mut t = t.lock().expect("transcript lock");
            for line in text.split("\r\n").filter(|l| !l.is_empty()) {
                t.lines.push(format!("{prefix}{line}"));
            }
        }
    }

    fn record_shown(&self, shown: &str) {
        self.record("C: ", shown.as_bytes());
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), TransportError> {
        self.record("C: ", bytes);
        self.write_unrecorded(bytes).await
    }

    async fn write_unrecorded(&mut self, bytes: &[u8]) -> Result<(), TransportError> {
        match timeout(self.command_timeout, async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        })
        .await
        {
            Err(_) => Err(TransportError::Timeout("a write")),
            Ok(result) => result.map_err(TransportError::from),
        }
    }

    async fn read_reply(&mut self, what: &'static str) -> Result<Reply, TransportError> {
        let deadline = tokio::time::Instant::now() + self.command_timeout;
        loop {
            match parse_reply(&self.buf) {
                Ok(Some((reply, consumed))) => {
                    self.record("S: ", &self.buf[..consumed]);
                    self.buf.drain(..consumed);
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(TransportError::Protocol(format!("bad reply to {what}: {e}")));
                }
            }
            let mut chunk = [0u8; 4096];
            let n = match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Err(TransportError::Timeout(what)),
                Ok(result) => result?,
            };
            if n == 0 {
                return Err(TransportError::Closed);
            }
            if self.buf.len() + n > MAX_REPLY_BYTES {
                return Err(TransportError::Protocol(format!("reply to {what} exceeds {MAX_REPLY_BYTES} bytes")));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// How a connection authenticates.
#[derive(Clone, Copy)]
pub enum Auth<'a> {
    None,
    /// AUTH PLAIN or LOGIN, whichever the server offers.
    Password {
        user: &'a str,
        password: &'a str,
    },
    /// AUTH XOAUTH2 with an OAuth 2.0 access token.
    XOAuth2 {
        user: &'a str,
        token: &'a str,
    },
}

/// The XOAUTH2 initial client response, before base64.
pub fn xoauth2_response(user: &str, token: &str) -> String {
    format!("user={user}\x01auth=Bearer {token}\x01\x01")
}

fn fill(verdicts: Vec<Option<Outcome>>, rest: Outcome) -> Verdicts {
    verdicts.into_iter().map(|v| v.unwrap_or_else(|| rest.clone())).collect()
}

async fn tls_handshake<S: Stream>(
    config: &UpstreamConfig,
    stream: S,
    transcript: Option<&SharedTranscript>,
) -> Result<tokio_rustls::client::TlsStream<S>, TransportError> {
    let connector = tokio_rustls::TlsConnector::from(config.tls_config.clone());
    match timeout(config.connect_timeout, connector.connect(config.server_name.clone(), stream)).await {
        Err(_) => Err(TransportError::Tls("handshake timed out".into())),
        Ok(Err(e)) => Err(TransportError::Tls(e.to_string())),
        Ok(Ok(stream)) => {
            if let Some(t) = transcript {
                t.lock().expect("transcript lock").tls = Some(tls_info(stream.get_ref().1));
            }
            Ok(stream)
        }
    }
}

/// The parameters of an established TLS session.
pub fn tls_info(conn: &rustls::CommonState) -> TlsInfo {
    TlsInfo {
        version: conn.protocol_version().map_or_else(|| "unknown".into(), |v| format!("{v:?}")),
        cipher_suite: conn.negotiated_cipher_suite().map_or_else(|| "unknown".into(), |s| format!("{:?}", s.suite())),
        chain: conn.peer_certificates().unwrap_or_default().iter().map(|c| c.as_ref().to_vec()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    #[test]
    fn xoauth2_initial_response_is_microsofts_format() {
        let raw = xoauth2_response("relay@contoso.com", "tok");
        assert_eq!(raw, "user=relay@contoso.com\u{1}auth=Bearer tok\u{1}\u{1}");
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        assert_eq!(b64, "dXNlcj1yZWxheUBjb250b3NvLmNvbQFhdXRoPUJlYXJlciB0b2sBAQ==");
    }
}
