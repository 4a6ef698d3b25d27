//! exosim: a local stand-in for the parts of Exchange Online that sluice talks to, faithful to
//! `shared/reference/microsoft-365.md` (its replies, codes and texts), so that every Microsoft
//! behaviour can be tested for real on a machine that cannot reach Microsoft 365.
//!
//! Layout:
//! - [`sim`]: [`Simulator::start`] and the [`RunningSim`] handle (addresses, CA, messages,
//!   faults, clock, shutdown); the shared state every endpoint reads.
//! - [`config`]: the TOML configuration (tenant, domains, mailboxes, apps, limits).
//! - [`directory`]: mailboxes, apps, identities and SendAs rules (pure lookups).
//! - [`limits`]: per-mailbox usage counters (connections, rate, 24 h recipients).
//! - [`tokens`]: access tokens (JWT-shaped, looked up whole) and their grants.
//! - [`faults`]: scripted replies, disconnects and delays.
//! - [`store`]: accepted messages, for inspection.
//! - [`replies`]: every SMTP reply text, in one place.
//! - [`clock`]: the injectable clock.
//! - [`tls`]: the generated CA, server certificate and client certificates.
//! - [`connectors`]: the MX endpoint's inbound connector and direct-send rules.
//! - [`assertion`]: client assertions (certificate credentials) at the token endpoint.
//! - `smtp`: the submission endpoint (smtp.office365.com) and the MX endpoint
//!   (mail.protection.outlook.com): accept loop, session, AUTH, DATA.
//! - `http`: the HTTPS endpoint: token (login.microsoftonline.com), Graph sendMail
//!   (graph.microsoft.com) and the admin API.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod assertion;
pub mod clock;
pub mod config;
pub mod connectors;
pub mod directory;
mod drafts;
pub mod faults;
mod http;
pub mod limits;
pub mod replies;
pub mod sim;
mod smtp;
pub mod store;
pub mod tls;
pub mod tokens;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::SimConfig;
pub use faults::{Action, Fault, Step};
pub use sim::{RunningSim, SimError, Simulator};
pub use store::{StoredMessage, SubmitPath};
pub use tls::ClientCertificate;
