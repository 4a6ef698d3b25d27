//! Time, injectable: the [`Clock`] trait, the real [`SystemClock`] and the [`ManualClock`] that
//! tests move by hand.
//!
//! Every limit that Exchange Online applies over time (30 messages a minute, 10,000 recipients in a
//! sliding 24 hours) and every token expiry reads this clock, and the "excess is delayed" rate
//! limit sleeps on it, so a test can cross a 24-hour window or expire a token without waiting.
//! Fault-injection delays are the exception: they model a slow network and use real time.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

/// A boxed future, so that [`Clock`] stays object-safe.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A source of wall-clock time that can also wait until a given time.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;
    /// Resolves once [`Clock::now`] has reached `deadline`.
    fn sleep_until(&self, deadline: SystemTime) -> Sleep;
}

/// The operating system's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn sleep_until(&self, deadline: SystemTime) -> Sleep {
        let wait = deadline.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO);
        Box::pin(tokio::time::sleep(wait))
    }
}

/// A clock that moves only when told to. Clones share the same time.
#[derive(Clone)]
pub struct ManualClock {
    inner: Arc<ManualInner>,
}

struct ManualInner {
    now: Mutex<SystemTime>,
    // Sleepers watch this; every change of time wakes them to re-check their deadline.
    tick: watch::Sender<SystemTime>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: SystemTime) -> Self {
        let (tick, _) = watch::channel(start);
        ManualClock { inner: Arc::new(ManualInner { now: Mutex::new(start), tick }) }
    }

    /// A clock standing at the real current time (so banner dates look plausible).
    pub fn starting_now() -> Self {
        Self::new(SystemTime::now())
    }

    /// Moves the clock forward by `by`, waking any sleeper whose deadline has come.
    pub fn advance(&self, by: Duration) {
        let mut now = self.inner.now.lock().expect("clock lock");
        *now += by;
        self.inner.tick.send_replace(*now);
    }

    /// Sets the clock (forward or back).
    pub fn set(&self, to: SystemTime) {
        let mut now = self.inner.now.lock().expect("clock lock");
        *now = to;
        self.inner.tick.send_replace(to);
    }
}

impl std::fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManualClock").field("now", &self.now()).finish()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.inner.now.lock().expect("clock lock")
    }

    fn sleep_until(&self, deadline: SystemTime) -> Sleep {
        let mut rx = self.inner.tick.subscribe();
        let inner = self.inner.clone();
        Box::pin(async move {
            loop {
                if *inner.now.lock().expect("clock lock") >= deadline {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_sleep_wakes_on_advance() {
        let clock = ManualClock::new(SystemTime::UNIX_EPOCH);
        let deadline = SystemTime::UNIX_EPOCH + Duration::from_secs(60);
        let sleeper = tokio::spawn(clock.sleep_until(deadline));
        clock.advance(Duration::from_secs(30));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        clock.advance(Duration::from_secs(30));
        sleeper.await.unwrap();
    }
}
