//! Per-mailbox rates (reference §1a): messages a minute and recipients in a sliding 24 hours. Pure: the
//! caller passes the time, so tests (and the simulator's manual clock) drive it.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use crate::config::Shaping;

const MINUTE: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(24 * 3600);

pub struct Shaper {
    limits: Shaping,
    /// (when, recipients) of each admitted transaction, oldest first, kept for the longest window in use.
    sent: VecDeque<(SystemTime, u32)>,
}

impl Shaper {
    pub fn new(limits: Shaping) -> Shaper {
        Shaper { limits, sent: VecDeque::new() }
    }

    /// Admits a transaction of `recipients` now, or says how long until it may be admitted.
    pub fn admit(&mut self, now: SystemTime, recipients: u32) -> Result<(), Duration> {
        let (per_minute, per_day) = (self.limits.messages_per_minute, self.limits.recipients_per_day);
        if per_minute == 0 && per_day == 0 {
            return Ok(());
        }
        let keep = if per_day > 0 { DAY } else { MINUTE };
        while self.sent.front().is_some_and(|(t, _)| age(now, *t) >= keep) {
            self.sent.pop_front();
        }
        if per_minute > 0 {
            let in_minute: Vec<SystemTime> =
                self.sent.iter().filter(|(t, _)| age(now, *t) < MINUTE).map(|(t, _)| *t).collect();
            if in_minute.len() >= per_minute as usize {
                // The oldest of the minute's messages leaves the window first.
                return Err(MINUTE.saturating_sub(age(now, in_minute[0])).max(Duration::from_millis(1)));
            }
        }
        if per_day > 0 {
            let used: u64 = self.sent.iter().map(|(_, n)| u64::from(*n)).sum();
            // An envelope larger than the whole quota can never fit; let it go once the window is empty
            // (Microsoft then answers, and the table defers it) rather than wait forever.
            if used > 0 && used + u64::from(recipients) > u64::from(per_day) {
                let oldest = self.sent.front().map_or(now, |(t, _)| *t);
                return Err(DAY.saturating_sub(age(now, oldest)).max(Duration::from_millis(1)));
            }
        }
        self.sent.push_back((now, recipients));
        Ok(())
    }

    /// Takes back the newest admission of `recipients`: the transaction never reached the upstream (it was
    /// down, or would not connect), so Microsoft did not count it either.
    pub fn refund(&mut self, recipients: u32) {
        if let Some(i) = self.sent.iter().rposition(|(_, n)| *n == recipients) {
            self.sent.remove(i);
        }
    }

    /// What the mailbox has used at `now`: (messages in the last minute, recipients in the last 24 h).
    /// Only what the configured limits keep track of is counted (nothing without limits).
    pub fn usage(&self, now: SystemTime) -> (u32, u64) {
        let minute = self.sent.iter().filter(|(t, _)| age(now, *t) < MINUTE).count() as u32;
        let day = self.sent.iter().filter(|(t, _)| age(now, *t) < DAY).map(|(_, n)| u64::from(*n)).sum();
        (minute, day)
    }

    pub fn limits(&self) -> Shaping {
        self.limits
    }
}

impl Shaper {
    /// Transactions admitted in the minute before `now`: how busy the mailbox is, to pick the least used
    /// of a pool.
    pub fn recent(&self, now: SystemTime) -> usize {
        self.sent.iter().filter(|(t, _)| age(now, *t) < MINUTE).count()
    }
}

/// `now - then`, zero if the clock went back.
fn age(now: SystemTime, then: SystemTime) -> Duration {
    now.duration_since(then).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shaper(per_minute: u32, per_day: u32) -> Shaper {
        Shaper::new(Shaping {
            messages_per_minute: per_minute,
            recipients_per_day: per_day,
            max_recipients_per_message: 500,
        })
    }

    #[test]
    fn thirty_a_minute_then_wait_for_the_oldest() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut s = shaper(30, 0);
        for i in 0..30 {
            assert!(s.admit(t0 + Duration::from_secs(i), 1).is_ok());
        }
        assert_eq!(s.admit(t0 + Duration::from_secs(30), 1), Err(Duration::from_secs(30)));
        assert!(s.admit(t0 + Duration::from_secs(60), 1).is_ok());
    }

    #[test]
    fn recipients_in_a_sliding_day() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut s = shaper(0, 1000);
        assert!(s.admit(t0, 600).is_ok());
        assert!(s.admit(t0 + Duration::from_secs(3600), 400).is_ok());
        assert_eq!(s.admit(t0 + Duration::from_secs(7200), 1), Err(DAY - Duration::from_secs(7200)));
        assert!(s.admit(t0 + DAY, 1).is_ok(), "the first 600 left the window");
        // Bigger than the whole quota: waits for an empty window, then goes.
        let mut s = shaper(0, 10);
        assert!(s.admit(t0, 50).is_ok());
    }

    #[test]
    fn usage_counts_the_minute_and_the_day() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut s = shaper(30, 1000);
        s.admit(t0, 5).unwrap();
        s.admit(t0 + Duration::from_secs(50), 2).unwrap();
        assert_eq!(s.usage(t0 + Duration::from_secs(55)), (2, 7));
        assert_eq!(s.usage(t0 + Duration::from_secs(90)), (1, 7), "the first left the minute, not the day");
        assert_eq!(s.usage(t0 + DAY + Duration::from_secs(60)), (0, 0));
    }

    #[test]
    fn no_limits_admit_everything() {
        let mut s = shaper(0, 0);
        for _ in 0..10_000 {
            assert!(s.admit(SystemTime::now(), 1000).is_ok());
        }
        assert!(s.sent.is_empty());
    }

    #[test]
    fn a_refund_gives_back_what_was_never_sent() {
        let limits = Shaping { messages_per_minute: 1, recipients_per_day: 10, max_recipients_per_message: 500 };
        let mut shaper = Shaper::new(limits);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        shaper.admit(now, 3).unwrap();
        assert!(shaper.admit(now, 1).is_err(), "one message a minute");
        shaper.refund(3);
        assert_eq!(shaper.usage(now), (0, 0));
        shaper.admit(now, 1).unwrap();
    }
}
