//! Fuzzes command framing and parsing: the input is a client's command stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtp_wire::{Framed, LineFramer, parse_command};

fuzz_target!(|data: &[u8]| {
    // The whole input as one line: whatever parses must render to a line that parses the same.
    if let Ok(cmd) = parse_command(data) {
        assert_eq!(parse_command(cmd.to_string().as_bytes()), Ok(cmd));
    }

    // The input as a stream, framed as the session frames it.
    let mut framer = LineFramer::new(512);
    let mut buf = data;
    loop {
        match framer.poll(buf) {
            Framed::Line { len, consumed } => {
                assert!(len + 2 <= 512 && len < consumed);
                let _ = parse_command(&buf[..len]);
                buf = &buf[consumed..];
            }
            Framed::TooLong { consumed } => buf = &buf[consumed..],
            Framed::NeedMore { .. } => break,
        }
    }
});
