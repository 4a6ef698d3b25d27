//! Fuzzes reply parsing: the input is what a (possibly hostile) server sends.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtp_wire::parse_reply;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((reply, consumed))) = parse_reply(rest) {
        assert!(consumed > 0 && consumed <= rest.len());
        // Valid UTF-8 replies survive a round trip through the writer. (Invalid UTF-8 is
        // replaced by U+FFFD, which can push a line past the length limit, so it is not checked.)
        if std::str::from_utf8(&rest[..consumed]).is_ok() {
            let wire = reply.to_bytes();
            assert_eq!(parse_reply(&wire), Ok(Some((reply, wire.len()))));
        }
        rest = &rest[consumed..];
    }
});
