//! The `sluice` command line: serve, reload, check-config, login, passwd, probe, status, queue.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use sluice::config;

#[derive(Parser)]
#[command(name = "sluice", version, about = "SMTP relay for Microsoft 365 and other smarthosts")]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// How a command finds the running relay's admin interface.
#[derive(clap::Args)]
struct AdminArgs {
    /// The relay's configuration (its spool directory tells where the admin interface listens).
    #[arg(long, short, env = "SLUICE_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// The admin interface's URL, instead of looking it up in the spool directory.
    #[arg(long, env = "SLUICE_ADMIN_URL", global = true)]
    admin_url: Option<String>,
}

impl AdminArgs {
    fn client(&self) -> anyhow::Result<sluice::admin::client::AdminClient> {
        let spool_dir = config::spool_dir(self.config.as_deref())?;
        sluice::admin::client::AdminClient::discover(&spool_dir, self.admin_url.as_deref())
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay. Without --config, runs the embedded default (127.0.0.1:2525 → 127.0.0.1:2526).
    Serve {
        #[arg(long, short, env = "SLUICE_CONFIG")]
        config: Option<PathBuf>,
        /// Write the process id here (for `sluice reload --pid-file`); removed at exit.
        #[arg(long)]
        pid_file: Option<PathBuf>,
    },
    /// Make a running sluice read its configuration file again (like SIGHUP): prints what was applied,
    /// or why the file was refused (the running configuration is then kept). Exit 1 when refused.
    Reload {
        /// Send SIGHUP to the pid in this file (`serve --pid-file`) instead of asking the admin
        /// interface (which also answers with what was applied, or why the file was refused).
        #[arg(long)]
        pid_file: Option<PathBuf>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Check a configuration file and print what would be served, or the first error.
    CheckConfig {
        #[arg(long, short, env = "SLUICE_CONFIG")]
        config: PathBuf,
    },
    /// Sign a user in for an upstream with oauth_flow = "delegated" (device code flow): prints the page
    /// to open and the code to enter, waits for the sign-in, and stores the refresh token (mode 0600) in
    /// the upstream's refresh_token_file.
    Login {
        #[arg(long, short, env = "SLUICE_CONFIG")]
        config: PathBuf,
        /// The upstream to sign in for: `upstream` (the configuration's [upstream] section).
        #[arg(default_value = "upstream")]
        upstream: String,
    },
    /// Read a password (prompted on a terminal, else one line of stdin) and print its argon2 hash for
    /// a [[user]] password_hash.
    Passwd,
    /// Print the embedded default configuration.
    DefaultConfig,
    /// Ask the running relay how it is (through its admin interface).
    Status {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Diagnose the upstream step by step (DNS, TLS, token, AUTH, optionally a test message), or with
    /// --listener our own listener as a device would; explains Microsoft's refusals. Exit 0 when all worked.
    Probe(sluice::probe::ProbeArgs),
    /// Look at and steer the running relay's queue: list, show, retry, hold, release, delete, bounce,
    /// flush, summary.
    Queue {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: sluice::cli::queue::QueueCommand,
    },
    /// Submit a message the way sendmail does (also what runs when sluice is installed as `sendmail`):
    /// recipients as arguments or -t, -f sender, -F full name, -i/-oi; the message on stdin. It goes to
    /// the local sluice at $SLUICE_SENDMAIL_SERVER (default 127.0.0.1:25).
    Sendmail {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    #[cfg(feature = "demo")]
    /// Start a simulated Microsoft 365 and a relay in front of it, send three messages as three kinds
    /// of device, show what happened, and keep both running for you to try (Ctrl-C stops).
    Demo {
        /// Port of the demo relay's LAN listener (0: any free port).
        #[arg(long, default_value_t = 2525)]
        lan_port: u16,
        /// Port of the demo relay's STARTTLS + AUTH listener (0: any free port).
        #[arg(long, default_value_t = 2587)]
        submission_port: u16,
        /// Exit once the three messages are settled.
        #[arg(long)]
        once: bool,
    },
}

fn main() -> ExitCode {
    // Installed as (or linked to) `sendmail`: behave as sendmail, with its own command line.
    let mut argv = std::env::args();
    let invoked_as = argv.next().unwrap_or_default();
    if std::path::Path::new(&invoked_as).file_name().is_some_and(|n| n == "sendmail") {
        let args: Vec<String> = argv.collect();
        return ExitCode::from(sluice::sendmail::main(&args));
    }
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Serve { config, pid_file } => serve(config, pid_file),
        Command::Reload { pid_file: Some(pid_file), .. } => reload(&pid_file),
        Command::Reload { pid_file: None, admin } => run_admin_command(async move {
            let report: serde_json::Value = admin.client()?.post("/api/reload", &serde_json::json!({})).await?;
            let list = |key: &str| -> Vec<String> {
                report[key]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|v| v.as_str().map_or(v.to_string(), str::to_owned))
                    .collect()
            };
            println!("configuration reloaded");
            for (key, title) in [
                ("applied", "applied to new sessions"),
                ("listeners_added", "listening on"),
                ("listeners_removed", "no longer listening on"),
                ("tls_reloaded", "certificates read again"),
                ("restart_needed", "changed, but needs a restart"),
                ("warnings", "warning"),
            ] {
                let items = list(key);
                if !items.is_empty() {
                    println!("  {title}: {}", items.join(", "));
                }
            }
            Ok(())
        }),
        Command::CheckConfig { config } => check_config(&config),
        Command::Passwd => passwd(),
        Command::Probe(args) => sluice::probe::run(args),
        Command::Login { config, upstream } => login(&config, &upstream),
        Command::Sendmail { args } => ExitCode::from(sluice::sendmail::main(&args)),
        Command::Status { admin } => run_admin_command(async move {
            let client = admin.client()?;
            let report: sluice::admin::StatusReport = client.get("/api/status").await?;
            println!("sluice {} on {} (pid {})", report.version, report.hostname, report.pid);
            println!("  up {}", humantime::format_duration(std::time::Duration::from_secs(report.uptime_seconds)));
            println!("  {}", if report.ready { "ready" } else { "not ready" });
            println!("  queued: {}", report.queued);
            println!("  admin:  {}", client.base_url());
            Ok(())
        }),
        Command::Queue { admin, command } => {
            run_admin_command(async move { sluice::cli::queue::run(&admin.client()?, command).await })
        }
        Command::DefaultConfig => {
            print!("{}", config::EMBEDDED_DEFAULT);
            ExitCode::SUCCESS
        }
        #[cfg(feature = "demo")]
        Command::Demo { lan_port, submission_port, once } => {
            let options = sluice::demo::DemoOptions { lan_port, submission_port, once };
            block_on(async move {
                let shutdown = CancellationToken::new();
                sluice::server::cancel_on_signals(shutdown.clone());
                sluice::demo::run(options, shutdown).await
            })
        }
    }
}

/// Runs a future on a multi-threaded runtime, turning an error into exit status 1.
#[cfg(feature = "demo")]
fn block_on(future: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => match runtime.block_on(future) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sluice: {e:#}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("sluice: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a command that talks to the running relay on a small runtime; errors go to stderr, exit 1.
fn run_admin_command(future: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("sluice: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(future) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Sends SIGHUP to the sluice whose process id is in `pid_file`.
fn reload(pid_file: &std::path::Path) -> ExitCode {
    let text = match std::fs::read_to_string(pid_file) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("sluice reload: cannot read {}: {e}", pid_file.display());
            return ExitCode::FAILURE;
        }
    };
    let Some(pid) = text.trim().parse::<i32>().ok().and_then(rustix::process::Pid::from_raw) else {
        eprintln!("sluice reload: {} does not hold a process id", pid_file.display());
        return ExitCode::FAILURE;
    };
    match rustix::process::kill_process(pid, rustix::process::Signal::HUP) {
        Ok(()) => {
            println!("sent SIGHUP to sluice (pid {}); its log says whether the configuration was applied", text.trim());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sluice reload: cannot signal pid {}: {e}", text.trim());
            ExitCode::FAILURE
        }
    }
}

/// The pid file of `serve --pid-file`, removed when serve returns.
struct PidFile(PathBuf);

impl PidFile {
    fn write(path: PathBuf) -> std::io::Result<PidFile> {
        std::fs::write(&path, format!("{}\n", std::process::id()))?;
        Ok(PidFile(path))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn serve(path: Option<PathBuf>, pid_file: Option<PathBuf>) -> ExitCode {
    let loaded = match &path {
        Some(path) => config::load_table(path)
            .map(|(config, table)| (config, Some(sluice::server::ConfigSource { path: path.clone(), table }))),
        None => {
            tracing::info!("no --config given: running the embedded default configuration");
            config::parse(config::EMBEDDED_DEFAULT, std::path::Path::new(".")).map(|config| (config, None))
        }
    };
    let (config, source) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("sluice: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let _pid_file = match pid_file.map(PidFile::write).transpose() {
        Ok(pid_file) => pid_file,
        Err(e) => {
            eprintln!("sluice: cannot write the pid file: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("sluice: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        sluice::server::cancel_on_signals(shutdown.clone());
        // SIGHUP reads the configuration file again (see server/reload.rs).
        let on_hup = shutdown.clone();
        let ready = move |_: &sluice::scheduler::Scheduler, reloader: &std::sync::Arc<sluice::server::Reloader>| {
            sluice::server::reload_on_sighup(reloader.clone(), on_hup)
        };
        match sluice::server::run_reloadable(config, source, shutdown, ready).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e:#}");
                eprintln!("sluice: {e:#}");
                ExitCode::FAILURE
            }
        }
    })
}

fn check_config(path: &std::path::Path) -> ExitCode {
    match config::load(path) {
        Ok(config) => {
            println!("{}: OK", path.display());
            println!("  hostname: {}", config.hostname);
            println!("  spool:    {}", config.spool_dir.display());
            for l in &config.listeners {
                let auth = if !l.auth || config.users.is_empty() {
                    "no AUTH"
                } else if l.insecure_allow_plaintext_auth {
                    "AUTH (also without TLS!)"
                } else if l.tls_config.is_some() {
                    "AUTH over TLS"
                } else {
                    "no AUTH (needs TLS)"
                };
                println!(
                    "  listener: {} tls={:?} {} allowed_networks={:?}",
                    l.address, l.tls, auth, l.allowed_networks
                );
            }
            if config.upstreams.len() == 1 {
                println!("  upstream: {} tls={:?}", config.upstream.display_name(), config.upstream.tls);
            } else {
                for u in &config.upstreams {
                    println!(
                        "  upstream {}: {} {} tls={:?} mailboxes={:?}",
                        u.name,
                        u.kind.name(),
                        u.display_name(),
                        u.tls,
                        u.mailboxes
                    );
                }
            }
            if !config.routing.routes.is_empty() {
                println!(
                    "  routes:   {} (no match: upstream {})",
                    config.routing.routes.len(),
                    config.routing.fallback.upstream
                );
            }
            for warning in &config.warnings {
                println!("  warning:  {warning}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            ExitCode::from(2)
        }
    }
}

fn login(path: &std::path::Path, name: &str) -> ExitCode {
    let config = match config::load(path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    // `[upstream]` answers to "default" and, as the single upstream's key, to "upstream".
    let wanted = if name == "upstream" { config::DEFAULT_UPSTREAM } else { name };
    let Some(upstream) = config.upstreams.iter().find(|u| u.name == wanted) else {
        let names: Vec<&str> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
        eprintln!("sluice login: no upstream named {name:?} (the configuration has: {})", names.join(", "));
        return ExitCode::from(2);
    };
    let Some(oauth) =
        upstream.oauth.as_ref().filter(|o| matches!(o.credential, config::OAuthCredential::Delegated { .. }))
    else {
        eprintln!("sluice login: the upstream does not use oauth_flow = \"delegated\"");
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("sluice: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let http = sluice::oauth::http_client(&upstream.https_tls, upstream.connect_timeout, upstream.command_timeout);
    let result = runtime.block_on(sluice::oauth::login(&http, oauth, |prompt| {
        println!("To sign in, open {} and enter the code {}", prompt.verification_uri, prompt.user_code);
        if let Some(mailbox) = &upstream.mailbox {
            println!("Sign in as {mailbox}. Waiting for the sign-in…");
        }
    }));
    match result {
        Ok(()) => {
            println!("Signed in. sluice can send as this user now.");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sluice login: {e}");
            ExitCode::FAILURE
        }
    }
}

fn passwd() -> ExitCode {
    let password = if std::io::stdin().is_terminal() {
        match rpassword::prompt_password("Password: ") {
            Ok(p) => p,
            Err(e) => {
                eprintln!("sluice passwd: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        let mut line = String::new();
        if let Err(e) = std::io::stdin().lock().read_line(&mut line) {
            eprintln!("sluice passwd: cannot read stdin: {e}");
            return ExitCode::FAILURE;
        }
        line.trim_end_matches(['\r', '\n']).to_owned()
    };
    if password.is_empty() {
        eprintln!("sluice passwd: empty password refused");
        return ExitCode::FAILURE;
    }
    match sluice::policy::users::hash_password(&password) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sluice passwd: {e}");
            ExitCode::FAILURE
        }
    }
}
