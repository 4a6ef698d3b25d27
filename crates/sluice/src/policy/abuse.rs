//! Abuse limits that span sessions: connections per client address, and failed AUTH attempts per client
//! address and per user name, with a temporary ban once a threshold is crossed (defaults as Postfix's
//! anvil and common fail2ban setups: 5 failures in 10 minutes ban an address for 15 minutes).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct AbuseLimits {
    pub auth_failures_per_client: u32,
    pub auth_failures_per_user: u32,
    pub auth_failure_window: Duration,
    pub auth_ban_time: Duration,
}

#[derive(Debug)]
pub struct Abuse {
    /// Replaced by a configuration reload; the counters and bans in `state` carry over.
    limits: Mutex<AbuseLimits>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    connections: HashMap<IpAddr, usize>,
    client_failures: HashMap<IpAddr, VecDeque<Instant>>,
    user_failures: HashMap<String, VecDeque<Instant>>,
    banned_clients: HashMap<IpAddr, Instant>,
    locked_users: HashMap<String, Instant>,
}

/// Why a connection is turned away at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Too many failed AUTH attempts recently.
    Banned,
    /// Over the listener's per-client connection limit.
    TooManyConnections,
}

/// Holds one connection slot for a client address; released on drop.
pub struct ConnectionSlot {
    abuse: Arc<Abuse>,
    ip: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut state = self.abuse.state.lock().expect("abuse lock");
        if let Some(n) = state.connections.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                state.connections.remove(&self.ip);
            }
        }
    }
}

impl Abuse {
    pub fn new(limits: AbuseLimits) -> Arc<Abuse> {
        Arc::new(Abuse { limits: Mutex::new(limits), state: Mutex::new(State::default()) })
    }

    /// New limits (a configuration reload). Connections, failures counted so far and bans in force
    /// are kept; the new thresholds apply from the next failure.
    pub fn set_limits(&self, limits: AbuseLimits) {
        *self.limits.lock().expect("abuse limits lock") = limits;
    }

    /// Admits a new connection from `ip`, or says why not.
    pub fn open(self: &Arc<Self>, ip: IpAddr, per_client_limit: usize) -> Result<ConnectionSlot, Refusal> {
        let now = Instant::now();
        let mut state = self.state.lock().expect("abuse lock");
        if let Some(&until) = state.banned_clients.get(&ip) {
            if now < until {
                return Err(Refusal::Banned);
            }
            state.banned_clients.remove(&ip);
        }
        let n = state.connections.entry(ip).or_insert(0);
        if *n >= per_client_limit {
            return Err(Refusal::TooManyConnections);
        }
        *n += 1;
        Ok(ConnectionSlot { abuse: self.clone(), ip })
    }

    pub fn is_banned(&self, ip: IpAddr) -> bool {
        let state = self.state.lock().expect("abuse lock");
        state.banned_clients.get(&ip).is_some_and(|&until| Instant::now() < until)
    }

    pub fn is_locked(&self, user: &str) -> bool {
        let state = self.state.lock().expect("abuse lock");
        state.locked_users.get(user).is_some_and(|&until| Instant::now() < until)
    }

    /// Records a failed AUTH. Returns true when the client address is now banned.
    pub fn auth_failed(&self, ip: IpAddr, user: &str) -> bool {
        let now = Instant::now();
        let limits = *self.limits.lock().expect("abuse limits lock");
        let mut state = self.state.lock().expect("abuse lock");
        let window_start = now.checked_sub(limits.auth_failure_window);
        let count = |q: &mut VecDeque<Instant>| {
            q.push_back(now);
            while q.front().is_some_and(|t| Some(*t) < window_start) {
                q.pop_front();
            }
            q.len() as u32
        };
        let by_client = count(state.client_failures.entry(ip).or_default());
        let by_user = if user.is_empty() { 0 } else { count(state.user_failures.entry(user.to_owned()).or_default()) };
        if by_user >= limits.auth_failures_per_user {
            state.locked_users.insert(user.to_owned(), now + limits.auth_ban_time);
            state.user_failures.remove(user);
        }
        let banned = by_client >= limits.auth_failures_per_client;
        if banned {
            state.banned_clients.insert(ip, now + limits.auth_ban_time);
            state.client_failures.remove(&ip);
        }
        // Bound memory under a spray of addresses or names: drop what has aged out.
        if state.client_failures.len() + state.user_failures.len() > 10_000 {
            state.client_failures.retain(|_, q| q.back().is_some_and(|t| Some(*t) >= window_start));
            state.user_failures.retain(|_, q| q.back().is_some_and(|t| Some(*t) >= window_start));
            state.banned_clients.retain(|_, until| *until > now);
            state.locked_users.retain(|_, until| *until > now);
        }
        banned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> AbuseLimits {
        AbuseLimits {
            auth_failures_per_client: 3,
            auth_failures_per_user: 4,
            auth_failure_window: Duration::from_secs(600),
            auth_ban_time: Duration::from_secs(900),
        }
    }

    #[test]
    fn connection_slots_are_counted_and_released() {
        let abuse = Abuse::new(limits());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = abuse.open(ip, 2).unwrap();
        let _b = abuse.open(ip, 2).unwrap();
        assert_eq!(abuse.open(ip, 2).err(), Some(Refusal::TooManyConnections));
        drop(a);
        assert!(abuse.open(ip, 2).is_ok());
    }

    #[test]
    fn repeated_auth_failures_ban_the_client_and_lock_the_user() {
        let abuse = Abuse::new(limits());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(!abuse.auth_failed(ip, "scanner"));
        assert!(!abuse.auth_failed(ip, "scanner"));
        assert!(abuse.auth_failed(ip, "scanner"));
        assert!(abuse.is_banned(ip));
        assert_eq!(abuse.open(ip, 10).err(), Some(Refusal::Banned));
        assert!(!abuse.is_locked("scanner"));
        abuse.auth_failed(other, "scanner");
        assert!(abuse.is_locked("scanner"), "4 failures for one name from anywhere");
        assert!(!abuse.is_banned(other));
    }
}
