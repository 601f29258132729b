//! The real servers drainer guards (tests/python): echo server, uvicorn live app, signal server.
//!
//! Each has its command line, for `drainer run` to start, and a starter that runs it on its own in
//! a namespace and returns once it is ready.
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
    let command = echo_server_command(listen);
    start(netns, "echo_server", &command, "listening", 20)
}

/// The command line of uvicorn serving tests/python/live_app.py (live WebSocket sessions) on
/// 127.0.0.1:`port`; it prints `Uvicorn running on` once bound.
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

/// uvicorn serving the live app on 127.0.0.1:`port` in `netns`.
pub fn live_app(netns: &TestNetns, port: u16) -> Process {
    let command = live_app_command(port);
    start(netns, "uvicorn", &command, "Uvicorn running on", 30)
}

/// The command line of uvicorn serving the live app on 127.0.0.1:`port` as a backend behind a load
/// balancer: idle keep-alive connections stay open for 5 minutes (uvicorn's default closes them
/// after 5 s), as a backend is set to outlast the balancer's pool of idle connections to it.
pub fn backend_app_command(port: u16) -> Vec<String> {
    let mut command = live_app_command(port);
    command.extend(["--timeout-keep-alive".into(), "300".into()]);
    command
}

/// uvicorn serving the live app as a backend ([`backend_app_command`]) on 127.0.0.1:`port` in
/// `netns`.
pub fn backend_app(netns: &TestNetns, port: u16) -> Process {
    let command = backend_app_command(port);
    start(netns, "uvicorn backend", &command, "Uvicorn running on", 30)
}

/// The command line of tests/python/signal_server.py on `port` with its `options`: it prints
/// `listening` once bound and `got SIGNAME` for each signal it receives.
pub fn signal_server_command(port: u16, options: &[&str]) -> Vec<String> {
    let mut command = vec![
        python().display().to_string(),
        script("signal_server.py").display().to_string(),
        port.to_string(),
    ];
    command.extend(options.iter().map(|option| option.to_string()));
    command
}

/// The signal server on `port` in `netns`.
pub fn signal_server(netns: &TestNetns, port: u16) -> Process {
    let command = signal_server_command(port, &[]);
    start(netns, "signal_server", &command, "listening", 20)
}

/// Runs `command` in `netns`; returns once it printed `ready`, failing after `seconds`.
fn start(netns: &TestNetns, name: &str, command: &[String], ready: &str, seconds: u64) -> Process {
    let mut server = netns.command(&command[0]);
    server.args(&command[1..]);
    let server = Process::spawn(name, server);
    server.wait_for(ready, Duration::from_secs(seconds));
    server
}
