//! RCPT TO: adds a recipient, if the client may relay.

use smtp_wire::{Address, RcptParams, Reply};
use tracing::warn;

use super::session::SessionState;
use crate::config::Credential;
use crate::metrics::Rejection;

impl SessionState {
    pub fn rcpt(&mut self, to: Address, params: RcptParams) -> Reply {
        let Some(tx) = &self.tx else {
            return Reply::with_code(503, 5, 5, 1, "Error: need MAIL command");
        };
        if let Some((keyword, _)) = params.unknown.first() {
            return Reply::with_code(555, 5, 5, 4, format!("Unsupported parameter {keyword}"));
        }
        if !to.is_ascii() && !tx.params.smtputf8 {
            return Reply::with_code(553, 5, 6, 7, "Non-ASCII recipient address needs SMTPUTF8 on MAIL");
        }
        let config = &self.ctx.config;
        let Some(identity) = &tx.identity else {
            self.relay_denied += 1;
            // Where the listener requires AUTH and the client has not authenticated, AUTH is the answer.
            let needs_auth = config.require.contains(&Credential::Auth) && self.auth_user.is_none();
            let why = if needs_auth { Rejection::AuthRequired } else { Rejection::RelayDenied };
            self.ctx.shared.metrics.relay_refused(why);
            let sender = tx.sender.as_ref().map(ToString::to_string).unwrap_or_default();
            warn!(
                client = %self.peer,
                helo = self.helo.as_deref().unwrap_or(""),
                from = %sender,
                to = %to,
                "relay access denied: the client has none of the credentials this listener requires"
            );
            return Reply::with_code(554, 5, 7, 1, format!("<{to}>: Relay access denied"));
        };
        if !identity.rules.allows_recipient(&to.to_string()) {
            warn!(client = %self.peer, %identity, to = %to, "recipient domain not allowed for this identity");
            self.ctx.shared.metrics.rejected(Rejection::Policy);
            return Reply::with_code(550, 5, 7, 1, format!("<{to}>: Recipient domain not allowed for {identity}"));
        }
        let tx = self.tx.as_mut().expect("checked above");
        if tx.recipients.contains(&to) {
            // A duplicate would only be delivered twice; accept it once.
            return Reply::with_code(250, 2, 1, 5, "Ok");
        }
        if tx.recipients.len() >= config.max_recipients {
            self.ctx.shared.metrics.rejected(Rejection::TooManyRecipients);
            return Reply::with_code(452, 4, 5, 3, "Error: too many recipients");
        }
        tx.recipients.push(to);
        Reply::with_code(250, 2, 1, 5, "Ok")
    }
}
