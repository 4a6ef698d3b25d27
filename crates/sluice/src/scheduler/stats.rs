//! A snapshot of the scheduler for metrics and the status page: the queue by state, its oldest message,
//! the route's hold, the upstream's back-off, the mailbox's use of its rate limits, token requests.
//!
//! Everything here is computed when asked ([`Scheduler::stats`]), under the same locks the workers take,
//! briefly; nothing is kept up to date on the delivery path except the held-outcome counts below.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::control::{MessageState, state_of};
use super::{HoldStatus, Scheduler};
use crate::oauth::TokenStats;
use crate::spool::now_ms;
use crate::upstream::Outcome;

/// The kind of answer an outcome was, for metrics: an SMTP reply by its class, a transport error, or an
/// HTTP status (Graph).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplyClass {
    Smtp2xx,
    Smtp4xx,
    Smtp5xx,
    Transport,
    Http,
}

impl ReplyClass {
    pub const ALL: [ReplyClass; 5] =
        [ReplyClass::Smtp2xx, ReplyClass::Smtp4xx, ReplyClass::Smtp5xx, ReplyClass::Transport, ReplyClass::Http];

    pub fn of(outcome: &Outcome) -> ReplyClass {
        match outcome {
            Outcome::Reply(reply) => match reply.code {
                200..=299 => ReplyClass::Smtp2xx,
                500..=599 => ReplyClass::Smtp5xx,
                // 4xx, and a 3xx where a final answer was due (classified temporary).
                _ => ReplyClass::Smtp4xx,
            },
            Outcome::Transport(_) => ReplyClass::Transport,
            Outcome::Http { .. } => ReplyClass::Http,
        }
    }

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplyClass::Smtp2xx => "2xx",
            ReplyClass::Smtp4xx => "4xx",
            ReplyClass::Smtp5xx => "5xx",
            ReplyClass::Transport => "transport",
            ReplyClass::Http => "http",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counts the scheduler keeps itself because no delivery event carries them: outcomes set aside by a
/// held route (a held route judges nothing, so it sends no event).
#[derive(Default)]
pub(super) struct Counters {
    held: [AtomicU64; 5],
}

impl Counters {
    pub(super) fn held(&self, outcome: &Outcome) {
        self.held[ReplyClass::of(outcome).index()].fetch_add(1, Ordering::Relaxed);
    }
}

/// How many waiting messages are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounts {
    /// Never attempted yet.
    pub new: usize,
    /// Attempted, waiting for their next try.
    pub deferred: usize,
    /// Set aside by a route's hold.
    pub held: usize,
    /// Held by an administrator (`sluice queue hold`): parked on purpose, never attempted.
    pub admin_held: usize,
}

impl QueueCounts {
    pub fn total(&self) -> usize {
        self.new + self.deferred + self.held + self.admin_held
    }

    /// (label, count) per state, for metrics and the page.
    pub fn by_state(&self) -> [(&'static str, usize); 4] {
        [("new", self.new), ("deferred", self.deferred), ("held", self.held), ("admin_held", self.admin_held)]
    }
}

/// One mailbox's use of its rate limits (limits of 0 mean none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxQuota {
    pub mailbox: String,
    pub messages_last_minute: u32,
    pub messages_per_minute: u32,
    pub recipients_last_24h: u64,
    pub recipients_per_day: u32,
}

/// The scheduler at one moment: the queue as a whole, and each upstream.
#[derive(Debug, Clone)]
pub struct SchedulerStats {
    /// Messages waiting (those in a worker's hands right now are not counted).
    pub queue: QueueCounts,
    /// Age of the oldest waiting message, by its accept time (messages an admin holds are left out).
    pub oldest_age: Option<Duration>,
    /// One entry per upstream, in the order of the configuration.
    pub upstreams: Vec<UpstreamStats>,
}

/// One upstream (a lane of the scheduler) at one moment.
#[derive(Debug, Clone)]
pub struct UpstreamStats {
    /// The upstream's name (the `upstream` label of metrics).
    pub name: String,
    /// Where it sends (host:port, or the Graph host).
    pub host: String,
    pub hold: Option<HoldStatus>,
    /// The upstream could not be reached: the error, and how long until the next connection attempt.
    pub upstream_down: Option<(String, Duration)>,
    /// Outcomes set aside by a held route since start-up, by reply class.
    pub held_outcomes: Vec<(ReplyClass, u64)>,
    /// Token requests (OAuth kinds only).
    pub tokens: Option<TokenStats>,
    /// Per-mailbox rate use (mailboxes of a pool, or the upstream itself when it has rate limits).
    pub quotas: Vec<MailboxQuota>,
}

impl Scheduler {
    /// A snapshot for metrics and the status page.
    pub fn stats(&self) -> SchedulerStats {
        let inner = &self.inner;
        let holds = self.holds();
        let route_held = self.route_held_ids();
        let now = now_ms();
        let (queue, oldest) = {
            let queue = inner.queue.lock().expect("queue lock");
            let mut counts = QueueCounts::default();
            let mut oldest: Option<u64> = None;
            for record in queue.waiting.values() {
                match state_of(record, false, &route_held) {
                    // Parked by the admin: not mail that is late (the oldest-age alert would never clear).
                    MessageState::Held => {
                        counts.admin_held += 1;
                        continue;
                    }
                    MessageState::RouteHeld => counts.held += 1,
                    MessageState::Deferred => counts.deferred += 1,
                    MessageState::Queued | MessageState::Active => counts.new += 1,
                }
                oldest = Some(oldest.map_or(record.received_at_ms, |o| o.min(record.received_at_ms)));
            }
            (counts, oldest)
        };
        let clock_now = (inner.clock.read().expect("clock lock"))();
        let upstreams = inner
            .lanes
            .iter()
            .map(|lane| {
                let config = &lane.upstream;
                let upstream_down =
                    lane.upstream_down.lock().expect("down lock").as_ref().and_then(|(until, error)| {
                        let left = until.saturating_duration_since(Instant::now());
                        (!left.is_zero()).then(|| (error.to_string(), left))
                    });
                let quotas = lane
                    .mailboxes
                    .lock()
                    .expect("mailbox lock")
                    .iter()
                    .filter_map(|mailbox| {
                        let limits = mailbox.shaper.limits();
                        if limits.messages_per_minute == 0 && limits.recipients_per_day == 0 {
                            return None;
                        }
                        let (minute, day) = mailbox.shaper.usage(clock_now);
                        Some(MailboxQuota {
                            mailbox: mailbox.address.clone().unwrap_or_else(|| config.display_name()),
                            messages_last_minute: minute,
                            messages_per_minute: limits.messages_per_minute,
                            recipients_last_24h: day,
                            recipients_per_day: limits.recipients_per_day,
                        })
                    })
                    .collect();
                UpstreamStats {
                    name: config.name.clone(),
                    host: config.display_name(),
                    hold: holds.iter().find(|(name, _)| *name == config.name).map(|(_, h)| h.clone()),
                    upstream_down,
                    held_outcomes: ReplyClass::ALL
                        .iter()
                        .map(|&c| (c, lane.counters.held[c.index()].load(Ordering::Relaxed)))
                        .collect(),
                    tokens: lane.transport.token_stats(),
                    quotas,
                }
            })
            .collect();
        SchedulerStats {
            queue,
            oldest_age: oldest.map(|received| Duration::from_millis(now.saturating_sub(received))),
            upstreams,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::TransportError;
    use smtp_wire::Reply;

    #[test]
    fn reply_classes() {
        let reply = |code| Outcome::Reply(Reply::with_code(code, (code / 100) as u8, 0, 0, "x"));
        assert_eq!(ReplyClass::of(&reply(250)), ReplyClass::Smtp2xx);
        assert_eq!(ReplyClass::of(&reply(451)), ReplyClass::Smtp4xx);
        assert_eq!(ReplyClass::of(&reply(550)), ReplyClass::Smtp5xx);
        assert_eq!(ReplyClass::of(&Outcome::Transport(TransportError::Closed)), ReplyClass::Transport);
        let http = Outcome::Http { status: 429, reason: "TooManyRequests".into(), retry_after: None };
        assert_eq!(ReplyClass::of(&http).as_str(), "http");
    }

    #[test]
    fn held_outcomes_are_counted_by_class() {
        let counters = Counters::default();
        counters.held(&Outcome::Transport(TransportError::TokenRefused("AADSTS7000215".into())));
        counters.held(&Outcome::Reply(Reply::with_code(535, 5, 7, 139, "SmtpClientAuthentication is disabled")));
        assert_eq!(counters.held[ReplyClass::Transport.index()].load(Ordering::Relaxed), 1);
        assert_eq!(counters.held[ReplyClass::Smtp5xx.index()].load(Ordering::Relaxed), 1);
    }
}
