//! The clients: server addresses, connections, echo, live WebSocket sessions, HTTP requests (one
//! at a time, on keep-alive connections, or each on a new connection at a steady rate).
use std::{
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;

use crate::{
    netns::TestNetns,
    process::{Process, monotonic_now},
    python, script,
};

/// 127.0.0.1:`port`, where the servers listen inside a test's namespace.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// `n` connections to `addr` from inside `netns`, held open.
pub fn connect_many(netns: &TestNetns, addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    netns.run(|| (0..n).map(|_| TcpStream::connect(addr).unwrap()).collect())
}

/// Writes `payload` and reads the echo back.
pub fn echo(stream: &mut TcpStream, payload: &[u8]) -> io::Result<()> {
    stream.set_read_timeout(Some(crate::patience(Duration::from_secs(5))))?;
    stream.write_all(payload)?;
    let mut back = vec![0; payload.len()];
    stream.read_exact(&mut back)?;
    assert_eq!(back, payload, "echo returned different bytes");
    Ok(())
}

/// `count` session lengths for [`live_clients`], spread evenly from `shortest` to `longest` and
/// stretched by [`crate::patience`]: for sessions that must outlast what comes before the drain,
/// such as a sidecar starting, which a slower environment makes slower.
pub fn session_lengths(count: usize, shortest: Duration, longest: Duration) -> Vec<String> {
    let (shortest, longest) = (crate::patience(shortest), crate::patience(longest));
    let step = (longest - shortest).as_secs_f64() / count.saturating_sub(1).max(1) as f64;
    (0..count)
        .map(|i| format!("{:.2}", shortest.as_secs_f64() + step * i as f64))
        .collect()
}

/// tests/python/live_clients.py in `netns`: one live WebSocket session to 127.0.0.1:`port` per
/// entry of `lengths` (seconds), returned once every session is connected, failing after
/// `timeout`. [`live_session_results`] reads how each ended.
pub fn live_clients(
    netns: &TestNetns,
    port: u16,
    lengths: &[String],
    timeout: Duration,
) -> Process {
    let mut command = netns.command(python());
    command
        .arg(script("live_clients.py"))
        .args(["127.0.0.1", &port.to_string()])
        .args(lengths);
    let clients = Process::spawn("live_clients", command);
    clients.wait_for(&format!("connected {}", lengths.len()), timeout);
    clients
}

/// The local port of each session tests/python/live_clients.py opened, in the order of its
/// arguments: the peer port drainer reports for it.
pub fn live_session_ports(clients: &Process) -> Vec<u16> {
    clients
        .wait_for("local ports", Duration::from_secs(5))
        .text
        .split_whitespace()
        .skip(2)
        .map(|port| port.parse().expect("a port number"))
        .collect()
}

/// Waits for tests/python/live_clients.py to exit successfully; returns its one JSON report per
/// session, checking there are `sessions` of them.
pub fn live_session_results(
    clients: &mut Process,
    sessions: usize,
    timeout: Duration,
) -> Vec<serde_json::Value> {
    let status = clients.wait(timeout);
    assert!(
        status.success(),
        "clients failed: {status}\n{}",
        clients.output()
    );
    let results: Vec<serde_json::Value> = clients
        .lines()
        .iter()
        .filter(|line| line.text.starts_with('{'))
        .map(|line| serde_json::from_str(&line.text).expect("session JSON"))
        .collect();
    assert_eq!(results.len(), sessions, "{}", clients.output());
    results
}

/// One HTTP/1.1 request over `stream`; returns (status code, body).
pub fn http_request(
    mut stream: TcpStream,
    method: &str,
    path: &str,
    headers: &[&str],
) -> (u16, String) {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: drainer\r\n");
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .expect("send the HTTP request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the HTTP response");
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// tests/python/keepalive_clients.py in `netns`: `connections` keep-alive connections to
/// 127.0.0.1:`port`, each sending `GET /health` in a loop with `pause` between requests;
/// returned once each has had an answer. [`keepalive_report`] stops them.
pub fn keepalive_clients(
    netns: &TestNetns,
    port: u16,
    connections: usize,
    pause: Duration,
) -> Process {
    let mut command = netns.command(python());
    command.arg(script("keepalive_clients.py")).args([
        "127.0.0.1".to_owned(),
        port.to_string(),
        connections.to_string(),
        pause.as_secs_f64().to_string(),
    ]);
    let clients = Process::spawn("keepalive_clients", command);
    clients.wait_for(&format!("ready {connections}"), Duration::from_secs(30));
    clients
}

/// Stops tests/python/keepalive_clients.py and returns its report: `requests`, `failures`,
/// `errors`, `connections_opened`, and `served_by` (requests per backend).
pub fn keepalive_report(clients: &mut Process) -> serde_json::Value {
    clients.signal(Signal::SIGTERM);
    let status = clients.wait(Duration::from_secs(30));
    assert!(
        status.success(),
        "keep-alive clients failed: {status}\n{}",
        clients.output()
    );
    let report = clients
        .lines()
        .into_iter()
        .rev()
        .find(|line| line.text.starts_with('{'))
        .unwrap_or_else(|| {
            panic!(
                "no report from the keep-alive clients:\n{}",
                clients.output()
            )
        });
    serde_json::from_str(&report.text).expect("keep-alive clients' JSON report")
}

/// `GET path` on a connection of its own to `addr`, read to the end of the body (by its
/// Content-Length), then closed by the client; returns the status code.
pub fn http_get_on_new_connection(addr: SocketAddr, path: &str) -> io::Result<u16> {
    let stream = TcpStream::connect_timeout(&addr, crate::patience(Duration::from_secs(2)))?;
    stream.set_read_timeout(Some(crate::patience(Duration::from_secs(5))))?;
    (&stream).write_all(format!("GET {path} HTTP/1.1\r\nHost: drainer\r\n\r\n").as_bytes())?;
    let mut reader = BufReader::new(&stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let code = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| io::Error::other(format!("not an HTTP response: {status_line:?}")))?;
    let mut length = 0;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().map_err(io::Error::other)?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(code)
}

/// What requests made each on a new connection met.
#[derive(Debug, Default)]
pub struct NewConnectionRequests {
    /// Answered 200.
    pub answered: u64,
    /// Failed, each with its CLOCK_MONOTONIC time and what went wrong: refused, reset, another
    /// status, a timeout.
    pub failures: Vec<(f64, String)>,
}

/// Sets a stop flag when dropped. Made inside `thread::scope` before anything that can panic: a
/// panicking test would otherwise wait forever for client threads that never see the flag set.
pub struct StopOnDrop<'a>(pub &'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Sends `GET path` to `addr` from inside `netns`, each request on a new connection, at
/// `per_second` until `stop` is set.
pub fn get_on_new_connections_until(
    netns: &TestNetns,
    addr: SocketAddr,
    path: &str,
    per_second: u32,
    stop: &AtomicBool,
) -> NewConnectionRequests {
    netns.run(|| {
        let mut requests = NewConnectionRequests::default();
        let interval = Duration::from_secs(1) / per_second;
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            match http_get_on_new_connection(addr, path) {
                Ok(200) => requests.answered += 1,
                Ok(code) => requests
                    .failures
                    .push((monotonic_now(), format!("status {code}"))),
                Err(err) => requests.failures.push((monotonic_now(), err.to_string())),
            }
            next += interval;
            thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        requests
    })
}
