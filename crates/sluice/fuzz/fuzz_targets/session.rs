//! Fuzzes a whole SMTP session: arbitrary client bytes in (see `sluice::listener::fuzz` for the
//! input format: an options byte, a chunk size, then what the client sends), replies out.
//!
//! Beyond "no panic, no hang" (a session that does not end once its input is closed panics in
//! `fuzz_session`), it checks what the client sees:
//! - every byte sluice writes belongs to a well-formed reply, each line at most 512 octets with
//!   its CRLF (RFC 5321 §4.5.3.1.5), and the first reply is the greeting (220) or the refusal of a
//!   client that talked first (554);
//! - sluice is never an open relay: a client outside the allowed networks, on a listener where
//!   AUTH is not offered, never gets as far as DATA's 354.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::listener::fuzz::{OPT_ALLOWED_NETWORK, OPT_AUTH, fuzz_session};
use smtp_wire::parse_reply;

fuzz_target!(|data: &[u8]| {
    let out = fuzz_session(data);
    let options = if data.len() >= 2 { data[0] } else { 0 };

    for line in out.split_inclusive(|&b| b == b'\n') {
        assert!(line.ends_with(b"\r\n"), "reply line not ended by CRLF: {:?}", String::from_utf8_lossy(line));
        assert!(line.len() <= 512, "reply line of {} octets: {:?}", line.len(), String::from_utf8_lossy(line));
    }
    let mut codes = Vec::new();
    let mut rest = &out[..];
    while !rest.is_empty() {
        match parse_reply(rest) {
            Ok(Some((reply, used))) => {
                codes.push(reply.code);
                rest = &rest[used..];
            }
            other => panic!("malformed reply ({other:?}) in: {:?}", String::from_utf8_lossy(rest)),
        }
    }
    assert!(matches!(codes.first(), Some(220 | 554)), "first reply: {codes:?}");
    if options & (OPT_ALLOWED_NETWORK | OPT_AUTH) == 0 {
        assert!(!codes.contains(&354), "a stranger got to DATA: {codes:?}\n{}", String::from_utf8_lossy(&out));
    }
});
