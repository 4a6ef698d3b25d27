//! What the relay counts, for Prometheus (`/metrics` on the admin interface) and the status page.
//!
//! One [`Metrics`] per process, shared through `Arc`: the listeners count sessions, accepted messages and
//! refusals where they happen; deliveries are counted from the scheduler's event stream
//! ([`Metrics::watch`]), which also keeps the last deliveries and the upstream's health for the status
//! page; the queue, the hold, the mailbox's rate use and token requests are read from
//! [`Scheduler::stats`] when scraped ([`Metrics::observe`]).
//!
//! Names are prefixed `sluice_`; the README's "Observability" section lists them.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tokio::sync::broadcast;

use crate::scheduler::stats::SchedulerStats;
use crate::scheduler::{DeliveryEvent, Scheduler};
use crate::spool::now_ms;
use crate::upstream::Disposition;

/// How many deliveries the status page remembers.
pub const RECENT: usize = 100;

/// Why a client was refused something: the `reason` label of `sluice_messages_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// RCPT from a client with none of the credentials the listener requires.
    RelayDenied,
    /// AUTH without TLS, or relaying refused where the listener requires AUTH.
    AuthRequired,
    /// Wrong user name or password.
    AuthFailed,
    /// SIZE at MAIL, the content, its header section or a line over its limit.
    Size,
    TooManyRecipients,
    /// A sender or recipient domain outside the identity's rules.
    Policy,
    /// Content refused as such: bare line endings (when refused), a mail loop.
    Content,
    /// Connection limits, bans, protocol abuse (improper pipelining, talking first, too many errors),
    /// data rate too low.
    AbuseLimit,
    /// The spool's disk is below `min_free_space`, or full.
    DiskLow,
    /// The spool could not commit the message.
    SpoolError,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::RelayDenied => "relay_denied",
            Rejection::AuthRequired => "auth_required",
            Rejection::AuthFailed => "auth_failed",
            Rejection::Size => "size",
            Rejection::TooManyRecipients => "too_many_recipients",
            Rejection::Policy => "policy",
            Rejection::Content => "content",
            Rejection::AbuseLimit => "abuse_limit",
            Rejection::DiskLow => "disk_low",
            Rejection::SpoolError => "spool_error",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    upstream: String,
    result: &'static str,
    reply_class: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabel {
    upstream: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MailboxLabel {
    mailbox: String,
}

/// One delivery outcome as the status page shows it.
#[derive(Debug, Clone)]
pub struct RecentDelivery {
    pub at_ms: u64,
    pub queue_id: String,
    pub sender: String,
    pub recipient: String,
    /// `delivered`, `deferred` or `bounced`.
    pub result: &'static str,
    pub reply: String,
    pub bounce_id: Option<String>,
}

/// The upstream as seen from its outcomes.
#[derive(Debug, Clone, Default)]
pub struct UpstreamHealth {
    pub last_success_ms: Option<u64>,
    pub last_failure_ms: Option<u64>,
    pub last_failure: Option<String>,
    /// Since when every attempt has met transport trouble (none since the last success).
    pub down_since_ms: Option<u64>,
}

pub struct Metrics {
    registry: Registry,
    sessions: Family<ListenerLabel, Counter>,
    sessions_active: Family<ListenerLabel, Gauge>,
    accepted: Family<ListenerLabel, Counter>,
    rejected: Family<ReasonLabel, Counter>,
    auth_failures: Counter,
    relay_denied: Counter,
    deliveries: Family<DeliveryLabels, Counter>,
    latency: Family<UpstreamLabel, Histogram>,
    queue: Family<StateLabel, Gauge>,
    oldest: Gauge<f64, AtomicU64>,
    held: Family<UpstreamLabel, Gauge>,
    token_refreshes: Counter,
    token_failures: Counter,
    quota_messages: Family<MailboxLabel, Gauge>,
    quota_messages_limit: Family<MailboxLabel, Gauge>,
    quota_recipients: Family<MailboxLabel, Gauge>,
    quota_recipients_limit: Family<MailboxLabel, Gauge>,
    recent: Mutex<VecDeque<RecentDelivery>>,
    /// By upstream name.
    health: Mutex<HashMap<String, UpstreamHealth>>,
}

/// Buckets of the accepted → delivered histogram, in seconds: from sub-second relaying to a day of
/// retries.
const LATENCY_BUCKETS: [f64; 14] =
    [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 4.0 * 3600.0, 24.0 * 3600.0];

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("sluice");
        let m = Metrics {
            registry: Registry::default(),
            sessions: Family::default(),
            sessions_active: Family::default(),
            accepted: Family::default(),
            rejected: Family::default(),
            auth_failures: Counter::default(),
            relay_denied: Counter::default(),
            deliveries: Family::default(),
            latency: Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS)),
            queue: Family::default(),
            oldest: Gauge::default(),
            held: Family::default(),
            token_refreshes: Counter::default(),
            token_failures: Counter::default(),
            quota_messages: Family::default(),
            quota_messages_limit: Family::default(),
            quota_recipients: Family::default(),
            quota_recipients_limit: Family::default(),
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
            health: Mutex::new(HashMap::new()),
        };
        // Families are handles: the registry keeps clones that share the values.
        registry.register("sessions", "SMTP sessions opened, by listener", m.sessions.clone());
        registry.register("sessions_active", "SMTP sessions open now, by listener", m.sessions_active.clone());
        registry.register(
            "messages_accepted",
            "Messages accepted (durable in the spool), by listener",
            m.accepted.clone(),
        );
        registry.register("messages_rejected", "Commands or messages refused, by reason", m.rejected.clone());
        registry.register("auth_failures", "Failed SMTP AUTH attempts", m.auth_failures.clone());
        registry.register("relay_denied", "RCPTs refused because the client may not relay", m.relay_denied.clone());
        registry.register(
            "deliveries",
            "Per-recipient delivery outcomes, by upstream, result (delivered, deferred, bounced, held) and reply class",
            m.deliveries.clone(),
        );
        registry.register_with_unit(
            "delivery_latency",
            "Time from accepting a message to its delivery, per delivered recipient",
            Unit::Seconds,
            m.latency.clone(),
        );
        registry.register(
            "queue_messages",
            "Messages waiting in the queue, by state (new, deferred, held by a route, admin_held)",
            m.queue.clone(),
        );
        registry.register_with_unit(
            "queue_oldest_message_age",
            "Age of the oldest waiting message, not counting those an admin holds (0 when none)",
            Unit::Seconds,
            m.oldest.clone(),
        );
        registry.register(
            "route_held",
            "1 while the upstream route is held for a configuration problem",
            m.held.clone(),
        );
        registry.register("oauth_token_refreshes", "Access tokens obtained from Entra ID", m.token_refreshes.clone());
        registry.register("oauth_token_failures", "Token requests that failed", m.token_failures.clone());
        registry.register(
            "mailbox_messages_last_minute",
            "Messages sent as the mailbox in the last minute",
            m.quota_messages.clone(),
        );
        registry.register(
            "mailbox_messages_per_minute_limit",
            "The mailbox's messages-a-minute limit",
            m.quota_messages_limit.clone(),
        );
        registry.register(
            "mailbox_recipients_last_24h",
            "Recipients sent to as the mailbox in the last 24 hours",
            m.quota_recipients.clone(),
        );
        registry.register(
            "mailbox_recipients_per_day_limit",
            "The mailbox's recipients-a-day limit",
            m.quota_recipients_limit.clone(),
        );
        Metrics { registry, ..m }
    }

    // ----- listeners -----

    /// A session opened on `listener`; it counts as active until the guard is dropped.
    pub fn session_started(self: &Arc<Self>, listener: &str) -> SessionGuard {
        let label = ListenerLabel { listener: listener.to_owned() };
        self.sessions.get_or_create(&label).inc();
        self.sessions_active.get_or_create(&label).inc();
        SessionGuard { metrics: self.clone(), label }
    }

    pub fn accepted(&self, listener: &str) {
        self.accepted.get_or_create(&ListenerLabel { listener: listener.to_owned() }).inc();
    }

    pub fn rejected(&self, why: Rejection) {
        self.rejected.get_or_create(&ReasonLabel { reason: why.as_str() }).inc();
        if why == Rejection::AuthFailed {
            self.auth_failures.inc();
        }
    }

    /// A RCPT refused because the client may not relay (`reason` says whether AUTH would have helped).
    pub fn relay_refused(&self, why: Rejection) {
        self.relay_denied.inc();
        self.rejected(why);
    }

    // ----- deliveries -----

    /// Counts every delivery event of `scheduler` from now on, until the scheduler is gone.
    pub fn watch(self: &Arc<Self>, scheduler: &Scheduler) {
        let mut events = scheduler.subscribe();
        let metrics = self.clone();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(event) => metrics.delivery(&event),
                    // A slow consumer lost some events: the counters are short by that many.
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(lost = n, "metrics fell behind the delivery events");
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
    }

    /// Counts one per-recipient outcome.
    pub fn delivery(&self, event: &DeliveryEvent) {
        let upstream = event.upstream.as_str();
        let now = now_ms();
        let result = match event.disposition {
            Disposition::Delivered => "delivered",
            Disposition::Temporary => "deferred",
            Disposition::Permanent => "bounced",
        };
        let labels = DeliveryLabels { upstream: upstream.to_owned(), result, reply_class: event.reply_class.as_str() };
        self.deliveries.get_or_create(&labels).inc();
        if event.disposition == Disposition::Delivered {
            let seconds = now.saturating_sub(event.accepted_ms) as f64 / 1000.0;
            self.latency.get_or_create(&UpstreamLabel { upstream: upstream.to_owned() }).observe(seconds);
        }
        {
            let mut all = self.health.lock().expect("health lock");
            let health = all.entry(upstream.to_owned()).or_default();
            if event.disposition == Disposition::Temporary {
                health.last_failure_ms = Some(now);
                health.last_failure = Some(event.reply.clone());
                if event.reply_class == crate::scheduler::stats::ReplyClass::Transport {
                    health.down_since_ms.get_or_insert(now);
                }
            } else {
                // A verdict from the upstream (even a bounce) means it is up and answering.
                health.last_success_ms = Some(now);
                health.down_since_ms = None;
            }
        }
        let mut recent = self.recent.lock().expect("recent lock");
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(RecentDelivery {
            at_ms: now,
            queue_id: event.queue_id.clone(),
            sender: event.sender.clone(),
            recipient: event.recipient.clone(),
            result,
            reply: event.reply.clone(),
            bounce_id: event.bounce_id.clone(),
        });
    }

    /// The last deliveries, newest first.
    pub fn recent(&self) -> Vec<RecentDelivery> {
        self.recent.lock().expect("recent lock").iter().rev().cloned().collect()
    }

    /// What the delivery events said of `upstream` so far.
    pub fn health(&self, upstream: &str) -> UpstreamHealth {
        self.health.lock().expect("health lock").get(upstream).cloned().unwrap_or_default()
    }

    // ----- scrape time -----

    /// Copies the scheduler's snapshot into the gauges (and the counters it keeps itself).
    pub fn observe(&self, stats: &SchedulerStats) {
        for (state, count) in stats.queue.by_state() {
            self.queue.get_or_create(&StateLabel { state }).set(count as i64);
        }
        self.oldest.set(stats.oldest_age.map_or(0.0, |a| a.as_secs_f64()));
        let (mut refreshes, mut failures) = (0, 0);
        for upstream in &stats.upstreams {
            self.held
                .get_or_create(&UpstreamLabel { upstream: upstream.name.clone() })
                .set(i64::from(upstream.hold.is_some()));
            for (class, count) in &upstream.held_outcomes {
                if *count > 0 {
                    let labels =
                        DeliveryLabels { upstream: upstream.name.clone(), result: "held", reply_class: class.as_str() };
                    // The scheduler's own count is the truth; the counter mirrors it.
                    self.deliveries.get_or_create(&labels).inner().store(*count, Ordering::Relaxed);
                }
            }
            if let Some(tokens) = upstream.tokens {
                refreshes += tokens.refreshes;
                failures += tokens.failures;
            }
        }
        self.token_refreshes.inner().store(refreshes, Ordering::Relaxed);
        self.token_failures.inner().store(failures, Ordering::Relaxed);
        for quota in stats.upstreams.iter().flat_map(|u| &u.quotas) {
            let label = MailboxLabel { mailbox: quota.mailbox.clone() };
            self.quota_messages.get_or_create(&label).set(i64::from(quota.messages_last_minute));
            self.quota_messages_limit.get_or_create(&label).set(i64::from(quota.messages_per_minute));
            self.quota_recipients.get_or_create(&label).set(quota.recipients_last_24h as i64);
            self.quota_recipients_limit.get_or_create(&label).set(i64::from(quota.recipients_per_day));
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

/// Keeps a session counted as active.
pub struct SessionGuard {
    metrics: Arc<Metrics>,
    label: ListenerLabel,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.metrics.sessions_active.get_or_create(&self.label).dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::stats::ReplyClass;

    fn event(upstream: &str, disposition: Disposition, class: ReplyClass, accepted_ms: u64) -> DeliveryEvent {
        DeliveryEvent {
            upstream: upstream.into(),
            mailbox: None,
            queue_id: "q1".into(),
            sender: "a@example.com".into(),
            recipient: "b@example.com".into(),
            disposition,
            reply: "250 2.0.0 Ok".into(),
            bounce_id: None,
            accepted_ms,
            reply_class: class,
        }
    }

    #[test]
    fn deliveries_are_counted_by_result_and_class() {
        let m = Arc::new(Metrics::new());
        m.delivery(&event("smarthost", Disposition::Delivered, ReplyClass::Smtp2xx, now_ms() - 2000));
        m.delivery(&event("smarthost", Disposition::Temporary, ReplyClass::Transport, now_ms()));
        m.delivery(&event("smarthost", Disposition::Permanent, ReplyClass::Smtp5xx, now_ms()));
        let text = m.encode();
        assert!(
            text.contains(r#"sluice_deliveries_total{upstream="smarthost",result="delivered",reply_class="2xx"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"result="deferred",reply_class="transport"} 1"#), "{text}");
        assert!(text.contains(r#"result="bounced",reply_class="5xx"} 1"#), "{text}");
        assert!(text.contains(r#"sluice_delivery_latency_seconds_count{upstream="smarthost"} 1"#), "{text}");
        assert!(text.contains(r#"sluice_delivery_latency_seconds_bucket{le="1.0",upstream="smarthost"} 0"#), "{text}");
        assert_eq!(m.recent().len(), 3);
        assert_eq!(m.recent()[0].result, "bounced", "newest first");
        // A bounce is still an answer: the upstream is up.
        assert!(m.health("smarthost").down_since_ms.is_none());
    }

    #[test]
    fn sessions_and_refusals() {
        let m = Arc::new(Metrics::new());
        let guard = m.session_started("127.0.0.1:25");
        m.relay_refused(Rejection::RelayDenied);
        m.rejected(Rejection::AuthFailed);
        let text = m.encode();
        assert!(text.contains(r#"sluice_sessions_active{listener="127.0.0.1:25"} 1"#), "{text}");
        assert!(text.contains("sluice_relay_denied_total 1"), "{text}");
        assert!(text.contains("sluice_auth_failures_total 1"), "{text}");
        assert!(text.contains(r#"sluice_messages_rejected_total{reason="relay_denied"} 1"#), "{text}");
        drop(guard);
        assert!(m.encode().contains(r#"sluice_sessions_active{listener="127.0.0.1:25"} 0"#));
    }

    #[test]
    fn the_ring_keeps_the_last_hundred() {
        let m = Metrics::new();
        for _ in 0..RECENT + 5 {
            m.delivery(&event("u", Disposition::Delivered, ReplyClass::Smtp2xx, now_ms()));
        }
        assert_eq!(m.recent().len(), RECENT);
    }
}
