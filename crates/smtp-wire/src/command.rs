//! SMTP commands: parsing one command line into a [`Command`], rendering a [`Command`] back into
//! a line, and the reply for each kind of syntax error.
//!
//! This module owns command and path syntax (RFC 5321 §4.1) and the ESMTP parameters sluice knows
//! (SIZE, BODY, SMTPUTF8, DSN's RET/ENVID/NOTIFY/ORCPT, AUTH). It knows nothing about session
//! state: whether a command is allowed now, or whether SMTPUTF8 was declared, is the session's
//! business. Mailbox syntax itself is in [`crate::address`].

use std::fmt;

use crate::address::{Address, check_domain};
use crate::reply::Reply;

/// One parsed SMTP command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `EHLO <domain>`
    Ehlo(String),
    /// `HELO <domain>`
    Helo(String),
    /// `MAIL FROM:<reverse-path> [params]`
    Mail {
        /// `None` = null reverse-path `<>` (bounces).
        from: Option<Address>,
        /// ESMTP parameters.
        params: MailParams,
    },
    /// `RCPT TO:<forward-path> [params]`
    Rcpt {
        /// The recipient; `RCPT TO:<postmaster>` has an empty domain.
        to: Address,
        /// ESMTP parameters.
        params: RcptParams,
    },
    /// `DATA`
    Data,
    /// `RSET`
    Rset,
    /// `NOOP [string]` (the argument is ignored, as RFC 5321 §4.1.1.9 allows).
    Noop,
    /// `QUIT`
    Quit,
    /// `STARTTLS`
    StartTls,
    /// `VRFY <string>`
    Vrfy(String),
    /// `EXPN <string>`
    Expn(String),
    /// `HELP [string]`
    Help(Option<String>),
    /// `AUTH <mechanism> [initial-response]`
    Auth {
        /// SASL mechanism name, uppercased.
        mechanism: String,
        /// The initial response as sent (base64, or `=` for an empty one, kept as `=`).
        initial_response: Option<String>,
    },
    /// `BDAT <size> [LAST]` (RFC 3030 CHUNKING)
    Bdat {
        /// Chunk size in octets.
        size: u64,
        /// `LAST` was given.
        last: bool,
    },
}

/// ESMTP parameters of `MAIL FROM`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MailParams {
    /// `SIZE=` (RFC 1870).
    pub size: Option<u64>,
    /// `BODY=` (RFC 6152, RFC 3030).
    pub body: Option<Body>,
    /// `SMTPUTF8` (RFC 6531).
    pub smtputf8: bool,
    /// `RET=` (RFC 3461).
    pub ret: Option<Ret>,
    /// `ENVID=`, raw xtext (RFC 3461).
    pub envid: Option<String>,
    /// `AUTH=`, raw xtext (RFC 4954 §5).
    pub auth: Option<String>,
    /// Parameters this crate does not know, uppercased keyword + raw value: the session decides (555).
    pub unknown: Vec<(String, Option<String>)>,
}

/// `BODY=` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    /// `7BIT`
    SevenBit,
    /// `8BITMIME`
    EightBitMime,
    /// `BINARYMIME`
    BinaryMime,
}

/// `RET=` values (what a DSN should return).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ret {
    /// `FULL`: the whole message.
    Full,
    /// `HDRS`: headers only.
    Headers,
}

/// ESMTP parameters of `RCPT TO`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RcptParams {
    /// `NOTIFY=` (RFC 3461); `None` = not given. Never empty when present; `[Never]` alone or
    /// a non-empty set of the others without duplicates.
    pub notify: Option<Vec<Notify>>,
    /// `ORCPT=`, raw (`addr-type;xtext`).
    pub orcpt: Option<String>,
    /// Parameters this crate does not know, uppercased keyword + raw value: the session decides (555).
    pub unknown: Vec<(String, Option<String>)>,
}

/// `NOTIFY=` items.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notify {
    /// `NEVER`
    Never,
    /// `SUCCESS`
    Success,
    /// `FAILURE`
    Failure,
    /// `DELAY`
    Delay,
}

/// Why a command line was rejected; [`CommandError::reply`] gives the answer to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandError {
    /// Unknown verb.
    Unrecognized,
    /// NUL, other control bytes except TAB, or invalid UTF-8 in the line.
    InvalidBytes,
    /// Argument syntax error (missing "FROM:", missing argument, extra arguments...).
    Syntax(&'static str),
    /// Reverse-path syntax.
    BadSender(&'static str),
    /// Forward-path syntax.
    BadRecipient(&'static str),
    /// Malformed known parameter (SIZE=abc, BODY=xyz, NOTIFY=NEVER,SUCCESS...).
    BadParameter(&'static str),
}

impl CommandError {
    /// The reply to send for this error.
    pub fn reply(&self) -> Reply {
        match self {
            CommandError::Unrecognized => Reply::with_code(500, 5, 5, 2, "Command not recognized"),
            CommandError::InvalidBytes => Reply::with_code(501, 5, 5, 2, "Invalid characters in command"),
            CommandError::Syntax(msg) | CommandError::BadParameter(msg) => Reply::with_code(501, 5, 5, 4, *msg),
            CommandError::BadSender(msg) => Reply::with_code(501, 5, 1, 7, format!("Bad sender address syntax: {msg}")),
            CommandError::BadRecipient(msg) => {
                Reply::with_code(501, 5, 1, 3, format!("Bad recipient address syntax: {msg}"))
            }
        }
    }
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reply().text())
    }
}

impl std::error::Error for CommandError {}

/// SMTP separates arguments with SP; we also take TAB because some hand-typed and scripted
/// clients send it and nothing is gained by refusing.
fn is_ws(c: char) -> bool {
    c == ' ' || c == '\t'
}

fn split_ws(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_ws).filter(|t| !t.is_empty())
}

/// Parse one command line. `line` excludes the CRLF/LF terminator. Verbs are case-insensitive.
pub fn parse_command(line: &[u8]) -> Result<Command, CommandError> {
    // Checked on bytes before UTF-8 decoding: NUL and stray CRs are the classic smuggling and
    // log-injection tools, and no legitimate command contains them.
    if line.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(CommandError::InvalidBytes);
    }
    let line = std::str::from_utf8(line).map_err(|_| CommandError::InvalidBytes)?;
    // Trailing blanks are common ("DATA "), leading ones rare but harmless: ignore both.
    let line = line.trim_matches(is_ws);
    let (verb, rest) = match line.find(is_ws) {
        Some(i) => (&line[..i], line[i..].trim_start_matches(is_ws)),
        None => (line, ""),
    };

    // Uppercase the verb into a stack buffer: no allocation per command.
    let mut buf = [0u8; 8];
    if verb.len() > buf.len() {
        return Err(CommandError::Unrecognized);
    }
    let upper = &mut buf[..verb.len()];
    upper.copy_from_slice(verb.as_bytes());
    upper.make_ascii_uppercase();

    match &*upper {
        b"EHLO" => one_token(rest, "EHLO requires exactly one domain argument").map(Command::Ehlo),
        b"HELO" => one_token(rest, "HELO requires exactly one domain argument").map(Command::Helo),
        b"MAIL" => parse_mail(rest),
        b"RCPT" => parse_rcpt(rest),
        b"DATA" => no_args(rest, Command::Data, "DATA takes no arguments"),
        b"RSET" => no_args(rest, Command::Rset, "RSET takes no arguments"),
        b"QUIT" => no_args(rest, Command::Quit, "QUIT takes no arguments"),
        b"STARTTLS" => no_args(rest, Command::StartTls, "STARTTLS takes no arguments"),
        b"NOOP" => Ok(Command::Noop),
        b"VRFY" => required(rest, "VRFY requires an argument").map(Command::Vrfy),
        b"EXPN" => required(rest, "EXPN requires an argument").map(Command::Expn),
        b"HELP" => Ok(Command::Help((!rest.is_empty()).then(|| rest.to_owned()))),
        b"AUTH" => parse_auth(rest),
        b"BDAT" => parse_bdat(rest),
        _ => Err(CommandError::Unrecognized),
    }
}

fn no_args(rest: &str, cmd: Command, msg: &'static str) -> Result<Command, CommandError> {
    if rest.is_empty() { Ok(cmd) } else { Err(CommandError::Syntax(msg)) }
}

fn required(rest: &str, msg: &'static str) -> Result<String, CommandError> {
    if rest.is_empty() { Err(CommandError::Syntax(msg)) } else { Ok(rest.to_owned()) }
}

fn one_token(rest: &str, msg: &'static str) -> Result<String, CommandError> {
    let mut tokens = split_ws(rest);
    match (tokens.next(), tokens.next()) {
        (Some(t), None) => Ok(t.to_owned()),
        _ => Err(CommandError::Syntax(msg)),
    }
}

/// Strips a case-insensitive ASCII prefix.
fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &s[prefix.len()..])
}

/// A path error is either about the command's shape (reported as `Syntax`) or about the address
/// inside the path (reported as `BadSender`/`BadRecipient` by the caller).
enum PathError {
    Syntax(&'static str),
    Address(&'static str),
}

/// Splits `<path> params` (or a bare `addr params`) into the path content and the rest.
fn take_path(s: &str) -> Result<(&str, &str), PathError> {
    // Postfix-style leniency: `MAIL FROM: <a@b>` is common from broken clients.
    let s = s.trim_start_matches(is_ws);
    if s.is_empty() {
        return Err(PathError::Syntax("Missing address"));
    }
    let Some(body) = s.strip_prefix('<') else {
        // Bare address (no brackets): it ends at the first blank, so it cannot contain one.
        let end = s.find(is_ws).unwrap_or(s.len());
        return Ok((&s[..end], &s[end..]));
    };
    // Find the closing bracket, skipping over quoted strings: `<"a>b"@example.com>` is valid.
    let mut in_quotes = false;
    let mut escaped = false;
    let mut end = None;
    for (i, c) in body.char_indices() {
        if escaped {
            escaped = false;
        } else if in_quotes {
            match c {
                '\\' => escaped = true,
                '"' => in_quotes = false,
                _ => {}
            }
        } else {
            match c {
                '"' => in_quotes = true,
                '>' => {
                    end = Some(i);
                    break;
                }
                '<' => return Err(PathError::Address("unexpected <")),
                _ => {}
            }
        }
    }
    let end = end.ok_or(PathError::Address("missing closing >"))?;
    let after = &body[end + 1..];
    if !after.is_empty() && !after.starts_with(is_ws) {
        return Err(PathError::Syntax("Missing space after address"));
    }
    Ok((&body[..end], after))
}

/// Drops an RFC 5321 source route (`@a,@b:user@c` → `user@c`) after checking its syntax. The route
/// is never used: RFC 5321 §3.3 says to ignore it, and honouring it would make us an open relay.
fn strip_source_route(path: &str) -> Result<&str, &'static str> {
    if !path.starts_with('@') {
        return Ok(path);
    }
    // The route ends at the first ':' outside an address literal (`@[IPv6:...]` has colons).
    let mut depth = 0u32;
    let colon = path
        .char_indices()
        .find(|&(_, c)| {
            match c {
                '[' => depth += 1,
                ']' => depth = depth.saturating_sub(1),
                _ => {}
            }
            c == ':' && depth == 0
        })
        .map(|(i, _)| i)
        .ok_or("invalid source route")?;
    for hop in path[..colon].split(',') {
        let domain = hop.strip_prefix('@').ok_or("invalid source route")?;
        check_domain(domain).map_err(|_| "invalid source route")?;
    }
    Ok(&path[colon + 1..])
}

fn parse_mail(rest: &str) -> Result<Command, CommandError> {
    let after = strip_prefix_ci(rest, "FROM:").ok_or(CommandError::Syntax("Syntax: MAIL FROM:<address>"))?;
    let (path, params) = take_path(after).map_err(|e| match e {
        PathError::Syntax(m) => CommandError::Syntax(m),
        PathError::Address(m) => CommandError::BadSender(m),
    })?;
    let from = if path.is_empty() {
        None
    } else {
        let mailbox = strip_source_route(path).map_err(CommandError::BadSender)?;
        Some(Address::parse(mailbox).map_err(|e| CommandError::BadSender(e.0))?)
    };
    Ok(Command::Mail { from, params: parse_mail_params(params)? })
}

fn parse_rcpt(rest: &str) -> Result<Command, CommandError> {
    let after = strip_prefix_ci(rest, "TO:").ok_or(CommandError::Syntax("Syntax: RCPT TO:<address>"))?;
    let (path, params) = take_path(after).map_err(|e| match e {
        PathError::Syntax(m) => CommandError::Syntax(m),
        PathError::Address(m) => CommandError::BadRecipient(m),
    })?;
    if path.is_empty() {
        return Err(CommandError::BadRecipient("empty recipient"));
    }
    let mailbox = strip_source_route(path).map_err(CommandError::BadRecipient)?;
    // RFC 5321 §4.1.1.3: `<Postmaster>` without a domain must be accepted (any case).
    let to = if mailbox.eq_ignore_ascii_case("postmaster") {
        Address { local_part: mailbox.to_owned(), domain: String::new() }
    } else {
        Address::parse(mailbox).map_err(|e| CommandError::BadRecipient(e.0))?
    };
    Ok(Command::Rcpt { to, params: parse_rcpt_params(params)? })
}

/// Splits the parameter list into `(keyword, value)` pairs and checks the keyword syntax
/// (esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")). The value is split at the first `=`
/// only; a value containing `=` is accepted (Postfix does too) and left to the parameter's parser.
fn params(s: &str) -> impl Iterator<Item = Result<(&str, Option<&str>), CommandError>> {
    split_ws(s).map(|token| {
        let (key, value) = match token.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (token, None),
        };
        let mut bytes = key.bytes();
        let keyword_ok = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
            && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !keyword_ok {
            return Err(CommandError::Syntax("Invalid parameter syntax"));
        }
        Ok((key, value))
    })
}

/// A parameter we do not know: keep it for the session, which answers 555 (RFC 5321 §4.1.1.11).
fn unknown_param(key: &str, value: Option<&str>) -> Result<(String, Option<String>), CommandError> {
    if value == Some("") {
        // esmtp-value is 1*char: `KEY=` is malformed, not "KEY with empty value".
        return Err(CommandError::Syntax("Invalid parameter syntax"));
    }
    Ok((key.to_ascii_uppercase(), value.map(str::to_owned)))
}

/// RFC 3461 xtext, leniently: non-empty, and every `+` introduces two hex digits. Other
/// characters are already known to be printable (the line was checked for controls) and UTF-8 is
/// allowed for RFC 6533. We keep the raw form; decoding is for whoever needs the value.
fn is_xtext(v: &str) -> bool {
    let b = v.as_bytes();
    if b.is_empty() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'+' {
            if !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit) && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit)) {
                return false;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    true
}

fn set_once<T>(slot: &mut Option<T>, value: T, dup: &'static str) -> Result<(), CommandError> {
    if slot.is_some() {
        return Err(CommandError::BadParameter(dup));
    }
    *slot = Some(value);
    Ok(())
}

fn parse_mail_params(s: &str) -> Result<MailParams, CommandError> {
    let mut p = MailParams::default();
    for param in params(s) {
        let (key, value) = param?;
        let bad = CommandError::BadParameter;
        if key.eq_ignore_ascii_case("SIZE") {
            let size = value
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or(bad("Invalid SIZE parameter"))?;
            set_once(&mut p.size, size, "Duplicate SIZE parameter")?;
        } else if key.eq_ignore_ascii_case("BODY") {
            let body = match value {
                Some(v) if v.eq_ignore_ascii_case("7BIT") => Body::SevenBit,
                Some(v) if v.eq_ignore_ascii_case("8BITMIME") => Body::EightBitMime,
                Some(v) if v.eq_ignore_ascii_case("BINARYMIME") => Body::BinaryMime,
                _ => return Err(bad("Invalid BODY parameter")),
            };
            set_once(&mut p.body, body, "Duplicate BODY parameter")?;
        } else if key.eq_ignore_ascii_case("SMTPUTF8") {
            if value.is_some() {
                return Err(bad("SMTPUTF8 takes no value"));
            }
            if p.smtputf8 {
                return Err(bad("Duplicate SMTPUTF8 parameter"));
            }
            p.smtputf8 = true;
        } else if key.eq_ignore_ascii_case("RET") {
            let ret = match value {
                Some(v) if v.eq_ignore_ascii_case("FULL") => Ret::Full,
                Some(v) if v.eq_ignore_ascii_case("HDRS") => Ret::Headers,
                _ => return Err(bad("Invalid RET parameter")),
            };
            set_once(&mut p.ret, ret, "Duplicate RET parameter")?;
        } else if key.eq_ignore_ascii_case("ENVID") {
            let v = value.filter(|v| is_xtext(v)).ok_or(bad("Invalid ENVID parameter"))?;
            set_once(&mut p.envid, v.to_owned(), "Duplicate ENVID parameter")?;
        } else if key.eq_ignore_ascii_case("AUTH") {
            let v = value.filter(|v| is_xtext(v)).ok_or(bad("Invalid AUTH parameter"))?;
            set_once(&mut p.auth, v.to_owned(), "Duplicate AUTH parameter")?;
        } else {
            p.unknown.push(unknown_param(key, value)?);
        }
    }
    Ok(p)
}

fn parse_notify(value: Option<&str>) -> Result<Vec<Notify>, CommandError> {
    let bad = CommandError::BadParameter("Invalid NOTIFY parameter");
    let mut list = Vec::with_capacity(3);
    for item in value.ok_or(bad.clone())?.split(',') {
        let n = if item.eq_ignore_ascii_case("NEVER") {
            Notify::Never
        } else if item.eq_ignore_ascii_case("SUCCESS") {
            Notify::Success
        } else if item.eq_ignore_ascii_case("FAILURE") {
            Notify::Failure
        } else if item.eq_ignore_ascii_case("DELAY") {
            Notify::Delay
        } else {
            return Err(bad);
        };
        if list.contains(&n) {
            return Err(bad);
        }
        list.push(n);
    }
    // RFC 3461 §4.1: NEVER must appear alone.
    if list.len() > 1 && list.contains(&Notify::Never) {
        return Err(CommandError::BadParameter("NOTIFY=NEVER cannot be combined with other values"));
    }
    Ok(list)
}

fn parse_rcpt_params(s: &str) -> Result<RcptParams, CommandError> {
    let mut p = RcptParams::default();
    for param in params(s) {
        let (key, value) = param?;
        if key.eq_ignore_ascii_case("NOTIFY") {
            let list = parse_notify(value)?;
            set_once(&mut p.notify, list, "Duplicate NOTIFY parameter")?;
        } else if key.eq_ignore_ascii_case("ORCPT") {
            // addr-type ";" xtext: both halves must be there; the rest is kept raw for the DSN.
            let v = value
                .filter(|v| v.split_once(';').is_some_and(|(t, a)| !t.is_empty() && is_xtext(a)))
                .ok_or(CommandError::BadParameter("Invalid ORCPT parameter"))?;
            set_once(&mut p.orcpt, v.to_owned(), "Duplicate ORCPT parameter")?;
        } else {
            p.unknown.push(unknown_param(key, value)?);
        }
    }
    Ok(p)
}

fn parse_auth(rest: &str) -> Result<Command, CommandError> {
    let mut tokens = split_ws(rest);
    let mechanism = tokens.next().ok_or(CommandError::Syntax("AUTH requires a mechanism"))?;
    let initial_response = tokens.next().map(str::to_owned);
    if tokens.next().is_some() {
        return Err(CommandError::Syntax("Too many arguments to AUTH"));
    }
    // RFC 4422 §3.1: 1 to 20 characters of [A-Z0-9-_].
    if mechanism.len() > 20 || !mechanism.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(CommandError::Syntax("Invalid AUTH mechanism name"));
    }
    Ok(Command::Auth { mechanism: mechanism.to_ascii_uppercase(), initial_response })
}

fn parse_bdat(rest: &str) -> Result<Command, CommandError> {
    let mut tokens = split_ws(rest);
    let size = tokens.next().ok_or(CommandError::Syntax("BDAT requires a chunk size"))?;
    if !size.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CommandError::Syntax("Invalid BDAT chunk size"));
    }
    let size = size.parse::<u64>().map_err(|_| CommandError::Syntax("Invalid BDAT chunk size"))?;
    let last = match tokens.next() {
        None => false,
        Some(t) if t.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(CommandError::Syntax("Syntax: BDAT <size> [LAST]")),
    };
    if tokens.next().is_some() {
        return Err(CommandError::Syntax("Syntax: BDAT <size> [LAST]"));
    }
    Ok(Command::Bdat { size, last })
}

impl Command {
    /// The command as a line ready to send, CRLF included (the [`Display`](fmt::Display) form
    /// has no terminator).
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = self.to_string().into_bytes();
        line.extend_from_slice(b"\r\n");
        line
    }
}

fn write_unknown(f: &mut fmt::Formatter<'_>, unknown: &[(String, Option<String>)]) -> fmt::Result {
    for (key, value) in unknown {
        match value {
            Some(v) => write!(f, " {key}={v}")?,
            None => write!(f, " {key}")?,
        }
    }
    Ok(())
}

impl fmt::Display for Command {
    /// The canonical command line, without terminator. Parsing it gives back the same command
    /// (known parameters are written first, in a fixed order, then the unknown ones in order).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Ehlo(d) => write!(f, "EHLO {d}"),
            Command::Helo(d) => write!(f, "HELO {d}"),
            Command::Mail { from, params } => {
                match from {
                    Some(a) => write!(f, "MAIL FROM:<{a}>")?,
                    None => f.write_str("MAIL FROM:<>")?,
                }
                if let Some(size) = params.size {
                    write!(f, " SIZE={size}")?;
                }
                if let Some(body) = params.body {
                    f.write_str(match body {
                        Body::SevenBit => " BODY=7BIT",
                        Body::EightBitMime => " BODY=8BITMIME",
                        Body::BinaryMime => " BODY=BINARYMIME",
                    })?;
                }
                if params.smtputf8 {
                    f.write_str(" SMTPUTF8")?;
                }
                if let Some(ret) = params.ret {
                    f.write_str(match ret {
                        Ret::Full => " RET=FULL",
                        Ret::Headers => " RET=HDRS",
                    })?;
                }
                if let Some(envid) = &params.envid {
                    write!(f, " ENVID={envid}")?;
                }
                if let Some(auth) = &params.auth {
                    write!(f, " AUTH={auth}")?;
                }
                write_unknown(f, &params.unknown)
            }
            Command::Rcpt { to, params } => {
                write!(f, "RCPT TO:<{to}>")?;
                if let Some(notify) = &params.notify {
                    f.write_str(" NOTIFY=")?;
                    for (i, n) in notify.iter().enumerate() {
                        if i > 0 {
                            f.write_str(",")?;
                        }
                        f.write_str(match n {
                            Notify::Never => "NEVER",
                            Notify::Success => "SUCCESS",
                            Notify::Failure => "FAILURE",
                            Notify::Delay => "DELAY",
                        })?;
                    }
                }
                if let Some(orcpt) = &params.orcpt {
                    write!(f, " ORCPT={orcpt}")?;
                }
                write_unknown(f, &params.unknown)
            }
            Command::Data => f.write_str("DATA"),
            Command::Rset => f.write_str("RSET"),
            Command::Noop => f.write_str("NOOP"),
            Command::Quit => f.write_str("QUIT"),
            Command::StartTls => f.write_str("STARTTLS"),
            Command::Vrfy(s) => write!(f, "VRFY {s}"),
            Command::Expn(s) => write!(f, "EXPN {s}"),
            Command::Help(None) => f.write_str("HELP"),
            Command::Help(Some(s)) => write!(f, "HELP {s}"),
            Command::Auth { mechanism, initial_response } => {
                write!(f, "AUTH {mechanism}")?;
                if let Some(ir) = initial_response {
                    write!(f, " {ir}")?;
                }
                Ok(())
            }
            Command::Bdat { size, last } => {
                write!(f, "BDAT {size}")?;
                if *last {
                    f.write_str(" LAST")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Address {
        Address::parse(s).unwrap()
    }

    fn parse(s: &str) -> Result<Command, CommandError> {
        parse_command(s.as_bytes())
    }

    fn mail(from: Option<&str>, params: MailParams) -> Command {
        Command::Mail { from: from.map(addr), params }
    }

    fn rcpt(to: &str, params: RcptParams) -> Command {
        Command::Rcpt { to: addr(to), params }
    }

    #[test]
    fn simple_verbs_any_case() {
        let cases = [
            ("DATA", Command::Data),
            ("data", Command::Data),
            ("DaTa", Command::Data),
            ("DATA ", Command::Data),
            ("  rset\t", Command::Rset),
            ("QUIT", Command::Quit),
            ("StartTLS", Command::StartTls),
            ("NOOP", Command::Noop),
            ("noop anything goes here", Command::Noop),
            ("HELP", Command::Help(None)),
            ("help mail", Command::Help(Some("mail".into()))),
            ("HELP  two words ", Command::Help(Some("two words".into()))),
            ("VRFY postmaster", Command::Vrfy("postmaster".into())),
            ("vrfy John Smith", Command::Vrfy("John Smith".into())),
            ("EXPN staff", Command::Expn("staff".into())),
            ("EHLO mx.example.com", Command::Ehlo("mx.example.com".into())),
            ("ehlo [192.0.2.1]", Command::Ehlo("[192.0.2.1]".into())),
            ("HELO  host_with_underscore ", Command::Helo("host_with_underscore".into())),
            ("EHLO\tx", Command::Ehlo("x".into())),
        ];
        for (line, want) in cases {
            assert_eq!(parse(line), Ok(want), "{line:?}");
        }
    }

    #[test]
    fn unrecognized_and_invalid_bytes() {
        for line in ["", "   ", "FOO", "MAILX FROM:<>", "STARTTLSX", "DAT", "HELLO x", "é"] {
            assert_eq!(parse(line), Err(CommandError::Unrecognized), "{line:?}");
        }
        let bad: &[&[u8]] = &[
            b"DATA\x00",
            b"MAIL FROM:<a\x00@b>",
            b"RCPT TO:<a@b>\r",
            b"NOOP \x1b[31m",
            b"HELP \x7f",
            b"EHLO \xff\xfe",
            b"VRFY \xc3",
            b"EHLO a\nb",
        ];
        for line in bad {
            assert_eq!(parse_command(line), Err(CommandError::InvalidBytes), "{line:?}");
        }
        // TAB is allowed (as a separator).
        assert_eq!(parse_command(b"NOOP\tx"), Ok(Command::Noop));
    }

    #[test]
    fn argument_syntax_errors() {
        let cases = [
            ("DATA now", "DATA takes no arguments"),
            ("RSET x", "RSET takes no arguments"),
            ("QUIT x", "QUIT takes no arguments"),
            ("STARTTLS x", "STARTTLS takes no arguments"),
            ("EHLO", "EHLO requires exactly one domain argument"),
            ("EHLO a b", "EHLO requires exactly one domain argument"),
            ("HELO", "HELO requires exactly one domain argument"),
            ("VRFY", "VRFY requires an argument"),
            ("EXPN  ", "EXPN requires an argument"),
            ("MAIL", "Syntax: MAIL FROM:<address>"),
            ("MAIL TO:<a@b>", "Syntax: MAIL FROM:<address>"),
            ("MAIL FROM <a@b>", "Syntax: MAIL FROM:<address>"),
            ("MAIL FROM:", "Missing address"),
            ("MAIL FROM:  ", "Missing address"),
            ("MAIL FROM:<a@b>SIZE=1", "Missing space after address"),
            ("RCPT", "Syntax: RCPT TO:<address>"),
            ("RCPT FROM:<a@b>", "Syntax: RCPT TO:<address>"),
            ("RCPT TO:", "Missing address"),
            ("MAIL FROM:<a@b> =x", "Invalid parameter syntax"),
            ("MAIL FROM:<a@b> -X=1", "Invalid parameter syntax"),
            ("MAIL FROM:<a@b> X_Y=1", "Invalid parameter syntax"),
            ("MAIL FROM:<a@b> XFOO=", "Invalid parameter syntax"),
            ("RCPT TO:<a@b> XFOO=", "Invalid parameter syntax"),
            ("AUTH", "AUTH requires a mechanism"),
            ("AUTH PLAIN a b", "Too many arguments to AUTH"),
            ("AUTH PL@IN", "Invalid AUTH mechanism name"),
            ("AUTH ABCDEFGHIJKLMNOPQRSTU", "Invalid AUTH mechanism name"),
            ("BDAT", "BDAT requires a chunk size"),
            ("BDAT x", "Invalid BDAT chunk size"),
            ("BDAT -1", "Invalid BDAT chunk size"),
            ("BDAT +1", "Invalid BDAT chunk size"),
            ("BDAT 99999999999999999999", "Invalid BDAT chunk size"),
            ("BDAT 10 FIRST", "Syntax: BDAT <size> [LAST]"),
            ("BDAT 10 LAST x", "Syntax: BDAT <size> [LAST]"),
        ];
        for (line, msg) in cases {
            assert_eq!(parse(line), Err(CommandError::Syntax(msg)), "{line:?}");
        }
    }

    #[test]
    fn mail_from_forms() {
        let cases = [
            ("MAIL FROM:<user@example.com>", Some("user@example.com")),
            ("mail from:<user@example.com>", Some("user@example.com")),
            ("Mail From:<User@Example.COM>", Some("User@Example.COM")),
            ("MAIL FROM:<>", None),
            ("MAIL FROM: <>", None),
            ("MAIL FROM: <user@example.com>", Some("user@example.com")),
            ("MAIL FROM:user@example.com", Some("user@example.com")),
            ("MAIL FROM:<@relay1.example,@[192.0.2.1]:user@example.com>", Some("user@example.com")),
            ("MAIL FROM:<@[IPv6:2001:db8::1]:user@example.com>", Some("user@example.com")),
            ("MAIL FROM:<\"john doe\"@example.com>", Some("\"john doe\"@example.com")),
            ("MAIL FROM:<\"a>b\"@example.com>", Some("\"a>b\"@example.com")),
            ("MAIL FROM:<\"a\\\"> b\"@example.com>", Some("\"a\\\"> b\"@example.com")),
            ("MAIL FROM:<user%relay@example.com>", Some("user%relay@example.com")),
            ("MAIL FROM:<host!user@example.com>", Some("host!user@example.com")),
            ("MAIL FROM:<jörg@bücher.example>", Some("jörg@bücher.example")),
            ("MAIL FROM:<user@[IPv6:2001:db8::1]>", Some("user@[IPv6:2001:db8::1]")),
        ];
        for (line, from) in cases {
            assert_eq!(parse(line), Ok(mail(from, MailParams::default())), "{line:?}");
        }
    }

    #[test]
    fn bad_sender() {
        let cases = [
            ("MAIL FROM:<user@example.com", "missing closing >"),
            ("MAIL FROM:<a<b@c>", "unexpected <"),
            ("MAIL FROM:<user>", "missing domain"),
            ("MAIL FROM:<postmaster>", "missing domain"),
            ("MAIL FROM:<a..b@example.com>", "misplaced dot in local part"),
            ("MAIL FROM:<user@exa mple.com>", "invalid character in domain"),
            ("MAIL FROM:<@relay:>", "empty address"),
            ("MAIL FROM:<@relay user@example.com>", "invalid source route"),
            ("MAIL FROM:<@bad_relay:user@example.com>", "invalid source route"),
            ("MAIL FROM:<@a,b:user@example.com>", "invalid source route"),
            ("MAIL FROM:<\"unterminated@example.com>", "missing closing >"),
        ];
        for (line, msg) in cases {
            assert_eq!(parse(line), Err(CommandError::BadSender(msg)), "{line:?}");
        }
    }

    #[test]
    fn rcpt_to_forms() {
        let cases = [
            ("RCPT TO:<user@example.com>", "user@example.com"),
            ("rcpt to:<user@example.com>", "user@example.com"),
            ("RCPT TO: <user@example.com>", "user@example.com"),
            ("RCPT TO:user@example.com", "user@example.com"),
            ("RCPT TO:<@hop.example:user@example.com>", "user@example.com"),
            ("RCPT TO:<postmaster@example.com>", "postmaster@example.com"),
            ("RCPT TO:<\"quoted local\"@example.com>", "\"quoted local\"@example.com"),
            ("RCPT TO:<用户@例子.广告>", "用户@例子.广告"),
        ];
        for (line, to) in cases {
            assert_eq!(parse(line), Ok(rcpt(to, RcptParams::default())), "{line:?}");
        }
        for pm in ["postmaster", "Postmaster", "POSTMASTER"] {
            let want = Command::Rcpt {
                to: Address { local_part: pm.into(), domain: String::new() },
                params: RcptParams::default(),
            };
            assert_eq!(parse(&format!("RCPT TO:<{pm}>")), Ok(want));
        }
    }

    #[test]
    fn bad_recipient() {
        let cases = [
            ("RCPT TO:<>", "empty recipient"),
            ("RCPT TO:<user>", "missing domain"),
            ("RCPT TO:<postmistress>", "missing domain"),
            ("RCPT TO:<user@example.com", "missing closing >"),
            ("RCPT TO:<user@@example.com>", "invalid character in domain"),
            ("RCPT TO:<@x:>", "empty address"),
        ];
        for (line, msg) in cases {
            assert_eq!(parse(line), Err(CommandError::BadRecipient(msg)), "{line:?}");
        }
    }

    #[test]
    fn mail_params() {
        let got = parse(
            "MAIL FROM:<a@b.example> size=12345 Body=8bitmime smtputf8 RET=hdrs ENVID=QQ+2Bx AUTH=<> X-FOO=bar x-flag",
        );
        let want = MailParams {
            size: Some(12345),
            body: Some(Body::EightBitMime),
            smtputf8: true,
            ret: Some(Ret::Headers),
            envid: Some("QQ+2Bx".into()),
            auth: Some("<>".into()),
            unknown: vec![("X-FOO".into(), Some("bar".into())), ("X-FLAG".into(), None)],
        };
        assert_eq!(got, Ok(mail(Some("a@b.example"), want)));

        let p = |s: &str| match parse(&format!("MAIL FROM:<> {s}")) {
            Ok(Command::Mail { params, .. }) => params,
            other => panic!("{s}: {other:?}"),
        };
        assert_eq!(p("BODY=7BIT").body, Some(Body::SevenBit));
        assert_eq!(p("BODY=BINARYMIME").body, Some(Body::BinaryMime));
        assert_eq!(p("RET=FULL").ret, Some(Ret::Full));
        assert_eq!(p("SIZE=0").size, Some(0));
        assert_eq!(p("SIZE=18446744073709551615").size, Some(u64::MAX));
        assert_eq!(p("  SIZE=1   BODY=7BIT  ").size, Some(1));
        // RCPT parameters on MAIL are just unknown.
        assert_eq!(p("NOTIFY=NEVER").unknown, vec![("NOTIFY".into(), Some("NEVER".into()))]);
        // '=' inside a value is kept.
        assert_eq!(p("X=a=b").unknown, vec![("X".into(), Some("a=b".into()))]);
    }

    #[test]
    fn bad_mail_params() {
        let cases = [
            ("SIZE=abc", "Invalid SIZE parameter"),
            ("SIZE", "Invalid SIZE parameter"),
            ("SIZE=", "Invalid SIZE parameter"),
            ("SIZE=+5", "Invalid SIZE parameter"),
            ("SIZE=18446744073709551616", "Invalid SIZE parameter"),
            ("SIZE=1 SIZE=2", "Duplicate SIZE parameter"),
            ("BODY=xyz", "Invalid BODY parameter"),
            ("BODY", "Invalid BODY parameter"),
            ("BODY=7BIT body=8BITMIME", "Duplicate BODY parameter"),
            ("SMTPUTF8=yes", "SMTPUTF8 takes no value"),
            ("SMTPUTF8 SMTPUTF8", "Duplicate SMTPUTF8 parameter"),
            ("RET=ALL", "Invalid RET parameter"),
            ("RET=FULL RET=HDRS", "Duplicate RET parameter"),
            ("ENVID=", "Invalid ENVID parameter"),
            ("ENVID=a+zz", "Invalid ENVID parameter"),
            ("ENVID=a+4", "Invalid ENVID parameter"),
            ("ENVID=a ENVID=b", "Duplicate ENVID parameter"),
            ("AUTH", "Invalid AUTH parameter"),
            ("AUTH=<> AUTH=<>", "Duplicate AUTH parameter"),
        ];
        for (params, msg) in cases {
            let line = format!("MAIL FROM:<a@b> {params}");
            assert_eq!(parse(&line), Err(CommandError::BadParameter(msg)), "{line:?}");
        }
    }

    #[test]
    fn rcpt_params() {
        use Notify::*;
        let p = |s: &str| match parse(&format!("RCPT TO:<a@b> {s}")) {
            Ok(Command::Rcpt { params, .. }) => params,
            other => panic!("{s}: {other:?}"),
        };
        assert_eq!(p("").notify, None);
        assert_eq!(p("NOTIFY=NEVER").notify, Some(vec![Never]));
        assert_eq!(p("notify=never").notify, Some(vec![Never]));
        assert_eq!(p("NOTIFY=SUCCESS,failure,Delay").notify, Some(vec![Success, Failure, Delay]));
        assert_eq!(p("NOTIFY=DELAY,SUCCESS").notify, Some(vec![Delay, Success]));
        assert_eq!(p("ORCPT=rfc822;a+40b").orcpt, Some("rfc822;a+40b".into()));
        assert_eq!(p("SIZE=10").unknown, vec![("SIZE".into(), Some("10".into()))]);

        let bad = [
            ("NOTIFY=NEVER,SUCCESS", "NOTIFY=NEVER cannot be combined with other values"),
            ("NOTIFY=FAILURE,NEVER", "NOTIFY=NEVER cannot be combined with other values"),
            ("NOTIFY", "Invalid NOTIFY parameter"),
            ("NOTIFY=", "Invalid NOTIFY parameter"),
            ("NOTIFY=SOMETIMES", "Invalid NOTIFY parameter"),
            ("NOTIFY=SUCCESS,", "Invalid NOTIFY parameter"),
            ("NOTIFY=SUCCESS,SUCCESS", "Invalid NOTIFY parameter"),
            ("NOTIFY=NEVER NOTIFY=NEVER", "Duplicate NOTIFY parameter"),
            ("ORCPT", "Invalid ORCPT parameter"),
            ("ORCPT=rfc822", "Invalid ORCPT parameter"),
            ("ORCPT=;a@b", "Invalid ORCPT parameter"),
            ("ORCPT=rfc822;", "Invalid ORCPT parameter"),
            ("ORCPT=rfc822;a ORCPT=rfc822;b", "Duplicate ORCPT parameter"),
        ];
        for (params, msg) in bad {
            let line = format!("RCPT TO:<a@b> {params}");
            assert_eq!(parse(&line), Err(CommandError::BadParameter(msg)), "{line:?}");
        }
    }

    #[test]
    fn auth_and_bdat() {
        assert_eq!(parse("auth plain"), Ok(Command::Auth { mechanism: "PLAIN".into(), initial_response: None }));
        assert_eq!(
            parse("AUTH PLAIN AGZvbwBiYXI="),
            Ok(Command::Auth { mechanism: "PLAIN".into(), initial_response: Some("AGZvbwBiYXI=".into()) })
        );
        assert_eq!(
            parse("AUTH external ="),
            Ok(Command::Auth { mechanism: "EXTERNAL".into(), initial_response: Some("=".into()) })
        );
        assert_eq!(
            parse("AUTH SCRAM-SHA-256"),
            Ok(Command::Auth { mechanism: "SCRAM-SHA-256".into(), initial_response: None })
        );
        assert_eq!(parse("BDAT 0 LAST"), Ok(Command::Bdat { size: 0, last: true }));
        assert_eq!(parse("bdat 1000"), Ok(Command::Bdat { size: 1000, last: false }));
        assert_eq!(parse("BDAT 12 last"), Ok(Command::Bdat { size: 12, last: true }));
    }

    #[test]
    fn error_replies() {
        let cases = [
            (CommandError::Unrecognized, "500 5.5.2 Command not recognized\r\n"),
            (CommandError::InvalidBytes, "501 5.5.2 Invalid characters in command\r\n"),
            (CommandError::Syntax("Missing address"), "501 5.5.4 Missing address\r\n"),
            (CommandError::BadSender("missing domain"), "501 5.1.7 Bad sender address syntax: missing domain\r\n"),
            (
                CommandError::BadRecipient("empty recipient"),
                "501 5.1.3 Bad recipient address syntax: empty recipient\r\n",
            ),
            (CommandError::BadParameter("Invalid SIZE parameter"), "501 5.5.4 Invalid SIZE parameter\r\n"),
        ];
        for (e, wire) in cases {
            assert_eq!(String::from_utf8(e.reply().to_bytes()).unwrap(), wire);
        }
        assert_eq!(CommandError::Unrecognized.to_string(), "Command not recognized");
    }

    #[test]
    fn display_round_trip_examples() {
        let lines = [
            "EHLO mx.example",
            "HELO x",
            "MAIL FROM:<>",
            "MAIL FROM:<a@b> SIZE=10 BODY=8BITMIME SMTPUTF8 RET=FULL ENVID=x+2B AUTH=<> X-A=1 X-B",
            "RCPT TO:<postmaster>",
            "RCPT TO:<\"a b\"@c> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;a@c X-Y",
            "DATA",
            "RSET",
            "NOOP",
            "QUIT",
            "STARTTLS",
            "VRFY some user",
            "EXPN list",
            "HELP",
            "HELP DATA",
            "AUTH PLAIN =",
            "AUTH LOGIN",
            "BDAT 100",
            "BDAT 0 LAST",
        ];
        for line in lines {
            let cmd = parse(line).unwrap();
            assert_eq!(cmd.to_string(), line);
            let mut wire = line.as_bytes().to_vec();
            wire.extend_from_slice(b"\r\n");
            assert_eq!(cmd.to_line(), wire);
        }
    }
}
