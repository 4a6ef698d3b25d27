//! When to try again: a pure function of the attempts made and the message's age, so it can be tested
//! without a clock and reasoned about in one place.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay after the first failed attempt; each later attempt doubles it.
    pub initial_interval: Duration,
    /// The delay never grows beyond this.
    pub max_interval: Duration,
    /// A message still undelivered at this age is bounced.
    pub max_age: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    RetryAfter(Duration),
    /// The message is too old: its pending recipients fail permanently.
    GiveUp,
}

/// Decides what follows a temporary failure. `attempts` counts the attempts made so far, including the one
/// that just failed (so it is at least 1); `age` is the time since the message was accepted.
pub fn next_retry(policy: &RetryPolicy, attempts: u32, age: Duration) -> RetryDecision {
    if age >= policy.max_age {
        return RetryDecision::GiveUp;
    }
    let doublings = attempts.saturating_sub(1).min(32);
    let delay = policy.initial_interval.saturating_mul(1u32 << doublings.min(31)).min(policy.max_interval);
    // One last attempt exactly at expiry rather than a long wait past it.
    let remaining = policy.max_age - age;
    RetryDecision::RetryAfter(delay.min(remaining))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);
    const HOUR: Duration = Duration::from_secs(3600);

    fn policy() -> RetryPolicy {
        RetryPolicy { initial_interval: MIN, max_interval: HOUR, max_age: 5 * 24 * HOUR }
    }

    #[test]
    fn doubles_from_one_minute_to_one_hour() {
        let delays: Vec<_> = (1..=9)
            .map(|n| match next_retry(&policy(), n, Duration::ZERO) {
                RetryDecision::RetryAfter(d) => d.as_secs() / 60,
                RetryDecision::GiveUp => unreachable!(),
            })
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        assert_eq!(next_retry(&policy(), u32::MAX, MIN), RetryDecision::RetryAfter(HOUR));
    }

    #[test]
    fn gives_up_at_max_age() {
        let p = policy();
        assert_eq!(next_retry(&p, 100, p.max_age), RetryDecision::GiveUp);
        assert_eq!(next_retry(&p, 100, p.max_age + MIN), RetryDecision::GiveUp);
    }

    #[test]
    fn last_retry_lands_on_expiry() {
        let p = policy();
        let age = p.max_age - Duration::from_secs(10);
        assert_eq!(next_retry(&p, 20, age), RetryDecision::RetryAfter(Duration::from_secs(10)));
    }
}
