//! The admin interface: HTTP on loopback, guarded by a bearer token.
//!
//! It is how an admin (or the `sluice` command line) sees and steers a running relay: the queue API
//! behind `sluice queue`, the status page, Prometheus metrics and the health checks. Health checks are
//! open (a load balancer or systemd has no token); everything else needs the token, sent as
//! `Authorization: Bearer …` or, for a browser, as the cookie that `/login?token=…` sets.
//!
//! At start-up the server writes `admin.json` (its URL and where the token is) into the spool directory,
//! so that commands given the same configuration find it even on a port chosen by the system.

pub mod client;
pub mod metrics;
pub mod page;
pub mod queue;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use anyhow::Context as _;
use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{ADMIN_TOKEN_ENV, AdminConfig, Secret};
use crate::metrics::Metrics;
use crate::scheduler::Scheduler;
use crate::spool::Spool;

/// The discovery file in the spool directory.
pub const DISCOVERY_FILE: &str = "admin.json";
/// The generated token's file in the spool directory (when the config names none).
pub const GENERATED_TOKEN_FILE: &str = "admin.token";
/// The cookie a browser carries after `/login`.
const COOKIE: &str = "sluice_admin";

/// What the handlers see of the running relay.
pub struct AdminState {
    pub hostname: String,
    pub started: SystemTime,
    pub scheduler: Scheduler,
    pub spool: Spool,
    /// Set once every listener is bound and the spool is recovered.
    pub ready: AtomicBool,
    token: Secret,
    /// /metrics is served without the token.
    pub public_metrics: bool,
    pub metrics: Arc<Metrics>,
    /// Set once start-up has bound the listeners (a reload before that has nothing to apply to).
    pub reloader: std::sync::OnceLock<Arc<crate::server::Reloader>>,
}

impl AdminState {
    pub fn new(
        hostname: String,
        scheduler: Scheduler,
        spool: Spool,
        token: Secret,
        public_metrics: bool,
        metrics: Arc<Metrics>,
    ) -> Self {
        AdminState {
            hostname,
            started: SystemTime::now(),
            scheduler,
            spool,
            ready: AtomicBool::new(false),
            token,
            public_metrics,
            metrics,
            reloader: std::sync::OnceLock::new(),
        }
    }

    /// Whether the request carries the token (header or cookie), compared in constant time.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let cookie = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
            .next();
        [bearer, cookie].into_iter().flatten().any(|given| same_secret(given, self.token.expose()))
    }
}

/// What `admin.json` says, for the command line.
#[derive(Debug, Serialize, Deserialize)]
pub struct Discovery {
    /// Base URL, e.g. `http://127.0.0.1:8025`.
    pub url: String,
    /// Where the token is: a file, or None when it came from the environment.
    pub token_file: Option<PathBuf>,
    pub pid: u32,
}

/// Binds the admin interface and serves it until `shutdown`. Returns the bound address, or None when
/// the admin interface is turned off.
pub async fn start(
    config: &AdminConfig,
    spool_dir: &Path,
    make_state: impl FnOnce(Secret, bool) -> Arc<AdminState>,
    shutdown: CancellationToken,
) -> anyhow::Result<Option<(SocketAddr, Arc<AdminState>)>> {
    let Some(listen) = config.listen else {
        return Ok(None);
    };
    let (token, token_file) = match &config.token {
        Some(token) => (token.clone(), config.token_file.clone()),
        None => {
            let token = generate_token();
            let path = spool_dir.join(GENERATED_TOKEN_FILE);
            write_private(&path, token.expose().as_bytes())
                .with_context(|| format!("cannot write the admin token to {}", path.display()))?;
            (token, Some(path))
        }
    };
    let state = make_state(token, config.public_metrics);
    let socket = TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen} (admin)"))?;
    let address = socket.local_addr()?;
    let discovery = Discovery { url: format!("http://{address}"), token_file, pid: std::process::id() };
    let path = spool_dir.join(DISCOVERY_FILE);
    write_private(&path, &serde_json::to_vec_pretty(&discovery)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    info!(address = %address, "admin interface listening");
    let app = router(state.clone());
    tokio::spawn(async move {
        let served = axum::serve(socket, app).with_graceful_shutdown(shutdown.cancelled_owned()).await;
        if let Err(e) = served {
            warn!(error = %e, "admin interface stopped");
        }
    });
    Ok(Some((address, state)))
}

/// Every route of the admin interface.
pub fn router(state: Arc<AdminState>) -> Router {
    let guarded = Router::new()
        .route("/api/status", get(status))
        .route("/api/reload", axum::routing::post(reload))
        .merge(queue::routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/login", get(login))
        .merge(guarded)
        .merge(metrics::routes(state.clone()).merge(page::routes(state.clone())))
        .with_state(state)
}

async fn require_token(State(state): State<Arc<AdminState>>, request: Request, next: Next) -> Response {
    if state.authorized(request.headers()) {
        next.run(request).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "the admin token is required: Authorization: Bearer <token>, or open /login?token=<token>\n",
        )
            .into_response()
    }
}

/// Alive: the process answers.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready to take mail: listeners bound, spool recovered.
async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    }
}

#[derive(Deserialize)]
struct LoginQuery {
    token: String,
}

/// Trades the token in the URL for a cookie, so the address bar and history keep no secret.
async fn login(State(state): State<Arc<AdminState>>, Query(query): Query<LoginQuery>) -> Response {
    if !same_secret(&query.token, state.token.expose()) {
        return (StatusCode::UNAUTHORIZED, "wrong admin token\n").into_response();
    }
    let cookie = format!("{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/", query.token);
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}

/// The relay at a glance, for `sluice status` and scripts.
#[derive(Debug, Serialize, Deserialize)]
pub struct StatusReport {
    pub hostname: String,
    pub version: String,
    pub pid: u32,
    pub uptime_seconds: u64,
    pub ready: bool,
    pub queued: usize,
}

async fn status(State(state): State<Arc<AdminState>>) -> axum::Json<StatusReport> {
    axum::Json(StatusReport {
        hostname: state.hostname.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        uptime_seconds: state.started.elapsed().map(|d| d.as_secs()).unwrap_or(0),
        ready: state.ready.load(Ordering::Acquire),
        queued: state.scheduler.waiting(),
    })
}

/// `POST /api/reload`: what SIGHUP does, with the outcome in the answer (`sluice reload`).
async fn reload(State(state): State<Arc<AdminState>>) -> Response {
    let Some(reloader) = state.reloader.get() else {
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(serde_json::json!({ "error": "sluice is starting" })))
            .into_response();
    };
    match reloader.reload().await {
        Ok(report) => axum::Json(report).into_response(),
        Err(e) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(
                serde_json::json!({ "error": format!("reload refused, the running configuration is kept: {e}") }),
            ),
        )
            .into_response(),
    }
}

/// Compares without an early exit, so response times say nothing about how much of a guess was right.
fn same_secret(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn generate_token() -> Secret {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 24];
    ring::rand::SystemRandom::new().fill(&mut bytes).expect("the system's random source");
    Secret::new(base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes))
}

/// Writes a file readable by its owner only, replacing it atomically.
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The token for a client: the environment's, else the discovery file's.
pub fn client_token(discovery: &Discovery) -> anyhow::Result<String> {
    if let Ok(token) = std::env::var(ADMIN_TOKEN_ENV)
        && !token.is_empty()
    {
        return Ok(token);
    }
    let Some(file) = &discovery.token_file else {
        anyhow::bail!("the admin token comes from the environment: set {ADMIN_TOKEN_ENV}");
    };
    let token =
        std::fs::read_to_string(file).with_context(|| format!("cannot read the admin token {}", file.display()))?;
    Ok(token.trim_end().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abcdef", "abcdef"));
        assert!(!same_secret("abcdeg", "abcdef"));
        assert!(!same_secret("abc", "abcdef"));
        assert!(!same_secret("", "abcdef"));
    }

    #[test]
    fn generated_tokens_differ_and_are_long() {
        let (a, b) = (generate_token(), generate_token());
        assert_ne!(a.expose(), b.expose());
        assert_eq!(a.expose().len(), 32);
    }
}
