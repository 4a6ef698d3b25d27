//! `sluice queue`: list, inspect and steer the queue of a running relay through its admin interface
//! (`admin/queue.rs` is the other side). Output like `mailq`: one block per message, then a summary;
//! `--json` prints what the API answered, for scripts. An unknown id is an error (exit status 1).

use std::time::Duration;

use chrono::{TimeZone, Utc};
use clap::Subcommand;
use serde_json::json;

use crate::admin::client::AdminClient;
use crate::admin::queue::{ActionResult, QueueFilter, QueueSummary, RouteHold};
use crate::scheduler::control::{MessageDetail, MessageInfo, MessageState, age};
use crate::spool::{RecipientStatus, now_ms};

#[derive(Subcommand, Debug)]
pub enum QueueCommand {
    /// List the queued messages (like mailq), with optional filters.
    List {
        #[command(flatten)]
        filter: ListFilter,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// One message in full: envelope, per-recipient replies, and its headers.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Make a message (or, with --all, every message not held) due now.
    Retry {
        #[arg(required_unless_present = "all")]
        id: Option<String>,
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
    /// Hold a message: it is not attempted and does not expire until released (kept across restarts).
    Hold {
        id: String,
        /// Why, for the log and the listing.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Release a held message: it is due at once.
    Release { id: String },
    /// Remove a message from the queue. Nobody is told (no DSN); the deletion is logged.
    Delete {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Return a message to its sender: a DSN ("deleted by the administrator") for every recipient not
    /// yet delivered, then remove it.
    Bounce {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Make every deferred message due now (like postqueue -f).
    Flush,
    /// Lift a route hold (after fixing its cause): the route's mail is due at once. Without an
    /// upstream name, every held route.
    ReleaseRoute { upstream: Option<String> },
    /// Counts by state and by age, and the route's hold if there is one.
    Summary {
        #[arg(long)]
        json: bool,
    },
}

/// Filters of `sluice queue list`; every one given must hold.
#[derive(clap::Args, Debug, Default)]
pub struct ListFilter {
    /// Sender contains this, or matches this glob (`*`, `?`) as a whole; `<>` for bounces.
    #[arg(long)]
    sender: Option<String>,
    /// A recipient contains this, or matches this glob as a whole.
    #[arg(long)]
    recipient: Option<String>,
    /// The upstream's name contains this, or matches this glob.
    #[arg(long)]
    upstream: Option<String>,
    /// Queued longer ago than this (e.g. 1h, 2d 4h).
    #[arg(long)]
    older_than: Option<humantime::Duration>,
    /// Queued more recently than this.
    #[arg(long)]
    newer_than: Option<humantime::Duration>,
    /// queued, deferred, held, active or route-held.
    #[arg(long)]
    state: Option<MessageState>,
}

impl ListFilter {
    fn to_filter(&self) -> QueueFilter {
        QueueFilter {
            sender: self.sender.clone(),
            recipient: self.recipient.clone(),
            upstream: self.upstream.clone(),
            older_than: self.older_than.map(Into::into),
            newer_than: self.newer_than.map(Into::into),
            state: self.state,
        }
    }
}

/// The query string of a filter, as `GET /api/queue` reads it.
pub fn query_string(filter: &QueueFilter) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    let text = [("sender", &filter.sender), ("recipient", &filter.recipient), ("upstream", &filter.upstream)];
    for (key, value) in text {
        if let Some(value) = value {
            query.append_pair(key, value);
        }
    }
    for (key, value) in [("older_than", filter.older_than), ("newer_than", filter.newer_than)] {
        if let Some(value) = value {
            query.append_pair(key, &humantime::format_duration(value).to_string());
        }
    }
    if let Some(state) = filter.state {
        query.append_pair("state", state.name());
    }
    let query = query.finish();
    if query.is_empty() { query } else { format!("?{query}") }
}

/// Runs one `sluice queue` command against the relay behind `client`.
pub async fn run(client: &AdminClient, command: QueueCommand) -> anyhow::Result<()> {
    match command {
        QueueCommand::List { filter, json } => {
            let path = format!("/api/queue{}", query_string(&filter.to_filter()));
            let messages: Vec<MessageInfo> = client.get(&path).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&messages)?);
            } else {
                print!("{}", render_list(&messages, now_ms()));
            }
        }
        QueueCommand::Show { id, json } => {
            let detail: MessageDetail = client.get(&format!("/api/queue/{}", path_segment(&id))).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&detail)?);
            } else {
                print!("{}", render_detail(&detail, now_ms()));
            }
        }
        QueueCommand::Retry { id: Some(id), .. } => act(client, &id, "retry", None).await?,
        QueueCommand::Retry { id: None, .. } => {
            let result: ActionResult = client.post("/api/queue/retry", &json!({})).await?;
            println!("{}", result.message);
        }
        QueueCommand::Hold { id, reason } => act(client, &id, "hold", reason).await?,
        QueueCommand::Release { id } => act(client, &id, "release", None).await?,
        QueueCommand::Bounce { id, reason } => act(client, &id, "bounce", reason).await?,
        QueueCommand::Delete { id, reason } => {
            let result: ActionResult =
                client.delete_with(&format!("/api/queue/{}", path_segment(&id)), &requester(reason)).await?;
            println!("{}", result.message);
        }
        QueueCommand::Flush => {
            let result: ActionResult = client.post("/api/queue/flush", &json!({})).await?;
            println!("{}", result.message);
        }
        QueueCommand::ReleaseRoute { upstream } => {
            let result: ActionResult = client.post("/api/holds/release", &json!({ "upstream": upstream })).await?;
            println!("{}", result.message);
        }
        QueueCommand::Summary { json } => {
            let summary: QueueSummary = client.get("/api/queue/summary").await?;
            let holds: Vec<RouteHold> = client.get("/api/holds").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&json!({ "queue": summary, "route_holds": holds }))?);
            } else {
                print!("{}", render_summary(&summary, &holds, now_ms()));
            }
        }
    }
    Ok(())
}

async fn act(client: &AdminClient, id: &str, action: &str, reason: Option<String>) -> anyhow::Result<()> {
    let result: ActionResult =
        client.post(&format!("/api/queue/{}/{action}", path_segment(id)), &requester(reason)).await?;
    println!("{}", result.message);
    Ok(())
}

/// Who asks (the token names nobody): the login name and host, for the relay's log.
fn requester(reason: Option<String>) -> serde_json::Value {
    let user = std::env::var("SUDO_USER").or_else(|_| std::env::var("USER")).unwrap_or_else(|_| "unknown".into());
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    json!({ "by": format!("{user}@{host}"), "reason": reason })
}

/// A queue id as one path segment (ids are hex; anything else is escaped rather than trusted).
fn path_segment(id: &str) -> String {
    form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>().replace('+', "%20")
}

fn timestamp(ms: u64) -> String {
    match Utc.timestamp_millis_opt(ms as i64).single() {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S").to_string(),
        None => format!("{ms} ms"),
    }
}

/// A duration in whole seconds (or minutes past an hour), for people.
fn short(d: Duration) -> String {
    let secs = if d.as_secs() >= 3600 { d.as_secs() / 60 * 60 } else { d.as_secs() };
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

fn status_name(status: RecipientStatus) -> &'static str {
    match status {
        RecipientStatus::Pending => "pending",
        RecipientStatus::Delivered => "delivered",
        RecipientStatus::Failed => "failed",
    }
}

/// One message as a block: id, size, arrival, state, then sender and recipients with their last reply.
pub fn render_message(m: &MessageInfo, now_ms: u64) -> String {
    let mut out =
        format!("{:<16} {:>9} {} UTC  {}", m.id, m.size, timestamp(m.received_at_ms), m.state.name().to_uppercase());
    let mut notes = vec![format!("age {}", short(age(m.received_at_ms, now_ms)))];
    notes.push(format!("{} attempt{}", m.attempts, if m.attempts == 1 { "" } else { "s" }));
    match m.next_attempt_ms {
        Some(next) if m.state != MessageState::Active => {
            if next > now_ms {
                notes.push(format!("next in {}", short(Duration::from_millis(next - now_ms))));
            } else {
                notes.push("due now".into());
            }
        }
        _ => {}
    }
    out.push_str(&format!("  ({})\n", notes.join(", ")));
    let sender = if m.sender.is_empty() { "<>" } else { &m.sender };
    out.push_str(&format!("    from {sender}  via {}\n", m.upstream));
    for r in &m.recipients {
        out.push_str(&format!("    to   {}  {}", r.address, status_name(r.status)));
        if let Some(reply) = &r.last_reply {
            out.push_str(&format!("  ({reply})"));
        }
        out.push('\n');
    }
    if let Some(hold) = &m.hold {
        out.push_str(&format!(
            "    held by {} since {} UTC{}\n",
            hold.by,
            timestamp(hold.since_ms),
            hold.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
        ));
    } else if let Some(reply) = &m.last_reply {
        out.push_str(&format!("    last reply: {reply}\n"));
    }
    out
}

/// `sluice queue list`: the blocks, then a one-line summary.
pub fn render_list(messages: &[MessageInfo], now_ms: u64) -> String {
    if messages.is_empty() {
        return "Mail queue is empty\n".into();
    }
    let mut out = String::from("-Queue ID-------  --Size-- ----Arrival Time----      -State-\n");
    for m in messages {
        out.push_str(&render_message(m, now_ms));
        out.push('\n');
    }
    let bytes: u64 = messages.iter().map(|m| m.size).sum();
    let counts: Vec<String> = MessageState::ALL
        .iter()
        .map(|s| format!("{} {}", messages.iter().filter(|m| m.state == *s).count(), s.name()))
        .collect();
    out.push_str(&format!(
        "-- {} Kbytes in {} message{} ({})\n",
        bytes.div_ceil(1024),
        messages.len(),
        if messages.len() == 1 { "" } else { "s" },
        counts.join(", ")
    ));
    out
}

/// `sluice queue show`: the block, who sent it, and the headers.
pub fn render_detail(detail: &MessageDetail, now_ms: u64) -> String {
    let mut out = render_message(&detail.info, now_ms);
    out.push_str(&format!("    client: {}\n\n", detail.client));
    for line in detail.headers.lines() {
        out.push_str(&format!("  | {line}\n"));
    }
    out
}

/// `sluice queue summary`: counts by state and by age, and route holds.
pub fn render_summary(summary: &QueueSummary, holds: &[RouteHold], now_ms: u64) -> String {
    let mut out = format!(
        "{} message{}, {} bytes, {} recipient{} pending",
        summary.messages,
        if summary.messages == 1 { "" } else { "s" },
        summary.bytes,
        summary.recipients_pending,
        if summary.recipients_pending == 1 { "" } else { "s" },
    );
    if let Some(oldest) = summary.oldest_ms {
        out.push_str(&format!(", oldest {} old", short(age(oldest, now_ms))));
    }
    out.push('\n');
    let states: Vec<String> = summary.by_state.iter().map(|(s, n)| format!("{} {n}", s.name())).collect();
    out.push_str(&format!("by state: {}\n", states.join(", ")));
    let ages: Vec<String> = summary.by_age.iter().map(|(b, n)| format!("{b} {n}")).collect();
    out.push_str(&format!("by age:   {}\n", ages.join(", ")));
    for hold in holds {
        out.push_str(&format!(
            "route held: {} since {} UTC, {} message(s) set aside, tried again in {}: {}\n",
            hold.upstream,
            timestamp(hold.since_ms),
            hold.held_messages,
            short(Duration::from_secs(hold.recheck_in_seconds)),
            hold.reason
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::control::RecipientInfo;

    #[test]
    fn a_filter_becomes_the_query_the_api_reads() {
        assert_eq!(query_string(&QueueFilter::default()), "");
        let filter = QueueFilter {
            sender: Some("*@client.test".into()),
            older_than: Some(Duration::from_secs(5400)),
            state: Some(MessageState::RouteHeld),
            ..QueueFilter::default()
        };
        let query = query_string(&filter);
        assert_eq!(query, "?sender=*%40client.test&older_than=1h+30m&state=route-held");
        let uri: axum::http::Uri = format!("/api/queue{query}").parse().unwrap();
        let back = axum::extract::Query::<QueueFilter>::try_from_uri(&uri).unwrap().0;
        assert_eq!(back.sender, filter.sender);
        assert_eq!(back.older_than, filter.older_than);
        assert_eq!(back.state, filter.state);
    }

    #[test]
    fn a_listing_shows_each_recipient_and_a_summary() {
        let now = 1_700_000_000_000;
        let m = MessageInfo {
            id: "0123456789ABCDEF".into(),
            sender: "alice@client.test".into(),
            recipients: vec![
                RecipientInfo {
                    address: "bob@example.test".into(),
                    status: RecipientStatus::Pending,
                    last_reply: Some("451 4.2.0 try again".into()),
                },
                RecipientInfo {
                    address: "carol@example.test".into(),
                    status: RecipientStatus::Delivered,
                    last_reply: None,
                },
            ],
            size: 2048,
            received_at_ms: now - 120_000,
            attempts: 1,
            next_attempt_ms: Some(now + 60_000),
            last_reply: Some("451 4.2.0 try again".into()),
            state: MessageState::Deferred,
            upstream: "127.0.0.1:25".into(),
            hold: None,
        };
        let text = render_list(&[m], now);
        assert!(text.contains("0123456789ABCDEF"), "{text}");
        assert!(text.contains("DEFERRED") && text.contains("age 2m") && text.contains("next in 1m"), "{text}");
        assert!(text.contains("to   bob@example.test  pending  (451 4.2.0 try again)"), "{text}");
        assert!(text.contains("to   carol@example.test  delivered"), "{text}");
        assert!(text.contains("-- 2 Kbytes in 1 message (0 queued, 1 deferred"), "{text}");
        assert_eq!(render_list(&[], now), "Mail queue is empty\n");
    }
}
