//! One SMTP conversation with a client, generic over its byte stream so it runs the same on TCP, on TLS,
//! and in memory in tests.
//!
//! The session owns the I/O loop: it frames command lines, parses them with `smtp_wire`, hands each to its
//! stage (`ehlo.rs`, `auth.rs`, `mail.rs`, `data.rs`) and buffers replies. Replies are flushed only when
//! no further complete command is waiting, which is what makes client PIPELINING cheap (RFC 2920 §3.1).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use smtp_wire::{Address, Command, Framed, LineFramer, MailParams, Reply};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, warn};

use super::ListenerContext;
use crate::metrics::Rejection;
use crate::policy::Identity;

/// RFC 5321 §4.5.3.1.4: a command line is at most 512 octets including CRLF.
pub const MAX_COMMAND_LINE: usize = 512;
/// RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets including CRLF.
pub const MAX_TEXT_LINE: usize = 1000;
/// After this many rejected commands the client is more likely a bot or a broken script than a device
/// with a typo; hang up rather than keep feeding it replies.
pub const MAX_ERRORS: u32 = 20;
/// Read sizes: between commands and while receiving message content.
pub(super) const COMMAND_READ: usize = 2 * 1024;
pub(super) const DATA_READ: usize = 64 * 1024;

/// TLS facts for the Received header and logs.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    pub version: String,
    pub cipher: String,
}

/// An open mail transaction: MAIL given, maybe some RCPTs.
#[derive(Debug)]
pub struct Transaction {
    /// Who the client relays as, decided at MAIL; `None`: a stranger, refused at RCPT.
    pub identity: Option<Identity>,
    pub sender: Option<Address>,
    pub params: MailParams,
    pub recipients: Vec<Address>,
}

/// Everything about the session that survives a STARTTLS upgrade of the stream (RFC 3207 §4.2 says what
/// must be forgotten: see [`SessionState::after_tls`]).
pub struct SessionState {
    pub ctx: Arc<ListenerContext>,
    pub peer: SocketAddr,
    pub helo: Option<String>,
    pub esmtp: bool,
    pub tls: Option<TlsInfo>,
    pub auth_user: Option<String>,
    /// The identity a verified client certificate maps to.
    pub cert_identity: Option<Identity>,
    pub tx: Option<Transaction>,
    pub greeted: bool,
    pub errors: u32,
    /// Messages accepted in this session, for the session log line.
    pub accepted: u32,
    /// Recipients refused by relay policy, for the session log line.
    pub relay_denied: u32,
}

impl SessionState {
    pub fn new(ctx: Arc<ListenerContext>, peer: SocketAddr, tls: Option<TlsInfo>) -> Self {
        SessionState {
            ctx,
            peer,
            helo: None,
            esmtp: false,
            tls,
            auth_user: None,
            cert_identity: None,
            tx: None,
            greeted: false,
            errors: 0,
            accepted: 0,
            relay_denied: 0,
        }
    }

    /// The state to continue with once TLS is up: the client must say EHLO again, and nothing it said
    /// before the handshake (name, transaction) may carry over.
    pub fn after_tls(mut self, tls: TlsInfo, cert_identity: Option<Identity>) -> Self {
        self.helo = None;
        self.esmtp = false;
        self.tx = None;
        self.auth_user = None;
        self.tls = Some(tls);
        self.cert_identity = cert_identity;
        self
    }
}

/// How a session ended.
pub enum Ended<S> {
    /// The conversation is over (QUIT, error, timeout, shutdown, or the client left).
    Closed(SessionState, &'static str),
    /// The client asked for STARTTLS and got 220: the caller does the handshake and runs a new session
    /// on the TLS stream. Bytes the client sent after STARTTLS are dropped with the old buffer.
    StartTls(S, SessionState),
}

/// What the dispatcher wants next.
pub(super) enum Flow {
    Continue,
    Close(&'static str),
    StartTls,
}

pub struct Session<S> {
    pub(super) stream: S,
    pub(super) state: SessionState,
    /// Bytes read but not yet consumed start at `rpos`.
    pub(super) rbuf: Vec<u8>,
    pub(super) rpos: usize,
    pub(super) wbuf: Vec<u8>,
    framer: LineFramer,
}

/// The result of waiting for input.
pub(super) enum Input {
    Data,
    Eof,
    Timeout,
    Shutdown,
    Error,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub fn new(stream: S, state: SessionState) -> Self {
        Session {
            stream,
            state,
            rbuf: Vec::new(),
            rpos: 0,
            wbuf: Vec::with_capacity(512),
            framer: LineFramer::new(MAX_COMMAND_LINE),
        }
    }

    pub async fn run(mut self) -> Ended<S> {
        if !self.state.greeted {
            self.state.greeted = true;
            let delay = self.state.ctx.config.greeting_delay;
            // A client that talks before the greeting is a bot that does not wait for replies.
            if !delay.is_zero() && matches!(self.fill(delay, true, COMMAND_READ).await, Input::Data) {
                warn!(client = %self.state.peer, "client talked before the greeting");
                self.state.ctx.shared.metrics.rejected(Rejection::AbuseLimit);
                self.reply(Reply::with_code(
                    554,
                    5,
                    5,
                    0,
                    "Error: SMTP protocol synchronization (talked before the greeting)",
                ));
                return self.close("talked before the greeting").await;
            }
            let greeting = format!("{} ESMTP sluice", self.state.ctx.shared.hostname);
            self.reply(Reply::new(220, None, greeting));
        }
        let mut line_started: Option<Instant> = None;
        loop {
            let parsed = match self.framer.poll(&self.rbuf[self.rpos..]) {
                Framed::Line { len, consumed } => {
                    line_started = None;
                    let command = smtp_wire::parse_command(&self.rbuf[self.rpos..self.rpos + len]);
                    self.rpos += consumed;
                    if self.pipelined_too_early(&command) {
                        warn!(client = %self.state.peer, "pipelined commands without PIPELINING");
                        self.state.ctx.shared.metrics.rejected(Rejection::AbuseLimit);
                        self.reply(Reply::with_code(
                            554,
                            5,
                            5,
                            0,
                            "Error: SMTP protocol synchronization (improper pipelining)",
                        ));
                        return self.close("improper pipelining").await;
                    }
                    command.map_err(|e| e.reply())
                }
                Framed::TooLong { consumed } => {
                    self.rpos += consumed;
                    Err(Reply::with_code(500, 5, 5, 2, "Line too long"))
                }
                Framed::NeedMore { consumed } => {
                    self.rpos += consumed;
                    let config = &self.state.ctx.config;
                    // Waiting for a command to start is bounded by idle_timeout; a command that has started
                    // must be complete within command_timeout, however slowly its bytes trickle in.
                    let limit = if self.rpos < self.rbuf.len() || self.framer.is_discarding() {
                        let started = *line_started.get_or_insert_with(Instant::now);
                        config.command_timeout.saturating_sub(started.elapsed()).min(config.idle_timeout)
                    } else {
                        config.idle_timeout
                    };
                    match self.fill(limit, true, COMMAND_READ).await {
                        Input::Data => continue,
                        Input::Eof | Input::Error => {
                            return self.close("client disconnected").await;
                        }
                        Input::Timeout => {
                            let text = format!("{} Error: timeout exceeded", self.state.ctx.shared.hostname);
                            self.reply(Reply::with_code(421, 4, 4, 2, text));
                            return self.close("idle timeout").await;
                        }
                        Input::Shutdown => {
                            let text =
                                format!("{} Service shutting down, try again later", self.state.ctx.shared.hostname);
                            self.reply(Reply::with_code(421, 4, 3, 2, text));
                            return self.close("server shutdown").await;
                        }
                    }
                }
            };
            let flow = match parsed {
                Ok(command) => self.dispatch(command).await,
                Err(reply) => {
                    self.reply(reply);
                    self.count_error()
                }
            };
            match flow {
                Flow::Continue => {}
                Flow::Close(why) => return self.close(why).await,
                Flow::StartTls => {
                    if self.flush().await.is_err() {
                        return self.close("client disconnected").await;
                    }
                    return Ended::StartTls(self.stream, self.state);
                }
            }
        }
    }

    async fn dispatch(&mut self, command: Command) -> Flow {
        let hostname = &self.state.ctx.shared.hostname;
        match command {
            Command::Ehlo(name) => {
                let reply = self.state.ehlo(name, true);
                self.reply(reply);
            }
            Command::Helo(name) => {
                let reply = self.state.ehlo(name, false);
                self.reply(reply);
            }
            Command::Mail { from, params } => {
                let reply = self.state.mail(from, params);
                return self.reply_counting(reply);
            }
            Command::Rcpt { to, params } => {
                let reply = self.state.rcpt(to, params);
                return self.reply_counting(reply);
            }
            Command::Data => return self.data().await,
            Command::Auth { mechanism, initial_response } => {
                return self.auth(mechanism, initial_response).await;
            }
            Command::StartTls => return self.starttls(),
            Command::Rset => {
                self.state.tx = None;
                self.reply(Reply::with_code(250, 2, 0, 0, "Ok"));
            }
            Command::Noop => self.reply(Reply::with_code(250, 2, 0, 0, "Ok")),
            Command::Quit => {
                let text = format!("{hostname} closing connection");
                self.reply(Reply::with_code(221, 2, 0, 0, text));
                return Flow::Close("quit");
            }
            Command::Vrfy(_) => {
                // RFC 5321 §3.5.3: we cannot verify a mailbox we do not host, but we will try to deliver.
                self.reply(Reply::with_code(
                    252,
                    2,
                    5,
                    0,
                    "Cannot VRFY user, but will accept message and attempt delivery",
                ));
            }
            Command::Expn(_) => {
                self.reply(Reply::with_code(502, 5, 5, 1, "EXPN not available"));
                return self.count_error();
            }
            Command::Help(_) => {
                self.reply(Reply::with_code(214, 2, 0, 0, "sluice relay: see https://www.rfc-editor.org/rfc/rfc5321"));
            }
            Command::Bdat { .. } => {
                self.reply(Reply::with_code(502, 5, 5, 1, "BDAT not implemented (CHUNKING is not offered)"));
                return self.count_error();
            }
        }
        Flow::Continue
    }

    /// RFC 2920: a client may send several commands at once only after we offered PIPELINING in our EHLO
    /// reply, and EHLO itself must end a group. More input already waiting behind a command sent
    /// before that point means the client did not wait for our replies, which is how spam bots talk.
    fn pipelined_too_early(&self, command: &Result<Command, smtp_wire::CommandError>) -> bool {
        let config = &self.state.ctx.config;
        let waiting = self.rpos < self.rbuf.len();
        let pipelining_offered = self.state.esmtp && self.state.helo.is_some();
        // STARTTLS is not here: what follows it is dropped with the plaintext buffer (RFC 3207 §4.2).
        let ends_group = matches!(command, Ok(Command::Ehlo(_) | Command::Helo(_)));
        config.reject_unauth_pipelining
            && waiting
            && self.state.auth_user.is_none()
            && (!pipelining_offered || ends_group)
            && !matches!(command, Ok(Command::Quit))
    }

    fn starttls(&mut self) -> Flow {
        let offered = self.state.ctx.config.tls == crate::config::ListenerTls::Starttls;
        if self.state.tls.is_some() {
            self.reply(Reply::with_code(503, 5, 5, 1, "Error: TLS already active"));
            return self.count_error();
        }
        if !offered || self.state.ctx.config.tls_config.is_none() {
            self.reply(Reply::with_code(454, 4, 7, 0, "TLS not available"));
            return self.count_error();
        }
        self.reply(Reply::with_code(220, 2, 0, 0, "Ready to start TLS"));
        Flow::StartTls
    }

    /// Queues a reply; a 4xx/5xx counts towards the error limit.
    pub(super) fn reply_counting(&mut self, reply: Reply) -> Flow {
        let failed = reply.code >= 400;
        self.reply(reply);
        if failed { self.count_error() } else { Flow::Continue }
    }

    pub(super) fn count_error(&mut self) -> Flow {
        self.state.errors += 1;
        if self.state.errors >= MAX_ERRORS {
            let text = format!("{} Error: too many errors", self.state.ctx.shared.hostname);
            self.state.ctx.shared.metrics.rejected(Rejection::AbuseLimit);
            self.reply(Reply::with_code(421, 4, 7, 0, text));
            return Flow::Close("too many errors");
        }
        Flow::Continue
    }

    pub(super) fn reply(&mut self, mut reply: Reply) {
        // RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets, code and CRLF included. Some replies
        // echo what the client sent (an unknown MAIL/RCPT parameter's name can be ~490 octets), which
        // the session fuzzer found going over; cut such text rather than send an overlong line.
        const MAX_TEXT: usize = 512 - "250 ".len() - "x.yyy.zzz ".len() - "\r\n".len();
        for line in &mut reply.lines {
            if line.len() > MAX_TEXT {
                let mut cut = MAX_TEXT;
                while !line.is_char_boundary(cut) {
                    cut -= 1;
                }
                line.truncate(cut);
            }
        }
        reply.write_to(&mut self.wbuf);
    }

    pub(super) async fn flush(&mut self) -> std::io::Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.stream.flush().await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Flushes pending replies, then waits up to `limit` for more input. Only a wait for a command
    /// (`interruptible`) gives way to server shutdown; a message being received is let finish.
    /// `want` is how much room to offer the read: small between commands, so that thousands of idle
    /// sessions stay cheap, larger while a message streams in.
    pub(super) async fn fill(&mut self, limit: Duration, interruptible: bool, want: usize) -> Input {
        if self.flush().await.is_err() {
            return Input::Error;
        }
        if self.rpos == self.rbuf.len() {
            self.rbuf.clear();
            self.rpos = 0;
        } else if self.rpos > self.rbuf.len() / 2 {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        if self.rbuf.capacity() - self.rbuf.len() < want {
            self.rbuf.reserve(want);
        }
        let shutdown = self.state.ctx.shutdown.clone();
        tokio::select! {
            // read_buf fills the spare capacity without zeroing it first.
            result = tokio::time::timeout(limit, self.stream.read_buf(&mut self.rbuf)) => match result {
                Err(_) => Input::Timeout,
                Ok(Ok(0)) => Input::Eof,
                Ok(Ok(_)) => Input::Data,
                Ok(Err(e)) => {
                    debug!(error = %e, "read error");
                    Input::Error
                }
            },
            _ = shutdown.cancelled(), if interruptible => Input::Shutdown,
        }
    }

    /// Gives back a large read buffer once a big message has passed through, so an idle session
    /// does not keep megabytes around.
    pub(super) fn shrink_buffers(&mut self) {
        if self.rbuf.capacity() > COMMAND_READ * 16 && self.rpos == self.rbuf.len() {
            self.rbuf = Vec::new();
            self.rpos = 0;
        }
    }

    async fn close(mut self, why: &'static str) -> Ended<S> {
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
        Ended::Closed(self.state, why)
    }
}
