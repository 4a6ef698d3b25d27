//! The DATA phase: receiving message content (end-marker detection, dot-unstuffing, line-ending
//! normalisation, limits) and sending it (dot-stuffing).
//!
//! This module owns the one decision that SMTP smuggling attacks exploit: where the content ends.
//! Only `CRLF "." CRLF` ends it (RFC 5321 §4.1.1.4); every look-alike (`LF "." LF`, `CR "." CR`,
//! `LF "." CRLF`, ...) is content. On the way out, [`dot_stuff`] writes CRLF line endings only, so
//! whatever look-alikes the content holds cannot end the data early at a laxer server downstream.
//!
//! This is the hot path of the relay: the receiver copies spans between line ends in bulk,
//! keeps only a few bytes of state between calls, and never allocates.

/// RFC 5321 §4.5.3.1.6: the longest text line, including CRLF; the usual [`DataLimits::max_line`].
pub const MAX_TEXT_LINE: usize = 1000;

/// Limits applied while receiving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataLimits {
    /// Maximum size of the normalised, unstuffed content, in octets.
    pub max_size: u64,
    /// Longest line, including CRLF (RFC 5321 §4.5.3.1.6: 1000). Longer lines are counted in
    /// [`DataSummary::long_lines`], not cut: the session decides what to do about them.
    pub max_line: usize,
}

/// What the receiver is in the middle of. Everything that cannot be decided from the bytes seen so
/// far lives here, so `feed` can always consume its whole input (up to the end marker).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Nothing of the current line seen yet.
    LineStart,
    /// The line so far is ".".
    Dot,
    /// The line so far is ".\r".
    DotCr,
    /// Inside a line, no CR pending.
    Mid,
    /// Inside a line, the last byte seen was a CR (is it CRLF or a bare CR?).
    MidCr,
    /// The end marker has been consumed.
    Done,
}

/// Streaming receiver for the DATA phase. Only CRLF "." CRLF ends the data (a "." line counts as
/// the end only if the line before it ended with CRLF, or it is the first line, and the "." line
/// itself ends with CRLF). Lines end at LF; a bare LF is normalised to CRLF in the output. A
/// leading "." followed by other characters is removed (unstuffing). A lone "." line that does not
/// qualify as the end marker is kept as content ".". Bare CR (not followed by LF) is kept as
/// content and counted. Content beyond max_size is not appended but is still consumed until the
/// end marker (so the session can answer 552 5.3.4 after the end).
#[derive(Clone, Debug)]
pub struct DataReceiver {
    limits: DataLimits,
    state: State,
    /// The previous line ended with CRLF (true before the first line: the DATA command's own
    /// CRLF precedes it).
    prev_crlf: bool,
    /// Normalised length of the current line so far, terminator excluded.
    line_len: usize,
    summary: DataSummary,
}

/// The result of one [`DataReceiver::feed`] call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Feed {
    /// Bytes of the input used; anything after them (when `done`) belongs to the next command.
    pub consumed: usize,
    /// The end marker has been seen; the content is complete.
    pub done: bool,
}

/// What was seen in the content, for the session's policy decisions and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataSummary {
    /// Total normalised size, even beyond the limit.
    pub size: u64,
    /// `size` exceeded `max_size`; the output was truncated to the first `max_size` octets.
    pub oversize: bool,
    /// Lines longer than `max_line` (normalised, CRLF included).
    pub long_lines: u64,
    /// Bare LFs (normalised to CRLF in the output).
    pub bare_lf: u64,
    /// Bare CRs (kept in the output).
    pub bare_cr: u64,
    /// Some octet has the high bit set.
    pub eight_bit: bool,
    /// Some octet is NUL.
    pub nul: bool,
}

impl DataReceiver {
    /// A receiver for one message; make a new one for each DATA command.
    pub fn new(limits: DataLimits) -> Self {
        DataReceiver { limits, state: State::LineStart, prev_crlf: true, line_len: 0, summary: DataSummary::default() }
    }

    /// Consumes from `input` (up to and including the end marker if present; never beyond it),
    /// appending content to `out`. Works on arbitrary chunk boundaries: partial line ends and a
    /// partial end marker are remembered, not left unconsumed. Once done, consumes nothing.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Feed {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Done => break,
                State::LineStart => {
                    if input[i] == b'.' {
                        self.state = State::Dot;
                        i += 1;
                    } else {
                        self.state = State::Mid;
                    }
                }
                State::Dot => match input[i] {
                    b'\r' => {
                        self.state = State::DotCr;
                        i += 1;
                    }
                    b'\n' => {
                        // ".\n" is never the end marker; keep the "." as content.
                        i += 1;
                        self.content(b".", out);
                        self.end_line(false, out);
                    }
                    // Dot followed by something else: unstuff (drop the dot) and read on.
                    _ => self.state = State::Mid,
                },
                State::DotCr => {
                    if input[i] == b'\n' {
                        i += 1;
                        if self.prev_crlf {
                            self.state = State::Done;
                        } else {
                            // LF "." CRLF: a look-alike, content.
                            self.content(b".", out);
                            self.end_line(true, out);
                        }
                    } else {
                        // ".\r" then more: an unstuffed line starting with a bare CR.
                        self.bare_cr(out);
                        self.state = State::Mid;
                    }
                }
                State::MidCr => {
                    if input[i] == b'\n' {
                        i += 1;
                        self.end_line(true, out);
                    } else {
                        self.bare_cr(out);
                        self.state = State::Mid;
                    }
                }
                State::Mid => {
                    let rest = &input[i..];
                    match find_line_break(rest) {
                        None => {
                            self.content(rest, out);
                            i = input.len();
                        }
                        Some(p) => {
                            self.content(&rest[..p], out);
                            i += p + 1;
                            if rest[p] == b'\n' {
                                self.end_line(false, out);
                            } else {
                                self.state = State::MidCr;
                            }
                        }
                    }
                }
            }
        }
        Feed { consumed: i, done: self.state == State::Done }
    }

    /// The end marker has been consumed.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// What was seen so far (final once done).
    pub fn summary(&self) -> DataSummary {
        self.summary.clone()
    }

    /// Content bytes within a line (no LF; a CR only as a bare CR).
    fn content(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        self.line_len = self.line_len.saturating_add(bytes.len());
        // Each check stops being paid for once it has fired.
        if !self.summary.eight_bit && bytes.iter().any(|&b| b >= 0x80) {
            self.summary.eight_bit = true;
        }
        if !self.summary.nul && bytes.contains(&0) {
            self.summary.nul = true;
        }
        self.emit(bytes, out);
    }

    fn bare_cr(&mut self, out: &mut Vec<u8>) {
        self.summary.bare_cr += 1;
        self.content(b"\r", out);
    }

    /// Ends the current line with CRLF in the output, whatever it ended with in the input.
    fn end_line(&mut self, crlf: bool, out: &mut Vec<u8>) {
        if !crlf {
            self.summary.bare_lf += 1;
        }
        if self.line_len.saturating_add(2) > self.limits.max_line {
            self.summary.long_lines += 1;
        }
        self.emit(b"\r\n", out);
        self.prev_crlf = crlf;
        self.line_len = 0;
        self.state = State::LineStart;
    }

    /// Counts normalised output and appends it while within the size limit. Past the limit the
    /// output stays truncated (the message will be refused; keeping it would only cost memory).
    /// The part of a span that still fits is appended, so the output is exactly the first
    /// `max_size` octets whatever the chunking of the input.
    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        let room = self.limits.max_size.saturating_sub(self.summary.size);
        self.summary.size += bytes.len() as u64;
        if bytes.len() as u64 <= room {
            out.extend_from_slice(bytes);
        } else {
            self.summary.oversize = true;
            // room < bytes.len(), so it fits in usize.
            out.extend_from_slice(&bytes[..room as usize]);
        }
    }
}

/// Index of the first CR or LF in `hay`, eight bytes at a time (SWAR, in safe code: this crate has
/// no dependencies, so no `memchr`). This is the inner loop of the DATA phase; a byte-at-a-time
/// search comparing against two values does not vectorise and was measurably slower.
fn find_line_break(hay: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    const LF: u64 = LO * b'\n' as u64;
    const CR: u64 = LO * b'\r' as u64;
    let mut chunks = hay.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        let x = u64::from_le_bytes(chunk.try_into().expect("chunks_exact(8)"));
        let (lf, cr) = (x ^ LF, x ^ CR);
        // "Has a zero byte": the lowest set bit marks the first zero byte exactly (false
        // positives can only appear above a true zero), and little-endian puts the first byte
        // lowest, so the lowest bit of either mask is the first CR or LF.
        let found = (lf.wrapping_sub(LO) & !lf & HI) | (cr.wrapping_sub(LO) & !cr & HI);
        if found != 0 {
            return Some(offset + (found.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    chunks.remainder().iter().position(|&b| b == b'\n' || b == b'\r').map(|p| offset + p)
}

/// Appends `content` dot-stuffed for transmission, followed by the end marker ".\r\n" (adding a
/// CRLF first if the content is non-empty and does not end with one).
///
/// Lines are taken to end at LF, as [`DataReceiver`] does, and a bare LF is sent as CRLF: RFC 5321
/// §2.3.8 forbids bare LF on the wire, and a downstream server that treats LF as a line end must
/// not see a "." line we did not stuff. Bare CRs are sent as they are (they are content).
pub fn dot_stuff(content: &[u8], out: &mut Vec<u8>) {
    // Stuffing adds one byte per "." line; the common case needs only the marker on top.
    out.reserve(content.len() + 5);
    let mut rest = content;
    while let Some(&first) = rest.first() {
        if first == b'.' {
            out.push(b'.');
        }
        match rest.iter().position(|&b| b == b'\n') {
            Some(lf) => {
                let line = &rest[..lf];
                out.extend_from_slice(line);
                if line.last() != Some(&b'\r') {
                    out.push(b'\r');
                }
                out.push(b'\n');
                rest = &rest[lf + 1..];
            }
            None => {
                out.extend_from_slice(rest);
                out.extend_from_slice(b"\r\n");
                rest = &[];
            }
        }
    }
    out.extend_from_slice(b".\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: DataLimits = DataLimits { max_size: 1 << 20, max_line: 1000 };

    struct Received {
        out: Vec<u8>,
        consumed: usize,
        done: bool,
        summary: DataSummary,
    }

    /// Feeds `input` in chunks of `chunk` bytes, stopping at the end marker as a session would.
    fn receive(input: &[u8], chunk: usize, limits: DataLimits) -> Received {
        let mut rx = DataReceiver::new(limits);
        let mut out = Vec::new();
        let mut consumed = 0;
        let mut done = false;
        for piece in input.chunks(chunk.max(1)) {
            let feed = rx.feed(piece, &mut out);
            consumed += feed.consumed;
            assert!(feed.consumed == piece.len() || feed.done, "stopped early without end");
            if feed.done {
                done = true;
                break;
            }
        }
        assert_eq!(done, rx.is_done());
        Received { out, consumed, done, summary: rx.summary() }
    }

    /// Runs `input` whole and in 1, 2, 3 and 7-byte chunks; all must agree.
    fn check(input: &[u8], want_out: &[u8], want_consumed: Option<usize>) -> DataSummary {
        let whole = receive(input, input.len(), LIMITS);
        for chunk in [1, 2, 3, 7] {
            let r = receive(input, chunk, LIMITS);
            assert_eq!(r.out, whole.out, "chunk {chunk}");
            assert_eq!(r.consumed, whole.consumed, "chunk {chunk}");
            assert_eq!(r.summary, whole.summary, "chunk {chunk}");
        }
        assert_eq!(
            String::from_utf8_lossy(&whole.out),
            String::from_utf8_lossy(want_out),
            "input {:?}",
            String::from_utf8_lossy(input)
        );
        match want_consumed {
            Some(n) => {
                assert!(whole.done, "not done: {:?}", String::from_utf8_lossy(input));
                assert_eq!(whole.consumed, n);
            }
            None => assert!(!whole.done),
        }
        whole.summary
    }

    #[test]
    fn proper_end_marker() {
        let input = b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n";
        let s = check(input, b"Subject: x\r\n\r\nbody\r\n", Some(input.len() - 6));
        assert_eq!(s.size, 20);
        assert_eq!((s.bare_lf, s.bare_cr, s.long_lines), (0, 0, 0));
        assert!(!s.eight_bit && !s.nul && !s.oversize);
    }

    #[test]
    fn first_line_dot_ends_empty_data() {
        let s = check(b".\r\nQUIT\r\n", b"", Some(3));
        assert_eq!(s, DataSummary::default());
    }

    #[test]
    fn look_alikes_do_not_end_the_data() {
        // Each sequence is surrounded by content and followed by a proper end; the data must end
        // only at that final marker. (input middle, expected output for it)
        let cases: &[(&[u8], &[u8])] = &[
            (b"\n.\n", b"\r\n.\r\n"),
            (b"\n.\r\n", b"\r\n.\r\n"),
            (b"\r.\r", b"\r.\r"),
            (b"\r\n.\r", b"\r\n\r"),
            (b"\r\n.\n", b"\r\n.\r\n"),
            (b"\r\n.\r\r\n", b"\r\n\r\r\n"),
            (b"\r\r\n.\r\r\n", b"\r\r\n\r\r\n"),
            (b"\r\n\x00.\r\n", b"\r\n\x00.\r\n"),
        ];
        for (middle, want_middle) in cases {
            let mut input = b"a".to_vec();
            input.extend_from_slice(middle);
            input.extend_from_slice(b"b\r\n.\r\nNEXT");
            let mut want = b"a".to_vec();
            want.extend_from_slice(want_middle);
            want.extend_from_slice(b"b\r\n");
            check(&input, &want, Some(input.len() - 4));
        }
    }

    #[test]
    fn look_alikes_at_the_end_of_input_wait() {
        // Incomplete input that must not be taken for the end.
        for input in [
            &b"a\n.\n"[..],
            b"a\n.\r\n",
            b"a\r.\r",
            b"a\r\n.\r",
            b"a\r\n.\n",
            b"a\r\n.\r\r\n",
            b"a\r\r\n.\r\r\n",
            b"a\r\n\x00.\r\n",
        ] {
            let r = receive(input, input.len(), LIMITS);
            assert!(!r.done, "{:?}", String::from_utf8_lossy(input));
            assert_eq!(r.consumed, input.len());
        }
        // And "\r\n.\r" completed by an LF in the next feed is the end.
        let mut rx = DataReceiver::new(LIMITS);
        let mut out = Vec::new();
        assert_eq!(rx.feed(b"a\r\n.\r", &mut out), Feed { consumed: 5, done: false });
        assert_eq!(rx.feed(b"\nX", &mut out), Feed { consumed: 1, done: true });
        assert_eq!(out, b"a\r\n");
        // Nothing more is taken once done.
        assert_eq!(rx.feed(b"X", &mut out), Feed { consumed: 0, done: true });
    }

    #[test]
    fn counters() {
        let s = check(b"a\nb\rc\r\n\r\r\n.\r\n", b"a\r\nb\rc\r\n\r\r\n", Some(13));
        assert_eq!((s.bare_lf, s.bare_cr), (1, 2));
        let s = check("é\x00\r\n.\r\n".as_bytes(), "é\x00\r\n".as_bytes(), Some(8));
        assert!(s.eight_bit && s.nul);
    }

    #[test]
    fn unstuffing() {
        check(b"..\r\n.\r\n", b".\r\n", Some(7));
        check(b"...\r\n.\r\n", b"..\r\n", Some(8));
        check(b".foo\r\n..bar\r\nx.y\r\n.\r\n", b"foo\r\n.bar\r\nx.y\r\n", Some(21));
        // After a bare LF too: the line starts there as far as we are concerned.
        check(b"a\n..b\r\n.\r\n", b"a\r\n.b\r\n", Some(10));
        // A "." line that is not the end is kept as ".".
        check(b"a\n.\r\n.\r\n", b"a\r\n.\r\n", Some(8));
    }

    #[test]
    fn split_end_marker_at_every_point() {
        let input = b"line one\r\n..two\r\n.\r\nRSET\r\n";
        let end = input.len() - 6;
        for split in 0..=input.len() {
            let mut rx = DataReceiver::new(LIMITS);
            let mut out = Vec::new();
            let a = rx.feed(&input[..split], &mut out);
            let total = if a.done {
                a.consumed
            } else {
                assert_eq!(a.consumed, split);
                let b = rx.feed(&input[split..], &mut out);
                assert!(b.done);
                a.consumed + b.consumed
            };
            assert_eq!(total, end, "split at {split}");
            assert_eq!(out, b"line one\r\n.two\r\n", "split at {split}");
        }
    }

    #[test]
    fn size_limit() {
        let limits = DataLimits { max_size: 10, max_line: 1000 };
        let exact = b"01234567\r\n.\r\n";
        let r = receive(exact, exact.len(), limits);
        assert!(r.done && !r.summary.oversize);
        assert_eq!((r.out.len(), r.summary.size), (10, 10));

        let over = b"0123456789\r\nmore and more\r\n.\r\nQUIT";
        for chunk in [1, 4, over.len()] {
            let r = receive(over, chunk, limits);
            assert!(r.done, "consumed to the end marker anyway");
            assert_eq!(r.consumed, over.len() - 4);
            assert!(r.summary.oversize);
            assert_eq!(r.summary.size, 27);
            assert_eq!(r.out, b"0123456789");
        }
    }

    #[test]
    fn long_lines() {
        let limits = DataLimits { max_size: 1000, max_line: 10 };
        // 8 + CRLF fits; 9 + CRLF does not; a bare LF counts as CRLF; stuffing dots do not count.
        let input = b"12345678\r\n123456789\r\n123456789\n..1234567\r\n.\r\n";
        let r = receive(input, 3, limits);
        assert!(r.done);
        assert_eq!(r.summary.long_lines, 2);
        assert_eq!(r.out, b"12345678\r\n123456789\r\n123456789\r\n.1234567\r\n");
    }

    #[test]
    fn line_break_search() {
        let naive = |h: &[u8]| h.iter().position(|&b| b == b'\n' || b == b'\r');
        let mut hay = vec![b'a'; 40];
        assert_eq!(find_line_break(&hay), None);
        for i in 0..hay.len() {
            for special in [b'\r', b'\n'] {
                hay[i] = special;
                // Bytes that could confuse the bit trick around the match.
                for j in (i + 1)..hay.len() {
                    hay[j] = [0x0c, 0x0e, 0x0b, 0x8d, 0x8a, 0x00, 0xff, b'\r'][j % 8];
                }
                for start in 0..8.min(hay.len()) {
                    assert_eq!(find_line_break(&hay[start..]), naive(&hay[start..]));
                }
                hay.iter_mut().for_each(|b| *b = b'a');
            }
        }
        for b in 0..=255u8 {
            let hay = [b; 19];
            assert_eq!(find_line_break(&hay), naive(&hay), "byte {b}");
        }
    }

    #[test]
    fn dot_stuffing() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b".\r\n"),
            (b"a", b"a\r\n.\r\n"),
            (b"a\r\n", b"a\r\n.\r\n"),
            (b".", b"..\r\n.\r\n"),
            (b".\r\n", b"..\r\n.\r\n"),
            (b"a\r\n.b\r\n..\r\n", b"a\r\n..b\r\n...\r\n.\r\n"),
            (b"a\n.\n", b"a\r\n..\r\n.\r\n"),
            (b"a\r", b"a\r\r\n.\r\n"),
            (b"a\r.b", b"a\r.b\r\n.\r\n"),
            (b"\n", b"\r\n.\r\n"),
        ];
        for (content, wire) in cases {
            let mut out = b"prefix".to_vec();
            dot_stuff(content, &mut out);
            assert_eq!(&out[6..], *wire, "{:?}", String::from_utf8_lossy(content));
        }
    }

    #[test]
    fn stuff_then_receive() {
        let content = b"From: a\r\n\r\n.\r\n..\r\n.x\nend";
        let mut wire = Vec::new();
        dot_stuff(content, &mut wire);
        wire.extend_from_slice(b"QUIT\r\n");
        check(&wire, b"From: a\r\n\r\n.\r\n..\r\n.x\r\nend\r\n", Some(wire.len() - 6));
    }
}
