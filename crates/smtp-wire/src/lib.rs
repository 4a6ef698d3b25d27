//! The SMTP wire protocol for sluice, with no I/O: command lines in, [`Command`]s out; [`Reply`]s
//! in both directions; DATA content framing and dot-stuffing.
//!
//! Everything here works on byte slices the caller owns, so it can be table-tested and fuzzed
//! without sockets, and the relay decides buffering, timeouts and TLS. Nothing in this crate knows
//! about session state (which command is allowed when): that is the relay's business.
//!
//! - [`line`]: splitting the command stream into lines, with the length limit.
//! - [`command`]: parsing and rendering commands and their ESMTP parameters.
//! - [`address`]: envelope mailbox syntax.
//! - [`reply`]: replies and enhanced status codes, building and parsing.
//! - [`data`]: the DATA phase (end of data, unstuffing, normalisation, limits) and dot-stuffing.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod address;
pub mod command;
pub mod data;
pub mod line;
pub mod reply;

pub use address::{Address, AddressError};
pub use command::{
    Body, Command, CommandError, MailParams, Notify, RcptParams, Ret, parse_command,
};
pub use data::{DataLimits, DataReceiver, DataSummary, Feed, dot_stuff};
pub use line::{Framed, LineFramer};
pub use reply::{EnhancedCode, Reply, ReplyParseError, parse_reply};
