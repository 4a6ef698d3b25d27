//! Start-up and shutdown: open the spool and resume what it holds, start the delivery workers, bind the
//! listeners, and on SIGTERM/Ctrl-C stop accepting, let sessions finish, and keep the queue on disk.
//! Configuration reload (SIGHUP, or an admin endpoint through [`Reloader`]) is in `server/reload.rs`.

mod reload;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::admin::AdminState;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::scheduler::Scheduler;
use crate::spool::Spool;
pub use reload::{ReloadError, ReloadReport, Reloader, reload_on_sighup};

/// How long sessions in flight get to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Runs the relay until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with(config, shutdown, |_| {}).await
}

/// Like [`run`], and hands the queue to `ready` once every listener is bound (for an embedding
/// program such as the demo, which watches delivery events).
pub async fn run_with(
    config: Config,
    shutdown: CancellationToken,
    ready: impl FnOnce(&Scheduler),
) -> anyhow::Result<()> {
    run_reloadable(config, None, shutdown, |scheduler, _| ready(scheduler)).await
}

/// Runs the relay until `shutdown` is cancelled. With the file the configuration came from (`source`),
/// [`Reloader::reload`] reads it again; `ready` gets the queue and the reloader once every listener is
/// bound (to install a SIGHUP handler with [`reload_on_sighup`], or hand the reloader to an admin
/// endpoint).
pub async fn run_reloadable(
    config: Config,
    source: Option<ConfigSource>,
    shutdown: CancellationToken,
    ready: impl FnOnce(&Scheduler, &Arc<Reloader>),
) -> anyhow::Result<()> {
    for warning in &config.warnings {
        warn!("{warning}");
    }
    let spool_dir = config.spool_dir.clone();
    let spool = tokio::task::spawn_blocking(move || Spool::open(&spool_dir))
        .await?
        .with_context(|| format!("cannot open spool {}", config.spool_dir.display()))?;
    spool.set_min_free(config.min_free_space);
    let recovery = {
        let spool = spool.clone();
        tokio::task::spawn_blocking(move || spool.recover()).await?.context("cannot scan the spool")?
    };
    for (id, reason) in &recovery.quarantined {
        error!(queue_id = %id, %reason, "corrupt queue entry moved to corrupt/");
    }
    if recovery.uncommitted_removed > 0 {
        info!(
            count = recovery.uncommitted_removed,
            "removed state files of messages already finished (a removal cut short)"
        );
    }
    info!(spool = %config.spool_dir.display(), messages = recovery.records.len(), "spool recovered");

    let scheduler = Scheduler::with_routes(
        spool.clone(),
        config.upstreams.clone(),
        config.routing.clone(),
        config.retry,
        config.hostname.clone(),
    );
    // Watching before any worker starts, so no delivery goes uncounted.
    let metrics = Arc::new(Metrics::new());
    metrics.watch(&scheduler);
    for record in recovery.records {
        scheduler.enqueue(record);
    }
    let workers_stop = CancellationToken::new();
    let mut workers = scheduler.spawn_workers(workers_stop.clone());

    let sessions = TaskTracker::new();
    let listeners = TaskTracker::new();
    let mut running = reload::Running {
        table: source.as_ref().map(|s| s.table.clone()).unwrap_or_default(),
        listeners: Vec::new(),
        hostname: config.hostname.clone(),
        spool: spool.clone(),
        scheduler: scheduler.clone(),
        abuse: crate::policy::abuse::Abuse::new(config.abuse),
        metrics,
        shutdown: shutdown.clone(),
        sessions: sessions.clone(),
        listener_tasks: listeners.clone(),
    };
    let shared = running.shared(&config.users, config.policy);
    let mut sockets = Vec::new();
    for listener_config in &config.listeners {
        let socket = TcpListener::bind(listener_config.address)
            .await
            .with_context(|| format!("cannot listen on {}", listener_config.address))?;
        sockets.push(socket);
    }
    // After the listeners: the admin socket (a free port by default) must not take a port they need.
    let admin = crate::admin::start(
        &config.admin,
        &config.spool_dir,
        |token, public_metrics| {
            Arc::new(AdminState::new(
                config.hostname.clone(),
                scheduler.clone(),
                spool.clone(),
                token,
                public_metrics,
                running.metrics.clone(),
            ))
        },
        shutdown.clone(),
    )
    .await?;
    // `ready` (a SIGHUP handler, say) is in place before the first session is accepted.
    let reloader = Arc::new(Reloader::new(source.map(|s| s.path)));
    if let Some((_, state)) = &admin {
        let _ = state.reloader.set(reloader.clone());
    }
    ready(&scheduler, &reloader);
    for (socket, listener_config) in sockets.into_iter().zip(&config.listeners) {
        running.start_listener(socket, listener_config.clone(), shared.clone())?;
    }
    reloader.set_running(running).await;
    info!(upstream = %config.upstream.display_name(), hostname = %config.hostname, "sluice is running");
    if let Some((_, state)) = &admin {
        state.ready.store(true, std::sync::atomic::Ordering::Release);
    }

    shutdown.cancelled().await;
    if let Some((_, state)) = &admin {
        state.ready.store(false, std::sync::atomic::Ordering::Release);
    }
    info!("shutting down: no new connections; waiting for sessions in flight");
    listeners.close();
    listeners.wait().await;
    sessions.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, sessions.wait()).await.is_err() {
        warn!("sessions still open after {SHUTDOWN_GRACE:?}; closing them (nothing unacknowledged is kept)");
    }
    workers_stop.cancel();
    if tokio::time::timeout(SHUTDOWN_GRACE, async { while workers.join_next().await.is_some() {} }).await.is_err() {
        warn!("deliveries still in flight after {SHUTDOWN_GRACE:?}; they will be retried at the next start");
    }
    info!(queued = scheduler.waiting(), "stopped; the queue is kept on disk");
    Ok(())
}

/// Where the running configuration came from: the file a reload reads again, and its text as a TOML
/// table (what the reload compares the new file to).
pub struct ConfigSource {
    pub path: PathBuf,
    pub table: toml::Table,
}

/// Cancels `token` on SIGTERM or SIGINT.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    error!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    token.cancel();
                    return;
                }
            };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        token.cancel();
    });
}
