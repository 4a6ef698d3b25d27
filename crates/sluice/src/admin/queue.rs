//! The queue API of the admin interface (behind the token), on `scheduler::control`:
//!
//! | method and path | what |
//! |---|---|
//! | `GET /api/queue?sender=&recipient=&upstream=&older_than=&newer_than=&state=` | the messages, filtered |
//! | `GET /api/queue/summary` | counts by state and by age |
//! | `GET /api/queue/{id}` | one message with its headers |
//! | `POST /api/queue/{id}/retry`, `/hold`, `/release`, `/bounce` | act on one message |
//! | `DELETE /api/queue/{id}` | remove it, no DSN |
//! | `POST /api/queue/retry` (all), `POST /api/queue/flush` (deferred ones) | make mail due now |
//! | `GET /api/holds`, `POST /api/holds/release` | the route's hold (Microsoft configuration trouble) |
//!
//! Bodies of actions may carry `{"by": "...", "reason": "..."}` for the log. Errors are
//! `{"error": "..."}`: 404 for an unknown id, 409 for a message being delivered (try again) or an action
//! that does not apply (retry of a held message), 500 when the spool refused the change.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tracing::error;

use super::AdminState;
use crate::scheduler::control::{ControlError, MessageDetail, MessageInfo, MessageState, Requester, age};
use crate::spool::now_ms;

/// The queue routes, to be merged behind the token.
pub fn routes() -> Router<Arc<AdminState>> {
    Router::new()
        .route("/api/queue", get(list))
        .route("/api/queue/summary", get(summary))
        .route("/api/queue/retry", post(retry_all))
        .route("/api/queue/flush", post(flush))
        .route("/api/queue/{id}", get(show).delete(delete))
        .route("/api/queue/{id}/retry", post(retry))
        .route("/api/queue/{id}/hold", post(hold))
        .route("/api/queue/{id}/release", post(release))
        .route("/api/queue/{id}/bounce", post(bounce))
        .route("/api/holds", get(holds))
        .route("/api/holds/release", post(release_holds))
}

/// Which messages a listing shows. Every condition given must hold.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct QueueFilter {
    /// Sender: a substring, or a glob (`*`, `?`) matched against the whole address; case-insensitive.
    /// `<>` matches the null sender.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    /// Any recipient, as for the sender.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    /// The upstream's name (`host:port`), as for the sender.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Only messages queued longer ago than this.
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub older_than: Option<Duration>,
    /// Only messages queued more recently than this.
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub newer_than: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<MessageState>,
}

impl QueueFilter {
    pub fn matches(&self, message: &MessageInfo, now_ms: u64) -> bool {
        let age = age(message.received_at_ms, now_ms);
        let sender = if message.sender.is_empty() { "<>" } else { message.sender.as_str() };
        self.sender.as_deref().is_none_or(|p| text_matches(p, sender))
            && self.recipient.as_deref().is_none_or(|p| message.recipients.iter().any(|r| text_matches(p, &r.address)))
            && self.upstream.as_deref().is_none_or(|p| text_matches(p, &message.upstream))
            && self.older_than.is_none_or(|d| age > d)
            && self.newer_than.is_none_or(|d| age < d)
            && self.state.is_none_or(|s| message.state == s)
    }
}

/// A pattern with `*` or `?` is a glob over the whole text; anything else a substring. Case-insensitive.
pub fn text_matches(pattern: &str, text: &str) -> bool {
    let (pattern, text) = (pattern.to_lowercase(), text.to_lowercase());
    if pattern.contains(['*', '?']) { glob(pattern.as_bytes(), text.as_bytes()) } else { text.contains(&pattern) }
}

/// `*` any run of bytes, `?` one byte; iterative with one backtrack point (linear enough for addresses).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Ages a summary counts by: under 5 minutes, under an hour, under a day, older.
pub const AGE_BUCKETS: [(&str, Duration); 3] =
    [("<5m", Duration::from_secs(5 * 60)), ("<1h", Duration::from_secs(3600)), ("<1d", Duration::from_secs(24 * 3600))];
/// The last bucket's name.
pub const OLDER: &str = "older";

/// Counts of the queue for `sluice queue summary`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct QueueSummary {
    pub messages: usize,
    pub bytes: u64,
    pub recipients_pending: usize,
    /// (state, count) for every state, in `MessageState::ALL` order.
    pub by_state: Vec<(MessageState, usize)>,
    /// (bucket, count) for `AGE_BUCKETS` then `OLDER`.
    pub by_age: Vec<(String, usize)>,
    /// Unix ms when the oldest message was accepted.
    pub oldest_ms: Option<u64>,
}

/// The age bucket of a message of this age.
pub fn age_bucket(age: Duration) -> &'static str {
    AGE_BUCKETS.iter().find(|(_, limit)| age < *limit).map_or(OLDER, |(name, _)| name)
}

pub fn summarize(messages: &[MessageInfo], now_ms: u64) -> QueueSummary {
    let mut by_age: Vec<(String, usize)> =
        AGE_BUCKETS.iter().map(|(n, _)| n.to_string()).chain([OLDER.to_string()]).map(|n| (n, 0)).collect();
    let mut by_state: Vec<(MessageState, usize)> = MessageState::ALL.iter().map(|s| (*s, 0)).collect();
    for m in messages {
        let bucket = age_bucket(age(m.received_at_ms, now_ms));
        if let Some(entry) = by_age.iter_mut().find(|(n, _)| n == bucket) {
            entry.1 += 1;
        }
        if let Some(entry) = by_state.iter_mut().find(|(s, _)| *s == m.state) {
            entry.1 += 1;
        }
    }
    QueueSummary {
        messages: messages.len(),
        bytes: messages.iter().map(|m| m.size).sum(),
        recipients_pending: messages
            .iter()
            .flat_map(|m| &m.recipients)
            .filter(|r| r.status == crate::spool::RecipientStatus::Pending)
            .count(),
        by_state,
        by_age,
        oldest_ms: messages.iter().map(|m| m.received_at_ms).min(),
    }
}

/// What an action answers.
#[derive(Debug, Serialize, Deserialize)]
pub struct ActionResult {
    /// One sentence for the admin.
    pub message: String,
    /// How many messages it concerned (retry all, flush).
    #[serde(default)]
    pub count: usize,
    /// The DSN's queue id (bounce).
    #[serde(default)]
    pub dsn_id: Option<String>,
}

impl ActionResult {
    fn said(message: String) -> Json<ActionResult> {
        Json(ActionResult { message, count: 1, dsn_id: None })
    }
}

/// A route hold, as `GET /api/holds` lists it.
#[derive(Debug, Serialize, Deserialize)]
pub struct RouteHold {
    pub upstream: String,
    pub reason: String,
    pub since_ms: u64,
    pub recheck_in_seconds: u64,
    pub held_messages: usize,
}

/// An error as JSON with its status.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> ApiError {
        let status = match &e {
            ControlError::NotFound(_) => StatusCode::NOT_FOUND,
            ControlError::Busy(_) | ControlError::Conflict(_) => StatusCode::CONFLICT,
            ControlError::Spool { .. } => {
                error!(error = %e, "queue action failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError(status, e.to_string())
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// The body of an action, which may be empty.
fn requester(body: Option<Json<Requester>>) -> Requester {
    body.map(|Json(r)| r).unwrap_or_default()
}

async fn list(State(state): State<Arc<AdminState>>, Query(filter): Query<QueueFilter>) -> Json<Vec<MessageInfo>> {
    let now = now_ms();
    Json(state.scheduler.list().into_iter().filter(|m| filter.matches(m, now)).collect())
}

async fn summary(State(state): State<Arc<AdminState>>) -> Json<QueueSummary> {
    Json(summarize(&state.scheduler.list(), now_ms()))
}

async fn show(State(state): State<Arc<AdminState>>, Path(id): Path<String>) -> ApiResult<MessageDetail> {
    Ok(Json(state.scheduler.show(&id).await?))
}

async fn retry(State(state): State<Arc<AdminState>>, Path(id): Path<String>) -> ApiResult<ActionResult> {
    state.scheduler.retry(&id).await?;
    Ok(ActionResult::said(format!("{id}: due now")))
}

async fn retry_all(State(state): State<Arc<AdminState>>) -> ApiResult<ActionResult> {
    let count = state.scheduler.retry_all().await?;
    Ok(Json(ActionResult { message: format!("{count} message(s) due now"), count, dsn_id: None }))
}

async fn flush(State(state): State<Arc<AdminState>>) -> ApiResult<ActionResult> {
    let count = state.scheduler.flush().await?;
    Ok(Json(ActionResult { message: format!("{count} deferred message(s) due now"), count, dsn_id: None }))
}

async fn hold(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
    body: Option<Json<Requester>>,
) -> ApiResult<ActionResult> {
    state.scheduler.hold(&id, &requester(body)).await?;
    Ok(ActionResult::said(format!("{id}: held until released")))
}

async fn release(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
    body: Option<Json<Requester>>,
) -> ApiResult<ActionResult> {
    state.scheduler.release(&id, &requester(body)).await?;
    Ok(ActionResult::said(format!("{id}: released, due now")))
}

async fn delete(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
    body: Option<Json<Requester>>,
) -> ApiResult<ActionResult> {
    state.scheduler.delete(&id, &requester(body)).await?;
    Ok(ActionResult::said(format!("{id}: deleted (no DSN sent)")))
}

async fn bounce(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
    body: Option<Json<Requester>>,
) -> ApiResult<ActionResult> {
    let dsn_id = state.scheduler.bounce(&id, &requester(body)).await?;
    let message = match &dsn_id {
        Some(dsn) => format!("{id}: bounced to its sender (DSN {dsn}) and removed"),
        None => format!("{id}: removed (a bounce itself: no DSN)"),
    };
    Ok(Json(ActionResult { message, count: 1, dsn_id }))
}

async fn holds(State(state): State<Arc<AdminState>>) -> Json<Vec<RouteHold>> {
    let holds = state.scheduler.holds().into_iter().map(|(upstream, h)| RouteHold {
        upstream,
        reason: h.reason,
        since_ms: h.since_ms,
        recheck_in_seconds: h.recheck_in.as_secs(),
        held_messages: h.held_messages,
    });
    Json(holds.collect())
}

/// Which route hold to lift: one upstream's, or (no body) every one.
#[derive(Debug, Default, Deserialize)]
pub struct ReleaseHold {
    pub upstream: Option<String>,
}

async fn release_holds(
    State(state): State<Arc<AdminState>>,
    body: Option<Json<ReleaseHold>>,
) -> ApiResult<ActionResult> {
    let upstream = body.and_then(|Json(b)| b.upstream);
    let released = match &upstream {
        Some(name) => {
            if !state.scheduler.upstreams().iter().any(|u| u == name) {
                return Err(ApiError(StatusCode::NOT_FOUND, format!("no upstream named {name:?}")));
            }
            state.scheduler.release_hold_of(name)
        }
        None => state.scheduler.release_hold(),
    };
    let message = match (released, &upstream) {
        (true, Some(name)) => format!("the hold on {name} is released; its mail is due now"),
        (true, None) => "route holds released; their mail is due now".to_owned(),
        (false, Some(name)) => format!("{name} was not held"),
        (false, None) => "no route was held".to_owned(),
    };
    Ok(Json(ActionResult { message, count: usize::from(released), dsn_id: None }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::control::RecipientInfo;
    use crate::spool::RecipientStatus;

    const MIN: u64 = 60_000;

    fn message(sender: &str, recipients: &[&str], received_at_ms: u64, state: MessageState) -> MessageInfo {
        MessageInfo {
            id: "0000000000000001".into(),
            sender: sender.into(),
            recipients: recipients
                .iter()
                .map(|a| RecipientInfo { address: a.to_string(), status: RecipientStatus::Pending, last_reply: None })
                .collect(),
            size: 100,
            received_at_ms,
            attempts: 0,
            next_attempt_ms: Some(received_at_ms),
            last_reply: None,
            state,
            upstream: "smtp.office365.com:587".into(),
            hold: None,
        }
    }

    #[test]
    fn patterns_are_substrings_or_whole_globs() {
        assert!(text_matches("alice", "Alice@Client.test"));
        assert!(text_matches("@client.test", "alice@client.test"));
        assert!(!text_matches("bob", "alice@client.test"));
        assert!(text_matches("*@client.test", "alice@client.test"));
        assert!(!text_matches("*@client", "alice@client.test"), "a glob matches the whole address");
        assert!(text_matches("a?ice@*", "alice@client.test"));
        assert!(text_matches("*", ""));
        assert!(text_matches("a*b*c", "axxbyyc"));
        assert!(!text_matches("a*b*c", "axxbyy"));
        assert!(text_matches("*office365*", "smtp.office365.com:587"));
    }

    #[test]
    fn filters_combine() {
        let now = 10_000 * MIN;
        let m = message(
            "alice@client.test",
            &["bob@example.test", "carol@other.test"],
            now - 30 * MIN,
            MessageState::Deferred,
        );
        let all = QueueFilter::default();
        assert!(all.matches(&m, now));
        let by = |f: QueueFilter| f.matches(&m, now);
        assert!(by(QueueFilter { sender: Some("alice".into()), ..all.clone() }));
        assert!(!by(QueueFilter { sender: Some("bob".into()), ..all.clone() }));
        assert!(by(QueueFilter { recipient: Some("*@other.test".into()), ..all.clone() }));
        assert!(!by(QueueFilter { recipient: Some("dave".into()), ..all.clone() }));
        assert!(by(QueueFilter { upstream: Some("office365".into()), ..all.clone() }));
        assert!(!by(QueueFilter { upstream: Some("example.net".into()), ..all.clone() }));
        assert!(by(QueueFilter { older_than: Some(Duration::from_secs(600)), ..all.clone() }));
        assert!(!by(QueueFilter { older_than: Some(Duration::from_secs(3600)), ..all.clone() }));
        assert!(by(QueueFilter { newer_than: Some(Duration::from_secs(3600)), ..all.clone() }));
        assert!(!by(QueueFilter { newer_than: Some(Duration::from_secs(600)), ..all.clone() }));
        assert!(by(QueueFilter { state: Some(MessageState::Deferred), ..all.clone() }));
        assert!(!by(QueueFilter { state: Some(MessageState::Held), ..all.clone() }));
        assert!(!by(QueueFilter { sender: Some("alice".into()), state: Some(MessageState::Held), ..all.clone() }));
        let bounce = message("", &["alice@client.test"], now, MessageState::Queued);
        assert!(QueueFilter { sender: Some("<>".into()), ..all }.matches(&bounce, now));
    }

    #[test]
    fn filters_read_from_a_query_string() {
        let filter: QueueFilter =
            serde_urlencoded_like("sender=alice&older_than=1h%2030m&state=route-held").expect("parses");
        assert_eq!(filter.sender.as_deref(), Some("alice"));
        assert_eq!(filter.older_than, Some(Duration::from_secs(5400)));
        assert_eq!(filter.state, Some(MessageState::RouteHeld));
    }

    /// What axum's `Query` does with a query string.
    fn serde_urlencoded_like(query: &str) -> Option<QueueFilter> {
        let uri: axum::http::Uri = format!("/api/queue?{query}").parse().ok()?;
        Query::<QueueFilter>::try_from_uri(&uri).ok().map(|q| q.0)
    }

    #[test]
    fn ages_fall_in_buckets() {
        assert_eq!(age_bucket(Duration::ZERO), "<5m");
        assert_eq!(age_bucket(Duration::from_secs(299)), "<5m");
        assert_eq!(age_bucket(Duration::from_secs(300)), "<1h");
        assert_eq!(age_bucket(Duration::from_secs(3599)), "<1h");
        assert_eq!(age_bucket(Duration::from_secs(3600)), "<1d");
        assert_eq!(age_bucket(Duration::from_secs(86_399)), "<1d");
        assert_eq!(age_bucket(Duration::from_secs(86_400)), "older");
    }

    #[test]
    fn a_summary_counts_states_and_ages() {
        let now = 100_000 * MIN;
        let messages = [
            message("a@x.test", &["b@y.test"], now - MIN, MessageState::Queued),
            message("a@x.test", &["b@y.test", "c@y.test"], now - 10 * MIN, MessageState::Deferred),
            message("a@x.test", &["b@y.test"], now - 2 * 24 * 60 * MIN, MessageState::Held),
        ];
        let summary = summarize(&messages, now);
        assert_eq!(summary.messages, 3);
        assert_eq!(summary.bytes, 300);
        assert_eq!(summary.recipients_pending, 4);
        assert_eq!(summary.oldest_ms, Some(now - 2 * 24 * 60 * MIN));
        let count = |s: MessageState| summary.by_state.iter().find(|(x, _)| *x == s).unwrap().1;
        assert_eq!((count(MessageState::Queued), count(MessageState::Deferred), count(MessageState::Held)), (1, 1, 1));
        assert_eq!(count(MessageState::Active) + count(MessageState::RouteHeld), 0);
        let ages: Vec<(&str, usize)> = summary.by_age.iter().map(|(n, c)| (n.as_str(), *c)).collect();
        assert_eq!(ages, [("<5m", 1), ("<1h", 1), ("<1d", 0), ("older", 1)]);
    }
}
