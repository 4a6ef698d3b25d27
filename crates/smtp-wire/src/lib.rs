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
//!
//! ```
//! use smtp_wire::*;
//!
//! // Server side: frame and parse a pipelined command stream.
//! let buf = b"MAIL FROM:<a@example.com> SIZE=100\r\nDATA\r\n";
//! let mut framer = LineFramer::new(MAX_COMMAND_LINE);
//! let Framed::Line { len, consumed } = framer.poll(buf) else { unreachable!() };
//! let cmd = parse_command(&buf[..len]).unwrap_or_else(|e| panic!("{}", e.reply()));
//! assert!(matches!(cmd, Command::Mail { from: Some(_), .. }));
//! assert_eq!(parse_command(&buf[consumed..buf.len() - 2]), Ok(Command::Data));
//!
//! // DATA: receive until CRLF.CRLF, unstuffing; then stuff again to relay it.
//! let mut rx = DataReceiver::new(DataLimits { max_size: 10_000_000, max_line: MAX_TEXT_LINE });
//! let mut content = Vec::new();
//! let feed = rx.feed(b"Subject: hi\r\n\r\n..dot\r\n.\r\nQUIT\r\n", &mut content);
//! assert!(feed.done);
//! assert_eq!(content, b"Subject: hi\r\n\r\n.dot\r\n");
//! let mut wire = Vec::new();
//! dot_stuff(&content, &mut wire);
//! assert_eq!(wire, b"Subject: hi\r\n\r\n..dot\r\n.\r\n");
//!
//! // Client side: parse the server's reply.
//! let (reply, _) = parse_reply(b"250 2.1.0 Ok\r\n").unwrap().unwrap();
//! assert_eq!(reply, Reply::with_code(250, 2, 1, 0, "Ok"));
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod address;
pub mod command;
pub mod data;
pub mod line;
pub mod reply;

pub use address::{Address, AddressError};
pub use command::{Body, Command, CommandError, MailParams, Notify, RcptParams, Ret, parse_command};
pub use data::{DataLimits, DataReceiver, DataSummary, Feed, MAX_TEXT_LINE, dot_stuff};
pub use line::{Framed, LineFramer, MAX_COMMAND_LINE};
pub use reply::{EnhancedCode, MAX_REPLY_LINE, Reply, ReplyParseError, parse_reply};
