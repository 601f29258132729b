//! The HTTP listener's requests (`drainer daemon --http`): what each head asks for, decided from
//! the head alone, since no request drainer answers has a body. Here rather than in the daemon so
//! that the fuzz target runs the very parser the daemon runs.
use std::time::Duration;

/// The longest request head the daemon reads.
pub const MAX_HEAD: usize = 8192;
/// How long the daemon waits for a whole head.
pub const HEAD_TIME: Duration = Duration::from_secs(5);
/// Headers beyond this many make the head malformed: no client of these endpoints sends more.
const MAX_HEADERS: usize = 32;

/// What a request head asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route<'head> {
    Readyz,
    Metrics,
    /// Start a drain and answer at release. `bearer` is the token of the one `Authorization:
    /// Bearer` header, if the head has exactly one; the daemon compares it.
    Drain {
        bearer: Option<&'head [u8]>,
    },
    /// A known path with a method it does not answer.
    MethodNotAllowed,
    NotFound,
}

/// The head is not an HTTP/1.x request head (or has more than [`MAX_HEADERS`] headers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed;

/// Reads a request head: bytes up to and including the blank line that ends it. Bytes after the
/// blank line (a body, a pipelined request) are ignored.
pub fn route(head: &[u8]) -> Result<Route<'_>, Malformed> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) | Err(_) => return Err(Malformed),
    }
    let (Some(method), Some(target)) = (request.method, request.path) else {
        return Err(Malformed);
    };
    let path = target.split_once('?').map_or(target, |(path, _query)| path);
    Ok(match (method, path) {
        ("GET", "/readyz") => Route::Readyz,
        ("GET", "/metrics") => Route::Metrics,
        ("GET" | "POST", "/drain") => Route::Drain {
            bearer: bearer(request.headers),
        },
        (_, "/readyz" | "/metrics" | "/drain") => Route::MethodNotAllowed,
        _ => Route::NotFound,
    })
}

/// The token of the head's only `Authorization` header, if it uses the Bearer scheme (whose name
/// is case-insensitive, RFC 9110 §11.1). Two such headers give none: which one a proxy in front
/// would have checked is anyone's guess.
fn bearer<'head>(headers: &[httparse::Header<'head>]) -> Option<&'head [u8]> {
    let mut authorizations = headers
        .iter()
        .filter(|header| header.name.eq_ignore_ascii_case("authorization"));
    let value = authorizations.next()?.value;
    if authorizations.next().is_some() {
        return None;
    }
    let (scheme, token) = value.split_at_checked(b"Bearer ".len())?;
    if !scheme.eq_ignore_ascii_case(b"Bearer ") {
        return None;
    }
    let token = token.trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_method_and_path_ignoring_the_query() {
        assert_eq!(
            route(b"GET /readyz?x=1 HTTP/1.1\r\n\r\n"),
            Ok(Route::Readyz)
        );
        assert_eq!(
            route(b"GET /metrics HTTP/1.0\r\nHost: a\r\n\r\n"),
            Ok(Route::Metrics)
        );
        assert_eq!(
            route(b"DELETE /drain HTTP/1.1\r\n\r\n"),
            Ok(Route::MethodNotAllowed)
        );
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Ok(Route::NotFound));
        assert_eq!(route(b"GET /readyz HTTP/1.1\r\n"), Err(Malformed));
        assert_eq!(route(b"\x00\r\n\r\n"), Err(Malformed));
    }

    #[test]
    fn a_drain_carries_the_one_bearer_token() {
        let drain = |head: &'static [u8]| match route(head) {
            Ok(Route::Drain { bearer }) => bearer,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            drain(b"POST /drain HTTP/1.1\r\nAuthorization: Bearer abc\r\n\r\n"),
            Some(&b"abc"[..])
        );
        assert_eq!(
            drain(b"POST /drain HTTP/1.1\r\nauthorization: bearer  abc \r\n\r\n"),
            Some(&b"abc"[..])
        );
        assert_eq!(
            drain(b"POST /drain HTTP/1.1\r\nAuthorization: Basic abc\r\n\r\n"),
            None
        );
        assert_eq!(
            drain(
                b"POST /drain HTTP/1.1\r\nAuthorization: Bearer abc\r\n\
                  Authorization: Bearer def\r\n\r\n"
            ),
            None
        );
        assert_eq!(drain(b"GET /drain HTTP/1.1\r\n\r\n"), None);
    }
}
