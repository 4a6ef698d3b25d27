//! MAIL FROM: opens a transaction.

use smtp_wire::{Address, MailParams, Reply};

use super::session::{SessionState, Transaction};

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
        let limit = self.ctx.config.max_message_size;
        if let Some(size) = params.size
            && size > limit
        {
            return Reply::with_code(
                552,
                5,
                3,
                4,
                format!("Message size exceeds fixed limit of {limit} bytes"),
            );
        }
        if let Some(sender) = &from
            && !sender.is_ascii()
            && !params.smtputf8
        {
            return Reply::with_code(
                553,
                5,
                6,
                7,
                "Non-ASCII sender address needs the SMTPUTF8 parameter",
            );
        }
        self.tx = Some(Transaction {
            sender: from,
            params,
            recipients: Vec::new(),
        });
        Reply::with_code(250, 2, 1, 0, "Ok")
    }
}
