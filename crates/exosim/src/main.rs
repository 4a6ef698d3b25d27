//! The `exosim` binary: reads a tenant TOML file, starts the simulator, prints the addresses it
//! listens on and the CA certificate's location, and serves until Ctrl-C.
//!
//! ```text
//! exosim [--config FILE] [--ca-out FILE] [--check]
//! ```
//! Without `--config`, the example tenant embedded from `examples/tenant.toml` is used.

use std::path::PathBuf;
use std::process::ExitCode;

use exosim::{SimConfig, Simulator};

const EXAMPLE: &str = include_str!("../examples/tenant.toml");

const USAGE: &str = "usage: exosim [--config FILE] [--ca-out FILE] [--check]
  --config FILE   tenant configuration (TOML); default: the built-in example tenant
  --ca-out FILE   write the generated CA certificate (PEM) here; default: printed to stdout
  --check         validate the configuration and exit";

fn main() -> ExitCode {
    let mut config_path: Option<PathBuf> = None;
    let mut ca_out: Option<PathBuf> = None;
    let mut check = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" => config_path = args.next().map(PathBuf::from),
            "--ca-out" => ca_out = args.next().map(PathBuf::from),
            "--check" => check = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("exosim: unknown argument {other:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let config = match &config_path {
        Some(p) => SimConfig::from_file(p),
        None => SimConfig::from_toml_str(EXAMPLE),
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("exosim: {e}");
            return ExitCode::from(1);
        }
    };
    if check {
        println!("configuration ok");
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("exosim: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let sim = match Simulator::start(config).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("exosim: {e}");
                return ExitCode::from(1);
            }
        };
        println!("smtp submission (STARTTLS): {}", sim.smtp_addr());
        println!("mx (connectors, direct send): {}", sim.mx_addr());
        println!("https (token, admin):       {}", sim.https_base());
        println!("token endpoint:             {}", sim.token_url());
        match &ca_out {
            Some(p) => {
                if let Err(e) = std::fs::write(p, sim.ca_cert_pem()) {
                    eprintln!("exosim: cannot write {}: {e}", p.display());
                    return ExitCode::from(1);
                }
                println!("CA certificate:             {}", p.display());
            }
            None => print!("CA certificate:\n{}", sim.ca_cert_pem()),
        }
        println!("ready; Ctrl-C to stop");
        let _ = tokio::signal::ctrl_c().await;
        sim.shutdown().await;
        ExitCode::SUCCESS
    })
}
