//! Behind a load balancer: HAProxy (active health checks) or nginx (passive failure detection)
//! in front of two uvicorn backends, A under `drainer run --release-when-idle 3s
//! --drain-timeout 30s` and B bare. Keep-alive HTTP clients and live WebSocket sessions go
//! through the balancer; A's drainer gets SIGTERM.
//!
//! The balancer notices that A refuses new connections and sends everything to B, but keeps its
//! pooled keep-alive connections to A open and idle: by the count alone they would hold A's
//! drain to its deadline. With `--release-when-idle 3s`, A is released once its last session has
//! ended and those connections have carried nothing for 3 s.
use std::{path::Path, thread, time::Duration};

use drainer_harness::{
    balancers::{Balancer, haproxy, nginx, served_by},
    clients::{keepalive_clients, keepalive_report, live_clients, live_session_results},
    drainer::{drainer_run, start_drain},
    netns::TestNetns,
    require_root,
    servers::{backend_app, backend_app_command},
    tempdir::TempDir,
};

/// The backend under drainer, and the bare one.
const A: u16 = 8001;
const B: u16 = 8002;
/// Where the balancer listens.
const FRONT: u16 = 8080;
/// A's `--release-when-idle`, in seconds.
const IDLE_SECONDS: f64 = 3.0;
/// How much later than that A may be released after its last session ended.
const RELEASE_SLACK_SECONDS: f64 = 2.0;
const SESSIONS: usize = 12;
const HTTP_CONNECTIONS: usize = 4;

/// Session lengths spread over 1.5–3 s on the app's 50 ms grid: all are live when the drain
/// starts, and the last ends about when the balancer has stopped sending A requests, so that
/// A's pooled connections have then been idle for less than 3 s.
fn lengths() -> Vec<String> {
    (0..SESSIONS)
        .map(|i| {
            let seconds = 1.5 + 1.5 * i as f64 / (SESSIONS - 1) as f64;
            format!("{:.2}", (seconds * 20.0).round() / 20.0)
        })
        .collect()
}

/// Runs the scenario with the balancer `start` starts in front of A and B; `name` is for the
/// report, as is `out`, what the balancer logs when it takes a backend out.
fn drain_behind(name: &str, out: &str, start: impl FnOnce(&TestNetns, &Path) -> Balancer) {
    require_root();
    let netns = TestNetns::create();
    let dir = TempDir::create(name);
    let mut drainer = drainer_run(
        &netns,
        &[
            "--port",
            &A.to_string(),
            "--release-when-idle",
            "3s",
            "--drain-timeout",
            "30s",
        ],
        &backend_app_command(A),
    );
    drainer.wait_for("Uvicorn running on", Duration::from_secs(30));
    let _b = backend_app(&netns, B);
    let balancer = start(&netns, dir.path());

    let mut http = keepalive_clients(&netns, FRONT, HTTP_CONNECTIONS, Duration::from_millis(20));
    let mut sessions = live_clients(&netns, FRONT, &lengths(), Duration::from_secs(30));
    let started = start_drain(&drainer);

    // Released by the idle rule or at zero, but not by the deadline: that line says otherwise.
    let released = drainer.wait_for("drained:", Duration::from_secs(60));
    let status = drainer.wait(Duration::from_secs(30));
    // uvicorn re-raises SIGTERM after a clean shutdown: 128 + 15.
    assert_eq!(status.code(), Some(143), "{}", drainer.output());
    // Requests go on for a while after A has gone.
    thread::sleep(Duration::from_secs(1));
    let report = keepalive_report(&mut http);
    let results = live_session_results(&mut sessions, SESSIONS, Duration::from_secs(60));

    for result in &results {
        assert_eq!(result["code"], 1000, "session ended abnormally: {result}");
        assert_eq!(
            result["received"], result["expected"],
            "session lost messages: {result}"
        );
    }
    let through = |port: u16| {
        results
            .iter()
            .filter(|r| r["served_by"] == served_by(port).as_str())
            .collect::<Vec<_>>()
    };
    let (through_a, through_b) = (through(A), through(B));
    assert!(
        !through_a.is_empty()
            && !through_b.is_empty()
            && through_a.len() + through_b.len() == SESSIONS,
        "the {name} should have spread the sessions over both backends: {results:?}"
    );
    let last_a_end = through_a
        .iter()
        .map(|r| r["ended_at"].as_f64().unwrap())
        .fold(f64::MIN, f64::max);
    let delay = released.at - last_a_end;

    assert_eq!(
        report["failures"], 0,
        "HTTP requests through {name} failed: {report}"
    );
    assert!(
        report["served_by"][served_by(A)].as_u64() > Some(0),
        "A answered no HTTP request: {report}"
    );
    let taken_out = balancer
        .process()
        .wait_for_match(|line| line.contains(out), Duration::ZERO)
        .map_or("never".to_owned(), |line| {
            format!("{:.2}s", line.at - started.at)
        });
    eprintln!(
        "{name}: A released {delay:.2}s after its last session ended ({} of {SESSIONS} sessions \
         through A), {:.2}s after the drain started; {name} took A out {taken_out} after the \
         drain started; {}\n{name}: {} HTTP requests, {} failed, answered per backend {}",
        through_a.len(),
        released.at - started.at,
        released.text,
        report["requests"],
        report["failures"],
        report["served_by"]
    );
    assert!(
        delay <= IDLE_SECONDS + RELEASE_SLACK_SECONDS,
        "A was released {delay:.2}s after its last session through {name} ended, more than \
         {IDLE_SECONDS}s + {RELEASE_SLACK_SECONDS}s:\n{}\n{name}:\n{}",
        drainer.output(),
        balancer.process().output()
    );
}

#[test]
fn behind_haproxy_every_session_and_request_succeeds_and_the_drained_backend_is_released_within_idle_time_plus_2s_of_its_last_session()
 {
    drain_behind("HAProxy", "is DOWN", |netns, dir| {
        haproxy(netns, dir, FRONT, &[A, B])
    });
}

#[test]
fn behind_nginx_every_session_and_request_succeeds_and_the_drained_backend_is_released_within_idle_time_plus_2s_of_its_last_session()
 {
    drain_behind(
        "nginx",
        "upstream server temporarily disabled",
        |netns, dir| nginx(netns, dir, FRONT, &[A, B]),
    );
}
