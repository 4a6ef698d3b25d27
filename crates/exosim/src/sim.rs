//! Starting and driving the simulator: [`Simulator::start`] binds the endpoints and returns a
//! [`RunningSim`], the handle tests use to read messages, inject faults, move the clock and
//! change tenant switches at run time. [`Shared`] is the state all endpoints read.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clock::{Clock, ManualClock, Sleep, SystemClock};
use crate::config::{ClockMode, SimConfig};
use crate::directory::Directory;
use crate::faults::{Action, Fault, Faults, Step};
use crate::limits::Usage;
use crate::smtp::Endpoint;
use crate::store::StoredMessage;
use crate::tls::{TlsError, TlsMaterial};
use crate::tokens::{Audience, Grant, Subject, TokenStore};

/// Why the simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Binding a listener failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// TLS material.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The configuration.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// Counters tests can wait on (no sleeping, no timing assertions).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages whose end-of-DATA reply is being held by the per-minute rate limit right now.
    pub rate_delayed_now: u64,
    /// Messages ever held by the rate limit.
    pub rate_delayed_total: u64,
    /// SMTP connections accepted (both endpoints).
    pub smtp_connections: u64,
    /// SMTP command lines read (both endpoints).
    pub smtp_commands: u64,
    /// SMTP sessions waiting for a command line right now (the idle timer runs).
    pub smtp_idle_sessions: u64,
}

/// State shared by every endpoint.
pub struct Shared {
    /// The tenant.
    pub dir: RwLock<Directory>,
    clock: RwLock<Arc<dyn Clock>>,
    /// The manual clock, when the simulator runs on one.
    manual: Mutex<Option<ManualClock>>,
    /// Per-mailbox usage.
    pub usage: Mutex<Usage>,
    /// Issued tokens.
    pub tokens: Mutex<TokenStore>,
    /// Pending faults.
    pub faults: Mutex<Faults>,
    /// Accepted messages.
    pub messages: Mutex<Vec<StoredMessage>>,
    /// Graph drafts, upload sessions and request budget.
    pub(crate) graph: Mutex<crate::drafts::GraphState>,
    /// TLS material.
    pub tls: TlsMaterial,
    /// Counters.
    pub stats: watch::Sender<Stats>,
}

impl Shared {
    /// The simulator's time.
    pub fn now(&self) -> SystemTime {
        self.clock().now()
    }

    /// The clock in force.
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.clock.read().expect("clock lock").clone()
    }

    /// Switches to a manual clock at the current time, once; returns it.
    pub fn manual_clock(&self) -> ManualClock {
        let mut manual = self.manual.lock().expect("manual lock");
        if let Some(m) = manual.as_ref() {
            return m.clone();
        }
        let m = ManualClock::new(self.now());
        *self.clock.write().expect("clock lock") = Arc::new(m.clone());
        *manual = Some(m.clone());
        m
    }

    /// The manual clock, if the simulator runs on one (configured, or switched to by a test).
    pub fn manual(&self) -> Option<ManualClock> {
        self.manual.lock().expect("manual lock").clone()
    }

    /// The user of `mailbox` signs in with the device-code flow's `user_code` (what they would
    /// do at microsoft.com/devicelogin; consent is taken as given).
    pub fn device_login(&self, user_code: &str, mailbox: &str) -> Result<(), String> {
        let dir = self.dir();
        let Some(m) = dir.mailbox(mailbox) else {
            return Err(format!("{mailbox} is not a mailbox of this tenant"));
        };
        let now = self.now();
        self.tokens.lock().expect("tokens lock").sign_in(user_code, &m.address, now).map_err(str::to_owned)
    }

    /// Sleeps on the simulator's clock.
    pub fn sleep_until(&self, t: SystemTime) -> Sleep {
        self.clock().sleep_until(t)
    }

    /// A snapshot of the directory.
    pub fn dir(&self) -> Directory {
        self.dir.read().expect("directory lock").clone()
    }

    /// Fires a fault for `step`, if one is pending.
    pub fn fault(&self, step: Step, mailbox: Option<&str>) -> Option<Action> {
        self.faults.lock().expect("faults lock").take(step, mailbox)
    }

    /// Updates the counters.
    pub fn stat(&self, f: impl FnOnce(&mut Stats)) {
        self.stats.send_modify(f);
    }

    /// Records an accepted message and returns its sequence number.
    pub fn store(&self, mut m: StoredMessage) -> u64 {
        let mut list = self.messages.lock().expect("messages lock");
        m.seq = list.len() as u64 + 1;
        let seq = m.seq;
        list.push(m);
        seq
    }
}

/// Entry point.
pub struct Simulator;

impl Simulator {
    /// Generates TLS material, binds the SMTP and HTTPS listeners of `config.listen` (loopback,
    /// port 0 by default) and serves until [`RunningSim::shutdown`] or drop.
    pub async fn start(config: SimConfig) -> Result<RunningSim, SimError> {
        let config = config.validated()?;
        let tls = TlsMaterial::generate(&config.tenant.hostname, &config.tenant.mx_hostname)?;
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr).await.map_err(|source| SimError::Bind { addr, source })
        };
        let smtp = bind(config.listen.smtp).await?;
        let https = bind(config.listen.https).await?;
        let mx = bind(config.listen.mx).await?;
        let mx_addr = mx.local_addr().map_err(|source| SimError::Bind { addr: config.listen.mx, source })?;
        let manual = (config.clock == ClockMode::Manual).then(ManualClock::starting_now);
        let clock: Arc<dyn Clock> = match &manual {
            Some(m) => Arc::new(m.clone()),
            None => Arc::new(SystemClock),
        };
        let smtp_addr = smtp.local_addr().map_err(|source| SimError::Bind { addr: config.listen.smtp, source })?;
        let https_addr = https.local_addr().map_err(|source| SimError::Bind { addr: config.listen.https, source })?;
        let shared = Arc::new(Shared {
            dir: RwLock::new(Directory { config }),
            clock: RwLock::new(clock),
            manual: Mutex::new(manual.clone()),
            usage: Mutex::new(Usage::default()),
            tokens: Mutex::new(TokenStore::default()),
            faults: Mutex::new(Faults::default()),
            messages: Mutex::new(Vec::new()),
            graph: Mutex::new(crate::drafts::GraphState::default()),
            tls,
            stats: watch::Sender::new(Stats::default()),
        });
        let tasks = vec![
            tokio::spawn(crate::smtp::serve(smtp, shared.clone(), Endpoint::Submission)),
            tokio::spawn(crate::smtp::serve(mx, shared.clone(), Endpoint::Mx)),
            tokio::spawn(crate::http::serve(https, shared.clone())),
        ];
        Ok(RunningSim { shared, smtp_addr, https_addr, mx_addr, tasks })
    }
}

/// A running simulator. Dropping it stops the listeners and every open connection.
pub struct RunningSim {
    shared: Arc<Shared>,
    smtp_addr: SocketAddr,
    https_addr: SocketAddr,
    mx_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningSim {
    /// The client submission endpoint (like smtp.office365.com:587).
    pub fn smtp_addr(&self) -> SocketAddr {
        self.smtp_addr
    }

    /// The MX endpoint (like `contoso-com.mail.protection.outlook.com:25`).
    pub fn mx_addr(&self) -> SocketAddr {
        self.mx_addr
    }

    /// Issues a client certificate for `names` from the simulator's "public" CA (through an
    /// intermediate), for connector tests: present `chain_pem` for a full chain.
    pub fn issue_client_certificate(&self, names: &[&str]) -> Result<crate::tls::ClientCertificate, SimError> {
        Ok(self.shared.tls.issue_client_certificate(names)?)
    }

    /// The HTTPS endpoint (token endpoint and admin API).
    pub fn https_addr(&self) -> SocketAddr {
        self.https_addr
    }

    /// `https://127.0.0.1:PORT`, the base URL of the HTTPS endpoint.
    pub fn https_base(&self) -> String {
        format!("https://{}", self.https_addr)
    }

    /// The token endpoint URL for the configured tenant id.
    pub fn token_url(&self) -> String {
        let tenant = self.shared.dir().config.tenant.id;
        format!("{}/{tenant}/oauth2/v2.0/token", self.https_base())
    }

    /// The CA certificate (PEM) that signed the endpoints' certificate.
    pub fn ca_cert_pem(&self) -> String {
        self.shared.tls.ca_pem.clone()
    }

    /// Every accepted message, oldest first.
    pub fn messages(&self) -> Vec<StoredMessage> {
        self.shared.messages.lock().expect("messages lock").clone()
    }

    /// Drafts in the mailboxes (created, not sent, not deleted): the large-message path leaves
    /// none behind.
    pub fn drafts(&self) -> usize {
        self.shared.graph.lock().expect("graph lock").drafts.len()
    }

    /// Forgets the accepted messages.
    pub fn clear_messages(&self) {
        self.shared.messages.lock().expect("messages lock").clear();
    }

    /// Adds a fault after the pending ones.
    pub fn inject(&self, fault: Fault) {
        self.shared.faults.lock().expect("faults lock").push(fault);
    }

    /// The faults not yet fired.
    pub fn pending_faults(&self) -> Vec<Fault> {
        self.shared.faults.lock().expect("faults lock").pending()
    }

    /// Removes every pending fault.
    pub fn clear_faults(&self) {
        self.shared.faults.lock().expect("faults lock").clear();
    }

    /// Replaces the clock.
    pub fn set_clock(&self, clock: Arc<dyn Clock>) {
        *self.shared.manual.lock().expect("manual lock") = None;
        *self.shared.clock.write().expect("clock lock") = clock;
    }

    /// Switches to a [`ManualClock`] standing at the current simulator time (once) and returns
    /// it; later calls return the same clock.
    pub fn manual_clock(&self) -> ManualClock {
        self.shared.manual_clock()
    }

    /// Moves the (manual) clock forward; see [`RunningSim::manual_clock`].
    pub fn advance(&self, by: Duration) {
        self.manual_clock().advance(by);
    }

    /// The simulator's current time.
    pub fn now(&self) -> SystemTime {
        self.shared.now()
    }

    /// Changes the tenant at run time (e.g. turn basic auth off); applies to the next command.
    pub fn update_config(&self, f: impl FnOnce(&mut SimConfig)) -> Result<(), SimError> {
        let mut dir = self.shared.dir.write().expect("directory lock");
        let mut config = dir.config.clone();
        f(&mut config);
        dir.config = config.validated()?;
        Ok(())
    }

    /// Issues a client-credentials token for `client_id` directly (no HTTP), with the app's
    /// current permissions, as the token endpoint would. For tests that are not about tokens.
    pub fn issue_app_token(&self, client_id: &str, audience: Audience) -> Option<String> {
        let dir = self.shared.dir();
        let app = dir.app(client_id)?;
        let grant = Grant {
            audience,
            subject: Subject::App {
                client_id: app.client_id.clone(),
                roles: crate::tokens::roles_for(audience, &app.permissions),
            },
            expires_at: self.shared.now() + Duration::from_secs(dir.config.limits.token_lifetime_secs),
        };
        Some(self.shared.tokens.lock().expect("tokens lock").issue(grant, &dir.config.tenant.id))
    }

    /// Signs the user of `mailbox` in for a pending device code (see the device-code flow).
    pub fn device_login(&self, user_code: &str, mailbox: &str) -> Result<(), String> {
        self.shared.device_login(user_code, mailbox)
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        *self.shared.stats.borrow()
    }

    /// Waits until `pred` holds for the counters (for tests: "a message is now being delayed").
    pub async fn wait_for_stats(&self, pred: impl Fn(&Stats) -> bool) -> Stats {
        let mut rx = self.shared.stats.subscribe();
        *rx.wait_for(|s| pred(s)).await.expect("stats sender lives")
    }

    /// Connections currently held for `mailbox` against the concurrency limit.
    pub fn connections(&self, mailbox: &str) -> u32 {
        self.shared.usage.lock().expect("usage lock").connections(&mailbox.to_ascii_lowercase())
    }

    /// Stops listening and closes every connection.
    pub async fn shutdown(mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for RunningSim {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
