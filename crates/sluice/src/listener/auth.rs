//! AUTH PLAIN and AUTH LOGIN (RFC 4954, RFC 4616) against the configured users.

use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use smtp_wire::{Framed, LineFramer, Reply};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{info, warn};

use super::session::{Flow, Input, Session};
use crate::metrics::Rejection;

/// RFC 4954 §4: a SASL response line may be up to 12288 octets.
const MAX_SASL_LINE: usize = 12288;

enum Response {
    Line(String),
    Cancelled,
    Invalid,
    Gone(&'static str),
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(super) async fn auth(&mut self, mechanism: String, initial: Option<String>) -> Flow {
        if !self.state.ctx.config.auth || self.state.ctx.shared.users.is_empty() {
            self.reply(Reply::with_code(503, 5, 5, 1, "Error: authentication not enabled"));
            return self.count_error();
        }
        if !self.state.auth_offered() {
            // RFC 4954 §4 / RFC 3207: no credentials over a connection we have not encrypted.
            self.state.ctx.shared.metrics.rejected(Rejection::AuthRequired);
            self.reply(Reply::with_code(538, 5, 7, 11, "Encryption required for requested authentication mechanism"));
            return self.count_error();
        }
        if self.state.helo.is_none() || !self.state.esmtp {
            self.reply(Reply::with_code(503, 5, 5, 1, "Error: send EHLO first"));
            return self.count_error();
        }
        if self.state.auth_user.is_some() {
            self.reply(Reply::with_code(503, 5, 5, 1, "Error: already authenticated"));
            return self.count_error();
        }
        if self.state.tx.is_some() {
            self.reply(Reply::with_code(503, 5, 5, 1, "Error: AUTH not allowed during a mail transaction"));
            return self.count_error();
        }
        let credentials = match mechanism.as_str() {
            "PLAIN" => self.plain(initial).await,
            "LOGIN" => self.login(initial).await,
            _ => {
                self.reply(Reply::with_code(504, 5, 5, 4, "Unrecognized authentication type"));
                return self.count_error();
            }
        };
        let (user, password) = match credentials {
            Ok(pair) => pair,
            Err(flow) => return flow,
        };
        let abuse = self.state.ctx.shared.abuse.clone();
        // A locked name is refused without checking the password, so guessing it gains nothing.
        let locked = abuse.is_locked(&user);
        if !locked && self.state.ctx.shared.users.verify(&user, &password).await {
            info!(client = %self.state.peer, user = %user, mechanism = %mechanism, "authenticated");
            self.state.auth_user = Some(user);
            self.reply(Reply::with_code(235, 2, 7, 0, "Authentication successful"));
            return Flow::Continue;
        }
        let client = crate::policy::canonical(self.state.peer.ip());
        let banned = abuse.auth_failed(client, &user);
        warn!(client = %self.state.peer, user = %user, mechanism = %mechanism, locked, banned, "authentication failed");
        self.state.ctx.shared.metrics.rejected(Rejection::AuthFailed);
        self.reply(Reply::with_code(535, 5, 7, 8, "Authentication credentials invalid"));
        if banned {
            let text = format!("{} Error: too many failed authentication attempts", self.state.ctx.shared.hostname);
            self.reply(Reply::with_code(421, 4, 7, 0, text));
            return Flow::Close("banned after failed AUTH");
        }
        self.count_error()
    }

    async fn plain(&mut self, initial: Option<String>) -> Result<(String, String), Flow> {
        let response = match initial {
            // "=" is an empty initial response (RFC 4954 §4).
            Some(text) => text,
            None => self.challenge("").await?,
        };
        let decoded = self.decode(&response)?;
        // authzid NUL authcid NUL passwd (RFC 4616 §2)
        let mut parts = decoded.split(|b| *b == 0);
        let (Some(authzid), Some(authcid), Some(password), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(self.malformed());
        };
        let (Ok(authzid), Ok(authcid), Ok(password)) =
            (std::str::from_utf8(authzid), std::str::from_utf8(authcid), std::str::from_utf8(password))
        else {
            return Err(self.malformed());
        };
        if !authzid.is_empty() && authzid != authcid {
            self.reply(Reply::with_code(535, 5, 7, 8, "Authorization identity must match the user name"));
            return Err(self.count_error());
        }
        Ok((authcid.to_owned(), password.to_owned()))
    }

    async fn login(&mut self, initial: Option<String>) -> Result<(String, String), Flow> {
        let user = match initial {
            Some(text) => text,
            None => self.challenge("VXNlcm5hbWU6").await?, // "Username:"
        };
        let user = self.decode(&user)?;
        let password = self.challenge("UGFzc3dvcmQ6").await?; // "Password:"
        let password = self.decode(&password)?;
        match (String::from_utf8(user), String::from_utf8(password)) {
            (Ok(user), Ok(password)) => Ok((user, password)),
            _ => Err(self.malformed()),
        }
    }

    fn decode(&mut self, text: &str) -> Result<Vec<u8>, Flow> {
        if text == "=" {
            return Ok(Vec::new());
        }
        BASE64.decode(text.trim()).map_err(|_| self.malformed())
    }

    fn malformed(&mut self) -> Flow {
        self.reply(Reply::with_code(501, 5, 5, 2, "Cannot decode authentication response"));
        self.count_error()
    }

    /// Sends a 334 challenge and reads the client's response line.
    async fn challenge(&mut self, text: &str) -> Result<String, Flow> {
        self.reply(Reply::new(334, None, text));
        match self.read_sasl_line().await {
            Response::Line(line) => Ok(line),
            Response::Cancelled => {
                self.reply(Reply::with_code(501, 5, 7, 0, "Authentication cancelled"));
                Err(self.count_error())
            }
            Response::Invalid => Err(self.malformed()),
            Response::Gone(why) => Err(Flow::Close(why)),
        }
    }

    async fn read_sasl_line(&mut self) -> Response {
        let mut framer = LineFramer::new(MAX_SASL_LINE);
        let mut line_started: Option<Instant> = None;
        loop {
            match framer.poll(&self.rbuf[self.rpos..]) {
                Framed::Line { len, consumed } => {
                    let line = std::str::from_utf8(&self.rbuf[self.rpos..self.rpos + len]).map(str::to_owned);
                    self.rpos += consumed;
                    return match line {
                        Ok(line) if line == "*" => Response::Cancelled,
                        Ok(line) => Response::Line(line),
                        Err(_) => Response::Invalid,
                    };
                }
                Framed::TooLong { consumed } => {
                    self.rpos += consumed;
                    return Response::Invalid;
                }
                Framed::NeedMore { consumed } => {
                    self.rpos += consumed;
                    // As for a command line (session.rs): the wait for the response to begin is bounded by
                    // idle_timeout, and once begun it must be complete within command_timeout. With
                    // idle_timeout alone, a client trickling a byte every few minutes (up to 12288 of them)
                    // held the session for weeks.
                    let config = &self.state.ctx.config;
                    let limit = if self.rpos < self.rbuf.len() || framer.is_discarding() {
                        let started = *line_started.get_or_insert_with(Instant::now);
                        config.command_timeout.saturating_sub(started.elapsed()).min(config.idle_timeout)
                    } else {
                        config.idle_timeout
                    };
                    match self.fill(limit, false, super::session::COMMAND_READ).await {
                        Input::Data => {}
                        Input::Timeout => {
                            self.reply(Reply::with_code(421, 4, 4, 2, "Error: timeout exceeded"));
                            return Response::Gone("timeout in AUTH");
                        }
                        _ => return Response::Gone("client disconnected in AUTH"),
                    }
                }
            }
        }
    }
}
