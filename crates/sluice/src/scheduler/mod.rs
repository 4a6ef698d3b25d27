//! Decides when each queued message goes out, sends it through the upstream, and records the verdicts.
//!
//! The queue lives in memory (an index over the spool's records, ordered by due time); the spool on disk
//! stays the truth. Workers (one per upstream connection) take due messages, keep their connection open
//! for the next one, and after each attempt write the new state to the spool before anything else.

pub mod retry;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use tokio::sync::{Notify, broadcast};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::UpstreamConfig;
use crate::dsn::{self, DsnInput, FailedRecipient};
use crate::spool::{QueueRecord, RECORD_VERSION, RecipientState, RecipientStatus, Spool, now_ms};
use crate::upstream::smtp::SmtpConnection;
use crate::upstream::{Disposition, Envelope, Outcome, TransportError, classify};
use retry::{RetryDecision, RetryPolicy, next_retry};

/// A cheap handle to the queue, shared by listeners (to enqueue) and workers.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

struct Inner {
    spool: Spool,
    upstream: UpstreamConfig,
    retry: RetryPolicy,
    hostname: String,
    queue: Mutex<Queue>,
    wake: Notify,
    /// Set when the upstream could not be reached: until then, due messages are deferred with that
    /// error instead of each opening its own doomed connection (a queue of thousands would otherwise
    /// hammer a host that is down).
    upstream_down: Mutex<Option<(Instant, TransportError)>>,
    /// Every per-recipient verdict, for whoever watches (the demo today; status pages, metrics).
    events: broadcast::Sender<DeliveryEvent>,
}

/// What happened to one recipient in one delivery attempt.
#[derive(Debug, Clone)]
pub struct DeliveryEvent {
    pub queue_id: String,
    pub sender: String,
    pub recipient: String,
    pub disposition: Disposition,
    /// The upstream's reply or the transport error, in one line.
    pub reply: String,
    /// For a failure: the queue id of the DSN sent back, if one was queued.
    pub bounce_id: Option<String>,
}

/// How long an unreachable upstream is left alone before the next connection attempt.
const MAX_UPSTREAM_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Queue {
    /// (due time in Unix ms, queue id). May hold stale entries; `waiting` is the truth.
    due: BinaryHeap<Reverse<(u64, String)>>,
    /// Messages waiting for their next attempt (not the ones a worker holds right now).
    waiting: HashMap<String, QueueRecord>,
}

enum Next {
    Deliver(QueueRecord),
    /// Nothing due; the earliest due time if any.
    Wait(Option<u64>),
}

impl Scheduler {
    pub fn new(spool: Spool, upstream: UpstreamConfig, retry: RetryPolicy, hostname: String) -> Scheduler {
        Scheduler {
            inner: Arc::new(Inner {
                spool,
                upstream,
                retry,
                hostname,
                queue: Mutex::new(Queue::default()),
                wake: Notify::new(),
                upstream_down: Mutex::new(None),
                events: broadcast::channel(1024).0,
            }),
        }
    }

    /// Adds a message that is already durable in the spool.
    pub fn enqueue(&self, record: QueueRecord) {
        {
            let mut queue = self.inner.queue.lock().expect("queue lock");
            queue.due.push(Reverse((record.next_attempt_ms, record.id.clone())));
            queue.waiting.insert(record.id.clone(), record);
        }
        self.inner.wake.notify_one();
    }

    /// A stream of per-recipient verdicts from now on (lagging receivers lose the oldest).
    pub fn subscribe(&self) -> broadcast::Receiver<DeliveryEvent> {
        self.inner.events.subscribe()
    }

    /// Number of messages waiting (not counting those being delivered right now).
    pub fn waiting(&self) -> usize {
        self.inner.queue.lock().expect("queue lock").waiting.len()
    }

    /// Starts the delivery workers; they stop when `shutdown` is cancelled, after finishing the message in hand.
    pub fn spawn_workers(&self, shutdown: CancellationToken) -> JoinSet<()> {
        let mut workers = JoinSet::new();
        for n in 0..self.inner.upstream.connections {
            let inner = self.inner.clone();
            let shutdown = shutdown.clone();
            workers.spawn(async move { inner.worker(n, shutdown).await });
        }
        workers
    }
}

impl Inner {
    fn take_due(&self) -> Next {
        let now = now_ms();
        let mut queue = self.queue.lock().expect("queue lock");
        while let Some(Reverse((due, id))) = queue.due.peek().cloned() {
            let current = queue.waiting.get(&id).map(|r| r.next_attempt_ms);
            if current != Some(due) {
                queue.due.pop(); // stale: delivered, rescheduled or taken since
                continue;
            }
            if due > now {
                return Next::Wait(Some(due));
            }
            queue.due.pop();
            let record = queue.waiting.remove(&id).expect("checked above");
            if queue.due.peek().is_some_and(|Reverse((d, _))| *d <= now) {
                // More is due: let another worker start on it in parallel.
                self.wake.notify_one();
            }
            return Next::Deliver(record);
        }
        Next::Wait(None)
    }

    async fn worker(self: Arc<Self>, n: usize, shutdown: CancellationToken) {
        let mut conn: Option<SmtpConnection> = None;
        let mut idle_since = Instant::now();
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            match self.take_due() {
                Next::Deliver(record) => {
                    self.attempt(record, &mut conn).await;
                    idle_since = Instant::now();
                }
                Next::Wait(due) => {
                    let until_due =
                        due.map_or(Duration::from_secs(3600), |d| Duration::from_millis(d.saturating_sub(now_ms())));
                    let idle_left = self.upstream.idle_timeout.saturating_sub(idle_since.elapsed());
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(until_due) => {}
                        _ = tokio::time::sleep(idle_left), if conn.is_some() => {
                            if let Some(c) = conn.take() {
                                c.quit().await;
                            }
                        }
                    }
                }
            }
        }
        if let Some(c) = conn.take() {
            c.quit().await;
        }
        tracing::debug!(worker = n, "delivery worker stopped");
    }

    /// One delivery attempt for one message, and everything that follows from it.
    async fn attempt(&self, mut record: QueueRecord, conn: &mut Option<SmtpConnection>) {
        let started = Instant::now();
        let spool = self.spool.clone();
        let id = record.id.clone();
        let body = match tokio::task::spawn_blocking(move || spool.read_body(&id)).await {
            Ok(Ok(body)) => body,
            other => {
                let reason = match other {
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                    Ok(Ok(_)) => unreachable!(),
                };
                error!(queue_id = %record.id, %reason, "cannot read queued message body; will retry");
                record.last_reply = Some(format!("cannot read spooled body: {reason}"));
                record.attempts += 1;
                self.finish_attempt(record, Vec::new()).await;
                return;
            }
        };

        let pending: Vec<usize> =
            (0..record.recipients.len()).filter(|&i| record.recipients[i].status == RecipientStatus::Pending).collect();
        let envelope = Envelope {
            sender: &record.sender,
            recipients: pending.iter().map(|&i| record.recipients[i].address.as_str()).collect(),
            eight_bit: record.eight_bit,
            smtputf8: record.smtputf8,
        };
        let verdicts = match self.transmit(conn, &envelope, &body).await {
            Ok(verdicts) => verdicts,
            Err(e) => vec![Outcome::Transport(e); pending.len()],
        };
        let results: Vec<(usize, Outcome)> = pending.into_iter().zip(verdicts).collect();
        self.record_results(record, results, started).await;
    }

    /// Sends over the worker's cached connection, opening one when needed. A cached connection found dead
    /// before the transaction started is replaced once.
    async fn transmit(
        &self,
        conn: &mut Option<SmtpConnection>,
        envelope: &Envelope<'_>,
        body: &[u8],
    ) -> Result<Vec<Outcome>, TransportError> {
        loop {
            if conn.as_ref().is_some_and(|c| c.transactions >= self.upstream.max_messages_per_connection)
                && let Some(old) = conn.take()
            {
                old.quit().await;
            }
            let fresh = conn.is_none();
            if fresh {
                if let Some((until, error)) = self.upstream_down.lock().expect("down lock").clone()
                    && Instant::now() < until
                {
                    return Err(error);
                }
                match SmtpConnection::connect(&self.upstream).await {
                    Ok(c) => {
                        *self.upstream_down.lock().expect("down lock") = None;
                        *conn = Some(c);
                    }
                    Err(error) => {
                        let pause = self.retry.initial_interval.min(MAX_UPSTREAM_BACKOFF);
                        warn!(upstream = %self.upstream.display_name(), %error, ?pause, "upstream unavailable");
                        *self.upstream_down.lock().expect("down lock") = Some((Instant::now() + pause, error.clone()));
                        return Err(error);
                    }
                }
            }
            let c = conn.as_mut().expect("connected above");
            match c.send(envelope, body).await {
                Ok(verdicts) => return Ok(verdicts),
                Err(TransportError::Stale(reason)) if !fresh => {
                    tracing::debug!(%reason, "cached upstream connection was dead; reconnecting");
                    *conn = None;
                }
                Err(e) => {
                    *conn = None;
                    return Err(e);
                }
            }
        }
    }

    async fn record_results(&self, mut record: QueueRecord, results: Vec<(usize, Outcome)>, started: Instant) {
        let upstream = self.upstream.display_name();
        let mut failed = Vec::new();
        let (mut delivered, mut deferred) = (0usize, 0usize);
        let mut summary = None;
        let mut verdicts = Vec::new();
        for (index, outcome) in results {
            let rcpt = &mut record.recipients[index];
            let text = outcome.describe();
            match classify(&outcome) {
                Disposition::Delivered => {
                    rcpt.status = RecipientStatus::Delivered;
                    delivered += 1;
                }
                Disposition::Temporary => deferred += 1,
                Disposition::Permanent => {
                    rcpt.status = RecipientStatus::Failed;
                    failed.push(FailedRecipient {
                        address: rcpt.address.clone(),
                        status: dsn::status_from_reply(&text),
                        smtp_diagnostic: outcome.smtp_reply().map(|r| r.to_string()),
                        explanation: format!("{upstream} said: {text}"),
                    });
                }
            }
            if summary.is_none() || classify(&outcome) != Disposition::Delivered {
                summary = Some(text.clone());
            }
            verdicts.push(DeliveryEvent {
                queue_id: record.id.clone(),
                sender: record.sender.clone(),
                recipient: rcpt.address.clone(),
                disposition: classify(&outcome),
                reply: text.clone(),
                bounce_id: None,
            });
            rcpt.last_reply = Some(text);
        }
        record.last_reply = summary;
        info!(
            queue_id = %record.id,
            upstream = %upstream,
            attempt = record.attempts + 1,
            delivered,
            deferred,
            bounced = failed.len(),
            reply = record.last_reply.as_deref().unwrap_or(""),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "delivery attempt"
        );
        record.attempts += 1;
        let bounce_id = self.finish_attempt(record, failed).await;
        for mut event in verdicts {
            if event.disposition == Disposition::Permanent {
                event.bounce_id = bounce_id.clone();
            }
            let _ = self.events.send(event);
        }
    }

    /// Applies the retry policy, queues a DSN for what failed, and persists the new state.
    /// Returns the queue id of the DSN it queued, if any.
    async fn finish_attempt(&self, mut record: QueueRecord, mut failed: Vec<FailedRecipient>) -> Option<String> {
        let mut bounce_id = None;
        let now = now_ms();
        if !record.is_finished() {
            let age = Duration::from_millis(now.saturating_sub(record.received_at_ms));
            match next_retry(&self.retry, record.attempts.max(1), age) {
                RetryDecision::RetryAfter(delay) => record.next_attempt_ms = now + delay.as_millis() as u64,
                RetryDecision::GiveUp => {
                    let last = record.last_reply.clone().unwrap_or_default();
                    for rcpt in record.recipients.iter_mut().filter(|r| r.status == RecipientStatus::Pending) {
                        rcpt.status = RecipientStatus::Failed;
                        let reason = rcpt.last_reply.clone().unwrap_or_else(|| last.clone());
                        failed.push(FailedRecipient {
                            address: rcpt.address.clone(),
                            status: "4.4.7".into(),
                            smtp_diagnostic: None,
                            explanation: format!(
                                "gave up after {} attempts over {}; last error: {reason}",
                                record.attempts,
                                humantime::format_duration(Duration::from_secs(age.as_secs()))
                            ),
                        });
                    }
                    warn!(queue_id = %record.id, attempts = record.attempts, "message expired in the queue");
                }
            }
        }

        if !failed.is_empty() {
            if record.is_bounce() {
                warn!(queue_id = %record.id, "a bounce could not be delivered; it is dropped (no bounce of a bounce)");
            } else if let Err(e) = self.queue_dsn(&record, &failed).await.map(|id| bounce_id = Some(id)) {
                // Without the DSN durable the failure must not be forgotten: keep the recipients pending
                // and try the whole thing again later.
                error!(queue_id = %record.id, error = %e, "cannot queue the bounce; will retry the recipients");
                for rcpt in record.recipients.iter_mut() {
                    if failed.iter().any(|f| f.address == rcpt.address) {
                        rcpt.status = RecipientStatus::Pending;
                    }
                }
                record.next_attempt_ms = now + self.retry.initial_interval.as_millis() as u64;
            }
        }

        let spool = self.spool.clone();
        if record.is_finished() {
            let id = record.id.clone();
            match tokio::task::spawn_blocking(move || spool.remove(&id)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    error!(queue_id = %record.id, error = %e, "cannot remove finished message")
                }
                Err(e) => error!(queue_id = %record.id, error = %e, "remove task failed"),
            }
            return bounce_id;
        }
        let to_write = record.clone();
        match tokio::task::spawn_blocking(move || spool.update(&to_write)).await {
            Ok(Ok(())) => {}
            // The older record on disk stays valid (at worst a recipient is tried again after a crash).
            Ok(Err(e)) => error!(queue_id = %record.id, error = %e, "cannot update queue record"),
            Err(e) => error!(queue_id = %record.id, error = %e, "update task failed"),
        }
        self.requeue(record);
        bounce_id
    }

    fn requeue(&self, record: QueueRecord) {
        {
            let mut queue = self.queue.lock().expect("queue lock");
            queue.due.push(Reverse((record.next_attempt_ms, record.id.clone())));
            queue.waiting.insert(record.id.clone(), record);
        }
        self.wake.notify_one();
    }

    async fn queue_dsn(&self, original: &QueueRecord, failed: &[FailedRecipient]) -> std::io::Result<String> {
        let spool = self.spool.clone();
        let id = original.id.clone();
        let original_body = tokio::task::spawn_blocking(move || spool.read_body(&id))
            .await
            .map_err(std::io::Error::other)?
            .unwrap_or_default();
        let now = Utc::now();
        let arrival = Utc.timestamp_millis_opt(original.received_at_ms as i64).single().unwrap_or(now);
        let upstream = self.upstream.display_name();
        let body = dsn::build(&DsnInput {
            reporting_host: &self.hostname,
            remote_mta: Some(&upstream),
            queue_id: &original.id,
            original_sender: &original.sender,
            arrival,
            now,
            failed,
            original: &original_body,
        });
        let now_ms = now_ms();
        let record = QueueRecord {
            version: RECORD_VERSION,
            id: Spool::new_id(),
            sender: String::new(),
            recipients: vec![RecipientState {
                address: original.sender.clone(),
                status: RecipientStatus::Pending,
                last_reply: None,
            }],
            received_at_ms: now_ms,
            attempts: 0,
            next_attempt_ms: now_ms,
            last_reply: None,
            size: body.len() as u64,
            eight_bit: body.iter().any(|b| *b >= 0x80),
            smtputf8: !original.sender.is_ascii(),
            client: format!("DSN for {}", original.id),
        };
        let spool = self.spool.clone();
        let to_commit = record.clone();
        tokio::task::spawn_blocking(move || spool.commit(&to_commit, &body)).await.map_err(std::io::Error::other)??;
        info!(queue_id = %record.id, original = %original.id, to = %original.sender, "bounce queued");
        let id = record.id.clone();
        self.requeue(record);
        Ok(id)
    }
}
