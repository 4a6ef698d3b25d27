//! Per-mailbox usage counters behind Exchange Online's sending limits: concurrent connections,
//! messages in the last minute, recipients in a sliding 24 hours.
//!
//! Pure bookkeeping: every method takes the current time from the caller (who reads the
//! injectable clock), so the rules can be unit-tested without a clock and the sessions decide
//! what to answer.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

/// The rate window ("30 messages a minute").
pub const RATE_WINDOW: Duration = Duration::from_secs(60);
/// The recipient quota window ("10,000 recipients in 24 hours", sliding).
pub const QUOTA_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

#[derive(Debug, Default)]
struct MailboxUsage {
    connections: u32,
    /// Acceptance times of recent messages, oldest first.
    sent: VecDeque<SystemTime>,
    /// (acceptance time, recipient count) of recent messages, oldest first.
    recipients: VecDeque<(SystemTime, u32)>,
}

impl MailboxUsage {
    fn prune(&mut self, now: SystemTime) {
        while self.sent.front().is_some_and(|&t| elapsed(t, now) >= RATE_WINDOW) {
            self.sent.pop_front();
        }
        while self.recipients.front().is_some_and(|&(t, _)| elapsed(t, now) >= QUOTA_WINDOW) {
            self.recipients.pop_front();
        }
    }
}

/// Time from `then` to `now`; zero if the clock went back.
fn elapsed(then: SystemTime, now: SystemTime) -> Duration {
    now.duration_since(then).unwrap_or(Duration::ZERO)
}

/// Usage of every mailbox.
#[derive(Debug, Default)]
pub struct Usage {
    map: HashMap<String, MailboxUsage>,
}

impl Usage {
    /// Takes a connection slot for `mailbox` if fewer than `max` are in use.
    pub fn try_connect(&mut self, mailbox: &str, max: u32) -> bool {
        let u = self.map.entry(mailbox.to_owned()).or_default();
        if u.connections >= max {
            return false;
        }
        u.connections += 1;
        true
    }

    /// Gives a connection slot back.
    pub fn disconnect(&mut self, mailbox: &str) {
        if let Some(u) = self.map.get_mut(mailbox) {
            u.connections = u.connections.saturating_sub(1);
        }
    }

    /// Connections in use for `mailbox`.
    pub fn connections(&self, mailbox: &str) -> u32 {
        self.map.get(mailbox).map_or(0, |u| u.connections)
    }

    /// When may `mailbox` send its next message under `per_minute`? `None`: now.
    pub fn rate_wait(&mut self, mailbox: &str, now: SystemTime, per_minute: u32) -> Option<SystemTime> {
        let u = self.map.entry(mailbox.to_owned()).or_default();
        u.prune(now);
        if (u.sent.len() as u64) < u64::from(per_minute) {
            return None;
        }
        // The slot frees when the oldest message of the full window leaves it.
        let idx = u.sent.len() - per_minute as usize;
        Some(u.sent[idx] + RATE_WINDOW)
    }

    /// Would `n` more recipients stay within `per_day` for `mailbox`?
    pub fn quota_allows(&mut self, mailbox: &str, now: SystemTime, n: u32, per_day: u32) -> bool {
        let u = self.map.entry(mailbox.to_owned()).or_default();
        u.prune(now);
        let used: u64 = u.recipients.iter().map(|&(_, c)| u64::from(c)).sum();
        used + u64::from(n) <= u64::from(per_day)
    }

    /// Records an accepted message with `n` recipients.
    pub fn record(&mut self, mailbox: &str, now: SystemTime, n: u32) {
        let u = self.map.entry(mailbox.to_owned()).or_default();
        u.sent.push_back(now);
        u.recipients.push_back((now, n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn connections_cap() {
        let mut u = Usage::default();
        assert!(u.try_connect("a", 3));
        assert!(u.try_connect("a", 3));
        assert!(u.try_connect("a", 3));
        assert!(!u.try_connect("a", 3));
        assert!(u.try_connect("b", 3));
        u.disconnect("a");
        assert!(u.try_connect("a", 3));
    }

    #[test]
    fn rate_frees_after_oldest_leaves_window() {
        let mut u = Usage::default();
        for i in 0..30 {
            assert_eq!(u.rate_wait("a", at(i), 30), None);
            u.record("a", at(i), 1);
        }
        assert_eq!(u.rate_wait("a", at(30), 30), Some(at(60)));
        assert_eq!(u.rate_wait("a", at(60), 30), None);
    }

    #[test]
    fn quota_is_sliding() {
        let mut u = Usage::default();
        u.record("a", at(0), 6000);
        u.record("a", at(3600), 4000);
        assert!(!u.quota_allows("a", at(3601), 1, 10_000));
        // The first batch leaves the window 24 h after it was sent, not at midnight.
        assert!(!u.quota_allows("a", at(86_399), 1, 10_000));
        assert!(u.quota_allows("a", at(86_400), 6000, 10_000));
        assert!(!u.quota_allows("a", at(86_400), 6001, 10_000));
    }
}
