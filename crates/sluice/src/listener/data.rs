//! DATA: receive the content, make it durable, and only then say 250.

use std::time::{Duration, Instant};

use smtp_wire::{DataLimits, DataReceiver, Reply};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{error, info, warn};

/// The first seconds of DATA are not held to `min_data_rate`: TCP slow start and a client preparing its
/// first chunk are not an attack.
const DATA_RATE_GRACE: Duration = Duration::from_secs(10);

use super::received::{self, ReceivedInfo};
use super::session::{DATA_READ, Flow, Input, MAX_TEXT_LINE, Session};
use crate::metrics::Rejection;
use crate::spool::{QueueRecord, RECORD_VERSION, RecipientState, RecipientStatus, Spool, is_disk_full, now_ms};

/// Why a message that passed every content check was not queued.
enum CommitRefused {
    /// Free space is below `[spool] min_free_space`: nothing was written.
    DiskLow,
    Io(std::io::Error),
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(super) async fn data(&mut self) -> Flow {
        let Some(tx) = &self.state.tx else {
            self.reply(Reply::with_code(503, 5, 5, 1, "Error: need MAIL command"));
            return self.count_error();
        };
        if tx.recipients.is_empty() {
            self.reply(Reply::with_code(554, 5, 5, 1, "Error: no valid recipients"));
            return self.count_error();
        }
        let config = &self.state.ctx.config;
        let hostname = self.state.ctx.shared.hostname.clone();
        let id = Spool::new_id();
        let single = (tx.recipients.len() == 1).then(|| tx.recipients[0].to_string());
        let header = received::render(&ReceivedInfo {
            helo: self.state.helo.as_deref().unwrap_or(""),
            client_ip: crate::policy::canonical(self.state.peer.ip()),
            hostname: &hostname,
            esmtp: self.state.esmtp,
            tls: self.state.tls.as_ref(),
            auth_user: self.state.auth_user.as_deref(),
            queue_id: &id,
            single_recipient: single.as_deref(),
            date: chrono::Utc::now(),
        });
        let max_size = config.max_message_size;
        let min_rate = config.min_data_rate;
        let data_timeout = config.data_timeout;
        let expected = tx.params.size.unwrap_or(0).min(max_size) as usize;
        let mut body = Vec::with_capacity(header.len() + expected.max(8 * 1024) + 64);
        body.extend_from_slice(header.as_bytes());

        self.reply(Reply::new(354, None, "End data with <CR><LF>.<CR><LF>"));
        let ours = body.len();
        let mut receiver = DataReceiver::new(DataLimits { max_size, max_line: MAX_TEXT_LINE });
        let started = Instant::now();
        let mut received = 0u64;
        loop {
            let fed = receiver.feed(&self.rbuf[self.rpos..], &mut body);
            self.rpos += fed.consumed;
            received += fed.consumed as u64;
            if fed.done {
                break;
            }
            let elapsed = started.elapsed();
            if min_rate > 0 && elapsed > DATA_RATE_GRACE && received < min_rate * elapsed.as_secs() {
                self.state.tx = None;
                warn!(client = %self.state.peer, received, secs = elapsed.as_secs(), "data rate too low; nothing queued");
                self.state.ctx.shared.metrics.rejected(Rejection::AbuseLimit);
                let text = format!("{hostname} Error: data rate too low");
                self.reply(Reply::with_code(421, 4, 4, 2, text));
                return Flow::Close("data rate too low");
            }
            match self.fill(data_timeout, false, DATA_READ).await {
                Input::Data => {}
                Input::Timeout => {
                    self.state.tx = None;
                    let text = format!("{hostname} Error: timeout exceeded");
                    self.reply(Reply::with_code(421, 4, 4, 2, text));
                    warn!(client = %self.state.peer, "timeout during DATA; nothing queued");
                    return Flow::Close("timeout in DATA");
                }
                Input::Eof | Input::Error | Input::Shutdown => {
                    self.state.tx = None;
                    warn!(client = %self.state.peer, "connection lost during DATA; nothing queued");
                    return Flow::Close("client disconnected in DATA");
                }
            }
        }

        self.shrink_buffers();
        let tx = self.state.tx.take().expect("checked at the start");
        let summary = receiver.summary();
        let metrics = self.state.ctx.shared.metrics.clone();
        if summary.oversize {
            metrics.rejected(Rejection::Size);
            self.reply(Reply::with_code(552, 5, 3, 4, format!("Message size exceeds fixed limit of {max_size} bytes")));
            return self.count_error();
        }
        let config = self.state.ctx.clone();
        let config = &config.config;
        if config.reject_bare_line_endings && (summary.bare_lf > 0 || summary.bare_cr > 0) {
            metrics.rejected(Rejection::Content);
            self.reply(Reply::with_code(
                550,
                5,
                5,
                2,
                "Message contains bare LF or CR line endings (RFC 5321 section 2.3.8)",
            ));
            return self.count_error();
        }
        let headers = inspect_headers(&body[ours..]);
        if headers.size > config.max_header_size {
            let limit = config.max_header_size;
            metrics.rejected(Rejection::Size);
            self.reply(Reply::with_code(552, 5, 3, 4, format!("Message header section exceeds {limit} bytes")));
            return self.count_error();
        }
        if headers.received > config.max_received_headers {
            warn!(client = %self.state.peer, hops = headers.received, "mail loop suspected; message refused");
            metrics.rejected(Rejection::Content);
            self.reply(Reply::with_code(
                554,
                5,
                4,
                6,
                format!("Too many hops ({} Received headers): mail loop?", headers.received),
            ));
            return self.count_error();
        }
        if summary.long_lines > 0 {
            metrics.rejected(Rejection::Size);
            self.reply(Reply::with_code(
                552,
                5,
                3,
                4,
                format!("Message has lines longer than {MAX_TEXT_LINE} octets (RFC 5321 section 4.5.3.1.6)"),
            ));
            return self.count_error();
        }
        // The receiver keeps a bare CR as content, and the upstream side sends it on as it is. But RFC
        // 5321 §2.3.8 forbids sending a bare CR, and a server downstream that takes a lone CR for a
        // line end (some gateways normalise CR to CRLF) would read "\r.\r" in the content as the end
        // of the data, followed by whatever commands the client put after it: SMTP smuggling through
        // us. So a bare CR is normalised to CRLF, as a bare LF already is; a "." after it then starts
        // a line and is dot-stuffed on the way out.
        if summary.bare_cr > 0 {
            crlf_for_bare_cr(&mut body, ours);
        }

        let now = now_ms();
        let smtputf8 = tx.params.smtputf8
            || tx.sender.as_ref().is_some_and(|s| !s.is_ascii())
            || tx.recipients.iter().any(|r| !r.is_ascii());
        let sender = tx.sender.as_ref().map(ToString::to_string).unwrap_or_default();
        // The route is chosen now, from what the session knows, and kept with the message.
        let route = self.state.ctx.shared.scheduler.choose_route(&crate::routing::RouteRequest {
            sender: &sender,
            auth_user: self.state.auth_user.as_deref(),
            client: self.state.peer.ip(),
        });
        let record = QueueRecord {
            version: RECORD_VERSION,
            id: id.clone(),
            sender,
            recipients: tx
                .recipients
                .iter()
                .map(|r| RecipientState { address: r.to_string(), status: RecipientStatus::Pending, last_reply: None })
                .collect(),
            received_at_ms: now,
            attempts: 0,
            next_attempt_ms: now,
            last_reply: None,
            size: body.len() as u64,
            eight_bit: summary.eight_bit,
            smtputf8,
            client: format!(
                "{} [{}]{}",
                self.state.helo.as_deref().unwrap_or(""),
                self.state.peer.ip(),
                self.state.auth_user.as_ref().map(|u| format!(" user={u}")).unwrap_or_default()
            ),
            route: Some(route),
            admin_hold: None,
        };

        let spool = self.state.ctx.shared.spool.clone();
        let to_commit = record.clone();
        // The free-space threshold once more, now that the message is here: the disk may have filled up
        // since MAIL. Checked with the commit, off the async threads (statvfs, at most once a second).
        let committed = tokio::task::spawn_blocking(move || {
            if spool.disk_low() {
                return Err(CommitRefused::DiskLow);
            }
            spool.commit(&to_commit, &body).map_err(CommitRefused::Io)
        })
        .await;
        match committed {
            Ok(Ok(())) => {
                info!(
                    queue_id = %id,
                    client = %self.state.peer,
                    from = %record.sender,
                    recipients = record.recipients.len(),
                    size = record.size,
                    bare_lf = summary.bare_lf,
                    "message accepted"
                );
                self.state.accepted += 1;
                metrics.accepted(&config.address.to_string());
                self.state.ctx.shared.scheduler.enqueue(record);
                self.reply(Reply::with_code(250, 2, 0, 0, format!("Ok: queued as {id}")));
                Flow::Continue
            }
            Ok(Err(CommitRefused::DiskLow)) => {
                warn!(queue_id = %id, client = %self.state.peer, "spool filesystem low on space; message refused");
                metrics.rejected(Rejection::DiskLow);
                self.reply(Reply::with_code(452, 4, 3, 1, "Insufficient system storage"));
                Flow::Continue
            }
            Ok(Err(CommitRefused::Io(e))) if is_disk_full(&e) => {
                error!(queue_id = %id, error = %e, "spool is full; message refused");
                metrics.rejected(Rejection::DiskLow);
                self.reply(Reply::with_code(452, 4, 3, 1, "Insufficient system storage"));
                Flow::Continue
            }
            Ok(Err(CommitRefused::Io(e))) => {
                error!(queue_id = %id, error = %e, "spool commit failed; message refused");
                metrics.rejected(Rejection::SpoolError);
                self.reply(Reply::with_code(451, 4, 3, 0, "Error: queue file write error"));
                Flow::Continue
            }
            Err(e) => {
                error!(queue_id = %id, error = %e, "spool commit task failed; message refused");
                metrics.rejected(Rejection::SpoolError);
                self.reply(Reply::with_code(451, 4, 3, 0, "Error: queue file write error"));
                Flow::Continue
            }
        }
    }
}

/// Turns every CR not followed by LF in `body[from..]` into CRLF.
fn crlf_for_bare_cr(body: &mut Vec<u8>, from: usize) {
    let content = body.split_off(from);
    body.reserve(content.len() + 16);
    for (i, &b) in content.iter().enumerate() {
        body.push(b);
        if b == b'\r' && content.get(i + 1) != Some(&b'\n') {
            body.push(b'\n');
        }
    }
}

/// What the header section of received content looks like.
#[derive(Debug, PartialEq, Eq)]
struct HeaderFacts {
    /// Bytes up to the empty line that ends the header section (all of it, if there is none).
    size: u64,
    /// Received header fields: one per hop, so a loop shows up as a long list.
    received: usize,
}

fn inspect_headers(content: &[u8]) -> HeaderFacts {
    let mut size = 0usize;
    let mut received = 0;
    for line in content.split_inclusive(|&b| b == b'\n') {
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        size += line.len();
        if line.len() >= 9 && line[..9].eq_ignore_ascii_case(b"received:") {
            received += 1;
        }
    }
    HeaderFacts { size: size as u64, received }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_cr_becomes_crlf_after_our_header() {
        let mut body = b"Received: x\r\n".to_vec();
        body.extend_from_slice(b"a\r.\rb\r\n\r\r\nc\r");
        crlf_for_bare_cr(&mut body, 13);
        assert_eq!(body, b"Received: x\r\na\r\n.\r\nb\r\n\r\n\r\nc\r\n");
    }

    #[test]
    fn header_facts() {
        let msg = b"Received: a\r\nRECEIVED: b\r\n\tcontinued\r\nSubject: x\r\n\r\nReceived: in body\r\n";
        assert_eq!(inspect_headers(msg), HeaderFacts { size: 50, received: 2 });
        assert_eq!(inspect_headers(b"\r\nbody"), HeaderFacts { size: 0, received: 0 });
        assert_eq!(inspect_headers(b"X: y"), HeaderFacts { size: 4, received: 0 });
    }
}
