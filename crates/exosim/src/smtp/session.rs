//! One SMTP session (before or after STARTTLS): its state, the command loop with fault
//! injection, and the commands other than AUTH and the end of DATA.
//!
//! The order of checks for MAIL follows the reference: no EHLO → `503 5.5.2 Send hello first`;
//! no TLS → `451 5.7.3 STARTTLS is required to send mail`; no AUTH → `530 5.7.57`.
//!
//! The same state machine serves the MX endpoint ([`Endpoint::Mx`], reference §1b/§1c): no
//! AUTH, TLS only when the matched connector requires it, and each RCPT judged by
//! [`crate::connectors::verdict`].
//!
//! Every command line is awaited against the idle timeout on the simulator's clock
//! (`limits.smtp_idle_timeout_secs`); when it passes, `451 4.7.0 Timeout waiting for client
//! input` and the connection closes (Exchange's words; not in the reference).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use smtp_wire::{Address, Command, CommandError, DataLimits, Reply, parse_command};
use tokio::io::{AsyncRead, AsyncWrite};

use super::io::{Input, Io};
use crate::connectors::{Attribution, PeerCert, Verdict};
use crate::directory::Identity;
use crate::faults::{Action, Step};
use crate::replies::{Ctx, e, ok, scripted, text};
use crate::sim::Shared;

/// How a session ended.
pub(crate) enum Next {
    /// Close the connection.
    Close,
    /// STARTTLS was accepted: hand the stream to the TLS handshake.
    StartTls,
}

/// The identity of an authenticated session and its slot against the concurrency limit.
pub(crate) struct Authed {
    pub(crate) identity: Identity,
    pub(crate) _slot: Slot,
}

/// A connection slot of a mailbox, given back when the session ends.
pub(crate) struct Slot {
    pub(crate) shared: Arc<Shared>,
    pub(crate) mailbox: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut u) = self.shared.usage.lock() {
            u.disconnect(&self.mailbox);
        }
    }
}

/// The mail transaction.
#[derive(Default)]
pub(crate) struct Tx {
    /// MAIL FROM; `None` for `<>`.
    pub(crate) from: Option<Address>,
    pub(crate) rcpts: Vec<String>,
    /// BDAT content so far, and its full size (content beyond the size limit is not kept).
    pub(crate) bdat: Option<(Vec<u8>, u64)>,
}

/// Which listener a session belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// Client submission (smtp.office365.com:587).
    Submission,
    /// The MX host (`<tenant>.mail.protection.outlook.com:25`).
    Mx,
}

pub(crate) struct Session {
    pub(crate) shared: Arc<Shared>,
    pub(crate) ctx: Ctx,
    pub(crate) peer: SocketAddr,
    pub(crate) tls: bool,
    pub(crate) endpoint: Endpoint,
    /// The client certificate sent in the TLS handshake (MX endpoint only).
    pub(crate) client_cert: Option<PeerCert>,
    helo: bool,
    pub(crate) auth: Option<Authed>,
    pub(crate) tx: Option<Tx>,
}

/// What a command handler wants next.
pub(crate) enum Flow {
    Continue,
    Close,
    StartTls,
}

type IoResult = std::io::Result<Flow>;

impl Session {
    pub(crate) fn new(shared: Arc<Shared>, ctx: Ctx, peer: SocketAddr, tls: bool, endpoint: Endpoint) -> Self {
        Session { shared, ctx, peer, tls, endpoint, client_cert: None, helo: false, auth: None, tx: None }
    }

    /// How the MX endpoint attributes this session (reference §1b).
    pub(crate) fn attribution(&self) -> Attribution {
        crate::connectors::attribute(&self.shared.dir(), self.peer.ip(), self.client_cert.as_ref())
    }

    /// An error reply with the session's suffix.
    pub(crate) fn err(&self, t: text::E) -> Reply {
        e(&self.ctx, self.shared.now(), t)
    }

    pub(crate) fn is_helo(&self) -> bool {
        self.helo
    }

    pub(crate) fn client_ip(&self) -> String {
        self.peer.ip().to_string()
    }

    pub(crate) fn mailbox(&self) -> Option<&str> {
        self.auth.as_ref().map(|a| a.identity.mailbox())
    }

    pub(crate) async fn run<S: AsyncRead + AsyncWrite + Unpin>(&mut self, io: &mut Io<S>) -> Next {
        loop {
            let idle = Duration::from_secs(self.shared.dir().config.limits.smtp_idle_timeout_secs);
            let deadline = self.shared.now() + idle;
            self.shared.stat(|s| s.smtp_idle_sessions += 1);
            let input = tokio::select! {
                input = io.line() => Some(input),
                () = self.shared.sleep_until(deadline) => None,
            };
            self.shared.stat(|s| {
                s.smtp_idle_sessions -= 1;
                s.smtp_commands += u64::from(matches!(input, Some(Ok(Input::Line(_)))));
            });
            let Some(input) = input else {
                let _ = io.send(&self.err(text::IDLE_TIMEOUT)).await;
                return Next::Close;
            };
            let line = match input {
                Ok(Input::Line(l)) => l,
                Ok(Input::TooLong) => {
                    if io.send(&self.err(text::LINE_TOO_LONG)).await.is_err() {
                        return Next::Close;
                    }
                    continue;
                }
                Ok(Input::Eof) | Err(_) => return Next::Close,
            };
            match self.command(io, &line).await {
                Ok(Flow::Continue) => {}
                Ok(Flow::StartTls) => return Next::StartTls,
                Ok(Flow::Close) | Err(_) => return Next::Close,
            }
        }
    }

    /// Fires a pending fault for `step`: `Some(flow)` when it replaced the command.
    pub(crate) async fn fault<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        step: Step,
    ) -> std::io::Result<Option<Flow>> {
        let mailbox = self.mailbox().map(str::to_owned);
        match self.shared.fault(step, mailbox.as_deref()) {
            None => Ok(None),
            Some(Action::Delay { ms }) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(None)
            }
            Some(Action::Disconnect) => Ok(Some(Flow::Close)),
            Some(Action::Reply { code, text, close }) => {
                io.send(&scripted(code, &text)).await?;
                Ok(Some(if close { Flow::Close } else { Flow::Continue }))
            }
        }
    }

    async fn command<S: AsyncRead + AsyncWrite + Unpin>(&mut self, io: &mut Io<S>, line: &[u8]) -> IoResult {
        let step = step_of(line);
        // A BDAT's fault fires after its chunk is read (see `bdat`), else the chunk's bytes
        // would be taken for commands.
        if !is_bdat(line)
            && let Some(flow) = self.fault(io, step).await?
        {
            return Ok(flow);
        }
        let cmd = match parse_command(line) {
            Ok(c) => c,
            Err(err) => {
                let t = match err {
                    CommandError::Unrecognized | CommandError::InvalidBytes => text::UNRECOGNIZED,
                    CommandError::BadSender(_) => text::BAD_SENDER,
                    CommandError::BadRecipient(_) => text::BAD_RECIPIENT,
                    CommandError::Syntax(_) | CommandError::BadParameter(_) => text::BAD_PARAMETER,
                };
                io.send(&self.err(t)).await?;
                return Ok(Flow::Continue);
            }
        };
        match cmd {
            Command::Ehlo(_) => {
                self.helo = true;
                self.tx = None;
                let reply = match self.endpoint {
                    Endpoint::Submission => self.ctx.ehlo(&self.client_ip(), self.tls),
                    Endpoint::Mx => self.ctx.ehlo_mx(&self.client_ip(), self.tls),
                };
                io.send(&reply).await?;
            }
            Command::Helo(_) => {
                self.helo = true;
                self.tx = None;
                io.send(&self.ctx.helo(&self.client_ip())).await?;
            }
            Command::StartTls => {
                if self.tls {
                    // No longer offered once TLS is up.
                    io.send(&self.err(text::UNRECOGNIZED)).await?;
                } else if !self.helo {
                    io.send(&self.err(text::SEND_HELLO_FIRST)).await?;
                } else {
                    io.send(&ok::starttls()).await?;
                    return Ok(Flow::StartTls);
                }
            }
            Command::Auth { mechanism, initial_response } => return self.auth(io, &mechanism, initial_response).await,
            Command::Mail { from, params } => {
                let reply = self.mail(from, params);
                io.send(&reply).await?;
            }
            Command::Rcpt { to, .. } => {
                let reply = self.rcpt(to);
                io.send(&reply).await?;
            }
            Command::Data => return self.data(io).await,
            Command::Bdat { size, last } => return self.bdat(io, size, last).await,
            Command::Rset => {
                self.tx = None;
                io.send(&ok::rset()).await?;
            }
            Command::Noop => io.send(&ok::noop()).await?,
            Command::Quit => {
                io.send(&ok::quit()).await?;
                return Ok(Flow::Close);
            }
            Command::Vrfy(_) => io.send(&ok::vrfy()).await?,
            // Not in the reference: Exchange's HELP lists its verbs.
            Command::Help(_) => {
                io.send(&Reply::multiline(
                    214,
                    None,
                    vec![
                        "This server supports the following commands:".into(),
                        "HELO EHLO STARTTLS RCPT DATA RSET MAIL QUIT HELP AUTH BDAT".into(),
                    ],
                ))
                .await?
            }
            Command::Expn(_) => io.send(&self.err(text::UNRECOGNIZED)).await?,
        }
        Ok(Flow::Continue)
    }

    /// The checks every mail command shares: hello, then TLS, then AUTH. On the MX endpoint:
    /// hello, then TLS only if the matched connector requires it (GUESS: with the submission
    /// endpoint's text), no AUTH.
    fn gate(&self) -> Option<Reply> {
        if self.endpoint == Endpoint::Mx {
            return if !self.helo {
                Some(self.err(text::SEND_HELLO_FIRST))
            } else if !self.tls && matches!(self.attribution(), Attribution::Connector { require_tls: true, .. }) {
                Some(self.err(text::STARTTLS_REQUIRED))
            } else {
                None
            };
        }
        if !self.helo {
            Some(self.err(text::SEND_HELLO_FIRST))
        } else if !self.tls {
            Some(self.err(text::STARTTLS_REQUIRED))
        } else if self.auth.is_none() {
            Some(self.err(text::NOT_AUTHENTICATED))
        } else {
            None
        }
    }

    fn mail(&mut self, from: Option<Address>, params: smtp_wire::MailParams) -> Reply {
        if let Some(r) = self.gate() {
            return r;
        }
        if self.tx.is_some() {
            return self.err(text::SENDER_ALREADY);
        }
        if !params.unknown.is_empty() {
            return self.err(text::BAD_PARAMETER);
        }
        let mailbox = self.mailbox().unwrap_or_default().to_owned();
        if let Some(size) = params.size
            && size > self.shared.dir().max_send_size(&mailbox)
        {
            return self.err(text::TOO_BIG);
        }
        self.tx = Some(Tx { from, ..Tx::default() });
        ok::mail()
    }

    fn rcpt(&mut self, to: Address) -> Reply {
        if let Some(r) = self.gate() {
            return r;
        }
        let limits = self.shared.dir().config.limits;
        if self.endpoint == Endpoint::Mx {
            return self.rcpt_mx(to);
        }
        let Some(tx) = self.tx.as_mut() else {
            return self.err(text::NEED_MAIL);
        };
        if limits.recipient_limit_reply == crate::config::RecipientLimitReply::Rcpt
            && tx.rcpts.len() as u64 >= u64::from(limits.recipients_per_message)
        {
            return self.err(text::TOO_MANY_RECIPIENTS);
        }
        // Submission accepts any well-formed recipient, inside or outside the tenant; an
        // unknown internal one comes back later as an NDR, not at RCPT.
        tx.rcpts.push(to.to_string());
        ok::rcpt()
    }

    /// RCPT on the MX endpoint: the connector and direct-send rules.
    fn rcpt_mx(&mut self, to: Address) -> Reply {
        let Some(tx) = self.tx.as_ref() else {
            return self.err(text::NEED_MAIL);
        };
        let from = tx.from.as_ref().map(|a| a.to_string()).unwrap_or_default();
        let rcpt = to.to_string();
        let verdict = crate::connectors::verdict(&self.shared.dir(), &self.attribution(), &from, &rcpt);
        let refusal = match verdict {
            Verdict::Accept => None,
            Verdict::UnknownRecipient => Some(text::DBEB_REJECTED),
            Verdict::TenantAttribution => Some(text::TENANT_ATTRIBUTION),
            Verdict::NonAcceptedDomain => Some(text::RELAY_NON_ACCEPTED),
            Verdict::DirectSendRejected => Some(text::DIRECT_SEND_REJECTED),
        };
        if let Some(t) = refusal {
            return self.err(t);
        }
        if let Some(tx) = self.tx.as_mut() {
            tx.rcpts.push(rcpt);
        }
        ok::rcpt()
    }

    /// The checks shared by DATA and BDAT; `Err` carries the refusal.
    fn ready_for_content(&self) -> Result<(), Reply> {
        if let Some(r) = self.gate() {
            return Err(r);
        }
        match &self.tx {
            None => Err(self.err(text::NEED_MAIL)),
            Some(tx) if tx.rcpts.is_empty() => Err(self.err(text::NEED_RCPT)),
            Some(_) => Ok(()),
        }
    }

    async fn data<S: AsyncRead + AsyncWrite + Unpin>(&mut self, io: &mut Io<S>) -> IoResult {
        if let Err(r) = self.ready_for_content() {
            io.send(&r).await?;
            return Ok(Flow::Continue);
        }
        if self.tx.as_ref().is_some_and(|t| t.bdat.is_some()) {
            io.send(&self.err(text::BAD_SEQUENCE)).await?;
            return Ok(Flow::Continue);
        }
        io.send(&ok::data()).await?;
        let max = self.max_size();
        let limits = DataLimits {
            max_size: max,
            // Exchange does not refuse long lines at submission; count them, never cut.
            max_line: usize::MAX,
        };
        let Some((raw, summary)) = io.data(limits).await? else {
            return Ok(Flow::Close);
        };
        self.end_of_message(io, raw, summary.size).await
    }

    async fn bdat<S: AsyncRead + AsyncWrite + Unpin>(&mut self, io: &mut Io<S>, size: u64, last: bool) -> IoResult {
        // The chunk follows the command whatever we answer, so read it first (RFC 3030 §2).
        let refusal = self.ready_for_content().err();
        let max = self.max_size();
        let mut chunk = Vec::new();
        let cap = if refusal.is_some() { 0 } else { max };
        let already = self.tx.as_ref().and_then(|t| t.bdat.as_ref()).map_or(0, |b| b.0.len() as u64);
        if !io.chunk(size, &mut chunk, cap.saturating_sub(already)).await? {
            return Ok(Flow::Close);
        }
        if let Some(flow) = self.fault(io, Step::Data).await? {
            return Ok(flow);
        }
        if let Some(r) = refusal {
            io.send(&r).await?;
            return Ok(Flow::Continue);
        }
        let Some(tx) = self.tx.as_mut() else {
            return Ok(Flow::Continue);
        };
        let (buf, total) = tx.bdat.get_or_insert_with(|| (Vec::new(), 0));
        buf.extend_from_slice(&chunk);
        *total += size;
        if !last {
            io.send(&ok::bdat_chunk(size)).await?;
            return Ok(Flow::Continue);
        }
        let (raw, total) = tx.bdat.take().unwrap_or_default();
        self.end_of_message(io, raw, total).await
    }

    fn max_size(&self) -> u64 {
        match self.endpoint {
            Endpoint::Submission => self.shared.dir().max_send_size(self.mailbox().unwrap_or_default()),
            // No mailbox on the MX endpoint: the organisation's limit.
            Endpoint::Mx => self.shared.dir().config.limits.max_send_size,
        }
    }
}

/// The fault step of a command line, from its verb (so that faults fire even on lines that do
/// not parse).
fn step_of(line: &[u8]) -> Step {
    let verb: Vec<u8> = line.iter().take_while(|b| !b.is_ascii_whitespace()).map(u8::to_ascii_uppercase).collect();
    match verb.as_slice() {
        b"EHLO" | b"HELO" => Step::Ehlo,
        b"STARTTLS" => Step::Starttls,
        b"AUTH" => Step::Auth,
        b"MAIL" => Step::Mail,
        b"RCPT" => Step::Rcpt,
        b"DATA" | b"BDAT" => Step::Data,
        b"QUIT" => Step::Quit,
        _ => Step::AnyCommand,
    }
}

fn is_bdat(line: &[u8]) -> bool {
    line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"BDAT")
}
