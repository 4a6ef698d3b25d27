//! `sluice sendmail` (and the binary installed under the name `sendmail`): the interface cron, scripts and
//! old applications expect, submitting over SMTP to the local sluice so the message gets the same queue,
//! retries and logs as everything else.
//!
//! Supported: recipients as arguments, `-t` (recipients from To/Cc/Bcc; Bcc removed), `-f`/`-r` (envelope
//! sender), `-F` (full name for a From header we add), `-i`/`-oi` (a lone "." does not end the input), and
//! the usual no-op options (`-o…`, `-bm`, `-odi`, `-v`…). Exit codes follow sysexits.h, so a cron daemon or
//! script can tell "try later" (75) from "this will never work" (65, 69).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use smtp_wire::{Reply, parse_reply};

/// sysexits.h
pub const EX_USAGE: u8 = 64;
pub const EX_DATAERR: u8 = 65;
pub const EX_UNAVAILABLE: u8 = 69;
pub const EX_SOFTWARE: u8 = 70;
pub const EX_TEMPFAIL: u8 = 75;

/// Where the local sluice listens, unless `SLUICE_SENDMAIL_SERVER` says otherwise.
pub const DEFAULT_SERVER: &str = "127.0.0.1:25";

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Options {
    pub recipients: Vec<String>,
    pub from_headers: bool,
    pub sender: Option<String>,
    pub full_name: Option<String>,
    pub ignore_dots: bool,
}

/// A failure, with the exit status it maps to.
#[derive(Debug)]
pub struct Failure {
    pub status: u8,
    pub message: String,
}

fn fail(status: u8, message: impl Into<String>) -> Failure {
    Failure { status, message: message.into() }
}

/// Parses sendmail's traditional command line (options may be glued to their values: `-fuser@x`).
pub fn parse_args(args: &[String]) -> Result<Options, Failure> {
    let mut options = Options::default();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--" {
            options.recipients.extend(iter.by_ref().cloned());
            break;
        }
        let Some(flag) = arg.strip_prefix('-') else {
            options.recipients.push(arg.clone());
            continue;
        };
        let mut value = |glued: &str, name: &str| -> Result<String, Failure> {
            if !glued.is_empty() {
                return Ok(glued.to_owned());
            }
            iter.next().cloned().ok_or_else(|| fail(EX_USAGE, format!("option -{name} needs a value")))
        };
        match flag {
            "t" => options.from_headers = true,
            "i" | "oi" => options.ignore_dots = true,
            f if f.starts_with('f') => options.sender = Some(value(&f[1..], "f")?),
            r if r.starts_with('r') => options.sender = Some(value(&r[1..], "r")?),
            n if n.starts_with('F') => options.full_name = Some(value(&n[1..], "F")?),
            // Delivery mode, queueing and error-reporting options, verbosity: sluice always queues.
            "bm" | "v" | "n" | "U" | "Am" | "Ac" => {}
            o if o.starts_with('o') || o.starts_with('d') || o.starts_with('e') => {}
            "N" | "R" | "V" | "X" | "L" | "O" | "C" | "B" | "h" | "q" => {
                // Options that take a value we ignore.
                value("", flag)?;
            }
            b if b.starts_with('b') => {
                return Err(fail(EX_USAGE, format!("-{b} is not supported: sluice sendmail only submits mail")));
            }
            _ => return Err(fail(EX_USAGE, format!("unsupported option -{flag}"))),
        }
    }
    Ok(options)
}

/// Reads the message as sendmail does: up to EOF, or a lone "." line unless `-i`.
pub fn read_message(input: &mut impl Read, ignore_dots: bool) -> std::io::Result<Vec<u8>> {
    let mut raw = Vec::new();
    input.read_to_end(&mut raw)?;
    if ignore_dots {
        return Ok(raw);
    }
    let mut end = 0;
    for line in raw.split_inclusive(|&b| b == b'\n') {
        let content = line.strip_suffix(b"\n").unwrap_or(line);
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        if content == b"." {
            return Ok(raw[..end].to_vec());
        }
        end += line.len();
    }
    Ok(raw)
}

/// The message with Bcc removed and From/Date/Message-ID added where missing; and the recipients its
/// headers name (for `-t`).
pub fn prepare(message: &[u8], sender: &str, full_name: Option<&str>, hostname: &str) -> (Vec<u8>, Vec<String>) {
    let text = String::from_utf8_lossy(message);
    let (head, body) = match text.find("\n\n").or_else(|| text.find("\r\n\r\n")) {
        Some(i) if text[i..].starts_with("\r\n\r\n") => (&text[..i + 2], &text[i + 4..]),
        Some(i) => (&text[..i + 1], &text[i + 2..]),
        None => (&text[..], ""),
    };
    // Unfold into (name, value, raw lines).
    let mut fields: Vec<(String, String, String)> = Vec::new();
    for line in head.split_inclusive('\n') {
        if (line.starts_with(' ') || line.starts_with('\t')) && !fields.is_empty() {
            let last = fields.last_mut().expect("checked");
            last.1.push(' ');
            last.1.push_str(line.trim());
            last.2.push_str(line);
        } else if let Some((name, value)) = line.split_once(':') {
            fields.push((name.trim().to_ascii_lowercase(), value.trim().to_owned(), line.to_owned()));
        } else if !line.trim().is_empty() {
            // Not a header at all: the "headers" were body text. Treat everything as body.
            fields.clear();
            break;
        }
    }
    let has_headers = !fields.is_empty();
    let mut recipients = Vec::new();
    for (name, value, _) in &fields {
        if matches!(name.as_str(), "to" | "cc" | "bcc") {
            recipients.extend(addresses(value));
        }
    }
    let mut out = String::new();
    let has = |n: &str| fields.iter().any(|(name, _, _)| name == n);
    if !has("from") {
        match full_name {
            Some(name) => out.push_str(&format!("From: \"{}\" <{sender}>\r\n", name.replace(['"', '\\'], ""))),
            None => out.push_str(&format!("From: <{sender}>\r\n")),
        }
    }
    if !has("date") {
        out.push_str(&format!("Date: {}\r\n", chrono::Utc::now().to_rfc2822()));
    }
    if !has("message-id") {
        out.push_str(&format!("Message-ID: <{}.sendmail@{hostname}>\r\n", crate::spool::Spool::new_id()));
    }
    if has_headers {
        for (name, _, raw) in &fields {
            if name != "bcc" {
                out.push_str(raw);
            }
        }
        if !head.ends_with('\n') {
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        out.push_str(body);
    } else {
        out.push_str("\r\n");
        out.push_str(&text);
    }
    (out.into_bytes(), recipients)
}

/// Addresses in a header value: `<a@b>` forms, or bare comma-separated addresses.
fn addresses(value: &str) -> Vec<String> {
    let mut found = Vec::new();
    for part in value.split(',') {
        let part = part.trim();
        let address = match (part.rfind('<'), part.rfind('>')) {
            (Some(open), Some(close)) if open < close => &part[open + 1..close],
            _ => part.split_whitespace().find(|w| w.contains('@')).unwrap_or(""),
        };
        if address.contains('@') {
            found.push(address.trim().to_owned());
        }
    }
    found
}

/// Runs `sluice sendmail ARGS`: returns the exit status and prints what went wrong on stderr.
pub fn main(args: &[String]) -> u8 {
    match submit(args) {
        Ok(()) => 0,
        Err(failure) => {
            eprintln!("sendmail: {}", failure.message);
            failure.status
        }
    }
}

fn submit(args: &[String]) -> Result<(), Failure> {
    let options = parse_args(args)?;
    let message = read_message(&mut std::io::stdin().lock(), options.ignore_dots)
        .map_err(|e| fail(EX_SOFTWARE, format!("cannot read the message: {e}")))?;
    let hostname = gethostname::gethostname().to_string_lossy().into_owned();
    let sender = options.sender.clone().unwrap_or_else(|| {
        let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "root".into());
        format!("{user}@{hostname}")
    });
    let (message, header_recipients) = prepare(&message, &sender, options.full_name.as_deref(), &hostname);
    let mut recipients = options.recipients.clone();
    if options.from_headers {
        recipients.extend(header_recipients);
    }
    recipients.dedup();
    if recipients.is_empty() {
        return Err(fail(EX_USAGE, "no recipients (give them as arguments, or use -t)"));
    }
    let server = std::env::var("SLUICE_SENDMAIL_SERVER").unwrap_or_else(|_| DEFAULT_SERVER.to_owned());
    send(&server, &sender, &recipients, &message, &hostname)
}

fn send(server: &str, sender: &str, recipients: &[String], message: &[u8], hostname: &str) -> Result<(), Failure> {
    let stream = TcpStream::connect(server)
        .map_err(|e| fail(EX_TEMPFAIL, format!("cannot connect to sluice at {server}: {e} (is it running?)")))?;
    let timeout = Some(Duration::from_secs(300));
    let _ = stream.set_read_timeout(timeout);
    let _ = stream.set_write_timeout(timeout);
    let mut smtp = Client { stream, buf: Vec::new(), server: server.to_owned() };
    smtp.expect(None, "the greeting")?;
    smtp.expect(Some(format!("EHLO {hostname}")), "EHLO")?;
    smtp.expect(Some(format!("MAIL FROM:<{sender}>")), "MAIL FROM")?;
    let mut accepted = 0;
    for rcpt in recipients {
        match smtp.command(&format!("RCPT TO:<{rcpt}>"))? {
            reply if reply.is_positive() => accepted += 1,
            reply => eprintln!("sendmail: <{rcpt}> refused by {server}: {reply}"),
        }
    }
    if accepted == 0 {
        return Err(fail(EX_UNAVAILABLE, "every recipient was refused"));
    }
    let reply = smtp.command("DATA")?;
    if reply.code != 354 {
        return Err(refusal(&reply, "DATA", server));
    }
    let mut payload = Vec::with_capacity(message.len() + 64);
    smtp_wire::dot_stuff(message, &mut payload);
    smtp.stream.write_all(&payload).map_err(|e| fail(EX_TEMPFAIL, format!("connection to {server} lost: {e}")))?;
    let reply = smtp.read()?;
    if !reply.is_positive() {
        return Err(refusal(&reply, "the message", server));
    }
    let _ = smtp.command("QUIT");
    Ok(())
}

fn refusal(reply: &Reply, what: &str, server: &str) -> Failure {
    let status = if reply.is_transient() { EX_TEMPFAIL } else { EX_DATAERR };
    fail(status, format!("{server} refused {what}: {reply}"))
}

struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    server: String,
}

impl Client {
    fn command(&mut self, line: &str) -> Result<Reply, Failure> {
        self.stream
            .write_all(format!("{line}\r\n").as_bytes())
            .map_err(|e| fail(EX_TEMPFAIL, format!("connection to {} lost: {e}", self.server)))?;
        self.read()
    }

    fn expect(&mut self, line: Option<String>, what: &str) -> Result<Reply, Failure> {
        let reply = match line {
            Some(line) => self.command(&line)?,
            None => self.read()?,
        };
        if reply.is_positive() { Ok(reply) } else { Err(refusal(&reply, what, &self.server)) }
    }

    fn read(&mut self) -> Result<Reply, Failure> {
        loop {
            match parse_reply(&self.buf) {
                Ok(Some((reply, used))) => {
                    self.buf.drain(..used);
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(e) => return Err(fail(EX_SOFTWARE, format!("bad reply from {}: {e}", self.server))),
            }
            let mut chunk = [0u8; 4096];
            let n = self
                .stream
                .read(&mut chunk)
                .map_err(|e| fail(EX_TEMPFAIL, format!("connection to {} lost: {e}", self.server)))?;
            if n == 0 {
                return Err(fail(EX_TEMPFAIL, format!("{} closed the connection", self.server)));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn traditional_command_lines() {
        let o = parse_args(&args(&["-oi", "-t", "-fcron@host", "-F", "Cron Daemon", "a@x", "b@y"])).unwrap();
        assert_eq!(
            o,
            Options {
                recipients: vec!["a@x".into(), "b@y".into()],
                from_headers: true,
                sender: Some("cron@host".into()),
                full_name: Some("Cron Daemon".into()),
                ignore_dots: true,
            }
        );
        assert_eq!(parse_args(&args(&["-f", "me@x", "--", "-odd@x"])).unwrap().recipients, ["-odd@x"]);
        assert_eq!(parse_args(&args(&["-bs"])).unwrap_err().status, EX_USAGE);
        assert_eq!(parse_args(&args(&["-f"])).unwrap_err().status, EX_USAGE);
        assert!(parse_args(&args(&["-odi", "-oem", "-bm", "-v", "a@x"])).is_ok());
    }

    #[test]
    fn a_lone_dot_ends_input_unless_i() {
        let input = b"Subject: x\n\nline\n.\nafter\n";
        assert_eq!(read_message(&mut &input[..], false).unwrap(), b"Subject: x\n\nline\n");
        assert_eq!(read_message(&mut &input[..], true).unwrap(), input);
    }

    #[test]
    fn headers_give_recipients_and_bcc_is_removed() {
        let msg = b"To: Ann <ann@x.test>, bob@y.test\nBcc: secret@z.test\nSubject: hi\n\nbody\n";
        let (out, rcpts) = prepare(msg, "cron@h", Some("Cron"), "h");
        assert_eq!(rcpts, ["ann@x.test", "bob@y.test", "secret@z.test"]);
        let out = String::from_utf8(out).unwrap();
        assert!(!out.contains("secret@z.test"), "{out}");
        assert!(out.starts_with("From: \"Cron\" <cron@h>\r\nDate: "), "{out}");
        assert!(out.contains("Message-ID: <"), "{out}");
        assert!(out.ends_with("Subject: hi\n\r\nbody\n"), "{out:?}");
    }

    #[test]
    fn a_message_without_headers_gets_them() {
        let (out, rcpts) = prepare(b"just a line\n", "a@b", None, "h");
        assert!(rcpts.is_empty());
        let out = String::from_utf8(out).unwrap();
        assert!(out.starts_with("From: <a@b>\r\n"));
        assert!(out.ends_with("\r\n\r\njust a line\n"), "{out:?}");
    }
}
