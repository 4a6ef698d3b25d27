//! MAIL FROM: opens a transaction.

use smtp_wire::{Address, MailParams, Reply};

use tracing::warn;

use super::session::{SessionState, Transaction};
use crate::metrics::Rejection;
use crate::policy::{Identity, RelayRequirements};

impl SessionState {
    pub fn mail(&mut self, from: Option<Address>, params: MailParams) -> Reply {
        if self.helo.is_none() {
            return Reply::with_code(503, 5, 5, 1, "Error: send HELO/EHLO first");
        }
        if self.tx.is_some() {
            return Reply::with_code(503, 5, 5, 1, "Error: nested MAIL command");
        }
        if let Some((keyword, _)) = params.unknown.first() {
            return Reply::with_code(555, 5, 5, 4, format!("Unsupported parameter {keyword}"));
        }
        if !self.esmtp && params != MailParams::default() {
            return Reply::with_code(555, 5, 5, 4, "MAIL parameters need EHLO");
        }
        if self.ctx.shared.spool.disk_low() {
            warn!(client = %self.peer, "spool filesystem low on space; MAIL refused");
            self.ctx.shared.metrics.rejected(crate::metrics::Rejection::DiskLow);
            return Reply::with_code(452, 4, 3, 1, "Insufficient system storage");
        }
        let limit = self.ctx.config.max_message_size;
        if let Some(size) = params.size
            && size > limit
        {
            self.ctx.shared.metrics.rejected(Rejection::Size);
            return Reply::with_code(552, 5, 3, 4, format!("Message size exceeds fixed limit of {limit} bytes"));
        }
        if let Some(sender) = &from
            && !sender.is_ascii()
            && !params.smtputf8
        {
            return Reply::with_code(553, 5, 6, 7, "Non-ASCII sender address needs the SMTPUTF8 parameter");
        }
        let identity = self.relay_identity();
        if let Some(identity) = &identity {
            let sender = from.as_ref().map(ToString::to_string).unwrap_or_default();
            if !identity.rules.allows_sender(&sender) {
                warn!(client = %self.peer, %identity, from = %sender, "sender not allowed for this identity");
                self.ctx.shared.metrics.rejected(Rejection::Policy);
                return Reply::with_code(
                    550,
                    5,
                    7,
                    1,
                    format!("<{sender}>: Sender address not allowed for {identity}"),
                );
            }
        }
        self.tx = Some(Transaction { identity, sender: from, params, recipients: Vec::new() });
        Reply::with_code(250, 2, 1, 0, "Ok")
    }

    /// Who this client may relay as right now, if anyone.
    pub fn relay_identity(&self) -> Option<Identity> {
        let config = &self.ctx.config;
        let needs = RelayRequirements { allowed_networks: &config.allowed_networks, require: &config.require };
        self.ctx.shared.policy.relay_identity(
            needs,
            self.peer.ip(),
            self.auth_user.as_deref(),
            self.cert_identity.as_ref(),
        )
    }
}
