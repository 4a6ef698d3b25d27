//! SMTP replies: building them on the server side, parsing them on the client side, and RFC 3463
//! enhanced status codes.
//!
//! This module owns the wire form of a reply (`250-first\r\n250 last\r\n`) in both directions. Text
//! that goes into a reply is sanitised here, once, so that nothing a peer or a configuration file
//! supplies can inject an extra line (or an extra reply) into the stream.

use std::fmt;
use std::io::Write as _;

/// Longest reply line we accept from a server, excluding the terminator. RFC 5321 §4.5.3.1.5 says
/// 512 octets, but real servers (notably Microsoft 365 and Gmail) send longer diagnostic lines, so
/// we are generous while still bounding how much a hostile server can make us buffer per line.
pub const MAX_REPLY_LINE: usize = 4096;

/// An RFC 3463 enhanced status code, `class.subject.detail` (e.g. `5.7.1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EnhancedCode {
    /// 2 (success), 4 (persistent transient failure) or 5 (permanent failure).
    pub class: u8,
    /// The subject sub-code (0..=999).
    pub subject: u16,
    /// The detail sub-code (0..=999).
    pub detail: u16,
}

impl EnhancedCode {
    /// Builds a code without validation (used for constants; the caller knows what it writes).
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        EnhancedCode { class, subject, detail }
    }

    /// Parses `x.y.z` exactly (no surrounding text). The class must be 2, 4 or 5 and the
    /// sub-codes 1 to 3 digits, as RFC 3463 §2 requires; anything else is not an enhanced code
    /// (it is probably ordinary reply text that happens to start with a digit).
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.split('.');
        let class = parts.next()?;
        let subject = parts.next()?;
        let detail = parts.next()?;
        if parts.next().is_some() {
            return None;
        }
        let class = match class {
            "2" => 2,
            "4" => 4,
            "5" => 5,
            _ => return None,
        };
        Some(EnhancedCode { class, subject: parse_subcode(subject)?, detail: parse_subcode(detail)? })
    }
}

/// 1*3DIGIT; `u16::from_str` alone would also accept a leading `+`.
fn parse_subcode(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// A complete SMTP reply, possibly multi-line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit reply code.
    pub code: u16,
    /// The enhanced status code written after the code on every line, if any.
    pub enhanced: Option<EnhancedCode>,
    /// The text lines, without code, enhanced code or terminator. Never contain control characters
    /// when built through the constructors or [`parse_reply`].
    pub lines: Vec<String>,
}

/// Replaces control characters (CR and LF above all, but also NUL, TAB, DEL and C1 controls) by a
/// space. A CR or LF inside reply text would end the line early and let whoever supplied the text
/// forge further reply lines; the other controls have no business in a reply and confuse logs.
fn sanitise(text: String) -> String {
    if text.chars().any(char::is_control) {
        text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
    } else {
        // The common case: no copy.
        text
    }
}

impl Reply {
    /// Single-line reply. Text is sanitised: CR, LF and other control chars replaced by space.
    pub fn new(code: u16, enhanced: Option<EnhancedCode>, text: impl Into<String>) -> Self {
        Reply { code, enhanced, lines: vec![sanitise(text.into())] }
    }

    /// Convenience for a single-line reply with an enhanced code:
    /// `Reply::with_code(250, 2, 0, 0, "Ok")` is `250 2.0.0 Ok`.
    pub fn with_code(code: u16, class: u8, subject: u16, detail: u16, text: impl Into<String>) -> Self {
        Reply::new(code, Some(EnhancedCode::new(class, subject, detail)), text)
    }

    /// Same as [`Reply::with_code`] with the enhanced code as a tuple:
    /// `Reply::enhanced(250, (2, 0, 0), "Ok")`.
    pub fn enhanced(code: u16, enhanced: (u8, u16, u16), text: impl Into<String>) -> Self {
        Reply::with_code(code, enhanced.0, enhanced.1, enhanced.2, text)
    }

    /// Multi-line reply (e.g. the EHLO response). Every line is sanitised like [`Reply::new`].
    pub fn multiline(code: u16, enhanced: Option<EnhancedCode>, lines: Vec<String>) -> Self {
        Reply { code, enhanced, lines: lines.into_iter().map(sanitise).collect() }
    }

    /// Appends the wire form: `250-first\r\n250 last\r\n`; the enhanced code (if any) is put after
    /// the code on every line (`250-2.0.0 first`), as RFC 2034 §3 asks. An empty `lines` produces a
    /// single line with just the code (and enhanced code), e.g. `250 \r\n`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        // Treat "no lines" as one empty line so there is exactly one rule for every line.
        let empty = [String::new()];
        let lines: &[String] = if self.lines.is_empty() { &empty } else { &self.lines };
        let last = lines.len() - 1;
        for (i, line) in lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            // Writing into a Vec<u8> cannot fail.
            let _ = match self.enhanced {
                Some(e) => write!(out, "{}{sep}{e} ", self.code),
                None => write!(out, "{}{sep}", self.code),
            };
            // The fields are public, so a caller may have bypassed the constructors: sanitise on
            // the way out too. Only CR/LF could break framing; map them without allocating when
            // there are none.
            if line.bytes().any(|b| b == b'\r' || b == b'\n') {
                out.extend(line.bytes().map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
            } else {
                out.extend_from_slice(line.as_bytes());
            }
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The wire form as a new buffer; see [`Reply::write_to`].
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.lines.iter().map(|l| l.len() + 16).sum::<usize>());
        self.write_to(&mut out);
        out
    }

    /// 2xx: the action succeeded.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 3xx: go on (e.g. 354 after DATA, 334 during AUTH).
    pub fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }

    /// 4xx: temporary failure, retry later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx: permanent failure, do not retry.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// The lines joined with a space, without code: "Requested action taken".
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }
}

impl fmt::Display for Reply {
    /// One line, for logs and DSN `Diagnostic-Code`: `550 5.1.1 text line1 text line2`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(e) = self.enhanced {
            write!(f, " {e}")?;
        }
        let text = self.text();
        if !text.is_empty() {
            write!(f, " {text}")?;
        }
        Ok(())
    }
}

/// A reply from the server could not be parsed; the connection should be dropped (we can no
/// longer tell where the next reply starts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyParseError(pub String);

impl fmt::Display for ReplyParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed SMTP reply: {}", self.0)
    }
}

impl std::error::Error for ReplyParseError {}

fn err(msg: impl Into<String>) -> ReplyParseError {
    ReplyParseError(msg.into())
}

/// Checks the start of a line (`complete` = terminator already stripped, or not) and returns its
/// code once three digits are there. Validating incomplete lines lets us reject garbage (e.g. a
/// TLS alert or an HTTP banner) at once instead of waiting for a line feed that may never come.
fn check_line_start(line: &[u8], complete: bool) -> Result<Option<u16>, ReplyParseError> {
    for &b in line.iter().take(3) {
        if !b.is_ascii_digit() {
            return Err(err("reply code is not three digits"));
        }
    }
    if let Some(&sep) = line.get(3)
        && sep != b' '
        && sep != b'-'
        // In an incomplete line this CR may be the start of the CRLF after a bare code.
        && (complete || sep != b'\r')
    {
        return Err(err("bad separator after reply code"));
    }
    if line.len() < 3 {
        return Ok(None);
    }
    let code = line[..3].iter().fold(0u16, |acc, &d| acc * 10 + u16::from(d - b'0'));
    if !(200..=599).contains(&code) {
        return Err(err(format!("reply code {code} out of range")));
    }
    Ok(Some(code))
}

/// Client side: parse one complete (possibly multi-line) reply from the start of `buf`.
///
/// `Ok(None)` = need more bytes. `Ok(Some((reply, consumed)))` otherwise. Errors on malformed
/// input: non-digit code, code outside 200..=599, inconsistent codes between lines, a line over
/// [`MAX_REPLY_LINE`] octets, separator other than ' ' / '-' / end of line. Bare LF endings are
/// accepted (some servers send them; being strict would only lose mail). An enhanced code is
/// recognised when every line's text starts with the same `x.y.z ` whose class matches the reply
/// class, and it is then stripped from the lines.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, ReplyParseError> {
    let mut pos = 0;
    let mut code = None;
    let mut lines = Vec::new();
    loop {
        let rest = &buf[pos..];
        // Never look further than a maximal line (+ CRLF) for its end: bounds the work per call.
        let window = &rest[..rest.len().min(MAX_REPLY_LINE + 2)];
        let Some(lf) = window.iter().position(|&b| b == b'\n') else {
            check_line_start(rest, false)?;
            if rest.len() > MAX_REPLY_LINE + 1 {
                return Err(err("reply line too long"));
            }
            return Ok(None);
        };
        let mut line = &rest[..lf];
        if let [head @ .., b'\r'] = line {
            line = head;
        }
        if line.len() > MAX_REPLY_LINE {
            return Err(err("reply line too long"));
        }
        let Some(this) = check_line_start(line, true)? else {
            return Err(err("reply line shorter than a code"));
        };
        if *code.get_or_insert(this) != this {
            return Err(err("inconsistent codes in multi-line reply"));
        }
        let last = line.get(3) != Some(&b'-');
        let text = line.get(4..).unwrap_or_default();
        lines.push(sanitise(String::from_utf8_lossy(text).into_owned()));
        pos += lf + 1;
        if last {
            break;
        }
    }
    let code = code.expect("at least one line was parsed");
    let enhanced = strip_enhanced(code, &mut lines);
    Ok(Some((Reply { code, enhanced, lines }, pos)))
}

/// The enhanced code at the start of `text` and the length of the prefix it occupies (code plus
/// one space, or just the code when nothing follows).
fn leading_enhanced(text: &str) -> Option<(EnhancedCode, usize)> {
    match text.split_once(' ') {
        Some((token, _)) => Some((EnhancedCode::parse(token)?, token.len() + 1)),
        None => Some((EnhancedCode::parse(text)?, text.len())),
    }
}

/// Recognises and strips the enhanced code only when every line carries the same one: a server
/// that puts it on some lines only is not following RFC 2034, and stripping something that looks
/// like a code from free text would lose information.
fn strip_enhanced(code: u16, lines: &mut [String]) -> Option<EnhancedCode> {
    let class = u8::try_from(code / 100).ok()?;
    let (first, _) = leading_enhanced(lines.first()?)?;
    if first.class != class {
        return None;
    }
    let mut prefix_lens = Vec::with_capacity(lines.len());
    for line in lines.iter() {
        let (e, len) = leading_enhanced(line)?;
        if e != first {
            return None;
        }
        prefix_lens.push(len);
    }
    for (line, len) in lines.iter_mut().zip(prefix_lens) {
        line.drain(..len);
    }
    Some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(input: &[u8]) -> (Reply, usize) {
        parse_reply(input).expect("parse error").expect("incomplete")
    }

    #[test]
    fn enhanced_code_parse_and_display() {
        type Parts = Option<(u8, u16, u16)>;
        let cases: &[(&str, Parts)] = &[
            ("5.7.1", Some((5, 7, 1))),
            ("2.0.0", Some((2, 0, 0))),
            ("4.4.7", Some((4, 4, 7))),
            ("5.123.999", Some((5, 123, 999))),
            ("3.0.0", None),
            ("1.0.0", None),
            ("5.7", None),
            ("5.7.1.2", None),
            ("5..1", None),
            ("5.7.1000", None),
            ("5.+7.1", None),
            ("55.7.1", None),
            ("", None),
            ("5.7.a", None),
        ];
        for (input, want) in cases {
            let got = EnhancedCode::parse(input);
            assert_eq!(got, want.map(|(c, s, d)| EnhancedCode::new(c, s, d)), "{input:?}");
            if let Some(code) = got {
                assert_eq!(code.to_string(), *input);
            }
        }
    }

    #[test]
    fn formatting_single_line() {
        assert_eq!(Reply::new(250, None, "Ok").to_bytes(), b"250 Ok\r\n");
        assert_eq!(Reply::with_code(250, 2, 0, 0, "Ok").to_bytes(), b"250 2.0.0 Ok\r\n");
        assert_eq!(Reply::enhanced(550, (5, 1, 1), "No such user").to_bytes(), b"550 5.1.1 No such user\r\n");
    }

    #[test]
    fn formatting_multiline() {
        let r = Reply::multiline(250, None, vec!["mx.example".into(), "PIPELINING".into(), "8BITMIME".into()]);
        assert_eq!(r.to_bytes(), b"250-mx.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n");
        let r = Reply::multiline(451, Some(EnhancedCode::new(4, 3, 0)), vec!["first".into(), "last".into()]);
        assert_eq!(r.to_bytes(), b"451-4.3.0 first\r\n451 4.3.0 last\r\n");
    }

    #[test]
    fn formatting_empty_lines() {
        assert_eq!(Reply::multiline(250, None, vec![]).to_bytes(), b"250 \r\n");
        assert_eq!(Reply::multiline(250, Some(EnhancedCode::new(2, 0, 0)), vec![]).to_bytes(), b"250 2.0.0 \r\n");
    }

    #[test]
    fn text_is_sanitised() {
        let r = Reply::new(250, None, "Ok\r\n250 injected\x00\tx");
        assert_eq!(r.lines, vec!["Ok  250 injected  x".to_string()]);
        assert_eq!(r.to_bytes(), b"250 Ok  250 injected  x\r\n");
        let r = Reply::multiline(250, None, vec!["a\nb".into(), "c\u{85}d".into()]);
        assert_eq!(r.lines, vec!["a b".to_string(), "c d".to_string()]);
        // Fields are public: write_to still refuses to emit a bare CR/LF.
        let r = Reply { code: 250, enhanced: None, lines: vec!["x\r\ny".into()] };
        assert_eq!(r.to_bytes(), b"250 x  y\r\n");
    }

    #[test]
    fn display_and_text() {
        let r = Reply::multiline(550, Some(EnhancedCode::new(5, 1, 1)), vec!["text line1".into(), "text line2".into()]);
        assert_eq!(r.to_string(), "550 5.1.1 text line1 text line2");
        assert_eq!(r.text(), "text line1 text line2");
        assert_eq!(Reply::new(250, None, "Ok").to_string(), "250 Ok");
        assert_eq!(Reply::multiline(221, None, vec![]).to_string(), "221");
    }

    #[test]
    fn classes() {
        let r = |c| Reply::new(c, None, "");
        assert!(r(250).is_positive() && !r(250).is_intermediate());
        assert!(r(354).is_intermediate() && !r(354).is_positive());
        assert!(r(421).is_transient() && !r(421).is_permanent());
        assert!(r(554).is_permanent() && !r(554).is_transient());
        assert!(!r(199).is_positive() && !r(600).is_permanent());
    }

    #[test]
    fn parse_single_line() {
        let (r, n) = parse_ok(b"220 mx.example ESMTP ready\r\n");
        assert_eq!(r.code, 220);
        assert_eq!(r.enhanced, None);
        assert_eq!(r.lines, vec!["mx.example ESMTP ready"]);
        assert_eq!(n, 28);
    }

    #[test]
    fn parse_stops_after_one_reply() {
        let input = b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n";
        let (r, n) = parse_ok(input);
        assert_eq!(r, Reply::with_code(250, 2, 1, 0, "Ok"));
        assert_eq!(n, 14);
        let (r, n2) = parse_ok(&input[n..]);
        assert_eq!(r, Reply::with_code(250, 2, 1, 5, "Ok"));
        let (r, _) = parse_ok(&input[n + n2..]);
        assert_eq!(r, Reply::new(354, None, "go"));
    }

    #[test]
    fn parse_multiline_with_enhanced() {
        let input = b"550-5.7.1 Message rejected\r\n550-5.7.1 see https://x\r\n550 5.7.1 policy\r\nXX";
        let (r, n) = parse_ok(input);
        assert_eq!(n, input.len() - 2);
        assert_eq!(r.code, 550);
        assert_eq!(r.enhanced, Some(EnhancedCode::new(5, 7, 1)));
        assert_eq!(r.lines, vec!["Message rejected", "see https://x", "policy"]);
        // Round trip through the writer.
        assert_eq!(r.to_bytes(), &input[..n]);
    }

    #[test]
    fn parse_ehlo_response() {
        let input = b"250-mx.example Hello\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250 STARTTLS\r\n";
        let (r, n) = parse_ok(input);
        assert_eq!(n, input.len());
        assert_eq!(r.enhanced, None);
        assert_eq!(r.lines, vec!["mx.example Hello", "PIPELINING", "SIZE 10240000", "STARTTLS"]);
    }

    #[test]
    fn parse_enhanced_code_rules() {
        // Class does not match the reply class: kept as text.
        let (r, _) = parse_ok(b"550 4.1.1 odd\r\n");
        assert_eq!((r.enhanced, r.lines[0].as_str()), (None, "4.1.1 odd"));
        // Only some lines carry it: kept as text everywhere.
        let (r, _) = parse_ok(b"550-5.1.1 a\r\n550 b\r\n");
        assert_eq!(r.enhanced, None);
        assert_eq!(r.lines, vec!["5.1.1 a", "b"]);
        // Different codes on different lines: kept as text.
        let (r, _) = parse_ok(b"550-5.1.1 a\r\n550 5.1.2 b\r\n");
        assert_eq!(r.enhanced, None);
        // Code alone on the line.
        let (r, _) = parse_ok(b"250 2.0.0\r\n");
        assert_eq!(r.enhanced, Some(EnhancedCode::new(2, 0, 0)));
        assert_eq!(r.lines, vec![""]);
        // Not a code: a number in the text.
        let (r, _) = parse_ok(b"250 2.0 things\r\n");
        assert_eq!(r.enhanced, None);
        assert_eq!(r.lines, vec!["2.0 things"]);
    }

    #[test]
    fn parse_bare_lf_and_no_text() {
        let (r, n) = parse_ok(b"250-a\n250 b\n");
        assert_eq!((r.lines.len(), n), (2, 12));
        let (r, n) = parse_ok(b"250\r\n");
        assert_eq!((r.lines, n), (vec![String::new()], 5));
        let (r, _) = parse_ok(b"354 \r\n");
        assert_eq!(r.lines, vec![String::new()]);
    }

    #[test]
    fn parse_need_more() {
        let full: &[u8] = b"250-first\r\n250 last\r\n";
        for cut in 0..full.len() {
            assert_eq!(parse_reply(&full[..cut]), Ok(None), "cut at {cut}");
        }
        assert!(parse_reply(full).unwrap().is_some());
    }

    #[test]
    fn parse_garbage() {
        let bad: &[&[u8]] = &[
            b"HTTP/1.1 400 Bad Request\r\n",
            b"25x Ok\r\n",
            b"250_Ok\r\n",
            b"199 too low\r\n",
            b"600 too high\r\n",
            b"000 zero\r\n",
            b"25\r\n",
            b"\r\n",
            b"250-a\r\n251 b\r\n",
            b"250-a\r\n550 b\r\n",
            b"250-a\r\nxyz\r\n",
            b"\x15\x03\x01\x00\x02\x02\x50",
            b"HT",
            b"2x",
            b"250?",
            b"250\rx\r\n",
        ];
        for input in bad {
            assert!(parse_reply(input).is_err(), "{:?} should fail", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn parse_long_lines() {
        let mut ok = b"250 ".to_vec();
        ok.resize(MAX_REPLY_LINE, b'a');
        ok.extend_from_slice(b"\r\n");
        assert!(parse_reply(&ok).unwrap().is_some());

        let mut long = b"250 ".to_vec();
        long.resize(MAX_REPLY_LINE + 1, b'a');
        let mut with_end = long.clone();
        with_end.extend_from_slice(b"\r\n");
        assert!(parse_reply(&with_end).is_err());
        // Without a terminator: still waiting until it cannot be a valid line any more.
        assert_eq!(parse_reply(&long[..MAX_REPLY_LINE]), Ok(None));
        long.extend_from_slice(b"aa");
        assert!(parse_reply(&long).is_err());
    }

    #[test]
    fn parse_invalid_utf8_and_controls() {
        let (r, _) = parse_ok(b"250 caf\xe9\tok\x00\r\n");
        assert_eq!(r.lines, vec!["caf\u{fffd} ok "]);
    }
}
