//! Property tests for the wire protocol: DATA round trips through dot-stuffing and the receiver
//! on arbitrary chunk boundaries, commands round trip through their text form, replies round trip
//! through their wire form, and no parser panics on arbitrary bytes.

use proptest::prelude::*;
use smtp_wire::*;

// ---------------------------------------------------------------------------------------------
// DATA
// ---------------------------------------------------------------------------------------------

/// The content the receiver should produce for `content` sent through `dot_stuff`: each bare LF
/// becomes CRLF, and a trailing CRLF is added if missing and the content is non-empty.
fn normalise(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 2);
    for (i, &b) in content.iter().enumerate() {
        if b == b'\n' && (i == 0 || content[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Maps a random selector and byte to a byte biased towards the ones that matter for framing, so
/// that look-alike end markers, dot lines and CR/LF mixtures are common rather than astronomically
/// rare. (A table lookup rather than `prop_oneof!`: generation is the bulk of these tests' time.)
fn bias((selector, raw): (u8, u8)) -> u8 {
    match selector % 16 {
        0..=2 => b'.',
        3..=5 => b'\r',
        6..=8 => b'\n',
        9..=10 => b'a',
        11 => 0,
        12 => 0xff,
        _ => raw,
    }
}

fn data_content() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<(u8, u8)>(), 0..200).prop_map(|v| v.into_iter().map(bias).collect())
}

fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..40, 1..20)
}

/// Feeds `input` cycling through `sizes` as chunk lengths. Returns output, bytes consumed and
/// whether the end marker was reached.
fn feed_chunked(rx: &mut DataReceiver, input: &[u8], sizes: &[usize], out: &mut Vec<u8>) -> (usize, bool) {
    let mut pos = 0;
    let mut k = 0;
    while pos < input.len() {
        let end = (pos + sizes[k % sizes.len()]).min(input.len());
        k += 1;
        let feed = rx.feed(&input[pos..end], out);
        assert!(feed.consumed <= end - pos);
        pos += feed.consumed;
        if feed.done {
            return (pos, true);
        }
        assert_eq!(pos, end, "consumed less than offered without being done");
    }
    (pos, false)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// (1) dot_stuff then DataReceiver gives back the normalised content and stops exactly at the
    /// end marker, whatever the chunking.
    #[test]
    fn dot_stuff_then_receive(content in data_content(), sizes in chunk_sizes(), trailer in data_content()) {
        let mut wire = Vec::new();
        dot_stuff(&content, &mut wire);
        let marker_end = wire.len();
        // Whatever follows (pipelined commands, garbage) must not be consumed.
        wire.extend_from_slice(&trailer);

        let mut rx = DataReceiver::new(DataLimits { max_size: u64::MAX, max_line: 1000 });
        let mut out = Vec::new();
        let (consumed, done) = feed_chunked(&mut rx, &wire, &sizes, &mut out);
        prop_assert!(done);
        prop_assert_eq!(consumed, marker_end);
        let want = normalise(&content);
        prop_assert_eq!(&out, &want);
        let summary = rx.summary();
        prop_assert_eq!(summary.size, want.len() as u64);
        prop_assert!(!summary.oversize);
        // dot_stuff never sends a bare LF.
        prop_assert_eq!(summary.bare_lf, 0);
    }

    /// Raw input (not stuffed): chunking never changes the outcome.
    #[test]
    fn receiver_chunking_invariant(input in prop::collection::vec(any::<(u8, u8)>(), 0..300).prop_map(|v| v.into_iter().map(bias).collect::<Vec<u8>>()), sizes in chunk_sizes(), max_size in 0u64..400, max_line in 2usize..50) {
        let limits = DataLimits { max_size, max_line };
        let mut whole_rx = DataReceiver::new(limits);
        let mut whole_out = Vec::new();
        let whole = whole_rx.feed(&input, &mut whole_out);

        let mut rx = DataReceiver::new(limits);
        let mut out = Vec::new();
        let (consumed, done) = feed_chunked(&mut rx, &input, &sizes, &mut out);
        prop_assert_eq!(consumed, whole.consumed);
        prop_assert_eq!(done, whole.done);
        prop_assert_eq!(&out, &whole_out);
        prop_assert_eq!(rx.summary(), whole_rx.summary());
        prop_assert!(out.len() as u64 <= max_size);
        let s = rx.summary();
        prop_assert_eq!(s.oversize, s.size > max_size);
        // When done, the consumed input ends with the one true end marker.
        if done {
            prop_assert!(input[..consumed].ends_with(b".\r\n"));
            prop_assert!(consumed == 3 || input[..consumed].ends_with(b"\n.\r\n"));
        }
    }

    /// Stuffed output never contains the end marker before its end, and never a bare LF.
    #[test]
    fn dot_stuff_output_is_clean(content in data_content()) {
        let mut wire = Vec::new();
        dot_stuff(&content, &mut wire);
        prop_assert!(wire.ends_with(b".\r\n"));
        let body = &wire[..wire.len() - 3];
        prop_assert!(body.is_empty() || body.ends_with(b"\r\n"));
        prop_assert!(!body.windows(5).any(|w| w == b"\r\n.\r\n"));
        prop_assert!(!body.starts_with(b".\r\n"));
        for (i, &b) in wire.iter().enumerate() {
            if b == b'\n' {
                prop_assert!(i > 0 && wire[i - 1] == b'\r');
                // Every line that starts with a dot in the content was stuffed.
                if let Some(&next) = wire.get(i + 1)
                    && next == b'.' && i + 1 != wire.len() - 3 {
                        prop_assert_eq!(wire.get(i + 2), Some(&b'.'));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------------

fn atom() -> impl Strategy<Value = String> {
    // atext, including `%` and `!`, plus some non-ASCII letters for SMTPUTF8.
    prop::collection::vec(
        prop_oneof![
            8 => prop::char::ranges(vec!['a'..='z', 'A'..='Z', '0'..='9'].into()),
            2 => prop::sample::select("!#$%&'*+-/=?^_`{|}~".chars().collect::<Vec<_>>()),
            1 => prop::sample::select(vec!['é', 'ß', '用', 'ж', '😀']),
        ],
        1..8,
    )
    .prop_map(|cs| cs.into_iter().collect())
}

fn local_part() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::collection::vec(atom(), 1..4).prop_map(|atoms| atoms.join(".")),
        1 => prop::collection::vec(
            prop_oneof![
                prop::char::range(' ', '~')
                    .prop_filter("plain qtext", |c| *c != '"' && *c != '\\')
                    .prop_map(String::from),
                Just("\\\"".to_string()),
                Just("\\\\".to_string()),
                Just("é".to_string()),
            ],
            0..12,
        )
        .prop_map(|parts| format!("\"{}\"", parts.concat())),
    ]
}

fn label() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-zA-Z0-9]([a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?",
        1 => Just("bücher".to_string()),
        1 => Just("例子".to_string()),
    ]
}

fn domain() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::collection::vec(label(), 1..4).prop_map(|l| l.join(".")),
        1 => any::<std::net::Ipv4Addr>().prop_map(|ip| format!("[{ip}]")),
        1 => any::<std::net::Ipv6Addr>().prop_map(|ip| format!("[IPv6:{ip}]")),
    ]
}

fn address() -> impl Strategy<Value = Address> {
    (local_part(), domain()).prop_map(|(local_part, domain)| Address { local_part, domain })
}

fn xtext() -> impl Strategy<Value = String> {
    "([!-*,-<>-~]|\\+[0-9A-F]{2}){1,20}"
}

fn unknown_params() -> impl Strategy<Value = Vec<(String, Option<String>)>> {
    // "X-" keeps them clear of the known keywords.
    prop::collection::vec(("X-[A-Z0-9]{1,6}", prop::option::of("[!-~]{1,10}")), 0..3)
}

fn mail_params() -> impl Strategy<Value = MailParams> {
    (
        prop::option::of(any::<u64>()),
        prop::option::of(prop::sample::select(vec![Body::SevenBit, Body::EightBitMime, Body::BinaryMime])),
        any::<bool>(),
        prop::option::of(prop::sample::select(vec![Ret::Full, Ret::Headers])),
        prop::option::of(xtext()),
        prop::option::of(xtext()),
        unknown_params(),
    )
        .prop_map(|(size, body, smtputf8, ret, envid, auth, unknown)| MailParams {
            size,
            body,
            smtputf8,
            ret,
            envid,
            auth,
            unknown,
        })
}

fn notify() -> impl Strategy<Value = Vec<Notify>> {
    prop_oneof![
        Just(vec![Notify::Never]),
        prop::sample::subsequence(vec![Notify::Success, Notify::Failure, Notify::Delay], 1..=3).prop_shuffle(),
    ]
}

fn rcpt_params() -> impl Strategy<Value = RcptParams> {
    (
        prop::option::of(notify()),
        prop::option::of(("[a-zA-Z0-9-]{1,8}", xtext()).prop_map(|(t, x)| format!("{t};{x}"))),
        unknown_params(),
    )
        .prop_map(|(notify, orcpt, unknown)| RcptParams { notify, orcpt, unknown })
}

fn recipient() -> impl Strategy<Value = Address> {
    prop_oneof![
        8 => address(),
        1 => prop::sample::select(vec!["postmaster", "Postmaster", "POSTMASTER"]).prop_map(|pm| {
            Address { local_part: pm.to_string(), domain: String::new() }
        }),
    ]
}

/// Free text as VRFY/EXPN/HELP take it: no leading or trailing blank (the parser trims those).
fn text_arg() -> impl Strategy<Value = String> {
    "[!-~]([ !-~]{0,20}[!-~])?"
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        "[!-~]{1,30}".prop_map(Command::Ehlo),
        "[!-~]{1,30}".prop_map(Command::Helo),
        (prop::option::of(address()), mail_params()).prop_map(|(from, params)| Command::Mail { from, params }),
        (recipient(), rcpt_params()).prop_map(|(to, params)| Command::Rcpt { to, params }),
        Just(Command::Data),
        Just(Command::Rset),
        Just(Command::Noop),
        Just(Command::Quit),
        Just(Command::StartTls),
        text_arg().prop_map(Command::Vrfy),
        text_arg().prop_map(Command::Expn),
        prop::option::of(text_arg()).prop_map(Command::Help),
        ("[A-Z0-9_-]{1,20}", prop::option::of("[A-Za-z0-9+/]{0,30}={0,2}|=")).prop_map(
            |(mechanism, initial_response)| Command::Auth {
                mechanism,
                initial_response: initial_response.filter(|s| !s.is_empty()),
            }
        ),
        (any::<u64>(), any::<bool>()).prop_map(|(size, last)| Command::Bdat { size, last }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// (2) A command rendered to text parses back to itself, and so does every command of a
    /// pipelined sequence framed by the LineFramer.
    #[test]
    fn command_round_trip(cmds in prop::collection::vec(command(), 1..8), sizes in chunk_sizes()) {
        for cmd in &cmds {
            let line = cmd.to_string();
            prop_assert_eq!(parse_command(line.as_bytes()), Ok(cmd.clone()), "line {:?}", line);
        }

        // The same commands pipelined in one stream, arriving in arbitrary chunks.
        let stream: Vec<u8> = cmds.iter().flat_map(Command::to_line).collect();
        let mut framer = LineFramer::new(4096);
        let mut buf = Vec::new();
        let mut parsed = Vec::new();
        let mut pos = 0;
        let mut k = 0;
        while pos < stream.len() {
            let end = (pos + sizes[k % sizes.len()]).min(stream.len());
            k += 1;
            buf.extend_from_slice(&stream[pos..end]);
            pos = end;
            loop {
                match framer.poll(&buf) {
                    Framed::Line { len, consumed } => {
                        parsed.push(parse_command(&buf[..len]));
                        buf.drain(..consumed);
                    }
                    Framed::TooLong { .. } => prop_assert!(false, "unexpected TooLong"),
                    Framed::NeedMore { consumed } => {
                        buf.drain(..consumed);
                        break;
                    }
                }
            }
        }
        prop_assert!(buf.is_empty());
        let want: Vec<_> = cmds.into_iter().map(Ok).collect();
        prop_assert_eq!(parsed, want);
    }
}

// ---------------------------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------------------------

fn reply() -> impl Strategy<Value = Reply> {
    (
        200u16..600,
        any::<bool>(),
        0u16..1000,
        0u16..1000,
        // Lines start with a letter so that a line cannot itself look like an enhanced code.
        prop::collection::vec("([A-Za-z][ -~é]{0,40})?", 1..5),
    )
        .prop_map(|(code, with_enhanced, subject, detail, lines)| {
            let class = (code / 100) as u8;
            let enhanced = (with_enhanced && class != 3).then(|| EnhancedCode::new(class, subject, detail));
            Reply::multiline(code, enhanced, lines)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Replies round trip through their wire form, and parsing stops exactly at their end.
    #[test]
    fn reply_round_trip(r in reply(), trailer in prop::collection::vec(any::<u8>(), 0..10)) {
        let mut wire = r.to_bytes();
        let len = wire.len();
        wire.extend_from_slice(&trailer);
        let (parsed, consumed) = parse_reply(&wire).unwrap().unwrap();
        prop_assert_eq!(consumed, len);
        prop_assert_eq!(parsed, r.clone());
        // Every proper prefix is "need more".
        for cut in 0..len {
            prop_assert_eq!(parse_reply(&wire[..cut]), Ok(None));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// (3) No panics on arbitrary input
// ---------------------------------------------------------------------------------------------

/// Arbitrary bytes, half of the time starting with something that looks like protocol so the
/// parsers get past their first check.
fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
    let prefix = prop::sample::select(vec![
        &b""[..],
        b"MAIL FROM:<",
        b"RCPT TO:<",
        b"mail from:",
        b"RCPT TO:<@",
        b"EHLO ",
        b"AUTH ",
        b"BDAT ",
        b"250-",
        b"550 5.",
        b"250 2.0.0 ",
        b".\r",
    ]);
    let byte = |(selector, raw): (u8, u8)| match selector % 32 {
        0..=15 => bias((selector, raw)),
        16 => b'"',
        17 => b'<',
        18 => b'>',
        19 => b' ',
        20 => b'@',
        21 => b'=',
        22 => b':',
        23 => b'\\',
        _ => raw,
    };
    (prefix, prop::collection::vec(any::<(u8, u8)>(), 0..300)).prop_map(move |(p, rest)| {
        let mut v = p.to_vec();
        v.extend(rest.into_iter().map(byte));
        v
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn parse_command_never_panics(input in hostile_bytes()) {
        if let Ok(cmd) = parse_command(&input) {
            // Whatever parses renders to something that parses to the same command.
            prop_assert_eq!(parse_command(cmd.to_string().as_bytes()), Ok(cmd));
        }
    }

    #[test]
    fn parse_reply_never_panics(input in hostile_bytes()) {
        if let Ok(Some((reply, consumed))) = parse_reply(&input) {
            prop_assert!(consumed > 0 && consumed <= input.len());
            // A valid UTF-8 reply survives the writer. (Invalid UTF-8 becomes U+FFFD, which can
            // push a line over the length limit.)
            if std::str::from_utf8(&input[..consumed]).is_ok() {
                let wire = reply.to_bytes();
                prop_assert_eq!(parse_reply(&wire), Ok(Some((reply, wire.len()))));
            }
        }
    }

    #[test]
    fn data_receiver_never_panics(input in hostile_bytes(), sizes in chunk_sizes(), max_size in 0u64..500, max_line in 0usize..100) {
        let mut rx = DataReceiver::new(DataLimits { max_size, max_line });
        let mut out = Vec::new();
        let (consumed, _) = feed_chunked(&mut rx, &input, &sizes, &mut out);
        prop_assert!(consumed <= input.len());
    }

    #[test]
    fn line_framer_never_panics(input in hostile_bytes(), sizes in chunk_sizes(), max_len in 0usize..64) {
        let mut framer = LineFramer::new(max_len);
        let mut buf = Vec::new();
        let mut pos = 0;
        let mut k = 0;
        while pos < input.len() {
            let end = (pos + sizes[k % sizes.len()]).min(input.len());
            k += 1;
            buf.extend_from_slice(&input[pos..end]);
            pos = end;
            loop {
                match framer.poll(&buf) {
                    Framed::Line { len, consumed } => {
                        prop_assert!(len + 2 <= max_len.max(2));
                        prop_assert!(len < consumed && consumed <= buf.len());
                        buf.drain(..consumed);
                    }
                    Framed::TooLong { consumed } => {
                        prop_assert!(consumed > 0 && consumed <= buf.len());
                        buf.drain(..consumed);
                    }
                    Framed::NeedMore { consumed } => {
                        buf.drain(..consumed);
                        break;
                    }
                }
            }
            // The buffer never holds more than one (possible) line.
            prop_assert!(buf.len() <= max_len.max(2));
        }
    }
}
