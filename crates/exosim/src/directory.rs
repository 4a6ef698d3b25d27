//! The tenant's directory as Exchange Online sees it: mailboxes, apps, who is authenticated as
//! what ([`Identity`]), and who may send as which address. Pure lookups over the configuration;
//! no I/O, no clock.

use crate::config::{AppConfig, MailboxConfig, SimConfig};
use crate::replies::text;

/// The permission an app needs for SMTP AUTH with a client-credentials token.
pub const SMTP_SEND_AS_APP: &str = "SMTP.SendAsApp";
/// The Graph application permission for sendMail.
pub const MAIL_SEND: &str = "Mail.Send";

/// Who sent a message, once authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// A user signed in to their own mailbox: basic auth, or a delegated OAuth token.
    User {
        /// The mailbox's primary address.
        mailbox: String,
        /// Basic authentication (AUTH LOGIN) rather than OAuth.
        basic: bool,
    },
    /// An app with a client-credentials token, acting on a mailbox it has FullAccess to.
    App {
        /// The app's client id.
        client_id: String,
        /// The mailbox named in `user=` of XOAUTH2.
        mailbox: String,
    },
}

impl Identity {
    /// The mailbox the session acts for (limits are counted per mailbox).
    pub fn mailbox(&self) -> &str {
        match self {
            Identity::User { mailbox, .. } | Identity::App { mailbox, .. } => mailbox,
        }
    }

    /// A one-word description for logs and the message store: the mailbox for a user,
    /// `app:<client id>` for an app.
    pub fn describe(&self) -> String {
        match self {
            Identity::User { mailbox, .. } => mailbox.clone(),
            Identity::App { client_id, .. } => format!("app:{client_id}"),
        }
    }
}

/// Read access to the tenant. Wraps the (validated) configuration.
#[derive(Clone, Debug)]
pub struct Directory {
    /// The configuration this directory answers from. Changing it at run time (through
    /// `RunningSim::update_config`) is how tests flip tenant switches.
    pub config: SimConfig,
}

impl Directory {
    /// The mailbox owning `address` (primary or proxy address), case-insensitively.
    pub fn mailbox(&self, address: &str) -> Option<&MailboxConfig> {
        let a = address.to_ascii_lowercase();
        self.config.mailboxes.iter().find(|m| m.address == a || m.aliases.contains(&a))
    }

    /// An app by client id.
    pub fn app(&self, client_id: &str) -> Option<&AppConfig> {
        let id = client_id.to_ascii_lowercase();
        self.config.apps.iter().find(|a| a.client_id == id)
    }

    /// Is `t` this tenant, as written in a token URL: its id, an accepted domain (which includes
    /// `<name>.onmicrosoft.com`)?
    pub fn is_tenant(&self, t: &str) -> bool {
        let t = t.to_ascii_lowercase();
        t == self.config.tenant.id.to_ascii_lowercase() || self.config.tenant.domains.contains(&t)
    }

    /// Is `domain` an accepted domain?
    pub fn is_accepted_domain(&self, domain: &str) -> bool {
        self.config.tenant.domains.contains(&domain.to_ascii_lowercase())
    }

    /// The SMTP AUTH switch in force for `mailbox`: the mailbox's own setting wins when set,
    /// otherwise the tenant's (as `Set-CASMailbox` over `Set-TransportConfig` does). Returns the
    /// refusal, if any.
    pub fn smtp_auth_refusal(&self, mailbox: &MailboxConfig) -> Option<text::E> {
        match mailbox.smtp_auth_disabled {
            Some(true) => Some(text::SMTP_AUTH_DISABLED_MAILBOX),
            Some(false) => None,
            None if self.config.tenant.smtp_auth_disabled => Some(text::SMTP_AUTH_DISABLED_TENANT),
            None => None,
        }
    }

    /// MaxSendSize for a mailbox.
    pub fn max_send_size(&self, mailbox: &str) -> u64 {
        self.mailbox(mailbox).and_then(|m| m.max_send_size).unwrap_or(self.config.limits.max_send_size)
    }

    /// May `identity` send as `sender` (reference §6)? The mailbox itself, its proxy addresses
    /// when the tenant allows sending from aliases, and addresses the identity holds SendAs on.
    pub fn may_send_as(&self, identity: &Identity, sender: &str) -> bool {
        let sender = sender.to_ascii_lowercase();
        let Some(own) = self.mailbox(identity.mailbox()) else {
            return false;
        };
        if own.address == sender || (self.config.tenant.send_from_aliases && own.aliases.contains(&sender)) {
            return true;
        }
        let granted = match identity {
            Identity::User { .. } => &own.send_as,
            Identity::App { client_id, .. } => match self.app(client_id) {
                Some(app) => &app.send_as,
                None => return false,
            },
        };
        // A grant is on a recipient; a grant on a mailbox covers all its addresses.
        granted.iter().any(|g| {
            *g == sender || self.mailbox(g).is_some_and(|m| m.address == sender || m.aliases.contains(&sender))
        })
    }
}
