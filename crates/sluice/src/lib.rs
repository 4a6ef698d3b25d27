//! sluice: an SMTP relay that accepts mail from devices on a LAN, keeps it on disk, and forwards it to
//! Microsoft 365 or any smarthost, retrying what is temporary and bouncing what is permanent.
//!
//! The modules follow the path of a message:
//!
//! ```text
//! listener ──► policy ──► spool ──► scheduler ──► upstream
//! (SMTP in)   (may it?)  (durable)  (when/retry)  (SMTP out, classify)
//! ```
//!
//! - [`listener`]: accept loops and the SMTP session, one file per stage (EHLO, AUTH, MAIL, RCPT, DATA).
//! - [`policy`]: who may relay (allowed networks, authenticated users) and password checks.
//! - [`spool`]: files on disk; a message is acknowledged only once it is durable there.
//! - [`routing`]: which upstream and mailbox a message goes through (sender, user, network).
//! - [`scheduler`]: the in-memory queue over the spool, delivery workers, the pure retry schedule.
//! - [`upstream`]: the SMTP client and the single outcome classifier.
//! - [`probe`]: `sluice probe`, step-by-step diagnostics of the upstream and of our listeners.
//! - [`dsn`]: bounces (RFC 3464). [`config`]: raw TOML → resolved runtime config. [`server`]: wiring.
//!
//! The wire protocol itself (parsing, replies, dot-stuffing) lives in the `smtp-wire` crate, which does no I/O.

pub mod admin;
pub mod cli;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod dsn;
pub mod listener;
pub mod metrics;
pub mod oauth;
pub mod policy;
pub mod probe;
pub mod routing;
pub mod scheduler;
pub mod sendmail;
pub mod server;
pub mod spool;
pub mod upstream;
