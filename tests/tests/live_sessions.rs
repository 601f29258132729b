//! The user's scenario: a real uvicorn serving live WebSocket sessions is stopped mid-stream.
use std::{io::ErrorKind, net::SocketAddr, time::Duration};

use drainer_harness::{
    clients::live_session_results, drainer::drainer_run, netns::TestNetns, process::Process,
    python, require_root, script, servers::live_app_command,
};
use nix::sys::signal::Signal;

const PORT: u16 = 8000;
const SESSIONS: usize = 20;

/// 20 session lengths spread over 1–4 s, on the 50 ms message grid.
fn lengths() -> Vec<String> {
    (0..SESSIONS)
        .map(|i| format!("{:.2}", 1.0 + 3.0 * i as f64 / (SESSIONS - 1) as f64))
        .collect()
}

fn start_sessions(netns: &TestNetns) -> Process {
    let mut command = netns.command(python());
    command
        .arg(script("live_clients.py"))
        .args(["127.0.0.1", &PORT.to_string()])
        .args(lengths());
    let clients = Process::spawn("live_clients", command);
    clients.wait_for(&format!("connected {SESSIONS}"), Duration::from_secs(30));
    // Every session is now mid-stream: the shortest lasts 1 s.
    std::thread::sleep(Duration::from_millis(200));
    clients
}

fn addr() -> SocketAddr {
    format!("127.0.0.1:{PORT}").parse().unwrap()
}

#[test]
fn every_live_session_ends_normally_when_uvicorn_is_stopped_under_drainer() {
    require_root();
    let netns = TestNetns::create();
    let uvicorn = live_app_command(PORT);
    let mut args = vec!["--port", "8000", "--drain-timeout", "60s", "--"];
    args.extend(uvicorn.iter().map(String::as_str));
    let mut drainer = drainer_run(&netns, &args);
    drainer.wait_for("Uvicorn running on", Duration::from_secs(30));

    let mut clients = start_sessions(&netns);
    drainer.signal(Signal::SIGTERM);
    drainer.wait_for("draining: refusing new connections", Duration::from_secs(5));

    let refused = netns
        .connect(addr())
        .expect_err("a connection after the drain started was accepted");
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused, "{refused}");

    let results = live_session_results(&mut clients, SESSIONS, Duration::from_secs(60));
    for result in &results {
        assert_eq!(result["code"], 1000, "session ended abnormally: {result}");
        assert_eq!(
            result["received"], result["expected"],
            "session lost messages: {result}"
        );
    }
    let last_end = results
        .iter()
        .map(|r| r["ended_at"].as_f64().unwrap())
        .fold(0.0, f64::max);

    let shutdown = drainer.wait_for("Shutting down", Duration::from_secs(10));
    assert!(
        shutdown.at > last_end,
        "uvicorn began shutting down {:.3}s before the last session closed",
        last_end - shutdown.at
    );
    let status = drainer.wait(Duration::from_secs(30));
    // uvicorn re-raises SIGTERM after a clean shutdown; a shell reports that as 128 + 15.
    assert_eq!(status.code(), Some(143), "{}", drainer.output());
}

#[test]
fn without_drainer_uvicorn_closes_live_sessions_with_1012() {
    require_root();
    let netns = TestNetns::create();
    let uvicorn = live_app_command(PORT);
    let mut command = netns.command(&uvicorn[0]);
    command.args(&uvicorn[1..]);
    let mut server = Process::spawn("uvicorn", command);
    server.wait_for("Uvicorn running on", Duration::from_secs(30));

    let mut clients = start_sessions(&netns);
    server.signal(Signal::SIGTERM);

    let results = live_session_results(&mut clients, SESSIONS, Duration::from_secs(60));
    for result in &results {
        assert_eq!(
            result["code"], 1012,
            "expected uvicorn's 'service restart' close: {result}"
        );
        assert!(
            result["received"].as_u64() < result["expected"].as_u64(),
            "the session was cut short, yet got every message: {result}"
        );
    }
    server.wait(Duration::from_secs(30));
}
