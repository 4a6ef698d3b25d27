//! Decides when each queued message goes out, sends it through the upstream, and records the verdicts.
//!
//! The queue lives in memory (an index over the spool's records, ordered by due time); the spool on disk
//! stays the truth. Workers (one per upstream connection) take due messages, keep their connection open
//! for the next one, and after each attempt write the new state to the spool before anything else.
//!
//! On top of the classifier's verdicts, Microsoft 365 upstreams get the actions of the reply table
//! (`upstream::microsoft`): a **held route** (configuration trouble) keeps its mail queued without
//! attempts and without expiry until `hold_recheck` passes or [`Scheduler::release_hold`] is called; a
//! mailbox can be paused (too many connections, daily quota); envelopes are split. [`shaper`] keeps each
//! mailbox within Microsoft's rates, making mail wait rather than fail.

pub mod retry;
pub mod shaper;
pub mod stats;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use chrono::{TimeZone, Utc};
use tokio::sync::{Notify, broadcast};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{SenderRewrite, UpstreamConfig};
use crate::dsn::{self, DsnInput, FailedRecipient};
use crate::spool::{QueueRecord, RECORD_VERSION, RecipientState, RecipientStatus, Spool, now_ms};
use crate::upstream::microsoft::{self, Action};
use crate::upstream::{Connection, Disposition, Envelope, Outcome, TransportError, Upstream, classify};
use retry::{RetryDecision, RetryPolicy, next_retry};
use shaper::Shaper;

/// The clock the shaper counts messages against (the system's; tests can use a simulator's).
pub type ShapingClock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Per-recipient outcomes of one attempt: (index in the record, outcome).
type Results = Vec<(usize, Outcome)>;

/// How often a message waiting for the shaper looks again (the shaper's clock may be moved by hand).
const SHAPER_POLL: Duration = Duration::from_millis(200);

/// A cheap handle to the queue, shared by listeners (to enqueue) and workers.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

struct Inner {
    spool: Spool,
    upstream: UpstreamConfig,
    /// The runtime side of the upstream: token cache, HTTP client.
    transport: Upstream,
    route: Mutex<RouteState>,
    shaper: Mutex<Shaper>,
    clock: RwLock<ShapingClock>,
    retry: RetryPolicy,
    hostname: String,
    queue: Mutex<Queue>,
    wake: Notify,
    /// Set when the upstream could not be reached: until then, due messages are deferred with that
    /// error instead of each opening its own doomed connection (a queue of thousands would otherwise
    /// hammer a host that is down).
    upstream_down: Mutex<Option<(Instant, TransportError)>>,
    /// Every per-recipient verdict, for whoever watches (the demo, the status page, metrics).
    events: broadcast::Sender<DeliveryEvent>,
    /// What no event carries (outcomes set aside by a hold), for [`Scheduler::stats`].
    counters: stats::Counters,
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
    /// When the message was accepted (Unix ms): accepted → delivered latency.
    pub accepted_ms: u64,
    /// SMTP reply class, transport error or HTTP status.
    pub reply_class: stats::ReplyClass,
}

/// How long an unreachable upstream is left alone before the next connection attempt.
const MAX_UPSTREAM_BACKOFF: Duration = Duration::from_secs(60);

/// Route-wide decisions from Microsoft's replies.
#[derive(Default)]
struct RouteState {
    hold: Option<Hold>,
    /// Queue ids put aside by the hold, released together.
    held_ids: HashSet<String>,
    /// The mailbox is paused (connection limit, daily quota) until then.
    paused_until: Option<Instant>,
    /// Recipients per transaction learned from "too many recipients" replies.
    batch_limit: Option<usize>,
}

struct Hold {
    reason: String,
    since_ms: u64,
    until: Instant,
}

/// A held route, for status displays and the admin CLI.
#[derive(Debug, Clone)]
pub struct HoldStatus {
    /// The reply or error that caused the hold.
    pub reason: String,
    /// When it began (Unix ms).
    pub since_ms: u64,
    /// Time left before the route is tried again on its own.
    pub recheck_in: Duration,
    /// Messages put aside by the hold.
    pub held_messages: usize,
}

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
        let system: ShapingClock = Arc::new(SystemTime::now);
        Scheduler {
            inner: Arc::new(Inner {
                spool,
                transport: Upstream::new(upstream.clone()),
                shaper: Mutex::new(Shaper::new(upstream.shaping)),
                route: Mutex::new(RouteState::default()),
                clock: RwLock::new(system),
                upstream,
                retry,
                hostname,
                queue: Mutex::new(Queue::default()),
                wake: Notify::new(),
                upstream_down: Mutex::new(None),
                events: broadcast::channel(1024).0,
                counters: stats::Counters::default(),
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

    /// The route's hold, if it is held.
    pub fn hold_status(&self) -> Option<HoldStatus> {
        let route = self.inner.route.lock().expect("route lock");
        route.hold.as_ref().map(|h| HoldStatus {
            reason: h.reason.clone(),
            since_ms: h.since_ms,
            recheck_in: h.until.saturating_duration_since(Instant::now()),
            held_messages: route.held_ids.len(),
        })
    }

    /// Lifts a hold now (the admin fixed the cause): held mail becomes due at once. Returns whether the
    /// route was held.
    pub fn release_hold(&self) -> bool {
        let (was_held, ids) = {
            let mut route = self.inner.route.lock().expect("route lock");
            let was_held = route.hold.take().is_some();
            (was_held, std::mem::take(&mut route.held_ids))
        };
        // The error that caused the hold may still be cached as "upstream down"; the admin says it is fixed.
        *self.inner.upstream_down.lock().expect("down lock") = None;
        if was_held {
            info!(upstream = %self.inner.upstream.display_name(), messages = ids.len(), "hold released");
        }
        let now = now_ms();
        {
            let mut queue = self.inner.queue.lock().expect("queue lock");
            for id in ids {
                if let Some(record) = queue.waiting.get_mut(&id) {
                    record.next_attempt_ms = now;
                    queue.due.push(Reverse((now, id)));
                }
            }
        }
        self.inner.wake.notify_waiters();
        self.inner.wake.notify_one();
        was_held
    }

    /// Replaces the clock the per-mailbox rate limits count with (tests drive it with the simulator's
    /// manual clock). Call before mail flows.
    pub fn set_shaping_clock(&self, clock: ShapingClock) {
        *self.inner.clock.write().expect("clock lock") = clock;
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
        {
            let mut route = self.route.lock().expect("route lock");
            let instant = Instant::now();
            if let Some(hold) = &route.hold {
                if instant < hold.until {
                    return Next::Wait(Some(now + hold.until.duration_since(instant).as_millis() as u64));
                }
                // hold_recheck has passed: try the route again. If the cause is still there, the first
                // attempt holds it again (with the same loud error).
                warn!(upstream = %self.upstream.display_name(), reason = %hold.reason, "held route: trying again");
                route.hold = None;
                route.held_ids.clear();
            }
            if let Some(until) = route.paused_until {
                if instant < until {
                    return Next::Wait(Some(now + until.duration_since(instant).as_millis() as u64));
                }
                route.paused_until = None;
            }
        }
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
        let mut conn: Option<Connection> = None;
        let mut idle_since = Instant::now();
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            match self.take_due() {
                Next::Deliver(record) => {
                    self.attempt(record, &mut conn, &shutdown).await;
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
    async fn attempt(&self, mut record: QueueRecord, conn: &mut Option<Connection>, shutdown: &CancellationToken) {
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
                self.finish_attempt(record, Vec::new(), None).await;
                return;
            }
        };

        // Senders Microsoft accepts: the mailbox as sender (when configured), a well-formed From.
        let (sender, body) = self.prepare_sender(&record.sender, body);

        let pending: Vec<usize> =
            (0..record.recipients.len()).filter(|&i| record.recipients[i].status == RecipientStatus::Pending).collect();
        // Envelopes over the per-message recipient limit (or the limit learned from "too many
        // recipients") go out as several transactions.
        let batch = self
            .upstream
            .shaping
            .max_recipients_per_message
            .min(self.route.lock().expect("route lock").batch_limit.unwrap_or(usize::MAX))
            .max(1);
        let mut results: Vec<(usize, Outcome)> = Vec::with_capacity(pending.len());
        for chunk in pending.chunks(batch) {
            let envelope = Envelope {
                sender: &sender,
                recipients: chunk.iter().map(|&i| record.recipients[i].address.as_str()).collect(),
                eight_bit: record.eight_bit,
                smtputf8: record.smtputf8,
            };
            let verdicts = match self.transmit(conn, &envelope, &body, shutdown).await {
                Ok(verdicts) => verdicts,
                Err(e) => vec![Outcome::Transport(e); chunk.len()],
            };
            let stop = verdicts.iter().any(|v| !matches!(classify(v), Disposition::Delivered | Disposition::Permanent));
            results.extend(chunk.iter().copied().zip(verdicts));
            if stop {
                // Trouble: the rest waits for the next attempt rather than meeting the same fate now.
                let done: HashSet<usize> = results.iter().map(|(i, _)| *i).collect();
                let rest = pending.iter().filter(|i| !done.contains(i));
                let skipped = Outcome::Transport(TransportError::Protocol(
                    "not tried: an earlier part of the envelope was deferred".into(),
                ));
                results.extend(rest.map(|&i| (i, skipped.clone())));
                break;
            }
        }
        self.record_results(record, results, started).await;
    }

    /// The envelope sender and message as they go upstream. Microsoft kinds: with `sender_rewrite =
    /// "mailbox"` a sender other than the mailbox becomes the mailbox (original in Reply-To); otherwise the
    /// From header is only fixed where Microsoft would refuse it. The queued record keeps the original
    /// sender (DSNs go back to it).
    fn prepare_sender(&self, sender: &str, body: Vec<u8>) -> (String, Vec<u8>) {
        use crate::upstream::rewrite;
        if !self.upstream.kind.is_m365() {
            return (sender.to_owned(), body);
        }
        if self.upstream.sender_rewrite == SenderRewrite::Mailbox
            && let Some(mailbox) = &self.upstream.mailbox
            && !sender.is_empty()
            && !sender.eq_ignore_ascii_case(mailbox)
        {
            return (mailbox.clone(), rewrite::to_mailbox(&body, sender, mailbox));
        }
        match rewrite::fix_from(&body, sender) {
            Some(fixed) => (sender.to_owned(), fixed),
            None => (sender.to_owned(), body),
        }
    }

    /// Waits until the mailbox's rates admit a transaction of `recipients`. Mail over a limit waits here;
    /// it is never failed for it.
    async fn admit(&self, recipients: usize, shutdown: &CancellationToken) -> Result<(), TransportError> {
        let mut logged = false;
        loop {
            let now = (self.clock.read().expect("clock lock"))();
            let wait = match self.shaper.lock().expect("shaper lock").admit(now, recipients as u32) {
                Ok(()) => return Ok(()),
                Err(wait) => wait,
            };
            if !logged {
                info!(upstream = %self.upstream.display_name(), ?wait, "mailbox at its rate limit; mail waits");
                logged = true;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Err(TransportError::Io("shutting down while waiting for the rate limit".into())),
                _ = tokio::time::sleep(wait.min(SHAPER_POLL)) => {}
            }
        }
    }

    /// Sends over the worker's cached connection, opening one when needed. A cached connection found dead
    /// before the transaction started is replaced once.
    async fn transmit(
        &self,
        conn: &mut Option<Connection>,
        envelope: &Envelope<'_>,
        body: &[u8],
        shutdown: &CancellationToken,
    ) -> Result<Vec<Outcome>, TransportError> {
        self.admit(envelope.recipients.len(), shutdown).await?;
        loop {
            if conn.as_ref().is_some_and(|c| c.transactions() >= self.upstream.max_messages_per_connection)
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
                match self.transport.connect().await {
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
        let (results, delay) = if self.upstream.kind.is_m365() {
            match self.apply_actions(&mut record, results) {
                Some(applied) => applied,
                // Everything was held: no verdict, no attempt.
                None => return self.put_aside(record).await,
            }
        } else {
            (results, None)
        };
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
                accepted_ms: record.received_at_ms,
                reply_class: stats::ReplyClass::of(&outcome),
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
        let bounce_id = self.finish_attempt(record, failed, delay).await;
        for mut event in verdicts {
            if event.disposition == Disposition::Permanent {
                event.bounce_id = bounce_id.clone();
            }
            let _ = self.events.send(event);
        }
    }

    /// The Microsoft reply table's actions for one attempt (Microsoft kinds only). Outcomes that hold the
    /// route are taken out (their recipients stay pending, unjudged); the rest is returned with the delay
    /// the actions ask for, if any. `None` when nothing is left to record.
    fn apply_actions(
        &self,
        record: &mut QueueRecord,
        results: Vec<(usize, Outcome)>,
    ) -> Option<(Results, Option<Duration>)> {
        let hold = results.iter().find(|(_, o)| microsoft::action(o) == Action::Hold).map(|(_, o)| o.describe());
        let mut route = self.route.lock().expect("route lock");
        if let Some(reason) = hold {
            // With the route held, every recipient without a final verdict waits with the hold.
            let (kept, held): (Vec<_>, Vec<_>) =
                results.into_iter().partition(|(_, o)| classify(o) != Disposition::Temporary);
            for (i, o) in &held {
                record.recipients[*i].last_reply = Some(o.describe());
                self.counters.held(o);
            }
            record.last_reply = Some(reason.clone());
            if route.hold.is_none() {
                // Loud: nothing will be delivered on this route until the cause is fixed.
                error!(
                    upstream = %self.upstream.display_name(),
                    kind = self.upstream.kind.name(),
                    reason = %reason,
                    recheck_in = %humantime::format_duration(self.upstream.hold_recheck),
                    "ROUTE HELD: the upstream refused us for a configuration reason; mail stays queued (not bounced) \
                     until the cause is fixed and the hold released, or hold_recheck passes"
                );
                route.hold =
                    Some(Hold { reason, since_ms: now_ms(), until: Instant::now() + self.upstream.hold_recheck });
            }
            route.held_ids.insert(record.id.clone());
            if kept.is_empty() {
                return None;
            }
            return Some((kept, Some(self.upstream.hold_recheck)));
        }

        let mut delay: Option<Duration> = None;
        let mut later = |d: Duration| delay = Some(delay.map_or(d, |x| x.max(d)));
        let attempted = results.len();
        let delivered = results.iter().filter(|(_, o)| classify(o) == Disposition::Delivered).count();
        for (_, outcome) in &results {
            match microsoft::action(outcome) {
                Action::BackOffMailbox => {
                    route.paused_until = Some(Instant::now() + microsoft::MAILBOX_BACKOFF);
                    later(microsoft::MAILBOX_BACKOFF);
                }
                Action::DeferWindow => {
                    warn!(upstream = %self.upstream.display_name(), "mailbox over its 24 h recipient quota; its mail is deferred");
                    route.paused_until = Some(Instant::now() + microsoft::QUOTA_DEFERRAL);
                    later(microsoft::QUOTA_DEFERRAL);
                }
                Action::Split => {
                    let current = route.batch_limit.unwrap_or(self.upstream.shaping.max_recipients_per_message);
                    let learned = if delivered > 0 { delivered } else { (attempted.min(current) / 2).max(1) };
                    if learned < current {
                        info!(upstream = %self.upstream.display_name(), recipients = learned, "too many recipients: sending in smaller batches");
                        route.batch_limit = Some(learned);
                        // The rest goes out now, in batches; only a batch of one that still fails waits.
                        later(Duration::ZERO);
                    }
                }
                Action::Retry => {
                    if let Outcome::Http { retry_after: Some(after), .. } = outcome {
                        later(*after);
                    }
                }
                Action::Bounce | Action::Hold => {}
            }
        }
        Some((results, delay))
    }

    /// A message whose attempt was held entirely: no attempt counted, nothing bounced; it waits for the
    /// hold to end.
    async fn put_aside(&self, mut record: QueueRecord) {
        record.next_attempt_ms = now_ms() + self.upstream.hold_recheck.as_millis() as u64;
        let spool = self.spool.clone();
        let to_write = record.clone();
        match tokio::task::spawn_blocking(move || spool.update(&to_write)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => error!(queue_id = %record.id, error = %e, "cannot update queue record"),
            Err(e) => error!(queue_id = %record.id, error = %e, "update task failed"),
        }
        info!(queue_id = %record.id, reason = record.last_reply.as_deref().unwrap_or(""), "held with its route");
        self.requeue(record);
    }

    fn is_held(&self) -> bool {
        self.route.lock().expect("route lock").hold.is_some()
    }

    /// Applies the retry policy, queues a DSN for what failed, and persists the new state.
    /// `delay` replaces the schedule's delay (the reply table's actions, `Retry-After`).
    /// Returns the queue id of the DSN it queued, if any.
    async fn finish_attempt(
        &self,
        mut record: QueueRecord,
        mut failed: Vec<FailedRecipient>,
        delay: Option<Duration>,
    ) -> Option<String> {
        let mut bounce_id = None;
        let now = now_ms();
        if !record.is_finished() {
            let age = Duration::from_millis(now.saturating_sub(record.received_at_ms));
            match next_retry(&self.retry, record.attempts.max(1), age) {
                RetryDecision::RetryAfter(scheduled) => {
                    record.next_attempt_ms = now + delay.unwrap_or(scheduled).as_millis() as u64
                }
                // Held mail does not expire while the route is held: the cause is ours to fix, not the
                // message's fault (ARCHITECTURE.md, "held routes").
                RetryDecision::GiveUp if self.is_held() => {
                    record.next_attempt_ms = now + self.upstream.hold_recheck.as_millis() as u64;
                }
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
