//! Configuration reload: read the file again and apply what can change without a restart, for the
//! sessions that start afterwards. Triggered by SIGHUP ([`reload_on_sighup`]) or by whoever holds the
//! [`Reloader`] (an admin endpoint).
//!
//! - Applied: listeners (allowed networks, AUTH, limits, timeouts, TLS certificate, key and client CA,
//!   which are read again from their files on every reload), `[[user]]`, `[[network]]`,
//!   `[[certificate]]`, `[limits]`, `[spool] min_free_space`. A listener whose address appears is bound;
//!   one whose address is gone is closed (its open sessions finish). Listeners are matched by address.
//! - Not applied, logged as needing a restart: everything else (`[upstream]` and any upstream or route
//!   table, `[retry]`, `hostname`, `spool_dir`). The running values stay in force. This is the hook for
//!   applying upstream changes later: [`ReloadReport::restart_needed`] names them.
//! - A file that does not load (the same errors as `sluice check-config`, naming key and line), or a new
//!   address that cannot be bound, is refused as a whole: nothing changes.
//!
//! Nothing is dropped: a session keeps the settings it was accepted with (`listener::ListenerContext` is
//! a snapshot); connection counts, failed-AUTH counters and bans carry over; the spool and the queue are
//! the same.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::{self, Config, ConfigError, ListenerConfig, UserConfig};
use crate::listener::{self, ListenerContext, LiveListener, Shared};
use crate::policy::abuse::Abuse;
use crate::policy::{Policy, Users};
use crate::scheduler::Scheduler;
use crate::spool::Spool;

/// Top-level keys a reload applies. Every other key (present or future) needs a restart.
const RELOADABLE: &[&str] = &["listener", "user", "network", "certificate", "limits", "spool"];

/// What a reload changed. Serialisable for an admin endpoint.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReloadReport {
    /// Sections whose new values apply to new sessions: `"user"`, `"network"`, `"limits"`,
    /// `"listener 127.0.0.1:25"`, ...
    pub applied: Vec<String>,
    pub listeners_added: Vec<SocketAddr>,
    pub listeners_removed: Vec<SocketAddr>,
    /// TLS listeners whose certificate, key (and client CA) were read again from their files.
    pub tls_reloaded: Vec<SocketAddr>,
    /// Keys that changed but need a restart (`"upstream"`, `"retry"`, `"hostname"`, `"spool_dir"`, ...);
    /// the running values are kept.
    pub restart_needed: Vec<String>,
    /// The new configuration's warnings (as `check-config` prints them).
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("sluice was started without --config: there is no configuration file to read again")]
    NoConfigFile,
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("cannot listen on {address}: {source}")]
    Bind { address: SocketAddr, source: std::io::Error },
    #[error("the reload task failed: {0}")]
    Task(String),
}

/// Reads the configuration file again and applies it; one reload at a time.
pub struct Reloader {
    path: Option<PathBuf>,
    /// `None` until start-up has bound and started every listener.
    running: tokio::sync::Mutex<Option<Running>>,
}

/// What is running now, and what a reload needs to start listeners.
pub(super) struct Running {
    /// The configuration file as last applied.
    pub table: toml::Table,
    pub listeners: Vec<Arc<LiveListener>>,
    pub hostname: String,
    pub spool: Spool,
    pub scheduler: Scheduler,
    pub abuse: Arc<Abuse>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub shutdown: CancellationToken,
    pub sessions: TaskTracker,
    pub listener_tasks: TaskTracker,
}

impl Running {
    /// One generation of the shared settings.
    pub fn shared(&self, users: &[UserConfig], policy: Policy) -> Arc<Shared> {
        Arc::new(Shared {
            hostname: self.hostname.clone(),
            spool: self.spool.clone(),
            scheduler: self.scheduler.clone(),
            users: Users::new(users),
            policy: Arc::new(policy),
            abuse: self.abuse.clone(),
            metrics: self.metrics.clone(),
        })
    }

    fn context(&self, config: ListenerConfig, shared: Arc<Shared>) -> Arc<ListenerContext> {
        Arc::new(ListenerContext { config, shared, shutdown: self.shutdown.clone() })
    }

    /// Starts accepting on a bound socket.
    pub fn start_listener(
        &mut self,
        socket: TcpListener,
        config: ListenerConfig,
        shared: Arc<Shared>,
    ) -> std::io::Result<()> {
        info!(
            address = %socket.local_addr()?,
            tls = ?config.tls,
            allowed_networks = ?config.allowed_networks,
            "listening"
        );
        let live = LiveListener::new(self.context(config, shared));
        self.listener_tasks.spawn(listener::serve(socket, live.clone(), self.sessions.clone()));
        self.listeners.push(live);
        Ok(())
    }
}

impl Reloader {
    pub(super) fn new(path: Option<PathBuf>) -> Reloader {
        Reloader { path, running: tokio::sync::Mutex::new(None) }
    }

    pub(super) async fn set_running(&self, running: Running) {
        *self.running.lock().await = Some(running);
    }

    /// Reads the configuration file again and applies it to new sessions; logs what changed, or why
    /// nothing did.
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let result = self.try_reload().await;
        match &result {
            Ok(report) => log_report(report),
            Err(e) => error!(error = %e, "configuration reload refused; the running configuration is kept"),
        }
        result
    }

    async fn try_reload(&self) -> Result<ReloadReport, ReloadError> {
        let path = self.path.clone().ok_or(ReloadError::NoConfigFile)?;
        info!(config = %path.display(), "reloading the configuration");
        // Serialise reloads: two SIGHUPs in a row apply the file twice, in order.
        let mut running = self.running.lock().await;
        let running = running.as_mut().ok_or_else(|| ReloadError::Task("sluice is still starting".into()))?;
        let (config, table) = tokio::task::spawn_blocking(move || config::load_table(&path))
            .await
            .map_err(|e| ReloadError::Task(e.to_string()))??;
        let mut report = compare(running, &config, &table);

        // Bind the new addresses first: if one cannot be bound, nothing has changed yet.
        let mut bound = Vec::new();
        for l in &config.listeners {
            if !running.listeners.iter().any(|live| live.address == l.address) {
                let socket = TcpListener::bind(l.address)
                    .await
                    .map_err(|source| ReloadError::Bind { address: l.address, source })?;
                bound.push((l.address, socket));
            }
        }

        // From here on nothing fails.
        let Config { listeners, users, policy, abuse, min_free_space, warnings, .. } = config;
        running.spool.set_min_free(min_free_space);
        running.abuse.set_limits(abuse);
        let shared = running.shared(&users, policy);
        for l in listeners {
            if l.tls_config.is_some() {
                report.tls_reloaded.push(l.address);
            }
            match running.listeners.iter().find(|live| live.address == l.address) {
                Some(live) => live.replace(running.context(l, shared.clone())),
                None => {
                    let position = bound.iter().position(|(address, _)| *address == l.address);
                    let Some((_, socket)) = position.map(|i| bound.swap_remove(i)) else { continue };
                    let address = l.address;
                    if let Err(e) = running.start_listener(socket, l, shared.clone()) {
                        warn!(%address, error = %e, "new listener could not start");
                    }
                }
            }
        }
        running.listeners.retain(|live| {
            if !report.listeners_removed.contains(&live.address) {
                return true;
            }
            info!(address = %live.address, open_sessions = live.open_sessions(), "listener closed by the reload; its open sessions go on");
            live.close();
            false
        });
        report.warnings = warnings;
        running.table = table;
        Ok(report)
    }
}

/// What differs between the running configuration and the new file.
fn compare(running: &Running, config: &Config, table: &toml::Table) -> ReloadReport {
    let mut report = ReloadReport::default();
    let old = &running.table;
    let keys: BTreeSet<&String> = old.keys().chain(table.keys()).collect();
    for key in keys {
        if key == "listener" || old.get(key) == table.get(key) {
            continue;
        }
        if RELOADABLE.contains(&key.as_str()) {
            report.applied.push(key.clone());
        } else {
            report.restart_needed.push(key.clone());
        }
    }
    // Listeners, by address: the resolved list is in the file's order.
    let raw_listeners = |t: &toml::Table| -> Vec<toml::Value> {
        t.get("listener").and_then(|v| v.as_array()).cloned().unwrap_or_default()
    };
    let old_raw = raw_listeners(old);
    let new_raw = raw_listeners(table);
    for (i, l) in config.listeners.iter().enumerate() {
        match running.listeners.iter().position(|live| live.address == l.address) {
            None => report.listeners_added.push(l.address),
            Some(j) => {
                // The running list is in the old file's order, less removed and plus added listeners,
                // so compare with the old file's entry for this address when there is one.
                let before = old_raw.iter().find(|v| same_address(v, l.address));
                if before != new_raw.get(i) {
                    report.applied.push(format!("listener {}", running.listeners[j].address));
                }
            }
        }
    }
    for live in &running.listeners {
        if !config.listeners.iter().any(|l| l.address == live.address) {
            report.listeners_removed.push(live.address);
        }
    }
    report
}

fn same_address(listener: &toml::Value, address: SocketAddr) -> bool {
    listener.get("address").and_then(|a| a.as_str()).and_then(|a| a.parse::<SocketAddr>().ok()) == Some(address)
}

fn log_report(report: &ReloadReport) {
    for warning in &report.warnings {
        warn!("{warning}");
    }
    for key in &report.restart_needed {
        warn!(key = %key, "configuration changed but needs a restart to take effect; the running values are kept");
    }
    info!(
        applied = ?report.applied,
        listeners_added = ?report.listeners_added,
        listeners_removed = ?report.listeners_removed,
        tls_reloaded = ?report.tls_reloaded,
        restart_needed = ?report.restart_needed,
        "configuration reloaded: new sessions use it, open sessions keep theirs"
    );
}

/// Reloads the configuration on every SIGHUP until `shutdown`.
/// The handler is in place when this returns (call it from within the runtime).
pub fn reload_on_sighup(reloader: Arc<Reloader>, shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(hup) => hup,
            Err(e) => {
                error!(error = %e, "cannot listen for SIGHUP: configuration reload by signal is off");
                return;
            }
        };
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    got = hup.recv() => if got.is_none() { return },
                }
                info!("SIGHUP received");
                // The outcome is logged by reload().
                let _ = reloader.reload().await;
            }
        });
    }
    #[cfg(not(unix))]
    let _ = (reloader, shutdown);
}
