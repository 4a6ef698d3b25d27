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

pub mod control;
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
use crate::routing::{RouteChoice, RouteRequest, Routing};
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
    /// One lane per upstream, in the order of the configuration.
    lanes: Vec<Lane>,
    /// Lane index by upstream name.
    lane_index: HashMap<String, usize>,
    /// The routes, consulted when a message is accepted.
    routing: Routing,
    clock: RwLock<ShapingClock>,
    retry: RetryPolicy,
    hostname: String,
    queue: Mutex<Queue>,
    /// Every per-recipient verdict, for whoever watches (the demo today; status pages, metrics).
    events: broadcast::Sender<DeliveryEvent>,
}

/// One upstream's side of the queue: its transport, its route state, its mailboxes and its workers.
struct Lane {
    upstream: UpstreamConfig,
    /// The runtime side of the upstream: token cache, HTTP client.
    transport: Upstream,
    route: Mutex<RouteState>,
    /// The pool (one entry without an address for the kinds that send as no mailbox).
    mailboxes: Mutex<Vec<MailboxState>>,
    /// Wakes this lane's workers.
    wake: Notify,
    /// Set when the upstream could not be reached: until then, due messages are deferred with that
    /// error instead of each opening its own doomed connection (a queue of thousands would otherwise
    /// hammer a host that is down).
    upstream_down: Mutex<Option<(Instant, TransportError)>>,
    /// What no event carries (outcomes set aside by a hold), for [`Scheduler::stats`].
    counters: stats::Counters,
}

/// One mailbox of a pool: Exchange Online counts rates, connections and quotas per mailbox.
struct MailboxState {
    address: Option<String>,
    shaper: Shaper,
    /// Paused (connection limit, daily quota) until then; the pool's other mailboxes carry on.
    paused_until: Option<Instant>,
    /// Workers holding a connection (or about to open one) as this mailbox.
    connections: usize,
}

/// What happened to one recipient in one delivery attempt.
#[derive(Debug, Clone)]
pub struct DeliveryEvent {
    pub queue_id: String,
    pub sender: String,
    pub recipient: String,
    /// The upstream's name (`[upstreams.NAME]`, "default" for `[upstream]`).
    pub upstream: String,
    /// The mailbox of the pool the attempt used, if the upstream sends as one.
    pub mailbox: Option<String>,
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

/// Route-wide decisions from Microsoft's replies (per upstream; mailbox pauses are per mailbox).
#[derive(Default)]
struct RouteState {
    hold: Option<Hold>,
    /// Queue ids put aside by the hold, released together.
    held_ids: HashSet<String>,
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
    /// Per lane: (due time in Unix ms, queue id). May hold stale entries; `waiting` is the truth.
    due: Vec<BinaryHeap<Reverse<(u64, String)>>>,
    /// Messages waiting for their next attempt (not the ones a worker holds right now), every lane's.
    waiting: HashMap<String, QueueRecord>,
    /// Messages out of `waiting` in someone's hands: a worker's attempt, or an admin action writing the
    /// spool (`control.rs`). A snapshot as taken, for listings; the holder has the live record.
    active: HashMap<String, QueueRecord>,
}

impl Queue {
    fn push_due(&mut self, lane: usize, due: u64, id: String) {
        self.due[lane].push(Reverse((due, id)));
    }
}

/// A transaction that did not go through. Not `reached_upstream`: nothing was sent (the upstream was
/// known down, or would not connect), so it does not count against the mailbox's rates.
struct Unsent {
    error: TransportError,
    reached_upstream: bool,
}

/// Who decided that the recipients of a DSN failed.
enum DsnVerdict {
    /// The upstream's reply (or the retry policy's expiry).
    Upstream,
    /// An administrator's `sluice queue bounce`.
    Administrator,
}

enum Next {
    Deliver(Box<QueueRecord>),
    /// Nothing due; the earliest due time if any.
    Wait(Option<u64>),
}

/// A worker's hold on one mailbox of its lane: a connection slot, and the connection once open.
struct Slot {
    mailbox: usize,
    conn: Option<Connection>,
}

/// Which mailbox of a pool takes the next transaction.
#[derive(Debug, PartialEq, Eq)]
enum Choice {
    /// This one: its rates admitted the transaction and it has a connection slot for the worker.
    Go(usize),
    /// Every mailbox the message may use is paused for at least this long: the message waits in the queue.
    Paused(Duration),
    /// All are at a rate or connection limit: look again after this.
    Wait(Duration),
}

/// Picks the mailbox for a transaction of `recipients`. The worker keeps the mailbox it is connected as
/// (`current`) while that one has room; otherwise the least used mailbox with room (fewest messages in
/// the last minute, then fewest connections). A pinned mailbox is the only candidate. The chosen one's
/// shaper admits the transaction, and it gains a connection unless it is the worker's current one.
fn choose(
    boxes: &mut [MailboxState],
    pinned: Option<&str>,
    current: Option<usize>,
    recipients: u32,
    now: SystemTime,
    instant: Instant,
    max_connections: usize,
) -> Choice {
    let pinned_at =
        pinned.and_then(|p| boxes.iter().position(|b| b.address.as_deref().is_some_and(|a| a.eq_ignore_ascii_case(p))));
    let candidates: Vec<usize> = match pinned_at {
        Some(i) => vec![i],
        None => (0..boxes.len()).collect(),
    };
    for &i in &candidates {
        if boxes[i].paused_until.is_some_and(|until| instant >= until) {
            boxes[i].paused_until = None;
        }
    }
    if let Some(left) =
        candidates.iter().map(|&i| boxes[i].paused_until.map(|u| u - instant)).collect::<Option<Vec<_>>>()
    {
        return Choice::Paused(left.into_iter().min().unwrap_or(Duration::ZERO));
    }
    let mut open: Vec<usize> = candidates
        .into_iter()
        .filter(|&i| boxes[i].paused_until.is_none() && (Some(i) == current || boxes[i].connections < max_connections))
        .collect();
    open.sort_by_key(|&i| (Some(i) != current, boxes[i].shaper.recent(now), boxes[i].connections));
    let mut wait = SHAPER_POLL;
    for (n, i) in open.into_iter().enumerate() {
        match boxes[i].shaper.admit(now, recipients) {
            Ok(()) => {
                if Some(i) != current {
                    boxes[i].connections += 1;
                }
                return Choice::Go(i);
            }
            Err(d) if n == 0 => wait = d,
            Err(d) => wait = wait.min(d),
        }
    }
    Choice::Wait(wait)
}

impl Scheduler {
    /// A queue with one upstream and no routes.
    pub fn new(spool: Spool, upstream: UpstreamConfig, retry: RetryPolicy, hostname: String) -> Scheduler {
        let routing = Routing::single(&upstream.name);
        Scheduler::with_routes(spool, vec![upstream], routing, retry, hostname)
    }

    /// A queue over several upstreams, each with its own lane (workers, hold, mailboxes), and the routes
    /// that choose between them. `routing` must name only upstreams in `upstreams` (the configuration
    /// checks that).
    pub fn with_routes(
        spool: Spool,
        upstreams: Vec<UpstreamConfig>,
        routing: Routing,
        retry: RetryPolicy,
        hostname: String,
    ) -> Scheduler {
        assert!(!upstreams.is_empty(), "at least one upstream");
        let system: ShapingClock = Arc::new(SystemTime::now);
        let lane_index = upstreams.iter().enumerate().map(|(i, u)| (u.name.clone(), i)).collect();
        let lanes: Vec<Lane> = upstreams
            .into_iter()
            .map(|upstream| {
                let addresses: Vec<Option<String>> = if upstream.mailboxes.is_empty() {
                    vec![None]
                } else {
                    upstream.mailboxes.iter().cloned().map(Some).collect()
                };
                let mailboxes = addresses
                    .into_iter()
                    .map(|address| MailboxState {
                        address,
                        shaper: Shaper::new(upstream.shaping),
                        paused_until: None,
                        connections: 0,
                    })
                    .collect();
                Lane {
                    transport: Upstream::new(upstream.clone()),
                    upstream,
                    route: Mutex::new(RouteState::default()),
                    mailboxes: Mutex::new(mailboxes),
                    wake: Notify::new(),
                    upstream_down: Mutex::new(None),
                    counters: stats::Counters::default(),
                }
            })
            .collect();
        let queue = Queue {
            due: lanes.iter().map(|_| BinaryHeap::new()).collect(),
            waiting: HashMap::new(),
            active: HashMap::new(),
        };
        Scheduler {
            inner: Arc::new(Inner {
                spool,
                lanes,
                lane_index,
                routing,
                clock: RwLock::new(system),
                retry,
                hostname,
                queue: Mutex::new(queue),
                events: broadcast::channel(1024).0,
            }),
        }
    }

    /// The route for a message being accepted (stored in its queue record).
    pub fn choose_route(&self, request: &RouteRequest<'_>) -> RouteChoice {
        self.inner.routing.choose(request).clone()
    }

    /// Adds a message that is already durable in the spool. A record whose upstream is no longer
    /// configured goes to the default route (with a warning), never dropped; a pinned mailbox no longer
    /// in the pool is unpinned.
    pub fn enqueue(&self, mut record: QueueRecord) {
        let inner = &self.inner;
        if let Some(route) = &mut record.route {
            match inner.lane_index.get(&route.upstream) {
                None => {
                    warn!(
                        queue_id = %record.id,
                        upstream = %route.upstream,
                        default = %inner.routing.fallback.upstream,
                        "the message's upstream is no longer configured; it goes by the default route"
                    );
                    *route = inner.routing.fallback.clone();
                }
                Some(&lane) => {
                    let pool = &inner.lanes[lane].upstream.mailboxes;
                    if let Some(m) = &route.mailbox
                        && !pool.iter().any(|x| x.eq_ignore_ascii_case(m))
                    {
                        warn!(queue_id = %record.id, mailbox = %m, upstream = %route.upstream,
                            "the message's mailbox is no longer in the pool; any mailbox of the pool sends it");
                        route.mailbox = None;
                    }
                }
            }
        }
        // Mail that arrives while its route is held waits with the hold: it is counted and listed as
        // held, and goes out when the hold is released.
        if record.admin_hold.is_none() {
            let mut route = inner.lanes[inner.lane_of(&record)].route.lock().expect("route lock");
            if route.hold.is_some() {
                route.held_ids.insert(record.id.clone());
            }
        }
        inner.requeue(record);
    }

    /// A stream of per-recipient verdicts from now on (lagging receivers lose the oldest).
    pub fn subscribe(&self) -> broadcast::Receiver<DeliveryEvent> {
        self.inner.events.subscribe()
    }

    /// Number of messages waiting (not counting those being delivered right now).
    pub fn waiting(&self) -> usize {
        self.inner.queue.lock().expect("queue lock").waiting.len()
    }

    /// The names of the upstreams, in the order of the configuration.
    pub fn upstreams(&self) -> Vec<String> {
        self.inner.lanes.iter().map(|l| l.upstream.name.clone()).collect()
    }

    /// The first held route, if any (with one upstream: its hold). See [`Scheduler::holds`].
    pub fn hold_status(&self) -> Option<HoldStatus> {
        self.holds().into_iter().next().map(|(_, h)| h)
    }

    /// Every held route, by upstream name.
    pub fn holds(&self) -> Vec<(String, HoldStatus)> {
        self.inner
            .lanes
            .iter()
            .filter_map(|lane| {
                let route = lane.route.lock().expect("route lock");
                route.hold.as_ref().map(|h| {
                    let status = HoldStatus {
                        reason: h.reason.clone(),
                        since_ms: h.since_ms,
                        recheck_in: h.until.saturating_duration_since(Instant::now()),
                        held_messages: route.held_ids.len(),
                    };
                    (lane.upstream.name.clone(), status)
                })
            })
            .collect()
    }

    /// Lifts every hold now (the admin fixed the cause): held mail becomes due at once. Returns whether
    /// any route was held.
    pub fn release_hold(&self) -> bool {
        let mut any = false;
        for lane in 0..self.inner.lanes.len() {
            any |= self.inner.release(lane);
        }
        any
    }

    /// Lifts the hold of one upstream. Returns whether it was held (false for an unknown name).
    pub fn release_hold_of(&self, upstream: &str) -> bool {
        self.inner.lane_index.get(upstream).is_some_and(|&lane| self.inner.release(lane))
    }

    /// Replaces the clock the per-mailbox rate limits count with (tests drive it with the simulator's
    /// manual clock). Call before mail flows.
    pub fn set_shaping_clock(&self, clock: ShapingClock) {
        *self.inner.clock.write().expect("clock lock") = clock;
    }

    /// Starts the delivery workers, `connections` per upstream; they stop when `shutdown` is cancelled,
    /// after finishing the message in hand.
    pub fn spawn_workers(&self, shutdown: CancellationToken) -> JoinSet<()> {
        let mut workers = JoinSet::new();
        for (lane, l) in self.inner.lanes.iter().enumerate() {
            for n in 0..l.upstream.connections {
                let inner = self.inner.clone();
                let shutdown = shutdown.clone();
                workers.spawn(async move { inner.worker(lane, n, shutdown).await });
            }
        }
        workers
    }
}

impl Inner {
    /// The lane of a record: its route's upstream, or the default route's.
    fn lane_of(&self, record: &QueueRecord) -> usize {
        let name = record.route.as_ref().map_or(&self.routing.fallback.upstream, |r| &r.upstream);
        self.lane_index.get(name).or_else(|| self.lane_index.get(&self.routing.fallback.upstream)).copied().unwrap_or(0)
    }

    fn release(&self, lane: usize) -> bool {
        let l = &self.lanes[lane];
        let (was_held, ids) = {
            let mut route = l.route.lock().expect("route lock");
            let was_held = route.hold.take().is_some();
            (was_held, std::mem::take(&mut route.held_ids))
        };
        // The error that caused the hold may still be cached as "upstream down"; the admin says it is fixed.
        *l.upstream_down.lock().expect("down lock") = None;
        if was_held {
            info!(upstream = %l.upstream.name, host = %l.upstream.display_name(), messages = ids.len(), "hold released");
        }
        let now = now_ms();
        {
            let mut queue = self.queue.lock().expect("queue lock");
            for id in ids {
                if let Some(record) = queue.waiting.get_mut(&id) {
                    record.next_attempt_ms = now;
                    queue.push_due(lane, now, id);
                }
            }
        }
        l.wake.notify_waiters();
        l.wake.notify_one();
        was_held
    }

    fn take_due(&self, lane: usize) -> Next {
        let now = now_ms();
        let l = &self.lanes[lane];
        {
            let mut route = l.route.lock().expect("route lock");
            let instant = Instant::now();
            if let Some(hold) = &route.hold {
                if instant < hold.until {
                    return Next::Wait(Some(now + hold.until.duration_since(instant).as_millis() as u64));
                }
                // hold_recheck has passed: try the route again. If the cause is still there, the first
                // attempt holds it again (with the same loud error).
                warn!(upstream = %l.upstream.name, reason = %hold.reason, "held route: trying again");
                route.hold = None;
                route.held_ids.clear();
            }
        }
        {
            // Every mailbox paused: nothing can go out before the first comes back.
            let boxes = l.mailboxes.lock().expect("mailbox lock");
            let instant = Instant::now();
            let left: Option<Vec<Duration>> =
                boxes.iter().map(|b| b.paused_until.filter(|u| instant < *u).map(|u| u - instant)).collect();
            if let Some(left) = left {
                let first = left.into_iter().min().unwrap_or(Duration::ZERO);
                return Next::Wait(Some(now + first.as_millis() as u64));
            }
        }
        let mut queue = self.queue.lock().expect("queue lock");
        while let Some(Reverse((due, id))) = queue.due[lane].peek().cloned() {
            let current = queue.waiting.get(&id).map(|r| r.next_attempt_ms);
            if current != Some(due) {
                queue.due[lane].pop(); // stale: delivered, rescheduled or taken since
                continue;
            }
            if due > now {
                return Next::Wait(Some(due));
            }
            queue.due[lane].pop();
            let record = queue.waiting.remove(&id).expect("checked above");
            queue.active.insert(id, record.clone());
            if queue.due[lane].peek().is_some_and(|Reverse((d, _))| *d <= now) {
                // More is due: let another worker start on it in parallel.
                l.wake.notify_one();
            }
            return Next::Deliver(Box::new(record));
        }
        Next::Wait(None)
    }

    async fn worker(self: Arc<Self>, lane: usize, n: usize, shutdown: CancellationToken) {
        let l = &self.lanes[lane];
        let mut slot: Option<Slot> = None;
        let mut idle_since = Instant::now();
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            match self.take_due(lane) {
                Next::Deliver(record) => {
                    self.attempt(lane, *record, &mut slot, &shutdown).await;
                    idle_since = Instant::now();
                }
                Next::Wait(due) => {
                    let until_due =
                        due.map_or(Duration::from_secs(3600), |d| Duration::from_millis(d.saturating_sub(now_ms())));
                    let idle_left = l.upstream.idle_timeout.saturating_sub(idle_since.elapsed());
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = l.wake.notified() => {}
                        _ = tokio::time::sleep(until_due) => {}
                        _ = tokio::time::sleep(idle_left), if slot.is_some() => {
                            if let Some(s) = slot.take() {
                                self.release_slot(lane, s).await;
                            }
                        }
                    }
                }
            }
        }
        if let Some(s) = slot.take() {
            self.release_slot(lane, s).await;
        }
        tracing::debug!(upstream = %l.upstream.name, worker = n, "delivery worker stopped");
    }

    /// Closes a worker's connection and gives its mailbox's connection slot back.
    async fn release_slot(&self, lane: usize, slot: Slot) {
        if let Some(c) = slot.conn {
            c.quit().await;
        }
        let mut boxes = self.lanes[lane].mailboxes.lock().expect("mailbox lock");
        boxes[slot.mailbox].connections = boxes[slot.mailbox].connections.saturating_sub(1);
    }

    /// Waits for a mailbox of the lane with room for a transaction of `recipients` (see [`choose`]).
    /// `Err(Some(wait))`: every mailbox the message may use is paused; `Err(None)`: shutting down.
    async fn pick_mailbox(
        &self,
        lane: usize,
        pinned: Option<&str>,
        current: Option<usize>,
        recipients: usize,
        shutdown: &CancellationToken,
    ) -> Result<usize, Option<Duration>> {
        let l = &self.lanes[lane];
        let mut logged = false;
        loop {
            let now = (self.clock.read().expect("clock lock"))();
            let choice = {
                let mut boxes = l.mailboxes.lock().expect("mailbox lock");
                let max = l.upstream.max_connections_per_mailbox;
                choose(&mut boxes, pinned, current, recipients as u32, now, Instant::now(), max)
            };
            let wait = match choice {
                Choice::Go(i) => return Ok(i),
                Choice::Paused(left) => return Err(Some(left)),
                // A message pinned to one mailbox goes back to the queue rather than keep this worker (and
                // its slot on another mailbox) waiting: the pool's other mail must not queue behind it.
                Choice::Wait(wait) if pinned.is_some() => return Err(Some(wait.max(SHAPER_POLL))),
                Choice::Wait(wait) => wait,
            };
            if !logged {
                info!(upstream = %l.upstream.name, ?wait, "every mailbox at its rate or connection limit; mail waits");
                logged = true;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Err(None),
                _ = tokio::time::sleep(wait.min(SHAPER_POLL)) => {}
            }
        }
    }

    /// Waits until mailbox `mb`'s rates admit another transaction of the same message (a split envelope).
    async fn admit(
        &self,
        lane: usize,
        mb: usize,
        recipients: usize,
        shutdown: &CancellationToken,
    ) -> Result<(), TransportError> {
        loop {
            let now = (self.clock.read().expect("clock lock"))();
            let wait =
                match self.lanes[lane].mailboxes.lock().expect("mailbox lock")[mb].shaper.admit(now, recipients as u32)
                {
                    Ok(()) => return Ok(()),
                    Err(wait) => wait,
                };
            tokio::select! {
                _ = shutdown.cancelled() => return Err(TransportError::Io("shutting down while waiting for the rate limit".into())),
                _ = tokio::time::sleep(wait.min(SHAPER_POLL)) => {}
            }
        }
    }

    /// One delivery attempt for one message, and everything that follows from it.
    async fn attempt(
        &self,
        lane: usize,
        mut record: QueueRecord,
        slot: &mut Option<Slot>,
        shutdown: &CancellationToken,
    ) {
        let l = &self.lanes[lane];
        let started = Instant::now();

        let pending: Vec<usize> =
            (0..record.recipients.len()).filter(|&i| record.recipients[i].status == RecipientStatus::Pending).collect();
        // Envelopes over the per-message recipient limit (or the limit learned from "too many
        // recipients") go out as several transactions.
        let batch = l
            .upstream
            .shaping
            .max_recipients_per_message
            .min(l.route.lock().expect("route lock").batch_limit.unwrap_or(usize::MAX))
            .max(1);

        // The mailbox: the route's, or the pool's least used with room. Mail over every limit waits here.
        let pinned = record.route.as_ref().and_then(|r| r.mailbox.clone());
        let current = slot.as_ref().map(|s| s.mailbox);
        let first = pending.len().min(batch).max(1);
        let mb = match self.pick_mailbox(lane, pinned.as_deref(), current, first, shutdown).await {
            Ok(mb) => mb,
            Err(paused) => {
                // Its mailboxes are paused, its pinned mailbox has no room, or we are stopping: back to the
                // queue, no attempt counted (and the body not read for nothing).
                record.next_attempt_ms = now_ms() + paused.unwrap_or(Duration::ZERO).as_millis() as u64;
                self.requeue(record);
                return;
            }
        };
        if current != Some(mb) {
            if let Some(old) = slot.take() {
                self.release_slot(lane, old).await;
            }
            *slot = Some(Slot { mailbox: mb, conn: None });
        }
        let mailbox = l.mailboxes.lock().expect("mailbox lock")[mb].address.clone();

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
                // Admitted with the mailbox, never sent.
                l.mailboxes.lock().expect("mailbox lock")[mb].shaper.refund(first as u32);
                record.last_reply = Some(format!("cannot read spooled body: {reason}"));
                record.attempts += 1;
                self.finish_attempt(lane, record, Vec::new(), None).await;
                return;
            }
        };

        // Senders Microsoft accepts: the mailbox as sender (when the route or upstream says so), a
        // well-formed From.
        let rewrite = record.route.as_ref().and_then(|r| r.sender_rewrite).unwrap_or(l.upstream.sender_rewrite);
        let (sender, body) = prepare_sender(&l.upstream, mailbox.as_deref(), rewrite, &record.sender, body);

        let conn = &mut slot.as_mut().expect("slot taken above").conn;
        let mut results: Vec<(usize, Outcome)> = Vec::with_capacity(pending.len());
        for (n, chunk) in pending.chunks(batch).enumerate() {
            let envelope = Envelope {
                sender: &sender,
                recipients: chunk.iter().map(|&i| record.recipients[i].address.as_str()).collect(),
                eight_bit: record.eight_bit,
                smtputf8: record.smtputf8,
            };
            // The first transaction was admitted with the mailbox; the next ones wait for its rates.
            let admitted = if n == 0 { Ok(()) } else { self.admit(lane, mb, chunk.len(), shutdown).await };
            let verdicts = match admitted {
                Err(e) => vec![Outcome::Transport(e); chunk.len()],
                Ok(()) => match self.transmit(lane, mailbox.as_deref(), conn, &envelope, &body).await {
                    Ok(verdicts) => verdicts,
                    Err(Unsent { error, reached_upstream }) => {
                        if !reached_upstream {
                            // An outage must not use up the mailbox's minute and day.
                            l.mailboxes.lock().expect("mailbox lock")[mb].shaper.refund(chunk.len() as u32);
                        }
                        vec![Outcome::Transport(error); chunk.len()]
                    }
                },
            };
            let stop = verdicts
                .iter()
                .any(|v| !matches!(classify(l.upstream.kind, v), Disposition::Delivered | Disposition::Permanent));
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
        self.record_results(lane, mb, mailbox, record, results, started).await;
    }

    /// Sends over the worker's cached connection, opening one as `mailbox` when needed. A cached
    /// connection found dead before the transaction started is replaced once.
    async fn transmit(
        &self,
        lane: usize,
        mailbox: Option<&str>,
        conn: &mut Option<Connection>,
        envelope: &Envelope<'_>,
        body: &[u8],
    ) -> Result<Vec<Outcome>, Unsent> {
        let l = &self.lanes[lane];
        let unreached = |error| Unsent { error, reached_upstream: false };
        loop {
            if conn.as_ref().is_some_and(|c| c.transactions() >= l.upstream.max_messages_per_connection)
                && let Some(old) = conn.take()
            {
                old.quit().await;
            }
            let fresh = conn.is_none();
            if fresh {
                if let Some((until, error)) = l.upstream_down.lock().expect("down lock").clone()
                    && Instant::now() < until
                {
                    return Err(unreached(error));
                }
                match l.transport.connect_as(mailbox).await {
                    Ok(c) => {
                        *l.upstream_down.lock().expect("down lock") = None;
                        *conn = Some(c);
                    }
                    Err(error) => {
                        let pause = self.retry.initial_interval.min(MAX_UPSTREAM_BACKOFF);
                        warn!(upstream = %l.upstream.name, host = %l.upstream.display_name(), mailbox = mailbox.unwrap_or(""), %error, ?pause, "upstream unavailable");
                        *l.upstream_down.lock().expect("down lock") = Some((Instant::now() + pause, error.clone()));
                        return Err(unreached(error));
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
                Err(error) => {
                    *conn = None;
                    return Err(Unsent { error, reached_upstream: true });
                }
            }
        }
    }

    async fn record_results(
        &self,
        lane: usize,
        mb: usize,
        mailbox: Option<String>,
        mut record: QueueRecord,
        results: Vec<(usize, Outcome)>,
        started: Instant,
    ) {
        let l = &self.lanes[lane];
        let upstream = l.upstream.display_name();
        let (results, delay) = if l.upstream.kind.is_m365() {
            match self.apply_actions(lane, mb, &mut record, results) {
                Some(applied) => applied,
                // Everything was held: no verdict, no attempt.
                None => return self.put_aside(lane, record).await,
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
            match classify(l.upstream.kind, &outcome) {
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
            if summary.is_none() || classify(l.upstream.kind, &outcome) != Disposition::Delivered {
                summary = Some(text.clone());
            }
            verdicts.push(DeliveryEvent {
                queue_id: record.id.clone(),
                sender: record.sender.clone(),
                recipient: rcpt.address.clone(),
                upstream: l.upstream.name.clone(),
                mailbox: mailbox.clone(),
                disposition: classify(l.upstream.kind, &outcome),
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
            upstream = %l.upstream.name,
            host = %upstream,
            mailbox = mailbox.as_deref().unwrap_or(""),
            attempt = record.attempts + 1,
            delivered,
            deferred,
            bounced = failed.len(),
            reply = record.last_reply.as_deref().unwrap_or(""),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "delivery attempt"
        );
        record.attempts += 1;
        let bounce_id = self.finish_attempt(lane, record, failed, delay).await;
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
        lane: usize,
        mb: usize,
        record: &mut QueueRecord,
        results: Vec<(usize, Outcome)>,
    ) -> Option<(Results, Option<Duration>)> {
        let l = &self.lanes[lane];
        let upstream = &l.upstream;
        let hold = results.iter().find(|(_, o)| microsoft::action(o) == Action::Hold).map(|(_, o)| (o.describe(), o));
        // The fix names the mailbox this attempt signed in as (a pool's member, or the upstream's one).
        let fix = hold.as_ref().and_then(|(_, o)| microsoft::explain(o)).map(|d| {
            let mailbox = l.mailboxes.lock().expect("mailbox lock")[mb].address.clone();
            let oauth = upstream.oauth.as_ref().map(|o| o.client_id.as_str());
            d.fix_for(mailbox.as_deref().or(upstream.mailbox.as_deref()), oauth)
        });
        let hold = hold.map(|(reason, _)| reason);
        let mut route = l.route.lock().expect("route lock");
        if let Some(reason) = hold {
            // With the route held, every recipient without a final verdict waits with the hold.
            let (kept, held): (Vec<_>, Vec<_>) =
                results.into_iter().partition(|(_, o)| classify(upstream.kind, o) != Disposition::Temporary);
            for (i, o) in &held {
                record.recipients[*i].last_reply = Some(o.describe());
                l.counters.held(o);
            }
            record.last_reply = Some(reason.clone());
            if route.hold.is_none() {
                // Loud: nothing will be delivered on this route until the cause is fixed.
                error!(
                    upstream = %upstream.name,
                    host = %upstream.display_name(),
                    kind = upstream.kind.name(),
                    reason = %reason,
                    recheck_in = %humantime::format_duration(upstream.hold_recheck),
                    fix = fix.as_deref().unwrap_or("see `sluice probe`"),
                    "ROUTE HELD: the upstream refused us for a configuration reason; mail stays queued (not bounced) \
                     until the cause is fixed and the hold released, or hold_recheck passes"
                );
                route.hold = Some(Hold { reason, since_ms: now_ms(), until: Instant::now() + upstream.hold_recheck });
                // The route's mail already waiting is held with it (and what arrives later: `enqueue`).
                let queue = self.queue.lock().expect("queue lock");
                let waiting = queue.waiting.values().filter(|r| r.admin_hold.is_none() && self.lane_of(r) == lane);
                route.held_ids.extend(waiting.map(|r| r.id.clone()));
            }
            route.held_ids.insert(record.id.clone());
            if kept.is_empty() {
                return None;
            }
            return Some((kept, Some(upstream.hold_recheck)));
        }

        let mut delay: Option<Duration> = None;
        let mut later = |d: Duration| delay = Some(delay.map_or(d, |x| x.max(d)));
        let attempted = results.len();
        let delivered = results.iter().filter(|(_, o)| classify(upstream.kind, o) == Disposition::Delivered).count();
        // Pausing a mailbox pauses only that one: a message the route does not pin to it goes out at once
        // through another mailbox of the pool, if one is not paused.
        let pinned = record.route.as_ref().is_some_and(|r| r.mailbox.is_some());
        let pause = |d: Duration| {
            let mut boxes = l.mailboxes.lock().expect("mailbox lock");
            let until = Instant::now() + d;
            boxes[mb].paused_until = Some(boxes[mb].paused_until.map_or(until, |u| u.max(until)));
            let now = Instant::now();
            let others = boxes.iter().any(|b| b.paused_until.is_none_or(|u| u <= now));
            if others && !pinned { Duration::ZERO } else { d }
        };
        let mailbox = l.mailboxes.lock().expect("mailbox lock")[mb].address.clone().unwrap_or_default();
        for (_, outcome) in &results {
            match microsoft::action(outcome) {
                Action::BackOffMailbox => {
                    info!(upstream = %upstream.name, %mailbox, "mailbox at its connection limit; it pauses briefly");
                    later(pause(microsoft::MAILBOX_BACKOFF));
                }
                Action::DeferWindow => {
                    warn!(upstream = %upstream.name, %mailbox, "mailbox over its 24 h recipient quota; it is paused and its mail deferred");
                    later(pause(microsoft::QUOTA_DEFERRAL));
                }
                Action::Split => {
                    let current = route.batch_limit.unwrap_or(upstream.shaping.max_recipients_per_message);
                    let learned = if delivered > 0 { delivered } else { (attempted.min(current) / 2).max(1) };
                    if learned < current {
                        info!(upstream = %upstream.name, recipients = learned, "too many recipients: sending in smaller batches");
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
    async fn put_aside(&self, lane: usize, mut record: QueueRecord) {
        record.next_attempt_ms = now_ms() + self.lanes[lane].upstream.hold_recheck.as_millis() as u64;
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

    /// The mailbox DSNs go out as, on upstreams that send as a mailbox: Microsoft refuses the null sender
    /// and a MAILER-DAEMON From there. The DSN is pinned to it, so the From matches the mailbox that sends.
    fn dsn_mailbox(&self, lane: usize) -> Option<String> {
        let upstream = &self.lanes[lane].upstream;
        upstream.kind.sends_as_mailbox().then(|| upstream.mailbox.clone()).flatten()
    }

    fn is_held(&self, lane: usize) -> bool {
        self.lanes[lane].route.lock().expect("route lock").hold.is_some()
    }

    /// Applies the retry policy, queues a DSN for what failed, and persists the new state.
    /// `delay` replaces the schedule's delay (the reply table's actions, `Retry-After`).
    /// Returns the queue id of the DSN it queued, if any.
    async fn finish_attempt(
        &self,
        lane: usize,
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
                RetryDecision::GiveUp if self.is_held(lane) => {
                    record.next_attempt_ms = now + self.lanes[lane].upstream.hold_recheck.as_millis() as u64;
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
            } else if let Err(e) =
                self.queue_dsn(lane, &record, &failed, DsnVerdict::Upstream).await.map(|id| bounce_id = Some(id))
            {
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
            self.queue.lock().expect("queue lock").active.remove(&record.id);
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

    /// Puts a record (back) in its lane's queue.
    fn requeue(&self, record: QueueRecord) {
        let lane = self.lane_of(&record);
        {
            let mut queue = self.queue.lock().expect("queue lock");
            queue.active.remove(&record.id);
            queue.push_due(lane, record.next_attempt_ms, record.id.clone());
            queue.waiting.insert(record.id.clone(), record);
        }
        self.lanes[lane].wake.notify_one();
    }

    /// Queues the DSN for `failed`; it goes back through the same upstream as the original. Durable when
    /// it returns.
    async fn queue_dsn(
        &self,
        lane: usize,
        original: &QueueRecord,
        failed: &[FailedRecipient],
        verdict: DsnVerdict,
    ) -> std::io::Result<String> {
        let spool = self.spool.clone();
        let id = original.id.clone();
        let original_body = tokio::task::spawn_blocking(move || spool.read_body(&id))
            .await
            .map_err(std::io::Error::other)?
            .unwrap_or_default();
        let now = Utc::now();
        let arrival = Utc.timestamp_millis_opt(original.received_at_ms as i64).single().unwrap_or(now);
        let upstream = self.lanes[lane].upstream.display_name();
        let dsn_mailbox = self.dsn_mailbox(lane);
        let (remote_mta, client) = match verdict {
            DsnVerdict::Upstream => (Some(upstream.as_str()), format!("DSN for {}", original.id)),
            // Nobody upstream gave this verdict: the DSN names no remote MTA.
            DsnVerdict::Administrator => (None, format!("DSN for {} (bounced by the administrator)", original.id)),
        };
        let body = dsn::build(&DsnInput {
            reporting_host: &self.hostname,
            remote_mta,
            queue_id: &original.id,
            original_sender: &original.sender,
            arrival,
            now,
            failed,
            original: &original_body,
            from_mailbox: dsn_mailbox.as_deref(),
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
            client,
            route: Some(RouteChoice {
                upstream: self.lanes[lane].upstream.name.clone(),
                mailbox: dsn_mailbox,
                sender_rewrite: None,
            }),
            admin_hold: None,
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

/// The envelope sender and message as they go upstream. Microsoft kinds: with the sender rewrite (the
/// route's, else the upstream's) a sender other than the mailbox becomes the mailbox the attempt uses
/// (original in Reply-To); otherwise the From header is only fixed where Microsoft would refuse it. The
/// queued record keeps the original sender (DSNs go back to it).
fn prepare_sender(
    upstream: &UpstreamConfig,
    mailbox: Option<&str>,
    rewrite: SenderRewrite,
    sender: &str,
    body: Vec<u8>,
) -> (String, Vec<u8>) {
    use crate::upstream::rewrite;
    if !upstream.kind.is_m365() {
        return (sender.to_owned(), body);
    }
    // A DSN (null sender) through a mailbox upstream goes out as the mailbox (its From already is, see
    // `dsn_mailbox`). Its record keeps the null sender, so a failure is still dropped, never bounced.
    if sender.is_empty()
        && let Some(mailbox) = mailbox
        && upstream.kind.sends_as_mailbox()
    {
        return (mailbox.to_owned(), body);
    }
    if rewrite == SenderRewrite::Mailbox
        && let Some(mailbox) = mailbox
        && !sender.is_empty()
        && !sender.eq_ignore_ascii_case(mailbox)
    {
        return (mailbox.to_owned(), rewrite::to_mailbox(&body, sender, mailbox));
    }
    match rewrite::fix_from(&body, sender) {
        Some(fixed) => (sender.to_owned(), fixed),
        None => (sender.to_owned(), body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Shaping;

    fn pool(addresses: &[&str]) -> Vec<MailboxState> {
        let shaping = Shaping { messages_per_minute: 30, recipients_per_day: 10_000, max_recipients_per_message: 500 };
        addresses
            .iter()
            .map(|a| MailboxState {
                address: Some(a.to_string()),
                shaper: Shaper::new(shaping),
                paused_until: None,
                connections: 0,
            })
            .collect()
    }

    const T0: Duration = Duration::from_secs(1_000_000);

    #[test]
    fn a_pool_shares_the_load_and_each_mailbox_keeps_its_rate() {
        let mut boxes = pool(&["a@contoso.com", "b@contoso.com"]);
        let (now, instant) = (SystemTime::UNIX_EPOCH + T0, Instant::now());
        // Two workers: the first takes a, the second the less used b.
        assert_eq!(choose(&mut boxes, None, None, 1, now, instant, 3), Choice::Go(0));
        assert_eq!(choose(&mut boxes, None, None, 1, now, instant, 3), Choice::Go(1));
        // Each keeps its mailbox while it has room.
        let mut sent = [1, 1];
        for _ in 0..29 {
            for w in 0..2 {
                match choose(&mut boxes, None, Some(w), 1, now, instant, 3) {
                    Choice::Go(i) => sent[i] += 1,
                    other => panic!("{other:?}"),
                }
            }
        }
        assert_eq!(sent, [30, 30]);
        // 60 in the minute: both full, the next waits (never a failure) for the oldest to leave the window.
        assert_eq!(choose(&mut boxes, None, Some(0), 1, now, instant, 3), Choice::Wait(Duration::from_secs(60)));
        let later = now + Duration::from_secs(60);
        assert_eq!(choose(&mut boxes, None, Some(0), 1, later, instant, 3), Choice::Go(0));
        assert_eq!(boxes[0].connections + boxes[1].connections, 2);
    }

    #[test]
    fn a_full_mailbox_sends_its_worker_to_another_with_a_free_connection() {
        let mut boxes = pool(&["a@contoso.com", "b@contoso.com"]);
        let (now, instant) = (SystemTime::UNIX_EPOCH + T0, Instant::now());
        for _ in 0..30 {
            assert_eq!(choose(&mut boxes, Some("a@contoso.com"), Some(0), 1, now, instant, 3), Choice::Go(0));
        }
        boxes[0].connections = 1;
        boxes[1].connections = 3;
        // a is at its rate, b at its connection limit: wait.
        assert!(matches!(choose(&mut boxes, None, Some(0), 1, now, instant, 3), Choice::Wait(_)));
        boxes[1].connections = 2;
        assert_eq!(choose(&mut boxes, None, Some(0), 1, now, instant, 3), Choice::Go(1));
        assert_eq!(boxes[1].connections, 3, "the worker took a connection slot of b");
    }

    #[test]
    fn a_pinned_mailbox_is_the_only_one_and_a_pause_is_per_mailbox() {
        let mut boxes = pool(&["a@contoso.com", "b@contoso.com"]);
        let (now, instant) = (SystemTime::UNIX_EPOCH + T0, Instant::now());
        boxes[1].paused_until = Some(instant + Duration::from_secs(30));
        assert_eq!(
            choose(&mut boxes, Some("B@contoso.com"), None, 1, now, instant, 3),
            Choice::Paused(Duration::from_secs(30))
        );
        // Unpinned mail goes through a.
        assert_eq!(choose(&mut boxes, None, None, 1, now, instant, 3), Choice::Go(0));
        assert_eq!(choose(&mut boxes, None, None, 1, now, instant, 3), Choice::Go(0), "b is paused");
        // The pause ends on its own.
        let after = instant + Duration::from_secs(31);
        assert_eq!(choose(&mut boxes, Some("b@contoso.com"), None, 1, now, after, 3), Choice::Go(1));
        // Both paused: the message waits in the queue for the first to come back.
        boxes[0].paused_until = Some(instant + Duration::from_secs(5));
        boxes[1].paused_until = Some(instant + Duration::from_secs(9));
        assert_eq!(choose(&mut boxes, None, None, 1, now, instant, 3), Choice::Paused(Duration::from_secs(5)));
    }

    #[test]
    fn no_mailbox_no_limits() {
        let mut boxes = vec![MailboxState {
            address: None,
            shaper: Shaper::new(Shaping {
                messages_per_minute: 0,
                recipients_per_day: 0,
                max_recipients_per_message: usize::MAX,
            }),
            paused_until: None,
            connections: 0,
        }];
        let (now, instant) = (SystemTime::UNIX_EPOCH + T0, Instant::now());
        for w in 0..50 {
            assert_eq!(choose(&mut boxes, None, None, 1000, now, instant, usize::MAX), Choice::Go(0), "worker {w}");
        }
    }
}
