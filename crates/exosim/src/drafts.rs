//! Graph state beyond single requests: draft messages, attachment upload sessions (the
//! large-message path of reference §1e) and the per-mailbox-per-app request log behind the
//! 10,000 requests / 10 minutes budget.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

/// The request budget's window.
pub(crate) const BUDGET_WINDOW: Duration = Duration::from_secs(600);

/// A file attachment, complete.
#[derive(Clone, Debug)]
pub(crate) struct Attachment {
    pub(crate) name: String,
    pub(crate) content_type: String,
    pub(crate) data: Vec<u8>,
}

/// A draft created with `POST /users/{upn}/messages`.
#[derive(Clone, Debug)]
pub(crate) struct Draft {
    pub(crate) mailbox: String,
    /// The Graph message resource as the client sent it (`Null` for a MIME draft).
    pub(crate) message: serde_json::Value,
    /// The MIME message, for a draft created from MIME (`Content-Type: text/plain`, base64).
    pub(crate) mime: Option<Vec<u8>>,
    pub(crate) attachments: Vec<Attachment>,
}

/// An attachment upload session (`createUploadSession`).
#[derive(Clone, Debug)]
pub(crate) struct Upload {
    pub(crate) draft_id: String,
    /// The secret in the upload URL (the PUTs carry no Authorization header).
    pub(crate) authtoken: String,
    pub(crate) name: String,
    pub(crate) content_type: String,
    pub(crate) size: u64,
    pub(crate) data: Vec<u8>,
    pub(crate) expires_at: SystemTime,
}

#[derive(Debug, Default)]
pub(crate) struct GraphState {
    pub(crate) drafts: HashMap<String, Draft>,
    pub(crate) uploads: HashMap<String, Upload>,
    /// Request times per `identity:mailbox`, oldest first.
    pub(crate) requests: HashMap<String, VecDeque<SystemTime>>,
}
