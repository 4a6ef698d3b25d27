//! EHLO and HELO: the client names itself and learns what we offer.

use smtp_wire::Reply;

use super::session::SessionState;
use crate::config::ListenerTls;

impl SessionState {
    /// Whether AUTH may be offered on this connection now: the listener allows it, users exist, and the
    /// connection is encrypted unless the admin explicitly allowed plaintext AUTH.
    pub fn auth_offered(&self) -> bool {
        let config = &self.ctx.config;
        config.auth && !self.ctx.shared.users.is_empty() && (self.tls.is_some() || config.insecure_allow_plaintext_auth)
    }

    pub fn ehlo(&mut self, name: String, esmtp: bool) -> Reply {
        // RFC 5321 §4.1.4: EHLO in the middle of a transaction resets it.
        self.tx = None;
        self.helo = Some(name);
        self.esmtp = esmtp;
        let hostname = &self.ctx.shared.hostname;
        if !esmtp {
            return Reply::new(250, None, hostname.clone());
        }
        let config = &self.ctx.config;
        let mut lines = vec![
            hostname.clone(),
            "PIPELINING".to_owned(),
            format!("SIZE {}", config.max_message_size),
            "8BITMIME".to_owned(),
            "SMTPUTF8".to_owned(),
            "ENHANCEDSTATUSCODES".to_owned(),
        ];
        if config.tls == ListenerTls::Starttls && self.tls.is_none() {
            lines.push("STARTTLS".to_owned());
        }
        if self.auth_offered() {
            lines.push("AUTH PLAIN LOGIN".to_owned());
        }
        Reply::multiline(250, None, lines)
    }
}
