//! Where mail comes in: one accept loop per configured listener, one [`session::Session`] per client.
//!
//! Flow of a connection: accept → (implicit TLS handshake) → session → (STARTTLS: handshake, new session
//! on the TLS stream with the state reset) → one log line when it ends.

mod auth;
mod data;
mod ehlo;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
#[cfg(feature = "legacy-tls")]
mod legacy;
mod mail;
mod proxy;
mod rcpt;
pub mod received;
pub mod session;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::{ListenerConfig, ListenerTls};
use crate::metrics::{Metrics, Rejection};
use crate::policy::abuse::{Abuse, Refusal};
use crate::policy::{Identity, Policy, Users};
use crate::scheduler::Scheduler;
use crate::spool::Spool;
use session::{Ended, Session, SessionState, TlsInfo};

/// The session fuzz entry point (see [`fuzz`]): bytes in, replies out.
#[cfg(any(test, feature = "fuzzing"))]
pub use fuzz::fuzz_session;

/// A TLS handshake that takes longer than this is a stuck or hostile client.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// What every listener shares: one generation of the settings. A configuration reload builds a new one
/// (new users and identity rules, the same spool, queue and abuse counters); a session keeps the one it
/// started with.
pub struct Shared {
    pub hostname: String,
    pub spool: Spool,
    pub scheduler: Scheduler,
    pub users: Arc<Users>,
    pub policy: Arc<Policy>,
    pub abuse: Arc<Abuse>,
    pub metrics: Arc<Metrics>,
}

/// What one listener's sessions share: the listener's settings as they were when the session was
/// accepted (a reload does not change a session already open).
pub struct ListenerContext {
    pub config: ListenerConfig,
    pub shared: Arc<Shared>,
    pub shutdown: CancellationToken,
}

/// A running listener: its current settings, which a configuration reload replaces for the sessions
/// accepted after it, the number of sessions open, and the token that closes it (a reload that removes
/// its address, or shutdown).
pub struct LiveListener {
    /// The address as configured (the key a reload matches listeners by).
    pub address: SocketAddr,
    ctx: RwLock<Arc<ListenerContext>>,
    open: AtomicUsize,
    stop: CancellationToken,
}

impl LiveListener {
    pub fn new(ctx: Arc<ListenerContext>) -> Arc<LiveListener> {
        Arc::new(LiveListener {
            address: ctx.config.address,
            stop: ctx.shutdown.child_token(),
            ctx: RwLock::new(ctx),
            open: AtomicUsize::new(0),
        })
    }

    /// The settings a session accepted now gets.
    pub fn current(&self) -> Arc<ListenerContext> {
        self.ctx.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// New settings for the sessions accepted from now on.
    pub fn replace(&self, ctx: Arc<ListenerContext>) {
        *self.ctx.write().unwrap_or_else(|e| e.into_inner()) = ctx;
    }

    /// Stops accepting and closes the socket; sessions already open go on.
    pub fn close(&self) {
        self.stop.cancel();
    }

    /// Sessions open on this listener.
    pub fn open_sessions(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// One of a listener's `max_connections` slots, released on drop.
struct OpenSlot(Arc<LiveListener>);

impl OpenSlot {
    fn take(live: &Arc<LiveListener>, max: usize) -> Option<OpenSlot> {
        live.open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).ok()?;
        Some(OpenSlot(live.clone()))
    }
}

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Accepts connections until the listener is closed or shutdown; sessions are tracked by `sessions` so
/// the caller can wait for them to finish. Each session gets the listener's settings of the moment.
pub async fn serve(listener: TcpListener, live: Arc<LiveListener>, sessions: TaskTracker) {
    loop {
        let accepted = tokio::select! {
            _ = live.stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Typically EMFILE: back off briefly instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let ctx = live.current();
        // The per-client limit and bans are checked in `handle`, after a PROXY header may have named
        // the real client; this limit protects the process itself.
        match OpenSlot::take(&live, ctx.config.max_connections) {
            Some(slot) => {
                sessions.spawn(async move {
                    handle(tcp, peer, ctx).await;
                    drop(slot);
                });
            }
            None => {
                ctx.shared.metrics.rejected(Rejection::AbuseLimit);
                sessions.spawn(async move {
                    warn!(client = %peer, limit = ctx.config.max_connections, "connection refused: too many connections");
                    let mut tcp = tcp;
                    let text = format!("421 4.7.0 {} Error: too many connections, try again later\r\n", ctx.shared.hostname);
                    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.write_all(text.as_bytes())).await;
                });
            }
        }
    }
}

async fn handle(mut tcp: TcpStream, peer: SocketAddr, ctx: Arc<ListenerContext>) {
    let started = Instant::now();
    let hostname = ctx.shared.hostname.clone();
    let peer = if ctx.config.proxy_protocol {
        match proxy::read_header(&mut tcp, peer, &ctx.config.proxy_trusted_networks).await {
            Ok(client) => client,
            Err(e) => {
                warn!(load_balancer = %peer, error = %e, "PROXY protocol header refused; connection closed");
                return;
            }
        }
    } else {
        peer
    };
    let _slot = match ctx.shared.abuse.open(crate::policy::canonical(peer.ip()), ctx.config.max_connections_per_client)
    {
        Ok(slot) => slot,
        Err(refusal) => {
            ctx.shared.metrics.rejected(Rejection::AbuseLimit);
            let text = match refusal {
                Refusal::Banned => "too many failed authentication attempts, try again later",
                Refusal::TooManyConnections => "too many connections from your address",
            };
            warn!(client = %peer, reason = text, "connection refused");
            let line = format!("421 4.7.0 {hostname} Error: {text}\r\n");
            let _ = tokio::time::timeout(Duration::from_secs(5), tcp.write_all(line.as_bytes())).await;
            return;
        }
    };
    let _active = ctx.shared.metrics.session_started(&ctx.config.address.to_string());
    let ended = match ctx.config.tls {
        ListenerTls::Implicit => run_tls(tcp, &ctx, SessionState::new(ctx.clone(), peer, None)).await,
        ListenerTls::None | ListenerTls::Starttls => {
            match Session::new(tcp, SessionState::new(ctx.clone(), peer, None)).run().await {
                Ended::Closed(state, why) => (state, why),
                Ended::StartTls(tcp, state) => run_tls(tcp, &ctx, state).await,
            }
        }
    };
    let (state, why) = ended;
    info!(
        client = %peer,
        helo = state.helo.as_deref().unwrap_or(""),
        tls = state.tls.as_ref().map(|t| t.version.as_str()).unwrap_or("none"),
        user = state.auth_user.as_deref().unwrap_or(""),
        certificate = state.cert_identity.as_ref().map(|i| i.name.as_str()).unwrap_or(""),
        accepted = state.accepted,
        relay_denied = state.relay_denied,
        errors = state.errors,
        ended = why,
        duration_ms = started.elapsed().as_millis() as u64,
        "session"
    );
}

/// Does the TLS handshake (implicit TLS, or after STARTTLS) and runs the session on the encrypted stream.
async fn run_tls<S: AsyncRead + AsyncWrite + Unpin + Send>(
    stream: S,
    ctx: &Arc<ListenerContext>,
    state: SessionState,
) -> (SessionState, &'static str) {
    #[cfg(feature = "legacy-tls")]
    if let Some(acceptor) = &ctx.config.legacy_tls {
        return match legacy::accept(stream, acceptor).await {
            Ok((tls, info)) => finish(Session::new(tls, state.after_tls(info, None)).run().await),
            Err(e) => {
                warn!(client = %state.peer, error = %e, "TLS handshake (legacy TLS listener) failed");
                (state, "TLS handshake failed")
            }
        };
    }
    match tls_accept(stream, ctx).await {
        Ok((tls, info, identity)) => finish(Session::new(tls, state.after_tls(info, identity)).run().await),
        Err(e) => {
            warn!(client = %state.peer, error = %e, "TLS handshake failed");
            (state, "TLS handshake failed")
        }
    }
}

/// A session on a TLS stream cannot upgrade again; STARTTLS there was already refused with 503.
fn finish<S>(ended: Ended<S>) -> (SessionState, &'static str) {
    match ended {
        Ended::Closed(state, why) => (state, why),
        Ended::StartTls(_, state) => (state, "second STARTTLS"),
    }
}

async fn tls_accept<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    ctx: &ListenerContext,
) -> std::io::Result<(tokio_rustls::server::TlsStream<S>, TlsInfo, Option<Identity>)> {
    let config = ctx.config.tls_config.clone().ok_or_else(|| std::io::Error::other("no TLS certificate configured"))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let tls = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
    let (_, connection) = tls.get_ref();
    let version = match connection.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_owned(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_owned(),
        Some(other) => format!("{other:?}"),
        None => "TLS".to_owned(),
    };
    let cipher = connection
        .negotiated_cipher_suite()
        .map(|suite| format!("{:?}", suite.suite()))
        .unwrap_or_else(|| "unknown".to_owned());
    // rustls has already verified the chain against client_ca_file; what is left is to map the
    // certificate's names to an identity.
    let identity = connection.peer_certificates().and_then(|chain| chain.first()).and_then(|leaf| {
        let identity = ctx.shared.policy.certificate_identity(leaf.as_ref());
        if identity.is_none() {
            let names = crate::policy::certificate_names(leaf.as_ref());
            warn!(?names, "client certificate is valid but matches no [[certificate]] rule");
        }
        identity
    });
    Ok((tls, TlsInfo { version, cipher }, identity))
}
