//! The `sluice` command line: serve, check-config, passwd.

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
    },
    /// Check a configuration file and print what would be served, or the first error.
    CheckConfig {
        #[arg(long, short, env = "SLUICE_CONFIG")]
        config: PathBuf,
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
        Command::Serve { config } => serve(config),
        Command::CheckConfig { config } => check_config(&config),
        Command::Passwd => passwd(),
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

fn serve(path: Option<PathBuf>) -> ExitCode {
    let loaded = match &path {
        Some(path) => config::load(path),
        None => {
            tracing::info!("no --config given: running the embedded default configuration");
            config::parse(config::EMBEDDED_DEFAULT, std::path::Path::new("."))
        }
    };
    let config = match loaded {
        Ok(config) => config,
        Err(e) => {
            eprintln!("sluice: configuration error: {e}");
            return ExitCode::from(2);
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
        match sluice::server::run(config, shutdown).await {
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
            println!("  upstream: {} tls={:?}", config.upstream.display_name(), config.upstream.tls);
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
