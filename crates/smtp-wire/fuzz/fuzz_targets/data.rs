//! Fuzzes the DATA receiver (on arbitrary chunking) and the dot-stuffing round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtp_wire::{DataLimits, DataReceiver, dot_stuff};

const LIMITS: DataLimits = DataLimits {
    max_size: 1 << 16,
    max_line: 1000,
};

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, input)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);

    // Raw input: feeding it whole or in chunks gives the same result.
    let mut whole = DataReceiver::new(LIMITS);
    let mut whole_out = Vec::new();
    let whole_feed = whole.feed(input, &mut whole_out);
    let mut rx = DataReceiver::new(LIMITS);
    let mut out = Vec::new();
    let mut consumed = 0;
    for piece in input.chunks(chunk) {
        let feed = rx.feed(piece, &mut out);
        consumed += feed.consumed;
        if feed.done {
            break;
        }
        assert_eq!(feed.consumed, piece.len());
    }
    assert_eq!(consumed, whole_feed.consumed);
    assert_eq!(rx.is_done(), whole_feed.done);
    assert_eq!(out, whole_out);
    assert_eq!(rx.summary(), whole.summary());

    // Stuffed content comes back normalised and ends exactly at the marker.
    let mut wire = Vec::new();
    dot_stuff(input, &mut wire);
    let mut rx = DataReceiver::new(DataLimits {
        max_size: u64::MAX,
        max_line: 1000,
    });
    let mut out = Vec::new();
    let feed = rx.feed(&wire, &mut out);
    assert!(feed.done);
    assert_eq!(feed.consumed, wire.len());
    let mut want = Vec::with_capacity(input.len() + 2);
    for (i, &b) in input.iter().enumerate() {
        if b == b'\n' && (i == 0 || input[i - 1] != b'\r') {
            want.push(b'\r');
        }
        want.push(b);
    }
    if !want.is_empty() && !want.ends_with(b"\r\n") {
        want.extend_from_slice(b"\r\n");
    }
    assert_eq!(out, want);
});
