//! Queue control for the administrator: look at the queue, and retry, hold, release, delete or bounce a
//! message (the admin interface's queue API and `sluice queue` sit on this).
//!
//! The rules are the scheduler's own. A message is changed only while nobody else has it: an action
//! takes it out of `waiting` (as a worker would), writes the new state to the spool, and only then puts
//! it back in memory; if the spool refuses, the message goes back as it was and the action fails. A
//! message a worker is delivering right now is answered with [`ControlError::Busy`] ("try again"), never
//! changed under the worker's feet.
//!
//! An admin hold is kept in the record ([`AdminHold`]), with the due time [`HELD_UNTIL_RELEASED`]: the
//! message is never taken by a worker, never expires, and stays held across restarts.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{DsnVerdict, Inner, Scheduler};
use crate::dsn::FailedRecipient;
use crate::spool::{AdminHold, HELD_UNTIL_RELEASED, QueueRecord, RecipientStatus, now_ms};

/// Where a message stands, as `sluice queue` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MessageState {
    /// Not attempted yet.
    Queued,
    /// Attempted, waiting for its next attempt.
    Deferred,
    /// Held by an administrator: not attempted until released.
    Held,
    /// In a worker's hands right now (or an admin action's, for the moment it writes the spool).
    Active,
    /// Set aside with its route, which the upstream refused for a configuration reason.
    RouteHeld,
}

impl MessageState {
    pub const ALL: [MessageState; 5] = [
        MessageState::Queued,
        MessageState::Deferred,
        MessageState::Held,
        MessageState::Active,
        MessageState::RouteHeld,
    ];

    pub fn name(self) -> &'static str {
        match self {
            MessageState::Queued => "queued",
            MessageState::Deferred => "deferred",
            MessageState::Held => "held",
            MessageState::Active => "active",
            MessageState::RouteHeld => "route-held",
        }
    }
}

impl fmt::Display for MessageState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for MessageState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        MessageState::ALL.into_iter().find(|state| state.name().eq_ignore_ascii_case(s)).ok_or_else(|| {
            let names: Vec<_> = MessageState::ALL.iter().map(|s| s.name()).collect();
            format!("unknown state {s:?} (one of {})", names.join(", "))
        })
    }
}

/// One recipient of a queued message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RecipientInfo {
    pub address: String,
    pub status: RecipientStatus,
    pub last_reply: Option<String>,
}

/// One queued message, as listed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MessageInfo {
    pub id: String,
    /// Envelope sender; empty for a bounce (`<>`).
    pub sender: String,
    pub recipients: Vec<RecipientInfo>,
    pub size: u64,
    /// Unix ms when it was accepted.
    pub received_at_ms: u64,
    pub attempts: u32,
    /// Unix ms of the next attempt; None while an administrator holds it.
    pub next_attempt_ms: Option<u64>,
    pub last_reply: Option<String>,
    pub state: MessageState,
    /// The upstream it goes to.
    pub upstream: String,
    /// Who held it and why, while held.
    pub hold: Option<AdminHold>,
}

/// One message with its header section, for `sluice queue show`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessageDetail {
    #[serde(flatten)]
    pub info: MessageInfo,
    /// Who handed it to us (HELO, address, user).
    pub client: String,
    /// The header section as queued (CRLF line endings).
    pub headers: String,
}

/// Who asks for an action and why, for the log (the token does not name a person, so `by` is what the
/// command line says).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Requester {
    #[serde(default)]
    pub by: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

impl Requester {
    fn by(&self) -> &str {
        self.by.as_deref().filter(|b| !b.is_empty()).unwrap_or("admin")
    }
    fn reason(&self) -> &str {
        self.reason.as_deref().unwrap_or("")
    }
}

/// Why an action was not done.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no message {0} in the queue")]
    NotFound(String),
    #[error("message {0} is being delivered right now; try again in a moment")]
    Busy(String),
    /// The action does not apply to the message as it stands (held, not held…).
    #[error("{0}")]
    Conflict(String),
    #[error("the spool refused the change to {id}: {error}")]
    Spool { id: String, error: std::io::Error },
}

/// What the header section of a `show` is cut to (a runaway header section is not worth a megabyte).
const MAX_SHOWN_HEADERS: usize = 64 * 1024;

impl Scheduler {
    /// A snapshot of the whole queue: messages waiting and messages in a worker's hands, oldest first.
    pub fn list(&self) -> Vec<MessageInfo> {
        let route_held = self.route_held_ids();
        let queue = self.inner.queue.lock().expect("queue lock");
        let mut list: Vec<MessageInfo> = queue
            .waiting
            .values()
            .map(|r| info_of(r, false, &route_held, self.upstream_of(r)))
            // A record is in one of the two maps, never both (taking it moves it).
            .chain(queue.active.values().map(|r| info_of(r, true, &route_held, self.upstream_of(r))))
            .collect();
        drop(queue);
        list.sort_by(|a, b| (a.received_at_ms, &a.id).cmp(&(b.received_at_ms, &b.id)));
        list
    }

    /// One message with its headers read from the spool.
    pub async fn show(&self, id: &str) -> Result<MessageDetail, ControlError> {
        let (info, client) = {
            let route_held = self.route_held_ids();
            let queue = self.inner.queue.lock().expect("queue lock");
            match (queue.waiting.get(id), queue.active.get(id)) {
                (Some(r), _) => (info_of(r, false, &route_held, self.upstream_of(r)), r.client.clone()),
                (None, Some(r)) => (info_of(r, true, &route_held, self.upstream_of(r)), r.client.clone()),
                (None, None) => return Err(ControlError::NotFound(id.to_owned())),
            }
        };
        let spool = self.inner.spool.clone();
        let owned = id.to_owned();
        let body = tokio::task::spawn_blocking(move || spool.read_body(&owned))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(|error| match error.kind() {
                // Delivered (or deleted) between the snapshot and the read.
                std::io::ErrorKind::NotFound => ControlError::NotFound(id.to_owned()),
                _ => ControlError::Spool { id: id.to_owned(), error },
            })?;
        Ok(MessageDetail { info, client, headers: header_section(&body) })
    }

    /// Makes a message due now. A held message must be released first.
    pub async fn retry(&self, id: &str) -> Result<(), ControlError> {
        self.retry_where(id, |_| true).await?;
        self.after_admin_request();
        Ok(())
    }

    /// Makes every message due now, except held ones and those being delivered. Returns how many.
    pub async fn retry_all(&self) -> Result<usize, ControlError> {
        self.retry_many(|_| true).await
    }

    /// Like `postqueue -f`: every deferred message due now. Returns how many.
    pub async fn flush(&self) -> Result<usize, ControlError> {
        self.retry_many(|r| r.attempts > 0).await
    }

    /// Holds a message: not attempted, does not expire, kept across restarts, until [`Scheduler::release`].
    pub async fn hold(&self, id: &str, who: &Requester) -> Result<(), ControlError> {
        let record = self.checkout(id)?;
        if record.admin_hold.is_some() {
            self.checkin(record);
            return Err(ControlError::Conflict(format!("message {id} is already held")));
        }
        let mut held = record.clone();
        held.admin_hold = Some(AdminHold { since_ms: now_ms(), by: who.by().to_owned(), reason: who.reason.clone() });
        held.next_attempt_ms = HELD_UNTIL_RELEASED;
        self.write_or_restore(&held, record).await?;
        // Out of the route's hold too: lifting that must not make this message due.
        self.inner.forget_route_hold(id);
        warn!(queue_id = %id, by = %who.by(), reason = %who.reason(), "message held by the administrator");
        self.checkin(held);
        Ok(())
    }

    /// Lifts an admin hold: the message is due at once.
    pub async fn release(&self, id: &str, who: &Requester) -> Result<(), ControlError> {
        let record = self.checkout(id)?;
        if record.admin_hold.is_none() {
            self.checkin(record);
            return Err(ControlError::Conflict(format!("message {id} is not held")));
        }
        let mut released = record.clone();
        released.admin_hold = None;
        released.next_attempt_ms = now_ms();
        self.write_or_restore(&released, record).await?;
        info!(queue_id = %id, by = %who.by(), "message released by the administrator");
        self.checkin(released);
        self.after_admin_request();
        Ok(())
    }

    /// Removes a message from the spool without a DSN to anyone.
    pub async fn delete(&self, id: &str, who: &Requester) -> Result<(), ControlError> {
        let record = self.checkout(id)?;
        let sender = record.sender.clone();
        let pending = record.pending().count();
        self.remove_or_restore(record).await?;
        warn!(
            queue_id = %id,
            sender = %sender,
            pending,
            by = %who.by(),
            reason = %who.reason(),
            "message deleted by the administrator (no DSN)"
        );
        Ok(())
    }

    /// Returns a message to its sender: a DSN for every pending recipient ("deleted by the
    /// administrator"), durable before the message is removed. A bounce (null sender) is only deleted.
    /// Returns the DSN's queue id, if one was sent.
    pub async fn bounce(&self, id: &str, who: &Requester) -> Result<Option<String>, ControlError> {
        let record = self.checkout(id)?;
        let mut failed: Vec<FailedRecipient> = record
            .pending()
            .map(|r| FailedRecipient {
                address: r.address.clone(),
                status: "5.0.0".into(),
                smtp_diagnostic: None,
                explanation: match who.reason.as_deref().filter(|r| !r.is_empty()) {
                    Some(reason) => format!("deleted by the administrator ({reason})"),
                    None => "deleted by the administrator".into(),
                },
            })
            .collect();
        if record.is_bounce() {
            failed.clear(); // no bounce of a bounce
        }
        let dsn_id = if failed.is_empty() {
            None
        } else {
            match self.inner.queue_dsn(self.inner.lane_of(&record), &record, &failed, DsnVerdict::Administrator).await {
                Ok(dsn) => Some(dsn),
                Err(error) => {
                    self.checkin(record);
                    return Err(ControlError::Spool { id: id.to_owned(), error });
                }
            }
        };
        // The DSN is durable: from here on the message is finished, whatever happens to its files.
        let mut finished = record;
        for rcpt in finished.recipients.iter_mut().filter(|r| r.status == RecipientStatus::Pending) {
            rcpt.status = RecipientStatus::Failed;
            rcpt.last_reply = Some("deleted by the administrator".into());
        }
        warn!(
            queue_id = %id,
            sender = %finished.sender,
            dsn = dsn_id.as_deref().unwrap_or("none (null sender)"),
            by = %who.by(),
            reason = %who.reason(),
            "message bounced by the administrator"
        );
        // Should the removal fail, the finished record goes back: the next worker to take it finds nothing
        // pending and removes it.
        self.remove_or_restore(finished).await?;
        Ok(dsn_id)
    }

    /// Takes a message out of `waiting` so that nobody else changes it while an action writes the spool.
    fn checkout(&self, id: &str) -> Result<QueueRecord, ControlError> {
        let mut queue = self.inner.queue.lock().expect("queue lock");
        match queue.waiting.remove(id) {
            Some(record) => {
                queue.active.insert(id.to_owned(), record.clone());
                Ok(record)
            }
            None if queue.active.contains_key(id) => Err(ControlError::Busy(id.to_owned())),
            None => Err(ControlError::NotFound(id.to_owned())),
        }
    }

    /// Puts a checked-out message back, due at its `next_attempt_ms`.
    fn checkin(&self, record: QueueRecord) {
        self.inner.requeue(record);
    }

    /// Writes `new`; on failure puts `old` back and reports the error.
    async fn write_or_restore(&self, new: &QueueRecord, old: QueueRecord) -> Result<(), ControlError> {
        let spool = self.inner.spool.clone();
        let to_write = new.clone();
        let written = tokio::task::spawn_blocking(move || spool.update(&to_write))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
        written.map_err(|error| {
            let id = old.id.clone();
            self.checkin(old);
            ControlError::Spool { id, error }
        })
    }

    /// Removes a checked-out message from the spool, then from memory; on failure it goes back.
    async fn remove_or_restore(&self, record: QueueRecord) -> Result<(), ControlError> {
        let spool = self.inner.spool.clone();
        let id = record.id.clone();
        let removed = {
            let id = id.clone();
            tokio::task::spawn_blocking(move || spool.remove(&id)).await.map_err(std::io::Error::other).and_then(|r| r)
        };
        match removed {
            Ok(()) => {
                self.inner.queue.lock().expect("queue lock").active.remove(&id);
                self.inner.forget_route_hold(&id);
                Ok(())
            }
            Err(error) => {
                self.checkin(record);
                Err(ControlError::Spool { id, error })
            }
        }
    }

    /// Makes one message due now if `select` says so; `Ok(false)` when it was not selected.
    async fn retry_where(&self, id: &str, select: impl Fn(&QueueRecord) -> bool) -> Result<bool, ControlError> {
        let record = self.checkout(id)?;
        if record.admin_hold.is_some() {
            self.checkin(record);
            return Err(ControlError::Conflict(format!(
                "message {id} is held by the administrator; release it to deliver it"
            )));
        }
        if !select(&record) {
            self.checkin(record);
            return Ok(false);
        }
        let mut due = record.clone();
        due.next_attempt_ms = now_ms();
        self.write_or_restore(&due, record).await?;
        self.checkin(due);
        Ok(true)
    }

    async fn retry_many(&self, select: impl Fn(&QueueRecord) -> bool) -> Result<usize, ControlError> {
        let ids: Vec<String> = {
            let queue = self.inner.queue.lock().expect("queue lock");
            queue.waiting.values().filter(|r| r.admin_hold.is_none() && select(r)).map(|r| r.id.clone()).collect()
        };
        let mut count = 0;
        for id in ids {
            match self.retry_where(&id, &select).await {
                Ok(true) => count += 1,
                Ok(false) => {}
                // Delivered, taken by a worker or held since the snapshot: nothing to do for it.
                Err(ControlError::NotFound(_) | ControlError::Busy(_) | ControlError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        if count > 0 {
            self.after_admin_request();
        }
        Ok(count)
    }

    /// The admin asks for attempts now: forget a cached "upstream down" (the admin may just have fixed
    /// it), and wake the workers.
    fn after_admin_request(&self) {
        for lane in &self.inner.lanes {
            *lane.upstream_down.lock().expect("down lock") = None;
            lane.wake.notify_waiters();
            lane.wake.notify_one();
        }
    }

    /// The name of the upstream a record goes to, as listings show it.
    fn upstream_of(&self, record: &QueueRecord) -> &str {
        &self.inner.lanes[self.inner.lane_of(record)].upstream.name
    }

    /// Messages put aside by a route hold that is in force, on any upstream.
    pub(super) fn route_held_ids(&self) -> HashSet<String> {
        let mut held = HashSet::new();
        for lane in &self.inner.lanes {
            let route = lane.route.lock().expect("route lock");
            if route.hold.is_some() {
                held.extend(route.held_ids.iter().cloned());
            }
        }
        held
    }
}

impl Inner {
    /// Takes a message out of every route hold's list.
    fn forget_route_hold(&self, id: &str) {
        for lane in &self.lanes {
            lane.route.lock().expect("route lock").held_ids.remove(id);
        }
    }
}

/// Where a message stands: the one answer for listings, summaries, metrics and the status page.
/// `route_held` is [`Scheduler::route_held_ids`].
pub(super) fn state_of(record: &QueueRecord, active: bool, route_held: &HashSet<String>) -> MessageState {
    if active {
        MessageState::Active
    } else if record.admin_hold.is_some() {
        MessageState::Held
    } else if route_held.contains(&record.id) {
        MessageState::RouteHeld
    } else if record.attempts > 0 {
        MessageState::Deferred
    } else {
        MessageState::Queued
    }
}

fn info_of(record: &QueueRecord, active: bool, route_held: &HashSet<String>, upstream: &str) -> MessageInfo {
    let state = state_of(record, active, route_held);
    MessageInfo {
        id: record.id.clone(),
        sender: record.sender.clone(),
        recipients: record
            .recipients
            .iter()
            .map(|r| RecipientInfo { address: r.address.clone(), status: r.status, last_reply: r.last_reply.clone() })
            .collect(),
        size: record.size,
        received_at_ms: record.received_at_ms,
        attempts: record.attempts,
        next_attempt_ms: (record.next_attempt_ms != HELD_UNTIL_RELEASED).then_some(record.next_attempt_ms),
        last_reply: record.last_reply.clone(),
        state,
        upstream: upstream.to_owned(),
        hold: record.admin_hold.clone(),
    }
}

/// The header section of a message (up to the empty line), cut to [`MAX_SHOWN_HEADERS`].
fn header_section(body: &[u8]) -> String {
    let end = body.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 2).unwrap_or(body.len());
    let end = end.min(MAX_SHOWN_HEADERS);
    String::from_utf8_lossy(&body[..end]).into_owned()
}

/// How long ago `then_ms` was, at `now_ms`.
pub fn age(then_ms: u64, now_ms: u64) -> Duration {
    Duration::from_millis(now_ms.saturating_sub(then_ms))
}
