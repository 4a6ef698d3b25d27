//! The envelope and delivery state of one queued message, stored as JSON beside its body.

use serde::{Deserialize, Serialize};

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
