//! The real servers drainer guards (tests/python): echo server, uvicorn live app, signal server.
use std::time::Duration;

use crate::{netns::TestNetns, process::Process, python, script};

/// The command line of the echo server (tests/python/echo_server.py) listening on each
/// `host port` pair; it prints `listening` once bound.
pub fn echo_server_command(listen: &[(&str, u16)]) -> Vec<String> {
    let mut command = vec![
        python().display().to_string(),
        script("echo_server.py").display().to_string(),
    ];
    for (host, port) in listen {
        command.extend([host.to_string(), port.to_string()]);
    }
    command
}

/// The echo server listening on each `host port` pair in `netns`.
pub fn echo_server(netns: &TestNetns, listen: &[(&str, u16)]) -> Process {
    let mut command = netns.command(python());
    command.arg(script("echo_server.py"));
    for (host, port) in listen {
        command.arg(host).arg(port.to_string());
    }
    let server = Process::spawn("echo_server", command);
    server.wait_for("listening", Duration::from_secs(20));
    server
}

/// The command line of uvicorn serving tests/python/live_app.py (live WebSocket sessions) on
/// 127.0.0.1:`port`.
pub fn live_app_command(port: u16) -> Vec<String> {
    [
        python().display().to_string(),
        "-m".into(),
        "uvicorn".into(),
        "live_app:app".into(),
        "--app-dir".into(),
        script("").display().to_string(),
        "--host".into(),
        "127.0.0.1".into(),
        "--port".into(),
        port.to_string(),
    ]
    .into()
}
