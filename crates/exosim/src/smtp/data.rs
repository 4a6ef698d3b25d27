//! The end of a message (after CRLF.CRLF or BDAT LAST): Exchange Online's checks in the order
//! it makes them, then storage and the 250.
//!
//! 1. a scripted fault for `end-of-data`;
//! 2. size over MaxSendSize: `552 5.3.4` (not in the reference);
//! 3. recipients over the per-message limit, when configured to answer here: `550 5.5.3`;
//! 4. the From header: several addresses without Sender `550 5.1.20`, none valid `550 5.7.512`;
//! 5. SendAs on MAIL FROM and on the From/Sender header addresses: `550 5.7.60` or
//!    `554 5.2.252` (reference §6: refused here, after MAIL and RCPT got 250);
//! 6. the 24-hour recipient quota: `554 5.2.0 …SubmissionQuotaExceededException`;
//! 7. the per-minute rate: hold the reply until the message fits (Microsoft: "excess is
//!    delayed"), or `451 4.7.500 Server busy…` when configured;
//! 8. store, and `250 2.0.0 OK <message-id> [Hostname=…]`.
//!
//! On the MX endpoint only 1, 2 and 4 apply (no mailbox: no SendAs, quota or rate; reference
//! §1b: "no 30/min cap"); the message is stored with the path `connector` or `direct-send`,
//! never saved to Sent Items.

use tokio::io::{AsyncRead, AsyncWrite};

use super::io::Io;
use super::session::{Endpoint, Flow, Session, Tx};
use crate::config::{RateLimitAction, RecipientLimitReply, SendAsDenied};
use crate::faults::Step;
use crate::replies::{mailbox_server, send_as_denied_52252, server_busy, text};
use crate::store::{StoredMessage, SubmitPath, epoch_secs};
use crate::tokens::random_hex;

impl Session {
    pub(crate) async fn end_of_message<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        raw: Vec<u8>,
        size: u64,
    ) -> std::io::Result<Flow> {
        // The transaction ends here whatever the outcome (RFC 5321 §4.1.1.4).
        let Some(tx) = self.tx.take() else {
            return Ok(Flow::Continue);
        };
        if let Some(flow) = self.fault(io, Step::EndOfData).await? {
            return Ok(flow);
        }
        if self.endpoint == Endpoint::Mx {
            return self.end_of_message_mx(io, tx, raw, size).await;
        }
        let Some(identity) = self.auth.as_ref().map(|a| a.identity.clone()) else {
            return Ok(Flow::Continue);
        };
        let mailbox = identity.mailbox().to_owned();
        let dir = self.shared.dir();
        let limits = dir.config.limits.clone();

        if size > dir.max_send_size(&mailbox) {
            io.send(&self.err(text::TOO_BIG)).await?;
            return Ok(Flow::Continue);
        }
        if limits.recipient_limit_reply == RecipientLimitReply::Data
            && tx.rcpts.len() as u64 > u64::from(limits.recipients_per_message)
        {
            io.send(&self.err(text::RECIP_LIMIT)).await?;
            return Ok(Flow::Continue);
        }
        let headers = parse_headers(&raw);
        let from_header = match header_addresses(&headers, "from") {
            Ok(a) => a,
            Err(()) => {
                io.send(&self.err(text::BAD_FROM)).await?;
                return Ok(Flow::Continue);
            }
        };
        let sender_header = header_addresses(&headers, "sender").unwrap_or_default();
        if from_header.len() > 1 && sender_header.is_empty() {
            io.send(&self.err(text::MULTIPLE_FROM)).await?;
            return Ok(Flow::Continue);
        }
        // Every address the message claims to be from must be one the identity may send as.
        let mut claimed: Vec<String> = tx.from.iter().map(|a| a.to_string()).collect();
        claimed.extend(from_header.iter().cloned());
        claimed.extend(sender_header.iter().cloned());
        if let Some(bad) = claimed.iter().find(|a| !dir.may_send_as(&identity, a)) {
            let now = self.shared.now();
            let reply = match dir.config.tenant.send_as_denied {
                SendAsDenied::Smtp5760 => self.err(text::SEND_AS_DENIED_5760),
                SendAsDenied::Storedrv52252 => send_as_denied_52252(&self.ctx, now, identity.mailbox(), bad),
            };
            io.send(&reply).await?;
            return Ok(Flow::Continue);
        }

        let n = u32::try_from(tx.rcpts.len()).unwrap_or(u32::MAX);
        loop {
            let now = self.shared.now();
            let wait = {
                let mut usage = self.shared.usage.lock().expect("usage lock");
                if !usage.quota_allows(&mailbox, now, n, limits.recipients_per_day) {
                    None
                } else {
                    match usage.rate_wait(&mailbox, now, limits.messages_per_minute) {
                        None => {
                            // Counted under the same lock as the checks, so concurrent
                            // sessions of one mailbox cannot both take the last slot.
                            usage.record(&mailbox, now, n);
                            break;
                        }
                        Some(t) => Some(t),
                    }
                }
            };
            let Some(until) = wait else {
                io.send(&self.err(text::SUBMISSION_QUOTA)).await?;
                return Ok(Flow::Continue);
            };
            if limits.rate_limit_action == RateLimitAction::Reject {
                io.send(&server_busy(&self.ctx, now, &self.client_ip())).await?;
                return Ok(Flow::Continue);
            }
            self.shared.stat(|s| {
                s.rate_delayed_now += 1;
                s.rate_delayed_total += 1;
            });
            self.shared.sleep_until(until).await;
            self.shared.stat(|s| s.rate_delayed_now -= 1);
        }

        let host = mailbox_server(&self.ctx.host).to_ascii_uppercase();
        let message_id = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("message-id"))
            .map(|(_, v)| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            // Exchange gives a message without one an id of its own.
            .unwrap_or_else(|| format!("<{}@{host}>", random_hex(16)));
        self.shared.store(StoredMessage {
            seq: 0,
            message_id: message_id.clone(),
            accepted_at: epoch_secs(self.shared.now()),
            path: SubmitPath::SmtpAuth,
            identity: identity.describe(),
            mailbox,
            mail_from: tx.from.map(|a| a.to_string()).unwrap_or_default(),
            rcpt_to: tx.rcpts,
            client_ip: self.client_ip(),
            tls: self.tls,
            saved_to_sent_items: true,
            raw,
        });
        io.send(&self.ctx.queued(&message_id)).await?;
        Ok(Flow::Continue)
    }
}

impl Session {
    async fn end_of_message_mx<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        tx: Tx,
        raw: Vec<u8>,
        size: u64,
    ) -> std::io::Result<Flow> {
        let dir = self.shared.dir();
        if size > dir.config.limits.max_send_size {
            io.send(&self.err(text::TOO_BIG)).await?;
            return Ok(Flow::Continue);
        }
        let headers = parse_headers(&raw);
        let Ok(from_header) = header_addresses(&headers, "from") else {
            io.send(&self.err(text::BAD_FROM)).await?;
            return Ok(Flow::Continue);
        };
        let sender_header = header_addresses(&headers, "sender").unwrap_or_default();
        if from_header.len() > 1 && sender_header.is_empty() {
            io.send(&self.err(text::MULTIPLE_FROM)).await?;
            return Ok(Flow::Continue);
        }
        let attribution = self.attribution();
        let host = mailbox_server(&self.ctx.host).to_ascii_uppercase();
        let message_id = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("message-id"))
            .map(|(_, v)| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| format!("<{}@{host}>", random_hex(16)));
        let seq = self.shared.store(StoredMessage {
            seq: 0,
            message_id: message_id.clone(),
            accepted_at: epoch_secs(self.shared.now()),
            path: attribution.path(),
            identity: attribution.describe(),
            mailbox: String::new(),
            mail_from: tx.from.map(|a| a.to_string()).unwrap_or_default(),
            rcpt_to: tx.rcpts,
            client_ip: self.client_ip(),
            tls: self.tls,
            saved_to_sent_items: false,
            raw,
        });
        io.send(&self.ctx.queued_mx(&message_id, seq, size)).await?;
        Ok(Flow::Continue)
    }
}

/// The header section, unfolded: (name, value) pairs in order, up to the first empty line.
pub(crate) fn parse_headers(raw: &[u8]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let text = String::from_utf8_lossy(raw);
    for line in text.split("\r\n") {
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            out.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    out
}

/// The addresses of every `name` header (`From`, `Sender`), lower-cased. `Err` when such a
/// header is present but holds no valid address.
pub(crate) fn header_addresses(headers: &[(String, String)], name: &str) -> Result<Vec<String>, ()> {
    let mut all = Vec::new();
    for (_, value) in headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)) {
        let list = mailbox_list(value);
        if list.is_empty() {
            return Err(());
        }
        all.extend(list);
    }
    Ok(all)
}

/// The addr-specs in an RFC 5322 mailbox-list: `"Doe, J" <j@x.com>, k@y.com (comment)`.
/// Commas inside quotes, angle brackets and comments do not separate.
fn mailbox_list(value: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let (mut quoted, mut angle, mut paren) = (false, false, 0u32);
    let mut cur = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => {
                cur.push(c);
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
                continue;
            }
            '"' if paren == 0 => quoted = !quoted,
            '<' if !quoted && paren == 0 => angle = true,
            '>' if !quoted && paren == 0 => angle = false,
            '(' if !quoted => paren += 1,
            ')' if !quoted && paren > 0 => paren -= 1,
            ',' if !quoted && !angle && paren == 0 => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    parts.push(cur);
    parts
        .iter()
        .filter_map(|p| {
            let p = p.trim();
            if p.is_empty() {
                return None;
            }
            let addr = match (p.rfind('<'), p.rfind('>')) {
                (Some(a), Some(b)) if a < b => p[a + 1..b].trim().to_owned(),
                _ => strip_comments(p).trim().to_owned(),
            };
            smtp_wire::Address::parse(&addr).ok().map(|a| a.to_string().to_ascii_lowercase())
        })
        .collect()
}

fn strip_comments(s: &str) -> String {
    let mut depth = 0u32;
    s.chars()
        .filter(|&c| match c {
            '(' => {
                depth += 1;
                false
            }
            ')' if depth > 0 => {
                depth -= 1;
                false
            }
            _ => depth == 0,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_addresses() {
        assert_eq!(mailbox_list(r#""Doe, J" <J@X.com>, k@y.com (Kay, K)"#), vec!["j@x.com", "k@y.com"]);
        assert!(mailbox_list("undisclosed").is_empty());
    }

    #[test]
    fn headers_unfold() {
        let h = parse_headers(b"From: a@b.c\r\nTo: x@y.z,\r\n z@w.v\r\n\r\nFrom: body@x.y\r\n");
        assert_eq!(h.len(), 2);
        assert_eq!(h[1].1, "x@y.z, z@w.v");
    }
}
