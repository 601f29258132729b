//! The HTTP listener's head parser against arbitrary bytes: whatever a client that can reach the
//! listener sends, the daemon answers without panicking, and only a head that names `/drain` and
//! carries one well-formed bearer token can reach the token comparison.
#![no_main]

use drainer_common::http::{Malformed, Route, route};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|head: &[u8]| {
    let routed = route(head);

    // The daemon hands over the head up to its blank line; bytes after it (a body, a pipelined
    // request) must not change what the head asks for.
    let mut followed = head.to_vec();
    followed.extend_from_slice(b"POST /drain HTTP/1.1\r\nAuthorization: Bearer x\r\n\r\n");
    if routed.is_ok() {
        assert_eq!(
            route(&followed),
            routed,
            "bytes after the head changed its route"
        );
    }

    match routed {
        Ok(Route::Drain {
            bearer: Some(token),
        }) => check_token(head, token),
        Ok(Route::Drain { bearer: None })
        | Ok(Route::Readyz | Route::Metrics | Route::MethodNotAllowed | Route::NotFound)
        | Err(Malformed) => {}
    }
    if let Ok(route) = routed
        && route != Route::NotFound
    {
        check_known_path(head);
    }
});

/// A token is part of the head, inside one header line, and trimmed.
fn check_token(head: &[u8], token: &[u8]) {
    let range = head.as_ptr_range();
    assert!(
        range.contains(&token.as_ptr()) && token.as_ptr_range().end <= range.end,
        "the token is not a part of the head"
    );
    assert!(!token.is_empty(), "an empty token");
    assert!(
        !token.contains(&b'\n') && !token.contains(&b'\r'),
        "the token spans lines: {:?}",
        String::from_utf8_lossy(token)
    );
    assert_eq!(token, token.trim_ascii(), "the token is not trimmed");
}

/// Every route but NotFound answers one of the three paths, so the head must name one (httparse
/// skips empty lines before the request line, so it need not be the first line).
fn check_known_path(head: &[u8]) {
    assert!(
        [&b" /readyz"[..], b" /metrics", b" /drain"]
            .iter()
            .any(|path| head.windows(path.len()).any(|window| window == *path)),
        "routed to a known path, but the head {:?} names none",
        String::from_utf8_lossy(head)
    );
}
