//! `sluice demo` end to end: the simulator and the relay start, the three scripted devices talk SMTP,
//! two messages reach the simulated Microsoft 365, and the SendAs refusal becomes a bounce.
#![cfg(feature = "demo")]

mod common;

use std::process::Command;
use std::time::Duration;

use common::run_command;

#[test]
fn demo_shows_delivery_and_a_sendas_bounce() {
    let out = run_command(
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["demo", "--lan-port", "0", "--submission-port", "0", "--once"])
            .env("RUST_LOG", "warn"),
        None,
        Duration::from_secs(120),
    );
    assert!(out.success(), "{out}");
    let text = &out.stdout;
    assert_eq!(text.matches("delivered to Microsoft 365: 250 2.0.0 OK").count(), 2, "{out}");
    assert!(text.contains("to bob@contoso.com: refused by Microsoft 365: 550 5.7.60"), "{out}");
    assert!(text.contains("sluice bounced it to <ceo@contoso.com>"), "{out}");
    assert!(text.contains("235 2.7.0 Authentication successful"), "the ERP device authenticated:\n{out}");
    assert_eq!(text.matches("Microsoft 365 (simulated) holds message").count(), 2, "{out}");
}
