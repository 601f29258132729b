//! The control socket's request parser against arbitrary bytes: whatever a client that may
//! connect sends, the daemon answers with a usable request or an error that says what to send.
#![no_main]

use std::time::Duration;

use drainer_common::protocol::{MAX_REQUEST, Request, parse_request};
use libfuzzer_sys::fuzz_target;

/// The request every syntax error offers as an example.
const EXAMPLE: &str = r#"{"command":"status"}"#;

fuzz_target!(|line: &[u8]| {
    let parsed = parse_request(line);

    // The daemon hands over the line with the newline that ended it; clients and tests may not.
    let mut terminated = line.to_vec();
    terminated.push(b'\n');
    assert_eq!(
        parse_request(&terminated),
        parsed,
        "a trailing newline changed the outcome"
    );

    match parsed {
        Ok(request) => check_request(&request),
        Err(message) => check_error(&message),
    }
});

fn check_request(request: &Request) {
    if let Request::Drain {
        timeout_seconds,
        accept_for_seconds,
        release_when_idle_seconds,
        ..
    } = *request
    {
        // The daemon turns each duration into a Duration with `from_secs_f64`, which panics on
        // what it cannot represent.
        for seconds in [
            timeout_seconds,
            accept_for_seconds,
            release_when_idle_seconds,
        ]
        .into_iter()
        .flatten()
        {
            assert!(
                Duration::try_from_secs_f64(seconds).is_ok(),
                "accepted {seconds:e} seconds, which Duration cannot hold"
            );
        }
    }

    // `drainer drain|status|release` sends a request exactly so: it must fit what the daemon
    // reads, and mean the same there.
    let mut sent = serde_json::to_vec(request).expect("a request serializes");
    sent.push(b'\n');
    assert!(
        sent.len() <= MAX_REQUEST,
        "{request:?} serializes to {} bytes, more than the daemon reads",
        sent.len()
    );
    assert_eq!(
        parse_request(&sent).as_ref(),
        Ok(request),
        "{request:?} did not survive {:?}",
        String::from_utf8_lossy(&sent)
    );
}

fn check_error(message: &str) {
    // A range error names the field it is about; every other error shows a request to copy.
    let says_what_to_send = message.contains(EXAMPLE)
        || (message.contains("_seconds must be in ") && message.ends_with(']'));
    assert!(
        says_what_to_send,
        "the error {message:?} does not say what to send"
    );
}
