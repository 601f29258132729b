//! The user's scenario: a real uvicorn serving live WebSocket sessions is stopped mid-stream.
use std::{io::ErrorKind, time::Duration};

use drainer_harness::{
    clients::{live_clients, live_session_results, loopback},
    drainer::{drainer_run, start_drain},
    netns::TestNetns,
    process::Process,
    require_root,
    servers::{live_app, live_app_command},
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
    let clients = live_clients(netns, PORT, &lengths(), Duration::from_secs(30));
    // Every session is now mid-stream: the shortest lasts 1 s.
    std::thread::sleep(Duration::from_millis(200));
    clients
}

#[test]
fn every_live_session_ends_normally_when_uvicorn_is_stopped_under_drainer() {
    require_root();
    let netns = TestNetns::create();
    let mut drainer = drainer_run(
        &netns,
        &["--port", "8000", "--drain-timeout", "60s"],
        &live_app_command(PORT),
    );
    drainer.wait_for("Uvicorn running on", Duration::from_secs(30));

    let mut clients = start_sessions(&netns);
    start_drain(&drainer);

    let refused = netns
        .connect(loopback(PORT))
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
    let mut server = live_app(&netns, PORT);

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
