//! Command-phase framing: splitting the byte stream from the client into command lines.
//!
//! This module owns line termination and the line-length limit for commands (RFC 5321 §4.5.3.1.4:
//! 512 octets including CRLF). It does not own buffering: the caller keeps the bytes and drops
//! what [`LineFramer::poll`] says was consumed, so the framer itself never allocates.

/// RFC 5321 §4.5.3.1.4: the longest command line, including CRLF; the usual [`LineFramer::new`]
/// argument (raise it when advertising extensions that make lines longer, e.g. many parameters).
pub const MAX_COMMAND_LINE: usize = 512;

/// Splits the command stream into lines, enforcing a maximum length (RFC 5321: 512 octets
/// including CRLF). A too-long line is discarded up to and including its LF, and reported once.
#[derive(Clone, Debug)]
pub struct LineFramer {
    max_len: usize,
    /// In the middle of a too-long line: everything up to the next LF is thrown away. Without this
    /// state the tail of an over-long line would be parsed as a command of its own, which is how
    /// a client could slip a command past a length check.
    discarding: bool,
}

/// The outcome of [`LineFramer::poll`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framed {
    /// A complete line at buf[..len] (terminator excluded); `consumed` bytes (incl. terminator)
    /// should be dropped from buf.
    Line {
        /// Length of the line without its terminator.
        len: usize,
        /// Bytes to drop from the buffer, terminator included.
        consumed: usize,
    },
    /// The line being received exceeded max_len; its terminator has been reached and `consumed`
    /// bytes must be dropped. Reply "500 5.5.2 Line too long".
    TooLong {
        /// Bytes to drop from the buffer, terminator included.
        consumed: usize,
    },
    /// Need more input; drop `consumed` bytes first (bytes of a too-long line being discarded),
    /// may be 0.
    NeedMore {
        /// Bytes to drop from the buffer before reading more.
        consumed: usize,
    },
}

impl LineFramer {
    /// A framer for lines of at most `max_len` octets, counting the terminator as 2 octets even
    /// when it is a bare LF (so the limit does not depend on the client's line ending).
    /// `max_len` is at least 2 in effect: a smaller value is treated as 2 (only empty lines fit).
    pub fn new(max_len: usize) -> Self {
        LineFramer { max_len: max_len.max(2), discarding: false }
    }

    /// True while the rest of a too-long line is being thrown away.
    pub fn is_discarding(&self) -> bool {
        self.discarding
    }

    /// Looks for the next line at the start of `buf`. Both CRLF and bare LF end a line (a CR just
    /// before the LF is not part of the line). Call again after dropping `consumed` bytes: one call
    /// reports at most one line.
    pub fn poll(&mut self, buf: &[u8]) -> Framed {
        if self.discarding {
            return match buf.iter().position(|&b| b == b'\n') {
                Some(lf) => {
                    self.discarding = false;
                    Framed::TooLong { consumed: lf + 1 }
                }
                // Drop everything: the caller's buffer never grows with a hostile line.
                None => Framed::NeedMore { consumed: buf.len() },
            };
        }
        let max_content = self.max_len - 2;
        // The LF of a line that fits is at index max_content + 1 at most (after a CR). Looking no
        // further bounds the work per call whatever the buffer holds.
        let window = &buf[..buf.len().min(max_content + 2)];
        match window.iter().position(|&b| b == b'\n') {
            Some(lf) => {
                let len = if lf > 0 && buf[lf - 1] == b'\r' { lf - 1 } else { lf };
                if len > max_content {
                    Framed::TooLong { consumed: lf + 1 }
                } else {
                    Framed::Line { len, consumed: lf + 1 }
                }
            }
            None => {
                // No LF within reach. A final CR may be the start of the CRLF, so it does not
                // count yet; any other byte does.
                let content_min = buf.len() - usize::from(buf.last() == Some(&b'\r'));
                if content_min > max_content {
                    // It can no longer fit. Its LF may already be in `buf`, beyond the window:
                    // let the discarding path look for it.
                    self.discarding = true;
                    self.poll(buf)
                } else {
                    Framed::NeedMore { consumed: 0 }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives a framer over `chunks` the way a session would, collecting lines and "too long"
    /// events.
    fn run(max: usize, chunks: &[&[u8]]) -> Vec<Result<Vec<u8>, ()>> {
        let mut framer = LineFramer::new(max);
        let mut buf = Vec::new();
        let mut events = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            loop {
                match framer.poll(&buf) {
                    Framed::Line { len, consumed } => {
                        events.push(Ok(buf[..len].to_vec()));
                        buf.drain(..consumed);
                    }
                    Framed::TooLong { consumed } => {
                        events.push(Err(()));
                        buf.drain(..consumed);
                    }
                    Framed::NeedMore { consumed } => {
                        buf.drain(..consumed);
                        break;
                    }
                }
            }
        }
        events
    }

    fn line(s: &str) -> Result<Vec<u8>, ()> {
        Ok(s.as_bytes().to_vec())
    }

    #[test]
    fn crlf_and_bare_lf() {
        assert_eq!(
            run(512, &[b"EHLO x\r\nMAIL FROM:<>\nNOOP\r\n\r\n"]),
            vec![line("EHLO x"), line("MAIL FROM:<>"), line("NOOP"), line("")]
        );
        // Only the CR right before the LF is stripped.
        assert_eq!(run(512, &[b"A\r\r\n"]), vec![line("A\r")]);
        assert_eq!(run(512, &[b"A\rB\n"]), vec![line("A\rB")]);
    }

    #[test]
    fn incomplete() {
        let mut f = LineFramer::new(512);
        assert_eq!(f.poll(b""), Framed::NeedMore { consumed: 0 });
        assert_eq!(f.poll(b"NOOP"), Framed::NeedMore { consumed: 0 });
        assert_eq!(f.poll(b"NOOP\r"), Framed::NeedMore { consumed: 0 });
        assert_eq!(f.poll(b"NOOP\r\n"), Framed::Line { len: 4, consumed: 6 });
    }

    #[test]
    fn exact_limit() {
        // 10 octets including CRLF: 8 content octets fit, 9 do not, whatever the terminator.
        let eight = "a".repeat(8);
        let nine = "a".repeat(9);
        for term in ["\r\n", "\n"] {
            assert_eq!(run(10, &[format!("{eight}{term}").as_bytes()]), vec![line(&eight)]);
            assert_eq!(run(10, &[format!("{nine}{term}").as_bytes()]), vec![Err(())]);
        }
        let mut f = LineFramer::new(512);
        let ok = format!("{}\r\n", "x".repeat(510));
        assert_eq!(f.poll(ok.as_bytes()), Framed::Line { len: 510, consumed: 512 });
        let long = format!("{}\r\n", "x".repeat(511));
        assert_eq!(f.poll(long.as_bytes()), Framed::TooLong { consumed: 513 });
    }

    #[test]
    fn over_limit_is_discarded_and_reported_once() {
        let long = "a".repeat(100);
        let input = format!("NOOP\r\n{long}\r\nQUIT\r\n");
        assert_eq!(run(20, &[input.as_bytes()]), vec![line("NOOP"), Err(()), line("QUIT")]);
        // Arriving in pieces: the tail of the long line must not become a command.
        let chunks: Vec<&[u8]> = vec![b"NOOP\r\n", &long.as_bytes()[..50], b"aaaaaaaaaa", b"RSET\r\nQUIT\r\n"];
        assert_eq!(run(20, &chunks), vec![line("NOOP"), Err(()), line("QUIT")]);
    }

    #[test]
    fn discarding_drops_bytes_early() {
        let mut f = LineFramer::new(10);
        // 8 content bytes and a CR: may still be a line that fits.
        assert_eq!(f.poll(b"aaaaaaaa\r"), Framed::NeedMore { consumed: 0 });
        assert!(!f.is_discarding());
        // 9 content bytes: cannot fit any more, thrown away at once.
        assert_eq!(f.poll(b"aaaaaaaaa"), Framed::NeedMore { consumed: 9 });
        assert!(f.is_discarding());
        assert_eq!(f.poll(b"bbb"), Framed::NeedMore { consumed: 3 });
        assert_eq!(f.poll(b"b\r\nNOOP\r\n"), Framed::TooLong { consumed: 3 });
        assert!(!f.is_discarding());
        assert_eq!(f.poll(b"NOOP\r\n"), Framed::Line { len: 4, consumed: 6 });
    }

    #[test]
    fn split_input_byte_by_byte() {
        let input = b"EHLO client.example\r\nMAIL FROM:<a@b>\nRCPT TO:<c@d>\r\nDATA\r\n";
        let chunks: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(
            run(512, &chunks),
            vec![line("EHLO client.example"), line("MAIL FROM:<a@b>"), line("RCPT TO:<c@d>"), line("DATA")]
        );
        let long = [b'x'; 600];
        let mut input = long.to_vec();
        input.extend_from_slice(b"\r\nQUIT\r\n");
        let chunks: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(run(512, &chunks), vec![Err(()), line("QUIT")]);
        let chunks: Vec<&[u8]> = input.chunks(7).collect();
        assert_eq!(run(512, &chunks), vec![Err(()), line("QUIT")]);
    }
}
