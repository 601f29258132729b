//! Soak: drain after drain of a real uvicorn serving live WebSocket sessions, with new connections
//! arriving all through each drain. Every session must end normally with every message, every new
//! connection must be refused, and the count must start each drain at exactly the number of
//! sessions and end it at exactly zero.
//!
//! `DRAINER_SOAK=full` (`cargo xtask soak`) runs 100 drains of 1,000 sessions each; the default is
//! a quick pass of the same steps, small enough for every test run.
use std::{
    env,
    io::ErrorKind,
    net::TcpStream,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use drainer_harness::{
    clients::{live_clients, live_session_results, loopback},
    drainer::{drainer_run, live_field, start_drain},
    netns::TestNetns,
    patience,
    process::Process,
    require_root,
    servers::live_app_command,
};

const PORT: u16 = 8000;
/// New connections attempted per second while each drain runs.
const KNOCKS_PER_SECOND: u32 = 500;

struct Plan {
    drains: usize,
    sessions: usize,
    /// The shortest session, long enough that every session is still open when the drain starts
    /// (opening them all takes a while at 1,000).
    shortest: f64,
}

fn plan() -> Plan {
    match env::var("DRAINER_SOAK").as_deref() {
        Ok("full") => Plan {
            drains: 100,
            sessions: 1000,
            shortest: 4.0,
        },
        Ok("quick") | Err(_) => Plan {
            drains: 3,
            sessions: 100,
            shortest: 1.5,
        },
        Ok(other) => panic!("DRAINER_SOAK={other:?}: use `quick` or `full`"),
    }
}

/// What the new connections attempted during one drain met.
#[derive(Debug, Default)]
struct Knocks {
    refused: u64,
    accepted: u64,
    other_errors: Vec<String>,
}

/// Attempts KNOCKS_PER_SECOND connections per second until `stop` is set.
fn knock_until(netns: &TestNetns, stop: &AtomicBool) -> Knocks {
    netns.run(|| {
        let mut knocks = Knocks::default();
        let interval = Duration::from_secs(1) / KNOCKS_PER_SECOND;
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            match TcpStream::connect_timeout(&loopback(PORT), patience(Duration::from_secs(1))) {
                Ok(_) => knocks.accepted += 1,
                Err(err) if err.kind() == ErrorKind::ConnectionRefused => knocks.refused += 1,
                Err(err) => knocks.other_errors.push(err.to_string()),
            }
            next += interval;
            thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        knocks
    })
}

fn open_sessions(netns: &TestNetns, plan: &Plan) -> Process {
    let lengths: Vec<String> = (0..plan.sessions)
        .map(|i| {
            // Spread over two seconds, on the app's 50 ms message grid.
            let seconds = plan.shortest + 2.0 * i as f64 / plan.sessions as f64;
            format!("{:.2}", (seconds * 20.0).round() / 20.0)
        })
        .collect();
    live_clients(netns, PORT, &lengths, Duration::from_secs(120))
}

fn assert_every_session_ended_normally(clients: &mut Process, plan: &Plan, drain: usize) {
    let results = live_session_results(clients, plan.sessions, Duration::from_secs(120));
    for result in &results {
        assert!(
            result["code"] == 1000 && result["received"] == result["expected"],
            "drain {drain}: a session was cut: {result}"
        );
    }
}

/// One deploy: start the server under drainer, open the sessions, stop it, check everything.
fn drain_once(netns: &TestNetns, plan: &Plan, drain: usize) -> Knocks {
    let mut drainer = drainer_run(
        netns,
        &["--port", "8000", "--drain-timeout", "120s"],
        &live_app_command(PORT),
    );
    drainer.wait_for("Uvicorn running on", Duration::from_secs(30));
    let mut clients = open_sessions(netns, plan);

    // Logged once refusing has begun: knocking earlier could still reach the server.
    let started = start_drain(&drainer);
    let stop = AtomicBool::new(false);
    let knocks = thread::scope(|scope| {
        let knocker = scope.spawn(|| knock_until(netns, &stop));
        let drained = drainer.wait_for_match(
            |line| line.contains("drained: no live connections"),
            Duration::from_secs(120),
        );
        stop.store(true, Ordering::Relaxed);
        let knocks = knocker.join().expect("the knocking thread panicked");
        assert_eq!(
            live_field(&started.text),
            plan.sessions as i64,
            "drain {drain}: the count at drain start is not the number of open sessions"
        );
        let drained = drained.unwrap_or_else(|| {
            panic!(
                "drain {drain}: no release within 120s:\n{}",
                drainer.output()
            )
        });
        assert_eq!(
            live_field(&drained.text),
            0,
            "drain {drain}: {}",
            drained.text
        );
        knocks
    });
    assert_every_session_ended_normally(&mut clients, plan, drain);
    assert!(
        knocks.accepted == 0 && knocks.other_errors.is_empty() && knocks.refused > 0,
        "drain {drain}: new connections during the drain: {knocks:?}"
    );
    // uvicorn re-raises SIGTERM after a clean shutdown: 128 + 15.
    let status = drainer.wait(Duration::from_secs(30));
    assert_eq!(
        status.code(),
        Some(143),
        "drain {drain}: {}",
        drainer.output()
    );
    knocks
}

#[test]
fn drain_after_drain_under_load_loses_no_session_and_ends_each_count_at_exactly_zero() {
    require_root();
    let plan = plan();
    let netns = TestNetns::create();
    let started = Instant::now();
    let mut refused = 0;
    for drain in 1..=plan.drains {
        let at = Instant::now();
        let knocks = drain_once(&netns, &plan, drain);
        eprintln!(
            "soak: drain {drain}/{}: {} sessions ended normally, {} new connections refused, {:.1}s",
            plan.drains,
            plan.sessions,
            knocks.refused,
            at.elapsed().as_secs_f64()
        );
        refused += knocks.refused;
    }
    eprintln!(
        "soak: {} drains of {} sessions in {:.0}s; {refused} connections refused during the drains",
        plan.drains,
        plan.sessions,
        started.elapsed().as_secs_f64()
    );
}
