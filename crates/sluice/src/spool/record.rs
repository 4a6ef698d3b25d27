//! The envelope and delivery state of one queued message, stored as JSON beside its body.

use serde::{Deserialize, Serialize};

use crate::routing::RouteChoice;

/// Bumped when the record layout changes incompatibly; recovery quarantines records it cannot read.
pub const RECORD_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QueueRecord {
    pub version: u32,
    pub id: String,
    /// Envelope sender; empty for the null reverse-path `<>` (bounces), which is never bounced to.
    pub sender: String,
    pub recipients: Vec<RecipientState>,
    /// Unix time in milliseconds when the message was accepted.
    pub received_at_ms: u64,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// Unix time in milliseconds when the next attempt is due.
    pub next_attempt_ms: u64,
    /// The last upstream reply or error for the message as a whole (per-recipient replies are below).
    pub last_reply: Option<String>,
    /// Size of the body file in bytes; recovery compares it to detect a truncated body.
    pub size: u64,
    /// The content has octets above 127 (send with BODY=8BITMIME where the upstream offers it).
    pub eight_bit: bool,
    /// The envelope has non-ASCII addresses (needs SMTPUTF8 upstream).
    pub smtputf8: bool,
    /// Who handed us the message, for DSNs and logs.
    pub client: String,
    /// The route chosen at acceptance: upstream, pinned mailbox, sender rewrite. Absent in records
    /// written before routes existed (and in bounces of those): the default route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteChoice>,
    /// Set while an administrator holds the message (`sluice queue hold`): it is not attempted and does
    /// not expire, and `next_attempt_ms` is [`HELD_UNTIL_RELEASED`]. Absent in records written before
    /// admin holds existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_hold: Option<AdminHold>,
}

/// The due time of a message an administrator holds: never. Persisted as such, so that any code that
/// orders the queue by due time (and an older sluice reading this spool) leaves the message alone.
pub const HELD_UNTIL_RELEASED: u64 = u64::MAX;

/// Who held a message and why, kept in its record until it is released.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AdminHold {
    /// Unix ms when the hold began.
    pub since_ms: u64,
    /// Who asked, as the command line reported it (the token does not name a person).
    pub by: String,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RecipientStatus {
    /// Not yet delivered: due for (another) attempt.
    Pending,
    Delivered,
    /// Permanently failed; a DSN has been queued (unless the sender is null).
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RecipientState {
    pub address: String,
    pub status: RecipientStatus,
    /// The last reply or error concerning this recipient.
    pub last_reply: Option<String>,
}

impl QueueRecord {
    pub fn pending(&self) -> impl Iterator<Item = &RecipientState> {
        self.recipients.iter().filter(|r| r.status == RecipientStatus::Pending)
    }

    pub fn is_finished(&self) -> bool {
        self.pending().next().is_none()
    }

    pub fn is_bounce(&self) -> bool {
        self.sender.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record written before routes existed (no "route" key) still loads, on the default route.
    #[test]
    fn records_without_a_route_still_load() {
        let old = r#"{"version":1,"id":"q1","sender":"a@b.c","recipients":[{"address":"d@e.f","status":"pending",
            "last_reply":null}],"received_at_ms":1,"attempts":0,"next_attempt_ms":1,"last_reply":null,"size":10,
            "eight_bit":false,"smtputf8":false,"client":"x"}"#;
        let record: QueueRecord = serde_json::from_str(old).unwrap();
        assert_eq!(record.route, None);
        let written = serde_json::to_string(&record).unwrap();
        assert!(!written.contains("route"), "no route, no key: older sluice versions can read it back");

        let mut routed = record.clone();
        routed.route = Some(RouteChoice {
            upstream: "m365".into(),
            mailbox: Some("scanner@contoso.com".into()),
            sender_rewrite: Some(crate::config::SenderRewrite::Mailbox),
        });
        let back: QueueRecord = serde_json::from_str(&serde_json::to_string(&routed).unwrap()).unwrap();
        assert_eq!(back, routed);
    }
}
