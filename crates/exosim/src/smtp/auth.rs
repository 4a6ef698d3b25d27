//! AUTH on the submission endpoint: LOGIN (basic authentication) and XOAUTH2 (OAuth 2.0
//! bearer tokens), and the checks Exchange Online makes behind them.
//!
//! Order of checks, and why:
//! 1. Before TLS, and for any mechanism but LOGIN and XOAUTH2: `504 5.7.4 Unrecognized
//!    authentication type` (nothing is offered before TLS, and PLAIN is never offered).
//! 2. LOGIN when the tenant has retired basic auth: `550 5.7.30` once the credentials are in,
//!    whatever they are (Entra blocks legacy auth before looking at the password; the reply
//!    says nothing about the credentials).
//! 3. Bad credentials, unknown or expired token, token for another resource, app without
//!    SMTP.SendAsApp, without an Exchange service principal or without FullAccess on the
//!    mailbox: `535 5.7.3 Authentication unsuccessful` (reference §4: all look alike).
//! 4. SMTP AUTH disabled for the mailbox or the tenant: `535 5.7.139` (only after valid
//!    credentials: the switch is read from the mailbox they identify).
//! 5. A fourth concurrent session of the mailbox: `432 4.3.2`. The reference does not say which
//!    command gets it; we answer AUTH, the first point where the mailbox is known.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tokio::io::{AsyncRead, AsyncWrite};

use super::io::{Input, Io};
use super::session::{Authed, Flow, Session, Slot};
use crate::directory::{Identity, SMTP_SEND_AS_APP};
use crate::replies::{ok, text};
use crate::tokens::{Audience, Subject, secret_eq};

/// A client's answer to a 334 challenge.
enum Answer {
    Data(Vec<u8>),
    Cancelled,
    BadBase64,
    Gone,
}

impl Session {
    pub(crate) async fn auth<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        mechanism: &str,
        initial: Option<String>,
    ) -> std::io::Result<Flow> {
        let refusal = if self.endpoint == super::session::Endpoint::Mx {
            // The MX host offers no AUTH at all (reference §5), before or after TLS.
            Some(text::UNRECOGNIZED_AUTH)
        } else if !self.tls {
            // Before TLS, AUTH is not offered at all; a plain "AUTH LOGIN" gets what an
            // unknown mechanism gets. (We check EHLO after TLS so the reference's
            // "Send hello first" still applies there.)
            Some(text::UNRECOGNIZED_AUTH)
        } else if !self.is_helo() {
            Some(text::SEND_HELLO_FIRST)
        } else if self.auth.is_some() {
            Some(text::ALREADY_AUTHENTICATED)
        } else if self.tx.is_some() {
            Some(text::BAD_SEQUENCE)
        } else if mechanism != "LOGIN" && mechanism != "XOAUTH2" {
            Some(text::UNRECOGNIZED_AUTH)
        } else {
            None
        };
        if let Some(t) = refusal {
            io.send(&self.err(t)).await?;
            return Ok(Flow::Continue);
        }
        let outcome =
            if mechanism == "LOGIN" { self.login(io, initial).await? } else { self.xoauth2(io, initial).await? };
        let identity = match outcome {
            Ok(identity) => identity,
            Err(Some(t)) => {
                io.send(&self.err(t)).await?;
                return Ok(Flow::Continue);
            }
            // The client went away mid-exchange.
            Err(None) => return Ok(Flow::Close),
        };
        let mailbox = identity.mailbox().to_owned();
        let max = self.shared.dir().config.limits.concurrent_connections;
        if !self.shared.usage.lock().expect("usage lock").try_connect(&mailbox, max) {
            io.send(&self.err(text::CONCURRENT_CONNECTIONS)).await?;
            return Ok(Flow::Continue);
        }
        self.auth = Some(Authed { identity, _slot: Slot { shared: self.shared.clone(), mailbox } });
        io.send(&ok::auth()).await?;
        Ok(Flow::Continue)
    }

    /// Sends a 334 challenge (unless an initial response was given) and reads the answer.
    async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: &mut Io<S>,
        initial: Option<String>,
        challenge: smtp_wire::Reply,
    ) -> std::io::Result<Answer> {
        let line = match initial {
            // RFC 4954 §4: "=" is an empty initial response.
            Some(s) if s == "=" => return Ok(Answer::Data(Vec::new())),
            Some(s) => s.into_bytes(),
            None => {
                io.send(&challenge).await?;
                match io.line().await? {
                    Input::Line(l) => l,
                    Input::TooLong => return Ok(Answer::BadBase64),
                    Input::Eof => return Ok(Answer::Gone),
                }
            }
        };
        if line == b"*" {
            return Ok(Answer::Cancelled);
        }
        Ok(match STANDARD.decode(line.trim_ascii()) {
            Ok(d) => Answer::Data(d),
            Err(_) => Answer::BadBase64,
        })
    }

    /// `Ok(Ok(identity))`, `Ok(Err(Some(refusal)))`, or `Ok(Err(None))` when the client left.
    async fn login<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: &mut Io<S>,
        initial: Option<String>,
    ) -> std::io::Result<Result<Identity, Option<text::E>>> {
        let user = match self.answer(io, initial, ok::login_user()).await? {
            Answer::Data(d) => d,
            other => return Ok(Err(answer_refusal(other))),
        };
        let password = match self.answer(io, None, ok::login_password()).await? {
            Answer::Data(d) => d,
            other => return Ok(Err(answer_refusal(other))),
        };
        let dir = self.shared.dir();
        if dir.config.tenant.basic_auth_disabled {
            return Ok(Err(Some(text::BASIC_AUTH_RETIRED)));
        }
        let user = String::from_utf8_lossy(&user).to_ascii_lowercase();
        let password = String::from_utf8_lossy(&password);
        // The username is the UPN, which is the primary address here (not a proxy address).
        let Some(mailbox) = dir.config.mailboxes.iter().find(|m| m.address == user) else {
            return Ok(Err(Some(text::AUTH_UNSUCCESSFUL)));
        };
        let good = mailbox.password.as_deref().is_some_and(|p| secret_eq(p, &password));
        if !good {
            return Ok(Err(Some(text::AUTH_UNSUCCESSFUL)));
        }
        if let Some(t) = dir.smtp_auth_refusal(mailbox) {
            return Ok(Err(Some(t)));
        }
        Ok(Ok(Identity::User { mailbox: mailbox.address.clone(), basic: true }))
    }

    async fn xoauth2<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: &mut Io<S>,
        initial: Option<String>,
    ) -> std::io::Result<Result<Identity, Option<text::E>>> {
        let raw = match self.answer(io, initial, ok::xoauth2_go_ahead()).await? {
            Answer::Data(d) => d,
            other => return Ok(Err(answer_refusal(other))),
        };
        Ok(self.check_xoauth2(&raw))
    }

    fn check_xoauth2(&self, raw: &[u8]) -> Result<Identity, Option<text::E>> {
        let fail = Err(Some(text::AUTH_UNSUCCESSFUL));
        let Some((user, token)) = parse_xoauth2(raw) else {
            return fail;
        };
        let dir = self.shared.dir();
        let Some(mailbox) = dir.mailbox(&user) else {
            return fail;
        };
        let subject = {
            let tokens = self.shared.tokens.lock().expect("tokens lock");
            match tokens.verify(&token, Audience::Exchange, self.shared.now()) {
                Ok(grant) => grant.subject.clone(),
                Err(_) => return fail,
            }
        };
        let identity = match subject {
            Subject::App { client_id, roles } => {
                let Some(app) = dir.app(&client_id) else {
                    return fail;
                };
                if !roles.iter().any(|r| r == SMTP_SEND_AS_APP)
                    || !app.exchange_service_principal
                    || !app.full_access.contains(&mailbox.address)
                {
                    return fail;
                }
                Identity::App { client_id, mailbox: mailbox.address.clone() }
            }
            Subject::User { upn, scopes, .. } => {
                // A delegated token works for the signed-in user's own mailbox only, and only
                // with the SMTP.Send permission consented.
                if upn != mailbox.address || !scopes.iter().any(|s| s.eq_ignore_ascii_case("SMTP.Send")) {
                    return fail;
                }
                Identity::User { mailbox: upn, basic: false }
            }
        };
        if let Some(t) = dir.smtp_auth_refusal(mailbox) {
            return Err(Some(t));
        }
        Ok(identity)
    }
}

fn answer_refusal(a: Answer) -> Option<text::E> {
    match a {
        Answer::Data(_) => None,
        Answer::Cancelled => Some(text::AUTH_CANCELLED),
        Answer::BadBase64 => Some(text::BAD_BASE64),
        Answer::Gone => None,
    }
}

/// `user=<mailbox>\x01auth=Bearer <token>\x01\x01` (reference §2) → (mailbox, token).
fn parse_xoauth2(raw: &[u8]) -> Option<(String, String)> {
    let s = std::str::from_utf8(raw).ok()?;
    let s = s.strip_suffix("\x01\x01")?;
    let mut user = None;
    let mut token = None;
    for field in s.split('\x01') {
        if let Some(u) = field.strip_prefix("user=") {
            user = Some(u.to_owned());
        } else if let Some(a) = field.strip_prefix("auth=") {
            // The scheme is case-insensitive (RFC 6750 §2.1); one space after it.
            let (scheme, tok) = a.split_once(' ')?;
            if !scheme.eq_ignore_ascii_case("Bearer") {
                return None;
            }
            token = Some(tok.to_owned());
        }
    }
    Some((user?, token?))
}

#[cfg(test)]
mod tests {
    use super::parse_xoauth2;

    #[test]
    fn xoauth2_format() {
        assert_eq!(parse_xoauth2(b"user=a@b.c\x01auth=Bearer tok\x01\x01"), Some(("a@b.c".into(), "tok".into())));
        assert_eq!(parse_xoauth2(b"user=a@b.c\x01auth=Bearer tok\x01"), None);
        assert_eq!(parse_xoauth2(b"user=a@b.c\x01auth=Basic tok\x01\x01"), None);
        assert_eq!(parse_xoauth2(b"auth=Bearer tok\x01\x01"), None);
    }
}
