//! The clients: server addresses, connections, echo, live WebSocket sessions, HTTP requests.
use std::{
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use crate::{netns::TestNetns, process::Process, python, script};

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
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(payload)?;
    let mut back = vec![0; payload.len()];
    stream.read_exact(&mut back)?;
    assert_eq!(back, payload, "echo returned different bytes");
    Ok(())
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
